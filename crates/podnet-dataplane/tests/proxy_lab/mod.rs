//! A miniature cluster for the proxy tests, built from namespaces this
//! test owns: node `a` (bridge `br0`, pod CIDR 10.244.1.0/24, forwarding
//! on, br_netfilter calling the IP hooks) with pods attached by veth, and
//! node `b` joined to it by an underlay veth (172.18.0.1 ↔ 172.18.0.2).
//! Pods run small real servers that answer with their name and the client
//! address they saw; clients are real `curl` and UDP sockets.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use podnet_core::proxy::{Endpoint, Protocol, ProxyState, ServicePortName, ServicePortPlan};
use podnet_dataplane::netns::{NetNs, sweep_stale};
use podnet_dataplane::proxy::Target;

pub const PREFIX: &str = "pxt";
pub const NODE_A_IP: &str = "172.18.0.1";
pub const NODE_B_IP: &str = "172.18.0.2";
pub const GATEWAY: &str = "10.244.1.1";

/// Runs `args` in `ns`, panicking with its output if it fails.
pub fn sh(ns: &NetNs, args: &[&str]) -> String {
    let out = ns
        .command(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?} (is it installed?): {e}", args[0]));
    assert!(
        out.status.success(),
        "{args:?} in {} failed: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails loudly if a tool the test needs is missing.
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "this test needs `{tool}` on PATH; install it");
}

pub struct Pod {
    pub name: String,
    pub ns: NetNs,
    pub ip: IpAddr,
}

pub struct Lab {
    pub node_a: NetNs,
    pub node_b: NetNs,
    pub pods: Vec<Pod>,
    servers: Vec<Server>,
}

impl Lab {
    pub fn new() -> Lab {
        for t in ["ip", "nft", "curl", "conntrack", "iptables"] {
            require(t);
        }
        sweep_stale(PREFIX);
        let node_a = NetNs::unique(PREFIX).expect("node a");
        let node_b = NetNs::unique(PREFIX).expect("node b");
        sh(&node_a, &["ip", "link", "add", "br0", "type", "bridge"]);
        sh(
            &node_a,
            &["ip", "addr", "add", "10.244.1.1/24", "dev", "br0"],
        );
        sh(&node_a, &["ip", "link", "set", "br0", "up"]);
        sh(&node_a, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // bridged replies must pass conntrack to be un-DNATed (as kube-proxy
        // needs br_netfilter); the sysctl is per namespace on this kernel.
        let _ = node_a
            .command("sysctl")
            .args(["-qw", "net.bridge.bridge-nf-call-iptables=1"])
            .output();
        sh(
            &node_a,
            &[
                "ip",
                "link",
                "add",
                "under0",
                "type",
                "veth",
                "peer",
                "name",
                "under0",
                "netns",
                node_b.name(),
            ],
        );
        sh(
            &node_a,
            &["ip", "addr", "add", "172.18.0.1/16", "dev", "under0"],
        );
        sh(&node_a, &["ip", "link", "set", "under0", "up"]);
        sh(
            &node_b,
            &["ip", "addr", "add", "172.18.0.2/16", "dev", "under0"],
        );
        sh(&node_b, &["ip", "link", "set", "under0", "up"]);
        sh(
            &node_b,
            &["ip", "route", "add", "10.244.1.0/24", "via", NODE_A_IP],
        );
        // node a's default route leads to the underlay, as a real node's
        // does; service IPs without endpoints meet the forward hook.
        sh(
            &node_a,
            &["ip", "route", "add", "default", "via", NODE_B_IP],
        );
        Lab {
            node_a,
            node_b,
            pods: Vec::new(),
            servers: Vec::new(),
        }
    }

    /// A pod on node a at 10.244.1.<host>.
    pub fn add_pod(&mut self, name: &str, host: u8) -> usize {
        let ns = NetNs::unique(PREFIX).expect("pod ns");
        let veth = format!("vp{host}");
        sh(
            &self.node_a,
            &[
                "ip",
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ],
        );
        sh(
            &self.node_a,
            &["ip", "link", "set", &veth, "master", "br0", "up"],
        );
        // as kubelet does (--hairpin-mode): a pod may reach itself through a
        // service, which br_netfilter bridges back out of the same port
        sh(
            &self.node_a,
            &[
                "ip",
                "link",
                "set",
                &veth,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ],
        );
        let ip = format!("10.244.1.{host}");
        sh(
            &ns,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        sh(&ns, &["ip", "link", "set", "eth0", "up"]);
        sh(&ns, &["ip", "route", "add", "default", "via", GATEWAY]);
        self.pods.push(Pod {
            name: name.into(),
            ns,
            ip: ip.parse().unwrap(),
        });
        self.pods.len() - 1
    }

    /// Starts an HTTP server on `port` in pod `i` answering
    /// `<pod name> <client address>`.
    pub fn serve_http(&mut self, i: usize, port: u16) {
        let pod = &self.pods[i];
        let listener = pod
            .ns
            .run(|| TcpListener::bind(("0.0.0.0", port)))
            .unwrap()
            .expect("bind http");
        let name = pod.name.clone();
        self.serve_on(listener, name);
    }

    /// Starts the same HTTP server in node a's own namespace (as the API
    /// server listens on the control-plane node).
    pub fn serve_http_on_node(&mut self, port: u16) {
        let listener = self
            .node_a
            .run(|| TcpListener::bind(("0.0.0.0", port)))
            .unwrap()
            .expect("bind http");
        self.serve_on(listener, "node-a".into());
    }

    fn serve_on(&mut self, listener: TcpListener, name: String) {
        listener.set_nonblocking(true).unwrap();
        self.servers.push(Server::spawn(move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let name = name.clone();
                        std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                            let mut buf = [0u8; 2048];
                            let _ = s.read(&mut buf);
                            let body = format!("{name} {}\n", peer.ip());
                            let _ = write!(
                                s,
                                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        }));
    }

    /// Starts a UDP server on `port` in pod `i` answering each datagram
    /// with the pod's name.
    pub fn serve_udp(&mut self, i: usize, port: u16) {
        let pod = &self.pods[i];
        let sock = pod
            .ns
            .run(|| UdpSocket::bind(("0.0.0.0", port)))
            .unwrap()
            .expect("bind udp");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let name = pod.name.clone();
        self.servers.push(Server::spawn(move |stop| {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(name.as_bytes(), peer);
                }
            }
        }));
    }

    /// The applier target: node a's namespace.
    pub fn target(&self) -> Target {
        Target::namespace(&self.node_a.path()).unwrap()
    }
}

struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    fn spawn(f: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        Server {
            stop,
            handle: Some(std::thread::spawn(move || f(s))),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `curl` of `url`, `n` times over fresh connections, from `ns`; returns
/// curl's output and exit status.
pub fn curl(ns: &NetNs, url: &str, n: usize) -> Output {
    let mut cmd = ns.command("curl");
    cmd.args(["-s", "--max-time", "5", "--connect-timeout", "3"]);
    for _ in 0..n {
        cmd.arg(url);
    }
    cmd.output().expect("curl runs")
}

/// The bodies of successful answers, one per request.
pub fn answers(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The pod names that answered, counted.
pub fn spread(out: &Output) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for l in answers(out) {
        let name = l.split_whitespace().next().unwrap_or("").to_string();
        *m.entry(name).or_insert(0) += 1;
    }
    m
}

/// One service port for the tests.
pub fn service(name: &str, vip: &str, port: u16, eps: &[(&Pod, u16)]) -> ServicePortPlan {
    ServicePortPlan {
        name: ServicePortName {
            namespace: "default".into(),
            service: name.into(),
            port: String::new(),
            protocol: Protocol::Tcp,
        },
        cluster_ips: vec![vip.parse().unwrap()],
        port,
        node_port: None,
        external_ips: vec![],
        affinity_timeout: None,
        external_local: false,
        internal_local: false,
        endpoints: eps
            .iter()
            .map(|(p, port)| Endpoint {
                addr: p.ip,
                port: *port,
                local: true,
            })
            .collect(),
    }
}

/// A state of the given service ports, with the lab's cluster CIDR.
pub fn state(ports: Vec<ServicePortPlan>) -> ProxyState {
    ProxyState {
        ports: ports.into_iter().map(|p| (p.name.clone(), p)).collect(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
    }
}

/// `nft list table` output made order-independent: chains, sets and the
/// elements in them sorted (the kernel lists in creation and hash order).
pub fn normalized_table(ns: &NetNs, family: &str) -> String {
    let text = sh(ns, &["nft", "list", "table", family, "podnet-proxy"]);
    let mut blocks: Vec<String> = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    let mut in_elements = false;
    let mut elements: Vec<String> = Vec::new();
    for line in text.lines().skip(1) {
        let t = line.trim();
        if t.is_empty() || t == "}" && cur.is_empty() {
            continue;
        }
        if let Some(rest) = t.strip_prefix("elements = {") {
            in_elements = true;
            elements.extend(
                rest.split(',')
                    .map(|e| e.trim().trim_end_matches('}').trim().to_string()),
            );
            if t.ends_with('}') {
                in_elements = false;
            }
            continue;
        }
        if in_elements {
            elements.extend(
                t.split(',')
                    .map(|e| e.trim().trim_end_matches('}').trim().to_string()),
            );
            if t.ends_with('}') {
                in_elements = false;
            }
            continue;
        }
        cur.push(t.to_string());
        if t == "}" {
            elements.retain(|e| !e.is_empty());
            elements.sort();
            cur.insert(cur.len() - 1, format!("elements: {}", elements.join(", ")));
            elements.clear();
            blocks.push(cur.join("\n"));
            cur.clear();
        }
    }
    blocks.sort();
    blocks.join("\n")
}

/// One request of a churn stream: when its connection was begun and made
/// (the proxy picks the endpoint at the first packet, in between), and the
/// body that came back or why none did.
#[derive(Debug)]
pub struct Request {
    pub begun: std::time::Instant,
    pub connected: std::time::Instant,
    pub answer: Result<String, String>,
}

/// What [`churn`] saw.
#[derive(Debug)]
pub struct Churn {
    /// Every request, in order.
    pub requests: Vec<Request>,
    /// Each change: (applying begun, applied, the endpoint pods after it).
    pub changes: Vec<(std::time::Instant, std::time::Instant, Vec<usize>)>,
}

impl Churn {
    /// Requests made entirely between the first change and the last.
    pub fn during(&self) -> usize {
        let (Some(first), Some(last)) = (self.changes.first(), self.changes.last()) else {
            return 0;
        };
        self.requests
            .iter()
            .filter(|r| r.begun >= first.0 && r.connected <= last.1)
            .count()
    }

    /// Requests that failed, or that a pod answered which was an endpoint
    /// at no moment while the connection was being made (during a change,
    /// both the sets before and after it count). `initial` is the set in
    /// force before the first change; `pods` names the lab's pods.
    pub fn wrong(&self, initial: &[usize], pods: &[Pod]) -> Vec<String> {
        // Each set with the span it may be in force: from the start of the
        // change that makes it to the end of the change that replaces it.
        let mut spans: Vec<(
            Option<std::time::Instant>,
            Option<std::time::Instant>,
            &[usize],
        )> = Vec::new();
        spans.push((None, self.changes.first().map(|c| c.1), initial));
        for (i, c) in self.changes.iter().enumerate() {
            spans.push((Some(c.0), self.changes.get(i + 1).map(|n| n.1), &c.2));
        }
        let mut wrong = Vec::new();
        for (n, r) in self.requests.iter().enumerate() {
            let body = match &r.answer {
                Ok(b) => b,
                Err(e) => {
                    wrong.push(format!("request {n}: {e}"));
                    continue;
                }
            };
            let name = body.split_whitespace().next().unwrap_or("");
            let Some(pod) = pods.iter().position(|p| p.name == name) else {
                wrong.push(format!("request {n}: answered by no pod: {body:?}"));
                continue;
            };
            let endpoint = spans.iter().any(|(from, until, set)| {
                set.contains(&pod)
                    && from.is_none_or(|f| f <= r.connected)
                    && until.is_none_or(|u| u >= r.begun)
            });
            if !endpoint {
                wrong.push(format!(
                    "request {n}: answered by {name}, which was not an endpoint while it connected"
                ));
            }
        }
        wrong
    }

    /// The churn tests' verdict: no request went wrong (see [`Churn::wrong`]),
    /// at least `min_during` requests were made during the changes, the
    /// stream began before the first and ended after the last, and each of
    /// `rotation` answered during the churn.
    pub fn assert_clean(
        &self,
        initial: &[usize],
        pods: &[Pod],
        rotation: &[usize],
        min_during: usize,
    ) {
        let wrong = self.wrong(initial, pods);
        assert!(
            wrong.is_empty(),
            "{} of {} requests went wrong during churn:\n{}",
            wrong.len(),
            self.requests.len(),
            wrong.join("\n")
        );
        // The churn overlapped the stream: requests before, during, after.
        let during = self.during();
        assert!(
            during >= min_during,
            "only {during} of {} requests were made during the {} changes",
            self.requests.len(),
            self.changes.len()
        );
        let first = self.changes[0].0;
        let last = self.changes[self.changes.len() - 1].1;
        assert!(self.requests[0].connected < first, "the stream began late");
        assert!(
            self.requests[self.requests.len() - 1].begun > last,
            "the stream ended early"
        );
        // Each pod of the rotation answered during it.
        for &pod in rotation {
            let name = &pods[pod].name;
            assert!(
                self.requests.iter().any(|r| r.begun >= first
                    && r.answer
                        .as_ref()
                        .is_ok_and(|b| b.starts_with(&format!("{name} ")))),
                "{name} never answered during the churn"
            );
        }
    }
}

/// Endpoint churn under a steady stream: pod `client` opens one connection
/// after another to `vip`:80 (GET, read the answer) from before the first
/// change until after the last, while `apply` is called with each of
/// `sets` in turn, `changes` times, `pause` apart.
pub fn churn(
    lab: &Lab,
    client: usize,
    vip: &str,
    sets: &[&[usize]],
    changes: usize,
    pause: Duration,
    mut apply: impl FnMut(&[usize]),
) -> Churn {
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;
    let addr: std::net::SocketAddr = format!("{vip}:80").parse().unwrap();
    let done = AtomicBool::new(false);
    let made = AtomicUsize::new(0);
    let mut log = Vec::new();
    let requests = std::thread::scope(|s| {
        let stream = s.spawn(|| {
            lab.pods[client]
                .ns
                .run(|| {
                    let mut v = Vec::new();
                    // a few requests after the churn too
                    let mut after = 0;
                    while after < 10 {
                        if done.load(Ordering::Relaxed) {
                            after += 1;
                        }
                        let begun = Instant::now();
                        let c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5));
                        let connected = Instant::now();
                        let answer = c
                            .and_then(|mut c| {
                                c.set_read_timeout(Some(Duration::from_secs(5)))?;
                                c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                                let mut r = String::new();
                                c.read_to_string(&mut r)?;
                                Ok(r)
                            })
                            .map_err(|e| e.to_string())
                            .and_then(|r| match r.split_once("\r\n\r\n") {
                                Some((head, body)) if head.starts_with("HTTP/1.0 200") => {
                                    Ok(body.trim().to_string())
                                }
                                _ => Err(format!("not a 200: {r:?}")),
                            });
                        v.push(Request {
                            begun,
                            connected,
                            answer,
                        });
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                    v
                })
                .expect("enter the client's namespace")
        });
        // The stream is flowing before the first change.
        let deadline = Instant::now() + Duration::from_secs(30);
        while made.load(Ordering::Relaxed) < 10 {
            assert!(
                Instant::now() < deadline && !stream.is_finished(),
                "the request stream did not start"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 0..changes {
            let set = sets[i % sets.len()];
            let begun = Instant::now();
            apply(set);
            log.push((begun, Instant::now(), set.to_vec()));
            std::thread::sleep(pause);
        }
        done.store(true, Ordering::Relaxed);
        stream.join().unwrap()
    });
    Churn {
        requests,
        changes: log,
    }
}
