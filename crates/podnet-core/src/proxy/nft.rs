//! The nftables rendering of a [`ProxyState`]: one table per family
//! (`ip podnet-proxy`, and `ip6 podnet-proxy` when dual-stack) holding a
//! constant set of rules. Growth goes into maps:
//!
//! - `service-ips` (`daddr . l4proto . dport` → `goto ips-N`) and
//!   `service-nodeports` (`l4proto . dport` → `goto nodeports-N`), where N
//!   is the service's endpoint count;
//! - `ips-N-<proto>` / `nodeports-N-<proto>` (`… . numgen random mod N` →
//!   `addr . port`):
//!   the DNAT target, so load is spread evenly over exactly N endpoints;
//! - `no-endpoint-ips` / `no-endpoint-nodeports`: rejected at once;
//! - `hairpin` (`endpoint . endpoint`) and the masquerade mark `0x4000`;
//! - `affinity-T` (service ports with `ClientIP` affinity of T seconds) and
//!   the dynamic `affinity-<proto>` maps filled from the packet path.
//!
//! Bucket and affinity maps exist once per protocol because nft 1.0.x
//! cannot read back a `typeof` whose data is `th dport` (it then refuses
//! later transactions that refer to the map).
//!
//! Chains exist per distinct endpoint count (and Local/Cluster variant),
//! never per service; the rule count is bounded by the largest service.
//! [`diff`] turns two tables into one transaction of element adds and
//! deletes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{Endpoint, Family, ProxyState, ServicePortPlan};

/// The name of podnet's proxy table (in families `ip` and `ip6`).
pub const TABLE: &str = "podnet-proxy";

/// The packet mark bit that asks for masquerade (kube-proxy's value).
pub const MASQ_MARK: u32 = 0x4000;

/// The size of the dynamic affinity map (client . service entries).
pub const AFFINITY_SIZE: u32 = 65_535;

impl Family {
    /// nft's family keyword for the table (`ip`, `ip6`).
    pub fn nft_family(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// nft's address datatype (`ipv4_addr`, `ipv6_addr`).
    pub fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
}

/// A named set or map, with its declaration and its elements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NftSet {
    /// The declaration lines (`type …`, `flags …`, `size …`).
    pub decl: Vec<String>,
    /// Elements: key → value (`None` for a plain set).
    pub elements: BTreeMap<String, Option<String>>,
}

impl NftSet {
    fn new(decl: &[String]) -> Self {
        NftSet {
            decl: decl.to_vec(),
            elements: BTreeMap::new(),
        }
    }

    fn is_map(&self) -> bool {
        self.decl.iter().any(|d| d.contains(" : "))
    }
}

/// A chain: its base-chain header (hook, priority) if any, and its rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NftChain {
    /// `type nat hook prerouting priority dstnat; policy accept;` or none.
    pub hook: Option<String>,
    /// The rules, in order.
    pub rules: Vec<String>,
}

/// One family's proxy table, as data: what the kernel should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftTable {
    /// The table's family.
    pub family: Family,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, NftSet>,
    /// Chains by name.
    pub chains: BTreeMap<String, NftChain>,
}

fn element_text(key: &str, value: &Option<String>) -> String {
    match value {
        Some(v) => format!("{key} : {v}"),
        None => key.to_string(),
    }
}

fn cidr_list(cidrs: &[IpNet], family: Family) -> Option<String> {
    let v: Vec<String> = cidrs
        .iter()
        .filter(|c| {
            matches!(
                (c, family),
                (IpNet::V4(_), Family::V4) | (IpNet::V6(_), Family::V6)
            )
        })
        .map(|c| c.to_string())
        .collect();
    (!v.is_empty()).then(|| format!("{{ {} }}", v.join(", ")))
}

/// Which traffic a bucket chain serves, which decides its masquerade rule.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// Cluster and external IPs (key starts with the destination address).
    Ips,
    /// NodePorts on any local address (key starts with the protocol).
    NodePorts,
}

/// Builds the desired table of `family` from `state`.
pub fn ruleset(state: &ProxyState, family: Family) -> NftTable {
    build(state, family, true)
}

/// The table of `state`; without `with_elements`, only its skeleton:
/// chains, declarations and the (shared, small) hairpin set, which is
/// cheap at any size.
fn build(state: &ProxyState, family: Family, with_elements: bool) -> NftTable {
    let fam = family.nft_family();
    let addr = family.addr_type();
    let mut sets = BTreeMap::new();
    let mut chains = BTreeMap::new();

    let decl = |lines: &[&str]| lines.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut service_ips = NftSet::new(&decl(&[&format!(
        "type {addr} . inet_proto . inet_service : verdict"
    )]));
    let mut service_nodeports = NftSet::new(&decl(&["type inet_proto . inet_service : verdict"]));
    let mut no_ep_ips = NftSet::new(&decl(&[&format!(
        "type {addr} . inet_proto . inet_service"
    )]));
    let mut no_ep_nodeports = NftSet::new(&decl(&["type inet_proto . inet_service"]));
    let mut hairpin = NftSet::new(&decl(&[&format!("type {addr} . {addr}")]));
    // bucket maps by (entry, N); chains by (entry, N, local)
    let mut buckets: BTreeMap<String, NftSet> = BTreeMap::new();
    let mut bucket_chains: BTreeSet<(bool, usize, bool)> = BTreeSet::new();
    let mut bucket_seen: BTreeSet<(bool, usize)> = BTreeSet::new();
    let mut affinity: BTreeMap<u32, NftSet> = BTreeMap::new();
    // Service addresses whose ClientIP affinity is on, and the endpoints
    // each may be sent to: the packet path honours an affinity entry only
    // for the first and only towards the second (see `affinity-stale`).
    let mut affinity_on = NftSet::new(&decl(&[&format!(
        "type {addr} . inet_proto . inet_service"
    )]));
    let mut affinity_live = NftSet::new(&decl(&[&format!(
        "type {addr} . inet_proto . inet_service . {addr} . inet_service"
    )]));

    let bucket_name = |entry: Entry, n: usize| match entry {
        Entry::Ips => format!("ips-{n}"),
        Entry::NodePorts => format!("nodeports-{n}"),
    };
    let mut add_bucket = |entry: Entry,
                          proto: &str,
                          key_prefix: &str,
                          eps: &[&Endpoint],
                          local: bool,
                          vmap: &mut NftSet,
                          no_ep: &mut NftSet| {
        if eps.is_empty() {
            if with_elements {
                no_ep.elements.insert(key_prefix.to_string(), None);
            }
            return;
        }
        let n = eps.len();
        let nodeports = entry == Entry::NodePorts;
        bucket_chains.insert((nodeports, n, local));
        if bucket_seen.insert((nodeports, n)) {
            let name = bucket_name(entry, n);
            let key = match entry {
                Entry::Ips => format!("{fam} daddr . meta l4proto . th dport"),
                Entry::NodePorts => "meta l4proto . th dport".to_string(),
            };
            // One map per protocol: nft 1.0.x cannot read back a typeof
            // whose data says `th dport`, so the data names the protocol.
            for p in PROTOCOLS {
                buckets.insert(
                    format!("{name}-{p}"),
                    NftSet::new(&[format!(
                        "typeof {key} . numgen random mod {n} : {fam} daddr . {p} dport"
                    )]),
                );
            }
        }
        if with_elements {
            let name = bucket_name(entry, n);
            let chain = if local {
                format!("{name}-local")
            } else {
                name.clone()
            };
            let map = buckets
                .get_mut(&format!("{name}-{proto}"))
                .expect("made above");
            for (i, ep) in eps.iter().enumerate() {
                map.elements.insert(
                    format!("{key_prefix} . {i}"),
                    Some(format!("{} . {}", ep.addr, ep.port)),
                );
            }
            vmap.elements
                .insert(key_prefix.to_string(), Some(format!("goto {chain}")));
        }
    };

    for sp in state.ports.values() {
        let proto = sp.name.protocol.as_str();
        let cluster_eps = sp.cluster_endpoints(family);
        let external_eps = sp.external_endpoints(family);
        for ep in &sp.endpoints {
            if ep.local && Family::of(&ep.addr) == family {
                hairpin
                    .elements
                    .insert(format!("{} . {}", ep.addr, ep.addr), None);
            }
        }
        let mut ip_keys = Vec::new();
        if let Some(ip) = sp.cluster_ip(family) {
            let key = if with_elements {
                format!("{ip} . {proto} . {}", sp.port)
            } else {
                String::new()
            };
            add_bucket(
                Entry::Ips,
                proto,
                &key,
                &cluster_eps,
                false,
                &mut service_ips,
                &mut no_ep_ips,
            );
            ip_keys.push((key, &cluster_eps));
        }
        for ip in sp.external_ips.iter().filter(|a| Family::of(a) == family) {
            if sp.cluster_ip(family) == Some(*ip) {
                continue;
            }
            let key = if with_elements {
                format!("{ip} . {proto} . {}", sp.port)
            } else {
                String::new()
            };
            add_bucket(
                Entry::Ips,
                proto,
                &key,
                &external_eps,
                sp.external_local,
                &mut service_ips,
                &mut no_ep_ips,
            );
            ip_keys.push((key, &external_eps));
        }
        if let Some(np) = sp.node_port
            && sp.cluster_ip(family).is_some()
        {
            let key = if with_elements {
                format!("{proto} . {np}")
            } else {
                String::new()
            };
            add_bucket(
                Entry::NodePorts,
                proto,
                &key,
                &external_eps,
                sp.external_local,
                &mut service_nodeports,
                &mut no_ep_nodeports,
            );
        }
        if let Some(t) = sp.affinity_timeout {
            let set = affinity.entry(t).or_insert_with(|| {
                NftSet::new(&[format!("type {addr} . inet_proto . inet_service")])
            });
            if with_elements {
                for (k, eps) in ip_keys {
                    for ep in eps {
                        affinity_live
                            .elements
                            .insert(format!("{k} . {} . {}", ep.addr, ep.port), None);
                    }
                    affinity_on.elements.insert(k.clone(), None);
                    set.elements.insert(k, None);
                }
            }
        }
    }

    let masq_from_outside = cidr_list(&state.cluster_cidrs, family)
        .map(|c| format!("{fam} saddr != {c} meta mark set meta mark | {MASQ_MARK:#x}"));
    for (nodeports, n, local) in bucket_chains {
        let entry = if nodeports {
            Entry::NodePorts
        } else {
            Entry::Ips
        };
        let map = bucket_name(entry, n);
        let mut rules = Vec::new();
        if !local {
            rules.extend(masq_from_outside.clone());
        }
        for p in PROTOCOLS {
            match entry {
                Entry::Ips => {
                    rules.push(format!(
                        "meta l4proto {p} {fam} daddr . meta l4proto . th dport @affinity-on dnat to {fam} saddr . {fam} daddr . meta l4proto . th dport map @affinity-{p}"
                    ));
                    rules.push(format!(
                        "meta l4proto {p} dnat to {fam} daddr . meta l4proto . th dport . numgen random mod {n} map @{map}-{p}"
                    ));
                }
                Entry::NodePorts => rules.push(format!(
                    "meta l4proto {p} dnat to meta l4proto . th dport . numgen random mod {n} map @{map}-{p}"
                )),
            }
        }
        let name = if local { format!("{map}-local") } else { map };
        chains.insert(name, NftChain { hook: None, rules });
    }

    let hook = |h: &str| Some(h.to_string());
    chains.insert(
        "nat-prerouting".into(),
        NftChain {
            hook: hook("type nat hook prerouting priority dstnat; policy accept;"),
            rules: vec!["jump services".into()],
        },
    );
    chains.insert(
        "nat-output".into(),
        NftChain {
            hook: hook("type nat hook output priority -100; policy accept;"),
            rules: vec!["jump services".into()],
        },
    );
    chains.insert(
        "nat-postrouting".into(),
        NftChain {
            hook: hook("type nat hook postrouting priority srcnat; policy accept;"),
            rules: vec![
                format!(
                    "ct status dnat {fam} saddr . {fam} daddr @hairpin meta mark set meta mark | {MASQ_MARK:#x}"
                ),
                format!(
                    "meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set meta mark & {:#x} masquerade fully-random",
                    !MASQ_MARK
                ),
            ],
        },
    );
    chains.insert(
        "services".into(),
        NftChain {
            hook: None,
            rules: vec![
                format!("{fam} daddr . meta l4proto . th dport vmap @service-ips"),
                "fib daddr type local meta l4proto . th dport vmap @service-nodeports".into(),
            ],
        },
    );
    for (name, h) in [
        ("filter-input", "input"),
        ("filter-forward", "forward"),
        ("filter-output", "output"),
    ] {
        chains.insert(
            name.into(),
            NftChain {
                hook: Some(format!(
                    "type filter hook {h} priority filter - 1; policy accept;"
                )),
                rules: vec!["ct state new jump endpoints-check".into()],
            },
        );
    }
    chains.insert(
        "endpoints-check".into(),
        NftChain {
            hook: None,
            rules: vec![
                format!("{fam} daddr . meta l4proto . th dport @no-endpoint-ips jump reject-service"),
                "fib daddr type local meta l4proto . th dport @no-endpoint-nodeports jump reject-service"
                    .into(),
            ],
        },
    );
    chains.insert(
        "reject-service".into(),
        NftChain {
            hook: None,
            rules: vec![
                "meta l4proto tcp reject with tcp reset".into(),
                "reject".into(),
            ],
        },
    );
    for (name, h) in [
        ("affinity-prerouting", "prerouting"),
        ("affinity-output", "output"),
    ] {
        chains.insert(
            name.into(),
            NftChain {
                hook: Some(format!("type filter hook {h} priority -99; policy accept;")),
                rules: vec!["ct state new ct status dnat jump affinity-record".into()],
            },
        );
    }
    // A new connection of an affinity service that was sent to an endpoint
    // the service no longer has (an entry recorded by a connection racing
    // the change that removed it): forget the entry and drop the packet
    // before conntrack confirms it, so the client's retransmission is
    // balanced afresh instead of reaching a dead endpoint.
    // nft 1.0.6 aborts (an assertion in netlink_linearize.c) on any
    // `update`/`delete` of a map keyed by a concatenation holding an IPv6
    // address, and the applier runs libnftables in process: so IPv6 gets
    // no recorded (nor deleted) affinity entries: affinity is IPv4 only.
    let writable = family == Family::V4;
    let record = affinity_record_rules(family, affinity.keys().copied());
    let mut stale = Vec::new();
    for proto in PROTOCOLS.iter().filter(|_| writable) {
        stale.push(format!(
            "meta l4proto {proto} delete @affinity-{proto} {{ {fam} saddr . ct original {fam} daddr . meta l4proto . ct original proto-dst : {fam} daddr . {proto} dport }}"
        ));
    }
    stale.push("drop".into());
    chains.insert(
        "affinity-stale".into(),
        NftChain {
            hook: None,
            rules: stale,
        },
    );
    chains.insert(
        "affinity-record".into(),
        NftChain {
            hook: None,
            rules: record,
        },
    );

    sets.insert("service-ips".into(), service_ips);
    sets.insert("service-nodeports".into(), service_nodeports);
    sets.insert("no-endpoint-ips".into(), no_ep_ips);
    sets.insert("no-endpoint-nodeports".into(), no_ep_nodeports);
    sets.insert("hairpin".into(), hairpin);
    sets.insert("affinity-on".into(), affinity_on);
    sets.insert("affinity-live".into(), affinity_live);
    for p in PROTOCOLS {
        sets.insert(
            format!("affinity-{p}"),
            NftSet::new(&[
                format!(
                    "typeof {fam} saddr . {fam} daddr . meta l4proto . th dport : {fam} daddr . {p} dport"
                ),
                format!("size {AFFINITY_SIZE}"),
                "flags dynamic,timeout".into(),
            ]),
        );
    }
    for (t, set) in affinity {
        sets.insert(format!("affinity-{t}"), set);
    }
    sets.extend(buckets);
    NftTable {
        family,
        sets,
        chains,
    }
}

/// The rules of `affinity-record` for the affinity timeouts in use: the
/// guard against entries pointing at endpoints no longer live, then one
/// recording rule per timeout and protocol (none for IPv6, see `build`).
fn affinity_record_rules(family: Family, timeouts: impl Iterator<Item = u32>) -> Vec<String> {
    if family != Family::V4 {
        return Vec::new();
    }
    let fam = family.nft_family();
    let mut record = Vec::new();
    for proto in PROTOCOLS {
        record.push(format!(
            "meta l4proto {proto} ct original {fam} daddr . meta l4proto . ct original proto-dst @affinity-on \
             ct original {fam} daddr . meta l4proto . ct original proto-dst . {fam} daddr . {proto} dport != @affinity-live \
             jump affinity-stale"
        ));
    }
    for t in timeouts {
        for proto in PROTOCOLS {
            record.push(format!(
                "meta l4proto {proto} ct original {fam} daddr . meta l4proto . ct original proto-dst @affinity-{t} \
                 update @affinity-{proto} {{ {fam} saddr . ct original {fam} daddr . meta l4proto . ct original proto-dst timeout {t}s : {fam} daddr . {proto} dport }}"
            ));
        }
    }
    record
}

/// Sets whose elements the packet path writes, which a plan never lists
/// and a diff never touches.
pub const DYNAMIC_SETS: &[&str] = &["affinity-tcp", "affinity-udp", "affinity-sctp"];

/// The protocols a bucket chain dispatches on (maps exist for each).
pub const PROTOCOLS: [&str; 3] = ["tcp", "udp", "sctp"];

impl NftTable {
    /// `ip podnet-proxy` or `ip6 podnet-proxy`.
    pub fn qualified_name(&self) -> String {
        format!("{} {TABLE}", self.family.nft_family())
    }

    /// The whole table in nft's block syntax (what `nft list` resembles).
    pub fn render(&self) -> String {
        let mut s = format!("table {} {{\n", self.qualified_name());
        for (name, set) in &self.sets {
            let kind = if set.is_map() { "map" } else { "set" };
            let _ = writeln!(s, "\t{kind} {name} {{");
            for d in &set.decl {
                let _ = writeln!(s, "\t\t{d}");
            }
            if !set.elements.is_empty() {
                s.push_str("\t\telements = { ");
                let mut first = true;
                for (k, v) in &set.elements {
                    if !first {
                        s.push_str(",\n\t\t\t     ");
                    }
                    first = false;
                    s.push_str(&element_text(k, v));
                }
                s.push_str(" }\n");
            }
            s.push_str("\t}\n");
        }
        for (name, chain) in &self.chains {
            let _ = writeln!(s, "\tchain {name} {{");
            if let Some(h) = &chain.hook {
                let _ = writeln!(s, "\t\t{h}");
            }
            for r in &chain.rules {
                let _ = writeln!(s, "\t\t{r}");
            }
            s.push_str("\t}\n");
        }
        s.push_str("}\n");
        s
    }

    /// A script that replaces the table with this one in one transaction
    /// (create if missing, delete, define anew).
    pub fn full_script(&self) -> String {
        let q = self.qualified_name();
        format!("table {q} {{}}\ndelete table {q}\n{}", self.render())
    }

    /// The number of rules in the table (constant in services).
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }

    /// The number of set and map elements (where growth goes).
    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum()
    }
}

/// What turns one table into another: new sets and chains, changed chain
/// bodies, element deletes and adds, and what to remove. Rendered as one
/// transaction by [`NftDiff::script`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NftDiff {
    /// `ip podnet-proxy` etc.
    pub table: String,
    /// The old and new tables disagree in a declaration or hook: only a
    /// full replacement is correct.
    pub needs_full: bool,
    /// Sets and maps to create (declaration only; elements come in adds).
    pub add_sets: Vec<(String, NftSet)>,
    /// Chains to create, with their rules.
    pub add_chains: Vec<(String, NftChain)>,
    /// Existing chains whose rules change (flushed and refilled).
    pub rewrite_chains: Vec<(String, NftChain)>,
    /// Elements to delete, by set: keys.
    pub del_elements: BTreeMap<String, Vec<String>>,
    /// Elements to add, by set: element text.
    pub add_elements: BTreeMap<String, Vec<String>>,
    /// Chains to delete.
    pub del_chains: Vec<String>,
    /// Sets and maps to delete: name and kind (`set` or `map`).
    pub del_sets: Vec<(String, &'static str)>,
}

/// Computes the change from `old` (what the kernel holds, as last applied)
/// to `new`. An element whose value changes is deleted and re-added.
pub fn diff(old: &NftTable, new: &NftTable) -> NftDiff {
    let mut d = NftDiff {
        table: new.qualified_name(),
        needs_full: old.family != new.family,
        ..Default::default()
    };
    for (name, ns) in &new.sets {
        if DYNAMIC_SETS.contains(&name.as_str()) && old.sets.contains_key(name) {
            if old.sets[name].decl != ns.decl {
                d.needs_full = true;
            }
            continue;
        }
        match old.sets.get(name) {
            None => {
                d.add_sets.push((name.clone(), NftSet::new(&ns.decl)));
                if !ns.elements.is_empty() {
                    d.add_elements.insert(
                        name.clone(),
                        ns.elements
                            .iter()
                            .map(|(k, v)| element_text(k, v))
                            .collect(),
                    );
                }
            }
            Some(os) if os.decl != ns.decl => d.needs_full = true,
            Some(os) => {
                let mut dels = Vec::new();
                let mut adds = Vec::new();
                for (k, v) in &os.elements {
                    match ns.elements.get(k) {
                        Some(nv) if nv == v => {}
                        _ => dels.push(k.clone()),
                    }
                }
                for (k, v) in &ns.elements {
                    if os.elements.get(k) != Some(v) {
                        adds.push(element_text(k, v));
                    }
                }
                if !dels.is_empty() {
                    d.del_elements.insert(name.clone(), dels);
                }
                if !adds.is_empty() {
                    d.add_elements.insert(name.clone(), adds);
                }
            }
        }
    }
    for (name, os) in &old.sets {
        if !new.sets.contains_key(name) {
            d.del_sets
                .push((name.clone(), if os.is_map() { "map" } else { "set" }));
        }
    }
    for (name, nc) in &new.chains {
        match old.chains.get(name) {
            None => d.add_chains.push((name.clone(), nc.clone())),
            Some(oc) if oc.hook != nc.hook => d.needs_full = true,
            Some(oc) if oc.rules != nc.rules => d.rewrite_chains.push((name.clone(), nc.clone())),
            Some(_) => {}
        }
    }
    for name in old.chains.keys() {
        if !new.chains.contains_key(name) {
            d.del_chains.push(name.clone());
        }
    }
    d
}

/// The change from `old` to `new` for `family`, where `applied` is the
/// table as last applied for `old`. Only the service ports that differ are
/// rendered, so one endpoint change costs about the same at 10 or 10,000
/// services; the skeleton (chains, declarations, hairpin) is recomputed
/// whole because it is shared and small.
pub fn diff_states(
    old: &ProxyState,
    new: &ProxyState,
    family: Family,
    applied: &NftTable,
) -> NftDiff {
    if old.cluster_cidrs != new.cluster_cidrs || applied.family != family {
        return diff(applied, &ruleset(new, family));
    }
    let mut old_sub = ProxyState {
        ports: BTreeMap::new(),
        cluster_cidrs: old.cluster_cidrs.clone(),
    };
    let mut new_sub = ProxyState {
        ports: BTreeMap::new(),
        cluster_cidrs: new.cluster_cidrs.clone(),
    };
    // One ordered walk over both maps (no per-port lookups).
    let mut a = old.ports.iter().peekable();
    let mut b = new.ports.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((ka, va)), Some((kb, vb))) if ka == kb => {
                if va != vb {
                    old_sub.ports.insert((*ka).clone(), (*va).clone());
                    new_sub.ports.insert((*kb).clone(), (*vb).clone());
                }
                a.next();
                b.next();
            }
            (Some((ka, va)), Some((kb, _))) if ka < kb => {
                old_sub.ports.insert((*ka).clone(), (*va).clone());
                a.next();
            }
            (Some((ka, va)), None) => {
                old_sub.ports.insert((*ka).clone(), (*va).clone());
                a.next();
            }
            (_, Some((kb, vb))) => {
                new_sub.ports.insert((*kb).clone(), (*vb).clone());
                b.next();
            }
        }
    }
    // Structure (and the hairpin set) from the whole new state — unless
    // the changed ports give the same shape before and after (the usual
    // endpoint swap): then every chain, set and hairpin entry they needed
    // is still needed and nothing else changed, so the walk is skipped.
    let same_shape = build(&old_sub, family, false) == build(&new_sub, family, false);
    let skeleton = (!same_shape).then(|| build(new, family, false));
    let mut d = NftDiff {
        table: applied.qualified_name(),
        ..Default::default()
    };
    if let Some(skeleton) = &skeleton {
        for (name, ns) in &skeleton.sets {
            match applied.sets.get(name) {
                None => d.add_sets.push((name.clone(), NftSet::new(&ns.decl))),
                Some(os) if os.decl != ns.decl => d.needs_full = true,
                Some(_) => {}
            }
        }
        for (name, os) in &applied.sets {
            if !skeleton.sets.contains_key(name) {
                d.del_sets
                    .push((name.clone(), if os.is_map() { "map" } else { "set" }));
            }
        }
        for (name, nc) in &skeleton.chains {
            match applied.chains.get(name) {
                None => d.add_chains.push((name.clone(), nc.clone())),
                Some(oc) if oc.hook != nc.hook => d.needs_full = true,
                Some(oc) if oc.rules != nc.rules => {
                    d.rewrite_chains.push((name.clone(), nc.clone()))
                }
                Some(_) => {}
            }
        }
        for name in applied.chains.keys() {
            if !skeleton.chains.contains_key(name) {
                d.del_chains.push(name.clone());
            }
        }
    }
    // Elements: the changed ports' own, plus the shared hairpin set.
    let t_old = build(&old_sub, family, true);
    let t_new = build(&new_sub, family, true);
    let empty = NftSet::default();
    let deleted: BTreeSet<&str> = d.del_sets.iter().map(|(n, _)| n.as_str()).collect();
    let mut element_diff = |name: &str, os: &NftSet, ns: &NftSet| {
        let dels: Vec<String> = os
            .elements
            .iter()
            .filter(|(k, v)| ns.elements.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        let adds: Vec<String> = ns
            .elements
            .iter()
            .filter(|(k, v)| os.elements.get(*k) != Some(*v))
            .map(|(k, v)| element_text(k, v))
            .collect();
        if !dels.is_empty() && !deleted.contains(name) {
            d.del_elements.insert(name.to_string(), dels);
        }
        if !adds.is_empty() {
            d.add_elements.insert(name.to_string(), adds);
        }
    };
    let names: BTreeSet<&String> = t_old.sets.keys().chain(t_new.sets.keys()).collect();
    for name in names {
        if DYNAMIC_SETS.contains(&name.as_str()) || name == "hairpin" {
            continue;
        }
        let os = t_old.sets.get(name).unwrap_or(&empty);
        let ns = t_new.sets.get(name).unwrap_or(&empty);
        element_diff(name, os, ns);
    }
    if let Some(skeleton) = &skeleton {
        element_diff(
            "hairpin",
            applied.sets.get("hairpin").unwrap_or(&empty),
            skeleton.sets.get("hairpin").unwrap_or(&empty),
        );
    }
    d
}

/// What of a table's skeleton the service ports need, counted: bucket
/// chains and maps (per endpoint count and Local variant), affinity
/// timeout sets and hairpin elements. Each is shared by many ports, so a
/// change adds or removes one only when its count leaves or reaches zero;
/// kept by an applier so that one change costs the same at 10 or 10,000
/// services (no walk over every port to rebuild the skeleton).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    refs: BTreeMap<String, usize>,
}

/// Shape keys: `chain <name>`, `maps <bucket>` (its per-protocol maps),
/// `set affinity-<T>`, `hairpin <element>`.
fn port_shape(sp: &ServicePortPlan, family: Family) -> Vec<String> {
    let mut out = Vec::new();
    let mut bucket = |nodeports: bool, n: usize, local: bool| {
        if n == 0 {
            return;
        }
        let name = if nodeports {
            format!("nodeports-{n}")
        } else {
            format!("ips-{n}")
        };
        out.push(format!("maps {name}"));
        out.push(if local {
            format!("chain {name}-local")
        } else {
            format!("chain {name}")
        });
    };
    let cluster_n = sp.cluster_endpoints(family).len();
    let external_n = sp.external_endpoints(family).len();
    let cluster_ip = sp.cluster_ip(family);
    if cluster_ip.is_some() {
        bucket(false, cluster_n, false);
    }
    for ip in sp.external_ips.iter().filter(|a| Family::of(a) == family) {
        if cluster_ip != Some(*ip) {
            bucket(false, external_n, sp.external_local);
        }
    }
    if sp.node_port.is_some() && cluster_ip.is_some() {
        bucket(true, external_n, sp.external_local);
    }
    if let Some(t) = sp.affinity_timeout {
        out.push(format!("set affinity-{t}"));
    }
    for ep in &sp.endpoints {
        if ep.local && Family::of(&ep.addr) == family {
            out.push(format!("hairpin {} . {}", ep.addr, ep.addr));
        }
    }
    out
}

impl Shape {
    /// The shape of a whole state (at a full sync).
    pub fn of(state: &ProxyState, family: Family) -> Shape {
        let mut s = Shape::default();
        for sp in state.ports.values() {
            for k in port_shape(sp, family) {
                *s.refs.entry(k).or_default() += 1;
            }
        }
        s
    }

    fn has(&self, key: &str) -> bool {
        self.refs.get(key).is_some_and(|n| *n > 0)
    }

    fn affinity_timeouts(&self) -> impl Iterator<Item = u32> + '_ {
        self.refs
            .range("set affinity-".to_string()..)
            .take_while(|(k, _)| k.starts_with("set affinity-"))
            .filter_map(|(k, _)| k["set affinity-".len()..].parse().ok())
    }
}

/// The change for `family` when the service ports in `changes` go from
/// their old plan (`None`: new) to their new one (`None`: deleted), all
/// other ports staying as they are. `applied` is the table as last
/// applied and `shape` its [`Shape`], updated here. The work is
/// proportional to the changed ports only, whatever the table's size.
/// The cluster CIDRs must be those `applied` was built with.
pub fn diff_changes(
    changes: &[(Option<&ServicePortPlan>, Option<&ServicePortPlan>)],
    cluster_cidrs: &[IpNet],
    family: Family,
    applied: &NftTable,
    shape: &mut Shape,
) -> NftDiff {
    let mut old_sub = ProxyState {
        ports: BTreeMap::new(),
        cluster_cidrs: cluster_cidrs.to_vec(),
    };
    let mut new_sub = old_sub.clone();
    let mut touched = BTreeMap::new();
    for (old, new) in changes {
        if let Some(o) = old {
            old_sub.ports.insert(o.name.clone(), (*o).clone());
            for k in port_shape(o, family) {
                touched.entry(k.clone()).or_insert_with(|| shape.has(&k));
                if let Some(n) = shape.refs.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        shape.refs.remove(&k);
                    }
                }
            }
        }
        if let Some(n) = new {
            new_sub.ports.insert(n.name.clone(), (*n).clone());
            for k in port_shape(n, family) {
                touched.entry(k.clone()).or_insert_with(|| shape.has(&k));
                *shape.refs.entry(k).or_default() += 1;
            }
        }
    }
    let mut d = NftDiff {
        table: applied.qualified_name(),
        ..Default::default()
    };
    let t_old = build(&old_sub, family, true);
    let t_new = build(&new_sub, family, true);
    let mut affinity_changed = false;
    let mut hairpin_dels = Vec::new();
    let mut hairpin_adds = Vec::new();
    for (key, before) in &touched {
        let after = shape.has(key);
        if *before == after {
            continue;
        }
        let (kind, name) = key.split_once(' ').expect("shape keys have a kind");
        match (kind, after) {
            ("chain", true) => {
                let chain = t_new.chains.get(name).cloned().unwrap_or_default();
                d.add_chains.push((name.to_string(), chain));
            }
            ("chain", false) => d.del_chains.push(name.to_string()),
            ("maps", true) => {
                for p in PROTOCOLS {
                    let map = format!("{name}-{p}");
                    if let Some(set) = t_new.sets.get(&map) {
                        d.add_sets.push((map, NftSet::new(&set.decl)));
                    }
                }
            }
            ("maps", false) => {
                for p in PROTOCOLS {
                    d.del_sets.push((format!("{name}-{p}"), "map"));
                }
            }
            ("set", true) => {
                affinity_changed = true;
                if let Some(set) = t_new.sets.get(name) {
                    d.add_sets.push((name.to_string(), NftSet::new(&set.decl)));
                }
            }
            ("set", false) => {
                affinity_changed = true;
                d.del_sets.push((name.to_string(), "set"));
            }
            ("hairpin", true) => hairpin_adds.push(name.to_string()),
            ("hairpin", false) => hairpin_dels.push(name.to_string()),
            _ => {}
        }
    }
    if affinity_changed {
        d.rewrite_chains.push((
            "affinity-record".into(),
            NftChain {
                hook: None,
                rules: affinity_record_rules(family, shape.affinity_timeouts()),
            },
        ));
    }
    if !hairpin_dels.is_empty() {
        d.del_elements.insert("hairpin".into(), hairpin_dels);
    }
    if !hairpin_adds.is_empty() {
        d.add_elements.insert("hairpin".into(), hairpin_adds);
    }
    // Elements: the changed ports' own.
    let empty = NftSet::default();
    let deleted: BTreeSet<&str> = d.del_sets.iter().map(|(n, _)| n.as_str()).collect();
    let names: BTreeSet<&String> = t_old.sets.keys().chain(t_new.sets.keys()).collect();
    let mut dels_by_set = BTreeMap::new();
    let mut adds_by_set = BTreeMap::new();
    for name in names {
        if DYNAMIC_SETS.contains(&name.as_str()) || name == "hairpin" {
            continue;
        }
        let os = t_old.sets.get(name).unwrap_or(&empty);
        let ns = t_new.sets.get(name).unwrap_or(&empty);
        let dels: Vec<String> = os
            .elements
            .iter()
            .filter(|(k, v)| ns.elements.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        let adds: Vec<String> = ns
            .elements
            .iter()
            .filter(|(k, v)| os.elements.get(*k) != Some(*v))
            .map(|(k, v)| element_text(k, v))
            .collect();
        if !dels.is_empty() && !deleted.contains(name.as_str()) {
            dels_by_set.insert(name.clone(), dels);
        }
        if !adds.is_empty() {
            adds_by_set.insert(name.clone(), adds);
        }
    }
    d.del_elements.extend(dels_by_set);
    d.add_elements.extend(adds_by_set);
    d
}

impl NftTable {
    /// Applies `d` to this model, as the kernel applies its script, so an
    /// applier can keep an exact picture of the kernel without re-reading
    /// it.
    pub fn apply_diff(&mut self, d: &NftDiff) {
        for (name, set) in &d.add_sets {
            self.sets.insert(name.clone(), set.clone());
        }
        for (name, chain) in d.add_chains.iter().chain(&d.rewrite_chains) {
            self.chains.insert(name.clone(), chain.clone());
        }
        for (set, keys) in &d.del_elements {
            if let Some(s) = self.sets.get_mut(set) {
                for k in keys {
                    s.elements.remove(k);
                }
            }
        }
        for (set, elems) in &d.add_elements {
            if let Some(s) = self.sets.get_mut(set) {
                for e in elems {
                    let (k, v) = match e.split_once(" : ") {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (e.clone(), None),
                    };
                    s.elements.insert(k, v);
                }
            }
        }
        for c in &d.del_chains {
            self.chains.remove(c);
        }
        for (s, _) in &d.del_sets {
            self.sets.remove(s);
        }
    }
}

impl NftDiff {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        !self.needs_full
            && self.add_sets.is_empty()
            && self.add_chains.is_empty()
            && self.rewrite_chains.is_empty()
            && self.del_elements.is_empty()
            && self.add_elements.is_empty()
            && self.del_chains.is_empty()
            && self.del_sets.is_empty()
    }

    /// How many elements this diff adds and deletes.
    pub fn element_changes(&self) -> usize {
        self.del_elements.values().map(Vec::len).sum::<usize>()
            + self.add_elements.values().map(Vec::len).sum::<usize>()
    }

    /// The nft script of this change, to load as one transaction. Order
    /// matters: new sets and chains first, then element deletes (so a
    /// changed value can be re-added), adds, and last the removal of chains
    /// and sets nothing refers to any more. Meaningless if
    /// [`NftDiff::needs_full`].
    pub fn script(&self) -> String {
        let t = &self.table;
        let mut s = String::new();
        for (name, set) in &self.add_sets {
            let kind = if set.is_map() { "map" } else { "set" };
            let _ = writeln!(s, "add {kind} {t} {name} {{ {}; }}", set.decl.join("; "));
        }
        for (name, chain) in &self.add_chains {
            match &chain.hook {
                Some(h) => {
                    let _ = writeln!(s, "add chain {t} {name} {{ {h} }}");
                }
                None => {
                    let _ = writeln!(s, "add chain {t} {name}");
                }
            }
        }
        for (name, _) in &self.rewrite_chains {
            let _ = writeln!(s, "flush chain {t} {name}");
        }
        for (name, chain) in self.add_chains.iter().chain(&self.rewrite_chains) {
            for r in &chain.rules {
                let _ = writeln!(s, "add rule {t} {name} {r}");
            }
        }
        for (set, keys) in &self.del_elements {
            let _ = writeln!(s, "delete element {t} {set} {{ {} }}", keys.join(", "));
        }
        for (set, elems) in &self.add_elements {
            let _ = writeln!(s, "add element {t} {set} {{ {} }}", elems.join(", "));
        }
        for name in &self.del_chains {
            let _ = writeln!(s, "flush chain {t} {name}");
            let _ = writeln!(s, "delete chain {t} {name}");
        }
        for (name, kind) in &self.del_sets {
            let _ = writeln!(s, "delete {kind} {t} {name}");
        }
        s
    }
}

/// The address of an affinity entry's endpoint, parsed from `nft list map`
/// output lines of the `affinity` map: `(key, endpoint address, port)`, so
/// an applier can delete entries that point at endpoints that are gone.
pub fn parse_affinity_elements(listing: &str) -> Vec<(String, IpAddr, u16)> {
    let Some(start) = listing.find("elements = {") else {
        return Vec::new();
    };
    let body = &listing[start + "elements = {".len()..];
    let body = body.split('}').next().unwrap_or("");
    let mut out = Vec::new();
    for elem in body.split(',') {
        let Some((key, value)) = elem.split_once(" : ") else {
            continue;
        };
        // key: "saddr . daddr . proto . port [timeout X] [expires Y]"
        let key = key.split(" timeout ").next().unwrap_or(key);
        let key = key.split(" expires ").next().unwrap_or(key).trim();
        let mut parts = value.split(" . ");
        let (Some(a), Some(p)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let (Ok(a), Ok(p)) = (a.trim().parse(), p.trim().parse()) {
            out.push((key.to_string(), a, p));
        }
    }
    out
}

#[cfg(test)]
mod tests;
