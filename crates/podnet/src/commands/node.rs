//! `podnet node exec NODE -- CMD`: a shell on a lab node, as
//! `docker exec -it kind-worker bash` is on a kind node. The command runs
//! in the node's network namespace and sees the node's own filesystem
//! and hostname (its kubelet's mount and UTS namespaces, where
//! `/etc/cni/net.d`, `/opt/cni/bin` and `/var/lib/cni` are the node's), so
//! the seed's
//! `iptables -t nat -L -n | grep KUBE` or `ip route` run where they mean.

use std::os::unix::process::CommandExt;
use std::path::Path;

use anyhow::{Context, bail};

use crate::lab::{self, LabRecord};

/// Arguments of `podnet node`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(clap::Subcommand)]
enum NodeCommand {
    /// Run a command on a lab node (default: a login shell).
    Exec(ExecArgs),
}

#[derive(clap::Args)]
struct ExecArgs {
    /// Keep stdin open (accepted for `docker exec -i`'s sake: the command
    /// always has this terminal's stdin).
    #[arg(short = 'i', long)]
    stdin: bool,
    /// Allocate a TTY (accepted for `docker exec -t`'s sake: the command
    /// runs on this terminal).
    #[arg(short = 't', long)]
    tty: bool,
    /// The node, e.g. `lab-worker` (see `podnet status`).
    node: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
}

/// Runs `podnet node ...`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        NodeCommand::Exec(a) => exec(a),
    }
}

/// The lab that has node `node`.
fn lab_of(node: &str) -> Option<LabRecord> {
    std::fs::read_dir(lab::STATE_ROOT)
        .ok()?
        .flatten()
        .filter_map(|e| LabRecord::load(&e.file_name().to_string_lossy()))
        .find(|r| r.nodes.iter().any(|n| n.name == node))
}

fn exec(a: ExecArgs) -> anyhow::Result<()> {
    let _ = (a.stdin, a.tty);
    let Some(rec) = lab_of(&a.node) else {
        bail!(
            "no lab has a node {:?} (podnet status lists the labs and their nodes)",
            a.node
        );
    };
    let netns = std::fs::File::open(Path::new("/run/netns").join(&a.node))
        .with_context(|| format!("node {} has no network namespace: is the lab up?", a.node))?;
    // The node's filesystem and hostname are its kubelet's mount and UTS
    // namespaces.
    let kubelet = lab::kubelets::pid(&rec.name, &a.node).filter(|p| lab::alive(Some(*p)));
    let ns_of =
        |what: &str| kubelet.and_then(|p| std::fs::File::open(format!("/proc/{p}/ns/{what}")).ok());
    if let (Some(mnt), Some(uts)) = (ns_of("mnt"), ns_of("uts")) {
        nix::sched::setns(&mnt, nix::sched::CloneFlags::CLONE_NEWNS)
            .context("entering the node's mount namespace")?;
        nix::sched::setns(&uts, nix::sched::CloneFlags::CLONE_NEWUTS)
            .context("entering the node's UTS namespace")?;
        std::env::set_current_dir("/")?;
    } else {
        eprintln!(
            "podnet: the kubelet of {} is not running: the host's files are shown, not the node's",
            a.node
        );
    }
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
        .context("entering the node's network namespace")?;
    let argv = if a.command.is_empty() {
        vec!["/bin/bash".to_string(), "-l".to_string()]
    } else {
        a.command
    };
    let err = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env("PS1", format!("root@{}:\\w# ", a.node))
        .exec();
    bail!("{}: {err}", argv[0])
}
