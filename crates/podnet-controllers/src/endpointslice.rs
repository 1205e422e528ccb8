//! EndpointSlice controller (discovery.k8s.io/v1) and the legacy Endpoints
//! object kept in step, for every Service with a selector.
//!
//! A slice lists the pods matching the selector that have an IP (finished
//! pods left out, terminating ones kept and marked), with conditions
//! ready/serving/terminating, nodeName, targetRef and hostname (when the
//! pod's subdomain is the service); named targetPorts are resolved per pod,
//! so pods with different port numbers land in different slices, as
//! upstream does. `publishNotReadyAddresses` makes every endpoint ready.
//! A service without endpoints keeps one empty placeholder slice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, PostParams, Preconditions};
use tokio::sync::Notify;

use crate::util::{
    is_ready, is_terminal, is_terminating, labels_of, map_selector_matches, owner_ref,
};
use crate::{Caches, Error, Next, RETRY};

/// Label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming who manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`] (upstream's, so tools
/// that look for it find it).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Label on Endpoints that the mirroring controller must skip.
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Label marking objects of headless services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Endpoints per slice, upstream's default.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// The content of one desired slice (everything but its name).
#[derive(Debug, Clone, PartialEq)]
pub struct SliceContent {
    /// IPv4 or IPv6.
    pub address_type: String,
    /// Resolved ports (None for the empty placeholder).
    pub ports: Option<Vec<EndpointPort>>,
    /// Endpoints, sorted by address.
    pub endpoints: Vec<Endpoint>,
}

/// Whether the controller manages endpoints for this Service.
pub fn has_selector(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.selector.as_ref().is_some_and(|m| !m.is_empty())
            && s.type_.as_deref() != Some("ExternalName")
    })
}

/// The container port a service port targets on this pod (kube's
/// `FindPort`): a number as is, a name looked up among the pod's container
/// ports of the same protocol; None when the pod has no such named port.
pub fn resolve_port(pod: &Pod, sp: &ServicePort) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let proto = sp.protocol.as_deref().unwrap_or("TCP");
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name)
                        && p.protocol.as_deref().unwrap_or("TCP") == proto
                })
                .map(|p| p.container_port)
        }
    }
}

fn pod_ips(pod: &Pod, v6: bool) -> Vec<String> {
    let Some(st) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<String> = st.pod_ips.iter().flatten().map(|p| p.ip.clone()).collect();
    if ips.is_empty()
        && let Some(ip) = &st.pod_ip
    {
        ips.push(ip.clone());
    }
    ips.retain(|ip| {
        ip.parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_ipv6() == v6)
    });
    ips
}

fn families(svc: &Service) -> Vec<&'static str> {
    let fams = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.clone())
        .unwrap_or_default();
    let mut out: Vec<&'static str> = fams
        .iter()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some("IPv4"),
            "IPv6" => Some("IPv6"),
            _ => None,
        })
        .collect();
    if out.is_empty() {
        out.push("IPv4");
    }
    out
}

/// The pods of `ns` the Service selects that belong in its endpoints.
fn selected<'a>(svc: &Service, pods: &'a [&'a Arc<Pod>]) -> Vec<&'a Arc<Pod>> {
    let sel = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let mut v: Vec<&Arc<Pod>> = pods
        .iter()
        .copied()
        .filter(|p| !is_terminal(p) && map_selector_matches(&sel, labels_of(p.as_ref())))
        .collect();
    v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    v
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

fn hostname_for(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    match (&spec.hostname, &spec.subdomain) {
        (Some(h), Some(sd)) if !h.is_empty() && Some(sd) == svc.metadata.name.as_ref() => {
            Some(h.clone())
        }
        _ => None,
    }
}

fn resolved_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .iter()
        .filter_map(|sp| {
            resolve_port(pod, sp).map(|port| EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

/// Pure plan: the slices a Service should have given the pods of its
/// namespace (grouped by address family and resolved ports, at most
/// [`MAX_ENDPOINTS_PER_SLICE`] each; one empty placeholder when none).
pub fn desired_slices(svc: &Service, pods: &[&Arc<Pod>]) -> Vec<SliceContent> {
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let fams = families(svc);
    let mut groups: BTreeMap<(String, String), (Vec<EndpointPort>, Vec<Endpoint>)> =
        BTreeMap::new();
    for pod in selected(svc, pods) {
        let ports = resolved_ports(svc, pod);
        let ports_key = serde_json::to_string(&ports).unwrap_or_default();
        let serving = publish || is_ready(pod);
        let terminating = is_terminating(pod);
        let ready = publish || (serving && !terminating);
        for fam in &fams {
            for ip in pod_ips(pod, *fam == "IPv6") {
                let ep = Endpoint {
                    addresses: vec![ip],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(serving),
                        terminating: Some(terminating),
                    }),
                    hostname: hostname_for(svc, pod),
                    node_name: pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .filter(|n| !n.is_empty()),
                    target_ref: Some(target_ref(pod)),
                    ..Default::default()
                };
                groups
                    .entry((fam.to_string(), ports_key.clone()))
                    .or_insert_with(|| (ports.clone(), Vec::new()))
                    .1
                    .push(ep);
            }
        }
    }
    let mut out = Vec::new();
    for ((fam, _), (ports, mut eps)) in groups {
        eps.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        for chunk in eps.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push(SliceContent {
                address_type: fam.clone(),
                ports: Some(ports.clone()),
                endpoints: chunk.to_vec(),
            });
        }
    }
    if out.is_empty() {
        out.push(SliceContent {
            address_type: fams[0].to_string(),
            ports: None,
            endpoints: Vec::new(),
        });
    }
    out
}

/// One port set's ports, ready and not-ready addresses.
type SubsetGroup = (Vec<CorePort>, Vec<EndpointAddress>, Vec<EndpointAddress>);

/// Pure plan: the legacy Endpoints subsets (ready pods in `addresses`, the
/// others in `notReadyAddresses`; terminating pods left out unless
/// `publishNotReadyAddresses`), for the service's primary family.
pub fn desired_subsets(svc: &Service, pods: &[&Arc<Pod>]) -> Vec<EndpointSubset> {
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let v6 = families(svc)[0] == "IPv6";
    let mut groups: BTreeMap<String, SubsetGroup> = BTreeMap::new();
    for pod in selected(svc, pods) {
        if is_terminating(pod) && !publish {
            continue;
        }
        let Some(ip) = pod_ips(pod, v6).into_iter().next() else {
            continue;
        };
        let ports: Vec<CorePort> = resolved_ports(svc, pod)
            .into_iter()
            .map(|p| CorePort {
                name: p.name.filter(|n| !n.is_empty()),
                port: p.port.unwrap_or(0),
                protocol: p.protocol,
                app_protocol: p.app_protocol,
            })
            .collect();
        if ports.is_empty() {
            continue;
        }
        let addr = EndpointAddress {
            ip,
            hostname: hostname_for(svc, pod),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            target_ref: Some(target_ref(pod)),
        };
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let g = groups
            .entry(key)
            .or_insert_with(|| (ports, Vec::new(), Vec::new()));
        if publish || is_ready(pod) {
            g.1.push(addr)
        } else {
            g.2.push(addr)
        }
    }
    groups
        .into_values()
        .map(|(ports, mut ready, mut not_ready)| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: Some(ready).filter(|v| !v.is_empty()),
                not_ready_addresses: Some(not_ready).filter(|v| !v.is_empty()),
                ports: Some(ports),
            }
        })
        .collect()
}

fn object_labels(svc: &Service, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = labels_of(svc)
        .iter()
        .filter(|(k, _)| k.as_str() != SERVICE_NAME_LABEL && k.as_str() != MANAGED_BY_LABEL)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in extra {
        l.insert(k.to_string(), v.to_string());
    }
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        l.insert(HEADLESS_LABEL.into(), String::new());
    }
    l
}

/// Runs the EndpointSlice controller with caches of its own until cancelled.
pub async fn run(client: kube::Client, resync: Duration) -> Result<(), Error> {
    run_with(Caches::new(client), resync).await
}

/// Runs the EndpointSlice (and Endpoints) controller over shared caches
/// until cancelled.
pub async fn run_with(caches: Arc<Caches>, resync: Duration) -> Result<(), Error> {
    let wake = Arc::new(Notify::new());
    caches.services().wake_on_change(&wake);
    caches.pods().wake_on_change(&wake);
    caches.endpoint_slices().wake_on_change(&wake);
    caches.endpoints().wake_on_change(&wake);
    caches.services().ready().await;
    caches.pods().ready().await;
    caches.endpoint_slices().ready().await;
    caches.endpoints().ready().await;
    let mut c = SliceController {
        caches,
        expect: HashMap::new(),
    };
    crate::drive!("endpointslice", wake, resync, c.pass().await)
}

/// Slices created (by name) and deleted that the cache does not show yet.
#[derive(Debug)]
struct SliceExpect {
    created: HashSet<String>,
    deleted: HashSet<String>,
    at: Instant,
}

struct SliceController {
    caches: Arc<Caches>,
    expect: HashMap<String, SliceExpect>,
}

impl SliceController {
    async fn pass(&mut self) -> Next {
        let services = self.caches.services().all();
        let pods = self.caches.pods().all();
        let slices = self.caches.endpoint_slices().all();
        let endpoints = self.caches.endpoints().all();
        let mut pods_by_ns: HashMap<&str, Vec<&Arc<Pod>>> = HashMap::new();
        for p in &pods {
            pods_by_ns
                .entry(p.metadata.namespace.as_deref().unwrap_or(""))
                .or_default()
                .push(p);
        }
        let mut slices_by_svc: HashMap<String, Vec<&Arc<EndpointSlice>>> = HashMap::new();
        for s in &slices {
            let l = labels_of(s.as_ref());
            if l.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY) {
                continue;
            }
            if let Some(svc) = l.get(SERVICE_NAME_LABEL) {
                slices_by_svc
                    .entry(format!(
                        "{}/{svc}",
                        s.metadata.namespace.as_deref().unwrap_or("")
                    ))
                    .or_default()
                    .push(s);
            }
        }
        let eps_by_key: HashMap<String, &Arc<Endpoints>> = endpoints
            .iter()
            .map(|e| (crate::util::key_of(e.as_ref()), e))
            .collect();
        let mut next = Next::Idle;
        let mut wanted: HashSet<String> = HashSet::new();
        let no_pods = Vec::new();
        for svc in &services {
            if !has_selector(svc) && svc.metadata.deletion_timestamp.is_none() {
                // Services without a selector keep the slices someone else
                // writes (the API server's `kubernetes`, a user's own), as
                // the upstream controller leaves them alone.
                wanted.insert(crate::util::key_of(svc.as_ref()));
                continue;
            }
            if svc.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let key = crate::util::key_of(svc.as_ref());
            wanted.insert(key.clone());
            let ns_pods = pods_by_ns
                .get(svc.metadata.namespace.as_deref().unwrap_or(""))
                .unwrap_or(&no_pods);
            let existing = slices_by_svc.get(&key).cloned().unwrap_or_default();
            next = next.min(self.sync_slices(svc, &key, ns_pods, &existing).await);
            next = next.min(
                self.sync_endpoints(svc, ns_pods, eps_by_key.get(&key).copied())
                    .await,
            );
        }
        // Slices of services that are gone.
        let client = self.caches.client().clone();
        for (key, ss) in &slices_by_svc {
            if wanted.contains(key) {
                continue;
            }
            for s in ss {
                if delete_slice(&client, s).await.is_err() {
                    next = next.min(Next::After(RETRY));
                }
            }
        }
        // Endpoints we managed for services that are gone.
        let live: HashSet<String> = services
            .iter()
            .map(|s| crate::util::key_of(s.as_ref()))
            .collect();
        for e in &endpoints {
            let key = crate::util::key_of(e.as_ref());
            if labels_of(e.as_ref())
                .get(SKIP_MIRROR_LABEL)
                .map(String::as_str)
                == Some("true")
                && !live.contains(&key)
                && e.metadata.name.as_deref() != Some("kubernetes")
            {
                let api: kube::Api<Endpoints> = kube::Api::namespaced(
                    client.clone(),
                    e.metadata.namespace.as_deref().unwrap_or(""),
                );
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: e.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                if let Err(err) = api
                    .delete(e.metadata.name.as_deref().unwrap_or(""), &dp)
                    .await
                {
                    crate::log_write_error("endpointslice", "delete Endpoints", &err);
                }
            }
        }
        self.expect.retain(|k, _| wanted.contains(k));
        next
    }

    async fn sync_slices(
        &mut self,
        svc: &Service,
        key: &str,
        pods: &[&Arc<Pod>],
        existing: &[&Arc<EndpointSlice>],
    ) -> Next {
        if let Some(e) = self.expect.get_mut(key) {
            let names: HashSet<&str> = existing
                .iter()
                .filter_map(|s| s.metadata.name.as_deref())
                .collect();
            e.created.retain(|n| !names.contains(n.as_str()));
            e.deleted.retain(|n| names.contains(n.as_str()));
            if (e.created.is_empty() && e.deleted.is_empty())
                || e.at.elapsed() > Duration::from_secs(10)
            {
                self.expect.remove(key);
            } else {
                return Next::After(RETRY);
            }
        }
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let svc_name = svc.metadata.name.clone().unwrap_or_default();
        let api: kube::Api<EndpointSlice> =
            kube::Api::namespaced(self.caches.client().clone(), &ns);
        let labels = object_labels(
            svc,
            &[
                (SERVICE_NAME_LABEL, &svc_name),
                (MANAGED_BY_LABEL, MANAGED_BY),
            ],
        );
        let owner = owner_ref(svc);
        let desired = desired_slices(svc, pods);
        // Pair desired slices with existing ones: same family and ports
        // first, then any of the same family (updated in place, so a
        // consumer never sees a service without its slice).
        let mut free: Vec<&Arc<EndpointSlice>> = existing.to_vec();
        free.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut pairs: Vec<(SliceContent, Option<&Arc<EndpointSlice>>)> = Vec::new();
        let mut unpaired = Vec::new();
        for d in desired {
            match free
                .iter()
                .position(|s| s.address_type == d.address_type && s.ports == d.ports)
            {
                Some(i) => pairs.push((d, Some(free.remove(i)))),
                None => unpaired.push(d),
            }
        }
        for d in unpaired {
            match free.iter().position(|s| s.address_type == d.address_type) {
                Some(i) => pairs.push((d, Some(free.remove(i)))),
                None => pairs.push((d, None)),
            }
        }
        let mut next = Next::Idle;
        let mut created = HashSet::new();
        let mut deleted = HashSet::new();
        for (d, cur) in pairs {
            match cur {
                Some(s) => {
                    let same = s.endpoints == d.endpoints
                        && s.ports == d.ports
                        && s.metadata.labels.as_ref() == Some(&labels)
                        && s.metadata.owner_references.as_ref() == Some(&vec![owner.clone()]);
                    if same {
                        continue;
                    }
                    let mut new = (**s).clone();
                    new.endpoints = d.endpoints;
                    new.ports = d.ports;
                    new.metadata.labels = Some(labels.clone());
                    new.metadata.owner_references = Some(vec![owner.clone()]);
                    if let Err(e) = api
                        .replace(
                            s.metadata.name.as_deref().unwrap_or(""),
                            &PostParams::default(),
                            &new,
                        )
                        .await
                    {
                        crate::log_write_error("endpointslice", "update slice", &e);
                        next = Next::After(RETRY);
                    }
                }
                None => {
                    let new = EndpointSlice {
                        metadata: ObjectMeta {
                            generate_name: Some(format!("{svc_name}-")),
                            namespace: Some(ns.clone()),
                            labels: Some(labels.clone()),
                            owner_references: Some(vec![owner.clone()]),
                            ..Default::default()
                        },
                        address_type: d.address_type,
                        endpoints: d.endpoints,
                        ports: d.ports,
                    };
                    match api.create(&PostParams::default(), &new).await {
                        Ok(s) => {
                            created.extend(s.metadata.name);
                        }
                        Err(e) => {
                            crate::log_write_error("endpointslice", "create slice", &e);
                            next = Next::After(RETRY);
                        }
                    }
                }
            }
        }
        for s in free {
            match delete_slice(self.caches.client(), s).await {
                Ok(()) => {
                    deleted.extend(s.metadata.name.clone());
                }
                Err(()) => next = Next::After(RETRY),
            }
        }
        if !created.is_empty() || !deleted.is_empty() {
            self.expect.insert(
                key.to_string(),
                SliceExpect {
                    created,
                    deleted,
                    at: Instant::now(),
                },
            );
        }
        next
    }

    async fn sync_endpoints(
        &self,
        svc: &Service,
        pods: &[&Arc<Pod>],
        cur: Option<&Arc<Endpoints>>,
    ) -> Next {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let subsets = desired_subsets(svc, pods);
        let labels = object_labels(svc, &[(SKIP_MIRROR_LABEL, "true")]);
        let api: kube::Api<Endpoints> = kube::Api::namespaced(self.caches.client().clone(), &ns);
        let subsets = if subsets.is_empty() {
            None
        } else {
            Some(subsets)
        };
        let result = match cur {
            Some(e) => {
                let cur_subsets = e.subsets.clone().filter(|s| !s.is_empty());
                if cur_subsets == subsets && e.metadata.labels.as_ref() == Some(&labels) {
                    return Next::Idle;
                }
                let mut new = (**e).clone();
                new.subsets = subsets;
                new.metadata.labels = Some(labels);
                api.replace(&name, &PostParams::default(), &new)
                    .await
                    .map(|_| ())
            }
            None => {
                let new = Endpoints {
                    metadata: ObjectMeta {
                        name: Some(name),
                        namespace: Some(ns),
                        labels: Some(labels),
                        ..Default::default()
                    },
                    subsets,
                };
                api.create(&PostParams::default(), &new).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => Next::Idle,
            Err(e) => {
                crate::log_write_error("endpointslice", "endpoints", &e);
                Next::After(RETRY)
            }
        }
    }
}

async fn delete_slice(client: &kube::Client, s: &EndpointSlice) -> Result<(), ()> {
    let api: kube::Api<EndpointSlice> = kube::Api::namespaced(
        client.clone(),
        s.metadata.namespace.as_deref().unwrap_or(""),
    );
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: s.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api
        .delete(s.metadata.name.as_deref().unwrap_or(""), &dp)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if crate::benign(&e) => Ok(()),
        Err(e) => {
            crate::log_write_error("endpointslice", "delete slice", &e);
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodIP, PodSpec, PodStatus, ServiceSpec,
    };

    fn svc(publish: bool) -> Service {
        let mut s = Service::default();
        s.metadata.name = Some("web".into());
        s.metadata.namespace = Some("default".into());
        s.spec = Some(ServiceSpec {
            selector: Some([("app".to_string(), "web".to_string())].into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            publish_not_ready_addresses: Some(publish),
            ..Default::default()
        });
        s
    }

    fn pod(name: &str, ip: Option<&str>, ready: bool, port: i32) -> Arc<Pod> {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("default".into());
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        p.spec = Some(PodSpec {
            node_name: Some("n1".into()),
            containers: vec![Container {
                name: "c".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: port,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: ip.map(Into::into),
            pod_ips: ip.map(|i| vec![PodIP { ip: i.into() }]),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        Arc::new(p)
    }

    #[test]
    fn named_ports_resolve_per_pod_and_conditions_follow_readiness() {
        let a = pod("a", Some("10.244.0.2"), true, 8080);
        let b = pod("b", Some("10.244.1.2"), false, 8080);
        let c = pod("c", Some("10.244.1.3"), true, 9090);
        let none = pod("d", None, true, 8080);
        let mut t = (*pod("e", Some("10.244.2.2"), true, 8080)).clone();
        t.metadata.deletion_timestamp = Some(crate::util::now());
        let t = Arc::new(t);
        let pods = [&a, &b, &c, &none, &t];
        let slices = desired_slices(&svc(false), &pods);
        assert_eq!(slices.len(), 2);
        let s8080 = slices
            .iter()
            .find(|s| s.ports.as_ref().unwrap()[0].port == Some(8080))
            .unwrap();
        let addrs: Vec<(&str, bool, bool, bool)> = s8080
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.as_ref().unwrap();
                (
                    e.addresses[0].as_str(),
                    c.ready.unwrap(),
                    c.serving.unwrap(),
                    c.terminating.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            addrs,
            vec![
                ("10.244.0.2", true, true, false),
                ("10.244.1.2", false, false, false),
                ("10.244.2.2", false, true, true)
            ]
        );
        assert_eq!(
            s8080.endpoints[0]
                .target_ref
                .as_ref()
                .unwrap()
                .name
                .as_deref(),
            Some("a")
        );
        assert_eq!(s8080.endpoints[0].node_name.as_deref(), Some("n1"));
        let s9090 = slices
            .iter()
            .find(|s| s.ports.as_ref().unwrap()[0].port == Some(9090))
            .unwrap();
        assert_eq!(s9090.endpoints.len(), 1);

        let subsets = desired_subsets(&svc(false), &pods);
        assert_eq!(subsets.len(), 2);
        let s = subsets
            .iter()
            .find(|s| s.ports.as_ref().unwrap()[0].port == 8080)
            .unwrap();
        assert_eq!(
            s.addresses
                .as_ref()
                .unwrap()
                .iter()
                .map(|a| a.ip.as_str())
                .collect::<Vec<_>>(),
            ["10.244.0.2"]
        );
        assert_eq!(
            s.not_ready_addresses
                .as_ref()
                .unwrap()
                .iter()
                .map(|a| a.ip.as_str())
                .collect::<Vec<_>>(),
            ["10.244.1.2"]
        );
    }

    #[test]
    fn publish_not_ready_and_placeholder() {
        let b = pod("b", Some("10.244.1.2"), false, 8080);
        let slices = desired_slices(&svc(true), &[&b]);
        assert_eq!(
            slices[0].endpoints[0].conditions.as_ref().unwrap().ready,
            Some(true)
        );
        let empty = desired_slices(&svc(false), &[]);
        assert_eq!(
            empty,
            vec![SliceContent {
                address_type: "IPv4".into(),
                ports: None,
                endpoints: vec![]
            }]
        );
        assert!(desired_subsets(&svc(false), &[]).is_empty());
    }

    #[test]
    fn hostname_only_for_the_matching_subdomain() {
        let mut p = (*pod("a", Some("10.244.0.2"), true, 8080)).clone();
        p.spec.as_mut().unwrap().hostname = Some("a-0".into());
        p.spec.as_mut().unwrap().subdomain = Some("web".into());
        let p = Arc::new(p);
        assert_eq!(
            desired_slices(&svc(false), &[&p])[0].endpoints[0]
                .hostname
                .as_deref(),
            Some("a-0")
        );
        let mut q = (*p).clone();
        q.spec.as_mut().unwrap().subdomain = Some("other".into());
        assert_eq!(
            desired_slices(&svc(false), &[&Arc::new(q)])[0].endpoints[0].hostname,
            None
        );
    }

    #[test]
    fn big_services_are_cut_into_slices_of_100() {
        let pods: Vec<Arc<Pod>> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    Some(&format!("10.244.{}.{}", i / 200, i % 200 + 1)),
                    true,
                    8080,
                )
            })
            .collect();
        let refs: Vec<&Arc<Pod>> = pods.iter().collect();
        let slices = desired_slices(&svc(false), &refs);
        assert_eq!(
            slices.iter().map(|s| s.endpoints.len()).collect::<Vec<_>>(),
            [100, 100, 50]
        );
    }
}
