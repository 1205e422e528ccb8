//! A connection's path, hop by hop, from the planners that programmed the
//! kernel: the source pod and node, the service translation (from the
//! proxy planner for the source node), the route or overlay to the
//! destination node (as the agent lays it out), the destination pod, and
//! the policy verdicts at egress and ingress (from the policy model, down
//! to the rule). Each hop can then be held against the kernel.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{Pod, Service};
use podnet_core::policy::{Direction, Explanation, PodKey, PolicyWorld, Proto};
use podnet_core::proxy::{Family, NodeFacts, ProxyState};

use super::node::{self, NodeShell};
use super::world::{Target, World, key, pod_place};

/// One endpoint a service connection may be sent to.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Backend {
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// The pod behind it, if one.
    pub pod: Option<String>,
    /// The node that pod runs on.
    pub node: Option<String>,
}

/// The planned path of one connection.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PathPlan {
    /// `ns/name` of the source pod.
    pub src: String,
    /// Its address.
    pub src_ip: Ipv4Addr,
    /// Its node.
    pub src_node: String,
    /// What the destination was given as.
    pub dst: String,
    /// The address the client connects to (a service IP or the pod's).
    pub dst_ip: Ipv4Addr,
    /// The port it connects to.
    pub dst_port: u16,
    /// The protocol.
    pub proto: Proto,
    /// `ns/name:port` of the service port, when the destination is one.
    pub service: Option<String>,
    /// The service's endpoints as the source node's proxy plans them
    /// (empty for a pod or address destination).
    pub candidates: Vec<Backend>,
    /// The endpoint this path continues to (`None`: no endpoint).
    pub backend: Option<Backend>,
    /// Egress at the source node.
    pub egress: Explanation,
    /// Ingress at the destination node.
    pub ingress: Explanation,
}

impl PathPlan {
    /// Whether the planners let a new connection through.
    pub fn allowed(&self) -> bool {
        self.backend.is_some() && self.egress.verdict().allows() && self.ingress.verdict().allows()
    }
}

/// A parsed `[:PORT][/PROTO]` suffix.
#[derive(Clone, Debug)]
pub struct PortSpec {
    /// A number or a name (service port name, or a container port name).
    pub port: Option<String>,
    /// `tcp`, `udp`, `sctp`.
    pub proto: Option<Proto>,
}

/// Splits `NAME[:PORT][/PROTO]`. A `/` that belongs to a name
/// (`ns/pod`, `svc/name`) is kept when what follows is not a protocol.
pub fn split_target(s: &str) -> anyhow::Result<(String, PortSpec)> {
    let (rest, proto) = match s.rsplit_once('/') {
        Some((r, p)) if ["tcp", "udp", "sctp"].contains(&p.to_ascii_lowercase().as_str()) => {
            (r, Some(parse_proto(p)?))
        }
        _ => (s, None),
    };
    let (name, port) = match rest.rsplit_once(':') {
        Some((n, p)) => (n.to_string(), Some(p.to_string())),
        None => (rest.to_string(), None),
    };
    Ok((name, PortSpec { port, proto }))
}

fn parse_proto(p: &str) -> anyhow::Result<Proto> {
    Ok(match p.to_ascii_lowercase().as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "sctp" => Proto::Sctp,
        other => anyhow::bail!("unknown protocol {other:?} (tcp, udp, sctp)"),
    })
}

/// The proxy's plan for `node`, as its agent computes it.
pub fn proxy_state(world: &World, node: &str) -> ProxyState {
    let facts = NodeFacts {
        node_name: node.to_string(),
        cluster_cidrs: vec![world.cluster_cidr()],
    };
    podnet_core::proxy::plan(&world.services, &world.slices, &facts).state
}

/// The service port a spec names (number, name, or the only/first port).
pub fn service_port<'a>(
    svc: &'a Service,
    spec: &PortSpec,
) -> Option<&'a k8s_openapi::api::core::v1::ServicePort> {
    let ports = svc.spec.as_ref()?.ports.as_ref()?;
    let proto_ok = |p: &k8s_openapi::api::core::v1::ServicePort| {
        spec.proto
            .is_none_or(|want| Proto::parse(p.protocol.as_deref()).ok() == Some(want))
    };
    match &spec.port {
        Some(s) => ports.iter().find(|p| {
            proto_ok(p)
                && (s.parse::<i32>().ok() == Some(p.port) || p.name.as_deref() == Some(s.as_str()))
        }),
        None => ports.iter().find(|p| proto_ok(p)),
    }
}

/// The pod with address `ip`, if any (not hostNetwork).
pub fn pod_by_ip<'a>(world: &'a World, ip: &str) -> Option<&'a Pod> {
    world.pods.iter().find(|p| {
        let (pip, _, host) = pod_place(p);
        !host && pip.as_deref() == Some(ip)
    })
}

/// Plans the path from `src` to `dst` (already split from its port).
/// `pick`: the endpoint to follow when the destination is a service (the
/// one the kernel chose, from a probe); else the first candidate.
pub fn plan_path(
    world: &World,
    policy: &PolicyWorld,
    src: &Pod,
    dst: &Target,
    spec: &PortSpec,
    pick: Option<Ipv4Addr>,
) -> anyhow::Result<PathPlan> {
    let (src_ip, src_node, _) = pod_place(src);
    let src_ip: Ipv4Addr = src_ip
        .ok_or_else(|| anyhow::anyhow!("{} has no IP yet", key(&src.metadata)))?
        .parse()?;
    let src_node = src_node.unwrap_or_default();
    let mut proto = spec.proto.unwrap_or(Proto::Tcp);
    let mut candidates = Vec::new();
    let mut service = None;
    let (dst_ip, dst_port, dst_name) = match dst {
        Target::Service(svc) => {
            let sp = service_port(svc, spec).ok_or_else(|| {
                anyhow::anyhow!(
                    "service {} has no port {}",
                    key(&svc.metadata),
                    spec.port.as_deref().unwrap_or("(any)")
                )
            })?;
            proto = Proto::parse(sp.protocol.as_deref()).unwrap_or(Proto::Tcp);
            let vip: Ipv4Addr = svc
                .spec
                .as_ref()
                .and_then(|s| s.cluster_ip.as_deref())
                .and_then(|ip| ip.parse().ok())
                .ok_or_else(|| {
                    anyhow::anyhow!("service {} has no IPv4 cluster IP", key(&svc.metadata))
                })?;
            let state = proxy_state(world, &src_node);
            let want = (
                svc.metadata.namespace.clone().unwrap_or_default(),
                svc.metadata.name.clone().unwrap_or_default(),
                sp.name.clone().unwrap_or_default(),
            );
            if let Some(p) = state.ports.values().find(|p| {
                (
                    p.name.namespace.clone(),
                    p.name.service.clone(),
                    p.name.port.clone(),
                ) == want
                    && p.name.protocol.as_str() == proto.nft()
            }) {
                for e in p.cluster_endpoints(Family::V4) {
                    let IpAddr::V4(ip) = e.addr else { continue };
                    let pod = pod_by_ip(world, &ip.to_string());
                    candidates.push(Backend {
                        ip,
                        port: e.port,
                        pod: pod.map(|p| key(&p.metadata)),
                        node: pod.and_then(|p| pod_place(p).1),
                    });
                }
            }
            service = Some(format!("{}:{}", key(&svc.metadata), sp.port));
            (vip, sp.port as u16, key(&svc.metadata))
        }
        Target::Pod(p) => {
            let ip: Ipv4Addr = pod_place(p)
                .0
                .ok_or_else(|| anyhow::anyhow!("{} has no IP yet", key(&p.metadata)))?
                .parse()?;
            let facts = podnet_core::policy::model::PodFacts::from_pod(p);
            let port = match &spec.port {
                None => 80,
                Some(s) => match s.parse::<u16>() {
                    Ok(n) => n,
                    Err(_) => facts.resolve(s, proto).ok_or_else(|| {
                        anyhow::anyhow!("{} has no container port named {s}", key(&p.metadata))
                    })?,
                },
            };
            (ip, port, key(&p.metadata))
        }
        Target::Ip(ip) => {
            let port = spec
                .port
                .as_deref()
                .unwrap_or("80")
                .parse()
                .map_err(|_| anyhow::anyhow!("a port by name needs a pod or a service"))?;
            (*ip, port, ip.to_string())
        }
        Target::Missing {
            namespace, name, ..
        } => anyhow::bail!("no pod or service {namespace}/{name}"),
    };
    let backend = if service.is_some() {
        match pick {
            Some(ip) => candidates.iter().find(|c| c.ip == ip).cloned().or_else(|| {
                let pod = pod_by_ip(world, &ip.to_string());
                Some(Backend {
                    ip,
                    port: 0,
                    pod: pod.map(|p| key(&p.metadata)),
                    node: pod.and_then(|p| pod_place(p).1),
                })
            }),
            None => candidates.first().cloned(),
        }
    } else {
        let pod = pod_by_ip(world, &dst_ip.to_string());
        Some(Backend {
            ip: dst_ip,
            port: dst_port,
            pod: pod.map(|p| key(&p.metadata)),
            node: pod.and_then(|p| pod_place(p).1),
        })
    };
    let facts = |k: &Option<String>| {
        k.as_ref().and_then(|k| {
            let (ns, name) = k.split_once('/')?;
            policy.pods.iter().find(|p| {
                p.key
                    == PodKey {
                        namespace: ns.into(),
                        name: name.into(),
                    }
            })
        })
    };
    let src_key = Some(key(&src.metadata));
    let src_facts = facts(&src_key);
    let (egress, ingress) = match &backend {
        Some(b) => {
            let dst_facts = facts(&b.pod);
            let port = b.port;
            (
                policy.explain(
                    Direction::Egress,
                    (src_ip, src_facts),
                    (b.ip, dst_facts),
                    proto,
                    port,
                ),
                policy.explain(
                    Direction::Ingress,
                    (src_ip, src_facts),
                    (b.ip, dst_facts),
                    proto,
                    port,
                ),
            )
        }
        None => Default::default(),
    };
    Ok(PathPlan {
        src: key(&src.metadata),
        src_ip,
        src_node,
        dst: dst_name,
        dst_ip,
        dst_port,
        proto,
        service,
        candidates,
        backend,
        egress,
        ingress,
    })
}

/// What the kernel says of one hop.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelSays {
    /// Whether the kernel holds what the plan says.
    pub agrees: bool,
    /// What was read.
    pub evidence: String,
}

/// Whether `node` has what the agent lays out to reach `peer`'s pod CIDR
/// (route; with VXLAN also the FDB and neighbour entries); the evidence
/// names what is missing.
pub fn route_to(world: &World, sh: &dyn NodeShell, node: &str, peer: &str) -> KernelSays {
    let (Some(cidr), Some(peer_ip)) = (world.node_cidr(peer), world.node_ip(peer)) else {
        return KernelSays {
            agrees: false,
            evidence: format!("{peer} has no pod CIDR or InternalIP in the API"),
        };
    };
    let routes = match node::routes(sh, node) {
        Ok(r) => r,
        Err(e) => {
            return KernelSays {
                agrees: false,
                evidence: format!("cannot read routes: {e:#}"),
            };
        }
    };
    let vtep: Option<Ipv4Addr> = cidr.parse::<ipnet::Ipv4Net>().ok().map(|c| c.network());
    let route = routes.iter().find(|r| r.dst == cidr);
    let mut missing = Vec::new();
    let mut have = Vec::new();
    if world.encap() == "vxlan" {
        let vtep = vtep.map(|v| v.to_string()).unwrap_or_default();
        let mac = node::vtep_mac(peer_ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED));
        match route {
            Some(r) if r.dev == podnet_vxlan() && r.gateway.as_deref() == Some(&vtep) => {
                have.push(format!("route {cidr} via {vtep} dev {}", r.dev))
            }
            Some(r) => missing.push(format!(
                "route {cidr} goes via {:?} dev {} (want via {vtep} dev {})",
                r.gateway,
                r.dev,
                podnet_vxlan()
            )),
            None => missing.push(format!("route {cidr} via {vtep} dev {}", podnet_vxlan())),
        }
        match node::neighbours(sh, node, podnet_vxlan()) {
            Ok(n) if n.iter().any(|(ip, m)| *ip == vtep && *m == mac) => {
                have.push(format!("neigh {vtep} lladdr {mac}"))
            }
            Ok(_) => missing.push(format!(
                "neighbour {vtep} lladdr {mac} dev {}",
                podnet_vxlan()
            )),
            Err(e) => missing.push(format!("neighbours unreadable ({e:#})")),
        }
        match node::fdb(sh, node, podnet_vxlan()) {
            Ok(f) if f.iter().any(|(m, d)| *m == mac && *d == peer_ip) => {
                have.push(format!("fdb {mac} dst {peer_ip}"))
            }
            Ok(_) => missing.push(format!(
                "FDB entry {mac} dst {peer_ip} dev {}",
                podnet_vxlan()
            )),
            Err(e) => missing.push(format!("FDB unreadable ({e:#})")),
        }
    } else {
        match route {
            Some(r) if r.gateway.as_deref() == Some(peer_ip.as_str()) => {
                have.push(format!("route {cidr} via {peer_ip} dev {}", r.dev))
            }
            Some(r) => missing.push(format!(
                "route {cidr} goes via {:?} dev {} (want via {peer_ip})",
                r.gateway, r.dev
            )),
            None => missing.push(format!("route {cidr} via {peer_ip}")),
        }
    }
    if missing.is_empty() {
        KernelSays {
            agrees: true,
            evidence: have.join(", "),
        }
    } else {
        KernelSays {
            agrees: false,
            evidence: format!("missing {}", missing.join("; ")),
        }
    }
}

/// The agent's VXLAN device.
pub fn podnet_vxlan() -> &'static str {
    "podnet.1"
}

/// The policy table's name (`podnet_core::policy::TABLE` is `inet
/// podnet-policy`, family and name).
const POLICY_TABLE: &str = "podnet-policy";

/// Per-pod policy drop counters of a node: (direction, pod IP) → packets.
pub fn drop_counters(sh: &dyn NodeShell, node: &str) -> BTreeMap<(Direction, String), u64> {
    let mut out = BTreeMap::new();
    for (dir, set) in [
        (Direction::Ingress, "in_drops"),
        (Direction::Egress, "eg_drops"),
    ] {
        let Ok(o) = sh.node_cmd(
            node,
            &["nft", "-j", "list", "set", "inet", POLICY_TABLE, set],
        ) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) else {
            continue;
        };
        for item in v["nftables"].as_array().into_iter().flatten() {
            for e in item["set"]["elem"].as_array().into_iter().flatten() {
                let ip = node::expr_text(&e["elem"]["val"]);
                let packets = e["elem"]["counter"]["packets"].as_u64().unwrap_or(0);
                out.insert((dir, ip), packets);
            }
        }
    }
    out
}

/// The policy verdict of one direction, in words: `open (no policy
/// isolates ns/pod)`, `admitted by x/allow (ingress[1])`, or `isolated by
/// A, B; no rule admits <peer>:<port>/<proto>`.
pub fn verdict_text(
    e: &Explanation,
    dir: Direction,
    subject: &str,
    peer: &str,
    port: u16,
    proto: Proto,
) -> String {
    let field = match dir {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    if e.isolating.is_empty() {
        format!("open: no NetworkPolicy isolates {subject} for {field}")
    } else if e.admitting.is_empty() {
        format!(
            "isolated by {}; no rule admits {peer}:{port}/{proto}",
            e.isolating.join(", ")
        )
    } else {
        let rules: Vec<String> = e
            .admitting
            .iter()
            .map(|(p, i)| format!("{p} ({field}[{i}])"))
            .collect();
        format!("admitted by {}", rules.join(", "))
    }
}
