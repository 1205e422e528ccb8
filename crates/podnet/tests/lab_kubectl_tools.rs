//! The lab's kubectl, as on a real cluster, for every kubectl an operator
//! may have: Debian's kubectl 1.20 (`kubernetes-client`, unpacked under
//! /opt by `scripts/install-deps`) and kubectl 1.27 speak SPDY/3.1 for exec
//! and port-forward, 1.30
//! WebSocket for exec and SPDY for port-forward, 1.33 WebSocket for exec
//! and SPDY tunnelled in a WebSocket for port-forward. Each runs `exec`
//! (exit code, stdin, tty) and `port-forward` to a pod and to a service.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};

use support::Lab;

const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.47";
const KUBECTLS: &[&str] = &[
    "/opt/podnet-kubectl-1.20/usr/bin/kubectl",
    "/usr/lib/google-cloud-sdk/bin/kubectl.1.27",
    "/usr/lib/google-cloud-sdk/bin/kubectl.1.30",
    "/usr/lib/google-cloud-sdk/bin/kubectl.1.33",
];

fn kubectl(lab: &Lab, bin: &str, args: &[&str], stdin: Option<&str>) -> Output {
    assert!(
        std::path::Path::new(bin).exists(),
        "this test drives the real kubectl at {bin} (scripts/install-deps puts Debian's 1.20 there)"
    );
    let mut child = Command::new(bin)
        .arg("--kubeconfig")
        .arg(&lab.kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Prints the tty, then its size once kubectl's first resize has arrived
/// (it may come just after the command starts; at most 10 s).
const WAIT_SIZE: &str = "tty; for i in $(seq 100); do [ \"$(stty size)\" != \"0 0\" ] && break; sleep 0.1; done; echo size $(stty size)";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `kubectl port-forward TARGET :REMOTE` on 127.0.0.1; returns once it says
/// it is forwarding, with the process to kill and the local port. kubectl
/// picks the local port itself: a port chosen here could be some other
/// socket's ephemeral port by the time kubectl binds it.
fn port_forward(lab: &Lab, bin: &str, target: &str, remote: u16) -> (std::process::Child, u16) {
    let mut child = Command::new(bin)
        .arg("--kubeconfig")
        .arg(&lab.kubeconfig)
        .args(["port-forward", "--address", "127.0.0.1", target])
        .arg(format!(":{remote}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line
        .strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{bin} port-forward {target}: {line}"));
    // Keep reading its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    (child, port)
}

fn curl(port: u16, path: &str) -> String {
    let o = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn exec_and_port_forward_with_kubectl_1_20_1_27_1_30_and_1_33() {
    let lab = Lab::up("kt", "vxlan");
    let (worker, _, _) = lab
        .nodes()
        .into_iter()
        .find(|n| n.0.ends_with("worker"))
        .unwrap();
    lab.run_on("web", AGNHOST, &worker, &["netexec", "--http-port=8080"]);
    lab.run_on("box", "busybox", &worker, &["sleep", "3600"]);
    lab.wait_ready("run=web");
    lab.wait_ready("run=box");
    lab.kubectl(&[
        "expose",
        "pod",
        "web",
        "--port",
        "80",
        "--target-port",
        "8080",
    ]);
    for bin in KUBECTLS {
        // The exit code travels in the error stream's Status.
        let o = kubectl(
            &lab,
            bin,
            &["exec", "box", "--", "sh", "-c", "exit 7"],
            None,
        );
        assert_eq!(o.status.code(), Some(7), "{bin}: {}", text(&o));
        let o = kubectl(
            &lab,
            bin,
            &["exec", "box", "--", "sh", "-c", "echo out; echo err >&2"],
            None,
        );
        assert!(o.status.success(), "{bin}: {}", text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n", "{bin}");
        assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n", "{bin}");
        // stdin reaches the command, and its end ends the command.
        let o = kubectl(
            &lab,
            bin,
            &["exec", "-i", "box", "--", "wc", "-l"],
            Some("a\nb\nc\n"),
        );
        assert!(o.status.success(), "{bin}: {}", text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "3", "{bin}");
        // A TTY (kubectl on a terminal, as `script` gives it).
        let cmd = format!(
            "stty rows 33 cols 77; {bin} --kubeconfig {} exec -it box -- sh -c '{WAIT_SIZE}'",
            lab.kubeconfig.display()
        );
        let o = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let out = text(&o);
        assert!(o.status.success(), "{bin}: {out}");
        assert!(out.contains("/dev/pts/"), "{bin}: no tty: {out}");
        // kubectl's terminal size reached the pty (the resize stream).
        assert!(out.contains("size 33 77"), "{bin}: terminal size: {out}");

        // port-forward to the pod, then to the service (kubectl picks a pod).
        let (mut pf, p1) = port_forward(&lab, bin, "pod/web", 8080);
        assert_eq!(
            curl(p1, "/echo?msg=pod"),
            "pod",
            "{bin} port-forward pod/web"
        );
        // A second connection over the same forward.
        assert_eq!(curl(p1, "/echo?msg=again"), "again", "{bin}");
        pf.kill().unwrap();
        pf.wait().unwrap();
        let (mut pf, p2) = port_forward(&lab, bin, "svc/web", 80);
        assert_eq!(
            curl(p2, "/echo?msg=svc"),
            "svc",
            "{bin} port-forward svc/web"
        );
        pf.kill().unwrap();
        pf.wait().unwrap();
    }
}
