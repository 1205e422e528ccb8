//! Shared watch caches: one kube-rs reflector per kind, started on first use,
//! each poking the controllers that asked to be woken on its changes.
//!
//! Controllers are level-triggered: a wake-up means "something changed,
//! look again", never "this object changed"; wake-ups coalesce.

use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

/// One kind's cache: the reflector's store and who to wake on change.
pub struct Cache<K: Resource<DynamicType = ()> + 'static> {
    /// The objects as last seen by the watch.
    pub store: Store<K>,
    listeners: Arc<Mutex<Vec<Arc<Notify>>>>,
    /// True once the first full list has been applied. (kube's
    /// `Store::wait_until_ready` wakes only one of several waiting tasks.)
    synced: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    fn start(client: kube::Client) -> Cache<K> {
        let api: kube::Api<K> = kube::Api::all(client);
        let (store, writer) = reflector::store();
        let listeners: Arc<Mutex<Vec<Arc<Notify>>>> = Arc::default();
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|o: &mut K| {
                // Managed fields are most of an object's size and never read here.
                o.meta_mut().managed_fields = None;
            });
        let stream = reflector::reflector(writer, stream);
        let l = listeners.clone();
        let (synced_tx, synced) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(ev) => {
                        if matches!(ev, watcher::Event::InitDone) {
                            synced_tx.send_replace(true);
                        }
                        for n in l.lock().expect("listeners").iter() {
                            n.notify_one();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(kind = %K::kind(&()), error = %e, "watch error (retrying)")
                    }
                }
            }
        });
        Cache {
            store,
            listeners,
            synced,
            task,
        }
    }

    /// Wakes `n` on every change of this kind.
    pub fn wake_on_change(&self, n: &Arc<Notify>) {
        self.listeners.lock().expect("listeners").push(n.clone());
    }

    /// Waits until the first full list has been seen.
    pub async fn ready(&self) {
        let mut rx = self.synced.clone();
        // The sender lives in the reflector task for as long as the cache.
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Every cached object.
    pub fn all(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// The cached copy of `obj` as the watch shows it now, if it is still
    /// the same object (same uid) and not being deleted. A controller in
    /// the middle of a burst of writes reads this between batches, so a
    /// change made meanwhile (a scale-down, a delete) stops the burst.
    pub fn current(&self, obj: &K) -> Option<Arc<K>> {
        let meta = obj.meta();
        let mut r = reflector::ObjectRef::new(meta.name.as_deref()?);
        if let Some(ns) = meta.namespace.as_deref() {
            r = r.within(ns);
        }
        self.store
            .get(&r)
            .filter(|o| o.meta().uid == meta.uid && o.meta().deletion_timestamp.is_none())
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Drop for Cache<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The caches of every kind the controllers read, each started the first
/// time a controller asks for it. Dropping the last handle stops the watches.
pub struct Caches {
    client: kube::Client,
    nodes: OnceLock<Cache<Node>>,
    pods: OnceLock<Cache<Pod>>,
    services: OnceLock<Cache<Service>>,
    endpoint_slices: OnceLock<Cache<EndpointSlice>>,
    endpoints: OnceLock<Cache<Endpoints>>,
    replica_sets: OnceLock<Cache<ReplicaSet>>,
    deployments: OnceLock<Cache<Deployment>>,
    daemon_sets: OnceLock<Cache<DaemonSet>>,
    stateful_sets: OnceLock<Cache<StatefulSet>>,
    jobs: OnceLock<Cache<Job>>,
    cron_jobs: OnceLock<Cache<CronJob>>,
}

macro_rules! accessor {
    ($name:ident, $kind:ty) => {
        #[doc = concat!("The cache of ", stringify!($kind), "s (started on first use).")]
        pub fn $name(&self) -> &Cache<$kind> {
            self.$name.get_or_init(|| Cache::start(self.client.clone()))
        }
    };
}

impl Caches {
    /// Caches over `client`; nothing is watched until asked for.
    pub fn new(client: kube::Client) -> Arc<Caches> {
        Arc::new(Caches {
            client,
            nodes: OnceLock::new(),
            pods: OnceLock::new(),
            services: OnceLock::new(),
            endpoint_slices: OnceLock::new(),
            endpoints: OnceLock::new(),
            replica_sets: OnceLock::new(),
            deployments: OnceLock::new(),
            daemon_sets: OnceLock::new(),
            stateful_sets: OnceLock::new(),
            jobs: OnceLock::new(),
            cron_jobs: OnceLock::new(),
        })
    }

    /// The API client the caches watch through (controllers write with it).
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    accessor!(nodes, Node);
    accessor!(pods, Pod);
    accessor!(services, Service);
    accessor!(endpoint_slices, EndpointSlice);
    accessor!(endpoints, Endpoints);
    accessor!(replica_sets, ReplicaSet);
    accessor!(deployments, Deployment);
    accessor!(daemon_sets, DaemonSet);
    accessor!(stateful_sets, StatefulSet);
    accessor!(jobs, Job);
    accessor!(cron_jobs, CronJob);
}
