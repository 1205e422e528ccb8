//! NetworkPolicy enforcement on this node: Pods, Namespaces and
//! NetworkPolicies watched with kube-rs, planned by `podnet_core::policy`
//! into sets keyed by address (the rule count never grows), applied as one
//! transaction per batch. The table stays in the kernel when the agent is
//! gone: isolated pods stay isolated (fail closed).

use std::sync::{Mutex, OnceLock};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use podnet_core::policy::{DropLog, NodeFacts, PodFacts, PolicyWorld, plan_world};
use podnet_dataplane::nft;
use podnet_dataplane::policy::PolicyApplier;
use tokio::sync::mpsc;

use crate::AgentArgs;
use crate::slim::SlimPod;
use crate::watch::{self, Update};

/// The node's applier, shared with the `/metrics` endpoint: counters are
/// read from the kernel and attributed with the state it last applied.
static APPLIER: OnceLock<Mutex<PolicyApplier<'static>>> = OnceLock::new();

/// The agent's policy world, shared with the drop reader: a refused
/// packet is named (its pods, the policies isolating it) with the same
/// world that planned the table.
pub fn world() -> &'static Mutex<PolicyWorld> {
    static WORLD: OnceLock<Mutex<PolicyWorld>> = OnceLock::new();
    WORLD.get_or_init(|| {
        Mutex::new(PolicyWorld::new(&[], &[], &[]).expect("an empty world is valid"))
    })
}

/// The policy drop counters as Prometheus text: per pod and direction,
/// and summed per isolating policy and direction. Before the first sync
/// there is no table to read: only the help and type lines.
pub fn metrics() -> anyhow::Result<String> {
    if let Some(applier) = APPLIER.get() {
        let applier = applier.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = applier.applied() {
            let counters = applier.drop_counts()?;
            let mut text = podnet_core::policy::render_drop_metrics(state, &counters);
            let mut by: std::collections::BTreeMap<(String, &str), u64> = Default::default();
            for d in &counters.pods {
                if let Some(iso) = state.isolated.get(&(d.dir, d.addr)) {
                    for p in &iso.policies {
                        *by.entry((p.clone(), d.dir.as_str())).or_default() += d.packets;
                    }
                }
            }
            text.push_str("# HELP podnet_policy_drops_total Packets refused by NetworkPolicy (the kernel's counters), per isolating policy and direction; a packet refused where two policies isolate counts for both.\n# TYPE podnet_policy_drops_total counter\n");
            for ((policy, dir), n) in by {
                let (ns, name) = policy.split_once('/').unwrap_or(("", ""));
                text.push_str(&format!(
                    "podnet_policy_drops_total{{policy=\"{policy}\",namespace=\"{ns}\",name=\"{name}\",direction=\"{dir}\"}} {n}\n"
                ));
            }
            return Ok(text);
        }
    }
    let empty = podnet_core::policy::render_drop_metrics(&Default::default(), &Default::default());
    Ok(empty
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect())
}

/// Reloads the table when it is gone or a chain lost rules (a flush, a
/// `delete table`): the state last applied, in one transaction.
fn repair_drift(applier: &Mutex<PolicyApplier<'static>>) {
    let mut applier = applier.lock().unwrap_or_else(|e| e.into_inner());
    let Some(state) = applier.applied().cloned() else {
        return; // not programmed yet: nothing to compare with
    };
    match applier.table_intact() {
        Ok(true) => crate::drift::checked("policy"),
        Ok(false) => {
            crate::drift::checked("policy");
            tracing::warn!(
                table = podnet_core::policy::TABLE,
                "policy table drifted (deleted, or rules gone); reloading it"
            );
            match applier.resync(&state) {
                Ok(_) => crate::drift::repaired("policy-table", 1),
                Err(e) => tracing::error!(error = %e, "reloading the policy table"),
            }
        }
        Err(e) => tracing::warn!(error = %e, "checking the policy table"),
    }
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
    let log = (args.drop_log_rate > 0).then_some(DropLog {
        group: args.drop_log_group,
        rate: args.drop_log_rate,
        burst: args.drop_log_burst,
    });
    let applier = APPLIER
        .get_or_init(|| Mutex::new(PolicyApplier::new(nft::Namespace::Current).with_drop_log(log)));
    if log.is_some() {
        crate::drops::start(args.node.clone(), args.drop_log_group, world());
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Pods are decoded to what their facts need (see `slim`), then reduced
    // to those facts in the watch task.
    watch::spawn_mapped(
        Api::<SlimPod>::all(client.clone()),
        tx.clone(),
        |p| PodFacts::from_pod(&p.0),
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
    let mut synced = 0;
    let mut dirty = true;
    let mut tick = watch::drift_tick(args.reconcile_interval);
    loop {
        let batch = match watch::batch_or_tick(&mut rx, &mut tick).await {
            watch::Woke::Batch(b) => b,
            watch::Woke::Closed => break,
            watch::Woke::Tick => {
                tokio::task::block_in_place(|| repair_drift(applier));
                continue;
            }
        };
        // Off the async workers: a plan over 150,000 pods takes a few
        // hundred ms, and the route and proxy watches must not wait for it.
        let state = tokio::task::block_in_place(|| {
            let mut world = world().lock().unwrap_or_else(|e| e.into_inner());
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
                return None;
            }
            dirty = false;
            Some(plan_world(&facts, &world))
        });
        let Some(state) = state else {
            continue;
        };
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
