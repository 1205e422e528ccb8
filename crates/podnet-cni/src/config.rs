//! The network configuration, with the keys an operator of the reference
//! `bridge` + `host-local` plugins already knows. Parsed field by field from
//! a JSON value so every error names the field at fault; unknown keys are
//! ignored, as CNI plugins do.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::error::{CniError, code};
use crate::version;

/// Default bridge name.
pub const DEFAULT_BRIDGE: &str = "podnet0";
/// Where allocations are kept unless `ipam.dataDir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/podnet";

/// `gsoMaxSize` bounds: the kernel's 64 KiB default up to its
/// `GSO_MAX_SIZE` (what a veth's `tso_max_size` allows).
const GSO_MAX_SIZE_RANGE: std::ops::RangeInclusive<u64> = 65536..=524280;

/// One range of a range set (host-local's `range`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    /// The subnet addresses come from, and its prefix for the pod.
    pub subnet: IpNet,
    /// First address handed out.
    pub start: IpAddr,
    /// Last address handed out.
    pub end: IpAddr,
    /// The gateway (never handed out; held by the bridge).
    pub gateway: IpAddr,
}

/// A route to put in the pod (and in the result).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConf {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; the range's gateway when absent.
    pub gw: Option<IpAddr>,
}

/// One `runtimeConfig.portMappings` entry: a container's `hostPort`, which
/// the plugin forwards from the node's addresses to the pod (the reference
/// `portmap` plugin's capability, served without a second plugin exec).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    /// The node's port.
    pub host_port: u16,
    /// The pod's port it reaches.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`, as nft names them.
    pub protocol: &'static str,
    /// The one node address it listens on; None for all of them.
    pub host_ip: Option<IpAddr>,
}

/// How addresses are obtained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ipam {
    /// podnet's own, host-local semantics.
    Builtin {
        /// Range sets: one address per set, in order.
        ranges: Vec<Vec<Range>>,
        /// Routes for the pod; default routes via the gateway when empty.
        routes: Vec<RouteConf>,
        /// Where allocations live.
        data_dir: PathBuf,
    },
    /// Another IPAM plugin on `CNI_PATH`.
    Delegate {
        /// Its `type`.
        plugin: String,
    },
}

/// The parsed configuration.
#[derive(Clone, Debug)]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: String,
    /// `name`: the network's name, keys the allocation store.
    pub name: String,
    /// `bridge`.
    pub bridge: String,
    /// `isGateway`: the bridge holds the gateway addresses.
    pub is_gateway: bool,
    /// `mtu` of the bridge and both veth ends.
    pub mtu: u32,
    /// `hairpinMode` on the host end.
    pub hairpin: bool,
    /// `gsoMaxSize`: the largest packet, in bytes, the veth ends build and
    /// pass in one buffer (BIG TCP, above the kernel's 65536). Absent: the
    /// kernel's default. Only for networks that never encapsulate.
    pub gso_max_size: Option<u32>,
    /// `ipMasq` for traffic leaving the ranges' subnets.
    pub ip_masq: bool,
    /// `ipam`.
    pub ipam: Ipam,
    /// `runtimeConfig.ips`: addresses the runtime asks for.
    pub requested_ips: Vec<IpAddr>,
    /// `runtimeConfig.mac`: the pod interface's MAC.
    pub requested_mac: Option<[u8; 6]>,
    /// `runtimeConfig.portMappings`: the pod's hostPorts.
    pub port_mappings: Vec<PortMapping>,
    /// `prevResult`, as given.
    pub prev_result: Option<Value>,
    /// GC's `cni.dev/valid-attachments`: (containerID, ifname).
    pub valid_attachments: Option<Vec<(String, String)>>,
}

/// Parses the bytes the runtime wrote on stdin.
pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("network configuration is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(CniError::new(
            code::DECODE_FAILURE,
            "network configuration must be a JSON object",
        ));
    };
    from_object(&obj)
}

/// Reads `cniVersion` alone (VERSION needs nothing else).
pub fn cni_version_of(bytes: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    v.get("cniVersion")?.as_str().map(String::from)
}

fn from_object(obj: &Map<String, Value>) -> Result<NetConf, CniError> {
    let cni_version = string(obj, "cniVersion", "cniVersion")?
        .ok_or_else(|| CniError::config("cniVersion", "missing"))?;
    if !version::SUPPORTED.contains(&cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI version {cni_version:?}: podnet supports {}",
                version::SUPPORTED.join(", ")
            ),
        ));
    }
    let name = string(obj, "name", "name")?.ok_or_else(|| CniError::config("name", "missing"))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(CniError::config(
            "name",
            format!("{name:?} must be non-empty and alphanumeric, '_', '.' or '-'"),
        ));
    }
    let bridge = string(obj, "bridge", "bridge")?.unwrap_or_else(|| DEFAULT_BRIDGE.into());
    crate::env::validate_ifname(&bridge).map_err(|e| CniError::config("bridge", e.msg))?;
    let mtu = match obj.get("mtu") {
        None | Some(Value::Null) => 1500,
        Some(v) => {
            let m = v
                .as_u64()
                .ok_or_else(|| CniError::config("mtu", format!("{v} is not a number")))?;
            if !(68..=65535).contains(&m) {
                return Err(CniError::config("mtu", format!("{m} is outside 68..65535")));
            }
            m as u32
        }
    };
    let gso_max_size = match obj.get("gsoMaxSize") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let m = v
                .as_u64()
                .ok_or_else(|| CniError::config("gsoMaxSize", format!("{v} is not a number")))?;
            if !(GSO_MAX_SIZE_RANGE).contains(&m) {
                return Err(CniError::config(
                    "gsoMaxSize",
                    format!(
                        "{m} is outside {}..={} (the kernel's bounds)",
                        GSO_MAX_SIZE_RANGE.start(),
                        GSO_MAX_SIZE_RANGE.end()
                    ),
                ));
            }
            Some(m as u32)
        }
    };
    let ipam_obj = match obj.get("ipam") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(v) => return Err(CniError::config("ipam", format!("{v} is not an object"))),
    };
    let ipam = parse_ipam(&ipam_obj)?;

    let mut requested_ips = Vec::new();
    let mut requested_mac = None;
    let mut port_mappings = Vec::new();
    if let Some(rc) = obj.get("runtimeConfig") {
        let rc = rc
            .as_object()
            .ok_or_else(|| CniError::config("runtimeConfig", "not an object"))?;
        if let Some(ips) = rc.get("ips") {
            let ips = ips
                .as_array()
                .ok_or_else(|| CniError::config("runtimeConfig.ips", "not an array"))?;
            for (i, ip) in ips.iter().enumerate() {
                let field = format!("runtimeConfig.ips[{i}]");
                let s = ip
                    .as_str()
                    .ok_or_else(|| CniError::config(&field, "not a string"))?;
                requested_ips.push(parse_ip_or_cidr(s).map_err(|e| CniError::config(&field, e))?);
            }
        }
        if let Some(mac) = rc.get("mac") {
            let s = mac
                .as_str()
                .ok_or_else(|| CniError::config("runtimeConfig.mac", "not a string"))?;
            requested_mac =
                Some(parse_mac(s).map_err(|e| CniError::config("runtimeConfig.mac", e))?);
        }
        if let Some(pm) = rc.get("portMappings").filter(|v| !v.is_null()) {
            let pm = pm
                .as_array()
                .ok_or_else(|| CniError::config("runtimeConfig.portMappings", "not an array"))?;
            for (i, m) in pm.iter().enumerate() {
                port_mappings.push(parse_port_mapping(
                    m,
                    &format!("runtimeConfig.portMappings[{i}]"),
                )?);
            }
        }
    }
    let valid_attachments = match obj.get("cni.dev/valid-attachments") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let field = format!("cni.dev/valid-attachments[{i}]");
                let id = item
                    .get("containerID")
                    .and_then(Value::as_str)
                    .ok_or_else(|| CniError::config(&field, "containerID missing"))?;
                let ifname = item
                    .get("ifname")
                    .and_then(Value::as_str)
                    .ok_or_else(|| CniError::config(&field, "ifname missing"))?;
                out.push((id.to_string(), ifname.to_string()));
            }
            Some(out)
        }
        Some(_) => {
            return Err(CniError::config(
                "cni.dev/valid-attachments",
                "not an array",
            ));
        }
    };

    Ok(NetConf {
        cni_version,
        name,
        bridge,
        is_gateway: boolean(obj, "isGateway", true)?,
        mtu,
        hairpin: boolean(obj, "hairpinMode", true)?,
        gso_max_size,
        ip_masq: boolean(obj, "ipMasq", false)?,
        ipam,
        requested_ips,
        requested_mac,
        port_mappings,
        prev_result: obj.get("prevResult").cloned().filter(|v| !v.is_null()),
        valid_attachments,
    })
}

/// One portMappings entry, each error naming its field.
fn parse_port_mapping(m: &Value, field: &str) -> Result<PortMapping, CniError> {
    let m = m
        .as_object()
        .ok_or_else(|| CniError::config(field, "not an object"))?;
    let port = |key: &str| -> Result<u16, CniError> {
        let f = format!("{field}.{key}");
        let v = m.get(key).ok_or_else(|| CniError::config(&f, "missing"))?;
        v.as_u64()
            .filter(|p| (1..=65535).contains(p))
            .map(|p| p as u16)
            .ok_or_else(|| CniError::config(&f, format!("{v} is not a port (1..65535)")))
    };
    let host_port = port("hostPort")?;
    let container_port = port("containerPort")?;
    let protocol = match m.get("protocol") {
        None | Some(Value::Null) => "tcp",
        Some(v) => match v.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("tcp" | "") => "tcp",
            Some("udp") => "udp",
            Some("sctp") => "sctp",
            _ => {
                return Err(CniError::config(
                    &format!("{field}.protocol"),
                    format!("{v} is not tcp, udp or sctp"),
                ));
            }
        },
    };
    let host_ip = match m.get("hostIP") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let f = format!("{field}.hostIP");
            let s = v
                .as_str()
                .ok_or_else(|| CniError::config(&f, "not a string"))?;
            if s.is_empty() {
                None
            } else {
                let ip: IpAddr = s
                    .parse()
                    .map_err(|_| CniError::config(&f, format!("{s:?} is not an IP address")))?;
                (!ip.is_unspecified()).then_some(ip)
            }
        }
    };
    Ok(PortMapping {
        host_port,
        container_port,
        protocol,
        host_ip,
    })
}

fn parse_ipam(ipam: &Map<String, Value>) -> Result<Ipam, CniError> {
    let kind = string(ipam, "type", "ipam.type")?.unwrap_or_else(|| "podnet".into());
    if kind != "podnet" {
        if kind.is_empty() || kind.contains('/') || kind.starts_with('.') {
            return Err(CniError::config(
                "ipam.type",
                format!("{kind:?} is not a plugin name"),
            ));
        }
        return Ok(Ipam::Delegate { plugin: kind });
    }
    let mut sets: Vec<Vec<Range>> = Vec::new();
    match ipam.get("ranges") {
        Some(Value::Array(raw_sets)) => {
            for (i, set) in raw_sets.iter().enumerate() {
                let Value::Array(ranges) = set else {
                    return Err(CniError::config(
                        &format!("ipam.ranges[{i}]"),
                        "a range set must be an array of ranges",
                    ));
                };
                if ranges.is_empty() {
                    return Err(CniError::config(
                        &format!("ipam.ranges[{i}]"),
                        "a range set needs at least one range",
                    ));
                }
                let mut parsed = Vec::new();
                for (j, r) in ranges.iter().enumerate() {
                    parsed.push(parse_range(r, &format!("ipam.ranges[{i}][{j}]"))?);
                }
                sets.push(parsed);
            }
        }
        Some(Value::Null) | None => {
            // host-local also accepts a single range at the top level.
            if ipam.contains_key("subnet") {
                sets.push(vec![parse_range(&Value::Object(ipam.clone()), "ipam")?]);
            }
        }
        Some(_) => return Err(CniError::config("ipam.ranges", "not an array")),
    }
    if sets.is_empty() {
        return Err(CniError::config(
            "ipam.ranges",
            "missing: give at least one range set with a subnet",
        ));
    }
    for (i, set) in sets.iter().enumerate() {
        let v4 = set[0].subnet.addr().is_ipv4();
        if set.iter().any(|r| r.subnet.addr().is_ipv4() != v4) {
            return Err(CniError::config(
                &format!("ipam.ranges[{i}]"),
                "a range set mixes IPv4 and IPv6",
            ));
        }
    }
    let all: Vec<(usize, &Range)> = sets
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.iter().map(move |r| (i, r)))
        .collect();
    for (n, (_, a)) in all.iter().enumerate() {
        for (j, b) in &all[n + 1..] {
            if overlaps(a, b) {
                return Err(CniError::config(
                    &format!("ipam.ranges[{j}]"),
                    format!("range {}-{} overlaps {}-{}", b.start, b.end, a.start, a.end),
                ));
            }
        }
    }
    let mut routes = Vec::new();
    match ipam.get("routes") {
        None | Some(Value::Null) => {}
        Some(Value::Array(rs)) => {
            for (i, r) in rs.iter().enumerate() {
                let field = format!("ipam.routes[{i}]");
                let dst = r
                    .get("dst")
                    .and_then(Value::as_str)
                    .ok_or_else(|| CniError::config(&format!("{field}.dst"), "missing"))?;
                let dst: IpNet = dst.parse().map_err(|e| {
                    CniError::config(&format!("{field}.dst"), format!("{dst:?}: {e}"))
                })?;
                let gw = match r.get("gw").and_then(Value::as_str) {
                    Some(g) => Some(g.parse::<IpAddr>().map_err(|e| {
                        CniError::config(&format!("{field}.gw"), format!("{g:?}: {e}"))
                    })?),
                    None => None,
                };
                routes.push(RouteConf {
                    dst: dst.trunc(),
                    gw,
                });
            }
        }
        Some(_) => return Err(CniError::config("ipam.routes", "not an array")),
    }
    let data_dir = match string(ipam, "dataDir", "ipam.dataDir")? {
        Some(d) if d.starts_with('/') => PathBuf::from(d),
        Some(d) => {
            return Err(CniError::config(
                "ipam.dataDir",
                format!("{d:?} must be an absolute path"),
            ));
        }
        None => PathBuf::from(DEFAULT_DATA_DIR),
    };
    Ok(Ipam::Builtin {
        ranges: sets,
        routes,
        data_dir,
    })
}

fn overlaps(a: &Range, b: &Range) -> bool {
    a.start.is_ipv4() == b.start.is_ipv4() && a.start <= b.end && b.start <= a.end
}

fn parse_range(r: &Value, field: &str) -> Result<Range, CniError> {
    let obj = r
        .as_object()
        .ok_or_else(|| CniError::config(field, "a range must be an object"))?;
    let subnet_s = string(obj, "subnet", &format!("{field}.subnet"))?
        .ok_or_else(|| CniError::config(&format!("{field}.subnet"), "missing"))?;
    let subnet: IpNet = subnet_s
        .parse()
        .map_err(|e| CniError::config(&format!("{field}.subnet"), format!("{subnet_s:?}: {e}")))?;
    let subnet = subnet.trunc();
    let (first, last) = usable(&subnet).ok_or_else(|| {
        CniError::config(
            &format!("{field}.subnet"),
            format!("{subnet} is too small to hold a gateway and a pod"),
        )
    })?;
    let addr = |key: &str, default: IpAddr| -> Result<IpAddr, CniError> {
        let f = format!("{field}.{key}");
        match string(obj, key, &f)? {
            None => Ok(default),
            Some(s) => {
                let ip: IpAddr = s
                    .parse()
                    .map_err(|e| CniError::config(&f, format!("{s:?}: {e}")))?;
                if !subnet.contains(&ip) {
                    return Err(CniError::config(&f, format!("{ip} is outside {subnet}")));
                }
                Ok(ip)
            }
        }
    };
    let gateway = addr("gateway", first)?;
    let start = addr("rangeStart", first)?;
    let end = addr("rangeEnd", last)?;
    if start > end {
        return Err(CniError::config(
            &format!("{field}.rangeStart"),
            format!("{start} is after rangeEnd {end}"),
        ));
    }
    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

/// First and last addresses a subnet can hand out (network and, for IPv4,
/// broadcast excluded); `None` when fewer than two remain.
fn usable(net: &IpNet) -> Option<(IpAddr, IpAddr)> {
    match net {
        IpNet::V4(n) => {
            let lo = u32::from(n.network()).checked_add(1)?;
            let hi = u32::from(n.broadcast()).checked_sub(1)?;
            (lo < hi).then(|| (IpAddr::V4(lo.into()), IpAddr::V4(hi.into())))
        }
        IpNet::V6(n) => {
            let lo = u128::from(n.network()).checked_add(1)?;
            let hi = u128::from(n.broadcast());
            (lo < hi).then(|| (IpAddr::V6(lo.into()), IpAddr::V6(hi.into())))
        }
    }
}

fn string(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(CniError::config(field, format!("{v} is not a string"))),
    }
}

fn boolean(obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(CniError::config(key, format!("{v} is not true or false"))),
    }
}

fn parse_ip_or_cidr(s: &str) -> Result<IpAddr, String> {
    let ip = s.split('/').next().unwrap_or(s);
    ip.parse().map_err(|e| format!("{s:?}: {e}"))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address"));
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
    }
    if mac[0] & 1 == 1 {
        return Err(format!("{s:?} is a multicast address"));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: &str) -> Result<NetConf, CniError> {
        parse(json.as_bytes())
    }

    #[test]
    fn defaults_follow_the_reference_keys() {
        let c = conf(
            r#"{"cniVersion":"1.1.0","name":"n","type":"podnet",
                "ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]},"unknownKey":3}"#,
        )
        .unwrap();
        assert_eq!(c.bridge, "podnet0");
        assert_eq!(c.mtu, 1500);
        assert!(c.is_gateway && c.hairpin && !c.ip_masq);
        assert_eq!(c.gso_max_size, None);
        let Ipam::Builtin { ranges, .. } = c.ipam else {
            panic!("builtin")
        };
        assert_eq!(ranges[0][0].gateway.to_string(), "10.1.0.1");
        assert_eq!(ranges[0][0].start.to_string(), "10.1.0.1");
        assert_eq!(ranges[0][0].end.to_string(), "10.1.0.254");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("{", 6, "JSON"),
            (r#"{"cniVersion":"9.9.9","name":"n"}"#, 1, "9.9.9"),
            (r#"{"cniVersion":"1.0.0"}"#, 7, "name"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/33"}]]}}"#,
                7,
                "ipam.ranges[0][0].subnet",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","mtu":"x","ipam":{"subnet":"10.0.0.0/24"}}"#,
                7,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","gsoMaxSize":1000000,"ipam":{"subnet":"10.0.0.0/24"}}"#,
                7,
                "gsoMaxSize",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","gsoMaxSize":"big","ipam":{"subnet":"10.0.0.0/24"}}"#,
                7,
                "gsoMaxSize",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.5"}]]}}"#,
                7,
                "rangeStart",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.0/25"}]]}}"#,
                7,
                "overlaps",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{}}"#,
                7,
                "ipam.ranges",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","bridge":"a-very-long-bridge-name","ipam":{"subnet":"10.0.0.0/24"}}"#,
                7,
                "bridge",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.0.0.0/24"},"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80},{"hostPort":70000,"containerPort":80}]}}"#,
                7,
                "runtimeConfig.portMappings[1].hostPort",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.0.0.0/24"},"runtimeConfig":{"portMappings":[{"hostPort":8080}]}}"#,
                7,
                "runtimeConfig.portMappings[0].containerPort: missing",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.0.0.0/24"},"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"icmp"}]}}"#,
                7,
                "runtimeConfig.portMappings[0].protocol",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.0.0.0/24"},"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"hostIP":"node"}]}}"#,
                7,
                "runtimeConfig.portMappings[0].hostIP",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.0.0.0/24"},"runtimeConfig":{"portMappings":{}}}"#,
                7,
                "runtimeConfig.portMappings",
            ),
        ];
        for (json, code, needle) in cases {
            let e = conf(json).unwrap_err();
            assert_eq!(e.code, code, "{json}: {e}");
            assert!(e.msg.contains(needle), "{json}: {} lacks {needle}", e.msg);
        }
    }

    #[test]
    fn port_mappings_default_to_tcp_on_every_address() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.0.0.0/24"},"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80},{"hostPort":53,"containerPort":5353,"protocol":"UDP","hostIP":"172.18.0.3"},{"hostPort":81,"containerPort":81,"hostIP":"0.0.0.0"}]}}"#,
        )
        .unwrap();
        let got: Vec<(u16, u16, &str, Option<String>)> = c
            .port_mappings
            .iter()
            .map(|m| {
                (
                    m.host_port,
                    m.container_port,
                    m.protocol,
                    m.host_ip.map(|i| i.to_string()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (8080, 80, "tcp", None),
                (53, 5353, "udp", Some("172.18.0.3".into())),
                (81, 81, "tcp", None)
            ]
        );
    }

    #[test]
    fn dual_stack_and_delegation() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64"}]]}}"#,
        )
        .unwrap();
        let Ipam::Builtin { ranges, .. } = c.ipam else {
            panic!()
        };
        assert_eq!(ranges[1][0].gateway.to_string(), "fd00::1");
        let c = conf(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"}}"#).unwrap();
        assert_eq!(
            c.ipam,
            Ipam::Delegate {
                plugin: "host-local".into()
            }
        );
    }
}
