//! `podnet trace SRC-POD DST[:PORT][/PROTO] [--probe]`: a connection's
//! path hop by hop, from the same planners that programmed the kernel:
//! the source pod and node, the service translation (candidates, and how
//! a new connection picks one), the route or overlay to the destination
//! node, the destination pod, and the policy verdicts at egress and
//! ingress naming the policy and rule that admit it, or "isolated by A, B;
//! no rule admits <peer>:<port>/<proto>". With `--probe` the real packet
//! goes from inside the source pod and the kernel confirms or contradicts
//! each hop (conntrack for the endpoint taken, the policy table's drop
//! counters for the side that refused).

use std::io::IsTerminal;
use std::net::Ipv4Addr;

use anyhow::Context;
use podnet_core::policy::{Direction, PolicyWorld};
use serde_json::json;

use crate::diag::checks::probe_script;
use crate::diag::node::{self, LabShell, NodeShell};
use crate::diag::path::{self, PathPlan, drop_counters, route_to, verdict_text};
use crate::diag::world::{self, Target, World, key, pod_place};
use crate::diag::{Progress, pod_sh};

/// Arguments of `podnet trace`.
#[derive(clap::Args)]
pub struct Args {
    /// The source pod (`NAME` or `NS/NAME`).
    pub src: String,
    /// The destination: a pod, service, DNS name or address, with
    /// `:PORT` (number or name) and `/PROTO` (tcp, udp).
    pub dst: String,
    /// Send the real packet and hold each hop against the kernel.
    #[arg(long)]
    pub probe: bool,
    /// The namespace of names without one.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// `text` or `json`.
    #[arg(long, short = 'o', default_value = "text")]
    pub output: String,
    /// The lab whose nodes to read (default: from the kubeconfig).
    #[arg(long)]
    pub name: Option<String>,
    /// Kubeconfig (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// What a probe found: connected, where a drop counter rose (direction,
/// node, pod), and the source node's conntrack entry of it.
type Probed = (
    bool,
    Option<(Direction, String, String)>,
    Option<node::CtEntry>,
);

/// One hop as printed.
#[derive(serde::Serialize)]
struct Hop {
    step: &'static str,
    text: String,
    /// Whether the plan lets the connection past this hop.
    pass: bool,
    /// What the kernel said, when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<path::KernelSays>,
}

/// Runs `podnet trace`; exits 1 when the connection does not pass (in the
/// plan, or with `--probe` in the kernel) or the kernel contradicts a hop.
pub fn run(args: Args) -> anyhow::Result<()> {
    let ok = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run_async(&args))?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

async fn run_async(args: &Args) -> anyhow::Result<bool> {
    let progress = Progress::new();
    progress.step("reading the API");
    let client = world::client(&args.kubeconfig)
        .await
        .context("reaching the API server")?;
    let lab = world::lab_name(&args.name, &args.kubeconfig)?;
    let sh = LabShell::new(&lab);
    let w = World::fetch(client).await?;
    let policy = PolicyWorld::new(&w.pods, &w.namespaces, &w.policies)
        .map_err(|e| anyhow::anyhow!("reading the NetworkPolicies: {e}"))?;
    let src = match w.resolve(&args.src, &args.namespace) {
        Target::Pod(p) => p,
        _ => anyhow::bail!("no pod {} (in namespace {})", args.src, args.namespace),
    };
    let (name, spec) = path::split_target(&args.dst)?;
    let target = w.resolve(&name, &args.namespace);
    let mut plan = path::plan_path(&w, &policy, &src, &target, &spec, None)?;

    // The probe: drop counters before, the real connection from inside the
    // source pod (from a source port of its own, to find its conntrack
    // entry), then conntrack and the counters after.
    let mut probe = None;
    if args.probe {
        progress.step("probing from the source pod");
        let src_node = plan.src_node.clone();
        let dst_nodes: Vec<String> = plan
            .candidates
            .iter()
            .chain(plan.backend.iter())
            .filter_map(|b| b.node.clone())
            .collect();
        let mut nodes = vec![src_node.clone()];
        nodes.extend(dst_nodes);
        nodes.sort();
        nodes.dedup();
        let before: Vec<_> = nodes.iter().map(|n| drop_counters(&sh, n)).collect();
        let sport = 20000
            + (std::process::id() % 20000) as u16
            + (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_micros())
                .unwrap_or(0)
                % 20000) as u16;
        let cmd = probe_script(&plan.dst_ip.to_string(), plan.dst_port, plan.proto, 2).replacen(
            "nc ",
            &format!("nc -p {sport} "),
            1,
        );
        let out = pod_sh(
            &w.client,
            &src,
            &format!("if {cmd}; then echo connected; else echo refused; fi"),
        )
        .await?;
        let connected = out.stdout.contains("connected");
        let after: Vec<_> = nodes.iter().map(|n| drop_counters(&sh, n)).collect();
        let mut refused_at = None;
        for (i, n) in nodes.iter().enumerate() {
            for (k, v) in &after[i] {
                if before[i].get(k).copied().unwrap_or(0) < *v {
                    let dir = k.0;
                    let who = w.resolve(&k.1, "default");
                    let who = match who {
                        Target::Pod(p) => key(&p.metadata),
                        _ => k.1.clone(),
                    };
                    let relevant = (dir == Direction::Egress && k.1 == plan.src_ip.to_string())
                        || dir == Direction::Ingress;
                    if relevant {
                        refused_at = Some((dir, n.clone(), who));
                    }
                }
            }
        }
        let ct = src_node_conntrack(&sh, &plan, sport);
        if let Some(e) = &ct
            && plan.service.is_some()
            && let Ok(ip) = e.reply_src.parse::<Ipv4Addr>()
        {
            plan = path::plan_path(&w, &policy, &src, &target, &spec, Some(ip))?;
        }
        probe = Some((connected, refused_at, ct));
    }
    progress.done();

    let hops = hops(&w, &sh, &plan, probe.as_ref());
    let allowed = plan.allowed();
    let denied_at = if plan.backend.is_none() {
        Some("service (no endpoints)")
    } else if !plan.egress.verdict().allows() {
        Some("egress")
    } else if !plan.ingress.verdict().allows() {
        Some("ingress")
    } else {
        None
    };
    let deciding: Vec<String> = match denied_at {
        Some("egress") => plan.egress.isolating.clone(),
        Some("ingress") => plan.ingress.isolating.clone(),
        Some(_) => vec![],
        None => {
            let mut v: Vec<String> = plan
                .egress
                .admitting
                .iter()
                .chain(plan.ingress.admitting.iter())
                .map(|(p, _)| p.clone())
                .collect();
            v.dedup();
            v
        }
    };
    let kernel_disagrees = hops
        .iter()
        .any(|h| h.kernel.as_ref().is_some_and(|k| !k.agrees));
    let probe_json = probe.as_ref().map(|(connected, refused, ct)| {
        json!({
            "connected": connected,
            "refused_at": refused.as_ref().map(|(d, n, who)| json!({"direction": d.as_str(), "node": n, "pod": who})),
            "endpoint": ct.as_ref().map(|e| e.reply_src.clone()),
            "agrees": *connected == allowed,
        })
    });
    if args.output == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "plan": plan,
                "hops": hops,
                "allowed": allowed,
                "denied_at": denied_at,
                "deciding": deciding,
                "probe": probe_json,
            }))?
        );
    } else {
        let colour = std::io::stdout().is_terminal();
        println!(
            "trace {} → {}:{}/{}",
            plan.src, plan.dst, plan.dst_port, plan.proto
        );
        for (i, h) in hops.iter().enumerate() {
            let mark = if h.pass { "✔" } else { "✘" };
            let mark = match (colour, h.pass) {
                (false, _) => mark.to_string(),
                (true, true) => format!("\x1b[32m{mark}\x1b[0m"),
                (true, false) => format!("\x1b[31m{mark}\x1b[0m"),
            };
            println!("{} {mark} {:<12} {}", i + 1, h.step, h.text);
            if let Some(k) = &h.kernel {
                println!(
                    "        kernel: {} {}",
                    if k.agrees { "agrees:" } else { "CONTRADICTS:" },
                    k.evidence
                );
            }
        }
        match denied_at {
            None => println!(
                "verdict: ALLOWED (admitted by {})",
                if deciding.is_empty() {
                    "no policy: open".into()
                } else {
                    deciding.join(", ")
                }
            ),
            Some(at) => println!(
                "verdict: DENIED at {at}{}",
                if deciding.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", deciding.join(", "))
                }
            ),
        }
        if let Some((connected, _, _)) = &probe {
            println!(
                "probe: {} — {}",
                if *connected {
                    "connected"
                } else {
                    "no connection"
                },
                if *connected == allowed {
                    "the kernel agrees with the plan"
                } else {
                    "the KERNEL DISAGREES with the plan"
                }
            );
        }
    }
    let probe_ok = probe.as_ref().is_none_or(|(c, _, _)| *c == allowed && *c);
    Ok(allowed && probe_ok && !kernel_disagrees)
}

/// The source node's conntrack entry of the probe (by its source port).
fn src_node_conntrack(sh: &LabShell, plan: &PathPlan, sport: u16) -> Option<node::CtEntry> {
    let proto = plan.proto.nft();
    let out = sh
        .node_cmd(
            &plan.src_node,
            &[
                "conntrack",
                "-L",
                "-p",
                proto,
                "-s",
                &plan.src_ip.to_string(),
                "-d",
                &plan.dst_ip.to_string(),
                "--sport",
                &sport.to_string(),
            ],
        )
        .ok()?;
    node::parse_conntrack(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .next()
}

fn hops(w: &World, sh: &LabShell, plan: &PathPlan, probe: Option<&Probed>) -> Vec<Hop> {
    let mut hops = Vec::new();
    hops.push(Hop {
        step: "source",
        text: format!(
            "{} {} on {} ({})",
            plan.src,
            plan.src_ip,
            plan.src_node,
            w.node_ip(&plan.src_node).unwrap_or_default()
        ),
        pass: true,
        kernel: None,
    });
    if let Some(svc) = &plan.service {
        let cands: Vec<String> = plan
            .candidates
            .iter()
            .map(|c| {
                format!(
                    "{}:{} ({})",
                    c.ip,
                    c.port,
                    c.pod.clone().unwrap_or_else(|| "not a pod".into())
                )
            })
            .collect();
        let text = if cands.is_empty() {
            format!(
                "{svc} ({}) has no endpoints on {}'s plan: a new connection is refused",
                plan.dst_ip, plan.src_node
            )
        } else {
            format!(
                "{svc} ({}:{}) → {} candidate{}: {}; a new connection takes one at random (1 in {}); following {}",
                plan.dst_ip,
                plan.dst_port,
                cands.len(),
                if cands.len() == 1 { "" } else { "s" },
                cands.join(", "),
                cands.len(),
                plan.backend
                    .as_ref()
                    .map(|b| b.ip.to_string())
                    .unwrap_or_default()
            )
        };
        let kernel = probe.map(|(_, _, ct)| match ct {
            Some(e) => path::KernelSays {
                agrees: plan
                    .candidates
                    .iter()
                    .any(|c| c.ip.to_string() == e.reply_src && c.port == e.reply_sport),
                evidence: format!(
                    "conntrack: {}:{} was sent to {}:{}",
                    e.dst, e.dport, e.reply_src, e.reply_sport
                ),
            },
            None => path::KernelSays {
                agrees: plan.candidates.is_empty() || !plan.egress.verdict().allows(),
                evidence: "conntrack holds no entry of the probe (refused before it was confirmed)"
                    .into(),
            },
        });
        hops.push(Hop {
            step: "service",
            text,
            pass: !plan.candidates.is_empty(),
            kernel,
        });
    }
    let Some(b) = &plan.backend else { return hops };
    let dst_node = b.node.clone();
    match &dst_node {
        Some(n) if *n == plan.src_node => hops.push(Hop {
            step: "route",
            text: format!("same node {n}: bridge podnet0"),
            pass: true,
            kernel: None,
        }),
        Some(n) => {
            let there = route_to(w, sh, &plan.src_node, n);
            let back = route_to(w, sh, n, &plan.src_node);
            let how = if w.encap() == "vxlan" {
                "VXLAN (podnet.1, VNI 1, UDP 4789)"
            } else {
                "host-gw"
            };
            hops.push(Hop {
                step: "route",
                text: format!(
                    "{} → {n} ({}) by {how}, to {}",
                    plan.src_node,
                    w.node_ip(n).unwrap_or_default(),
                    w.node_cidr(n).unwrap_or_default()
                ),
                pass: there.agrees && back.agrees,
                kernel: Some(path::KernelSays {
                    agrees: there.agrees && back.agrees,
                    evidence: format!(
                        "{}: {}; back, {n}: {}",
                        plan.src_node, there.evidence, back.evidence
                    ),
                }),
            });
        }
        None => hops.push(Hop {
            step: "route",
            text: format!(
                "{} is not a pod's address: routed by {}'s table",
                b.ip, plan.src_node
            ),
            pass: true,
            kernel: None,
        }),
    }
    hops.push(Hop {
        step: "destination",
        text: format!(
            "{} {}:{} on {}",
            b.pod.clone().unwrap_or_else(|| "(no pod)".into()),
            b.ip,
            b.port,
            dst_node.clone().unwrap_or_else(|| "-".into())
        ),
        pass: true,
        kernel: None,
    });
    let peer_dst = b.pod.clone().unwrap_or_else(|| b.ip.to_string());
    for (dir, e, subject, peer, node) in [
        (
            Direction::Egress,
            &plan.egress,
            plan.src.clone(),
            peer_dst.clone(),
            plan.src_node.clone(),
        ),
        (
            Direction::Ingress,
            &plan.ingress,
            peer_dst.clone(),
            plan.src.clone(),
            dst_node.clone().unwrap_or_default(),
        ),
    ] {
        let pass = e.verdict().allows();
        let kernel = probe.map(|(connected, refused, _)| {
            let refused_here = refused.as_ref().is_some_and(|(d, _, _)| *d == dir);
            let refused_before = dir == Direction::Ingress
                && refused
                    .as_ref()
                    .is_some_and(|(d, _, _)| *d == Direction::Egress);
            let agrees = if refused_before {
                true
            } else {
                refused_here != pass
            };
            let evidence = if refused_here {
                format!(
                    "{}'s {} drop counter rose: refused here",
                    node,
                    if dir == Direction::Egress {
                        "eg_drops"
                    } else {
                        "in_drops"
                    }
                )
            } else if refused_before {
                "not reached (refused at egress)".to_string()
            } else if *connected {
                "passed (connected)".to_string()
            } else {
                format!("no drop counted at {} on {node}", dir.as_str())
            };
            path::KernelSays { agrees, evidence }
        });
        hops.push(Hop {
            step: if dir == Direction::Egress {
                "egress"
            } else {
                "ingress"
            },
            text: format!(
                "at {node}: {}",
                verdict_text(e, dir, &subject, &peer, b.port, plan.proto)
            ),
            pass,
            kernel,
        });
    }
    let _ = pod_place;
    hops
}
