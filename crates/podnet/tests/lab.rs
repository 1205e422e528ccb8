//! The seed's first sections against a real lab, with the real kubectl:
//! every pod its own IP from its node's CIDR, pods reaching each other
//! across nodes without NAT, containers of a pod sharing localhost, logs,
//! exec, attach, deletion and restarts; in both encapsulations. And `podnet
//! down` leaving nothing, even after `kill -9` of every lab process.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::Command;

use support::*;

const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.47";

const TWO_CONTAINERS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: duo
  labels: {app: duo}
spec:
  containers:
  - name: server
    image: registry.k8s.io/e2e-test-images/agnhost:2.47
    args: ["netexec", "--http-port=8080"]
  - name: client
    image: busybox
    command: ["sleep", "3600"]
"#;

fn scenario(encap: &str) {
    let lab = Lab::up(&format!("l{}", &encap[..1]), encap);
    let nodes = lab.nodes();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let cidr_of: HashMap<String, String> = nodes
        .iter()
        .map(|(n, _, c)| (n.clone(), c.clone()))
        .collect();
    let ip_of: HashMap<String, String> = nodes
        .iter()
        .map(|(n, ip, _)| (n.clone(), ip.clone()))
        .collect();
    let cidrs: HashSet<&String> = cidr_of.values().collect();
    assert_eq!(cidrs.len(), 3, "nodes share a pod CIDR: {nodes:?}");

    // kubectl create deployment: distinct IPs from the right node's CIDR,
    // spread over nodes.
    lab.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=3",
    ]);
    lab.wait_ready("app=web");
    let pods = lab.get_json(&["pods", "-l", "app=web"]);
    let mut ips = HashSet::new();
    let mut used_nodes = HashSet::new();
    for p in pods["items"].as_array().unwrap() {
        let ip = p["status"]["podIP"].as_str().unwrap().to_string();
        let node = p["spec"]["nodeName"].as_str().unwrap().to_string();
        assert!(
            in_cidr(&ip, &cidr_of[&node]),
            "{ip} is not in {node}'s {}",
            cidr_of[&node]
        );
        ips.insert(ip);
        used_nodes.insert(node);
    }
    assert_eq!(ips.len(), 3);
    assert!(used_nodes.len() >= 2, "pods did not spread: {used_nodes:?}");
    let wide = lab.kubectl(&["get", "pods", "-o", "wide"]);
    assert!(
        wide.lines().next().unwrap().contains("IP") && wide.contains("NODE"),
        "{wide}"
    );

    // A client and a server on different nodes.
    lab.kubectl(&[
        "run",
        "client",
        "--image=nicolaka/netshoot",
        "--",
        "sleep",
        "infinity",
    ]);
    lab.wait_ready("run=client");
    let (client_ip, client_node) = lab.pod_ip_node("client");
    let server_node = nodes
        .iter()
        .map(|(n, _, _)| n.clone())
        .find(|n| *n != client_node)
        .unwrap();
    lab.run_on(
        "server",
        AGNHOST,
        &server_node,
        &["netexec", "--http-port=8080"],
    );
    lab.wait_ready("run=server");
    let (server_ip, _) = lab.pod_ip_node("server");

    // kubectl exec -it <pod> -- ping -c 3 <pod-ip-on-other-node>
    let ping = lab.kubectl(&[
        "exec", "client", "--", "ping", "-c", "3", "-W", "2", &server_ip,
    ]);
    assert!(ping.contains("3 received"), "{ping}");

    // No NAT: the server sees the client's own pod IP.
    let seen = lab.kubectl(&[
        "exec",
        "client",
        "--",
        "curl",
        "-s",
        "--max-time",
        "5",
        &format!("http://{server_ip}:8080/clientip"),
    ]);
    assert!(
        seen.trim_start_matches("[::ffff:").starts_with(&client_ip),
        "the server saw {seen}, not the client pod {client_ip}"
    );

    // traceroute shows the node hops.
    let trace = lab.kubectl(&[
        "exec",
        "client",
        "--",
        "traceroute",
        "-n",
        "-w",
        "2",
        "-q",
        "1",
        &server_ip,
    ]);
    let hops: Vec<&str> = trace
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let client_gw = first_host(&cidr_of[&client_node]);
    let remote_hop = if encap == "vxlan" {
        cidr_of[&server_node].split('/').next().unwrap().to_string()
    } else {
        ip_of[&server_node].clone()
    };
    assert_eq!(
        hops,
        [client_gw.as_str(), remote_hop.as_str(), server_ip.as_str()],
        "{trace}"
    );

    // BIG TCP where nothing encapsulates: the pod's eth0 builds 192 KiB
    // packets, as the node's uplink carries; VXLAN keeps 64 KiB.
    let link: serde_json::Value = serde_json::from_str(&lab.kubectl(&[
        "exec", "client", "--", "ip", "-d", "-j", "link", "show", "eth0",
    ]))
    .unwrap();
    let want = if encap == "vxlan" { 65536 } else { 196608 };
    assert_eq!(link[0]["gso_max_size"], want, "{link}");
    assert_eq!(link[0]["gro_max_size"], want, "{link}");
    // Every node's eth0 hands what it receives to CPU 0 (RPS), as a NIC's
    // interrupt would, so a cross-node flow runs on two CPUs.
    for node in ip_of.keys() {
        let out = Command::new("ip")
            .args(["netns", "exec", node, "cat"])
            .arg("/sys/class/net/eth0/queues/rx-0/rps_cpus")
            .output()
            .unwrap();
        let mask = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            mask.trim_start_matches(['0', ',']).trim(),
            "1",
            "{node}'s eth0 receive steering: {mask:?}"
        );
    }

    // Containers of a pod share localhost.
    lab.apply(TWO_CONTAINERS);
    lab.wait_ready("app=duo");
    let body = lab.kubectl(&[
        "exec",
        "duo",
        "-c",
        "client",
        "--",
        "wget",
        "-qO-",
        "http://localhost:8080/hostname",
    ]);
    assert_eq!(body.trim(), "duo");

    // kubectl logs shows the server's log of that request.
    let logs = lab.kubectl(&["logs", "duo", "-c", "server"]);
    assert!(logs.contains("GET /hostname"), "{logs}");

    // The seed's admin tip: the CNI pods in kube-system and their logs.
    let system = lab.kubectl(&["get", "pods", "-n", "kube-system"]);
    let agent_pod = lab.agent_pod(&client_node);
    assert!(system.contains(&agent_pod), "{system}");
    let agent_log = lab.kubectl(&["logs", "-n", "kube-system", &agent_pod]);
    assert!(agent_log.contains("podnet agent starting"), "{agent_log}");

    // exec exit codes.
    let out = lab.kubectl_raw(&["exec", "client", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));

    // kubectl run -i --rm attaches, passes stdin, and deletes the pod.
    let mut child = std::process::Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(&lab.kubeconfig)
        .args([
            "run",
            "tmp",
            "-i",
            "--rm",
            "--image=busybox",
            "--restart=Never",
            "--",
            "sh",
            "-c",
            "read x; echo got:$x",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"typed\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("got:typed"), "{text}");
    assert!(
        !lab.kubectl(&["get", "pods", "-o", "name"])
            .contains("pod/tmp\n")
    );

    // kubectl delete pod: process, address and sandbox are gone.
    let uid = lab.get_json(&["pod", "server"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let sandbox = format!("{}-pod-{}", lab.name, &uid[..13]);
    assert!(
        pod_namespaces(&lab.name).contains(&sandbox),
        "no sandbox {sandbox}"
    );
    let pid_file = format!(
        "/var/lib/podnet/{}/nodes/{server_node}/pods/{uid}/server.pid",
        lab.name
    );
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{pid_file}: {e}"))
        .trim()
        .to_string();
    let cmdline = |pid: &str| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default()
    };
    // The container shows its own command line, not its shim's.
    assert!(
        cmdline(&pid).contains(" image agnhost netexec --http-port=8080")
            && !cmdline(&pid).contains(" shim "),
        "server's process {pid}: {:?}",
        cmdline(&pid)
    );
    lab.kubectl(&["delete", "pod", "server"]);
    assert!(
        !pod_namespaces(&lab.name).contains(&sandbox),
        "the sandbox outlived the pod"
    );
    let state = std::fs::read_to_string(lab.ipam_state(&server_node)).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let held: Vec<&str> = state["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["ip"].as_str().unwrap())
        .collect();
    assert!(
        !held.contains(&server_ip.as_str()),
        "{server_ip} still allocated: {held:?}"
    );
    assert!(
        !cmdline(&pid).contains(" image agnhost netexec"),
        "the deleted server's process {pid} is still running"
    );

    // A crashed container restarts.
    lab.kubectl(&[
        "run",
        "crash",
        "--image=busybox",
        "--",
        "sh",
        "-c",
        "sleep 0.5; exit 1",
    ]);
    let mut restarts = 0;
    for _ in 0..100 {
        let p = lab.get_json(&["pod", "crash"]);
        restarts = p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0);
        if restarts >= 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(restarts >= 1, "the crashed container was not restarted");

    // Lab traffic never crosses the host's interfaces: 2,000 packets
    // between pods on two nodes move the host's counters by far less.
    let before = host_packets();
    lab.kubectl(&[
        "exec",
        "client",
        "--",
        "ping",
        "-f",
        "-c",
        "2000",
        "-q",
        pods["items"][0]["status"]["podIP"].as_str().unwrap(),
    ]);
    let moved = host_packets() - before;
    assert!(
        moved < 200,
        "host interfaces moved {moved} packets during lab traffic"
    );
}

fn first_host(cidr: &str) -> String {
    let net: std::net::Ipv4Addr = cidr.split('/').next().unwrap().parse().unwrap();
    std::net::Ipv4Addr::from(u32::from(net) + 1).to_string()
}

fn pod_namespaces(lab: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{lab}-pod-")))
        .collect()
}

#[test]
fn seed_sections_one_and_two_over_vxlan() {
    scenario("vxlan");
}

#[test]
fn seed_sections_one_and_two_over_host_gw() {
    scenario("host-gw");
}

#[test]
fn down_leaves_nothing_even_after_kill_9() {
    let before = host_traces(&format!("lk{}", std::process::id() % 10000));
    assert!(before.is_empty(), "traces of an earlier run: {before:#?}");
    let lab = Lab::up("lk", "vxlan");
    let name = lab.name.clone();
    lab.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=2",
    ]);
    lab.wait_ready("app=web");
    assert!(
        !host_traces(&name).is_empty(),
        "a running lab must be visible"
    );
    // kill -9 every process of the lab.
    for t in host_traces(&name) {
        if let Some(rest) = t.strip_prefix("process ")
            && let Some(pid) = rest
                .split_whitespace()
                .next()
                .and_then(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let out = lab.down();
    assert!(out.status.success());
    let left = host_traces(&name);
    assert!(left.is_empty(), "podnet down left: {left:#?}");
    // A normal up and down of the same name also leaves nothing.
    drop(lab);
    let lab2 = Lab::up("lk", "host-gw");
    let out = lab2.down();
    assert!(out.status.success());
    assert!(
        host_traces(&lab2.name).is_empty(),
        "{:#?}",
        host_traces(&lab2.name)
    );
}

#[test]
fn kubectl_expose_gives_a_cluster_ip_that_reaches_the_pod_across_nodes() {
    services_and_dns(&Lab::up("ls", "vxlan"));
}

#[test]
fn the_same_with_the_iptables_proxy_and_kube_chains_for_the_seed() {
    let lab = Lab::up_with("li", "host-gw", &["--proxy-mode", "iptables"]);
    services_and_dns(&lab);
    // The seed's "Verify IP Tables Rules" (iptables -t nat -L -n | grep
    // KUBE), inside a node: that is where a node's rules are.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &format!("{}-worker", lab.name)])
        .args(["iptables", "-t", "nat", "-L", "-n"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&out.stdout);
    for chain in [
        "KUBE-SERVICES",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
        "KUBE-SVC-",
        "KUBE-SEP-",
    ] {
        assert!(rules.contains(chain), "no {chain} in\n{rules}");
    }
}

fn services_and_dns(lab: &Lab) {
    let nodes = lab.nodes();
    lab.run_on(
        "mypod",
        AGNHOST,
        &nodes[1].0,
        &["netexec", "--http-port=8080"],
    );
    lab.run_on(
        "other",
        "nicolaka/netshoot",
        &nodes[2].0,
        &["sleep", "infinity"],
    );
    lab.wait_ready("run in (mypod,other)");
    // The seed: kubectl expose pod mypod --port=80 --target-port=8080 --name=mypod-svc
    lab.kubectl(&[
        "expose",
        "pod",
        "mypod",
        "--port=80",
        "--target-port=8080",
        "--name=mypod-svc",
    ]);
    let table = lab.kubectl(&["get", "svc", "mypod-svc"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    let ip = lab.get_json(&["svc", "mypod-svc"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(table.contains(&ip) && table.contains("80/TCP"), "{table}");
    let mut body = String::new();
    for _ in 0..50 {
        let out = lab.kubectl_raw(&[
            "exec",
            "other",
            "--",
            "curl",
            "-s",
            "--max-time",
            "2",
            &format!("http://{ip}/hostname"),
        ]);
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        if body == "mypod" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(body, "mypod", "the ClusterIP did not reach mypod");
    // Cluster DNS: the seed's nslookup, the service's names, a pod name.
    let dns = lab.get_json(&["pods", "-n", "kube-system", "-l", "k8s-app=kube-dns"]);
    assert_eq!(
        dns["items"].as_array().unwrap().len(),
        2,
        "two DNS replicas"
    );
    lab.wait_ready_in("kube-system", "k8s-app=kube-dns");
    let ns = lab.kubectl(&["exec", "other", "--", "nslookup", "kubernetes.default"]);
    assert!(ns.contains("Address: 10.96.0.1"), "{ns}");
    // BusyBox's own nslookup too: it sends `kubernetes.default` without the
    // search path (BusyBox 1.29 and later), which the cluster DNS answers.
    let ns = lab.kubectl(&[
        "exec",
        "other",
        "--",
        "busybox",
        "nslookup",
        "kubernetes.default",
    ]);
    assert!(ns.contains("Address: 10.96.0.1"), "busybox nslookup: {ns}");
    for name in ["mypod-svc.default.svc.cluster.local", "mypod-svc"] {
        let body = lab.kubectl(&[
            "exec",
            "other",
            "--",
            "curl",
            "-s",
            "--max-time",
            "3",
            &format!("http://{name}/hostname"),
        ]);
        assert_eq!(body, "mypod", "curl {name}");
    }
    let (mypod_ip, _) = lab.pod_ip_node("mypod");
    let dashed = format!("{}.default.pod", mypod_ip.replace('.', "-"));
    let ping = lab.kubectl(&["exec", "other", "--", "ping", "-c", "1", "-W", "2", &dashed]);
    assert!(ping.contains("1 received"), "{ping}");

    // kubernetes.default (10.96.0.1:443) reaches the API server from a pod.
    let version = lab.kubectl(&[
        "exec",
        "other",
        "--",
        "curl",
        "-sk",
        "--max-time",
        "5",
        "https://10.96.0.1:443/version",
    ]);
    assert!(version.contains("gitVersion"), "{version}");
}

const DENY_ALL: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
  namespace: default
spec:
  podSelector: {}
  policyTypes: ["Ingress"]
"#;

/// Whether `client` reaches `url` within `tries` tenths of a second,
/// polling (`want` says which outcome is awaited).
fn reaches(lab: &Lab, client: &str, url: &str, want: bool, tries: usize) -> bool {
    for _ in 0..tries {
        let out = lab.kubectl_raw(&["exec", client, "--", "curl", "-s", "--max-time", "1", url]);
        if out.status.success() == want {
            return want;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    !want
}

#[test]
fn networkpolicy_isolates_and_deleting_it_restores_traffic() {
    let lab = Lab::up("lp", "host-gw");
    let nodes = lab.nodes();
    lab.run_on(
        "web",
        AGNHOST,
        &nodes[1].0,
        &["netexec", "--http-port=8080"],
    );
    // Every pod serves, so every cell of the truth table means something.
    lab.run_on(
        "probe",
        AGNHOST,
        &nodes[2].0,
        &["netexec", "--http-port=8080"],
    );
    lab.wait_ready("run in (web,probe)");
    let (ip, _) = lab.pod_ip_node("web");
    let url = format!("http://{ip}:8080/hostname");
    assert!(
        reaches(&lab, "probe", &url, true, 30),
        "open before any policy"
    );

    lab.apply(DENY_ALL);
    assert!(
        !reaches(&lab, "probe", &url, false, 20),
        "deny-all did not isolate within 2 s"
    );
    let listed = lab.kubectl(&["get", "networkpolicy", "-A"]);
    let header: Vec<&str> = listed.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAMESPACE", "NAME", "POD-SELECTOR", "AGE"]);
    assert!(listed.contains("deny-all"), "{listed}");
    let described = lab.kubectl(&["describe", "networkpolicy", "deny-all"]);
    assert!(described.contains("deny-all"), "{described}");

    // The truth table: probed with real connections, held against the
    // model (the planner that programs the kernel).
    let out = std::process::Command::new(podnet())
        .args(["connectivity", "--expect", "-o", "json", "--ports", "8080"])
        .arg("--kubeconfig")
        .arg(&lab.kubeconfig)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(
        v["mismatches"],
        serde_json::json!([]),
        "kernel and model disagree: {v}"
    );
    assert!(out.status.success());
    let pods: Vec<String> = v["probed"]["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let (f, t) = (
        pods.iter().position(|p| p == "probe").unwrap(),
        pods.iter().position(|p| p == "web").unwrap(),
    );
    let cell = v["probed"]["cells"][f * pods.len() + t].as_bool().unwrap();
    assert!(!cell, "probe -> web must be denied under deny-all");

    // The seed's troubleshooting step: delete the policy, traffic flows.
    lab.kubectl(&["delete", "networkpolicy", "deny-all"]);
    assert!(
        reaches(&lab, "probe", &url, true, 10),
        "traffic did not come back within 1 s"
    );
}

#[test]
fn a_service_spreads_sticks_with_affinity_and_refuses_at_once_when_empty() {
    spread_affinity_and_empty(Lab::up("lw", "vxlan"));
}

#[test]
fn the_same_spread_affinity_and_refusal_with_the_iptables_proxy() {
    spread_affinity_and_empty(Lab::up_with("lwi", "vxlan", &["--proxy-mode", "iptables"]));
}

/// 300 requests reach every endpoint, ClientIP affinity sticks, a service
/// scaled to zero refuses at once and answers again within 1 s of scaling
/// back.
fn spread_affinity_and_empty(lab: Lab) {
    lab.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=registry.k8s.io/e2e-test-images/agnhost:2.47",
        "--replicas=3",
        "--",
        "/agnhost",
        "netexec",
        "--http-port=8080",
    ]);
    lab.kubectl(&[
        "run",
        "client",
        "--image=nicolaka/netshoot",
        "--",
        "sleep",
        "infinity",
    ]);
    lab.wait_ready("app=web");
    lab.wait_ready("run=client");
    lab.kubectl(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
    ]);
    let ip = lab.get_json(&["svc", "web"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    let burst = |n: usize| -> Vec<String> {
        let script = format!(
            "for i in $(seq {n}); do curl -s --max-time 2 http://{ip}/hostname; echo; done"
        );
        lab.kubectl(&["exec", "client", "--", "sh", "-c", &script])
            .lines()
            .map(String::from)
            .collect()
    };
    // Wait for the service to answer, then 300 requests reach every endpoint.
    for _ in 0..50 {
        if burst(1).first().is_some_and(|l| l.starts_with("web-")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for l in burst(300) {
        *counts.entry(l).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|&c| c >= 60),
        "each endpoint needs 20%: {counts:?}"
    );

    // Scaled to zero: refused at once (curl exit 7), never a hang.
    lab.kubectl(&["scale", "deployment", "web", "--replicas=0"]);
    let mut refused = false;
    for _ in 0..50 {
        let out = lab.kubectl_raw(&[
            "exec",
            "client",
            "--",
            "curl",
            "-s",
            "--max-time",
            "3",
            &format!("http://{ip}/"),
        ]);
        if out.status.code() == Some(7) {
            refused = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(refused, "an empty service must refuse at once");
    // Back to three: answering again.
    lab.kubectl(&["scale", "deployment", "web", "--replicas=3"]);
    lab.wait_ready("app=web");
    let mut back = false;
    for _ in 0..20 {
        if burst(1).first().is_some_and(|l| l.starts_with("web-")) {
            back = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        back,
        "the service did not answer within 1 s of its endpoint being Ready"
    );

    // Affinity last: stale affinity entries across a scale-down are a known
    // proxy bug (issue #5's note), not exercised here.
    // ClientIP affinity: every request reaches one endpoint.
    lab.kubectl(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"sessionAffinity":"ClientIP"}}"#,
    ]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let sticky: HashSet<String> = burst(50).into_iter().collect();
    assert_eq!(sticky.len(), 1, "{sticky:?}");
}
