//! The scheduler: binds every pending pod (no `spec.nodeName`, scheduler
//! `default-scheduler` or unset) to a Ready node through the `pods/binding`
//! subresource, as kube-scheduler does.
//!
//! Filters: node Ready and schedulable, nodeSelector and required node
//! affinity, NoSchedule/NoExecute taints against the pod's tolerations, and
//! free host ports (no two pods on a node claim the same `hostPort`).
//! Score: fewest pods of the same owner on the node, then fewest pods, then
//! the node's name, so replicas spread and ties are stable. A pod that fits
//! nowhere gets `PodScheduled=False` (reason `Unschedulable`) and a
//! `FailedScheduling` Event with kube-scheduler's message shape.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod, PodCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::Notify;

use crate::util::{controller_of, is_active, node_matches_pod, node_ready, untolerated_taint};
use crate::{Caches, Error, Next, RETRY};

/// The scheduler name pods ask for to be placed by this scheduler.
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// How long a binding we made may stay unseen in the cache before we stop
/// counting it (the watch normally shows it within milliseconds).
const ASSUME_TTL: Duration = Duration::from_secs(30);

/// How long after a binding its `Scheduled` event is written.
const EVENT_DELAY: Duration = Duration::from_millis(500);

/// How many bindings are in flight at once.
const PARALLEL_BINDS: usize = 32;

/// Pods per node, overall and per owning controller (uid), as the scorer
/// needs them.
#[derive(Debug, Default, Clone)]
pub struct Load {
    total: HashMap<String, usize>,
    by_owner: HashMap<(String, String), usize>,
    host_ports: HashMap<String, Vec<HostPort>>,
}

/// A `hostPort` a pod claims on its node, as kube-scheduler's NodePorts
/// filter compares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    protocol: String,
    /// The node address it is bound to; empty for all of them.
    ip: String,
    port: i32,
}

impl HostPort {
    fn conflicts(&self, other: &HostPort) -> bool {
        let any = |ip: &str| matches!(ip, "" | "0.0.0.0" | "::");
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || any(&self.ip) || any(&other.ip))
    }
}

/// The host ports a pod's containers claim.
pub fn host_ports(p: &Pod) -> Vec<HostPort> {
    let Some(spec) = &p.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|cp| {
            let port = cp.host_port.filter(|p| *p > 0)?;
            Some(HostPort {
                protocol: cp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ip: cp.host_ip.clone().unwrap_or_default(),
                port,
            })
        })
        .collect()
}

impl Load {
    /// Counts the active pods bound to nodes.
    pub fn from_pods(pods: &[Arc<Pod>]) -> Load {
        let mut l = Load::default();
        for p in pods.iter().filter(|p| is_active(p)) {
            if let Some(node) = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .filter(|n| !n.is_empty())
            {
                l.add_pod(node, p);
            }
        }
        l
    }

    /// Counts one more pod on `node`.
    pub fn add(&mut self, node: &str, owner: Option<&str>) {
        *self.total.entry(node.to_string()).or_default() += 1;
        if let Some(o) = owner {
            *self
                .by_owner
                .entry((o.to_string(), node.to_string()))
                .or_default() += 1;
        }
    }

    /// Counts `p` on `node`, with the host ports it takes there.
    pub fn add_pod(&mut self, node: &str, p: &Pod) {
        self.add(node, owner_uid(p));
        self.claim(node, host_ports(p));
    }

    /// Records host ports as taken on `node`.
    pub fn claim(&mut self, node: &str, ports: Vec<HostPort>) {
        if !ports.is_empty() {
            self.host_ports
                .entry(node.to_string())
                .or_default()
                .extend(ports);
        }
    }

    /// Whether any of `wanted` is already taken on `node`.
    fn ports_taken(&self, node: &str, wanted: &[HostPort]) -> bool {
        self.host_ports
            .get(node)
            .is_some_and(|taken| wanted.iter().any(|w| taken.iter().any(|t| t.conflicts(w))))
    }

    fn score(&self, node: &str, owner: Option<&str>) -> (usize, usize) {
        let same = owner
            .map(|o| {
                self.by_owner
                    .get(&(o.to_string(), node.to_string()))
                    .copied()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        (same, self.total.get(node).copied().unwrap_or(0))
    }
}

fn owner_uid(p: &Pod) -> Option<&str> {
    controller_of(p).map(|r| r.uid.as_str())
}

/// Whether this scheduler should place the pod now.
pub fn wants_scheduling(p: &Pod) -> bool {
    let Some(spec) = &p.spec else { return false };
    spec.node_name.as_deref().is_none_or(str::is_empty)
        && spec
            .scheduler_name
            .as_deref()
            .is_none_or(|s| s.is_empty() || s == SCHEDULER_NAME)
        && spec.scheduling_gates.as_ref().is_none_or(Vec::is_empty)
        && is_active(p)
}

fn taint_text(t: &Taint) -> String {
    format!(
        "node(s) had untolerated taint {{{}: {}}}",
        t.key,
        t.value.as_deref().unwrap_or("")
    )
}

/// Why a node cannot take a pod, in kube-scheduler's words; None if it can.
pub fn filter(pod: &Pod, node: &Node) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let tolerations = spec.tolerations.as_deref().unwrap_or(&[]);
    if node.metadata.deletion_timestamp.is_some() {
        return Some("node(s) were being deleted".into());
    }
    let node_spec = node.spec.clone().unwrap_or_default();
    // A NotReady node carries the not-ready NoSchedule taint on a real
    // cluster (node lifecycle controller); the lab may not add it, so it is
    // implied here.
    if !node_ready(node) {
        let t = Taint {
            key: "node.kubernetes.io/not-ready".into(),
            effect: "NoSchedule".into(),
            value: None,
            time_added: None,
        };
        if untolerated_taint(std::slice::from_ref(&t), tolerations).is_some() {
            return Some(taint_text(&t));
        }
    }
    if node_spec.unschedulable == Some(true) {
        let t = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            value: None,
            time_added: None,
        };
        if untolerated_taint(std::slice::from_ref(&t), tolerations).is_some() {
            return Some("node(s) were unschedulable".into());
        }
    }
    if !node_matches_pod(spec, node) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    if let Some(t) = untolerated_taint(node_spec.taints.as_deref().unwrap_or(&[]), tolerations) {
        return Some(taint_text(t));
    }
    None
}

/// Pure decision for one pod: the best node's name, or kube-scheduler's
/// "0/N nodes are available: ..." message.
pub fn pick_node(pod: &Pod, nodes: &[Arc<Node>], load: &Load) -> Result<String, String> {
    if nodes.is_empty() {
        return Err("no nodes available to schedule pods".into());
    }
    let owner = owner_uid(pod);
    let wanted_ports = host_ports(pod);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<((usize, usize), &str)> = None;
    for n in nodes {
        let name = n.metadata.name.as_deref().unwrap_or("");
        let why_not = filter(pod, n).or_else(|| {
            load.ports_taken(name, &wanted_ports)
                .then(|| "node(s) didn't have free ports for the requested pod ports".to_string())
        });
        match why_not {
            Some(r) => *reasons.entry(r).or_default() += 1,
            None => {
                let key = (load.score(name, owner), name);
                if best.is_none_or(|b| key < b) {
                    best = Some(key);
                }
            }
        }
    }
    match best {
        Some((_, name)) => Ok(name.to_string()),
        None => {
            let parts: Vec<String> = reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
            Err(format!(
                "0/{} nodes are available: {}.",
                nodes.len(),
                parts.join(", ")
            ))
        }
    }
}

/// Runs the scheduler with caches of its own until cancelled.
pub async fn run(client: kube::Client, resync: Duration) -> Result<(), Error> {
    run_with(Caches::new(client), resync).await
}

/// Runs the scheduler over shared caches until cancelled.
pub async fn run_with(caches: Arc<Caches>, resync: Duration) -> Result<(), Error> {
    let wake = Arc::new(Notify::new());
    caches.nodes().wake_on_change(&wake);
    caches.pods().wake_on_change(&wake);
    caches.nodes().ready().await;
    caches.pods().ready().await;
    let mut s = Scheduler {
        caches,
        assumed: HashMap::new(),
        binding: tokio::task::JoinSet::new(),
        permits: Arc::new(tokio::sync::Semaphore::new(PARALLEL_BINDS)),
        wake: wake.clone(),
    };
    crate::drive!("scheduler", wake, resync, s.pass().await)
}

struct Scheduler {
    caches: Arc<Caches>,
    /// Pods we bound that the cache does not show bound yet: uid -> (node, when).
    assumed: HashMap<String, (String, Instant)>,
    /// Bindings in flight (aborted if the scheduler is dropped).
    binding: tokio::task::JoinSet<(String, Outcome)>,
    /// Bounds the bindings in flight.
    permits: Arc<tokio::sync::Semaphore>,
    /// Wakes the loop when a binding fails.
    wake: Arc<Notify>,
}

enum Outcome {
    Bound,
    Raced,
    Failed,
}

impl Scheduler {
    async fn pass(&mut self) -> Next {
        let nodes = self.caches.nodes().all();
        let pods = self.caches.pods().all();
        let mut load = Load::from_pods(&pods);
        // Forget assumptions the cache has caught up with (or that expired).
        let by_uid: HashMap<&str, &Arc<Pod>> = pods
            .iter()
            .filter_map(|p| Some((p.metadata.uid.as_deref()?, p)))
            .collect();
        self.assumed.retain(|uid, (_, at)| {
            by_uid
                .get(uid.as_str())
                .is_some_and(|p| wants_scheduling(p))
                && at.elapsed() < ASSUME_TTL
        });
        // What an assumption counts is read from the pod itself: the
        // retain above kept only pods still in the cache.
        for (uid, (node, _)) in &self.assumed {
            if let Some(p) = by_uid.get(uid.as_str()) {
                load.add_pod(node, p);
            }
        }
        let mut pending: Vec<&Arc<Pod>> = pods
            .iter()
            .filter(|p| {
                wants_scheduling(p)
                    && !self
                        .assumed
                        .contains_key(p.metadata.uid.as_deref().unwrap_or(""))
            })
            .collect();
        pending.sort_by(|a, b| {
            (
                &a.metadata.creation_timestamp,
                &a.metadata.namespace,
                &a.metadata.name,
            )
                .cmp(&(
                    &b.metadata.creation_timestamp,
                    &b.metadata.namespace,
                    &b.metadata.name,
                ))
        });
        let mut binds = Vec::new();
        let mut unschedulable = Vec::new();
        for p in pending {
            match pick_node(p, &nodes, &load) {
                Ok(node) => {
                    load.add_pod(&node, p);
                    self.assumed.insert(
                        p.metadata.uid.clone().unwrap_or_default(),
                        (node.clone(), Instant::now()),
                    );
                    binds.push(((**p).clone(), node));
                }
                Err(msg) => unschedulable.push(((**p).clone(), msg)),
            }
        }
        let client = self.caches.client().clone();
        // Bindings run in the background (at most PARALLEL_BINDS at once),
        // so a pod created while others are being bound is not held up by
        // them; the assumptions keep the next pass from binding them twice.
        for (p, node) in binds {
            let client = client.clone();
            let permits = self.permits.clone();
            let wake = self.wake.clone();
            self.binding.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let uid = p.metadata.uid.clone().unwrap_or_default();
                let out = bind(&client, p, node).await;
                if !matches!(out, Outcome::Bound) {
                    wake.notify_one();
                }
                (uid, out)
            });
        }
        let mut next = Next::Idle;
        while let Some(done) = self.binding.try_join_next() {
            let Ok((uid, out)) = done else { continue };
            match out {
                Outcome::Bound => {}
                Outcome::Raced => {
                    self.assumed.remove(&uid);
                }
                Outcome::Failed => {
                    self.assumed.remove(&uid);
                    next = Next::After(RETRY);
                }
            }
        }
        for (p, msg) in unschedulable {
            if let Err(e) = report_unschedulable(&client, &p, &msg).await {
                crate::log_write_error("scheduler", "unschedulable status", &e);
                next = next.min(Next::After(RETRY));
            }
        }
        next
    }
}

async fn bind(client: &kube::Client, p: Pod, node: String) -> Outcome {
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    let name = p.metadata.name.clone().unwrap_or_default();
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: p.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.clone()),
            ..Default::default()
        },
    };
    match api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => {
            tracing::debug!(pod = %format!("{ns}/{name}"), %node, "bound");
            let msg = format!("Successfully assigned {ns}/{name} to {node}");
            let client = client.clone();
            // The event is for people reading `kubectl describe`; it must
            // not delay the next binding nor compete with a burst of pod
            // starts for the API server's writes, so it goes a moment later.
            tokio::spawn(async move {
                tokio::time::sleep(EVENT_DELAY).await;
                if let Err(e) = record_event(&client, &p, "Normal", "Scheduled", &msg).await {
                    tracing::debug!(error = %e, "scheduled event not recorded");
                }
            });
            Outcome::Bound
        }
        Err(e) if crate::benign(&e) => {
            tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "binding raced");
            Outcome::Raced
        }
        Err(e) => {
            tracing::warn!(pod = %format!("{ns}/{name}"), %node, error = %e, "binding failed (will retry)");
            Outcome::Failed
        }
    }
}

/// Sets PodScheduled=False/Unschedulable and records a FailedScheduling
/// event, unless the pod already says exactly that.
async fn report_unschedulable(
    client: &kube::Client,
    p: &Pod,
    msg: &str,
) -> Result<(), kube::Error> {
    let conds = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if conds.iter().any(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && c.message.as_deref() == Some(msg)
    }) {
        return Ok(());
    }
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    let name = p.metadata.name.clone().unwrap_or_default();
    tracing::info!(pod = %format!("{ns}/{name}"), reason = msg, "unschedulable");
    let mut conds: Vec<PodCondition> = conds
        .into_iter()
        .filter(|c| c.type_ != "PodScheduled")
        .collect();
    conds.push(PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        reason: Some("Unschedulable".into()),
        message: Some(msg.to_string()),
        last_transition_time: Some(crate::util::now()),
        ..Default::default()
    });
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
    let patch = json!({"metadata": {"resourceVersion": p.metadata.resource_version}, "status": {"conditions": conds}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    record_event(client, p, "Warning", "FailedScheduling", msg).await
}

/// Records a core/v1 Event about a pod from `default-scheduler` (what
/// `kubectl describe pod` lists).
pub async fn record_event(
    client: &kube::Client,
    p: &Pod,
    type_: &str,
    reason: &str,
    msg: &str,
) -> Result<(), kube::Error> {
    record_event_for(client, "default-scheduler", p, type_, reason, msg).await
}

/// Records a core/v1 Event about `obj` from `component` (repeats are
/// counted on one Event: [`crate::events`]).
pub async fn record_event_for<K: kube::Resource<DynamicType = ()>>(
    client: &kube::Client,
    component: &str,
    obj: &K,
    type_: &str,
    reason: &str,
    msg: &str,
) -> Result<(), kube::Error> {
    let source = crate::events::Source {
        component: component.into(),
        host: None,
    };
    crate::events::record(client, &source, obj, type_, reason, msg).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, PodSpec, Toleration};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn node(name: &str, ready: bool, labels: &[(&str, &str)], taints: Vec<Taint>) -> Arc<Node> {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n.spec = Some(NodeSpec {
            taints: Some(taints),
            ..Default::default()
        });
        n.status = Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        Arc::new(n)
    }

    fn pod(owner: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("p".into());
        p.spec = Some(PodSpec::default());
        if let Some(o) = owner {
            p.metadata.owner_references = Some(vec![OwnerReference {
                uid: o.into(),
                controller: Some(true),
                ..Default::default()
            }]);
        }
        p
    }

    #[test]
    fn spreads_by_owner_then_total_then_name() {
        let nodes = vec![
            node("b", true, &[], vec![]),
            node("a", true, &[], vec![]),
            node("c", true, &[], vec![]),
        ];
        let mut load = Load::default();
        assert_eq!(pick_node(&pod(None), &nodes, &load).unwrap(), "a");
        load.add("a", Some("rs1"));
        load.add("b", None);
        load.add("b", None);
        // Owner rs1 already has a pod on a: b and c have none of rs1; c has fewer pods.
        assert_eq!(pick_node(&pod(Some("rs1")), &nodes, &load).unwrap(), "c");
        // Without an owner: a and c have 1 and 0.
        assert_eq!(pick_node(&pod(None), &nodes, &load).unwrap(), "c");
    }

    #[test]
    fn filters_and_explains_like_kube_scheduler() {
        let gpu = Taint {
            key: "gpu".into(),
            value: Some("yes".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let nodes = vec![
            node("a", false, &[], vec![]),
            node("b", true, &[("disk", "ssd")], vec![gpu.clone()]),
            node("c", true, &[], vec![]),
        ];
        let mut p = pod(None);
        p.spec.as_mut().unwrap().node_selector =
            Some([("disk".to_string(), "ssd".to_string())].into());
        let err = pick_node(&p, &nodes, &Load::default()).unwrap_err();
        assert_eq!(
            err,
            "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {gpu: yes}, 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }."
        );
        p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("gpu".into()),
            operator: Some("Equal".into()),
            value: Some("yes".into()),
            ..Default::default()
        }]);
        assert_eq!(pick_node(&p, &nodes, &Load::default()).unwrap(), "b");
        assert_eq!(
            pick_node(&p, &[], &Load::default()).unwrap_err(),
            "no nodes available to schedule pods"
        );
    }

    fn with_host_port(mut p: Pod, port: i32, ip: Option<&str>) -> Pod {
        p.spec.as_mut().unwrap().containers = vec![k8s_openapi::api::core::v1::Container {
            name: "c".into(),
            ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                container_port: 80,
                host_port: Some(port),
                host_ip: ip.map(String::from),
                ..Default::default()
            }]),
            ..Default::default()
        }];
        p
    }

    #[test]
    fn a_host_port_is_taken_once_per_node() {
        let nodes = vec![node("a", true, &[], vec![]), node("b", true, &[], vec![])];
        let mut load = Load::default();
        let web = with_host_port(pod(None), 8080, None);
        load.claim("a", host_ports(&web));
        // The same port goes to the other node, another port anywhere.
        assert_eq!(pick_node(&web, &nodes, &load).unwrap(), "b");
        assert_eq!(
            pick_node(&with_host_port(pod(None), 8081, None), &nodes, &load).unwrap(),
            "a"
        );
        load.claim("b", host_ports(&web));
        assert_eq!(
            pick_node(&web, &nodes, &load).unwrap_err(),
            "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports."
        );
        // A wildcard claim conflicts with a specific address; UDP does not
        // conflict with TCP.
        let on_ip = with_host_port(pod(None), 8080, Some("172.18.0.2"));
        assert!(pick_node(&on_ip, &nodes, &load).is_err());
        let mut udp = with_host_port(pod(None), 8080, None);
        udp.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[0]
            .protocol = Some("UDP".into());
        assert_eq!(pick_node(&udp, &nodes, &load).unwrap(), "a");
        // Two specific addresses do not conflict.
        let mut specific = Load::default();
        specific.claim(
            "a",
            host_ports(&with_host_port(pod(None), 9090, Some("10.0.0.1"))),
        );
        let other_ip = with_host_port(pod(None), 9090, Some("10.0.0.2"));
        assert!(!specific.ports_taken("a", &host_ports(&other_ip)));
    }

    #[test]
    fn only_pending_pods_of_this_scheduler() {
        let mut p = pod(None);
        assert!(wants_scheduling(&p));
        p.spec.as_mut().unwrap().scheduler_name = Some("other".into());
        assert!(!wants_scheduling(&p));
        let mut p = pod(None);
        p.spec.as_mut().unwrap().node_name = Some("a".into());
        assert!(!wants_scheduling(&p));
    }
}
