//! Every refused packet is counted against the pod and direction it was
//! refused for, and attributed to the policies isolating that pod.

mod policy_lab;

use podnet_core::policy::{Direction, Probe, Proto};
use policy_lab::{Lab, netpol, probe_once};
use serde_json::json;

#[test]
fn drops_are_counted_per_pod_and_direction_and_named_in_metrics() {
    let lab = Lab::xyz();
    let mut agents = lab.agents();
    let policies = [
        netpol(
            "x",
            "deny-ingress",
            json!({"podSelector": {}, "ingress": []}),
        ),
        netpol(
            "y",
            "deny-egress-a",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
        ),
    ];
    lab.assert_case(&mut agents, &policies);
    let before = agents[0].drop_counts().unwrap();
    let xa = lab.pod("x/a").ip;
    let zb = lab.pod("z/b").ip;
    let tcp = Probe {
        proto: Proto::Tcp,
        port: 80,
    };
    for _ in 0..3 {
        assert!(!lab.pod("z/a").ns.run(|| probe_once(xa, tcp)).unwrap());
        assert!(!lab.pod("y/a").ns.run(|| probe_once(zb, tcp)).unwrap());
    }
    let after = agents[0].drop_counts().unwrap();
    let count = |c: &podnet_core::policy::DropCounters, dir, addr| {
        c.pods
            .iter()
            .find(|d| d.dir == dir && d.addr == addr)
            .map_or(0, |d| d.packets)
    };
    // The full matrix probe also refused packets, hence "at least".
    assert!(count(&after, Direction::Ingress, xa) >= count(&before, Direction::Ingress, xa) + 3);
    let ya = lab.pod("y/a").ip;
    assert!(count(&after, Direction::Egress, ya) >= count(&before, Direction::Egress, ya) + 3);
    let metrics = agents[0].metrics().unwrap();
    assert!(
        metrics.contains(&format!(
            "podnet_policy_dropped_packets_total{{namespace=\"x\",pod=\"a\",ip=\"{xa}\",direction=\"ingress\",reason=\"default-deny\",policies=\"x/deny-ingress\"}}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("policies=\"y/deny-egress-a\""),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"unknown-pod\""), "{metrics}");
}
