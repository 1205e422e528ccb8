//! NetworkPolicy enforcement on this node: Pods, Namespaces and
//! NetworkPolicies watched with kube-rs, planned by `podnet_core::policy`
//! into sets keyed by address (the rule count never grows), applied as one
//! transaction per batch. The table stays in the kernel when the agent is
//! gone: isolated pods stay isolated (fail closed).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use podnet_core::policy::{NodeFacts, plan};
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
    Pod(Update<Pod>),
    Namespace(Update<Namespace>),
    Policy(Update<NetworkPolicy>),
}

/// Runs policy enforcement until the watches end.
pub async fn run(client: kube::Client, args: AgentArgs, pod_cidr: Ipv4Net) -> anyhow::Result<()> {
    let facts = NodeFacts {
        node_name: args.node.clone(),
        pod_cidrs: vec![pod_cidr],
    };
    let applier = APPLIER.get_or_init(|| Mutex::new(PolicyApplier::new(nft::Namespace::Current)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    watch::spawn(Api::<Pod>::all(client.clone()), tx.clone(), Change::Pod);
    watch::spawn(
        Api::<Namespace>::all(client.clone()),
        tx.clone(),
        Change::Namespace,
    );
    watch::spawn(Api::<NetworkPolicy>::all(client), tx, Change::Policy);
    let (mut pods, mut namespaces, mut policies) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let mut synced = 0;
    while let Some(batch) = watch::batch(&mut rx).await {
        for c in batch {
            synced += match c {
                Change::Pod(u) => watch::apply(&mut pods, u),
                Change::Namespace(u) => watch::apply(&mut namespaces, u),
                Change::Policy(u) => watch::apply(&mut policies, u),
            } as u32;
        }
        if synced < 3 {
            continue;
        }
        let p: Vec<Pod> = pods.values().cloned().collect();
        let n: Vec<Namespace> = namespaces.values().cloned().collect();
        let np: Vec<NetworkPolicy> = policies.values().cloned().collect();
        let state = match plan(&facts, &p, &n, &np) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "policy input refused; keeping the last state");
                continue;
            }
        };
        let synced = tokio::task::block_in_place(|| {
            applier
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .sync(&state)
        });
        if let Err(e) = synced {
            tracing::error!(error = %e, "policy sync failed");
        }
    }
    Ok(())
}
