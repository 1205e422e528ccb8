//! podnet-controllers: the control-plane controllers the lab needs (and that
//! kube-controller-manager and kube-scheduler provide on a real cluster):
//! node IPAM, a scheduler, Deployment → ReplicaSet → Pod, DaemonSet,
//! StatefulSet, Job, CronJob → Job, EndpointSlice + Endpoints, and garbage
//! collection of orphaned pods and Jobs.
//!
//! Every controller is a level-triggered reconciler over shared kube-rs
//! reflectors ([`cache::Caches`]): a change wakes it, it compares the whole
//! desired state with what the caches show and writes only differences, so
//! running a pass twice changes nothing. The code only talks to the API
//! through `kube::Client`, so it runs the same against a real cluster.

pub mod cache;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
pub mod events;
pub mod gc;
pub mod job;
pub mod node_ipam;
pub mod replicaset;
pub mod scheduler;
pub mod statefulset;
pub mod util;

use std::time::Duration;

pub use cache::Caches;

/// Errors of the controllers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The configuration cannot work (e.g. a cluster CIDR too small for
    /// its per-node mask).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The kubeconfig (or in-cluster configuration) could not be used.
    #[error("client configuration: {0}")]
    Client(String),
    /// A controller task panicked.
    #[error("controller task failed: {0}")]
    Task(String),
}

/// What the controllers need to know about the cluster.
#[derive(Debug, Clone)]
pub struct ControllersConfig {
    /// Cluster pod CIDRs, one per family (the lab: `10.244.0.0/16`, and
    /// `fd00:10:244::/56` when dual-stack). Each node gets one subnet of each.
    pub cluster_cidrs: Vec<ipnet::IpNet>,
    /// Prefix length of a node's IPv4 pod CIDR (24).
    pub node_mask_v4: u8,
    /// Prefix length of a node's IPv6 pod CIDR (64).
    pub node_mask_v6: u8,
    /// How often every controller looks again with no change seen (catches
    /// time-based conditions such as minReadySeconds).
    pub resync: Duration,
    /// Whether node IPAM assigns pod CIDRs (kube-controller-manager's
    /// `--allocate-node-cidrs`); off, nodes keep the CIDRs someone else
    /// sets, or none.
    pub allocate_node_cidrs: bool,
}

impl Default for ControllersConfig {
    fn default() -> Self {
        ControllersConfig {
            cluster_cidrs: vec!["10.244.0.0/16".parse().expect("valid cidr")],
            node_mask_v4: 24,
            node_mask_v6: 64,
            resync: Duration::from_secs(5),
            allocate_node_cidrs: true,
        }
    }
}

/// A client from a kubeconfig file (the lab's `podnet controllers
/// --kubeconfig PATH`), or, without one, the in-cluster or default config.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Client(format!("reading {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Client(format!("using {}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Client(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(Error::Kube)
}

/// Runs every controller over one shared set of caches until the future is
/// dropped (cancelled) or a controller fails to start.
pub async fn run(client: kube::Client, config: ControllersConfig) -> Result<(), Error> {
    let caches = Caches::new(client);
    let ipam = node_ipam::NodeIpam::new(&config)?;
    tracing::info!(cidrs = ?config.cluster_cidrs, "controllers starting");
    // One task per controller, so they use every core; the set aborts them
    // all when this future is dropped.
    let mut set = tokio::task::JoinSet::new();
    if config.allocate_node_cidrs {
        set.spawn(node_ipam::run_with(caches.clone(), ipam, config.resync));
    }
    set.spawn(scheduler::run_with(caches.clone(), config.resync));
    set.spawn(deployment::run_with(caches.clone(), config.resync));
    set.spawn(replicaset::run_with(caches.clone(), config.resync));
    set.spawn(daemonset::run_with(caches.clone(), config.resync));
    set.spawn(statefulset::run_with(caches.clone(), config.resync));
    set.spawn(job::run_with(caches.clone(), config.resync));
    set.spawn(cronjob::run_with(caches.clone(), config.resync));
    set.spawn(endpointslice::run_with(caches.clone(), config.resync));
    set.spawn(gc::run_with(caches.clone(), config.resync));
    drop(caches);
    while let Some(done) = set.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(Error::Task(e.to_string())),
        }
    }
    Ok(())
}

/// What a reconcile pass asks of the loop that drives it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Next {
    /// Wait for the next change (or the resync period).
    #[default]
    Idle,
    /// Look again after this long even without a change (a write failed,
    /// or a time-based condition is pending).
    After(Duration),
}

impl Next {
    /// The sooner of two requests.
    pub(crate) fn min(self, other: Next) -> Next {
        match (self, other) {
            (Next::Idle, o) | (o, Next::Idle) => o,
            (Next::After(a), Next::After(b)) => Next::After(a.min(b)),
        }
    }
}

/// How long to wait before retrying after a failed write.
pub(crate) const RETRY: Duration = Duration::from_millis(200);

/// The loop every controller runs: `$pass` (an expression awaiting one
/// reconcile pass, giving a [`Next`]), then wait for a change, the requested
/// delay or the resync period; forever. A macro rather than a function so
/// each controller's future stays a concrete (Send) type.
macro_rules! drive {
    ($name:expr, $wake:expr, $resync:expr, $pass:expr) => {{
        tracing::info!(controller = $name, "running");
        loop {
            let wait = match $pass {
                $crate::Next::Idle => $resync,
                $crate::Next::After(d) => d.min($resync),
            };
            let _ = tokio::time::timeout(wait, $wake.notified()).await;
        }
    }};
}
pub(crate) use drive;

/// Whether an API error means the object is already gone (or changed under
/// us): the next pass sees the new state, nothing to report.
pub(crate) fn benign(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
}

/// Logs a failed write at the right level.
pub(crate) fn log_write_error(controller: &'static str, what: &str, e: &kube::Error) {
    if benign(e) {
        tracing::debug!(controller, what, error = %e, "write raced another change");
    } else {
        tracing::warn!(controller, what, error = %e, "write failed (will retry)");
    }
}

/// Compile-time check: every controller future is Send, so callers may
/// `tokio::spawn` them.
#[allow(dead_code)]
fn send_check(c: std::sync::Arc<Caches>, cfg: ControllersConfig) {
    fn is_send<T: Send>(_: T) {}
    is_send(run(c.client().clone(), cfg));
}
