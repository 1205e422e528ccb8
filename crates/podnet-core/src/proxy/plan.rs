//! From Kubernetes objects to a [`ProxyState`]: which service ports exist,
//! on which addresses, and which endpoints each may reach.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{Endpoint, NodeFacts, Protocol, ProxyState, ServicePortName, ServicePortPlan};

/// The label an EndpointSlice uses to name its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// Something in the input the planner had to leave out, and why; the rest
/// of the plan is still complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {reason}")]
pub struct PlanProblem {
    /// `namespace/name` of the object at fault.
    pub object: String,
    /// What was wrong with it.
    pub reason: String,
}

/// The planner's answer: the state, and what it could not use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyPlan {
    /// The desired proxy state.
    pub state: ProxyState,
    /// Objects (or parts of them) that were malformed and left out.
    pub problems: Vec<PlanProblem>,
}

/// Plans the proxy of one node from every Service and EndpointSlice of the
/// cluster. Headless and ExternalName services get nothing; a malformed
/// object is reported in [`ProxyPlan::problems`] and the others still
/// planned.
pub fn plan(services: &[Service], slices: &[EndpointSlice], node: &NodeFacts) -> ProxyPlan {
    let mut problems = Vec::new();
    // (namespace, service) -> slices
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
        let Some(svc) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        by_service
            .entry((ns, svc.as_str()))
            .or_default()
            .push(slice);
    }

    let mut state = ProxyState {
        ports: BTreeMap::new(),
        cluster_cidrs: node.cluster_cidrs.clone(),
    };
    for svc in services {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let Some(name) = svc.metadata.name.as_deref() else {
            continue;
        };
        let svc_slices = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for p in service_ports(svc, svc_slices, node, &mut problems) {
            state.ports.insert(p.name.clone(), p);
        }
    }
    ProxyPlan { state, problems }
}

/// Plans one Service from its own EndpointSlices (those labelled with its
/// name in its namespace): the service ports it contributes to a
/// [`ProxyState`], and what was wrong with it. [`plan`] is this for every
/// service; an agent that keeps its state between changes re-plans only
/// the services a change touched, so a change costs the same at any size.
pub fn plan_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &NodeFacts,
) -> (Vec<ServicePortPlan>, Vec<PlanProblem>) {
    let mut problems = Vec::new();
    let ports = service_ports(svc, slices, node, &mut problems);
    (ports, problems)
}

fn service_ports(
    svc: &Service,
    svc_slices: &[&EndpointSlice],
    node: &NodeFacts,
    problems: &mut Vec<PlanProblem>,
) -> Vec<ServicePortPlan> {
    let mut out = Vec::new();
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let Some(name) = svc.metadata.name.as_deref() else {
        return out;
    };
    let object = format!("{ns}/{name}");
    let Some(spec) = svc.spec.as_ref() else {
        return out;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return out;
    }
    let mut ip_strings: Vec<&str> = spec
        .cluster_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if ip_strings.is_empty() {
        ip_strings.extend(spec.cluster_ip.as_deref());
    }
    if ip_strings.is_empty() || ip_strings.contains(&"None") {
        return out; // headless (or not yet allocated): no virtual IP
    }
    let mut cluster_ips = Vec::new();
    for s in ip_strings {
        match s.parse::<IpAddr>() {
            Ok(ip) => cluster_ips.push(ip),
            Err(_) => problems.push(PlanProblem {
                object: object.clone(),
                reason: format!("clusterIP {s:?} is not an IP address"),
            }),
        }
    }
    if cluster_ips.is_empty() {
        return out;
    }
    let mut external_ips = Vec::new();
    let lb_ips = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_ref());
    for s in spec.external_ips.iter().flatten().chain(lb_ips) {
        match s.parse::<IpAddr>() {
            Ok(ip) if !external_ips.contains(&ip) => external_ips.push(ip),
            Ok(_) => {}
            Err(_) => problems.push(PlanProblem {
                object: object.clone(),
                reason: format!("external IP {s:?} is not an IP address"),
            }),
        }
    }
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let node_ports_allowed = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local")
        && (node_ports_allowed || !external_ips.is_empty());
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    for port in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::from_k8s(port.protocol.as_deref()) else {
            problems.push(PlanProblem {
                object: object.clone(),
                reason: format!("port {}: unknown protocol {:?}", port.port, port.protocol),
            });
            continue;
        };
        let Ok(svc_port) = u16::try_from(port.port) else {
            problems.push(PlanProblem {
                object: object.clone(),
                reason: format!("port {} is out of range", port.port),
            });
            continue;
        };
        if svc_port == 0 {
            problems.push(PlanProblem {
                object: object.clone(),
                reason: "port 0 is not a valid service port".into(),
            });
            continue;
        }
        let node_port = if node_ports_allowed {
            port.node_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
        } else {
            None
        };
        let port_name = port.name.clone().unwrap_or_default();
        let endpoints = endpoints_for(
            svc_slices,
            &port_name,
            protocol,
            publish_not_ready,
            node,
            &object,
            problems,
        );
        let name = ServicePortName {
            namespace: ns.into(),
            service: name.into(),
            port: port_name,
            protocol,
        };
        out.push(ServicePortPlan {
            name,
            cluster_ips: cluster_ips.clone(),
            port: svc_port,
            node_port,
            external_ips: external_ips.clone(),
            affinity_timeout,
            external_local,
            internal_local,
            endpoints,
        });
    }
    out
}

/// The usable endpoints of one service port across its slices: ready ones
/// (or all, with `publishNotReadyAddresses`); if none is ready, the serving
/// terminating ones, as kube-proxy falls back to them.
fn endpoints_for(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    publish_not_ready: bool,
    node: &NodeFacts,
    object: &str,
    problems: &mut Vec<PlanProblem>,
) -> Vec<Endpoint> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue; // FQDN slices are not proxied
        }
        let Some(target) = slice.ports.iter().flatten().find_map(|p| {
            let same_name = p.name.as_deref().unwrap_or("") == port_name;
            let same_proto = Protocol::from_k8s(p.protocol.as_deref()) == Some(protocol);
            (same_name && same_proto).then_some(p.port)
        }) else {
            continue;
        };
        let Some(target) = target
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
        else {
            problems.push(PlanProblem {
                object: object.into(),
                reason: format!(
                    "EndpointSlice {}: port {port_name:?} has no valid number",
                    slice.metadata.name.as_deref().unwrap_or("?")
                ),
            });
            continue;
        };
        for ep in &slice.endpoints {
            let cond = ep.conditions.as_ref();
            let is_ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let is_serving = cond.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            let local = ep.node_name.as_deref() == Some(node.node_name.as_str())
                && !node.node_name.is_empty();
            for addr in &ep.addresses {
                let Ok(addr) = addr.parse::<IpAddr>() else {
                    problems.push(PlanProblem {
                        object: object.into(),
                        reason: format!("endpoint address {addr:?} is not an IP address"),
                    });
                    continue;
                };
                let e = Endpoint {
                    addr,
                    port: target,
                    local,
                };
                if publish_not_ready || (is_ready && !is_terminating) {
                    ready.insert(e);
                } else if is_serving && is_terminating {
                    terminating.insert(e);
                }
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    // One endpoint per (addr, port): a duplicate across slices counts once.
    let mut seen = BTreeSet::new();
    chosen
        .into_iter()
        .filter(|e| seen.insert((e.addr, e.port)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ClientIPConfig, ServicePort, ServiceSpec, SessionAffinityConfig,
    };
    use k8s_openapi::api::discovery::v1::{
        Endpoint as K8sEndpoint, EndpointConditions, EndpointPort,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    pub(crate) fn service(name: &str, ip: &str, ports: &[(&str, &str, i32)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                cluster_ips: Some(vec![ip.into()]),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, proto, p)| ServicePort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            protocol: Some(proto.to_string()),
                            port: *p,
                            target_port: Some(IntOrString::String("http".into())),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    pub(crate) fn slice(
        svc: &str,
        ports: &[(&str, &str, i32)],
        eps: &[(&str, Option<bool>, &str)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{svc}-abc")),
                namespace: Some("default".into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(a, ready, node)| K8sEndpoint {
                    addresses: vec![a.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        serving: *ready,
                        terminating: ready.map(|r| !r),
                    }),
                    node_name: Some(node.to_string()),
                    ..Default::default()
                })
                .collect(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, proto, p)| EndpointPort {
                        name: Some(n.to_string()),
                        protocol: Some(proto.to_string()),
                        port: Some(*p),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    fn node() -> NodeFacts {
        NodeFacts {
            node_name: "node-a".into(),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        }
    }

    #[test]
    fn named_ports_resolve_per_slice_and_protocol() {
        let svc = service(
            "web",
            "10.96.0.5",
            &[("http", "TCP", 80), ("dns", "UDP", 53)],
        );
        let sl = slice(
            "web",
            &[("http", "TCP", 8080), ("dns", "UDP", 5353)],
            &[
                ("10.244.1.2", Some(true), "node-a"),
                ("10.244.2.2", None, "node-b"),
            ],
        );
        let p = plan(&[svc], &[sl], &node());
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(p.state.ports.len(), 2);
        let http = p.state.ports.values().find(|v| v.port == 80).unwrap();
        assert_eq!(http.name.protocol, Protocol::Tcp);
        assert_eq!(
            http.endpoints
                .iter()
                .map(|e| (e.addr.to_string(), e.port, e.local))
                .collect::<Vec<_>>(),
            vec![
                ("10.244.1.2".into(), 8080, true),
                ("10.244.2.2".into(), 8080, false)
            ]
        );
        let dns = p.state.ports.values().find(|v| v.port == 53).unwrap();
        assert_eq!(dns.name.protocol, Protocol::Udp);
        assert!(dns.endpoints.iter().all(|e| e.port == 5353));
    }

    #[test]
    fn one_service_planned_alone_is_what_the_whole_plan_holds_for_it() {
        let web = service("web", "10.96.0.5", &[("http", "TCP", 80)]);
        let other = service("other", "10.96.0.6", &[("http", "TCP", 80)]);
        let sl = slice(
            "web",
            &[("http", "TCP", 8080)],
            &[("10.244.1.2", Some(true), "node-a")],
        );
        let whole = plan(&[web.clone(), other], std::slice::from_ref(&sl), &node());
        let (ports, problems) = plan_service(&web, &[&sl], &node());
        assert!(problems.is_empty());
        let want: Vec<_> = whole
            .state
            .ports
            .values()
            .filter(|p| p.name.service == "web")
            .cloned()
            .collect();
        assert_eq!(ports, want);
    }

    #[test]
    fn headless_and_external_name_get_nothing() {
        let headless = service("h", "None", &[("", "TCP", 80)]);
        let mut ext = service("e", "10.96.0.9", &[("", "TCP", 80)]);
        ext.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        let p = plan(&[headless, ext], &[], &node());
        assert!(p.state.ports.is_empty());
    }

    #[test]
    fn not_ready_endpoints_are_left_out_and_terminating_are_a_fallback() {
        let svc = service("web", "10.96.0.5", &[("http", "TCP", 80)]);
        let sl = slice(
            "web",
            &[("http", "TCP", 8080)],
            &[
                ("10.244.1.2", Some(true), "node-a"),
                ("10.244.1.3", Some(false), "node-a"),
            ],
        );
        let p = plan(std::slice::from_ref(&svc), &[sl], &node());
        let eps = &p.state.ports.values().next().unwrap().endpoints;
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].addr.to_string(), "10.244.1.2");

        // Only a terminating (still serving) endpoint left: it is used.
        let mut sl = slice(
            "web",
            &[("http", "TCP", 8080)],
            &[("10.244.1.3", Some(false), "node-a")],
        );
        sl.endpoints[0].conditions.as_mut().unwrap().serving = Some(true);
        let p = plan(&[svc], &[sl], &node());
        let eps = &p.state.ports.values().next().unwrap().endpoints;
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].addr.to_string(), "10.244.1.3");
    }

    #[test]
    fn traffic_policies_pick_local_endpoints() {
        let mut svc = service("web", "10.96.0.5", &[("http", "TCP", 80)]);
        {
            let spec = svc.spec.as_mut().unwrap();
            spec.type_ = Some("NodePort".into());
            spec.ports.as_mut().unwrap()[0].node_port = Some(30080);
            spec.external_traffic_policy = Some("Local".into());
            spec.session_affinity = Some("ClientIP".into());
            spec.session_affinity_config = Some(SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(60),
                }),
            });
        }
        let sl = slice(
            "web",
            &[("http", "TCP", 8080)],
            &[
                ("10.244.1.2", Some(true), "node-a"),
                ("10.244.2.2", Some(true), "node-b"),
            ],
        );
        let p = plan(&[svc], &[sl], &node());
        let sp = p.state.ports.values().next().unwrap();
        assert_eq!(sp.node_port, Some(30080));
        assert_eq!(sp.affinity_timeout, Some(60));
        assert!(sp.external_local && !sp.internal_local);
        assert_eq!(sp.cluster_endpoints(super::super::Family::V4).len(), 2);
        assert_eq!(sp.external_endpoints(super::super::Family::V4).len(), 1);
    }

    #[test]
    fn malformed_input_is_reported_and_the_rest_planned() {
        let bad = service("bad", "10.96.0.300", &[("", "TCP", 80)]);
        let good = service("good", "10.96.0.6", &[("", "TCP", 80)]);
        let p = plan(&[bad, good], &[], &node());
        assert_eq!(p.problems.len(), 1);
        assert!(p.problems[0].to_string().contains("default/bad"));
        assert_eq!(p.state.ports.len(), 1);
        // A NodePort on a ClusterIP service is ignored.
        assert_eq!(p.state.ports.values().next().unwrap().node_port, None);
    }
}
