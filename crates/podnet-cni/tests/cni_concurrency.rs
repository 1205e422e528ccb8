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
    // First a kill that certainly lands in the middle: the plugin is killed
    // the moment its allocation shows in the IPAM store, before it reported
    // a result. Repeated (from a clean slate) until one does.
    let mut kills = Vec::new();
    loop {
        let k = add_killed(&node, &conf, "victim", &netns, When::OnAllocation);
        kills.push(k);
        if k.mid_add() {
            break;
        }
        assert!(
            kills.len() < TRIES,
            "no kill landed in the middle of an ADD in {TRIES} tries: {kills:?}"
        );
        // The ADD ran to its end before the kill: start over.
        node.ok("DEL", "victim", &victim, &conf);
    }
    // Then kills at increasing delays, so others die before, during and
    // after the allocation and the link creation.
    for delay_us in [0u64, 200, 500, 1000, 1500, 2000, 3000, 5000] {
        let k = add_killed(
            &node,
            &conf,
            "victim",
            &netns,
            When::After(Duration::from_micros(delay_us)),
        );
        kills.push(k);
        // The state on disk is always readable JSON, whatever the moment.
        let state = node.state("testnet");
        if !state.is_empty() {
            serde_json::from_str::<serde_json::Value>(&state).expect("torn IPAM state");
        }
    }
    eprintln!("kills of the victim's ADD: {kills:?}");
    // The runtime retries ADD for the same container: it succeeds, and the
    // container holds exactly one address.
    let r = node.ok("ADD", "victim", &victim, &conf);
    assert_eq!(node.allocated("testnet"), [first_ip(&r)]);
    assert!(pings(&victim, "10.83.0.1"));

    // Other containers killed mid-ADD and never retried (repeated until a
    // kill lands mid-ADD; those that ran to the end are never retried
    // either): GC with only the victim valid removes their allocations and
    // host veths. Their pods live on until after the GC, so their veths do
    // not go with a namespace.
    let mut orphans = Vec::new();
    let mut orphan_kills = Vec::new();
    loop {
        let orphan = pod();
        let id = format!("orphan{}", orphans.len());
        let k = add_killed(
            &node,
            &conf,
            &id,
            &orphan.path().display().to_string(),
            When::OnAllocation,
        );
        orphans.push(orphan);
        orphan_kills.push(k);
        if k.mid_add() {
            break;
        }
        assert!(
            orphan_kills.len() < TRIES,
            "no orphan's ADD was killed in its middle in {TRIES} tries: {orphan_kills:?}"
        );
    }
    assert!(
        node.allocated("testnet").len() > 1,
        "the killed orphan left an allocation for GC to remove"
    );
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
    drop(orphans);
}

/// Tries before a test gives up waiting for a kill to land mid-ADD.
const TRIES: usize = 20;

/// When [`add_killed`] kills the plugin.
#[derive(Clone, Copy, Debug)]
enum When {
    /// After a fixed delay from the spawn.
    After(Duration),
    /// As soon as the container's allocation is in the IPAM store.
    OnAllocation,
}

/// How one killed ADD went.
#[derive(Clone, Copy, Debug)]
struct Kill {
    /// The container held no address before the spawn.
    fresh: bool,
    /// The container's allocation was in the store when the kill was sent.
    allocation_seen: bool,
    /// The plugin died of the kill (it had not exited by itself).
    killed: bool,
    /// It had printed a result: the ADD was done.
    reported: bool,
}

impl Kill {
    /// The kill landed in the middle of the ADD: after it had made part
    /// of the attachment, before it was done.
    fn mid_add(&self) -> bool {
        self.fresh && self.allocation_seen && self.killed && !self.reported
    }
}

/// Whether the IPAM store holds an address for `id`.
fn holds(node: &Node, id: &str) -> bool {
    let state = node.state("testnet");
    !state.is_empty()
        && serde_json::from_str::<serde_json::Value>(&state).is_ok_and(|v| {
            v["allocations"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["container_id"] == id))
        })
}

/// Starts an ADD and SIGKILLs the plugin at `when`.
fn add_killed(node: &Node, conf: &serde_json::Value, id: &str, netns: &str, when: When) -> Kill {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::time::Instant;
    let held_before = holds(node, id);
    let mut child = node
        .ns
        .command(PLUGIN)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let allocation_seen = match when {
        When::After(delay) => {
            std::thread::sleep(delay);
            holds(node, id)
        }
        When::OnAllocation => {
            assert!(!held_before, "{id} already holds an address");
            // Watch the store as fast as it can be read, until the
            // allocation shows or the plugin exits by itself.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if holds(node, id) {
                    break true;
                }
                if child.try_wait().unwrap().is_some() {
                    break holds(node, id);
                }
                assert!(
                    Instant::now() < deadline,
                    "ADD of {id} neither allocated nor exited in 30 s"
                );
            }
        }
    };
    let _ = child.kill();
    let status = child.wait().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    Kill {
        fresh: !held_before,
        allocation_seen,
        killed: status.signal() == Some(libc::SIGKILL),
        reported: !out.trim().is_empty(),
    }
}
