//! Watched kinds decoded to only the fields the agent's planners read.
//!
//! At the scalability envelope the agent lists 150,000 Pods, 10,000
//! Services and EndpointSlices and 5,000 Nodes; decoding each whole (every
//! container's env, probes and volumes, every condition and container
//! status, a Node's images) was most of the agent's start-up CPU, and
//! what the proxy kept of Services and EndpointSlices a large part of its
//! memory. Each type here is the `k8s_openapi` object itself, so the
//! planners run unchanged, but deserialized through a view that names
//! only what they read: every other field is skipped by the parser, never
//! allocated. The planners cannot tell the difference, as none reads what
//! is left out; the watcher keeps working, as the metadata it needs
//! (name, namespace, resourceVersion) is kept.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, Container, ContainerPort, LoadBalancerIngress, LoadBalancerStatus, Node,
    NodeAddress, NodeSpec, NodeStatus, Pod, PodIP, PodSpec, PodStatus, Service, ServicePort,
    ServiceSpec, ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

/// The kube `Resource` of a slim type: that of the full kind it wraps
/// (same URL, same scope), with the wrapped object's metadata.
macro_rules! slim_resource {
    ($slim:ident, $full:ty, $view:ty) => {
        impl kube::Resource for $slim {
            type DynamicType = ();
            type Scope = <$full as kube::Resource>::Scope;
            fn kind(dt: &()) -> Cow<'_, str> {
                <$full as kube::Resource>::kind(dt)
            }
            fn group(dt: &()) -> Cow<'_, str> {
                <$full as kube::Resource>::group(dt)
            }
            fn version(dt: &()) -> Cow<'_, str> {
                <$full as kube::Resource>::version(dt)
            }
            fn plural(dt: &()) -> Cow<'_, str> {
                <$full as kube::Resource>::plural(dt)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.0.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.0.metadata
            }
        }

        impl<'de> Deserialize<'de> for $slim {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok($slim(<$full>::from(<$view>::deserialize(d)?)))
            }
        }
    };
}

/// The metadata every watch needs: the key, the labels selectors read,
/// and the resourceVersion and uid the watcher tracks.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct MetaView {
    name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    resource_version: Option<String>,
    uid: Option<String>,
}

impl From<MetaView> for ObjectMeta {
    fn from(m: MetaView) -> Self {
        ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            labels: m.labels,
            resource_version: m.resource_version,
            uid: m.uid,
            ..Default::default()
        }
    }
}

/// A Pod with what policy reads: metadata, `spec.nodeName`,
/// `spec.hostNetwork`, containers' ports, `status.podIP(s)`.
#[derive(Clone, Debug)]
pub struct SlimPod(pub Pod);

mod pod {
    use super::*;

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub(super) struct View {
        metadata: MetaView,
        spec: Option<Spec>,
        status: Option<Status>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct Spec {
        node_name: Option<String>,
        host_network: Option<bool>,
        containers: Option<Vec<ContainerView>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct ContainerView {
        name: Option<String>,
        ports: Option<Vec<PortView>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct PortView {
        name: Option<String>,
        container_port: Option<i32>,
        protocol: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct Status {
        #[serde(rename = "podIP")]
        pod_ip: Option<String>,
        #[serde(rename = "podIPs")]
        pod_ips: Option<Vec<IpView>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct IpView {
        ip: Option<String>,
    }

    impl From<View> for Pod {
        fn from(v: View) -> Pod {
            Pod {
                metadata: v.metadata.into(),
                spec: v.spec.map(|s| PodSpec {
                    node_name: s.node_name,
                    host_network: s.host_network,
                    containers: s
                        .containers
                        .unwrap_or_default()
                        .into_iter()
                        .map(|c| Container {
                            name: c.name.unwrap_or_default(),
                            ports: c.ports.map(|ps| {
                                ps.into_iter()
                                    .map(|p| ContainerPort {
                                        name: p.name,
                                        container_port: p.container_port.unwrap_or_default(),
                                        protocol: p.protocol,
                                        ..Default::default()
                                    })
                                    .collect()
                            }),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                status: v.status.map(|s| PodStatus {
                    pod_ip: s.pod_ip,
                    pod_ips: s.pod_ips.map(|ips| {
                        ips.into_iter()
                            .map(|i| PodIP {
                                ip: i.ip.unwrap_or_default(),
                            })
                            .collect()
                    }),
                    ..Default::default()
                }),
            }
        }
    }
}

slim_resource!(SlimPod, Pod, pod::View);

/// A Service with what the proxy plans from: metadata, the spec's type,
/// addresses, ports, affinity and traffic policies, and the load
/// balancer's ingress addresses.
#[derive(Clone, Debug)]
pub struct SlimService(pub Service);

mod service {
    use super::*;

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub(super) struct View {
        metadata: MetaView,
        spec: Option<Spec>,
        status: Option<Status>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct Spec {
        #[serde(rename = "type")]
        type_: Option<String>,
        #[serde(rename = "clusterIP")]
        cluster_ip: Option<String>,
        #[serde(rename = "clusterIPs")]
        cluster_ips: Option<Vec<String>>,
        #[serde(rename = "externalIPs")]
        external_ips: Option<Vec<String>>,
        session_affinity: Option<String>,
        session_affinity_config: Option<AffinityConfig>,
        external_traffic_policy: Option<String>,
        internal_traffic_policy: Option<String>,
        publish_not_ready_addresses: Option<bool>,
        ports: Option<Vec<PortView>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct AffinityConfig {
        #[serde(rename = "clientIP")]
        client_ip: Option<ClientIp>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct ClientIp {
        timeout_seconds: Option<i32>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct PortView {
        name: Option<String>,
        protocol: Option<String>,
        port: Option<i32>,
        node_port: Option<i32>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct Status {
        load_balancer: Option<LbView>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct LbView {
        ingress: Option<Vec<LbIngress>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct LbIngress {
        ip: Option<String>,
    }

    impl From<View> for Service {
        fn from(v: View) -> Service {
            Service {
                metadata: v.metadata.into(),
                spec: v.spec.map(|s| ServiceSpec {
                    type_: s.type_,
                    cluster_ip: s.cluster_ip,
                    cluster_ips: s.cluster_ips,
                    external_ips: s.external_ips,
                    session_affinity: s.session_affinity,
                    session_affinity_config: s.session_affinity_config.map(|c| {
                        SessionAffinityConfig {
                            client_ip: c.client_ip.map(|c| ClientIPConfig {
                                timeout_seconds: c.timeout_seconds,
                            }),
                        }
                    }),
                    external_traffic_policy: s.external_traffic_policy,
                    internal_traffic_policy: s.internal_traffic_policy,
                    publish_not_ready_addresses: s.publish_not_ready_addresses,
                    ports: s.ports.map(|ps| {
                        ps.into_iter()
                            .map(|p| ServicePort {
                                name: p.name,
                                protocol: p.protocol,
                                port: p.port.unwrap_or_default(),
                                node_port: p.node_port,
                                ..Default::default()
                            })
                            .collect()
                    }),
                    ..Default::default()
                }),
                status: v.status.map(|s| ServiceStatus {
                    load_balancer: s.load_balancer.map(|lb| LoadBalancerStatus {
                        ingress: lb.ingress.map(|is| {
                            is.into_iter()
                                .map(|i| LoadBalancerIngress {
                                    ip: i.ip,
                                    ..Default::default()
                                })
                                .collect()
                        }),
                    }),
                    ..Default::default()
                }),
            }
        }
    }
}

slim_resource!(SlimService, Service, service::View);

/// An EndpointSlice with what the proxy plans from: metadata (its
/// service-name label), the address type, the ports, and each endpoint's
/// addresses, conditions and node.
#[derive(Clone, Debug)]
pub struct SlimSlice(pub EndpointSlice);

mod slice {
    use super::*;

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub(super) struct View {
        metadata: MetaView,
        address_type: Option<String>,
        endpoints: Option<Vec<EndpointView>>,
        ports: Option<Vec<PortView>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct EndpointView {
        addresses: Option<Vec<String>>,
        conditions: Option<Conditions>,
        node_name: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Conditions {
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct PortView {
        name: Option<String>,
        protocol: Option<String>,
        port: Option<i32>,
    }

    impl From<View> for EndpointSlice {
        fn from(v: View) -> EndpointSlice {
            EndpointSlice {
                metadata: v.metadata.into(),
                address_type: v.address_type.unwrap_or_default(),
                endpoints: v
                    .endpoints
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| Endpoint {
                        addresses: e.addresses.unwrap_or_default(),
                        conditions: e.conditions.map(|c| EndpointConditions {
                            ready: c.ready,
                            serving: c.serving,
                            terminating: c.terminating,
                        }),
                        node_name: e.node_name,
                        ..Default::default()
                    })
                    .collect(),
                ports: v.ports.map(|ps| {
                    ps.into_iter()
                        .map(|p| EndpointPort {
                            name: p.name,
                            protocol: p.protocol,
                            port: p.port,
                            ..Default::default()
                        })
                        .collect()
                }),
            }
        }
    }
}

slim_resource!(SlimSlice, EndpointSlice, slice::View);

/// A Node with what routing reads: its name, `spec.podCIDR` and
/// `status.addresses` (a kubelet's Node also carries its images,
/// conditions and capacity, none of which routing reads).
#[derive(Clone, Debug)]
pub struct SlimNode(pub Node);

mod node {
    use super::*;

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub(super) struct View {
        metadata: MetaView,
        spec: Option<Spec>,
        status: Option<Status>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Spec {
        #[serde(rename = "podCIDR")]
        pod_cidr: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Status {
        addresses: Option<Vec<AddressView>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct AddressView {
        #[serde(rename = "type")]
        type_: Option<String>,
        address: Option<String>,
    }

    impl From<View> for Node {
        fn from(v: View) -> Node {
            Node {
                metadata: v.metadata.into(),
                spec: v.spec.map(|s| NodeSpec {
                    pod_cidr: s.pod_cidr,
                    ..Default::default()
                }),
                status: v.status.map(|s| NodeStatus {
                    addresses: s.addresses.map(|a| {
                        a.into_iter()
                            .map(|a| NodeAddress {
                                type_: a.type_.unwrap_or_default(),
                                address: a.address.unwrap_or_default(),
                            })
                            .collect()
                    }),
                    ..Default::default()
                }),
            }
        }
    }
}

slim_resource!(SlimNode, Node, node::View);

#[cfg(test)]
mod tests {
    //! Each slim type must give the planners what the full type gives
    //! them: rich objects (every field a real cluster sets, the ones the
    //! planners read in all their cases) decoded both ways plan the same.

    use super::*;
    use k8s_openapi::api::core::v1::{Pod, Service};
    use podnet_core::policy::PodFacts;
    use podnet_core::proxy::{NodeFacts, plan, plan_service};
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    fn both<F: DeserializeOwned, S: DeserializeOwned>(v: &Value) -> (F, S) {
        (
            serde_json::from_value(v.clone()).expect("full"),
            serde_json::from_value(v.clone()).expect("slim"),
        )
    }

    fn meta(name: &str) -> Value {
        json!({
            "name": name,
            "namespace": "team-a",
            "uid": "0b7e-uid",
            "resourceVersion": "4711",
            "generation": 3,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "deletionTimestamp": "2026-01-01T01:00:00Z",
            "deletionGracePeriodSeconds": 30,
            "labels": {"app": "web", "tier": "front", "kubernetes.io/service-name": "web"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web-1", "uid": "rs-uid", "controller": true}],
            "finalizers": ["example.com/hold"],
            "managedFields": [{"manager": "kubelet", "operation": "Update",
                "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}]
        })
    }

    fn pod(name: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta(name),
            "spec": {
                "nodeName": "node-7",
                "hostNetwork": false,
                "serviceAccountName": "default",
                "initContainers": [{"name": "init", "image": "busybox",
                    "ports": [{"name": "init-p", "containerPort": 9999}]}],
                "containers": [
                    {"name": "app", "image": "nginx:1",
                     "env": [{"name": "A", "value": "b"}],
                     "ports": [
                        {"name": "http", "containerPort": 8080, "protocol": "TCP", "hostPort": 80},
                        {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
                        {"name": "sctp", "containerPort": 7777, "protocol": "SCTP"},
                        {"containerPort": 9090},
                        {"name": "noproto", "containerPort": 8443}
                     ],
                     "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
                     "resources": {"limits": {"cpu": "1"}},
                     "volumeMounts": [{"name": "v", "mountPath": "/v"}]},
                    {"name": "side", "image": "envoy",
                     "ports": [{"name": "admin", "containerPort": 15000}]}
                ],
                "volumes": [{"name": "v", "emptyDir": {}}],
                "tolerations": [{"operator": "Exists"}]
            },
            "status": {
                "phase": "Running",
                "hostIP": "192.168.0.7",
                "hostIPs": [{"ip": "192.168.0.7"}],
                "podIP": "10.244.7.12",
                "podIPs": [{"ip": "10.244.7.12"}, {"ip": "fd00::12"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
                    "image": "nginx:1", "imageID": "sha256:x", "state": {"running": {}}}],
                "qosClass": "Burstable"
            }
        })
    }

    #[test]
    fn pod_facts_are_the_same() {
        let mut cases = vec![pod("a")];
        // IPv6 listed first: the IPv4 one from podIPs.
        let mut v6 = pod("b");
        v6["status"]["podIP"] = json!("fd00::12");
        v6["status"]["podIPs"] = json!([{"ip": "fd00::12"}, {"ip": "10.244.7.13"}]);
        cases.push(v6);
        // Pending: no address, no node.
        let mut pending = pod("c");
        pending["status"] = json!({"phase": "Pending"});
        pending["spec"].as_object_mut().unwrap().remove("nodeName");
        cases.push(pending);
        // hostNetwork, no namespace (the default), no labels.
        let mut host = pod("d");
        host["spec"]["hostNetwork"] = json!(true);
        host["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("namespace");
        host["metadata"].as_object_mut().unwrap().remove("labels");
        cases.push(host);
        for v in cases {
            let (full, slim): (Pod, SlimPod) = both(&v);
            assert_eq!(
                PodFacts::from_pod(&full),
                PodFacts::from_pod(&slim.0),
                "{v}"
            );
        }
        let (_, slim): (Pod, SlimPod) = both(&pod("a"));
        let facts = PodFacts::from_pod(&slim.0);
        assert!(facts.ip.is_some() && facts.node.is_some() && facts.named_ports.len() >= 3);
    }

    fn service(name: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(name),
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.96.0.20",
                "clusterIPs": ["10.96.0.20"],
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "externalIPs": ["192.0.2.10", "192.0.2.11"],
                "loadBalancerIP": "192.0.2.30",
                "loadBalancerSourceRanges": ["0.0.0.0/0"],
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
                "externalTrafficPolicy": "Local",
                "internalTrafficPolicy": "Local",
                "healthCheckNodePort": 32000,
                "publishNotReadyAddresses": false,
                "selector": {"app": "web"},
                "allocateLoadBalancerNodePorts": true,
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP",
                     "nodePort": 30080, "appProtocol": "http"},
                    {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP",
                     "nodePort": 30053},
                    {"name": "bad", "port": 70000, "protocol": "TCP"},
                    {"name": "weird", "port": 81, "protocol": "QUIC"}
                ]
            },
            "status": {"loadBalancer": {"ingress": [
                {"ip": "192.0.2.30", "ipMode": "VIP", "ports": [{"port": 80, "protocol": "TCP"}]},
                {"hostname": "lb.example.com"},
                {"ip": "192.0.2.10"}
            ]}, "conditions": []}
        })
    }

    fn slice(name: &str, svc: &str) -> Value {
        let mut m = meta(name);
        m["labels"] = json!({"kubernetes.io/service-name": svc,
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"});
        let ep = |ip: &str, node: &str, c: Value| {
            json!({"addresses": [ip], "conditions": c, "nodeName": node, "zone": "z1",
                "hostname": "h", "hints": {"forZones": [{"name": "z1"}]},
                "targetRef": {"kind": "Pod", "name": "p", "namespace": "team-a"}})
        };
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": m,
            "addressType": "IPv4",
            "endpoints": [
                ep("10.244.7.12", "node-7", json!({"ready": true, "serving": true, "terminating": false})),
                ep("10.244.8.12", "node-8", json!({"ready": true})),
                ep("10.244.9.12", "node-9", json!({"ready": false, "serving": true, "terminating": true})),
                ep("10.244.9.13", "node-9", json!({"ready": false})),
                ep("not-an-ip", "node-9", json!({})),
                {"addresses": ["10.244.10.1"]}
            ],
            "ports": [
                {"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"},
                {"name": "dns", "port": 5353, "protocol": "UDP"}
            ]
        })
    }

    fn node_facts() -> NodeFacts {
        NodeFacts {
            node_name: "node-7".into(),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        }
    }

    /// Services in every case the planner tells apart, with their slices.
    fn service_cases() -> Vec<(Value, Vec<Value>)> {
        let mut out = vec![(
            service("lb"),
            vec![slice("lb-1", "lb"), slice("lb-2", "lb")],
        )];
        let mut cip = service("cip");
        cip["spec"]["type"] = json!("ClusterIP");
        cip["spec"]["sessionAffinity"] = json!("None");
        cip["spec"]["externalTrafficPolicy"] = json!("Cluster");
        cip["spec"]["internalTrafficPolicy"] = json!("Cluster");
        cip["spec"]["publishNotReadyAddresses"] = json!(true);
        cip["spec"].as_object_mut().unwrap().remove("externalIPs");
        cip["status"] = json!({});
        out.push((cip, vec![slice("cip-1", "cip")]));
        let mut np = service("np");
        np["spec"]["type"] = json!("NodePort");
        np["spec"]["sessionAffinityConfig"] = json!(null);
        np["spec"].as_object_mut().unwrap().remove("clusterIPs");
        np["spec"]["externalIPs"] = json!(["bogus"]);
        out.push((np, vec![slice("np-1", "np")]));
        let mut headless = service("headless");
        headless["spec"]["clusterIP"] = json!("None");
        headless["spec"]["clusterIPs"] = json!(["None"]);
        out.push((headless, vec![slice("headless-1", "headless")]));
        let mut ext = service("ext");
        ext["spec"]["type"] = json!("ExternalName");
        ext["spec"]["externalName"] = json!("example.com");
        out.push((ext, vec![]));
        let mut v6 = service("v6");
        let mut s6 = slice("v6-1", "v6");
        s6["addressType"] = json!("FQDN");
        v6["spec"]["clusterIPs"] = json!(["bad-ip", "10.96.0.21"]);
        out.push((v6, vec![s6]));
        out
    }

    #[test]
    fn service_plans_are_the_same() {
        let node = node_facts();
        let mut all = (vec![], vec![], vec![], vec![]);
        for (svc, slices) in service_cases() {
            let (full, slim): (Service, SlimService) = both(&svc);
            let decoded: Vec<(EndpointSlice, SlimSlice)> = slices.iter().map(both).collect();
            let full_slices: Vec<&EndpointSlice> = decoded.iter().map(|(f, _)| f).collect();
            let slim_slices: Vec<&EndpointSlice> = decoded.iter().map(|(_, s)| &s.0).collect();
            let want = plan_service(&full, &full_slices, &node);
            assert_eq!(want, plan_service(&slim.0, &slim_slices, &node), "{svc}");
            all.0.push(full);
            all.1.push(slim.0);
            all.2.extend(decoded.iter().map(|(f, _)| f.clone()));
            all.3.extend(decoded.into_iter().map(|(_, s)| s.0));
        }
        let want = plan(&all.0, &all.2, &node);
        assert!(!want.state.ports.is_empty() && !want.problems.is_empty());
        assert!(
            want.state
                .ports
                .values()
                .any(|p| p.affinity_timeout == Some(600)
                    && p.node_port == Some(30080)
                    && p.external_local
                    && p.internal_local
                    && p.external_ips.len() == 3
                    && p.endpoints.iter().any(|e| e.local)),
            "the samples exercise every field: {want:?}"
        );
        assert_eq!(want, plan(&all.1, &all.3, &node));
    }

    #[test]
    fn node_routes_are_the_same() {
        let mut n = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "node-9", "uid": "u", "resourceVersion": "9",
                "labels": {"kubernetes.io/hostname": "node-9"},
                "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {"podCIDR": "10.244.9.0/24", "podCIDRs": ["10.244.9.0/24"],
                "providerID": "lab://node-9", "taints": []},
            "status": {
                "addresses": [{"type": "Hostname", "address": "node-9"},
                    {"type": "InternalIP", "address": "192.168.0.9"}],
                "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}],
                "images": [{"names": ["nginx:1"], "sizeBytes": 1}],
                "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b",
                    "kernelVersion": "6", "osImage": "d", "containerRuntimeVersion": "c",
                    "kubeletVersion": "v1.33.0", "kubeProxyVersion": "", "operatingSystem": "linux",
                    "architecture": "amd64"}
            }
        });
        let (full, slim): (Node, SlimNode) = both(&n);
        let want = crate::routes::remote_of(&full, "node-1");
        assert!(want.is_some());
        assert_eq!(want, crate::routes::remote_of(&slim.0, "node-1"));
        n["status"]["addresses"] = json!([{"type": "ExternalIP", "address": "198.51.100.9"}]);
        let (full, slim): (Node, SlimNode) = both(&n);
        assert_eq!(crate::routes::remote_of(&full, "node-1"), None);
        assert_eq!(crate::routes::remote_of(&slim.0, "node-1"), None);
    }

    /// The watcher's bookkeeping and the API paths are those of the full kind.
    #[test]
    fn metadata_and_resource_are_the_full_kinds() {
        use kube::Resource;
        let (_, slim): (Pod, SlimPod) = both(&pod("a"));
        let m = slim.meta();
        assert_eq!(m.resource_version.as_deref(), Some("4711"));
        assert_eq!(m.uid.as_deref(), Some("0b7e-uid"));
        assert_eq!(m.namespace.as_deref(), Some("team-a"));
        assert_eq!(SlimPod::url_path(&(), None), Pod::url_path(&(), None));
        assert_eq!(
            SlimSlice::url_path(&(), Some("x")),
            EndpointSlice::url_path(&(), Some("x"))
        );
        assert_eq!(SlimNode::api_version(&()), Node::api_version(&()));
        assert_eq!(SlimService::kind(&()), "Service");
    }
}
