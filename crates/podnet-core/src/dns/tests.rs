//! Unit tests of the DNS planner with real k8s-openapi objects.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use super::*;

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("valid object"))
}

fn ns(name: &str) -> Arc<Namespace> {
    obj(json!({"metadata": {"name": name}}))
}

fn cluster_ip_svc(ns: &str, name: &str, ips: &[&str]) -> Arc<Service> {
    obj(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "clusterIP": ips[0], "clusterIPs": ips, "type": "ClusterIP",
            "ports": [
                {"name": "https", "port": 443, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"port": 8080}
            ]
        }
    }))
}

fn headless_svc(ns: &str, name: &str, publish: bool) -> Arc<Service> {
    obj(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": publish,
                 "ports": [{"name": "web", "port": 80, "protocol": "TCP"}]}
    }))
}

fn slice(ns: &str, svc: &str, eps: serde_json::Value) -> Arc<EndpointSlice> {
    obj(json!({
        "metadata": {"name": format!("{svc}-abc"), "namespace": ns,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps
    }))
}

fn pod(ns: &str, name: &str, ip: &str, ready: bool, extra_spec: serde_json::Value) -> Arc<Pod> {
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
        s.extend(e.clone());
    }
    obj(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
    }))
}

fn cluster() -> Objects {
    Objects {
        namespaces: vec![ns("default"), ns("kube-system"), ns("empty")],
        services: vec![
            cluster_ip_svc("default", "kubernetes", &["10.96.0.1"]),
            cluster_ip_svc("default", "dual", &["10.96.0.20", "fd00:96::20"]),
            cluster_ip_svc("default", "v6only", &["fd00:96::21"]),
            headless_svc("default", "web", false),
            headless_svc("default", "lonely", false),
            headless_svc("default", "pnr", true),
            obj(json!({"metadata": {"name": "ext", "namespace": "default"},
                       "spec": {"type": "ExternalName", "externalName": "www.Example.com."}})),
        ],
        endpoint_slices: vec![
            slice(
                "default",
                "web",
                json!([
                    {"addresses": ["10.244.1.5"], "hostname": "web-0", "conditions": {"ready": true}},
                    {"addresses": ["10.244.2.6"], "conditions": {"ready": true}},
                    {"addresses": ["10.244.2.7"], "conditions": {}},
                    {"addresses": ["10.244.3.9"], "hostname": "web-3", "conditions": {"ready": false}}
                ]),
            ),
            slice(
                "default",
                "lonely",
                json!([
                    {"addresses": ["10.244.1.50"], "conditions": {"ready": false}}
                ]),
            ),
            slice(
                "default",
                "pnr",
                json!([
                    {"addresses": ["10.244.1.60"], "conditions": {"ready": false}}
                ]),
            ),
        ],
        pods: vec![
            pod(
                "default",
                "sub-0",
                "10.244.4.4",
                true,
                json!({"hostname": "sub-0", "subdomain": "web"}),
            ),
            pod(
                "default",
                "sub-1",
                "10.244.4.5",
                false,
                json!({"hostname": "sub-1", "subdomain": "web"}),
            ),
            pod("default", "plain", "10.244.4.8", true, json!({})),
        ],
    }
}

fn index(pods: PodMode) -> Index {
    Index::build(
        Config {
            pods,
            ns_addrs: vec!["10.96.0.10".parse().unwrap()],
            ..Config::default()
        },
        &cluster(),
    )
}

fn ips(a: &Answer) -> Vec<IpAddr> {
    a.answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(v) => Some(IpAddr::V4(v)),
            RData::Aaaa(v) => Some(IpAddr::V6(v)),
            _ => None,
        })
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn assert_nxdomain(idx: &Index, name: &str, t: u16) {
    let a = idx.lookup(name, t).expect("in zone");
    assert_eq!(a.rcode, Rcode::NxDomain, "{name} {t}: {a:?}");
    assert!(a.answers.is_empty());
    assert!(
        matches!(a.authority[0].data, RData::Soa { .. }),
        "SOA in authority"
    );
}

fn assert_nodata(idx: &Index, name: &str, t: u16) {
    let a = idx.lookup(name, t).expect("in zone");
    assert!(a.is_nodata(), "{name} {t}: expected NODATA, got {a:?}");
    assert_eq!(a.authority.len(), 1);
    assert_eq!(a.authority[0].ttl, 30, "negative TTL on the SOA");
    match &a.authority[0].data {
        RData::Soa { minimum, mname, .. } => {
            assert_eq!(*minimum, 30);
            assert_eq!(&**mname, "ns.dns.cluster.local");
        }
        other => panic!("not an SOA: {other:?}"),
    }
}

#[test]
fn cluster_ip_a_and_aaaa() {
    let idx = index(PodMode::Insecure);
    let a = idx
        .lookup("kubernetes.default.svc.cluster.local", rtype::A)
        .unwrap();
    assert_eq!(ips(&a), vec![ip("10.96.0.1")]);
    assert_eq!(a.answers[0].ttl, 30);
    assert_eq!(&*a.answers[0].name, "kubernetes.default.svc.cluster.local");
    let a = idx
        .lookup("dual.default.svc.cluster.local", rtype::AAAA)
        .unwrap();
    assert_eq!(ips(&a), vec![ip("fd00:96::20")]);
    let a = idx
        .lookup("dual.default.svc.cluster.local", rtype::A)
        .unwrap();
    assert_eq!(ips(&a), vec![ip("10.96.0.20")]);
    // v4-only service asked for AAAA: NODATA, not NXDOMAIN.
    assert_nodata(&idx, "kubernetes.default.svc.cluster.local", rtype::AAAA);
    assert_nodata(&idx, "v6only.default.svc.cluster.local", rtype::A);
}

#[test]
fn cluster_ip_srv_per_named_port_only() {
    let idx = index(PodMode::Insecure);
    let a = idx
        .lookup(
            "_https._tcp.kubernetes.default.svc.cluster.local",
            rtype::SRV,
        )
        .unwrap();
    assert_eq!(a.answers.len(), 1);
    match &a.answers[0].data {
        RData::Srv { port, target, .. } => {
            assert_eq!(*port, 443);
            assert_eq!(&**target, "kubernetes.default.svc.cluster.local");
        }
        d => panic!("{d:?}"),
    }
    assert_eq!(
        ips(&Answer {
            answers: a.additional.clone(),
            ..a.clone()
        }),
        vec![ip("10.96.0.1")]
    );
    let a = idx
        .lookup("_dns._udp.kubernetes.default.svc.cluster.local", rtype::SRV)
        .unwrap();
    assert_eq!(a.answers.len(), 1);
    // Wrong protocol: no such name.
    assert_nxdomain(
        &idx,
        "_dns._tcp.kubernetes.default.svc.cluster.local",
        rtype::SRV,
    );
    // `_tcp.<svc>` is an empty non-terminal: exists.
    assert_nodata(
        &idx,
        "_tcp.kubernetes.default.svc.cluster.local",
        rtype::SRV,
    );
}

#[test]
fn ptr_for_cluster_ips_v4_and_v6() {
    let idx = index(PodMode::Insecure);
    let a = idx.lookup("1.0.96.10.in-addr.arpa", rtype::PTR).unwrap();
    assert_eq!(
        a.answers[0].data,
        RData::Ptr("kubernetes.default.svc.cluster.local".into())
    );
    let rev6 = reverse_name(ip("fd00:96::20"));
    assert!(rev6.ends_with(".0.0.d.f.ip6.arpa"), "{rev6}");
    assert!(rev6.starts_with("0.2.0.0.0.0.0.0."), "{rev6}");
    let a = idx.lookup(&rev6, rtype::PTR).unwrap();
    assert_eq!(
        a.answers[0].data,
        RData::Ptr("dual.default.svc.cluster.local".into())
    );
    // Unknown reverse names are not ours: forwarded.
    assert!(idx.lookup("9.9.9.10.in-addr.arpa", rtype::PTR).is_none());
    assert!(!idx.is_authoritative_for("9.9.9.10.in-addr.arpa"));
}

#[test]
fn headless_ready_endpoints_hostnames_srv_ptr() {
    let idx = index(PodMode::Insecure);
    let a = idx
        .lookup("web.default.svc.cluster.local", rtype::A)
        .unwrap();
    // Ready (and unset-ready) endpoints only; the not-ready web-3 is absent.
    assert_eq!(
        ips(&a),
        vec![ip("10.244.1.5"), ip("10.244.2.6"), ip("10.244.2.7")]
    );
    let a = idx
        .lookup("web-0.web.default.svc.cluster.local", rtype::A)
        .unwrap();
    assert_eq!(ips(&a), vec![ip("10.244.1.5")]);
    // Endpoints without hostname get the dashed address as identifier.
    let a = idx
        .lookup("10-244-2-6.web.default.svc.cluster.local", rtype::A)
        .unwrap();
    assert_eq!(ips(&a), vec![ip("10.244.2.6")]);
    assert_nxdomain(&idx, "web-3.web.default.svc.cluster.local", rtype::A);
    let a = idx
        .lookup("_web._tcp.web.default.svc.cluster.local", rtype::SRV)
        .unwrap();
    let mut targets: Vec<(u16, String)> = a
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::Srv { port, target, .. } => (*port, target.to_string()),
            d => panic!("{d:?}"),
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        vec![
            (8080, "10-244-2-6.web.default.svc.cluster.local".into()),
            (8080, "10-244-2-7.web.default.svc.cluster.local".into()),
            (8080, "web-0.web.default.svc.cluster.local".into()),
        ]
    );
    assert_eq!(a.additional.len(), 3, "target addresses in additional");
    let a = idx.lookup("5.1.244.10.in-addr.arpa", rtype::PTR).unwrap();
    assert_eq!(
        a.answers[0].data,
        RData::Ptr("web-0.web.default.svc.cluster.local".into())
    );
    assert!(idx.lookup("9.3.244.10.in-addr.arpa", rtype::PTR).is_none());
}

#[test]
fn headless_without_ready_endpoints_is_nxdomain() {
    let idx = index(PodMode::Insecure);
    assert_nxdomain(&idx, "lonely.default.svc.cluster.local", rtype::A);
    // publishNotReadyAddresses: the not-ready endpoint is published.
    let a = idx
        .lookup("pnr.default.svc.cluster.local", rtype::A)
        .unwrap();
    assert_eq!(ips(&a), vec![ip("10.244.1.60")]);
}

#[test]
fn pod_hostname_and_subdomain() {
    let idx = index(PodMode::Insecure);
    let a = idx
        .lookup("sub-0.web.default.svc.cluster.local", rtype::A)
        .unwrap();
    assert_eq!(ips(&a), vec![ip("10.244.4.4")]);
    // Not ready and the service does not publish not-ready: absent.
    assert_nxdomain(&idx, "sub-1.web.default.svc.cluster.local", rtype::A);
}

#[test]
fn external_name_cname() {
    let idx = index(PodMode::Insecure);
    for t in [rtype::A, rtype::AAAA, rtype::CNAME] {
        let a = idx.lookup("ext.default.svc.cluster.local", t).unwrap();
        assert_eq!(a.answers.len(), 1);
        assert_eq!(a.answers[0].data, RData::Cname("www.example.com".into()));
    }
}

#[test]
fn pods_insecure_verified_disabled() {
    let idx = index(PodMode::Insecure);
    let a = idx
        .lookup("10-244-4-8.default.pod.cluster.local", rtype::A)
        .unwrap();
    assert_eq!(ips(&a), vec![ip("10.244.4.8")]);
    // insecure: any well-formed address, any namespace.
    let a = idx
        .lookup("1-2-3-4.other.pod.cluster.local", rtype::A)
        .unwrap();
    assert_eq!(ips(&a), vec![ip("1.2.3.4")]);
    assert_nodata(&idx, "1-2-3-4.other.pod.cluster.local", rtype::AAAA);
    let a = idx
        .lookup("fd00-10-244--5.default.pod.cluster.local", rtype::AAAA)
        .unwrap();
    assert_eq!(
        ips(&a),
        vec![IpAddr::V6("fd00:10:244::5".parse::<Ipv6Addr>().unwrap())]
    );
    assert_nxdomain(&idx, "1-2-3-999.default.pod.cluster.local", rtype::A);
    assert_nxdomain(&idx, "1-2-3.default.pod.cluster.local", rtype::A);
    assert_nxdomain(&idx, "x.1-2-3-4.default.pod.cluster.local", rtype::A);

    let idx = index(PodMode::Verified);
    let a = idx
        .lookup("10-244-4-8.default.pod.cluster.local", rtype::A)
        .unwrap();
    assert_eq!(ips(&a), vec![ip("10.244.4.8")]);
    assert_nxdomain(&idx, "1-2-3-4.default.pod.cluster.local", rtype::A);
    assert_nxdomain(&idx, "10-244-4-8.kube-system.pod.cluster.local", rtype::A);

    let idx = index(PodMode::Disabled);
    assert_nxdomain(&idx, "10-244-4-8.default.pod.cluster.local", rtype::A);
}

#[test]
fn zone_records_and_nodata_for_structure() {
    let idx = index(PodMode::Insecure);
    let a = idx.lookup("dns-version.cluster.local", rtype::TXT).unwrap();
    assert_eq!(a.answers[0].data, RData::Txt(SCHEMA_VERSION.into()));
    let a = idx.lookup("cluster.local", rtype::SOA).unwrap();
    assert!(matches!(a.answers[0].data, RData::Soa { .. }));
    let a = idx.lookup("cluster.local", rtype::NS).unwrap();
    assert_eq!(a.answers[0].data, RData::Ns("ns.dns.cluster.local".into()));
    assert_eq!(
        ips(&Answer {
            answers: a.additional.clone(),
            ..a.clone()
        }),
        vec![ip("10.96.0.10")]
    );
    assert_nodata(&idx, "default.svc.cluster.local", rtype::A);
    assert_nodata(&idx, "empty.svc.cluster.local", rtype::A);
    assert_nodata(&idx, "svc.cluster.local", rtype::A);
    assert_nodata(&idx, "default.pod.cluster.local", rtype::A);
    assert_nodata(&idx, "cluster.local", rtype::A);
    assert_nxdomain(&idx, "nonexistent.svc.cluster.local", rtype::A);
    assert_nxdomain(&idx, "nope.default.svc.cluster.local", rtype::A);
    assert_nxdomain(&idx, "foo.cluster.local", rtype::A);
    // ANY returns everything at the name.
    let a = idx
        .lookup("dual.default.svc.cluster.local", rtype::ANY)
        .unwrap();
    assert_eq!(a.answers.len(), 2);
    // Out of zone: not ours.
    assert!(idx.lookup("example.com", rtype::A).is_none());
    assert!(idx.lookup("notcluster.local", rtype::A).is_none());
}

#[test]
fn config_zone_and_ttls() {
    let zone = normalize_zone("Corp.Example.").unwrap();
    assert_eq!(zone, "corp.example");
    assert!(normalize_zone("").is_err());
    assert!(normalize_zone("a..b").is_err());
    assert!(normalize_zone(&"a".repeat(64)).is_err());
    let idx = Index::build(
        Config {
            zone,
            ttl: 5,
            negative_ttl: 7,
            ..Config::default()
        },
        &cluster(),
    );
    let a = idx
        .lookup("kubernetes.default.svc.corp.example", rtype::A)
        .unwrap();
    assert_eq!(a.answers[0].ttl, 5);
    let a = idx
        .lookup("nope.default.svc.corp.example", rtype::A)
        .unwrap();
    assert_eq!(a.authority[0].ttl, 7);
    assert!(
        idx.lookup("kubernetes.default.svc.cluster.local", rtype::A)
            .is_none()
    );
}

#[test]
fn index_counts_and_empty() {
    let idx = Index::empty(Config::default());
    assert!(idx.record_count() >= 3);
    assert_nxdomain(&idx, "kubernetes.default.svc.cluster.local", rtype::A);
    let full = index(PodMode::Insecure);
    assert!(full.record_count() > idx.record_count() + 20);
    assert!(full.name_count() > 20);
}

#[test]
fn dashed_ip_roundtrip() {
    for s in [
        "10.244.1.5",
        "fd00:10:244::5",
        "::1",
        "2001:db8:1:2:3:4:5:6",
    ] {
        let a = ip(s);
        assert_eq!(name::parse_dashed_ip(&name::dashed_ip(a)), Some(a), "{s}");
    }
    assert_eq!(name::parse_dashed_ip("web-0"), None);
    assert_eq!(name::parse_dashed_ip("a-b-c-d"), None);
    assert_eq!(
        name::parse_dashed_ip("010-1-1-1"),
        Some(IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1)))
    );
}

/// Every name and its records, overlay applied (what lookups see).
fn dump(idx: &Index) -> std::collections::BTreeMap<String, Vec<RData>> {
    let mut m: std::collections::BTreeMap<String, Vec<RData>> = idx
        .base
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    for (k, v) in &idx.overlay {
        match v {
            Some(v) => m.insert(k.to_string(), v.clone()),
            None => m.remove(&**k),
        };
    }
    m
}

fn replace_key(objects: &mut Objects, key: &ServiceKey, new: &ServiceObjects) {
    objects.services.retain(|s| {
        (
            s.metadata.namespace.clone().unwrap(),
            s.metadata.name.clone().unwrap(),
        ) != *key
    });
    objects
        .endpoint_slices
        .retain(|s| service_key_of_slice(s).as_ref() != Some(key));
    objects
        .pods
        .retain(|p| service_key_of_pod(p).as_ref() != Some(key));
    objects.services.extend(new.service.clone());
    objects.endpoint_slices.extend(new.slices.iter().cloned());
    objects.pods.extend(new.pods.iter().cloned());
}

/// Incremental updates give exactly the index a full build of the same
/// objects gives, change after change (names, records, SOA serial, counts).
#[test]
fn incremental_updates_equal_a_full_build() {
    let config = Config {
        ns_addrs: vec!["10.96.0.10".parse().unwrap()],
        ..Config::default()
    };
    let mut objects = cluster();
    let mut idx = Index::build(config.clone(), &objects);
    let key = |ns: &str, n: &str| (ns.to_string(), n.to_string());
    let web_slice = |ready: bool| {
        slice(
            "default",
            "web",
            json!([
                {"addresses": ["10.244.1.5"], "hostname": "web-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.6"], "conditions": {"ready": ready}},
            ]),
        )
    };
    let steps: Vec<(ServiceKey, ServiceObjects)> = vec![
        // A new ClusterIP service.
        (
            key("default", "fresh"),
            ServiceObjects {
                service: Some(cluster_ip_svc("default", "fresh", &["10.96.0.77"])),
                ..Default::default()
            },
        ),
        // An endpoint of a headless service turns not-ready; a pod named
        // under it turns ready.
        (
            key("default", "web"),
            ServiceObjects {
                service: Some(headless_svc("default", "web", false)),
                slices: vec![web_slice(false)],
                pods: vec![
                    pod(
                        "default",
                        "sub-0",
                        "10.244.4.4",
                        true,
                        json!({"hostname": "sub-0", "subdomain": "web"}),
                    ),
                    pod(
                        "default",
                        "sub-1",
                        "10.244.4.5",
                        true,
                        json!({"hostname": "sub-1", "subdomain": "web"}),
                    ),
                ],
            },
        ),
        // Back to ready.
        (
            key("default", "web"),
            ServiceObjects {
                service: Some(headless_svc("default", "web", false)),
                slices: vec![web_slice(true)],
                pods: vec![],
            },
        ),
        // A service deleted; one that had no endpoints gets one.
        (key("default", "fresh"), ServiceObjects::default()),
        (
            key("default", "lonely"),
            ServiceObjects {
                service: Some(headless_svc("default", "lonely", false)),
                slices: vec![slice(
                    "default",
                    "lonely",
                    json!([{"addresses": ["10.244.1.50"], "conditions": {"ready": true}}]),
                )],
                pods: vec![],
            },
        ),
        // Headless becomes ClusterIP on the headless endpoint's reverse
        // name's neighbour; ExternalName deleted.
        (
            key("default", "lonely"),
            ServiceObjects {
                service: Some(cluster_ip_svc("default", "lonely", &["10.96.0.78"])),
                ..Default::default()
            },
        ),
        (key("default", "ext"), ServiceObjects::default()),
        // A new service in an existing namespace with no services yet.
        (
            key("empty", "first"),
            ServiceObjects {
                service: Some(cluster_ip_svc("empty", "first", &["10.96.0.79"])),
                ..Default::default()
            },
        ),
    ];
    let mut groups = group_by_service(&objects);
    for (serial, (k, new)) in steps.into_iter().enumerate() {
        let serial = 100 + serial as u32;
        let old = groups.get(&k).cloned().unwrap_or_default();
        let next = idx
            .update(serial, &[(&k, &old, &new)])
            .unwrap_or_else(|| panic!("update of {k:?} fell back to a full build"));
        replace_key(&mut objects, &k, &new);
        let full = Index::build(
            Config {
                serial,
                ..config.clone()
            },
            &objects,
        );
        assert_eq!(dump(&next), dump(&full), "after changing {k:?}");
        assert_eq!(next.record_count(), full.record_count(), "{k:?}");
        assert_eq!(next.name_count(), full.name_count(), "{k:?}");
        for (name, t) in [
            ("fresh.default.svc.cluster.local", rtype::A),
            ("nope.default.svc.cluster.local", rtype::A),
        ] {
            assert_eq!(next.lookup(name, t), full.lookup(name, t), "{name}");
        }
        groups.insert(k, new);
        idx = next;
    }
    assert!(idx.overlay_len() > 0);
    // A service in a namespace the index does not hold: a full build.
    let k = key("brand-new", "svc");
    let new = ServiceObjects {
        service: Some(cluster_ip_svc("brand-new", "svc", &["10.96.0.80"])),
        ..Default::default()
    };
    assert!(
        idx.update(999, &[(&k, &ServiceObjects::default(), &new)])
            .is_none()
    );
}

#[test]
fn short_service_names_answer_existing_services_and_forward_the_rest() {
    let idx = index(PodMode::Insecure);
    // BusyBox's nslookup sends `kubernetes.default` as is.
    let a = idx
        .lookup("kubernetes.default", rtype::A)
        .expect("answered");
    assert_eq!(ips(&a), vec![ip("10.96.0.1")]);
    assert_eq!(
        &*a.answers[0].name, "kubernetes.default",
        "owner is the question"
    );
    // Not a Service, not two labels, or not a namespace's: forwarded.
    assert!(idx.lookup("nosuch.default", rtype::A).is_none());
    assert!(idx.lookup("example.com", rtype::A).is_none());
    assert!(idx.lookup("a.kubernetes.default", rtype::A).is_none());
    assert!(idx.lookup("default", rtype::A).is_none());
    // Off: forwarded like any other name.
    let off = Index::build(
        Config {
            short_service_names: false,
            ..Config::default()
        },
        &cluster(),
    );
    assert!(off.lookup("kubernetes.default", rtype::A).is_none());
}
