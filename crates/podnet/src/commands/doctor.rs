//! `podnet doctor`: the troubleshooting checklist (the seed's, and
//! Kubernetes' "Debug Services" and "Debugging DNS Resolution") walked by
//! the tool. Without `--from`/`--to` it checks the cluster: nodes and
//! agents, CNI files, routes, MTU, DNS, the proxy's ruleset against its
//! plan, stale UDP conntrack entries, hairpin, policy selectors. With them
//! it checks that path: the source's resolv.conf, the service and its
//! endpoints, the routes between the two nodes, the source node's proxy,
//! the policies at egress and ingress, and a real connection. One line per
//! check (✔, ✘ or !) with its evidence and, for ✘, the fix; exits 1 when
//! any check fails. See docs/troubleshooting.md.

use std::io::IsTerminal;

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use podnet_core::policy::PolicyWorld;

use crate::diag::checks;
use crate::diag::node::{LabShell, NodeShell};
use crate::diag::path;
use crate::diag::world::{self, Target, World, key, pod_place};
use crate::diag::{Check, Progress, Status, pod_sh};

/// Arguments of `podnet doctor`.
#[derive(clap::Args)]
pub struct Args {
    /// Check the path from this pod (`NAME` or `NS/NAME`).
    #[arg(long)]
    pub from: Option<String>,
    /// Check the path to this pod, service (`svc[:PORT]`), DNS name
    /// (`svc.ns[.svc.cluster.local]`) or address.
    #[arg(long)]
    pub to: Option<String>,
    /// The namespace of `--from` and `--to` when they name none.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// `text` or `json`.
    #[arg(long, short = 'o', default_value = "text")]
    pub output: String,
    /// The lab whose nodes to read (default: the kubeconfig's
    /// `podnet-<lab>` context, or the only lab).
    #[arg(long)]
    pub name: Option<String>,
    /// Kubeconfig (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// Runs `podnet doctor`; exits 1 when a check fails.
pub fn run(args: Args) -> anyhow::Result<()> {
    let checks = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run_async(&args))?;
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if args.output == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "checks": checks,
                "failed": failed,
            }))?
        );
    } else {
        let colour = std::io::stdout().is_terminal();
        for c in &checks {
            println!("{}", c.render(colour));
        }
        let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
        println!(
            "{} checks: {} failed, {} warnings",
            checks.len(),
            failed,
            warned
        );
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

async fn run_async(args: &Args) -> anyhow::Result<Vec<Check>> {
    let progress = Progress::new();
    progress.step("reading the API");
    let client = world::client(&args.kubeconfig)
        .await
        .context("reaching the API server")?;
    let lab = world::lab_name(&args.name, &args.kubeconfig)?;
    let w = World::fetch(client).await?;
    let policy = PolicyWorld::new(&w.pods, &w.namespaces, &w.policies)
        .map_err(|e| anyhow::anyhow!("reading the NetworkPolicies: {e}"))?;
    let sh = LabShell::new(&lab);
    let out = if args.from.is_none() && args.to.is_none() {
        cluster(&w, &sh, &policy, &progress)
    } else {
        path_checks(args, &w, &sh, &policy, &progress).await?
    };
    progress.done();
    Ok(out)
}

/// The cluster checks; node by node in parallel.
fn cluster(w: &World, sh: &LabShell, policy: &PolicyWorld, progress: &Progress) -> Vec<Check> {
    let mut out = checks::nodes_and_agents(w);
    progress.step("checking nodes: CNI, routes, MTU, proxy, conntrack, hairpin");
    let nodes = w.node_names();
    let per_node: Vec<Vec<Check>> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|n| {
                s.spawn(move || {
                    let mut v = Vec::new();
                    let (c, mtu) = checks::cni(w, sh, n);
                    v.extend(c);
                    v.extend(checks::routes(w, sh, n));
                    v.extend(checks::mtu(w, sh, n, policy, mtu));
                    let state = path::proxy_state(w, n);
                    v.extend(checks::proxy(w, sh, n, &state));
                    v.extend(checks::conntrack(sh, n, &state));
                    v.extend(checks::hairpin(sh, n));
                    v
                })
            })
            .collect();
        let dns = s.spawn(|| checks::dns(w, sh));
        let mut v: Vec<Vec<Check>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        v.push(dns.join().unwrap_or_default());
        v
    });
    let mut all: Vec<Check> = per_node.into_iter().flatten().collect();
    all.extend(checks::policy_selectors(w, policy));
    let order = [
        "cni",
        "routes",
        "mtu",
        "dns",
        "proxy",
        "conntrack",
        "hairpin",
        "policy",
    ];
    all.sort_by_key(|c| {
        order
            .iter()
            .position(|a| *a == c.area)
            .unwrap_or(order.len())
    });
    out.extend(all);
    out
}

fn find_pod(w: &World, name: &str, ns: &str) -> Option<Pod> {
    match w.resolve(name, ns) {
        Target::Pod(p) => Some(*p),
        _ => None,
    }
}

async fn path_checks(
    args: &Args,
    w: &World,
    sh: &LabShell,
    policy: &PolicyWorld,
    progress: &Progress,
) -> anyhow::Result<Vec<Check>> {
    let mut out = Vec::new();
    let ns = args.namespace.as_str();
    let from = match &args.from {
        Some(f) => match find_pod(w, f, ns) {
            Some(p) if pod_place(&p).0.is_some() => {
                let (ip, node, _) = pod_place(&p);
                out.push(Check::ok(
                    "path",
                    format!("from {}", key(&p.metadata)),
                    format!("{} on {}", ip.unwrap_or_default(), node.unwrap_or_default()),
                ));
                Some(p)
            }
            Some(p) => {
                out.push(Check::fail(
                    "path",
                    format!("from {}", key(&p.metadata)),
                    "the pod has no IP (not running)",
                    format!(
                        "kubectl -n {} describe pod {}",
                        p.metadata.namespace.clone().unwrap_or_default(),
                        p.metadata.name.clone().unwrap_or_default()
                    ),
                ));
                return Ok(out);
            }
            None => {
                out.push(Check::fail(
                    "path",
                    format!("from {f}"),
                    format!("no pod {f} in namespace {ns}"),
                    format!("kubectl -n {ns} get pods"),
                ));
                return Ok(out);
            }
        },
        None => None,
    };
    if let Some(f) = &from {
        progress.step("reading the source pod's resolv.conf");
        out.push(checks::resolv_conf(w, f).await);
    }
    let Some(to) = &args.to else {
        progress.step("checking DNS");
        out.extend(checks::dns(w, sh));
        if let Some(f) = &from {
            let node = pod_place(f).1.unwrap_or_default();
            let state = path::proxy_state(w, &node);
            out.extend(checks::proxy(w, sh, &node, &state));
            out.extend(checks::conntrack(sh, &node, &state));
        }
        return Ok(out);
    };
    let (name, spec) = path::split_target(to)?;
    let target = w.resolve(&name, ns);
    let is_dns_name = name.contains('.') && name.parse::<std::net::Ipv4Addr>().is_err();
    if is_dns_name
        || matches!(&target, Target::Service(s) if s.metadata.name.as_deref() == Some("kube-dns"))
    {
        progress.step("checking DNS");
        out.extend(checks::dns(w, sh));
    }
    if is_dns_name && let Some(f) = &from {
        let r = pod_sh(
            &w.client,
            f,
            &format!("getent hosts {name} || nslookup {name}"),
        )
        .await;
        let id = format!("{} resolves {name}", key(&f.metadata));
        match r {
            Ok(o) if o.code == 0 && !o.stdout.trim().is_empty() => out.push(Check::ok(
                "dns",
                id,
                o.stdout
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            )),
            Ok(o) => out.push(Check::fail(
                "dns",
                id,
                format!("no answer (exit {}): {}", o.code, o.stdout.trim()),
                "see the DNS checks above; the name is <service>.<namespace>.svc.cluster.local",
            )),
            Err(e) => out.push(Check::warn(
                "dns",
                id,
                format!("cannot run a lookup in the pod: {e:#}"),
            )),
        }
    }
    match &target {
        Target::Missing {
            namespace,
            name,
            kind,
        } => {
            let what = match kind.as_str() {
                "svc" => "service",
                "pod" => "pod",
                _ => "service or pod",
            };
            out.push(Check::fail(
                "path",
                format!("to {to}"),
                format!("no {what} {name} in namespace {namespace}"),
                format!("kubectl -n {namespace} get svc,pods; kubectl get svc -A | grep {name}"),
            ));
            return Ok(out);
        }
        Target::Service(svc) => {
            progress.step("checking the service");
            out.extend(checks::service(w, sh, svc, &spec));
        }
        Target::Pod(p) => {
            out.push(Check::ok(
                "path",
                format!("to {}", key(&p.metadata)),
                format!(
                    "{} on {}",
                    pod_place(p).0.unwrap_or_default(),
                    pod_place(p).1.unwrap_or_default()
                ),
            ));
        }
        Target::Ip(ip) => out.push(Check::warn(
            "path",
            format!("to {ip}"),
            "neither a pod nor a service: only the source side is checked",
        )),
    }
    let Some(from) = from else {
        return Ok(out);
    };
    let src_node = pod_place(&from).1.unwrap_or_default();
    progress.step("checking the source node's proxy and conntrack");
    let state = path::proxy_state(w, &src_node);
    out.extend(checks::proxy(w, sh, &src_node, &state));
    out.extend(checks::conntrack(sh, &src_node, &state));
    let plan = match path::plan_path(w, policy, &from, &target, &spec, None) {
        Ok(p) => p,
        Err(e) => {
            out.push(Check::fail(
                "path",
                format!("{} → {to}", key(&from.metadata)),
                format!("{e:#}"),
                "see the checks above",
            ));
            return Ok(out);
        }
    };
    if plan.service.is_some() && plan.candidates.is_empty() {
        out.push(Check::fail(
            "proxy",
            format!(
                "{src_node} plan for {}",
                plan.service.clone().unwrap_or_default()
            ),
            "no endpoints: a new connection is refused at once",
            "see the service checks above",
        ));
    }
    progress.step("checking routes, MTU and policy");
    let backends: Vec<path::Backend> = if plan.candidates.is_empty() {
        plan.backend.clone().into_iter().collect()
    } else {
        plan.candidates.clone()
    };
    let mut seen_nodes = std::collections::BTreeSet::new();
    for b in &backends {
        let Some(dn) = b.node.clone() else { continue };
        if dn != src_node && seen_nodes.insert(dn.clone()) {
            for (a, z) in [(&src_node, &dn), (&dn, &src_node)] {
                let says = path::route_to(w, sh, a, z);
                let subject = format!("{a} → {z}'s pods");
                if says.agrees {
                    out.push(Check::ok("routes", subject, says.evidence));
                } else {
                    out.push(Check::fail("routes", subject, says.evidence, format!("restart the agent on {a} (kubectl -n kube-system delete pod -l k8s-app=podnet --field-selector spec.nodeName={a}) and read its log")));
                }
            }
        }
    }
    // MTU: the source pod's eth0 against its node's conflist, and a
    // full-size don't-fragment ping to the first backend.
    let conf_mtu = sh
        .node_file(&src_node, checks::CONFLIST)
        .ok()
        .flatten()
        .and_then(|(b, _)| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v["plugins"]
                .as_array()?
                .iter()
                .find(|p| p["type"] == "podnet")?["mtu"]
                .as_u64()
        })
        .map(|m| m as u32);
    let pod_mtu = sh
        .pod_cmd(&from, &["cat", "/sys/class/net/eth0/mtu"])
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u32>()
                .ok()
        });
    if let (Some(cm), Some(pm)) = (conf_mtu, pod_mtu) {
        let id = format!("{} eth0", key(&from.metadata));
        if pm > cm {
            out.push(Check::fail("mtu", id, format!("MTU {pm}, larger than the overlay carries ({cm}): full-size packets are dropped"), format!("recreate the pod (the CNI plugin sets mtu {cm})")));
        } else {
            out.push(Check::ok("mtu", id, format!("MTU {pm} ≤ {cm}")));
        }
        if let Some(b) = backends.first()
            && plan.egress.verdict().allows()
            && plan.ingress.verdict().allows()
        {
            let size = (pm.saturating_sub(28)).to_string();
            let ok = sh
                .pod_cmd(
                    &from,
                    &[
                        "ping",
                        "-M",
                        "do",
                        "-s",
                        &size,
                        "-c",
                        "1",
                        "-W",
                        "2",
                        &b.ip.to_string(),
                    ],
                )
                .map(|o| o.status.success())
                .unwrap_or(false);
            let id = format!(
                "{} → {}",
                key(&from.metadata),
                b.pod.clone().unwrap_or_else(|| b.ip.to_string())
            );
            if ok {
                out.push(Check::ok(
                    "mtu",
                    id,
                    format!("{pm}-byte don't-fragment ping crossed"),
                ));
            } else {
                out.push(Check::fail("mtu", id, format!("{pm}-byte don't-fragment ping was lost (the overlay carries {cm})"), "make the pods' MTU fit the path: PODNET_MTU (0: the uplink's, less 50 with VXLAN), then recreate the pods"));
            }
        }
    }
    // Policy, for each endpoint a connection may take.
    let mut policy_checks = Vec::new();
    for b in &backends {
        if let Ok(p) = path::plan_path(w, policy, &from, &target, &spec, Some(b.ip)) {
            for c in checks::policy_path(w, &p) {
                if !policy_checks
                    .iter()
                    .any(|x: &Check| x.subject == c.subject && x.evidence == c.evidence)
                {
                    policy_checks.push(c);
                }
            }
        }
    }
    out.extend(policy_checks);
    // A real connection from the source pod.
    progress.step("connecting from the source pod");
    let id = format!(
        "{} → {}:{}/{}",
        key(&from.metadata),
        plan.dst,
        plan.dst_port,
        plan.proto
    );
    let script = format!(
        "if {}; then echo ok; fi",
        checks::probe_script(&plan.dst_ip.to_string(), plan.dst_port, plan.proto, 2)
    );
    let src_is_backend = backends
        .iter()
        .any(|b| Some(b.ip) == pod_place(&from).0.and_then(|i| i.parse().ok()))
        && plan.service.is_some();
    match pod_sh(&w.client, &from, &script).await {
        Ok(o) if o.stdout.contains("ok") => {
            out.push(Check::ok(
                "connect",
                id.clone(),
                format!(
                    "connected ({}:{}{})",
                    plan.dst_ip,
                    plan.dst_port,
                    if src_is_backend {
                        ", hairpin through its own service"
                    } else {
                        ""
                    }
                ),
            ));
            if src_is_backend {
                out.push(Check::ok(
                    "hairpin",
                    key(&from.metadata),
                    "reaches itself through its service",
                ));
            }
        }
        Ok(_) => {
            let expected = plan.allowed();
            out.push(Check::fail("connect", id, format!("no connection to {}:{}{}", plan.dst_ip, plan.dst_port, if expected { "; the planners say it should pass, so the kernel disagrees: see the ✘ above, or podnet trace --probe" } else { "; as the checks above explain" }), format!("podnet trace {} {}:{}/{} --probe -n {ns} shows the hop", key(&from.metadata), to.split(':').next().unwrap_or(to), plan.dst_port, plan.proto.to_string().to_lowercase())));
            if src_is_backend {
                out.extend(checks::hairpin(sh, &src_node));
            }
        }
        Err(e) => out.push(Check::warn(
            "connect",
            id,
            format!("could not probe: {e:#}"),
        )),
    }
    Ok(out)
}
