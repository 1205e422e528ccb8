//! From Kubernetes objects to the record index: one pass over Services,
//! their EndpointSlices, Pods and Namespaces, following the DNS-Based
//! Service Discovery specification.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::name::{dashed_ip, join, reverse_name};
use super::{Config, Index, NameMap, PodMode, RData, SCHEMA_VERSION};

/// The label an EndpointSlice carries naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The legacy annotation that publishes not-ready endpoints.
const TOLERATE_UNREADY: &str = "service.alpha.kubernetes.io/tolerate-unready-endpoints";

/// A snapshot of the objects the index is built from (shared pointers, as
/// the reflectors' stores hand them out).
#[derive(Clone, Debug, Default)]
pub struct Objects {
    /// All Services.
    pub services: Vec<Arc<Service>>,
    /// All EndpointSlices.
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// All Pods (hostname/subdomain records, `pods verified`).
    pub pods: Vec<Arc<Pod>>,
    /// All Namespaces (`<ns>.svc.<zone>` exists for each).
    pub namespaces: Vec<Arc<Namespace>>,
}

struct Builder {
    zone: String,
    dot_zone: String,
    names: NameMap<Vec<RData>>,
}

impl Builder {
    /// Adds `data` at `owner`, creating the in-zone ancestors as empty
    /// non-terminals so they answer NODATA rather than NXDOMAIN.
    fn add(&mut self, owner: &str, data: RData) {
        if let Some(v) = self.names.get_mut(owner) {
            v.push(data);
            return;
        }
        self.names.insert(owner.into(), vec![data]);
        self.ensure_ancestors(owner);
    }

    fn ensure(&mut self, owner: &str) {
        if self.names.contains_key(owner) {
            return;
        }
        self.names.insert(owner.into(), Vec::new());
        self.ensure_ancestors(owner);
    }

    /// Inserts the in-zone ancestors of `owner` up to the first one present.
    fn ensure_ancestors(&mut self, owner: &str) {
        let mut name = owner;
        while name.ends_with(&self.dot_zone) {
            let Some((_, parent)) = name.split_once('.') else {
                return;
            };
            if self.names.contains_key(parent) {
                return;
            }
            self.names.insert(parent.into(), Vec::new());
            name = parent;
        }
    }
}

fn ready(ep: &k8s_openapi::api::discovery::v1::Endpoint) -> bool {
    ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return vec![];
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_deref().and_then(|s| s.parse().ok())
    {
        ips.push(ip);
    }
    ips
}

fn addr_data(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v) => RData::A(v),
        IpAddr::V6(v) => RData::Aaaa(v),
    }
}

fn srv_owner(port: &str, proto: Option<&str>, svc_name: &str) -> String {
    let proto = proto.unwrap_or("TCP").to_ascii_lowercase();
    format!("_{}._{}.{}", port.to_ascii_lowercase(), proto, svc_name)
}

/// Sets SRV weights so the records of one name share 100 evenly.
fn spread_srv_weights(v: &mut [RData]) {
    let n = v.iter().filter(|d| matches!(d, RData::Srv { .. })).count();
    if n == 0 {
        return;
    }
    let w = (100 / n).max(1) as u16;
    for d in v.iter_mut() {
        if let RData::Srv { weight, .. } = d {
            *weight = w;
        }
    }
}

impl Builder {
    /// Deduplicates (several slices may carry one address), orders records
    /// and spreads SRV weights; returns the number of records.
    fn finish(&mut self) -> usize {
        let mut record_count = 0;
        for v in self.names.values_mut() {
            v.sort();
            v.dedup();
            spread_srv_weights(v);
            record_count += v.len();
        }
        record_count
    }
}

/// A Service's identity: (namespace, name), as the API spells them.
pub type ServiceKey = (String, String);

/// Everything one Service's records are made from: the Service itself
/// (`None` once deleted), the EndpointSlices labelled with its name, and
/// the pods whose `subdomain` names it. A change to any of them changes
/// only that Service's records, which is what makes updates incremental.
#[derive(Clone, Debug, Default)]
pub struct ServiceObjects {
    /// The Service.
    pub service: Option<Arc<Service>>,
    /// Its EndpointSlices.
    pub slices: Vec<Arc<EndpointSlice>>,
    /// Pods with `hostname` and `subdomain` = the Service's name.
    pub pods: Vec<Arc<Pod>>,
}

impl ServiceObjects {
    /// Nothing left: the entry can be forgotten.
    pub fn is_empty(&self) -> bool {
        self.service.is_none() && self.slices.is_empty() && self.pods.is_empty()
    }
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name`).
pub fn service_key_of_slice(s: &EndpointSlice) -> Option<ServiceKey> {
    let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((
        s.metadata.namespace.clone().unwrap_or_default(),
        svc.clone(),
    ))
}

/// The Service a pod may be named under: its namespace and `subdomain`,
/// when it has both `hostname` and `subdomain`.
pub fn service_key_of_pod(pod: &Pod) -> Option<ServiceKey> {
    let spec = pod.spec.as_ref()?;
    spec.hostname.as_ref()?;
    let sub = spec.subdomain.clone()?;
    Some((pod.metadata.namespace.clone()?, sub))
}

/// The objects of `objects` grouped by the Service they make records for.
pub fn group_by_service(objects: &Objects) -> HashMap<ServiceKey, ServiceObjects> {
    let mut m: HashMap<ServiceKey, ServiceObjects> = HashMap::new();
    for svc in &objects.services {
        if let (Some(name), Some(ns)) = (&svc.metadata.name, &svc.metadata.namespace) {
            m.entry((ns.clone(), name.clone())).or_default().service = Some(svc.clone());
        }
    }
    for s in &objects.endpoint_slices {
        if let Some(k) = service_key_of_slice(s) {
            m.entry(k).or_default().slices.push(s.clone());
        }
    }
    for p in &objects.pods {
        if let Some(k) = service_key_of_pod(p) {
            m.entry(k).or_default().pods.push(p.clone());
        }
    }
    m
}

/// The records one Service makes, as the full build makes them: names
/// under `<svc>.<ns>.svc.<zone>` (with their empty non-terminals below the
/// namespace) and the reverse names of its addresses.
pub(super) fn contribution(
    config: &Config,
    key: &ServiceKey,
    objs: &ServiceObjects,
) -> NameMap<Vec<RData>> {
    let zone = config.zone.clone();
    let svc_zone = join("svc", &zone);
    let ns_name = join(&key.0.to_ascii_lowercase(), &svc_zone);
    let mut b = Builder {
        dot_zone: format!(".{zone}"),
        zone,
        names: NameMap::default(),
    };
    // Present while building so ancestors stop below the namespace.
    b.names.insert(ns_name.as_str().into(), Vec::new());
    let slices: Vec<&EndpointSlice> = objs.slices.iter().map(|s| &**s).collect();
    let headless = objs
        .service
        .as_ref()
        .and_then(|svc| add_service(&mut b, &svc_zone, svc, &slices));
    if let Some(publish) = headless {
        for pod in &objs.pods {
            add_pod_hostname(&mut b, &svc_zone, pod, publish);
        }
    }
    b.finish();
    b.names.remove(ns_name.as_str());
    b.names
}

pub(super) fn build(config: Config, objects: &Objects) -> Index {
    let zone = config.zone.clone();
    let mut b = Builder {
        dot_zone: format!(".{zone}"),
        zone: zone.clone(),
        names: NameMap::with_capacity_and_hasher(
            objects.services.len() * 4 + objects.namespaces.len() * 2 + 16,
            Default::default(),
        ),
    };
    let z = b.zone.clone();

    // The zone's own records.
    let ns_host = join("ns.dns", &z);
    b.add(&z, RData::Ns(Arc::from(ns_host.as_str())));
    for ip in &config.ns_addrs {
        b.add(&ns_host, addr_data(*ip));
    }
    b.ensure(&ns_host);
    b.add(&join("dns-version", &z), RData::Txt(SCHEMA_VERSION.into()));
    let svc_zone = join("svc", &z);
    let pod_zone = join("pod", &z);
    b.ensure(&svc_zone);
    if config.pods != PodMode::Disabled {
        b.ensure(&pod_zone);
    }

    // Namespaces: `<ns>.svc.<zone>` (and `<ns>.pod.<zone>`) exist.
    let mut namespaces: HashSet<String> = objects
        .namespaces
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    namespaces.extend(
        objects
            .services
            .iter()
            .filter_map(|s| s.metadata.namespace.clone()),
    );
    for ns in &namespaces {
        let ns = ns.to_ascii_lowercase();
        b.ensure(&join(&ns, &svc_zone));
        if config.pods != PodMode::Disabled {
            b.ensure(&join(&ns, &pod_zone));
        }
    }

    // EndpointSlices grouped by (namespace, service).
    let mut slices: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
    for s in &objects.endpoint_slices {
        if let Some(key) = service_key_of_slice(s) {
            slices.entry(key).or_default().push(s);
        }
    }

    // Headless services by (namespace, name) -> publishNotReadyAddresses.
    let mut headless: HashMap<(String, String), bool> = HashMap::new();

    for svc in &objects.services {
        let (Some(name), Some(ns)) = (&svc.metadata.name, &svc.metadata.namespace) else {
            continue;
        };
        let key = (ns.clone(), name.clone());
        let mine = slices.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        if let Some(publish) = add_service(&mut b, &svc_zone, svc, mine) {
            headless.insert(key, publish);
        }
    }

    // Pods: hostname + subdomain under a headless Service, and `pods verified`.
    for pod in &objects.pods {
        let Some(ns) = pod.metadata.namespace.as_deref() else {
            continue;
        };
        let ips = pod_ips(pod);
        if ips.is_empty() {
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        if let Some((_, sub)) = service_key_of_pod(pod)
            && let Some(publish) = headless.get(&(ns.to_string(), sub))
        {
            add_pod_hostname(&mut b, &svc_zone, pod, *publish);
        }
        if config.pods == PodMode::Verified {
            for ip in &ips {
                let owner = format!(
                    "{}.{}.{}",
                    dashed_ip(*ip),
                    ns.to_ascii_lowercase(),
                    pod_zone
                );
                b.add(&owner, addr_data(*ip));
            }
        }
    }

    let mut record_count = b.finish();
    // The SOA lives at the apex too (answered from config, counted here).
    b.add(&z, soa_data(&config));
    record_count += 1;

    Index {
        dot_zone: b.dot_zone,
        base: Arc::new(b.names),
        overlay: NameMap::default(),
        record_count,
        config,
    }
}

/// Adds one Service's records (with its EndpointSlices when headless);
/// returns `Some(publishNotReadyAddresses)` when it is headless, so pods
/// naming it as their subdomain get their names.
fn add_service(
    b: &mut Builder,
    svc_zone: &str,
    svc: &Service,
    slices: &[&EndpointSlice],
) -> Option<bool> {
    let (Some(name), Some(ns)) = (&svc.metadata.name, &svc.metadata.namespace) else {
        return None;
    };
    let svc_name = join(
        &join(&name.to_ascii_lowercase(), &ns.to_ascii_lowercase()),
        svc_zone,
    );
    let svc_arc: Arc<str> = Arc::from(svc_name.as_str());
    let spec = svc.spec.as_ref()?;

    if spec.type_.as_deref() == Some("ExternalName") {
        if let Some(ext) = spec.external_name.as_deref() {
            let ext = ext.trim().trim_end_matches('.').to_ascii_lowercase();
            if !ext.is_empty() && ext.len() <= 253 {
                b.add(&svc_name, RData::Cname(Arc::from(ext.as_str())));
            }
        }
        return None;
    }

    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    if cluster_ip == "None" {
        let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false)
            || svc
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(TOLERATE_UNREADY))
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        for slice in slices {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            for ep in &slice.endpoints {
                if !(publish_not_ready || ready(ep)) {
                    continue;
                }
                for addr in &ep.addresses {
                    let Ok(ip) = addr.parse::<IpAddr>() else {
                        continue;
                    };
                    let host = ep
                        .hostname
                        .as_deref()
                        .map(str::to_ascii_lowercase)
                        .unwrap_or_else(|| dashed_ip(ip));
                    let host_name = join(&host, &svc_name);
                    let host_arc: Arc<str> = Arc::from(host_name.as_str());
                    b.add(&svc_name, addr_data(ip));
                    b.add(&host_name, addr_data(ip));
                    b.add(&reverse_name(ip), RData::Ptr(host_arc.clone()));
                    for port in slice.ports.iter().flatten() {
                        let (Some(pname), Some(pnum)) = (port.name.as_deref(), port.port) else {
                            continue;
                        };
                        if pname.is_empty() {
                            continue;
                        }
                        b.add(
                            &srv_owner(pname, port.protocol.as_deref(), &svc_name),
                            RData::Srv {
                                priority: 0,
                                weight: 100,
                                port: pnum as u16,
                                target: host_arc.clone(),
                            },
                        );
                    }
                }
            }
        }
        return Some(publish_not_ready);
    }

    // A normal Service: its ClusterIP(s).
    let mut ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .filter_map(|s| s.parse().ok())
        .collect();
    if ips.is_empty()
        && let Ok(ip) = cluster_ip.parse()
    {
        ips.push(ip);
    }
    if ips.is_empty() {
        return None; // not allocated yet
    }
    for ip in &ips {
        b.add(&svc_name, addr_data(*ip));
        b.add(&reverse_name(*ip), RData::Ptr(svc_arc.clone()));
    }
    for port in spec.ports.iter().flatten() {
        let Some(pname) = port.name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        b.add(
            &srv_owner(pname, port.protocol.as_deref(), &svc_name),
            RData::Srv {
                priority: 0,
                weight: 100,
                port: port.port as u16,
                target: svc_arc.clone(),
            },
        );
    }
    None
}

/// `<hostname>.<subdomain>.<ns>.svc.<zone>` for a pod under a headless
/// Service of its subdomain (when Ready, or the Service publishes not-ready
/// addresses).
fn add_pod_hostname(b: &mut Builder, svc_zone: &str, pod: &Pod, publish: bool) {
    let (Some(ns), Some(spec)) = (pod.metadata.namespace.as_deref(), pod.spec.as_ref()) else {
        return;
    };
    let (Some(host), Some(sub)) = (spec.hostname.as_deref(), spec.subdomain.as_deref()) else {
        return;
    };
    if !(publish || pod_ready(pod)) {
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return;
    }
    let owner = format!(
        "{}.{}.{}.{}",
        host.to_ascii_lowercase(),
        sub.to_ascii_lowercase(),
        ns.to_ascii_lowercase(),
        svc_zone
    );
    for ip in pod_ips(pod) {
        b.add(&owner, addr_data(ip));
    }
}

/// The apex SOA data (stored at the apex and served in negative answers).
pub(super) fn soa_data(config: &Config) -> RData {
    RData::Soa {
        mname: Arc::from(join("ns.dns", &config.zone)),
        rname: Arc::from(join("hostmaster", &config.zone)),
        serial: config.serial,
        refresh: 7200,
        retry: 1800,
        expire: 86400,
        minimum: config.negative_ttl,
    }
}
