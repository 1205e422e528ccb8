//! The planner: from the cluster's objects and one node's facts to the
//! desired policy state of that node, as sets keyed by address.
//!
//! Shape (Cilium's idea in nftables terms): every address in the IPv4 space
//! gets a *peer class*, the set of policy peers it matches (plus, for egress
//! named ports, what those names mean on it). Classes are few (addresses that
//! match the same peers share one), so the verdict of a new connection is one
//! lookup `address -> class` and one lookup `local pod . class . proto .
//! port` in a hashed set, whatever the number of policies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::PolicyError;
use super::model::{
    CompiledPolicy, Direction, Peer, PodFacts, PodKey, PolicyWorld, PortMatch, Proto, Rule,
};

/// What the planner must know about the node it plans for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// `spec.nodeName` of the pods that run here.
    pub node_name: String,
    /// The node's pod CIDRs: an address in them that the planner does not
    /// know as a local pod is refused (a pod not yet seen is isolated).
    pub pod_cidrs: Vec<Ipv4Net>,
}

/// Why a local pod is isolated in one direction: the policies selecting it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isolation {
    /// The pod.
    pub pod: PodKey,
    /// `namespace/name` of every policy that selects it for the direction.
    pub policies: Vec<String>,
}

/// A range of addresses sharing one peer class (`0`: matches no peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRange {
    /// First address.
    pub first: Ipv4Addr,
    /// Last address (inclusive).
    pub last: Ipv4Addr,
    /// The class id (an nft `mark`).
    pub class: u32,
}

/// Element of `<dir>_peer_port`: the local pod admits (ingress) or may send
/// to (egress) a class on a protocol and port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerPort {
    /// Direction.
    pub dir: Direction,
    /// The local pod's address.
    pub pod: Ipv4Addr,
    /// The remote peer class.
    pub class: u32,
    /// Protocol.
    pub proto: Proto,
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

/// The desired policy state of one node: what the nft table's sets hold.
/// Two equal states mean two equal rulesets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyState {
    /// The node's pod CIDRs.
    pub local_cidrs: BTreeSet<Ipv4Net>,
    /// Addresses of local pods the planner knows.
    pub known: BTreeSet<Ipv4Addr>,
    /// Local pods isolated per direction, with who isolates them.
    pub isolated: BTreeMap<(Direction, Ipv4Addr), Isolation>,
    /// The whole IPv4 space split at ipBlock edges into peer classes
    /// (sorted, no gaps): the class of an address that is no pod.
    pub peer_ranges: Vec<PeerRange>,
    /// Pod addresses whose class differs from their range's (looked up
    /// after the ranges, in a hashed map).
    pub peer_pods: BTreeMap<Ipv4Addr, u32>,
    /// Class admitted on any port and protocol.
    pub peer_any_port: BTreeSet<(Direction, Ipv4Addr, u32)>,
    /// Class admitted on some ports.
    pub peer_ports: BTreeSet<PeerPort>,
    /// Any peer admitted on some ports.
    pub any_peer_ports: BTreeSet<(Direction, Ipv4Addr, Proto, u16, u16)>,
}

/// Plans the node's policy state from the API objects.
pub fn plan(
    node: &NodeFacts,
    pods: &[Pod],
    namespaces: &[Namespace],
    policies: &[NetworkPolicy],
) -> Result<PolicyState, PolicyError> {
    let world = PolicyWorld::new(pods, namespaces, policies)?;
    Ok(plan_world(node, &world))
}

struct Subject<'w> {
    dir: Direction,
    pod: &'w PodFacts,
    ip: Ipv4Addr,
    rules: Vec<&'w Rule>,
}

/// Plans from an already compiled world (the agent keeps one between events).
pub fn plan_world(node: &NodeFacts, world: &PolicyWorld) -> PolicyState {
    let mut state = PolicyState {
        local_cidrs: node.pod_cidrs.iter().map(|c| c.trunc()).collect(),
        ..Default::default()
    };
    // Which local pods are isolated, and by which rules (a policy selects
    // only pods of its own namespace: index by namespace).
    // Within a namespace, policies whose selector requires a label are
    // indexed by it, so a pod meets only the policies that may select it.
    #[derive(Default)]
    struct NsPolicies<'w> {
        any: Vec<&'w CompiledPolicy>,
        by_label: HashMap<(&'w str, &'w str), Vec<&'w CompiledPolicy>>,
    }
    let mut by_ns: HashMap<&str, NsPolicies<'_>> = HashMap::new();
    for pol in &world.policies {
        let e = by_ns.entry(pol.namespace.as_str()).or_default();
        match pol.selector.required_label() {
            Some(kv) => e.by_label.entry(kv).or_default().push(pol),
            None => e.any.push(pol),
        }
    }
    let candidates = |pod: &PodFacts| -> Vec<&CompiledPolicy> {
        let Some(e) = by_ns.get(&*pod.key.namespace) else {
            return Vec::new();
        };
        let mut out: Vec<&CompiledPolicy> = e.any.clone();
        for (k, v) in pod.labels.iter() {
            if let Some(list) = e.by_label.get(&(k, v)) {
                out.extend(list.iter().copied());
            }
        }
        // Keep the policies' own order, so isolation lists are stable.
        out.sort_by_key(|p| *p as *const CompiledPolicy as usize);
        out
    };
    let mut subjects = Vec::new();
    for pod in &world.pods {
        let Some(ip) = pod.ip else { continue };
        if pod.host_network || pod.node.as_deref() != Some(node.node_name.as_str()) {
            continue;
        }
        state.known.insert(ip);
        let mine = candidates(pod);
        for dir in [Direction::Ingress, Direction::Egress] {
            let mut policies = Vec::new();
            let mut rules = Vec::new();
            for pol in &mine {
                if let Some(r) = pol.rules(dir).filter(|_| pol.selects(pod)) {
                    policies.push(pol.id());
                    rules.extend(r.iter());
                }
            }
            if policies.is_empty() || rules.iter().any(|r| r.peers.is_none() && r.ports.is_none()) {
                continue; // not selected, or a rule admits everything
            }
            state.isolated.insert(
                (dir, ip),
                Isolation {
                    pod: pod.key.clone(),
                    policies,
                },
            );
            subjects.push(Subject {
                dir,
                pod,
                ip,
                rules,
            });
        }
    }

    // The peers that matter here, and the egress port names to resolve.
    let mut peers: Vec<&Peer> = Vec::new();
    let mut peer_index: HashMap<&Peer, usize> = HashMap::new();
    let mut names: BTreeSet<(String, Proto)> = BTreeSet::new();
    for s in &subjects {
        for r in &s.rules {
            for p in r.peers.iter().flatten() {
                peer_index.entry(p).or_insert_with(|| {
                    peers.push(p);
                    peers.len() - 1
                });
            }
            if s.dir == Direction::Egress {
                for spec in r.ports.iter().flatten() {
                    if let PortMatch::Named(n) = &spec.port {
                        names.insert((n.clone(), spec.proto));
                    }
                }
            }
        }
    }
    let names: Vec<(String, Proto)> = names.into_iter().collect();
    let classes = classify(world, &peers, &names);
    state.peer_ranges = classes.ranges;
    state.peer_pods = classes.pods;

    // Elements.
    type ClassPorts = BTreeMap<(Direction, Ipv4Addr, u32, Proto), Vec<(u16, u16)>>;
    let mut peer_ports: ClassPorts = BTreeMap::new();
    let mut any_ports: BTreeMap<(Direction, Ipv4Addr, Proto), Vec<(u16, u16)>> = BTreeMap::new();
    for s in &subjects {
        for r in &s.rules {
            match &r.peers {
                None => {
                    for spec in r.ports.iter().flatten() {
                        match (&spec.port, s.dir) {
                            (PortMatch::Named(n), Direction::Egress) => {
                                // Resolved on each destination: per class.
                                let ni = names
                                    .iter()
                                    .position(|(m, p)| m == n && *p == spec.proto)
                                    .expect("collected");
                                for c in &classes.classes {
                                    if let Some(port) = c.resolved[ni] {
                                        peer_ports
                                            .entry((s.dir, s.ip, c.id, spec.proto))
                                            .or_default()
                                            .push((port, port));
                                    }
                                }
                            }
                            _ => {
                                if let Some(range) = local_range(&spec.port, spec.proto, s.pod) {
                                    any_ports
                                        .entry((s.dir, s.ip, spec.proto))
                                        .or_default()
                                        .push(range);
                                }
                            }
                        }
                    }
                }
                Some(list) => {
                    for peer in list {
                        let pi = peer_index[peer];
                        for &ci in &classes.by_peer[pi] {
                            let c = &classes.classes[ci];
                            let Some(ports) = &r.ports else {
                                state.peer_any_port.insert((s.dir, s.ip, c.id));
                                continue;
                            };
                            for spec in ports {
                                let range = match (&spec.port, s.dir) {
                                    (PortMatch::Named(n), Direction::Egress) => {
                                        let ni = names
                                            .iter()
                                            .position(|(m, p)| m == n && *p == spec.proto)
                                            .expect("collected");
                                        c.resolved[ni].map(|p| (p, p))
                                    }
                                    _ => local_range(&spec.port, spec.proto, s.pod),
                                };
                                if let Some(range) = range {
                                    peer_ports
                                        .entry((s.dir, s.ip, c.id, spec.proto))
                                        .or_default()
                                        .push(range);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    for ((dir, pod, class, proto), ranges) in peer_ports {
        if state.peer_any_port.contains(&(dir, pod, class)) {
            continue;
        }
        for (lo, hi) in merge_ranges(ranges) {
            state.peer_ports.insert(PeerPort {
                dir,
                pod,
                class,
                proto,
                lo,
                hi,
            });
        }
    }
    for ((dir, pod, proto), ranges) in any_ports {
        for (lo, hi) in merge_ranges(ranges) {
            state.any_peer_ports.insert((dir, pod, proto, lo, hi));
        }
    }
    state
}

/// A port spec on the local pod's side: numbers as given, names resolved on
/// the local pod (the destination, for ingress).
fn local_range(port: &PortMatch, proto: Proto, pod: &PodFacts) -> Option<(u16, u16)> {
    match port {
        PortMatch::Any => Some((0, u16::MAX)),
        PortMatch::Range(lo, hi) => Some((*lo, *hi)),
        PortMatch::Named(n) => pod.resolve(n, proto).map(|p| (p, p)),
    }
}

/// Sorted union of inclusive ranges without overlaps (interval sets refuse
/// overlapping elements); touching ranges stay apart, so that single ports
/// stay single and go to the hashed sets.
fn merge_ranges(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    ranges.dedup();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

struct Class {
    id: u32,
    resolved: Vec<Option<u16>>,
}

struct Classes {
    classes: Vec<Class>,
    /// For each peer, the classes (indices) that contain it.
    by_peer: Vec<Vec<usize>>,
    ranges: Vec<PeerRange>,
    pods: BTreeMap<Ipv4Addr, u32>,
}

/// Splits the IPv4 space into peer classes.
fn classify(world: &PolicyWorld, peers: &[&Peer], names: &[(String, Proto)]) -> Classes {
    // Boundaries: every block edge.
    let mut pods_by_addr: BTreeMap<u32, &PodFacts> = BTreeMap::new();
    for p in &world.pods {
        if let (Some(ip), false) = (p.ip, p.host_network) {
            pods_by_addr.entry(u32::from(ip)).or_insert(p);
        }
    }
    let mut bounds: BTreeSet<u32> = BTreeSet::from([0]);
    let mut edge = |net: &Ipv4Net| {
        bounds.insert(u32::from(net.network()));
        if let Some(next) = u32::from(net.broadcast()).checked_add(1) {
            bounds.insert(next);
        }
    };
    let mut block_peers = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        if let Peer::Block { cidr, except } = p {
            edge(cidr);
            except.iter().for_each(&mut edge);
            block_peers.push(i);
        }
    }
    let bounds: Vec<u32> = bounds.into_iter().collect();

    // Each address range between block edges, and each pod address, gets
    // a key: the peers it matches and what the egress port names mean on it.
    type Key = (Vec<usize>, Vec<Option<u16>>);
    let mut keys: HashMap<Key, usize> = HashMap::new();
    let mut key_list: Vec<Key> = Vec::new();
    let mut intern = |key: Key| match keys.get(&key) {
        Some(&i) => i,
        None => {
            key_list.push(key.clone());
            keys.insert(key, key_list.len() - 1);
            key_list.len() - 1
        }
    };
    let mut intervals: Vec<(u32, u32, usize)> = Vec::new();
    for (i, &start) in bounds.iter().enumerate() {
        let end = bounds.get(i + 1).map(|n| n - 1).unwrap_or(u32::MAX);
        let members: Vec<usize> = block_peers
            .iter()
            .copied()
            .filter(|&pi| world.peer_matches(peers[pi], Ipv4Addr::from(start), None))
            .collect();
        intervals.push((start, end, intern((members, vec![None; names.len()]))));
    }
    // Which peers each pod matches; a pod peer whose selector requires a
    // label is tried only on pods that carry it.
    let pod_list: Vec<(u32, &PodFacts)> = pods_by_addr.iter().map(|(a, p)| (*a, *p)).collect();
    let mut label_index: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for (i, (_, pod)) in pod_list.iter().enumerate() {
        for (k, v) in pod.labels.iter() {
            label_index.entry((k, v)).or_default().push(i);
        }
    }
    let all: Vec<usize> = (0..pod_list.len()).collect();
    let mut pod_members: Vec<Vec<usize>> = vec![Vec::new(); pod_list.len()];
    for (pi, peer) in peers.iter().enumerate() {
        let candidates: &[usize] = match peer {
            Peer::Pods { pods, .. } => match pods.required_label() {
                Some(kv) => label_index.get(&kv).map_or(&[], Vec::as_slice),
                None => &all,
            },
            Peer::Block { .. } => &all,
            Peer::Nothing => &[],
        };
        for &i in candidates {
            let (a, pod) = pod_list[i];
            if world.peer_matches(peer, Ipv4Addr::from(a), Some(pod)) {
                pod_members[i].push(pi);
            }
        }
    }
    let mut pod_keys: Vec<(u32, usize)> = Vec::new();
    for ((a, pod), members) in pod_list.iter().zip(pod_members) {
        let (a, pod) = (*a, *pod);
        let resolved: Vec<Option<u16>> = names
            .iter()
            .map(|(n, proto)| pod.resolve(n, *proto))
            .collect();
        pod_keys.push((a, intern((members, resolved))));
    }

    // Stable ids from content, so that a full plan and an incremental one
    // name the same class the same way: a hash of the peers' text.
    let peer_text: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
    let mut order: Vec<(String, usize)> = key_list
        .iter()
        .enumerate()
        .map(|(i, (members, resolved))| {
            let mut parts: Vec<&str> = members.iter().map(|&m| peer_text[m].as_str()).collect();
            parts.sort_unstable();
            (format!("{}|{resolved:?}", parts.join(";")), i)
        })
        .collect();
    order.sort();
    let mut ids = vec![0u32; key_list.len()];
    let mut used: BTreeSet<u32> = BTreeSet::from([0]);
    for (text, i) in &order {
        let (members, resolved) = &key_list[*i];
        if members.is_empty() && resolved.iter().all(Option::is_none) {
            ids[*i] = 0;
            continue;
        }
        let mut id = (fnv1a(text.as_bytes()) & 0x7fff_ffff) as u32;
        while used.contains(&id) {
            id = (id + 1) & 0x7fff_ffff;
        }
        used.insert(id);
        ids[*i] = id;
    }

    let mut by_peer = vec![Vec::new(); peers.len()];
    let mut classes = Vec::new();
    for (i, (members, resolved)) in key_list.iter().enumerate() {
        for &m in members {
            by_peer[m].push(i);
        }
        classes.push(Class {
            id: ids[i],
            resolved: resolved.clone(),
        });
    }
    let mut ranges: Vec<PeerRange> = Vec::new();
    for (start, end, idx) in intervals {
        let class = ids[idx];
        match ranges.last_mut() {
            Some(last) if last.class == class => last.last = Ipv4Addr::from(end),
            _ => ranges.push(PeerRange {
                first: Ipv4Addr::from(start),
                last: Ipv4Addr::from(end),
                class,
            }),
        }
    }
    // A pod needs its own entry only where it differs from its range.
    let mut pods = BTreeMap::new();
    for (a, idx) in pod_keys {
        let class = ids[idx];
        let i = ranges.partition_point(|r| u32::from(r.first) <= a) - 1;
        if ranges[i].class != class {
            pods.insert(Ipv4Addr::from(a), class);
        }
    }
    Classes {
        classes,
        by_peer,
        ranges,
        pods,
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
