//! The Node object, as the kubelet keeps it: registration with addresses,
//! labels and capacity, and a heartbeat of the Ready condition. Ready
//! follows the pod network, as the real kubelet's does: `False` with the
//! kubelet's words until a CNI configuration exists on the node. The pod
//! CIDR is the control plane's to assign (the lab's node IPAM, as
//! `kube-controller-manager --allocate-node-cidrs`); the kubelet never
//! writes it.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;

use crate::KubeletArgs;
use crate::network::{NOT_READY_MESSAGE, NetworkState};

/// Now, as Kubernetes writes timestamps (RFC 3339, seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The Ready condition for a network state, with the time it last changed.
fn ready_condition(net: &NetworkState, since: &str) -> serde_json::Value {
    let t = now();
    if net.ready() {
        json!({
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": t, "lastTransitionTime": since,
        })
    } else {
        json!({
            "type": "Ready", "status": "False", "reason": "KubeletNotReady",
            "message": NOT_READY_MESSAGE,
            "lastHeartbeatTime": t, "lastTransitionTime": since,
        })
    }
}

fn status(args: &KubeletArgs, net: &NetworkState, since: &str) -> serde_json::Value {
    json!({
        "addresses": [
            {"type": "InternalIP", "address": args.node_ip.to_string()},
            {"type": "Hostname", "address": args.node},
        ],
        "conditions": [ready_condition(net, since)],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": args.kubelet_port}},
        "nodeInfo": {
            "architecture": std::env::consts::ARCH, "operatingSystem": "linux",
            "kubeletVersion": "v1.33.0-podnet", "kubeProxyVersion": "",
            "containerRuntimeVersion": "podnet-lab://0.1", "osImage": "podnet lab",
            "kernelVersion": kernel(), "machineID": "", "systemUUID": "", "bootID": "",
        },
        "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
    })
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Creates (or refreshes) the Node with its status.
pub async fn register(
    client: &kube::Client,
    args: &KubeletArgs,
    net: &NetworkState,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = json!({
        "kubernetes.io/hostname": args.node,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": std::env::consts::ARCH,
    });
    if args.node.ends_with("control-plane") {
        labels["node-role.kubernetes.io/control-plane"] = json!("");
    }
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": args.node, "labels": labels},
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    nodes
        .patch_status(
            &args.node,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status(args, net, &now())})),
        )
        .await?;
    Ok(())
}

/// Refreshes the Ready condition every 10 s, and at once when the pod
/// network's readiness changes.
pub async fn heartbeat(
    client: kube::Client,
    args: KubeletArgs,
    mut network: watch::Receiver<NetworkState>,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut ready = network.borrow().ready();
    let mut since = now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            r = network.changed() => {
                if r.is_err() {
                    return Ok(());
                }
            }
        }
        let net = network.borrow_and_update().clone();
        if net.ready() != ready {
            ready = net.ready();
            since = now();
            tracing::info!(ready, "node readiness changed (CNI configuration)");
        }
        if let Err(e) = nodes
            .patch_status(
                &args.node,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status(&args, &net, &since)})),
            )
            .await
        {
            tracing::warn!(error = %e, "node heartbeat failed");
        }
    }
}
