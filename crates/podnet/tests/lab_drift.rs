//! Drift heals itself: on a real lab, a route, an FDB entry and a
//! neighbour entry deleted by hand on a node (`podnet node exec`), the
//! proxy table flushed and the policy table deleted each come back by the
//! agent's own periodic check (polled with a bound, never timed), each
//! repair is counted in the agent's `/metrics`
//! (`podnet_drift_repairs_total{kind=...}`), and the pods reach each
//! other (and a Service) again.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{Lab, podnet};

const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.47";

/// `podnet node exec NODE -- argv`; its stdout, failing on error.
fn on_node(node: &str, argv: &[&str]) -> String {
    let out = Command::new(podnet())
        .args(["node", "exec", node, "--"])
        .args(argv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podnet node exec {node} -- {argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The same, whatever its exit code.
fn on_node_raw(node: &str, argv: &[&str]) -> (bool, String) {
    let out = Command::new(podnet())
        .args(["node", "exec", node, "--"])
        .args(argv)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Waits (30 s at most) until `cond` holds.
fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "not repaired within 30 s: {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `podnet_drift_repairs_total{kind}` of the agent on `node`.
fn repairs(node: &str, kind: &str) -> u64 {
    let (_, text) = on_node_raw(node, &["curl", "-s", "http://127.0.0.1:9101/metrics"]);
    let key = format!("podnet_drift_repairs_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// `podnet_drift_checks_total{check}` of the agent on `node`.
fn checks(node: &str, check: &str) -> u64 {
    let (_, text) = on_node_raw(node, &["curl", "-s", "http://127.0.0.1:9101/metrics"]);
    let key = format!("podnet_drift_checks_total{{check=\"{check}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether `ns/pod` connects to `ip:port` over TCP.
fn reaches(lab: &Lab, pod: &str, ip: &str, port: u16) -> bool {
    lab.kubectl_raw(&[
        "exec",
        pod,
        "--",
        "nc",
        "-z",
        "-w",
        "2",
        ip,
        &port.to_string(),
    ])
    .status
    .success()
}

#[test]
fn deleted_routes_entries_and_tables_come_back() {
    let lab = Lab::up_with(
        "pndrift",
        "vxlan",
        &["--config", "PODNET_RECONCILE_INTERVAL=3"],
    );
    let nodes = lab.nodes();
    let worker = nodes
        .iter()
        .find(|n| n.0.ends_with("-worker"))
        .unwrap()
        .clone();
    let worker2 = nodes
        .iter()
        .find(|n| n.0.ends_with("-worker2"))
        .unwrap()
        .clone();
    let (w1, w2) = (worker.0.as_str(), worker2.0.as_str());
    lab.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: a, labels: {{app: a}}}}\nspec:\n  nodeName: {w1}\n  containers: [{{name: serve, image: \"{AGNHOST}\", command: [/agnhost, netexec, --http-port=80]}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: b, labels: {{app: b}}}}\nspec:\n  nodeName: {w2}\n  containers: [{{name: serve, image: \"{AGNHOST}\", command: [/agnhost, netexec, --http-port=80]}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec:\n  selector: {{app: b}}\n  ports: [{{port: 8080, targetPort: 80}}]\n"
    ));
    lab.wait_ready("app in (a, b)");
    let (b_ip, _) = lab.pod_ip_node("b");
    let svc_ip = lab.get_json(&["service", "b"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    until("a reaches b and its Service before any fault", || {
        reaches(&lab, "a", &b_ip, 80) && reaches(&lab, "a", &svc_ip, 8080)
    });

    // Nothing drifted yet: two full rounds of every check on every node
    // find nothing to repair (a check that misreads the kernel would
    // "repair" on every round).
    for (node, ..) in &nodes {
        let start: Vec<u64> = ["routes", "proxy", "policy"]
            .iter()
            .map(|c| checks(node, c))
            .collect();
        until(
            &format!("two rounds of every drift check on {node}"),
            || {
                ["routes", "proxy", "policy"]
                    .iter()
                    .zip(&start)
                    .all(|(c, s)| checks(node, c) >= s + 2)
            },
        );
        for kind in [
            "route",
            "fdb",
            "neighbour",
            "vxlan-link",
            "proxy-table",
            "policy-table",
        ] {
            assert_eq!(
                repairs(node, kind),
                0,
                "{node} repaired {kind} with nothing drifted"
            );
        }
    }

    let cidr2 = worker2.2.clone();
    let vtep2 = cidr2.split('/').next().unwrap().to_string();
    let mac2 = format!(
        "0e:70:{}",
        worker2
            .1
            .split('.')
            .map(|o| format!("{:02x}", o.parse::<u8>().unwrap()))
            .collect::<Vec<_>>()
            .join(":")
    );

    // 1. The route to worker2's pods, deleted on worker.
    let before = repairs(w1, "route");
    on_node(w1, &["ip", "route", "del", &cidr2]);
    until("the route to worker2's pods", || {
        on_node(w1, &["ip", "route", "show", &cidr2]).contains("podnet.1")
            && repairs(w1, "route") > before
    });

    // 2. The FDB entry of worker2's VTEP.
    let before = repairs(w1, "fdb");
    on_node(
        w1,
        &["bridge", "fdb", "del", &mac2, "dev", "podnet.1", "self"],
    );
    until("the FDB entry of worker2's VTEP", || {
        on_node(w1, &["bridge", "fdb", "show", "dev", "podnet.1"])
            .lines()
            .any(|l| l.starts_with(&mac2) && l.contains(&format!("dst {}", worker2.1)))
            && repairs(w1, "fdb") > before
    });

    // 3. The neighbour entry of worker2's VTEP address.
    let before = repairs(w1, "neighbour");
    on_node(w1, &["ip", "neigh", "del", &vtep2, "dev", "podnet.1"]);
    until("the neighbour entry of worker2's VTEP", || {
        on_node(w1, &["ip", "neigh", "show", "dev", "podnet.1"])
            .lines()
            .any(|l| l.starts_with(&format!("{vtep2} ")) && l.contains(&mac2))
            && repairs(w1, "neighbour") > before
    });
    until("a reaches b across nodes again", || {
        reaches(&lab, "a", &b_ip, 80)
    });

    // 4. The proxy table flushed on worker (its rules gone).
    let before = repairs(w1, "proxy-table");
    on_node(w1, &["nft", "flush", "table", "ip", "podnet-proxy"]);
    until("the proxy table's rules", || {
        let (_, t) = on_node_raw(w1, &["nft", "list", "table", "ip", "podnet-proxy"]);
        t.contains("dnat") && repairs(w1, "proxy-table") > before
    });
    until("a reaches b's Service again", || {
        reaches(&lab, "a", &svc_ip, 8080)
    });

    // 5. The policy table deleted on worker2; it comes back, and a
    //    policy is enforced again.
    let before = repairs(w2, "policy-table");
    on_node(w2, &["nft", "delete", "table", "inet", "podnet-policy"]);
    until("the policy table", || {
        on_node_raw(
            w2,
            &["nft", "list", "chain", "inet", "podnet-policy", "ingress"],
        )
        .0 && repairs(w2, "policy-table") > before
    });
    lab.apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Ingress]\n  ingress: []\n");
    until("b isolated by deny-b", || !reaches(&lab, "a", &b_ip, 80));
    lab.kubectl(&["delete", "networkpolicy", "deny-b"]);
    until("a reaches b again", || reaches(&lab, "a", &b_ip, 80));

    // Nothing else was repaired on a quiet node for no reason: the
    // checks compare, they do not rewrite.
    assert_eq!(
        repairs(w2, "route"),
        0,
        "worker2's routes were never touched"
    );
    assert_eq!(
        repairs(w2, "proxy-table"),
        0,
        "worker2's proxy was never touched"
    );
}
