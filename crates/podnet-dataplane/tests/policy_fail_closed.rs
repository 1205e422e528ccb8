//! The policy table outlives its agent (fail closed), a restart replaces it
//! without a window, and a full resync lands on exactly what the
//! incremental updates built.

mod policy_lab;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use podnet_dataplane::policy::{PolicyApplier, SyncKind};
use policy_lab::{Lab, PROBES, agents, netpol, probe_once, table_text};
use serde_json::json;

#[test]
fn rules_survive_the_applier_being_dropped_and_a_restart_has_no_window() {
    let lab = Lab::xyz();
    let deny = netpol(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    let policies = [deny];
    {
        let mut agents = lab.agents();
        lab.assert_case(&mut agents, &policies);
    } // the agents are gone
    let before: Vec<String> = lab.nodes.iter().map(|n| table_text(&n.ns)).collect();
    let expected = lab.expected(&policies);
    assert_eq!(
        expected.mismatches(&lab.probe()),
        vec![],
        "without its agent the node still enforces"
    );

    // Restart: while new agents load the table, y/a keeps knocking on x/a
    // (same node) and x/c (the other node); no knock may get through.
    let stop = AtomicBool::new(false);
    let through = AtomicUsize::new(0);
    let tries = AtomicUsize::new(0);
    let (xa, xc) = (lab.pod("x/a").ip, lab.pod("x/c").ip);
    std::thread::scope(|s| {
        s.spawn(|| {
            lab.pod("y/a")
                .ns
                .run(|| {
                    while !stop.load(Ordering::Relaxed) {
                        for to in [xa, xc] {
                            for p in PROBES {
                                tries.fetch_add(1, Ordering::Relaxed);
                                if probe_once(to, p) {
                                    through.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                })
                .unwrap();
        });
        for _ in 0..5 {
            let mut agents = lab.agents();
            lab.enforce(&mut agents, &policies);
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(tries.load(Ordering::Relaxed) > 0);
    assert_eq!(through.load(Ordering::Relaxed), 0, "a probe got through");
    let after: Vec<String> = lab.nodes.iter().map(|n| table_text(&n.ns)).collect();
    assert_eq!(
        before, after,
        "the ruleset after the restart equals the one before"
    );
}

#[test]
fn full_resync_equals_the_incremental_result() {
    let mut lab = Lab::xyz();
    let files = lab.node_files();
    let mut incremental = agents(&files);
    let steps = [
        vec![netpol(
            "x",
            "deny",
            json!({"podSelector": {}, "ingress": []}),
        )],
        vec![
            netpol("x", "deny", json!({"podSelector": {}, "ingress": []})),
            netpol(
                "x",
                "from-y",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                    "ports": [{"port": "serve-80-tcp"}, {"port": 81, "endPort": 82, "protocol": "UDP"}]}]}),
            ),
            netpol(
                "y",
                "egress-cidr",
                json!({"podSelector": {}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/28"]}}]}]}),
            ),
        ],
        // Single ports and ranges deleted again (element deletes).
        vec![
            netpol("x", "deny", json!({"podSelector": {}, "ingress": []})),
            netpol(
                "x",
                "from-y",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                    "ports": [{"port": 81, "protocol": "TCP"}]}]}),
            ),
        ],
    ];
    for (i, policies) in steps.iter().enumerate() {
        for (n, agent) in incremental.iter_mut().enumerate() {
            let kind = agent.sync(&lab.plan(n, policies)).unwrap();
            if i == 0 {
                assert_eq!(kind, SyncKind::Full);
            } else {
                assert!(matches!(kind, SyncKind::Elements(_)), "{kind:?}");
            }
        }
        assert_eq!(lab.expected(policies).mismatches(&lab.probe()), vec![]);
    }
    // Labels change under the agents: element updates again.
    lab.label_pod("z/a", "pod", "b");
    lab.label_namespace("z", "ns", "y");
    let last = &steps[2];
    for (n, agent) in incremental.iter_mut().enumerate() {
        let kind = agent.sync(&lab.plan(n, last)).unwrap();
        // n1 holds the peers' pods and x/a; n2's sets do not change.
        let want_change = n == 0;
        assert_eq!(
            kind != SyncKind::Unchanged,
            want_change,
            "node {n}: {kind:?}"
        );
        assert_ne!(kind, SyncKind::Full);
    }
    assert_eq!(lab.expected(last).mismatches(&lab.probe()), vec![]);
    let incremental_text: Vec<String> = lab.nodes.iter().map(|n| table_text(&n.ns)).collect();

    // A fresh agent resyncs from nothing but the objects.
    for (n, f) in files.iter().enumerate() {
        let mut fresh = PolicyApplier::new(podnet_dataplane::nft::Namespace::Fd(
            std::os::fd::AsFd::as_fd(f),
        ));
        assert_eq!(fresh.resync(&lab.plan(n, last)).unwrap(), SyncKind::Full);
    }
    let full_text: Vec<String> = lab.nodes.iter().map(|n| table_text(&n.ns)).collect();
    assert_eq!(incremental_text, full_text);
    assert_eq!(lab.expected(last).mismatches(&lab.probe()), vec![]);
}
