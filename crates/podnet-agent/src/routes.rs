//! Routes to other nodes' pods. `host-gw`: a route to each node's pod CIDR
//! via its InternalIP. `vxlan`: one VXLAN device per node (VNI 1, UDP 4789)
//! whose MAC is derived from the node's address, and per remote node an FDB
//! entry (its MAC at its address), a neighbour entry and an on-link route
//! to its pod CIDR; the pods' MTU is lowered by 50. Nodes joining or leaving
//! are reconciled from a watch on Nodes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::AgentArgs;

/// The VXLAN device's name.
pub const VXLAN_DEV: &str = "podnet.1";

/// A remote node as routing needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Remote {
    ip: Ipv4Addr,
    cidr: Ipv4Net,
}

/// The VTEP MAC of a node: locally administered, from its address, so no
/// annotation is needed to learn it.
pub fn vtep_mac(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("0e:70:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn remotes_of(nodes: &[Node], me: &str) -> BTreeMap<String, Remote> {
    let mut out = BTreeMap::new();
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        if name == me {
            continue;
        }
        let cidr = n.spec.as_ref().and_then(|s| s.pod_cidr.clone());
        let ip = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| {
                a.iter()
                    .find(|a| a.type_ == "InternalIP")
                    .and_then(|a| a.address.parse().ok())
            });
        if let (Some(cidr), Some(ip)) = (cidr.and_then(|c| c.parse().ok()), ip) {
            out.insert(name, Remote { ip, cidr });
        }
    }
    out
}

/// Keeps the routes in step with the Nodes until the watch ends.
/// `programmed` is told once the first full list of Nodes is in the kernel.
pub async fn run(
    client: kube::Client,
    args: AgentArgs,
    own_cidr: Ipv4Net,
    programmed: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let mut programmed = Some(programmed);
    if args.encap == "vxlan" {
        setup_vxlan(&args, own_cidr)?;
    }
    let nodes: Api<Node> = Api::all(client);
    let mut applied: BTreeMap<String, Remote> = BTreeMap::new();
    let stream = watcher(nodes, watcher::Config::default()).default_backoff();
    let mut store: BTreeMap<String, Node> = BTreeMap::new();
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        let init_done = matches!(ev, Ok(watcher::Event::InitDone));
        match ev {
            Ok(watcher::Event::Apply(n)) | Ok(watcher::Event::InitApply(n)) => {
                store.insert(n.metadata.name.clone().unwrap_or_default(), n);
            }
            Ok(watcher::Event::Delete(n)) => {
                store.remove(&n.metadata.name.clone().unwrap_or_default());
            }
            Ok(watcher::Event::Init) => store.clear(),
            Ok(watcher::Event::InitDone) => {}
            Err(e) => {
                tracing::warn!(error = %e, "node watch");
                continue;
            }
        }
        let all: Vec<Node> = store.values().cloned().collect();
        let want = remotes_of(&all, &args.node);
        for (name, r) in &want {
            if applied.get(name) != Some(r) {
                if let Some(old) = applied.get(name) {
                    remove(&args, old);
                }
                match add(&args, r) {
                    Ok(()) => {
                        tracing::info!(node = %name, cidr = %r.cidr, via = %r.ip, "route to node's pods")
                    }
                    Err(e) => tracing::warn!(node = %name, error = %e, "route"),
                }
            }
        }
        for (name, r) in applied.iter().filter(|(n, _)| !want.contains_key(*n)) {
            tracing::info!(node = %name, "node left: removing its route");
            remove(&args, r);
        }
        applied = want;
        if init_done && let Some(tx) = programmed.take() {
            let _ = tx.send(());
        }
    }
    Ok(())
}

fn setup_vxlan(args: &AgentArgs, own: Ipv4Net) -> anyhow::Result<()> {
    let local = args.node_ip.to_string();
    // A restarted agent keeps the device of its previous run (traffic
    // across nodes goes on through it); a device of another shape is made
    // again.
    let current = Command::new("ip")
        .args(["-d", "-o", "link", "show", VXLAN_DEV])
        .output()?;
    let text = String::from_utf8_lossy(&current.stdout);
    let same = current.status.success()
        && text.contains(&format!("local {local} "))
        && text.contains(&format!("dev {} ", args.uplink));
    if same {
        ip(&["link", "set", VXLAN_DEV, "up"])?;
        let _ = ip(&[
            "addr",
            "replace",
            &format!("{}/32", own.network()),
            "dev",
            VXLAN_DEV,
        ]);
        return Ok(());
    }
    let _ = ip(&["link", "del", VXLAN_DEV]);
    ip(&[
        "link",
        "add",
        VXLAN_DEV,
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &local,
        "dev",
        &args.uplink,
        "dstport",
        "4789",
        "nolearning",
    ])?;
    ip(&[
        "link",
        "set",
        VXLAN_DEV,
        "address",
        &vtep_mac(args.node_ip),
        "mtu",
        &crate::cni_install::pod_mtu(args).to_string(),
        "up",
    ])?;
    // The device holds the network address of the node's CIDR (/32), as
    // the remote nodes' next hop for this node's pods.
    ip(&[
        "addr",
        "add",
        &format!("{}/32", own.network()),
        "dev",
        VXLAN_DEV,
    ])?;
    Ok(())
}

fn add(args: &AgentArgs, r: &Remote) -> anyhow::Result<()> {
    let cidr = r.cidr.to_string();
    let node_ip = r.ip.to_string();
    if args.encap == "vxlan" {
        let vtep = r.cidr.network().to_string();
        let mac = vtep_mac(r.ip);
        ip(&[
            "neigh",
            "replace",
            &vtep,
            "lladdr",
            &mac,
            "dev",
            VXLAN_DEV,
            "nud",
            "permanent",
        ])?;
        let out = Command::new("bridge")
            .args([
                "fdb",
                "replace",
                &mac,
                "dev",
                VXLAN_DEV,
                "dst",
                &node_ip,
                "self",
                "permanent",
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "bridge fdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ip(&[
            "route", "replace", &cidr, "via", &vtep, "dev", VXLAN_DEV, "onlink",
        ])
    } else {
        ip(&[
            "route",
            "replace",
            &cidr,
            "via",
            &node_ip,
            "dev",
            &args.uplink,
        ])
    }
}

fn remove(args: &AgentArgs, r: &Remote) {
    let _ = ip(&["route", "del", &r.cidr.to_string()]);
    if args.encap == "vxlan" {
        let vtep = r.cidr.network().to_string();
        let _ = ip(&["neigh", "del", &vtep, "dev", VXLAN_DEV]);
        let _ = Command::new("bridge")
            .args(["fdb", "del", &vtep_mac(r.ip), "dev", VXLAN_DEV, "self"])
            .output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_mac_is_local_unicast_and_from_the_address() {
        let m = vtep_mac("172.18.0.3".parse().unwrap());
        assert_eq!(m, "0e:70:ac:12:00:03");
    }
}
