//! DaemonSet → one pod per eligible node: matching the template's
//! nodeSelector and required node affinity, with every NoSchedule and
//! NoExecute taint tolerated (a NotReady node's implied not-ready
//! NoSchedule taint too, for new pods). Pods get `spec.nodeName` directly (the
//! DaemonSet controller's own placement) and the tolerations the real
//! controller adds. A changed template rolls node by node within
//! `maxUnavailable`; status fields as `kubectl rollout status ds` reads them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, Taint, Toleration};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::Notify;

use crate::deployment::scaled;
use crate::replicaset::{Expectations, create_pods, delete_pods, pod_from_template};
use crate::util::{
    controller_of, is_active, is_available, is_ready, is_terminal, node_matches_pod, node_ready,
    template_hash, untolerated_taint,
};
use crate::{Caches, Error, Next, RETRY};

/// The label carrying the template hash of a DaemonSet pod.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// The tolerations the DaemonSet controller adds to its pods, so they run on
/// nodes that are unready, under pressure or cordoned.
pub fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut t = spec.tolerations.clone().unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        if !t
            .iter()
            .any(|x| x.key.as_deref() == Some(key) && x.effect.as_deref() == Some(effect))
        {
            t.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Default::default()
            });
        }
    };
    add("node.kubernetes.io/not-ready", "NoExecute");
    add("node.kubernetes.io/unreachable", "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add("node.kubernetes.io/unschedulable", "NoSchedule");
    if spec.host_network == Some(true) {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
    t
}

/// Whether a DaemonSet's pods belong on `node` (ignoring readiness).
pub fn node_fits(ds: &DaemonSet, node: &Node) -> bool {
    let Some(spec) = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return false;
    };
    if node.metadata.deletion_timestamp.is_some() || !node_matches_pod(spec, node) {
        return false;
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[]);
    untolerated_taint(taints, &daemon_tolerations(spec)).is_none()
}

/// Whether a new pod of the DaemonSet may start on `node`: it fits, and
/// if the node is NotReady the pod tolerates the not-ready NoSchedule
/// taint a real cluster's node lifecycle controller puts there (a pod
/// network's DaemonSet must, to make the node Ready). A running pod is
/// not removed when its node goes NotReady.
pub fn node_takes_new(ds: &DaemonSet, node: &Node) -> bool {
    if !node_fits(ds, node) {
        return false;
    }
    if node_ready(node) {
        return true;
    }
    let Some(spec) = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return false;
    };
    let t = Taint {
        key: "node.kubernetes.io/not-ready".into(),
        effect: "NoSchedule".into(),
        value: None,
        time_added: None,
    };
    untolerated_taint(std::slice::from_ref(&t), &daemon_tolerations(spec)).is_none()
}

/// Runs the DaemonSet controller with caches of its own until cancelled.
pub async fn run(client: kube::Client, resync: Duration) -> Result<(), Error> {
    run_with(Caches::new(client), resync).await
}

/// Runs the DaemonSet controller over shared caches until cancelled.
pub async fn run_with(caches: Arc<Caches>, resync: Duration) -> Result<(), Error> {
    let wake = Arc::new(Notify::new());
    caches.daemon_sets().wake_on_change(&wake);
    caches.nodes().wake_on_change(&wake);
    caches.pods().wake_on_change(&wake);
    caches.daemon_sets().ready().await;
    caches.nodes().ready().await;
    caches.pods().ready().await;
    let mut c = DsController {
        caches,
        expectations: Expectations::default(),
    };
    crate::drive!("daemonset", wake, resync, c.pass().await)
}

struct DsController {
    caches: Arc<Caches>,
    expectations: Expectations,
}

impl DsController {
    async fn pass(&mut self) -> Next {
        let sets = self.caches.daemon_sets().all();
        let nodes = self.caches.nodes().all();
        let pods = self.caches.pods().all();
        let live: HashSet<&str> = sets
            .iter()
            .filter_map(|d| d.metadata.uid.as_deref())
            .collect();
        self.expectations.retain(&live);
        let mut next = Next::Idle;
        for ds in &sets {
            if ds.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let uid = ds.metadata.uid.clone().unwrap_or_default();
            let owned: Vec<&Arc<Pod>> = pods
                .iter()
                .filter(|p| controller_of(p.as_ref()).is_some_and(|o| o.uid == uid))
                .collect();
            next = next.min(self.sync(ds, &uid, &nodes, &owned).await);
        }
        next
    }

    async fn sync(
        &mut self,
        ds: &DaemonSet,
        uid: &str,
        nodes: &[Arc<Node>],
        owned: &[&Arc<Pod>],
    ) -> Next {
        let ns = ds.metadata.namespace.clone().unwrap_or_default();
        let name = ds.metadata.name.clone().unwrap_or_default();
        let api: kube::Api<Pod> = kube::Api::namespaced(self.caches.client().clone(), &ns);
        let Some(spec) = ds.spec.as_ref() else {
            return Next::Idle;
        };
        let hash = template_hash(
            &spec.template,
            ds.status.as_ref().and_then(|s| s.collision_count),
        );
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now = crate::util::now();
        let fits: HashMap<&str, bool> = nodes
            .iter()
            .map(|n| (n.metadata.name.as_deref().unwrap_or(""), node_fits(ds, n)))
            .collect();
        let mut by_node: BTreeMap<&str, Vec<&Arc<Pod>>> = BTreeMap::new();
        for p in owned {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or("");
            by_node.entry(node).or_default().push(p);
        }
        let mut next = Next::Idle;
        if self.expectations.satisfied(uid, owned) {
            let mut create_on: Vec<String> = Vec::new();
            let mut delete: Vec<&Arc<Pod>> = Vec::new();
            for (node, pods) in &by_node {
                let fit = fits.get(node).copied().unwrap_or(false);
                let mut active: Vec<&Arc<Pod>> =
                    pods.iter().copied().filter(|p| is_active(p)).collect();
                // Finished pods are replaced (and removed), as the real controller does.
                delete.extend(
                    pods.iter()
                        .copied()
                        .filter(|p| is_terminal(p) && p.metadata.deletion_timestamp.is_none()),
                );
                if !fit {
                    delete.extend(active);
                    continue;
                }
                active.sort_by(|a, b| {
                    a.metadata
                        .creation_timestamp
                        .cmp(&b.metadata.creation_timestamp)
                });
                if active.len() > 1 {
                    delete.extend(active[1..].iter().copied());
                }
            }
            for n in nodes {
                let node = n.metadata.name.as_deref().unwrap_or("");
                if node_takes_new(ds, n)
                    && by_node
                        .get(node)
                        .is_none_or(|ps| !ps.iter().any(|p| is_active(p)))
                {
                    create_on.push(node.to_string());
                }
            }
            // Rolling update: replace pods of an old template within maxUnavailable.
            let rolling = spec
                .update_strategy
                .as_ref()
                .and_then(|s| s.type_.as_deref())
                .unwrap_or("RollingUpdate")
                == "RollingUpdate";
            if rolling {
                let desired = fits.iter().filter(|(_, f)| **f).count() as i32;
                let max_unavailable = scaled(
                    spec.update_strategy
                        .as_ref()
                        .and_then(|s| s.rolling_update.as_ref())
                        .and_then(|r| r.max_unavailable.as_ref()),
                    desired,
                    true,
                    "1",
                )
                .max(1);
                let mut unavailable = create_on.len() as i32;
                let mut old_available = Vec::new();
                for (node, pods) in &by_node {
                    if !fits.get(node).copied().unwrap_or(false) {
                        continue;
                    }
                    let Some(p) = pods
                        .iter()
                        .copied()
                        .filter(|p| is_active(p))
                        .min_by(|a, b| {
                            a.metadata
                                .creation_timestamp
                                .cmp(&b.metadata.creation_timestamp)
                        })
                    else {
                        continue;
                    };
                    let old = crate::util::labels_of(p.as_ref()).get(REVISION_LABEL) != Some(&hash);
                    let avail = is_available(p, min_ready, now.clone());
                    if !avail {
                        unavailable += 1;
                        if old {
                            delete.push(p);
                        }
                    } else if old {
                        old_available.push(p);
                    }
                }
                for p in old_available {
                    if unavailable >= max_unavailable {
                        break;
                    }
                    delete.push(p);
                    unavailable += 1;
                }
            }
            if !create_on.is_empty() {
                let daemon_sets = self.caches.daemon_sets();
                let wanted = || daemon_sets.current(ds).map_or(0, |_| create_on.len());
                let (made, refused) = create_pods(
                    &api,
                    create_on.len(),
                    |i| daemon_pod(ds, &hash, &create_on[i]),
                    "daemonset",
                    wanted,
                )
                .await;
                if !refused.is_empty() {
                    next = Next::After(RETRY);
                }
                tracing::debug!(ds = %format!("{ns}/{name}"), nodes = ?create_on, created = made.len(), failed = refused.len(), "created daemon pods");
                let client = api.clone().into_client();
                crate::events::record_later(
                    &client,
                    "daemonset-controller",
                    ds,
                    "Normal",
                    "SuccessfulCreate",
                    made.iter().map(|p| format!("Created pod: {p}")).collect(),
                );
                crate::events::record_later(
                    &client,
                    "daemonset-controller",
                    ds,
                    "Warning",
                    "FailedCreate",
                    refused
                        .iter()
                        .map(|e| format!("Error creating: {e}"))
                        .collect(),
                );
                self.expectations.expect(uid, made, []);
            }
            if !delete.is_empty() {
                let (gone, failed) = delete_pods(&api, &delete, "daemonset").await;
                crate::events::record_later(
                    &api.clone().into_client(),
                    "daemonset-controller",
                    ds,
                    "Normal",
                    "SuccessfulDelete",
                    gone.iter().map(|p| format!("Deleted pod: {p}")).collect(),
                );
                self.expectations.expect(uid, [], gone);
                if failed {
                    next = Next::After(RETRY);
                }
            }
        }
        let status = status_for(ds, &hash, nodes, owned);
        if min_ready > 0 && status.number_available != Some(status.number_ready) {
            next = next.min(Next::After(Duration::from_secs(1)));
        }
        if ds.status.as_ref() != Some(&status) {
            let ds_api: kube::Api<DaemonSet> =
                kube::Api::namespaced(self.caches.client().clone(), &ns);
            if let Err(e) = ds_api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": status})),
                )
                .await
            {
                crate::log_write_error("daemonset", "status", &e);
                next = next.min(Next::After(RETRY));
            }
        }
        next
    }
}

/// The pod a DaemonSet runs on `node`.
fn daemon_pod(ds: &DaemonSet, hash: &str, node: &str) -> Pod {
    let spec = ds.spec.clone().unwrap_or_default();
    let name = ds.metadata.name.clone().unwrap_or_default();
    let mut pod = pod_from_template(ds, Some(&spec.template), &format!("{name}-"));
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(REVISION_LABEL.into(), hash.into());
    labels.insert(
        "pod-template-generation".into(),
        ds.metadata.generation.unwrap_or(1).to_string(),
    );
    let ps = pod.spec.get_or_insert_with(Default::default);
    ps.tolerations = Some(daemon_tolerations(ps));
    ps.node_name = Some(node.into());
    pod
}

/// The status a DaemonSet should show.
pub fn status_for(
    ds: &DaemonSet,
    hash: &str,
    nodes: &[Arc<Node>],
    owned: &[&Arc<Pod>],
) -> DaemonSetStatus {
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let now = crate::util::now();
    let mut desired = 0;
    let (mut current, mut mis, mut ready, mut updated, mut available) = (0, 0, 0, 0, 0);
    for n in nodes {
        let node = n.metadata.name.as_deref().unwrap_or("");
        let fit = node_fits(ds, n);
        let wanted = fit;
        let pod = owned
            .iter()
            .filter(|p| {
                is_active(p) && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
            })
            .min_by(|a, b| {
                a.metadata
                    .creation_timestamp
                    .cmp(&b.metadata.creation_timestamp)
            });
        if wanted {
            desired += 1;
        }
        match pod {
            Some(p) if fit => {
                if !wanted {
                    // A pod kept on a node that went NotReady still counts.
                    desired += 1;
                }
                current += 1;
                if is_ready(p) {
                    ready += 1;
                }
                if is_available(p, min_ready, now.clone()) {
                    available += 1;
                }
                if crate::util::labels_of(p.as_ref())
                    .get(REVISION_LABEL)
                    .map(String::as_str)
                    == Some(hash)
                {
                    updated += 1;
                }
            }
            Some(_) => mis += 1,
            None => {}
        }
    }
    DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: current,
        number_misscheduled: mis,
        number_ready: ready,
        updated_number_scheduled: Some(updated),
        number_available: Some(available),
        number_unavailable: Some(desired - available),
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DaemonSetSpec;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, PodTemplateSpec, Taint};

    fn node(name: &str, labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
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
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        n
    }

    #[test]
    fn fits_by_selector_and_taints_with_daemon_tolerations() {
        let ds = DaemonSet {
            spec: Some(DaemonSetSpec {
                template: PodTemplateSpec {
                    spec: Some(PodSpec {
                        node_selector: Some([("role".to_string(), "edge".to_string())].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(node_fits(&ds, &node("a", &[("role", "edge")], vec![])));
        assert!(!node_fits(&ds, &node("b", &[], vec![])));
        let cordoned = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            value: None,
            time_added: None,
        };
        assert!(node_fits(
            &ds,
            &node("c", &[("role", "edge")], vec![cordoned])
        ));
        let cp = Taint {
            key: "node-role.kubernetes.io/control-plane".into(),
            effect: "NoSchedule".into(),
            value: None,
            time_added: None,
        };
        assert!(!node_fits(&ds, &node("d", &[("role", "edge")], vec![cp])));
    }
}
