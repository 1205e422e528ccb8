//! Every process of a lab, found by what it is rather than by where it
//! runs: the control-plane daemon puts itself into a cgroup of the lab's
//! own (`<cgroup2>/podnet-<lab>`), and everything it starts (kubelets,
//! launchers, sandboxes, shims, containers) is born in it. A process whose
//! network namespace was never bound to a name, or that a dying parent
//! left to init, is still in the cgroup, so `down` ends it: one write to
//! `cgroup.kill` kills them all at once (no fork can escape between a
//! listing and a kill), then the cgroup is removed. Without a cgroup2
//! hierarchy, `down` still finds them by mark and namespace (lab/remains.rs).

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where cgroup2 is mounted (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one), if it is.
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        // "... <mount point> <options> - <fstype> <source> <super options>"
        let (left, right) = l.split_once(" - ")?;
        let point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// The lab's cgroup.
pub fn path(lab: &str) -> Option<PathBuf> {
    cgroup2_root().map(|r| r.join(format!("podnet-{lab}")))
}

/// Moves the calling process into the lab's cgroup (made if missing), so
/// that everything it starts from now on is the lab's.
pub fn join(lab: &str) -> std::io::Result<()> {
    let Some(dir) = path(lab) else {
        tracing::warn!(
            "no cgroup2 hierarchy: `down` finds the lab's processes by mark and namespace only"
        );
        return Ok(());
    };
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("cgroup.procs"), b"0")
}

/// The pids in the lab's cgroup.
pub fn pids(lab: &str) -> Vec<i32> {
    path(lab)
        .and_then(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills every process of the lab's cgroup at once (`cgroup.kill`: no
/// fork escapes between a listing and a kill). Kernels before 5.14 have
/// no `cgroup.kill`: then each listed pid gets SIGKILL. Returns how many
/// processes the cgroup held.
pub fn kill(lab: &str) -> usize {
    let Some(dir) = path(lab) else { return 0 };
    let left = pids(lab);
    if left.is_empty() {
        return 0;
    }
    if std::fs::write(dir.join("cgroup.kill"), b"1").is_err() {
        for pid in &left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    left.len()
}

/// Removes the lab's cgroup once it is empty (up to 5 s for the last
/// processes to be reaped).
pub fn remove(lab: &str) {
    let Some(dir) = path(lab) else { return };
    let deadline = Instant::now() + Duration::from_secs(5);
    while dir.exists() {
        match std::fs::remove_dir(&dir) {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                tracing::warn!(dir = %dir.display(), error = %e, "removing the lab's cgroup");
                return;
            }
            Err(_) => {
                kill(lab);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
