//! The checks, each a pure reading of the [`World`] and the node facts
//! into [`Check`] lines. Cluster checks run per node in parallel; path
//! checks follow one connection.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, Service};
use podnet_core::policy::{Direction, PolicyWorld, Proto};
use podnet_core::proxy::{Family, ProxyState};

use super::node::{self, NodeShell};
use super::path::{self, PathPlan, PortSpec};
use super::world::{CLUSTER_DOMAIN, World, key, pod_place, pod_ready};
use super::{Check, pod_sh};

/// Where the agent writes its CNI configuration on each node.
pub const CONFLIST: &str = "/etc/cni/net.d/10-podnet.conflist";
/// Where `install-cni` puts the plugin.
pub const PLUGIN: &str = "/opt/cni/bin/podnet";

/// Nodes Ready, and each one's agent pod Running, Ready and of the
/// DaemonSet's current template.
pub fn nodes_and_agents(w: &World) -> Vec<Check> {
    let mut out = Vec::new();
    let rollout = w
        .daemonset
        .as_ref()
        .and_then(|d| d.status.as_ref())
        .and_then(|st| {
            let want = st.desired_number_scheduled;
            let updated = st.updated_number_scheduled.unwrap_or(want);
            (updated < want)
                .then(|| format!("{updated} of {want} agents run the DaemonSet's current template"))
        });
    if w.daemonset.is_none() {
        out.push(Check::fail(
            "agents",
            "kube-system/podnet",
            "the agents' DaemonSet does not exist",
            "kubectl apply -k deploy/ (docs/install.md)",
        ));
    }
    for n in &w.nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        match ready {
            Some(c) if c.status == "True" => out.push(Check::ok("nodes", &name, "Ready")),
            Some(c) => out.push(Check::fail(
                "nodes",
                &name,
                format!(
                    "NotReady: {}",
                    c.message.clone().unwrap_or_else(|| c.reason.clone().unwrap_or_default())
                ),
                format!("kubectl describe node {name}; the kubelet's log on the node; a node stays NotReady until podnet's conflist is there"),
            )),
            None => out.push(Check::fail("nodes", &name, "no Ready condition: the kubelet never reported", format!("check the kubelet on {name}"))),
        }
        let agents: Vec<&Pod> = w
            .pods
            .iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some("kube-system")
                    && p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("k8s-app"))
                        .map(String::as_str)
                        == Some("podnet")
                    && pod_place(p).1.as_deref() == Some(name.as_str())
                    && p.metadata.deletion_timestamp.is_none()
            })
            .collect();
        match agents.as_slice() {
            [] => out.push(Check::fail(
                "agents",
                &name,
                "no podnet agent pod on this node: its routes, proxy and policy are not kept, new nodes' pods are not reached",
                "kubectl -n kube-system get ds podnet -o yaml: its nodeSelector, affinity or tolerations must admit this node (kubectl -n kube-system describe ds podnet)",
            )),
            [p, ..] => {
                let pname = p.metadata.name.clone().unwrap_or_default();
                let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
                let restarts: i32 = p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).map(|c| c.iter().map(|c| c.restart_count).sum()).unwrap_or(0);
                if !pod_ready(p) {
                    out.push(Check::fail("agents", &name, format!("agent {pname} is {phase}, not Ready (restarts {restarts})"), format!("kubectl -n kube-system logs {pname}; kubectl -n kube-system describe pod {pname}")));
                } else {
                    out.push(Check::ok("agents", &name, format!("agent {pname} Running and Ready, {restarts} restarts")));
                }
            }
        }
    }
    if let Some(r) = rollout {
        out.push(Check::warn(
            "agents",
            "kube-system/podnet",
            format!("{r}: a rollout is in progress or stuck (kubectl -n kube-system rollout status ds/podnet)"),
        ));
    }
    out
}

/// The node's pod CIDR, conflist and plugin binary.
pub fn cni(w: &World, sh: &dyn NodeShell, node: &str) -> (Vec<Check>, Option<u32>) {
    let mut out = Vec::new();
    let cidr = w.node_cidr(node);
    match &cidr {
        Some(c) => out.push(Check::ok("cni", format!("{node} pod CIDR"), c.clone())),
        None => out.push(Check::fail("cni", format!("{node} pod CIDR"), "Node.spec.podCIDR is empty: the agent waits and writes no conflist", "give the controller manager --allocate-node-cidrs --cluster-cidr (docs/install.md, Before you apply)")),
    }
    let mut mtu = None;
    match sh.node_file(node, CONFLIST) {
        Ok(Some((bytes, _))) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) => {
                let plugin = v["plugins"].as_array().and_then(|p| p.iter().find(|p| p["type"] == "podnet")).cloned().unwrap_or_default();
                mtu = plugin["mtu"].as_u64().map(|m| m as u32);
                let subnet = plugin["ipam"]["ranges"][0][0]["subnet"].as_str().unwrap_or_default().to_string();
                if cidr.as_deref().is_some_and(|c| c != subnet) {
                    out.push(Check::fail("cni", format!("{node} conflist"), format!("{CONFLIST} hands out {subnet} but the node's pod CIDR is {}", cidr.clone().unwrap_or_default()), format!("kubectl -n kube-system delete pod -l k8s-app=podnet --field-selector spec.nodeName={node} (the agent rewrites it)")));
                } else {
                    out.push(Check::ok("cni", format!("{node} conflist"), format!("{CONFLIST}: podnet, subnet {subnet}, mtu {}", mtu.unwrap_or(0))));
                }
            }
            Err(e) => out.push(Check::fail("cni", format!("{node} conflist"), format!("{CONFLIST} is not JSON: {e}"), format!("remove it; the agent on {node} writes it again"))),
        },
        Ok(None) => out.push(Check::fail("cni", format!("{node} conflist"), format!("{CONFLIST} is missing: the kubelet cannot start pods (NetworkPluginNotReady)"), format!("the agent writes it once it is Ready: check the agent pod on {node} (kubectl -n kube-system get pods -l k8s-app=podnet -o wide), or restart it"))),
        Err(e) => out.push(Check::fail("cni", format!("{node} conflist"), format!("unreadable: {e:#}"), "check the node's /etc/cni/net.d")),
    }
    match sh.node_file(node, PLUGIN) {
        Ok(Some((_, mode))) if mode & 0o111 != 0 => out.push(Check::ok(
            "cni",
            format!("{node} plugin"),
            format!("{PLUGIN} executable"),
        )),
        Ok(Some(_)) => out.push(Check::fail(
            "cni",
            format!("{node} plugin"),
            format!("{PLUGIN} is not executable"),
            format!(
                "chmod 755 {PLUGIN} on {node}, or restart its agent pod (install-cni copies it)"
            ),
        )),
        Ok(None) => out.push(Check::fail(
            "cni",
            format!("{node} plugin"),
            format!("{PLUGIN} is missing"),
            format!(
                "restart the agent pod on {node}: its init container install-cni copies the plugin"
            ),
        )),
        Err(e) => out.push(Check::fail(
            "cni",
            format!("{node} plugin"),
            format!("unreadable: {e:#}"),
            "check the node's /opt/cni/bin",
        )),
    }
    (out, mtu)
}

/// Routes (or VXLAN FDB and neighbour entries) to every other node's pods.
pub fn routes(w: &World, sh: &dyn NodeShell, node: &str) -> Vec<Check> {
    let mut out = Vec::new();
    for peer in w.node_names() {
        if peer == node {
            continue;
        }
        let says = path::route_to(w, sh, node, &peer);
        let subject = format!("{node} → {peer}'s pods");
        if says.agrees {
            out.push(Check::ok("routes", subject, says.evidence));
        } else {
            out.push(Check::fail("routes", subject, says.evidence, format!("the agent on {node} lays these out from the Nodes: restart it (kubectl -n kube-system delete pod -l k8s-app=podnet --field-selector spec.nodeName={node}) and check its log for route errors")));
        }
    }
    out
}

/// The MTU: pods' eth0 fit the conflist's (and so the overlay's) MTU, and
/// with VXLAN the uplink carries it plus 50 bytes; a full-size
/// don't-fragment ping crosses to a pod on another node.
pub fn mtu(
    w: &World,
    sh: &dyn NodeShell,
    node: &str,
    policy: &PolicyWorld,
    conf_mtu: Option<u32>,
) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(m) = conf_mtu else {
        return out;
    };
    let links = match node::links(sh, node) {
        Ok(l) => l,
        Err(e) => {
            out.push(Check::fail(
                "mtu",
                node,
                format!("cannot read links: {e:#}"),
                "check the node",
            ));
            return out;
        }
    };
    let uplink = links
        .iter()
        .find(|l| l.name == "eth0")
        .map(|l| l.mtu)
        .unwrap_or(0);
    if w.encap() == "vxlan" {
        let vx = links
            .iter()
            .find(|l| l.name == path::podnet_vxlan())
            .map(|l| l.mtu);
        if uplink < m + 50 || vx.is_some_and(|v| v < m) {
            out.push(Check::fail("mtu", format!("{node} overlay"), format!("pods' MTU {m} + 50 (VXLAN) exceeds the uplink's {uplink}, or {} has {}", path::podnet_vxlan(), vx.unwrap_or(0)), "set PODNET_MTU to the uplink's MTU less 50 (or 0: derived) in podnet-config and restart the agents and the pods"));
        } else {
            out.push(Check::ok(
                "mtu",
                format!("{node} overlay"),
                format!(
                    "pods {m}, {} {}, uplink {uplink} (≥ {m} + 50)",
                    path::podnet_vxlan(),
                    vx.unwrap_or(0)
                ),
            ));
        }
    } else if uplink < m {
        out.push(Check::fail("mtu", format!("{node} uplink"), format!("pods' MTU {m} exceeds the uplink's {uplink}"), "set PODNET_MTU to 0 (the uplink's) in podnet-config and restart the agents and the pods"));
    }
    let mut too_big = Vec::new();
    let mut seen = 0;
    for p in w.pods.iter().filter(|p| {
        let (ip, n, host) = pod_place(p);
        !host && ip.is_some() && n.as_deref() == Some(node)
    }) {
        let Ok(o) = sh.pod_cmd(p, &["cat", "/sys/class/net/eth0/mtu"]) else {
            continue;
        };
        let Ok(pm) = String::from_utf8_lossy(&o.stdout).trim().parse::<u32>() else {
            continue;
        };
        seen += 1;
        if pm > m {
            too_big.push(format!("{} eth0 {pm}", key(&p.metadata)));
        }
    }
    if too_big.is_empty() {
        out.push(Check::ok(
            "mtu",
            format!("{node} pods"),
            format!("{seen} pods' eth0 ≤ {m}"),
        ));
    } else {
        out.push(Check::fail("mtu", format!("{node} pods"), format!("larger than the overlay carries ({m}): {}; full-size packets from them are dropped", too_big.join(", ")), format!("recreate those pods (the CNI plugin sets mtu {m}); nothing but the plugin should change a pod's eth0")));
    }
    // A full-size DF probe from this node to a pod on another node, one
    // that no policy isolates for ingress (the node's own traffic to it is
    // then not refused).
    let target = w.pods.iter().find(|p| {
        let (ip, n, host) = pod_place(p);
        !host
            && pod_ready(p)
            && ip.is_some()
            && n.as_deref().is_some_and(|n| n != node)
            && policy
                .pods
                .iter()
                .find(|f| {
                    Some(&*f.key.namespace) == p.metadata.namespace.as_deref()
                        && Some(&*f.key.name) == p.metadata.name.as_deref()
                })
                .is_some_and(|f| {
                    !policy
                        .policies
                        .iter()
                        .any(|pol| pol.ingress.is_some() && pol.selects(f))
                })
    });
    if let Some(t) = target {
        let (ip, tnode, _) = pod_place(t);
        let ip = ip.unwrap_or_default();
        let size = (m - 28).to_string();
        let ok = sh
            .node_cmd(
                node,
                &["ping", "-M", "do", "-s", &size, "-c", "1", "-W", "2", &ip],
            )
            .map(|o| o.status.success())
            .unwrap_or(false);
        let subject = format!("{node} → {}", tnode.unwrap_or_default());
        if ok {
            out.push(Check::ok(
                "mtu",
                subject,
                format!(
                    "{m}-byte don't-fragment ping to {} ({ip}) crossed",
                    key(&t.metadata)
                ),
            ));
        } else {
            out.push(Check::fail("mtu", subject, format!("{m}-byte don't-fragment ping to {} ({ip}) was lost", key(&t.metadata)), "something on the path carries less than the pods' MTU: compare PODNET_MTU with the uplinks' MTU (less 50 with VXLAN), and check the routes above"));
        }
    }
    out
}

/// Whether the kernel's proxy ruleset on `node` is the one planned from
/// the Services and EndpointSlices; the drift is named.
pub fn proxy(w: &World, sh: &dyn NodeShell, node: &str, state: &ProxyState) -> Vec<Check> {
    let subject = format!("{node} ruleset");
    match w.proxy_mode() {
        "none" => vec![Check::ok(
            "proxy",
            subject,
            "PODNET_PROXY_MODE=none: Services are kube-proxy's",
        )],
        "iptables" => {
            let want = podnet_core::proxy::iptables::ruleset(state, Family::V4);
            let have = match node::iptables_chains(sh, node, "nat") {
                Ok(h) => h,
                Err(e) => {
                    return vec![Check::fail(
                        "proxy",
                        subject,
                        format!("cannot read: {e:#}"),
                        "check the node",
                    )];
                }
            };
            let mut drift = Vec::new();
            for (chain, rules) in &want.nat {
                match have.get(chain) {
                    None => drift.push(format!("chain {chain} missing")),
                    Some(&n) if n != rules.len() => {
                        drift.push(format!("chain {chain} has {n} rules, plan {}", rules.len()))
                    }
                    _ => {}
                }
            }
            drift_check(
                subject,
                node,
                "iptables nat KUBE-* chains",
                want.nat.len(),
                drift,
            )
        }
        _ => {
            let want = podnet_core::proxy::nft::ruleset(state, Family::V4);
            let have = match node::nft_table(sh, node, "ip", podnet_core::proxy::nft::TABLE) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    return vec![Check::fail(
                        "proxy",
                        subject,
                        format!(
                            "table ip {} is missing: Services do not work from {node}",
                            podnet_core::proxy::nft::TABLE
                        ),
                        restart_agent(node),
                    )];
                }
                Err(e) => {
                    return vec![Check::fail(
                        "proxy",
                        subject,
                        format!("cannot read: {e:#}"),
                        "check the node",
                    )];
                }
            };
            let mut drift = Vec::new();
            for (chain, c) in &want.chains {
                match have.chains.get(chain) {
                    None => drift.push(format!("chain {chain} missing")),
                    Some(&n) if n != c.rules.len() => drift.push(format!(
                        "chain {chain} has {n} rules, plan {}",
                        c.rules.len()
                    )),
                    _ => {}
                }
            }
            for (name, set) in &want.sets {
                if podnet_core::proxy::nft::DYNAMIC_SETS.contains(&name.as_str()) {
                    continue;
                }
                match have.sets.get(name) {
                    None => drift.push(format!("set {name} missing")),
                    Some(keys) if name == "service-ips" => {
                        let have: BTreeSet<&String> = keys.iter().collect();
                        let missing: Vec<&String> =
                            set.elements.keys().filter(|k| !have.contains(k)).collect();
                        let extra = keys
                            .len()
                            .saturating_sub(set.elements.len() - missing.len());
                        if !missing.is_empty() {
                            drift.push(format!(
                                "service-ips lacks {}",
                                missing
                                    .iter()
                                    .map(|s| s.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ));
                        }
                        if extra > 0 {
                            drift.push(format!("service-ips holds {extra} elements not planned"));
                        }
                    }
                    Some(keys) if keys.len() != set.elements.len() => drift.push(format!(
                        "{name} holds {} elements, plan {}",
                        keys.len(),
                        set.elements.len()
                    )),
                    _ => {}
                }
            }
            drift_check(
                subject,
                node,
                &format!("table ip {}", podnet_core::proxy::nft::TABLE),
                want.chains.len(),
                drift,
            )
        }
    }
}

fn restart_agent(node: &str) -> String {
    format!(
        "restart the agent on {node}: kubectl -n kube-system delete pod -l k8s-app=podnet --field-selector spec.nodeName={node} (its first sync reloads the whole ruleset in one transaction)"
    )
}

fn drift_check(
    subject: String,
    node: &str,
    what: &str,
    chains: usize,
    drift: Vec<String>,
) -> Vec<Check> {
    if drift.is_empty() {
        vec![Check::ok(
            "proxy",
            subject,
            format!("{what} matches the plan ({chains} chains)"),
        )]
    } else {
        vec![Check::fail(
            "proxy",
            subject,
            format!("{what} drifted from the plan: {}", drift.join("; ")),
            restart_agent(node),
        )]
    }
}

/// UDP conntrack entries of a service address that point at an endpoint
/// the plan no longer has: the stale-UDP blackhole.
pub fn conntrack(sh: &dyn NodeShell, node: &str, state: &ProxyState) -> Vec<Check> {
    let subject = format!("{node} UDP");
    let entries = match node::conntrack(sh, node, "udp") {
        Ok(e) => e,
        Err(e) => {
            return vec![Check::warn(
                "conntrack",
                subject,
                format!("cannot read conntrack: {e:#}"),
            )];
        }
    };
    let mut live: BTreeMap<(String, u16), BTreeSet<(String, u16)>> = BTreeMap::new();
    for p in state
        .ports
        .values()
        .filter(|p| p.name.protocol.as_str() == "udp")
    {
        for ip in &p.cluster_ips {
            let eps = live.entry((ip.to_string(), p.port)).or_default();
            for e in &p.endpoints {
                eps.insert((e.addr.to_string(), e.port));
            }
        }
    }
    let mut stale = Vec::new();
    for e in &entries {
        let Some(eps) = live.get(&(e.dst.clone(), e.dport)) else {
            continue;
        };
        if e.reply_src == e.dst {
            continue;
        }
        if !eps.contains(&(e.reply_src.clone(), e.reply_sport)) {
            stale.push(e);
        }
    }
    if stale.is_empty() {
        vec![Check::ok(
            "conntrack",
            subject,
            format!("{} UDP entries, none to a gone endpoint", entries.len()),
        )]
    } else {
        let what: Vec<String> = stale
            .iter()
            .map(|e| {
                format!(
                    "{}:{} → {}:{} (from {}:{})",
                    e.dst, e.dport, e.reply_src, e.reply_sport, e.src, e.sport
                )
            })
            .collect();
        let fixes: Vec<String> = stale
            .iter()
            .map(|e| {
                format!(
                    "conntrack -D -p udp --orig-dst {} --orig-port-dst {} --reply-src {}",
                    e.dst, e.dport, e.reply_src
                )
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        vec![Check::fail(
            "conntrack",
            subject,
            format!(
                "entries to endpoints that no longer exist (their clients' packets go nowhere until the entry expires): {}",
                what.join(", ")
            ),
            format!("on {node}: {}", fixes.join("; ")),
        )]
    }
}

/// Pods' bridge ports in hairpin mode, so a pod reaches itself through its
/// service.
pub fn hairpin(sh: &dyn NodeShell, node: &str) -> Vec<Check> {
    let subject = format!("{node} bridge ports");
    let links = match node::links(sh, node) {
        Ok(l) => l,
        Err(e) => {
            return vec![Check::warn(
                "hairpin",
                subject,
                format!("cannot read links: {e:#}"),
            )];
        }
    };
    let ports: Vec<&node::LinkFact> = links
        .iter()
        .filter(|l| l.master.as_deref() == Some("podnet0") && l.kind == "veth")
        .collect();
    let off: Vec<&str> = ports
        .iter()
        .filter(|l| l.hairpin != Some(true))
        .map(|l| l.name.as_str())
        .collect();
    if off.is_empty() {
        vec![Check::ok(
            "hairpin",
            subject,
            format!("{} pod veths on podnet0, hairpin on", ports.len()),
        )]
    } else {
        vec![Check::fail(
            "hairpin",
            subject,
            format!(
                "hairpin off on {}: those pods cannot reach themselves through a service",
                off.join(", ")
            ),
            format!(
                "on {node}: ip link set <veth> type bridge_slave hairpin on (the CNI plugin sets it; hairpinMode in the conflist)"
            ),
        )]
    }
}

/// Policies whose pod selector, or a same-namespace peer selector, matches
/// no pod: often a typo, which makes an allow rule admit nothing.
pub fn policy_selectors(w: &World, policy: &PolicyWorld) -> Vec<Check> {
    let mut out = Vec::new();
    for pol in &policy.policies {
        let in_ns: Vec<&podnet_core::policy::model::PodFacts> = policy
            .pods
            .iter()
            .filter(|p| *p.key.namespace == *pol.namespace && !p.host_network)
            .collect();
        if !in_ns.is_empty() && !in_ns.iter().any(|p| pol.selects(p)) {
            let np = w.policies.iter().find(|n| {
                n.metadata.namespace.as_deref() == Some(&pol.namespace)
                    && n.metadata.name.as_deref() == Some(&pol.name)
            });
            let sel = np
                .and_then(|n| n.spec.as_ref())
                .and_then(|s| s.pod_selector.as_ref())
                .and_then(|s| s.match_labels.clone())
                .unwrap_or_default();
            let labelled: Vec<(&str, BTreeMap<String, String>)> = in_ns
                .iter()
                .map(|p| (&*p.key.name, p.labels.to_map()))
                .collect();
            out.push(Check::warn(
                "policy",
                pol.id(),
                format!(
                    "podSelector {} selects none of the {} pods of {}{}",
                    labels_text(&sel),
                    in_ns.len(),
                    pol.namespace,
                    closest_hint(&sel, labelled.iter().map(|(n, l)| (*n, l)))
                ),
            ));
        }
    }
    out
}

/// `a=b,c=d`.
pub fn labels_text(l: &BTreeMap<String, String>) -> String {
    if l.is_empty() {
        return "{}".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// For a selector that matches nothing: the pod that comes closest and
/// the labels where they differ (`; closest: pod web-1 has app=web, not
/// app=wbe`).
pub fn closest_hint<'a>(
    sel: &BTreeMap<String, String>,
    pods: impl Iterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
) -> String {
    let mut best: Option<(usize, &str, Vec<String>)> = None;
    for (name, labels) in pods {
        let same = sel
            .iter()
            .filter(|(k, v)| labels.get(*k) == Some(v))
            .count();
        let near = sel.keys().filter(|k| labels.contains_key(*k)).count();
        // Matching pairs first, then matching keys, then the values that
        // are nearest by edit distance (a typo is one or two edits away).
        let distance: usize = sel
            .iter()
            .filter_map(|(k, v)| labels.get(k).map(|h| edit_distance(h, v).min(9)))
            .sum();
        let score = same * 1000 + near * 100 + 99usize.saturating_sub(distance);
        let diff: Vec<String> = sel
            .iter()
            .filter(|(k, v)| labels.get(*k) != Some(v))
            .map(|(k, v)| match labels.get(k) {
                Some(have) => format!("{k}={have}, not {k}={v}"),
                None => {
                    let similar = labels
                        .iter()
                        .find(|(_, hv)| *hv == v)
                        .map(|(hk, hv)| format!(" (it has {hk}={hv})"))
                        .unwrap_or_default();
                    format!("no label {k}{similar}")
                }
            })
            .collect();
        if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
            best = Some((score, name, diff));
        }
    }
    match best {
        Some((_, name, diff)) if !diff.is_empty() => {
            format!("; closest: pod {name} has {}", diff.join(", "))
        }
        _ => String::new(),
    }
}

/// Levenshtein distance between two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The DNS checks: `kube-dns` and its endpoints, each DNS pod answering
/// `kubernetes.default`, and the upstream.
pub fn dns(w: &World, sh: &dyn NodeShell) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(svc) = w.service("kube-system", "kube-dns") else {
        out.push(Check::fail(
            "dns",
            "kube-system/kube-dns",
            "the Service does not exist: pods' resolv.conf names an address nobody serves",
            "kubectl apply -k deploy/ (dns.yaml)",
        ));
        return out;
    };
    let vip = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .unwrap_or_default();
    let want_ip = w.setting("PODNET_DNS_SERVICE_IP", "10.96.0.10");
    let (ready, total) = ready_endpoints(w, "kube-system", "kube-dns");
    if vip != want_ip {
        out.push(Check::fail("dns", "kube-system/kube-dns", format!("cluster IP {vip}, but kubelets give pods nameserver {want_ip}"), "make PODNET_DNS_SERVICE_IP, the kubelets' --cluster-dns and kube-dns's clusterIP the same"));
    }
    if ready == 0 {
        let pods = w
            .pods
            .iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some("kube-system")
                    && p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("k8s-app"))
                        .map(String::as_str)
                        == Some("kube-dns")
            })
            .count();
        out.push(Check::fail("dns", "kube-system/kube-dns", format!("{vip}: no ready endpoints ({total} listed; {pods} DNS pods): every lookup in the cluster fails"), if pods == 0 { "kubectl -n kube-system scale deployment coredns --replicas=2".to_string() } else { "kubectl -n kube-system describe pods -l k8s-app=kube-dns; kubectl -n kube-system logs -l k8s-app=kube-dns".to_string() }));
    } else {
        out.push(Check::ok(
            "dns",
            "kube-system/kube-dns",
            format!("{vip}, {ready} ready endpoints"),
        ));
    }
    let api_ip = w
        .service("default", "kubernetes")
        .and_then(|s| s.spec.as_ref()?.cluster_ip.clone())
        .unwrap_or_default();
    let no_forward = w.setting("PODNET_DNS_NO_FORWARD", "false") == "true";
    let mut upstream_asked = false;
    for p in w.pods.iter().filter(|p| {
        p.metadata.namespace.as_deref() == Some("kube-system")
            && p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("k8s-app"))
                .map(String::as_str)
                == Some("kube-dns")
            && p.metadata.deletion_timestamp.is_none()
    }) {
        let (ip, node, _) = pod_place(p);
        let (Some(ip), Some(node)) = (ip, node) else {
            out.push(Check::fail(
                "dns",
                key(&p.metadata),
                "not running yet (no IP)",
                "kubectl -n kube-system describe pod ".to_string()
                    + p.metadata.name.as_deref().unwrap_or_default(),
            ));
            continue;
        };
        let name = format!("kubernetes.default.svc.{CLUSTER_DOMAIN}");
        let answer = dig(sh, &node, &ip, &name, "A");
        match &answer {
            Ok((status, addrs)) if status == "NOERROR" && addrs.contains(&api_ip) => out.push(Check::ok("dns", key(&p.metadata), format!("{ip} answers {name} → {api_ip}"))),
            Ok((status, addrs)) => out.push(Check::fail("dns", key(&p.metadata), format!("{ip} answers {name} with {status} {addrs:?}, want {api_ip}"), format!("kubectl -n kube-system logs {}; the DNS server reads Services and EndpointSlices through the API (its RBAC: docs/install.md)", p.metadata.name.as_deref().unwrap_or_default()))),
            Err(e) => out.push(Check::fail("dns", key(&p.metadata), format!("{ip} does not answer {name}: {e}"), format!("the pod runs but does not answer: kubectl -n kube-system logs {0}; kubectl -n kube-system delete pod {0} (the Deployment makes a new one)", p.metadata.name.as_deref().unwrap_or_default()))),
        }
        if !upstream_asked && answer.is_ok() {
            upstream_asked = true;
            if no_forward {
                out.push(Check::warn("dns", "upstream", "forwarding is off by config (PODNET_DNS_NO_FORWARD=true): names outside the cluster domain are REFUSED"));
            } else {
                let upstream = w
                    .setting("PODNET_DNS_UPSTREAM", "the node's /etc/resolv.conf")
                    .to_string();
                match dig(sh, &node, &ip, ".", "NS") {
                    Ok((s, _)) if s == "NOERROR" || s == "NXDOMAIN" => out.push(Check::ok("dns", "upstream", format!("{upstream} answers through {ip} (. NS: {s})"))),
                    Ok((s, _)) => out.push(Check::fail("dns", "upstream", format!("{ip} forwards to {upstream}, which gives {s} for . NS: names outside the cluster fail"), "set PODNET_DNS_UPSTREAM in podnet-config to resolvers the DNS pods can reach, then kubectl -n kube-system rollout restart deploy/coredns")),
                    Err(e) => out.push(Check::fail("dns", "upstream", format!("{ip} forwards to {upstream}, which does not answer: {e}"), "set PODNET_DNS_UPSTREAM in podnet-config to resolvers the DNS pods can reach, then kubectl -n kube-system rollout restart deploy/coredns")),
                }
            }
        }
    }
    out
}

/// `dig` from `node` at `server`: (rcode, answers) or why nothing came.
fn dig(
    sh: &dyn NodeShell,
    node: &str,
    server: &str,
    name: &str,
    qtype: &str,
) -> Result<(String, Vec<String>), String> {
    let at = format!("@{server}");
    let o = sh
        .node_cmd(
            node,
            &[
                "dig",
                "+time=1",
                "+tries=2",
                "+noall",
                "+comments",
                "+answer",
                &at,
                name,
                qtype,
            ],
        )
        .map_err(|e| format!("{e:#}"))?;
    let text = String::from_utf8_lossy(&o.stdout);
    let Some(status) = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or_default().to_string())
    else {
        return Err("no answer (timed out)".into());
    };
    let addrs = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    Ok((status, addrs))
}

/// (ready, listed) endpoints of a service.
pub fn ready_endpoints(w: &World, ns: &str, name: &str) -> (usize, usize) {
    let mut ready = 0;
    let mut total = 0;
    for s in w.slices_of(ns, name) {
        for e in &s.endpoints {
            total += 1;
            if e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true) {
                ready += 1;
            }
        }
    }
    (ready, total)
}

/// The service checks of a path: exists, selector matches pods, ports
/// resolve on them, endpoints ready.
pub fn service(w: &World, sh: &dyn NodeShell, svc: &Service, spec: &PortSpec) -> Vec<Check> {
    let mut out = Vec::new();
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let id = format!("{ns}/{name}");
    let sel = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
        .into_iter()
        .collect::<BTreeMap<_, _>>();
    let in_ns: Vec<&Pod> = w
        .pods
        .iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(&ns) && p.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let selected: Vec<&Pod> = in_ns
        .iter()
        .copied()
        .filter(|p| {
            let l = p.metadata.labels.clone().unwrap_or_default();
            !sel.is_empty() && sel.iter().all(|(k, v)| l.get(k) == Some(v))
        })
        .collect();
    out.push(Check::ok(
        "service",
        &id,
        format!(
            "exists, cluster IP {}",
            svc.spec
                .as_ref()
                .and_then(|s| s.cluster_ip.clone())
                .unwrap_or_default()
        ),
    ));
    if sel.is_empty() {
        out.push(Check::warn(
            "service",
            &id,
            "no selector: its endpoints are managed by hand",
        ));
    } else if selected.is_empty() {
        let labels: Vec<(String, BTreeMap<String, String>)> = in_ns
            .iter()
            .map(|p| {
                (
                    p.metadata.name.clone().unwrap_or_default(),
                    p.metadata.labels.clone().unwrap_or_default(),
                )
            })
            .collect();
        let hint = closest_hint(&sel, labels.iter().map(|(n, l)| (n.as_str(), l)));
        out.push(Check::fail("service", &id, format!("selector {} matches none of the {} pods in {ns}{hint}", labels_text(&sel), in_ns.len()), format!("fix the selector (kubectl -n {ns} edit svc {name}) or the pods' labels (kubectl -n {ns} label pod ...)")));
    } else {
        out.push(Check::ok(
            "service",
            &id,
            format!(
                "selector {} matches {} pods",
                labels_text(&sel),
                selected.len()
            ),
        ));
    }
    let ports: Vec<&k8s_openapi::api::core::v1::ServicePort> = match path::service_port(svc, spec) {
        Some(p) => vec![p],
        None => {
            out.push(Check::fail(
                "service",
                &id,
                format!("has no port {}", spec.port.as_deref().unwrap_or("")),
                format!(
                    "kubectl -n {ns} get svc {name} -o yaml: its ports are {}",
                    svc.spec
                        .as_ref()
                        .and_then(|s| s.ports.as_ref())
                        .map(|p| p
                            .iter()
                            .map(|p| format!(
                                "{}/{}",
                                p.port,
                                p.protocol.as_deref().unwrap_or("TCP")
                            ))
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                ),
            ));
            vec![]
        }
    };
    for sp in ports {
        let proto = Proto::parse(sp.protocol.as_deref()).unwrap_or(Proto::Tcp);
        let tp = sp.target_port.clone();
        let subject = format!("{id}:{}", sp.port);
        let mut bad = Vec::new();
        let mut good = Vec::new();
        for p in &selected {
            let facts = podnet_core::policy::model::PodFacts::from_pod(p);
            let declared: Vec<String> = p
                .spec
                .as_ref()
                .map(|s| {
                    s.containers
                        .iter()
                        .flat_map(|c| c.ports.clone().unwrap_or_default())
                        .map(|cp| {
                            format!(
                                "{}{}/{}",
                                cp.name.map(|n| n + "=").unwrap_or_default(),
                                cp.container_port,
                                cp.protocol.unwrap_or_else(|| "TCP".into())
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let pname = p.metadata.name.clone().unwrap_or_default();
            match &tp {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(n)) => {
                    match facts.resolve(n, proto) {
                        Some(num) => good.push((p, num)),
                        None => bad.push(format!(
                            "pod {pname} has no container port named {n:?} (declares {})",
                            if declared.is_empty() {
                                "none".into()
                            } else {
                                declared.join(", ")
                            }
                        )),
                    }
                }
                other => {
                    let num = match other {
                        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                            *n as u16
                        }
                        _ => sp.port as u16,
                    };
                    let declares = p.spec.as_ref().is_some_and(|s| {
                        s.containers
                            .iter()
                            .flat_map(|c| c.ports.iter().flatten())
                            .any(|cp| {
                                cp.container_port as u16 == num
                                    && Proto::parse(cp.protocol.as_deref()).ok() == Some(proto)
                            })
                    });
                    if !declared.is_empty() && !declares {
                        bad.push(format!(
                            "pod {pname} does not declare {num}/{proto} (declares {})",
                            declared.join(", ")
                        ));
                    } else {
                        good.push((p, num));
                    }
                }
            }
        }
        // A TCP targetPort that resolves is also connected to from the
        // pod's own node (a node always reaches its pods).
        if proto == Proto::Tcp {
            for (p, num) in &good {
                let (ip, node, _) = pod_place(p);
                if let (Some(ip), Some(node)) = (ip, node) {
                    let ok = sh
                        .node_cmd(&node, &["nc", "-z", "-w", "1", &ip, &num.to_string()])
                        .map(|o| o.status.success())
                        .unwrap_or(false);
                    if !ok {
                        bad.push(format!(
                            "pod {} ({ip}) refuses {num}/TCP: nothing listens there",
                            p.metadata.name.as_deref().unwrap_or_default()
                        ));
                    }
                }
            }
        }
        let tp_text = match &tp {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(n)) => n.clone(),
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                n.to_string()
            }
            None => sp.port.to_string(),
        };
        if bad.is_empty() {
            if !selected.is_empty() {
                out.push(Check::ok(
                    "service",
                    &subject,
                    format!(
                        "targetPort {tp_text}/{proto} resolves and answers on {} pods",
                        good.len()
                    ),
                ));
            }
        } else {
            out.push(Check::fail("service", &subject, format!("targetPort {tp_text}: {}", bad.join("; ")), format!("set the Service's targetPort to the port the pods serve (kubectl -n {ns} edit svc {name}), or name that container port {tp_text:?}")));
        }
    }
    let (ready, total) = ready_endpoints(w, &ns, &name);
    if ready > 0 {
        out.push(Check::ok(
            "service",
            &id,
            format!("{ready} ready endpoints"),
        ));
    } else if !sel.is_empty() {
        out.push(Check::fail(
            "service",
            &id,
            format!("no ready endpoints ({total} listed): connections are refused"),
            if selected.is_empty() {
                "see the selector above".to_string()
            } else {
                format!(
                    "the selected pods are not Ready: kubectl -n {ns} describe pods -l {}",
                    labels_text(&sel)
                )
            },
        ));
    }
    out
}

/// The policy checks of a planned path.
pub fn policy_path(w: &World, plan: &PathPlan) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(b) = &plan.backend else { return out };
    let peer_dst = b.pod.clone().unwrap_or_else(|| b.ip.to_string());
    for (dir, e, subject, peer) in [
        (
            Direction::Egress,
            &plan.egress,
            plan.src.clone(),
            peer_dst.clone(),
        ),
        (
            Direction::Ingress,
            &plan.ingress,
            peer_dst.clone(),
            plan.src.clone(),
        ),
    ] {
        let text = path::verdict_text(e, dir, &subject, &peer, b.port, plan.proto);
        let label = format!("{} {subject}", dir.as_str());
        if e.verdict().allows() {
            out.push(Check::ok("policy", label, text));
        } else {
            let ns = subject.split('/').next().unwrap_or_default();
            let hints: Vec<String> = e
                .isolating
                .iter()
                .filter_map(|id| {
                    let (pns, pname) = id.split_once('/')?;
                    w.policies
                        .iter()
                        .find(|p| {
                            p.metadata.namespace.as_deref() == Some(pns)
                                && p.metadata.name.as_deref() == Some(pname)
                        })
                        .map(|_| id.clone())
                })
                .collect();
            let typo: Vec<String> = w
                .policies
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
                .filter_map(|p| {
                    let c = podnet_core::policy::model::CompiledPolicy::compile(p).ok()?;
                    let any = w
                        .pods
                        .iter()
                        .filter(|q| q.metadata.namespace.as_deref() == Some(ns))
                        .map(podnet_core::policy::model::PodFacts::from_pod)
                        .any(|f| c.selects(&f));
                    (!any).then(|| {
                        format!(
                            "{} selects no pod (podSelector {})",
                            c.id(),
                            labels_text(
                                &p.spec
                                    .as_ref()
                                    .and_then(|s| s.pod_selector.as_ref())
                                    .and_then(|s| s.match_labels.clone())
                                    .unwrap_or_default()
                            )
                        )
                    })
                })
                .collect();
            let typo = if typo.is_empty() {
                String::new()
            } else {
                format!(" Note: {} (a typo?)", typo.join("; "))
            };
            out.push(Check::fail("policy", label, format!("{text}.{typo}"), format!("add a rule admitting {peer} on {}/{} to one of {} (kubectl -n {ns} edit networkpolicy ...), or fix the selector of the policy meant to admit it", b.port, plan.proto, hints.join(", "))));
        }
    }
    out
}

/// The `--from` pod's resolv.conf, as kubelet writes it for ClusterFirst.
pub async fn resolv_conf(w: &World, from: &Pod) -> Check {
    let id = key(&from.metadata);
    let ns = from.metadata.namespace.clone().unwrap_or_default();
    let policy = from
        .spec
        .as_ref()
        .and_then(|s| s.dns_policy.clone())
        .unwrap_or_else(|| "ClusterFirst".into());
    let host = from
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    if policy == "Default" || policy == "None" || (host && policy == "ClusterFirst") {
        return Check::warn(
            "dns",
            format!("{id} resolv.conf"),
            format!(
                "dnsPolicy {policy}{}: the pod does not use the cluster DNS",
                if host { " with hostNetwork" } else { "" }
            ),
        );
    }
    let text = match pod_sh(&w.client, from, "cat /etc/resolv.conf").await {
        Ok(o) => o.stdout,
        Err(e) => {
            return Check::fail(
                "dns",
                format!("{id} resolv.conf"),
                format!("cannot read it: {e:#}"),
                "does the pod have sh and cat?",
            );
        }
    };
    let want_ns = w
        .service("kube-system", "kube-dns")
        .and_then(|s| s.spec.as_ref()?.cluster_ip.clone())
        .unwrap_or_else(|| w.setting("PODNET_DNS_SERVICE_IP", "10.96.0.10").to_string());
    let nameservers: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .map(str::trim)
        .collect();
    let search: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("search"))
        .flat_map(str::split_whitespace)
        .collect();
    let ndots = text
        .lines()
        .filter_map(|l| l.strip_prefix("options"))
        .flat_map(str::split_whitespace)
        .find_map(|o| o.strip_prefix("ndots:"))
        .unwrap_or("1")
        .to_string();
    let want_search = [
        format!("{ns}.svc.{CLUSTER_DOMAIN}"),
        format!("svc.{CLUSTER_DOMAIN}"),
        CLUSTER_DOMAIN.to_string(),
    ];
    let mut wrong = Vec::new();
    if nameservers.first() != Some(&want_ns.as_str()) {
        wrong.push(format!("nameserver {nameservers:?}, want {want_ns}"));
    }
    if search.len() < 3
        || search[..3] != want_search.iter().map(String::as_str).collect::<Vec<_>>()[..]
    {
        wrong.push(format!("search {search:?}, want {want_search:?} first"));
    }
    if ndots != "5" {
        wrong.push(format!("ndots:{ndots}, want ndots:5"));
    }
    if wrong.is_empty() {
        Check::ok(
            "dns",
            format!("{id} resolv.conf"),
            format!(
                "nameserver {want_ns}, search {}, ndots:5",
                want_search.join(" ")
            ),
        )
    } else {
        Check::fail(
            "dns",
            format!("{id} resolv.conf"),
            wrong.join("; "),
            "the kubelet writes it from dnsPolicy and its --cluster-dns/--cluster-domain: check them (and the pod's dnsConfig)",
        )
    }
}

/// The probe command of one connection from inside a pod.
pub fn probe_script(ip: &str, port: u16, proto: Proto, timeout: u32) -> String {
    match proto {
        Proto::Udp => format!("echo hostname | nc -u -w {timeout} {ip} {port} | grep -q ."),
        Proto::Sctp => format!("nc --sctp -z -w {timeout} {ip} {port}"),
        Proto::Tcp => format!("nc -z -w {timeout} {ip} {port}"),
    }
}
