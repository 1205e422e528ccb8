//! `portMappings` (a pod's hostPorts): connections to the node's addresses
//! on a mapped port go to the pod. This is the reference `portmap`
//! plugin's capability, served in the same exec that made the pod's
//! interface, so a pod without hostPorts costs nothing here and one with
//! them costs one nft transaction instead of a second plugin.
//!
//! The rules are fixed and the mappings are data: two maps in the plugin's
//! table (one keyed by protocol and port, one by node address, protocol
//! and port when a `hostIP` is given) answer a DNAT lookup for packets to a
//! local address, from outside (prerouting) or from the node itself
//! (output). A pod reaching its own hostPort is masqueraded, or its reply
//! would skip the reverse translation. IPv4 only; `127.0.0.1` is left
//! alone (forwarding it would need `route_localnet`, which opens the node's
//! loopback services to its neighbours).

use std::net::{IpAddr, Ipv4Addr};

use podnet_kernel::nft::{self, Namespace, NftError};
use serde_json::Value;

use super::NFT_TABLE as TABLE;
use crate::config::{NetConf, PortMapping};
use crate::error::{CniError, code};
use crate::result::IpConfig;

/// The table's sets, maps and chains; idempotent, so every ADD with
/// mappings can load it ahead of its elements in one transaction.
fn skeleton() -> String {
    format!(
        "add table ip {TABLE}\n\
         add map ip {TABLE} hostport_on {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}\n\
         add map ip {TABLE} hostport_any {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}\n\
         add set ip {TABLE} hostport_hairpin {{ type ipv4_addr . ipv4_addr; }}\n\
         add chain ip {TABLE} hostport\n\
         add chain ip {TABLE} hostport_pre {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         add chain ip {TABLE} hostport_out {{ type nat hook output priority -100; policy accept; }}\n\
         add chain ip {TABLE} hostport_post {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain ip {TABLE} hostport\n\
         flush chain ip {TABLE} hostport_pre\n\
         flush chain ip {TABLE} hostport_out\n\
         flush chain ip {TABLE} hostport_post\n\
         add rule ip {TABLE} hostport_pre fib daddr type local jump hostport\n\
         add rule ip {TABLE} hostport_out ip daddr != 127.0.0.0/8 fib daddr type local jump hostport\n\
         add rule ip {TABLE} hostport dnat ip to ip daddr . meta l4proto . th dport map @hostport_on\n\
         add rule ip {TABLE} hostport dnat ip to meta l4proto . th dport map @hostport_any\n\
         add rule ip {TABLE} hostport_post ct status dnat ip saddr . ip daddr @hostport_hairpin masquerade\n"
    )
}

/// Where a mapping lives: its map and its key, in nft's syntax. None for
/// an IPv6 `hostIP`, which this IPv4 table cannot serve.
fn key_of(m: &PortMapping) -> Option<(&'static str, String)> {
    match m.host_ip {
        None => Some(("hostport_any", format!("{} . {}", m.protocol, m.host_port))),
        Some(IpAddr::V4(ip)) => Some((
            "hostport_on",
            format!("{ip} . {} . {}", m.protocol, m.host_port),
        )),
        Some(IpAddr::V6(_)) => None,
    }
}

/// The nft script that adds `mappings` towards `pod`.
pub fn add_script(mappings: &[PortMapping], pod: Ipv4Addr) -> String {
    let mut s = skeleton();
    for m in mappings {
        if let Some((map, key)) = key_of(m) {
            s.push_str(&format!(
                "add element ip {TABLE} {map} {{ {key} : {pod} . {} }}\n",
                m.container_port
            ));
        }
    }
    s.push_str(&format!(
        "add element ip {TABLE} hostport_hairpin {{ {pod} . {pod} }}\n"
    ));
    s
}

/// Forwards the pod's hostPorts to its first IPv4 address. A port another
/// pod already holds fails the whole ADD, and nothing of it is left.
pub fn add(conf: &NetConf, ips: &[IpConfig]) -> Result<(), CniError> {
    if conf.port_mappings.is_empty() {
        return Ok(());
    }
    let Some(IpAddr::V4(pod)) = ips.iter().map(|i| i.address.addr()).find(IpAddr::is_ipv4) else {
        return Err(CniError::config(
            "runtimeConfig.portMappings",
            "hostPorts are forwarded to an IPv4 address and the pod has none",
        ));
    };
    match nft::apply(Namespace::Current, &add_script(&conf.port_mappings, pod)) {
        Ok(()) => Ok(()),
        Err(NftError::Rejected { stderr, .. }) if stderr.contains("File exists") => {
            let wanted: Vec<String> = conf.port_mappings.iter().map(describe).collect();
            Err(CniError::new(
                code::HOST_PORT_IN_USE,
                format!(
                    "hostPort {} is already forwarded to another pod on this node",
                    wanted.join(", ")
                ),
            ))
        }
        Err(e) => Err(CniError::dataplane(format!("hostPorts: {e}"))),
    }
}

fn describe(m: &PortMapping) -> String {
    match m.host_ip {
        Some(ip) => format!("{ip}:{}/{}", m.host_port, m.protocol),
        None => format!("{}/{}", m.host_port, m.protocol),
    }
}

/// The table as nft lists it in JSON, or None when there is none.
fn listing() -> Option<Value> {
    let text = nft::run(Namespace::Current, &["-j", "list", "table", "ip", TABLE]).ok()?;
    serde_json::from_str(&text).ok()
}

/// One part of a concatenation as nft's syntax writes it.
fn part(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn concat(v: &Value) -> Vec<String> {
    match v.get("concat").and_then(Value::as_array) {
        Some(parts) => parts.iter().map(part).collect(),
        None => vec![part(v)],
    }
}

/// Every element of the named map or set: (key parts, value parts).
fn elements<'a>(
    listing: &'a Value,
    name: &'a str,
) -> impl Iterator<Item = (Vec<String>, Vec<String>)> + 'a {
    listing
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(move |o| {
            let body = o.get("map").or_else(|| o.get("set"))?;
            (body.get("name")?.as_str()? == name).then(|| body.get("elem")?.as_array())?
        })
        .flatten()
        .map(|e| match e.as_array() {
            Some(kv) if kv.len() == 2 => (concat(&kv[0]), concat(&kv[1])),
            _ => (concat(e), Vec::new()),
        })
}

/// The `delete element` lines for everything in `listing` that leads to
/// one of `pods`: only what a pod owns is removed, never a port another
/// pod holds now.
pub fn delete_script(listing: &Value, pods: &[Ipv4Addr]) -> String {
    let pods: Vec<String> = pods.iter().map(Ipv4Addr::to_string).collect();
    let mut s = String::new();
    for map in ["hostport_any", "hostport_on"] {
        for (key, value) in elements(listing, map) {
            if value.first().is_some_and(|ip| pods.contains(ip)) {
                s.push_str(&format!(
                    "delete element ip {TABLE} {map} {{ {} }}\n",
                    key.join(" . ")
                ));
            }
        }
    }
    for (key, _) in elements(listing, "hostport_hairpin") {
        if key.first().is_some_and(|ip| pods.contains(ip)) {
            s.push_str(&format!(
                "delete element ip {TABLE} hostport_hairpin {{ {} }}\n",
                key.join(" . ")
            ));
        }
    }
    s
}

/// Stops forwarding to `ips` (DEL, GC). What is already gone is fine.
pub fn remove(ips: &[IpAddr]) {
    let pods: Vec<Ipv4Addr> = ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .collect();
    if pods.is_empty() {
        return;
    }
    let Some(listing) = listing() else { return };
    let script = delete_script(&listing, &pods);
    if !script.is_empty() {
        let _ = nft::apply(Namespace::Current, &script);
    }
}

/// CHECK: every mapping leads to the pod's address and port.
pub fn check(conf: &NetConf, pod: Option<Ipv4Addr>) -> Vec<String> {
    if conf.port_mappings.is_empty() {
        return Vec::new();
    }
    let Some(pod) = pod else {
        return vec!["hostPorts are set but the pod has no IPv4 address".into()];
    };
    let listing = listing().unwrap_or(Value::Null);
    let mut diffs = Vec::new();
    for m in &conf.port_mappings {
        let Some((map, key)) = key_of(m) else {
            continue;
        };
        let want = vec![pod.to_string(), m.container_port.to_string()];
        let found = elements(&listing, map).any(|(k, v)| k.join(" . ") == key && v == want);
        if !found {
            diffs.push(format!(
                "hostPort {} is not forwarded to {pod}:{}",
                describe(m),
                m.container_port
            ));
        }
    }
    diffs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping(host_port: u16, protocol: &'static str, host_ip: Option<&str>) -> PortMapping {
        PortMapping {
            host_port,
            container_port: 80,
            protocol,
            host_ip: host_ip.map(|s| s.parse().unwrap()),
        }
    }

    #[test]
    fn add_script_keys_by_port_or_by_address_and_skips_ipv6() {
        let s = add_script(
            &[
                mapping(8080, "tcp", None),
                mapping(53, "udp", Some("172.18.0.3")),
                mapping(9090, "tcp", Some("fd00::1")),
            ],
            "10.244.1.5".parse().unwrap(),
        );
        assert!(
            s.contains("add element ip podnet-cni hostport_any { tcp . 8080 : 10.244.1.5 . 80 }")
        );
        assert!(s.contains(
            "add element ip podnet-cni hostport_on { 172.18.0.3 . udp . 53 : 10.244.1.5 . 80 }"
        ));
        assert!(!s.contains("9090"));
        assert!(s.contains("hostport_hairpin { 10.244.1.5 . 10.244.1.5 }"));
    }

    #[test]
    fn delete_script_removes_only_what_leads_to_the_pod() {
        // The shape `nft -j list table` prints (nftables 1.0.6).
        let listing = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "podnet-cni"}},
            {"map": {"name": "hostport_on", "elem": [
                [{"concat": ["172.18.0.3", "udp", 53]}, {"concat": ["10.244.1.5", 5353]}]]}},
            {"map": {"name": "hostport_any", "elem": [
                [{"concat": ["tcp", 8080]}, {"concat": ["10.244.1.5", 80]}],
                [{"concat": ["tcp", 9090]}, {"concat": ["10.244.1.6", 80]}]]}},
            {"set": {"name": "hostport_hairpin", "elem": [
                {"concat": ["10.244.1.5", "10.244.1.5"]},
                {"concat": ["10.244.1.6", "10.244.1.6"]}]}}
        ]});
        let s = delete_script(&listing, &["10.244.1.5".parse().unwrap()]);
        assert_eq!(
            s,
            "delete element ip podnet-cni hostport_any { tcp . 8080 }\n\
             delete element ip podnet-cni hostport_on { 172.18.0.3 . udp . 53 }\n\
             delete element ip podnet-cni hostport_hairpin { 10.244.1.5 . 10.244.1.5 }\n"
        );
        assert_eq!(
            delete_script(&listing, &["10.244.1.9".parse().unwrap()]),
            ""
        );
    }
}
