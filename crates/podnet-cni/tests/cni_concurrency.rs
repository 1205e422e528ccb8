//! Many ADDs at once, and plugins killed mid-ADD: the lock and the atomic
//! store keep every address unique, and the next ADD and a GC repair what a
//! killed invocation left.

mod support;

use std::collections::HashSet;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::*;

#[test]
fn sixty_four_parallel_adds_get_unique_addresses() {
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.82.0.0/24");
    let pods: Vec<_> = (0..64).map(|_| pod()).collect();
    let results: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let node = &node;
                let conf = &conf;
                s.spawn(move || first_ip(&node.ok("ADD", &format!("par{i}"), p, conf)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let unique: HashSet<&String> = results.iter().collect();
    assert_eq!(unique.len(), 64, "duplicate addresses: {results:?}");
    let mut held = node.allocated("testnet");
    held.sort();
    let mut given = results.clone();
    given.sort();
    assert_eq!(held, given, "IPAM state disagrees with what ADD returned");
    // Every pod really has its address.
    for (p, ip) in pods.iter().zip(&results) {
        let addr = sh_in(p, &["ip", "-4", "-o", "addr", "show", "eth0"]);
        assert!(addr.contains(&format!("{ip}/24")), "{addr}");
    }
}

#[test]
fn a_plugin_killed_mid_add_is_repaired_by_the_next_add_and_gc() {
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.83.0.0/24");
    let victim = pod();
    let netns = victim.path().display().to_string();
    // Kill ADDs at increasing delays so some die before, during and after
    // the allocation and the link creation.
    for delay_us in [0u64, 200, 500, 1000, 1500, 2000, 3000, 5000] {
        add_killed_after(
            &node,
            &conf,
            "victim",
            &netns,
            Duration::from_micros(delay_us),
        );
        // The state on disk is always readable JSON, whatever the moment.
        let state = node.state("testnet");
        if !state.is_empty() {
            serde_json::from_str::<serde_json::Value>(&state).expect("torn IPAM state");
        }
    }
    // The runtime retries ADD for the same container: it succeeds, and the
    // container holds exactly one address.
    let r = node.ok("ADD", "victim", &victim, &conf);
    assert_eq!(node.allocated("testnet"), [first_ip(&r)]);
    assert!(pings(&victim, "10.83.0.1"));

    // A second container killed mid-ADD and never retried: GC with only the
    // victim valid removes its allocation and host veth.
    let orphan = pod();
    let orphan_ns = orphan.path().display().to_string();
    add_killed_after(&node, &conf, "orphan", &orphan_ns, Duration::from_millis(2));
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "victim", "ifname": "eth0"}]);
    node.ok("GC", "", &victim, &gc);
    assert_eq!(node.allocated("testnet"), [first_ip(&r)]);
    let veths: Vec<String> = node
        .links()
        .into_iter()
        .filter(|l| l.starts_with("pn") && l != "pnbr0")
        .collect();
    assert_eq!(veths, [r["interfaces"][1]["name"].as_str().unwrap()]);
}

/// Starts an ADD and SIGKILLs the plugin after `delay`.
fn add_killed_after(node: &Node, conf: &serde_json::Value, id: &str, netns: &str, delay: Duration) {
    let mut child = node
        .ns
        .command(PLUGIN)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    std::thread::sleep(delay);
    let _ = child.kill();
    let _ = child.wait();
}
