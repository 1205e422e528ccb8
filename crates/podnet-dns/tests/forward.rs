//! Forwarding of names outside the zone to a test upstream of our own (a
//! second podnet-dns on another loopback address), with the cache: a second
//! answer comes from the cache even after the upstream is gone.

mod common;

use common::*;
use std::sync::atomic::Ordering;

#[test]
fn forwards_out_of_zone_and_caches() {
    // The upstream: authoritative for example.test, forwards nothing.
    let upstream = start("127.0.0.2", "example.test", &fixture(), None);
    let s = start(
        "127.0.0.1",
        "cluster.local",
        &fixture(),
        Some(upstream.addr),
    );
    let a = s.addr;
    let f = s.shared.forwarder.as_ref().unwrap();

    let out = dig(a, &["Kubernetes.Default.svc.example.test"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("10.96.0.1"), "{out}");
    assert!(
        !flags(&out).contains("aa"),
        "forwarded answers are not authoritative: {out}"
    );
    assert!(
        out.contains(";Kubernetes.Default.svc.example.test."),
        "question case kept: {out}"
    );
    assert_eq!(f.stats.cache_misses.load(Ordering::Relaxed), 1);
    assert_eq!(f.stats.cache_hits.load(Ordering::Relaxed), 0);

    // Second lookup: from the cache.
    assert_eq!(
        short(a, &["kubernetes.default.svc.example.test"]),
        ["10.96.0.1"]
    );
    assert_eq!(f.stats.cache_hits.load(Ordering::Relaxed), 1);
    assert_eq!(f.stats.cache_misses.load(Ordering::Relaxed), 1);

    // Negative answers are cached too (SOA minimum), with their SOA.
    let out = dig(a, &["nope.default.svc.example.test"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(out.contains("AUTHORITY: 1"), "{out}");
    let out = dig(a, &["nope.default.svc.example.test"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert_eq!(f.stats.cache_hits.load(Ordering::Relaxed), 2);

    // Over TCP the forwarded answer is the same.
    assert_eq!(short(a, &["web.default.svc.example.test", "+tcp"]).len(), 3);

    // The upstream goes away: cached names still answer, others SERVFAIL.
    drop(upstream);
    assert_eq!(
        short(a, &["kubernetes.default.svc.example.test"]),
        ["10.96.0.1"]
    );
    let out = dig(a, &["kube-dns.kube-system.svc.example.test", "+time=5"]);
    assert_eq!(status(&out), "SERVFAIL", "{out}");

    // The metrics say so.
    let (_, body) = http_get(s.http, "/metrics");
    assert!(body.contains("podnet_dns_cache_hits_total 3\n"), "{body}");
}

/// A slow upstream on demand: a relay on `ip` that holds every question
/// until the test sends on the returned channel, then passes it to `real`
/// and the answer back. Also returns how many questions reached it.
fn held_upstream(
    ip: &str,
    real: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<usize>,
) {
    use std::net::UdpSocket;
    use std::time::Duration;
    let sock = UdpSocket::bind(format!("{ip}:0")).unwrap();
    let addr = sock.local_addr().unwrap();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let relay = std::thread::spawn(move || {
        // Stops when the test has gone (its queries all answered) and no
        // question came for a while.
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 65535];
        let mut seen = 0;
        let mut held = true;
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            seen += 1;
            if held {
                // The answer waits until the test releases it (or gives up
                // waiting for its clients: 1.5 s, under the forwarder's 2 s
                // upstream timeout).
                let _ = released.recv_timeout(Duration::from_millis(1500));
                held = false;
            }
            let up = UdpSocket::bind("127.0.0.1:0").unwrap();
            up.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            up.send_to(&buf[..n], real).unwrap();
            let mut ans = [0u8; 65535];
            if let Ok(m) = up.recv(&mut ans) {
                sock.send_to(&ans[..m], from).unwrap();
            }
        }
        seen
    });
    (addr, release, relay)
}

#[test]
fn identical_concurrent_queries_collapse() {
    use std::time::{Duration, Instant};
    let upstream = start("127.0.0.3", "example.test", &fixture(), None);
    // The upstream holds its answer until all 20 clients have asked, so
    // that every query after the first finds the first one in flight: the
    // race the collapsing is for happens on every run.
    let (held, release, relay) = held_upstream("127.0.0.4", upstream.addr);
    let s = start("127.0.0.1", "cluster.local", &fixture(), Some(held));
    let f = s.shared.forwarder.as_ref().unwrap();
    // 20 clients at once for one name, released together.
    let go = std::sync::Arc::new(std::sync::Barrier::new(20));
    let handles: Vec<_> = (0..20u16)
        .map(|i| {
            let addr = s.addr;
            let go = go.clone();
            std::thread::spawn(move || {
                go.wait();
                raw_udp(
                    addr,
                    &query(i, "web.default.svc.example.test", 1),
                    Duration::from_secs(5),
                )
            })
        })
        .collect();
    // Hold the upstream until the 19 followers have joined the leader (or
    // 1.5 s: the relay lets go by itself then, and the checks below say
    // how many joined).
    let deadline = Instant::now() + Duration::from_millis(1400);
    while f.stats.collapsed.load(Ordering::Relaxed) < 19 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = release.send(());
    for h in handles {
        let r = h.join().unwrap().expect("answered");
        assert_eq!(r[3] & 0xf, 0);
        assert_eq!(r[7], 3, "three addresses");
    }
    let upstream_exchanges = f.stats.cache_misses.load(Ordering::Relaxed);
    let collapsed = f.stats.collapsed.load(Ordering::Relaxed);
    let hits = f.stats.cache_hits.load(Ordering::Relaxed);
    assert_eq!(
        upstream_exchanges, 1,
        "one upstream exchange for 20 identical queries \
         (collapsed {collapsed}, cache hits {hits})"
    );
    assert!(
        collapsed > 0,
        "no query joined the one in flight, though the upstream held its \
         answer until the clients had asked (cache hits {hits})"
    );
    assert_eq!(collapsed + hits + upstream_exchanges, 20);
    // The metric says the same.
    let (_, body) = http_get(s.http, "/metrics");
    assert!(
        body.contains(&format!("podnet_dns_forward_collapsed_total {collapsed}\n")),
        "{body}"
    );
    drop(s);
    assert_eq!(
        relay.join().unwrap(),
        1,
        "one question reached the upstream"
    );
}

/// An ExternalName Service answers its CNAME followed by the target's
/// addresses from the upstream (stub resolvers do not chase CNAMEs).
#[test]
fn external_name_is_chased_through_the_upstream() {
    let upstream = start("127.0.0.5", "example.test", &fixture(), None);
    let mut objs = fixture();
    objs.services.push(std::sync::Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "extk", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "kubernetes.default.svc.example.test"}
        }))
        .unwrap(),
    ));
    let s = start("127.0.0.1", "cluster.local", &objs, Some(upstream.addr));
    let out = dig(s.addr, &["ExtK.default.svc.cluster.local"]);
    let norm = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(
        norm.contains(
            "ExtK.default.svc.cluster.local. 30 IN CNAME kubernetes.default.svc.example.test."
        ),
        "{out}"
    );
    assert!(
        norm.contains("kubernetes.default.svc.example.test. 30 IN A 10.96.0.1"),
        "{out}"
    );
    // Asking for the CNAME itself does not go upstream.
    assert_eq!(
        short(s.addr, &["extk.default.svc.cluster.local", "CNAME"]),
        ["kubernetes.default.svc.example.test."]
    );
    // A target the upstream does not know: the CNAME alone.
    assert_eq!(
        short(s.addr, &["ext.default.svc.cluster.local"]),
        ["www.example.test."]
    );
}
