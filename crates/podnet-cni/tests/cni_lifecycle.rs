//! ADD, CHECK, DEL, VERSION, STATUS and GC of podnet-cni against the real
//! kernel, in namespaces the tests make.

mod support;

use serde_json::{Value, json};
use support::*;

#[test]
fn add_gives_interface_address_route_mtu_and_connectivity() {
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.77.0.0/24");
    let pod_a = pod();
    let pod_b = pod();
    let a = node.ok("ADD", "ctr-a", &pod_a, &conf);
    let b = node.ok("ADD", "ctr-b", &pod_b, &conf);

    // Result shape: bridge, host veth, container veth; ips point at it.
    assert_eq!(a["cniVersion"], "1.1.0");
    assert_eq!(a["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(a["interfaces"][0]["name"], "pnbr0");
    assert_eq!(a["interfaces"][2]["name"], "eth0");
    assert_eq!(a["interfaces"][2]["mtu"], 1400);
    assert_eq!(
        a["interfaces"][2]["sandbox"],
        pod_a.path().display().to_string()
    );
    assert_eq!(a["ips"][0]["address"], "10.77.0.2/24");
    assert_eq!(a["ips"][0]["gateway"], "10.77.0.1");
    assert_eq!(a["ips"][0]["interface"], 2);
    assert_eq!(b["ips"][0]["address"], "10.77.0.3/24");
    assert_eq!(
        a["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.77.0.1"}])
    );

    // Inside the pod: eth0 up with the address and MTU, lo up, default route.
    let link: Value =
        serde_json::from_str(&sh_in(&pod_a, &["ip", "-j", "addr", "show", "eth0"])).unwrap();
    assert_eq!(link[0]["mtu"], 1400);
    assert_eq!(link[0]["address"], a["interfaces"][2]["mac"]);
    assert!(
        link[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "UP")
    );
    let addrs: Vec<&str> = link[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| a["local"].as_str().unwrap())
        .collect();
    assert_eq!(addrs, ["10.77.0.2"]);
    let lo: Value =
        serde_json::from_str(&sh_in(&pod_a, &["ip", "-j", "link", "show", "lo"])).unwrap();
    assert!(lo[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let routes = sh_in(&pod_a, &["ip", "route"]);
    assert!(
        routes.contains("default via 10.77.0.1 dev eth0"),
        "{routes}"
    );

    // Host end: on the bridge, hairpin on, MTU set.
    let host_name = a["interfaces"][1]["name"].as_str().unwrap().to_string();
    let detail = node.sh(&["ip", "-d", "-j", "link", "show", &host_name]);
    let detail: Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(detail[0]["master"], "pnbr0");
    assert_eq!(detail[0]["mtu"], 1400);
    assert_eq!(detail[0]["linkinfo"]["info_slave_data"]["hairpin"], true);

    // Connectivity: the gateway and the other pod.
    require("ping");
    assert!(pings(&pod_a, "10.77.0.1"), "pod cannot ping its gateway");
    assert!(
        pings(&pod_a, &first_ip(&b)),
        "pod cannot ping a pod on the same bridge"
    );

    // CHECK passes with prevResult...
    let mut check = conf.clone();
    check["prevResult"] = a.clone();
    node.ok("CHECK", "ctr-a", &pod_a, &check);
    // ...and fails, naming the route, once the route is gone.
    sh_in(&pod_a, &["ip", "route", "del", "default"]);
    let e = node.err_in("CHECK", "ctr-a", &pod_a, &check);
    assert_eq!(e["code"], 110);
    let msg = e["msg"].as_str().unwrap();
    assert!(
        msg.contains("route 0.0.0.0/0 via 10.77.0.1 is missing"),
        "{msg}"
    );

    // DEL twice succeeds; the address and the host veth are gone.
    node.ok("DEL", "ctr-a", &pod_a, &conf);
    // Once DEL returns the pod is cut off (host end down) and its address
    // is free; the veth pair itself goes right after.
    // Either way the host end no longer carries traffic: gone, or down.
    let detail = node.sh(&["ip", "-j", "link", "show"]);
    let links: Value = serde_json::from_str(&detail).unwrap();
    match links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifname"] == host_name)
    {
        None => {} // already deleted
        Some(l) => assert!(
            !l["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "host end {host_name} still up after DEL returned: {l}"
        ),
    }
    assert!(
        !pings(&pod_a, "10.77.0.1"),
        "the pod still reaches its gateway after DEL returned"
    );
    node.ok("DEL", "ctr-a", &pod_a, &conf);
    assert!(
        node.wait_link_gone(&host_name),
        "host veth {host_name} outlived DEL"
    );
    assert_eq!(links_in(&pod_a), ["lo"], "the pod end outlived DEL");
    assert_eq!(node.allocated("testnet"), ["10.77.0.3"]);
    // DEL of something never added succeeds too, even without a netns.
    let out = node.run(PLUGIN, "DEL", "never-added", "", "eth0", &conf);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn version_lists_all_five_and_old_versions_get_old_shapes() {
    let node = Node::new();
    let out = node.run(
        PLUGIN,
        "VERSION",
        "",
        "",
        "",
        &json!({"cniVersion": "1.1.0"}),
    );
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );

    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        let conf = node.conf(version, "10.78.0.0/24");
        let p = pod();
        let r = node.ok("ADD", &format!("v{}", version.replace('.', "")), &p, &conf);
        assert_eq!(r["cniVersion"], version);
        assert_eq!(
            r["ips"][0]["version"].as_str().is_some(),
            version.starts_with("0.")
        );
        assert!(
            r["interfaces"][2].get("mtu").is_none(),
            "mtu is a 1.1.0 field"
        );
    }
}

#[test]
fn dual_stack_gets_both_families_without_dad() {
    let node = Node::new();
    let mut conf = node.conf("1.1.0", "10.79.0.0/24");
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.79.0.0/24"}], [{"subnet": "fd00:79::/64"}]]);
    let p1 = pod();
    let p2 = pod();
    let r1 = node.ok("ADD", "ds1", &p1, &conf);
    let r2 = node.ok("ADD", "ds2", &p2, &conf);
    assert_eq!(r1["ips"][1]["address"], "fd00:79::2/64");
    assert_eq!(r1["routes"][1], json!({"dst": "::/0", "gw": "fd00:79::1"}));
    let addr = sh_in(
        &p1,
        &["ip", "-6", "addr", "show", "dev", "eth0", "scope", "global"],
    );
    assert!(addr.contains("fd00:79::2/64"), "{addr}");
    assert!(!addr.contains("tentative"), "DAD must be off: {addr}");
    assert!(pings(&p1, "fd00:79::1"));
    let v6 = r2["ips"][1]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    assert!(pings(&p1, v6));
}

#[test]
fn exhausting_a_29_gives_a_clean_error_and_status_reports_it() {
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.80.0.0/29");
    node.ok("STATUS", "", &pod(), &conf);
    let pods: Vec<_> = (0..5).map(|_| pod()).collect();
    for (i, p) in pods.iter().enumerate() {
        node.ok("ADD", &format!("ex{i}"), p, &conf);
    }
    let links_before = node.links();
    let state_before = node.state("testnet");
    let extra = pod();
    let e = node.err_in("ADD", "ex-last", &extra, &conf);
    assert_eq!(e["code"], 100);
    assert!(e["msg"].as_str().unwrap().contains("10.80.0.0/29"), "{e}");
    assert_eq!(node.links(), links_before, "a failed ADD left links behind");
    assert_eq!(
        node.state("testnet"),
        state_before,
        "a failed ADD changed IPAM"
    );
    assert_eq!(links_in(&extra), ["lo"]);

    let e = node.err("STATUS", "", "", "", &conf);
    assert_eq!(e["code"], 50);
    assert!(e["msg"].as_str().unwrap().contains("exhausted"), "{e}");

    // Freeing one makes the plugin ready again.
    node.ok("DEL", "ex3", &pods[3], &conf);
    node.ok("STATUS", "", &pod(), &conf);
}

#[test]
fn gc_releases_everything_not_listed_and_removes_their_veths() {
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.81.0.0/24");
    let keep = pod();
    let lose = pod();
    let kept = node.ok("ADD", "keep", &keep, &conf);
    let lost = node.ok("ADD", "lose", &lose, &conf);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    node.ok("GC", "", &keep, &gc);
    let links = node.links();
    assert!(links.contains(&kept["interfaces"][1]["name"].as_str().unwrap().to_string()));
    assert!(!links.contains(&lost["interfaces"][1]["name"].as_str().unwrap().to_string()));
    assert_eq!(node.allocated("testnet"), [first_ip(&kept)]);
}

/// `gsoMaxSize` (BIG TCP): both veth ends carry packets of that size, for
/// IPv6 and IPv4 alike; without it the kernel's 64 KiB stays.
#[test]
fn gso_max_size_lets_both_veth_ends_carry_big_tcp_packets() {
    let node = Node::new();
    // The big one first: it makes the bridge, which refuses BIG TCP until
    // it has a port that takes it.
    let mut conf = node.conf("1.1.0", "10.78.0.0/24");
    conf["gsoMaxSize"] = json!(196608);
    let big_pod = pod();
    let big = node.ok("ADD", "ctr-big", &big_pod, &conf);
    conf.as_object_mut().unwrap().remove("gsoMaxSize");
    let plain_pod = pod();
    let plain = node.ok("ADD", "ctr-plain", &plain_pod, &conf);

    // (host namespace, name) of each end, read back through rtnetlink.
    let sizes = |ns: &podnet_kernel::netns::NetNs, name: &str| {
        ns.run(|| {
            let mut nl = podnet_kernel::netlink::Netlink::open().unwrap();
            let link = nl.link_by_name(name).unwrap().unwrap();
            link.gso_ipv4_max_size
        })
        .unwrap()
    };
    let generic = |ns: &podnet_kernel::netns::NetNs, name: &str| -> (u64, u64) {
        let out = sh_in(ns, &["ip", "-d", "-j", "link", "show", name]);
        let v: Value = serde_json::from_str(&out).unwrap();
        (
            v[0]["gso_max_size"].as_u64().unwrap(),
            v[0]["gro_max_size"].as_u64().unwrap(),
        )
    };
    let big_host = big["interfaces"][1]["name"].as_str().unwrap();
    let plain_host = plain["interfaces"][1]["name"].as_str().unwrap();
    assert_eq!(sizes(&big_pod, "eth0"), Some(196608));
    assert_eq!(sizes(&node.ns, big_host), Some(196608));
    assert_eq!(generic(&big_pod, "eth0"), (196608, 196608));
    assert_eq!(generic(&node.ns, big_host), (196608, 196608));
    // The bridge carries them too: the node routes through it, and a
    // smaller bridge would cut the packets up on their way to a pod.
    assert_eq!(sizes(&node.ns, "pnbr0"), Some(196608));
    assert_eq!(sizes(&plain_pod, "eth0"), Some(65536));
    assert_eq!(sizes(&node.ns, plain_host), Some(65536));
    assert_eq!(generic(&plain_pod, "eth0").0, 65536);

    // And the two pods still talk through the bridge.
    require("ping");
    assert!(
        pings(&big_pod, &first_ip(&plain)),
        "big pod cannot reach plain pod"
    );
}

/// `portMappings` (hostPorts) without the portmap plugin: the node's
/// address on the host port reaches the pod from the node, from another
/// pod and from the pod itself; a second pod cannot take the same port;
/// CHECK sees a lost mapping; DEL frees the port for the next pod.
#[test]
fn host_ports_reach_the_pod_and_leave_with_it() {
    require("busybox");
    require("curl");
    require("nft");
    let node = Node::new();
    // The agent turns this on in every node (Services need it too): a
    // reply bridged straight back to a pod on the same bridge then meets
    // the connection's reverse translation.
    node.sh(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
    let plain = node.conf("1.1.0", "10.79.0.0/24");
    let mut mapped = plain.clone();
    mapped["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]});
    // With ipMasq too, so a failed ADD must take back its masquerade entry.
    mapped["ipMasq"] = json!(true);

    let server = pod();
    let a = node.ok("ADD", "ctr-web", &server, &mapped);
    let client = pod();
    node.ok("ADD", "ctr-client", &client, &plain);

    let httpd = Httpd::serve(&server, 8080, "hello through the host port\n");
    let url = "http://10.79.0.1:18080/";
    let from_node = fetch(&node.ns, url, 50);
    let from_pod = fetch(&client, url, 20);
    let hairpin = fetch(&server, url, 20);
    // Loopback is not forwarded (see the module doc of hostport.rs).
    let loopback = fetch(&node.ns, "http://127.0.0.1:18080/", 1);

    // A second pod asking for the same port fails cleanly and keeps nothing.
    let rival = pod();
    let e = node.err_in("ADD", "ctr-rival", &rival, &mapped);
    assert_eq!(e["code"], 102, "{e}");
    assert!(
        e["msg"].as_str().unwrap().contains("18080/tcp"),
        "the error names the port: {e}"
    );
    assert_eq!(links_in(&rival), ["lo"]);
    assert_eq!(node.allocated("testnet"), ["10.79.0.2", "10.79.0.3"]);
    let table = node.sh(&["nft", "list", "table", "ip", "podnet-cni"]);
    assert!(
        !table.contains("10.79.0.4"),
        "the failed ADD left its address in a set: {table}"
    );

    // CHECK passes, then names the mapping once it is gone.
    let mut check = mapped.clone();
    check["prevResult"] = a.clone();
    node.ok("CHECK", "ctr-web", &server, &check);
    node.sh(&[
        "nft",
        "delete",
        "element",
        "ip",
        "podnet-cni",
        "hostport_any",
        "{ tcp . 18080 }",
    ]);
    let e = node.err_in("CHECK", "ctr-web", &server, &check);
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("hostPort 18080/tcp is not forwarded to 10.79.0.2:8080"),
        "{e}"
    );
    // ADD again restores it (a retried ADD is idempotent).
    node.ok("ADD", "ctr-web", &server, &mapped);
    let again = fetch(&node.ns, url, 20);

    node.ok("DEL", "ctr-web", &server, &mapped);
    let after_del = fetch(&node.ns, url, 1);
    let table = node.sh(&["nft", "list", "table", "ip", "podnet-cni"]);
    // The port is free for the next pod.
    let next = pod();
    node.ok("ADD", "ctr-next", &next, &mapped);
    drop(httpd);

    let want = "hello through the host port\n";
    assert_eq!(from_node, want, "from the node");
    assert_eq!(from_pod, want, "from another pod on the bridge");
    assert_eq!(hairpin, want, "from the pod itself");
    assert_eq!(loopback, "", "127.0.0.1 is not forwarded");
    assert_eq!(again, want, "after ADD restored the mapping");
    assert_eq!(after_del, "", "DEL left the mapping");
    assert!(!table.contains("10.79.0.2"), "{table}");
}
