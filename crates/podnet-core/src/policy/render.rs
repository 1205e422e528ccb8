//! The policy state as nft text: the whole table for a first sync, and the
//! element adds and deletes that turn one state into another. The rules are
//! constant; only set elements ever change.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;

use super::model::Direction;
use super::plan::PolicyState;

/// The nft family and name of podnet's policy table.
pub const TABLE: &str = "inet podnet-policy";

/// The table's fixed chains. `ct mark` carries the remote peer class between
/// the lookups of a new connection's first packet (established traffic is
/// accepted first and never reaches them): first the class of the address
/// range (ipBlock edges), then, for a pod, its own class. Exact ports are
/// looked up in hashed sets (constant cost); only `endPort` ranges need the
/// interval sets, tried last.
const CHAINS: &str = r#"	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state established,related accept
		ip daddr @local_cidrs ip daddr != @known counter name "unknown_in" reject with icmpx admin-prohibited
		ip saddr @local_cidrs ip saddr != @known counter name "unknown_eg" reject with icmpx admin-prohibited
		ip saddr @eg_isolated jump egress
		ip daddr @in_isolated jump ingress
	}

	chain egress {
		ct mark set ip daddr map @peer_ranges
		ct mark set ip daddr map @peer_pods
		ip saddr . ct mark @eg_peer return
		ip saddr . ct mark . meta l4proto . th dport @eg_peer_port return
		ip saddr . meta l4proto . th dport @eg_port return
		ip saddr . ct mark . meta l4proto . th dport @eg_peer_range return
		ip saddr . meta l4proto . th dport @eg_range return
@EG_LOG@		update @eg_drops { ip saddr } reject with icmpx admin-prohibited
	}

	chain ingress {
		ct mark set ip saddr map @peer_ranges
		ct mark set ip saddr map @peer_pods
		ip daddr . ct mark @in_peer accept
		ip daddr . ct mark . meta l4proto . th dport @in_peer_port accept
		ip daddr . meta l4proto . th dport @in_port accept
		ip daddr . ct mark . meta l4proto . th dport @in_peer_range accept
		ip daddr . meta l4proto . th dport @in_range accept
@IN_LOG@		update @in_drops { ip daddr } reject with icmpx admin-prohibited
	}
"#;

/// Each named set or map of the table and its declaration (type and flags).
const SETS: &[(&str, &str)] = &[
    ("local_cidrs", "type ipv4_addr; flags interval;"),
    ("known", "type ipv4_addr;"),
    ("in_isolated", "type ipv4_addr;"),
    ("eg_isolated", "type ipv4_addr;"),
    ("peer_ranges", "type ipv4_addr : mark; flags interval;"),
    ("peer_pods", "type ipv4_addr : mark;"),
    ("in_peer", "type ipv4_addr . mark;"),
    ("eg_peer", "type ipv4_addr . mark;"),
    (
        "in_peer_port",
        "type ipv4_addr . mark . inet_proto . inet_service;",
    ),
    (
        "eg_peer_port",
        "type ipv4_addr . mark . inet_proto . inet_service;",
    ),
    ("in_port", "type ipv4_addr . inet_proto . inet_service;"),
    ("eg_port", "type ipv4_addr . inet_proto . inet_service;"),
    (
        "in_peer_range",
        "type ipv4_addr . mark . inet_proto . inet_service; flags interval;",
    ),
    (
        "eg_peer_range",
        "type ipv4_addr . mark . inet_proto . inet_service; flags interval;",
    ),
    (
        "in_range",
        "type ipv4_addr . inet_proto . inet_service; flags interval;",
    ),
    (
        "eg_range",
        "type ipv4_addr . inet_proto . inet_service; flags interval;",
    ),
];

/// Per-pod drop counters, filled by the kernel as it drops (never by us).
const DROP_SETS: &[&str] = &["in_drops", "eg_drops"];

/// A port range in a concatenated interval set: always `lo-hi`, because nft
/// (1.0.6) cannot delete a single-value element of such a set by its value.
fn ports(lo: u16, hi: u16) -> String {
    format!("{lo}-{hi}")
}

fn mark(class: u32) -> String {
    format!("0x{class:08x}")
}

/// The elements of every set and map, as nft text, by set name.
pub fn elements(state: &PolicyState) -> BTreeMap<&'static str, BTreeSet<String>> {
    let mut m: BTreeMap<&'static str, BTreeSet<String>> =
        SETS.iter().map(|(n, _)| (*n, BTreeSet::new())).collect();
    let mut put = |set: &'static str, e: String| {
        m.get_mut(set).expect("declared set").insert(e);
    };
    for c in &state.local_cidrs {
        put("local_cidrs", c.to_string());
    }
    for a in &state.known {
        put("known", a.to_string());
    }
    for (dir, a) in state.isolated.keys() {
        put(
            match dir {
                Direction::Ingress => "in_isolated",
                Direction::Egress => "eg_isolated",
            },
            a.to_string(),
        );
    }
    for r in &state.peer_ranges {
        let range = if r.first == r.last {
            r.first.to_string()
        } else {
            format!("{}-{}", r.first, r.last)
        };
        put("peer_ranges", format!("{range} : {}", mark(r.class)));
    }
    for (a, class) in &state.peer_pods {
        put("peer_pods", format!("{a} : {}", mark(*class)));
    }
    let dir_set = |dir: Direction, ingress: &'static str, egress: &'static str| match dir {
        Direction::Ingress => ingress,
        Direction::Egress => egress,
    };
    for (dir, a, class) in &state.peer_any_port {
        put(
            dir_set(*dir, "in_peer", "eg_peer"),
            format!("{a} . {}", mark(*class)),
        );
    }
    for p in &state.peer_ports {
        let (set, port) = if p.lo == p.hi {
            (
                dir_set(p.dir, "in_peer_port", "eg_peer_port"),
                p.lo.to_string(),
            )
        } else {
            (
                dir_set(p.dir, "in_peer_range", "eg_peer_range"),
                ports(p.lo, p.hi),
            )
        };
        put(
            set,
            format!("{} . {} . {} . {port}", p.pod, mark(p.class), p.proto.nft()),
        );
    }
    for (dir, a, proto, lo, hi) in &state.any_peer_ports {
        let (set, port) = if lo == hi {
            (dir_set(*dir, "in_port", "eg_port"), lo.to_string())
        } else {
            (dir_set(*dir, "in_range", "eg_range"), ports(*lo, *hi))
        };
        put(set, format!("{a} . {} . {port}", proto.nft()));
    }
    m
}

/// The NFLOG prefix of a packet refused at ingress (the agent reads the
/// direction from it).
pub const DROP_LOG_PREFIX_INGRESS: &str = "podnet-drop:in";
/// The NFLOG prefix of a packet refused at egress.
pub const DROP_LOG_PREFIX_EGRESS: &str = "podnet-drop:eg";

/// A rate-limited copy of refused packets to an nfnetlink_log group, so
/// the agent can say who was refused by which policy without logging
/// every packet of a flood (the kernel `log` to dmesg is not usable in a
/// node's own network namespace, and would not be rate-limited per rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropLog {
    /// The nfnetlink_log group the agent listens on.
    pub group: u16,
    /// Packets logged per second and direction, at most (nft `limit rate`).
    pub rate: u32,
    /// Packets logged at once above the rate (nft `burst`).
    pub burst: u32,
}

impl DropLog {
    /// The chains' log rule for `dir`: a separate rule before the drop, so
    /// a packet over the limit is still dropped and counted, only not
    /// logged.
    fn rule(&self, dir: Direction) -> String {
        let prefix = match dir {
            Direction::Ingress => DROP_LOG_PREFIX_INGRESS,
            Direction::Egress => DROP_LOG_PREFIX_EGRESS,
        };
        format!(
            "\t\tlimit rate {}/second burst {} packets log group {} snaplen 128 prefix \"{prefix}\"\n",
            self.rate.max(1),
            self.burst.max(1),
            self.group
        )
    }
}

/// The script that replaces the whole table atomically (first sync, and
/// any resync): the old table stays in force until the new one is in.
pub fn render_full(state: &PolicyState) -> String {
    render_full_with(state, None)
}

/// [`render_full`], with refused packets also sent to `log` (rate-limited).
pub fn render_full_with(state: &PolicyState, log: Option<&DropLog>) -> String {
    let els = elements(state);
    let mut s = format!("table {TABLE} {{}}\ndelete table {TABLE}\ntable {TABLE} {{\n");
    s.push_str("\tcounter unknown_in {}\n\tcounter unknown_eg {}\n\n");
    for (name, decl) in SETS {
        let _ = write!(
            s,
            "\t{} {name} {{ {decl}",
            if decl.contains(':') { "map" } else { "set" }
        );
        let e = &els[name];
        if !e.is_empty() {
            s.push_str(" elements = { ");
            s.push_str(&e.iter().cloned().collect::<Vec<_>>().join(", "));
            s.push_str(" }");
        }
        s.push_str(" }\n");
    }
    for name in DROP_SETS {
        let _ = writeln!(
            s,
            "\tset {name} {{ type ipv4_addr; size 65535; flags dynamic; counter; }}"
        );
    }
    s.push('\n');
    let (eg, ing) = match log {
        Some(l) => (l.rule(Direction::Egress), l.rule(Direction::Ingress)),
        None => (String::new(), String::new()),
    };
    s.push_str(&CHAINS.replace("@EG_LOG@", &eg).replace("@IN_LOG@", &ing));
    s.push_str("}\n");
    s
}

/// The element changes from one state to another, per set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateDiff {
    /// Elements to delete, by set.
    pub deletes: BTreeMap<&'static str, Vec<String>>,
    /// Elements to add, by set.
    pub adds: BTreeMap<&'static str, Vec<String>>,
}

impl StateDiff {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.deletes.values().all(Vec::is_empty) && self.adds.values().all(Vec::is_empty)
    }

    /// Number of element changes.
    pub fn len(&self) -> usize {
        self.deletes.values().map(Vec::len).sum::<usize>()
            + self.adds.values().map(Vec::len).sum::<usize>()
    }

    /// One script (one transaction): deletes first, so that a split or
    /// re-labelled interval never overlaps its old self; isolation adds come
    /// before allow removals would matter because the whole script is atomic.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (set, els) in &self.deletes {
            if !els.is_empty() {
                let _ = writeln!(s, "delete element {TABLE} {set} {{ {} }}", els.join(", "));
            }
        }
        for (set, els) in &self.adds {
            if !els.is_empty() {
                let _ = writeln!(s, "add element {TABLE} {set} {{ {} }}", els.join(", "));
            }
        }
        s
    }
}

/// The adds and deletes that turn `old` into `new`.
pub fn diff(old: &PolicyState, new: &PolicyState) -> StateDiff {
    // Subtract the typed states first, so only what changed is rendered.
    let minus = |a: &PolicyState, b: &PolicyState| -> PolicyState {
        fn sub<T: Ord + Clone>(x: &BTreeSet<T>, y: &BTreeSet<T>) -> BTreeSet<T> {
            x.difference(y).cloned().collect()
        }
        let ranges: BTreeSet<_> = b.peer_ranges.iter().collect();
        PolicyState {
            local_cidrs: sub(&a.local_cidrs, &b.local_cidrs),
            known: sub(&a.known, &b.known),
            isolated: a
                .isolated
                .iter()
                .filter(|(k, _)| !b.isolated.contains_key(k))
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            peer_ranges: a
                .peer_ranges
                .iter()
                .filter(|r| !ranges.contains(r))
                .copied()
                .collect(),
            peer_pods: a
                .peer_pods
                .iter()
                .filter(|(k, v)| b.peer_pods.get(k) != Some(v))
                .map(|(k, v)| (*k, *v))
                .collect(),
            peer_any_port: sub(&a.peer_any_port, &b.peer_any_port),
            peer_ports: sub(&a.peer_ports, &b.peer_ports),
            any_peer_ports: sub(&a.any_peer_ports, &b.any_peer_ports),
        }
    };
    let as_lists = |m: BTreeMap<&'static str, BTreeSet<String>>| {
        m.into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k, v.into_iter().collect::<Vec<_>>()))
            .collect()
    };
    StateDiff {
        deletes: as_lists(elements(&minus(old, new))),
        adds: as_lists(elements(&minus(new, old))),
    }
}

/// Packets the kernel refused for one local pod in one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropCount {
    /// Direction.
    pub dir: Direction,
    /// The local pod's address.
    pub addr: Ipv4Addr,
    /// Packets dropped.
    pub packets: u64,
    /// Bytes dropped.
    pub bytes: u64,
}

/// Everything the kernel counted as refused by policy on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// Per local isolated pod and direction.
    pub pods: Vec<DropCount>,
    /// Packets to a local address no known pod holds (yet).
    pub unknown_ingress: u64,
    /// Packets from a local address no known pod holds (yet).
    pub unknown_egress: u64,
}

/// The drop sets' names per direction, for readers of the counters.
pub fn drop_set(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => DROP_SETS[0],
        Direction::Egress => DROP_SETS[1],
    }
}

/// Prometheus text for drop counters, each attributed to what dropped it:
/// the policies isolating the pod in that direction (a drop happens when
/// none of them admits the packet, the pod's implicit default deny), or
/// `reason="unknown-pod"` for a local address no pod is known for yet.
pub fn render_drop_metrics(state: &PolicyState, counters: &DropCounters) -> String {
    let mut s = String::from(
        "# HELP podnet_policy_dropped_packets_total Packets refused by NetworkPolicy, per pod, direction and the policies isolating it.\n# TYPE podnet_policy_dropped_packets_total counter\n",
    );
    for d in &counters.pods {
        let (pod, policies) = match state.isolated.get(&(d.dir, d.addr)) {
            Some(iso) => (iso.pod.to_string(), iso.policies.join(",")),
            None => (String::new(), String::new()),
        };
        let (ns, name) = pod.split_once('/').unwrap_or(("", ""));
        let _ = writeln!(
            s,
            "podnet_policy_dropped_packets_total{{namespace=\"{ns}\",pod=\"{name}\",ip=\"{}\",direction=\"{}\",reason=\"default-deny\",policies=\"{policies}\"}} {}",
            d.addr,
            d.dir.as_str(),
            d.packets
        );
    }
    for (dir, n) in [
        (Direction::Ingress, counters.unknown_ingress),
        (Direction::Egress, counters.unknown_egress),
    ] {
        let _ = writeln!(
            s,
            "podnet_policy_dropped_packets_total{{namespace=\"\",pod=\"\",ip=\"\",direction=\"{}\",reason=\"unknown-pod\",policies=\"\"}} {n}",
            dir.as_str()
        );
    }
    s
}
