//! One watch shape for the agent's reconcilers: a kube-rs watcher turned
//! into keyed updates on a channel, so a reconciler can batch a burst of
//! events from several kinds into one plan and one kernel transaction.

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;

/// A change to one kind's view.
pub enum Update<K> {
    /// The object at `namespace/name` is now this.
    Set(String, Box<K>),
    /// The object at `namespace/name` is gone.
    Gone(String),
    /// The initial list is complete.
    Synced,
}

/// `namespace/name` (empty namespace for cluster-scoped kinds).
pub fn key_of(meta: &kube::api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default()
    )
}

/// Streams `api`'s objects as updates, each wrapped into the reconciler's
/// own message type, until the receiver goes away.
pub fn spawn<K, T>(api: Api<K>, tx: mpsc::UnboundedSender<T>, wrap: fn(Update<K>) -> T)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    T: Send + 'static,
{
    spawn_mapped(api, tx, |o| o, wrap)
}

/// [`spawn`], with each object reduced by `map` in the watch task: what
/// waits on the channel is only what the reconciler keeps, so a burst (an
/// initial list of 150,000 pods) is not held as whole objects.
pub fn spawn_mapped<K, V, T>(
    api: Api<K>,
    tx: mpsc::UnboundedSender<T>,
    map: fn(K) -> V,
    wrap: fn(Update<V>) -> T,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    V: Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let update = match ev {
                Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                    Update::Set(key_of(o.meta()), Box::new(map(o)))
                }
                Ok(watcher::Event::Delete(o)) => Update::Gone(key_of(o.meta())),
                Ok(watcher::Event::InitDone) => Update::Synced,
                Ok(watcher::Event::Init) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "watch");
                    continue;
                }
            };
            if tx.send(wrap(update)).is_err() {
                return;
            }
        }
    });
}

/// Waits for one message, then collects whatever else arrives within a
/// couple of milliseconds: a burst becomes one batch.
pub async fn batch<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut out = vec![first];
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    while let Ok(m) = rx.try_recv() {
        out.push(m);
    }
    Some(out)
}
