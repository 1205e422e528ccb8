//! The proxy planner (pure; no I/O): Services and EndpointSlices, plus the
//! node's own facts, become a [`ProxyState`] — every service port with the
//! endpoints each kind of traffic may reach. Renderers turn that state into
//! an nftables table ([`nft`]) whose rule count stays constant as services
//! grow, or into kube-proxy-shaped `iptables-restore` text ([`iptables`]).
//!
//! The agent calls [`plan`] on every change, then hands the state to an
//! applier in `podnet-dataplane`, which diffs it against what it applied.

pub mod iptables;
pub mod nft;
mod plan;

pub use plan::{PlanProblem, ProxyPlan, SERVICE_NAME_LABEL, plan, plan_service};

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// The facts about the node the proxy runs on that the plan depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// This node's name, to tell local endpoints (`nodeName`) from remote.
    pub node_name: String,
    /// The cluster's pod CIDRs (all nodes, each family): traffic from
    /// outside them to a service is masqueraded so replies come back here.
    pub cluster_cidrs: Vec<IpNet>,
}

/// An IP family; each is rendered as a table of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 (`table ip`).
    V4,
    /// IPv6 (`table ip6`).
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// A transport protocol a service port can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP (rendered and text-tested; not in every kernel).
    Sctp,
}

impl Protocol {
    /// The lower-case name nft and iptables use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Parses Kubernetes' spelling (`TCP`, `UDP`, `SCTP`; absent = TCP).
    pub fn from_k8s(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// Names one port of one service, as kube-proxy's `ServicePortName` does.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    /// The service's namespace.
    pub namespace: String,
    /// The service's name.
    pub service: String,
    /// The port's name (empty for a service's single unnamed port).
    pub port: String,
    /// The port's protocol (two ports may share a name across protocols).
    pub protocol: Protocol,
}

impl std::fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        write!(f, "/{}", self.protocol.as_str())
    }
}

/// One endpoint a service port may send a connection to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// The endpoint's address (a pod IP, usually).
    pub addr: IpAddr,
    /// The resolved target port on that endpoint.
    pub port: u16,
    /// Whether the endpoint runs on this node (for Local traffic policies
    /// and hairpin).
    pub local: bool,
}

/// Everything the dataplane needs to know about one service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortPlan {
    /// Which service port this is.
    pub name: ServicePortName,
    /// The service's virtual IPs (one per family when dual-stack).
    pub cluster_ips: Vec<IpAddr>,
    /// The service port (on the cluster and external IPs).
    pub port: u16,
    /// The NodePort on every local address, if allocated.
    pub node_port: Option<u16>,
    /// `externalIPs` and load-balancer ingress IPs.
    pub external_ips: Vec<IpAddr>,
    /// `sessionAffinity: ClientIP` timeout in seconds, if set.
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`: external traffic only to local
    /// endpoints, client address preserved.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: cluster traffic only to local
    /// endpoints.
    pub internal_local: bool,
    /// The usable endpoints, sorted and without duplicates.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePortPlan {
    /// Endpoints of `family` reachable through the cluster IP.
    pub fn cluster_endpoints(&self, family: Family) -> Vec<&Endpoint> {
        self.endpoints
            .iter()
            .filter(|e| Family::of(&e.addr) == family && (!self.internal_local || e.local))
            .collect()
    }

    /// Endpoints of `family` reachable through NodePorts and external IPs.
    pub fn external_endpoints(&self, family: Family) -> Vec<&Endpoint> {
        self.endpoints
            .iter()
            .filter(|e| Family::of(&e.addr) == family && (!self.external_local || e.local))
            .collect()
    }

    /// The cluster IP of `family`, if the service has one.
    pub fn cluster_ip(&self, family: Family) -> Option<IpAddr> {
        self.cluster_ips
            .iter()
            .copied()
            .find(|a| Family::of(a) == family)
    }
}

/// The desired proxy state of one node: every service port it serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyState {
    /// The service ports, keyed (and so ordered) by name.
    pub ports: BTreeMap<ServicePortName, ServicePortPlan>,
    /// The cluster's pod CIDRs (copied from [`NodeFacts`]) for masquerade.
    pub cluster_cidrs: Vec<IpNet>,
}

impl ProxyState {
    /// The families this state has anything to say about (always V4, plus
    /// V6 when any service or CIDR is IPv6), so a renderer knows which
    /// tables to keep.
    pub fn families(&self) -> Vec<Family> {
        let v6 = self.cluster_cidrs.iter().any(|c| matches!(c, IpNet::V6(_)))
            || self
                .ports
                .values()
                .flat_map(|p| p.cluster_ips.iter().chain(&p.external_ips))
                .any(|a| a.is_ipv6());
        if v6 {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }
}

/// Endpoint changes between two states that leave stale UDP conntrack
/// entries behind: `(service address, service port, endpoint)` triples
/// (the service address is a cluster or external IP; for NodePorts it is
/// `None`), so the applier can flush them as kube-proxy does.
pub fn stale_udp_endpoints(old: &ProxyState, new: &ProxyState) -> Vec<StaleUdp> {
    let mut out = Vec::new();
    for (name, op) in &old.ports {
        if name.protocol != Protocol::Udp {
            continue;
        }
        let np = new.ports.get(name);
        for ep in &op.endpoints {
            let still = np.is_some_and(|p| {
                p.endpoints
                    .iter()
                    .any(|e| e.addr == ep.addr && e.port == ep.port)
            });
            if still {
                continue;
            }
            for ip in op.cluster_ips.iter().chain(&op.external_ips) {
                if Family::of(ip) == Family::of(&ep.addr) {
                    out.push(StaleUdp {
                        service_ip: Some(*ip),
                        port: op.port,
                        endpoint: ep.addr,
                    });
                }
            }
            if let Some(np) = op.node_port {
                out.push(StaleUdp {
                    service_ip: None,
                    port: np,
                    endpoint: ep.addr,
                });
            }
        }
    }
    out
}

/// Service addresses of UDP ports that gained their first endpoint: an
/// entry made while they had none would otherwise keep rejecting.
pub fn revived_udp_services(old: &ProxyState, new: &ProxyState) -> Vec<(IpAddr, u16)> {
    let mut out = Vec::new();
    for (name, np) in &new.ports {
        if name.protocol != Protocol::Udp || np.endpoints.is_empty() {
            continue;
        }
        let had = old.ports.get(name).is_some_and(|p| !p.endpoints.is_empty());
        if !had {
            for ip in np.cluster_ips.iter().chain(&np.external_ips) {
                out.push((*ip, np.port));
            }
        }
    }
    out
}

/// A UDP flow that may still point at an endpoint that is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleUdp {
    /// The service address the client used (`None`: any local address,
    /// for a NodePort).
    pub service_ip: Option<IpAddr>,
    /// The service port (or NodePort) the client used.
    pub port: u16,
    /// The endpoint that went away.
    pub endpoint: IpAddr,
}
