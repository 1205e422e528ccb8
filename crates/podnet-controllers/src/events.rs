//! Events as the real components record them: one Event per distinct
//! (object, type, reason, message) from a source, and a repeat bumps its
//! `count` and `lastTimestamp` instead of adding another, as client-go's
//! event correlator does. `kubectl describe` then shows `x5 over 2m`
//! rather than five lines. Events expire on the server (kube-apiserver's
//! `--event-ttl`).

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};

/// Who records: the component (`kubelet`, `default-scheduler`,
/// `replicaset-controller`, ...) and, for a kubelet, its node.
#[derive(Clone, Debug)]
pub struct Source {
    /// `source.component` and `reportingComponent`.
    pub component: String,
    /// `source.host` (the node of a kubelet).
    pub host: Option<String>,
}

type Key = (String, String, String, String, String, String);

/// Events this process recorded: key → (event name, count).
static SEEN: Mutex<Option<HashMap<Key, (String, i32)>>> = Mutex::new(None);

/// How many distinct events a process remembers for aggregation.
const REMEMBERED: usize = 4096;

/// Records an Event about `obj`, or counts a repeat of one recorded before.
pub async fn record<K: kube::Resource<DynamicType = ()>>(
    client: &kube::Client,
    source: &Source,
    obj: &K,
    type_: &str,
    reason: &str,
    msg: &str,
) -> Result<(), kube::Error> {
    let meta = obj.meta();
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let name = meta.name.clone().unwrap_or_default();
    let key: Key = (
        source.component.clone(),
        ns.clone(),
        meta.uid.clone().unwrap_or_else(|| name.clone()),
        type_.into(),
        reason.into(),
        msg.into(),
    );
    let now = crate::util::now();
    let api: kube::Api<Event> = kube::Api::namespaced(client.clone(), &ns);
    let previous = SEEN
        .lock()
        .expect("events lock")
        .get_or_insert_with(HashMap::new)
        .get(&key)
        .cloned();
    if let Some((event, count)) = previous {
        let patch = serde_json::json!({"count": count + 1, "lastTimestamp": now});
        match api
            .patch(&event, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                remember(key, event, count + 1);
                return Ok(());
            }
            // Expired or deleted: record it anew.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let event_name = format!("{name}.{nanos:x}");
    let ev = Event {
        metadata: ObjectMeta {
            name: Some(event_name.clone()),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: Some(name),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(msg.into()),
        type_: Some(type_.into()),
        source: Some(EventSource {
            component: Some(source.component.clone()),
            host: source.host.clone(),
        }),
        reporting_component: Some(source.component.clone()),
        reporting_instance: Some(
            source
                .host
                .clone()
                .unwrap_or_else(|| source.component.clone()),
        ),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    };
    api.create(&PostParams::default(), &ev).await?;
    remember(key, event_name, 1);
    Ok(())
}

fn remember(key: Key, event: String, count: i32) {
    let mut seen = SEEN.lock().expect("events lock");
    let seen = seen.get_or_insert_with(HashMap::new);
    if seen.len() >= REMEMBERED && !seen.contains_key(&key) {
        seen.clear();
    }
    seen.insert(key, (event, count));
}

/// [`record`] in the background, for a controller that must not wait on
/// its Events (one per pod of a burst); a failure is only logged.
pub fn record_later<K>(
    client: &kube::Client,
    component: &'static str,
    obj: &K,
    type_: &'static str,
    reason: &'static str,
    msgs: Vec<String>,
) where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let (client, obj) = (client.clone(), obj.clone());
    tokio::spawn(async move {
        let source = Source {
            component: component.into(),
            host: None,
        };
        for msg in msgs {
            if let Err(e) = record(&client, &source, &obj, type_, reason, &msg).await {
                tracing::debug!(error = %e, reason, "event not recorded");
            }
        }
    });
}
