//! Garbage collection: deletes Pods, ReplicaSets, Jobs and EndpointSlices
//! whose every owner (a ReplicaSet, Deployment, DaemonSet, StatefulSet, Job,
//! CronJob or Service) is gone, so
//! `kubectl delete deployment web` removes its ReplicaSets and pods even if
//! the API server does not collect them itself (or missed it while down).
//!
//! An owner missing from the cache is confirmed with a live GET before
//! anything is deleted, so a cache that lags behind a fresh owner never
//! costs a pod.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::{DeleteParams, Preconditions, PropagationPolicy};
use tokio::sync::Notify;

use crate::{Caches, Error, Next, RETRY};

/// Owner kinds this collector knows, as (apiVersion, kind).
const KNOWN_OWNERS: &[(&str, &str)] = &[
    ("apps/v1", "ReplicaSet"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "DaemonSet"),
    ("apps/v1", "StatefulSet"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
    ("v1", "Service"),
];

/// Pure check: whether every owner reference of an object names a known
/// kind whose uid is not in `live` (then the object is an orphan to
/// collect). Objects without owners, or with an owner of another kind, stay.
pub fn orphaned(owners: &[OwnerReference], live: &HashSet<String>) -> bool {
    !owners.is_empty()
        && owners.iter().all(|o| {
            KNOWN_OWNERS.contains(&(o.api_version.as_str(), o.kind.as_str()))
                && !live.contains(&o.uid)
        })
}

/// Runs the garbage collector with caches of its own until cancelled.
pub async fn run(client: kube::Client, resync: Duration) -> Result<(), Error> {
    run_with(Caches::new(client), resync).await
}

/// Runs the garbage collector over shared caches until cancelled.
pub async fn run_with(caches: Arc<Caches>, resync: Duration) -> Result<(), Error> {
    let wake = Arc::new(Notify::new());
    caches.replica_sets().wake_on_change(&wake);
    caches.deployments().wake_on_change(&wake);
    caches.daemon_sets().wake_on_change(&wake);
    caches.services().wake_on_change(&wake);
    caches.stateful_sets().wake_on_change(&wake);
    caches.jobs().wake_on_change(&wake);
    caches.cron_jobs().wake_on_change(&wake);
    caches.replica_sets().ready().await;
    caches.stateful_sets().ready().await;
    caches.jobs().ready().await;
    caches.cron_jobs().ready().await;
    caches.deployments().ready().await;
    caches.daemon_sets().ready().await;
    caches.services().ready().await;
    caches.pods().ready().await;
    caches.endpoint_slices().ready().await;
    let mut c = Collector { caches };
    crate::drive!("garbage-collector", wake, resync, c.pass().await)
}

struct Collector {
    caches: Arc<Caches>,
}

fn uids<K: Resource>(objs: &[Arc<K>]) -> impl Iterator<Item = String> + '_ {
    objs.iter().filter_map(|o| o.meta().uid.clone())
}

impl Collector {
    async fn pass(&mut self) -> Next {
        let c = &self.caches;
        let mut live: HashSet<String> = HashSet::new();
        let rs = c.replica_sets().all();
        let deps = c.deployments().all();
        let dss = c.daemon_sets().all();
        let svcs = c.services().all();
        live.extend(uids(&rs));
        live.extend(uids(&deps));
        live.extend(uids(&dss));
        live.extend(uids(&svcs));
        let jobs = c.jobs().all();
        live.extend(uids(&c.stateful_sets().all()));
        live.extend(uids(&jobs));
        live.extend(uids(&c.cron_jobs().all()));
        let mut next = Next::Idle;
        next = next.min(self.collect(&c.pods().all(), &live).await);
        next = next.min(self.collect(&rs, &live).await);
        next = next.min(self.collect(&jobs, &live).await);
        next = next.min(self.collect(&c.endpoint_slices().all(), &live).await);
        next
    }

    async fn collect<K>(&self, objs: &[Arc<K>], live: &HashSet<String>) -> Next
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let client = self.caches.client();
        let mut next = Next::Idle;
        for o in objs {
            let m = o.meta();
            if m.deletion_timestamp.is_some() {
                continue;
            }
            let owners = m.owner_references.as_deref().unwrap_or(&[]);
            if !orphaned(owners, live) {
                continue;
            }
            let ns = m.namespace.clone().unwrap_or_default();
            match owners_really_gone(client, &ns, owners).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    crate::log_write_error("garbage-collector", "owner lookup", &e);
                    next = Next::After(RETRY);
                    continue;
                }
            }
            let name = m.name.clone().unwrap_or_default();
            tracing::info!(kind = %K::kind(&()), object = %format!("{ns}/{name}"), "collecting orphan");
            let api: kube::Api<K> = kube::Api::namespaced(client.clone(), &ns);
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: m.uid.clone(),
                    resource_version: None,
                }),
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            if let Err(e) = api.delete(&name, &dp).await
                && !crate::benign(&e)
            {
                crate::log_write_error("garbage-collector", "delete orphan", &e);
                next = Next::After(RETRY);
            }
        }
        next
    }
}

/// Asks the API server (not the cache) whether every owner is gone.
async fn owners_really_gone(
    client: &kube::Client,
    ns: &str,
    owners: &[OwnerReference],
) -> Result<bool, kube::Error> {
    for o in owners {
        let found_uid = match o.kind.as_str() {
            "ReplicaSet" => kube::Api::<ReplicaSet>::namespaced(client.clone(), ns)
                .get_opt(&o.name)
                .await?
                .and_then(|x| x.metadata.uid),
            "Deployment" => kube::Api::<Deployment>::namespaced(client.clone(), ns)
                .get_opt(&o.name)
                .await?
                .and_then(|x| x.metadata.uid),
            "DaemonSet" => kube::Api::<DaemonSet>::namespaced(client.clone(), ns)
                .get_opt(&o.name)
                .await?
                .and_then(|x| x.metadata.uid),
            "Service" => kube::Api::<Service>::namespaced(client.clone(), ns)
                .get_opt(&o.name)
                .await?
                .and_then(|x| x.metadata.uid),
            "StatefulSet" => kube::Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get_opt(&o.name)
                .await?
                .and_then(|x| x.metadata.uid),
            "Job" => kube::Api::<Job>::namespaced(client.clone(), ns)
                .get_opt(&o.name)
                .await?
                .and_then(|x| x.metadata.uid),
            "CronJob" => kube::Api::<CronJob>::namespaced(client.clone(), ns)
                .get_opt(&o.name)
                .await?
                .and_then(|x| x.metadata.uid),
            _ => return Ok(false),
        };
        if found_uid.as_deref() == Some(o.uid.as_str()) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(kind: &str, uid: &str) -> OwnerReference {
        let api_version = if kind == "Service" { "v1" } else { "apps/v1" };
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: "x".into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    #[test]
    fn orphans_are_objects_whose_known_owners_all_left() {
        let live: HashSet<String> = ["alive".to_string()].into();
        assert!(!orphaned(&[], &live));
        assert!(orphaned(&[owner("ReplicaSet", "gone")], &live));
        assert!(!orphaned(&[owner("ReplicaSet", "alive")], &live));
        assert!(!orphaned(
            &[owner("ReplicaSet", "gone"), owner("Deployment", "alive")],
            &live
        ));
        assert!(orphaned(&[owner("StatefulSet", "gone")], &live));
        let job = OwnerReference {
            api_version: "batch/v1".into(),
            ..owner("Job", "gone")
        };
        assert!(orphaned(&[job], &live));
        assert!(!orphaned(&[owner("Unknown", "gone")], &live));
    }
}
