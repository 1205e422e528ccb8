//! Forwarding of names outside the cluster zone to the configured upstream
//! resolvers, with a positive and negative cache that honours TTLs (RFC
//! 2308 for negative answers) and collapses identical concurrent queries
//! into one upstream exchange.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;

use crate::wire::{self, Query, rcode, skip_name};
use podnet_core::dns::{RData, Record, rtype};

/// Why the upstream list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The resolv.conf could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It names no usable nameserver.
    #[error("{0} lists no nameserver")]
    NoNameserver(String),
    /// An upstream given on the command line does not parse.
    #[error("upstream {0:?} is not an IP address or IP:port")]
    BadUpstream(String),
}

/// Parses `IP` or `IP:port` (`[v6]:port`), port 53 by default.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| ConfigError::BadUpstream(s.into()))
}

/// The `nameserver` lines of a resolv.conf, as CoreDNS's
/// `forward . /etc/resolv.conf` reads them.
pub fn upstreams_from_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let v: Vec<SocketAddr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            let ip = rest.trim().split('%').next()?;
            ip.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect();
    if v.is_empty() {
        return Err(ConfigError::NoNameserver(path.display().to_string()));
    }
    Ok(v)
}

/// Cache key: lowercase name, type, class.
type Key = (Box<str>, u16, u16);

/// An upstream answer as cached: the message without its OPT record, with
/// the offsets of every TTL so a served copy counts them down.
#[derive(Debug)]
pub struct Cached {
    msg: Vec<u8>,
    ttl_offsets: Vec<usize>,
    stored: Instant,
    expires: Instant,
    question_len: usize,
}

impl Cached {
    /// Seconds this answer may still be served.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.expires.saturating_duration_since(now)
    }

    /// The A, AAAA and CNAME records of the answer section, TTLs counted
    /// down to `now` (to append to a CNAME chased out of the zone).
    pub fn answer_records(&self, now: Instant) -> Vec<Record> {
        let b = &self.msg;
        let elapsed = now.saturating_duration_since(self.stored).as_secs() as u32;
        let mut out = Vec::new();
        let an = u16::from_be_bytes([b[6], b[7]]);
        let Some(mut at) = skip_name(b, wire::HEADER_LEN).map(|a| a + 4) else {
            return out;
        };
        for _ in 0..an {
            let Some((owner, after)) = wire::read_name(b, at) else {
                return out;
            };
            let Some(hdr) = b.get(after..after + 10) else {
                return out;
            };
            let t = u16::from_be_bytes([hdr[0], hdr[1]]);
            let ttl = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]).saturating_sub(elapsed);
            let rdlen = usize::from(u16::from_be_bytes([hdr[8], hdr[9]]));
            let rdata_at = after + 10;
            let Some(rdata) = b.get(rdata_at..rdata_at + rdlen) else {
                return out;
            };
            let data = match (t, rdlen) {
                (rtype::A, 4) => Some(RData::A(std::net::Ipv4Addr::new(
                    rdata[0], rdata[1], rdata[2], rdata[3],
                ))),
                (rtype::AAAA, 16) => {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(rdata);
                    Some(RData::Aaaa(o.into()))
                }
                (rtype::CNAME, _) => {
                    wire::read_name(b, rdata_at).map(|(n, _)| RData::Cname(n.into()))
                }
                _ => None,
            };
            if let Some(data) = data {
                out.push(Record {
                    name: owner.into(),
                    ttl,
                    data,
                });
            }
            at = rdata_at + rdlen;
        }
        out
    }

    /// The upstream rcode.
    pub fn rcode(&self) -> u16 {
        u16::from(self.msg[3] & 0xf)
    }

    /// Writes this answer for `q`: its id, its question bytes (case kept),
    /// TTLs reduced by the time spent in cache, OPT if the client sent one,
    /// TC when it exceeds `limit`.
    pub fn render(&self, q: &Query<'_>, limit: usize, now: Instant, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.msg);
        out[0..2].copy_from_slice(&q.id.to_be_bytes());
        let upstream_flags = u16::from_be_bytes([self.msg[2], self.msg[3]]);
        let flags = wire::response_flags(q.flags, false, false, upstream_flags & 0xf)
            | (upstream_flags & 0x0020); // keep AD
        out[2..4].copy_from_slice(&flags.to_be_bytes());
        if self.question_len == q.question.len() {
            out[wire::HEADER_LEN..wire::HEADER_LEN + q.question.len()].copy_from_slice(q.question);
        }
        let elapsed = now.saturating_duration_since(self.stored).as_secs() as u32;
        for &o in &self.ttl_offsets {
            let ttl = u32::from_be_bytes([out[o], out[o + 1], out[o + 2], out[o + 3]]);
            out[o..o + 4].copy_from_slice(&ttl.saturating_sub(elapsed).to_be_bytes());
        }
        let rc = u16::from(out[3] & 0xf);
        if q.edns.is_some() {
            let ar = u16::from_be_bytes([out[10], out[11]]) + 1;
            out[10..12].copy_from_slice(&ar.to_be_bytes());
            wire::push_opt(out, rc);
        }
        if out.len() > limit {
            wire::truncate(q, out, rc, true);
        }
    }
}

/// Why an upstream response is not cacheable or usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    /// It does not decode as a DNS message.
    #[error("malformed upstream response")]
    Malformed,
    /// Its OPT record is not the last record (cannot be stripped safely).
    #[error("OPT record not last")]
    OptNotLast,
}

/// An upstream response made ready for the cache.
#[derive(Debug, PartialEq, Eq)]
pub struct Analysed {
    /// The message without its OPT record.
    pub msg: Vec<u8>,
    /// Offsets of every record's TTL in `msg`.
    pub ttl_offsets: Vec<usize>,
    /// How long it may be cached (`None`: not at all).
    pub lifetime: Option<u32>,
}

/// Analyses an upstream response: strips the OPT record, finds the TTL
/// offsets and the cache lifetime (minimum TTL; for negative answers the
/// SOA's min(TTL, MINIMUM), RFC 2308).
pub fn analyse_response(b: &[u8]) -> Result<Analysed, ResponseError> {
    // An independent full decode first: hickory-proto rejects what a
    // hand walk might let through.
    hickory_proto::op::Message::from_vec(b).map_err(|_| ResponseError::Malformed)?;
    let be16 = |at: usize| -> Result<u16, ResponseError> {
        Ok(u16::from_be_bytes([
            *b.get(at).ok_or(ResponseError::Malformed)?,
            *b.get(at + 1).ok_or(ResponseError::Malformed)?,
        ]))
    };
    let qd = be16(4)?;
    let an = be16(6)?;
    let ns = be16(8)?;
    let ar = be16(10)?;
    let mut at = wire::HEADER_LEN;
    for _ in 0..qd {
        at = skip_name(b, at).ok_or(ResponseError::Malformed)? + 4;
    }
    let mut offsets = Vec::new();
    let mut min_ttl: Option<u32> = None;
    let mut soa_neg: Option<u32> = None;
    let mut cut: Option<usize> = None;
    let total = u32::from(an) + u32::from(ns) + u32::from(ar);
    for i in 0..total {
        let start = at;
        at = skip_name(b, at).ok_or(ResponseError::Malformed)?;
        let t = be16(at)?;
        let ttl_at = at + 4;
        let ttl = u32::from(be16(ttl_at)?) << 16 | u32::from(be16(ttl_at + 2)?);
        let rdlen = usize::from(be16(at + 8)?);
        let rdata = at + 10;
        at = rdata + rdlen;
        if at > b.len() {
            return Err(ResponseError::Malformed);
        }
        if t == rtype::OPT {
            if i + 1 != total {
                return Err(ResponseError::OptNotLast);
            }
            cut = Some(start);
            continue;
        }
        offsets.push(ttl_at);
        min_ttl = Some(min_ttl.map_or(ttl, |m| m.min(ttl)));
        let in_authority = i >= u32::from(an) && i < u32::from(an) + u32::from(ns);
        if t == rtype::SOA && in_authority && rdlen >= 20 {
            let minimum =
                u32::from(be16(rdata + rdlen - 4)?) << 16 | u32::from(be16(rdata + rdlen - 2)?);
            soa_neg = Some(ttl.min(minimum));
        }
    }
    let mut msg = b[..cut.unwrap_or(at)].to_vec();
    if cut.is_some() {
        msg[10..12].copy_from_slice(&(ar - 1).to_be_bytes());
    }
    let rc = u16::from(b[3] & 0xf);
    let lifetime = match rc {
        rcode::NOERROR if an > 0 => min_ttl,
        rcode::NOERROR | rcode::NXDOMAIN => soa_neg, // no SOA: not cached
        _ => None,
    };
    Ok(Analysed {
        msg,
        ttl_offsets: offsets,
        lifetime,
    })
}

/// Counters of the forwarder, read by `/metrics`.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Answers served from the cache.
    pub cache_hits: AtomicU64,
    /// Questions that had to go upstream.
    pub cache_misses: AtomicU64,
    /// Questions that joined an identical one already in flight.
    pub collapsed: AtomicU64,
    /// Upstream exchanges that failed (timeout, error).
    pub upstream_failures: AtomicU64,
}

type Waiters = Vec<oneshot::Sender<Option<Arc<Cached>>>>;

/// The forwarder: upstream list, cache, in-flight table.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<Key, Arc<Cached>>>,
    inflight: Mutex<HashMap<Key, Waiters>>,
    capacity: usize,
    max_ttl: u32,
    timeout: Duration,
    /// Counters.
    pub stats: ForwardStats,
}

impl Forwarder {
    /// A forwarder to `upstreams`, caching at most `capacity` answers.
    pub fn new(upstreams: Vec<SocketAddr>, capacity: usize) -> Self {
        Forwarder {
            upstreams,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            capacity,
            max_ttl: 3600,
            timeout: Duration::from_secs(2),
            stats: ForwardStats::default(),
        }
    }

    /// The upstream resolvers, in the order tried.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    fn key(q: &Query<'_>) -> Key {
        (q.qname.as_str().into(), q.qtype, q.qclass)
    }

    /// The cached answer for `q` if still fresh (the synchronous fast path
    /// of the UDP workers).
    pub fn cached(&self, q: &Query<'_>, now: Instant) -> Option<Arc<Cached>> {
        let cache = self.cache.lock().ok()?;
        let hit = cache
            .get(&Self::key(q))
            .filter(|c| c.expires > now)
            .cloned();
        if hit.is_some() {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Resolves `q` upstream (joining an identical exchange in flight),
    /// caching the result. `None` means SERVFAIL.
    pub async fn resolve(&self, q: &Query<'_>) -> Option<Arc<Cached>> {
        if let Some(c) = self.cached(q, Instant::now()) {
            return Some(c);
        }
        let key = Self::key(q);
        let rx = {
            let mut inflight = self.inflight.lock().ok()?;
            if let Some(waiters) = inflight.get_mut(&key) {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                Some(rx)
            } else {
                // A leader that just finished stored into the cache before
                // leaving this table: look again under the lock.
                if let Some(c) = self.cached(q, Instant::now()) {
                    return Some(c);
                }
                inflight.insert(key.clone(), Vec::new());
                None
            }
        };
        if let Some(rx) = rx {
            self.stats.collapsed.fetch_add(1, Ordering::Relaxed);
            return rx.await.ok().flatten();
        }
        self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
        let result = self.exchange(q).await;
        let waiters = self
            .inflight
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&key))
            .unwrap_or_default();
        for w in waiters {
            let _ = w.send(result.clone());
        }
        result
    }

    async fn exchange(&self, q: &Query<'_>) -> Option<Arc<Cached>> {
        let mut upstream_query = Vec::with_capacity(q.question.len() + 23);
        let id: u16 = rand_u16();
        upstream_query.extend_from_slice(&id.to_be_bytes());
        upstream_query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
        upstream_query.extend_from_slice(q.question);
        wire::push_opt(&mut upstream_query, 0);
        for up in &self.upstreams {
            match tokio::time::timeout(self.timeout, self.exchange_one(*up, id, &upstream_query))
                .await
            {
                Ok(Ok(resp)) => return self.store(q, &resp),
                Ok(Err(e)) => {
                    tracing::debug!(upstream = %up, error = %e, "upstream exchange failed");
                }
                Err(_) => tracing::debug!(upstream = %up, "upstream timed out"),
            }
            self.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    async fn exchange_one(
        &self,
        up: SocketAddr,
        id: u16,
        query: &[u8],
    ) -> std::io::Result<Vec<u8>> {
        let bind: SocketAddr = if up.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let sock = UdpSocket::bind(bind).await?;
        sock.connect(up).await?;
        sock.send(query).await?;
        let mut buf = vec![0u8; 65535];
        loop {
            let n = sock.recv(&mut buf).await?;
            let r = &buf[..n];
            // Only the answer to our question, by id and question bytes.
            if n < wire::HEADER_LEN
                || r[0..2] != id.to_be_bytes()
                || r[2] & 0x80 == 0
                || !r[wire::HEADER_LEN..].starts_with(&query[wire::HEADER_LEN..query.len() - 11])
            {
                continue;
            }
            if r[2] & 0x02 != 0 {
                return self.exchange_tcp(up, query).await; // truncated: TCP
            }
            return Ok(r.to_vec());
        }
    }

    async fn exchange_tcp(&self, up: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(up).await?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
        framed.extend_from_slice(query);
        s.write_all(&framed).await?;
        let len = s.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    }

    fn store(&self, q: &Query<'_>, resp: &[u8]) -> Option<Arc<Cached>> {
        let Analysed {
            msg,
            ttl_offsets,
            lifetime,
        } = match analyse_response(resp) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "unusable upstream response");
                return None;
            }
        };
        let now = Instant::now();
        let life = lifetime.unwrap_or(0).min(self.max_ttl);
        let cached = Arc::new(Cached {
            msg,
            ttl_offsets,
            stored: now,
            expires: now + Duration::from_secs(u64::from(life)),
            question_len: q.question.len(),
        });
        if life > 0
            && let Ok(mut cache) = self.cache.lock()
        {
            if cache.len() >= self.capacity {
                cache.retain(|_, c| c.expires > now);
                if cache.len() >= self.capacity {
                    cache.clear();
                }
            }
            cache.insert(Self::key(q), cached.clone());
        }
        Some(cached)
    }
}

/// A random transaction id (std's hasher is seeded per process at random).
fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.finish() as u16
}
