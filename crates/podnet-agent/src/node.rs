//! This node as the agent needs it: its pod CIDR (assigned by the control
//! plane, as `kube-controller-manager --allocate-node-cidrs` does; the
//! agent never picks one) and its InternalIP, both read from its Node.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;

/// The facts of this node the dataplane is built from.
#[derive(Clone, Debug)]
pub struct NodeFacts {
    /// `spec.podCIDRs` (its IPv4 entry).
    pub pod_cidr: Ipv4Net,
    /// `status.addresses`' InternalIP.
    pub ip: Ipv4Addr,
}

/// What is missing from a Node before the agent can program it.
fn missing(node: &Node) -> Result<NodeFacts, String> {
    let spec = node.spec.as_ref();
    let cidr = spec
        .and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(spec.and_then(|s| s.pod_cidr.clone()))
        .find_map(|c| c.parse::<Ipv4Net>().ok());
    let ip = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| {
            a.iter()
                .find(|a| a.type_ == "InternalIP")
                .and_then(|a| a.address.parse::<Ipv4Addr>().ok())
        });
    match (cidr, ip) {
        (Some(pod_cidr), Some(ip)) => Ok(NodeFacts { pod_cidr, ip }),
        (None, _) => Err(
            "the node has no pod CIDR (spec.podCIDRs): the control plane assigns one when \
             kube-controller-manager runs with --allocate-node-cidrs and --cluster-cidr \
             (kubeadm init --pod-network-cidr=10.244.0.0/16; k3s --cluster-cidr); \
             waiting for it"
                .into(),
        ),
        (_, None) => Err("the node has no InternalIP address in status.addresses; waiting".into()),
    }
}

/// Waits until the node exists with a pod CIDR and an InternalIP. While
/// it waits the agent says once what is missing and how to fix it, and its
/// readiness probe says the same; it does not exit.
pub async fn wait_until_ready(client: &kube::Client, name: &str) -> anyhow::Result<NodeFacts> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut said = String::new();
    loop {
        let why = match nodes.get_opt(name).await {
            Ok(Some(n)) => match missing(&n) {
                Ok(facts) => return Ok(facts),
                Err(why) => why,
            },
            Ok(None) => format!("node {name} does not exist (yet); waiting"),
            Err(e) => format!("reading node {name}: {e}; trying again"),
        };
        if why != said {
            tracing::warn!(node = %name, "{why}");
            health::set_phase(&why);
            said = why;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

use crate::health;

/// The name of the link holding `ip` on this node (the uplink routes and
/// VXLAN go through).
pub fn uplink_of(ip: Ipv4Addr) -> anyhow::Result<String> {
    let mut nl = podnet_kernel::netlink::Netlink::open()?;
    let index = nl
        .addresses()?
        .into_iter()
        .find(|a| a.ip == std::net::IpAddr::V4(ip))
        .map(|a| a.index)
        .ok_or_else(|| anyhow::anyhow!("no link holds {ip}"))?;
    nl.links()?
        .into_iter()
        .find(|l| l.index == index)
        .map(|l| l.name)
        .ok_or_else(|| anyhow::anyhow!("link {index} vanished"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_without_a_pod_cidr_is_explained_with_the_fix() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.3"}]},
        }))
        .unwrap();
        let why = missing(&n).unwrap_err();
        assert!(
            why.contains("--pod-network-cidr") && why.contains("--cluster-cidr"),
            "{why}"
        );
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"}, "spec": {"podCIDRs": ["10.244.3.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.3"}]},
        }))
        .unwrap();
        let f = missing(&n).unwrap();
        assert_eq!(f.pod_cidr.to_string(), "10.244.3.0/24");
        assert_eq!(f.ip.to_string(), "172.18.0.3");
    }
}
