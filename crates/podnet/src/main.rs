//! `podnet`: the operator's command-line tool and the lab supervisor.
//! One file per verb under `commands/`; the lab's machinery under `lab/`.

mod commands;
mod diag;
mod lab;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "podnet",
    version,
    about = "The Kubernetes pod network, and a lab cluster to see it work"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring a lab cluster up (idempotent; resumes a lab whose control
    /// plane died): namespaces, API server, kubelets, podnet from deploy/.
    Up(commands::up::Args),
    /// Tear a lab down, leaving nothing behind.
    Down(commands::down::Args),
    /// Run a command on a lab node, in its network namespace and with its
    /// own files (`podnet node exec lab-worker -- iptables -t nat -L -n`).
    Node(commands::node::Args),
    /// Show the labs on this machine and their nodes.
    Status(commands::status::Args),
    /// Probe who reaches whom among pods (real connections), optionally
    /// against what the NetworkPolicies say (`--expect`).
    Connectivity(commands::connectivity::Args),
    /// Walk the troubleshooting checklist: the cluster, or the path
    /// `--from` a pod `--to` a pod, service or DNS name (✔/✘/! per check,
    /// with the fix; exit 1 on any ✘).
    Doctor(commands::doctor::Args),
    /// Explain one connection hop by hop from the planners (service
    /// translation, route, policy verdicts naming the rule); `--probe`
    /// sends it and holds each hop against the kernel.
    Trace(commands::trace::Args),
    /// (internal) The lab's control-plane process: API server, controllers
    /// and the host's loopback port to the API server.
    #[command(hide = true)]
    LabDaemon(lab::daemon::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(a) => commands::up::run(a),
        Command::Down(a) => commands::down::run(a),
        Command::Node(a) => commands::node::run(a),
        Command::Status(a) => commands::status::run(a),
        Command::Connectivity(a) => commands::connectivity::run(a),
        Command::Doctor(a) => commands::doctor::run(a),
        Command::Trace(a) => commands::trace::run(a),
        Command::LabDaemon(a) => lab::daemon::run(a),
    }
}
