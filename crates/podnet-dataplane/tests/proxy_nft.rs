//! The nftables proxy backend against the real kernel, in a miniature
//! cluster of namespaces (see `proxy_lab`): real servers in pods, real
//! `curl` clients.

mod proxy_lab;

use std::net::UdpSocket;
use std::time::Duration;

use podnet_core::proxy::{Protocol, ServicePortPlan};
use podnet_dataplane::proxy::NftProxy;
use proxy_lab::*;

const VIP: &str = "10.96.0.10";

fn three_pods() -> Lab {
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
fn cluster_ip_spreads_over_three_backends_and_keeps_the_client_address() {
    let lab = three_pods();
    let mut proxy = NftProxy::new(lab.target());
    let report = proxy.sync(&state(vec![web(&lab, &[0, 1, 2])])).unwrap();
    assert!(report.full);
    let client = &lab.pods[3];
    let out = curl(&client.ns, &format!("http://{VIP}/"), 300);
    let seen = spread(&out);
    assert_eq!(seen.values().sum::<usize>(), 300, "{seen:?} {out:?}");
    for name in ["web-a", "web-b", "web-c"] {
        let n = seen.get(name).copied().unwrap_or(0);
        assert!(n >= 60, "{name} got {n} of 300: {seen:?}");
    }
    // pod-to-service traffic inside the cluster is not masqueraded
    assert!(
        answers(&out).iter().all(|l| l.ends_with(" 10.244.1.100")),
        "{out:?}"
    );
    // the node itself reaches the service too (masqueraded from br0)
    let out = curl(&lab.node_a, &format!("http://{VIP}/"), 3);
    assert_eq!(answers(&out).len(), 3, "{out:?}");
}

#[test]
fn client_ip_affinity_sticks_and_moves_when_its_endpoint_goes() {
    let lab = three_pods();
    let mut proxy = NftProxy::new(lab.target());
    let mut svc = web(&lab, &[0, 1, 2]);
    svc.affinity_timeout = Some(300);
    proxy.sync(&state(vec![svc.clone()])).unwrap();
    let client = &lab.pods[3];
    let out = curl(&client.ns, &format!("http://{VIP}/"), 100);
    let seen = spread(&out);
    assert_eq!(seen.len(), 1, "affinity did not stick: {seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 100);
    let chosen = seen.keys().next().unwrap().clone();

    // the chosen endpoint leaves: its affinity entries go with it
    let idx = lab.pods.iter().position(|p| p.name == chosen).unwrap();
    let rest: Vec<usize> = (0..3).filter(|i| *i != idx).collect();
    let mut svc2 = web(&lab, &rest);
    svc2.affinity_timeout = Some(300);
    let report = proxy.sync(&state(vec![svc2])).unwrap();
    assert!(!report.full);
    assert!(report.flushed >= 1, "{report:?}");
    let out = curl(&client.ns, &format!("http://{VIP}/"), 50);
    let seen = spread(&out);
    assert_eq!(seen.values().sum::<usize>(), 50, "{out:?}");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(!seen.contains_key(&chosen), "{seen:?}");
}

#[test]
fn node_port_masquerades_for_cluster_policy_and_preserves_the_client_for_local() {
    let lab = three_pods();
    let mut proxy = NftProxy::new(lab.target());
    let mut svc = web(&lab, &[0, 1]);
    svc.node_port = Some(30080);
    proxy.sync(&state(vec![svc.clone()])).unwrap();
    let url = format!("http://{NODE_A_IP}:30080/");
    let out = curl(&lab.node_b, &url, 20);
    let lines = answers(&out);
    assert_eq!(lines.len(), 20, "{out:?}");
    assert!(
        lines.iter().all(|l| l.ends_with(&format!(" {GATEWAY}"))),
        "{lines:?}"
    );

    // externalTrafficPolicy: Local — only local endpoints, client kept
    svc.external_local = true;
    svc.endpoints[1].local = false;
    let report = proxy.sync(&state(vec![svc.clone()])).unwrap();
    assert!(!report.full);
    let out = curl(&lab.node_b, &url, 20);
    let lines = answers(&out);
    assert_eq!(lines.len(), 20, "{out:?}");
    assert!(
        lines.iter().all(|l| l == &format!("web-a {NODE_B_IP}")),
        "{lines:?}"
    );

    // no local endpoint left: the NodePort refuses at once
    svc.endpoints[0].local = false;
    proxy.sync(&state(vec![svc.clone()])).unwrap();
    let out = curl(&lab.node_b, &url, 1);
    assert_eq!(
        out.status.code(),
        Some(7),
        "expected connection refused: {out:?}"
    );
    // while the cluster IP still reaches both
    let out = curl(&lab.pods[3].ns, &format!("http://{VIP}/"), 10);
    assert_eq!(answers(&out).len(), 10, "{out:?}");
}

#[test]
fn external_ips_are_served() {
    let lab = three_pods();
    let mut proxy = NftProxy::new(lab.target());
    let mut svc = web(&lab, &[2]);
    svc.external_ips = vec!["192.0.2.10".parse().unwrap()];
    proxy.sync(&state(vec![svc])).unwrap();
    sh(
        &lab.node_b,
        &["ip", "route", "add", "192.0.2.10/32", "via", NODE_A_IP],
    );
    let out = curl(&lab.node_b, "http://192.0.2.10/", 5);
    assert_eq!(answers(&out).len(), 5, "{out:?}");
    assert!(answers(&out).iter().all(|l| l.starts_with("web-c ")));
}

#[test]
fn no_endpoints_refuse_at_once_then_scale_back() {
    let lab = three_pods();
    let mut proxy = NftProxy::new(lab.target());
    let client = &lab.pods[3];
    let url = format!("http://{VIP}/");
    proxy.sync(&state(vec![web(&lab, &[0, 1, 2])])).unwrap();
    assert_eq!(answers(&curl(&client.ns, &url, 3)).len(), 3);

    proxy.sync(&state(vec![web(&lab, &[])])).unwrap();
    let out = curl(&client.ns, &url, 1);
    // 7 = connection refused (a reset), not 28 = timed out
    assert_eq!(out.status.code(), Some(7), "{out:?}");

    proxy.sync(&state(vec![web(&lab, &[1])])).unwrap();
    let out = curl(&client.ns, &url, 3);
    assert_eq!(answers(&out), vec!["web-b 10.244.1.100"; 3], "{out:?}");
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
    let mut proxy = NftProxy::new(lab.target());
    proxy.sync(&state(vec![web(&lab, &[0, 1])])).unwrap();
    // 100 changes: rotate which two of the four pods are endpoints
    let sets: [&[usize]; 4] = [&[0, 1], &[1, 2], &[2, 4], &[4, 0]];
    let run = churn(&lab, 3, VIP, &sets, 100, Duration::from_millis(5), |set| {
        proxy.sync(&state(vec![web(&lab, set)])).unwrap();
    });
    run.assert_clean(&[0, 1], &lab.pods, &[0, 1, 2, 4], 100);
}

#[test]
fn hairpin_a_pod_reaches_itself_through_its_service() {
    let lab = three_pods();
    let mut proxy = NftProxy::new(lab.target());
    proxy.sync(&state(vec![web(&lab, &[0])])).unwrap();
    let out = curl(&lab.pods[0].ns, &format!("http://{VIP}/"), 3);
    let lines = answers(&out);
    assert_eq!(lines.len(), 3, "{out:?}");
    // masqueraded to the node, or the reply would bypass the service
    assert!(
        lines.iter().all(|l| l == &format!("web-a {GATEWAY}")),
        "{lines:?}"
    );
}

#[test]
fn stale_udp_flows_are_flushed_when_their_endpoint_goes() {
    let mut lab = three_pods();
    lab.serve_udp(0, 5353);
    lab.serve_udp(1, 5353);
    let mut proxy = NftProxy::new(lab.target());
    let mut dns = web(&lab, &[0]);
    dns.name.protocol = Protocol::Udp;
    dns.port = 53;
    dns.endpoints.iter_mut().for_each(|e| e.port = 5353);
    proxy.sync(&state(vec![dns.clone()])).unwrap();
    let sock = lab.pods[3]
        .ns
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let ask = |sock: &UdpSocket| {
        sock.send_to(b"?", (VIP, 53)).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = sock.recv_from(&mut buf).unwrap_or_else(|e| {
            let ct = sh(&lab.node_a, &["conntrack", "-L", "-p", "udp"]);
            panic!("no udp answer: {e}; conntrack:\n{ct}")
        });
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(ask(&sock), "web-a");
    // web-a leaves (its server still runs): the same flow must move
    let mut dns2 = web(&lab, &[1]);
    dns2.name.protocol = Protocol::Udp;
    dns2.port = 53;
    dns2.endpoints.iter_mut().for_each(|e| e.port = 5353);
    let report = proxy.sync(&state(vec![dns2])).unwrap();
    assert!(report.flushed >= 1, "{report:?}");
    assert_eq!(ask(&sock), "web-b");
}

#[test]
fn incremental_path_converges_with_a_full_resync() {
    let lab = three_pods();
    let mut proxy = NftProxy::new(lab.target());
    let mut steps = Vec::new();
    steps.push(state(vec![web(&lab, &[0, 1, 2])]));
    let mut affine = web(&lab, &[0, 1]);
    affine.affinity_timeout = Some(60);
    affine.node_port = Some(30080);
    let mut other = service("other", "10.96.0.11", 443, &[(&lab.pods[2], 8443)]);
    other.external_ips = vec!["192.0.2.1".parse().unwrap()];
    other.external_local = true;
    other.node_port = Some(30443);
    steps.push(state(vec![affine.clone(), other.clone()]));
    let mut none = service("none", "10.96.0.12", 53, &[]);
    none.name.protocol = Protocol::Udp;
    steps.push(state(vec![affine.clone(), none.clone()]));
    let mut sctp = service("sctp", "10.96.0.13", 9, &[(&lab.pods[1], 9)]);
    sctp.name.protocol = Protocol::Sctp;
    steps.push(state(vec![web(&lab, &[2]), none, sctp, other]));

    for (i, s) in steps.iter().enumerate() {
        let r = proxy.sync(s).unwrap();
        assert_eq!(r.full, i == 0, "step {i}: {r:?}");
    }
    let incremental = normalized_table(&lab.node_a, "ip");
    let mut fresh = NftProxy::new(lab.target());
    fresh.full_sync(steps.last().unwrap()).unwrap();
    let full = normalized_table(&lab.node_a, "ip");
    assert_eq!(incremental, full);
    assert!(full.contains("10.96.0.13 . sctp . 9"), "{full}");
}

#[test]
fn kernel_rule_count_stays_flat_from_ten_to_a_thousand_services() {
    let lab = three_pods();
    let count_rules = |n: usize| {
        let ports: Vec<_> = (0..n)
            .map(|i| {
                service(
                    &format!("s{i}"),
                    &format!("10.97.{}.{}", i / 200, i % 200 + 1),
                    80,
                    &[(&lab.pods[0], 8080), (&lab.pods[1], 8080)],
                )
            })
            .collect();
        let mut proxy = NftProxy::new(lab.target());
        proxy.full_sync(&state(ports)).unwrap();
        let listing = sh(
            &lab.node_a,
            &["nft", "-a", "list", "table", "ip", "podnet-proxy"],
        );
        listing
            .lines()
            .filter(|l| l.contains("# handle") && !l.contains("{"))
            .count()
    };
    let small = count_rules(10);
    let large = count_rules(1000);
    assert!(small > 10, "listing had {small} rules");
    assert_eq!(small, large);
}

#[test]
fn dual_stack_tables_load() {
    let lab = three_pods();
    let mut svc = web(&lab, &[0]);
    svc.cluster_ips.push("fd00:10:96::a".parse().unwrap());
    svc.endpoints.push(podnet_core::proxy::Endpoint {
        addr: "fd00:10:244:1::a".parse().unwrap(),
        port: 8080,
        local: true,
    });
    svc.node_port = Some(30080);
    // (nft 1.0.6 aborts on affinity updates of IPv6-keyed maps: the v6
    // table must load without them)
    svc.affinity_timeout = Some(60);
    let mut st = state(vec![svc]);
    st.cluster_cidrs.push("fd00:10:244::/56".parse().unwrap());
    let mut proxy = NftProxy::new(lab.target());
    proxy.sync(&st).unwrap();
    let v6 = sh(
        &lab.node_a,
        &["nft", "list", "table", "ip6", "podnet-proxy"],
    );
    assert!(
        v6.contains("fd00:10:96::a . tcp . 80 . 0 : fd00:10:244:1::a . 8080"),
        "{v6}"
    );
    // back to single-stack: the ip6 table goes
    proxy.sync(&state(vec![web(&lab, &[0])])).unwrap();
    let tables = sh(&lab.node_a, &["nft", "list", "tables"]);
    assert!(!tables.contains("ip6 podnet-proxy"), "{tables}");
}

/// The first load of a fresh node goes in steps of service ports (one
/// transaction each); the first load of a restarted agent, whose table is
/// in the kernel, is one transaction through an `nft -f` child. Both must
/// leave exactly the table one full load leaves.
#[test]
fn first_loads_in_steps_and_on_restart_equal_one_full_load() {
    let lab = three_pods();
    let ports: Vec<_> = (0..30)
        .map(|i| {
            service(
                &format!("s{i}"),
                &format!("10.97.0.{}", i + 1),
                80,
                &[(&lab.pods[i % 3], 8080), (&lab.pods[(i + 1) % 3], 8080)],
            )
        })
        .collect();
    let st = state(ports);
    let mut fresh = NftProxy::new(lab.target());
    let r = fresh.first_load(&st, 4).unwrap();
    assert!(
        r.full && r.element_changes > 0,
        "a fresh node loads in steps (a full load, then element updates): {r:?}"
    );
    let stepped = normalized_table(&lab.node_a, "ip");
    drop(fresh);
    let mut restarted = NftProxy::new(lab.target());
    let r = restarted.first_load(&st, 4).unwrap();
    assert!(
        r.full && r.element_changes == 0,
        "with the table in place, one full transaction: {r:?}"
    );
    let on_restart = normalized_table(&lab.node_a, "ip");
    sh(
        &lab.node_a,
        &["nft", "delete", "table", "ip", "podnet-proxy"],
    );
    NftProxy::new(lab.target()).full_sync(&st).unwrap();
    let one_load = normalized_table(&lab.node_a, "ip");
    assert!(one_load.contains("10.97.0.30 . tcp . 80"), "{one_load}");
    assert_eq!(stepped, one_load, "stepped first load");
    assert_eq!(on_restart, one_load, "first load on restart");
}

#[test]
fn an_agent_restart_keeps_established_connections_and_the_ruleset() {
    use std::io::{Read, Write};
    let lab = three_pods();
    let st = state(vec![web(&lab, &[0, 1, 2])]);
    let mut proxy = NftProxy::new(lab.target());
    proxy.sync(&st).unwrap();
    let before = normalized_table(&lab.node_a, "ip");
    let mut conn = lab.pods[3]
        .ns
        .run(|| std::net::TcpStream::connect((VIP, 80)))
        .unwrap()
        .expect("connect through the service");
    // the agent restarts: a fresh applier loads the whole table again
    drop(proxy);
    let mut restarted = NftProxy::new(lab.target());
    assert!(restarted.sync(&st).unwrap().full);
    assert_eq!(before, normalized_table(&lab.node_a, "ip"));
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(reply.ends_with(" 10.244.1.100\n"), "{reply}");
}

#[test]
fn the_kubernetes_service_reaches_an_endpoint_on_the_node_itself() {
    let mut lab = three_pods();
    lab.serve_http_on_node(6443);
    let mut api = service("kubernetes", "10.96.0.1", 443, &[]);
    api.endpoints.push(podnet_core::proxy::Endpoint {
        addr: NODE_A_IP.parse().unwrap(),
        port: 6443,
        local: false,
    });
    let mut proxy = NftProxy::new(lab.target());
    proxy.sync(&state(vec![api])).unwrap();
    let out = curl(&lab.pods[3].ns, "http://10.96.0.1:443/", 3);
    assert_eq!(answers(&out), vec!["node-a 10.244.1.100"; 3], "{out:?}");
}

/// The affinity entries (`client . service . proto . port : endpoint`)
/// the kernel holds in `affinity-tcp`.
fn affinity_entries(lab: &Lab) -> Vec<(String, std::net::IpAddr, u16)> {
    let listing = sh(
        &lab.node_a,
        &["nft", "list", "map", "ip", "podnet-proxy", "affinity-tcp"],
    );
    podnet_core::proxy::nft::parse_affinity_elements(&listing)
}

#[test]
fn stale_affinity_is_never_honoured_when_switched_off_deleted_or_not_live() {
    let lab = three_pods();
    let mut proxy = NftProxy::new(lab.target());
    let client = &lab.pods[3];
    let url = format!("http://{VIP}/");
    let sticky = |pods: &[usize]| {
        let mut s = web(&lab, pods);
        s.affinity_timeout = Some(300);
        s
    };

    // 1. Affinity switched off (same endpoints): requests spread again,
    //    and the entries are gone from the kernel.
    proxy.sync(&state(vec![sticky(&[0, 1, 2])])).unwrap();
    let seen = spread(&curl(&client.ns, &url, 20));
    assert_eq!(seen.len(), 1, "affinity did not stick: {seen:?}");
    assert!(!affinity_entries(&lab).is_empty());
    proxy.sync(&state(vec![web(&lab, &[0, 1, 2])])).unwrap();
    let seen = spread(&curl(&client.ns, &url, 150));
    assert_eq!(seen.values().sum::<usize>(), 150, "{seen:?}");
    assert_eq!(
        seen.len(),
        3,
        "affinity outlived being switched off: {seen:?}"
    );
    assert_eq!(affinity_entries(&lab), vec![], "entries left behind");

    // 2. The service deleted, then made again without affinity on the same
    //    address: nothing of the old one sticks.
    proxy.sync(&state(vec![sticky(&[0, 1, 2])])).unwrap();
    assert_eq!(spread(&curl(&client.ns, &url, 20)).len(), 1);
    proxy.sync(&state(vec![])).unwrap();
    assert_eq!(
        affinity_entries(&lab),
        vec![],
        "entries outlived the service"
    );
    proxy.sync(&state(vec![web(&lab, &[0, 1, 2])])).unwrap();
    let seen = spread(&curl(&client.ns, &url, 150));
    assert_eq!(seen.len(), 3, "the old service's affinity stuck: {seen:?}");

    // 3. An entry pointing at an endpoint that is not (any longer) one of
    //    the service's, e.g. recorded by a connection racing the change
    //    that removed it: never honoured, whatever the applier missed.
    proxy.sync(&state(vec![sticky(&[0, 1])])).unwrap();
    let web_c = &lab.pods[2];
    sh(
        &lab.node_a,
        &[
            "nft",
            &format!(
                "add element ip podnet-proxy affinity-tcp {{ {} . {VIP} . tcp . 80 timeout 300s : {} . 8080 }}",
                client.ip, web_c.ip
            ),
        ],
    );
    let out = curl(&client.ns, &url, 20);
    let seen = spread(&out);
    assert_eq!(seen.values().sum::<usize>(), 20, "{out:?}");
    assert!(
        !seen.contains_key("web-c"),
        "a stale affinity entry sent the client to a removed endpoint: {seen:?}"
    );
    assert_eq!(
        seen.len(),
        1,
        "affinity to a live endpoint sticks: {seen:?}"
    );
    assert!(
        affinity_entries(&lab)
            .iter()
            .all(|(_, ep, _)| *ep != web_c.ip),
        "{:?}",
        affinity_entries(&lab)
    );
}

#[test]
fn port_updates_converge_with_a_full_resync() {
    let lab = three_pods();
    let mut proxy = NftProxy::new(lab.target());
    let svcs: Vec<ServicePortPlan> = (0..20)
        .map(|i| {
            let eps: Vec<_> = (0..(i % 3 + 1)).map(|j| (&lab.pods[j], 8080)).collect();
            service(&format!("s{i}"), &format!("10.96.1.{}", i + 1), 80, &eps)
        })
        .collect();
    proxy.sync(&state(svcs.clone())).unwrap();
    let mut current = state(svcs.clone());
    let mut step = |proxy: &mut NftProxy, changed: Vec<ServicePortPlan>, gone: Vec<usize>| {
        let mut changes: Vec<_> = changed
            .iter()
            .map(|p| (p.name.clone(), Some(p.clone())))
            .collect();
        for i in gone {
            changes.push((svcs[i].name.clone(), None));
        }
        for (n, p) in &changes {
            match p {
                Some(p) => current.ports.insert(n.clone(), p.clone()),
                None => current.ports.remove(n),
            };
        }
        proxy.update(changes).unwrap();
        current.clone()
    };
    // a new endpoint count (bucket 4 appears), affinity on, a NodePort
    let mut a = svcs[0].clone();
    a.endpoints = (0..3).map(|j| service_ep(&lab, j)).collect();
    a.endpoints.push(service_ep_addr("10.244.1.77"));
    a.affinity_timeout = Some(30);
    a.node_port = Some(30080);
    step(&mut proxy, vec![a.clone()], vec![]);
    // affinity off, another service empty, one deleted
    a.affinity_timeout = None;
    let mut b = svcs[1].clone();
    b.endpoints.clear();
    step(&mut proxy, vec![a.clone(), b], vec![5]);
    // a dual-stack service comes (the ip6 table appears) and goes again
    let mut v6 = svcs[2].clone();
    v6.cluster_ips.push("fd00:10:96::2".parse().unwrap());
    step(&mut proxy, vec![v6], vec![]);
    let mut c = svcs[2].clone();
    c.external_ips = vec!["192.0.2.2".parse().unwrap()];
    c.external_local = true;
    let last = step(&mut proxy, vec![c], vec![]);

    let incremental = normalized_table(&lab.node_a, "ip");
    let tables = sh(&lab.node_a, &["nft", "list", "tables"]);
    assert!(!tables.contains("ip6 podnet-proxy"), "{tables}");
    let mut fresh = NftProxy::new(lab.target());
    fresh.full_sync(&last).unwrap();
    assert_eq!(incremental, normalized_table(&lab.node_a, "ip"));
}

fn service_ep(lab: &Lab, i: usize) -> podnet_core::proxy::Endpoint {
    podnet_core::proxy::Endpoint {
        addr: lab.pods[i].ip,
        port: 8080,
        local: true,
    }
}

fn service_ep_addr(a: &str) -> podnet_core::proxy::Endpoint {
    podnet_core::proxy::Endpoint {
        addr: a.parse().unwrap(),
        port: 8080,
        local: false,
    }
}
