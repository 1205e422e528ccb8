//! proxy-scale: how podnet's service proxy scales, against a ruleset shaped
//! like upstream kube-proxy's nftables mode (a chain per service and per
//! endpoint), in namespaces of its own, in the same run.
//!
//! 1. Full sync of N services x E endpoints (default 1,000 and 10,000 x 10):
//!    podnet nft (maps; plan excluded, render + one `nft -f` included),
//!    podnet iptables (kube-proxy's chains via one `iptables-restore`), and
//!    the anchor: one `nft -f` of the kube-proxy-shaped ruleset.
//! 2. One endpoint change at 10 and at the largest N services (median of
//!    11): podnet nft as the agent makes it (re-plan the one Service from
//!    its objects, then `NftProxy::update` with its ports), podnet nft
//!    from a whole new state (`sync_owned`, which compares every port),
//!    and iptables.
//! 3. First-packet latency: TCP connects from a node namespace to the last
//!    service created, whose endpoints live in a pod namespace, with 10
//!    and with the largest N services loaded (rounds interleaved; p50/p99).
//!
//! Run: `bench/proxy-scale/run.sh` (root; needs nft, ip, iptables-restore).

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use podnet_core::proxy::{NodeFacts, ProxyState, plan, plan_service};
use podnet_dataplane::netns::{NetNs, sweep_stale};
use podnet_dataplane::nft::{self, Namespace};
use podnet_dataplane::proxy::{IptablesProxy, NftProxy, Target};

const PREFIX: &str = "pxbench";
const CLUSTER_CIDR: &str = "10.128.0.0/9";
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32)
}

fn endpoint_ip(i: usize, j: usize, eps: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + 1 + (i * eps + j) as u32)
}

/// N Services with E-endpoint slices each, as the API server holds them.
fn objects(n: usize, eps: usize) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut services = Vec::with_capacity(n);
    let mut slices = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("svc-{i}");
        services.push(Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some("bench".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(vip(i).to_string()),
                cluster_ips: Some(vec![vip(i).to_string()]),
                ports: Some(vec![ServicePort {
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        });
        slices.push(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-x")),
                namespace: Some("bench".into()),
                labels: Some([("kubernetes.io/service-name".into(), name)].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: (0..eps)
                .map(|j| Endpoint {
                    addresses: vec![endpoint_ip(i, j, eps).to_string()],
                    node_name: Some("elsewhere".into()),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                port: Some(8080),
                ..Default::default()
            }]),
        });
    }
    (services, slices)
}

fn facts() -> NodeFacts {
    NodeFacts {
        node_name: "bench-node".into(),
        cluster_cidrs: vec![CLUSTER_CIDR.parse().unwrap()],
    }
}

/// The ruleset upstream kube-proxy's nftables mode writes for `state`: a
/// chain per service (numgen vmap over endpoint chains) and per endpoint.
fn kube_proxy_shaped(state: &ProxyState) -> String {
    use std::fmt::Write as _;
    let mut s = String::from(
        "table ip kube-proxy {\n\
         \tchain mark-for-masquerade { meta mark set meta mark | 0x4000; }\n\
         \tchain masquerading { type nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & 0x4000 == 0 return\n\t\tmeta mark set meta mark ^ 0x4000\n\t\tmasquerade fully-random\n\t}\n\
         \tchain services { ip daddr . meta l4proto . th dport vmap @service-ips; }\n\
         \tchain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }\n\
         \tchain nat-output { type nat hook output priority -100; policy accept; jump services; }\n",
    );
    let mut vmap = Vec::new();
    for (i, sp) in state.ports.values().enumerate() {
        let vip = sp.cluster_ips[0];
        let svc = format!("service-{i}-{}-{}-tcp", sp.name.namespace, sp.name.service);
        vmap.push(format!("{vip} . tcp . {} : goto {svc}", sp.port));
        let n = sp.endpoints.len();
        let targets: Vec<String> = (0..n)
            .map(|j| format!("{j} : goto endpoint-{i}-{j}"))
            .collect();
        let _ = writeln!(
            s,
            "\tchain {svc} {{\n\t\tip daddr {vip} tcp dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade\n\t\tnumgen random mod {n} vmap {{ {} }}\n\t}}",
            sp.port,
            targets.join(", ")
        );
        for (j, ep) in sp.endpoints.iter().enumerate() {
            let _ = writeln!(
                s,
                "\tchain endpoint-{i}-{j} {{\n\t\tip saddr {} jump mark-for-masquerade\n\t\tmeta l4proto tcp dnat to {}:{}\n\t}}",
                ep.addr, ep.addr, ep.port
            );
        }
    }
    let _ = writeln!(
        s,
        "\tmap service-ips {{\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t\telements = {{ {} }}\n\t}}\n}}",
        vmap.join(",\n\t\t\t")
    );
    s
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn sh(ns: &NetNs, args: &[&str]) -> Result<()> {
    let out = ns.command(args[0]).args(&args[1..]).output()?;
    ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn state_of(n: usize, eps: usize) -> (ProxyState, Duration) {
    let (svcs, slices) = objects(n, eps);
    let t = Instant::now();
    let p = plan(&svcs, &slices, &facts());
    (p.state, t.elapsed())
}

/// Swaps endpoint 3 of the last service between two addresses.
fn one_change(state: &mut ProxyState, round: usize) {
    let last = state.ports.values_mut().next_back().expect("a service");
    last.endpoints[3].addr = if round.is_multiple_of(2) {
        "10.127.0.1".parse().unwrap()
    } else {
        "10.127.0.2".parse().unwrap()
    };
}

/// A node namespace whose last service's endpoints are real listeners in a
/// pod namespace; returns (node, pod) and the listeners' accept threads.
fn first_packet_setup(state: &mut ProxyState) -> Result<(NetNs, NetNs)> {
    let node = NetNs::unique(PREFIX)?;
    let pod = NetNs::unique(PREFIX)?;
    sh(
        &node,
        &[
            "ip",
            "link",
            "add",
            "veth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ],
    )?;
    sh(
        &node,
        &["ip", "addr", "add", "10.200.0.1/24", "dev", "veth0"],
    )?;
    sh(&node, &["ip", "link", "set", "veth0", "up"])?;
    sh(
        &node,
        &["ip", "route", "add", "default", "via", "10.200.0.2"],
    )?;
    sh(&pod, &["ip", "addr", "add", "10.200.0.2/24", "dev", "eth0"])?;
    sh(&pod, &["ip", "link", "set", "eth0", "up"])?;
    let last = state.ports.values_mut().next_back().expect("a service");
    for (j, ep) in last.endpoints.iter_mut().enumerate() {
        ep.addr = POD_IP.into();
        ep.port = 8080 + j as u16;
        let listener = pod.run(move || TcpListener::bind((POD_IP, 8080 + j as u16)))??;
        std::thread::spawn(move || {
            for s in listener.incoming() {
                drop(s);
            }
        });
    }
    Ok((node, pod))
}

fn connects(node: &NetNs, target: (Ipv4Addr, u16), n: usize) -> Result<Vec<Duration>> {
    node.run(move || {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let s = TcpStream::connect(target)?;
            v.push(t.elapsed());
            drop(s);
        }
        Ok::<_, std::io::Error>(v)
    })?
    .context("connect through the service")
}

fn main() -> Result<()> {
    sweep_stale(PREFIX);
    for tool in ["nft", "ip", "iptables-restore"] {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()?
                .status
                .success(),
            "{tool} is needed (install nftables, iproute2, iptables)"
        );
    }
    let sizes: Vec<usize> = std::env::var("SIZES")
        .unwrap_or_else(|_| "1000 10000".into())
        .split_whitespace()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .context("SIZES")?;
    let eps: usize = std::env::var("ENDPOINTS").map_or(Ok(10), |s| s.parse())?;
    // iptables-restore (nf_tables backend) of 10,000 x 10 takes well over
    // 7 minutes here (110k chains), so by default it stops at 1,000.
    let skip_ipt: usize = std::env::var("IPTABLES_MAX").map_or(Ok(1000), |s| s.parse())?;
    let largest = *sizes.iter().max().context("no sizes")?;

    println!("== full sync: N services x {eps} endpoints (one transaction each)");
    println!(
        "{:>8} {:>10} {:>12} {:>14} {:>16} {:>10} {:>10}",
        "services",
        "plan",
        "podnet nft",
        "podnet iptables",
        "kube-proxy-shape",
        "anchor/nft",
        "ipt/nft"
    );
    for &n in &sizes {
        let (state, plan_time) = state_of(n, eps);
        let t = Instant::now();
        let script =
            podnet_core::proxy::nft::ruleset(&state, podnet_core::proxy::Family::V4).full_script();
        let render_time = t.elapsed();
        let script_mb = script.len() as f64 / 1e6;
        let ns = NetNs::unique(PREFIX)?;
        let mut proxy = NftProxy::new(Target::namespace(&ns.path())?);
        let t = Instant::now();
        proxy.sync(&state)?;
        let nft_time = t.elapsed();
        drop(ns);
        println!(
            "    (podnet nft: render {} of {script_mb:.1} MB text, the rest is `nft -f`)",
            ms(render_time)
        );

        let ipt_time = if n <= skip_ipt {
            let ns = NetNs::unique(PREFIX)?;
            let mut proxy = IptablesProxy::new(Target::namespace(&ns.path())?);
            let t = Instant::now();
            proxy.sync(&state)?;
            Some(t.elapsed())
        } else {
            None
        };

        let ns = NetNs::unique(PREFIX)?;
        let file = File::open(ns.path())?;
        let text = kube_proxy_shaped(&state);
        let t = Instant::now();
        nft::apply(Namespace::Fd(file.as_fd()), &text)?;
        let anchor = t.elapsed();
        drop(ns);
        println!(
            "{:>8} {:>10} {:>12} {:>14} {:>16} {:>9.1}x {:>10}",
            n,
            ms(plan_time),
            secs(nft_time),
            ipt_time.map_or("> IPTABLES_MAX".into(), secs),
            secs(anchor),
            anchor.as_secs_f64() / nft_time.as_secs_f64(),
            ipt_time.map_or("-".into(), |i| format!(
                "{:.1}x",
                i.as_secs_f64() / nft_time.as_secs_f64()
            )),
        );
    }

    println!("\n== one endpoint change (median of 11 syncs, each one transaction)");
    println!(
        "{:>8} {:>16} {:>16} {:>16}",
        "services", "podnet nft agent", "nft sync_owned", "podnet iptables"
    );
    let mut change = Vec::new();
    for n in [10, largest] {
        let (svcs, mut slices) = objects(n, eps);
        let (mut state, _) = state_of(n, eps);
        // the agent's path: the changed Service re-planned alone, its
        // ports handed to the applier
        let ns = NetNs::unique(PREFIX)?;
        let mut proxy = NftProxy::new(Target::namespace(&ns.path())?);
        proxy.sync(&state)?;
        let mut times = Vec::new();
        for round in 0usize..11 {
            let slice = slices.last_mut().expect("a slice");
            slice.endpoints[3].addresses = vec![
                if round.is_multiple_of(2) {
                    "10.127.0.1"
                } else {
                    "10.127.0.2"
                }
                .to_string(),
            ];
            let t = Instant::now();
            let (ports, _) = plan_service(svcs.last().expect("a service"), &[&*slice], &facts());
            let changes = ports
                .into_iter()
                .map(|p| (p.name.clone(), Some(p)))
                .collect();
            let r = proxy.update(changes)?;
            times.push(t.elapsed());
            // (endpoints are slotted in address order, so a new address
            // may shift the slots after it)
            ensure!(
                !r.full && r.element_changes <= 2 * eps,
                "not an element change: {r:?}"
            );
        }
        let agent_med = median(times);
        drop(ns);
        // a whole new state each time
        let ns = NetNs::unique(PREFIX)?;
        let mut proxy = NftProxy::new(Target::namespace(&ns.path())?);
        proxy.sync(&state)?;
        let mut times = Vec::new();
        for round in 0..11 {
            one_change(&mut state, round);
            // the agent hands over the planner's fresh state
            let fresh = state.clone();
            let t = Instant::now();
            let r = proxy.sync_owned(fresh)?;
            times.push(t.elapsed());
            ensure!(
                !r.full && r.element_changes == 2,
                "not an element change: {r:?}"
            );
        }
        let nft_med = median(times);
        drop(ns);
        let ipt_med = if n <= skip_ipt {
            let ns = NetNs::unique(PREFIX)?;
            let mut proxy = IptablesProxy::new(Target::namespace(&ns.path())?);
            proxy.sync(&state)?;
            let mut times = Vec::new();
            for round in 0..11 {
                one_change(&mut state, round);
                let t = Instant::now();
                proxy.sync(&state)?;
                times.push(t.elapsed());
            }
            Some(median(times))
        } else {
            None
        };
        println!(
            "{:>8} {:>16} {:>16} {:>16}",
            n,
            ms(agent_med),
            ms(nft_med),
            ipt_med.map_or("> IPTABLES_MAX".into(), ms)
        );
        change.push(agent_med);
    }
    println!(
        "ratio nft one change (agent path) at {largest} / at 10 services: {:.2}x (goal: flat, <= 20 ms)",
        change[1].as_secs_f64() / change[0].as_secs_f64()
    );

    println!("\n== first-packet latency: TCP connect to the last service's VIP from the node");
    let mut setups = Vec::new();
    for n in [10, largest] {
        let (mut state, _) = state_of(n, eps);
        let (node, pod) = first_packet_setup(&mut state)?;
        let mut proxy = NftProxy::new(Target::namespace(&node.path())?);
        proxy.sync(&state)?;
        let last = state.ports.values().next_back().expect("a service");
        let target = (
            match last.cluster_ips[0] {
                std::net::IpAddr::V4(a) => a,
                std::net::IpAddr::V6(_) => unreachable!("bench is IPv4"),
            },
            last.port,
        );
        connects(&node, target, 200)?; // warm up
        setups.push((n, node, pod, target, Vec::new()));
    }
    for _round in 0..5 {
        for (_, node, _, target, samples) in setups.iter_mut() {
            samples.extend(connects(node, *target, 1000)?);
        }
    }
    let mut p50s = Vec::new();
    println!("{:>8} {:>10} {:>10}", "services", "p50", "p99");
    for (n, _, _, _, samples) in setups.iter_mut() {
        let p50 = percentile(samples, 0.5);
        let p99 = percentile(samples, 0.99);
        println!("{:>8} {:>10} {:>10}", n, us(p50), us(p99));
        p50s.push(p50);
    }
    println!(
        "ratio p50 at {largest} / at 10 services: {:.3}x (goal <= 1.10x)",
        p50s[1].as_secs_f64() / p50s[0].as_secs_f64()
    );
    Ok(())
}
