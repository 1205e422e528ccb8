//! The malformed-packet corpus: each packet gets FORMERR (or another error
//! rcode) or is dropped, and the server keeps answering, over UDP and TCP.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_millis(300);

fn header(id: u16, qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&[0x01, 0x00]);
    for v in [qd, an, ns, ar] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b
}

fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let good = query(0x4242, "kubernetes.default.svc.cluster.local", 1);
    let mut v: Vec<(&str, Vec<u8>)> = Vec::new();
    v.push(("empty", vec![]));
    v.push(("truncated header", good[..7].to_vec()));
    v.push(("header only, qdcount 1", good[..12].to_vec()));
    v.push(("truncated question", good[..good.len() - 3].to_vec()));
    v.push(("qdcount 0", {
        let mut b = header(1, 0, 0, 0, 0);
        b.extend_from_slice(&good[12..]);
        b
    }));
    v.push(("qdcount 2", {
        let mut b = header(2, 2, 0, 0, 0);
        b.extend_from_slice(&good[12..]);
        b.extend_from_slice(&good[12..]);
        b
    }));
    v.push(("compression pointer to itself", {
        let mut b = header(3, 1, 0, 0, 0);
        b.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        b
    }));
    v.push(("compression pointer loop of two", {
        let mut b = header(4, 1, 0, 0, 0);
        b.extend_from_slice(&[1, b'a', 0xC0, 12, 0, 1, 0, 1]);
        b
    }));
    v.push(("compression pointer past the end", {
        let mut b = header(5, 1, 0, 0, 0);
        b.extend_from_slice(&[0xFF, 0xFF, 0, 1, 0, 1]);
        b
    }));
    v.push(("label over 63 bytes", query(6, &"x".repeat(64), 1)));
    v.push((
        "name over 255 bytes",
        query(7, &["abcdefghijklmnopqrstuvwxy"; 11].join("."), 1),
    ));
    v.push(("label length past the end", {
        let mut b = header(8, 1, 0, 0, 0);
        b.extend_from_slice(&[40, b'a', b'b']);
        b
    }));
    v.push(("garbage after the question", {
        let mut b = good.clone();
        b.extend_from_slice(b"garbage!");
        b
    }));
    v.push(("arcount 1 without a record", {
        let mut b = good.clone();
        b[11] = 1;
        b
    }));
    v.push(("OPT with rdlen past the end", {
        let mut b = good.clone();
        b[11] = 1;
        b.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 9, 1, 2]);
        b
    }));
    v.push(("OPT with a non-root owner", {
        let mut b = good.clone();
        b[11] = 1;
        b.extend_from_slice(&[1, b'x', 0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        b
    }));
    v.push(("OPT with a truncated option", {
        let mut b = good.clone();
        b[11] = 1;
        b.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 3, 0, 10, 0]);
        b
    }));
    v.push(("two OPT records", {
        let mut b = good.clone();
        b[11] = 2;
        for _ in 0..2 {
            b.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        }
        b
    }));
    v.push(("EDNS version 1", {
        let mut b = good.clone();
        b[11] = 1;
        b.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 1, 0, 0, 0, 0]);
        b
    }));
    v.push(("answer records in a query", {
        let mut b = good.clone();
        b[7] = 1;
        b
    }));
    v.push(("a response, not a query", {
        let mut b = good.clone();
        b[2] |= 0x80;
        b
    }));
    v.push(("opcode UPDATE", {
        let mut b = good.clone();
        b[2] = 5 << 3;
        b
    }));
    v.push(("64 KiB of 0xff", vec![0xff; 65000]));
    v
}

/// Every malformed packet: an error rcode with the query's id, or nothing.
/// After each, a good query is still answered.
#[test]
fn malformed_udp_packets_get_formerr_or_drop() {
    let s = start("127.0.0.1", "cluster.local", &fixture(), None);
    let good = query(0x4242, "kubernetes.default.svc.cluster.local", 1);
    let mut answered = 0;
    for (what, packet) in corpus() {
        match raw_udp(s.addr, &packet, WAIT) {
            None => {}
            Some(r) => {
                assert!(r.len() >= 12, "{what}: short reply {r:?}");
                assert_eq!(r[..2], packet[..2], "{what}: id echoed");
                assert!(r[2] & 0x80 != 0, "{what}: QR set");
                let rc = r[3] & 0xf;
                assert!(
                    matches!(rc, 1 | 4) || (rc == 0 && r[11] == 1 && what.contains("version")),
                    "{what}: rcode {rc} is not an error: {r:?}"
                );
                answered += 1;
            }
        }
        let r = raw_udp(s.addr, &good, Duration::from_secs(2))
            .unwrap_or_else(|| panic!("server stopped answering after {what}"));
        assert_eq!(r[3] & 0xf, 0, "good query after {what}");
        assert_eq!(r[7], 1, "one answer after {what}");
    }
    assert!(
        answered >= 15,
        "most malformed queries get FORMERR, got {answered}"
    );
    // dig still works.
    assert_eq!(
        short(s.addr, &["kubernetes.default.svc.cluster.local"]),
        ["10.96.0.1"]
    );
}

/// The same corpus over TCP, plus framing abuse: never a hang, and the
/// server keeps serving.
#[test]
fn malformed_tcp_streams_do_not_hang_the_server() {
    let s = start("127.0.0.1", "cluster.local", &fixture(), None);
    // Each stream gets an answer or is closed by the server; one left open
    // and silent is a hang (the server's own idle limit is 10 s: 5 s is
    // long past any answer, and short of that limit).
    let (mut answered, mut closed) = (0, 0);
    for (what, packet) in corpus().into_iter().filter(|(_, p)| p.len() < 65535) {
        let mut c = std::net::TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(&(packet.len() as u16).to_be_bytes()).unwrap();
        c.write_all(&packet).unwrap();
        let mut len = [0u8; 2];
        match c.read_exact(&mut len) {
            Ok(()) => {
                let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
                c.read_exact(&mut r).unwrap();
                assert!(r[3] & 0xf != 0 || what.contains("version"), "{what}: {r:?}");
                answered += 1;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                closed += 1;
            }
            Err(e) => {
                panic!("{what}: the server neither answered nor closed the stream within 5 s ({e})")
            }
        }
    }
    assert!(
        answered >= 15,
        "most malformed queries get an error rcode over TCP too: {answered} answered, {closed} closed"
    );
    // A length prefix promising more than is sent, then silence: the
    // connection waits alone; others are served meanwhile.
    let mut stuck = std::net::TcpStream::connect(s.addr).unwrap();
    stuck.write_all(&[0xff, 0xff, 1, 2, 3]).unwrap();
    let out = dig(
        s.addr,
        &["kubernetes.default.svc.cluster.local", "+tcp", "+short"],
    );
    assert_eq!(out.trim(), "10.96.0.1");
    assert_eq!(
        short(s.addr, &["kubernetes.default.svc.cluster.local"]),
        ["10.96.0.1"]
    );
}

/// A deterministic mutation run over valid queries (the fuzz target's
/// invariants, in the normal test suite): no panic; whatever the parser
/// accepts hickory-proto decodes too; every response we build decodes and
/// fits the UDP limit.
#[test]
fn mutated_queries_keep_the_invariants() {
    use podnet_dns::server::{Action, Shared, answer};
    let shared = Shared::new(
        podnet_core::dns::Index::build(config("cluster.local"), &fixture()),
        None,
    );
    let seeds = [
        query(1, "kubernetes.default.svc.cluster.local", 1),
        query(2, "_http._tcp.web.default.svc.cluster.local", 33),
        query(3, "1.0.96.10.in-addr.arpa", 12),
        {
            let mut q = query(4, "web.default.svc.cluster.local", 255);
            q[11] = 1;
            q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
            q
        },
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    let mut accepted = 0;
    for i in 0..50_000 {
        let mut p = seeds[i % seeds.len()].clone();
        for _ in 0..(next() % 4 + 1) {
            let r = next();
            match r % 4 {
                0 if !p.is_empty() => {
                    let at = (r >> 8) as usize % p.len();
                    p[at] = (r >> 32) as u8;
                }
                1 if !p.is_empty() => p.truncate((r >> 8) as usize % p.len()),
                2 => p.push((r >> 8) as u8),
                _ => {
                    let at = (r >> 8) as usize % (p.len() + 1);
                    p.insert(at, (r >> 32) as u8);
                }
            }
        }
        if podnet_dns::wire::parse_query(&p).is_ok() {
            accepted += 1;
            assert!(
                hickory_proto::op::Message::from_vec(&p).is_ok(),
                "accepted what hickory-proto rejects: {p:?}"
            );
        }
        if answer(&shared, &p, false, &mut out) == Action::Reply {
            assert!(out.len() <= 1232, "UDP answer too large");
            if let Err(e) = hickory_proto::op::Message::from_vec(&out) {
                panic!("response does not decode ({e}) for query {p:?}: {out:?}");
            }
        }
    }
    assert!(
        accepted > 1000,
        "the mutations keep some queries valid ({accepted})"
    );
}
