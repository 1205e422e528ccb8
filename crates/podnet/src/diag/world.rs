//! One snapshot of the API objects the checks read, and the lab (if any)
//! whose node namespaces answer for the kernel.

use std::collections::BTreeMap;

use anyhow::Context;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};

/// The cluster domain the checks assume (kubelet's `--cluster-domain`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Everything the checks read from the API, listed once.
pub struct World {
    /// The API client (for exec into pods).
    pub client: kube::Client,
    /// Every Node.
    pub nodes: Vec<Node>,
    /// Every Pod.
    pub pods: Vec<Pod>,
    /// Every Service.
    pub services: Vec<Service>,
    /// Every EndpointSlice.
    pub slices: Vec<EndpointSlice>,
    /// Every NetworkPolicy.
    pub policies: Vec<NetworkPolicy>,
    /// Every Namespace.
    pub namespaces: Vec<Namespace>,
    /// `kube-system/podnet-config` (the agent's and DNS server's settings).
    pub config: BTreeMap<String, String>,
    /// `kube-system/podnet`, the agents' DaemonSet.
    pub daemonset: Option<DaemonSet>,
}

/// The API client from `--kubeconfig`, else `$KUBECONFIG` or
/// `~/.kube/config` (as kubectl, and so as a kubectl plugin).
pub async fn client(path: &Option<std::path::PathBuf>) -> anyhow::Result<kube::Client> {
    Ok(match path {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading {}", p.display()))?;
            kube::Client::try_from(
                kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?,
            )?
        }
        None => kube::Client::try_default().await?,
    })
}

/// The lab to read node facts from: `--name`, else the kubeconfig's
/// current context `podnet-<lab>`, else the only lab on this machine.
pub fn lab_name(
    name: &Option<String>,
    kubeconfig: &Option<std::path::PathBuf>,
) -> anyhow::Result<String> {
    if let Some(n) = name {
        return Ok(n.clone());
    }
    let kc = match kubeconfig {
        Some(p) => kube::config::Kubeconfig::read_from(p).ok(),
        None => kube::config::Kubeconfig::read().ok(),
    };
    if let Some(lab) = kc
        .and_then(|k| k.current_context)
        .and_then(|c| c.strip_prefix("podnet-").map(str::to_string))
        && crate::lab::LabRecord::load(&lab).is_some()
    {
        return Ok(lab);
    }
    let labs: Vec<String> = std::fs::read_dir(crate::lab::STATE_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| crate::lab::LabRecord::load(n).is_some())
        .collect();
    match labs.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!(
            "no lab on this machine to read node facts from (podnet up makes one); \
             on a real cluster the node facts come from the agents, which is not built yet"
        ),
        many => anyhow::bail!("several labs ({}): name one with --name", many.join(", ")),
    }
}

impl World {
    /// Lists everything at once.
    pub async fn fetch(client: kube::Client) -> anyhow::Result<World> {
        let lp = ListParams::default();
        let (n_api, p_api, s_api, e_api, np_api, ns_api, cm_api, ds_api) = (
            Api::<Node>::all(client.clone()),
            Api::<Pod>::all(client.clone()),
            Api::<Service>::all(client.clone()),
            Api::<EndpointSlice>::all(client.clone()),
            Api::<NetworkPolicy>::all(client.clone()),
            Api::<Namespace>::all(client.clone()),
            Api::<ConfigMap>::namespaced(client.clone(), "kube-system"),
            Api::<DaemonSet>::namespaced(client.clone(), "kube-system"),
        );
        let (nodes, pods, services, slices, policies, namespaces, config, daemonset) = tokio::join!(
            n_api.list(&lp),
            p_api.list(&lp),
            s_api.list(&lp),
            e_api.list(&lp),
            np_api.list(&lp),
            ns_api.list(&lp),
            cm_api.get_opt("podnet-config"),
            ds_api.get_opt("podnet"),
        );
        Ok(World {
            nodes: nodes.context("listing nodes")?.items,
            pods: pods.context("listing pods")?.items,
            services: services.context("listing services")?.items,
            slices: slices.context("listing endpointslices")?.items,
            policies: policies.context("listing networkpolicies")?.items,
            namespaces: namespaces.context("listing namespaces")?.items,
            config: config
                .context("reading kube-system/podnet-config")?
                .and_then(|c| c.data)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            daemonset: daemonset.context("reading kube-system/podnet")?,
            client,
        })
    }

    /// A setting of `podnet-config`, or its default.
    pub fn setting<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.config
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .unwrap_or(default)
    }

    /// `vxlan` or `host-gw`.
    pub fn encap(&self) -> &str {
        self.setting("PODNET_ENCAP", "vxlan")
    }

    /// `nftables`, `iptables` or `none`.
    pub fn proxy_mode(&self) -> &str {
        self.setting("PODNET_PROXY_MODE", "nftables")
    }

    /// The cluster's pod CIDR.
    pub fn cluster_cidr(&self) -> ipnet::IpNet {
        self.setting("PODNET_CLUSTER_CIDR", "10.244.0.0/16")
            .parse()
            .unwrap_or_else(|_| "10.244.0.0/16".parse().expect("a CIDR"))
    }

    /// A pod by namespace and name.
    pub fn pod(&self, ns: &str, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| {
            p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(name)
        })
    }

    /// A service by namespace and name.
    pub fn service(&self, ns: &str, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(ns) && s.metadata.name.as_deref() == Some(name)
        })
    }

    /// The EndpointSlices of a service.
    pub fn slices_of(&self, ns: &str, name: &str) -> Vec<&EndpointSlice> {
        self.slices
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(ns)
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(podnet_core::proxy::SERVICE_NAME_LABEL))
                        .map(String::as_str)
                        == Some(name)
            })
            .collect()
    }

    /// A node's InternalIP.
    pub fn node_ip(&self, node: &str) -> Option<String> {
        self.nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(node))
            .and_then(|n| n.status.as_ref()?.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone())
    }

    /// A node's pod CIDR.
    pub fn node_cidr(&self, node: &str) -> Option<String> {
        self.nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(node))
            .and_then(|n| n.spec.as_ref()?.pod_cidr.clone())
    }

    /// The node names, sorted.
    pub fn node_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        v.sort();
        v
    }

    /// Resolves a doctor or trace target: `pod/NAME`, `svc/NAME`,
    /// `NS/NAME`, a DNS name (`svc.ns[.svc[.cluster.local]]`), a bare name
    /// (a Service if one exists, else a Pod) or a pod or service IP; with
    /// an optional `:PORT` (number or port name) already split off.
    pub fn resolve(&self, target: &str, default_ns: &str) -> Target {
        let (kind, rest) = match target.split_once('/') {
            Some(("pod" | "pods" | "po", r)) => (Some("pod"), r),
            Some(("svc" | "service" | "services", r)) => (Some("svc"), r),
            _ => (None, target),
        };
        if let Ok(ip) = rest.parse::<std::net::Ipv4Addr>() {
            if let Some(p) = self.pods.iter().find(|p| {
                p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(rest)
                    && !p
                        .spec
                        .as_ref()
                        .and_then(|s| s.host_network)
                        .unwrap_or(false)
            }) {
                return Target::Pod(Box::new(p.clone()));
            }
            if let Some(s) = self
                .services
                .iter()
                .find(|s| s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some(rest))
            {
                return Target::Service(Box::new(s.clone()));
            }
            return Target::Ip(ip);
        }
        let (ns, name, dns) = match rest.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string(), false),
            None => {
                let trimmed = rest.trim_end_matches('.');
                let trimmed = trimmed
                    .strip_suffix(&format!(".{CLUSTER_DOMAIN}"))
                    .unwrap_or(trimmed);
                let trimmed = trimmed.strip_suffix(".svc").unwrap_or(trimmed);
                match trimmed.split_once('.') {
                    Some((svc, ns)) if !ns.contains('.') => (ns.to_string(), svc.to_string(), true),
                    _ => (
                        default_ns.to_string(),
                        trimmed.to_string(),
                        rest.contains('.'),
                    ),
                }
            }
        };
        let svc = self.service(&ns, &name);
        let pod = self.pod(&ns, &name);
        match (kind, svc, pod) {
            (Some("pod"), _, Some(p)) => Target::Pod(Box::new(p.clone())),
            (Some("svc") | None, Some(s), _) => Target::Service(Box::new(s.clone())),
            (None, None, Some(p)) if !dns => Target::Pod(Box::new(p.clone())),
            _ => Target::Missing {
                namespace: ns,
                name,
                kind: kind.unwrap_or(if dns { "svc" } else { "" }).to_string(),
            },
        }
    }
}

/// What a target names.
#[derive(Clone, Debug)]
pub enum Target {
    /// A pod.
    Pod(Box<Pod>),
    /// A service.
    Service(Box<Service>),
    /// An address that is neither (outside the cluster, say).
    Ip(std::net::Ipv4Addr),
    /// Nothing of that name exists.
    Missing {
        /// The namespace looked in.
        namespace: String,
        /// The name looked for.
        name: String,
        /// `pod`, `svc` or empty when either would do.
        kind: String,
    },
}

/// `namespace/name` of an object's metadata.
pub fn key(m: &kube::api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or(""),
        m.name.as_deref().unwrap_or("")
    )
}

/// A pod's IP, node and whether it runs on the host's network.
pub fn pod_place(p: &Pod) -> (Option<String>, Option<String>, bool) {
    (
        p.status.as_ref().and_then(|s| s.pod_ip.clone()),
        p.spec.as_ref().and_then(|s| s.node_name.clone()),
        p.spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false),
    )
}

/// Whether a pod is Running and Ready.
pub fn pod_ready(p: &Pod) -> bool {
    let st = p.status.as_ref();
    st.and_then(|s| s.phase.as_deref()) == Some("Running")
        && st
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
