//! Deployment → ReplicaSets: one ReplicaSet per pod template, named
//! `<deployment>-<pod-template-hash>` as kube-controller-manager names them;
//! a new template rolls (RollingUpdate: new ReplicaSet up within maxSurge,
//! old ones down within maxUnavailable; Recreate: old ones to zero first);
//! revision annotations, history cleanup, and the status fields and
//! conditions `kubectl rollout status` and `kubectl get deploy` read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use tokio::sync::Notify;

use crate::util::{controller_of, owner_ref, same_template, template_hash};
use crate::{Caches, Error, Next, RETRY};

/// The annotation holding a Deployment's and a ReplicaSet's revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";

/// What the rollout planner needs to know of one ReplicaSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsView {
    /// Its name.
    pub name: String,
    /// spec.replicas.
    pub replicas: i32,
    /// status.availableReplicas.
    pub available: i32,
}

/// The rollout strategy, resolved to numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Old ReplicaSets to zero (and their pods gone) before the new one scales up.
    Recreate,
    /// Surge and unavailability bounds, as absolute pod counts.
    RollingUpdate {
        /// Pods allowed above the desired count.
        max_surge: i32,
        /// Pods allowed below the desired count.
        max_unavailable: i32,
    },
}

/// Resolves an int-or-percent against `total` (kube's
/// `GetScaledValueFromIntOrPercent`).
pub fn scaled(v: Option<&IntOrString>, total: i32, round_up: bool, default: &str) -> i32 {
    let s = match v {
        Some(IntOrString::Int(i)) => return *i,
        Some(IntOrString::String(s)) => s.as_str(),
        None => default,
    };
    match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
        Some(pct) => {
            let x = pct * i64::from(total);
            (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
        }
        None => s.parse().unwrap_or(0),
    }
}

/// The Deployment's strategy resolved against its replica count.
pub fn strategy_of(d: &Deployment) -> Strategy {
    let spec = d.spec.as_ref();
    let desired = spec.and_then(|s| s.replicas).unwrap_or(1);
    let st = spec.and_then(|s| s.strategy.as_ref());
    if st.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return Strategy::Recreate;
    }
    let ru = st.and_then(|s| s.rolling_update.as_ref());
    let max_surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), desired, true, "25%");
    let mut max_unavailable = scaled(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        desired,
        false,
        "25%",
    );
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    Strategy::RollingUpdate {
        max_surge,
        max_unavailable: max_unavailable.min(desired),
    }
}

/// Pure rollout step: the new spec.replicas of each ReplicaSet that should
/// change now (old ReplicaSets oldest first). `old_pods_active` tells
/// Recreate whether old pods still run.
pub fn plan_rollout(
    desired: i32,
    strategy: Strategy,
    new: &RsView,
    olds: &[RsView],
    old_pods_active: bool,
) -> Vec<(String, i32)> {
    let old_total: i32 = olds.iter().map(|r| r.replicas).sum();
    if old_total == 0 && !(strategy == Strategy::Recreate && old_pods_active) {
        // Nothing to roll: the new ReplicaSet simply follows the scale.
        return if new.replicas != desired {
            vec![(new.name.clone(), desired)]
        } else {
            vec![]
        };
    }
    match strategy {
        Strategy::Recreate => {
            let downs: Vec<(String, i32)> = olds
                .iter()
                .filter(|r| r.replicas > 0)
                .map(|r| (r.name.clone(), 0))
                .collect();
            if !downs.is_empty() {
                return downs;
            }
            if old_pods_active || new.replicas == desired {
                vec![]
            } else {
                vec![(new.name.clone(), desired)]
            }
        }
        Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } => {
            // Scale the new ReplicaSet up as far as the surge allows.
            let all = old_total + new.replicas;
            let max_total = desired + max_surge;
            let target = if new.replicas > desired {
                desired
            } else if all < max_total {
                (new.replicas + (max_total - all)).min(desired)
            } else {
                new.replicas
            };
            if target != new.replicas {
                return vec![(new.name.clone(), target)];
            }
            // Then scale old ones down as far as availability allows.
            let min_available = desired - max_unavailable;
            let new_unavailable = (new.replicas - new.available).max(0);
            let mut budget = all - min_available - new_unavailable;
            if budget <= 0 {
                return vec![];
            }
            let mut out: Vec<(String, i32)> = Vec::new();
            let mut olds: Vec<RsView> = olds.to_vec();
            // First the old pods that are not available anyway.
            for r in olds.iter_mut() {
                let unhealthy = (r.replicas - r.available).max(0);
                let cut = unhealthy.min(budget);
                if cut > 0 {
                    r.replicas -= cut;
                    budget -= cut;
                    out.push((r.name.clone(), r.replicas));
                }
            }
            // Then available old pods while enough stay available.
            let available: i32 = olds
                .iter()
                .map(|r| r.available.min(r.replicas))
                .sum::<i32>()
                + new.available;
            let mut down = (available - min_available).min(budget);
            for r in olds.iter_mut() {
                if down <= 0 {
                    break;
                }
                let cut = r.replicas.min(down);
                if cut > 0 {
                    r.replicas -= cut;
                    down -= cut;
                    match out.iter_mut().find(|(n, _)| *n == r.name) {
                        Some(e) => e.1 = r.replicas,
                        None => out.push((r.name.clone(), r.replicas)),
                    }
                }
            }
            out
        }
    }
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn view(rs: &ReplicaSet) -> RsView {
    RsView {
        name: rs.metadata.name.clone().unwrap_or_default(),
        replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        available: rs
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0),
    }
}

/// The status a Deployment should show, given its ReplicaSets (the new one
/// first if it exists). Keeps condition timestamps when nothing changed.
pub fn status_for(
    d: &Deployment,
    new: Option<&ReplicaSet>,
    all: &[&Arc<ReplicaSet>],
) -> DeploymentStatus {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = |r: &ReplicaSet| r.status.clone().unwrap_or_default();
    let replicas: i32 = all.iter().map(|r| st(r).replicas).sum();
    let ready: i32 = all.iter().map(|r| st(r).ready_replicas.unwrap_or(0)).sum();
    let available: i32 = all
        .iter()
        .map(|r| st(r).available_replicas.unwrap_or(0))
        .sum();
    let spec_total: i32 = all
        .iter()
        .map(|r| r.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0))
        .sum();
    let updated = new.map(|r| st(r).replicas).unwrap_or(0);
    let max_unavailable = match strategy_of(d) {
        Strategy::RollingUpdate {
            max_unavailable, ..
        } => max_unavailable,
        Strategy::Recreate => 0,
    };
    let old = d.status.clone().unwrap_or_default();
    let mut conds: Vec<DeploymentCondition> = old.conditions.clone().unwrap_or_default();
    let now = crate::util::now();
    let mut set = |type_: &str, status: &str, reason: &str, message: String| match conds
        .iter_mut()
        .find(|c| c.type_ == type_)
    {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(now.clone());
            }
            if c.status != status
                || c.reason.as_deref() != Some(reason)
                || c.message.as_deref() != Some(&message)
            {
                c.last_update_time = Some(now.clone());
            }
            c.status = status.into();
            c.reason = Some(reason.into());
            c.message = Some(message);
        }
        None => conds.push(DeploymentCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(now.clone()),
            last_update_time: Some(now.clone()),
        }),
    };
    if available >= desired - max_unavailable {
        set(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        );
    } else {
        set(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        );
    }
    if let Some(n) = new {
        let name = n.metadata.name.clone().unwrap_or_default();
        let new_available = st(n).available_replicas.unwrap_or(0);
        if updated == desired && replicas == updated && new_available == desired {
            set(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{name}\" has successfully progressed."),
            );
        } else {
            set(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{name}\" is progressing."),
            );
        }
    }
    // Available first, then Progressing, as kube-controller-manager orders them.
    conds.sort_by_key(|c| if c.type_ == "Available" { 0 } else { 1 });
    DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((spec_total.max(desired) - available).max(0)),
        terminating_replicas: None,
        conditions: Some(conds),
        collision_count: old.collision_count,
    }
}

/// Runs the Deployment controller with caches of its own until cancelled.
pub async fn run(client: kube::Client, resync: Duration) -> Result<(), Error> {
    run_with(Caches::new(client), resync).await
}

/// Runs the Deployment controller over shared caches until cancelled.
pub async fn run_with(caches: Arc<Caches>, resync: Duration) -> Result<(), Error> {
    let wake = Arc::new(Notify::new());
    caches.deployments().wake_on_change(&wake);
    caches.replica_sets().wake_on_change(&wake);
    caches.pods().wake_on_change(&wake);
    caches.deployments().ready().await;
    caches.replica_sets().ready().await;
    caches.pods().ready().await;
    let mut c = DeployController {
        caches,
        created: HashMap::new(),
    };
    crate::drive!("deployment", wake, resync, c.pass().await)
}

struct DeployController {
    caches: Arc<Caches>,
    /// ReplicaSets we created that the cache may not show yet, and when.
    created: HashMap<String, Instant>,
}

impl DeployController {
    async fn pass(&mut self) -> Next {
        let deps = self.caches.deployments().all();
        let sets = self.caches.replica_sets().all();
        let seen: HashSet<String> = sets
            .iter()
            .map(|r| crate::util::key_of(r.as_ref()))
            .collect();
        self.created
            .retain(|k, at| !seen.contains(k) && at.elapsed() < Duration::from_secs(10));
        let mut next = Next::Idle;
        for d in &deps {
            if d.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let uid = d.metadata.uid.clone().unwrap_or_default();
            let owned: Vec<&Arc<ReplicaSet>> = sets
                .iter()
                .filter(|r| controller_of(r.as_ref()).is_some_and(|o| o.uid == uid))
                .collect();
            next = next.min(self.sync(d, &owned).await);
        }
        next
    }

    async fn sync(&mut self, d: &Deployment, owned: &[&Arc<ReplicaSet>]) -> Next {
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let dname = d.metadata.name.clone().unwrap_or_default();
        let client = self.caches.client().clone();
        let rs_api: kube::Api<ReplicaSet> = kube::Api::namespaced(client.clone(), &ns);
        let d_api: kube::Api<Deployment> = kube::Api::namespaced(client, &ns);
        let Some(spec) = d.spec.as_ref() else {
            return Next::Idle;
        };
        let desired = spec.replicas.unwrap_or(1).max(0);
        let paused = spec.paused == Some(true);
        let mut sorted: Vec<&Arc<ReplicaSet>> = owned.to_vec();
        sorted.sort_by(|a, b| {
            (&a.metadata.creation_timestamp, &a.metadata.name)
                .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
        });
        let new = sorted
            .iter()
            .find(|r| {
                r.spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| same_template(t, &spec.template))
            })
            .copied();
        let olds: Vec<&Arc<ReplicaSet>> = sorted
            .iter()
            .copied()
            .filter(|r| new.is_none_or(|n| !Arc::ptr_eq(n, r)))
            .collect();
        let max_old_rev = olds.iter().map(|r| revision(r)).max().unwrap_or(0);
        let mut next = Next::Idle;

        let Some(new) = new else {
            if paused {
                return self.write_status(d, &d_api, None, owned).await;
            }
            let collision = d.status.as_ref().and_then(|s| s.collision_count);
            let hash = template_hash(&spec.template, collision);
            let name = format!("{dname}-{hash}");
            let key = format!("{ns}/{name}");
            if self.created.contains_key(&key) {
                return Next::After(RETRY);
            }
            let views: Vec<RsView> = olds.iter().map(|r| view(r)).collect();
            let empty = RsView {
                name: name.clone(),
                replicas: 0,
                available: 0,
            };
            let active_old = olds
                .iter()
                .any(|r| r.status.as_ref().is_some_and(|s| s.replicas > 0));
            let replicas = plan_rollout(desired, strategy_of(d), &empty, &views, active_old)
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, r)| r)
                .unwrap_or(0);
            let rs = new_replica_set(d, &name, &hash, replicas, max_old_rev + 1);
            match rs_api.create(&PostParams::default(), &rs).await {
                Ok(_) => {
                    tracing::info!(deployment = %format!("{ns}/{dname}"), rs = %name, replicas, "created ReplicaSet");
                    self.created.insert(key, Instant::now());
                    let _ = crate::scheduler::record_event_for(
                        self.caches.client(),
                        "deployment-controller",
                        d,
                        "Normal",
                        "ScalingReplicaSet",
                        &format!("Scaled up replica set {name} from 0 to {replicas}"),
                    )
                    .await;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // A ReplicaSet of that name with another template: hash
                    // collision (or not ours). Bump the collision count.
                    let ours = rs_api.get_opt(&name).await.ok().flatten().is_some_and(|r| {
                        controller_of(&r).is_some_and(|o| Some(&o.uid) == d.metadata.uid.as_ref())
                            && r.spec
                                .as_ref()
                                .and_then(|s| s.template.as_ref())
                                .is_some_and(|t| same_template(t, &spec.template))
                    });
                    if !ours {
                        let c = collision.unwrap_or(0) + 1;
                        tracing::warn!(rs = %name, collision = c, "ReplicaSet name taken; bumping collisionCount");
                        if let Err(e) = d_api
                            .patch_status(
                                &dname,
                                &PatchParams::default(),
                                &Patch::Merge(&json!({"status": {"collisionCount": c}})),
                            )
                            .await
                        {
                            crate::log_write_error("deployment", "collisionCount", &e);
                        }
                    }
                    next = Next::After(RETRY);
                }
                Err(e) => {
                    crate::log_write_error("deployment", "create ReplicaSet", &e);
                    next = Next::After(RETRY);
                }
            }
            return next.min(self.write_status(d, &d_api, None, owned).await);
        };

        let new_name = new.metadata.name.clone().unwrap_or_default();
        // A template rolled back to an old ReplicaSet makes it the newest revision.
        let mut new_rev = revision(new);
        if new_rev <= max_old_rev {
            new_rev = max_old_rev + 1;
            let p = json!({"metadata": {"annotations": {REVISION: new_rev.to_string()}}});
            if let Err(e) = rs_api
                .patch(&new_name, &PatchParams::default(), &Patch::Merge(&p))
                .await
            {
                crate::log_write_error("deployment", "revision", &e);
                next = Next::After(RETRY);
            }
        }
        if d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            != Some(&new_rev.to_string())
        {
            let p = json!({"metadata": {"annotations": {REVISION: new_rev.to_string()}}});
            if let Err(e) = d_api
                .patch(&dname, &PatchParams::default(), &Patch::Merge(&p))
                .await
            {
                crate::log_write_error("deployment", "revision", &e);
                next = Next::After(RETRY);
            }
        }
        if !paused {
            let views: Vec<RsView> = olds.iter().map(|r| view(r)).collect();
            let old_pods_active = olds
                .iter()
                .any(|r| r.status.as_ref().is_some_and(|s| s.replicas > 0));
            let steps = plan_rollout(desired, strategy_of(d), &view(new), &views, old_pods_active);
            for (name, replicas) in steps {
                let from = sorted
                    .iter()
                    .find(|r| r.metadata.name.as_deref() == Some(&name))
                    .map(|r| view(r).replicas)
                    .unwrap_or(0);
                let p = json!({"spec": {"replicas": replicas}});
                match rs_api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&p))
                    .await
                {
                    Ok(_) => {
                        tracing::debug!(deployment = %format!("{ns}/{dname}"), rs = %name, from, to = replicas, "scaled ReplicaSet");
                        let verb = if replicas > from { "up" } else { "down" };
                        let _ = crate::scheduler::record_event_for(
                            self.caches.client(),
                            "deployment-controller",
                            d,
                            "Normal",
                            "ScalingReplicaSet",
                            &format!("Scaled {verb} replica set {name} from {from} to {replicas}"),
                        )
                        .await;
                    }
                    Err(e) => {
                        crate::log_write_error("deployment", "scale ReplicaSet", &e);
                        next = Next::After(RETRY);
                    }
                }
            }
            // History: keep revisionHistoryLimit idle old ReplicaSets.
            let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
            let mut idle: Vec<&&Arc<ReplicaSet>> = olds
                .iter()
                .filter(|r| {
                    view(r).replicas == 0 && r.status.as_ref().is_none_or(|s| s.replicas == 0)
                })
                .collect();
            if idle.len() > limit {
                idle.sort_by_key(|r| revision(r));
                for r in &idle[..idle.len() - limit] {
                    let dp = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid: r.metadata.uid.clone(),
                            resource_version: None,
                        }),
                        ..Default::default()
                    };
                    if let Err(e) = rs_api
                        .delete(r.metadata.name.as_deref().unwrap_or(""), &dp)
                        .await
                    {
                        crate::log_write_error("deployment", "delete old ReplicaSet", &e);
                    }
                }
            }
        }
        next.min(self.write_status(d, &d_api, Some(new), owned).await)
    }

    async fn write_status(
        &self,
        d: &Deployment,
        api: &kube::Api<Deployment>,
        new: Option<&ReplicaSet>,
        owned: &[&Arc<ReplicaSet>],
    ) -> Next {
        let status = status_for(d, new, owned);
        if d.status.as_ref() == Some(&status) {
            return Next::Idle;
        }
        match api
            .patch_status(
                d.metadata.name.as_deref().unwrap_or(""),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
        {
            Ok(_) => Next::Idle,
            Err(e) => {
                crate::log_write_error("deployment", "status", &e);
                Next::After(RETRY)
            }
        }
    }
}

/// The ReplicaSet a Deployment's current template becomes.
fn new_replica_set(
    d: &Deployment,
    name: &str,
    hash: &str,
    replicas: i32,
    revision: i64,
) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let mut template = spec.template.clone();
    let tmeta = template.metadata.get_or_insert_with(Default::default);
    tmeta
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert("pod-template-hash".into(), hash.into());
    let mut selector: LabelSelector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert("pod-template-hash".into(), hash.into());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: d.metadata.namespace.clone(),
            labels: tmeta.labels.clone(),
            annotations: Some(BTreeMap::from([(
                REVISION.to_string(),
                revision.to_string(),
            )])),
            owner_references: Some(vec![owner_ref(d)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(name: &str, replicas: i32, available: i32) -> RsView {
        RsView {
            name: name.into(),
            replicas,
            available,
        }
    }

    const RU: Strategy = Strategy::RollingUpdate {
        max_surge: 1,
        max_unavailable: 0,
    };

    #[test]
    fn percentages_round_like_kube() {
        assert_eq!(scaled(None, 3, true, "25%"), 1);
        assert_eq!(scaled(None, 3, false, "25%"), 0);
        assert_eq!(
            scaled(Some(&IntOrString::String("50%".into())), 5, true, ""),
            3
        );
        assert_eq!(scaled(Some(&IntOrString::Int(2)), 5, true, ""), 2);
    }

    #[test]
    fn scaling_without_a_rollout_follows_replicas() {
        assert_eq!(
            plan_rollout(5, RU, &rs("new", 3, 3), &[], false),
            vec![("new".to_string(), 5)]
        );
        assert_eq!(
            plan_rollout(0, RU, &rs("new", 3, 3), &[rs("old", 0, 0)], false),
            vec![("new".to_string(), 0)]
        );
        assert!(plan_rollout(3, RU, &rs("new", 3, 1), &[], false).is_empty());
    }

    #[test]
    fn rolling_update_surges_then_drains_old() {
        // 3 replicas, surge 1, unavailable 0: new goes to 1 first.
        assert_eq!(
            plan_rollout(3, RU, &rs("new", 0, 0), &[rs("old", 3, 3)], true),
            vec![("new".to_string(), 1)]
        );
        // New pod not yet available: nothing may go.
        assert!(plan_rollout(3, RU, &rs("new", 1, 0), &[rs("old", 3, 3)], true).is_empty());
        // New pod available: one old goes.
        assert_eq!(
            plan_rollout(3, RU, &rs("new", 1, 1), &[rs("old", 3, 3)], true),
            vec![("old".to_string(), 2)]
        );
        // Old unavailable pods go first, within the budget (4 pods, 3 must
        // stay: one may go).
        assert_eq!(
            plan_rollout(3, RU, &rs("new", 1, 1), &[rs("old", 3, 1)], true),
            vec![("old".to_string(), 2)]
        );
        // With maxUnavailable 1, two unavailable old pods may go at once.
        let ru1 = Strategy::RollingUpdate {
            max_surge: 1,
            max_unavailable: 1,
        };
        assert_eq!(
            plan_rollout(3, ru1, &rs("new", 1, 1), &[rs("old", 3, 1)], true),
            vec![("old".to_string(), 1)]
        );
        // The end: old at zero, new at desired.
        assert_eq!(
            plan_rollout(3, RU, &rs("new", 2, 2), &[rs("old", 1, 1)], true),
            vec![("new".to_string(), 3)]
        );
        assert_eq!(
            plan_rollout(3, RU, &rs("new", 3, 3), &[rs("old", 1, 1)], true),
            vec![("old".to_string(), 0)]
        );
    }

    #[test]
    fn recreate_waits_for_old_pods() {
        assert_eq!(
            plan_rollout(
                2,
                Strategy::Recreate,
                &rs("new", 0, 0),
                &[rs("old", 2, 2)],
                true
            ),
            vec![("old".to_string(), 0)]
        );
        assert!(
            plan_rollout(
                2,
                Strategy::Recreate,
                &rs("new", 0, 0),
                &[rs("old", 0, 0)],
                true
            )
            .is_empty()
        );
        assert_eq!(
            plan_rollout(
                2,
                Strategy::Recreate,
                &rs("new", 0, 0),
                &[rs("old", 0, 0)],
                false
            ),
            vec![("new".to_string(), 2)]
        );
    }
}
