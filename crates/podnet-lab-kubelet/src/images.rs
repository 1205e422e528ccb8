//! What a container runs, given its image, command and args. There are no
//! pulls in the lab: a `command` runs from the node's (the host's)
//! filesystem; a few well-known images have a built-in behaviour; any other
//! image without a command cannot run, and the pod says so.

use k8s_openapi::api::core::v1::Container;

/// The command line to exec, or why there is none.
pub enum Resolved {
    /// argv to exec.
    Run(Vec<String>),
    /// The image cannot run here: (reason, message) for the status.
    Unrunnable(String, String),
}

/// The image's repository name, without registry, tag or digest.
pub fn short_name(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    let repo_tail = last.split(':').next().unwrap_or(last);
    // Keep the org for images known by it (nicolaka/netshoot).
    let parts: Vec<&str> = no_digest.split('/').collect();
    if parts.len() >= 2 && parts[parts.len() - 2] == "nicolaka" {
        return format!("nicolaka/{repo_tail}");
    }
    repo_tail.to_string()
}

/// Resolves a container's argv, as a runtime would from the image's
/// entrypoint and cmd.
pub fn resolve(c: &Container, agent: &str, podnet_bins: Option<&std::path::Path>) -> Resolved {
    let image = c.image.clone().unwrap_or_default();
    let command = c.command.clone().unwrap_or_default();
    let args = c.args.clone().unwrap_or_default();
    // podnet's own image (deploy/ names `ghcr.io/podnet/podnet`, or a
    // retagged copy of it): its binaries are the lab's, as built.
    if short_name(&image) == "podnet" {
        let Some(dir) = podnet_bins else {
            return Resolved::Unrunnable(
                "ErrImagePull".into(),
                format!("{image:?}: this kubelet was not told where podnet's binaries are"),
            );
        };
        let Some(first) = command.first() else {
            return Resolved::Unrunnable(
                "RunContainerError".into(),
                format!("{image:?} has no entrypoint: give the container a command"),
            );
        };
        let name = first.rsplit('/').next().unwrap_or(first);
        let mut v = vec![dir.join(name).display().to_string()];
        v.extend(command[1..].iter().cloned().chain(args));
        return Resolved::Run(v);
    }
    let builtin = |name: &str, extra: Vec<String>| {
        let mut v = vec![agent.to_string(), "image".into(), name.into()];
        v.extend(extra);
        Resolved::Run(v)
    };
    // The image's own entrypoint named as the command (`/agnhost netexec`)
    // is the built-in behaviour, not a file on the node.
    if short_name(&image) == "agnhost"
        && command
            .first()
            .is_some_and(|c| c.rsplit('/').next() == Some("agnhost"))
    {
        return builtin(
            "agnhost",
            command[1..].iter().cloned().chain(args).collect(),
        );
    }
    if !command.is_empty() {
        return Resolved::Run(command.into_iter().chain(args).collect());
    }
    match short_name(&image).as_str() {
        "nginx" => builtin("nginx", vec![]),
        "pause" => builtin("pause", vec![]),
        "agnhost" => builtin(
            "agnhost",
            if args.is_empty() {
                vec!["pause".into()]
            } else {
                args
            },
        ),
        // Shell images: args replace the default command (sh / bash).
        "busybox" | "alpine" | "debian" | "ubuntu" => Resolved::Run(if args.is_empty() {
            vec!["/bin/sh".into()]
        } else {
            args
        }),
        "nicolaka/netshoot" | "netshoot" | "dnsutils" | "curl" => {
            Resolved::Run(if args.is_empty() {
                vec!["/bin/bash".into()]
            } else {
                args
            })
        }
        _ if !args.is_empty() => Resolved::Unrunnable(
            "ErrImagePull".into(),
            format!(
                "the podnet lab pulls no images and {image:?} is not one it knows; give the container a `command` from the node's filesystem"
            ),
        ),
        _ => Resolved::Unrunnable(
            "ErrImagePull".into(),
            format!(
                "the podnet lab pulls no images: {image:?} has no built-in behaviour (nginx, busybox, alpine, nicolaka/netshoot, agnhost, pause do); give the container a `command` from the node's filesystem"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names() {
        assert_eq!(short_name("nginx"), "nginx");
        assert_eq!(short_name("docker.io/library/nginx:1.27"), "nginx");
        assert_eq!(
            short_name("registry.k8s.io/e2e-test-images/agnhost:2.47"),
            "agnhost"
        );
        assert_eq!(short_name("nicolaka/netshoot:latest"), "nicolaka/netshoot");
        assert_eq!(short_name("busybox@sha256:abc"), "busybox");
    }

    #[test]
    fn agnhost_entrypoint_as_command_is_the_builtin() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "x", "image": "registry.k8s.io/e2e-test-images/agnhost:2.47",
            "command": ["/agnhost", "netexec"], "args": ["--http-port=8080"]}))
        .unwrap();
        assert!(matches!(resolve(&c, "a", None),
            Resolved::Run(v) if v == ["a", "image", "agnhost", "netexec", "--http-port=8080"]));
    }

    #[test]
    fn unknown_images_need_a_command() {
        let c: Container =
            serde_json::from_value(serde_json::json!({"name": "x", "image": "redis"})).unwrap();
        assert!(
            matches!(resolve(&c, "a", None), Resolved::Unrunnable(r, _) if r == "ErrImagePull")
        );
        let c: Container = serde_json::from_value(
            serde_json::json!({"name": "x", "image": "redis", "command": ["sleep", "9"]}),
        )
        .unwrap();
        assert!(matches!(resolve(&c, "a", None), Resolved::Run(v) if v == ["sleep", "9"]));
    }
}
