//! A lab brought up for one test (own name, own kubeconfig), driven with
//! the real kubectl, and torn down on drop even when the test fails.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";
pub const KUBECTL_130: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.30";

static BUILD: Once = Once::new();

/// One lab at a time: three nodes' worth of processes per lab is plenty
/// for a 2-core machine.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The podnet binary, with its siblings (the lab's kubelet, the agent,
/// the CNI plugin, the DNS server). `cargo test
/// --workspace` builds them all; `cargo test -p podnet` does not, so they
/// are built here once per test binary (quick when up to date).
pub fn podnet() -> PathBuf {
    let podnet = PathBuf::from(env!("CARGO_BIN_EXE_podnet"));
    BUILD.call_once(|| {
        let bins = [
            "podnet-lab-kubelet",
            "podnet-agent",
            "podnet-cni",
            "podnet-dns",
        ];
        // Always: a sibling left from an older build would test old code
        // (`cargo test -p podnet` builds only podnet's own binary).
        {
            let out = Command::new(env!("CARGO"))
                .args(["build", "-q"])
                .args(bins.iter().flat_map(|b| ["-p", b]))
                .status()
                .expect("run cargo build");
            assert!(out.success(), "building the lab's binaries failed");
        }
    });
    podnet
}

/// A running lab; `podnet down` on drop.
pub struct Lab {
    pub name: String,
    pub kubeconfig: PathBuf,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Lab {
    /// `podnet up --name <name> --encap <encap> --workers 2`.
    pub fn up(name: &str, encap: &str) -> Lab {
        Self::up_with(name, encap, &[])
    }

    /// `podnet up` with extra flags (e.g. `--proxy-mode iptables`).
    pub fn up_with(name: &str, encap: &str, extra: &[&str]) -> Lab {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the lab tests make network namespaces and must run as root"
        );
        assert!(
            std::path::Path::new(KUBECTL).exists(),
            "the lab tests drive the real kubectl at {KUBECTL}"
        );
        let turn = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
        let name = format!("{name}{}", std::process::id() % 10000);
        let kubeconfig = std::env::temp_dir().join(format!("{name}.kubeconfig"));
        let lab = Lab {
            name,
            kubeconfig,
            _turn: turn,
        };
        let out = Command::new(podnet())
            .args([
                "up",
                "--name",
                &lab.name,
                "--encap",
                encap,
                "--workers",
                "2",
            ])
            .args(extra)
            .arg("--kubeconfig")
            .arg(&lab.kubeconfig)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podnet up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    /// Runs kubectl; returns the output whatever the status.
    pub fn kubectl_raw(&self, args: &[&str]) -> Output {
        Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs kubectl and returns stdout, failing the test on error.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_raw(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl get <what> -o json`.
    pub fn get_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl(&a)).unwrap()
    }

    /// Applies a manifest from a string.
    pub fn apply(&self, yaml: &str) {
        let mut child = Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits for pods matching `selector` to be Ready.
    pub fn wait_ready(&self, selector: &str) {
        self.wait_ready_in("default", selector)
    }

    /// Waits for pods matching `selector` in `namespace` to be Ready.
    pub fn wait_ready_in(&self, namespace: &str, selector: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.kubectl_raw(&[
                "wait",
                "-n",
                namespace,
                "--for=condition=Ready",
                "pod",
                "-l",
                selector,
                "--timeout=30s",
            ]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pods {selector} not Ready: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(
                    &self
                        .kubectl_raw(&["get", "pods", "-A", "-o", "wide"])
                        .stdout
                )
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `kubectl run <name> --image <image>` pinned to `node`, with `args`.
    pub fn run_on(&self, name: &str, image: &str, node: &str, args: &[&str]) {
        let overrides = format!(r#"{{"spec":{{"nodeName":"{node}"}}}}"#);
        let image = format!("--image={image}");
        let mut a = vec!["run", name, image.as_str(), "--overrides", &overrides, "--"];
        a.extend_from_slice(args);
        self.kubectl(&a);
    }

    /// A pod's IP and node.
    pub fn pod_ip_node(&self, name: &str) -> (String, String) {
        let p = self.get_json(&["pod", name]);
        (
            p["status"]["podIP"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            p["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }

    /// Node name -> (InternalIP, podCIDR).
    pub fn nodes(&self) -> Vec<(String, String, String)> {
        let v = self.get_json(&["nodes"]);
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let ip = n["status"]["addresses"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|a| a["type"] == "InternalIP")
                    .map(|a| a["address"].as_str().unwrap().to_string())
                    .unwrap_or_default();
                (
                    n["metadata"]["name"].as_str().unwrap().to_string(),
                    ip,
                    n["spec"]["podCIDR"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }

    /// The pid of node `node`'s kubelet (its supervisor's record).
    pub fn kubelet_pid(&self, node: &str) -> i32 {
        let path = format!("/var/lib/podnet/{}/nodes/{node}/kubelet.pid", self.name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// The name of the podnet DaemonSet's pod on `node`.
    pub fn agent_pod(&self, node: &str) -> String {
        let name = self.kubectl(&[
            "get",
            "pods",
            "-n",
            "kube-system",
            "-l",
            "k8s-app=podnet",
            "--field-selector",
            &format!("spec.nodeName={node}"),
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ]);
        assert!(!name.is_empty(), "no podnet agent pod on {node}");
        name
    }

    /// The file where node `node`'s IPAM keeps its allocations (in the
    /// node's own root, under the conflist's `dataDir`).
    pub fn ipam_state(&self, node: &str) -> PathBuf {
        PathBuf::from(format!(
            "/var/lib/podnet/{}/nodes/{node}/root/var/lib/cni/podnet/{node}/podnet/state.json",
            self.name
        ))
    }

    /// `podnet down`.
    pub fn down(&self) -> Output {
        Command::new(podnet())
            .args(["down", "--name", &self.name])
            .output()
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.down();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// Whether `ip` lies in `cidr` (IPv4).
pub fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap();
    let a: u32 = ip.parse::<std::net::Ipv4Addr>().unwrap().into();
    let n: u32 = net.parse::<std::net::Ipv4Addr>().unwrap().into();
    let len: u32 = len.parse().unwrap();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a & mask == n & mask
}

/// What of a lab the host can see: namespaces, host links, processes,
/// mounts and files mentioning the lab.
pub fn host_traces(lab: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!("{lab}-")) {
            out.push(format!("netns {n}"));
        }
    }
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    for l in String::from_utf8_lossy(&links.stdout).lines() {
        if l.contains(lab) || l.contains("podnet") || l.contains(": pn") {
            out.push(format!("host link {l}"));
        }
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&format!("/var/lib/podnet/{lab}"))
                || cmd.contains(&format!("--name {lab} "))
                || cmd.contains(&format!("--lab {lab}"))
            {
                out.push(format!("process {} {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for m in mounts.lines().filter(|m| m.contains(lab)) {
        out.push(format!("mount {m}"));
    }
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let cg = format!("{root}/podnet-{lab}");
        if std::path::Path::new(&cg).exists() {
            out.push(format!("cgroup {cg}"));
        }
    }
    if std::path::Path::new(&format!("/var/lib/podnet/{lab}")).exists() {
        out.push(format!("dir /var/lib/podnet/{lab}"));
    }
    out
}

/// Packets through the host's own non-loopback interfaces so far.
pub fn host_packets() -> u64 {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap();
    text.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim() != "lo")
        .map(|(_, rest)| {
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            f.first().copied().unwrap_or(0) + f.get(8).copied().unwrap_or(0)
        })
        .sum()
}
