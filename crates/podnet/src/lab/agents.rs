//! The lab's node agents, run as a DaemonSet's pods are: one per node, in
//! the node's namespace, restarted when they exit, and restarted on
//! purpose when an operator deletes the agent's pod
//! (`kubectl delete pod -n kube-system podnet-<node>`). The control-plane
//! daemon supervises them; each agent's pid is kept in
//! `<state>/nodes/<node>/agent.pid` for `status` and `down`.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// How every agent of a lab is started.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The lab's name.
    pub lab: String,
    /// `vxlan` or `host-gw`.
    pub encap: String,
    /// `nftables` or `iptables`.
    pub proxy_mode: String,
    /// Where `podnet-agent` lives.
    pub exe_dir: PathBuf,
}

/// The file holding node `node`'s agent pid.
pub fn pid_file(lab: &str, node: &str) -> PathBuf {
    super::state_dir(lab)
        .join("nodes")
        .join(node)
        .join("agent.pid")
}

/// Node `node`'s agent pid, if it is recorded.
pub fn pid(lab: &str, node: &str) -> Option<i32> {
    std::fs::read_to_string(pid_file(lab, node))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The command that runs node `i`'s agent inside the node's namespace.
fn command(cfg: &AgentConfig, node: &str, i: usize) -> anyhow::Result<(Command, std::fs::File)> {
    let state = super::state_dir(&cfg.lab);
    let dir = state.join("nodes").join(node);
    let ns = std::fs::File::open(Path::new("/run/netns").join(node))
        .with_context(|| format!("open the namespace of node {node}"))?;
    let mut agent = podnet_kernel::netns::command_in(ns.as_fd(), cfg.exe_dir.join("podnet-agent"));
    let cni_bin = state.join("cni-bin");
    agent
        .args(["--node", node, "--node-ip", &super::node_ip(i).to_string()])
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .arg("--state-dir")
        .arg(&dir)
        .args(["--encap", &cfg.encap])
        .args(["--lab", &cfg.lab])
        .args(["--proxy-mode", &cfg.proxy_mode])
        .args(["--cni-path", &format!("{}:/usr/lib/cni", cni_bin.display())])
        // The token the API server shows node endpoints, in its own state.
        .arg("--kubelet-token-file")
        .arg(state.join("apiserver/kubelet-client.token"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))
        .with_context(|| format!("open {}/agent.log", dir.display()))?;
    agent
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        agent.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    Ok((agent, ns))
}

/// Runs node `i`'s agent for as long as this process lives: started again
/// one second after it exits, whatever the reason.
pub fn supervise(cfg: AgentConfig, node: String, i: usize) {
    std::thread::spawn(move || {
        loop {
            match command(&cfg, &node, i).and_then(|(mut c, _ns)| {
                c.spawn()
                    .with_context(|| format!("start the agent of {node}"))
            }) {
                Ok(mut child) => {
                    let pid = child.id();
                    let file = pid_file(&cfg.lab, &node);
                    let tmp = file.with_extension("pid.tmp");
                    if std::fs::write(&tmp, format!("{pid}\n"))
                        .and_then(|()| std::fs::rename(&tmp, &file))
                        .is_err()
                    {
                        tracing::warn!(%node, "could not record the agent's pid");
                    }
                    tracing::info!(%node, pid, "agent started");
                    let status = child.wait();
                    tracing::warn!(%node, ?status, "agent exited; starting it again");
                }
                Err(e) => tracing::error!(%node, error = %e, "agent"),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

/// Stops node `node`'s agent (SIGTERM, then SIGKILL after 5 s), so that its
/// supervisor starts a new one.
pub fn restart(lab: &str, node: &str) {
    let Some(pid) = pid(lab, node) else {
        return;
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    for _ in 0..100 {
        if nix::sys::signal::kill(pid, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
}
