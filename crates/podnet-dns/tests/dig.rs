//! End to end with the real `dig` and `nslookup` against podnet-dns on
//! loopback: every record kind, negative answers, truncation and TCP retry,
//! case preservation, live index swaps.

mod common;

use std::sync::Arc;

use common::*;
use podnet_core::dns::{Index, Objects};
use serde_json::json;

#[test]
fn every_record_kind() {
    let s = start("127.0.0.1", "cluster.local", &fixture(), None);
    let a = s.addr;
    assert_eq!(
        short(a, &["kubernetes.default.svc.cluster.local"]),
        ["10.96.0.1"]
    );
    assert_eq!(
        short(a, &["dual.default.svc.cluster.local", "AAAA"]),
        ["fd00:96::20"]
    );
    assert_eq!(
        short(
            a,
            &["_https._tcp.kubernetes.default.svc.cluster.local", "SRV"]
        ),
        ["0 100 443 kubernetes.default.svc.cluster.local."]
    );
    assert_eq!(
        short(
            a,
            &["_dns._udp.kube-dns.kube-system.svc.cluster.local", "SRV"]
        ),
        ["0 100 53 kube-dns.kube-system.svc.cluster.local."]
    );
    // Headless: the three ready endpoints, not the not-ready one.
    assert_eq!(
        short(a, &["web.default.svc.cluster.local"]),
        ["10.244.1.5", "10.244.2.6", "10.244.2.7"]
    );
    assert_eq!(
        short(a, &["web-1.web.default.svc.cluster.local"]),
        ["10.244.2.6"]
    );
    assert_eq!(
        short(a, &["_http._tcp.web.default.svc.cluster.local", "SRV"]),
        [
            "0 33 8080 10-244-2-7.web.default.svc.cluster.local.",
            "0 33 8080 web-0.web.default.svc.cluster.local.",
            "0 33 8080 web-1.web.default.svc.cluster.local."
        ]
    );
    let srv = dig(a, &["_http._tcp.web.default.svc.cluster.local", "SRV"]);
    assert!(
        srv.contains("ADDITIONAL: 4"),
        "target addresses + OPT in additional:\n{srv}"
    );
    // Pod hostname + subdomain under the headless service.
    assert_eq!(
        short(a, &["sub-0.web.default.svc.cluster.local"]),
        ["10.244.4.4"]
    );
    // PTR, v4 and v6, for a ClusterIP and a headless endpoint.
    assert_eq!(
        short(a, &["-x", "10.96.0.1"]),
        ["kubernetes.default.svc.cluster.local."]
    );
    assert_eq!(
        short(a, &["-x", "fd00:96::20"]),
        ["dual.default.svc.cluster.local."]
    );
    assert_eq!(
        short(a, &["-x", "10.244.1.5"]),
        ["web-0.web.default.svc.cluster.local."]
    );
    // publishNotReadyAddresses.
    assert_eq!(
        short(a, &["pnr.default.svc.cluster.local"]),
        ["10.244.1.60"]
    );
    // ExternalName.
    assert_eq!(
        short(a, &["ext.default.svc.cluster.local", "CNAME"]),
        ["www.example.test."]
    );
    assert_eq!(
        short(a, &["ext.default.svc.cluster.local"]),
        ["www.example.test."]
    );
    // Pods (insecure default).
    assert_eq!(
        short(a, &["10-244-4-4.default.pod.cluster.local"]),
        ["10.244.4.4"]
    );
    // Zone records.
    assert_eq!(
        short(a, &["dns-version.cluster.local", "TXT"]),
        ["\"1.1.0\""]
    );
    assert_eq!(
        short(a, &["cluster.local", "NS"]),
        ["ns.dns.cluster.local."]
    );
    assert_eq!(short(a, &["ns.dns.cluster.local"]), ["10.96.0.10"]);
    let soa = short(a, &["cluster.local", "SOA"]);
    assert!(
        soa[0].starts_with("ns.dns.cluster.local. hostmaster.cluster.local. "),
        "{soa:?}"
    );
    assert!(soa[0].ends_with(" 7200 1800 86400 30"), "{soa:?}");
    // The AA bit on in-zone answers.
    let full = dig(a, &["kubernetes.default.svc.cluster.local"]);
    assert!(flags(&full).contains("aa"), "{full}");
    let norm = full.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        norm.contains("kubernetes.default.svc.cluster.local. 30 IN A 10.96.0.1"),
        "{full}"
    );
}

#[test]
fn nxdomain_against_nodata_with_soa() {
    let s = start("127.0.0.1", "cluster.local", &fixture(), None);
    let a = s.addr;
    let soa_line = "cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local.";
    for (name, qtype, want) in [
        ("nope.default.svc.cluster.local", "A", "NXDOMAIN"),
        ("lonely.default.svc.cluster.local", "A", "NXDOMAIN"),
        ("web-3.web.default.svc.cluster.local", "A", "NXDOMAIN"),
        ("nonexistent.svc.cluster.local", "A", "NXDOMAIN"),
        ("default.svc.cluster.local", "A", "NOERROR"),
        ("empty.svc.cluster.local", "A", "NOERROR"),
        ("kubernetes.default.svc.cluster.local", "AAAA", "NOERROR"),
        ("10-244-4-4.default.pod.cluster.local", "AAAA", "NOERROR"),
        ("svc.cluster.local", "A", "NOERROR"),
    ] {
        let out = dig(a, &[name, qtype]);
        assert_eq!(status(&out), want, "{name} {qtype}:\n{out}");
        assert!(
            out.contains("ANSWER: 0, AUTHORITY: 1"),
            "{name}: empty answer + SOA:\n{out}"
        );
        let norm = out.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            norm.contains(soa_line),
            "{name}: SOA with negative TTL:\n{out}"
        );
        assert!(flags(&out).contains("aa"), "{out}");
    }
}

fn big_headless(n: usize) -> Objects {
    let mut objs = fixture();
    objs.services.push(Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "big", "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap(),
    ));
    let eps: Vec<_> = (0..n)
        .map(|i| json!({"addresses": [format!("10.245.{}.{}", i / 250, i % 250 + 1)]}))
        .collect();
    objs.endpoint_slices.push(Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "big-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "big"}},
            "addressType": "IPv4", "endpoints": eps
        }))
        .unwrap(),
    ));
    objs
}

#[test]
fn truncation_and_tcp_retry() {
    let s = start("127.0.0.1", "cluster.local", &big_headless(150), None);
    let a = s.addr;
    // UDP only: the 150 answers do not fit 1232 bytes: TC, no records.
    let out = dig(a, &["big.default.svc.cluster.local", "+ignore", "+notcp"]);
    assert!(flags(&out).contains("tc"), "{out}");
    assert!(out.contains("ANSWER: 0"), "{out}");
    // Without EDNS the limit is 512.
    let out = dig(
        a,
        &[
            "web.default.svc.cluster.local",
            "_http._tcp.web.default.svc.cluster.local",
            "+noedns",
            "+ignore",
        ],
    );
    assert!(!flags(&out).contains("tc"), "small answers fit 512:\n{out}");
    let out = dig(a, &["big.default.svc.cluster.local", "+noedns", "+ignore"]);
    assert!(flags(&out).contains("tc"), "{out}");
    // dig's default retries over TCP and gets all of them.
    assert_eq!(short(a, &["big.default.svc.cluster.local"]).len(), 150);
    assert_eq!(
        short(a, &["big.default.svc.cluster.local", "+tcp"]).len(),
        150
    );
    // A large EDNS buffer from the client is capped at ours, not trusted.
    let out = dig(
        a,
        &["big.default.svc.cluster.local", "+bufsize=65000", "+ignore"],
    );
    assert!(flags(&out).contains("tc"), "{out}");
}

#[test]
fn case_is_preserved_and_matching_is_case_insensitive() {
    let s = start("127.0.0.1", "cluster.local", &fixture(), None);
    // Asked in lowercase first, so the mixed-case question below is served
    // from a UDP worker's encoded-answer cache and must still carry its case.
    for _ in 0..4 {
        assert_eq!(
            short(s.addr, &["kubernetes.default.svc.cluster.local"]),
            ["10.96.0.1"]
        );
    }
    let out = dig(s.addr, &["KuBeRnEtEs.DeFaUlT.SVC.Cluster.Local"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        out.contains(";KuBeRnEtEs.DeFaUlT.SVC.Cluster.Local. IN A"),
        "question case kept:\n{out}"
    );
    assert!(
        out.contains(" KuBeRnEtEs.DeFaUlT.SVC.Cluster.Local. 30 IN A 10.96.0.1 "),
        "answer owner in the question's case:\n{out}"
    );
    let out = dig(s.addr, &["WEB-0.Web.default.svc.CLUSTER.local"]);
    assert!(out.contains("10.244.1.5"), "{out}");
}

#[test]
fn index_swap_is_visible_immediately() {
    let s = start("127.0.0.1", "cluster.local", &fixture(), None);
    let a = s.addr;
    assert_eq!(
        status(&dig(a, &["fresh.default.svc.cluster.local"])),
        "NXDOMAIN"
    );
    let mut objs = fixture();
    objs.services.push(Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "fresh", "namespace": "default"},
            "spec": {"clusterIP": "10.96.7.7", "ports": [{"port": 80}]}
        }))
        .unwrap(),
    ));
    s.shared.swap(Index::build(config("cluster.local"), &objs));
    assert_eq!(
        short(a, &["fresh.default.svc.cluster.local"]),
        ["10.96.7.7"]
    );
    // An endpoint turning not-ready leaves the headless answer at once.
    let mut objs = fixture();
    let mut slice = (*objs.endpoint_slices[0]).clone();
    slice.endpoints[0].conditions.as_mut().unwrap().ready = Some(false);
    objs.endpoint_slices[0] = Arc::new(slice);
    s.shared.swap(Index::build(config("cluster.local"), &objs));
    assert_eq!(
        short(a, &["web.default.svc.cluster.local"]),
        ["10.244.2.6", "10.244.2.7"]
    );
    assert_eq!(
        status(&dig(a, &["fresh.default.svc.cluster.local"])),
        "NXDOMAIN"
    );
}

#[test]
fn nslookup_finds_services() {
    require_nslookup();
    let s = start("127.0.0.1", "cluster.local", &fixture(), None);
    let out = std::process::Command::new("nslookup")
        .arg(format!("-port={}", s.addr.port()))
        .arg("kubernetes.default.svc.cluster.local")
        .arg(s.addr.ip().to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Address: 10.96.0.1"), "{text}");
    let out = std::process::Command::new("nslookup")
        .arg(format!("-port={}", s.addr.port()))
        .arg("-type=SRV")
        .arg("_https._tcp.kubernetes.default.svc.cluster.local")
        .arg(s.addr.ip().to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("service = 0 100 443 kubernetes.default.svc.cluster.local."),
        "{text}"
    );
    let out = std::process::Command::new("nslookup")
        .arg(format!("-port={}", s.addr.port()))
        .arg("nope.default.svc.cluster.local")
        .arg(s.addr.ip().to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("NXDOMAIN"), "{text}");
}

#[test]
fn health_ready_and_metrics() {
    let s = start("127.0.0.1", "cluster.local", &fixture(), None);
    assert_eq!(http_get(s.http, "/health").0, "HTTP/1.1 200 OK");
    assert_eq!(http_get(s.http, "/ready").0, "HTTP/1.1 200 OK");
    assert_eq!(http_get(s.http, "/nope").0, "HTTP/1.1 404 Not Found");
    dig(s.addr, &["kubernetes.default.svc.cluster.local"]);
    dig(s.addr, &["nope.default.svc.cluster.local"]);
    let (st, body) = http_get(s.http, "/metrics");
    assert_eq!(st, "HTTP/1.1 200 OK");
    assert!(
        body.contains("podnet_dns_requests_total{type=\"A\",rcode=\"NOERROR\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("podnet_dns_requests_total{type=\"A\",rcode=\"NXDOMAIN\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("podnet_dns_request_duration_seconds_count 2\n"),
        "{body}"
    );
    assert!(body.contains("podnet_dns_index_records "), "{body}");
}
