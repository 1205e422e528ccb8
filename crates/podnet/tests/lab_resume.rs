//! The lab's state survives its control plane, as a cluster's survives a
//! restart of kube-apiserver on etcd: `kill -9` of the lab daemon, then
//! `podnet up`, gives the same cluster back (objects, pod IPs, a watch that
//! resumes from its resourceVersion) while traffic through a ClusterIP
//! never stops; and after every namespace of the lab is gone, as after a
//! reboot, `podnet up` makes the nodes again and the pods run again.

mod support;

use std::process::Command;
use std::time::Duration;

use support::Lab;

/// A new TCP connection to `ip:80` every 100 ms for `secs` seconds; prints
/// `done ok=N fail=M` at the end.
const LOOPER: &str = r#"
import socket, sys, time
ip, secs = sys.argv[1], float(sys.argv[2])
ok = fail = 0
end = time.time() + secs
while time.time() < end:
    try:
        s = socket.create_connection((ip, 80), timeout=1)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        if s.recv(64).startswith(b"HTTP/1."):
            ok += 1
        else:
            fail += 1
        s.close()
    except Exception as e:
        fail += 1
        print("fail", e, flush=True)
    time.sleep(0.1)
print(f"done ok={ok} fail={fail}", flush=True)
"#;

fn daemon_pid(lab: &Lab) -> i32 {
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("/var/lib/podnet/{}/lab.json", lab.name)).unwrap(),
    )
    .unwrap();
    rec["daemon_pid"].as_i64().unwrap() as i32
}

fn up_again(lab: &Lab) -> String {
    let out = Command::new(support::podnet())
        .args(["up", "--name", &lab.name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "podnet up did not resume the lab:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Name, uid and IP of every pod, sorted.
fn pods(lab: &Lab) -> Vec<(String, String, String)> {
    let v = lab.get_json(&["pods", "-A"]);
    let mut out: Vec<_> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["metadata"]["uid"].as_str().unwrap().to_string(),
                p["status"]["podIP"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// What a user lists: `kubectl get all,cm,secret,netpol -A -o name`,
/// sorted.
fn names(lab: &Lab) -> Vec<String> {
    let mut v: Vec<String> = lab
        .kubectl(&["get", "all,cm,secret,netpol", "-A", "-o", "name"])
        .lines()
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// A `kubectl get pods --watch` running in the background; the
/// resourceVersion of every object it printed.
struct Watch {
    child: std::process::Child,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Watch {
    fn start(lab: &Lab) -> Watch {
        use std::io::BufRead;
        let mut child = Command::new(support::KUBECTL)
            .arg("--kubeconfig")
            .arg(&lab.kubeconfig)
            .args([
                "get",
                "pods",
                "-A",
                "--watch",
                "--no-headers",
                "-o",
                "custom-columns=RV:.metadata.resourceVersion,NAME:.metadata.name",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(rv) = l.split_whitespace().next().and_then(|r| r.parse().ok()) {
                    s2.lock().unwrap().push(rv);
                }
            }
        });
        Watch { child, seen }
    }

    /// The newest resourceVersion the watch printed.
    fn last(&self) -> u64 {
        self.seen.lock().unwrap().iter().copied().max().unwrap_or(0)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every object's kind/namespace/name and uid (events and leases aside:
/// they change on their own).
fn objects(lab: &Lab) -> Vec<String> {
    let kinds = "deployments,replicasets,daemonsets,services,endpointslices,networkpolicies,configmaps,serviceaccounts,namespaces,nodes,clusterroles,clusterrolebindings";
    let v = lab.get_json(&[kinds, "-A"]);
    let mut out: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "{}/{}/{} {}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap(),
                o["metadata"]["uid"].as_str().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn kill_9_of_the_control_plane_then_up_keeps_everything() {
    let lab = Lab::up("rsm", "vxlan");
    let nodes = lab.nodes();
    lab.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=3",
    ]);
    lab.kubectl(&["expose", "deployment", "web", "--port=80"]);
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web-only\nspec:\n  podSelector:\n    matchLabels:\n      app: web\n  ingress:\n  - {}\n",
    );
    lab.wait_ready("app=web");
    let cluster_ip = lab.kubectl(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let overrides = format!(
        r#"{{"spec":{{"nodeName":"{}","restartPolicy":"Never"}}}}"#,
        nodes[2].0
    );
    lab.kubectl(&[
        "run",
        "looper",
        "--image=nicolaka/netshoot",
        "--restart=Never",
        "--overrides",
        &overrides,
        "--",
        "python3",
        "-c",
        LOOPER,
        &cluster_ip,
        "12",
    ]);
    lab.wait_ready("run=looper");
    let before_pods = pods(&lab);
    let before_objects = objects(&lab);
    let before_names = names(&lab);
    // A watch running across the outage: what it saw last is where a new
    // watch must resume.
    let watch = Watch::start(&lab);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while watch.last() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl get pods --watch printed nothing"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon_pid(&lab)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The API is gone while the kernel keeps serving the ClusterIP.
    assert!(!lab.kubectl_raw(&["get", "nodes"]).status.success());
    std::thread::sleep(Duration::from_secs(2));
    let said = up_again(&lab);
    assert!(
        said.contains("resuming the cluster from its store"),
        "{said}"
    );

    assert_eq!(
        objects(&lab),
        before_objects,
        "objects changed across the restart"
    );
    assert_eq!(
        names(&lab),
        before_names,
        "kubectl get all,cm,secret,netpol"
    );
    // A new pod, then a watch from the last resourceVersion the running
    // watch saw gets it: the event history survived too.
    let rv = watch.last();
    drop(watch);
    lab.kubectl(&["run", "after", "--image=nginx"]);
    let watched = lab.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}&timeoutSeconds=2"),
    ]);
    assert!(
        watched.contains(r#""type":"ADDED""#) && watched.contains(r#""name":"after""#),
        "the watch from {rv} did not resume: {watched}"
    );
    assert!(!watched.contains(r#""code":410"#), "{watched}");
    lab.wait_ready("run=after");

    // The loop ran through the whole outage without one failure.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let log = loop {
        let log = lab.kubectl(&["logs", "looper"]);
        if log.contains("done ") {
            break log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "looper never finished: {log}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let last = log.lines().last().unwrap();
    assert!(
        last.ends_with(" fail=0") && !last.contains("ok=0 "),
        "{log}"
    );
    let after_pods: Vec<_> = pods(&lab).into_iter().filter(|p| p.0 != "after").collect();
    assert_eq!(after_pods, before_pods, "pods or their IPs changed");
    down_and_check(&lab);
}

/// `podnet down`, then nothing of the lab by our own look over `/proc`
/// (the namespaces it recorded, by inode and cookie).
fn down_and_check(lab: &Lab) {
    let recorded = support::recorded_netns(&lab.name);
    let out = lab.down();
    assert!(
        out.status.success(),
        "podnet down:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let left = support::lab_remains(&lab.name, &recorded);
    assert!(left.is_empty(), "left after down:\n{}", left.join("\n"));
}

#[test]
fn after_a_reboot_up_makes_the_nodes_again_and_the_pods_run_again() {
    let lab = Lab::up("rsb", "host-gw");
    lab.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=3",
    ]);
    lab.kubectl(&["expose", "deployment", "web", "--port=80"]);
    lab.kubectl(&[
        "run",
        "client",
        "--image=nicolaka/netshoot",
        "--",
        "sleep",
        "3600",
    ]);
    lab.wait_ready("app=web");
    lab.wait_ready("run=client");
    let before_objects = objects(&lab);
    let before_names = names(&lab);
    let before: Vec<(String, String)> = pods(&lab).into_iter().map(|p| (p.0, p.1)).collect();

    // A reboot: every process of the lab and every namespace gone; only
    // the state on disk stays.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon_pid(&lab)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{}-", lab.name)))
        .collect();
    // Every process of the lab (its cgroup), and the cgroup itself: a
    // rebooted machine has neither.
    let cgroup =
        std::path::Path::new("/sys/fs/cgroup/unified").join(format!("podnet-{}", lab.name));
    assert!(cgroup.exists(), "no cgroup {}", cgroup.display());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::remove_dir(&cgroup).is_err() {
        std::fs::write(cgroup.join("cgroup.kill"), "1").unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "the lab's cgroup never emptied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for ns in &netns {
        assert!(
            Command::new("ip")
                .args(["netns", "delete", ns])
                .status()
                .unwrap()
                .success(),
            "{ns}"
        );
    }

    let said = up_again(&lab);
    assert!(said.contains("making node"), "{said}");
    assert_eq!(
        objects(&lab),
        before_objects,
        "objects changed across the reboot"
    );
    assert_eq!(
        names(&lab),
        before_names,
        "kubectl get all,cm,secret,netpol"
    );
    lab.wait_ready("app=web");
    lab.wait_ready("run=client");
    let after: Vec<(String, String)> = pods(&lab).into_iter().map(|p| (p.0, p.1)).collect();
    assert_eq!(after, before, "the same pods are back");
    let out = lab.kubectl(&[
        "exec",
        "client",
        "--",
        "curl",
        "-s",
        "-m",
        "3",
        "http://web/",
    ]);
    assert!(out.contains("nginx"), "{out}");
    down_and_check(&lab);
}
