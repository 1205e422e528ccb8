//! The lab's kubelet: runs the pods bound to this node. It makes each pod's
//! sandbox, calls CNI through the exec protocol with the node's conflist
//! (so the reference plugins could be swapped in), runs every container as
//! a process in the sandbox, reports status, follows `restartPolicy`, keeps
//! logs, serves exec/attach/logs to the API server, and tears pods down
//! gracefully on deletion.

mod checkpoint;
pub mod images;
pub mod launcher;
mod pod;
pub mod sandbox;
pub mod shim;
mod streams;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::AgentArgs;

pub use pod::PodHandle;

/// How many pod sandboxes (namespace, CNI ADD) are made at once.
const SANDBOXES_AT_ONCE: usize = 2;

/// When the agent started (its mirror pod's start time).
pub static AGENT_STARTED: OnceLock<String> = OnceLock::new();

/// The node's CNI configuration list (`<state>/cni/10-podnet.conflist`).
pub fn conflist_path(args: &AgentArgs) -> PathBuf {
    args.state_dir.join("cni").join("10-podnet.conflist")
}

/// The IPv4 GSO limit of the link holding the node's address, when it is
/// above the kernel's 64 KiB: pods get BIG TCP only when their packets can
/// leave the node as they are (as Cilium decides from its native device).
fn uplink_gso_max_size(node_ip: std::net::Ipv4Addr) -> Option<u32> {
    let mut nl = podnet_kernel::netlink::Netlink::open().ok()?;
    let index = nl
        .addresses()
        .ok()?
        .into_iter()
        .find(|a| a.ip == std::net::IpAddr::V4(node_ip))?
        .index;
    let size = nl
        .links()
        .ok()?
        .into_iter()
        .find(|l| l.index == index)?
        .gso_ipv4_max_size?;
    (size > 65536).then_some(size)
}

/// Writes the node's conflist: podnet with the node's pod CIDR, serving
/// `hostPort`s itself (the `portMappings` capability), so a pod start is one
/// plugin exec; the reference `portmap` could be chained instead.
pub fn write_cni_config(args: &AgentArgs, cidr: &Ipv4Net) -> anyhow::Result<()> {
    let mtu = if args.encap == "vxlan" { 1450 } else { 1500 };
    let mut podnet = serde_json::json!({
        "type": "podnet", "bridge": "podnet0", "mtu": mtu, "isGateway": true, "hairpinMode": true,
        "capabilities": {"portMappings": true},
        "ipam": {"type": "podnet", "ranges": [[{"subnet": cidr.to_string()}]],
                 "dataDir": args.state_dir.join("ipam").display().to_string()}
    });
    if args.encap != "vxlan"
        && let Some(size) = uplink_gso_max_size(args.node_ip)
    {
        podnet["gsoMaxSize"] = size.into();
    }
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "podnet",
        "plugins": [podnet]
    });
    let path = conflist_path(args);
    std::fs::create_dir_all(path.parent().unwrap())?;
    write_atomic(&path, &serde_json::to_vec_pretty(&conf)?)?;
    Ok(())
}

/// Writes `data` to `path` by rename, so a reader (a CNI runtime, a
/// restarted agent) sees all of it or none.
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
    /// Agent configuration.
    pub args: AgentArgs,
    /// Pods this node runs, by UID.
    pub pods: Mutex<HashMap<String, Arc<PodHandle>>>,
    /// This binary (for the sandbox and built-in images).
    pub exe: String,
    /// Sandboxes being made at once (FIFO: tokio's semaphore is fair).
    pub sandbox_turns: tokio::sync::Semaphore,
}

impl Kubelet {
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
pub async fn run(client: kube::Client, args: AgentArgs) -> anyhow::Result<()> {
    AGENT_STARTED.get_or_init(crate::node::now);
    let kubelet = Arc::new(Kubelet {
        client: client.clone(),
        args: args.clone(),
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
    // deleted while the agent was away.
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
