//! `podnet down`: remove every process, namespace, file and kubeconfig
//! entry a lab made. Works from the record, and without it (after a crash)
//! from the lab's naming alone.

use std::process::{Command, Stdio};

use crate::lab::{self, LabRecord, topology};

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
    teardown(&args.name, rec.as_ref());
    println!("Lab {:?} is down; nothing of it is left.", args.name);
    Ok(())
}

/// Removes everything of lab `name`.
pub fn teardown(name: &str, rec: Option<&LabRecord>) {
    if let Some(rec) = rec {
        // The daemon first: it would start the kubelets again.
        let pids = rec.daemon_pid.into_iter().chain(
            rec.nodes
                .iter()
                .filter_map(|n| lab::kubelets::pid(name, &n.name)),
        );
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    lab::cgroup::kill_all(name);
    topology::destroy(name);
    let _ = std::fs::remove_dir_all(lab::state_dir(name));
    if let Some(rec) = rec {
        lab::remove_mount_points(name, &rec.mount_points);
    }
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
}
