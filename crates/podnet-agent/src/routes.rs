//! Routes to other nodes' pods. `host-gw`: a route to each node's pod CIDR
//! via its InternalIP. `vxlan`: one VXLAN device per node (VNI 1, UDP 4789)
//! whose MAC is derived from the node's address, and per remote node an FDB
//! entry (its MAC at its address), a neighbour entry and an on-link route
//! to its pod CIDR; the pods' MTU is lowered by 50. Nodes joining or leaving
//! are reconciled from a watch on Nodes.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::process::Command;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use podnet_kernel::netlink::{Neighbour, Netlink};

use crate::AgentArgs;
use crate::slim::SlimNode;

/// The VXLAN device's name.
pub const VXLAN_DEV: &str = "podnet.1";

/// A remote node as routing needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Remote {
    ip: Ipv4Addr,
    cidr: Ipv4Net,
}

/// The VTEP MAC of a node: locally administered, from its address, so no
/// annotation is needed to learn it.
pub fn vtep_mac(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("0e:70:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// Above this many routes added at once, one summary line is logged at
/// INFO instead of a line per node.
const ROUTES_LOGGED_ONE_BY_ONE: usize = 20;

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

/// The remote a Node stands for: its pod CIDR and InternalIP, or None
/// while it lacks either (or when it is this node).
pub(crate) fn remote_of(n: &Node, me: &str) -> Option<(String, Remote)> {
    let name = n.metadata.name.clone().unwrap_or_default();
    if name == me {
        return None;
    }
    let cidr = n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref());
    let ip = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| {
            a.iter()
                .find(|a| a.type_ == "InternalIP")
                .and_then(|a| a.address.parse().ok())
        });
    match (cidr.and_then(|c| c.parse().ok()), ip) {
        (Some(cidr), Some(ip)) => Some((name, Remote { ip, cidr })),
        _ => None,
    }
}

/// Keeps the routes in step with the Nodes until the watch ends.
/// `programmed` is told once the first full list of Nodes is in the kernel.
///
/// Only what routing needs of each Node (its [`Remote`]) is kept, and an
/// event costs the work of its own node: a list (the first one, or after
/// the watch is lost) is reconciled once, when complete, in one batch of
/// kernel changes; later events one node at a time.
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
    // Only the name, pod CIDR and addresses are decoded (see `slim`).
    let nodes: Api<SlimNode> = Api::all(client);
    // What is in the kernel, by node name.
    let mut applied: BTreeMap<String, Remote> = BTreeMap::new();
    // A list being received (between Init and InitDone).
    let mut listing: Option<BTreeMap<String, Remote>> = None;
    let stream = watcher(nodes, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut tick = crate::watch::drift_tick(args.reconcile_interval);
    loop {
        let ticked = async {
            match &mut tick {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        // A watch event is one whole item (a stream's next() loses nothing
        // when the tick wins), so a plain select is enough here.
        let ev = tokio::select! {
            ev = stream.next() => match ev {
                Some(ev) => ev,
                None => break,
            },
            () = ticked => {
                if programmed.is_none() {
                    tokio::task::block_in_place(|| repair_drift(&args, own_cidr, &applied));
                }
                continue;
            }
        };
        let mut adds: Vec<(String, Remote, Option<Remote>)> = Vec::new();
        let mut removes: Vec<(String, Remote)> = Vec::new();
        let synced = matches!(ev, Ok(watcher::Event::InitDone));
        match ev {
            Ok(watcher::Event::Init) => {
                listing = Some(BTreeMap::new());
                continue;
            }
            Ok(watcher::Event::InitApply(n)) => {
                if let (Some(l), Some((name, r))) = (listing.as_mut(), remote_of(&n.0, &args.node))
                {
                    l.insert(name, r);
                }
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                let want = listing.take().unwrap_or_default();
                for (name, r) in &want {
                    let old = applied.get(name);
                    if old != Some(r) {
                        adds.push((name.clone(), r.clone(), old.cloned()));
                    }
                }
                for (name, r) in &applied {
                    if !want.contains_key(name) {
                        removes.push((name.clone(), r.clone()));
                    }
                }
                applied = want;
            }
            Ok(watcher::Event::Apply(n)) => {
                let name = n.0.metadata.name.clone().unwrap_or_default();
                match remote_of(&n.0, &args.node) {
                    Some((name, r)) => {
                        let old = applied.get(&name);
                        if old != Some(&r) {
                            adds.push((name.clone(), r.clone(), old.cloned()));
                            applied.insert(name, r);
                        }
                    }
                    None => {
                        if let Some(old) = applied.remove(&name) {
                            removes.push((name, old));
                        }
                    }
                }
            }
            Ok(watcher::Event::Delete(n)) => {
                let name = n.0.metadata.name.clone().unwrap_or_default();
                if let Some(old) = applied.remove(&name) {
                    removes.push((name, old));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "node watch");
                continue;
            }
        }
        for (name, _) in &removes {
            tracing::info!(node = %name, "node left: removing its route");
        }
        // A changed node: its old entries go first.
        let mut gone: Vec<&Remote> = removes.iter().map(|(_, r)| r).collect();
        gone.extend(adds.iter().filter_map(|(_, _, old)| old.as_ref()));
        let new: Vec<&Remote> = adds.iter().map(|(_, r, _)| r).collect();
        tokio::task::block_in_place(|| {
            remove(&args, &gone);
            if let Err(e) = add(&args, &new) {
                tracing::warn!(error = %e, "route");
            }
        });
        // One line per node reads well for a few nodes; at start on a
        // node of a 5,000-node cluster it was 4,999 lines.
        if adds.len() <= ROUTES_LOGGED_ONE_BY_ONE {
            for (name, r, _) in &adds {
                tracing::info!(node = %name, cidr = %r.cidr, via = %r.ip, "route to node's pods");
            }
        } else {
            for (name, r, _) in &adds {
                tracing::debug!(node = %name, cidr = %r.cidr, via = %r.ip, "route to node's pods");
            }
            tracing::info!(
                nodes = adds.len(),
                "routes to other nodes' pods (each at debug level)"
            );
        }
        if synced && let Some(tx) = programmed.take() {
            let _ = tx.send(());
        }
    }
    Ok(())
}

/// Compares the kernel with what was programmed for `applied` and
/// programs again only what is missing or different: the VXLAN device,
/// then per remote node its FDB entry, neighbour entry and route. Each
/// repair is logged and counted (`podnet_drift_repairs_total`).
fn repair_drift(args: &AgentArgs, own: Ipv4Net, applied: &BTreeMap<String, Remote>) {
    match try_repair_drift(args, own, applied) {
        Ok(()) => crate::drift::checked("routes"),
        Err(e) => tracing::warn!(error = %e, "checking routes for drift"),
    }
}

fn try_repair_drift(
    args: &AgentArgs,
    own: Ipv4Net,
    applied: &BTreeMap<String, Remote>,
) -> anyhow::Result<()> {
    let vxlan = args.encap == "vxlan";
    let mut nl = Netlink::open()?;
    if vxlan && nl.link_by_name(VXLAN_DEV)?.is_none() {
        tracing::warn!(dev = VXLAN_DEV, "the VXLAN device is gone; making it again");
        setup_vxlan(args, own)?;
        crate::drift::repaired("vxlan-link", 1);
        let all: Vec<&Remote> = applied.values().collect();
        return add(args, &all);
    }
    let routes = nl.routes(false)?;
    let dev = if vxlan {
        link_index(&mut nl, VXLAN_DEV)?
    } else {
        link_index(&mut nl, &args.uplink)?
    };
    // Sets, so the check is linear in the remotes (5,000 nodes: a scan
    // per remote was 25 million comparisons and held node events ~1 s).
    let (neigh, fdb): (HashSet<Neighbour>, HashSet<Neighbour>) = if vxlan {
        (
            nl.neighbours(dev, false)?.into_iter().collect(),
            nl.neighbours(dev, true)?.into_iter().collect(),
        )
    } else {
        Default::default()
    };
    let routes: HashSet<(std::net::IpAddr, u8, std::net::IpAddr)> = routes
        .iter()
        .filter(|k| k.oif == Some(dev))
        .filter_map(|k| Some((k.dst?, k.dst_prefix, k.gateway?)))
        .collect();
    for (name, r) in applied {
        let via = if vxlan { r.cidr.network() } else { r.ip };
        let mac = vtep_mac(r.ip);
        let entry = |ip: Ipv4Addr| Neighbour {
            ip: Some(ip.into()),
            mac: vtep_mac_bytes(r.ip).to_vec(),
        };
        if vxlan && !fdb.contains(&entry(r.ip)) {
            tracing::warn!(node = %name, %mac, dst = %r.ip, "FDB entry missing; programming it again");
            nl.replace_fdb(dev, vtep_mac_bytes(r.ip), r.ip)?;
            crate::drift::repaired("fdb", 1);
        }
        if vxlan && !neigh.contains(&entry(via)) {
            tracing::warn!(node = %name, ip = %via, %mac, "neighbour entry missing; programming it again");
            nl.replace_neighbour(dev, via, vtep_mac_bytes(r.ip))?;
            crate::drift::repaired("neighbour", 1);
        }
        let present = routes.contains(&(
            std::net::IpAddr::V4(r.cidr.network()),
            r.cidr.prefix_len(),
            std::net::IpAddr::V4(via),
        ));
        if !present {
            tracing::warn!(node = %name, cidr = %r.cidr, %via, "route missing or changed; programming it again");
            nl.replace_route_v4(r.cidr.network(), r.cidr.prefix_len(), via, dev, vxlan)?;
            crate::drift::repaired("route", 1);
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

/// [`vtep_mac`] as bytes.
fn vtep_mac_bytes(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0e, 0x70, o[0], o[1], o[2], o[3]]
}

/// The index of link `name`.
fn link_index(nl: &mut Netlink, name: &str) -> anyhow::Result<u32> {
    Ok(nl
        .link_by_name(name)?
        .ok_or_else(|| anyhow::anyhow!("no link {name}"))?
        .index)
}

/// Programs the routes (and, with VXLAN, the FDB and neighbour entries) to
/// `remotes` over one netlink socket, as `ip route/neigh replace` and
/// `bridge fdb replace` would, without a process per change: the FDB
/// first, then the neighbour, then the route, so a route never points
/// into the overlay before its node's VTEP is known. A failing node is
/// reported and the others are still programmed.
fn add(args: &AgentArgs, remotes: &[&Remote]) -> anyhow::Result<()> {
    if remotes.is_empty() {
        return Ok(());
    }
    let mut nl = Netlink::open()?;
    let mut first_error = None;
    if args.encap == "vxlan" {
        let dev = link_index(&mut nl, VXLAN_DEV)?;
        for r in remotes {
            let vtep = r.cidr.network();
            let mac = vtep_mac_bytes(r.ip);
            let res = nl
                .replace_fdb(dev, mac, r.ip)
                .and_then(|()| nl.replace_neighbour(dev, vtep, mac))
                .and_then(|()| {
                    nl.replace_route_v4(r.cidr.network(), r.cidr.prefix_len(), vtep, dev, true)
                });
            if let Err(e) = res {
                tracing::warn!(cidr = %r.cidr, via = %r.ip, error = %e, "route");
                first_error.get_or_insert(e);
            }
        }
    } else {
        let dev = link_index(&mut nl, &args.uplink)?;
        for r in remotes {
            if let Err(e) =
                nl.replace_route_v4(r.cidr.network(), r.cidr.prefix_len(), r.ip, dev, false)
            {
                tracing::warn!(cidr = %r.cidr, via = %r.ip, error = %e, "route");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Removes what [`add`] programmed for `remotes` (the route first);
/// entries already gone are not an error.
fn remove(args: &AgentArgs, remotes: &[&Remote]) {
    if remotes.is_empty() {
        return;
    }
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => {
            tracing::warn!(error = %e, "removing routes");
            return;
        }
    };
    let dev = if args.encap == "vxlan" {
        link_index(&mut nl, VXLAN_DEV).ok()
    } else {
        None
    };
    for r in remotes {
        let _ = nl.delete_route_v4(r.cidr.network(), r.cidr.prefix_len());
        if let Some(dev) = dev {
            let _ = nl.delete_neighbour(dev, r.cidr.network());
            let _ = nl.delete_fdb(dev, vtep_mac_bytes(r.ip));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_mac_is_local_unicast_and_from_the_address() {
        let m = vtep_mac("172.18.0.3".parse().unwrap());
        assert_eq!(m, "0e:70:ac:12:00:03");
        let b = vtep_mac_bytes("172.18.0.3".parse().unwrap());
        assert_eq!(m, b.map(|x| format!("{x:02x}")).join(":"));
    }
}
