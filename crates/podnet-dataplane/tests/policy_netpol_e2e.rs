//! Truth tables of the upstream Kubernetes NetworkPolicy e2e suite
//! (test/e2e/network/netpol/network_policy.go), on a real kernel: for each
//! case, the probed matrix (TCP and UDP, ports 80 and 81, every pair of the
//! nine pods x,y,z/a,b,c on two nodes) must equal the model's, and the cells
//! the upstream case asserts are checked against its own expectations.
//! Each test is named after the upstream case it mirrors.

mod policy_lab;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use podnet_core::policy::{Matrix, Proto};
use policy_lab::{Lab, agents, netpol};
use serde_json::json;

const TCP: Proto = Proto::Tcp;
const UDP: Proto = Proto::Udp;

/// The probed cell `from -> to` on `port`/`proto`.
fn at(m: &Matrix, from: &str, to: &str, port: u16, proto: Proto) -> bool {
    let i = |k: &str| m.pods.iter().position(|p| p.to_string() == k).unwrap();
    let p = m
        .probes
        .iter()
        .position(|p| p.port == port && p.proto == proto)
        .unwrap();
    m.get(i(from), i(to), p)
}

/// Builds the lab, enforces `policies`, asserts kernel == model, and
/// returns the probed matrix for the case's own expectations.
fn case(policies: &[NetworkPolicy]) -> Matrix {
    let lab = Lab::xyz();
    let mut agents = lab.agents();
    lab.assert_case(&mut agents, policies);
    lab.probe()
}

fn deny_ingress_x() -> NetworkPolicy {
    netpol(
        "x",
        "deny-ingress",
        json!({"podSelector": {}, "ingress": []}),
    )
}

#[test]
fn should_support_a_default_deny_ingress_policy() {
    let m = case(&[deny_ingress_x()]);
    assert!(!at(&m, "y/a", "x/a", 80, TCP) && !at(&m, "x/b", "x/a", 80, UDP));
    assert!(at(&m, "x/a", "y/a", 80, TCP) && at(&m, "y/a", "y/b", 80, TCP));
}

#[test]
fn should_support_a_default_deny_all_policy() {
    let p = netpol(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    let m = case(&[p]);
    assert!(!at(&m, "x/a", "y/a", 80, TCP) && !at(&m, "y/a", "x/a", 80, TCP));
    assert!(!at(&m, "x/a", "x/b", 81, UDP));
    assert!(at(&m, "y/a", "z/c", 80, TCP));
}

#[test]
fn should_enforce_policy_to_allow_traffic_from_pods_within_server_namespace_based_on_pod_selector()
{
    let p = netpol(
        "x",
        "x-a-allows-x-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "x/b", "x/a", 80, TCP));
    assert!(!at(&m, "x/c", "x/a", 80, TCP) && !at(&m, "y/b", "x/a", 80, TCP));
}

#[test]
fn should_enforce_policy_to_allow_ingress_traffic_for_a_target() {
    let allow = netpol(
        "x",
        "allow-all-to-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {}, "namespaceSelector": {}}]}]}),
    );
    let m = case(&[deny_ingress_x(), allow]);
    assert!(at(&m, "z/c", "x/a", 80, TCP) && at(&m, "x/b", "x/a", 81, UDP));
    assert!(!at(&m, "x/a", "x/b", 80, TCP));
}

#[test]
fn should_enforce_policy_to_allow_ingress_traffic_from_pods_in_all_namespaces() {
    let p = netpol(
        "x",
        "allow-from-another-ns",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {}}}]}]}),
    );
    let m = case(&[p]);
    assert!(m.cells.iter().all(|c| *c));
}

#[test]
fn should_enforce_policy_to_allow_traffic_only_from_a_different_namespace_based_on_namespace_selector()
 {
    let p = netpol(
        "x",
        "allow-client-a-via-ns-selector",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "y/c", "x/a", 80, TCP));
    assert!(!at(&m, "x/b", "x/a", 80, TCP) && !at(&m, "z/a", "x/a", 80, TCP));
}

#[test]
fn should_enforce_policy_based_on_pod_selector_with_match_expressions() {
    let p = netpol(
        "x",
        "x-a-allows-x-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b"]}]}}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "x/b", "x/a", 80, TCP) && !at(&m, "y/a", "x/a", 80, TCP));
}

#[test]
fn should_enforce_policy_based_on_namespace_selector_with_match_expressions() {
    let p = netpol(
        "x",
        "allow-ns-y-match-selector",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                   {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["y"]}]}}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "y/a", "x/a", 80, TCP) && !at(&m, "z/a", "x/a", 80, TCP));
}

#[test]
fn should_enforce_policy_based_on_pod_selector_or_namespace_selector() {
    let p = netpol(
        "x",
        "allow-ns-y-match-selector",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [
                   {"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]}]}},
                   {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "x/b", "x/a", 80, TCP) && at(&m, "y/a", "x/a", 80, TCP));
    assert!(!at(&m, "x/c", "x/a", 80, TCP));
}

#[test]
fn should_enforce_policy_based_on_pod_selector_and_namespace_selector() {
    let p = netpol(
        "x",
        "allow-ns-y-podselector-and-nsselector",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{
                   "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]}]},
                   "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "y/b", "x/a", 80, TCP) && at(&m, "z/b", "x/a", 80, TCP));
    assert!(!at(&m, "x/b", "x/a", 80, TCP) && !at(&m, "y/a", "x/a", 80, TCP));
}

#[test]
fn should_enforce_policy_based_on_multiple_pod_selectors_and_namespace_selectors() {
    let p = netpol(
        "x",
        "allow-ns-y-z-pod-b-c",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{
                   "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]}]},
                   "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "y/b", "x/a", 80, TCP) && at(&m, "y/c", "x/a", 80, TCP));
    assert!(!at(&m, "x/b", "x/a", 80, TCP) && !at(&m, "y/a", "x/a", 80, TCP));
}

#[test]
fn should_enforce_policy_based_on_any_pod_selectors() {
    let p = netpol(
        "x",
        "allow-ns-x-pod-b-c",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}},
                                     {"podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "x/b", "x/a", 80, TCP) && at(&m, "x/c", "x/a", 80, TCP));
    assert!(!at(&m, "y/b", "x/a", 80, TCP));
}

#[test]
fn should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector()
 {
    let p = netpol(
        "x",
        "allow-ns-y-pod-a-via-namespace-pod-selector",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{
                   "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}},
                   "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "y/a", "x/a", 80, TCP));
    assert!(!at(&m, "y/b", "x/a", 80, TCP) && !at(&m, "z/a", "x/a", 80, TCP));
}

fn allow_y_on(port: u16, name: &str) -> NetworkPolicy {
    netpol(
        "x",
        name,
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}],
                            "ports": [{"port": port, "protocol": "TCP"}]}]}),
    )
}

#[test]
fn should_enforce_policy_based_on_ports() {
    let m = case(&[allow_y_on(81, "allow-client-a-via-ns-selector")]);
    assert!(at(&m, "y/a", "x/a", 81, TCP) && !at(&m, "y/a", "x/a", 80, TCP));
    assert!(!at(&m, "y/a", "x/a", 81, UDP) && !at(&m, "z/a", "x/a", 81, TCP));
}

#[test]
fn should_enforce_multiple_stacked_policies_with_overlapping_pod_selectors() {
    let lab = Lab::xyz();
    let mut agents = lab.agents();
    let p81 = allow_y_on(81, "allow-client-a-via-ns-selector");
    lab.assert_case(&mut agents, std::slice::from_ref(&p81));
    let m = lab.probe();
    assert!(!at(&m, "y/a", "x/a", 80, TCP));
    let p80 = allow_y_on(80, "allow-client-a-via-ns-selector-80");
    lab.assert_case(&mut agents, &[p81, p80]);
    let m = lab.probe();
    assert!(at(&m, "y/a", "x/a", 80, TCP) && at(&m, "y/b", "x/a", 81, TCP));
    assert!(!at(&m, "z/a", "x/a", 80, TCP));
}

#[test]
fn should_support_allow_all_policy() {
    let p = netpol(
        "x",
        "allow-all",
        json!({"podSelector": {}, "ingress": [{}]}),
    );
    let m = case(&[p]);
    assert!(m.cells.iter().all(|c| *c));
}

#[test]
fn should_allow_ingress_access_on_one_named_port() {
    let p = netpol(
        "x",
        "allow-all",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "y/a", "x/a", 81, TCP) && at(&m, "x/b", "x/a", 81, TCP));
    assert!(!at(&m, "y/a", "x/a", 80, TCP) && !at(&m, "y/a", "x/b", 81, UDP));
}

#[test]
fn should_allow_ingress_access_from_namespace_on_one_named_port() {
    let p = netpol(
        "x",
        "allow-client-a-via-ns-selector-80",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}],
                            "ports": [{"port": "serve-80-tcp", "protocol": "TCP"}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "y/a", "x/a", 80, TCP));
    assert!(!at(&m, "y/a", "x/a", 81, TCP) && !at(&m, "z/a", "x/a", 80, TCP));
}

#[test]
fn should_allow_egress_access_on_one_named_port() {
    let p = netpol(
        "x",
        "allow-egress",
        json!({"podSelector": {}, "egress": [{"ports": [{"port": "serve-80-tcp"}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "x/a", "y/a", 80, TCP) && at(&m, "x/a", "z/c", 80, TCP));
    assert!(!at(&m, "x/a", "y/a", 81, TCP) && !at(&m, "x/a", "y/a", 80, UDP));
}

#[test]
fn should_enforce_updated_policy() {
    let lab = Lab::xyz();
    let mut agents = lab.agents();
    let v1 = netpol(
        "x",
        "allow-all-mutate-to-deny-all",
        json!({"podSelector": {}, "ingress": [{}]}),
    );
    lab.assert_case(&mut agents, &[v1]);
    let v2 = netpol(
        "x",
        "allow-all-mutate-to-deny-all",
        json!({"podSelector": {}, "ingress": []}),
    );
    lab.assert_case(&mut agents, &[v2]);
    let m = lab.probe();
    assert!(!at(&m, "y/a", "x/a", 81, TCP));
}

#[test]
fn should_allow_ingress_access_from_updated_namespace() {
    let mut lab = Lab::xyz();
    let files = lab.node_files();
    let mut agents = agents(&files);
    let p = netpol(
        "x",
        "allow-client-a-via-ns-selector",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}]}),
    );
    lab.assert_case(&mut agents, std::slice::from_ref(&p));
    assert!(!at(&lab.probe(), "y/a", "x/a", 80, TCP));
    lab.label_namespace("y", "ns2", "updated");
    lab.assert_case(&mut agents, &[p]);
    assert!(at(&lab.probe(), "y/a", "x/a", 80, TCP));
}

#[test]
fn should_allow_ingress_access_from_updated_pod() {
    let mut lab = Lab::xyz();
    let files = lab.node_files();
    let mut agents = agents(&files);
    let p = netpol(
        "x",
        "allow-client-a-via-pod-selector",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {},
                                      "podSelector": {"matchLabels": {"pod": "b", "pod2": "updated"}}}]}]}),
    );
    lab.assert_case(&mut agents, std::slice::from_ref(&p));
    assert!(!at(&lab.probe(), "x/b", "x/a", 80, TCP));
    lab.label_pod("x/b", "pod2", "updated");
    lab.assert_case(&mut agents, &[p]);
    assert!(at(&lab.probe(), "x/b", "x/a", 80, TCP));
}

#[test]
fn should_deny_ingress_access_to_updated_pod() {
    let mut lab = Lab::xyz();
    let files = lab.node_files();
    let mut agents = agents(&files);
    let p = netpol(
        "x",
        "deny-ingress-via-label-selector",
        json!({"podSelector": {"matchLabels": {"target": "isolated"}},
               "policyTypes": ["Ingress"]}),
    );
    lab.assert_case(&mut agents, std::slice::from_ref(&p));
    assert!(at(&lab.probe(), "y/a", "x/a", 80, TCP));
    lab.label_pod("x/a", "target", "isolated");
    lab.assert_case(&mut agents, &[p]);
    assert!(!at(&lab.probe(), "y/a", "x/a", 80, TCP));
}

#[test]
fn should_deny_egress_from_pods_based_on_pod_selector() {
    let p = netpol(
        "x",
        "deny-egress-pod-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
    );
    let m = case(&[p]);
    assert!(!at(&m, "x/a", "y/a", 80, TCP) && !at(&m, "x/a", "x/c", 81, UDP));
    assert!(at(&m, "y/a", "x/a", 80, TCP) && at(&m, "x/b", "y/a", 80, TCP));
}

#[test]
fn should_deny_egress_from_all_pods_in_a_namespace() {
    let p = netpol(
        "x",
        "deny-egress-ns-x",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    );
    let m = case(&[p]);
    assert!(!at(&m, "x/b", "y/a", 80, TCP) && !at(&m, "x/c", "z/a", 80, UDP));
    assert!(at(&m, "y/a", "x/a", 80, TCP));
}

#[test]
fn should_work_with_ingress_egress_specified_together() {
    let p = netpol(
        "x",
        "allow-client-a-via-pod-selector",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
               "egress": [{"ports": [{"port": 80, "protocol": "TCP"}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "x/b", "x/a", 80, TCP) && !at(&m, "x/c", "x/a", 80, TCP));
    assert!(at(&m, "x/a", "y/a", 80, TCP) && !at(&m, "x/a", "y/a", 81, TCP));
}

#[test]
fn should_support_denying_of_egress_traffic_on_the_client_side_even_if_the_server_explicitly_allows_this_traffic()
 {
    let client = netpol(
        "x",
        "allow-to-ns-y-z-pod-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}},
                                   "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
    );
    let server = netpol(
        "y",
        "allow-from-xa-on-ya",
        json!({"podSelector": {"matchLabels": {"pod": "b"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}},
                                      "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
    );
    let m = case(&[client, server]);
    assert!(at(&m, "x/a", "y/a", 80, TCP));
    assert!(
        !at(&m, "x/a", "y/b", 80, TCP),
        "client egress denies what the server allows"
    );
}

#[test]
fn should_enforce_egress_policy_allowing_traffic_to_a_server_in_a_different_namespace_based_on_pod_selector_and_namespace_selector()
 {
    let p = netpol(
        "x",
        "allow-to-ns-y-pod-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}},
                                   "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "x/a", "y/a", 81, UDP) && !at(&m, "x/a", "y/b", 80, TCP));
}

#[test]
fn should_enforce_ingress_policy_allowing_any_port_traffic_to_a_server_on_a_specific_protocol() {
    let p = netpol(
        "x",
        "allow-ingress-by-proto",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"ports": [{"protocol": "UDP"}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "y/a", "x/a", 80, UDP) && at(&m, "y/a", "x/a", 81, UDP));
    assert!(!at(&m, "y/a", "x/a", 80, TCP));
}

#[test]
fn should_enforce_multiple_ingress_policies_with_ingress_allow_all_policy_taking_precedence() {
    let only81 = netpol(
        "x",
        "allow-client-a-via-pod-selector",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"ports": [{"port": 80, "protocol": "TCP"}]}]}),
    );
    let all = netpol(
        "x",
        "allow-all",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{}]}),
    );
    let lab = Lab::xyz();
    let mut agents = lab.agents();
    lab.assert_case(&mut agents, std::slice::from_ref(&only81));
    assert!(!at(&lab.probe(), "y/a", "x/a", 81, TCP));
    lab.assert_case(&mut agents, &[only81, all]);
    assert!(at(&lab.probe(), "y/a", "x/a", 81, TCP));
}

#[test]
fn should_enforce_multiple_egress_policies_with_egress_allow_all_policy_taking_precedence() {
    let only80 = netpol(
        "x",
        "allow-egress-port-80",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "egress": [{"ports": [{"port": 80, "protocol": "TCP"}]}]}),
    );
    let all = netpol(
        "x",
        "allow-all",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "egress": [{}]}),
    );
    let lab = Lab::xyz();
    let mut agents = lab.agents();
    lab.assert_case(&mut agents, std::slice::from_ref(&only80));
    assert!(!at(&lab.probe(), "x/a", "y/a", 81, TCP));
    lab.assert_case(&mut agents, &[only80, all]);
    assert!(at(&lab.probe(), "x/a", "y/a", 81, TCP));
}

#[test]
fn should_stop_enforcing_policies_after_they_are_deleted() {
    let lab = Lab::xyz();
    let mut agents = lab.agents();
    let deny = netpol(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    lab.assert_case(&mut agents, &[deny]);
    assert!(!at(&lab.probe(), "x/a", "y/a", 80, TCP));
    lab.assert_case(&mut agents, &[]);
    assert!(lab.probe().cells.iter().all(|c| *c));
}

fn cidr_of(lab: &Lab, pod: &str) -> String {
    format!("{}/32", lab.pod(pod).ip)
}

#[test]
fn should_allow_egress_access_to_server_in_cidr_block() {
    let lab = Lab::xyz();
    let mut agents = lab.agents();
    let p = netpol(
        "x",
        "allow-client-a-via-cidr-egress-rule",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": cidr_of(&lab, "y/b")}}]}]}),
    );
    lab.assert_case(&mut agents, &[p]);
    let m = lab.probe();
    assert!(at(&m, "x/a", "y/b", 80, TCP) && !at(&m, "x/a", "y/a", 80, TCP));
}

#[test]
fn should_enforce_except_clause_while_egress_access_to_server_in_cidr_block() {
    let lab = Lab::xyz();
    let mut agents = lab.agents();
    let p = netpol(
        "x",
        "deny-client-a-via-except-cidr-egress-rule",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [cidr_of(&lab, "x/b")]}}]}]}),
    );
    lab.assert_case(&mut agents, &[p]);
    let m = lab.probe();
    assert!(!at(&m, "x/a", "x/b", 80, TCP) && at(&m, "x/a", "x/c", 80, TCP));
}

#[test]
fn should_ensure_an_ip_overlapping_both_ip_block_cidr_and_ip_block_except_is_allowed() {
    let lab = Lab::xyz();
    let mut agents = lab.agents();
    let except = netpol(
        "x",
        "deny-client-a-via-except-cidr-egress-rule",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [cidr_of(&lab, "x/b")]}}]}]}),
    );
    lab.assert_case(&mut agents, std::slice::from_ref(&except));
    assert!(!at(&lab.probe(), "x/a", "x/b", 80, TCP));
    let allow = netpol(
        "x",
        "allow-client-a-via-cidr-egress-rule",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": cidr_of(&lab, "x/b")}}]}]}),
    );
    lab.assert_case(&mut agents, &[except, allow]);
    assert!(at(&lab.probe(), "x/a", "x/b", 80, TCP));
}

#[test]
fn should_enforce_policies_to_check_ingress_and_egress_policies_can_be_controlled_independently_based_on_pod_selector()
 {
    let lab = Lab::xyz();
    let mut agents = lab.agents();
    let allow_egress = netpol(
        "x",
        "allow-egress",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"], "egress": [{}]}),
    );
    lab.assert_case(&mut agents, std::slice::from_ref(&allow_egress));
    let deny_b = netpol(
        "x",
        "deny-ingress-to-b",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress"]}),
    );
    lab.assert_case(&mut agents, &[allow_egress, deny_b]);
    let m = lab.probe();
    assert!(!at(&m, "x/a", "x/b", 80, TCP) && at(&m, "x/a", "y/b", 80, TCP));
}

#[test]
fn should_not_mistakenly_treat_protocol_sctp_as_protocol_tcp_even_if_the_plugin_doesnt_support_sctp()
 {
    let p = netpol(
        "x",
        "allow-only-sctp-ingress-on-port-81",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"ports": [{"port": 81, "protocol": "SCTP"}]}]}),
    );
    let m = case(&[p]);
    assert!(!at(&m, "y/a", "x/a", 81, TCP) && !at(&m, "y/a", "x/a", 81, UDP));
}

#[test]
fn should_not_allow_access_by_tcp_when_a_policy_specifies_only_udp() {
    let p = netpol(
        "x",
        "allow-only-udp-ingress-on-port-81",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"ports": [{"port": 81, "protocol": "UDP"}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "y/a", "x/a", 81, UDP) && !at(&m, "y/a", "x/a", 81, TCP));
}

#[test]
fn should_enforce_policy_to_allow_traffic_based_on_namespace_selector_with_match_labels_using_default_ns_label()
 {
    let p = netpol(
        "x",
        "allow-client-a-via-ns-selector-for-immutable-ns-label",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "y/b", "x/a", 80, TCP) && !at(&m, "z/b", "x/a", 80, TCP));
}

#[test]
fn should_allow_egress_access_to_multiple_ports_with_end_port() {
    // Upstream's endPort cases (netpol "should support ... endPort") restrict
    // egress to a port range; here 80-81 TCP towards y only.
    let p = netpol(
        "x",
        "allow-egress-port-range",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                           "ports": [{"port": 79, "endPort": 81, "protocol": "TCP"}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "x/a", "y/a", 80, TCP) && at(&m, "x/a", "y/c", 81, TCP));
    assert!(!at(&m, "x/a", "y/a", 80, UDP) && !at(&m, "x/a", "z/a", 80, TCP));
}

#[test]
fn should_allow_ingress_on_end_port_range_only() {
    let p = netpol(
        "x",
        "allow-ingress-port-range",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 81, "endPort": 90, "protocol": "UDP"}]}]}),
    );
    let m = case(&[p]);
    assert!(at(&m, "y/a", "x/b", 81, UDP) && !at(&m, "y/a", "x/b", 80, UDP));
    assert!(!at(&m, "y/a", "x/b", 81, TCP));
}
