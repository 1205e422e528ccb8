//! Test harness: a node namespace of the test's own with a data directory,
//! pod namespaces, and the plugin run inside the node as a runtime would.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use podnet_kernel::netns::{self, NetNs};
use serde_json::{Value, json};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_podnet-cni");
pub const REF_PLUGINS: &str = "/usr/lib/cni";

static N: AtomicU32 = AtomicU32::new(0);

/// Fails loudly when a tool the test needs is missing.
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || PathBuf::from(tool).is_file();
    assert!(
        found,
        "this test needs `{tool}`: run scripts/install-deps (as root)"
    );
}

pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the CNI tests create network namespaces and must run as root"
    );
}

/// A node: its own namespace and IPAM data directory, removed on drop.
pub struct Node {
    pub ns: NetNs,
    pub data_dir: PathBuf,
}

impl Node {
    pub fn new() -> Self {
        require_root();
        require("ip");
        netns::sweep_stale("pncni");
        let ns = NetNs::unique("pncni-node").expect("create node namespace");
        let data_dir = std::env::temp_dir().join(format!(
            "pncni-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&data_dir).unwrap();
        Node { ns, data_dir }
    }

    /// A podnet configuration with one IPv4 range.
    pub fn conf(&self, version: &str, subnet: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "testnet",
            "type": "podnet",
            "bridge": "pnbr0",
            "mtu": 1400,
            "ipam": {"type": "podnet", "ranges": [[{"subnet": subnet}]],
                     "dataDir": self.data_dir.display().to_string()}
        })
    }

    /// Runs a plugin binary in the node for one verb.
    pub fn run(
        &self,
        exe: &str,
        verb: &str,
        id: &str,
        netns: &str,
        ifname: &str,
        conf: &Value,
    ) -> Output {
        let mut child = self
            .ns
            .command(exe)
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", format!("{}:{REF_PLUGINS}", plugin_dir()))
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plugin");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs podnet-cni and returns its parsed stdout, panicking on failure.
    pub fn ok(&self, verb: &str, id: &str, pod: &NetNs, conf: &Value) -> Value {
        let out = self.run(
            PLUGIN,
            verb,
            id,
            &pod.path().display().to_string(),
            "eth0",
            conf,
        );
        assert!(
            out.status.success(),
            "{verb} failed: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Runs podnet-cni expecting failure; returns the error object.
    pub fn err(&self, verb: &str, id: &str, netns: &str, ifname: &str, conf: &Value) -> Value {
        let out = self.run(PLUGIN, verb, id, netns, ifname, conf);
        assert!(!out.status.success(), "{verb} unexpectedly succeeded");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "error output is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// [`Node::err`] for a pod namespace and `eth0`.
    pub fn err_in(&self, verb: &str, id: &str, pod: &NetNs, conf: &Value) -> Value {
        self.err(verb, id, &pod.path().display().to_string(), "eth0", conf)
    }

    /// Link names in the node namespace.
    pub fn links(&self) -> Vec<String> {
        links_in(&self.ns)
    }

    /// Waits (up to 3 s) for a link to disappear from the node: DEL deletes
    /// the veth pair in a detached child after it returns.
    pub fn wait_link_gone(&self, name: &str) -> bool {
        for _ in 0..300 {
            if !self.links().iter().any(|l| l == name) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    /// The IPAM state file (empty when none).
    pub fn state(&self, network: &str) -> String {
        std::fs::read_to_string(self.data_dir.join(network).join("state.json")).unwrap_or_default()
    }

    /// The addresses IPAM holds, in allocation order.
    pub fn allocated(&self, network: &str) -> Vec<String> {
        let state = self.state(network);
        if state.is_empty() {
            return Vec::new();
        }
        let v: Value = serde_json::from_str(&state).expect("state.json is valid JSON");
        v["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["ip"].as_str().unwrap().to_string())
            .collect()
    }

    /// Runs a command in the node namespace, returning stdout.
    pub fn sh(&self, args: &[&str]) -> String {
        sh_in(&self.ns, args)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A directory holding the plugin under its type name, `podnet`, as a
/// runtime's CNI bin directory would (the binary builds as `podnet-cni`).
pub fn plugin_dir() -> String {
    let dir = std::env::temp_dir().join(format!("pncni-bin-{}", std::process::id()));
    let link = dir.join("podnet");
    if !link.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!("podnet.{}", N.fetch_add(1, Ordering::Relaxed)));
        std::os::unix::fs::symlink(PLUGIN, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
    }
    dir.display().to_string()
}

pub fn pod() -> NetNs {
    NetNs::unique("pncni-pod").expect("create pod namespace")
}

pub fn links_in(ns: &NetNs) -> Vec<String> {
    let out = sh_in(ns, &["ip", "-j", "link", "show"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut names: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

pub fn sh_in(ns: &NetNs, args: &[&str]) -> String {
    let out = ns.command(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `ping` from `ns` to `ip` gets an answer.
pub fn pings(ns: &NetNs, ip: &str) -> bool {
    ns.command("ping")
        .args(["-c", "1", "-W", "2", ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The first address of a result, without prefix.
pub fn first_ip(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

pub fn command_exists(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// What `curl` from `ns` gets from `url` within `tries` tries, 100 ms
/// apart (empty when nothing answers).
pub fn fetch(ns: &NetNs, url: &str, tries: usize) -> String {
    for _ in 0..tries {
        let out = ns
            .command("curl")
            .args(["-s", "--max-time", "1", url])
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if !body.is_empty() {
            return body;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    String::new()
}

/// busybox httpd serving one page inside a pod; stopped, and its page
/// removed, on drop.
pub struct Httpd {
    child: std::process::Child,
    dir: PathBuf,
}

impl Httpd {
    /// Serves `page` as `/` on `port` inside `pod`.
    pub fn serve(pod: &NetNs, port: u16, page: &str) -> Httpd {
        require("busybox");
        let dir = std::env::temp_dir().join(format!(
            "pncni-www-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), page).unwrap();
        let child = pod
            .command("busybox")
            .args(["httpd", "-f", "-p", &port.to_string(), "-h"])
            .arg(&dir)
            .spawn()
            .unwrap();
        Httpd { child, dir }
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
