//! `podnet connectivity`: the truth table. Probes every pair of pods in the
//! given namespaces with real connections from inside the client pod (exec
//! through the API), and prints who reaches whom per protocol and port.
//! `--expect` computes the same matrix from the objects with the planner
//! that programs the kernel, and marks every cell where the two disagree.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, AttachParams, ListParams};
use podnet_core::policy::{Matrix, Probe, Proto, expected_matrix};

/// Arguments of `podnet connectivity`.
#[derive(clap::Args)]
pub struct Args {
    /// Namespaces whose pods are probed (comma-separated).
    #[arg(long, short = 'n', default_value = "default", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Destination ports (comma-separated).
    #[arg(long, default_value = "80", value_delimiter = ',')]
    pub ports: Vec<u16>,
    /// Protocols: tcp, udp (comma-separated). UDP probes expect an echo
    /// server (agnhost netexec answers on its UDP port).
    #[arg(long, default_value = "tcp", value_delimiter = ',')]
    pub protocols: Vec<String>,
    /// Also compute the expected matrix and mark disagreements.
    #[arg(long)]
    pub expect: bool,
    /// `table` or `json`.
    #[arg(long, short = 'o', default_value = "table")]
    pub output: String,
    /// Kubeconfig (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Probes run at once.
    #[arg(long, default_value_t = 16)]
    pub parallel: usize,
}

/// Runs `podnet connectivity`; exits non-zero when `--expect` finds a
/// disagreement.
pub fn run(args: Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run_async(args))
}

async fn client(path: &Option<std::path::PathBuf>) -> anyhow::Result<kube::Client> {
    Ok(match path {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)?;
            kube::Client::try_from(
                kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?,
            )?
        }
        None => kube::Client::try_default().await?,
    })
}

async fn run_async(args: Args) -> anyhow::Result<()> {
    let client = client(&args.kubeconfig)
        .await
        .context("reaching the API server")?;
    let mut probes = Vec::new();
    for proto in &args.protocols {
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "sctp" => Proto::Sctp,
            other => anyhow::bail!("unknown protocol {other:?} (tcp, udp, sctp)"),
        };
        for &port in &args.ports {
            probes.push(Probe { proto, port });
        }
    }
    let mut pods = Vec::new();
    for ns in &args.namespaces {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        for p in api.list(&ListParams::default()).await? {
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let host = p
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false);
            if running && !host {
                pods.push(p);
            }
        }
    }
    let namespaces: Vec<Namespace> = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let policies: Vec<NetworkPolicy> = Api::<NetworkPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let expected = expected_matrix(&pods, &namespaces, &policies, &probes)
        .map_err(|e| anyhow::anyhow!("planning the expected matrix: {e}"))?;
    let ip_of: HashMap<(String, String), String> = pods
        .iter()
        .filter_map(|p| {
            Some((
                (p.metadata.namespace.clone()?, p.metadata.name.clone()?),
                p.status.as_ref()?.pod_ip.clone()?,
            ))
        })
        .collect();

    // Every cell, probed from inside the client pod.
    let keys = expected.pods.clone();
    let mut jobs = Vec::new();
    for (f, from) in keys.iter().enumerate() {
        for (t, to) in keys.iter().enumerate() {
            for (pi, probe) in probes.iter().enumerate() {
                let ip = ip_of[&(to.namespace.clone(), to.name.clone())].clone();
                jobs.push((f, t, pi, from.clone(), ip, *probe));
            }
        }
    }
    let client = Arc::new(client);
    let results: Vec<(usize, usize, usize, bool)> = futures::stream::iter(jobs)
        .map(|(f, t, pi, from, ip, probe)| {
            let client = client.clone();
            async move {
                let ok = probe_one(&client, &from.namespace, &from.name, &ip, probe).await;
                (f, t, pi, ok)
            }
        })
        .buffer_unordered(args.parallel.max(1))
        .collect()
        .await;
    let mut probed = Matrix::new(keys, probes.clone());
    for (f, t, pi, ok) in results {
        probed.set(f, t, pi, ok);
    }
    let mismatches = if args.expect {
        expected.mismatches(&probed)
    } else {
        Vec::new()
    };
    if args.output == "json" {
        let mut v = serde_json::json!({"probed": probed});
        if args.expect {
            v["expected"] = serde_json::to_value(&expected)?;
            v["mismatches"] = serde_json::to_value(&mismatches)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!(
            "{}",
            render(
                &probed,
                args.expect.then_some(&expected),
                std::io::stdout().is_terminal()
            )
        );
        if args.expect {
            println!(
                "{} of {} cells: kernel and model {}",
                mismatches.len(),
                probed.cells.len(),
                if mismatches.is_empty() {
                    "agree"
                } else {
                    "DISAGREE (marked !)"
                }
            );
        }
    }
    if !mismatches.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// One real connection from a pod: TCP connect, or a UDP message that
/// must be answered.
async fn probe_one(client: &kube::Client, ns: &str, pod: &str, ip: &str, probe: Probe) -> bool {
    let cmd = match probe.proto {
        Proto::Tcp => format!("nc -z -w 1 {ip} {} 2>/dev/null", probe.port),
        Proto::Udp => format!(
            "echo hostname | nc -u -w 1 {ip} {} 2>/dev/null | grep -q .",
            probe.port
        ),
        Proto::Sctp => format!("nc --sctp -z -w 1 {ip} {} 2>/dev/null", probe.port),
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    // kube-rs wants one stream; stderr carries nothing here (output is
    // discarded in the shell), so the exit status is all that is read.
    let params = AttachParams::default()
        .stdout(false)
        .stderr(true)
        .stdin(false);
    let mut proc = match api.exec(pod, vec!["sh", "-c", cmd.as_str()], &params).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("probe from {ns}/{pod} could not run: {e}");
            return false;
        }
    };
    let status = match proc.take_status() {
        Some(s) => s.await,
        None => None,
    };
    let _ = proc.join().await;
    status.and_then(|s| s.status).as_deref() == Some("Success")
}

/// Rows from, columns to, ✔/✘ per probe; with the model, a `!` marks a
/// cell where kernel and model disagree. Colours on a terminal.
fn render(m: &Matrix, expected: Option<&Matrix>, colour: bool) -> String {
    let names: Vec<String> = m.pods.iter().map(|p| p.to_string()).collect();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(1).max(4);
    let first = width.max("from \\ to".len());
    let mut s = String::new();
    for (pi, probe) in m.probes.iter().enumerate() {
        s.push_str(&format!("{probe}\n{:first$}", "from \\ to"));
        for n in &names {
            s.push_str(&format!(" {n:>width$}"));
        }
        s.push('\n');
        for (f, from) in names.iter().enumerate() {
            s.push_str(&format!("{from:first$}"));
            for t in 0..names.len() {
                let ok = m.get(f, t, pi);
                let wrong = expected.is_some_and(|e| e.get(f, t, pi) != ok);
                let mark = format!(
                    "{}{}",
                    if ok { "✔" } else { "✘" },
                    if wrong { "!" } else { "" }
                );
                let cell = format!("{mark:>width$}");
                let painted = match (colour, ok, wrong) {
                    (false, ..) => cell,
                    (true, _, true) => format!("\x1b[1;33m{cell}\x1b[0m"),
                    (true, true, _) => format!("\x1b[32m{cell}\x1b[0m"),
                    (true, false, _) => format!("\x1b[31m{cell}\x1b[0m"),
                };
                s.push(' ');
                s.push_str(&painted);
            }
            s.push('\n');
        }
        s.push('\n');
    }
    s
}
