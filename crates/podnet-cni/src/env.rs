//! The CNI environment: the verb and the container it concerns, as the
//! runtime passes them in `CNI_*` variables. Everything is validated before
//! anything is touched, so bad input leaves the system as it was.

use crate::error::CniError;

/// A CNI verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach the container to the network.
    Add,
    /// Detach it; idempotent.
    Del,
    /// Verify the attachment against `prevResult`.
    Check,
    /// Is the plugin ready to ADD?
    Status,
    /// Release everything not listed as a valid attachment.
    Gc,
    /// Which spec versions the plugin speaks.
    Version,
}

/// The pod identity that a Kubernetes runtime passes in `CNI_ARGS`,
/// recorded with the allocation so an operator can tell whose IP it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodRef {
    /// `K8S_POD_NAMESPACE`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// `K8S_POD_NAME`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `K8S_POD_UID`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// Everything the runtime told us through the environment.
#[derive(Clone, Debug)]
pub struct CniEnv {
    /// The verb.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for STATUS/GC/VERSION).
    pub container_id: String,
    /// `CNI_NETNS` (may be empty for DEL).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_PATH`, split.
    pub path: Vec<String>,
    /// Pod identity from `CNI_ARGS`.
    pub pod: PodRef,
    /// `IP=` from `CNI_ARGS` (a requested address, legacy style).
    pub args_ips: Vec<String>,
}

impl CniEnv {
    /// Reads and validates the environment for the verb it names.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(CniError::env(
                    "CNI_COMMAND",
                    format!(
                        "unknown verb {other:?} (expected ADD, DEL, CHECK, STATUS, GC or VERSION)"
                    ),
                ));
            }
            None => return Err(CniError::env("CNI_COMMAND", "not set")),
        };
        let var = |name: &str| get(name).unwrap_or_default();
        let mut env = CniEnv {
            command,
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            path: var("CNI_PATH")
                .split(':')
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect(),
            pod: PodRef::default(),
            args_ips: Vec::new(),
        };
        if matches!(command, Command::Add | Command::Del | Command::Check) {
            validate_container_id(&env.container_id)?;
            validate_ifname(&env.ifname)?;
            if command != Command::Del && env.netns.is_empty() {
                return Err(CniError::env("CNI_NETNS", "not set"));
            }
        }
        if let Some(args) = get("CNI_ARGS") {
            env.parse_args(&args)?;
        }
        Ok(env)
    }

    fn parse_args(&mut self, args: &str) -> Result<(), CniError> {
        for pair in args.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(CniError::env(
                    "CNI_ARGS",
                    format!("{pair:?} is not KEY=VALUE"),
                ));
            };
            match k {
                "K8S_POD_NAMESPACE" => self.pod.namespace = v.into(),
                "K8S_POD_NAME" => self.pod.name = v.into(),
                "K8S_POD_UID" => self.pod.uid = v.into(),
                "IP" => self.args_ips = v.split(',').map(String::from).collect(),
                _ => {} // IgnoreUnknown and runtime-specific keys
            }
        }
        Ok(())
    }
}

/// The spec: a container ID is non-empty, starts alphanumeric and holds
/// only alphanumerics, `_`, `.` and `-`.
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else if id.is_empty() {
        Err(CniError::env("CNI_CONTAINERID", "not set"))
    } else {
        Err(CniError::env(
            "CNI_CONTAINERID",
            format!("{id:?} must be alphanumeric, '_', '.' or '-'"),
        ))
    }
}

/// The spec: an interface name is at most 15 bytes, not `.` or `..`, and
/// holds no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let why = if name.is_empty() {
        Some("not set".to_string())
    } else if name.len() > 15 {
        Some(format!("{name:?} is longer than 15 bytes"))
    } else if name == "." || name == ".." {
        Some(format!("{name:?} is not a valid name"))
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some(format!("{name:?} contains '/', ':' or whitespace"))
    } else {
        None
    };
    match why {
        Some(w) => Err(CniError::env("CNI_IFNAME", w)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_env(|k| map.get(k).cloned())
    }

    #[test]
    fn add_needs_netns_container_and_ifname() {
        let base = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
        ];
        assert!(env(&base).is_ok());
        let e = env(&base[..3]).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_NETNS"));
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "a/b"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "x"),
        ])
        .unwrap_err();
        assert!(e.msg.contains("CNI_CONTAINERID"));
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "ab"),
            ("CNI_IFNAME", "a-very-long-interface"),
            ("CNI_NETNS", "x"),
        ])
        .unwrap_err();
        assert!(e.msg.contains("CNI_IFNAME"));
    }

    #[test]
    fn del_may_omit_netns_and_args_are_parsed() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=u1",
            ),
        ])
        .unwrap();
        assert_eq!(e.pod.namespace, "default");
        assert_eq!(e.pod.name, "web");
        assert_eq!(e.pod.uid, "u1");
    }

    #[test]
    fn unknown_verb_is_invalid_env() {
        let e = env(&[("CNI_COMMAND", "FROB")]).unwrap_err();
        assert_eq!(e.code, 4);
        assert_eq!(env(&[]).unwrap_err().code, 4);
    }
}
