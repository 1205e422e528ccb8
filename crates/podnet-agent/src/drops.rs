//! Policy drops that name their policy: the policy table's drop rules copy
//! a rate-limited sample of refused packets to an nfnetlink_log group
//! (`PODNET_DROP_LOG_*`); this module reads that group in the node's
//! network namespace, maps each packet to its pods and to the policies
//! that isolate it (the agent's own [`PolicyWorld`]), keeps the recent
//! ones in a ring buffer, streams them to followers (`GET /drops`, what
//! `podnet drops` merges across nodes), and counts them per policy and
//! direction for `/metrics`.
//!
//! Why a sample and not every packet: a flood must not become a flood of
//! records (the kernel's per-pod counters still count every packet).

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::Query;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use podnet_core::policy::{
    DROP_LOG_PREFIX_EGRESS, DROP_LOG_PREFIX_INGRESS, Direction, PodFacts, PolicyWorld, Proto,
};
use podnet_kernel::nflog::{NflogSocket, parse_ipv4};
use tokio::sync::broadcast;

/// Records kept for `GET /drops` without `follow`.
const RING: usize = 2048;

/// One side of a refused connection.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Side {
    /// The address.
    pub ip: Ipv4Addr,
    /// The port (0 for protocols without ports).
    pub port: u16,
    /// `namespace/name` of the pod holding the address, when one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// One refused packet as `podnet drops` prints it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DropRecord {
    /// Per agent, increasing.
    pub seq: u64,
    /// When the agent read it (Unix milliseconds).
    pub time_ms: u64,
    /// The node whose policy refused it.
    pub node: String,
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// `TCP`, `UDP`, `SCTP`, `ICMP` or the protocol number.
    pub proto: String,
    /// Who sent it.
    pub src: Side,
    /// Where it was going.
    pub dst: Side,
    /// The policies that isolate the refused side in that direction
    /// (`namespace/name`): none of them admits the packet.
    pub policies: Vec<String>,
}

struct Hub {
    ring: Mutex<VecDeque<Arc<DropRecord>>>,
    tx: broadcast::Sender<Arc<DropRecord>>,
    /// Records per (policy, direction); a record isolated by two policies
    /// counts for both. Unattributed records count under policy "".
    by_policy: Mutex<BTreeMap<(String, &'static str), u64>>,
    records: AtomicU64,
    lost: AtomicU64,
    state: Mutex<String>,
}

fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| Hub {
        ring: Mutex::new(VecDeque::with_capacity(RING)),
        tx: broadcast::channel(4096).0,
        by_policy: Mutex::new(BTreeMap::new()),
        records: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        state: Mutex::new("not started".into()),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

/// Starts the reader thread on `group` (in the agent's own network
/// namespace, the node's). A group that cannot be bound is reported and
/// the agent goes on without drop records (the counters still count).
pub fn start(node: String, group: u16, world: &'static Mutex<PolicyWorld>) {
    std::thread::Builder::new()
        .name("drops".into())
        .spawn(move || {
            let mut sock = match NflogSocket::bind(group, 128) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, group, "cannot read policy drops; podnet drops will show none from this node");
                    *lock(&hub().state) = format!("not reading drops: {e}");
                    return;
                }
            };
            *lock(&hub().state) = format!("reading nfnetlink_log group {group}");
            tracing::info!(group, "reading policy drops (nfnetlink_log)");
            let mut seq = 0u64;
            loop {
                let mut lost = false;
                let packets = match sock.recv(&mut lost) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading policy drops");
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        continue;
                    }
                };
                if lost {
                    hub().lost.fetch_add(1, Ordering::Relaxed);
                }
                for p in packets {
                    let dir = match p.prefix.as_str() {
                        DROP_LOG_PREFIX_INGRESS => Direction::Ingress,
                        DROP_LOG_PREFIX_EGRESS => Direction::Egress,
                        _ => continue,
                    };
                    let Some(flow) = parse_ipv4(&p.payload) else {
                        continue;
                    };
                    seq += 1;
                    let rec = attribute(&node, seq, dir, flow, &lock(world));
                    publish(rec);
                }
            }
        })
        .expect("spawn the drops thread");
}

/// Names the pods and the isolating policies of one refused packet.
fn attribute(
    node: &str,
    seq: u64,
    dir: Direction,
    flow: podnet_kernel::nflog::Flow,
    world: &PolicyWorld,
) -> DropRecord {
    let pod_of = |ip: Ipv4Addr| -> Option<&PodFacts> {
        world
            .pods
            .iter()
            .find(|p| p.ip == Some(ip) && !p.host_network)
    };
    let (sp, dp) = (pod_of(flow.src), pod_of(flow.dst));
    // Which policies isolate does not depend on the protocol or port.
    let proto = match flow.proto {
        17 => Proto::Udp,
        132 => Proto::Sctp,
        _ => Proto::Tcp,
    };
    let policies = world
        .explain(dir, (flow.src, sp), (flow.dst, dp), proto, flow.dport)
        .isolating;
    DropRecord {
        seq,
        time_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        node: node.to_string(),
        direction: dir.as_str(),
        proto: proto_name(flow.proto),
        src: Side {
            ip: flow.src,
            port: flow.sport,
            pod: sp.map(|p| p.key.to_string()),
        },
        dst: Side {
            ip: flow.dst,
            port: flow.dport,
            pod: dp.map(|p| p.key.to_string()),
        },
        policies,
    }
}

fn publish(rec: DropRecord) {
    let h = hub();
    h.records.fetch_add(1, Ordering::Relaxed);
    {
        let mut by = lock(&h.by_policy);
        if rec.policies.is_empty() {
            *by.entry((String::new(), rec.direction)).or_default() += 1;
        }
        for p in &rec.policies {
            *by.entry((p.clone(), rec.direction)).or_default() += 1;
        }
    }
    tracing::debug!(src = ?rec.src.pod, dst = ?rec.dst.pod, port = rec.dst.port, direction = rec.direction, policies = ?rec.policies, "policy drop");
    let rec = Arc::new(rec);
    {
        let mut ring = lock(&h.ring);
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back(rec.clone());
    }
    let _ = h.tx.send(rec);
}

/// The drop-record counters as Prometheus text.
pub fn metrics() -> String {
    let h = hub();
    let mut s = String::from(
        "# HELP podnet_policy_drop_records_total Policy drops the agent read from the datapath's rate-limited log, per isolating policy and direction (the kernel's counters count every packet).\n# TYPE podnet_policy_drop_records_total counter\n",
    );
    for ((policy, dir), n) in lock(&h.by_policy).iter() {
        let (ns, name) = policy.split_once('/').unwrap_or(("", ""));
        s.push_str(&format!(
            "podnet_policy_drop_records_total{{policy=\"{policy}\",namespace=\"{ns}\",name=\"{name}\",direction=\"{dir}\"}} {n}\n"
        ));
    }
    s.push_str(&format!(
        "# HELP podnet_policy_drop_log_records_total Records read from the drop log, all policies.\n# TYPE podnet_policy_drop_log_records_total counter\npodnet_policy_drop_log_records_total {}\n# HELP podnet_policy_drop_log_overruns_total Times the kernel could not queue a record for the agent (ENOBUFS).\n# TYPE podnet_policy_drop_log_overruns_total counter\npodnet_policy_drop_log_overruns_total {}\n",
        h.records.load(Ordering::Relaxed),
        h.lost.load(Ordering::Relaxed)
    ));
    s
}

/// `GET /drops` parameters.
#[derive(serde::Deserialize)]
pub struct DropsQuery {
    /// Keep the stream open and send new drops as they come.
    #[serde(default)]
    follow: bool,
    /// Send at most this many of the recent drops first (default: all
    /// kept).
    last: Option<usize>,
}

fn line(rec: &DropRecord) -> Bytes {
    let mut v = serde_json::to_vec(rec).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// `GET /drops[?follow=true][&last=N]`: recent drops as JSON lines, then,
/// with `follow`, every new one as it is read.
pub async fn serve(Query(q): Query<DropsQuery>) -> Response {
    let h = hub();
    // Subscribe before copying the ring, so nothing falls between.
    let rx = h.tx.subscribe();
    let backlog: Vec<Arc<DropRecord>> = {
        let ring = lock(&h.ring);
        let n = q.last.unwrap_or(RING).min(ring.len());
        ring.iter().skip(ring.len() - n).cloned().collect()
    };
    let last_seq = backlog.last().map(|r| r.seq).unwrap_or(0);
    let head: Vec<Result<Bytes, std::convert::Infallible>> =
        backlog.iter().map(|r| Ok(line(r))).collect();
    let headers = [
        (header::CONTENT_TYPE, "application/x-ndjson"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    if !q.follow {
        let body: Vec<u8> = head.into_iter().flat_map(|b| b.unwrap().to_vec()).collect();
        return (StatusCode::OK, headers, body).into_response();
    }
    let live = futures::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(r) if r.seq <= last_seq => continue,
                Ok(r) => return Some((Ok(line(&r)), rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(skipped = n, "a drops follower lagged");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures::StreamExt;
    let stream = futures::stream::iter(head).chain(live);
    (StatusCode::OK, headers, Body::from_stream(stream)).into_response()
}

/// What the reader is doing (for `/drops/status`).
pub async fn status() -> String {
    format!("{}\n", lock(&hub().state))
}
