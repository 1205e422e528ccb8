//! Restarting podnet's agents, as an operator does with
//! `kubectl -n kube-system rollout restart ds/podnet`: pods keep
//! running (same processes, addresses, restart counts), an established
//! connection through a Service keeps working, a pod under a deny-all
//! policy is never reached while the agents are away, and the agents
//! rebuild exactly the ruleset they left.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::Lab;

/// One HTTP/1.1 connection to `ip:80`, a request every 100 ms for
/// `secs` seconds; prints each answer with the local port (the same port
/// throughout proves the same connection), then a summary.
const KEEPER: &str = r#"
import socket, sys, time
ip, secs = sys.argv[1], float(sys.argv[2])
# The first connect may wait for a busy machine; the point is what happens
# to the connection once it is up.
for attempt in range(20):
    try:
        s = socket.create_connection((ip, 80), timeout=3)
        break
    except OSError as e:
        print('connect retry', e, flush=True)
        time.sleep(0.5)
port = s.getsockname()[1]
ok = fail = 0
end = time.time() + secs
f = s.makefile('rb')
while time.time() < end:
    try:
        s.sendall(b'GET / HTTP/1.1\r\nHost: web\r\n\r\n')
        length = 0
        status = f.readline()
        while True:
            h = f.readline()
            if h in (b'\r\n', b''):
                break
            if h.lower().startswith(b'content-length:'):
                length = int(h.split(b':')[1])
        body = f.read(length)
        if status.startswith(b'HTTP/1.1 200') and b'nginx' in body:
            ok += 1
        else:
            fail += 1
            print('FAIL', status, flush=True)
    except Exception as e:
        fail += 1
        print('FAIL', e, flush=True)
        break
    time.sleep(0.1)
print('done port=%d ok=%d fail=%d' % (port, ok, fail), flush=True)
"#;

/// Tries a new TCP connection to `ip:80` every 50 ms for `secs` seconds;
/// prints a line for every one that got through.
const PROBER: &str = r#"
import socket, sys, time
ip, secs = sys.argv[1], float(sys.argv[2])
tries = reached = 0
end = time.time() + secs
while time.time() < end:
    tries += 1
    try:
        socket.create_connection((ip, 80), timeout=0.3).close()
        reached += 1
        print('REACHED at', time.time(), flush=True)
    except Exception:
        pass
    time.sleep(0.05)
print('done tries=%d reached=%d' % (tries, reached), flush=True)
"#;

/// The node's ruleset for the mode, without what changes by itself
/// (counters, expiry timers), in a stable order.
fn ruleset(ns: &str, mode: &str) -> Vec<String> {
    let out = match mode {
        "iptables" => Command::new("ip")
            .args(["netns", "exec", ns, "iptables-save"])
            .output()
            .unwrap(),
        _ => Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-s", "list", "ruleset"])
            .output()
            .unwrap(),
    };
    assert!(out.status.success(), "ruleset of {ns}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            // iptables-save: ":CHAIN POLICY [packets:bytes]".
            let l = match l.find(" [") {
                Some(i) if l.starts_with(':') => &l[..i],
                _ => l,
            };
            // nft: set elements with a timeout carry "expires <t>".
            let words: Vec<&str> = l.split_whitespace().collect();
            let mut kept = Vec::new();
            let mut skip = false;
            for w in words {
                if skip {
                    skip = false;
                    continue;
                }
                if w == "expires" {
                    skip = true;
                    continue;
                }
                kept.push(w);
            }
            kept.join(" ")
        })
        .collect();
    lines.sort();
    lines
}

fn rulesets(lab: &Lab, mode: &str) -> Vec<Vec<String>> {
    ["control-plane", "worker", "worker2"]
        .iter()
        .map(|n| ruleset(&format!("{}-{n}", lab.name), mode))
        .collect()
}

fn wait_done(lab: &Lab, pod: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let phase = lab.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"]);
        if phase == "Succeeded" || phase == "Failed" {
            return lab.kubectl(&["logs", pod]);
        }
        assert!(
            Instant::now() < deadline,
            "{pod} did not finish: {phase}; logs: {}",
            String::from_utf8_lossy(&lab.kubectl_raw(&["logs", pod]).stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn agent_pod_uids(lab: &Lab) -> Vec<String> {
    let v = lab.get_json(&["pods", "-n", "kube-system", "-l", "k8s-app=podnet"]);
    let mut uids: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .map(|p| p["metadata"]["uid"].as_str().unwrap().to_string())
        .collect();
    uids.sort();
    uids
}

fn pods_ip_restarts(lab: &Lab) -> Vec<(String, String, i64)> {
    let v = lab.get_json(&["pods"]);
    let mut out: Vec<(String, String, i64)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["status"]["podIP"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["status"]["containerStatuses"][0]["restartCount"]
                    .as_i64()
                    .unwrap_or(-1),
            )
        })
        .collect();
    out.sort();
    out
}

fn restart_keeps_everything(mode: &str) {
    let lab = Lab::up_with("rst", "vxlan", &["--proxy-mode", mode]);
    let (w1, w2) = (
        format!("{}-worker", lab.name),
        format!("{}-worker2", lab.name),
    );
    // A server behind a Service on one worker, a locked pod beside it.
    lab.run_on("web", "nginx", &w1, &[]);
    lab.kubectl(&["label", "pod", "web", "app=web"]);
    lab.kubectl(&["expose", "pod", "web", "--port=80", "--name=web"]);
    lab.run_on("locked", "nginx", &w1, &[]);
    lab.kubectl(&["label", "pod", "locked", "app=locked"]);
    lab.wait_ready("run in (web,locked)");
    let cluster_ip = lab.kubectl(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let (locked_ip, _) = lab.pod_ip_node("locked");

    // The locked pod is reachable first (so "never reached" means something),
    // then isolated.
    lab.run_on("check", "nicolaka/netshoot", &w2, &["sleep", "3600"]);
    lab.wait_ready("run=check");
    let reach = |want: bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = lab.kubectl_raw(&[
                "exec",
                "check",
                "--",
                "curl",
                "-s",
                "-m",
                "1",
                "-o",
                "/dev/null",
                &format!("http://{locked_ip}/"),
            ]);
            if out.status.success() == want {
                return;
            }
            assert!(Instant::now() < deadline, "locked pod reachable={}", !want);
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    reach(true);
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny-locked\nspec:\n  podSelector:\n    matchLabels:\n      app: locked\n  policyTypes: [Ingress]\n  ingress: []\n",
    );
    reach(false);

    // The long-lived connection and the prober, as pods of their own (they
    // outlive the agents being restarted, as kubectl exec streams do not).
    for (name, script, ip) in [
        ("keeper", KEEPER, &cluster_ip),
        ("prober", PROBER, &locked_ip),
    ] {
        let overrides = format!(r#"{{"spec":{{"nodeName":"{w2}","restartPolicy":"Never"}}}}"#);
        lab.kubectl(&[
            "run",
            name,
            "--image=nicolaka/netshoot",
            "--restart=Never",
            "--overrides",
            &overrides,
            "--",
            "python3",
            "-c",
            script,
            ip,
            "25",
        ]);
    }
    lab.wait_ready("run in (keeper,prober)");
    std::thread::sleep(Duration::from_secs(3));
    let before_rules = rulesets(&lab, mode);
    let before_pods = pods_ip_restarts(&lab);
    let before_agents = agent_pod_uids(&lab);
    assert_eq!(before_agents.len(), 3, "three agents");

    // Restart every agent, as an operator restarts a DaemonSet: one node
    // at a time (maxUnavailable 1), each pod replaced by a new one.
    lab.kubectl(&["-n", "kube-system", "rollout", "restart", "ds/podnet"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = agent_pod_uids(&lab);
        if now.len() == 3 && now.iter().all(|u| !before_agents.contains(u)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agents did not come back: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Each agent resyncs at start; give the watches a moment to settle.
    std::thread::sleep(Duration::from_secs(4));

    let keeper = wait_done(&lab, "keeper");
    let prober = wait_done(&lab, "prober");
    eprintln!("keeper: {}\nprober: {}", keeper.trim(), prober.trim());
    let summary = keeper.lines().last().unwrap_or_default().to_string();
    assert!(
        summary.starts_with("done") && summary.ends_with("fail=0") && !summary.contains("ok=0 "),
        "the connection through the service broke during the restart:\n{keeper}"
    );
    assert!(
        prober
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("done") && l.ends_with("reached=0")),
        "the isolated pod was reached during the restart:\n{prober}"
    );

    let after_pods = pods_ip_restarts(&lab);
    for (name, ip, restarts) in &before_pods {
        let after = after_pods.iter().find(|p| &p.0 == name);
        if name == "keeper" || name == "prober" {
            continue; // finished on purpose
        }
        assert_eq!(
            after,
            Some(&(name.clone(), ip.clone(), *restarts)),
            "pod {name} changed across the agent restart"
        );
    }
    let after_rules = rulesets(&lab, mode);
    for (i, (b, a)) in before_rules.iter().zip(&after_rules).enumerate() {
        let only_before: Vec<&String> = b.iter().filter(|l| !a.contains(l)).collect();
        let only_after: Vec<&String> = a.iter().filter(|l| !b.contains(l)).collect();
        assert!(
            only_before.is_empty() && only_after.is_empty(),
            "node {i}'s {mode} ruleset differs after the restart:\nonly before: {only_before:#?}\nonly after: {only_after:#?}"
        );
    }
    // The restarted kubelet still serves logs and exec for adopted pods.
    assert!(lab.kubectl(&["exec", "web", "--", "hostname"]).trim() == "web");
    assert!(lab.kubectl(&["logs", "web"]).contains("GET /"));
    // And it still ends them: the sandbox goes with the pod.
    lab.kubectl(&["delete", "pod", "web", "--wait=true"]);
    lab.down();
}

#[test]
fn restarting_the_agents_keeps_pods_connections_isolation_and_the_nft_ruleset() {
    restart_keeps_everything("nftables");
}

#[test]
fn restarting_the_agents_keeps_pods_connections_isolation_and_the_iptables_ruleset() {
    restart_keeps_everything("iptables");
}

/// Every kubelet killed (SIGKILL) while a burst of pods is starting: once
/// the supervisor has started them again, every pod runs exactly once (no
/// second container for a run the old kubelet started but never recorded,
/// no pod stuck on a half-made sandbox), with no namespace or address left
/// over.
#[test]
fn kubelets_killed_in_the_middle_of_a_burst_leave_every_pod_running_once() {
    let lab = Lab::up("rsk", "vxlan");
    lab.kubectl(&[
        "create",
        "deployment",
        "burst",
        "--image=registry.k8s.io/e2e-test-images/agnhost:2.47",
        "--replicas=60",
        "--",
        "/agnhost",
        "netexec",
        "--http-port=8123",
    ]);
    std::thread::sleep(Duration::from_millis(250));
    let nodes = ["control-plane", "worker", "worker2"].map(|n| format!("{}-{n}", lab.name));
    for node in &nodes {
        kill9(lab.kubelet_pid(node));
    }
    lab.wait_ready("app=burst");
    // Settle: nothing more may start once all are Ready.
    std::thread::sleep(Duration::from_secs(2));
    let pods = lab.get_json(&["pods", "-A"]);
    let items = pods["items"].as_array().unwrap();
    let burst: Vec<_> = items
        .iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "burst")
        .collect();
    assert_eq!(burst.len(), 60);
    for p in &burst {
        assert_eq!(
            p["status"]["containerStatuses"][0]["restartCount"], 0,
            "{}",
            p["metadata"]["name"]
        );
    }
    let running = Command::new("pgrep")
        .args(["-fc", "^[^ ]+ image agnhost netexec --http-port=8123"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&running.stdout).trim(),
        "60",
        "one container process per pod"
    );
    let with_netns = items
        .iter()
        .filter(|p| p["spec"]["hostNetwork"] != true)
        .count();
    let netns = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{}-pod-", lab.name))
        })
        .count();
    assert_eq!(netns, with_netns, "one namespace per pod");
    let mut allocated = 0;
    for node in &nodes {
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(lab.ipam_state(node)).unwrap()).unwrap();
        allocated += state["allocations"].as_array().unwrap().len();
    }
    assert_eq!(allocated, with_netns, "one address per pod");
    lab.down();
}

/// Every node's launcher killed (SIGKILL): pods still start, each helper
/// exec'd by the kubelet instead, and each kubelet's log says why.
#[test]
fn pods_start_after_the_launchers_are_killed() {
    let lab = Lab::up("rsl", "host-gw");
    let nodes = ["control-plane", "worker", "worker2"].map(|n| format!("{}-{n}", lab.name));
    // The launchers are the kubelets' children named on their command line.
    let mut killed = 0;
    for node in &nodes {
        let found = Command::new("pgrep")
            .args([
                "-P",
                &lab.kubelet_pid(node).to_string(),
                "-f",
                "^[^ ]+ launcher ",
            ])
            .output()
            .unwrap();
        for pid in String::from_utf8_lossy(&found.stdout).lines() {
            kill9(pid.parse().unwrap());
            killed += 1;
        }
    }
    assert_eq!(killed, 3, "one launcher per kubelet");
    lab.kubectl(&[
        "create",
        "deployment",
        "after",
        "--image=nginx",
        "--replicas=6",
    ]);
    lab.wait_ready("app=after");
    let pods = lab.get_json(&["pods", "-l", "app=after"]);
    let on: std::collections::BTreeSet<&str> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap())
        .collect();
    for node in &on {
        let log = std::fs::read_to_string(format!(
            "/var/lib/podnet/{}/nodes/{node}/kubelet.log",
            lab.name
        ))
        .unwrap();
        assert!(
            log.contains("the launcher is gone"),
            "{node}'s kubelet did not say why it execs"
        );
    }
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}
