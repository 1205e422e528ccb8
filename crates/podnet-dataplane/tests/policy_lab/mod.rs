//! A two-node mini cluster built from network namespaces, for NetworkPolicy
//! truth tables against the real kernel.
//!
//! Nodes `n1` and `n2` are namespaces joined by a veth (the underlay,
//! 172.18.0.0/24) with a route to each other's pod /24. Each pod is a
//! namespace on a routed veth to its node (pod /32, gateway 10.244.N.1), so
//! pod-to-pod traffic is forwarded by the node and meets its policy table.
//! Namespaces x, y, z each hold pods a, b (on n1) and c (on n2), each
//! serving TCP and UDP on 80 and 81. Probes are real connects and UDP
//! exchanges made from inside the client pod.
#![allow(dead_code)]

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use podnet_core::policy::{
    Matrix, NodeFacts, PodKey, PolicyState, Probe, Proto, expected_matrix, plan,
};
use podnet_dataplane::netns::{NetNs, sweep_stale};
use podnet_dataplane::nft::Namespace as NftNs;
use podnet_dataplane::policy::PolicyApplier;
use serde_json::json;

/// Prefix of every namespace the policy tests make.
pub const PREFIX: &str = "pnpol";

/// TCP and UDP on 80 and 81: the probes of every case.
pub const PROBES: [Probe; 4] = [
    Probe {
        proto: Proto::Tcp,
        port: 80,
    },
    Probe {
        proto: Proto::Tcp,
        port: 81,
    },
    Probe {
        proto: Proto::Udp,
        port: 80,
    },
    Probe {
        proto: Proto::Udp,
        port: 81,
    },
];

/// Fails loudly if a tool the lab needs is missing.
pub fn require_tools() {
    for (tool, arg) in [("ip", "-V"), ("nft", "--version")] {
        let ok = Command::new(tool)
            .arg(arg)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(ok, "`{tool}` is required (install iproute2 / nftables)");
    }
}

fn sh_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip -batch -` inside `ns`.
pub fn ip_batch(ns: &NetNs, script: &str) {
    let mut child = ns
        .command("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ip");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ip -batch in {}: {}\n{script}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One node of the lab.
pub struct Node {
    /// The node's namespace (it forwards its pods' traffic).
    pub ns: NetNs,
    /// `spec.nodeName`.
    pub name: String,
    /// The node's pod /24.
    pub cidr: String,
    /// Third octet of its pod /24.
    pub octet: u8,
    next_link: u32,
    file: std::fs::File,
}

/// One pod of the lab.
pub struct LabPod {
    /// Namespace/name.
    pub key: PodKey,
    /// The pod's network namespace.
    pub ns: NetNs,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Index of its node.
    pub node: usize,
    /// Its labels.
    pub labels: serde_json::Map<String, serde_json::Value>,
}

/// The mini cluster.
pub struct Lab {
    /// Pods first, so they are deleted before their nodes.
    pub pods: Vec<LabPod>,
    /// n1, n2.
    pub nodes: Vec<Node>,
    /// Namespace labels by name.
    pub namespaces: Vec<(String, serde_json::Map<String, serde_json::Value>)>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.servers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Lab {
    /// Two nodes, namespaces x, y, z with pods a, b, c, servers running.
    pub fn xyz() -> Lab {
        let mut lab = Lab::nodes();
        for ns in ["x", "y", "z"] {
            lab.add_namespace(ns);
            for (pod, node) in [("a", 0), ("b", 0), ("c", 1)] {
                lab.add_pod(ns, pod, node, true);
            }
        }
        lab
    }

    /// Just the two nodes and the underlay.
    pub fn nodes() -> Lab {
        require_tools();
        sweep_stale(PREFIX);
        let mut nodes = Vec::new();
        for i in 1..=2u8 {
            let ns = NetNs::unique(PREFIX).expect("node namespace");
            // Forward pods' traffic; and answer every refused probe with its
            // ICMP at once (the kernel rate-limits ICMP errors per
            // destination by default, which would turn refusals into
            // timeouts and slow the tables down, not change them).
            sh_ok(
                ns.command("sysctl").args([
                    "-qw",
                    "net.ipv4.ip_forward=1",
                    "net.ipv4.icmp_ratelimit=0",
                    "net.ipv4.icmp_msgs_per_sec=1000000",
                    "net.ipv4.icmp_msgs_burst=1000000",
                ]),
                "sysctl",
            );
            let file = std::fs::File::open(ns.path()).expect("open node namespace");
            nodes.push(Node {
                file,
                ns,
                name: format!("n{i}"),
                cidr: format!("10.244.{i}.0/24"),
                octet: i,
                next_link: 0,
            });
        }
        ip_batch(
            &nodes[0].ns,
            &format!(
                "link add ul0 type veth peer name ul0 netns {}\naddr add 172.18.0.1/24 dev ul0\nlink set ul0 up\n",
                nodes[1].ns.name()
            ),
        );
        ip_batch(
            &nodes[1].ns,
            "addr add 172.18.0.2/24 dev ul0\nlink set ul0 up\nroute add 10.244.1.0/24 via 172.18.0.1\n",
        );
        ip_batch(&nodes[0].ns, "route add 10.244.2.0/24 via 172.18.0.2\n");
        Lab {
            pods: Vec::new(),
            nodes,
            namespaces: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        }
    }

    /// Adds namespace `name` labelled `ns=<name>` (plus the name label).
    pub fn add_namespace(&mut self, name: &str) {
        let mut labels = serde_json::Map::new();
        labels.insert("ns".into(), json!(name));
        labels.insert("kubernetes.io/metadata.name".into(), json!(name));
        self.namespaces.push((name.into(), labels));
    }

    /// Sets a label on a namespace (as `kubectl label ns` would).
    pub fn label_namespace(&mut self, name: &str, key: &str, value: &str) {
        let ns = self.namespaces.iter_mut().find(|n| n.0 == name).unwrap();
        ns.1.insert(key.into(), json!(value));
    }

    /// Sets a label on a pod.
    pub fn label_pod(&mut self, key: &str, label: &str, value: &str) {
        let p = self.pod_mut(key);
        p.labels.insert(label.into(), json!(value));
    }

    fn pod_mut(&mut self, key: &str) -> &mut LabPod {
        self.pods
            .iter_mut()
            .find(|p| p.key.to_string() == key)
            .unwrap_or_else(|| panic!("no pod {key}"))
    }

    /// The pod `ns/name`.
    pub fn pod(&self, key: &str) -> &LabPod {
        self.pods
            .iter()
            .find(|p| p.key.to_string() == key)
            .unwrap_or_else(|| panic!("no pod {key}"))
    }

    /// Creates a pod namespace wired to `node`, labelled `pod=<name>`;
    /// with `serve`, starts its TCP and UDP servers on 80 and 81.
    pub fn add_pod(&mut self, namespace: &str, name: &str, node: usize, serve: bool) -> usize {
        let ns = NetNs::unique(PREFIX).expect("pod namespace");
        let n = &mut self.nodes[node];
        n.next_link += 1;
        let host = n.next_link + 1;
        assert!(host < 250, "node {} is full", n.name);
        let ip = Ipv4Addr::new(10, 244, n.octet, host as u8 + 1);
        let gw = format!("10.244.{}.1", n.octet);
        let link = format!("pv{}", n.next_link);
        ip_batch(
            &n.ns,
            &format!(
                "link add {link} type veth peer name eth0 netns {pod}\naddr add {gw}/32 dev {link}\nlink set {link} up\nroute add {ip}/32 dev {link}\n",
                pod = ns.name()
            ),
        );
        ip_batch(
            &ns,
            &format!(
                "addr add {ip}/32 dev eth0\nlink set eth0 up\nroute add {gw} dev eth0 scope link\nroute add default via {gw} dev eth0\n"
            ),
        );
        let mut labels = serde_json::Map::new();
        labels.insert("pod".into(), json!(name));
        let pod = LabPod {
            key: PodKey {
                namespace: namespace.into(),
                name: name.into(),
            },
            ns,
            ip,
            node,
            labels,
        };
        if serve {
            let h = serve_pod(&pod, self.stop.clone());
            self.servers.push(h);
        }
        self.pods.push(pod);
        self.pods.len() - 1
    }

    /// Removes a pod (its namespace and links go with it).
    pub fn remove_pod(&mut self, key: &str) {
        let i = self
            .pods
            .iter()
            .position(|p| p.key.to_string() == key)
            .unwrap();
        self.pods.remove(i);
    }

    /// The pods as API objects (named container ports as upstream's e2e
    /// pods declare them: `serve-<port>-<proto>`).
    pub fn pod_objects(&self) -> Vec<Pod> {
        self.pods
            .iter()
            .map(|p| {
                let mut ports = Vec::new();
                for port in [80, 81] {
                    for proto in ["tcp", "udp", "sctp"] {
                        ports.push(json!({"name": format!("serve-{port}-{proto}"),
                            "containerPort": port, "protocol": proto.to_uppercase()}));
                    }
                }
                serde_json::from_value(json!({
                    "metadata": {"name": &*p.key.name, "namespace": &*p.key.namespace, "labels": p.labels},
                    "spec": {"nodeName": self.nodes[p.node].name,
                        "containers": [{"name": "cont", "ports": ports}]},
                    "status": {"podIP": p.ip.to_string(), "podIPs": [{"ip": p.ip.to_string()}]}
                }))
                .unwrap()
            })
            .collect()
    }

    /// The namespaces as API objects.
    pub fn namespace_objects(&self) -> Vec<Namespace> {
        self.namespaces
            .iter()
            .map(|(name, labels)| {
                serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                    .unwrap()
            })
            .collect()
    }

    /// What the agent of `node` knows about itself.
    pub fn node_facts(&self, node: usize) -> NodeFacts {
        NodeFacts {
            node_name: self.nodes[node].name.clone(),
            pod_cidrs: vec![self.nodes[node].cidr.parse().unwrap()],
        }
    }

    /// One applier per node (what each node's agent runs).
    pub fn agents(&self) -> Vec<PolicyApplier<'_>> {
        self.nodes
            .iter()
            .map(|n| PolicyApplier::new(NftNs::Fd(n.ns_fd())))
            .collect()
    }

    /// Handles on the node namespaces that do not borrow the lab, so the
    /// lab can change (labels, pods) under long-lived agents.
    pub fn node_files(&self) -> Vec<std::fs::File> {
        self.nodes
            .iter()
            .map(|n| n.file.try_clone().expect("dup node fd"))
            .collect()
    }

    /// The desired state of `node` for these policies.
    pub fn plan(&self, node: usize, policies: &[NetworkPolicy]) -> PolicyState {
        plan(
            &self.node_facts(node),
            &self.pod_objects(),
            &self.namespace_objects(),
            policies,
        )
        .expect("plan")
    }

    /// Plans and applies `policies` on every node, as the agents would.
    pub fn enforce(&self, agents: &mut [PolicyApplier<'_>], policies: &[NetworkPolicy]) {
        for (i, a) in agents.iter_mut().enumerate() {
            let state = self.plan(i, policies);
            a.sync(&state).expect("policy sync");
        }
    }

    /// The truth table the model expects.
    pub fn expected(&self, policies: &[NetworkPolicy]) -> Matrix {
        expected_matrix(
            &self.pod_objects(),
            &self.namespace_objects(),
            policies,
            &PROBES,
        )
        .expect("model")
    }

    /// The truth table the kernel gives: every pair, every probe, from
    /// inside the client pod (one thread per client).
    pub fn probe(&self) -> Matrix {
        let pods: Vec<PodKey> = self.pods.iter().map(|p| p.key.clone()).collect();
        let mut m = Matrix::new(pods, PROBES.to_vec());
        let targets: Vec<Ipv4Addr> = self.pods.iter().map(|p| p.ip).collect();
        let rows: Vec<Vec<bool>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .pods
                .iter()
                .map(|from| {
                    let targets = &targets;
                    s.spawn(move || {
                        from.ns
                            .run(|| {
                                let mut row = Vec::new();
                                for &to in targets {
                                    for p in PROBES {
                                        row.push(probe_once(to, p));
                                    }
                                }
                                row
                            })
                            .expect("enter pod")
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (f, row) in rows.iter().enumerate() {
            for t in 0..self.pods.len() {
                for p in 0..PROBES.len() {
                    m.set(f, t, p, row[t * PROBES.len() + p]);
                }
            }
        }
        m
    }

    /// Enforces `policies`, then asserts that the probed matrix equals the
    /// model's on every cell.
    pub fn assert_case(&self, agents: &mut [PolicyApplier<'_>], policies: &[NetworkPolicy]) {
        self.enforce(agents, policies);
        let expected = self.expected(policies);
        let probed = self.probe();
        let bad = expected.mismatches(&probed);
        assert!(
            bad.is_empty(),
            "kernel and model disagree on {} cells: {:?}\nexpected:\n{}\nprobed:\n{}",
            bad.len(),
            bad,
            expected.render(),
            probed.render()
        );
    }
}

impl Node {
    /// The node namespace's fd, for nft.
    pub fn ns_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Agents over node handles from [`Lab::node_files`].
pub fn agents(files: &[std::fs::File]) -> Vec<PolicyApplier<'_>> {
    files
        .iter()
        .map(|f| PolicyApplier::new(NftNs::Fd(f.as_fd())))
        .collect()
}

/// One probe: a TCP connect, or a UDP datagram echoed back.
pub fn probe_once(to: Ipv4Addr, p: Probe) -> bool {
    let addr = SocketAddr::V4(SocketAddrV4::new(to, p.port));
    match p.proto {
        Proto::Tcp => TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
        Proto::Udp => {
            let Some(s) = fresh_udp_socket() else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(1500)));
            if s.connect(addr).is_err() || s.send(b"probe").is_err() {
                return false;
            }
            let mut buf = [0u8; 16];
            matches!(s.recv(&mut buf), Ok(5) if &buf[..5] == b"probe")
        }
        Proto::Sctp => panic!("this kernel has no SCTP"),
    }
}

/// UDP probes made so far by this test binary: each takes the next source
/// port.
static UDP_PROBES: AtomicU32 = AtomicU32::new(0);

/// Source ports of UDP probes: below the kernel's ephemeral range, so the
/// servers' own sockets never hold one.
const UDP_SOURCE_PORTS: std::ops::Range<u32> = 2000..32000;

/// A UDP socket on a source port no earlier probe of this binary used (until
/// the 30,000 ports wrap). A kernel-chosen port can repeat one of an earlier
/// probe to the same server; the 5-tuple then still has its conntrack entry
/// from before the policy changed, and the probe measures that old flow
/// (established, let through) instead of a new connection's verdict.
pub fn fresh_udp_socket() -> Option<UdpSocket> {
    for _ in 0..64 {
        let n = UDP_PROBES.fetch_add(1, Ordering::Relaxed);
        let port = UDP_SOURCE_PORTS.start + n % UDP_SOURCE_PORTS.len() as u32;
        match UdpSocket::bind(("0.0.0.0", port as u16)) {
            Ok(s) => return Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(_) => return None,
        }
    }
    None
}

/// Starts a pod's servers: sockets made inside the pod, served by one
/// thread that polls them until the lab stops.
fn serve_pod(pod: &LabPod, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (tcp, udp) = pod
        .ns
        .run(|| {
            let tcp: Vec<TcpListener> = [80, 81]
                .iter()
                .map(|p| TcpListener::bind(("0.0.0.0", *p)).expect("tcp bind"))
                .collect();
            let udp: Vec<UdpSocket> = [80, 81]
                .iter()
                .map(|p| UdpSocket::bind(("0.0.0.0", *p)).expect("udp bind"))
                .collect();
            (tcp, udp)
        })
        .expect("enter pod");
    for t in &tcp {
        t.set_nonblocking(true).unwrap();
    }
    for u in &udp {
        u.set_nonblocking(true).unwrap();
    }
    std::thread::spawn(move || {
        let mut fds: Vec<libc::pollfd> = tcp
            .iter()
            .map(|t| t.as_raw_fd())
            .chain(udp.iter().map(|u| u.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: fds is a valid array of pollfd for the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
            if n <= 0 {
                continue;
            }
            for t in &tcp {
                while let Ok((s, _)) = t.accept() {
                    drop(s);
                }
            }
            for u in &udp {
                let mut buf = [0u8; 64];
                while let Ok((n, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(&buf[..n], from);
                }
            }
        }
    })
}

/// A NetworkPolicy from its namespace, name and spec (as JSON).
pub fn netpol(namespace: &str, name: &str, spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": namespace}, "spec": spec}),
    )
    .expect("valid NetworkPolicy")
}

/// The policy table of a node as nft lists it, without the kernel-filled
/// drop sets and counters, for comparing rulesets.
pub fn table_text(ns: &NetNs) -> String {
    let out = ns
        .command("nft")
        .args(["list", "table", "inet", "podnet-policy"])
        .output()
        .expect("nft");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut keep = Vec::new();
    let mut skip = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("set in_drops")
            || t.starts_with("set eg_drops")
            || t.starts_with("counter unknown")
        {
            skip = true;
        }
        if !skip {
            keep.push(line);
        }
        if skip && t == "}" {
            skip = false;
        }
    }
    keep.join("\n")
}
