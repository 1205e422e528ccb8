//! The agent's service proxy (podnet's kube-proxy): Services and
//! EndpointSlices watched with kube-rs, planned by `podnet_core::proxy`, and
//! applied by the nftables (default) or iptables backend, one atomic
//! transaction per batch of changes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use podnet_core::proxy::{NodeFacts, ProxyState, ServicePortName, ServicePortPlan, plan_service};
use podnet_dataplane::proxy::{IptablesProxy, NftProxy, Target};
use tokio::sync::mpsc;

use crate::AgentArgs;
use crate::slim::{SlimService, SlimSlice};
use crate::watch::{self, Update};

/// The lab's service CIDR (the `kubernetes` service is its first address).
const LAB_SERVICE_CIDR: &str = "10.96.0.0/12";

/// Service ports per transaction of the first nftables load on a node
/// without podnet's table (see `NftProxy::first_load`): small enough that
/// libnftables' memory for one stays a few MiB, large enough that 10,000
/// services take a handful of transactions.
const FIRST_LOAD_STEP: usize = 1_000;

/// A proxy needs the node to route service addresses somewhere (a real
/// node's default route does): a connection from the node itself is
/// routed before the `output` hook translates it, so without a route it
/// fails with "network unreachable" before the proxy sees it. A lab node
/// has no default route (nothing of the lab may leave it), so in the lab
/// the agent adds an on-link route for the service CIDR on the node's own
/// link; translated packets are re-routed to their endpoint, and a
/// service without endpoints is refused in the `output` hook.
fn ensure_service_route(node_ip: std::net::Ipv4Addr) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let cidr: ipnet::Ipv4Net = LAB_SERVICE_CIDR.parse().expect("a CIDR");
    let probe = std::net::IpAddr::V4(cidr.network());
    let mut nl = podnet_kernel::netlink::Netlink::open()?;
    let routed = nl.routes(false)?.iter().any(|r| match r.dst {
        None => true, // the default route
        Some(dst) => ipnet::IpNet::new(dst, r.dst_prefix).is_ok_and(|n| n.contains(&probe)),
    });
    if routed {
        return Ok(());
    }
    let index = nl
        .addresses()?
        .into_iter()
        .find(|a| a.ip == std::net::IpAddr::V4(node_ip))
        .map(|a| a.index)
        .with_context(|| format!("no link holds the node address {node_ip}"))?;
    // On-link via the node's own link: the source is that link's address.
    nl.add_route(probe, cidr.prefix_len(), None, Some(index))?;
    tracing::info!(
        cidr = LAB_SERVICE_CIDR,
        link = index,
        "route to the service CIDR added"
    );
    Ok(())
}

enum Backend {
    Nft(NftProxy),
    Iptables(IptablesProxy),
}

enum Change {
    Service(Update<Service>),
    Slice(Update<EndpointSlice>),
}

/// The watched objects, indexed so that a change re-plans only the
/// services it touches (a change then costs the same at 10 or 10,000
/// services), and the state planned from them.
#[derive(Default)]
struct View {
    /// `namespace/name` -> Service.
    services: BTreeMap<String, Service>,
    /// `namespace/name` -> EndpointSlice.
    slices: BTreeMap<String, EndpointSlice>,
    /// Slice key -> the service key its label names.
    owner: BTreeMap<String, String>,
    /// Service key -> its slices' keys.
    slices_of: BTreeMap<String, BTreeSet<String>>,
    /// Service key -> the service ports planned for it.
    planned: BTreeMap<String, Vec<ServicePortName>>,
    /// The whole planned state (what the iptables backend renders).
    state: ProxyState,
}

impl View {
    /// Applies a watch update, noting the service keys it touches in
    /// `dirty`; `true` when it is an initial list's end.
    fn apply(&mut self, c: Change, dirty: &mut BTreeSet<String>) -> bool {
        match c {
            Change::Service(u) => match u {
                Update::Set(k, o) => {
                    self.services.insert(k.clone(), *o);
                    dirty.insert(k);
                }
                Update::Gone(k) => {
                    self.services.remove(&k);
                    dirty.insert(k);
                }
                Update::Synced => return true,
            },
            Change::Slice(u) => match u {
                Update::Set(k, o) => {
                    let svc = slice_owner(&o);
                    self.unlink(&k, dirty);
                    if let Some(svc) = svc {
                        self.owner.insert(k.clone(), svc.clone());
                        self.slices_of
                            .entry(svc.clone())
                            .or_default()
                            .insert(k.clone());
                        dirty.insert(svc);
                    }
                    self.slices.insert(k, *o);
                }
                Update::Gone(k) => {
                    self.unlink(&k, dirty);
                    self.slices.remove(&k);
                }
                Update::Synced => return true,
            },
        }
        false
    }

    fn unlink(&mut self, slice: &str, dirty: &mut BTreeSet<String>) {
        if let Some(old) = self.owner.remove(slice) {
            if let Some(set) = self.slices_of.get_mut(&old) {
                set.remove(slice);
                if set.is_empty() {
                    self.slices_of.remove(&old);
                }
            }
            dirty.insert(old);
        }
    }

    /// Re-plans the `dirty` services: the changed service ports (`None`:
    /// gone), also applied to [`View::state`].
    fn replan(
        &mut self,
        dirty: &BTreeSet<String>,
        node: &NodeFacts,
    ) -> Vec<(ServicePortName, Option<ServicePortPlan>)> {
        let mut changes = Vec::new();
        for key in dirty {
            let ports = match self.services.get(key) {
                Some(svc) => {
                    let slices: Vec<&EndpointSlice> = self
                        .slices_of
                        .get(key)
                        .into_iter()
                        .flatten()
                        .filter_map(|k| self.slices.get(k))
                        .collect();
                    let (ports, problems) = plan_service(svc, &slices, node);
                    for problem in &problems {
                        tracing::warn!(%problem, "proxy input left out");
                    }
                    ports
                }
                None => Vec::new(),
            };
            let names: Vec<ServicePortName> = ports.iter().map(|p| p.name.clone()).collect();
            for old in self.planned.remove(key).unwrap_or_default() {
                if !names.contains(&old) {
                    self.state.ports.remove(&old);
                    changes.push((old, None));
                }
            }
            for p in ports {
                if self.state.ports.get(&p.name) != Some(&p) {
                    self.state.ports.insert(p.name.clone(), p.clone());
                    changes.push((p.name.clone(), Some(p)));
                }
            }
            if !names.is_empty() {
                self.planned.insert(key.clone(), names);
            }
        }
        changes
    }
}

/// The `namespace/name` of the Service an EndpointSlice belongs to.
fn slice_owner(slice: &EndpointSlice) -> Option<String> {
    let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
    slice
        .metadata
        .labels
        .as_ref()?
        .get(podnet_core::proxy::SERVICE_NAME_LABEL)
        .map(|svc| format!("{ns}/{svc}"))
}

/// Reloads the proxy's rules when the kernel lost them (a table or chain
/// deleted, a table flushed, a jump from a built-in chain removed).
fn repair_drift(backend: &mut Backend) {
    let (intact, what) = match backend {
        Backend::Nft(b) => (b.intact(), "ip podnet-proxy"),
        Backend::Iptables(b) => (b.intact(), "KUBE-* chains"),
    };
    crate::drift::checked("proxy");
    if intact {
        return;
    }
    tracing::warn!(
        table = what,
        "proxy rules drifted (deleted or flushed); loading them again"
    );
    let res = match backend {
        Backend::Nft(b) => b.resync().map(drop),
        Backend::Iptables(b) => b.resync().map(drop),
    };
    match res {
        Ok(()) => crate::drift::repaired("proxy-table", 1),
        Err(e) => tracing::error!(error = %e, "reloading the proxy rules"),
    }
}

/// Runs the proxy until the watches end.
/// `programmed` is told once the first full sync is in the kernel (at
/// once with `--proxy-mode none`: kube-proxy serves Services).
pub async fn run(
    client: kube::Client,
    args: AgentArgs,
    programmed: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let mut programmed = Some(programmed);
    if args.proxy_mode == "none" {
        tracing::info!("service proxy off (--proxy-mode none): kube-proxy serves Services");
        if let Some(tx) = programmed.take() {
            let _ = tx.send(());
        }
        std::future::pending::<()>().await;
    }
    // Bridged pod traffic must pass the netfilter hooks for service
    // translation between pods on one bridge (kube-proxy's requirement).
    for (k, v) in [
        ("net/bridge/bridge-nf-call-iptables", "1"),
        ("net/ipv4/ip_forward", "1"),
    ] {
        if let Err(e) = std::fs::write(format!("/proc/sys/{k}"), v) {
            tracing::warn!(sysctl = k, error = %e, "cannot set");
        }
    }
    if let Err(e) = ensure_service_route(args.node_ip) {
        tracing::warn!(error = %e, "no route to the service CIDR; the node itself cannot reach ClusterIPs");
    }
    let node = NodeFacts {
        node_name: args.node.clone(),
        cluster_cidrs: vec![args.cluster_cidr.into()],
    };
    let mut backend = if args.proxy_mode == "iptables" {
        Backend::Iptables(IptablesProxy::new(Target::current()))
    } else {
        Backend::Nft(NftProxy::new(Target::current()))
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Only what `plan_service` reads is decoded and kept (see `slim`).
    watch::spawn_mapped(
        Api::<SlimService>::all(client.clone()),
        tx.clone(),
        |s| s.0,
        Change::Service,
    );
    watch::spawn_mapped(Api::<SlimSlice>::all(client), tx, |s| s.0, Change::Slice);
    let mut view = View::default();
    let mut synced = 0;
    let mut loaded = false;
    let mut tick = watch::drift_tick(args.reconcile_interval);
    loop {
        let batch = match watch::batch_or_tick(&mut rx, &mut tick).await {
            watch::Woke::Batch(b) => b,
            watch::Woke::Closed => break,
            watch::Woke::Tick => {
                if loaded {
                    tokio::task::block_in_place(|| repair_drift(&mut backend));
                }
                continue;
            }
        };
        let mut dirty = BTreeSet::new();
        for c in batch {
            synced += view.apply(c, &mut dirty) as u32;
        }
        if synced < 2 {
            continue; // both initial lists first: never program half a world
        }
        let result = if !loaded {
            // The first sync: every service planned from the view (no
            // copy of the objects), then one full load.
            loaded = true;
            view.state.cluster_cidrs = node.cluster_cidrs.clone();
            let all: BTreeSet<String> = view.services.keys().cloned().collect();
            view.replan(&all, &node);
            tokio::task::block_in_place(|| match &mut backend {
                Backend::Nft(b) => b.first_load(&view.state, FIRST_LOAD_STEP).map(drop),
                Backend::Iptables(b) => b.sync(&view.state).map(drop),
            })
        } else {
            // Later: re-plan only the services the batch touched.
            let changes = view.replan(&dirty, &node);
            if changes.is_empty() {
                continue;
            }
            tokio::task::block_in_place(|| match &mut backend {
                Backend::Nft(b) => b.update(changes).map(drop),
                Backend::Iptables(b) => b.sync(&view.state).map(drop),
            })
        };
        match result {
            Err(e) => tracing::error!(error = %e, "proxy sync failed"),
            Ok(()) => {
                if let Some(tx) = programmed.take() {
                    let _ = tx.send(());
                }
            }
        }
    }
    Ok(())
}
