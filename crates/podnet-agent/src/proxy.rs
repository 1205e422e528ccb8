//! The agent's service proxy (podnet's kube-proxy): Services and
//! EndpointSlices watched with kube-rs, planned by `podnet_core::proxy`, and
//! applied by the nftables (default) or iptables backend, one atomic
//! transaction per batch of changes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use podnet_core::proxy::{NodeFacts, plan};
use podnet_dataplane::proxy::{IptablesProxy, NftProxy, Target};
use tokio::sync::mpsc;

use crate::AgentArgs;
use crate::watch::{self, Update};

/// The lab's service CIDR (the `kubernetes` service is its first address).
const LAB_SERVICE_CIDR: &str = "10.96.0.0/12";

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
    let routed = std::process::Command::new("ip")
        .args(["route", "get", "10.96.0.1"])
        .output()
        .context("run ip (iproute2)")?
        .status
        .success();
    if routed {
        return Ok(());
    }
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show", "to", &node_ip.to_string()])
        .output()
        .context("run ip (iproute2)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let dev = text
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("no link holds the node address {node_ip}"))?;
    let out = std::process::Command::new("ip")
        .args(["route", "replace", LAB_SERVICE_CIDR, "dev", dev, "src"])
        .arg(node_ip.to_string())
        .output()
        .context("run ip (iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "ip route replace {LAB_SERVICE_CIDR} dev {dev}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    tracing::info!(
        cidr = LAB_SERVICE_CIDR,
        dev,
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

/// Runs the proxy until the watches end.
pub async fn run(client: kube::Client, args: AgentArgs) -> anyhow::Result<()> {
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
    if !args.lab.is_empty()
        && let Err(e) = ensure_service_route(args.node_ip)
    {
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
    watch::spawn(
        Api::<Service>::all(client.clone()),
        tx.clone(),
        Change::Service,
    );
    watch::spawn(Api::<EndpointSlice>::all(client), tx, Change::Slice);
    let mut services = BTreeMap::new();
    let mut slices = BTreeMap::new();
    let mut synced = 0;
    while let Some(batch) = watch::batch(&mut rx).await {
        for c in batch {
            synced += match c {
                Change::Service(u) => watch::apply(&mut services, u),
                Change::Slice(u) => watch::apply(&mut slices, u),
            } as u32;
        }
        if synced < 2 {
            continue; // both initial lists first: never program half a world
        }
        let svcs: Vec<Service> = services.values().cloned().collect();
        let sls: Vec<EndpointSlice> = slices.values().cloned().collect();
        let p = plan(&svcs, &sls, &node);
        for problem in &p.problems {
            tracing::warn!(%problem, "proxy input left out");
        }
        let result = tokio::task::block_in_place(|| match &mut backend {
            Backend::Nft(b) => b.sync_owned(p.state).map(drop),
            Backend::Iptables(b) => b.sync(&p.state).map(drop),
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "proxy sync failed");
        }
    }
    Ok(())
}
