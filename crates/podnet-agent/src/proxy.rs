//! The agent's service proxy (podnet's kube-proxy): Services and
//! EndpointSlices watched with kube-rs, planned by `podnet_core::proxy`, and
//! applied by the nftables (default) or iptables backend, one atomic
//! transaction per change. Bursts of watch events are coalesced into one
//! sync (a few milliseconds), so scaling a Deployment is one transaction.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use podnet_core::proxy::{NodeFacts, plan};
use podnet_dataplane::proxy::{IptablesProxy, NftProxy, Target};
use tokio::sync::mpsc;

use crate::AgentArgs;

enum Backend {
    Nft(NftProxy),
    Iptables(IptablesProxy),
}

/// What changed: a keyed object set or removed.
enum Change {
    Service(String, Option<Box<Service>>),
    Slice(String, Option<Box<EndpointSlice>>),
    Resynced,
}

fn key(ns: &Option<String>, name: &Option<String>) -> String {
    format!(
        "{}/{}",
        ns.clone().unwrap_or_default(),
        name.clone().unwrap_or_default()
    )
}

async fn watch<K, F>(api: Api<K>, tx: mpsc::UnboundedSender<Change>, wrap: F)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    F: Fn(String, Option<Box<K>>) -> Change,
{
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        let change = match ev {
            Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                let m = o.meta();
                wrap(key(&m.namespace, &m.name), Some(Box::new(o)))
            }
            Ok(watcher::Event::Delete(o)) => {
                let m = o.meta();
                wrap(key(&m.namespace, &m.name), None)
            }
            Ok(watcher::Event::InitDone) => Change::Resynced,
            Ok(watcher::Event::Init) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "proxy watch");
                continue;
            }
        };
        if tx.send(change).is_err() {
            return;
        }
    }
}

/// Runs the proxy until the watches end.
pub async fn run(client: kube::Client, args: AgentArgs) -> anyhow::Result<()> {
    // Bridged pod traffic must pass the netfilter hooks for service
    // translation between pods on one bridge (kube-proxy's requirement).
    for (k, v) in [
        ("net/bridge/bridge-nf-call-iptables", "1"),
        ("net/ipv4/ip_forward", "1"),
    ] {
        if let Err(e) = std::fs::write(format!("/proc/sys/{k}"), v) {
            tracing::warn!(sysctl = k, error = %e, "cannot set");
        }
    }
    let node = NodeFacts {
        node_name: args.node.clone(),
        cluster_cidrs: vec!["10.244.0.0/16".parse()?],
    };
    let mut backend = if args.proxy_mode == "iptables" {
        Backend::Iptables(IptablesProxy::new(Target::current()))
    } else {
        Backend::Nft(NftProxy::new(Target::current()))
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(watch(
        Api::<Service>::all(client.clone()),
        tx.clone(),
        Change::Service,
    ));
    tokio::spawn(watch(Api::<EndpointSlice>::all(client), tx, Change::Slice));
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut synced = 0;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        tokio::time::sleep(Duration::from_millis(2)).await;
        while let Ok(c) = rx.try_recv() {
            batch.push(c);
        }
        for c in batch {
            match c {
                Change::Service(k, Some(s)) => {
                    services.insert(k, *s);
                }
                Change::Service(k, None) => {
                    services.remove(&k);
                }
                Change::Slice(k, Some(s)) => {
                    slices.insert(k, *s);
                }
                Change::Slice(k, None) => {
                    slices.remove(&k);
                }
                Change::Resynced => synced += 1,
            }
        }
        if synced < 2 {
            continue; // both initial lists first: never program half a world
        }
        let svcs: Vec<Service> = services.values().cloned().collect();
        let sls: Vec<EndpointSlice> = slices.values().cloned().collect();
        let p = plan(&svcs, &sls, &node);
        for problem in &p.problems {
            tracing::warn!(%problem, "proxy input left out");
        }
        let result = tokio::task::block_in_place(|| match &mut backend {
            Backend::Nft(b) => b.sync_owned(p.state).map(drop),
            Backend::Iptables(b) => b.sync(&p.state).map(drop),
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "proxy sync failed");
        }
    }
    Ok(())
}
