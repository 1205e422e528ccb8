//! ADD: an address from IPAM, the bridge (made once per node), a veth pair
//! whose pod end is created directly in the pod's namespace, addresses and
//! routes inside, and the result. Anything made before a failure is undone.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;

use ipnet::IpNet;
use podnet_kernel::netlink::{Netlink, VethSpec};
use serde_json::Value;

use super::{enable_forwarding, hostport, masq, release_builtin};
use crate::config::{Ipam, NetConf, RouteConf};
use crate::env::CniEnv;
use crate::error::{CniError, code};
use crate::ipam::{delegate, store::LockedStore};
use crate::naming;
use crate::result::{CniResult, Interface, IpConfig, RouteResult, mac_string};

/// Runs ADD and returns the result in the configuration's version.
pub fn add(env: &CniEnv, conf: &NetConf, raw: &[u8]) -> Result<Value, CniError> {
    let netns = File::open(&env.netns)
        .map_err(|e| CniError::env("CNI_NETNS", format!("{}: {e}", env.netns)))?;

    let (ips, routes, dns) = allocate(env, conf, raw)?;
    match attach(env, conf, &netns, &ips, &routes) {
        Ok(mut result) => {
            result.dns = dns;
            Ok(result.to_json(&conf.cni_version))
        }
        Err(e) => {
            rollback(env, conf, raw, &ips);
            Err(e)
        }
    }
}

type Allocated = (Vec<IpConfig>, Vec<RouteResult>, Option<Value>);

/// Gets the addresses, from the built-in IPAM or the delegate.
fn allocate(env: &CniEnv, conf: &NetConf, raw: &[u8]) -> Result<Allocated, CniError> {
    match &conf.ipam {
        Ipam::Builtin {
            ranges,
            routes,
            data_dir,
        } => {
            let mut requested = conf.requested_ips.clone();
            for s in &env.args_ips {
                requested.push(
                    s.parse()
                        .map_err(|e| CniError::env("CNI_ARGS", format!("IP={s}: {e}")))?,
                );
            }
            let mut store = LockedStore::open(data_dir, &conf.name)?;
            let got = store.state.allocate(
                ranges,
                &env.container_id,
                &env.ifname,
                &env.pod,
                &requested,
            )?;
            store.commit()?;
            drop(store);
            let ips: Vec<IpConfig> = got
                .iter()
                .map(|(ip, range)| IpConfig {
                    address: IpNet::new(*ip, range.subnet.prefix_len()).expect("valid prefix"),
                    gateway: Some(range.gateway),
                    interface: Some(2),
                })
                .collect();
            Ok((ips.clone(), route_results(routes, &ips), None))
        }
        Ipam::Delegate { plugin } => {
            let r = delegate::run(env, plugin, "ADD", raw)?.unwrap_or_default();
            if r.ips.is_empty() {
                let _ = delegate::run(env, plugin, "DEL", raw);
                return Err(CniError::new(
                    code::DELEGATE,
                    format!("IPAM plugin {plugin} returned no addresses"),
                ));
            }
            let ips = r
                .ips
                .into_iter()
                .map(|mut ip| {
                    ip.interface = Some(2);
                    ip
                })
                .collect::<Vec<_>>();
            Ok((ips, r.routes, r.dns))
        }
    }
}

/// The routes the pod gets: the configured ones, or a default route per
/// family through the gateway.
fn route_results(conf_routes: &[RouteConf], ips: &[IpConfig]) -> Vec<RouteResult> {
    if !conf_routes.is_empty() {
        return conf_routes
            .iter()
            .map(|r| RouteResult {
                dst: r.dst,
                gw: r.gw,
            })
            .collect();
    }
    ips.iter()
        .filter_map(|ip| {
            let dst: IpNet = if ip.address.addr().is_ipv4() {
                "0.0.0.0/0".parse().ok()?
            } else {
                "::/0".parse().ok()?
            };
            Some(RouteResult {
                dst,
                gw: ip.gateway,
            })
        })
        .collect()
}

fn attach(
    env: &CniEnv,
    conf: &NetConf,
    netns: &File,
    ips: &[IpConfig],
    routes: &[RouteResult],
) -> Result<CniResult, CniError> {
    let mut host = Netlink::open()?;
    let bridge = ensure_bridge(&mut host, conf, ips)?;

    let host_name = naming::host_veth(&env.container_id, &env.ifname);
    let host_mac = naming::mac(&[&env.container_id, &env.ifname, "host"]);
    let pod_mac = conf
        .requested_mac
        .unwrap_or_else(|| naming::mac(&[&env.container_id, &env.ifname, "pod"]));
    let spec = VethSpec {
        host_name: &host_name,
        host_mac,
        peer_name: &env.ifname,
        peer_mac: pod_mac,
        peer_netns: netns.as_fd(),
        mtu: conf.mtu,
        master: Some(bridge.index),
        gso_max_size: conf.gso_max_size,
    };
    let host_index = match host.create_veth(&spec) {
        Ok(i) => i,
        Err(e) if e.errno() == Some(libc::EEXIST) => {
            // A killed ADD may have left our host end behind; the pod end
            // dies with it. Anything else is a real name clash in the pod.
            if host.delete_link(&host_name)? {
                host.create_veth(&spec)?
            } else {
                return Err(CniError::dataplane(format!(
                    "interface {} already exists in {}",
                    env.ifname, env.netns
                )));
            }
        }
        Err(e) => return Err(e.into()),
    };
    if conf.hairpin {
        host.set_hairpin(host_index, true)?;
    }
    // The bridge accepts BIG TCP once it has a port that does (this one).
    if let Some(size) = conf.gso_max_size
        && bridge.gso_ipv4_max_size != Some(size)
    {
        host.set_gso_max_size(bridge.index, size)?;
    }

    let mut pod = Netlink::open_in(netns.as_fd())?;
    pod.set_up(1, true)?; // lo is always index 1
    let pod_link = pod.link_by_name(&env.ifname)?.ok_or_else(|| {
        CniError::dataplane(format!("{} vanished from {}", env.ifname, env.netns))
    })?;
    pod.set_up(pod_link.index, true)?;
    for ip in ips {
        pod.add_address(
            pod_link.index,
            ip.address.addr(),
            ip.address.prefix_len(),
            true,
        )?;
    }
    for r in routes {
        let gw = r.gw.or_else(|| {
            ips.iter()
                .find(|ip| ip.address.addr().is_ipv4() == r.dst.addr().is_ipv4())
                .and_then(|ip| ip.gateway)
        });
        pod.add_route(r.dst.addr(), r.dst.prefix_len(), gw, Some(pod_link.index))?;
    }
    if conf.ip_masq {
        masq::add(conf, ips)?;
    }
    hostport::add(conf, ips)?;

    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: conf.bridge.clone(),
                mac: mac_string(&bridge.mac),
                mtu: Some(conf.mtu),
                sandbox: None,
            },
            Interface {
                name: host_name,
                mac: mac_string(&host_mac),
                mtu: Some(conf.mtu),
                sandbox: None,
            },
            Interface {
                name: env.ifname.clone(),
                mac: mac_string(&pod_mac),
                mtu: Some(conf.mtu),
                sandbox: Some(env.netns.clone()),
            },
        ],
        ips: ips.to_vec(),
        // Routes are reported as configured (a route without `gw` uses the
        // gateway, as with the reference plugins).
        routes: routes.to_vec(),
        dns: None,
    })
}

/// Makes sure the bridge exists, is up and holds the gateways.
fn ensure_bridge(
    host: &mut Netlink,
    conf: &NetConf,
    ips: &[IpConfig],
) -> Result<podnet_kernel::netlink::Link, CniError> {
    let link = match host.link_by_name(&conf.bridge)? {
        Some(l) => l,
        None => {
            let mac = naming::mac(&[&conf.bridge, "bridge"]);
            match host.create_bridge(&conf.bridge, mac, conf.mtu) {
                Ok(()) => {}
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            host.link_by_name(&conf.bridge)?.ok_or_else(|| {
                CniError::dataplane(format!("bridge {} vanished after creation", conf.bridge))
            })?
        }
    };
    if link.kind.as_deref().is_some_and(|k| k != "bridge") {
        return Err(CniError::config(
            "bridge",
            format!(
                "{} exists and is a {}, not a bridge",
                conf.bridge,
                link.kind.unwrap()
            ),
        ));
    }
    if !link.up {
        host.set_up(link.index, true)?;
    }
    if conf.is_gateway {
        for ip in ips {
            if let Some(gw) = ip.gateway {
                host.add_address(link.index, gw, ip.address.prefix_len(), true)?;
            }
        }
        let v4 = ips.iter().any(|i| i.address.addr().is_ipv4());
        let v6 = ips
            .iter()
            .any(|i| matches!(i.address.addr(), IpAddr::V6(_)));
        enable_forwarding(v4, v6)?;
    }
    Ok(link)
}

/// Undoes a failed ADD: the host veth (and with it the pod end), the
/// addresses' masquerade and hostPort entries (a later step may have
/// failed after they were made), and the allocation. Errors here are
/// secondary to the one being reported.
fn rollback(env: &CniEnv, conf: &NetConf, raw: &[u8], ips: &[IpConfig]) {
    if let Ok(mut host) = Netlink::open() {
        let _ = host.delete_link(&naming::host_veth(&env.container_id, &env.ifname));
    }
    let addrs: Vec<IpAddr> = ips.iter().map(|i| i.address.addr()).collect();
    if conf.ip_masq {
        masq::remove(conf, &addrs);
    }
    if !conf.port_mappings.is_empty() {
        hostport::remove(&addrs);
    }
    match &conf.ipam {
        Ipam::Builtin { .. } => {
            let _ = release_builtin(conf, env);
        }
        Ipam::Delegate { plugin } => {
            let _ = delegate::run(env, plugin, "DEL", raw);
        }
    }
}
