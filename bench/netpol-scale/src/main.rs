//! netpol-scale: how podnet's NetworkPolicy ruleset scales, against the
//! anchor the iptables-based CNIs use (a chain per policy, jumped to from a
//! chain per pod), in namespaces of its own, in the same run.
//!
//! 1. Programming: plan + render + one `nft -f` for 1,000 policies selecting
//!    1,000 pods from scratch, then one policy change (plan + diff + one
//!    element transaction over netlink, as the agent's applier does; the
//!    same diff through `nft -f` for comparison); the anchor loads the same
//!    policies with one `iptables-legacy-restore`.
//! 2. Per connection: new TCP connections through a node namespace whose
//!    forward path enforces 0, 100, 1,000 or 5,000 policies selecting the
//!    server (the client admitted by the last one), podnet vs the anchor,
//!    rounds interleaved; connects/s and p50/p99 connect latency.
//!
//! Run: `bench/netpol-scale/run.sh` (root; needs nft, ip, iptables-legacy).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use podnet_core::policy::{NodeFacts, PolicyWorld, diff, plan, plan_world, render_full};
use podnet_dataplane::netns::{NetNs, sweep_stale};
use podnet_dataplane::nft;
use podnet_dataplane::policy::{PolicyApplier, SyncKind};
use serde_json::json;

const PREFIX: &str = "pnbench";

fn main() -> Result<()> {
    sweep_stale(PREFIX);
    for tool in ["nft", "ip", "iptables-legacy-restore"] {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()?
                .status
                .success(),
            "{tool} is required"
        );
    }
    let seconds: f64 = std::env::var("SECONDS_PER_RUN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    if std::env::var("ONLY").as_deref() != Ok("connections") {
        programming()?;
    }
    if std::env::var("ONLY").as_deref() != Ok("programming") {
        connections(seconds, rounds)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- objects

fn pod(ns: &str, name: &str, labels: serde_json::Value, ip: Ipv4Addr, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"podIP": ip.to_string()}
    }))
    .expect("pod")
}

fn namespace(name: &str, team: usize) -> Namespace {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"team": format!("t{team}")}}}),
    )
    .expect("namespace")
}

fn netpol(ns: &str, name: &str, spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
        .expect("policy")
}

/// 1,000 pods in 10 namespaces on one node; policy i selects pod i and
/// admits, on TCP 80, the named port `http` and UDP 5000-5100, the pods of
/// role r(i%7) in namespaces of team t(i%5), plus an ipBlock with a hole.
fn thousand() -> (Vec<Pod>, Vec<Namespace>, Vec<NetworkPolicy>) {
    let mut pods = Vec::new();
    let mut nss = Vec::new();
    for n in 0..10 {
        nss.push(namespace(&format!("ns{n}"), n % 5));
    }
    for i in 0..1000usize {
        let ip = Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250 + 2) as u8);
        pods.push(pod(
            &format!("ns{}", i / 100),
            &format!("pod{i}"),
            json!({"app": format!("app{}", i % 100), "role": format!("r{}", i % 7)}),
            ip,
            "n1",
        ));
    }
    let policies = (0..1000usize).map(|i| policy(i, 80)).collect();
    (pods, nss, policies)
}

fn policy(i: usize, port: u16) -> NetworkPolicy {
    netpol(
        &format!("ns{}", i / 100),
        &format!("pol{i}"),
        json!({"podSelector": {"matchLabels": {"app": format!("app{}", i % 100)}},
               "ingress": [{"from": [
                   {"namespaceSelector": {"matchLabels": {"team": format!("t{}", i % 5)}},
                    "podSelector": {"matchLabels": {"role": format!("r{}", i % 7)}}},
                   {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.0.0/16"]}}],
                 "ports": [{"port": port, "protocol": "TCP"}, {"port": "http"},
                           {"port": 5000, "endPort": 5100, "protocol": "UDP"}]}]}),
    )
}

// ------------------------------------------------------------ programming

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn programming() -> Result<()> {
    let (pods, nss, policies) = thousand();
    let node = NodeFacts {
        node_name: "n1".into(),
        pod_cidrs: vec!["10.244.0.0/16".parse()?],
    };
    let mut full = Vec::new();
    let mut change = Vec::new();
    let mut change_parts = Vec::new();
    let mut change_cli = Vec::new();
    let mut plan_ms = Vec::new();
    let mut anchor = Vec::new();
    let mut elements = 0;
    for _ in 0..3 {
        let ns = NetNs::unique(PREFIX)?;
        let fd = ns_file(&ns)?;
        let nsfd = nft::Namespace::Fd(fd.as_fd());
        // The applier's first sync: render + one `nft -f` loading the table.
        let mut applier = PolicyApplier::new(nsfd);
        let t = Instant::now();
        let state = plan(&node, &pods, &nss, &policies)?;
        let planned = t.elapsed();
        ensure!(
            applier.sync(&state)? == SyncKind::Full,
            "first sync is full"
        );
        full.push(t.elapsed().as_secs_f64());
        plan_ms.push(planned.as_secs_f64() * 1e3);
        elements = render_full(&state).matches(',').count() + 1;

        // One change: policy 500 moves from port 80 to 443, and back. The
        // agent keeps its compiled world and applies the watch event to it;
        // its applier diffs and writes the elements over netlink.
        let mut world = PolicyWorld::new(&pods, &nss, &policies)?;
        let mut applier = PolicyApplier::new(nsfd);
        ensure!(
            applier.sync(&state)? == SyncKind::Full,
            "first sync is full"
        );
        let mut old = state;
        for k in 0..6 {
            let changed = policy(500, if k % 2 == 0 { 443 } else { 80 });
            let t = Instant::now();
            world.upsert_policy(&changed)?;
            let new = plan_world(&node, &world);
            let t_plan = t.elapsed();
            let kind = applier.sync(&new)?;
            let SyncKind::Elements(n) = kind else {
                bail!("a change must be an element transaction, was {kind:?}");
            };
            change.push(t.elapsed().as_secs_f64());
            change_parts.push((
                t_plan.as_secs_f64() * 1e3,
                (t.elapsed() - t_plan).as_secs_f64() * 1e3,
                n,
            ));
            old = new;
        }
        // The same change through the nft CLI (the path before netlink),
        // for comparison in the same run: diff + one `nft -f`.
        for k in 0..6 {
            let new = plan_world(
                &node,
                &PolicyWorld::new(&pods, &nss, &{
                    let mut p = policies.clone();
                    p[500] = policy(500, if k % 2 == 0 { 443 } else { 80 });
                    p
                })?,
            );
            let t = Instant::now();
            let d = diff(&old, &new);
            ensure!(!d.is_empty(), "the change must change elements");
            nft::apply(nsfd, &d.render())?;
            change_cli.push(t.elapsed().as_secs_f64() * 1e3);
            old = new;
        }

        // The anchor: the same policies as chains, one iptables-restore.
        let anchor_ns = NetNs::unique(PREFIX)?;
        let rules = iptables_anchor_thousand(&pods, &policies);
        let t = Instant::now();
        iptables_restore(&anchor_ns, &rules)?;
        anchor.push(t.elapsed().as_secs_f64());
    }
    let change_min = change.iter().copied().fold(f64::MAX, f64::min);
    let (full, change, anchor) = (median(full), median(change), median(anchor));
    println!("== programming (median of 3; one node holding all 1,000 pods)");
    println!(
        "podnet   1,000 policies x 1,000 pods from scratch: {:8.1} ms (plan {:.1} ms; ~{elements} set elements; goal <= 1000 ms)",
        full * 1e3,
        median(plan_ms)
    );
    println!(
        "podnet   one policy change at that size:          {:8.1} ms (min {:.1} ms of 18; plan + diff + one element transaction over netlink; goal <= 20 ms)",
        change * 1e3,
        change_min * 1e3
    );
    let parts = |f: fn(&(f64, f64, usize)) -> f64| median(change_parts.iter().map(f).collect());
    println!(
        "         (plan {:.1} ms, diff + netlink write {:.2} ms; {} element changes)",
        parts(|p| p.0),
        parts(|p| p.1),
        change_parts[0].2
    );
    println!(
        "         the same diff through `nft -f` instead: {:.1} ms median (diff + nft; the path before netlink)",
        median(change_cli)
    );
    println!(
        "iptables chain-per-policy anchor, same policies:  {:8.1} ms (one iptables-legacy-restore)",
        anchor * 1e3
    );
    println!(
        "ratio    podnet / anchor load time:               {:8.2}",
        full / anchor
    );
    Ok(())
}

/// The same 1,000 policies the iptables-CNI way: per pod a chain that jumps
/// to a chain per selecting policy, whose rules match the peers' addresses.
fn iptables_anchor_thousand(pods: &[Pod], policies: &[NetworkPolicy]) -> String {
    let world = PolicyWorld::new(pods, &[], policies).expect("world");
    let mut s = String::from("*filter\n");
    let mut body = String::new();
    s.push_str(":FORWARD ACCEPT [0:0]\n");
    body.push_str("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    for (i, p) in world.pods.iter().enumerate() {
        let chain = format!("POD-{i}");
        s.push_str(&format!(":{chain} - [0:0]\n"));
        let ip = p.ip.expect("ip");
        body.push_str(&format!("-A FORWARD -d {ip}/32 -j {chain}\n"));
        for (j, pol) in world.policies.iter().enumerate() {
            if pol.selects(p) {
                body.push_str(&format!("-A {chain} -j POL-{j}\n"));
            }
        }
        body.push_str(&format!("-A {chain} -j DROP\n"));
    }
    for (j, pol) in world.policies.iter().enumerate() {
        s.push_str(&format!(":POL-{j} - [0:0]\n"));
        // Peers: the pods the policy's pod peer matches, as addresses.
        for p in &world.pods {
            let ip = p.ip.expect("ip");
            let rules = pol.ingress.as_deref().unwrap_or_default();
            let matched = rules.iter().any(|r| {
                r.peers
                    .iter()
                    .flatten()
                    .any(|peer| world.peer_matches(peer, ip, Some(p)))
            });
            if matched {
                body.push_str(&format!(
                    "-A POL-{j} -s {ip}/32 -p tcp -m multiport --dports 80,8080 -j ACCEPT\n"
                ));
                body.push_str(&format!(
                    "-A POL-{j} -s {ip}/32 -p udp --dport 5000:5100 -j ACCEPT\n"
                ));
            }
        }
    }
    s.push_str(&body);
    s.push_str("COMMIT\n");
    s
}

fn iptables_restore(ns: &NetNs, rules: &str) -> Result<()> {
    let mut child = ns
        .command("iptables-legacy-restore")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("iptables-legacy-restore")?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-legacy-restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn ns_file(ns: &NetNs) -> Result<std::fs::File> {
    std::fs::File::open(ns.path()).context("open namespace")
}

// ------------------------------------------------------------ connections

fn ip(ns: &NetNs, script: &str) -> Result<()> {
    let mut child = ns
        .command("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "ip: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);

/// N policies in namespace x, each selecting the server and admitting on
/// TCP 80 one peer pod (pods that exist only as objects); the client is the
/// peer of the last one.
fn connection_objects(n: usize) -> (Vec<Pod>, Vec<Namespace>, Vec<NetworkPolicy>) {
    let mut pods = vec![pod("x", "server", json!({"app": "server"}), SERVER, "n1")];
    let mut policies = Vec::new();
    for i in 0..n {
        let addr = if i + 1 == n {
            CLIENT
        } else {
            Ipv4Addr::new(
                10,
                245 + (i / 62500) as u8,
                ((i / 250) % 250) as u8,
                (i % 250 + 2) as u8,
            )
        };
        pods.push(pod(
            "y",
            &format!("peer{i}"),
            json!({"peer": format!("p{i}")}),
            addr,
            "n2",
        ));
        policies.push(netpol(
            "x",
            &format!("allow-p{i}"),
            json!({"podSelector": {"matchLabels": {"app": "server"}},
                   "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"peer": format!("p{i}")}}}],
                                "ports": [{"port": 80, "protocol": "TCP"}]}]}),
        ));
    }
    if n == 0 {
        pods.push(pod("y", "client", json!({}), CLIENT, "n2"));
    }
    (pods, vec![namespace("x", 0), namespace("y", 1)], policies)
}

fn iptables_anchor(n: usize, peers: &[Pod]) -> String {
    let mut s = String::from("*filter\n:FORWARD ACCEPT [0:0]\n");
    let mut body =
        String::from("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    if n > 0 {
        s.push_str(":POD-server - [0:0]\n");
        body.push_str(&format!("-A FORWARD -d {SERVER}/32 -j POD-server\n"));
        for i in 0..n {
            s.push_str(&format!(":POL-{i} - [0:0]\n"));
            body.push_str(&format!("-A POD-server -j POL-{i}\n"));
            let peer = peers[i + 1]
                .status
                .as_ref()
                .and_then(|st| st.pod_ip.clone())
                .expect("peer ip");
            body.push_str(&format!(
                "-A POL-{i} -s {peer}/32 -p tcp --dport 80 -j ACCEPT\n"
            ));
        }
        body.push_str("-A POD-server -j REJECT --reject-with icmp-admin-prohibited\n");
    }
    s.push_str(&body);
    s.push_str("COMMIT\n");
    s
}

struct Topology {
    client: NetNs,
    node: NetNs,
    node_file: std::fs::File,
    server: NetNs,
    stop: Arc<AtomicBool>,
}

fn topology() -> Result<Topology> {
    let node = NetNs::unique(PREFIX)?;
    let client = NetNs::unique(PREFIX)?;
    let server = NetNs::unique(PREFIX)?;
    let out = node
        .command("sysctl")
        .args(["-qw", "net.ipv4.ip_forward=1"])
        .output()?;
    ensure!(out.status.success(), "sysctl ip_forward");
    ip(
        &node,
        &format!(
            "link add vc type veth peer name eth0 netns {c}\nlink add vs type veth peer name eth0 netns {s}\n\
             addr add 10.244.1.1/24 dev vc\naddr add 10.244.0.1/24 dev vs\nlink set vc up\nlink set vs up\n",
            c = client.name(),
            s = server.name()
        ),
    )?;
    ip(
        &client,
        &format!(
            "addr add {CLIENT}/24 dev eth0\nlink set eth0 up\nroute add default via 10.244.1.1\n"
        ),
    )?;
    ip(
        &server,
        &format!(
            "addr add {SERVER}/24 dev eth0\nlink set eth0 up\nroute add default via 10.244.0.1\n"
        ),
    )?;
    let listener = server
        .run(|| TcpListener::bind((SERVER, 80)))
        .map_err(anyhow::Error::from)??;
    // A deep accept queue: the client resets each connection at once, and a
    // reset child still holds its queue slot until accepted; a starved
    // server thread must not turn that into dropped SYNs.
    // SAFETY: a valid listening socket fd.
    unsafe {
        libc::listen(listener.as_raw_fd(), 4096);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
            if stop2.load(Ordering::Relaxed) {
                break;
            }
        }
    });
    let node_file = ns_file(&node)?;
    Ok(Topology {
        client,
        node,
        node_file,
        server,
        stop,
    })
}

/// Connects for `seconds` from the client; returns connect latencies (µs).
fn load(t: &Topology, seconds: f64) -> Result<Vec<f64>> {
    t.client
        .run(|| -> Result<Vec<f64>> {
            let addr = SocketAddr::from((SERVER, 80));
            let mut lat = Vec::new();
            let end = Instant::now() + Duration::from_secs_f64(seconds);
            while Instant::now() < end {
                let t0 = Instant::now();
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                    .with_context(|| {
                        format!(
                            "connect through the node after {} connections (is the client admitted?)",
                            lat.len()
                        )
                    })?;
                lat.push(t0.elapsed().as_secs_f64() * 1e6);
                // Close with RST: no TIME_WAIT piling up on the client.
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: valid socket fd and a properly sized linger struct.
                unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&linger as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
                drop(s);
            }
            Ok(lat)
        })
        .map_err(anyhow::Error::from)?
}

#[derive(Clone, Copy, PartialEq)]
enum Ruleset {
    Podnet,
    Iptables,
}

fn install(t: &Topology, r: Ruleset, n: usize) -> Result<()> {
    let nsfd = nft::Namespace::Fd(t.node_file.as_fd());
    // Clear both, then load one.
    let _ = nft::run(nsfd, &["delete", "table", "inet", "podnet-policy"]);
    iptables_restore(&t.node, "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n")?;
    let (pods, nss, policies) = connection_objects(n);
    match r {
        Ruleset::Podnet => {
            let node = NodeFacts {
                node_name: "n1".into(),
                pod_cidrs: vec!["10.244.0.0/24".parse()?],
            };
            let state = plan(&node, &pods, &nss, &policies)?;
            nft::apply(nsfd, &render_full(&state))?;
        }
        Ruleset::Iptables => iptables_restore(&t.node, &iptables_anchor(n, &pods))?,
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn connections(seconds: f64, rounds: usize) -> Result<()> {
    let t = topology()?;
    let counts = [0usize, 100, 1000, 5000];
    let sets = [Ruleset::Podnet, Ruleset::Iptables];
    // results[ruleset][count] = (rates per round, all latencies)
    let mut rates = vec![vec![Vec::new(); counts.len()]; 2];
    let mut lats = vec![vec![Vec::new(); counts.len()]; 2];
    for _ in 0..rounds {
        for (ci, &n) in counts.iter().enumerate() {
            for (ri, &r) in sets.iter().enumerate() {
                let what = || format!("{} with {n} policies", ["podnet", "iptables"][ri]);
                install(&t, r, n).with_context(what)?;
                load(&t, 0.1).with_context(what)?; // warm up
                let l = load(&t, seconds).with_context(what)?;
                rates[ri][ci].push(l.len() as f64 / seconds);
                lats[ri][ci].extend(l);
            }
        }
    }
    t.stop.store(true, Ordering::Relaxed);
    let _ = t.server.run(|| TcpStream::connect((SERVER, 80)));

    println!(
        "\n== new TCP connections through a node (median of {rounds} interleaved rounds of {seconds} s; one client, one server)"
    );
    println!("ruleset   policies   conn/s    p50 µs   p99 µs");
    let mut summary = vec![vec![(0.0, 0.0, 0.0); counts.len()]; 2];
    for (ri, name) in ["podnet", "iptables"].iter().enumerate() {
        for (ci, n) in counts.iter().enumerate() {
            let rate = median(rates[ri][ci].clone());
            let mut l = lats[ri][ci].clone();
            l.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let (p50, p99) = (percentile(&l, 0.5), percentile(&l, 0.99));
            summary[ri][ci] = (rate, p50, p99);
            println!("{name:9} {n:8} {rate:9.0} {p50:8.1} {p99:8.1}");
        }
    }
    let last = counts.len() - 1;
    for (ri, name) in ["podnet", "iptables"].iter().enumerate() {
        let (r0, p0, _) = summary[ri][0];
        let (r5, p5, _) = summary[ri][last];
        println!(
            "ratio {name:8} 5000 vs 0 policies: conn/s {:.3}, p50 latency {:.3}",
            r5 / r0,
            p5 / p0
        );
    }
    println!(
        "ratio podnet vs iptables anchor at 5000 policies: conn/s {:.2}x, p50 latency {:.2}x",
        summary[0][last].0 / summary[1][last].0,
        summary[0][last].1 / summary[1][last].1
    );
    Ok(())
}
