//! The workloads people bring to the lab: a StatefulSet behind a headless
//! Service (one stable DNS name per pod, following the pod to its new IP),
//! and Jobs that run to completion or fail at their backoff limit.

mod support;

use std::time::{Duration, Instant};

use support::Lab;

const WEB: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: nginx
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 80, name: web}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: nginx
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx
        ports: [{containerPort: 80, name: web}]
"#;

fn lookup(lab: &Lab, name: &str) -> Option<String> {
    let out = lab.kubectl_raw(&[
        "exec", "client", "--", "dig", "+short", "+time=1", "+tries=1", name,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

#[test]
fn statefulset_pods_have_stable_names_that_follow_them() {
    let lab = Lab::up("sts", "vxlan");
    lab.run_on(
        "client",
        "nicolaka/netshoot",
        &lab.nodes()[0].0,
        &["sleep", "3600"],
    );
    lab.apply(WEB);
    lab.kubectl(&["rollout", "status", "sts/web", "--timeout=90s"]);
    lab.wait_ready("run=client");
    let mut nodes = std::collections::BTreeSet::new();
    for i in 0..3 {
        let pod = format!("web-{i}");
        let (ip, node) = lab.pod_ip_node(&pod);
        nodes.insert(node);
        let fqdn = format!("{pod}.nginx.default.svc.cluster.local");
        assert_eq!(lookup(&lab, &fqdn).as_deref(), Some(ip.as_str()), "{fqdn}");
        let short = lab.kubectl(&[
            "exec",
            "client",
            "--",
            "getent",
            "hosts",
            &format!("{pod}.nginx"),
        ]);
        assert!(short.starts_with(&format!("{ip} ")), "{short}");
        let f = lab.kubectl(&["exec", &pod, "--", "hostname", "-f"]);
        assert_eq!(f.trim(), fqdn);
    }
    assert_eq!(nodes.len(), 3, "the three pods on three nodes: {nodes:?}");

    // web-1 deleted: it comes back under its name, and the name follows it.
    let (old_ip, _) = lab.pod_ip_node("web-1");
    let old_uid = lab.kubectl(&["get", "pod", "web-1", "-o", "jsonpath={.metadata.uid}"]);
    lab.kubectl(&["delete", "pod", "web-1", "--wait=false"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let new_ip = loop {
        let uid = lab.kubectl_raw(&[
            "get",
            "pod",
            "web-1",
            "-o",
            "jsonpath={.metadata.uid} {.status.podIP}",
        ]);
        let text = String::from_utf8_lossy(&uid.stdout).to_string();
        if let Some((u, ip)) = text.split_once(' ')
            && u != old_uid
            && !ip.is_empty()
        {
            break ip.to_string();
        }
        assert!(Instant::now() < deadline, "web-1 did not come back: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if lookup(&lab, "web-1.nginx.default.svc.cluster.local").as_deref() == Some(new_ip.as_str())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web-1's name still gives the old IP {old_ip}, not {new_ip}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "web-1's name followed it to {new_ip} (was {old_ip}) {:?} after its IP was known",
        since.elapsed()
    );
    lab.down();
}

#[test]
fn jobs_complete_or_fail_at_their_backoff_limit() {
    let lab = Lab::up("job", "vxlan");
    lab.apply(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: lookup\nspec:\n  completions: 3\n  parallelism: 2\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: q\n        image: busybox\n        command: [\"nslookup\", \"kubernetes.default\"]\n",
    );
    lab.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/lookup",
        "--timeout=120s",
    ]);
    let succeeded = lab.kubectl(&["get", "job", "lookup", "-o", "jsonpath={.status.succeeded}"]);
    assert_eq!(succeeded, "3");
    let logs = lab.kubectl(&["logs", "job/lookup"]);
    assert!(logs.contains("10.96.0.1"), "{logs}");
    // Three pods succeeded (a lookup that failed would have been retried
    // in a pod of its own, counted in status.failed).
    let pods = lab.get_json(&["pods", "-l", "batch.kubernetes.io/job-name=lookup"]);
    let phases: Vec<&str> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"]["phase"].as_str().unwrap_or_default())
        .collect();
    let failed = lab.kubectl(&["get", "job", "lookup", "-o", "jsonpath={.status.failed}"]);
    assert_eq!(
        phases.iter().filter(|p| **p == "Succeeded").count(),
        3,
        "{phases:?}, failed={failed:?}"
    );
    assert_eq!(
        phases.len(),
        3 + failed.parse::<usize>().unwrap_or(0),
        "{phases:?}, failed={failed:?}"
    );

    lab.apply(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: broken\nspec:\n  backoffLimit: 1\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: q\n        image: busybox\n        command: [\"sh\", \"-c\", \"exit 2\"]\n",
    );
    lab.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/broken",
        "--timeout=120s",
    ]);
    let reason = lab.kubectl(&[
        "get",
        "job",
        "broken",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Failed")].reason}"#,
    ]);
    assert_eq!(reason, "BackoffLimitExceeded");
    let failed = lab.kubectl(&["get", "job", "broken", "-o", "jsonpath={.status.failed}"]);
    assert_eq!(failed, "2", "the first run and one retry");
    lab.down();
}
