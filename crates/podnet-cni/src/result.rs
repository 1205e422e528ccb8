//! The ADD result, held once and written in whichever spec version the
//! runtime asked for; also parsed back from `prevResult` and from delegated
//! IPAM plugins, whatever their version.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};

use crate::error::{CniError, code};
use crate::version;

/// An interface the plugin made or touched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC, `aa:bb:...`.
    pub mac: String,
    /// Its MTU (reported from 1.1.0 on).
    pub mtu: Option<u32>,
    /// The netns path when it lives in the container.
    pub sandbox: Option<String>,
}

/// An address given to the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with the subnet's prefix.
    pub address: IpNet,
    /// The gateway of its range.
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

/// A route given to the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteResult {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    pub gw: Option<IpAddr>,
}

/// A whole result.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CniResult {
    /// Interfaces, host side first (bridge, host veth, container veth).
    pub interfaces: Vec<Interface>,
    /// Addresses, in range-set order.
    pub ips: Vec<IpConfig>,
    /// Routes.
    pub routes: Vec<RouteResult>,
    /// `dns`, passed through from IPAM.
    pub dns: Option<Value>,
}

/// Formats a MAC as the spec writes it.
pub fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl CniResult {
    /// The result in the shape of spec version `v`.
    pub fn to_json(&self, v: &str) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = json!({"name": i.name, "mac": i.mac});
                if let (Some(mtu), true) = (i.mtu, version::interfaces_carry_mtu(v)) {
                    o["mtu"] = json!(mtu);
                }
                if let Some(s) = &i.sandbox {
                    o["sandbox"] = json!(s);
                }
                o
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = json!({"address": ip.address.to_string()});
                if version::ips_carry_version(v) {
                    o["version"] = json!(if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    });
                }
                if let Some(gw) = ip.gateway {
                    o["gateway"] = json!(gw.to_string());
                }
                if let Some(i) = ip.interface {
                    o["interface"] = json!(i);
                }
                o
            })
            .collect();
        let mut out = json!({"cniVersion": v, "interfaces": interfaces, "ips": ips});
        if !self.routes.is_empty() {
            out["routes"] = Value::Array(
                self.routes
                    .iter()
                    .map(|r| {
                        let mut o = json!({"dst": r.dst.to_string()});
                        if let Some(gw) = r.gw {
                            o["gw"] = json!(gw.to_string());
                        }
                        o
                    })
                    .collect(),
            );
        }
        out["dns"] = self.dns.clone().unwrap_or_else(|| json!({}));
        out
    }

    /// Reads a result of any supported version (a `prevResult`, or what a
    /// delegated IPAM plugin printed).
    pub fn from_json(v: &Value, what: &str) -> Result<Self, CniError> {
        let bad = |field: &str, why: &str| {
            CniError::new(code::DECODE_FAILURE, format!("{what}.{field}: {why}"))
        };
        let mut r = CniResult::default();
        if let Some(ifs) = v.get("interfaces").and_then(Value::as_array) {
            for (n, i) in ifs.iter().enumerate() {
                r.interfaces.push(Interface {
                    name: i
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad(&format!("interfaces[{n}].name"), "missing"))?
                        .into(),
                    mac: i.get("mac").and_then(Value::as_str).unwrap_or("").into(),
                    mtu: i.get("mtu").and_then(Value::as_u64).map(|m| m as u32),
                    sandbox: i.get("sandbox").and_then(Value::as_str).map(String::from),
                });
            }
        }
        if let Some(ips) = v.get("ips").and_then(Value::as_array) {
            for (n, ip) in ips.iter().enumerate() {
                let field = format!("ips[{n}].address");
                let addr = ip
                    .get("address")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(&field, "missing"))?;
                let address: IpNet = addr.parse().map_err(|_| bad(&field, "not a CIDR"))?;
                let gateway = match ip.get("gateway").and_then(Value::as_str) {
                    Some(g) => Some(
                        g.parse()
                            .map_err(|_| bad(&format!("ips[{n}].gateway"), "not an IP"))?,
                    ),
                    None => None,
                };
                r.ips.push(IpConfig {
                    address,
                    gateway,
                    interface: ip
                        .get("interface")
                        .and_then(Value::as_u64)
                        .map(|i| i as usize),
                });
            }
        }
        if let Some(routes) = v.get("routes").and_then(Value::as_array) {
            for (n, rt) in routes.iter().enumerate() {
                let field = format!("routes[{n}].dst");
                let dst: IpNet = rt
                    .get("dst")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(&field, "missing"))?
                    .parse()
                    .map_err(|_| bad(&field, "not a CIDR"))?;
                let gw = match rt.get("gw").and_then(Value::as_str) {
                    Some(g) => Some(
                        g.parse()
                            .map_err(|_| bad(&format!("routes[{n}].gw"), "not an IP"))?,
                    ),
                    None => None,
                };
                r.routes.push(RouteResult { dst, gw });
            }
        }
        r.dns = v.get("dns").cloned().filter(|d| !d.is_null());
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: Some(1450),
                sandbox: Some("/run/netns/x".into()),
            }],
            ips: vec![IpConfig {
                address: "10.1.0.2/24".parse().unwrap(),
                gateway: Some("10.1.0.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![RouteResult {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.1.0.1".parse().unwrap()),
            }],
            dns: None,
        }
    }

    #[test]
    fn shapes_per_version() {
        let r = sample();
        let old = r.to_json("0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let new = r.to_json("1.1.0");
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["interfaces"][0]["mtu"], 1450);
        assert_eq!(new["cniVersion"], "1.1.0");
        let back = CniResult::from_json(&new, "prevResult").unwrap();
        assert_eq!(back.ips, r.ips);
        assert_eq!(back.routes, r.routes);
    }
}
