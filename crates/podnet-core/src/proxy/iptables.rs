//! The iptables rendering of a [`ProxyState`], for `--proxy-mode=iptables`:
//! `iptables-restore --noflush` text with kube-proxy's chain names
//! (`KUBE-SERVICES`, `KUBE-SVC-*`, `KUBE-EXT-*`, `KUBE-SVL-*`, `KUBE-SEP-*`,
//! `KUBE-NODEPORTS`, `KUBE-POSTROUTING`, `KUBE-MARK-MASQ`), so that
//! `iptables -t nat -L -n | grep KUBE` shows what operators expect. Rule
//! count grows with services here, as in kube-proxy; the nft backend is the
//! one that scales.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ipnet::IpNet;

use super::nft::MASQ_MARK;
use super::{Endpoint, Family, ProxyState, ServicePortName, ServicePortPlan};

/// Chains of one table: name → rules (without the `-A NAME` prefix).
pub type Chains = BTreeMap<String, Vec<String>>;

/// The kube-proxy-shaped ruleset of one family: the chains podnet owns in
/// the `nat` and `filter` tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IptablesRuleset {
    /// The family (decides `iptables-restore` or `ip6tables-restore`).
    pub family: Option<Family>,
    /// Chains of the `nat` table.
    pub nat: Chains,
    /// Chains of the `filter` table.
    pub filter: Chains,
}

/// The jumps from built-in chains into podnet's, as `(table, chain, rule)`;
/// an applier makes sure each exists once (they are not in the restore
/// text, which with `--noflush` would append duplicates).
pub const JUMPS: &[(&str, &str, &str)] = &[
    (
        "nat",
        "PREROUTING",
        "-m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
    ),
    (
        "nat",
        "OUTPUT",
        "-m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
    ),
    (
        "nat",
        "POSTROUTING",
        "-m comment --comment kubernetes-postrouting-rules -j KUBE-POSTROUTING",
    ),
    (
        "filter",
        "INPUT",
        "-m conntrack --ctstate NEW -m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
    ),
    (
        "filter",
        "OUTPUT",
        "-m conntrack --ctstate NEW -m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
    ),
    (
        "filter",
        "INPUT",
        "-m conntrack --ctstate NEW -m comment --comment kubernetes-externally-visible-service-portals -j KUBE-EXTERNAL-SERVICES",
    ),
];

/// A short stable name fragment (16 base32 characters) for `text`, as
/// kube-proxy derives `KUBE-SVC-<hash>` from the service port's name.
pub fn chain_hash(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let fnv = |seed: u64| {
        let mut h = seed;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    };
    let a = fnv(0xcbf2_9ce4_8422_2325);
    let b = fnv(0x8422_2325_cbf2_9ce4);
    let mut out = String::with_capacity(16);
    for i in 0..16 {
        let word = if i < 8 { a } else { b };
        let idx = ((word >> ((i % 8) * 5)) & 31) as usize;
        out.push(ALPHABET[idx] as char);
    }
    out
}

fn host(addr: &std::net::IpAddr) -> String {
    match addr {
        std::net::IpAddr::V4(a) => format!("{a}/32"),
        std::net::IpAddr::V6(a) => format!("{a}/128"),
    }
}

fn hostport(ep: &Endpoint) -> String {
    match ep.addr {
        std::net::IpAddr::V4(a) => format!("{a}:{}", ep.port),
        std::net::IpAddr::V6(a) => format!("[{a}]:{}", ep.port),
    }
}

/// Builds the ruleset of `family` from `state`.
pub fn ruleset(state: &ProxyState, family: Family) -> IptablesRuleset {
    let mut nat: Chains = BTreeMap::new();
    let mut filter: Chains = BTreeMap::new();
    let cidrs: Vec<&IpNet> = state
        .cluster_cidrs
        .iter()
        .filter(|c| {
            matches!(
                (c, family),
                (IpNet::V4(_), Family::V4) | (IpNet::V6(_), Family::V6)
            )
        })
        .collect();
    let cidr = cidrs.first().map(|c| c.to_string());
    for base in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        nat.insert(base.into(), Vec::new());
    }
    for base in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"] {
        filter.insert(base.into(), Vec::new());
    }
    let mut nodeport_rules = Vec::new();
    for sp in state.ports.values() {
        let Some(vip) = sp.cluster_ip(family) else {
            continue;
        };
        let name = &sp.name;
        let proto = name.protocol.as_str();
        let id = chain_hash(&name.to_string());
        let svc_chain = format!("KUBE-SVC-{id}");
        let svl_chain = format!("KUBE-SVL-{id}");
        let ext_chain = format!("KUBE-EXT-{id}");
        let comment = format!("-m comment --comment \"{name}\"");
        let cluster_eps = sp.cluster_endpoints(family);
        let external_eps = sp.external_endpoints(family);
        let all_eps: Vec<&Endpoint> = sp
            .endpoints
            .iter()
            .filter(|e| Family::of(&e.addr) == family)
            .collect();
        let local_eps: Vec<&Endpoint> = all_eps.iter().copied().filter(|e| e.local).collect();

        // Endpoint chains for every endpoint any path may use.
        for ep in &all_eps {
            let sep = sep_chain(name, ep);
            let mut rules = vec![format!("{comment} -s {} -j KUBE-MARK-MASQ", host(&ep.addr))];
            let recent = sp
                .affinity_timeout
                .map(|_| format!(" -m recent --name {sep} --set --rsource"))
                .unwrap_or_default();
            rules.push(format!(
                "{comment} -p {proto}{recent} -m {proto} -j DNAT --to-destination {}",
                hostport(ep)
            ));
            nat.insert(sep, rules);
        }

        let vip_match = format!(
            "-d {} -p {proto} -m {proto} --dport {}",
            host(&vip),
            sp.port
        );
        // Cluster path.
        if cluster_eps.is_empty() {
            filter
                .get_mut("KUBE-SERVICES")
                .expect("base chain")
                .push(format!(
                    "{comment} {vip_match} -j REJECT{}",
                    reject_with(proto)
                ));
        } else {
            let target = if sp.internal_local {
                &svl_chain
            } else {
                &svc_chain
            };
            nat.get_mut("KUBE-SERVICES")
                .expect("base chain")
                .push(format!("{comment} {vip_match} -j {target}"));
        }
        if !all_eps.is_empty() {
            let mut svc_rules = Vec::new();
            if let Some(c) = &cidr {
                svc_rules.push(format!("{comment} ! -s {c} {vip_match} -j KUBE-MARK-MASQ"));
            }
            svc_rules.extend(balance(name, sp, &all_eps));
            nat.insert(svc_chain.clone(), svc_rules);
        }
        if (sp.internal_local || sp.external_local) && !local_eps.is_empty() {
            nat.insert(svl_chain.clone(), balance(name, sp, &local_eps));
        }

        // External paths: external IPs and the NodePort.
        let externals: Vec<_> = sp
            .external_ips
            .iter()
            .filter(|a| Family::of(a) == family && **a != vip)
            .collect();
        if externals.is_empty() && sp.node_port.is_none() {
            continue;
        }
        if external_eps.is_empty() {
            for ip in &externals {
                filter
                    .get_mut("KUBE-EXTERNAL-SERVICES")
                    .expect("base chain")
                    .push(format!(
                        "{comment} -d {} -p {proto} -m {proto} --dport {} -j REJECT{}",
                        host(ip),
                        sp.port,
                        reject_with(proto)
                    ));
            }
            if let Some(np) = sp.node_port {
                filter.get_mut("KUBE-EXTERNAL-SERVICES").expect("base chain").push(format!(
                    "{comment} -m addrtype --dst-type LOCAL -p {proto} -m {proto} --dport {np} -j REJECT{}",
                    reject_with(proto)
                ));
            }
            continue;
        }
        let mut ext_rules = Vec::new();
        if sp.external_local {
            ext_rules.push(format!("{comment} -j {svl_chain}"));
        } else {
            match &cidr {
                Some(c) => ext_rules.push(format!("{comment} ! -s {c} -j KUBE-MARK-MASQ")),
                None => ext_rules.push(format!("{comment} -j KUBE-MARK-MASQ")),
            }
            ext_rules.push(format!("{comment} -j {svc_chain}"));
        }
        nat.insert(ext_chain.clone(), ext_rules);
        for ip in externals {
            nat.get_mut("KUBE-SERVICES")
                .expect("base chain")
                .push(format!(
                    "{comment} -d {} -p {proto} -m {proto} --dport {} -j {ext_chain}",
                    host(ip),
                    sp.port
                ));
        }
        if let Some(np) = sp.node_port {
            nodeport_rules.push(format!(
                "{comment} -p {proto} -m {proto} --dport {np} -j {ext_chain}"
            ));
        }
    }
    nat.get_mut("KUBE-NODEPORTS")
        .expect("base chain")
        .extend(nodeport_rules);
    nat.get_mut("KUBE-SERVICES").expect("base chain").push(
        "-m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
            .into(),
    );
    nat.get_mut("KUBE-MARK-MASQ")
        .expect("base chain")
        .push(format!("-j MARK --or-mark {MASQ_MARK:#x}"));
    nat.get_mut("KUBE-POSTROUTING").expect("base chain").extend([
        format!("-m mark ! --mark {MASQ_MARK:#x}/{MASQ_MARK:#x} -j RETURN"),
        format!("-j MARK --xor-mark {MASQ_MARK:#x}"),
        "-m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
            .into(),
    ]);
    IptablesRuleset {
        family: Some(family),
        nat,
        filter,
    }
}

fn reject_with(proto: &str) -> &'static str {
    if proto == "tcp" {
        " --reject-with tcp-reset"
    } else {
        ""
    }
}

fn sep_chain(name: &ServicePortName, ep: &Endpoint) -> String {
    format!(
        "KUBE-SEP-{}",
        chain_hash(&format!("{name}:{}", hostport(ep)))
    )
}

/// The jump rules of a service chain: affinity checks first, then an even
/// random split (probability 1/n, 1/(n-1), … as kube-proxy computes it).
fn balance(name: &ServicePortName, sp: &ServicePortPlan, eps: &[&Endpoint]) -> Vec<String> {
    let comment = format!("-m comment --comment \"{name}\"");
    let mut rules = Vec::new();
    if let Some(t) = sp.affinity_timeout {
        for ep in eps {
            let sep = sep_chain(name, ep);
            rules.push(format!(
                "{comment} -m recent --name {sep} --rcheck --seconds {t} --reap -j {sep}"
            ));
        }
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let sep = sep_chain(name, ep);
        if i + 1 == n {
            rules.push(format!("{comment} -j {sep}"));
        } else {
            let p = 1.0 / (n - i) as f64;
            rules.push(format!(
                "{comment} -m statistic --mode random --probability {p:.11} -j {sep}"
            ));
        }
    }
    rules
}

impl IptablesRuleset {
    /// `iptables-restore --noflush` text that makes the kernel hold exactly
    /// this ruleset: every chain declared (which flushes it) and refilled,
    /// and the chains of `previous` that are gone flushed and deleted.
    pub fn restore_text(&self, previous: Option<&IptablesRuleset>) -> String {
        let mut s = String::new();
        for (table, chains, old) in [
            ("nat", &self.nat, previous.map(|p| &p.nat)),
            ("filter", &self.filter, previous.map(|p| &p.filter)),
        ] {
            let _ = writeln!(s, "*{table}");
            let stale: Vec<&String> = old
                .into_iter()
                .flat_map(|o| o.keys())
                .filter(|k| !chains.contains_key(*k))
                .collect();
            for name in chains.keys().chain(stale.iter().copied()) {
                let _ = writeln!(s, ":{name} - [0:0]");
            }
            for (name, rules) in chains {
                for r in rules {
                    let _ = writeln!(s, "-A {name} {r}");
                }
            }
            for name in stale {
                let _ = writeln!(s, "-X {name}");
            }
            s.push_str("COMMIT\n");
        }
        s
    }

    /// The number of rules (grows with services and endpoints, as in
    /// kube-proxy).
    pub fn rule_count(&self) -> usize {
        self.nat
            .values()
            .chain(self.filter.values())
            .map(Vec::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan;
    use super::*;
    use crate::proxy::NodeFacts;
    use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint as K8sEndpoint, EndpointPort, EndpointSlice};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(name: &str, ip: &str, node_port: Option<i32>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                type_: node_port.map(|_| "NodePort".into()),
                ports: Some(vec![ServicePort {
                    port: 80,
                    node_port,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn slice(name: &str, addrs: &[&str]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-x")),
                namespace: Some("default".into()),
                labels: Some([("kubernetes.io/service-name".into(), name.into())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: addrs
                .iter()
                .map(|a| K8sEndpoint {
                    addresses: vec![a.to_string()],
                    node_name: Some("n1".into()),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                port: Some(8080),
                ..Default::default()
            }]),
        }
    }

    fn facts() -> NodeFacts {
        NodeFacts {
            node_name: "n1".into(),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        }
    }

    #[test]
    fn kube_proxy_chain_names_and_even_split() {
        let p = plan(
            &[svc("web", "10.96.0.5", Some(30080))],
            &[slice("web", &["10.244.1.2", "10.244.1.3", "10.244.1.4"])],
            &facts(),
        );
        let rs = ruleset(&p.state, Family::V4);
        let text = rs.restore_text(None);
        for needle in [
            ":KUBE-SERVICES - [0:0]",
            ":KUBE-NODEPORTS - [0:0]",
            ":KUBE-POSTROUTING - [0:0]",
            ":KUBE-MARK-MASQ - [0:0]",
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
            "--probability 0.33333333333",
            "--probability 0.50000000000",
            "-j DNAT --to-destination 10.244.1.4:8080",
            "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
            "--dport 30080 -j KUBE-EXT-",
            "-j MASQUERADE --random-fully",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let svc_chains = rs.nat.keys().filter(|k| k.starts_with("KUBE-SVC-")).count();
        let sep_chains = rs.nat.keys().filter(|k| k.starts_with("KUBE-SEP-")).count();
        assert_eq!((svc_chains, sep_chains), (1, 3));
        assert!(
            text.contains("*nat\n") && text.contains("*filter\n") && text.ends_with("COMMIT\n")
        );
    }

    #[test]
    fn no_endpoints_reject_in_filter_and_stale_chains_are_deleted() {
        let before = ruleset(
            &plan(
                &[svc("web", "10.96.0.5", None)],
                &[slice("web", &["10.244.1.2"])],
                &facts(),
            )
            .state,
            Family::V4,
        );
        let after = ruleset(
            &plan(&[svc("web", "10.96.0.5", None)], &[], &facts()).state,
            Family::V4,
        );
        let text = after.restore_text(Some(&before));
        assert!(text.contains(
            "-A KUBE-SERVICES -m comment --comment \"default/web/tcp\" -d 10.96.0.5/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset"
        ), "{text}");
        let sep = before
            .nat
            .keys()
            .find(|k| k.starts_with("KUBE-SEP-"))
            .unwrap();
        assert!(text.contains(&format!("-X {sep}\n")), "{text}");
        assert!(!after.nat.keys().any(|k| k.starts_with("KUBE-SVC-")));
    }

    #[test]
    fn chain_hash_is_stable_and_distinct() {
        assert_eq!(chain_hash("default/web/tcp"), chain_hash("default/web/tcp"));
        assert_ne!(chain_hash("default/web/tcp"), chain_hash("default/web/udp"));
        assert_eq!(chain_hash("x").len(), 16);
    }
}
