//! CHECK: the attachment still looks like `prevResult` says: the pod
//! interface with its MAC and MTU, every address, every route, the host end
//! on the bridge, the allocation in IPAM and the hostPorts. The error lists
//! every difference, not just the first.

use std::fs::File;
use std::os::fd::AsFd;

use podnet_kernel::netlink::Netlink;

use crate::config::{Ipam, NetConf};
use crate::env::CniEnv;
use crate::error::{CniError, code};
use crate::ipam::store::LockedStore;
use crate::naming;
use crate::result::{CniResult, mac_string};

/// Runs CHECK.
pub fn check(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("prevResult", "missing (required for CHECK)"))?;
    let prev = CniResult::from_json(prev, "prevResult")?;
    let netns = File::open(&env.netns)
        .map_err(|e| CniError::env("CNI_NETNS", format!("{}: {e}", env.netns)))?;
    let mut diffs: Vec<String> = Vec::new();

    let mut pod = Netlink::open_in(netns.as_fd())?;
    let link = pod.link_by_name(&env.ifname)?;
    let Some(link) = link else {
        return Err(check_failed(vec![format!(
            "interface {} is missing from {}",
            env.ifname, env.netns
        )]));
    };
    if let Some(want) = prev
        .interfaces
        .iter()
        .find(|i| i.name == env.ifname && i.sandbox.is_some())
    {
        let have = mac_string(&link.mac);
        if !want.mac.is_empty() && !want.mac.eq_ignore_ascii_case(&have) {
            diffs.push(format!(
                "{} has MAC {have}, prevResult says {}",
                env.ifname, want.mac
            ));
        }
    }
    if link.mtu != conf.mtu {
        diffs.push(format!(
            "{} has MTU {}, configuration says {}",
            env.ifname, link.mtu, conf.mtu
        ));
    }
    if !link.up {
        diffs.push(format!("{} is down", env.ifname));
    }

    let addrs = pod.addresses()?;
    for ip in &prev.ips {
        let present = addrs.iter().any(|a| {
            a.index == link.index
                && a.ip == ip.address.addr()
                && a.prefix == ip.address.prefix_len()
        });
        if !present {
            diffs.push(format!(
                "address {} is missing from {}",
                ip.address, env.ifname
            ));
        }
    }
    let mut have_routes = pod.routes(false)?;
    have_routes.extend(pod.routes(true)?);
    for r in &prev.routes {
        let present = have_routes.iter().any(|h| {
            h.dst_prefix == r.dst.prefix_len()
                && (r.dst.prefix_len() == 0 || h.dst == Some(r.dst.addr()))
                && h.v6 == r.dst.addr().is_ipv6()
                && (r.gw.is_none() || h.gateway == r.gw)
        });
        if !present {
            let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            diffs.push(format!("route {}{via} is missing from the pod", r.dst));
        }
    }

    let mut host = Netlink::open()?;
    let host_name = naming::host_veth(&env.container_id, &env.ifname);
    match (
        host.link_by_name(&host_name)?,
        host.link_by_name(&conf.bridge)?,
    ) {
        (None, _) => diffs.push(format!("host veth {host_name} is missing")),
        (_, None) => diffs.push(format!("bridge {} is missing", conf.bridge)),
        (Some(h), Some(b)) if h.master != Some(b.index) => diffs.push(format!(
            "host veth {host_name} is not on bridge {}",
            conf.bridge
        )),
        (Some(h), _) if !h.up => diffs.push(format!("host veth {host_name} is down")),
        _ => {}
    }

    if let Ipam::Builtin { data_dir, .. } = &conf.ipam {
        let held = LockedStore::held_ips(data_dir, &conf.name, &env.container_id, &env.ifname)?;
        for ip in &prev.ips {
            if !held.contains(&ip.address.addr()) {
                diffs.push(format!(
                    "IPAM holds no allocation of {} for this container",
                    ip.address.addr()
                ));
            }
        }
    }

    let pod_v4 = prev.ips.iter().find_map(|i| match i.address.addr() {
        std::net::IpAddr::V4(v4) => Some(v4),
        std::net::IpAddr::V6(_) => None,
    });
    diffs.extend(super::hostport::check(conf, pod_v4));

    if diffs.is_empty() {
        Ok(())
    } else {
        Err(check_failed(diffs))
    }
}

fn check_failed(diffs: Vec<String>) -> CniError {
    CniError::new(
        code::CHECK_FAILED,
        format!("attachment differs from prevResult: {}", diffs.join("; ")),
    )
}
