//! Node IPAM: gives every Node without `spec.podCIDR` the lowest free
//! subnet of each cluster CIDR (kube-controller-manager's range allocator).
//!
//! The used set is derived from the Nodes themselves, so a restart never
//! hands out a subnet twice; subnets written but not yet seen back through
//! the watch are remembered until they are.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::Notify;

use crate::{Caches, ControllersConfig, Error, Next, RETRY};

/// The allocator's fixed inputs: cluster CIDRs and per-node prefix lengths.
#[derive(Debug, Clone)]
pub struct NodeIpam {
    ranges: Vec<(IpNet, u8)>,
}

/// One decision of the allocator: give `node` these CIDRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The Node's name.
    pub node: String,
    /// One CIDR per cluster CIDR, in the configured order (the first is
    /// `spec.podCIDR`).
    pub cidrs: Vec<IpNet>,
}

/// Why a node could not get a CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    /// The Node's name.
    pub node: String,
    /// The cluster CIDR with no free subnet.
    pub range: IpNet,
}

impl NodeIpam {
    /// Checks that every cluster CIDR can be cut into node subnets.
    pub fn new(config: &ControllersConfig) -> Result<NodeIpam, Error> {
        if config.cluster_cidrs.is_empty() {
            return Err(Error::Config("no cluster CIDR".into()));
        }
        let mut ranges = Vec::new();
        let mut families = HashSet::new();
        for c in &config.cluster_cidrs {
            let mask = match c {
                IpNet::V4(_) => config.node_mask_v4,
                IpNet::V6(_) => config.node_mask_v6,
            };
            if mask < c.prefix_len() || mask > c.max_prefix_len() {
                return Err(Error::Config(format!(
                    "node mask /{mask} does not fit cluster CIDR {c}"
                )));
            }
            if !families.insert(matches!(c, IpNet::V4(_))) {
                return Err(Error::Config(format!(
                    "more than one cluster CIDR of the family of {c}"
                )));
            }
            ranges.push((c.trunc(), mask));
        }
        Ok(NodeIpam { ranges })
    }

    /// Pure plan: for each node (sorted by name) that has no podCIDR, the
    /// lowest subnet of each range not used by any node nor in `in_flight`.
    pub fn plan(
        &self,
        nodes: &[Arc<Node>],
        in_flight: &HashSet<IpNet>,
    ) -> (Vec<Assignment>, Vec<Exhausted>) {
        let mut used: HashSet<IpNet> = in_flight.clone();
        for n in nodes {
            for c in node_cidrs(n) {
                used.insert(c.trunc());
            }
        }
        let mut todo: Vec<&Arc<Node>> = nodes.iter().filter(|n| needs_cidr(n)).collect();
        todo.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut out = Vec::new();
        let mut exhausted = Vec::new();
        'node: for n in todo {
            let name = n.metadata.name.clone().unwrap_or_default();
            let mut cidrs = Vec::new();
            for (range, mask) in &self.ranges {
                let free = range
                    .subnets(*mask)
                    .ok()
                    .and_then(|mut it| it.find(|s| !used.iter().any(|u| overlaps(u, s))));
                match free {
                    Some(s) => cidrs.push(s),
                    None => {
                        exhausted.push(Exhausted {
                            node: name,
                            range: *range,
                        });
                        continue 'node;
                    }
                }
            }
            used.extend(cidrs.iter().copied());
            out.push(Assignment { node: name, cidrs });
        }
        (out, exhausted)
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The pod CIDRs a node holds (podCIDRs, or podCIDR alone).
pub fn node_cidrs(n: &Node) -> Vec<IpNet> {
    let Some(spec) = &n.spec else {
        return Vec::new();
    };
    let mut v: Vec<IpNet> = spec
        .pod_cidrs
        .iter()
        .flatten()
        .filter_map(|c| c.parse().ok())
        .collect();
    if let Some(c) = spec.pod_cidr.as_deref().and_then(|c| c.parse().ok())
        && !v.contains(&c)
    {
        v.push(c);
    }
    v
}

fn needs_cidr(n: &Node) -> bool {
    n.metadata.deletion_timestamp.is_none()
        && n.spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .is_none_or(str::is_empty)
}

/// Runs node IPAM with caches of its own until cancelled.
pub async fn run(client: kube::Client, config: &ControllersConfig) -> Result<(), Error> {
    let ipam = NodeIpam::new(config)?;
    run_with(Caches::new(client), ipam, config.resync).await
}

/// Runs node IPAM over shared caches until cancelled.
pub async fn run_with(caches: Arc<Caches>, ipam: NodeIpam, resync: Duration) -> Result<(), Error> {
    let wake = Arc::new(Notify::new());
    caches.nodes().wake_on_change(&wake);
    caches.nodes().ready().await;
    let api: kube::Api<Node> = kube::Api::all(caches.client().clone());
    let mut state = IpamLoop {
        caches,
        ipam,
        api,
        in_flight: HashMap::new(),
    };
    crate::drive!("node-ipam", wake, resync, state.pass().await)
}

struct IpamLoop {
    caches: Arc<Caches>,
    ipam: NodeIpam,
    api: kube::Api<Node>,
    /// Subnets written but not yet seen back, by node name.
    in_flight: HashMap<String, Vec<IpNet>>,
}

impl IpamLoop {
    async fn pass(&mut self) -> Next {
        let nodes = self.caches.nodes().all();
        self.in_flight.retain(|name, _| {
            nodes
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(name) && needs_cidr(n))
        });
        let flying: HashSet<IpNet> = self.in_flight.values().flatten().copied().collect();
        let (plan, exhausted) = self.ipam.plan(&nodes, &flying);
        for e in &exhausted {
            tracing::warn!(node = %e.node, range = %e.range, "no free pod CIDR for node");
        }
        let mut next = if exhausted.is_empty() {
            Next::Idle
        } else {
            Next::After(Duration::from_secs(5))
        };
        for a in plan {
            let rv = nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(&a.node))
                .and_then(|n| n.metadata.resource_version.clone());
            let cidrs: Vec<String> = a.cidrs.iter().map(ToString::to_string).collect();
            // The resourceVersion makes the write fail if the node changed
            // since we looked (someone else may have set its CIDR).
            let patch = json!({"metadata": {"resourceVersion": rv}, "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}});
            match self
                .api
                .patch(&a.node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(node = %a.node, cidrs = ?cidrs, "assigned pod CIDR");
                    self.in_flight.insert(a.node, a.cidrs);
                }
                Err(e) => {
                    crate::log_write_error("node-ipam", &a.node, &e);
                    next = next.min(Next::After(RETRY));
                }
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;

    fn node(name: &str, cidr: Option<&str>) -> Arc<Node> {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        if let Some(c) = cidr {
            n.spec = Some(NodeSpec {
                pod_cidr: Some(c.into()),
                pod_cidrs: Some(vec![c.into()]),
                ..Default::default()
            });
        }
        Arc::new(n)
    }

    #[test]
    fn lowest_free_subnets_never_twice() {
        let ipam = NodeIpam::new(&ControllersConfig::default()).unwrap();
        let nodes = vec![
            node("c", None),
            node("a", Some("10.244.0.0/24")),
            node("b", None),
            node("d", Some("10.244.2.0/24")),
        ];
        let (plan, ex) = ipam.plan(&nodes, &HashSet::new());
        assert!(ex.is_empty());
        assert_eq!(
            plan,
            vec![
                Assignment {
                    node: "b".into(),
                    cidrs: vec!["10.244.1.0/24".parse().unwrap()]
                },
                Assignment {
                    node: "c".into(),
                    cidrs: vec!["10.244.3.0/24".parse().unwrap()]
                },
            ]
        );
        // In-flight subnets are skipped too.
        let flying: HashSet<IpNet> = ["10.244.1.0/24".parse().unwrap()].into();
        let (plan, _) = ipam.plan(&nodes, &flying);
        assert_eq!(
            plan[0].cidrs,
            vec!["10.244.3.0/24".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn dual_stack_and_exhaustion() {
        let cfg = ControllersConfig {
            cluster_cidrs: vec![
                "10.0.0.0/23".parse().unwrap(),
                "fd00:10:244::/63".parse().unwrap(),
            ],
            ..Default::default()
        };
        let ipam = NodeIpam::new(&cfg).unwrap();
        let nodes = vec![node("a", None), node("b", None), node("c", None)];
        let (plan, ex) = ipam.plan(&nodes, &HashSet::new());
        assert_eq!(plan.len(), 2);
        assert_eq!(
            plan[1].cidrs,
            vec![
                "10.0.1.0/24".parse::<IpNet>().unwrap(),
                "fd00:10:244:1::/64".parse().unwrap()
            ]
        );
        assert_eq!(
            ex,
            vec![Exhausted {
                node: "c".into(),
                range: "10.0.0.0/23".parse().unwrap()
            }]
        );
    }

    #[test]
    fn bad_config_is_refused() {
        let cfg = ControllersConfig {
            cluster_cidrs: vec!["10.0.0.0/25".parse().unwrap()],
            ..Default::default()
        };
        assert!(NodeIpam::new(&cfg).is_err());
        let cfg = ControllersConfig {
            cluster_cidrs: vec![
                "10.0.0.0/16".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
            ],
            ..Default::default()
        };
        assert!(NodeIpam::new(&cfg).is_err());
        assert!(
            NodeIpam::new(&ControllersConfig {
                cluster_cidrs: vec![],
                ..Default::default()
            })
            .is_err()
        );
    }
}
