//! The Node object: registration with addresses and readiness, the pod
//! CIDR the control plane assigns, a heartbeat, and the agent's own mirror
//! pod in `kube-system` so `kubectl get pods -n kube-system` lists it and
//! `kubectl logs` shows its log.

use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::AgentArgs;

/// Now, as Kubernetes writes timestamps (RFC 3339, seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn status(args: &AgentArgs) -> serde_json::Value {
    let t = now();
    json!({
        "addresses": [
            {"type": "InternalIP", "address": args.node_ip.to_string()},
            {"type": "Hostname", "address": args.node},
        ],
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "podnet agent is posting ready status",
            "lastHeartbeatTime": t, "lastTransitionTime": t,
        }],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": args.kubelet_port}},
        "nodeInfo": {
            "architecture": std::env::consts::ARCH, "operatingSystem": "linux",
            "kubeletVersion": "v1.33.0-podnet", "kubeProxyVersion": "v1.33.0-podnet",
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

/// Creates (or refreshes) the Node and waits for its pod CIDR.
pub async fn register(client: &kube::Client, args: &AgentArgs) -> anyhow::Result<Ipv4Net> {
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
            &Patch::Merge(json!({"status": status(args)})),
        )
        .await?;
    mirror_pod(client, args).await?;
    // The control plane's node IPAM fills spec.podCIDR.
    for _ in 0..600 {
        let n = nodes.get(&args.node).await?;
        if let Some(cidr) = n.spec.and_then(|s| s.pod_cidr) {
            return Ok(cidr.parse()?);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no pod CIDR was assigned to node {} within 60 s", args.node)
}

/// Refreshes the Ready condition every 10 s.
pub async fn heartbeat(client: kube::Client, args: AgentArgs) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if let Err(e) = nodes
            .patch_status(
                &args.node,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status(&args)})),
            )
            .await
        {
            tracing::warn!(error = %e, "node heartbeat failed");
        }
        let _ = mirror_pod(&client, &args).await;
    }
}

/// The name of this node's agent pod.
pub fn agent_pod_name(node: &str) -> String {
    format!("podnet-{node}")
}

/// Creates the agent's mirror pod (kube-system, hostNetwork) if missing
/// and marks it running.
async fn mirror_pod(client: &kube::Client, args: &AgentArgs) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let name = agent_pod_name(&args.node);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "kube-system",
            "labels": {"k8s-app": "podnet", "tier": "node"},
            "annotations": {"kubernetes.io/config.source": "podnet-lab", "kubernetes.io/config.mirror": "podnet-agent"},
        },
        "spec": {
            "nodeName": args.node, "hostNetwork": true, "priorityClassName": "system-node-critical",
            "containers": [{"name": "podnet-agent", "image": "podnet/agent:lab"}],
            "tolerations": [{"operator": "Exists"}],
        },
    }))?;
    match pods.create(&PostParams::default(), &pod).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let started = crate::kubelet::AGENT_STARTED.get_or_init(now).clone();
    pods.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running", "hostIP": args.node_ip.to_string(), "podIP": args.node_ip.to_string(),
            "podIPs": [{"ip": args.node_ip.to_string()}], "startTime": started,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": started},
                {"type": "Ready", "status": "True", "lastTransitionTime": started},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": started},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
            ],
            "containerStatuses": [{
                "name": "podnet-agent", "image": "podnet/agent:lab", "imageID": "podnet-lab://agent",
                "containerID": format!("podnet://{}", std::process::id()),
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": started}},
            }],
        }})),
    )
    .await?;
    Ok(())
}
