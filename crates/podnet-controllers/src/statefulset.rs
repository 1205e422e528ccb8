//! StatefulSet → pods with stable identities: `<set>-0` … `<set>-(N-1)`,
//! each with `spec.hostname` = its name and `spec.subdomain` = the set's
//! `serviceName` (so the headless Service gives it a stable DNS name), and
//! the labels `statefulset.kubernetes.io/pod-name`,
//! `apps.kubernetes.io/pod-index` and `controller-revision-hash`.
//!
//! `OrderedReady` creates ordinal N+1 only once 0..N are Running and Ready
//! and removes surplus pods from the highest ordinal, one at a time;
//! `Parallel` does both at once. A deleted or finished pod comes back with
//! the same name. A changed template rolls from the highest ordinal down
//! to `partition`, one pod at a time, each only once the others are Ready
//! (`OnDelete` waits for pods to be deleted by hand).
//!
//! The lab provisions no volumes: each `volumeClaimTemplates` entry becomes
//! an `emptyDir` volume of that name in every pod, and the set gets a
//! Warning event saying so. Revisions are template hashes; the template of
//! an older revision is remembered in memory only, so a pod below the
//! partition that is recreated after a controller restart gets the newest
//! template.
//!
//! A pod is recreated under its old name only [`NAME_REUSE_DELAY`] after
//! the controller found the old one gone: `kubectl delete pod web-1`
//! (kubectl up to 1.35) waits for a DELETED event of the name, and hangs
//! if the old pod vanished and a new one appeared under the name between
//! its list and its first look at it (kubernetes/kubectl#1803). A real
//! kubelet takes that long to stop a pod; the lab's confirms at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, Pod, PodTemplateSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::Notify;

use crate::replicaset::{Expectations, create_pods, delete_pods, pod_from_template};
use crate::scheduler::record_event_for;
use crate::util::{
    controller_of, is_available, is_ready, is_terminal, is_terminating, labels_of, template_hash,
};
use crate::{Caches, Error, Next, RETRY};

/// How long a name stays unused after its pod was found gone (see the
/// module doc): well over kubectl's 100 ms cache-sync poll.
pub const NAME_REUSE_DELAY: Duration = Duration::from_secs(1);

/// The label naming a StatefulSet pod (a Service may select one pod by it).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label carrying a StatefulSet pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// The label carrying the revision a pod was made from.
pub const REVISION_LABEL: &str = crate::daemonset::REVISION_LABEL;

const COMPONENT: &str = "statefulset-controller";

/// The ordinal of a pod named `<set>-<N>`, if it is one of `set`'s names.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok()
}

/// The revision name of a template: `<set>-<hash>`, as pods carry it in
/// `controller-revision-hash` and the status in `updateRevision`.
pub fn revision_of(sts: &StatefulSet) -> String {
    let spec = sts.spec.clone().unwrap_or_default();
    format!(
        "{}-{}",
        sts.metadata.name.as_deref().unwrap_or(""),
        // No collisionCount yet counts as 0, as kube-controller-manager
        // reads it: else the revision changes when the first status lands
        // and the pods made before it are rolled at once.
        template_hash(
            &spec.template,
            Some(
                sts.status
                    .as_ref()
                    .and_then(|s| s.collision_count)
                    .unwrap_or(0)
            )
        )
    )
}

fn revision_label(p: &Pod) -> Option<&str> {
    labels_of(p).get(REVISION_LABEL).map(String::as_str)
}

/// Running, Ready and not going away: what OrderedReady waits for.
fn healthy(p: &Pod) -> bool {
    !is_terminating(p)
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && is_ready(p)
}

/// What one pass should do to a StatefulSet's pods.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Ordinals to create, each with whether it keeps the current (older)
    /// revision because it is below the rolling update's partition.
    pub create: Vec<(i32, bool)>,
    /// Pods to delete: finished pods (to be recreated), surplus pods, and
    /// the next pod of a rolling update.
    pub delete: Vec<String>,
}

/// Plans one pass over a StatefulSet and the pods it controls (including
/// terminating ones), given the revision its template has now.
pub fn plan(sts: &StatefulSet, pods: &[&Pod], update_rev: &str) -> Plan {
    let spec = sts.spec.clone().unwrap_or_default();
    let set = sts.metadata.name.as_deref().unwrap_or("");
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let start = spec.ordinals.and_then(|o| o.start).unwrap_or(0).max(0);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let strategy = spec.update_strategy.unwrap_or_default();
    let rolling = strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate";
    let partition = strategy
        .rolling_update
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0);
    let current_rev = sts
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .unwrap_or_else(|| update_rev.to_string());

    let mut by_ord: BTreeMap<i32, &Pod> = BTreeMap::new();
    let mut condemned: Vec<(i32, &Pod)> = Vec::new();
    for p in pods {
        let Some(ord) = ordinal_of(set, p.metadata.name.as_deref().unwrap_or("")) else {
            continue;
        };
        if (start..start + replicas).contains(&ord) {
            by_ord.insert(ord, p);
        } else {
            condemned.push((ord, p));
        }
    }

    let mut out = Plan::default();
    // Scale up and replace, in ordinal order.
    let mut all_healthy = true;
    for ord in start..start + replicas {
        if !parallel && !all_healthy {
            break;
        }
        match by_ord.get(&ord) {
            None => {
                let keep_current = rolling && ord - start < partition && current_rev != update_rev;
                out.create.push((ord, keep_current));
                all_healthy = false;
            }
            Some(p) if is_terminal(p) && !is_terminating(p) => {
                out.delete.push(p.metadata.name.clone().unwrap_or_default());
                all_healthy = false;
            }
            Some(p) if !healthy(p) => all_healthy = false,
            Some(_) => {}
        }
    }
    // Scale down from the highest ordinal.
    condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));
    if parallel {
        out.delete.extend(
            condemned
                .iter()
                .filter(|(_, p)| !is_terminating(p))
                .map(|(_, p)| p.metadata.name.clone().unwrap_or_default()),
        );
    } else if all_healthy
        && !condemned.iter().any(|(_, p)| is_terminating(p))
        && let Some((_, p)) = condemned.first()
    {
        out.delete.push(p.metadata.name.clone().unwrap_or_default());
        return out;
    }
    // Rolling update: from the highest ordinal down to the partition, one
    // pod at a time, only while every other pod is healthy.
    if rolling
        && all_healthy
        && condemned.is_empty()
        && out.create.is_empty()
        && out.delete.is_empty()
    {
        for idx in (partition..replicas).rev() {
            let Some(p) = by_ord.get(&(start + idx)) else {
                break;
            };
            if revision_label(p) != Some(update_rev) {
                out.delete.push(p.metadata.name.clone().unwrap_or_default());
                break;
            }
        }
    }
    out
}

/// The status a StatefulSet should show for its pods.
pub fn status_for(
    sts: &StatefulSet,
    pods: &[&Pod],
    update_rev: &str,
    now: Time,
) -> StatefulSetStatus {
    let spec = sts.spec.clone().unwrap_or_default();
    let want = spec.replicas.unwrap_or(1);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let live: Vec<&&Pod> = pods
        .iter()
        .filter(|p| !is_terminating(p) && !is_terminal(p))
        .collect();
    let count = |f: &dyn Fn(&Pod) -> bool| live.iter().filter(|p| f(p)).count() as i32;
    let prev = sts.status.clone().unwrap_or_default();
    let mut current_rev = prev
        .current_revision
        .clone()
        .unwrap_or_else(|| update_rev.to_string());
    let updated = count(&|p| revision_label(p) == Some(update_rev));
    if updated == want && live.len() as i32 == want {
        current_rev = update_rev.to_string();
    }
    let current = count(&|p| revision_label(p) == Some(current_rev.as_str()));
    StatefulSetStatus {
        replicas: live.len() as i32,
        ready_replicas: Some(count(&|p| healthy(p))),
        available_replicas: Some(count(&|p| {
            healthy(p) && is_available(p, min_ready, now.clone())
        })),
        current_replicas: Some(current),
        updated_replicas: Some(updated),
        current_revision: Some(current_rev),
        update_revision: Some(update_rev.to_string()),
        observed_generation: sts.metadata.generation,
        collision_count: Some(prev.collision_count.unwrap_or(0)),
        conditions: prev.conditions,
    }
}

/// The pod of ordinal `ord`, from `template` at `revision`.
pub fn stateful_pod(
    sts: &StatefulSet,
    ord: i32,
    template: &PodTemplateSpec,
    revision: &str,
) -> Pod {
    let set = sts.metadata.name.clone().unwrap_or_default();
    let name = format!("{set}-{ord}");
    let mut pod = pod_from_template(sts, Some(template), "");
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(name.clone());
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ord.to_string());
    labels.insert(REVISION_LABEL.into(), revision.into());
    let spec = sts.spec.clone().unwrap_or_default();
    let ps = pod.spec.get_or_insert_with(Default::default);
    ps.hostname = Some(name);
    if let Some(svc) = spec.service_name.filter(|s| !s.is_empty()) {
        ps.subdomain = Some(svc);
    }
    for claim in spec.volume_claim_templates.iter().flatten() {
        let Some(claim_name) = claim.metadata.name.clone() else {
            continue;
        };
        let volumes = ps.volumes.get_or_insert_with(Vec::new);
        if !volumes.iter().any(|v| v.name == claim_name) {
            volumes.push(Volume {
                name: claim_name,
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            });
        }
    }
    pod
}

/// Runs the StatefulSet controller with caches of its own until cancelled.
pub async fn run(client: kube::Client, resync: Duration) -> Result<(), Error> {
    run_with(Caches::new(client), resync).await
}

/// Runs the StatefulSet controller over shared caches until cancelled.
pub async fn run_with(caches: Arc<Caches>, resync: Duration) -> Result<(), Error> {
    let wake = Arc::new(Notify::new());
    caches.stateful_sets().wake_on_change(&wake);
    caches.pods().wake_on_change(&wake);
    caches.stateful_sets().ready().await;
    caches.pods().ready().await;
    let mut c = StsController {
        caches,
        expectations: Expectations::default(),
        templates: HashMap::new(),
        warned: HashSet::new(),
        seen: HashMap::new(),
        gone_at: HashMap::new(),
    };
    crate::drive!("statefulset", wake, resync, c.pass().await)
}

struct StsController {
    caches: Arc<Caches>,
    expectations: Expectations,
    /// Templates by revision name, so pods below a partition are recreated
    /// from their own revision (ControllerRevisions are not served).
    templates: HashMap<String, PodTemplateSpec>,
    /// Sets already warned about their volume claim templates.
    warned: HashSet<String>,
    /// The pod names of each set (by uid) in the last pass.
    seen: HashMap<String, HashSet<String>>,
    /// When a name seen before was found gone, by (set uid, pod name):
    /// its replacement waits until [`NAME_REUSE_DELAY`] after that.
    gone_at: HashMap<(String, String), Instant>,
}

impl StsController {
    async fn pass(&mut self) -> Next {
        let sets = self.caches.stateful_sets().all();
        let pods = self.caches.pods().all();
        let live: HashSet<&str> = sets
            .iter()
            .filter_map(|s| s.metadata.uid.as_deref())
            .collect();
        self.expectations.retain(&live);
        self.warned.retain(|u| live.contains(u.as_str()));
        self.seen.retain(|u, _| live.contains(u.as_str()));
        self.gone_at
            .retain(|(u, _), t| live.contains(u.as_str()) && t.elapsed() < NAME_REUSE_DELAY);
        let mut next = Next::Idle;
        for sts in &sets {
            if sts.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let uid = sts.metadata.uid.clone().unwrap_or_default();
            let owned: Vec<&Arc<Pod>> = pods
                .iter()
                .filter(|p| controller_of(p.as_ref()).is_some_and(|o| o.uid == uid))
                .collect();
            next = next.min(self.sync(sts, &uid, &owned).await);
        }
        next
    }

    async fn sync(&mut self, sts: &StatefulSet, uid: &str, owned: &[&Arc<Pod>]) -> Next {
        let client = self.caches.client().clone();
        let ns = sts.metadata.namespace.clone().unwrap_or_default();
        let name = sts.metadata.name.clone().unwrap_or_default();
        let spec = sts.spec.clone().unwrap_or_default();
        let update_rev = revision_of(sts);
        self.templates
            .entry(update_rev.clone())
            .or_insert_with(|| spec.template.clone());
        if spec
            .volume_claim_templates
            .as_ref()
            .is_some_and(|v| !v.is_empty())
            && self.warned.insert(uid.to_string())
        {
            let names: Vec<String> = spec
                .volume_claim_templates
                .iter()
                .flatten()
                .filter_map(|c| c.metadata.name.clone())
                .collect();
            let msg = format!(
                "the lab provisions no persistent volumes: volumeClaimTemplates [{}] become emptyDir volumes, whose data lives only as long as each pod",
                names.join(", ")
            );
            tracing::warn!(sts = %format!("{ns}/{name}"), "{msg}");
            if let Err(e) = record_event_for(
                &client,
                COMPONENT,
                sts,
                "Warning",
                "VolumeClaimTemplatesAsEmptyDir",
                &msg,
            )
            .await
            {
                tracing::debug!(error = %e, "event not recorded");
            }
        }
        let pods: Vec<&Pod> = owned.iter().map(|p| p.as_ref()).collect();
        let mut next = Next::Idle;
        if self.expectations.satisfied(uid, owned) {
            let plan = plan(sts, &pods, &update_rev);
            let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
            let current_rev = sts.status.as_ref().and_then(|s| s.current_revision.clone());
            let names: HashSet<String> = owned
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            let before = self.seen.insert(uid.to_string(), names.clone());
            for gone in before.iter().flatten().filter(|n| !names.contains(*n)) {
                self.gone_at
                    .entry((uid.to_string(), gone.clone()))
                    .or_insert_with(Instant::now);
            }
            // Lowest ordinals first, so a scale-down seen between batches
            // cuts the tail of the burst; names gone a moment ago wait.
            let mut create = plan.create.clone();
            create.retain(|(ord, _)| {
                let key = (uid.to_string(), format!("{name}-{ord}"));
                match self.gone_at.get(&key).map(Instant::elapsed) {
                    Some(e) if e < NAME_REUSE_DELAY => {
                        next = next.min(Next::After(NAME_REUSE_DELAY - e));
                        false
                    }
                    _ => true,
                }
            });
            create.sort_unstable();
            let make = |i: usize| {
                let (ord, keep_current) = create[i];
                match current_rev.as_ref().filter(|_| keep_current) {
                    Some(c) if self.templates.contains_key(c) => {
                        stateful_pod(sts, ord, &self.templates[c], c)
                    }
                    _ => stateful_pod(sts, ord, &spec.template, &update_rev),
                }
            };
            let sets = self.caches.stateful_sets();
            let wanted = || {
                sets.current(sts).map_or(0, |now| {
                    let replicas = now.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    create.iter().filter(|(o, _)| *o < replicas).count()
                })
            };
            let (made, refused) =
                create_pods(&api, create.len(), make, "statefulset", wanted).await;
            for pod_name in &made {
                let msg = format!("create Pod {pod_name} in StatefulSet {name} successful");
                let _ =
                    record_event_for(&client, COMPONENT, sts, "Normal", "SuccessfulCreate", &msg)
                        .await;
            }
            for e in &refused {
                let msg = format!("create Pod in StatefulSet {name} failed error: {e}");
                let _ = record_event_for(&client, COMPONENT, sts, "Warning", "FailedCreate", &msg)
                    .await;
            }
            if !refused.is_empty() {
                next = Next::After(RETRY);
            }
            let doomed: Vec<&Arc<Pod>> = owned
                .iter()
                .copied()
                .filter(|p| {
                    p.metadata
                        .name
                        .as_ref()
                        .is_some_and(|n| plan.delete.contains(n))
                })
                .collect();
            let (gone, failed) = delete_pods(&api, &doomed, "statefulset").await;
            for pod_name in &gone {
                let msg = format!("delete Pod {pod_name} in StatefulSet {name} successful");
                let _ =
                    record_event_for(&client, COMPONENT, sts, "Normal", "SuccessfulDelete", &msg)
                        .await;
            }
            if failed {
                next = Next::After(RETRY);
            }
            if !made.is_empty() || !gone.is_empty() {
                tracing::debug!(sts = %format!("{ns}/{name}"), created = ?made, deleted = ?gone, "statefulset pass");
            }
            self.expectations.expect(uid, made, gone);
        }
        let status = status_for(sts, &pods, &update_rev, crate::util::now());
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        if min_ready > 0 && status.available_replicas != status.ready_replicas {
            next = next.min(Next::After(Duration::from_secs(1)));
        }
        if sts.status.as_ref() != Some(&status) {
            let sts_api: kube::Api<StatefulSet> = kube::Api::namespaced(client, &ns);
            if let Err(e) = sts_api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": status})),
                )
                .await
            {
                crate::log_write_error("statefulset", "status", &e);
                next = next.min(Next::After(RETRY));
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    fn sts(replicas: i32, policy: &str, partition: i32) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1", "generation": 1},
            "spec": {"replicas": replicas, "serviceName": "nginx", "podManagementPolicy": policy,
                "selector": {"matchLabels": {"app": "web"}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": partition}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}]}
        }))
        .unwrap()
    }

    fn pod(name: &str, rev: &str, ready: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.labels = Some([(REVISION_LABEL.to_string(), rev.to_string())].into());
        p.status = Some(PodStatus {
            phase: Some(if ready { "Running" } else { "Pending" }.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    #[test]
    fn ordinals_are_parsed_strictly() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webby-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_in_order() {
        let s = sts(3, "OrderedReady", 0);
        assert_eq!(plan(&s, &[], "r1").create, vec![(0, false)]);
        let p0 = pod("web-0", "r1", false);
        assert!(
            plan(&s, &[&p0], "r1").create.is_empty(),
            "waits for web-0 to be Ready"
        );
        let p0 = pod("web-0", "r1", true);
        assert_eq!(plan(&s, &[&p0], "r1").create, vec![(1, false)]);
        // A deleted middle pod is recreated under its own name, first.
        let p2 = pod("web-2", "r1", true);
        assert_eq!(plan(&s, &[&p0, &p2], "r1").create, vec![(1, false)]);
    }

    #[test]
    fn parallel_creates_and_removes_all_at_once() {
        let s = sts(3, "Parallel", 0);
        assert_eq!(
            plan(&s, &[], "r1").create,
            vec![(0, false), (1, false), (2, false)]
        );
        let s = sts(1, "Parallel", 0);
        let ps = [
            pod("web-0", "r1", true),
            pod("web-1", "r1", false),
            pod("web-2", "r1", true),
        ];
        let refs: Vec<&Pod> = ps.iter().collect();
        assert_eq!(
            plan(&s, &refs, "r1").delete,
            vec!["web-2".to_string(), "web-1".to_string()]
        );
    }

    #[test]
    fn ordered_scale_down_takes_the_highest_first_and_waits_for_health() {
        let s = sts(1, "OrderedReady", 0);
        let ps = [
            pod("web-0", "r1", true),
            pod("web-1", "r1", true),
            pod("web-2", "r1", true),
        ];
        let refs: Vec<&Pod> = ps.iter().collect();
        assert_eq!(plan(&s, &refs, "r1").delete, vec!["web-2".to_string()]);
        let ps = [pod("web-0", "r1", false), pod("web-1", "r1", true)];
        let refs: Vec<&Pod> = ps.iter().collect();
        assert!(
            plan(&s, &refs, "r1").delete.is_empty(),
            "an unready pod holds the scale-down"
        );
    }

    #[test]
    fn rolling_update_goes_down_to_the_partition_one_pod_at_a_time() {
        let mut s = sts(3, "OrderedReady", 1);
        s.status = Some(StatefulSetStatus {
            current_revision: Some("r1".into()),
            ..Default::default()
        });
        let ps = [
            pod("web-0", "r1", true),
            pod("web-1", "r1", true),
            pod("web-2", "r1", true),
        ];
        let refs: Vec<&Pod> = ps.iter().collect();
        assert_eq!(plan(&s, &refs, "r2").delete, vec!["web-2".to_string()]);
        let ps = [
            pod("web-0", "r1", true),
            pod("web-1", "r1", true),
            pod("web-2", "r2", false),
        ];
        let refs: Vec<&Pod> = ps.iter().collect();
        assert!(
            plan(&s, &refs, "r2").delete.is_empty(),
            "waits for web-2 to be Ready"
        );
        let ps = [
            pod("web-0", "r1", true),
            pod("web-1", "r1", true),
            pod("web-2", "r2", true),
        ];
        let refs: Vec<&Pod> = ps.iter().collect();
        assert_eq!(plan(&s, &refs, "r2").delete, vec!["web-1".to_string()]);
        let ps = [
            pod("web-0", "r1", true),
            pod("web-1", "r2", true),
            pod("web-2", "r2", true),
        ];
        let refs: Vec<&Pod> = ps.iter().collect();
        assert_eq!(
            plan(&s, &refs, "r2"),
            Plan::default(),
            "web-0 is below the partition"
        );
        // Below the partition a missing pod keeps the current revision.
        let ps = [pod("web-1", "r2", true), pod("web-2", "r2", true)];
        let refs: Vec<&Pod> = ps.iter().collect();
        assert_eq!(plan(&s, &refs, "r2").create, vec![(0, true)]);
        let st = status_for(&s, &refs, "r2", crate::util::now());
        assert_eq!(
            (st.updated_replicas, st.current_replicas),
            (Some(2), Some(0))
        );
        assert_eq!(st.current_revision.as_deref(), Some("r1"));
    }

    #[test]
    fn status_settles_on_the_update_revision_when_all_pods_have_it() {
        let s = sts(2, "OrderedReady", 0);
        let ps = [pod("web-0", "r2", true), pod("web-1", "r2", true)];
        let refs: Vec<&Pod> = ps.iter().collect();
        let st = status_for(&s, &refs, "r2", crate::util::now());
        assert_eq!(st.replicas, 2);
        assert_eq!(st.ready_replicas, Some(2));
        assert_eq!(st.current_revision.as_deref(), Some("r2"));
        assert_eq!(st.current_replicas, Some(2));
        assert_eq!(st.observed_generation, Some(1));
    }

    #[test]
    fn pods_get_identity_labels_and_claims_as_empty_dirs() {
        let s = sts(1, "OrderedReady", 0);
        let p = stateful_pod(&s, 2, &s.spec.as_ref().unwrap().template, "web-abc");
        assert_eq!(p.metadata.name.as_deref(), Some("web-2"));
        let l = p.metadata.labels.unwrap();
        assert_eq!(l[POD_NAME_LABEL], "web-2");
        assert_eq!(l[POD_INDEX_LABEL], "2");
        assert_eq!(l[REVISION_LABEL], "web-abc");
        assert_eq!(l["app"], "web");
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let v = &spec.volumes.unwrap()[0];
        assert_eq!(v.name, "data");
        assert!(v.empty_dir.is_some());
        assert_eq!(p.metadata.owner_references.unwrap()[0].kind, "StatefulSet");
    }
}
