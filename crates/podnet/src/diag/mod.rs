//! Troubleshooting: what `podnet doctor` and `podnet trace` share.
//!
//! - [`world`]: one snapshot of the API objects the checks read (Nodes,
//!   Pods, Services, EndpointSlices, NetworkPolicies, Namespaces, podnet's
//!   ConfigMap and DaemonSet), taken once so every check sees the same
//!   cluster;
//! - [`node`]: the node-facts layer: what a node's kernel holds (routes,
//!   FDB and neighbour entries, links and MTUs, the proxy's ruleset,
//!   conntrack, CNI files). Behind a trait, [`node::NodeShell`]: the lab
//!   answers from its node namespaces; a real cluster can answer through
//!   the agent's pod (hostNetwork, `NET_ADMIN`) with the same commands;
//! - [`checks`]: the checks, each one [`Check`] line with its evidence and,
//!   when it fails, the fix;
//! - [`path`]: a connection's path, hop by hop, from the planners that
//!   programmed the kernel (`podnet trace`, and doctor's path checks).

pub mod checks;
pub mod node;
pub mod path;
pub mod world;

use std::io::{IsTerminal, Write};

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// ✔: as it should be.
    Ok,
    /// !: worth knowing, not a fault (e.g. DNS forwarding off by config).
    Warn,
    /// ✘: broken; the check says how to fix it.
    Fail,
}

impl Status {
    /// The mark printed before the line.
    pub fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✔",
            Status::Warn => "!",
            Status::Fail => "✘",
        }
    }
}

/// One line of doctor's report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    /// The area: nodes, cni, routes, mtu, dns, service, proxy, policy,
    /// conntrack, hairpin.
    pub area: &'static str,
    /// What was checked, e.g. `lab-worker: route to lab-worker2's pods`.
    pub subject: String,
    /// The outcome.
    pub status: Status,
    /// What was seen, so the line can be believed without re-running it.
    pub evidence: String,
    /// For ✘: what to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    /// A passing check.
    pub fn ok(area: &'static str, subject: impl Into<String>, evidence: impl Into<String>) -> Self {
        Check {
            area,
            subject: subject.into(),
            status: Status::Ok,
            evidence: evidence.into(),
            fix: None,
        }
    }

    /// A warning.
    pub fn warn(
        area: &'static str,
        subject: impl Into<String>,
        evidence: impl Into<String>,
    ) -> Self {
        Check {
            status: Status::Warn,
            ..Check::ok(area, subject, evidence)
        }
    }

    /// A failure and its fix.
    pub fn fail(
        area: &'static str,
        subject: impl Into<String>,
        evidence: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check {
            status: Status::Fail,
            fix: Some(fix.into()),
            ..Check::ok(area, subject, evidence)
        }
    }

    /// The check as one line (and its fix on the next), coloured on a
    /// terminal.
    pub fn render(&self, colour: bool) -> String {
        let mark = match (colour, self.status) {
            (false, s) => s.mark().to_string(),
            (true, Status::Ok) => "\x1b[32m✔\x1b[0m".into(),
            (true, Status::Warn) => "\x1b[33m!\x1b[0m".into(),
            (true, Status::Fail) => "\x1b[31m✘\x1b[0m".into(),
        };
        let mut s = format!(
            "{mark} {:<9} {}: {}",
            self.area, self.subject, self.evidence
        );
        if let Some(fix) = &self.fix {
            s.push_str(&format!("\n    fix: {fix}"));
        }
        s
    }
}

/// Progress on stderr while checks run, only when it is a terminal (so
/// scripts and tests see nothing of it).
pub struct Progress {
    on: bool,
}

impl Progress {
    /// Progress if stderr is a terminal.
    pub fn new() -> Self {
        Progress {
            on: std::io::stderr().is_terminal(),
        }
    }

    /// Shows what runs now, over the previous step.
    pub fn step(&self, what: &str) {
        if self.on {
            eprint!("\r\x1b[2K… {what}");
            let _ = std::io::stderr().flush();
        }
    }

    /// Clears the line.
    pub fn done(&self) {
        if self.on {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }
}

/// What a command run inside a pod printed, and its exit code.
pub struct PodOutput {
    /// Standard output.
    pub stdout: String,
    /// Exit code (0 when the API reported success).
    pub code: i32,
}

/// Runs `sh -c script` inside `pod` through the API's exec, as `kubectl
/// exec` does: the way into a pod that works on any cluster.
pub async fn pod_sh(client: &kube::Client, pod: &Pod, script: &str) -> anyhow::Result<PodOutput> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut params = AttachParams::default()
        .stdout(true)
        .stderr(false)
        .stdin(false);
    if let Some(c) = pod.spec.as_ref().and_then(|s| s.containers.first()) {
        params = params.container(c.name.clone());
    }
    let mut proc = api
        .exec(name, vec!["sh", "-c", script], &params)
        .await
        .with_context(|| format!("exec in pod {ns}/{name}"))?;
    let mut out = Vec::new();
    if let Some(mut stdout) = proc.stdout() {
        use tokio::io::AsyncReadExt;
        stdout
            .read_to_end(&mut out)
            .await
            .context("reading exec output")?;
    }
    let status = match proc.take_status() {
        Some(s) => s.await,
        None => None,
    };
    let _ = proc.join().await;
    let code = match status {
        Some(s) if s.status.as_deref() == Some("Success") => 0,
        Some(s) => s
            .details
            .and_then(|d| d.causes)
            .into_iter()
            .flatten()
            .find(|c| c.reason.as_deref() == Some("ExitCode"))
            .and_then(|c| c.message)
            .and_then(|m| m.parse().ok())
            .unwrap_or(1),
        None => 0,
    };
    Ok(PodOutput {
        stdout: String::from_utf8_lossy(&out).into_owned(),
        code,
    })
}
