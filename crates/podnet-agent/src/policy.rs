//! NetworkPolicy enforcement on this node: Pods, Namespaces and
//! NetworkPolicies watched with kube-rs, planned by `podnet_core::policy`
//! into sets keyed by address (the rule count never grows), applied as one
//! transaction per batch. The table stays in the kernel when the agent is
//! gone: isolated pods stay isolated (fail closed).

use std::sync::{Mutex, OnceLock};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use podnet_core::policy::{NodeFacts, PodFacts, PolicyWorld, plan_world};
use podnet_dataplane::nft;
use podnet_dataplane::policy::PolicyApplier;
use tokio::sync::mpsc;

use crate::AgentArgs;
use crate::watch::{self, Update};

/// The node's applier, shared with the `/metrics` endpoint: counters are
/// read from the kernel and attributed with the state it last applied.
static APPLIER: OnceLock<Mutex<PolicyApplier<'static>>> = OnceLock::new();

/// The policy drop counters as Prometheus text. Before the first sync
/// there is no table to read: only the help and type lines.
pub fn metrics() -> anyhow::Result<String> {
    if let Some(applier) = APPLIER.get() {
        let applier = applier.lock().unwrap_or_else(|e| e.into_inner());
        if applier.applied().is_some() {
            return Ok(applier.metrics()?);
        }
    }
    let empty = podnet_core::policy::render_drop_metrics(&Default::default(), &Default::default());
    Ok(empty
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect())
}

enum Change {
    /// Only the facts policy needs of a pod are kept.
    Pod(Update<PodFacts>),
    Namespace(Update<Namespace>),
    Policy(Update<NetworkPolicy>),
}

/// Runs policy enforcement until the watches end.
/// `programmed` is told once the first full world is in the kernel.
pub async fn run(
    client: kube::Client,
    args: AgentArgs,
    pod_cidr: Ipv4Net,
    programmed: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let mut programmed = Some(programmed);
    let facts = NodeFacts {
        node_name: args.node.clone(),
        pod_cidrs: vec![pod_cidr],
    };
    let applier = APPLIER.get_or_init(|| Mutex::new(PolicyApplier::new(nft::Namespace::Current)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    watch::spawn_mapped(
        Api::<Pod>::all(client.clone()),
        tx.clone(),
        |p| PodFacts::from_pod(&p),
        Change::Pod,
    );
    watch::spawn(
        Api::<Namespace>::all(client.clone()),
        tx.clone(),
        Change::Namespace,
    );
    watch::spawn(Api::<NetworkPolicy>::all(client), tx, Change::Policy);
    // The world is kept between batches and planned again only when a
    // batch changed something a plan depends on: in a burst of pod starts
    // most updates are status (conditions, container states), and every
    // agent sees every pod's.
    let mut world = PolicyWorld::new(&[], &[], &[]).expect("an empty world is valid");
    let mut synced = 0;
    let mut dirty = true;
    while let Some(batch) = watch::batch(&mut rx).await {
        for c in batch {
            match c {
                Change::Pod(Update::Set(_, pod)) => dirty |= world.upsert_pod_facts(*pod),
                Change::Pod(Update::Gone(key)) => {
                    let (ns, name) = key.split_once('/').unwrap_or(("", &key));
                    dirty |= world.remove_pod(ns, name);
                }
                Change::Namespace(Update::Set(_, ns)) => dirty |= world.upsert_namespace(&ns),
                Change::Namespace(Update::Gone(key)) => {
                    world.remove_namespace(key.trim_start_matches('/'));
                    dirty = true;
                }
                Change::Policy(Update::Set(_, np)) => {
                    if let Err(e) = world.upsert_policy(&np) {
                        tracing::warn!(error = %e, policy = ?np.metadata.name, "policy refused; keeping its last version");
                    }
                    dirty = true;
                }
                Change::Policy(Update::Gone(key)) => {
                    let (ns, name) = key.split_once('/').unwrap_or(("", &key));
                    world.remove_policy(ns, name);
                    dirty = true;
                }
                Change::Pod(Update::Synced)
                | Change::Namespace(Update::Synced)
                | Change::Policy(Update::Synced) => synced += 1,
            }
        }
        if synced < 3 || !dirty {
            continue;
        }
        dirty = false;
        let state = plan_world(&facts, &world);
        let synced = tokio::task::block_in_place(|| {
            applier
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .sync(&state)
        });
        match synced {
            Err(e) => tracing::error!(error = %e, "policy sync failed"),
            Ok(_) => {
                if let Some(tx) = programmed.take() {
                    let _ = tx.send(());
                }
            }
        }
    }
    Ok(())
}
