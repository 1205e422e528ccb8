//! ReplicaSet → Pods: keeps `spec.replicas` active pods owned by each
//! ReplicaSet (creating `<rs>-<5 random chars>` pods from the template,
//! deleting the least useful ones first), replaces deleted and failed pods,
//! and writes the status fields kubectl and the Deployment controller read.
//!
//! Like kube-controller-manager it keeps "expectations": after creating or
//! deleting pods it waits until the watch shows them before acting on that
//! ReplicaSet again, so a lagging cache never causes extra pods.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use tokio::sync::Notify;

use crate::util::{
    controlled_by, is_active, is_available, is_ready, label_selector_matches, labels_of,
    map_selector_matches, owner_ref,
};
use crate::{Caches, Error, Next, RETRY};

/// How many pod writes of one owner are in flight at once.
const PARALLEL_WRITES: usize = 16;
/// How long unmet expectations hold an owner back (a lost watch event must
/// not block it forever).
const EXPECTATION_TTL: Duration = Duration::from_secs(10);

/// Pods an owner created or deleted that the cache does not reflect yet.
#[derive(Debug, Default)]
pub(crate) struct Expectations {
    by_owner: HashMap<String, (HashSet<String>, HashSet<String>, Instant)>,
}

impl Expectations {
    /// Records pods created (by name) and deleted (by name) for `owner`.
    pub(crate) fn expect(
        &mut self,
        owner: &str,
        created: impl IntoIterator<Item = String>,
        deleted: impl IntoIterator<Item = String>,
    ) {
        let e = self
            .by_owner
            .entry(owner.to_string())
            .or_insert_with(|| (HashSet::new(), HashSet::new(), Instant::now()));
        e.0.extend(created);
        e.1.extend(deleted);
        e.2 = Instant::now();
    }

    /// Whether the cache shows everything `owner` did; forgets met ones.
    pub(crate) fn satisfied(&mut self, owner: &str, owned: &[&Arc<Pod>]) -> bool {
        let Some((adds, dels, at)) = self.by_owner.get_mut(owner) else {
            return true;
        };
        let seen: HashMap<&str, &Arc<Pod>> = owned
            .iter()
            .filter_map(|p| Some((p.metadata.name.as_deref()?, *p)))
            .collect();
        adds.retain(|n| !seen.contains_key(n.as_str()));
        dels.retain(|n| seen.get(n.as_str()).is_some_and(|p| is_active(p)));
        if (adds.is_empty() && dels.is_empty()) || at.elapsed() > EXPECTATION_TTL {
            self.by_owner.remove(owner);
            true
        } else {
            false
        }
    }

    /// Forgets owners that no longer exist.
    pub(crate) fn retain(&mut self, live: &HashSet<&str>) {
        self.by_owner.retain(|k, _| live.contains(k.as_str()));
    }
}

/// The order in which surplus pods go (kube's `ActivePods` ranking): not
/// yet on a node, then Pending, then not Ready, then Ready for the shortest
/// time, then the newest.
pub fn deletion_order(pods: &mut [&Arc<Pod>]) {
    fn key(
        p: &Pod,
    ) -> (
        bool,
        u8,
        bool,
        std::cmp::Reverse<Option<Time>>,
        std::cmp::Reverse<Option<Time>>,
    ) {
        let assigned = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Pending") => 0,
            Some("Running") => 2,
            _ => 1,
        };
        let ready_since = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
            .and_then(|c| c.last_transition_time.clone());
        (
            assigned,
            phase,
            is_ready(p),
            std::cmp::Reverse(ready_since),
            std::cmp::Reverse(p.metadata.creation_timestamp.clone()),
        )
    }
    pods.sort_by_cached_key(|p| key(p));
}

/// A pod for `owner` from `template` (labels, annotations, spec), named
/// `<prefix><5 random chars>` by the API server.
pub(crate) fn pod_from_template<K: kube::Resource<DynamicType = ()>>(
    owner: &K,
    template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>,
    prefix: &str,
) -> Pod {
    let tmeta = template
        .and_then(|t| t.metadata.clone())
        .unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(prefix.to_string()),
            namespace: owner.meta().namespace.clone(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![owner_ref(owner)]),
            ..Default::default()
        },
        spec: template.and_then(|t| t.spec.clone()),
        status: None,
    }
}

/// kube-controller-manager's `SlowStartInitialBatchSize`: the first batch
/// of a burst of creates is this big, and each later batch twice the last.
const SLOW_START_INITIAL: usize = 1;

/// Runs up to `total` writes (`write(i)` for i in `0..total`) in
/// slow-start batches of 1, 2, 4, 8, … as kube-controller-manager's
/// `slowStartBatch` does, each batch with at most [`PARALLEL_WRITES`] in
/// flight. It stops at the end of the first batch in which a write failed,
/// so a burst the API server refuses (a terminating namespace, RBAC, a
/// quota) costs one failed write instead of hundreds. Before each batch it
/// asks `wanted` how many of the `total` are still wanted as the caches
/// show the owner now: a scale-down or a delete issued in the middle of a
/// burst stops it there instead of after every pod was made (which the
/// next pass would then have to delete). Returns what the successful
/// writes gave and the errors of the failed ones.
pub(crate) async fn slow_start<T, E, Fut>(
    total: usize,
    mut wanted: impl FnMut() -> usize,
    write: impl Fn(usize) -> Fut,
) -> (Vec<T>, Vec<E>)
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut done = Vec::new();
    let mut next = 0;
    let mut batch = SLOW_START_INITIAL;
    loop {
        let limit = total.min(wanted());
        if next >= limit {
            return (done, Vec::new());
        }
        let size = batch.min(limit - next);
        let results: Vec<Result<T, E>> = futures::stream::iter(next..next + size)
            .map(&write)
            .buffer_unordered(PARALLEL_WRITES)
            .collect()
            .await;
        next += size;
        let mut failed = Vec::new();
        for r in results {
            match r {
                Ok(t) => done.push(t),
                Err(e) => failed.push(e),
            }
        }
        if !failed.is_empty() {
            return (done, failed);
        }
        batch *= 2;
    }
}

/// Creates up to `n` pods, `make(i)` the i-th, in slow-start batches (see
/// [`slow_start`]; `wanted` caps how many are still wanted); returns the
/// names created and the API server's words for each refused create, for
/// the owner's `FailedCreate` events.
pub(crate) async fn create_pods(
    api: &kube::Api<Pod>,
    n: usize,
    make: impl Fn(usize) -> Pod,
    who: &'static str,
    wanted: impl FnMut() -> usize,
) -> (Vec<String>, Vec<String>) {
    slow_start(n, wanted, |i| {
        let pod = make(i);
        async move {
            match api.create(&PostParams::default(), &pod).await {
                Ok(p) => Ok(p.metadata.name.unwrap_or_default()),
                Err(e) => {
                    crate::log_write_error(who, "create pod", &e);
                    Err(match e {
                        kube::Error::Api(ae) => ae.message,
                        e => e.to_string(),
                    })
                }
            }
        }
    })
    .await
}

/// Deletes pods (each guarded by its uid) concurrently; returns the names
/// whose delete went through and whether any failed.
pub(crate) async fn delete_pods(
    api: &kube::Api<Pod>,
    pods: &[&Arc<Pod>],
    who: &'static str,
) -> (Vec<String>, bool) {
    let targets: Vec<(String, Option<String>)> = pods
        .iter()
        .map(|p| {
            (
                p.metadata.name.clone().unwrap_or_default(),
                p.metadata.uid.clone(),
            )
        })
        .collect();
    let results: Vec<(String, Result<(), kube::Error>)> = futures::stream::iter(targets)
        .map(|(name, uid)| async move {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..Default::default()
            };
            let r = api.delete(&name, &dp).await.map(|_| ());
            (name, r)
        })
        .buffer_unordered(PARALLEL_WRITES)
        .collect()
        .await;
    let mut names = Vec::new();
    let mut failed = false;
    for (name, r) in results {
        match r {
            Ok(()) => names.push(name),
            Err(e) if crate::benign(&e) => names.push(name),
            Err(e) => {
                crate::log_write_error(who, "delete pod", &e);
                failed = true;
            }
        }
    }
    (names, failed)
}

/// Sets a pod's owner references, failing if the pod changed since it was read.
async fn set_owners(
    api: &kube::Api<Pod>,
    p: &Pod,
    refs: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Result<(), kube::Error> {
    let patch = json!({"metadata": {"resourceVersion": p.metadata.resource_version, "ownerReferences": refs}});
    api.patch(
        p.metadata.name.as_deref().unwrap_or(""),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}

/// The status a ReplicaSet should show for its owned pods.
pub fn status_for(rs: &ReplicaSet, owned: &[&Arc<Pod>], now: Time) -> ReplicaSetStatus {
    let active: Vec<&&Arc<Pod>> = owned.iter().filter(|p| is_active(p)).collect();
    let tlabels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let count = |f: &dyn Fn(&Pod) -> bool| -> i32 { active.iter().filter(|p| f(p)).count() as i32 };
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(count(&|p| map_selector_matches(&tlabels, labels_of(p)))),
        ready_replicas: Some(count(&|p| is_ready(p))),
        available_replicas: Some(count(&|p| is_available(p, min_ready, now.clone()))),
        terminating_replicas: None,
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
    }
}

/// Runs the ReplicaSet controller with caches of its own until cancelled.
pub async fn run(client: kube::Client, resync: Duration) -> Result<(), Error> {
    run_with(Caches::new(client), resync).await
}

/// Runs the ReplicaSet controller over shared caches until cancelled.
pub async fn run_with(caches: Arc<Caches>, resync: Duration) -> Result<(), Error> {
    let wake = Arc::new(Notify::new());
    caches.replica_sets().wake_on_change(&wake);
    caches.pods().wake_on_change(&wake);
    caches.replica_sets().ready().await;
    caches.pods().ready().await;
    let mut c = RsController {
        caches,
        expectations: Expectations::default(),
    };
    crate::drive!("replicaset", wake, resync, c.pass().await)
}

struct RsController {
    caches: Arc<Caches>,
    expectations: Expectations,
}

impl RsController {
    async fn pass(&mut self) -> Next {
        let sets = self.caches.replica_sets().all();
        let pods = self.caches.pods().all();
        let live: HashSet<&str> = sets
            .iter()
            .filter_map(|r| r.metadata.uid.as_deref())
            .collect();
        self.expectations.retain(&live);
        let mut owned_by: HashMap<&str, Vec<&Arc<Pod>>> = HashMap::new();
        for p in &pods {
            if let Some(r) = crate::util::controller_of(p.as_ref())
                && live.contains(r.uid.as_str())
            {
                owned_by.entry(r.uid.as_str()).or_default().push(p);
            }
        }
        // Pods no controller owns, per namespace: candidates for adoption.
        let mut orphans: HashMap<&str, Vec<&Arc<Pod>>> = HashMap::new();
        for p in &pods {
            if crate::util::controller_of(p.as_ref()).is_none() && is_active(p) {
                orphans
                    .entry(p.metadata.namespace.as_deref().unwrap_or(""))
                    .or_default()
                    .push(p);
            }
        }
        let mut claimed: HashSet<String> = HashSet::new();
        let mut next = Next::Idle;
        for rs in &sets {
            if rs.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let uid = rs.metadata.uid.clone().unwrap_or_default();
            let owned: Vec<&Arc<Pod>> = owned_by.get(uid.as_str()).cloned().unwrap_or_default();
            debug_assert!(owned.iter().all(|p| controlled_by(p.as_ref(), &uid)));
            let ns = rs.metadata.namespace.as_deref().unwrap_or("");
            let candidates = orphans.get(ns).map(Vec::as_slice).unwrap_or(&[]);
            let (owned, claim_next) = self.claim(rs, &uid, owned, candidates, &mut claimed).await;
            next = next.min(claim_next);
            next = next.min(self.sync(rs, &uid, &owned).await);
        }
        next
    }

    /// kube's pod "claiming": releases owned pods whose labels no longer
    /// match the selector (the ReplicaSet then replaces them) and adopts
    /// ownerless active pods that match. Returns the pods owned afterwards.
    async fn claim<'a>(
        &self,
        rs: &ReplicaSet,
        uid: &str,
        owned: Vec<&'a Arc<Pod>>,
        orphans: &[&'a Arc<Pod>],
        claimed: &mut HashSet<String>,
    ) -> (Vec<&'a Arc<Pod>>, Next) {
        let Some(sel) = rs.spec.as_ref().map(|s| &s.selector) else {
            return (owned, Next::Idle);
        };
        // An empty selector would claim the whole namespace.
        if sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty())
        {
            return (owned, Next::Idle);
        }
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        let api: kube::Api<Pod> = kube::Api::namespaced(self.caches.client().clone(), &ns);
        let mut next = Next::Idle;
        let mut keep = Vec::new();
        for p in owned {
            if label_selector_matches(sel, labels_of(p.as_ref()))
                || p.metadata.deletion_timestamp.is_some()
            {
                keep.push(p);
                continue;
            }
            let refs: Vec<_> = p
                .metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|r| r.uid != uid)
                .cloned()
                .collect();
            if let Err(e) = set_owners(&api, p, refs).await {
                crate::log_write_error("replicaset", "release pod", &e);
                keep.push(p);
                next = Next::After(RETRY);
            } else {
                tracing::info!(rs = %crate::util::key_of(rs), pod = %crate::util::key_of(p.as_ref()), "released pod that no longer matches");
            }
        }
        for p in orphans {
            let puid = p.metadata.uid.clone().unwrap_or_default();
            if claimed.contains(&puid) || !label_selector_matches(sel, labels_of(p.as_ref())) {
                continue;
            }
            claimed.insert(puid);
            let mut refs: Vec<_> = p.metadata.owner_references.clone().unwrap_or_default();
            refs.push(owner_ref(rs));
            match set_owners(&api, p, refs).await {
                Ok(()) => {
                    tracing::info!(rs = %crate::util::key_of(rs), pod = %crate::util::key_of(p.as_ref()), "adopted pod");
                    keep.push(p);
                }
                Err(e) => {
                    crate::log_write_error("replicaset", "adopt pod", &e);
                    next = Next::After(RETRY);
                }
            }
        }
        (keep, next)
    }

    async fn sync(&mut self, rs: &ReplicaSet, uid: &str, owned: &[&Arc<Pod>]) -> Next {
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        let name = rs.metadata.name.clone().unwrap_or_default();
        let api: kube::Api<Pod> = kube::Api::namespaced(self.caches.client().clone(), &ns);
        let mut next = Next::Idle;
        if self.expectations.satisfied(uid, owned) {
            let want = rs
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(1)
                .max(0) as usize;
            let mut active: Vec<&Arc<Pod>> =
                owned.iter().copied().filter(|p| is_active(p)).collect();
            if active.len() < want {
                let pod = pod_from_template(
                    rs,
                    rs.spec.as_ref().and_then(|s| s.template.as_ref()),
                    &format!("{name}-"),
                );
                // How many more the ReplicaSet wants as the cache shows it
                // now: none once it is scaled down to what exists or gone.
                let had = active.len();
                let replica_sets = self.caches.replica_sets();
                let wanted = || {
                    replica_sets.current(rs).map_or(0, |now| {
                        let want = now.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                        (want.max(0) as usize).saturating_sub(had)
                    })
                };
                let (made, refused) =
                    create_pods(&api, want - had, |_| pod.clone(), "replicaset", wanted).await;
                tracing::debug!(rs = %format!("{ns}/{name}"), created = made.len(), failed = refused.len(), "scaled up");
                let client = api.clone().into_client();
                crate::events::record_later(
                    &client,
                    "replicaset-controller",
                    rs,
                    "Normal",
                    "SuccessfulCreate",
                    made.iter().map(|p| format!("Created pod: {p}")).collect(),
                );
                // Recorded before the pass goes on (there are few, thanks
                // to the slow start), so the status this pass writes comes
                // after the events of its refusals.
                let source = crate::events::Source {
                    component: "replicaset-controller".into(),
                    host: None,
                };
                for e in &refused {
                    let msg = format!("Error creating: {e}");
                    if let Err(e) =
                        crate::events::record(&client, &source, rs, "Warning", "FailedCreate", &msg)
                            .await
                    {
                        tracing::debug!(error = %e, "event not recorded");
                    }
                }
                self.expectations.expect(uid, made, []);
                if !refused.is_empty() {
                    next = Next::After(RETRY);
                }
            } else if active.len() > want {
                deletion_order(&mut active);
                let surplus = &active[..active.len() - want];
                let (gone, failed) = delete_pods(&api, surplus, "replicaset").await;
                tracing::debug!(rs = %format!("{ns}/{name}"), deleted = gone.len(), "scaled down");
                crate::events::record_later(
                    &api.clone().into_client(),
                    "replicaset-controller",
                    rs,
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
        // Status from what the cache shows (the next pass corrects it once
        // our own writes come back).
        let status = status_for(rs, owned, crate::util::now());
        let min_ready = rs
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        if min_ready > 0 && status.ready_replicas != status.available_replicas {
            next = next.min(Next::After(Duration::from_secs(1)));
        }
        if rs.status.as_ref() != Some(&status) {
            let rs_api: kube::Api<ReplicaSet> =
                kube::Api::namespaced(self.caches.client().clone(), &ns);
            if let Err(e) = rs_api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": status})),
                )
                .await
            {
                crate::log_write_error("replicaset", "status", &e);
                next = next.min(Next::After(RETRY));
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool) -> Arc<Pod> {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.spec = Some(PodSpec {
            node_name: node.map(Into::into),
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
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
    fn surplus_goes_unscheduled_then_pending_then_unready_first() {
        let a = pod("ready", Some("n"), "Running", true);
        let b = pod("unready", Some("n"), "Running", false);
        let c = pod("pending", Some("n"), "Pending", false);
        let d = pod("unscheduled", None, "Pending", false);
        let mut v = vec![&a, &b, &c, &d];
        deletion_order(&mut v);
        let names: Vec<&str> = v
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["unscheduled", "pending", "unready", "ready"]);
    }

    #[test]
    fn status_counts_active_ready_available() {
        let mut rs = ReplicaSet::default();
        rs.metadata.generation = Some(3);
        let a = pod("a", Some("n"), "Running", true);
        let b = pod("b", Some("n"), "Running", false);
        let c = pod("c", Some("n"), "Failed", false);
        let mut d = (*pod("d", Some("n"), "Running", true)).clone();
        d.metadata.deletion_timestamp = Some(crate::util::now());
        let d = Arc::new(d);
        let s = status_for(&rs, &[&a, &b, &c, &d], crate::util::now());
        assert_eq!(
            (
                s.replicas,
                s.ready_replicas,
                s.available_replicas,
                s.observed_generation
            ),
            (2, Some(1), Some(1), Some(3))
        );
    }

    #[test]
    fn expectations_hold_until_seen() {
        let mut e = Expectations::default();
        let a = pod("a", None, "Pending", false);
        e.expect("rs", ["a".to_string(), "b".to_string()], []);
        assert!(!e.satisfied("rs", &[&a]));
        let b = pod("b", None, "Pending", false);
        assert!(e.satisfied("rs", &[&a, &b]));
        e.expect("rs", [], ["a".to_string()]);
        assert!(!e.satisfied("rs", &[&a, &b]));
        let mut gone = (*a).clone();
        gone.metadata.deletion_timestamp = Some(crate::util::now());
        assert!(e.satisfied("rs", &[&Arc::new(gone), &b]));
    }

    /// Runs [`slow_start`] over `total` writes where `fail(i)` says which
    /// fail and `wanted(batch number)` how many are still wanted; returns
    /// how many writes had been started before each batch, the successes
    /// and the failures.
    fn run_slow_start(
        total: usize,
        fail: impl Fn(usize) -> bool,
        wanted: impl Fn(usize) -> usize,
    ) -> (Vec<usize>, usize, usize) {
        let started = std::sync::Mutex::new(0usize);
        let mut bounds = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (ok, failed) = rt.block_on(slow_start(
            total,
            || {
                bounds.push(*started.lock().unwrap());
                wanted(bounds.len() - 1)
            },
            |i| {
                *started.lock().unwrap() += 1;
                let r = if fail(i) { Err(i) } else { Ok(i) };
                async move { r }
            },
        ));
        (bounds, ok.len(), failed.len())
    }

    #[test]
    fn slow_start_doubles_its_batches() {
        let (bounds, ok, failed) = run_slow_start(10, |_| false, |_| usize::MAX);
        // Batches of 1, 2, 4 and the 3 left.
        assert_eq!(bounds, vec![0, 1, 3, 7, 10]);
        assert_eq!((ok, failed), (10, 0));
    }

    #[test]
    fn slow_start_stops_after_the_first_batch_with_a_failure() {
        let (bounds, ok, failed) = run_slow_start(500, |i| i >= 2, |_| usize::MAX);
        // The batch of 1 went through; the batch of 2 had one refused.
        assert_eq!(bounds, vec![0, 1]);
        assert_eq!((ok, failed), (2, 1));
        // Everything refused: one write, not 500.
        let (bounds, ok, failed) = run_slow_start(500, |_| true, |_| usize::MAX);
        assert_eq!((bounds, ok, failed), (vec![0], 0, 1));
    }

    #[test]
    fn slow_start_stops_when_the_owner_wants_fewer() {
        // Scaled down to 3 after the first batch: the second batch makes
        // the 2 still wanted and the burst ends.
        let (bounds, ok, _) = run_slow_start(100, |_| false, |b| if b == 0 { 100 } else { 3 });
        assert_eq!((bounds, ok), (vec![0, 1, 3], 3));
        // Deleted after the first batch: nothing more.
        let (bounds, ok, _) = run_slow_start(100, |_| false, |b| if b == 0 { 100 } else { 0 });
        assert_eq!((bounds, ok), (vec![0, 1], 1));
    }
}
