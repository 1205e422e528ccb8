//! Traffic through a Service is judged on the backend pod after the proxy's
//! translation: each node DNATs a virtual IP in `prerouting` (as podnet's
//! proxy does), and the policy table, hooked at `forward`, sees the backend.

mod policy_lab;

use std::net::Ipv4Addr;

use podnet_core::policy::{Probe, Proto};
use podnet_dataplane::nft;
use policy_lab::{Lab, netpol, probe_once};
use serde_json::json;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);

#[test]
fn service_traffic_is_judged_on_the_backend_after_dnat() {
    let lab = Lab::xyz();
    let mut agents = lab.agents();
    let backend = lab.pod("x/a").ip;
    for node in &lab.nodes {
        let script = format!(
            "table ip svc-test {{\n\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tip daddr {VIP} tcp dport 8080 dnat to {backend}:80\n\t\tip daddr {VIP} udp dport 8080 dnat to {backend}:80\n\t}}\n}}\n"
        );
        nft::apply(nft::Namespace::Fd(node.ns_fd()), &script).expect("service DNAT");
    }
    let policies = [netpol(
        "x",
        "allow-y-a-on-80",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                      "podSelector": {"matchLabels": {"pod": "a"}}}],
                            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 80, "protocol": "UDP"}]}]}),
    )];
    lab.assert_case(&mut agents, &policies);
    let via_service = |client: &str, proto| {
        let p = Probe { proto, port: 8080 };
        lab.pod(client).ns.run(|| probe_once(VIP, p)).unwrap()
    };
    // The policy names port 80 (the backend's), not the Service's 8080.
    assert!(
        via_service("y/a", Proto::Tcp),
        "y/a is admitted through the Service"
    );
    assert!(
        via_service("y/a", Proto::Udp),
        "y/a is admitted through the Service (UDP)"
    );
    for denied in ["y/b", "y/c", "z/a", "x/b"] {
        assert!(
            !via_service(denied, Proto::Tcp),
            "{denied} reached x/a via the Service"
        );
        assert!(
            !via_service(denied, Proto::Udp),
            "{denied} reached x/a via the Service (UDP)"
        );
    }
    // Without the policy, everyone reaches the backend through the Service.
    lab.enforce(&mut agents, &[]);
    for client in ["y/b", "y/c", "z/a"] {
        assert!(
            via_service(client, Proto::Tcp),
            "{client} via Service, no policy"
        );
    }
}
