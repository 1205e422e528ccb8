//! The kubelet's core: the pods bound to this node, by UID, and the watch
//! that starts and stops them. It makes each pod's sandbox, calls CNI
//! through the exec protocol with the node's conflist (so the reference
//! plugins could be swapped in), runs every container as a process in the
//! sandbox, reports status, follows `restartPolicy`, keeps logs, serves
//! exec/attach/logs to the API server, and tears pods down gracefully on
//! deletion.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::network::NetworkState;
use crate::{KubeletArgs, checkpoint, pod, streams};

pub use crate::pod::PodHandle;

/// How many pod sandboxes (namespace, CNI ADD) are made at once.
const SANDBOXES_AT_ONCE: usize = 2;

/// Writes `data` to `path` by rename, so a reader (a CNI runtime, a
/// restarted kubelet) sees all of it or none.
pub fn write_atomic(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, data)?;
    std::fs::rename(tmp, path)
}

/// Everything the kubelet shares between its tasks.
pub struct Kubelet {
    /// API client.
    pub client: kube::Client,
    /// The kubelet's configuration.
    pub args: KubeletArgs,
    /// Whether the node's pod network is ready (a CNI configuration).
    pub network: tokio::sync::watch::Receiver<NetworkState>,
    /// Pods this node runs, by UID.
    pub pods: Mutex<HashMap<String, Arc<PodHandle>>>,
    /// This binary (for the sandbox and built-in images).
    pub exe: String,
    /// Sandboxes being made at once (FIFO: tokio's semaphore is fair).
    pub sandbox_turns: tokio::sync::Semaphore,
}

impl Kubelet {
    /// The node's CNI configuration, as a CNI call loads it; `None` while
    /// the network is not ready.
    pub fn conflist(&self) -> Option<podnet_cni::runtime::ConfList> {
        let path = self.network.borrow().conflist.clone()?;
        match podnet_cni::runtime::ConfList::load(&path) {
            Ok(list) => Some(list),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable CNI configuration");
                None
            }
        }
    }

    /// The pod `namespace/name` this node runs, if any.
    pub fn find(&self, namespace: &str, name: &str) -> Option<Arc<PodHandle>> {
        self.pods
            .lock()
            .unwrap()
            .values()
            .find(|p| p.namespace == namespace && p.name == name)
            .cloned()
    }
}

/// Reports every pod's status again every 5 s, as kubelet's periodic sync
/// does: a lost update never leaves a pod looking stuck.
async fn resync_status(k: Arc<Kubelet>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        let pods: Vec<Arc<PodHandle>> = k.pods.lock().unwrap().values().cloned().collect();
        for h in pods {
            if !*h.stop.borrow() {
                pod::report(&k, &h).await;
            }
        }
    }
}

/// Watches this node's pods and runs them until the watch ends.
pub async fn run(
    client: kube::Client,
    args: KubeletArgs,
    network: tokio::sync::watch::Receiver<NetworkState>,
) -> anyhow::Result<()> {
    let kubelet = Arc::new(Kubelet {
        client: client.clone(),
        args: args.clone(),
        network,
        pods: Mutex::new(HashMap::new()),
        exe: std::env::current_exe()?.display().to_string(),
        sandbox_turns: tokio::sync::Semaphore::new(SANDBOXES_AT_ONCE),
    });
    tokio::spawn(streams::serve(kubelet.clone()));
    tokio::spawn(resync_status(kubelet.clone()));
    let pods: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", args.node));
    let stream = watcher(pods, cfg).default_backoff();
    futures::pin_mut!(stream);
    // Pods bound here at the (re)start; those on disk but not in it were
    // deleted while the kubelet was away.
    let mut bound = std::collections::HashSet::new();
    while let Some(ev) = stream.next().await {
        let pods = match ev {
            Ok(watcher::Event::InitApply(p)) => {
                bound.insert(p.metadata.uid.clone().unwrap_or_default());
                vec![(p, false)]
            }
            Ok(watcher::Event::InitDone) => {
                let k = kubelet.clone();
                let bound = std::mem::take(&mut bound);
                tokio::task::spawn_blocking(move || checkpoint::collect_orphans(&k, &bound));
                continue;
            }
            Ok(watcher::Event::Apply(p)) => vec![(p, false)],
            Ok(watcher::Event::Delete(p)) => vec![(p, true)],
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch");
                continue;
            }
        };
        for (p, gone) in pods {
            pod::observe(&kubelet, p, gone);
        }
    }
    Ok(())
}
