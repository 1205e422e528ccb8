//! agent-scale: one real `podnet-agent` against the lab's API server
//! holding the Kubernetes scalability envelope as objects (at `--scale 1`:
//! 5,000 Nodes with pod CIDRs and InternalIPs, 150,000 running Pods,
//! 10,000 Services with 10 endpoints each in EndpointSlices, 5,000
//! NetworkPolicies).
//!
//! The objects are written straight into the API server's store, in
//! process, many writes at once (one redb transaction per group of
//! writes): the API server serves them to the agent as it would serve
//! objects created over HTTP. The agent runs in a node namespace of the
//! benchmark's own, with a veth uplink holding the node's InternalIP; the
//! other end of the veth is a second namespace of ours in which the API
//! server listens (the benchmark process itself moves there before it
//! starts any thread), so no packet leaves namespaces we made. Both are
//! deleted on exit, on failure and on Ctrl-C; a later run sweeps those of
//! a killed run.
//!
//! Printed: time from agent start to a programmed dataplane (the agent
//! writes its conflist only once routes, proxy and policy are in the
//! kernel), peak RSS, CPU while 100 pods a second are created and
//! deleted, and the cost of one Node joining or leaving (API write to
//! route and FDB entry, seen on an rtnetlink subscription in the node
//! namespace), each with its goal.
//!
//! Run: `bench/agent-scale/run.sh [--scale 0.1]` (root; needs ip, nft).

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use futures::StreamExt;
use podnet_apiserver::store::{Change, Store, StoreError};
use podnet_dataplane::netns::{NETNS_DIR, NetNs, sweep_stale};
use serde_json::{Value, json};

const PREFIX: &str = "pnagscale";
/// The node the agent runs as.
const NODE: &str = "node-0";
/// Where the API server listens (the far end of the node's uplink).
const API_IP: &str = "100.64.255.254";
/// The cluster CIDR the nodes' /24s come from (room for 32,768 nodes).
const CLUSTER_CIDR: &str = "10.128.0.0/9";

#[derive(Parser, Debug)]
#[command(about = "podnet-agent at the Kubernetes scalability envelope")]
struct Args {
    /// Fraction of the envelope (1.0: 5,000 nodes, 150,000 pods, 10,000
    /// services, 5,000 policies).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Seconds of pod churn (100 creations and 100 deletions a second).
    #[arg(long, default_value_t = 10.0)]
    churn_seconds: f64,
    /// Pod creations (and deletions) per second during the churn.
    #[arg(long, default_value_t = 100)]
    churn_rate: u32,
    /// Nodes joined and removed one at a time, to average a node change.
    #[arg(long, default_value_t = 20)]
    node_changes: usize,
    /// The agent binary (default: `podnet-agent` beside this one).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// `vxlan` or `host-gw`.
    #[arg(long, default_value = "vxlan")]
    encap: String,
    /// How long the agent may take to program its dataplane.
    #[arg(long, default_value_t = 600)]
    timeout_seconds: u64,
    /// Where the temp dir goes (default: /dev/shm when present, so the
    /// store's fsyncs do not weigh on the node-change figure).
    #[arg(long)]
    tmp: Option<PathBuf>,
    /// Keep the agent's log here (default: only on failure, printed).
    #[arg(long)]
    agent_log: Option<PathBuf>,
}

/// The sizes of one run.
#[derive(Clone, Copy, Debug)]
struct Envelope {
    nodes: usize,
    pods: usize,
    services: usize,
    policies: usize,
    namespaces: usize,
}

/// Per namespace: 300 pods of 30 apps (10 pods each), 20 services (one per
/// app 0..19, 10 endpoints each), 10 policies (one per app 0..9).
const PODS_PER_NS: usize = 300;
const APPS_PER_NS: usize = 30;
const SERVICES_PER_NS: usize = 20;
const POLICIES_PER_NS: usize = 10;
const ENDPOINTS_PER_SERVICE: usize = 10;

impl Envelope {
    fn at(scale: f64) -> Envelope {
        let n = |full: f64| ((full * scale).round() as usize).max(1);
        let namespaces = n(500.0);
        Envelope {
            nodes: n(5000.0).max(2),
            pods: namespaces * PODS_PER_NS,
            services: namespaces * SERVICES_PER_NS,
            policies: namespaces * POLICIES_PER_NS,
            namespaces,
        }
    }
}

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent process, killed on drop.
struct AgentProc(Child);

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BENCH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    ensure!(args.scale > 0.0, "--scale must be above 0");
    for tool in ["ip", "nft", "bridge"] {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()?
                .status
                .success(),
            "{tool} is required"
        );
    }
    let agent = match &args.agent {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for agent-scale")?
            .join("podnet-agent"),
    };
    ensure!(
        agent.exists(),
        "{} not found: build it (cargo build --release -p podnet-agent) or pass --agent",
        agent.display()
    );
    sweep_stale(PREFIX);
    let base = args.tmp.clone().unwrap_or_else(|| {
        if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        }
    });
    let tmp = TempDir(base.join(format!("{PREFIX}-{}", std::process::id())));
    std::fs::create_dir_all(&tmp.0).with_context(|| format!("mkdir {}", tmp.0.display()))?;

    // The node namespace (the agent's) and the API namespace, joined by a
    // veth: eth0 in the node holds the node's InternalIP.
    let node_ns = NetNs::unique(PREFIX).context("creating the node namespace")?;
    let api_ns = NetNs::unique(PREFIX).context("creating the API namespace")?;
    let sh = |ns: &NetNs, args: &[&str]| -> Result<()> {
        let out = ns.command("ip").args(args).output()?;
        ensure!(
            out.status.success(),
            "ip {} in {}: {}",
            args.join(" "),
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    };
    sh(
        &api_ns,
        &[
            "link",
            "add",
            "up0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            node_ns.name(),
        ],
    )?;
    sh(
        &api_ns,
        &["addr", "add", &format!("{API_IP}/16"), "dev", "up0"],
    )?;
    sh(&api_ns, &["link", "set", "up0", "up"])?;
    sh(
        &node_ns,
        &["addr", "add", &format!("{}/16", node_ip(0)), "dev", "eth0"],
    )?;
    sh(&node_ns, &["link", "set", "eth0", "up"])?;

    // This process moves into the API namespace before any other thread
    // exists: the runtime's threads, the server's socket and the agent's
    // connections are all in namespaces of ours.
    let home = File::open("/proc/thread-self/ns/net").context("opening our own namespace")?;
    let api_file = File::open(Path::new(NETNS_DIR).join(api_ns.name()))?;
    nix::sched::setns(api_file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .context("entering the API namespace")?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        tokio::select! {
            r = run(&args, &agent, &tmp.0, &node_ns) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    drop(rt);
    // Back home first: removing the API namespace kills what runs in it.
    nix::sched::setns(home.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .context("leaving the API namespace")?;
    // Guards drop here: the agent is killed with its namespace, both
    // namespaces and the temp dir are removed.
    drop(node_ns);
    drop(api_ns);
    drop(tmp);
    result
}

/// The InternalIP of node `n` (100.64.0.0/16, the uplink's subnet).
fn node_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 10)) + n as u32)
}

/// The pod CIDR (a /24) of node `n`.
fn node_cidr(n: usize) -> (Ipv4Addr, u8) {
    (
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (n as u32) * 256),
        24,
    )
}

/// The VTEP MAC the agent gives node `ip` (as `routes::vtep_mac`).
fn vtep_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0e, 0x70, o[0], o[1], o[2], o[3]]
}

const CREATED: &str = "2025-01-01T00:00:00Z";

fn uid(kind: &str, i: usize) -> String {
    format!("00000000-0000-4000-8{:03x}-{:012x}", kind.len(), i)
}

fn namespace_obj(i: usize) -> Value {
    let name = format!("ns-{i}");
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "uid": uid("ns", i), "creationTimestamp": CREATED,
                     "labels": {"kubernetes.io/metadata.name": name, "team": format!("team-{}", i % 10)}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    })
}

/// A Node as a kubelet reports it, with the images list and capacity
/// that make real Node objects large.
fn node_obj(n: usize, name: &str) -> Value {
    let (cidr, len) = node_cidr(n);
    let images: Vec<Value> = (0..12)
        .map(|k| json!({"names": [format!("registry.example/team/image-{k}@sha256:{:064x}", k), format!("registry.example/team/image-{k}:v1.{k}")], "sizeBytes": 50_000_000 + k * 1_000_000}))
        .collect();
    let cond = |t: &str, s: &str, reason: &str| json!({"type": t, "status": s, "lastHeartbeatTime": CREATED, "lastTransitionTime": CREATED, "reason": reason, "message": format!("kubelet reports {t}={s}")});
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": uid("node", n), "creationTimestamp": CREATED,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                       "node.kubernetes.io/instance-type": "m5.large", "topology.kubernetes.io/zone": format!("zone-{}", n % 3)},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {"podCIDR": format!("{cidr}/{len}"), "podCIDRs": [format!("{cidr}/{len}")], "providerID": format!("lab://{name}")},
        "status": {
            "addresses": [{"type": "InternalIP", "address": node_ip(n).to_string()}, {"type": "Hostname", "address": name}],
            "capacity": {"cpu": "2", "memory": "8049880Ki", "pods": "110", "ephemeral-storage": "101430960Ki"},
            "allocatable": {"cpu": "2", "memory": "7947480Ki", "pods": "110", "ephemeral-storage": "93478772582"},
            "conditions": [cond("MemoryPressure", "False", "KubeletHasSufficientMemory"), cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                           cond("PIDPressure", "False", "KubeletHasSufficientPID"), cond("Ready", "True", "KubeletReady")],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"architecture": "amd64", "bootID": uid("boot", n), "containerRuntimeVersion": "containerd://1.7.22",
                         "kernelVersion": "6.1.0-28-amd64", "kubeProxyVersion": "", "kubeletVersion": "v1.33.0",
                         "machineID": format!("{n:032x}"), "operatingSystem": "linux", "osImage": "Debian GNU/Linux 12 (bookworm)", "systemUUID": uid("sys", n)},
            "images": images
        }
    })
}

/// Global pod index `g` -> (namespace index, index within it).
fn pod_place(g: usize) -> (usize, usize) {
    (g / PODS_PER_NS, g % PODS_PER_NS)
}

/// Node of pod `g`, and its address there (pods are spread round-robin:
/// 30 a node at every scale).
fn pod_node_ip(env: &Envelope, g: usize) -> (usize, Ipv4Addr) {
    let node = g % env.nodes;
    let slot = g / env.nodes;
    let (cidr, _) = node_cidr(node);
    (node, Ipv4Addr::from(u32::from(cidr) + 2 + slot as u32))
}

/// A Pod as the API serves it once its kubelet runs it: scheduled,
/// Running and Ready, with an address (`ip` None: Pending, just bound).
fn pod_obj(ns: &str, name: &str, app: usize, node: usize, ip: Option<Ipv4Addr>, i: usize) -> Value {
    let node_name = format!("node-{node}");
    let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": CREATED});
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": uid("pod", i), "creationTimestamp": CREATED,
            "generateName": format!("app-{app}-5d8f7c9b4-"),
            "labels": {"app": format!("app-{app}"), "pod-template-hash": "5d8f7c9b4", "tier": if app.is_multiple_of(2) { "web" } else { "api" }},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("app-{app}-5d8f7c9b4"),
                                 "uid": uid("rs", app), "controller": true, "blockOwnerDeletion": true}]},
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "app", "image": format!("registry.example/team/app-{app}:v1"), "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "APP", "value": format!("app-{app}")}, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}],
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "serviceAccount": "default", "schedulerName": "default-scheduler",
            "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority", "priority": 0,
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {"phase": "Pending", "conditions": [cond("PodScheduled")], "qosClass": "Burstable"}
    });
    if let Some(ip) = ip {
        pod["status"] = json!({
            "phase": "Running",
            "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
            "hostIP": node_ip(node).to_string(), "hostIPs": [{"ip": node_ip(node).to_string()}],
            "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
            "startTime": CREATED, "qosClass": "Burstable",
            "containerStatuses": [{"name": "app", "ready": true, "started": true, "restartCount": 0,
                "image": format!("registry.example/team/app-{app}:v1"), "imageID": format!("registry.example/team/app-{app}@sha256:{:064x}", app),
                "containerID": format!("containerd://{:064x}", i), "state": {"running": {"startedAt": CREATED}}}]
        });
    }
    pod
}

fn service_obj(env: &Envelope, ns_i: usize, app: usize, q: usize) -> Value {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 16 + q as u32);
    let _ = env;
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{app}"), "namespace": format!("ns-{ns_i}"), "uid": uid("svc", q), "creationTimestamp": CREATED,
                     "labels": {"app": format!("app-{app}")}},
        "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()], "ipFamilies": ["IPv4"],
                 "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                 "selector": {"app": format!("app-{app}")},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
        "status": {"loadBalancer": {}}
    })
}

fn slice_obj(env: &Envelope, ns_i: usize, app: usize, q: usize) -> Value {
    let ns = format!("ns-{ns_i}");
    let endpoints: Vec<Value> = (0..ENDPOINTS_PER_SERVICE)
        .map(|m| {
            let local = app + APPS_PER_NS * m;
            let g = ns_i * PODS_PER_NS + local;
            let (node, ip) = pod_node_ip(env, g);
            json!({"addresses": [ip.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false},
                   "nodeName": format!("node-{node}"), "zone": format!("zone-{}", node % 3),
                   "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("app-{app}-{local}"), "uid": uid("pod", g)}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{app}-abcde"), "namespace": ns, "uid": uid("eps", q), "creationTimestamp": CREATED,
            "generateName": format!("svc-{app}-"),
            "labels": {"kubernetes.io/service-name": format!("svc-{app}"), "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": format!("svc-{app}"), "uid": uid("svc", q), "controller": true, "blockOwnerDeletion": true}]},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

/// Policy `m` of a namespace: app-m admits app-(m+10) of its namespace and
/// every pod of namespaces of one team on 8080; every fifth also admits an
/// ipBlock with an exception, so address classes are exercised too.
fn policy_obj(ns_i: usize, m: usize, q: usize) -> Value {
    let mut from = vec![
        json!({"podSelector": {"matchLabels": {"app": format!("app-{}", m + 10)}}}),
        json!({"namespaceSelector": {"matchLabels": {"team": format!("team-{}", (ns_i + m) % 10)}}}),
    ];
    if m.is_multiple_of(5) {
        from.push(json!({"ipBlock": {"cidr": format!("192.168.{}.0/24", m), "except": [format!("192.168.{}.128/25", m)]}}));
    }
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("allow-app-{m}"), "namespace": format!("ns-{ns_i}"), "uid": uid("np", q), "creationTimestamp": CREATED, "generation": 1},
        "spec": {"podSelector": {"matchLabels": {"app": format!("app-{m}")}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": from, "ports": [{"protocol": "TCP", "port": 8080}]}]}
    })
}

/// Puts one object into the store (create or replace).
async fn put(store: &Store, resource: &str, ns: &str, name: &str, v: Value) -> Result<()> {
    store
        .mutate(resource, ns, name, false, |_, _| {
            Ok::<_, StoreError>(Change::Put(v))
        })
        .await
        .with_context(|| format!("writing {resource} {ns}/{name}"))?;
    Ok(())
}

async fn delete(store: &Store, resource: &str, ns: &str, name: &str) -> Result<()> {
    store
        .mutate(resource, ns, name, false, |_, _| {
            Ok::<_, StoreError>(Change::Delete)
        })
        .await
        .with_context(|| format!("deleting {resource} {ns}/{name}"))?;
    Ok(())
}

/// One object to write: resource, namespace, name, body.
type Put = (&'static str, String, String, Value);

/// Writes every object of the envelope, `CONCURRENCY` writes in flight.
async fn load(store: &Arc<Store>, env: Envelope) -> Result<()> {
    const CONCURRENCY: usize = 512;
    let objects = (0..env.namespaces)
        .map(move |i| -> Put {
            (
                "namespaces",
                String::new(),
                format!("ns-{i}"),
                namespace_obj(i),
            )
        })
        .chain((0..env.nodes).map(|n| -> Put {
            let name = format!("node-{n}");
            ("nodes", String::new(), name.clone(), node_obj(n, &name))
        }))
        .chain((0..env.pods).map(move |g| -> Put {
            let (ns_i, local) = pod_place(g);
            let app = local % APPS_PER_NS;
            let (node, ip) = pod_node_ip(&env, g);
            let ns = format!("ns-{ns_i}");
            let name = format!("app-{app}-{local}");
            let v = pod_obj(&ns, &name, app, node, Some(ip), g);
            ("pods", ns, name, v)
        }))
        .chain((0..env.services).flat_map(move |q| {
            let (ns_i, app) = (q / SERVICES_PER_NS, q % SERVICES_PER_NS);
            let ns = format!("ns-{ns_i}");
            [
                (
                    "services",
                    ns.clone(),
                    format!("svc-{app}"),
                    service_obj(&env, ns_i, app, q),
                ),
                (
                    "discovery.k8s.io/endpointslices",
                    ns,
                    format!("svc-{app}-abcde"),
                    slice_obj(&env, ns_i, app, q),
                ),
            ]
        }))
        .chain((0..env.policies).map(|q| -> Put {
            let (ns_i, m) = (q / POLICIES_PER_NS, q % POLICIES_PER_NS);
            (
                "networking.k8s.io/networkpolicies",
                format!("ns-{ns_i}"),
                format!("allow-app-{m}"),
                policy_obj(ns_i, m, q),
            )
        }));
    let mut writes = futures::stream::iter(objects)
        .map(|(res, ns, name, v)| {
            let store = store.clone();
            async move { put(&store, res, &ns, &name, v).await }
        })
        .buffer_unordered(CONCURRENCY);
    while let Some(r) = writes.next().await {
        r?;
    }
    Ok(())
}

/// What an rtnetlink subscription in the node namespace saw, and when.
#[derive(Debug)]
enum Seen {
    RouteAdd(Ipv4Addr, u8),
    RouteDel(Ipv4Addr, u8),
    FdbAdd([u8; 6]),
    FdbDel([u8; 6]),
}

/// Subscribes to IPv4 route and neighbour (FDB) changes in `ns` on a
/// thread of its own, which stamps each on receipt.
fn watch_netlink(ns: &NetNs) -> Result<std::sync::mpsc::Receiver<(Instant, Seen)>> {
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage};
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
    use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

    const RTMGRP_NEIGH: u32 = 0x4;
    const RTMGRP_IPV4_ROUTE: u32 = 0x40;
    fn dst(r: &RouteMessage) -> Option<(Ipv4Addr, u8)> {
        r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => {
                Some((*v4, r.header.destination_prefix_length))
            }
            _ => None,
        })
    }
    fn fdb_mac(n: &NeighbourMessage) -> Option<[u8; 6]> {
        if n.header.family != AddressFamily::Bridge {
            return None;
        }
        n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(m) => m.as_slice().try_into().ok(),
            _ => None,
        })
    }
    let file = File::open(Path::new(NETNS_DIR).join(ns.name()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    std::thread::Builder::new()
        .name("netlink-watch".into())
        .spawn(move || {
            let open = || -> Result<Socket> {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
                let mut s = Socket::new(NETLINK_ROUTE)?;
                s.bind(&SocketAddr::new(0, RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE))?;
                Ok(s)
            };
            let socket = match open() {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match socket.recv(&mut &mut buf[..], 0) {
                    Ok(n) => n,
                    Err(_) => continue, // ENOBUFS: events were lost; go on
                };
                let at = Instant::now();
                let mut off = 0;
                while off < n {
                    let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..n])
                    else {
                        break;
                    };
                    let len = msg.header.length as usize;
                    if len == 0 {
                        break;
                    }
                    off += (len + 3) & !3;
                    let NetlinkPayload::InnerMessage(m) = msg.payload else {
                        continue;
                    };
                    let seen = match &m {
                        RouteNetlinkMessage::NewRoute(r) => {
                            dst(r).map(|(a, l)| Seen::RouteAdd(a, l))
                        }
                        RouteNetlinkMessage::DelRoute(r) => {
                            dst(r).map(|(a, l)| Seen::RouteDel(a, l))
                        }
                        RouteNetlinkMessage::NewNeighbour(n) => fdb_mac(n).map(Seen::FdbAdd),
                        RouteNetlinkMessage::DelNeighbour(n) => fdb_mac(n).map(Seen::FdbDel),
                        _ => None,
                    };
                    if let Some(seen) = seen
                        && tx.send((at, seen)).is_err()
                    {
                        return;
                    }
                }
            }
        })?;
    ready_rx.recv().context("netlink watcher thread")??;
    Ok(rx)
}

/// `VmHWM` of `pid`, in KiB.
fn vm_hwm(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

/// Lines of a command's output in the node namespace that satisfy `f`.
fn count_in(ns: &NetNs, prog: &str, args: &[&str], f: impl Fn(&str) -> bool) -> Result<usize> {
    let out = ns.command(prog).args(args).output()?;
    ensure!(
        out.status.success(),
        "{prog} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| f(l))
        .count())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

async fn run(args: &Args, agent: &Path, tmp: &Path, node_ns: &NetNs) -> Result<()> {
    let env = Envelope::at(args.scale);
    println!(
        "agent-scale (--scale {}): {} nodes, {} pods, {} services x {} endpoints, {} network policies, {} namespaces; encap {}",
        args.scale,
        env.nodes,
        env.pods,
        env.services,
        ENDPOINTS_PER_SERVICE,
        env.policies,
        env.namespaces,
        args.encap
    );
    let cfg = podnet_apiserver::Config::new(format!("{API_IP}:0").parse()?, tmp.join("apiserver"));
    let server = podnet_apiserver::Server::start(cfg)
        .await
        .context("starting podnet-apiserver")?;
    let store = server.store().clone();
    let t = Instant::now();
    load(&store, env).await?;
    let objects = env.namespaces + env.nodes + env.pods + 2 * env.services + env.policies;
    println!(
        "loaded {objects} objects in {:.1} s (in-process store writes, 512 in flight, group-committed)",
        t.elapsed().as_secs_f64()
    );

    // The agent, in the node namespace, with nothing of the host's.
    let log_path = args
        .agent_log
        .clone()
        .unwrap_or_else(|| tmp.join("agent.log"));
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let cni_dir = tmp.join("cni");
    let conflist = cni_dir.join("10-podnet.conflist");
    let mut cmd = node_ns.command(agent);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PODNET_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("NODE_NAME", NODE)
        .env("PODNET_KUBECONFIG", &server.kubeconfig)
        .env("PODNET_METRICS_ADDR", "127.0.0.1:9101")
        .env("PODNET_CNI_CONF_DIR", &cni_dir)
        .env("PODNET_IPAM_DIR", tmp.join("ipam"))
        .env("PODNET_CLUSTER_CIDR", CLUSTER_CIDR)
        .env("PODNET_ENCAP", &args.encap)
        .env(
            "RUST_LOG",
            std::env::var("AGENT_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let started = Instant::now();
    let mut proc = AgentProc(cmd.spawn().context("starting podnet-agent")?);
    let pid = proc.0.id();
    let deadline = Duration::from_secs(args.timeout_seconds);
    wait_programmed(&mut proc, &conflist, started + deadline, &log_path, |_| {}).await?;
    let programmed = started.elapsed().as_secs_f64();
    let hwm_programmed = vm_hwm(pid)?;
    let cpu_programmed = cpu_seconds(pid)?;
    let routes = count_in(node_ns, "ip", &["-4", "route", "show"], |l| {
        l.starts_with("10.1") && !l.starts_with("10.96.")
    })?;
    let fdb = if args.encap == "vxlan" {
        count_in(
            node_ns,
            "bridge",
            &["fdb", "show", "dev", "podnet.1"],
            |l| l.contains(" dst "),
        )?
    } else {
        0
    };
    let tables = count_in(node_ns, "nft", &["list", "tables"], |_| true)?;
    println!(
        "programmed: {programmed:.2} s after start ({cpu_programmed:.1} s CPU); {routes} routes and {fdb} FDB entries to other nodes, {tables} nft tables"
    );

    // Pod churn: each tick creates a pod (Pending, bound), makes the one
    // before it Running with an address, and deletes one of the loaded pods.
    let rate = args.churn_rate.max(1);
    let ticks = (args.churn_seconds * rate as f64).round() as usize;
    let cpu0 = cpu_seconds(pid)?;
    let t = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let churn_ip = |i: usize| -> (usize, Ipv4Addr) {
        let node = (i * 7919) % env.nodes;
        let (cidr, _) = node_cidr(node);
        (
            node,
            Ipv4Addr::from(u32::from(cidr) + 100 + ((i / env.nodes) % 150) as u32),
        )
    };
    let churn_pod = |i: usize, running: bool| -> (String, String, Value) {
        let ns = format!("ns-{}", i % env.namespaces);
        let name = format!("churn-{i}");
        let (node, ip) = churn_ip(i);
        let v = pod_obj(
            &ns,
            &name,
            i % APPS_PER_NS,
            node,
            running.then_some(ip),
            1_000_000 + i,
        );
        (ns, name, v)
    };
    for i in 0..ticks.min(env.pods) {
        interval.tick().await;
        let (ns, name, v) = churn_pod(i, false);
        let create = put(&store, "pods", &ns, &name, v);
        let run_prev = async {
            if i > 0 {
                let (ns, name, v) = churn_pod(i - 1, true);
                put(&store, "pods", &ns, &name, v).await
            } else {
                Ok(())
            }
        };
        let g = (i * 37) % env.pods;
        let (ns_i, local) = pod_place(g);
        let old_ns = format!("ns-{ns_i}");
        let old_name = format!("app-{}-{local}", local % APPS_PER_NS);
        let del = delete(&store, "pods", &old_ns, &old_name);
        let (a, b, c) = futures::join!(create, run_prev, del);
        a?;
        b?;
        c?;
    }
    let churn_s = t.elapsed().as_secs_f64();
    // Let the agent finish what the churn gave it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_churn = cpu_seconds(pid)? - cpu0;
    let churn_window = t.elapsed().as_secs_f64();

    // Node changes, one at a time, seen on rtnetlink in the node namespace.
    let rx = watch_netlink(node_ns)?;
    let vxlan = args.encap == "vxlan";
    let mut joins = Vec::new();
    let mut leaves = Vec::new();
    let wait_for =
        |want_route: &dyn Fn(&Seen) -> bool, want_fdb: &dyn Fn(&Seen) -> bool| -> Result<Instant> {
            let (mut route, mut fdb) = (None, if vxlan { None } else { Some(Instant::now()) });
            let end = Instant::now() + Duration::from_secs(10);
            while route.is_none() || fdb.is_none() {
                let left = end.saturating_duration_since(Instant::now());
                let (at, seen) = rx
                    .recv_timeout(left)
                    .context("the agent did not program the node change within 10 s")?;
                if want_route(&seen) {
                    route = Some(at);
                } else if want_fdb(&seen) {
                    fdb = Some(at);
                }
            }
            Ok(route.max(fdb).expect("both seen"))
        };
    for k in 0..args.node_changes {
        let n = env.nodes + k;
        let name = format!("join-{k}");
        let (cidr, len) = node_cidr(n);
        let mac = vtep_mac(node_ip(n));
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        put(&store, "nodes", "", &name, node_obj(n, &name)).await?;
        let acked = Instant::now();
        let done = wait_for(
            &|s| matches!(s, Seen::RouteAdd(a, l) if *a == cidr && *l == len),
            &|s| matches!(s, Seen::FdbAdd(m) if *m == mac),
        )?;
        joins.push((done - t0, done.saturating_duration_since(acked)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        delete(&store, "nodes", "", &name).await?;
        let acked = Instant::now();
        let done = wait_for(
            &|s| matches!(s, Seen::RouteDel(a, l) if *a == cidr && *l == len),
            &|s| matches!(s, Seen::FdbDel(m) if *m == mac),
        )?;
        leaves.push((done - t0, done.saturating_duration_since(acked)));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hwm = vm_hwm(pid)?;
    if let Some(st) = proc.0.try_wait()? {
        bail!(
            "podnet-agent exited ({st}); its log:\n{}",
            tail(&log_path, 40)
        );
    }

    // An agent restart on a node whose tables are in place (what a
    // rollout restart does): SIGTERM, the conflist removed so that its
    // rewrite marks the new agent programmed; the new agent's peak RSS,
    // and that of any process it runs (an `nft -f`), sampled every 5 ms.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    proc.0.wait()?;
    std::fs::remove_file(&conflist).context("removing the conflist")?;
    let started = Instant::now();
    proc = AgentProc(cmd.spawn().context("restarting podnet-agent")?);
    let pid = proc.0.id();
    let mut child_hwm = 0;
    wait_programmed(&mut proc, &conflist, started + deadline, &log_path, |pid| {
        child_hwm = child_hwm.max(children_hwm(pid))
    })
    .await?;
    let restarted = started.elapsed().as_secs_f64();
    let hwm_restart = vm_hwm(pid)?;

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!("{:<44} {:>14}  {:>12}  verdict", "figure", "value", "goal");
    println!(
        "{:<44} {:>12.2} s  {:>12}  {}",
        "start to programmed dataplane (conflist)",
        programmed,
        "<= 10 s",
        verdict(programmed <= 10.0)
    );
    println!(
        "{:<44} {:>10.0} MiB  {:>12}  {}",
        "peak RSS (VmHWM), whole run",
        mib(hwm),
        "<= 400 MiB",
        verdict(mib(hwm) <= 400.0)
    );
    println!(
        "{:<44} {:>10.0} MiB",
        "peak RSS (VmHWM) when programmed",
        mib(hwm_programmed)
    );
    println!(
        "{:<44} {:>12.0} %  {:>12}",
        format!("CPU at {rate} pod creations+deletions/s"),
        100.0 * cpu_churn / churn_window,
        "(one core)"
    );
    println!(
        "    {:.2} s CPU over {churn_window:.1} s ({} creates, {} Running updates, {} deletes in {churn_s:.1} s, then 0.5 s to settle)",
        cpu_churn,
        ticks.min(env.pods),
        ticks.min(env.pods).saturating_sub(1),
        ticks.min(env.pods)
    );
    for (what, v) in [("node join", &joins), ("node leave", &leaves)] {
        if v.is_empty() {
            continue;
        }
        let mut from_write: Vec<f64> = v.iter().map(|(a, _)| a.as_secs_f64() * 1e3).collect();
        let mut from_ack: Vec<f64> = v.iter().map(|(_, b)| b.as_secs_f64() * 1e3).collect();
        from_write.sort_by(f64::total_cmp);
        from_ack.sort_by(f64::total_cmp);
        let avg = from_write.iter().sum::<f64>() / from_write.len() as f64;
        let avg_ack = from_ack.iter().sum::<f64>() / from_ack.len() as f64;
        println!(
            "{:<44} {:>11.2} ms  {:>12}  {}",
            format!("{what}: write to route+FDB, avg of {}", v.len()),
            avg,
            "<= 5 ms",
            verdict(avg <= 5.0)
        );
        println!(
            "    p50 {:.2} ms, max {:.2} ms; from the write's acknowledgement: avg {avg_ack:.2} ms",
            from_write[from_write.len() / 2],
            from_write[from_write.len() - 1]
        );
    }
    println!(
        "{:<44} {:>12.2} s  {:>12}  {}",
        "agent restart, tables in place: programmed",
        restarted,
        "<= 10 s",
        verdict(restarted <= 10.0)
    );
    println!(
        "{:<44} {:>10.0} MiB  {:>12}  {}",
        "peak RSS (VmHWM) of the restarted agent",
        mib(hwm_restart),
        "<= 400 MiB",
        verdict(mib(hwm_restart) <= 400.0)
    );
    println!(
        "    its nft child processes, largest peak: {:.0} MiB (0: none seen)",
        mib(child_hwm)
    );
    server.shutdown();
    drop(proc);
    Ok(())
}

/// Waits until the agent has written its conflist (its dataplane is
/// programmed), calling `sample` with its pid every 5 ms; fails with the
/// agent's log if it exits first or the deadline passes.
async fn wait_programmed(
    proc: &mut AgentProc,
    conflist: &Path,
    deadline: Instant,
    log_path: &Path,
    mut sample: impl FnMut(u32),
) -> Result<()> {
    let pid = proc.0.id();
    while !conflist.exists() {
        if let Some(st) = proc.0.try_wait()? {
            bail!(
                "podnet-agent exited ({st}) before programming; its log:\n{}",
                tail(log_path, 40)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "podnet-agent not programmed by its deadline; its log:\n{}",
                tail(log_path, 40)
            );
        }
        sample(pid);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// The largest `VmHWM` among `pid`'s `nft` child processes now, in KiB
/// (0 when it has none). By name: a child between its (v)fork and exec
/// still shows the agent's memory.
fn children_hwm(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == "nft")
        })
        .filter_map(|c| vm_hwm(c).ok())
        .max()
        .unwrap_or(0)
}
