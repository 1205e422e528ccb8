//! The lab: a cluster of network namespaces on one machine. Everything it
//! makes is named after the lab (`<lab>-control-plane`, `<lab>-worker`,
//! `<lab>-underlay`, `<lab>-pod-*`) and recorded under its state directory,
//! so `down` (or the next `up`) can remove all of it, even after `kill -9`.

pub mod cgroup;
pub mod daemon;
pub mod install;
pub mod kubelets;
pub mod remains;
pub mod topology;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where labs keep their state.
pub const STATE_ROOT: &str = "/var/lib/podnet";

/// How pods' traffic crosses nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Encap {
    /// VXLAN overlay (VNI 1, UDP 4789), MTU lowered by 50.
    Vxlan,
    /// Plain routes to each node's pod CIDR via its address.
    HostGw,
}

impl Encap {
    /// The name the agent takes on its command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Encap::Vxlan => "vxlan",
            Encap::HostGw => "host-gw",
        }
    }
}

/// One node of the lab.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node name, also its namespace's name.
    pub name: String,
    /// Its address on the underlay.
    pub ip: Ipv4Addr,
}

/// What `up` made, kept in `<state>/lab.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabRecord {
    /// The lab's name.
    pub name: String,
    /// Encapsulation.
    pub encap: Encap,
    /// The host loopback port forwarded to the API server.
    pub api_port: u16,
    /// The control-plane daemon's pid.
    pub daemon_pid: Option<i32>,
    /// Nodes, control plane first.
    pub nodes: Vec<NodeRecord>,
    /// The kubeconfig written for the user.
    pub kubeconfig: PathBuf,
    /// Empty directories `up` made on the host as mount points for the
    /// nodes' own `/etc/cni/net.d`, `/opt/cni/bin`, `/var/lib/cni` (a
    /// bind needs a directory to land on); `down` removes them again when
    /// no other lab is left and they are still empty.
    #[serde(default)]
    pub mount_points: Vec<PathBuf>,
    /// The agents' proxy mode (`up --proxy-mode`), for a resumed lab.
    #[serde(default = "default_proxy_mode")]
    pub proxy_mode: String,
    /// Whether node IPAM assigns pod CIDRs (`up --allocate-node-cidrs`).
    #[serde(default = "yes")]
    pub allocate_node_cidrs: bool,
    /// `podnet-config` settings given to `up --config KEY=VALUE`.
    #[serde(default)]
    pub config: Vec<String>,
}

fn default_proxy_mode() -> String {
    "nftables".into()
}

fn yes() -> bool {
    true
}

/// The lab's state directory.
pub fn state_dir(name: &str) -> PathBuf {
    PathBuf::from(STATE_ROOT).join(name)
}

/// Node names, kind-style: `<lab>-control-plane`, `<lab>-worker`,
/// `<lab>-worker2`, ...
pub fn node_names(name: &str, workers: usize) -> Vec<String> {
    let mut v = vec![format!("{name}-control-plane")];
    for i in 0..workers {
        v.push(if i == 0 {
            format!("{name}-worker")
        } else {
            format!("{name}-worker{}", i + 1)
        });
    }
    v
}

/// The underlay address of node `i` (0 is the control plane).
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 18, 0, 2 + i as u8)
}

impl LabRecord {
    /// Reads a lab's record; `None` when it has none.
    pub fn load(name: &str) -> Option<Self> {
        let bytes = std::fs::read(state_dir(name).join("lab.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes the record atomically.
    pub fn save(&self) -> anyhow::Result<()> {
        let dir = state_dir(&self.name);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, dir.join("lab.json"))?;
        Ok(())
    }
}

/// Whether a pid is alive: it exists and is not a zombie (where PID 1 does
/// not reap, a killed daemon stays a zombie).
pub fn alive(pid: Option<i32>) -> bool {
    pid.is_some_and(|p| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
            // "<pid> (<comm>) <state> ...": comm may hold spaces.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
        })
    })
}

/// The host paths the lab's kubelets bind each node's own directories on.
pub const NODE_PATHS: [&str; 3] = ["/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni"];

/// Makes the missing mount points of [`NODE_PATHS`] (and their missing
/// parents), returning every directory made, deepest last.
pub fn make_mount_points() -> anyhow::Result<Vec<PathBuf>> {
    let mut made = Vec::new();
    for path in NODE_PATHS {
        let mut missing: Vec<PathBuf> = std::path::Path::new(path)
            .ancestors()
            .take_while(|p| !p.exists())
            .map(PathBuf::from)
            .collect();
        missing.reverse();
        for dir in missing {
            std::fs::create_dir(&dir)
                .map_err(|e| anyhow::anyhow!("mkdir {}: {e}", dir.display()))?;
            made.push(dir);
        }
    }
    Ok(made)
}

/// The mount points the lab's sandboxes made on the shared filesystem (a
/// volume target that did not exist), from each node's `mount-points.log`
/// (the kubelet's `MOUNT_POINTS_LOG`), parents before children.
pub fn sandbox_mount_points(lab: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let nodes = std::fs::read_dir(state_dir(lab).join("nodes"));
    for e in nodes.into_iter().flatten().flatten() {
        let log = std::fs::read_to_string(e.path().join("mount-points.log")).unwrap_or_default();
        for line in log.lines().filter(|l| l.starts_with('/')) {
            let p = PathBuf::from(line);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Removes the mount points a lab made, deepest first, each only if it is
/// empty, and only when no other lab is recorded (another lab's kubelets
/// may have their nodes' directories bound there).
pub fn remove_mount_points(lab: &str, made: &[PathBuf]) {
    let others = std::fs::read_dir(STATE_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name() != lab && e.path().join("lab.json").exists());
    if others {
        return;
    }
    for path in made.iter().rev() {
        // Only what is still as it was made: an empty directory, or an
        // empty file (the mount point of a file volume).
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                let _ = std::fs::remove_dir(path);
            }
            Ok(m) if m.is_file() && m.len() == 0 => {
                let _ = std::fs::remove_file(path);
            }
            _ => {}
        }
    }
}
