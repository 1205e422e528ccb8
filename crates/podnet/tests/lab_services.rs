//! Services in the lab, with the real kubectl and curl, for both proxy
//! backends (issue #5): NodePorts on every node's InternalIP (also a node
//! without an endpoint), `externalTrafficPolicy: Local` keeping the
//! client's address and refusing where no endpoint is local, and a steady
//! stream of requests through 100 endpoint changes without one failure.
//! (`kubernetes.default` from a pod is covered by `lab.rs`'s
//! `services_and_dns`, for both backends.)

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use support::*;

const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.47";

#[test]
fn nftables_proxy_serves_node_ports_and_survives_endpoint_churn() {
    let lab = Lab::up("sn", "vxlan");
    node_ports(&lab);
    host_ports(&lab);
    churn(&lab);
}

#[test]
fn iptables_proxy_serves_node_ports_and_survives_endpoint_churn() {
    let lab = Lab::up_with("si", "host-gw", &["--proxy-mode", "iptables"]);
    node_ports(&lab);
    host_ports(&lab);
    churn(&lab);
}

/// The node's network namespace (`<lab>-<node>` for kind's node names,
/// which already start with the lab's name).
fn node_ns(node: &str) -> String {
    node.to_string()
}

/// Runs `args` inside node `node`'s network namespace.
fn in_node(node: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &node_ns(node)])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip netns exec (iproute2): {e}"))
}

/// One `curl` from node `from` to `url`: exit code and body.
fn curl_from(from: &str, url: &str) -> (Option<i32>, String) {
    let out = in_node(
        from,
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            "--connect-timeout",
            "2",
            url,
        ],
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Polls `url` from node `from` until it answers `want` (up to ~5 s),
/// returning the last answer.
fn await_body(from: &str, url: &str, want: impl Fn(&str) -> bool) -> (Option<i32>, String) {
    let mut last = (None, String::new());
    for _ in 0..50 {
        last = curl_from(from, url);
        if want(&last.1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

fn node_ports(lab: &Lab) {
    let nodes = lab.nodes();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    // The only endpoint runs on the first worker; the control-plane node
    // and the second worker have none.
    let (with_ep, with_ep_ip) = (nodes[1].0.clone(), nodes[1].1.clone());
    lab.run_on("np", AGNHOST, &with_ep, &["netexec", "--http-port=8080"]);
    lab.wait_ready("run=np");
    lab.kubectl(&[
        "expose",
        "pod",
        "np",
        "--type=NodePort",
        "--port=80",
        "--target-port=8080",
        "--name=np",
    ]);
    let svc = lab.get_json(&["svc", "np"]);
    let node_port = svc["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .expect("a NodePort was allocated");

    // Cluster policy: every node's InternalIP answers, asked from another
    // node's namespace, the endpoint's own node included.
    for (i, (target, ip, _)) in nodes.iter().enumerate() {
        let from = &nodes[(i + 1) % nodes.len()].0;
        let url = format!("http://{ip}:{node_port}/hostname");
        let (code, body) = await_body(from, &url, |b| b == "np");
        assert_eq!(
            body, "np",
            "NodePort on {target} ({url}) from {from}: curl exit {code:?}"
        );
    }

    // externalTrafficPolicy: Local — the pod sees the client's own
    // address; a node without a local endpoint does not answer.
    lab.kubectl(&[
        "patch",
        "svc",
        "np",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Local"}}"#,
    ]);
    let (client, client_ip) = (nodes[2].0.clone(), nodes[2].1.clone());
    let url = format!("http://{with_ep_ip}:{node_port}/clientip");
    let (code, body) = await_body(&client, &url, |b| b.split(':').next() == Some(&client_ip));
    assert_eq!(
        body.rsplit_once(':').map(|(a, _)| a),
        Some(client_ip.as_str()),
        "Local policy must keep the client address ({client_ip}); curl exit {code:?}"
    );
    let (cp, cp_ip) = (nodes[0].0.clone(), nodes[0].1.clone());
    let url = format!("http://{cp_ip}:{node_port}/hostname");
    let (code, body) = await_body(&client, &url, |b| b.is_empty());
    assert!(
        body.is_empty() && code != Some(0),
        "{cp} has no local endpoint and must not answer under Local: exit {code:?}, {body:?}"
    );
    // ...while the Cluster path (the ClusterIP) still reaches the pod.
    let vip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let (_, body) = await_body(&cp, &format!("http://{vip}/hostname"), |b| b == "np");
    assert_eq!(
        body, "np",
        "ClusterIP from {cp} under Local NodePort policy"
    );
}

const HOST_PORT_DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: hp}
spec:
  replicas: 4
  selector: {matchLabels: {app: hp}}
  template:
    metadata: {labels: {app: hp}}
    spec:
      containers:
      - name: web
        image: registry.k8s.io/e2e-test-images/agnhost:2.47
        args: [netexec, --http-port=8080]
        ports: [{containerPort: 8080, hostPort: 18080}]
"#;

/// hostPort, as an operator expects it: one replica per node holds the
/// port and the fourth cannot be placed and says why; every node's
/// InternalIP on the port reaches the replica of that node, asked from
/// another node. (The CNI plugin forwards it; no portmap plugin runs.)
fn host_ports(lab: &Lab) {
    let nodes = lab.nodes();
    lab.apply(HOST_PORT_DEPLOYMENT);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (on_node, pending) = loop {
        let pods = lab.get_json(&["pods", "-l", "app=hp"]);
        let mut on_node = BTreeMap::new();
        let mut pending = Vec::new();
        for p in pods["items"].as_array().unwrap() {
            let name = p["metadata"]["name"].as_str().unwrap().to_string();
            let conds = p["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let cond = |t: &str| conds.iter().find(|c| c["type"] == t).cloned();
            if cond("Ready").is_some_and(|c| c["status"] == "True") {
                on_node.insert(p["spec"]["nodeName"].as_str().unwrap().to_string(), name);
            } else if let Some(c) = cond("PodScheduled").filter(|c| c["status"] == "False") {
                pending.push((name, c["message"].as_str().unwrap_or("").to_string()));
            }
        }
        if on_node.len() == 3 && pending.len() == 1 {
            break (on_node, pending);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "want one Ready replica per node and one unschedulable: {on_node:?} {pending:?}\n{}",
            lab.kubectl(&["get", "pods", "-o", "wide"])
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        pending[0]
            .1
            .contains("3 node(s) didn't have free ports for the requested pod ports"),
        "{pending:?}"
    );
    for (i, (node, ip, _)) in nodes.iter().enumerate() {
        let from = &nodes[(i + 1) % nodes.len()].0;
        let want = &on_node[node];
        let url = format!("http://{ip}:18080/hostname");
        let (code, body) = await_body(from, &url, |b| b == want.as_str());
        assert_eq!(
            &body, want,
            "hostPort on {node} ({url}) from {from}: curl exit {code:?}"
        );
    }
    lab.kubectl(&["delete", "deployment", "hp"]);
}

const CHURN_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: churn
spec:
  selector: {app: churn, in: "yes"}
  ports:
  - port: 80
    targetPort: 8080
"#;

/// A shell loop in a node's namespace sending one request after another
/// to `url` (each a new connection) until `stop` exists, printing one
/// line per request: the answering pod's name, or `FAIL <curl exit>`.
struct Stream {
    child: Option<Child>,
    stop: PathBuf,
}

impl Stream {
    fn start(node: &str, url: &str, tag: &str) -> Stream {
        let stop = std::env::temp_dir().join(format!("{tag}-{}.stop", std::process::id()));
        let _ = std::fs::remove_file(&stop);
        let script = format!(
            "while [ ! -e {stop} ]; do \
               body=$(curl -s --max-time 3 --connect-timeout 2 {url}); rc=$?; \
               if [ $rc -eq 0 ] && [ -n \"$body\" ]; then echo \"$body\"; else echo \"FAIL $rc\"; fi; \
             done",
            stop = stop.display()
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &node_ns(node), "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the request stream");
        Stream {
            child: Some(child),
            stop,
        }
    }

    /// Stops the loop and returns its lines.
    fn finish(mut self) -> Vec<String> {
        std::fs::write(&self.stop, b"").unwrap();
        let child = self.child.take().expect("running");
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop, b"");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.stop);
    }
}

/// 100 endpoint changes under a steady stream of requests: pods labelled
/// into and out of the service's selector (they keep running, as a
/// terminating pod does through its grace period), two of four always in.
fn churn(lab: &Lab) {
    let nodes = lab.nodes();
    let pods = ["c0", "c1", "c2", "c3"];
    for (i, p) in pods.iter().enumerate() {
        let labels = format!("--labels=app=churn{}", if i < 2 { ",in=yes" } else { "" });
        // spread over the workers and the control-plane node
        let node = &nodes[i % nodes.len()].0;
        let overrides = format!(r#"{{"spec":{{"nodeName":"{node}"}}}}"#);
        lab.kubectl(&[
            "run",
            p,
            &format!("--image={AGNHOST}"),
            &labels,
            "--overrides",
            &overrides,
            "--",
            "netexec",
            "--http-port=8080",
        ]);
    }
    lab.wait_ready("app=churn");
    lab.apply(CHURN_SERVICE);
    let vip = lab.get_json(&["svc", "churn"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("http://{vip}/hostname");
    let client = nodes[2].0.clone();
    // every node must have the service before the stream starts
    for (node, _, _) in &nodes {
        let (code, body) = await_body(node, &url, |b| b == "c0" || b == "c1");
        assert!(
            body == "c0" || body == "c1",
            "service not ready on {node}: exit {code:?} {body:?}"
        );
    }

    let stream = Stream::start(&client, &url, &lab.name);
    std::thread::sleep(Duration::from_millis(500));
    // Rotate: remove the oldest endpoint, add the next pod (two changes a
    // step, each one endpoint added or removed).
    let mut inside = vec![0usize, 1];
    let mut next = 2;
    let mut changes = 0;
    while changes < 100 {
        let oldest = inside.remove(0);
        lab.kubectl(&["label", "pod", pods[oldest], "in-"]);
        changes += 1;
        lab.kubectl(&["label", "pod", pods[next], "in=yes"]);
        changes += 1;
        inside.push(next);
        next = (next + 1) % pods.len();
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let lines = stream.finish();

    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &lines {
        *seen.entry(l.as_str()).or_default() += 1;
    }
    let failed: Vec<&String> = lines
        .iter()
        .filter(|l| !pods.contains(&l.as_str()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during {changes} endpoint changes: {seen:?}",
        failed.len(),
        lines.len()
    );
    assert!(
        lines.len() >= 100,
        "the stream was not steady: {} requests ({seen:?})",
        lines.len()
    );
    assert!(
        pods.iter().all(|p| seen.contains_key(p)),
        "every pod served while it was an endpoint: {seen:?}"
    );
    eprintln!(
        "label churn: {} requests, none failed: {seen:?}",
        lines.len()
    );
    // The service settles on the last two pods only.
    let mut settled = BTreeMap::new();
    for _ in 0..40 {
        let (_, body) = curl_from(&client, &url);
        *settled.entry(body).or_insert(0) += 1;
    }
    let want: Vec<String> = {
        let mut v: Vec<String> = inside.iter().map(|i| pods[*i].to_string()).collect();
        v.sort();
        v
    };
    let got: Vec<String> = settled.keys().cloned().collect();
    assert_eq!(got, want, "after the churn: {settled:?}");
    scale_churn(lab, &client);
}

/// A Deployment whose server outlives SIGTERM for its grace period (as a
/// server draining its connections does; the lab's built-in agnhost exits
/// at once, like the real one without `--delay-shutdown`) and is Ready
/// only once its readiness probe answers: the proxy must send new
/// connections to Ready endpoints only and stop sending any to
/// terminating ones.
fn grow_deployment() -> String {
    let kubelet = podnet().with_file_name("podnet-lab-kubelet");
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: grow
spec:
  replicas: 2
  selector:
    matchLabels: {{app: grow}}
  template:
    metadata:
      labels: {{app: grow}}
    spec:
      terminationGracePeriodSeconds: 3
      containers:
      - name: web
        image: busybox
        command: ["sh", "-c", "trap '' TERM; exec {kubelet} image agnhost netexec --http-port=8080"]
        readinessProbe:
          httpGet: {{path: /hostname, port: 8080}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: grow
spec:
  selector: {{app: grow}}
  ports:
  - port: 80
    targetPort: 8080
"#,
        kubelet = kubelet.display()
    )
}

/// Scaling up and down under a steady stream: new pods join when Ready,
/// terminating ones leave while still serving; no request fails.
fn scale_churn(lab: &Lab, client: &str) {
    lab.apply(&grow_deployment());
    lab.wait_ready("app=grow");
    let vip = lab.get_json(&["svc", "grow"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("http://{vip}/hostname");
    let (code, body) = await_body(client, &url, |b| b.starts_with("grow-"));
    assert!(
        body.starts_with("grow-"),
        "grow not answering: {code:?} {body:?}"
    );
    let stream = Stream::start(client, &url, &format!("{}-grow", lab.name));
    // 10 steps of two endpoints each: 20 more endpoint changes, added ones
    // from brand-new pods, removed ones from terminating pods.
    for step in 0..10 {
        let replicas = if step % 2 == 0 { 4 } else { 2 };
        lab.kubectl(&[
            "scale",
            "deployment",
            "grow",
            &format!("--replicas={replicas}"),
        ]);
        wait_endpoints(lab, "grow", replicas);
    }
    std::thread::sleep(Duration::from_millis(500));
    let lines = stream.finish();
    let failed: Vec<&String> = lines.iter().filter(|l| !l.starts_with("grow-")).collect();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &lines {
        *seen.entry(l.as_str()).or_default() += 1;
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while scaling: {seen:?}",
        failed.len(),
        lines.len()
    );
    assert!(seen.len() > 2, "new pods never served: {seen:?}");
    eprintln!("scaling: {} requests, none failed: {seen:?}", lines.len());
}

/// Waits until the service's EndpointSlices list exactly `n` ready
/// endpoints (and the change has had a moment to reach every node).
fn wait_endpoints(lab: &Lab, svc: &str, n: usize) {
    let mut last = 0;
    for _ in 0..150 {
        let slices = lab.get_json(&[
            "endpointslices",
            "-l",
            &format!("kubernetes.io/service-name={svc}"),
        ]);
        last = slices["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] == true)
            .count();
        if last == n {
            std::thread::sleep(Duration::from_millis(300));
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{svc}: {last} ready endpoints, waited for {n}");
}
