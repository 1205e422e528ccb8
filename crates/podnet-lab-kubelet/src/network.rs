//! Whether the node's pod network is ready, as the real kubelet decides it
//! through its container runtime: a CNI configuration exists in the node's
//! configuration directory. Until one does the node is NotReady with the
//! kubelet's own words and no pod that needs the pod network is started;
//! hostNetwork pods (the network's own agent among them) still run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

/// The network's state as the kubelet sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkState {
    /// The configuration CNI calls use: the first `.conflist`, `.conf` or
    /// `.json` of the directory by name, as libcni picks it.
    pub conflist: Option<PathBuf>,
}

/// The kubelet's message while no CNI configuration exists (kubelet's
/// `NetworkReady=false` condition, as containerd reports it).
pub const NOT_READY_MESSAGE: &str = "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized";

impl NetworkState {
    /// Whether pods on the pod network can start.
    pub fn ready(&self) -> bool {
        self.conflist.is_some()
    }
}

/// The configuration libcni would load from `dir`.
pub fn find_conflist(dir: &Path) -> Option<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    names.sort();
    names.into_iter().next()
}

/// Looks at `dir` every 100 ms (a `stat` and a short read of a directory)
/// and publishes each change.
pub fn watch(dir: PathBuf) -> watch::Receiver<NetworkState> {
    let first = NetworkState {
        conflist: find_conflist(&dir),
    };
    let (tx, rx) = watch::channel(first);
    std::thread::Builder::new()
        .name("cni-conf-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let now = NetworkState {
                    conflist: find_conflist(&dir),
                };
                let changed = *tx.borrow() != now;
                if changed {
                    tracing::info!(conflist = ?now.conflist, "CNI configuration changed");
                    if tx.send(now).is_err() {
                        return;
                    }
                }
            }
        })
        .expect("spawn the CNI configuration watcher");
    rx
}
