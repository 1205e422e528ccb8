//! Shared helpers of the end-to-end tests: an in-process server on
//! loopback with an ephemeral port, and the real `dig`/`nslookup`.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use podnet_core::dns::{Config, Index, Objects};
use podnet_dns::forward::Forwarder;
use podnet_dns::server::{self, Listen, Running, Shared};

/// A server running in this process; dropped at the end of the test.
pub struct TestServer {
    pub shared: Arc<Shared>,
    pub addr: SocketAddr,
    pub http: SocketAddr,
    _running: Running,
    _rt: tokio::runtime::Runtime,
}

pub fn fixture() -> Objects {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cluster.json");
    podnet_dns::source::load_objects(&path).expect("fixture loads")
}

pub fn config(zone: &str) -> Config {
    Config {
        zone: zone.into(),
        ns_addrs: vec!["10.96.0.10".parse().unwrap()],
        ..Config::default()
    }
}

/// Starts a server on `ip` (an ephemeral port) serving `objects` in `zone`,
/// forwarding to `upstream` when given.
pub fn start(ip: &str, zone: &str, objects: &Objects, upstream: Option<SocketAddr>) -> TestServer {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let forwarder = upstream.map(|u| Forwarder::new(vec![u], 1000));
    let shared = Shared::new(Index::build(config(zone), objects), forwarder);
    shared.mark_ready();
    let listen = Listen {
        dns: vec![format!("{ip}:0").parse().unwrap()],
        http: Some(format!("{ip}:0").parse().unwrap()),
        udp_workers: 2,
    };
    let running = rt
        .block_on(server::start(shared.clone(), &listen))
        .expect("server binds");
    TestServer {
        shared,
        addr: running.dns[0],
        http: running.http.unwrap(),
        _running: running,
        _rt: rt,
    }
}

fn require(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{tool}` is required for this test (Debian: apt-get install dnsutils)"
    );
}

/// Runs the real `dig` against `addr` with `args`; returns its stdout.
pub fn dig(addr: SocketAddr, args: &[&str]) -> String {
    require("dig");
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+tries=1", "+time=2"])
        .args(args)
        .output()
        .expect("dig runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dig +short`, lines sorted.
pub fn short(addr: SocketAddr, args: &[&str]) -> Vec<String> {
    let mut a = args.to_vec();
    a.push("+short");
    let mut v: Vec<String> = dig(addr, &a).lines().map(str::to_string).collect();
    v.sort();
    v
}

/// The `status:` of a full dig answer.
pub fn status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("<no answer>")
}

/// The flags line of a full dig answer.
pub fn flags(out: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(";; flags:"))
        .map(|l| l.split(';').nth(2).unwrap_or("").to_string())
        .unwrap_or_default()
}

pub fn require_nslookup() {
    require("nslookup");
}

/// Sends one raw UDP packet; the reply, or `None` after `wait`.
pub fn raw_udp(addr: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(packet, addr).unwrap();
    let mut buf = [0u8; 65535];
    s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

/// A well-formed query for `name`/`qtype` with id `id`.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.').filter(|l| !l.is_empty()) {
        b.push(l.len() as u8);
        b.extend_from_slice(l.as_bytes());
    }
    b.push(0);
    b.extend_from_slice(&qtype.to_be_bytes());
    b.extend_from_slice(&[0, 1]);
    b
}

/// GET `path` from the health/metrics responder: (status line, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}
