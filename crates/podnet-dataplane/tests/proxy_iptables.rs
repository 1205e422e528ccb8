//! The iptables proxy backend (`--proxy-mode=iptables`) against the real
//! kernel, in the same namespace mini-cluster as the nft tests.

mod proxy_lab;

use std::time::Duration;

use podnet_core::proxy::ServicePortPlan;
use podnet_dataplane::proxy::IptablesProxy;
use proxy_lab::*;

const VIP: &str = "10.96.0.20";

fn three_pods() -> Lab {
    require("iptables-restore");
    let mut lab = Lab::new();
    for (i, name) in ["web-a", "web-b", "web-c"].iter().enumerate() {
        let p = lab.add_pod(name, 10 + i as u8);
        lab.serve_http(p, 8080);
    }
    lab.add_pod("client", 100);
    lab
}

fn web(lab: &Lab, pods: &[usize]) -> ServicePortPlan {
    let eps: Vec<_> = pods.iter().map(|i| (&lab.pods[*i], 8080)).collect();
    service("web", VIP, 80, &eps)
}

#[test]
fn cluster_ip_spreads_and_operators_see_kube_chains() {
    let lab = three_pods();
    let mut proxy = IptablesProxy::new(lab.target());
    proxy.sync(&state(vec![web(&lab, &[0, 1, 2])])).unwrap();
    let out = curl(&lab.pods[3].ns, &format!("http://{VIP}/"), 300);
    let seen = spread(&out);
    assert_eq!(seen.values().sum::<usize>(), 300, "{seen:?} {out:?}");
    for name in ["web-a", "web-b", "web-c"] {
        let n = seen.get(name).copied().unwrap_or(0);
        assert!(n >= 60, "{name} got {n} of 300: {seen:?}");
    }
    // what `iptables -t nat -L -n | grep KUBE` shows inside the node
    let listing = sh(&lab.node_a, &["iptables", "-t", "nat", "-L", "-n"]);
    let kube: Vec<&str> = listing.lines().filter(|l| l.contains("KUBE")).collect();
    for needle in [
        "Chain KUBE-SERVICES",
        "Chain KUBE-POSTROUTING",
        "Chain KUBE-NODEPORTS",
        "Chain KUBE-MARK-MASQ",
        "Chain KUBE-SVC-",
        "Chain KUBE-SEP-",
    ] {
        assert!(
            kube.iter().any(|l| l.contains(needle)),
            "{needle} missing:\n{listing}"
        );
    }
    // the built-in chains jump in exactly once, even after more syncs
    proxy.sync(&state(vec![web(&lab, &[0, 1])])).unwrap();
    let pre = sh(&lab.node_a, &["iptables", "-t", "nat", "-S", "PREROUTING"]);
    assert_eq!(pre.matches("-j KUBE-SERVICES").count(), 1, "{pre}");
    let seps = sh(&lab.node_a, &["iptables", "-t", "nat", "-S"]);
    assert_eq!(
        seps.lines()
            .filter(|l| l.starts_with("-N KUBE-SEP-"))
            .count(),
        2,
        "{seps}"
    );
}

#[test]
fn client_ip_affinity_sticks() {
    let lab = three_pods();
    let mut proxy = IptablesProxy::new(lab.target());
    let mut svc = web(&lab, &[0, 1, 2]);
    svc.affinity_timeout = Some(300);
    proxy.sync(&state(vec![svc])).unwrap();
    let out = curl(&lab.pods[3].ns, &format!("http://{VIP}/"), 60);
    let seen = spread(&out);
    assert_eq!(seen.values().sum::<usize>(), 60, "{out:?}");
    assert_eq!(seen.len(), 1, "affinity did not stick: {seen:?}");
}

#[test]
fn node_port_cluster_masquerades_and_local_keeps_the_client() {
    let lab = three_pods();
    let mut proxy = IptablesProxy::new(lab.target());
    let mut svc = web(&lab, &[0, 1]);
    svc.node_port = Some(30080);
    proxy.sync(&state(vec![svc.clone()])).unwrap();
    let url = format!("http://{NODE_A_IP}:30080/");
    let lines = answers(&curl(&lab.node_b, &url, 10));
    assert_eq!(lines.len(), 10);
    assert!(
        lines.iter().all(|l| l.ends_with(&format!(" {GATEWAY}"))),
        "{lines:?}"
    );

    svc.external_local = true;
    svc.endpoints[1].local = false;
    proxy.sync(&state(vec![svc])).unwrap();
    let lines = answers(&curl(&lab.node_b, &url, 10));
    assert_eq!(lines.len(), 10);
    assert!(
        lines.iter().all(|l| l == &format!("web-a {NODE_B_IP}")),
        "{lines:?}"
    );
}

#[test]
fn no_endpoints_refuse_at_once_then_scale_back() {
    let lab = three_pods();
    let mut proxy = IptablesProxy::new(lab.target());
    let url = format!("http://{VIP}/");
    proxy.sync(&state(vec![web(&lab, &[])])).unwrap();
    let out = curl(&lab.pods[3].ns, &url, 1);
    assert_eq!(
        out.status.code(),
        Some(7),
        "expected connection refused: {out:?}"
    );
    proxy.sync(&state(vec![web(&lab, &[2])])).unwrap();
    let out = curl(&lab.pods[3].ns, &url, 3);
    assert_eq!(answers(&out), vec!["web-c 10.244.1.100"; 3], "{out:?}");
}

/// Endpoints rotate under a steady stream of new connections: none fails,
/// and none reaches a pod that was not an endpoint while it connected (a
/// removed endpoint still serves, so traffic the proxy still sends it would
/// pass unseen by status codes alone: each answer names its pod).
#[test]
fn endpoint_churn_under_a_steady_stream_fails_no_request() {
    let mut lab = three_pods();
    let p = lab.add_pod("web-d", 13);
    lab.serve_http(p, 8080);
    let mut proxy = IptablesProxy::new(lab.target());
    proxy.sync(&state(vec![web(&lab, &[0, 1])])).unwrap();
    // 100 changes: rotate which two of the four pods are endpoints
    let sets: [&[usize]; 4] = [&[0, 1], &[1, 2], &[2, 4], &[4, 0]];
    let run = churn(&lab, 3, VIP, &sets, 100, Duration::from_millis(5), |set| {
        proxy.sync(&state(vec![web(&lab, set)])).unwrap();
    });
    run.assert_clean(&[0, 1], &lab.pods, &[0, 1, 2, 4], 100);
}

#[test]
fn a_restarted_proxy_converges_to_the_same_rules() {
    let lab = three_pods();
    let save = || {
        let text = sh(&lab.node_a, &["iptables-save"]);
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_string())
            .collect();
        lines.sort();
        lines
    };
    let mut first = IptablesProxy::new(lab.target());
    first.sync(&state(vec![web(&lab, &[0, 1, 2])])).unwrap();
    let mut svc = web(&lab, &[1]);
    svc.node_port = Some(30080);
    first.sync(&state(vec![svc.clone()])).unwrap();
    let incremental = save();
    // an agent restart: a fresh applier, the same state
    let mut second = IptablesProxy::new(lab.target());
    second.sync(&state(vec![svc.clone()])).unwrap();
    assert_eq!(incremental, save());
    // endpoints changed while the agent was down: its stale chains go
    let mut third = IptablesProxy::new(lab.target());
    third.sync(&state(vec![web(&lab, &[0, 1, 2])])).unwrap();
    let mut fourth = IptablesProxy::new(lab.target());
    fourth.sync(&state(vec![svc])).unwrap();
    assert_eq!(incremental, save());
}
