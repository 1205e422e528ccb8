//! `podnet status`: the labs on this machine, their nodes and processes.

use crate::lab::{self, LabRecord};

/// Arguments of `podnet status`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `podnet status`.
pub fn run(_: Args) -> anyhow::Result<()> {
    let mut any = false;
    for entry in std::fs::read_dir(lab::STATE_ROOT)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rec) = LabRecord::load(&name) else {
            continue;
        };
        any = true;
        let up = lab::alive(rec.daemon_pid);
        println!(
            "lab {name}: {} (API https://127.0.0.1:{}, {} encapsulation, context podnet-{name})",
            if up {
                "up"
            } else {
                "DOWN (run podnet down or up)"
            },
            rec.api_port,
            rec.encap.as_str()
        );
        for n in &rec.nodes {
            println!(
                "  {:<24} {:<14} kubelet {}",
                n.name,
                n.ip,
                if lab::alive(lab::kubelets::pid(&rec.name, &n.name)) {
                    "running"
                } else {
                    "NOT running"
                }
            );
        }
    }
    if !any {
        println!("no labs (podnet up makes one)");
    }
    Ok(())
}
