//! The lab's kubelets, one per node: `podnet-lab-kubelet` in the node's
//! namespace, with the node's own filesystem under
//! `<state>/nodes/<node>/root` (as a kind node has a root of its own). A
//! kubelet is a node's machine process, not a pod: the control-plane
//! daemon starts it and starts it again when it exits. Everything else on
//! a node (podnet's agent, the cluster DNS, the user's pods) is a pod the
//! kubelet runs. Each kubelet's pid is kept in
//! `<state>/nodes/<node>/kubelet.pid` for `status` and `down`.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// How every kubelet of a lab is started.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// The lab's name.
    pub lab: String,
    /// Where `podnet-lab-kubelet` and podnet's binaries (the lab's
    /// `ghcr.io/podnet/podnet` image) live.
    pub exe_dir: PathBuf,
}

/// Node `node`'s directory in the lab's state.
pub fn node_dir(lab: &str, node: &str) -> PathBuf {
    super::state_dir(lab).join("nodes").join(node)
}

/// The node's own filesystem (`etc/cni/net.d`, `opt/cni/bin`,
/// `var/lib/cni`, hostPath volumes).
pub fn node_root(lab: &str, node: &str) -> PathBuf {
    node_dir(lab, node).join("root")
}

/// The file holding node `node`'s kubelet pid.
pub fn pid_file(lab: &str, node: &str) -> PathBuf {
    node_dir(lab, node).join("kubelet.pid")
}

/// Node `node`'s kubelet pid, if it is recorded.
pub fn pid(lab: &str, node: &str) -> Option<i32> {
    std::fs::read_to_string(pid_file(lab, node))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The command that runs node `i`'s kubelet inside the node's namespace.
fn command(cfg: &KubeletConfig, node: &str, i: usize) -> anyhow::Result<(Command, std::fs::File)> {
    let state = super::state_dir(&cfg.lab);
    let dir = node_dir(&cfg.lab, node);
    let ns = std::fs::File::open(Path::new("/run/netns").join(node))
        .with_context(|| format!("open the namespace of node {node}"))?;
    let mut kubelet =
        podnet_kernel::netns::command_in(ns.as_fd(), cfg.exe_dir.join("podnet-lab-kubelet"));
    kubelet
        .args(["--node", node, "--node-ip", &super::node_ip(i).to_string()])
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .arg("--state-dir")
        .arg(&dir)
        .arg("--node-root")
        .arg(node_root(&cfg.lab, node))
        .args(["--lab", &cfg.lab])
        .arg("--podnet-bin-dir")
        .arg(&cfg.exe_dir)
        // The token the API server shows node endpoints, in its own state.
        .arg("--kubelet-token-file")
        .arg(state.join("apiserver/kubelet-client.token"))
        // Every process of the lab carries its mark (lab/remains.rs).
        .env(super::remains::LAB_ENV, &cfg.lab);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("kubelet.log"))
        .with_context(|| format!("open {}/kubelet.log", dir.display()))?;
    kubelet
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        kubelet.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    Ok((kubelet, ns))
}

/// Whether `pid` is node `node`'s kubelet of lab `lab` (a recorded pid may
/// have been reused by anything after a reboot).
fn is_kubelet(pid: i32, lab: &str, node: &str) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    let has = |flag: &str, value: &str| {
        args.windows(2)
            .any(|w| w[0] == flag.as_bytes() && w[1] == value.as_bytes())
    };
    args.first()
        .is_some_and(|a| a.ends_with(b"podnet-lab-kubelet"))
        && has("--node", node)
        && has("--lab", lab)
}

/// Runs node `i`'s kubelet for as long as this process lives: started
/// again one second after it exits, as systemd restarts a node's kubelet.
/// A kubelet still running from before (this daemon was killed and started
/// again) is adopted: watched until it exits, not started twice.
pub fn supervise(cfg: KubeletConfig, node: String, i: usize) {
    std::thread::spawn(move || {
        if let Some(old) = pid(&cfg.lab, &node).filter(|p| is_kubelet(*p, &cfg.lab, &node)) {
            tracing::info!(%node, pid = old, "kubelet still running: adopted");
            while is_kubelet(old, &cfg.lab, &node) {
                std::thread::sleep(Duration::from_millis(500));
            }
            tracing::warn!(%node, "adopted kubelet exited; starting it again");
        }
        loop {
            match command(&cfg, &node, i).and_then(|(mut c, _ns)| {
                c.spawn()
                    .with_context(|| format!("start the kubelet of {node}"))
            }) {
                Ok(mut child) => {
                    let pid = child.id();
                    let file = pid_file(&cfg.lab, &node);
                    let tmp = file.with_extension("pid.tmp");
                    if std::fs::write(&tmp, format!("{pid}\n"))
                        .and_then(|()| std::fs::rename(&tmp, &file))
                        .is_err()
                    {
                        tracing::warn!(%node, "could not record the kubelet's pid");
                    }
                    tracing::info!(%node, pid, "kubelet started");
                    let status = child.wait();
                    tracing::warn!(%node, ?status, "kubelet exited; starting it again");
                }
                Err(e) => tracing::error!(%node, error = %e, "kubelet"),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}
