//! `kubectl debug`, as on a real cluster, with kubectl 1.27 (attach over
//! SPDY/3.1) and 1.33 (attach over WebSocket): an ephemeral container in a
//! running pod (`pods/ephemeralcontainers`, started by the node's kubelet
//! in the pod's namespaces, shown by `kubectl describe pod`), with and
//! without a terminal; and a debugging pod on a node (`debug node/NODE`:
//! hostNetwork, hostPID, the node's `/` at `/host`).

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use support::Lab;

const KUBECTLS: &[&str] = &[
    "/usr/lib/google-cloud-sdk/bin/kubectl.1.27",
    "/usr/lib/google-cloud-sdk/bin/kubectl.1.30",
    "/usr/lib/google-cloud-sdk/bin/kubectl.1.33",
];
const NETSHOOT: &str = "--image=nicolaka/netshoot";

/// Runs `bin` with `args` on the lab, `stdin` written to it then closed.
fn kubectl(lab: &Lab, bin: &str, args: &[&str], stdin: &str) -> Output {
    assert!(
        std::path::Path::new(bin).exists(),
        "this test drives the real kubectl at {bin}"
    );
    let mut child = Command::new(bin)
        .arg("--kubeconfig")
        .arg(&lab.kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The same on a terminal of 33 rows and 77 columns (`script` gives
/// kubectl a pty; what is typed is `stdin`).
fn kubectl_tty(lab: &Lab, bin: &str, args: &str, stdin: &str) -> Output {
    let cmd = format!(
        "stty rows 33 cols 77; {bin} --kubeconfig {} {args}",
        lab.kubeconfig.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Prints the tty, then its size once kubectl's first resize has arrived
/// (at most 10 s).
const WAIT_SIZE: &str = "tty; for i in $(seq 100); do [ \"$(stty size)\" != \"0 0\" ] && break; sleep 0.1; done; echo size $(stty size)";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn debug_pods_and_nodes_with_kubectl_1_27_1_30_and_1_33() {
    // `/host` is made on the shared filesystem for the node debugger's
    // volume; `down` must take it away again if the lab made it.
    let host_existed = std::path::Path::new("/host").exists();
    let lab = Lab::up("kd", "vxlan");
    let nodes = lab.nodes();
    let (worker, worker_ip, _) = nodes
        .iter()
        .find(|n| n.0.ends_with("worker"))
        .cloned()
        .unwrap();
    // The target: a process the debugger should see by its command line.
    lab.run_on("box", "busybox", &worker, &["sleep", "31337"]);
    lab.wait_ready("run=box");
    let (box_ip, _) = lab.pod_ip_node("box");
    assert!(!box_ip.is_empty(), "box has no IP");

    for (i, bin) in KUBECTLS.iter().enumerate() {
        // An ephemeral container with stdin, no terminal: what is typed
        // runs in the pod's network namespace, beside the target.
        let name = format!("dbg{i}");
        let o = kubectl(
            &lab,
            bin,
            &[
                "debug",
                "-i",
                "box",
                NETSHOOT,
                "--target=box",
                "-c",
                &name,
                "--",
                "sh",
            ],
            "ip -o addr; ps -ef; echo done-$((6*7))\nexit\n",
        );
        let out = text(&o);
        assert!(o.status.success(), "{bin} debug -i: {out}");
        assert!(out.contains("done-42"), "{bin} debug -i: no output: {out}");
        assert!(
            out.contains(&format!("inet {box_ip}/")),
            "{bin} debug: the pod's address {box_ip} not seen: {out}"
        );
        assert!(
            out.contains("sleep 31337"),
            "{bin} debug --target=box: the target's process not seen: {out}"
        );

        // The same with a terminal (`kubectl debug -it`).
        let tname = format!("dbgt{i}");
        let o = kubectl_tty(
            &lab,
            bin,
            &format!("debug -it box {NETSHOOT} --target=box -c {tname} -- sh"),
            &format!("{WAIT_SIZE}; echo tty-$((6*7))\nexit\n"),
        );
        let out = text(&o);
        assert!(o.status.success(), "{bin} debug -it: {out}");
        assert!(out.contains("tty-42"), "{bin} debug -it: no output: {out}");
        assert!(out.contains("/dev/pts/"), "{bin} debug -it: no tty: {out}");
        // kubectl's terminal size reached the container's pty.
        assert!(
            out.contains("size 33 77"),
            "{bin} debug -it: terminal size: {out}"
        );

        // Both are in the pod's status (the kubelet reports their end
        // soon after kubectl saw it) and in `describe`.
        for n in [&name, &tname] {
            let s = wait_for(&lab, &["pod", "box"], |pod| {
                pod["status"]["ephemeralContainerStatuses"]
                    .as_array()
                    .and_then(|a| a.iter().find(|s| s["name"] == n.as_str()))
                    .filter(|s| !s["state"]["terminated"].is_null())
                    .cloned()
            });
            assert_eq!(
                s["state"]["terminated"]["exitCode"], 0,
                "{bin}: {n} did not end with 0: {s}"
            );
        }
        let describe = lab.kubectl(&["describe", "pod", "box"]);
        assert!(
            describe.contains("Ephemeral Containers:")
                && describe.contains(&format!("{name}:"))
                && describe.contains(&format!("{tname}:")),
            "describe pod box: {describe}"
        );
    }
    // The pod's own container was left alone.
    let pod = lab.get_json(&["pod", "box"]);
    assert_eq!(
        pod["status"]["containerStatuses"][0]["restartCount"], 0,
        "{pod}"
    );
    assert_eq!(pod["status"]["phase"], "Running", "{pod}");
    // Ephemeral containers are only added.
    let o = lab.kubectl_raw(&[
        "patch",
        "pod",
        "box",
        "--subresource=ephemeralcontainers",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/ephemeralContainers/0"}]"#,
    ]);
    assert!(
        !o.status.success(),
        "removing an ephemeral container worked"
    );
    assert!(
        text(&o).contains("may not be removed"),
        "removing an ephemeral container: {}",
        text(&o)
    );

    // The node's kubelet dies (SIGKILL) with an ephemeral container still
    // running and the others ended: the restarted kubelet takes the running
    // one back (the same process, still reported) and runs none again.
    // An ephemeral container `name` in box that sleeps `secs` (no attach).
    let debug_sleep = |name: &str, secs: &str| {
        lab.kubectl(&[
            "debug",
            "box",
            "--image=busybox",
            "--target=box",
            "-c",
            name,
            "--",
            "sleep",
            secs,
        ]);
    };
    debug_sleep("keeper", "31338");
    wait_for(&lab, &["pod", "box"], |pod| {
        ephemeral_status(pod, "keeper").filter(|s| !s["state"]["running"].is_null())
    });
    let keeper = pids_of("sleep 31338");
    assert_eq!(keeper.len(), 1, "one keeper process: {keeper:?}");
    let ended = |pod: &serde_json::Value| -> Vec<serde_json::Value> {
        (0..KUBECTLS.len())
            .map(|i| ephemeral_status(pod, &format!("dbg{i}")).unwrap()["state"].clone())
            .collect()
    };
    let ended_before = ended(&lab.get_json(&["pod", "box"]));
    // While the kubelet is stopped (then killed), one more is added: the
    // restarted kubelet must start it, once.
    let old_kubelet = lab.kubelet_pid(&worker);
    let old = nix::unistd::Pid::from_raw(old_kubelet);
    nix::sys::signal::kill(old, nix::sys::signal::Signal::SIGSTOP).unwrap();
    debug_sleep("late", "31339");
    assert!(
        pids_of("sleep 31339").is_empty(),
        "a stopped kubelet started an ephemeral container"
    );
    nix::sys::signal::kill(old, nix::sys::signal::Signal::SIGKILL).unwrap();
    // Its supervisor starts it again; it says so when it has taken the pod
    // back.
    let log = format!("/var/lib/podnet/{}/nodes/{worker}/kubelet.log", lab.name);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let new_kubelet = std::fs::read_to_string(format!(
            "/var/lib/podnet/{}/nodes/{worker}/kubelet.pid",
            lab.name
        ))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok());
        if new_kubelet.is_some_and(|p| p != old_kubelet)
            && text.lines().any(|l| {
                l.contains("pod taken back") && l.contains("pod=box") && l.contains("containers=3")
            })
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted kubelet did not take box back with its container, keeper and late:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        pids_of("sleep 31338"),
        keeper,
        "the running ephemeral container was started again"
    );
    wait_for(&lab, &["pod", "box"], |pod| {
        ephemeral_status(pod, "late").filter(|s| !s["state"]["running"].is_null())
    });
    assert_eq!(
        pids_of("sleep 31339").len(),
        1,
        "the ephemeral container added while the kubelet was away runs once"
    );
    // The adopted run is still the kubelet's: its end is reported, once.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(keeper[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = wait_for(&lab, &["pod", "box"], |pod| {
        ephemeral_status(pod, "keeper").filter(|s| !s["state"]["terminated"].is_null())
    });
    assert_eq!(s["state"]["terminated"]["exitCode"], 137, "{s}");
    assert!(pids_of("sleep 31338").is_empty(), "keeper was restarted");
    // An ended one was not run again: the same run, ended as before.
    let pod = lab.get_json(&["pod", "box"]);
    assert_eq!(
        ended(&pod),
        ended_before,
        "an ended ephemeral container was run again"
    );
    assert_eq!(
        pod["status"]["containerStatuses"][0]["restartCount"], 0,
        "{pod}"
    );

    // A debugging pod on the node: the node's network, its files at /host.
    let cni = format!(
        "/var/lib/podnet/{}/nodes/{worker}/root/etc/cni/net.d",
        lab.name
    );
    let conflists: Vec<String> = std::fs::read_dir(&cni)
        .unwrap_or_else(|e| panic!("{cni}: {e}"))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!conflists.is_empty(), "{cni} is empty");
    for bin in KUBECTLS {
        let o = kubectl(
            &lab,
            bin,
            &["debug", &format!("node/{worker}"), "-i", NETSHOOT],
            "ls /host/etc/cni/net.d; ip -o addr; hostname; echo node-$((6*7))\nexit\n",
        );
        let out = text(&o);
        assert!(o.status.success(), "{bin} debug node: {out}");
        assert!(
            out.contains("node-42"),
            "{bin} debug node: no output: {out}"
        );
        for f in &conflists {
            assert!(
                out.contains(f.as_str()),
                "{bin} debug node: /host/etc/cni/net.d lacks {f}: {out}"
            );
        }
        assert!(
            out.contains(&format!("inet {worker_ip}/")),
            "{bin} debug node: the node's address {worker_ip} not seen: {out}"
        );
        assert!(
            out.lines().any(|l| l.trim() == worker),
            "{bin} debug node: hostname is not {worker}: {out}"
        );
    }
    let pods = lab.get_json(&["pods"]);
    let debuggers: Vec<_> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("node-debugger-")
        })
        .collect();
    assert_eq!(debuggers.len(), KUBECTLS.len(), "{pods}");
    for p in debuggers {
        assert_eq!(p["spec"]["nodeName"], worker.as_str(), "{p}");
        assert_eq!(p["spec"]["hostNetwork"], true, "{p}");
        assert_eq!(p["spec"]["hostPID"], true, "{p}");
        let name = p["metadata"]["name"].as_str().unwrap();
        wait_for(&lab, &["pod", name], |p| {
            (p["status"]["phase"] == "Succeeded").then_some(())
        });
    }
    if !host_existed {
        let log = format!(
            "/var/lib/podnet/{}/nodes/{worker}/mount-points.log",
            lab.name
        );
        let made = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            made.lines().any(|l| l == "/host"),
            "the sandbox made /host but {log} does not record it: {made:?}"
        );
    }
    let down = lab.down();
    assert!(down.status.success(), "{}", text(&down));
    // Mount points are shared by every lab on the machine, so `down` keeps
    // them while another lab is recorded (as CI's serial test binaries
    // never have).
    let others: Vec<_> = std::fs::read_dir("/var/lib/podnet")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    if !host_existed && others.is_empty() {
        assert!(
            !std::path::Path::new("/host").exists(),
            "podnet down left the /host mount point the node debugger's sandbox made"
        );
    } else if !host_existed {
        eprintln!("/host not checked after down: other labs are recorded: {others:?}");
    }
}

/// Polls `kubectl get <what> -o json` until `f` finds what it wants (at
/// most a minute: then it fails with the object as last seen).
fn wait_for<T>(lab: &Lab, what: &[&str], f: impl Fn(&serde_json::Value) -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let v = lab.get_json(what);
        if let Some(t) = f(&v) {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what:?} never got there: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The status of ephemeral container `name` in `pod`.
fn ephemeral_status(pod: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    pod["status"]["ephemeralContainerStatuses"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

/// The pids of the processes whose whole command line is `cmdline`.
fn pids_of(cmdline: &str) -> Vec<i32> {
    let o = Command::new("pgrep")
        .args(["-xf", cmdline])
        .output()
        .unwrap();
    let mut pids: Vec<i32> = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    pids.sort();
    pids
}
