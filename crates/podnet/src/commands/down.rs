//! `podnet down`: remove every process, namespace, file and kubeconfig
//! entry a lab made, then prove it over `/proc`. Processes are found by
//! what they are (the lab's cgroup, its mark, its command lines, its
//! namespaces), not by namespace names alone, and namespaces by the
//! identities recorded at their creation, so one whose name is gone is
//! still found. Works without the record too (after a crash).

use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::lab::{self, LabRecord, remains};

/// Arguments of `podnet down`.
#[derive(clap::Args)]
pub struct Args {
    /// The lab's name.
    #[arg(long, default_value = "lab")]
    pub name: String,
}

/// Runs `podnet down`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rec = LabRecord::load(&args.name);
    let report = teardown(&args.name, rec.as_ref(), true);
    println!(
        "Lab {:?}: {} processes ended ({} in its cgroup), {} network namespaces removed.",
        args.name, report.killed, report.in_cgroup, report.namespaces
    );
    if report.left.is_empty() {
        println!(
            "Checked over /proc ({} recorded namespaces by inode and cookie, every process, fd and mount namespace): nothing of lab {:?} is left.",
            report.recorded, args.name
        );
        Ok(())
    } else {
        for l in report.left.lines() {
            eprintln!("  left: {l}");
        }
        anyhow::bail!(
            "lab {:?} is not entirely gone: {} things left (above)",
            args.name,
            report.left.lines().count()
        )
    }
}

/// What `teardown` did and what it found left afterwards.
pub struct Report {
    /// Processes killed (every round).
    pub killed: usize,
    /// Of them, found in the lab's cgroup.
    pub in_cgroup: usize,
    /// Named namespaces deleted.
    pub namespaces: usize,
    /// Namespaces recorded at creation, checked afterwards.
    pub recorded: usize,
    /// What is still there (empty: nothing).
    pub left: remains::Remains,
}

/// Whether `pid` is lab `name`'s daemon (a recorded pid may be anyone's
/// after a reboot).
fn is_daemon(pid: i32, name: &str) -> bool {
    let args = remains::cmdline(pid);
    args.iter().any(|a| a == "lab-daemon")
        && args.windows(2).any(|w| w[0] == "--name" && w[1] == name)
}

/// Removes everything of lab `name`, then looks over `/proc` for anything
/// left. Processes are found by what they are (cgroup, mark, command line,
/// namespace: lab/remains.rs), killed until none is found, then the
/// namespaces, the cgroup, the state and the kubeconfig entries go.
/// With `verify`, `Report::left` is filled by a look over `/proc`
/// (a few hundred milliseconds on a busy machine; `up` cleaning a name
/// before use skips it).
pub fn teardown(name: &str, rec: Option<&LabRecord>, verify: bool) -> Report {
    // Read before anything goes: the state directory holds the records.
    let recorded = remains::recorded(name);
    // The daemon first: it would start the kubelets again.
    if let Some(pid) = rec
        .and_then(|r| r.daemon_pid)
        .filter(|p| is_daemon(*p, name))
    {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let (mut killed, mut in_cgroup) = (0, 0);
    let mut seen = std::collections::HashSet::new();
    for round in 0..100 {
        // Listed before the kill, so the count says what was there.
        let found = remains::processes(name, &recorded);
        lab::cgroup::kill(name);
        if found.is_empty() {
            break;
        }
        for (pid, why) in &found {
            if seen.insert(*pid) {
                killed += 1;
                if why.contains("cgroup") {
                    in_cgroup += 1;
                }
                tracing::debug!(pid, why, "killing");
            }
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(if round < 10 {
            20
        } else {
            100
        }));
    }
    let named = remains::named(name, &recorded);
    // Pods first, then nodes, then the underlay: their veths go with them.
    for ns in named.iter().rev() {
        if let Err(e) = podnet_kernel::netns::delete_named(ns) {
            tracing::warn!(netns = %ns, error = %e, "deleting");
        }
    }
    lab::cgroup::remove(name);
    let mut mount_points = rec.map(|r| r.mount_points.clone()).unwrap_or_default();
    mount_points.extend(lab::sandbox_mount_points(name));
    let _ = std::fs::remove_dir_all(lab::state_dir(name));
    lab::remove_mount_points(name, &mount_points);
    if rec.is_some_and(|r| r.kubeconfig == lab::state_dir(name).join("kubeconfig")) {
        let ctx = format!("podnet-{name}");
        for what in ["delete-context", "delete-cluster", "delete-user"] {
            let _ = Command::new(super::up::kubectl())
                .args(["config", what, &ctx])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    // A namespace's last holder may take a moment to be reaped.
    if !verify {
        return Report {
            killed,
            in_cgroup,
            namespaces: named.len(),
            recorded: recorded.len(),
            left: remains::Remains::default(),
        };
    }
    let mut left = remains::find(name, &recorded);
    for _ in 0..20 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = remains::find(name, &recorded);
    }
    Report {
        killed,
        in_cgroup,
        namespaces: named.len(),
        recorded: recorded.len(),
        left,
    }
}
