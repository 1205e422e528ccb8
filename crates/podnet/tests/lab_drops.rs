//! `podnet drops` on a real lab with the real kubectl: a connection a
//! NetworkPolicy refuses shows up naming the policy that isolates it
//! (polled, never timed), `--pod` and `-n` filter, `-f` follows, and a
//! flood is rate-limited: the records the agent emits stay below the
//! limit times the flood's duration (plus the burst) while the kernel's
//! counter shows every packet was dropped.

mod support;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Lab, podnet};

const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.47";
/// The lab's drop-log limit (records per second and direction per node)
/// and burst, low so that a flood of a few thousand packets is far above
/// it.
const RATE: u64 = 20;
const BURST: u64 = 10;
/// Packets in the flood.
const FLOOD: u64 = 5000;

/// `podnet drops <args> -o json` against the lab: the records.
fn drops(lab: &Lab, args: &[&str]) -> Vec<Value> {
    let out = Command::new(podnet())
        .arg("drops")
        .args(args)
        .args(["-o", "json", "--last", "5000", "--kubeconfig"])
        .arg(&lab.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podnet drops {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits until `cond` holds (polling, never a fixed sleep).
fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A refused TCP connection from `ns/pod` to `ip:port` (exit code ignored:
/// it is meant to fail).
fn connect(lab: &Lab, ns: &str, pod: &str, ip: &str, port: u16) {
    lab.kubectl_raw(&[
        "exec",
        "-n",
        ns,
        pod,
        "--",
        "nc",
        "-z",
        "-w",
        "1",
        ip,
        &port.to_string(),
    ]);
}

fn is(v: &Value, src: &str, dst: &str, port: u64, proto: &str) -> bool {
    v["src"]["pod"] == src
        && v["dst"]["pod"] == dst
        && v["dst"]["port"] == port
        && v["proto"] == proto
}

/// The kernel's ingress drop counter of `ip` on `node` (the policy
/// table's `in_drops` set).
fn kernel_in_drops(node: &str, ip: &str) -> u64 {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            node,
            "nft",
            "list",
            "set",
            "inet",
            "podnet-policy",
            "in_drops",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(i) = text.find(&format!("{ip} counter packets ")) else {
        return 0;
    };
    text[i..]
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or(0)
}

#[test]
fn drops_name_their_policy_filter_follow_and_are_rate_limited() {
    let lab = Lab::up_with(
        "pndrop",
        "vxlan",
        &[
            "--config",
            &format!("PODNET_DROP_LOG_RATE={RATE}"),
            "--config",
            &format!("PODNET_DROP_LOG_BURST={BURST}"),
        ],
    );
    let nodes = lab.nodes();
    let worker = &nodes.iter().find(|n| n.0.ends_with("-worker")).unwrap().0;
    let worker2 = &nodes.iter().find(|n| n.0.ends_with("-worker2")).unwrap().0;
    let mut yaml = String::new();
    for ns in ["x", "y"] {
        yaml.push_str(&format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: \"{ns}\", labels: {{ns: \"{ns}\"}}}}\n---\n"));
    }
    for (ns, p, node) in [("x", "a", worker2), ("x", "b", worker), ("y", "c", worker)] {
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {p}, namespace: \"{ns}\", labels: {{pod: {p}}}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: serve, image: \"{AGNHOST}\", command: [/agnhost, netexec, --http-port=80, --udp-port=81]}}]\n---\n"
        ));
    }
    yaml.push_str("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-a, namespace: \"x\"}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]\n  ingress: []\n");
    lab.apply(&yaml);
    lab.wait_ready_in("x", "pod");
    lab.wait_ready_in("y", "pod");
    let a_ip = lab.get_json(&["pod", "-n", "x", "a"])["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();

    // A follower started before the refused connection must see it.
    let mut follower = Command::new(podnet())
        .args([
            "drops",
            "-f",
            "-o",
            "json",
            "--last",
            "0",
            "--pod",
            "b",
            "-n",
            "x",
            "--kubeconfig",
        ])
        .arg(&lab.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    // x/b -> x/a:80 is refused by x/deny-a; it shows up naming it.
    let mut seen = Vec::new();
    until("x/b -> x/a:80 in podnet drops", || {
        connect(&lab, "x", "b", &a_ip, 80);
        seen = drops(&lab, &[]);
        seen.iter().any(|v| is(v, "x/b", "x/a", 80, "TCP"))
    });
    let rec = seen
        .iter()
        .find(|v| is(v, "x/b", "x/a", 80, "TCP"))
        .unwrap();
    assert_eq!(rec["direction"], "ingress", "{rec}");
    assert_eq!(rec["node"], worker2.as_str(), "{rec}");
    assert_eq!(rec["policies"], serde_json::json!(["x/deny-a"]), "{rec}");
    assert!(rec["time_ms"].as_u64().unwrap() > 0 && rec["src"]["port"].as_u64().unwrap() > 0);

    // The text line says the same.
    let out = Command::new(podnet())
        .args(["drops", "--pod", "x/b", "--kubeconfig"])
        .arg(&lab.kubeconfig)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains("x/b:")
            && l.contains("-> x/a:80/TCP")
            && l.contains("DROPPED INGRESS by x/deny-a")
            && l.contains(worker2.as_str())),
        "podnet drops --pod x/b:\n{text}"
    );

    // The follower saw it too.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut followed = false;
    while !followed && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(l) => {
                let v: Value = serde_json::from_str(&l).unwrap();
                assert!(
                    v["src"]["pod"] == "x/b" || v["dst"]["pod"] == "x/b",
                    "--pod b -n x followed a drop of another pod: {l}"
                );
                followed = is(&v, "x/b", "x/a", 80, "TCP");
            }
            Err(_) => connect(&lab, "x", "b", &a_ip, 80),
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(followed, "podnet drops -f never showed x/b -> x/a:80");

    // y/c is refused too; the filters keep each pod's own.
    until("y/c -> x/a:80 in podnet drops", || {
        connect(&lab, "y", "c", &a_ip, 80);
        drops(&lab, &["-n", "y"])
            .iter()
            .any(|v| is(v, "y/c", "x/a", 80, "TCP"))
    });
    let only_y = drops(&lab, &["-n", "y"]);
    assert!(
        only_y
            .iter()
            .all(|v| v["src"]["pod"] == "y/c" || v["dst"]["pod"] == "y/c"),
        "-n y shows drops of no pod in y: {only_y:?}"
    );
    let only_b = drops(&lab, &["--pod", "b", "-n", "x"]);
    assert!(!only_b.is_empty());
    assert!(
        only_b
            .iter()
            .all(|v| v["src"]["pod"] == "x/b" || v["dst"]["pod"] == "x/b"),
        "--pod b -n x shows drops of other pods: {only_b:?}"
    );
    let to_a = drops(&lab, &["--pod", "x/a"]);
    assert!(
        to_a.iter().any(|v| is(v, "x/b", "x/a", 80, "TCP"))
            && to_a.iter().any(|v| is(v, "y/c", "x/a", 80, "TCP")),
        "--pod x/a lacks one of its drops: {to_a:?}"
    );

    // A flood of UDP packets from x/b to x/a:81: every packet is dropped
    // (the kernel's counter), few are recorded (the log's limit). Paced a
    // little (20 packets, then 1 ms), so that no queue on the way (a
    // veth's backlog) drops any before the policy does: thousands per
    // second, still a hundred times the log's rate.
    let kernel_before = kernel_in_drops(worker2, &a_ip);
    let records_before = drops(&lab, &["--pod", "x/b"])
        .iter()
        .filter(|v| is(v, "x/b", "x/a", 81, "UDP"))
        .count() as u64;
    let started = Instant::now();
    let script = format!(
        "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor i in range({FLOOD}):\n    s.sendto(b'x', ('{a_ip}', 81))\n    if i % 20 == 19:\n        time.sleep(0.001)\n"
    );
    let out = lab.kubectl_raw(&[
        "exec",
        "-n",
        "x",
        "b",
        "--",
        "/usr/bin/python3",
        "-c",
        &script,
    ]);
    assert!(
        out.status.success(),
        "the flood did not run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut kernel = 0;
    until("the kernel to count the flood's drops", || {
        kernel = kernel_in_drops(worker2, &a_ip) - kernel_before;
        kernel >= FLOOD
    });
    // Whatever the agent has read by now; the bound below grows with the
    // time taken, so reading later can only loosen it, never break it.
    let mut records = 0;
    until("some of the flood recorded", || {
        records = drops(&lab, &["--pod", "x/b"])
            .iter()
            .filter(|v| is(v, "x/b", "x/a", 81, "UDP"))
            .count() as u64
            - records_before;
        records > 0
    });
    let elapsed = started.elapsed().as_secs_f64();
    let bound = (RATE as f64 * elapsed).ceil() as u64 + BURST;
    eprintln!(
        "flood: {kernel} packets dropped by the kernel, {records} recorded in {elapsed:.1} s (bound {bound})"
    );
    assert!(
        records <= bound,
        "{records} records for a flood of {FLOOD} in {elapsed:.1} s: above {RATE}/s x {elapsed:.1} s + {BURST}"
    );
    assert!(records < kernel, "{records} records for {kernel} drops");

    // The same drops by policy in the agent's /metrics: the kernel's
    // count for x/deny-a, and the records.
    let metrics = Command::new("ip")
        .args([
            "netns",
            "exec",
            worker2,
            "curl",
            "-s",
            "http://127.0.0.1:9101/metrics",
        ])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let value = |prefix: &str| -> Option<u64> {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
    };
    let by_policy = value("podnet_policy_drops_total{policy=\"x/deny-a\",namespace=\"x\",name=\"deny-a\",direction=\"ingress\"}")
        .unwrap_or_else(|| panic!("no podnet_policy_drops_total for x/deny-a:\n{metrics}"));
    assert!(
        by_policy >= FLOOD,
        "x/deny-a dropped {by_policy} < {FLOOD}:\n{metrics}"
    );
    let recorded = value("podnet_policy_drop_records_total{policy=\"x/deny-a\",namespace=\"x\",name=\"deny-a\",direction=\"ingress\"}")
        .unwrap_or_else(|| panic!("no podnet_policy_drop_records_total for x/deny-a:\n{metrics}"));
    assert!(
        recorded >= records && recorded < by_policy,
        "{recorded} records:\n{metrics}"
    );
}
