//! Truth tables of the upstream Kubernetes NetworkPolicy e2e suite
//! (test/e2e/network/netpol/network_policy.go) on a real kernel, held to
//! data that podnet does not compute.
//!
//! Each case is a file in `tests/netpol_cases/` (format: `netpol_oracle`):
//! the policies, the operations, and at each checkpoint the expected
//! reachability as the upstream case states it. For every checkpoint the
//! case's policies are planned and applied on two node namespaces with
//! namespaces x, y, z and pods a, b (node 1) and c (node 2), each serving
//! TCP and UDP on 80 and 81, and three matrices are compared:
//!
//! - the kernel (live probes, every pair, TCP/UDP 80/81) against the data;
//! - podnet-core's model (`expected_matrix`, the truth table
//!   `podnet connectivity --expect` uses) against the data, SCTP included;
//! - the kernel against the model (as before the data existed: it still
//!   names the planner when only the planner is wrong).
//!
//! The planner is built from the model, so only the data catches a
//! misreading of the API they share. `model_agrees_with_the_data` runs the
//! model alone over every case without a kernel (no root needed).
//! Each kernel test is named after the case file (the upstream case).

mod netpol_oracle;
mod policy_lab;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_oracle::{Case, Checkpoint, Op, all_ids};
use podnet_core::policy::{Matrix, Probe, Proto, expected_matrix};
use policy_lab::{Lab, agents};
use serde_json::json;

fn to_core(p: netpol_oracle::Probe) -> Probe {
    Probe {
        proto: match p.proto {
            netpol_oracle::Proto::Tcp => Proto::Tcp,
            netpol_oracle::Proto::Udp => Proto::Udp,
            netpol_oracle::Proto::Sctp => Proto::Sctp,
        },
        port: p.port,
    }
}

/// The cell `from -> to` of a podnet matrix, if it has that probe.
fn cell(m: &Matrix, from: &str, to: &str, probe: netpol_oracle::Probe) -> Option<bool> {
    let i = |k: &str| m.pods.iter().position(|p| p.to_string() == k);
    let p = m.probes.iter().position(|p| *p == to_core(probe))?;
    Some(m.get(i(from)?, i(to)?, p))
}

/// What a case has done so far: labels added, policies in force.
#[derive(Default)]
struct Scene {
    /// (ns, name, tag) in the order applied.
    in_force: Vec<(String, String, String)>,
    ns_labels: BTreeMap<String, BTreeMap<String, String>>,
    pod_labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl Scene {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Apply { ns, name, tag } => {
                let key = (ns.clone(), name.clone(), tag.clone());
                match self
                    .in_force
                    .iter_mut()
                    .find(|(n, m, _)| n == ns && m == name)
                {
                    Some(slot) => *slot = key,
                    None => self.in_force.push(key),
                }
            }
            Op::Delete { ns, name } => self.in_force.retain(|(n, m, _)| !(n == ns && m == name)),
            Op::LabelNamespace { ns, key, value } => {
                self.ns_labels
                    .entry(ns.clone())
                    .or_default()
                    .insert(key.clone(), value.clone());
            }
            Op::LabelPod { pod, key, value } => {
                self.pod_labels
                    .entry(pod.clone())
                    .or_default()
                    .insert(key.clone(), value.clone());
            }
        }
    }

    fn policies(&self, case: &Case, ip: &BTreeMap<String, String>) -> Vec<NetworkPolicy> {
        self.in_force
            .iter()
            .map(|(ns, name, tag)| {
                let v = case.policy(ns, name, tag, &|pod| ip[pod].clone());
                serde_json::from_value(v).expect("valid NetworkPolicy")
            })
            .collect()
    }
}

/// Every probe of a checkpoint, the lab's four first.
fn probes_of(cp: &Checkpoint) -> Vec<Probe> {
    let mut out: Vec<Probe> = policy_lab::PROBES.to_vec();
    for p in cp.probes() {
        let p = to_core(p);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Up to 12 cells of a list, then a count.
fn some<T: std::fmt::Display>(what: &[T]) -> String {
    let mut s: Vec<String> = what.iter().take(12).map(|w| w.to_string()).collect();
    if what.len() > 12 {
        s.push(format!("... {} more", what.len() - 12));
    }
    s.join("\n    ")
}

/// The model's disagreements with the data at one checkpoint.
fn model_vs_data(cp: &Checkpoint, model: &Matrix) -> Option<String> {
    let wrong = cp.judge(|f, t, p| cell(model, f, t, p));
    (!wrong.is_empty()).then(|| {
        format!(
            "model (expected_matrix) disagrees with the data on {} cells:\n    {}",
            wrong.len(),
            some(&wrong)
        )
    })
}

/// Runs one case on a fresh lab; panics listing every disagreement.
fn run(id: &str) {
    let case = Case::load(id);
    let mut lab = Lab::xyz();
    let ip: BTreeMap<String, String> = lab
        .pods
        .iter()
        .map(|p| (p.key.to_string(), p.ip.to_string()))
        .collect();
    let files = lab.node_files();
    let mut agents = agents(&files);
    let mut scene = Scene::default();
    let mut failures = Vec::new();
    for (k, cp) in case.checkpoints.iter().enumerate() {
        for op in &cp.ops {
            scene.apply(op);
            match op {
                Op::LabelNamespace { ns, key, value } => lab.label_namespace(ns, key, value),
                Op::LabelPod { pod, key, value } => lab.label_pod(pod, key, value),
                Op::Apply { .. } | Op::Delete { .. } => {}
            }
        }
        let policies = scene.policies(&case, &ip);
        lab.enforce(&mut agents, &policies);
        let probed = lab.probe();
        let model = expected_matrix(
            &lab.pod_objects(),
            &lab.namespace_objects(),
            &policies,
            &probes_of(cp),
        )
        .expect("model");
        let ops: Vec<String> = cp.ops.iter().map(|o| o.to_string()).collect();
        let at = format!("checkpoint {k} (after {})", ops.join(", "));
        let kernel = cp.judge(|f, t, p| cell(&probed, f, t, p));
        if !kernel.is_empty() {
            let p = kernel[0].probe;
            failures.push(format!(
                "{at}: the kernel disagrees with the data on {} cells:\n    {}\ndata:\n{}",
                kernel.len(),
                some(&kernel),
                cp.render(p)
            ));
        }
        if let Some(e) = model_vs_data(cp, &model) {
            failures.push(format!("{at}: {e}"));
        }
        let mut planner = Vec::new();
        for f in &probed.pods {
            for t in &probed.pods {
                for p in &probed.probes {
                    let (f, t) = (f.to_string(), t.to_string());
                    let want = cell_core(&model, &f, &t, *p);
                    let got = cell_core(&probed, &f, &t, *p);
                    if want != got {
                        planner.push(format!("{f} -> {t} {p}: model {want:?}, kernel {got:?}"));
                    }
                }
            }
        }
        if !planner.is_empty() {
            failures.push(format!(
                "{at}: the kernel disagrees with the model on {} cells:\n    {}",
                planner.len(),
                some(&planner)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} ({}): {}",
        case.name,
        if case.upstream {
            "upstream case"
        } else {
            "podnet's case"
        },
        failures.join("\n")
    );
}

fn cell_core(m: &Matrix, from: &str, to: &str, probe: Probe) -> Option<bool> {
    let i = |k: &str| m.pods.iter().position(|p| p.to_string() == k);
    let p = m.probes.iter().position(|q| *q == probe)?;
    Some(m.get(i(from)?, i(to)?, p))
}

macro_rules! cases {
    ($($id:ident),* $(,)?) => {
        $(
            #[test]
            fn $id() {
                run(stringify!($id));
            }
        )*
        /// Every case with a kernel test.
        const CASES: &[&str] = &[$(stringify!($id)),*];
    };
}

cases! {
    should_support_a_default_deny_ingress_policy,
    should_support_a_default_deny_all_policy,
    should_enforce_policy_to_allow_traffic_from_pods_within_server_namespace_based_on_pod_selector,
    should_enforce_policy_to_allow_ingress_traffic_for_a_target,
    should_enforce_policy_to_allow_ingress_traffic_from_pods_in_all_namespaces,
    should_enforce_policy_to_allow_traffic_only_from_a_different_namespace_based_on_namespace_selector,
    should_enforce_policy_based_on_pod_selector_with_match_expressions,
    should_enforce_policy_based_on_namespace_selector_with_match_expressions,
    should_enforce_policy_based_on_pod_selector_or_namespace_selector,
    should_enforce_policy_based_on_pod_selector_and_namespace_selector,
    should_enforce_policy_based_on_multiple_pod_selectors_and_namespace_selectors,
    should_enforce_policy_based_on_any_pod_selectors,
    should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector,
    should_enforce_policy_based_on_ports,
    should_enforce_multiple_stacked_policies_with_overlapping_pod_selectors,
    should_support_allow_all_policy,
    should_allow_ingress_access_on_one_named_port,
    should_allow_ingress_access_from_namespace_on_one_named_port,
    should_allow_egress_access_on_one_named_port,
    should_enforce_updated_policy,
    should_allow_ingress_access_from_updated_namespace,
    should_allow_ingress_access_from_updated_pod,
    should_deny_ingress_from_pods_on_other_namespaces,
    should_deny_ingress_access_to_updated_pod,
    should_deny_egress_from_pods_based_on_pod_selector,
    should_deny_egress_from_all_pods_in_a_namespace,
    should_work_with_ingress_egress_specified_together,
    should_support_denying_of_egress_traffic_on_the_client_side_even_if_the_server_explicitly_allows_this_traffic,
    should_enforce_egress_policy_allowing_traffic_to_a_server_in_a_different_namespace_based_on_pod_selector_and_namespace_selector,
    should_enforce_ingress_policy_allowing_any_port_traffic_to_a_server_on_a_specific_protocol,
    should_enforce_multiple_ingress_policies_with_ingress_allow_all_policy_taking_precedence,
    should_enforce_multiple_egress_policies_with_egress_allow_all_policy_taking_precedence,
    should_stop_enforcing_policies_after_they_are_deleted,
    should_allow_egress_access_to_server_in_cidr_block,
    should_enforce_except_clause_while_egress_access_to_server_in_cidr_block,
    should_ensure_an_ip_overlapping_both_ip_block_cidr_and_ip_block_except_is_allowed,
    should_enforce_policies_to_check_ingress_and_egress_policies_can_be_controlled_independently_based_on_pod_selector,
    should_not_mistakenly_treat_protocol_sctp_as_protocol_tcp_even_if_the_plugin_doesnt_support_sctp,
    should_properly_isolate_pods_that_are_selected_by_a_policy_allowing_sctp_even_if_the_plugin_doesnt_support_sctp,
    should_not_allow_access_by_tcp_when_a_policy_specifies_only_udp,
    should_enforce_policy_to_allow_traffic_based_on_namespace_selector_with_match_labels_using_default_ns_label,
    should_enforce_policy_based_on_namespace_selector_with_match_expressions_using_default_ns_label,
    udp_should_support_a_default_deny_ingress_policy,
    udp_should_enforce_policy_based_on_ports,
    udp_should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector,
    sctp_should_support_a_default_deny_ingress_policy,
    sctp_should_enforce_policy_based_on_ports,
    sctp_should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector,
    podnet_egress_to_a_port_range_with_end_port,
    podnet_ingress_on_a_port_range_with_end_port,
    podnet_empty_from_and_ports_lists_admit_everything,
    podnet_policy_types_default_with_egress_rules,
}

#[test]
fn every_case_file_has_a_kernel_test() {
    let mut listed: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(
        all_ids(),
        listed,
        "tests/netpol_cases/*.case and the cases! list differ"
    );
}

/// The x, y, z pods as API objects, without a kernel (addresses as the
/// lab would give them: a, b on node 1, c on node 2; container ports named
/// as upstream's pods name them).
fn paper_pods(scene: &Scene) -> (Vec<Pod>, Vec<Namespace>, BTreeMap<String, String>) {
    let mut pods = Vec::new();
    let mut ip = BTreeMap::new();
    let mut next = [2u8, 2u8];
    for ns in netpol_oracle::NAMESPACES {
        for name in netpol_oracle::PODS {
            let node = usize::from(name == "c");
            let addr = format!("10.244.{}.{}", node + 1, next[node]);
            next[node] += 1;
            let key = format!("{ns}/{name}");
            let mut labels = BTreeMap::from([("pod".to_string(), name.to_string())]);
            labels.extend(scene.pod_labels.get(&key).cloned().unwrap_or_default());
            let mut ports = Vec::new();
            for port in [80, 81] {
                for proto in ["TCP", "UDP", "SCTP"] {
                    ports.push(
                        json!({"name": format!("serve-{port}-{}", proto.to_lowercase()),
                                      "containerPort": port, "protocol": proto}),
                    );
                }
            }
            pods.push(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": ns, "labels": labels},
                    "spec": {"nodeName": format!("n{}", node + 1),
                             "containers": [{"name": "cont", "ports": ports}]},
                    "status": {"podIP": addr, "podIPs": [{"ip": addr}]}
                }))
                .unwrap(),
            );
            ip.insert(key, addr);
        }
    }
    let namespaces = netpol_oracle::NAMESPACES
        .iter()
        .map(|ns| {
            let mut labels = BTreeMap::from([
                ("ns".to_string(), ns.to_string()),
                ("kubernetes.io/metadata.name".to_string(), ns.to_string()),
            ]);
            labels.extend(scene.ns_labels.get(*ns).cloned().unwrap_or_default());
            serde_json::from_value(json!({"metadata": {"name": ns, "labels": labels}})).unwrap()
        })
        .collect();
    (pods, namespaces, ip)
}

/// The model alone against the data, every case and checkpoint, without a
/// kernel: quick, needs no root, and fails on a misreading of the API in
/// podnet-core that the kernel tests would otherwise have to reveal.
#[test]
fn model_agrees_with_the_data() {
    let mut failures = Vec::new();
    let ids = all_ids();
    for id in &ids {
        let case = Case::load(id);
        let mut scene = Scene::default();
        for (k, cp) in case.checkpoints.iter().enumerate() {
            for op in &cp.ops {
                scene.apply(op);
            }
            let (pods, namespaces, ip) = paper_pods(&scene);
            let policies = scene.policies(&case, &ip);
            let model =
                expected_matrix(&pods, &namespaces, &policies, &probes_of(cp)).expect("model");
            if let Some(e) = model_vs_data(cp, &model) {
                failures.push(format!("{id} checkpoint {k}: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        ids.len(),
        failures.join("\n")
    );
}
