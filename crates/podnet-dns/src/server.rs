//! Serving: UDP workers (one thread per core sharing the socket, no
//! async on the hot path), TCP on tokio, and the health/metrics responder.
//! Every worker reads the current index through an `ArcSwap`: a lookup
//! takes no lock and sees either the old index or the new one, never a mix.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use podnet_core::dns::{Answer, Index, NameHasher, RData, Record, rtype};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::forward::Forwarder;
use crate::metrics::{Gauges, Metrics};
use crate::wire::{self, Reject, rcode};

/// State shared by every worker: the index, the forwarder, the counters.
#[derive(Debug)]
pub struct Shared {
    index: ArcSwap<Index>,
    /// The forwarder for names outside the zone (`None`: REFUSED).
    pub forwarder: Option<Forwarder>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    ready: AtomicBool,
    /// Bumped after every swap; the UDP workers' answer caches are valid
    /// for one generation.
    generation: AtomicU64,
}

impl Shared {
    /// Shared state starting from `index` (not ready until [`Shared::mark_ready`]).
    pub fn new(index: Index, forwarder: Option<Forwarder>) -> Arc<Self> {
        Arc::new(Shared {
            index: ArcSwap::from_pointee(index),
            forwarder,
            metrics: Metrics::default(),
            ready: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        })
    }

    /// Publishes a new index; queries after this call see it.
    pub fn swap(&self, index: Index) {
        self.index.store(Arc::new(index));
        // After the store: a worker that sees the new generation also
        // sees the new index.
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.metrics.swaps.fetch_add(1, Ordering::Relaxed);
    }

    /// The index in force.
    pub fn index(&self) -> Arc<Index> {
        self.index.load_full()
    }

    /// Marks the first full sync done (`/ready` turns 200).
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Enters lame duck (on SIGTERM): `/ready` turns 503 so the pod leaves
    /// the Service's endpoints, while queries that still arrive (through
    /// conntrack entries made before) keep being answered.
    pub fn mark_not_ready(&self) {
        self.ready.store(false, Ordering::Release);
    }

    /// Whether the first full sync is done (and no lame duck began).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The figures `/metrics` prints besides the counters.
    pub fn gauges(&self) -> Gauges {
        let idx = self.index.load();
        let mut g = Gauges {
            index_records: idx.record_count(),
            index_names: idx.name_count(),
            ..Gauges::default()
        };
        if let Some(f) = &self.forwarder {
            g.cache_hits = f.stats.cache_hits.load(Ordering::Relaxed);
            g.cache_misses = f.stats.cache_misses.load(Ordering::Relaxed);
            g.collapsed = f.stats.collapsed.load(Ordering::Relaxed);
            g.upstream_failures = f.stats.upstream_failures.load(Ordering::Relaxed);
        }
        g
    }
}

/// What to do with one received packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `out` back.
    Reply,
    /// Send nothing.
    Drop,
    /// The name is outside the zone and not cached: forward it.
    Forward,
}

/// Answers `packet` from the index or the forwarder's cache into `out`
/// (sized for UDP unless `tcp`). Never panics on any input.
pub fn answer(shared: &Shared, packet: &[u8], tcp: bool, out: &mut Vec<u8>) -> Action {
    let start = Instant::now();
    let q = match wire::parse_query(packet) {
        Ok(q) => q,
        Err(Reject::Drop) => {
            shared.metrics.dropped.fetch_add(1, Ordering::Relaxed);
            return Action::Drop;
        }
        Err(r) => {
            if let Reject::Error { rcode, .. } = r {
                shared.metrics.record(0, rcode, start.elapsed());
            }
            wire::encode_reject(&r, out);
            return Action::Reply;
        }
    };
    let limit = if tcp { 65535 } else { q.udp_limit() };
    if q.qclass != 1 && q.qclass != 255 {
        wire::encode_status(&q, rcode::REFUSED, out);
        shared
            .metrics
            .record(q.qtype, rcode::REFUSED, start.elapsed());
        return Action::Reply;
    }
    let index = shared.index.load();
    if let Some(ans) = index.lookup(&q.qname, q.qtype) {
        if shared.forwarder.is_some() && chase_target(&index, &ans, q.qtype).is_some() {
            return Action::Forward; // an ExternalName: resolve its target
        }
        wire::encode_answer(&q, &ans, limit, out);
        let rc = u16::from(out[3] & 0xf);
        shared.metrics.record(q.qtype, rc, start.elapsed());
        return Action::Reply;
    }
    match &shared.forwarder {
        None => {
            wire::encode_status(&q, rcode::REFUSED, out);
            shared
                .metrics
                .record(q.qtype, rcode::REFUSED, start.elapsed());
            Action::Reply
        }
        Some(f) => match f.cached(&q, start) {
            Some(c) => {
                c.render(&q, limit, start, out);
                shared.metrics.record(q.qtype, c.rcode(), start.elapsed());
                Action::Reply
            }
            None => Action::Forward,
        },
    }
}

/// The out-of-zone name an in-zone answer aliases to, when the client asked
/// for another type and the server must resolve it (an ExternalName
/// Service: clients' stub resolvers do not chase CNAMEs themselves).
fn chase_target<'a>(index: &Index, ans: &'a Answer, qtype: u16) -> Option<&'a str> {
    if qtype == rtype::CNAME || qtype == rtype::ANY {
        return None;
    }
    match ans.answers.as_slice() {
        [
            Record {
                data: RData::Cname(target),
                ..
            },
        ] if !index.is_authoritative_for(target) => Some(target),
        _ => None,
    }
}

/// Resolves a forwarded query and writes the answer (or SERVFAIL) into `out`.
pub async fn forward(shared: &Shared, packet: &[u8], tcp: bool, out: &mut Vec<u8>) {
    let start = Instant::now();
    let Ok(q) = wire::parse_query(packet) else {
        return;
    };
    let limit = if tcp { 65535 } else { q.udp_limit() };
    let Some(f) = &shared.forwarder else { return };
    let index = shared.index();
    if let Some(mut ans) = index.lookup(&q.qname, q.qtype) {
        // An in-zone alias to an outside name: answer the CNAME followed by
        // what the upstream says about its target.
        if let Some(target) = chase_target(&index, &ans, q.qtype).map(str::to_string) {
            let tq_packet = wire::build_query(&target, q.qtype);
            if let Ok(tq) = wire::parse_query(&tq_packet)
                && let Some(c) = f.resolve(&tq).await
            {
                ans.answers.extend(c.answer_records(Instant::now()));
            }
        }
        wire::encode_answer(&q, &ans, limit, out);
        shared
            .metrics
            .record(q.qtype, u16::from(out[3] & 0xf), start.elapsed());
        return;
    }
    match f.resolve(&q).await {
        Some(c) => {
            c.render(&q, limit, Instant::now(), out);
            shared.metrics.record(q.qtype, c.rcode(), start.elapsed());
        }
        None => {
            wire::encode_status(&q, rcode::SERVFAIL, out);
            shared
                .metrics
                .record(q.qtype, rcode::SERVFAIL, start.elapsed());
        }
    }
}

/// Binds one UDP socket with SO_REUSEPORT so several workers share a port.
pub fn bind_udp(addr: SocketAddr) -> io::Result<StdUdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Most answers one UDP worker keeps encoded.
const ANSWER_CACHE_MAX: usize = 20_000;

/// A UDP worker's encoded in-zone answers for the index generation in
/// force, keyed by lowercase name and type: a repeated question costs a
/// parse, one hash lookup and a copy patched with the query's id, flags and
/// question bytes (the question's case; compression pointers into it keep
/// their offsets whatever the case). Dropped whole when the index changes.
#[derive(Default)]
struct AnswerCache {
    generation: u64,
    /// Key: lowercase name bytes followed by the type (big-endian).
    map: HashMap<Box<[u8]>, Vec<u8>, BuildHasherDefault<NameHasher>>,
    key: Vec<u8>,
}

impl AnswerCache {
    fn answer(&mut self, shared: &Shared, packet: &[u8], out: &mut Vec<u8>) -> Action {
        let start = Instant::now();
        let generation = shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.map.clear();
            self.generation = generation;
        }
        let Ok(q) = wire::parse_query(packet) else {
            return answer(shared, packet, false, out);
        };
        self.key.clear();
        self.key.extend_from_slice(q.qname.as_bytes());
        self.key.extend_from_slice(&q.qtype.to_be_bytes());
        if let Some(hit) = self.map.get(self.key.as_slice()) {
            out.clear();
            out.extend_from_slice(hit);
            out[0..2].copy_from_slice(&q.id.to_be_bytes());
            let rc = u16::from(out[3] & 0xf);
            let flags = wire::response_flags(q.flags, true, false, rc);
            out[2..4].copy_from_slice(&flags.to_be_bytes());
            out[wire::HEADER_LEN..wire::HEADER_LEN + q.question.len()].copy_from_slice(q.question);
            if q.edns.is_some() {
                let ar = u16::from_be_bytes([out[10], out[11]]) + 1;
                out[10..12].copy_from_slice(&ar.to_be_bytes());
                wire::push_opt(out, rc);
            }
            if out.len() > q.udp_limit() {
                wire::truncate(&q, out, rc, true);
            }
            shared.metrics.record(q.qtype, rc, start.elapsed());
            return Action::Reply;
        }
        let action = answer(shared, packet, false, out);
        // Keep authoritative, untruncated answers (AA set, TC clear) of a
        // generation that did not change meanwhile.
        if action == Action::Reply
            && out.len() >= wire::HEADER_LEN
            && out[2] & 0x04 != 0
            && out[2] & 0x02 == 0
            && shared.generation.load(Ordering::Acquire) == generation
            && q.qname.len() <= 253
        {
            let mut enc = out.clone();
            if q.edns.is_some() {
                // Stored without the OPT record (the last 11 bytes).
                enc.truncate(enc.len() - 11);
                let ar = u16::from_be_bytes([enc[10], enc[11]]) - 1;
                enc[10..12].copy_from_slice(&ar.to_be_bytes());
            }
            if self.map.len() >= ANSWER_CACHE_MAX {
                self.map.clear();
            }
            self.map.insert(self.key.as_slice().into(), enc);
        }
        action
    }
}

/// Datagrams taken from the socket per system call.
const BATCH: usize = 32;
/// Largest query read over UDP; a longer datagram is not a DNS query we
/// answer (dropped).
const UDP_QUERY_MAX: usize = 4096;

/// Runs one UDP worker on `sock` until `stop` is set: take up to 32
/// datagrams with one `recvmmsg`, answer each from the index (or the
/// forward cache), send the replies with one `sendmmsg`. Questions that
/// must go upstream are handed to the tokio runtime and answered from there.
pub fn udp_worker(
    shared: Arc<Shared>,
    sock: StdUdpSocket,
    rt: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) {
    use std::os::fd::AsRawFd;
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let sock = Arc::new(sock);
    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; UDP_QUERY_MAX]; BATCH];
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1232)).collect();
    // SAFETY (for the zeroed values): sockaddr_storage, iovec and mmsghdr
    // are plain C structs for which all-zero is a valid value.
    let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut iovs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut send_iovs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut send_msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut cache = AnswerCache::default();
    while !stop.load(Ordering::Relaxed) {
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: UDP_QUERY_MAX,
            };
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&raw mut addrs[i]).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &raw mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            msgs[i].msg_len = 0;
        }
        // SAFETY: every header points into buffers owned by this frame
        // (`bufs`, `addrs`, `iovs`) that outlive the call and are not moved.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            let e = io::Error::last_os_error();
            if !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) {
                tracing::warn!(error = %e, "udp receive failed");
            }
            continue;
        }
        let mut replies = 0;
        for i in 0..n as usize {
            let len = msgs[i].msg_len as usize;
            if msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                shared.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let packet = &bufs[i][..len];
            match cache.answer(&shared, packet, &mut outs[i]) {
                Action::Reply => {
                    send_iovs[replies] = libc::iovec {
                        iov_base: outs[i].as_mut_ptr().cast(),
                        iov_len: outs[i].len(),
                    };
                    let h = &mut send_msgs[replies].msg_hdr;
                    h.msg_name = (&raw mut addrs[i]).cast();
                    h.msg_namelen = msgs[i].msg_hdr.msg_namelen;
                    h.msg_iov = &raw mut send_iovs[replies];
                    h.msg_iovlen = 1;
                    h.msg_control = std::ptr::null_mut();
                    h.msg_controllen = 0;
                    h.msg_flags = 0;
                    replies += 1;
                }
                Action::Drop => {}
                Action::Forward => {
                    let Some(peer) = to_socket_addr(&addrs[i]) else {
                        continue;
                    };
                    let packet = packet.to_vec();
                    let shared = shared.clone();
                    let sock = sock.clone();
                    rt.spawn(async move {
                        let mut out = Vec::new();
                        forward(&shared, &packet, false, &mut out).await;
                        if !out.is_empty() {
                            let _ = sock.send_to(&out, peer);
                        }
                    });
                }
            }
        }
        let mut sent = 0;
        while sent < replies {
            // SAFETY: the first `replies` headers point at `outs` and
            // `addrs` entries that are alive and unchanged until we return.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    send_msgs[sent..].as_mut_ptr(),
                    (replies - sent) as libc::c_uint,
                    0,
                )
            };
            if r <= 0 {
                // A reply that cannot be sent (e.g. a vanished peer) is
                // skipped; the client retries.
                sent += 1;
            } else {
                sent += r as usize;
            }
        }
    }
}

/// The peer address the kernel wrote into `ss` (IPv4 or IPv6).
fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says `ss` holds a sockaddr_in, which is
            // smaller than sockaddr_storage and alignment-compatible.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Serves DNS over TCP (length-prefixed messages, several per connection,
/// 10 s idle timeout).
pub async fn serve_tcp(shared: Arc<Shared>, listener: TcpListener) {
    let conns = Arc::new(tokio::sync::Semaphore::new(1024));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            continue; // over the limit: close
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tcp_conn(&shared, stream).await;
            drop(permit);
        });
    }
}

async fn tcp_conn(shared: &Shared, mut s: TcpStream) -> io::Result<()> {
    let idle = Duration::from_secs(10);
    let mut out = Vec::with_capacity(4096);
    loop {
        let len = match tokio::time::timeout(idle, s.read_u16()).await {
            Ok(Ok(l)) => usize::from(l),
            _ => return Ok(()),
        };
        let mut msg = vec![0u8; len];
        if tokio::time::timeout(idle, s.read_exact(&mut msg))
            .await
            .is_err()
        {
            return Ok(());
        }
        out.clear();
        match answer(shared, &msg, true, &mut out) {
            Action::Reply => {}
            Action::Drop => return Ok(()),
            Action::Forward => forward(shared, &msg, true, &mut out).await,
        }
        if out.is_empty() {
            return Ok(());
        }
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        s.write_all(&framed).await?;
    }
}

/// Serves `/health`, `/ready` and `/metrics` over plain HTTP/1.
pub async fn serve_http(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            let read = async {
                while n < buf.len() {
                    let m = s.read(&mut buf[n..]).await?;
                    if m == 0 {
                        break;
                    }
                    n += m;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                io::Result::Ok(())
            };
            if tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .is_err()
            {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = http_route(&shared, path);
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

fn http_route(shared: &Shared, path: &str) -> (&'static str, &'static str, String) {
    let path = path.split('?').next().unwrap_or("");
    match path {
        "/health" => ("200 OK", "text/plain", "OK\n".into()),
        "/ready" if shared.is_ready() => ("200 OK", "text/plain", "OK\n".into()),
        "/ready" => (
            "503 Service Unavailable",
            "text/plain",
            "not ready: first sync pending, or lame duck after SIGTERM\n".into(),
        ),
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            shared.metrics.render(&shared.gauges()),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct Listen {
    /// DNS addresses (UDP and TCP on each).
    pub dns: Vec<SocketAddr>,
    /// The health/metrics address (`None`: not served).
    pub http: Option<SocketAddr>,
    /// UDP worker threads per DNS address.
    pub udp_workers: usize,
}

/// A running server; dropping it stops the UDP workers.
#[derive(Debug)]
pub struct Running {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The DNS addresses actually bound (ephemeral ports resolved).
    pub dns: Vec<SocketAddr>,
    /// The HTTP address actually bound.
    pub http: Option<SocketAddr>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Binds every listener and starts serving on the current tokio runtime.
/// A DNS address with port 0 gets one ephemeral port shared by UDP and TCP.
pub async fn start(shared: Arc<Shared>, listen: &Listen) -> io::Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Handle::current();
    let mut running = Running {
        stop: stop.clone(),
        threads: vec![],
        tasks: vec![],
        dns: vec![],
        http: None,
    };
    for addr in &listen.dns {
        // Bind TCP first to learn the port, then UDP on the same port.
        let tcp = TcpListener::bind(addr).await?;
        let bound = tcp.local_addr()?;
        running
            .tasks
            .push(tokio::spawn(serve_tcp(shared.clone(), tcp)));
        // One socket shared by all workers: the kernel hands each datagram
        // to one waiting worker, so a few busy clients keep every core busy
        // (SO_REUSEPORT's per-flow hashing can leave a worker idle).
        let udp = bind_udp(bound)?;
        for i in 0..listen.udp_workers.max(1) {
            let sock = udp.try_clone()?;
            let (shared, rt, stop) = (shared.clone(), rt.clone(), stop.clone());
            let t = std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || udp_worker(shared, sock, rt, stop))?;
            running.threads.push(t);
        }
        running.dns.push(bound);
    }
    if let Some(addr) = listen.http {
        let l = TcpListener::bind(addr).await?;
        running.http = Some(l.local_addr()?);
        running
            .tasks
            .push(tokio::spawn(serve_http(shared.clone(), l)));
    }
    Ok(running)
}
