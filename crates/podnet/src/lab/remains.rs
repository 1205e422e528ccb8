//! What is left of a lab, found by what it is rather than by what it is
//! called: `podnet down` kills and then verifies with these.
//!
//! A process is the lab's when it is in the lab's cgroup, carries the
//! lab's mark in its environment (`PODNET_LAB=<lab>`, inherited by every
//! kubelet, launcher, sandbox, shim and built-in image), names the lab's
//! state directory on its command line (kubelets, sandboxes, shims), is the
//! lab's daemon, or runs in one of the lab's network namespaces. A network
//! namespace is the lab's when it was recorded at its creation
//! (`netns.log`: inode and cookie, by `up` for the underlay and nodes and
//! by the kubelets for pods): inodes are reused once a namespace is freed,
//! cookies never are, so a namespace of another lab that got a freed inode
//! is never taken for ours. A namespace whose name is gone is still found,
//! by inode over `/proc` (`/proc/*/ns/net`, `/proc/*/fd/*`, every mount
//! namespace's `mountinfo`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The environment variable that marks every process of a lab.
pub const LAB_ENV: &str = "PODNET_LAB";

/// The file, in the lab's state directory and in each node's, where
/// namespaces are recorded as they are made.
pub const NETNS_LOG: &str = "netns.log";

/// A network namespace as it was made: what identifies it for as long as
/// the kernel lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NsRecord {
    /// Its nsfs inode (reused once the namespace is freed).
    pub ino: u64,
    /// Its cookie (`SO_NETNS_COOKIE`, never reused).
    pub cookie: u64,
    /// The name it was bound to under `/run/netns`.
    pub name: String,
}

/// Appends namespace `name`'s identity to `<state>/netns.log`.
pub fn record_netns(lab: &str, name: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let (ino, cookie) = podnet_kernel::netns::identity(&Path::new("/run/netns").join(name))?;
    let dir = super::state_dir(lab);
    std::fs::create_dir_all(&dir)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(NETNS_LOG))?
        .write_all(format!("{ino} {cookie} {name}\n").as_bytes())?;
    Ok(())
}

/// Every namespace the lab recorded (underlay and nodes, and every pod
/// namespace any kubelet made).
pub fn recorded(lab: &str) -> Vec<NsRecord> {
    let state = super::state_dir(lab);
    let mut files = vec![state.join(NETNS_LOG)];
    for e in std::fs::read_dir(state.join("nodes"))
        .into_iter()
        .flatten()
        .flatten()
    {
        files.push(e.path().join(NETNS_LOG));
    }
    let mut out = BTreeSet::new();
    for f in files {
        for l in std::fs::read_to_string(f).unwrap_or_default().lines() {
            let mut w = l.split_whitespace();
            if let (Some(ino), Some(cookie), Some(name)) = (w.next(), w.next(), w.next())
                && let (Ok(ino), Ok(cookie)) = (ino.parse(), cookie.parse())
            {
                out.insert((ino, cookie, name.to_string()));
            }
        }
    }
    out.into_iter()
        .map(|(ino, cookie, name)| NsRecord { ino, cookie, name })
        .collect()
}

/// Whether `name` (under `/run/netns`) has the shape of lab `lab`'s
/// namespaces: `<lab>-underlay`, `<lab>-control-plane`, `<lab>-worker[N]`,
/// `<lab>-pod-<8 hex>-<4 hex>`. Strict, so another lab whose name starts
/// with ours (`lab-pod`, `lab-worker`) never matches.
pub fn is_lab_name(lab: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(lab).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    if rest == "underlay" || rest == "control-plane" {
        return true;
    }
    if let Some(n) = rest.strip_prefix("worker") {
        return n.chars().all(|c| c.is_ascii_digit());
    }
    rest.strip_prefix("pod-").is_some_and(|uid| {
        let b = uid.as_bytes();
        b.len() == 13
            && b[8] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 8 || c.is_ascii_hexdigit())
    })
}

/// The lab's namespaces bound under `/run/netns` now: by recorded identity,
/// or by the lab's naming when the name was never recorded (a kubelet
/// killed between making a namespace and recording it).
pub fn named(lab: &str, recorded: &[NsRecord]) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| recorded.iter().any(|r| &r.name == n) || is_lab_name(lab, n))
        .collect();
    out.sort();
    out
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// This process and its ancestors: never the lab's, whatever they carry.
fn me_and_ancestors() -> HashSet<i32> {
    let mut out = HashSet::new();
    let mut pid = std::process::id() as i32;
    while pid > 1 && out.insert(pid) {
        pid = parent(pid).unwrap_or(0);
    }
    out
}

/// A process's parent.
pub fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A process's command line, arguments split.
pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the process carries `PODNET_LAB=<lab>` in its environment.
fn marked(pid: i32, lab: &str) -> bool {
    let want = format!("{LAB_ENV}={lab}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|e| e.split(|b| *b == 0).any(|v| v == want.as_bytes()))
}

/// Whether the command line is one of the lab's: the daemon
/// (`lab-daemon --name <lab>`), or anything naming the lab's state
/// directory (kubelets, sandboxes, shims).
fn names_lab(args: &[String], lab: &str) -> bool {
    let dir = format!("{}/", super::state_dir(lab).display());
    let daemon = args.iter().any(|a| a == "lab-daemon")
        && args.windows(2).any(|w| w[0] == "--name" && w[1] == lab);
    daemon
        || args
            .iter()
            .any(|a| a.contains(&dir) || *a == dir[..dir.len() - 1])
}

/// Recorded namespaces by inode (one inode may have served several of
/// the lab's namespaces, one after the other).
type ByIno<'a> = HashMap<u64, Vec<&'a NsRecord>>;

fn by_ino(recorded: &[NsRecord]) -> ByIno<'_> {
    let mut m: ByIno<'_> = HashMap::new();
    for r in recorded {
        m.entry(r.ino).or_default().push(r);
    }
    m
}

/// The identity of a namespace by the inode of `path`, when that inode
/// was recorded and the cookie behind `path` is a recorded one.
fn recorded_at<'a>(path: &Path, ino: u64, by_ino: &ByIno<'a>) -> Option<&'a NsRecord> {
    let recs = by_ino.get(&ino)?;
    let file = std::fs::File::open(path).ok()?;
    if file.metadata().ok()?.ino() != ino {
        return None;
    }
    let cookie = podnet_kernel::netns::cookie(std::os::fd::AsFd::as_fd(&file)).ok()?;
    recs.iter().find(|r| r.cookie == cookie).copied()
}

/// Every process of the lab, with why it is the lab's.
pub fn processes(lab: &str, recorded: &[NsRecord]) -> Vec<(i32, String)> {
    let cgroup: HashSet<i32> = super::cgroup::pids(lab).into_iter().collect();
    let skip = me_and_ancestors();
    let by_ino = by_ino(recorded);
    // Inodes of the lab's names bound now: ours by name and identity.
    let named_inos: HashMap<u64, String> = named(lab, recorded)
        .into_iter()
        .filter_map(|n| {
            let ino = std::fs::metadata(Path::new("/run/netns").join(&n))
                .ok()?
                .ino();
            Some((ino, n))
        })
        .collect();
    let mut out = Vec::new();
    for pid in pids() {
        if skip.contains(&pid) {
            continue;
        }
        let why = if cgroup.contains(&pid) {
            Some("in the lab's cgroup".to_string())
        } else if marked(pid, lab) {
            Some(format!("marked {LAB_ENV}={lab}"))
        } else if names_lab(&cmdline(pid), lab) {
            Some("its command line names the lab".to_string())
        } else {
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            match std::fs::metadata(&path).map(|m| m.ino()) {
                Ok(ino) => named_inos
                    .get(&ino)
                    .map(|n| format!("in namespace {n}"))
                    .or_else(|| {
                        recorded_at(&path, ino, &by_ino)
                            .map(|r| format!("in the lab's namespace {} (name gone)", r.name))
                    }),
                Err(_) => None,
            }
        };
        if let Some(why) = why {
            out.push((pid, why));
        }
    }
    out
}

/// What is left of a lab: one line per thing, empty when nothing is.
#[derive(Debug, Default)]
pub struct Remains {
    /// Processes, with why they are the lab's.
    pub processes: Vec<String>,
    /// Recorded namespaces still alive, with what holds them.
    pub namespaces: Vec<String>,
    /// Mounts of the lab's (namespace binds, node directories).
    pub mounts: Vec<String>,
    /// Files and directories: the state directory, namespace names, the
    /// cgroup.
    pub files: Vec<String>,
}

impl Remains {
    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
            && self.namespaces.is_empty()
            && self.mounts.is_empty()
            && self.files.is_empty()
    }

    /// Every line.
    pub fn lines(&self) -> impl Iterator<Item = &String> {
        self.processes
            .iter()
            .chain(&self.namespaces)
            .chain(&self.mounts)
            .chain(&self.files)
    }
}

/// Looks, over `/proc`, for anything of the lab: its processes; every
/// holder of a recorded namespace (a process in it, an open fd on it, a
/// bind mount of it in any mount namespace); mounts naming the lab; the
/// state directory, namespace names and cgroup.
pub fn find(lab: &str, recorded: &[NsRecord]) -> Remains {
    let mut r = Remains::default();
    for (pid, why) in processes(lab, recorded) {
        r.processes
            .push(format!("process {pid} ({why}): {}", cmdline(pid).join(" ")));
    }
    let by_ino = by_ino(recorded);
    let state = format!("{}/", super::state_dir(lab).display());
    let mut mount_namespaces = HashSet::new();
    let mut held = BTreeSet::new();
    for pid in pids() {
        let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        if let Ok(ino) = std::fs::metadata(&ns).map(|m| m.ino())
            && let Some(rec) = recorded_at(&ns, ino, &by_ino)
        {
            held.insert(format!(
                "namespace {} ({ino}): process {pid} runs in it",
                rec.name
            ));
        }
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(ino) = target
                .strip_prefix("net:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
                && let Some(rec) = recorded_at(&fd.path(), ino, &by_ino)
            {
                held.insert(format!(
                    "namespace {} ({ino}): open in process {pid} ({})",
                    rec.name,
                    fd.path().display()
                ));
            }
        }
        // One mountinfo per mount namespace.
        let Ok(mnt) = std::fs::metadata(format!("/proc/{pid}/ns/mnt")).map(|m| m.ino()) else {
            continue;
        };
        if !mount_namespaces.insert(mnt) {
            continue;
        }
        for l in std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .unwrap_or_default()
            .lines()
        {
            let Some((left, right)) = l.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = left.split_whitespace().collect();
            let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else {
                continue;
            };
            let nsfs_ino = (right.split_whitespace().next() == Some("nsfs"))
                .then(|| {
                    root.strip_prefix("net:[")
                        .and_then(|t| t.strip_suffix(']'))
                        .and_then(|t| t.parse::<u64>().ok())
                })
                .flatten();
            let bound = nsfs_ino.and_then(|ino| {
                let path = PathBuf::from(format!("/proc/{pid}/root{point}"));
                recorded_at(&path, ino, &by_ino)
            });
            let lab_name = point
                .strip_prefix("/run/netns/")
                .is_some_and(|n| is_lab_name(lab, n) || recorded.iter().any(|r| r.name == n));
            if bound.is_some() || lab_name || point.contains(&state) || root.contains(&state) {
                r.mounts.push(format!("mount (seen by process {pid}): {l}"));
            }
            if let Some(rec) = bound {
                held.insert(format!(
                    "namespace {}: bound at {point} (mount namespace of process {pid})",
                    rec.name
                ));
            }
        }
    }
    r.namespaces = held.into_iter().collect();
    for n in named(lab, recorded) {
        r.files.push(format!("/run/netns/{n}"));
    }
    let state = super::state_dir(lab);
    if state.exists() {
        r.files.push(state.display().to_string());
    }
    if let Some(cg) = super::cgroup::path(lab)
        && cg.exists()
    {
        r.files.push(cg.display().to_string());
    }
    r
}
