//! New pods are isolated before their first packet: a pod the agent has not
//! yet seen sits in the node's pod CIDR as an unknown address, and unknown
//! local addresses are refused both ways until the planner has placed them.

mod policy_lab;

use podnet_core::policy::{Probe, Proto};
use policy_lab::{Lab, agents, netpol, probe_once};
use serde_json::json;

const TCP80: Probe = Probe {
    proto: Proto::Tcp,
    port: 80,
};
const UDP81: Probe = Probe {
    proto: Proto::Udp,
    port: 81,
};

#[test]
fn hundred_pods_appearing_under_a_selecting_policy_are_isolated_before_their_first_packet() {
    let mut lab = Lab::nodes();
    for ns in ["x", "y"] {
        lab.add_namespace(ns);
    }
    lab.add_pod("y", "client", 0, true);
    lab.add_pod("y", "remote", 1, true);
    let files = lab.node_files();
    let mut agents = agents(&files);
    let deny = netpol(
        "x",
        "deny-ingress",
        json!({"podSelector": {}, "ingress": []}),
    );
    let policies = [deny];
    lab.assert_case(&mut agents, &policies);

    for i in 0..100 {
        let name = format!("p{i}");
        let node = i % 2;
        lab.add_pod("x", &name, node, true);
        let key = format!("x/{name}");
        let new = lab.pod(&key).ip;
        // Before any agent knows the pod: nothing in, nothing out.
        for client in ["y/client", "y/remote"] {
            let c = lab.pod(client);
            let ok =
                c.ns.run(|| probe_once(new, TCP80) || probe_once(new, UDP81))
                    .unwrap();
            assert!(!ok, "{client} reached unseen pod {key}");
        }
        let (client, remote) = (lab.pod("y/client").ip, lab.pod("y/remote").ip);
        let out = lab
            .pod(&key)
            .ns
            .run(|| probe_once(client, TCP80) || probe_once(remote, UDP81))
            .unwrap();
        assert!(!out, "unseen pod {key} sent a packet that got through");
        // The agents learn of it: isolated for ingress, open for egress.
        lab.enforce(&mut agents, &policies);
        let c = lab.pod("y/remote");
        assert!(
            !c.ns.run(|| probe_once(new, TCP80)).unwrap(),
            "{key} not isolated"
        );
        assert!(
            lab.pod(&key).ns.run(|| probe_once(client, TCP80)).unwrap(),
            "{key} egress should be open once known"
        );
    }
    // The whole table agrees with the model, then the pods go away.
    let expected = lab.expected(&policies);
    let probed = lab.probe();
    assert_eq!(expected.mismatches(&probed), vec![]);
    for i in 0..100 {
        lab.remove_pod(&format!("x/p{i}"));
    }
    lab.enforce(&mut agents, &policies);
    assert_eq!(lab.plan(0, &policies).known.len(), 1);
    assert_eq!(lab.expected(&policies).mismatches(&lab.probe()), vec![]);
}
