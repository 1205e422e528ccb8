//! `podnet doctor` and `podnet trace` on a real lab with the real kubectl:
//! a healthy lab is all ✔ (exit 0); then faults of issue 14 are injected
//! one at a time, each found by doctor (✘ naming the cause and the fix,
//! exit 1), pointed at by trace where it lies on a path, undone, and
//! doctor is green again. Last, trace with `--probe` against the kernel
//! for every cell of an x/y × a/b NetworkPolicy truth table. The ≤ 5 s
//! goal of doctor is bench/doctor/run's business, not a test's.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Lab, podnet};

const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.47";

/// Runs `podnet <args>` against the lab; (exit code, stdout).
fn pn(lab: &Lab, args: &[&str]) -> (i32, String) {
    let out = Command::new(podnet())
        .args(args)
        .arg("--kubeconfig")
        .arg(&lab.kubeconfig)
        .args(["--name", &lab.name])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code().is_some(),
        "podnet {args:?} died: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.code() != Some(0) && out.status.code() != Some(1) || stdout.is_empty() {
        panic!(
            "podnet {args:?} failed to run ({:?}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (out.status.code().unwrap(), stdout)
}

/// Doctor must be green: exit 0 and no ✘.
fn green(lab: &Lab, args: &[&str]) {
    let mut a = vec!["doctor"];
    a.extend_from_slice(args);
    let (code, out) = pn(lab, &a);
    assert!(
        code == 0 && !out.contains('✘'),
        "doctor {args:?} not green:\n{out}"
    );
}

/// Doctor must fail, with a ✘ line containing every one of `want` and a
/// fix after it.
fn finds(lab: &Lab, args: &[&str], want: &[&str]) -> String {
    let mut a = vec!["doctor"];
    a.extend_from_slice(args);
    let (code, out) = pn(lab, &a);
    assert_eq!(code, 1, "doctor {args:?} should fail:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    let hit = lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.starts_with('✘') && want.iter().all(|w| l.contains(w)));
    let Some((i, _)) = hit else {
        panic!("doctor {args:?}: no ✘ line with {want:?}:\n{out}");
    };
    assert!(
        lines
            .get(i + 1)
            .is_some_and(|l| l.trim_start().starts_with("fix: ")),
        "doctor {args:?}: the ✘ line has no fix:\n{out}"
    );
    out
}

fn netns(ns: &str, argv: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip netns exec {ns} {argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `cond` holds (polling the cluster, never a fixed sleep).
fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn agents_on(lab: &Lab, node: &str) -> usize {
    let v = lab.get_json(&[
        "pods",
        "-n",
        "kube-system",
        "-l",
        "k8s-app=podnet",
        "--field-selector",
        &format!("spec.nodeName={node}"),
    ]);
    v["items"].as_array().unwrap().len()
}

fn wait_agents_ready(lab: &Lab) {
    let nodes = lab.nodes().len();
    until("every agent Ready", || {
        let v = lab.get_json(&["pods", "-n", "kube-system", "-l", "k8s-app=podnet"]);
        let items = v["items"].as_array().unwrap();
        items.len() == nodes
            && items.iter().all(|p| {
                p["metadata"]["deletionTimestamp"].is_null()
                    && p["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
    });
}

fn pod_netns(lab: &Lab, ns: &str, pod: &str) -> String {
    let uid = lab.get_json(&["pod", "-n", ns, pod])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    format!("{}-pod-{}", lab.name, &uid[..13])
}

#[test]
fn doctor_finds_faults_and_trace_points_at_the_hop() {
    let lab = Lab::up("pndoc", "vxlan");
    let nodes = lab.nodes();
    let worker = nodes
        .iter()
        .find(|n| n.0.ends_with("-worker"))
        .unwrap()
        .clone();
    let worker2 = nodes
        .iter()
        .find(|n| n.0.ends_with("-worker2"))
        .unwrap()
        .clone();
    lab.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec:
  nodeName: {w2}
  containers:
    - name: web
      image: nginx
      ports: [{{name: http, containerPort: 80}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, labels: {{app: client}}}}
spec:
  nodeName: {w1}
  containers:
    - name: client
      image: busybox
      command: ["sleep", "36000"]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: http}}]
"#,
        w1 = worker.0,
        w2 = worker2.0
    ));
    lab.wait_ready("app in (web,client)");
    lab.wait_ready_in("kube-system", "k8s-app=kube-dns");
    wait_agents_ready(&lab);
    until("web's endpoint", || {
        let v = lab.get_json(&["endpointslices", "-l", "kubernetes.io/service-name=web"]);
        v["items"][0]["endpoints"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["conditions"]["ready"] == true))
    });

    // Healthy: the cluster, the path, a DNS name, and as a kubectl plugin.
    green(&lab, &[]);
    green(&lab, &["--from", "client", "--to", "web:80"]);
    green(
        &lab,
        &["--from", "client", "--to", "web.default.svc.cluster.local"],
    );
    let (code, out) = pn(&lab, &["trace", "client", "web:80"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("open: no NetworkPolicy isolates"), "{out}");
    let plugdir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(podnet(), plugdir.path().join("kubectl-podnet")).unwrap();
    let out = Command::new(support::KUBECTL)
        .args(["podnet", "doctor", "--name", &lab.name])
        .env("KUBECONFIG", &lab.kubeconfig)
        .env(
            "PATH",
            format!(
                "{}:{}",
                plugdir.path().display(),
                std::env::var("PATH").unwrap()
            ),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("0 failed"),
        "kubectl podnet doctor: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (w1, w2) = (worker.0.as_str(), worker2.0.as_str());
    let cidr2 = worker2.2.clone();
    let vtep2 = cidr2.split('/').next().unwrap().to_string();

    // 1. A route to another node's pods deleted (checked at once: the
    //    agent may heal it). trace points at the route hop.
    netns(w1, &["ip", "route", "del", &cidr2]);
    finds(
        &lab,
        &[],
        &["routes", &format!("{w1} → {w2}'s pods"), "missing route"],
    );
    let (code, out) = pn(&lab, &["trace", "client", "web:80"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l.contains("✘ route")),
        "trace should point at the route:\n{out}"
    );
    netns(
        w1,
        &[
            "ip", "route", "replace", &cidr2, "via", &vtep2, "dev", "podnet.1", "onlink",
        ],
    );
    green(&lab, &[]);

    // 2. The FDB entry of the VXLAN peer deleted.
    let mac = format!(
        "0e:70:{}",
        worker2
            .1
            .split('.')
            .map(|o| format!("{:02x}", o.parse::<u8>().unwrap()))
            .collect::<Vec<_>>()
            .join(":")
    );
    netns(
        w1,
        &["bridge", "fdb", "del", &mac, "dev", "podnet.1", "self"],
    );
    finds(&lab, &[], &["routes", "missing FDB entry", &mac]);
    netns(
        w1,
        &[
            "bridge",
            "fdb",
            "replace",
            &mac,
            "dev",
            "podnet.1",
            "dst",
            &worker2.1,
            "self",
            "permanent",
        ],
    );
    green(&lab, &[]);

    // 3. The proxy ruleset flushed on one node.
    netns(w1, &["nft", "flush", "table", "ip", "podnet-proxy"]);
    finds(
        &lab,
        &[],
        &["proxy", &format!("{w1} ruleset"), "drifted from the plan"],
    );
    finds(
        &lab,
        &["--from", "client", "--to", "web:80"],
        &["proxy", "drifted"],
    );
    lab.kubectl(&["-n", "kube-system", "delete", "pod", &lab.agent_pod(w1)]);
    wait_agents_ready(&lab);
    until("the proxy reloaded", || pn(&lab, &["doctor"]).0 == 0);
    green(&lab, &[]);

    // 4. An MTU mismatch: the client's eth0 larger than the overlay.
    let client_ns = pod_netns(&lab, "default", "client");
    netns(&client_ns, &["ip", "link", "set", "eth0", "mtu", "1500"]);
    finds(&lab, &[], &["mtu", "default/client eth0 1500"]);
    finds(
        &lab,
        &["--from", "client", "--to", "web:80"],
        &["mtu", "larger than the overlay"],
    );
    netns(&client_ns, &["ip", "link", "set", "eth0", "mtu", "1450"]);
    green(&lab, &[]);

    // 5. A stale UDP conntrack entry to an endpoint that is gone.
    let (client_ip, _) = lab.pod_ip_node("client");
    netns(
        w1,
        &[
            "conntrack",
            "-I",
            "-p",
            "udp",
            "-s",
            &client_ip,
            "-d",
            "10.96.0.10",
            "--sport",
            "33333",
            "--dport",
            "53",
            "-r",
            "10.244.250.9",
            "-q",
            &client_ip,
            "--reply-port-src",
            "53",
            "--reply-port-dst",
            "33333",
            "-t",
            "300",
            "-u",
            "SEEN_REPLY",
        ],
    );
    finds(&lab, &[], &["conntrack", "10.244.250.9"]);
    netns(
        w1,
        &[
            "conntrack",
            "-D",
            "-p",
            "udp",
            "--orig-dst",
            "10.96.0.10",
            "--orig-port-dst",
            "53",
            "--reply-src",
            "10.244.250.9",
        ],
    );
    green(&lab, &[]);

    // 6. A service selector typo: no endpoints; the differing label named.
    lab.kubectl(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"selector":{"app":"webb"}}}"#,
    ]);
    finds(
        &lab,
        &["--from", "client", "--to", "web:80"],
        &["service", "matches none", "app=web, not app=webb"],
    );
    let (code, out) = pn(&lab, &["trace", "client", "web:80"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("✘ service") && out.contains("no endpoints"),
        "trace should point at the service:\n{out}"
    );
    lab.kubectl(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"selector":{"app":"web"}}}"#,
    ]);
    until("web's endpoint back", || {
        pn(&lab, &["doctor", "--from", "client", "--to", "web:80"]).0 == 0
    });

    // 7. A wrong targetPort, then a named port the pods lack.
    lab.kubectl(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"ports":[{"port":80,"targetPort":8080}]}}"#,
    ]);
    finds(
        &lab,
        &["--from", "client", "--to", "web:80"],
        &["targetPort 8080", "does not declare 8080/TCP"],
    );
    lab.kubectl(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"ports":[{"port":80,"targetPort":"htp"}]}}"#,
    ]);
    finds(
        &lab,
        &["--from", "client", "--to", "web:80"],
        &["targetPort htp", "no container port named \"htp\""],
    );
    lab.kubectl(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"ports":[{"port":80,"targetPort":"http"}]}}"#,
    ]);
    until("web's endpoint back", || {
        pn(&lab, &["doctor", "--from", "client", "--to", "web:80"]).0 == 0
    });

    // 8. A deny-all policy: doctor and trace name it.
    lab.apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n");
    finds(
        &lab,
        &["--from", "client", "--to", "web:80"],
        &[
            "policy",
            "isolated by default/deny-all; no rule admits default/client:80/TCP",
        ],
    );
    let (code, out) = pn(&lab, &["trace", "client", "web:80", "--probe"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("✘ ingress")
            && out.contains("isolated by default/deny-all")
            && out.contains("verdict: DENIED at ingress (default/deny-all)"),
        "{out}"
    );
    assert!(out.contains("the kernel agrees with the plan"), "{out}");

    // 9. ... with an allow policy whose selector has a typo.
    lab.apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-web}\nspec:\n  podSelector: {matchLabels: {app: wbe}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]\n");
    finds(
        &lab,
        &["--from", "client", "--to", "web:80"],
        &[
            "policy",
            "default/allow-web selects no pod (podSelector app=wbe)",
        ],
    );
    lab.kubectl(&[
        "patch",
        "networkpolicy",
        "allow-web",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"podSelector":{"matchLabels":{"app":"web"}}}}"#,
    ]);
    let (code, out) = pn(&lab, &["trace", "client", "web:80", "--probe"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("admitted by default/allow-web (ingress[0])"),
        "{out}"
    );
    lab.kubectl(&["delete", "networkpolicy", "deny-all", "allow-web"]);
    until("policy gone", || {
        pn(&lab, &["doctor", "--from", "client", "--to", "web:80"]).0 == 0
    });

    // 10. DNS scaled to 0.
    lab.kubectl(&[
        "-n",
        "kube-system",
        "scale",
        "deployment",
        "coredns",
        "--replicas=0",
    ]);
    until("DNS pods gone", || {
        lab.get_json(&["pods", "-n", "kube-system", "-l", "k8s-app=kube-dns"])["items"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    finds(
        &lab,
        &[],
        &["dns", "kube-system/kube-dns", "no ready endpoints"],
    );
    finds(
        &lab,
        &[
            "--from",
            "client",
            "--to",
            "kubernetes.default.svc.cluster.local",
        ],
        &["dns", "no ready endpoints"],
    );
    lab.kubectl(&[
        "-n",
        "kube-system",
        "scale",
        "deployment",
        "coredns",
        "--replicas=2",
    ]);
    until("DNS back", || {
        let v = lab.get_json(&["pods", "-n", "kube-system", "-l", "k8s-app=kube-dns"]);
        v["items"].as_array().unwrap().len() == 2
    });
    lab.wait_ready_in("kube-system", "k8s-app=kube-dns");
    until("DNS green", || pn(&lab, &["doctor"]).0 == 0);

    // 11. DNS pods Running but not answering (stopped processes).
    let dns_pods: Vec<String> =
        lab.get_json(&["pods", "-n", "kube-system", "-l", "k8s-app=kube-dns"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
    let mut stopped = Vec::new();
    for p in &dns_pods {
        let ns = pod_netns(&lab, "kube-system", p);
        for pid in String::from_utf8_lossy(
            &Command::new("ip")
                .args(["netns", "pids", &ns])
                .output()
                .unwrap()
                .stdout,
        )
        .lines()
        {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let cmd =
                    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if cmd.contains("podnet-dns") {
                    nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGSTOP,
                    )
                    .unwrap();
                    stopped.push(pid);
                }
            }
        }
    }
    assert!(!stopped.is_empty(), "no podnet-dns process found");
    finds(&lab, &[], &["dns", "does not answer"]);
    for pid in stopped {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGCONT,
        )
        .unwrap();
    }
    until("DNS answers again", || pn(&lab, &["doctor"]).0 == 0);

    // 12a. A dead upstream DNS: forwarding on, to an address on the
    //      underlay where nothing answers (the packets stay in the lab).
    let set_dns = |no_forward: &str, upstream: &str| {
        lab.kubectl(&["-n", "kube-system", "patch", "configmap", "podnet-config", "--type", "merge", "-p", &format!(
            r#"{{"data":{{"PODNET_DNS_NO_FORWARD":"{no_forward}","PODNET_DNS_UPSTREAM":"{upstream}"}}}}"#
        )]);
        lab.kubectl(&[
            "-n",
            "kube-system",
            "rollout",
            "restart",
            "deployment",
            "coredns",
        ]);
        lab.kubectl(&[
            "-n",
            "kube-system",
            "rollout",
            "status",
            "deployment",
            "coredns",
            "--timeout=90s",
        ]);
    };
    set_dns("false", "172.18.0.250");
    until("the DNS pods forward to the dead upstream", || {
        let (_, out) = pn(&lab, &["doctor"]);
        out.lines()
            .any(|l| l.starts_with('✘') && l.contains("upstream"))
    });
    finds(&lab, &[], &["dns", "upstream", "172.18.0.250"]);
    set_dns("true", "");
    until("DNS forwarding off again", || pn(&lab, &["doctor"]).0 == 0);

    // 12. The agent stopped on a node (the DaemonSet no longer admits it),
    //     and that node's conflist removed meanwhile (a running agent
    //     would write it again within 2 s).
    lab.kubectl(&["-n", "kube-system", "patch", "ds", "podnet", "--type", "merge", "-p", &format!(
        r#"{{"spec":{{"template":{{"spec":{{"affinity":{{"nodeAffinity":{{"requiredDuringSchedulingIgnoredDuringExecution":{{"nodeSelectorTerms":[{{"matchFields":[{{"key":"metadata.name","operator":"NotIn","values":["{w2}"]}}]}}]}}}}}}}}}}}}}}"#
    )]);
    until("the agent on worker2 gone", || agents_on(&lab, w2) == 0);
    finds(&lab, &[], &["agents", w2, "no podnet agent pod"]);
    let conflist = format!(
        "/var/lib/podnet/{}/nodes/{w2}/root/etc/cni/net.d/10-podnet.conflist",
        lab.name
    );
    let saved = std::fs::read(&conflist).unwrap();
    std::fs::remove_file(&conflist).unwrap();
    finds(&lab, &[], &["cni", &format!("{w2} conflist"), "is missing"]);
    std::fs::write(&conflist, saved).unwrap();
    lab.kubectl(&[
        "-n",
        "kube-system",
        "patch",
        "ds",
        "podnet",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/spec/template/spec/affinity"}]"#,
    ]);
    until("the agent on worker2 back", || agents_on(&lab, w2) == 1);
    wait_agents_ready(&lab);
    until("green after the agent", || pn(&lab, &["doctor"]).0 == 0);
    green(&lab, &["--from", "client", "--to", "web:80"]);
}

/// x/a, x/b, y/a, y/b serving TCP 80; x/a admits only y/b on 80; y/a may
/// send nothing. Every cell traced with `--probe`: the verdict and the
/// deciding policy agree with the kernel.
#[test]
fn trace_agrees_with_the_kernel_on_a_truth_table() {
    let lab = Lab::up("pntt", "vxlan");
    let nodes = lab.nodes();
    let mut yaml = String::new();
    for (i, ns) in ["x", "y"].iter().enumerate() {
        yaml.push_str(&format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: \"{ns}\", labels: {{ns: \"{ns}\"}}}}\n---\n"));
        for (j, p) in ["a", "b"].iter().enumerate() {
            let node = &nodes[(i * 2 + j) % nodes.len()].0;
            yaml.push_str(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {p}, namespace: \"{ns}\", labels: {{pod: {p}}}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: serve, image: \"{AGNHOST}\", command: [/agnhost, netexec, --http-port=80, --udp-port=80]}}]\n---\n"
            ));
        }
    }
    yaml.push_str("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-yb, namespace: \"x\"}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}, podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]\n---\n");
    yaml.push_str("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-egress-a, namespace: \"y\"}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: []\n");
    lab.apply(&yaml);
    lab.wait_ready_in("x", "pod");
    lab.wait_ready_in("y", "pod");
    let pods = ["x/a", "x/b", "y/a", "y/b"];
    // The policies reach every agent: doctor's view of the path agrees
    // with a real connection before the table is traced.
    until("policy programmed", || {
        pn(&lab, &["trace", "y/b", "x/a:80", "--probe"]).0 == 0
            && pn(&lab, &["trace", "x/b", "x/a:80", "--probe"]).0 == 1
            && pn(&lab, &["trace", "y/a", "y/b:80", "--probe"]).0 == 1
    });
    let mut wrong = Vec::new();
    for from in pods {
        for to in pods {
            if from == to {
                continue;
            }
            let (want_allowed, want_at, want_deciding): (bool, Option<&str>, Vec<&str>) =
                if from == "y/a" {
                    (false, Some("egress"), vec!["y/deny-egress-a"])
                } else if to == "x/a" {
                    if from == "y/b" {
                        (true, None, vec!["x/allow-yb"])
                    } else {
                        (false, Some("ingress"), vec!["x/allow-yb"])
                    }
                } else {
                    (true, None, vec![])
                };
            let target = format!("{to}:80/tcp");
            let (_, out) = pn(&lab, &["trace", from, &target, "--probe", "-o", "json"]);
            let v: Value = serde_json::from_str(&out).unwrap();
            let allowed = v["allowed"].as_bool().unwrap();
            let connected = v["probe"]["connected"].as_bool().unwrap();
            let deciding: Vec<&str> = v["deciding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap())
                .collect();
            let refused_at = v["probe"]["refused_at"]["direction"].as_str();
            let ok = allowed == want_allowed
                && connected == want_allowed
                && v["denied_at"].as_str() == want_at
                && deciding == want_deciding
                && refused_at == want_at;
            if !ok {
                wrong.push(format!("{from} → {to}: plan allowed={allowed} denied_at={} deciding={deciding:?}; kernel connected={connected} refused_at={refused_at:?}; want allowed={want_allowed} at={want_at:?} deciding={want_deciding:?}", v["denied_at"]));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "trace and kernel disagree:\n{}",
        wrong.join("\n")
    );
}
