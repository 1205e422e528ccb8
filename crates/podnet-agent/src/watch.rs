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

/// What [`batch_or_tick`] woke for.
pub enum Woke<T> {
    /// A batch of messages.
    Batch(Vec<T>),
    /// The drift-check interval elapsed.
    Tick,
    /// Every sender is gone.
    Closed,
}

/// Waits for one message, then collects whatever else arrives within a
/// couple of milliseconds (a burst becomes one batch); or the tick of `tick` (if any) when it comes first. A
/// message once received is never lost to the tick: the rest of the batch
/// is collected in the branch that received it.
pub async fn batch_or_tick<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    tick: &mut Option<tokio::time::Interval>,
) -> Woke<T> {
    let ticked = async {
        match tick {
            Some(t) => {
                t.tick().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        m = rx.recv() => match m {
            None => Woke::Closed,
            Some(first) => {
                let mut out = vec![first];
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                while let Ok(m) = rx.try_recv() {
                    out.push(m);
                }
                Woke::Batch(out)
            }
        },
        () = ticked => Woke::Tick,
    }
}

/// The drift-check interval of `seconds` (None: off); its first tick is
/// one interval away, not now.
pub fn drift_tick(seconds: u64) -> Option<tokio::time::Interval> {
    (seconds > 0).then(|| {
        let period = std::time::Duration::from_secs(seconds);
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    })
}
