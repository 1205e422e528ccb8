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
    /// Client pods probing at once (each runs its whole row at once).
    #[arg(long, default_value_t = 16)]
    pub parallel: usize,
    /// Seconds a probe waits for an answer; a probe that fails is tried
    /// once more with twice this.
    #[arg(long, default_value_t = 1)]
    pub timeout: u64,
}

/// One client pod's probed cells: its row, and per (column, probe) whether
/// the connection was made.
type Row = (usize, Vec<((usize, usize), bool)>);

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

    // Every cell, probed from inside the client pod: one exec per client
    // pod runs all of its row's probes at once (an exec costs far more than
    // a probe); cells that fail are probed once more with a longer timeout,
    // so a slow answer under load is not mistaken for a refusal.
    let keys = expected.pods.clone();
    let targets: Vec<String> = keys
        .iter()
        .map(|to| ip_of[&(to.namespace.to_string(), to.name.to_string())].clone())
        .collect();
    let containers: HashMap<(String, String), String> = pods
        .iter()
        .filter_map(|p| {
            Some((
                (p.metadata.namespace.clone()?, p.metadata.name.clone()?),
                p.spec.as_ref()?.containers.first()?.name.clone(),
            ))
        })
        .collect();
    let client = Arc::new(client);
    let mut probed = Matrix::new(keys.clone(), probes.clone());
    let all: Vec<(usize, usize)> = (0..keys.len())
        .flat_map(|t| (0..probes.len()).map(move |p| (t, p)))
        .collect();
    let mut todo: Vec<(usize, Vec<(usize, usize)>)> =
        (0..keys.len()).map(|f| (f, all.clone())).collect();
    for timeout in [args.timeout, args.timeout * 2] {
        let rows: Vec<anyhow::Result<Row>> =
            futures::stream::iter(todo.into_iter().filter(|(_, cells)| !cells.is_empty()))
                .map(|(f, cells)| {
                    let client = client.clone();
                    let from = keys[f].clone();
                    let container = containers
                        .get(&(from.namespace.to_string(), from.name.to_string()))
                        .cloned()
                        .unwrap_or_default();
                    let jobs: Vec<(String, Probe)> = cells
                        .iter()
                        .map(|&(t, p)| (targets[t].clone(), probes[p]))
                        .collect();
                    async move {
                        let ok = probe_row(&client, &from, &container, &jobs, timeout)
                            .await
                            .with_context(|| format!("probing from {from}"))?;
                        Ok((f, cells.into_iter().zip(ok).collect()))
                    }
                })
                .buffer_unordered(args.parallel.max(1))
                .collect()
                .await;
        todo = Vec::new();
        for row in rows {
            let (f, cells) = row?;
            let mut again = Vec::new();
            for ((t, p), ok) in cells {
                probed.set(f, t, p, ok);
                if !ok {
                    again.push((t, p));
                }
            }
            todo.push((f, again));
        }
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

/// The shell command of one real connection from a pod: a TCP (or SCTP)
/// connect, or a UDP message that must be answered (an echo server, as
/// agnhost netexec's UDP port).
fn probe_command(ip: &str, probe: Probe, timeout: u64) -> String {
    match probe.proto {
        Proto::Tcp => format!("nc -z -w {timeout} {ip} {}", probe.port),
        Proto::Udp => format!(
            "echo hostname | nc -u -w {timeout} {ip} {} | grep -q .",
            probe.port
        ),
        Proto::Sctp => format!("nc --sctp -z -w {timeout} {ip} {}", probe.port),
    }
}

/// Runs `jobs` (destination, probe) from inside `from`, all at once, in one
/// exec; returns whether each connected, in order. An exec that cannot run
/// or answers nonsense is an error, never a refused cell.
async fn probe_row(
    client: &kube::Client,
    from: &podnet_core::policy::PodKey,
    container: &str,
    jobs: &[(String, Probe)],
    timeout: u64,
) -> anyhow::Result<Vec<bool>> {
    let mut script = String::new();
    for (i, (ip, probe)) in jobs.iter().enumerate() {
        script.push_str(&format!(
            "( if {} >/dev/null 2>&1; then echo {i}=1; else echo {i}=0; fi ) &\n",
            probe_command(ip, *probe, timeout)
        ));
    }
    script.push_str("wait\n");
    let api: Api<Pod> = Api::namespaced(client.clone(), &from.namespace);
    let mut params = AttachParams::default()
        .stdout(true)
        .stderr(false)
        .stdin(false);
    if !container.is_empty() {
        params = params.container(container);
    }
    let mut proc = api
        .exec(&from.name, vec!["sh", "-c", script.as_str()], &params)
        .await
        .context("exec")?;
    let mut out = Vec::new();
    if let Some(mut stdout) = proc.stdout() {
        use tokio::io::AsyncReadExt;
        stdout
            .read_to_end(&mut out)
            .await
            .context("reading output")?;
    }
    let status = match proc.take_status() {
        Some(s) => s.await,
        None => None,
    };
    let _ = proc.join().await;
    let mut ok: Vec<Option<bool>> = vec![None; jobs.len()];
    for line in String::from_utf8_lossy(&out).lines() {
        if let Some((i, v)) = line.trim().split_once('=')
            && let Ok(i) = i.parse::<usize>()
            && i < ok.len()
        {
            ok[i] = Some(v == "1");
        }
    }
    if ok.iter().any(Option::is_none) {
        anyhow::bail!(
            "the probe script did not report every probe (status {:?}; output {:?}); does the pod have sh and nc?",
            status.and_then(|s| s.message),
            String::from_utf8_lossy(&out)
        );
    }
    Ok(ok.into_iter().map(|v| v == Some(true)).collect())
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
