//! Controller latency against the real podnet-apiserver (in-process, TLS):
//!
//! 1. create → bound: 100 pods created at once (16 requests in flight) on 3
//!    Ready nodes; per-pod time from the create call to the first watch event
//!    showing `spec.nodeName`, for podnet's scheduler and, as the anchor in
//!    the same run, a minimal binder (watch, then POST binding round-robin:
//!    no caches, no filters, no scoring; the least any scheduler can do
//!    through this API).
//! 2. readiness → EndpointSlice: 50 times, a selected pod's Ready flips and
//!    the time until its slice shows it, for podnet's EndpointSlice
//!    controller, against the time the same status write takes to reach a
//!    plain pod watch (the floor of any controller).
//!
//! `cargo bench -p podnet-controllers --bench controllers`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

const PODS: usize = 100;
const FLIPS: usize = 100;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn lab() -> Result<(podnet_apiserver::Server, kube::Client, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let cfg = podnet_apiserver::Config::new("127.0.0.1:0".parse()?, dir.path().join("state"));
    let server = podnet_apiserver::Server::start(cfg)
        .await
        .context("starting podnet-apiserver")?;
    let kc = kube::config::Kubeconfig::read_from(&server.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    for n in ["n1", "n2", "n3"] {
        let node: Node = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n},
            "spec": {"podCIDR": format!("10.244.{}.0/24", &n[1..])},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )?;
        nodes.create(&PostParams::default(), &node).await?;
    }
    Ok((server, client, dir))
}

fn pod(name: &str, labels: serde_json::Value, node: Option<&str>) -> Pod {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox", "ports": [{"name": "http", "containerPort": 8080}]}]}}))
    .expect("valid pod")
}

/// The anchor: bind every unbound pod the moment the watch shows it.
async fn minimal_binder(client: kube::Client) {
    let api: kube::Api<Pod> = kube::Api::all(client.clone());
    let stream =
        watcher(api, watcher::Config::default().fields("spec.nodeName=")).applied_objects();
    let mut stream = std::pin::pin!(stream);
    let mut i = 0usize;
    while let Some(Ok(p)) = stream.next().await {
        i += 1;
        let node = ["n1", "n2", "n3"][i % 3];
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
        tokio::spawn(async move {
            let b = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"kind": "Node", "name": node}});
            let _ = api
                .create_subresource::<_, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &b,
                )
                .await;
        });
    }
}

/// Creates PODS pods at once; per-pod create → bound latencies and the
/// time until all are bound.
async fn create_to_bound(client: &kube::Client, round: &str) -> Result<(Vec<Duration>, Duration)> {
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), "default");
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let watch = {
        let bound = bound.clone();
        let all: kube::Api<Pod> = kube::Api::all(client.clone());
        let round = round.to_string();
        tokio::spawn(async move {
            let stream = watcher(
                all,
                watcher::Config::default().labels(&format!("round={round}")),
            )
            .applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(p)) = stream.next().await {
                if p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_some_and(|n| !n.is_empty())
                {
                    let mut b = bound.lock().unwrap();
                    b.entry(p.metadata.name.clone().unwrap_or_default())
                        .or_insert_with(Instant::now);
                    if b.len() == PODS {
                        let _ = tx.try_send(());
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    futures::stream::iter(0..PODS)
        .map(|i| {
            let api = api.clone();
            let started = started.clone();
            let name = format!("{round}-{i}");
            async move {
                started.lock().unwrap().insert(name.clone(), Instant::now());
                api.create(
                    &PostParams::default(),
                    &pod(&name, json!({"round": round}), None),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .for_each(|r| async move {
            r.expect("create pod");
        })
        .await;
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .context("pods not all bound within 60 s")?;
    let total = t0.elapsed();
    watch.abort();
    let lat = {
        let s = started.lock().unwrap();
        let b = bound.lock().unwrap();
        s.iter().map(|(n, t)| b[n].duration_since(*t)).collect()
    };
    api.delete_collection(
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
        &ListParams::default().labels(&format!("round={round}")),
    )
    .await?;
    Ok((lat, total))
}

async fn set_ready(api: &kube::Api<Pod>, name: &str, ready: bool) -> Result<()> {
    let s = if ready { "True" } else { "False" };
    let p = json!({"status": {"phase": "Running", "podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}], "conditions": [{"type": "Ready", "status": s}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&p))
        .await?;
    Ok(())
}

/// Flips a pod's readiness FLIPS times; for each, the time until `seen`
/// reports the new state.
async fn flips<F, Fut>(api: &kube::Api<Pod>, name: &str, mut seen: F) -> Result<Vec<Duration>>
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut v = Vec::new();
    for i in 0..FLIPS {
        let ready = i.is_multiple_of(2);
        let t = Instant::now();
        set_ready(api, name, ready).await?;
        tokio::time::timeout(Duration::from_secs(10), seen(ready))
            .await
            .context("change never seen")?;
        v.push(t.elapsed());
    }
    Ok(v)
}

/// Waits until a watch stream of `K` yields an object satisfying `f`.
async fn watch_until<K>(api: kube::Api<K>, cfg: watcher::Config, f: impl Fn(&K) -> bool)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let stream = watcher(api, cfg).applied_objects();
    let mut stream = std::pin::pin!(stream);
    while let Some(Ok(o)) = stream.next().await {
        if f(&o) {
            return;
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let (_server, client, _dir) = lab().await?;
    let report = |label: &str, mut v: Vec<Duration>, total: Option<Duration>| -> (f64, f64) {
        let (p50, p99) = (pct(&mut v, 0.5), pct(&mut v, 0.99));
        match total {
            Some(t) => println!(
                "{label:<44} p50 {:>7.2} ms  p99 {:>7.2} ms  all {:>7.1} ms",
                ms(p50),
                ms(p99),
                ms(t)
            ),
            None => println!(
                "{label:<44} p50 {:>7.2} ms  p99 {:>7.2} ms",
                ms(p50),
                ms(p99)
            ),
        }
        (ms(p50), ms(p99))
    };

    println!("create -> bound, {PODS} pods at once, 3 nodes");
    let binder = tokio::spawn(minimal_binder(client.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (lat, total) = create_to_bound(&client, "anchor").await?;
    let (a50, a99) = report("  minimal binder (anchor)", lat, Some(total));
    binder.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sched = tokio::spawn(podnet_controllers::scheduler::run(
        client.clone(),
        Duration::from_secs(5),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (lat, total) = create_to_bound(&client, "podnet").await?;
    let (p50, p99) = report("  podnet scheduler", lat, Some(total));
    println!(
        "  ratio podnet/anchor: p50 {:.2}x  p99 {:.2}x",
        p50 / a50,
        p99 / a99
    );
    sched.abort();

    println!("pod readiness change -> visible, {FLIPS} flips");
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &pod("target", json!({"app": "flip"}), Some("n1")),
    )
    .await?;
    let svc: Service = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "flip"},
        "spec": {"selector": {"app": "flip"}, "ports": [{"port": 80, "targetPort": "http"}]}}),
    )?;
    kube::Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &svc)
        .await?;
    let floor = flips(&pods, "target", |ready| {
        let api = pods.clone();
        async move {
            watch_until(
                api,
                watcher::Config::default().fields("metadata.name=target"),
                move |p: &Pod| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c.type_ == "Ready" && (c.status == "True") == ready)
                        })
                },
            )
            .await
        }
    })
    .await?;
    let (f50, f99) = report("  pod watch sees the status write (anchor)", floor, None);
    let ctl = tokio::spawn(podnet_controllers::endpointslice::run(
        client.clone(),
        Duration::from_secs(5),
    ));
    let slices: kube::Api<EndpointSlice> = kube::Api::namespaced(client.clone(), "default");
    // Warm up: the controller has started and published the current state.
    let last = (FLIPS - 1).is_multiple_of(2);
    let warm = watch_until(
        slices.clone(),
        watcher::Config::default().labels("kubernetes.io/service-name=flip"),
        move |s: &EndpointSlice| {
            s.endpoints
                .iter()
                .any(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(last))
        },
    );
    tokio::time::timeout(Duration::from_secs(10), warm)
        .await
        .context("EndpointSlice controller did not start")?;
    let slice_lat = flips(&pods, "target", |ready| {
        let api = slices.clone();
        async move {
            watch_until(
                api,
                watcher::Config::default().labels("kubernetes.io/service-name=flip"),
                move |s: &EndpointSlice| {
                    s.endpoints.iter().any(|e| {
                        e.conditions.as_ref().and_then(|c| c.ready) == Some(ready)
                            && s.ports.iter().flatten().any(|p| p.port == Some(8080))
                    })
                },
            )
            .await
        }
    })
    .await?;
    let (s50, s99) = report("  EndpointSlice shows it (podnet)", slice_lat, None);
    println!(
        "  ratio podnet/anchor: p50 {:.2}x  p99 {:.2}x",
        s50 / f50,
        s99 / f99
    );
    ctl.abort();
    Ok(())
}
