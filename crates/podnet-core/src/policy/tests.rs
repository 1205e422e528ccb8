//! Unit tests of the model, the planner and the renderer.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

use super::*;

fn ns(name: &str) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"ns": name}}})).unwrap()
}

fn pod(namespace: &str, name: &str, ip: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "labels": {"pod": name}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"},
            {"name": "serve-81-tcp", "containerPort": 81, "protocol": "TCP"},
            {"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"},
            {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"}]}]},
        "status": {"podIP": ip}
    }))
    .unwrap()
}

fn netpol(namespace: &str, name: &str, spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": namespace}, "spec": spec}),
    )
    .unwrap()
}

struct World {
    pods: Vec<Pod>,
    nss: Vec<Namespace>,
}

fn world() -> World {
    let mut pods = Vec::new();
    for (i, n) in ["x", "y", "z"].iter().enumerate() {
        for (j, p) in ["a", "b", "c"].iter().enumerate() {
            let node = if j < 2 { "n1" } else { "n2" };
            let net = if j < 2 { 1 } else { 2 };
            pods.push(pod(n, p, &format!("10.244.{net}.{}", 10 + i * 3 + j), node));
        }
    }
    World {
        pods,
        nss: ["x", "y", "z"].iter().map(|n| ns(n)).collect(),
    }
}

const TCP80: Probe = Probe {
    proto: Proto::Tcp,
    port: 80,
};
const TCP81: Probe = Probe {
    proto: Proto::Tcp,
    port: 81,
};
const UDP80: Probe = Probe {
    proto: Proto::Udp,
    port: 80,
};

fn cell(m: &Matrix, from: &str, to: &str, probe: Probe) -> bool {
    let idx = |s: &str| {
        m.pods
            .iter()
            .position(|p| p.to_string() == s)
            .unwrap_or_else(|| panic!("no pod {s}"))
    };
    let pi = m.probes.iter().position(|p| *p == probe).unwrap();
    m.get(idx(from), idx(to), pi)
}

#[test]
fn no_policy_everything_open() {
    let w = world();
    let m = expected_matrix(&w.pods, &w.nss, &[], &[TCP80, UDP80]).unwrap();
    assert!(m.cells.iter().all(|c| *c));
    assert_eq!(m.pods.len(), 9);
}

#[test]
fn default_deny_ingress_isolates_namespace_only() {
    let w = world();
    let p = netpol("x", "deny", json!({"podSelector": {}, "ingress": []}));
    let m = expected_matrix(&w.pods, &w.nss, &[p], &[TCP80]).unwrap();
    assert!(!cell(&m, "y/a", "x/a", TCP80));
    assert!(!cell(&m, "x/b", "x/a", TCP80));
    assert!(cell(&m, "x/a", "x/a", TCP80), "a pod always reaches itself");
    assert!(cell(&m, "x/a", "y/a", TCP80), "egress stays open");
    assert!(cell(&m, "y/a", "z/b", TCP80));
}

#[test]
fn policy_types_default_adds_egress_only_with_rules() {
    let p = netpol("x", "p", json!({"podSelector": {}, "egress": [{}]}));
    let c = model::CompiledPolicy::compile(&p).unwrap();
    assert!(c.ingress.is_some() && c.egress.is_some());
    let p = netpol("x", "p", json!({"podSelector": {}, "egress": []}));
    let c = model::CompiledPolicy::compile(&p).unwrap();
    assert!(c.ingress.is_some() && c.egress.is_none());
}

#[test]
fn pod_and_namespace_selector_in_one_peer_is_and() {
    let w = world();
    let p = netpol(
        "x",
        "and",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}
        ]}]}),
    );
    let m = expected_matrix(&w.pods, &w.nss, &[p], &[TCP80]).unwrap();
    assert!(cell(&m, "y/b", "x/a", TCP80));
    assert!(!cell(&m, "y/a", "x/a", TCP80));
    assert!(!cell(&m, "x/b", "x/a", TCP80));
    assert!(!cell(&m, "z/b", "x/a", TCP80));
}

#[test]
fn named_ports_resolve_on_destination_and_endport_ranges() {
    let w = world();
    let named = netpol(
        "x",
        "named",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}),
    );
    let m = expected_matrix(&w.pods, &w.nss, &[named], &[TCP80, TCP81, UDP80]).unwrap();
    assert!(!cell(&m, "y/a", "x/a", TCP80));
    assert!(cell(&m, "y/a", "x/a", TCP81));
    assert!(!cell(&m, "y/a", "x/a", UDP80));
    let range = netpol(
        "x",
        "range",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 79, "endPort": 80, "protocol": "TCP"}]}]}),
    );
    let m = expected_matrix(&w.pods, &w.nss, &[range], &[TCP80, TCP81]).unwrap();
    assert!(cell(&m, "y/a", "x/a", TCP80));
    assert!(!cell(&m, "y/a", "x/a", TCP81));
}

#[test]
fn ip_block_except() {
    let w = world();
    let p = netpol(
        "x",
        "cidr",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [
            {"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.13/32"]}}
        ]}]}),
    );
    let m = expected_matrix(&w.pods, &w.nss, &[p], &[TCP80]).unwrap();
    assert!(
        !cell(&m, "x/a", "y/a", TCP80),
        "y/a is 10.244.1.13, excepted"
    );
    assert!(cell(&m, "x/a", "y/b", TCP80));
    assert!(cell(&m, "y/a", "x/a", TCP80));
}

#[test]
fn invalid_policy_is_an_error() {
    let w = world();
    let p = netpol(
        "x",
        "bad",
        json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}),
    );
    let e = expected_matrix(&w.pods, &w.nss, &[p], &[TCP80]).unwrap_err();
    assert!(e.to_string().contains("x/bad"), "{e}");
}

fn n1() -> NodeFacts {
    NodeFacts {
        node_name: "n1".into(),
        pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
    }
}

#[test]
fn plan_isolates_only_local_selected_pods() {
    let w = world();
    let p = netpol("x", "deny", json!({"podSelector": {}, "ingress": []}));
    let s = plan(&n1(), &w.pods, &w.nss, &[p]).unwrap();
    // x/a and x/b are local to n1; x/c runs on n2.
    let iso: Vec<Ipv4Addr> = s.isolated.keys().map(|(_, a)| *a).collect();
    assert_eq!(
        iso,
        vec![
            "10.244.1.10".parse::<Ipv4Addr>().unwrap(),
            "10.244.1.11".parse().unwrap()
        ]
    );
    assert_eq!(s.known.len(), 6);
    assert!(s.peer_ports.is_empty() && s.peer_any_port.is_empty());
    assert_eq!(s.peer_ranges.len(), 1, "no peers: one class for all space");
    assert!(s.peer_pods.is_empty());
}

#[test]
fn plan_peer_classes_are_shared_and_stable() {
    let w = world();
    let p = netpol(
        "x",
        "from-y",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
            "ports": [{"port": 80}, {"port": 81}, {"port": 80, "protocol": "UDP"}]}]}),
    );
    let s = plan(&n1(), &w.pods, &w.nss, std::slice::from_ref(&p)).unwrap();
    let classes: std::collections::BTreeSet<u32> = s.peer_ports.iter().map(|e| e.class).collect();
    assert_eq!(classes.len(), 1, "the three y pods share one class");
    // 2 local targets x (TCP 80, TCP 81, UDP 80).
    assert_eq!(s.peer_ports.len(), 6, "{:?}", s.peer_ports);
    // Only the y pods need their own class entry.
    assert_eq!(s.peer_pods.len(), 3);
    // Same inputs, same ids; a new pod elsewhere does not rename the class.
    let mut pods = w.pods.clone();
    pods.push(pod("z", "d", "10.244.2.99", "n2"));
    let s2 = plan(&n1(), &pods, &w.nss, &[p]).unwrap();
    assert_eq!(s.peer_ports, s2.peer_ports);
}

#[test]
fn render_and_diff() {
    let w = world();
    let deny = netpol("x", "deny", json!({"podSelector": {}, "ingress": []}));
    let allow = netpol(
        "x",
        "allow-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    let a = plan(&n1(), &w.pods, &w.nss, std::slice::from_ref(&deny)).unwrap();
    let b = plan(&n1(), &w.pods, &w.nss, &[deny.clone(), allow]).unwrap();
    let full = render_full(&b);
    assert!(full.starts_with("table inet podnet-policy {}\ndelete table inet podnet-policy\n"));
    assert!(
        full.contains(
            "set in_isolated { type ipv4_addr; elements = { 10.244.1.10, 10.244.1.11 } }"
        )
    );
    assert_eq!(full.matches("chain ").count(), 3, "rules never grow");
    let d = diff(&a, &b);
    let text = d.render();
    assert!(
        text.contains("add element inet podnet-policy in_peer { 10.244.1.10 . 0x"),
        "{text}"
    );
    assert!(!text.contains("delete element"), "{text}");
    // From b/x to c/x: the old peer's elements go before the new ones come.
    let allow_c = netpol(
        "x",
        "allow-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}],
               "ports": [{"port": 80, "endPort": 81}]}]}),
    );
    let c = plan(&n1(), &w.pods, &w.nss, &[deny, allow_c]).unwrap();
    let text = diff(&b, &c).render();
    assert!(text.find("delete element").unwrap() < text.find("add element").unwrap());
    assert!(text.contains("in_peer_range { 10.244.1.10 . 0x"), "{text}");
    assert!(text.contains(" . tcp . 80-81 }"), "{text}");
    assert!(diff(&b, &b).is_empty());
}

#[test]
fn merge_port_ranges() {
    let w = world();
    let p = netpol(
        "x",
        "ranges",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [
            {"port": 80, "endPort": 90}, {"port": 85, "endPort": 100}, {"port": 101}, {"port": 200}]}]}),
    );
    let s = plan(&n1(), &w.pods, &w.nss, &[p]).unwrap();
    let r: Vec<(u16, u16)> = s.any_peer_ports.iter().map(|e| (e.3, e.4)).collect();
    assert_eq!(r, vec![(80, 100), (101, 101), (200, 200)]);
}

#[test]
fn world_kept_by_events_plans_like_a_fresh_one() {
    let w = world();
    let deny = netpol("x", "deny", json!({"podSelector": {}, "ingress": []}));
    let from_y = netpol(
        "x",
        "from-y",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    let mut world = PolicyWorld::new(&w.pods, &w.nss, std::slice::from_ref(&deny)).unwrap();
    world.upsert_policy(&from_y).unwrap();
    let mut pods = w.pods.clone();
    pods.push(pod("y", "d", "10.244.1.99", "n1"));
    world.upsert_pod(pods.last().unwrap());
    let relabelled = ns("z");
    world.upsert_namespace(&relabelled);
    let fresh = plan(&n1(), &pods, &w.nss, &[deny.clone(), from_y]).unwrap();
    assert_eq!(plan_world(&n1(), &world), fresh);
    world.remove_policy("x", "from-y");
    world.remove_pod("y", "d");
    assert_eq!(
        plan_world(&n1(), &world),
        plan(&n1(), &w.pods, &w.nss, &[deny]).unwrap()
    );
    let bad = netpol(
        "x",
        "bad",
        json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
    );
    assert!(world.upsert_policy(&bad).is_err());
    assert_eq!(world.policies.len(), 1, "a bad policy changes nothing");
}

#[test]
fn only_updates_that_can_change_the_plan_count() {
    let w = world();
    let deny = netpol("x", "deny", json!({"podSelector": {}, "ingress": []}));
    let mut world = PolicyWorld::new(&w.pods, &w.nss, std::slice::from_ref(&deny)).unwrap();
    let before = plan_world(&n1(), &world);
    // A status-only update (a condition) changes no fact.
    let mut same = w.pods[0].clone();
    same.status.get_or_insert_default().conditions = Some(vec![Default::default()]);
    assert!(!world.upsert_pod(&same));
    // A pod without an address yet is in no rule: neither its arrival nor
    // its binding counts, and the plan is indeed the same.
    let mut fresh = pod("x", "new", "10.244.1.50", "n1");
    fresh.status = None;
    fresh.spec.get_or_insert_default().node_name = None;
    assert!(!world.upsert_pod(&fresh));
    fresh.spec.get_or_insert_default().node_name = Some("n1".into());
    assert!(!world.upsert_pod(&fresh));
    assert_eq!(plan_world(&n1(), &world), before);
    // Its address counts; so do new labels and its deletion.
    let addressed = pod("x", "new", "10.244.1.50", "n1");
    assert!(world.upsert_pod(&addressed));
    assert_ne!(plan_world(&n1(), &world), before);
    let mut relabelled = addressed.clone();
    relabelled
        .metadata
        .labels
        .get_or_insert_default()
        .insert("extra".into(), "1".into());
    assert!(world.upsert_pod(&relabelled));
    assert!(world.remove_pod("x", "new"));
    assert!(!world.remove_pod("x", "new"), "already gone");
    assert_eq!(plan_world(&n1(), &world), before);
    // Namespace labels: the same labels again do not count.
    assert!(!world.upsert_namespace(&w.nss[0]));
}

#[test]
fn sctp_and_protocol_only_rules_render_as_text() {
    let w = world();
    let p = netpol(
        "x",
        "sctp",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]},
                           {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                            "ports": [{"protocol": "SCTP"}, {"port": "serve-81-udp", "protocol": "UDP"}]}]}),
    );
    let s = plan(&n1(), &w.pods, &w.nss, &[p]).unwrap();
    let text = render_full(&s);
    assert!(
        text.contains("set in_port { type ipv4_addr . inet_proto . inet_service; elements = { 10.244.1.10 . sctp . 80 } }"),
        "{text}"
    );
    let class = s.peer_pods[&"10.244.1.11".parse::<Ipv4Addr>().unwrap()];
    assert!(
        text.contains(&format!(
            "elements = {{ 10.244.1.10 . 0x{class:08x} . sctp . 0-65535 }}"
        )),
        "protocol-only SCTP is a full port range: {text}"
    );
    assert!(
        text.contains(&format!("10.244.1.10 . 0x{class:08x} . udp . 81")),
        "named UDP port resolved on x/a: {text}"
    );
    // The chains are the same whatever the policies: golden lines.
    for line in [
        "type filter hook forward priority filter; policy accept;",
        "ct state established,related accept",
        "ip daddr . ct mark . meta l4proto . th dport @in_peer_port accept",
        "update @in_drops { ip daddr } reject with icmpx admin-prohibited",
        "ip saddr . meta l4proto . th dport @eg_range return",
    ] {
        assert_eq!(text.matches(line).count(), 1, "{line}");
    }
}

#[test]
fn explain_names_the_admitting_rule_and_agrees_with_verdict() {
    let w = world();
    let pols = vec![
        netpol("x", "deny-all", json!({"podSelector": {}, "ingress": []})),
        netpol(
            "x",
            "allow-b",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                           "podSelector": {"matchLabels": {"pod": "b"}}}],
                 "ports": [{"port": 80}]}]}),
        ),
    ];
    let world = PolicyWorld::new(&w.pods, &w.nss, &pols).unwrap();
    let facts = |ns: &str, name: &str| {
        world
            .pods
            .iter()
            .find(|p| &*p.key.namespace == ns && &*p.key.name == name)
            .unwrap()
    };
    let (xa, yb, zb) = (facts("x", "a"), facts("y", "b"), facts("z", "b"));
    let e = world.explain(
        Direction::Ingress,
        (yb.ip.unwrap(), Some(yb)),
        (xa.ip.unwrap(), Some(xa)),
        Proto::Tcp,
        80,
    );
    assert_eq!(e.isolating, ["x/deny-all", "x/allow-b"]);
    assert_eq!(e.admitting, [("x/allow-b".to_string(), 1)]);
    assert_eq!(e.verdict(), Verdict::Allowed(vec!["x/allow-b".into()]));
    for (src, port) in [(yb, 81), (zb, 80)] {
        let e = world.explain(
            Direction::Ingress,
            (src.ip.unwrap(), Some(src)),
            (xa.ip.unwrap(), Some(xa)),
            Proto::Tcp,
            port,
        );
        let v = world.verdict(
            Direction::Ingress,
            (src.ip.unwrap(), Some(src)),
            (xa.ip.unwrap(), Some(xa)),
            Proto::Tcp,
            port,
        );
        assert_eq!(e.verdict(), v);
        assert!(!v.allows());
    }
    let e = world.explain(
        Direction::Egress,
        (xa.ip.unwrap(), Some(xa)),
        (yb.ip.unwrap(), Some(yb)),
        Proto::Tcp,
        80,
    );
    assert_eq!(e.verdict(), Verdict::Open);
}
