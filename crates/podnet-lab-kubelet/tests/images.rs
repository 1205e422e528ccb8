//! The lab's built-in images answer as the real ones do, from inside a
//! namespace of the test's own: agnhost netexec (HTTP and UDP), nginx.

use std::process::{Child, Stdio};
use std::time::Duration;

use podnet_kernel::netns::NetNs;

const KUBELET: &str = env!("CARGO_BIN_EXE_podnet-lab-kubelet");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(ns: &NetNs, url: &str) -> String {
    for _ in 0..50 {
        let out = ns
            .command("curl")
            .args(["-s", "--max-time", "2", url])
            .output()
            .expect("this test needs curl (scripts/install-deps)");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} never answered");
}

#[test]
fn agnhost_netexec_and_nginx_answer() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "run as root: the test makes a namespace"
    );
    podnet_kernel::netns::sweep_stale("pnimg");
    let ns = NetNs::unique("pnimg").unwrap();
    let _netexec = Killed(
        ns.command(KUBELET)
            .args([
                "image",
                "agnhost",
                "netexec",
                "--http-port=8080",
                "--udp-port=8081",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let _nginx = Killed(
        ns.command(KUBELET)
            .args(["image", "nginx"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let host = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(curl(&ns, "http://127.0.0.1:8080/hostname"), host);
    assert_eq!(curl(&ns, "http://127.0.0.1:8080/echo?msg=hello"), "hello");
    assert!(curl(&ns, "http://127.0.0.1:8080/clientip").starts_with("127.0.0.1:"));
    assert!(curl(&ns, "http://127.0.0.1/").contains("Welcome to nginx!"));
    let out = ns
        .command("sh")
        .args(["-c", "echo 'echo ping-udp' | nc -u -w 1 127.0.0.1 8081"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ping-udp");
}

#[test]
fn unknown_built_in_image_is_refused() {
    let out = std::process::Command::new(KUBELET)
        .args(["image", "redis"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no built-in image"));
}
