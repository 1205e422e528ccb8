//! podnet among the reference plugins (Debian's containernetworking-plugins):
//! chained with `portmap` and `bandwidth` through a conflist, and side by
//! side with `bridge` + `host-local` on the same style of configuration.

mod support;

use std::fs::File;
use std::path::PathBuf;

use podnet_cni::runtime::{Attachment, ConfList, Invoker};
use serde_json::{Value, json};
use support::*;

fn invoker(node: &Node) -> Invoker {
    Invoker {
        paths: vec![PathBuf::from(plugin_dir()), PathBuf::from(REF_PLUGINS)],
        netns: Some(File::open(node.ns.path()).unwrap()),
    }
}

#[test]
fn chained_with_portmap_and_bandwidth() {
    require("/usr/lib/cni/portmap");
    require("/usr/lib/cni/bandwidth");
    require("busybox");
    require("curl");
    let node = Node::new();
    let list = ConfList::parse(
        json!({
            "cniVersion": "1.0.0",
            "name": "chain",
            "plugins": [
                {"type": "podnet", "bridge": "pnbr1", "mtu": 1400,
                 "ipam": {"ranges": [[{"subnet": "10.86.0.0/24"}]],
                          "dataDir": node.data_dir.display().to_string()}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "bandwidth", "capabilities": {"bandwidth": true}}
            ]
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let p = pod();
    let mut att = Attachment {
        container_id: "chained".into(),
        netns: p.path().display().to_string(),
        ifname: "eth0".into(),
        args: vec![("K8S_POD_NAME".into(), "web".into())],
        ..Default::default()
    };
    att.capability_args.insert(
        "portMappings".into(),
        json!([{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]),
    );
    att.capability_args.insert(
        "bandwidth".into(),
        json!({"ingressRate": 100_000_000, "ingressBurst": 10_000_000,
               "egressRate": 100_000_000, "egressBurst": 10_000_000}),
    );
    let inv = invoker(&node);
    let result = inv.add(&list, &att).expect("chained ADD");
    assert_eq!(result["ips"][0]["address"], "10.86.0.2/24");

    // The bandwidth plugin found our host veth in prevResult and shaped it.
    let host_veth = result["interfaces"][1]["name"].as_str().unwrap();
    let qdisc = node.sh(&["tc", "qdisc", "show", "dev", host_veth]);
    assert!(
        qdisc.contains("tbf") || qdisc.contains("ingress"),
        "{qdisc}"
    );

    // portmap forwards the node's port 18080 to the pod's 8080.
    let server = Httpd::serve(&p, 8080, "hello from the pod\n");
    let body = fetch(&node.ns, "http://10.86.0.1:18080/", 50);
    drop(server);
    assert_eq!(body, "hello from the pod\n");

    // CHECK through the chain, then DEL in reverse order.
    // Debian's portmap 1.1.1 fails its own CHECK on IPv4-only pods (it
    // looks for an IPv6 DNAT chain it never made), so CHECK runs on podnet
    // and bandwidth, each with the chain's final result as prevResult.
    for i in [0, 2] {
        let conf = Invoker::plugin_conf(&list, i, &att, Some(&result), &Default::default());
        inv.exec("CHECK", &conf, &att).expect("CHECK");
    }
    inv.del(&list, &att, Some(&result)).expect("chained DEL");
    assert!(node.wait_link_gone(host_veth));
    assert!(node.allocated("chain").is_empty());
}

/// The parts of a result that must match the reference's: the shape of
/// interfaces (names aside), addresses with their interface index and
/// gateway, routes.
fn shape(r: &Value) -> Value {
    let ifs: Vec<Value> = r["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| json!({"has_mac": i["mac"].is_string(), "in_sandbox": i.get("sandbox").is_some()}))
        .collect();
    json!({"interfaces": ifs, "ips": r["ips"], "routes": r["routes"]})
}

#[test]
fn same_result_shape_as_reference_bridge_and_host_local() {
    require("/usr/lib/cni/bridge");
    require("/usr/lib/cni/host-local");
    let node = Node::new();
    let data = node.data_dir.display().to_string();
    let common = |kind: &str, bridge: &str, net: &str| {
        json!({
            "cniVersion": "1.0.0", "name": format!("cmp-{kind}"), "type": kind,
            "bridge": bridge, "isGateway": true, "mtu": 1400, "hairpinMode": true,
            "ipam": {"type": if kind == "podnet" { "podnet" } else { "host-local" },
                     "ranges": [[{"subnet": net}], [{"subnet": "fd00:87::/64"}]],
                     "routes": [{"dst": "0.0.0.0/0"}],
                     "dataDir": format!("{data}/{kind}")}
        })
    };
    let ours = common("podnet", "pnbr2", "10.87.0.0/24");
    let reference = common("bridge", "refbr0", "10.87.0.0/24");
    // Different bridges in different nodes would be fairer still; here the
    // networks are the same subnet on two bridges in one node, so only one
    // of them is attached at a time.
    for i in 0..2 {
        let p1 = pod();
        let a = node.ok("ADD", &format!("cmp{i}"), &p1, &ours);
        let p2 = pod();
        let out = node.run(
            "/usr/lib/cni/bridge",
            "ADD",
            &format!("cmp{i}"),
            &p2.path().display().to_string(),
            "eth0",
            &reference,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let b: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(shape(&a), shape(&b), "ours: {a}\nreference: {b}");
        node.ok("DEL", &format!("cmp{i}"), &p1, &ours);
        let out = node.run(
            "/usr/lib/cni/bridge",
            "DEL",
            &format!("cmp{i}"),
            &p2.path().display().to_string(),
            "eth0",
            &reference,
        );
        assert!(out.status.success());
    }
}

#[test]
fn host_local_works_as_a_delegated_ipam() {
    require("/usr/lib/cni/host-local");
    let node = Node::new();
    let mut conf = node.conf("1.0.0", "10.88.0.0/24");
    conf["ipam"] = json!({"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/24"}]],
                          "dataDir": format!("{}/hl", node.data_dir.display())});
    let p = pod();
    let r = node.ok("ADD", "delegated", &p, &conf);
    assert_eq!(r["ips"][0]["address"], "10.88.0.2/24");
    assert_eq!(r["ips"][0]["interface"], 2);
    assert!(pings(&p, "10.88.0.1"));
    let held = std::fs::read_dir(node.data_dir.join("hl").join("testnet"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name() == "10.88.0.2");
    assert!(held, "host-local did not record the address");
    node.ok("DEL", "delegated", &p, &conf);
    let still = node.data_dir.join("hl").join("testnet").join("10.88.0.2");
    assert!(!still.exists(), "host-local kept the address after DEL");
}
