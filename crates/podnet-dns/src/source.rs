//! Where the objects come from: kube-rs reflectors on Services,
//! EndpointSlices, Pods and Namespaces (in-cluster config or a
//! kubeconfig), or a static file of objects for tests and benchmarks.
//! Changes are debounced; from the watches they update the records of the
//! Services they touch (a full rebuild only when a change reaches further),
//! from a file they rebuild; either way the new index is swapped in
//! atomically.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use podnet_core::dns::{
    Config, Index, Objects, PodMode, ServiceKey, ServiceObjects, group_by_service,
    service_key_of_pod, service_key_of_slice,
};
use tokio::sync::Notify;

use crate::server::Shared;

/// Why a file of objects could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It is not JSON.
    #[error("{path}: not JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// An object of a kind the index does not use, or that does not decode.
    #[error("{path}: object #{n} ({kind}): {reason}")]
    Object {
        /// The file.
        path: PathBuf,
        /// Position of the object in the file.
        n: usize,
        /// Its kind.
        kind: String,
        /// What is wrong.
        reason: String,
    },
}

fn push_object(
    objs: &mut Objects,
    v: serde_json::Value,
    path: &Path,
    n: &mut usize,
) -> Result<(), LoadError> {
    let kind = v
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    if kind == "List" || kind.ends_with("List") {
        let items = v
            .get("items")
            .and_then(|i| i.as_array())
            .cloned()
            .unwrap_or_default();
        for item in items {
            push_object(objs, item, path, n)?;
        }
        return Ok(());
    }
    *n += 1;
    let err = |reason: String| LoadError::Object {
        path: path.into(),
        n: *n,
        kind: kind.clone(),
        reason,
    };
    match kind.as_str() {
        "Service" => objs.services.push(Arc::new(
            serde_json::from_value(v).map_err(|e| err(e.to_string()))?,
        )),
        "EndpointSlice" => objs.endpoint_slices.push(Arc::new(
            serde_json::from_value(v).map_err(|e| err(e.to_string()))?,
        )),
        "Pod" => objs.pods.push(Arc::new(
            serde_json::from_value(v).map_err(|e| err(e.to_string()))?,
        )),
        "Namespace" => objs.namespaces.push(Arc::new(
            serde_json::from_value(v).map_err(|e| err(e.to_string()))?,
        )),
        _ => {
            return Err(err(
                "expected Service, EndpointSlice, Pod, Namespace or a List of them".into(),
            ));
        }
    }
    Ok(())
}

/// Loads objects from a JSON file: one object, a `List` (as `kubectl get -o
/// json` prints), an array, or a stream of objects.
pub fn load_objects(path: &Path) -> Result<Objects, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.into(),
        source,
    })?;
    let mut objs = Objects::default();
    let mut n = 0;
    for v in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>() {
        let v = v.map_err(|source| LoadError::Json {
            path: path.into(),
            source,
        })?;
        match v {
            serde_json::Value::Array(items) => {
                for item in items {
                    push_object(&mut objs, item, path, &mut n)?;
                }
            }
            v => push_object(&mut objs, v, path, &mut n)?,
        }
    }
    Ok(objs)
}

/// Rebuilds from `objects` with the next SOA serial and swaps it in.
pub fn publish(shared: &Shared, config: &Config, serial: &AtomicU32, objects: &Objects) {
    let mut cfg = config.clone();
    cfg.serial = serial.fetch_add(1, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let index = Index::build(cfg, objects);
    tracing::debug!(
        records = index.record_count(),
        took_us = started.elapsed().as_micros() as u64,
        "index rebuilt"
    );
    shared.swap(index);
    release_freed_memory();
}

/// Hands memory freed by the previous index and the objects' parse back to
/// the kernel (glibc keeps freed heap otherwise, and a DNS pod's resident
/// size is what its memory limit is measured against).
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own arenas; it has no
    // preconditions and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Serves from a static file; reloads it on SIGHUP (a bad file is logged and
/// the index in force kept).
pub async fn run_file(shared: Arc<Shared>, config: Config, path: PathBuf) -> Result<()> {
    let serial = AtomicU32::new(unix_serial());
    let objects = load_objects(&path).with_context(|| format!("loading {}", path.display()))?;
    let services = objects.services.len();
    publish(&shared, &config, &serial, &objects);
    drop(objects);
    release_freed_memory();
    shared.mark_ready();
    tracing::info!(path = %path.display(), services, "zone loaded from file");
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    while hup.recv().await.is_some() {
        match load_objects(&path) {
            Ok(objects) => {
                let services = objects.services.len();
                publish(&shared, &config, &serial, &objects);
                drop(objects);
                release_freed_memory();
                tracing::info!(services, "zone reloaded");
            }
            Err(e) => tracing::error!(error = %e, "reload failed; keeping the index in force"),
        }
    }
    Ok(())
}

fn unix_serial() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

/// Drops the parts of an object the index never reads, so the reflectors'
/// caches stay small (a Pod's containers are most of its size).
pub trait Slim {
    /// Clears unused fields in place.
    fn slim(&mut self);
}

impl Slim for Pod {
    fn slim(&mut self) {
        if let Some(spec) = self.spec.as_mut() {
            *spec = k8s_openapi::api::core::v1::PodSpec {
                hostname: spec.hostname.take(),
                subdomain: spec.subdomain.take(),
                ..Default::default()
            };
        }
        if let Some(st) = self.status.as_mut() {
            *st = k8s_openapi::api::core::v1::PodStatus {
                phase: st.phase.take(),
                pod_ip: st.pod_ip.take(),
                pod_ips: st.pod_ips.take(),
                conditions: st
                    .conditions
                    .take()
                    .map(|c| c.into_iter().filter(|c| c.type_ == "Ready").collect()),
                ..Default::default()
            };
        }
        self.metadata.annotations = None;
        self.metadata.owner_references = None;
    }
}

impl Slim for Service {
    fn slim(&mut self) {
        if let Some(a) = self.metadata.annotations.as_mut() {
            // Only the legacy not-ready annotation matters.
            a.retain(|k, _| k == "service.alpha.kubernetes.io/tolerate-unready-endpoints");
        }
        self.status = None;
    }
}

impl Slim for EndpointSlice {
    fn slim(&mut self) {
        self.metadata.annotations = None;
        self.metadata.owner_references = None;
        for ep in &mut self.endpoints {
            ep.target_ref = None;
            ep.hints = None;
            ep.deprecated_topology = None;
        }
    }
}

impl Slim for Namespace {
    fn slim(&mut self) {
        self.metadata.annotations = None;
        self.metadata.labels = None;
        self.spec = None;
        self.status = None;
    }
}

/// What changed since the last index: the Services whose records must be
/// redone, or everything (a relist, a Namespace, `pods verified`).
#[derive(Debug, Default)]
struct Pending {
    keys: HashSet<ServiceKey>,
    full: bool,
}

/// Changes gathered from the four watches, and the wake-up of the loop
/// that publishes indexes.
#[derive(Debug, Default)]
struct Changes {
    pending: Mutex<Pending>,
    notify: Notify,
}

impl Changes {
    fn mark(&self, keys: impl IntoIterator<Item = ServiceKey>, full: bool) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.keys.extend(keys);
        p.full |= full;
        drop(p);
        self.notify.notify_one();
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Which Services' records an event for one object touches: `Some(keys)`,
/// or `None` for "rebuild everything".
type KeysOf<K> = Box<dyn FnMut(&K, bool) -> Option<Vec<ServiceKey>> + Send>;

/// Starts a reflector for `K`, recording in `changes` which Services each
/// event touches; returns its store.
fn reflect<K>(client: kube::Client, changes: Arc<Changes>, mut keys_of: KeysOf<K>) -> Store<K>
where
    K: Slim
        + Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: kube::Api<K> = kube::Api::all(client);
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|o: &mut K| {
            // Managed fields are most of an object's size and never used.
            o.meta_mut().managed_fields = None;
            o.slim();
        });
    let stream = reflector::reflector(writer, stream);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(o)) => match keys_of(&o, false) {
                    Some(keys) if keys.is_empty() => {}
                    Some(keys) => changes.mark(keys, false),
                    None => changes.mark([], true),
                },
                Ok(watcher::Event::Delete(o)) => match keys_of(&o, true) {
                    Some(keys) if keys.is_empty() => {}
                    Some(keys) => changes.mark(keys, false),
                    None => changes.mark([], true),
                },
                // A (re)list: the store is replaced wholesale and rebuilt
                // from (keys_of still sees each object, to learn owners).
                Ok(watcher::Event::InitApply(o)) => {
                    let _ = keys_of(&o, false);
                }
                Ok(watcher::Event::InitDone) => changes.mark([], true),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&()), error = %e, "watch error (retrying)")
                }
            }
        }
    });
    reader
}

/// Connects to the API server (`kubeconfig`, or in-cluster/inferred config).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster config and no kubeconfig (pass --kubeconfig)")?,
    };
    kube::Client::try_from(config).context("building the API client")
}

/// Watches the cluster and keeps the index current: a full build after all
/// four reflectors have synced (then `/ready`), then, `debounce` after each
/// burst of changes, an incremental update of the Services the changes
/// touch (their records only: [`Index::update`]), or a full build when a
/// change reaches beyond Services (a Namespace, a relist, `pods verified`).
pub async fn run_kube(
    shared: Arc<Shared>,
    config: Config,
    client: kube::Client,
    debounce: Duration,
) -> Result<()> {
    let changes = Arc::new(Changes::default());
    let services: Store<Service> = reflect(
        client.clone(),
        changes.clone(),
        Box::new(|s: &Service, _| {
            Some(vec![(
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            )])
        }),
    );
    // A slice relabelled to another Service touches both.
    let mut slice_owner: HashMap<(String, String), ServiceKey> = HashMap::new();
    let slices: Store<EndpointSlice> = reflect(
        client.clone(),
        changes.clone(),
        Box::new(move |s: &EndpointSlice, deleted| {
            let id = (
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            );
            let now = service_key_of_slice(s);
            let before = if deleted {
                slice_owner.remove(&id)
            } else {
                match &now {
                    Some(k) => slice_owner.insert(id, k.clone()),
                    None => slice_owner.remove(&id),
                }
            };
            Some(now.into_iter().chain(before).collect())
        }),
    );
    let verified = config.pods == PodMode::Verified;
    let pods: Store<Pod> = reflect(
        client.clone(),
        changes.clone(),
        // hostname and subdomain are immutable: a pod only ever touches
        // the Service of its subdomain (and every pod matters to `pods
        // verified`).
        Box::new(move |p: &Pod, _| {
            if verified {
                None
            } else {
                Some(service_key_of_pod(p).into_iter().collect())
            }
        }),
    );
    let namespaces: Store<Namespace> =
        reflect(client, changes.clone(), Box::new(|_: &Namespace, _| None));
    for (kind, ready) in [
        ("Service", services.wait_until_ready().await),
        ("EndpointSlice", slices.wait_until_ready().await),
        ("Pod", pods.wait_until_ready().await),
        ("Namespace", namespaces.wait_until_ready().await),
    ] {
        if ready.is_err() {
            bail!("the {kind} reflector stopped before its first sync");
        }
    }
    let serial = AtomicU32::new(unix_serial());
    let snapshot = || Objects {
        services: services.state(),
        endpoint_slices: slices.state(),
        pods: pods.state(),
        namespaces: namespaces.state(),
    };
    // The objects each Service's records in force were made from.
    let full_build = || {
        changes.take();
        let objects = snapshot();
        publish(&shared, &config, &serial, &objects);
        group_by_service(&objects)
    };
    let mut made_from = full_build();
    shared.mark_ready();
    tracing::info!("first sync done; serving the cluster zone");
    loop {
        changes.notify.notified().await;
        tokio::time::sleep(debounce).await;
        let pending = changes.take();
        if pending.full {
            made_from = full_build();
            continue;
        }
        if pending.keys.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let now = objects_of(&pending.keys, &services, &slices, &pods);
        // The last Service of a namespace without a Namespace object takes
        // the namespace's name with it: only a full build knows.
        let orphaned = pending.keys.iter().any(|k| {
            now[k].service.is_none()
                && made_from.get(k).is_some_and(|o| o.service.is_some())
                && namespaces
                    .get(&kube::runtime::reflector::ObjectRef::new(&k.0))
                    .is_none()
        });
        let empty = ServiceObjects::default();
        let list: Vec<(&ServiceKey, &ServiceObjects, &ServiceObjects)> = pending
            .keys
            .iter()
            .map(|k| (k, made_from.get(k).unwrap_or(&empty), &now[k]))
            .collect();
        let next_serial = serial.fetch_add(1, Ordering::Relaxed);
        let updated = if orphaned {
            None
        } else {
            shared.index().update(next_serial, &list)
        };
        match updated {
            Some(index) => {
                tracing::debug!(
                    services = list.len(),
                    overlay = index.overlay_len(),
                    records = index.record_count(),
                    took_us = started.elapsed().as_micros() as u64,
                    "index updated"
                );
                shared.swap(index);
                for (k, objs) in now {
                    if objs.is_empty() {
                        made_from.remove(&k);
                    } else {
                        made_from.insert(k, objs);
                    }
                }
            }
            None => made_from = full_build(),
        }
    }
}

/// The current objects of the Services `keys` (one pass over each store).
fn objects_of(
    keys: &HashSet<ServiceKey>,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    pods: &Store<Pod>,
) -> HashMap<ServiceKey, ServiceObjects> {
    let mut m: HashMap<ServiceKey, ServiceObjects> = keys
        .iter()
        .map(|k| {
            let service =
                services.get(&kube::runtime::reflector::ObjectRef::new(&k.1).within(&k.0));
            (
                k.clone(),
                ServiceObjects {
                    service,
                    ..Default::default()
                },
            )
        })
        .collect();
    for s in slices.state() {
        if let Some(k) = service_key_of_slice(&s)
            && let Some(o) = m.get_mut(&k)
        {
            o.slices.push(s);
        }
    }
    for p in pods.state() {
        if let Some(k) = service_key_of_pod(&p)
            && let Some(o) = m.get_mut(&k)
        {
            o.pods.push(p);
        }
    }
    m
}
