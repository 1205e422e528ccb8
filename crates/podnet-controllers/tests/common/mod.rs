//! The test lab: the real podnet-apiserver in-process on 127.0.0.1 (TLS,
//! the kubeconfig it writes), the controllers over a kube-rs client, and a
//! stand-in kubelet that marks bound pods Running/Ready with an IP from
//! their node's pod CIDR and confirms deletions, as the lab's agent does.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use podnet_controllers::ControllersConfig;
use serde_json::json;

/// The real kubectl the lab is driven with.
pub const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";

/// How long any convergence may take before a test fails (generous: the
/// machine is shared; speed is measured by the benchmark, not here).
pub const CONVERGE: Duration = Duration::from_secs(20);

/// A running lab.
pub struct Lab {
    pub client: kube::Client,
    pub kubeconfig: PathBuf,
    server: Option<podnet_apiserver::Server>,
    controllers: Option<tokio::task::JoinHandle<()>>,
    kubelet: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(c) = self.controllers.take() {
            c.abort();
        }
        if let Some(k) = self.kubelet.take() {
            k.abort();
        }
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PODNET_TEST_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

impl Lab {
    /// Starts the API server and a client; controllers and kubelet are
    /// started separately so tests can stop and restart them.
    pub async fn start() -> Result<Lab> {
        init_tracing();
        let dir = tempfile::tempdir()?;
        let cfg = podnet_apiserver::Config::new("127.0.0.1:0".parse()?, dir.path().join("state"));
        let server = podnet_apiserver::Server::start(cfg)
            .await
            .context("starting podnet-apiserver")?;
        let kubeconfig = server.kubeconfig.clone();
        let client = podnet_controllers::client(Some(&kubeconfig)).await?;
        Ok(Lab {
            client,
            kubeconfig,
            server: Some(server),
            controllers: None,
            kubelet: None,
            _dir: dir,
        })
    }

    /// Starts the API server, the controllers and the stand-in kubelet.
    pub async fn full() -> Result<Lab> {
        let mut lab = Lab::start().await?;
        lab.start_controllers();
        lab.start_kubelet();
        Ok(lab)
    }

    /// Runs `podnet_controllers::run` in the background.
    pub fn start_controllers(&mut self) {
        self.start_controllers_with(self.client.clone());
    }

    /// A client of the lab's admin kubeconfig that acts as `user` (the
    /// admin may impersonate), so RBAC decides what it may do.
    pub async fn client_as(&self, user: &str) -> Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        config.auth_info.impersonate = Some(user.to_string());
        Ok(kube::Client::try_from(config)?)
    }

    /// Runs `podnet_controllers::run` in the background over `client`.
    pub fn start_controllers_with(&mut self, client: kube::Client) {
        let cfg = ControllersConfig {
            resync: Duration::from_secs(1),
            ..Default::default()
        };
        self.controllers = Some(tokio::spawn(async move {
            if let Err(e) = podnet_controllers::run(client, cfg).await {
                panic!("controllers failed: {e}");
            }
        }));
    }

    /// Stops the controllers (as a crash or restart would).
    pub fn stop_controllers(&mut self) {
        if let Some(c) = self.controllers.take() {
            c.abort();
        }
    }

    /// Runs the stand-in kubelet in the background.
    pub fn start_kubelet(&mut self) {
        self.kubelet = Some(tokio::spawn(kubelet(self.client.clone())));
    }

    /// Runs the real kubectl against the lab; Err with its output if it fails.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        if !std::path::Path::new(KUBECTL).exists() {
            bail!(
                "kubectl not found at {KUBECTL}: these tests drive the lab with the real kubectl"
            );
        }
        let out = std::process::Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .context("running kubectl")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("kubectl {} failed: {text}", args.join(" "));
        }
        Ok(text)
    }

    /// Creates a Node with a Ready condition (or NotReady), labels and taints.
    pub async fn node(
        &self,
        name: &str,
        ready: bool,
        labels: &[(&str, &str)],
        taints: serde_json::Value,
    ) -> Result<Node> {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("kubernetes.io/hostname".to_string(), name.to_string())])
            .collect();
        let n: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "reason": "KubeletReady", "message": "test node"}],
                       "addresses": [{"type": "InternalIP", "address": "172.18.0.2"}, {"type": "Hostname", "address": name}]}
        }))?;
        let api: kube::Api<Node> = kube::Api::all(self.client.clone());
        Ok(api.create(&PostParams::default(), &n).await?)
    }

    /// Sets a node's Ready condition.
    pub async fn set_node_ready(&self, name: &str, ready: bool) -> Result<()> {
        let api: kube::Api<Node> = kube::Api::all(self.client.clone());
        let p = json!({"status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "reason": "KubeletReady", "message": "test node"}]}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&p))
            .await?;
        Ok(())
    }

    /// Pods of a namespace matching a label selector.
    pub async fn pods(&self, ns: &str, selector: &str) -> Result<Vec<Pod>> {
        let api: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), ns);
        Ok(api
            .list(&ListParams::default().labels(selector))
            .await?
            .items)
    }
}

/// Polls `check` until it yields Some (or fails the test after
/// [`CONVERGE`], printing what it last saw).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<std::result::Result<T, String>>>,
{
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let last = match check().await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(seen)) => seen,
            Err(e) => format!("error: {e:#}"),
        };
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a pod is Running and Ready.
pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The active (not terminating, not finished) pods of a list.
pub fn active(pods: Vec<Pod>) -> Vec<Pod> {
    pods.into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
        })
        .collect()
}

/// The stand-in kubelet: a pod bound to a node and still Pending becomes
/// Running and Ready with the next IP of its node's pod CIDR; a pod marked
/// for deletion is removed at once (grace period 0), as a kubelet confirms
/// a stopped pod. A run-to-completion pod (restartPolicy Never or
/// OnFailure) then finishes as [`exit_code`] says: Succeeded on 0, Failed
/// otherwise, with its container terminated with that code.
async fn kubelet(client: kube::Client) {
    let api: kube::Api<Pod> = kube::Api::all(client.clone());
    let next_ip: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        let Ok(pod) = ev else { continue };
        let client = client.clone();
        let next_ip = next_ip.clone();
        tokio::spawn(async move {
            if let Err(e) = kubelet_handle(client, pod, next_ip).await {
                tracing::debug!(error = %e, "test kubelet");
            }
        });
    }
}

async fn kubelet_handle(
    client: kube::Client,
    pod: Pod,
    next_ip: Arc<Mutex<HashMap<String, u32>>>,
) -> Result<()> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
    if pod.metadata.deletion_timestamp.is_some() {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(kube::api::Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        api.delete(&name, &dp).await?;
        return Ok(());
    }
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return Ok(());
    };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase == Some("Running") {
        if let Some(code) = exit_code(&pod) {
            finish(&api, &name, &pod, code).await?;
        }
        return Ok(());
    }
    if phase != Some("Pending") {
        return Ok(());
    }
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let n = nodes.get(&node).await?;
    let Some(cidr) = n.spec.as_ref().and_then(|s| s.pod_cidr.clone()) else {
        bail!("node {node} has no pod CIDR yet")
    };
    let net: ipnet::Ipv4Net = cidr.parse()?;
    let host = {
        let mut m = next_ip.lock().unwrap();
        let c = m.entry(node.clone()).or_insert(1);
        *c += 1;
        *c
    };
    let ip = std::net::Ipv4Addr::from(u32::from(net.network()) + host).to_string();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let p = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "172.18.0.2", "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&p))
        .await?;
    Ok(())
}

/// How a run-to-completion pod's first container ends, read from its
/// command and args as a shell would run them: `exit N` ends with N, a
/// `sleep` keeps it running (None), anything else ends with 0. Pods with
/// restartPolicy Always never end.
pub fn exit_code(pod: &Pod) -> Option<i32> {
    let spec = pod.spec.as_ref()?;
    if spec.restart_policy.as_deref().unwrap_or("Always") == "Always" {
        return None;
    }
    let c = spec.containers.first()?;
    let text = c
        .command
        .iter()
        .chain(c.args.iter())
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    if text.contains("sleep") {
        return None;
    }
    match text.split_once("exit ") {
        Some((_, rest)) => rest
            .split(|ch: char| !ch.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .or(Some(1)),
        None => Some(0),
    }
}

/// Ends a running pod's containers with `code`: phase Succeeded or Failed,
/// not Ready, each container terminated with that exit code.
async fn finish(api: &kube::Api<Pod>, name: &str, pod: &Pod, code: i32) -> Result<()> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let (phase, reason) = if code == 0 {
        ("Succeeded", "Completed")
    } else {
        ("Failed", "Error")
    };
    let started = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0.to_string())
        .unwrap_or_else(|| now.clone());
    let statuses: Vec<serde_json::Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| json!({"name": c.name, "image": c.image, "imageID": "", "ready": false, "restartCount": 0, "started": false,
            "state": {"terminated": {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now}}}))
        .collect();
    let p = json!({"status": {"phase": phase, "containerStatuses": statuses,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
            {"type": "Initialized", "status": "True", "lastTransitionTime": started},
            {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&p))
        .await?;
    Ok(())
}
