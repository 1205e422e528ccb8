//! Every malformed input gets the spec's error code, a message naming what
//! is wrong, and an untouched system: the node's links and the IPAM state
//! are the same before and after.

mod support;

use serde_json::{Value, json};
use support::*;

#[test]
fn malformed_inputs_get_their_code_and_change_nothing() {
    let node = Node::new();
    let good = node.conf("1.1.0", "10.84.0.0/24");
    let p = pod();
    // One real attachment so the state is not trivially empty.
    node.ok("ADD", "present", &p, &good);
    let links_before = node.links();
    let state_before = node.state("testnet");
    let target = pod();
    let netns = target.path().display().to_string();

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    // (what, verb, container, netns, ifname, stdin, code, words in msg)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        String,
        &'a str,
        Vec<u8>,
        u64,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "not JSON",
            "ADD",
            "x1",
            netns.clone(),
            "eth0",
            b"{nope".to_vec(),
            6,
            "JSON",
        ),
        (
            "not an object",
            "ADD",
            "x1",
            netns.clone(),
            "eth0",
            b"[1,2]".to_vec(),
            6,
            "object",
        ),
        (
            "unknown version",
            "ADD",
            "x1",
            netns.clone(),
            "eth0",
            with(&|c| c["cniVersion"] = json!("0.9.9"))
                .to_string()
                .into_bytes(),
            1,
            "0.9.9",
        ),
        (
            "bad subnet",
            "ADD",
            "x1",
            netns.clone(),
            "eth0",
            with(&|c| c["ipam"]["ranges"] = json!([[{"subnet": "10.84.0.0/40"}]]))
                .to_string()
                .into_bytes(),
            7,
            "ipam.ranges[0][0].subnet",
        ),
        (
            "gateway outside subnet",
            "ADD",
            "x1",
            netns.clone(),
            "eth0",
            with(&|c| {
                c["ipam"]["ranges"] = json!([[{"subnet": "10.84.0.0/24", "gateway": "10.99.0.1"}]])
            })
            .to_string()
            .into_bytes(),
            7,
            "gateway",
        ),
        (
            "mtu not a number",
            "ADD",
            "x1",
            netns.clone(),
            "eth0",
            with(&|c| c["mtu"] = json!("big")).to_string().into_bytes(),
            7,
            "mtu",
        ),
        (
            "bridge name too long",
            "ADD",
            "x1",
            netns.clone(),
            "eth0",
            with(&|c| c["bridge"] = json!("this-is-far-too-long"))
                .to_string()
                .into_bytes(),
            7,
            "bridge",
        ),
        (
            "relative dataDir",
            "ADD",
            "x1",
            netns.clone(),
            "eth0",
            with(&|c| c["ipam"]["dataDir"] = json!("relative/dir"))
                .to_string()
                .into_bytes(),
            7,
            "ipam.dataDir",
        ),
        (
            "missing name",
            "ADD",
            "x1",
            netns.clone(),
            "eth0",
            with(&|c| {
                c.as_object_mut().unwrap().remove("name");
            })
            .to_string()
            .into_bytes(),
            7,
            "name",
        ),
        (
            "bad container id",
            "ADD",
            "has/slash",
            netns.clone(),
            "eth0",
            good.to_string().into_bytes(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "ifname too long",
            "ADD",
            "x1",
            netns.clone(),
            "eth0-much-too-long",
            good.to_string().into_bytes(),
            4,
            "CNI_IFNAME",
        ),
        (
            "netns missing",
            "ADD",
            "x1",
            "/run/netns/does-not-exist-pncni".into(),
            "eth0",
            good.to_string().into_bytes(),
            4,
            "CNI_NETNS",
        ),
        (
            "check without prevResult",
            "CHECK",
            "present",
            p.path().display().to_string(),
            "eth0",
            good.to_string().into_bytes(),
            7,
            "prevResult",
        ),
        (
            "gc without valid-attachments",
            "GC",
            "",
            String::new(),
            "",
            good.to_string().into_bytes(),
            7,
            "valid-attachments",
        ),
        (
            "check on 0.3.1",
            "CHECK",
            "present",
            p.path().display().to_string(),
            "eth0",
            with(&|c| c["cniVersion"] = json!("0.3.1"))
                .to_string()
                .into_bytes(),
            1,
            "CHECK",
        ),
        (
            "delegate not on CNI_PATH",
            "ADD",
            "x1",
            netns.clone(),
            "eth0",
            with(&|c| c["ipam"] = json!({"type": "no-such-ipam"}))
                .to_string()
                .into_bytes(),
            4,
            "no-such-ipam",
        ),
    ];
    for (what, verb, id, ns, ifname, stdin, code, words) in cases {
        let stdin: Value = match serde_json::from_slice(&stdin) {
            Ok(v) => v,
            Err(_) => {
                // Raw bytes: run through a shell-less path.
                let out = run_raw(&node, verb, id, &ns, ifname, &stdin);
                check_error(what, &out, code, words);
                continue;
            }
        };
        let out = node.run(PLUGIN, verb, id, &ns, ifname, &stdin);
        check_error(what, &out.stdout, code, words);
        assert!(
            !out.status.success(),
            "{what}: exit status must be non-zero"
        );
        assert_eq!(node.links(), links_before, "{what}: links changed");
        assert_eq!(node.state("testnet"), state_before, "{what}: IPAM changed");
        assert_eq!(
            links_in(&target),
            ["lo"],
            "{what}: the pod got an interface"
        );
    }
}

fn run_raw(node: &Node, verb: &str, id: &str, ns: &str, ifname: &str, stdin: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = node
        .ns
        .command(PLUGIN)
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", ns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", plugin_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    out.stdout
}

fn check_error(what: &str, stdout: &[u8], code: u64, words: &str) {
    let e: Value = serde_json::from_slice(stdout).unwrap_or_else(|_| {
        panic!(
            "{what}: not an error object: {}",
            String::from_utf8_lossy(stdout)
        )
    });
    assert_eq!(e["code"], code, "{what}: {e}");
    let msg = e["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains(words),
        "{what}: message {msg:?} does not name {words:?}"
    );
    assert!(
        e["cniVersion"].is_string(),
        "{what}: error lacks cniVersion"
    );
}

#[test]
fn an_interface_name_clash_in_the_pod_leaks_nothing() {
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.85.0.0/24");
    // The node's bridge exists already (made by an earlier pod).
    let first = pod();
    let r = node.ok("ADD", "first", &first, &conf);
    let p = pod();
    sh_in(
        &p,
        &[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other",
        ],
    );
    let links_before = node.links();
    let e = node.err_in("ADD", "clash", &p, &conf);
    assert_eq!(e["code"], 120, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("eth0"), "{e}");
    assert_eq!(node.links(), links_before);
    assert_eq!(
        node.allocated("testnet"),
        [first_ip(&r)],
        "the address leaked"
    );
}
