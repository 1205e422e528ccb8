use super::*;
use crate::proxy::{NodeFacts, Protocol, ServicePortName, ServicePortPlan};

fn ep(a: &str, port: u16, local: bool) -> Endpoint {
    Endpoint {
        addr: a.parse().unwrap(),
        port,
        local,
    }
}

fn port(svc: &str, vip: &str, proto: Protocol, p: u16, eps: Vec<Endpoint>) -> ServicePortPlan {
    ServicePortPlan {
        name: ServicePortName {
            namespace: "default".into(),
            service: svc.into(),
            port: String::new(),
            protocol: proto,
        },
        cluster_ips: vec![vip.parse().unwrap()],
        port: p,
        node_port: None,
        external_ips: vec![],
        affinity_timeout: None,
        external_local: false,
        internal_local: false,
        endpoints: eps,
    }
}

fn state(ports: Vec<ServicePortPlan>) -> ProxyState {
    let facts = NodeFacts {
        node_name: "n1".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
    };
    ProxyState {
        ports: ports.into_iter().map(|p| (p.name.clone(), p)).collect(),
        cluster_cidrs: facts.cluster_cidrs,
    }
}

/// Applies a diff to a table model, as the kernel would.
fn apply_model(old: &NftTable, d: &NftDiff) -> NftTable {
    let mut t = old.clone();
    for (name, set) in &d.add_sets {
        t.sets.insert(name.clone(), set.clone());
    }
    for (name, chain) in d.add_chains.iter().chain(&d.rewrite_chains) {
        t.chains.insert(name.clone(), chain.clone());
    }
    for (set, keys) in &d.del_elements {
        for k in keys {
            assert!(
                t.sets.get_mut(set).unwrap().elements.remove(k).is_some(),
                "{set}: {k}"
            );
        }
    }
    for (set, elems) in &d.add_elements {
        for e in elems {
            let (k, v) = match e.split_once(" : ") {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (e.clone(), None),
            };
            assert!(
                t.sets.get_mut(set).unwrap().elements.insert(k, v).is_none(),
                "{set}: {e}"
            );
        }
    }
    for c in &d.del_chains {
        t.chains.remove(c);
    }
    for (s, _) in &d.del_sets {
        t.sets.remove(s);
    }
    t
}

const GOLDEN: &str = r#"table ip podnet-proxy {
	set affinity-60 {
		type ipv4_addr . inet_proto . inet_service
		elements = { 10.96.0.5 . tcp . 80 }
	}
	set affinity-live {
		type ipv4_addr . inet_proto . inet_service . ipv4_addr . inet_service
		elements = { 10.96.0.5 . tcp . 80 . 10.244.1.2 . 8080,
			     10.96.0.5 . tcp . 80 . 10.244.2.2 . 8080 }
	}
	set affinity-on {
		type ipv4_addr . inet_proto . inet_service
		elements = { 10.96.0.5 . tcp . 80 }
	}
	map affinity-sctp {
		typeof ip saddr . ip daddr . meta l4proto . th dport : ip daddr . sctp dport
		size 65535
		flags dynamic,timeout
	}
	map affinity-tcp {
		typeof ip saddr . ip daddr . meta l4proto . th dport : ip daddr . tcp dport
		size 65535
		flags dynamic,timeout
	}
	map affinity-udp {
		typeof ip saddr . ip daddr . meta l4proto . th dport : ip daddr . udp dport
		size 65535
		flags dynamic,timeout
	}
	set hairpin {
		type ipv4_addr . ipv4_addr
		elements = { 10.244.1.2 . 10.244.1.2 }
	}
	map ips-2-sctp {
		typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . sctp dport
	}
	map ips-2-tcp {
		typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . tcp dport
		elements = { 10.96.0.5 . tcp . 80 . 0 : 10.244.1.2 . 8080,
			     10.96.0.5 . tcp . 80 . 1 : 10.244.2.2 . 8080 }
	}
	map ips-2-udp {
		typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . udp dport
	}
	set no-endpoint-ips {
		type ipv4_addr . inet_proto . inet_service
		elements = { 10.96.0.10 . udp . 53 }
	}
	set no-endpoint-nodeports {
		type inet_proto . inet_service
	}
	map nodeports-1-sctp {
		typeof meta l4proto . th dport . numgen random mod 1 : ip daddr . sctp dport
	}
	map nodeports-1-tcp {
		typeof meta l4proto . th dport . numgen random mod 1 : ip daddr . tcp dport
		elements = { tcp . 30080 . 0 : 10.244.1.2 . 8080 }
	}
	map nodeports-1-udp {
		typeof meta l4proto . th dport . numgen random mod 1 : ip daddr . udp dport
	}
	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 10.96.0.5 . tcp . 80 : goto ips-2 }
	}
	map service-nodeports {
		type inet_proto . inet_service : verdict
		elements = { tcp . 30080 : goto nodeports-1-local }
	}
	chain affinity-output {
		type filter hook output priority -99; policy accept;
		ct state new ct status dnat jump affinity-record
	}
	chain affinity-prerouting {
		type filter hook prerouting priority -99; policy accept;
		ct state new ct status dnat jump affinity-record
	}
	chain affinity-record {
		meta l4proto tcp ct original ip daddr . meta l4proto . ct original proto-dst @affinity-on ct original ip daddr . meta l4proto . ct original proto-dst . ip daddr . tcp dport != @affinity-live jump affinity-stale
		meta l4proto udp ct original ip daddr . meta l4proto . ct original proto-dst @affinity-on ct original ip daddr . meta l4proto . ct original proto-dst . ip daddr . udp dport != @affinity-live jump affinity-stale
		meta l4proto sctp ct original ip daddr . meta l4proto . ct original proto-dst @affinity-on ct original ip daddr . meta l4proto . ct original proto-dst . ip daddr . sctp dport != @affinity-live jump affinity-stale
		meta l4proto tcp ct original ip daddr . meta l4proto . ct original proto-dst @affinity-60 update @affinity-tcp { ip saddr . ct original ip daddr . meta l4proto . ct original proto-dst timeout 60s : ip daddr . tcp dport }
		meta l4proto udp ct original ip daddr . meta l4proto . ct original proto-dst @affinity-60 update @affinity-udp { ip saddr . ct original ip daddr . meta l4proto . ct original proto-dst timeout 60s : ip daddr . udp dport }
		meta l4proto sctp ct original ip daddr . meta l4proto . ct original proto-dst @affinity-60 update @affinity-sctp { ip saddr . ct original ip daddr . meta l4proto . ct original proto-dst timeout 60s : ip daddr . sctp dport }
	}
	chain affinity-stale {
		meta l4proto tcp delete @affinity-tcp { ip saddr . ct original ip daddr . meta l4proto . ct original proto-dst : ip daddr . tcp dport }
		meta l4proto udp delete @affinity-udp { ip saddr . ct original ip daddr . meta l4proto . ct original proto-dst : ip daddr . udp dport }
		meta l4proto sctp delete @affinity-sctp { ip saddr . ct original ip daddr . meta l4proto . ct original proto-dst : ip daddr . sctp dport }
		drop
	}
	chain endpoints-check {
		ip daddr . meta l4proto . th dport @no-endpoint-ips jump reject-service
		fib daddr type local meta l4proto . th dport @no-endpoint-nodeports jump reject-service
	}
	chain filter-forward {
		type filter hook forward priority filter - 1; policy accept;
		ct state new jump endpoints-check
	}
	chain filter-input {
		type filter hook input priority filter - 1; policy accept;
		ct state new jump endpoints-check
	}
	chain filter-output {
		type filter hook output priority filter - 1; policy accept;
		ct state new jump endpoints-check
	}
	chain ips-2 {
		ip saddr != { 10.244.0.0/16 } meta mark set meta mark | 0x4000
		meta l4proto tcp ip daddr . meta l4proto . th dport @affinity-on dnat to ip saddr . ip daddr . meta l4proto . th dport map @affinity-tcp
		meta l4proto tcp dnat to ip daddr . meta l4proto . th dport . numgen random mod 2 map @ips-2-tcp
		meta l4proto udp ip daddr . meta l4proto . th dport @affinity-on dnat to ip saddr . ip daddr . meta l4proto . th dport map @affinity-udp
		meta l4proto udp dnat to ip daddr . meta l4proto . th dport . numgen random mod 2 map @ips-2-udp
		meta l4proto sctp ip daddr . meta l4proto . th dport @affinity-on dnat to ip saddr . ip daddr . meta l4proto . th dport map @affinity-sctp
		meta l4proto sctp dnat to ip daddr . meta l4proto . th dport . numgen random mod 2 map @ips-2-sctp
	}
	chain nat-output {
		type nat hook output priority -100; policy accept;
		jump services
	}
	chain nat-postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat ip saddr . ip daddr @hairpin meta mark set meta mark | 0x4000
		meta mark & 0x4000 == 0x4000 meta mark set meta mark & 0xffffbfff masquerade fully-random
	}
	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump services
	}
	chain nodeports-1-local {
		meta l4proto tcp dnat to meta l4proto . th dport . numgen random mod 1 map @nodeports-1-tcp
		meta l4proto udp dnat to meta l4proto . th dport . numgen random mod 1 map @nodeports-1-udp
		meta l4proto sctp dnat to meta l4proto . th dport . numgen random mod 1 map @nodeports-1-sctp
	}
	chain reject-service {
		meta l4proto tcp reject with tcp reset
		reject
	}
	chain services {
		ip daddr . meta l4proto . th dport vmap @service-ips
		fib daddr type local meta l4proto . th dport vmap @service-nodeports
	}
}
"#;

#[test]
fn golden_ruleset() {
    let mut web = port(
        "web",
        "10.96.0.5",
        Protocol::Tcp,
        80,
        vec![ep("10.244.1.2", 8080, true), ep("10.244.2.2", 8080, false)],
    );
    web.node_port = Some(30080);
    web.external_local = true;
    web.affinity_timeout = Some(60);
    let dns = port("dns", "10.96.0.10", Protocol::Udp, 53, vec![]);
    let t = ruleset(&state(vec![web, dns]), Family::V4);
    let text = t.render();
    if text != GOLDEN {
        panic!("golden mismatch; got:\n{text}");
    }
    assert!(t.full_script().starts_with(
        "table ip podnet-proxy {}\ndelete table ip podnet-proxy\ntable ip podnet-proxy {\n"
    ));
}

fn many(services: usize, eps: usize) -> ProxyState {
    state(
        (0..services)
            .map(|i| {
                let vip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
                port(
                    &format!("s{i}"),
                    &vip,
                    Protocol::Tcp,
                    80,
                    (0..eps)
                        .map(|j| ep(&format!("10.244.{}.{}", j, i % 250 + 1), 8080, false))
                        .collect(),
                )
            })
            .collect(),
    )
}

#[test]
fn rule_count_does_not_grow_with_services() {
    let small = ruleset(&many(10, 10), Family::V4);
    let large = ruleset(&many(2000, 10), Family::V4);
    assert_eq!(small.rule_count(), large.rule_count());
    assert_eq!(small.chains.len(), large.chains.len());
    assert_eq!(large.sets["service-ips"].elements.len(), 2000);
    assert_eq!(large.sets["ips-10-tcp"].elements.len(), 20_000);
}

#[test]
fn diff_is_element_adds_and_deletes_and_converges() {
    let old_state = many(5, 3);
    let mut new_state = old_state.clone();
    // one service gains an endpoint (3 -> 4), another loses all of them
    let mut it = new_state.ports.values_mut();
    it.next()
        .unwrap()
        .endpoints
        .push(ep("10.244.9.9", 8080, false));
    it.next().unwrap().endpoints.clear();
    let old = ruleset(&old_state, Family::V4);
    let new = ruleset(&new_state, Family::V4);
    let d = diff(&old, &new);
    assert!(!d.needs_full);
    assert_eq!(apply_model(&old, &d), new);
    let script = d.script();
    assert!(
        script.contains("add map ip podnet-proxy ips-4-tcp { typeof ip daddr"),
        "{script}"
    );
    assert!(
        script.contains("add chain ip podnet-proxy ips-4\n"),
        "{script}"
    );
    assert!(
        script.contains("add element ip podnet-proxy no-endpoint-ips { 10.96.0.2 . tcp . 80 }"),
        "{script}"
    );
    // the changed vmap element is deleted before it is re-added
    let del = script
        .find("delete element ip podnet-proxy service-ips")
        .unwrap();
    let add = script
        .find("add element ip podnet-proxy service-ips")
        .unwrap();
    assert!(del < add, "{script}");
    assert!(diff(&new, &new).is_empty());

    // and back: the ips-4 chain and map go away again
    let back = diff(&new, &old);
    assert_eq!(apply_model(&new, &back), old);
    let script = back.script();
    assert!(
        script.contains("delete chain ip podnet-proxy ips-4\n"),
        "{script}"
    );
    assert!(
        script.contains("delete map ip podnet-proxy ips-4-udp\n"),
        "{script}"
    );
    assert!(script.find("delete chain").unwrap() > script.find("delete element").unwrap());
}

#[test]
fn one_endpoint_change_is_a_few_elements_at_any_size() {
    let old_state = many(2000, 10);
    let mut new_state = old_state.clone();
    let last = new_state.ports.values_mut().last().unwrap();
    last.endpoints[3].addr = "10.244.200.200".parse().unwrap();
    let d = diff(
        &ruleset(&old_state, Family::V4),
        &ruleset(&new_state, Family::V4),
    );
    assert_eq!(d.element_changes(), 2, "{}", d.script());
}

#[test]
fn dual_stack_renders_an_ip6_table() {
    let mut p = port(
        "web",
        "10.96.0.5",
        Protocol::Sctp,
        80,
        vec![
            ep("10.244.1.2", 8080, false),
            ep("fd00:10:244:1::2", 8080, true),
        ],
    );
    p.cluster_ips.push("fd00:10:96::5".parse().unwrap());
    let mut st = state(vec![p]);
    st.cluster_cidrs.push("fd00:10:244::/56".parse().unwrap());
    assert_eq!(st.families(), vec![Family::V4, Family::V6]);
    let t6 = ruleset(&st, Family::V6);
    let text = t6.render();
    assert!(text.starts_with("table ip6 podnet-proxy {"));
    assert!(
        text.contains("fd00:10:96::5 . sctp . 80 . 0 : fd00:10:244:1::2 . 8080"),
        "{text}"
    );
    assert!(text.contains("ip6 saddr != { fd00:10:244::/56 }"), "{text}");
    assert!(
        text.contains("fd00:10:244:1::2 . fd00:10:244:1::2"),
        "{text}"
    );
    let t4 = ruleset(&st, Family::V4);
    assert!(
        t4.render()
            .contains("10.96.0.5 . sctp . 80 . 0 : 10.244.1.2 . 8080")
    );
}

#[test]
fn internal_traffic_policy_local_with_no_local_endpoint_rejects() {
    let mut p = port(
        "web",
        "10.96.0.5",
        Protocol::Tcp,
        80,
        vec![ep("10.244.2.2", 80, false)],
    );
    p.internal_local = true;
    let t = ruleset(&state(vec![p]), Family::V4);
    assert!(
        t.sets["no-endpoint-ips"]
            .elements
            .contains_key("10.96.0.5 . tcp . 80")
    );
    assert!(t.sets["service-ips"].elements.is_empty());
}

#[test]
fn affinity_listing_is_parsed() {
    let listing = "table ip podnet-proxy {\n\tmap affinity {\n\t\ttypeof ip saddr . ip daddr . meta l4proto . th dport : ip daddr . th dport\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\telements = { 10.244.3.2 . 10.96.0.5 . tcp . 80 timeout 1m expires 59s : 10.244.1.2 . 8080,\n\t\t\t     10.244.3.3 . 10.96.0.5 . tcp . 80 timeout 1m expires 20s : 10.244.2.2 . 8080 }\n\t}\n}\n";
    let got = parse_affinity_elements(listing);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, "10.244.3.2 . 10.96.0.5 . tcp . 80");
    assert_eq!(got[1].1.to_string(), "10.244.2.2");
    assert_eq!(got[1].2, 8080);
}

#[test]
fn diff_of_states_matches_the_diff_of_whole_tables() {
    let base = many(50, 3);
    let mut transitions: Vec<ProxyState> = Vec::new();
    // the same shape: one endpoint's address swapped
    let mut s = base.clone();
    s.ports.values_mut().nth(7).unwrap().endpoints[1].addr = "10.244.7.7".parse().unwrap();
    transitions.push(s);
    // a hairpin endpoint appears (shape changes only in the hairpin set)
    let mut s = base.clone();
    s.ports.values_mut().nth(7).unwrap().endpoints[1].local = true;
    transitions.push(s);
    // an endpoint added to one service (3 -> 4), one removed from another
    let mut s = base.clone();
    let mut it = s.ports.values_mut();
    it.next()
        .unwrap()
        .endpoints
        .push(ep("10.244.9.9", 8080, true));
    it.next().unwrap().endpoints.pop();
    transitions.push(s.clone());
    // a service goes, another gets affinity and a NodePort, one goes empty
    s.ports.pop_first();
    let mut it = s.ports.values_mut();
    let p = it.next().unwrap();
    p.affinity_timeout = Some(30);
    p.node_port = Some(30001);
    p.external_local = true;
    it.next().unwrap().endpoints.clear();
    transitions.push(s.clone());
    // back to the start
    transitions.push(base.clone());

    let mut applied = ruleset(&base, Family::V4);
    let mut old = base.clone();
    for (i, new) in transitions.iter().enumerate() {
        let d = diff_states(&old, new, Family::V4, &applied);
        assert!(!d.needs_full, "step {i}");
        let whole = diff(&applied, &ruleset(new, Family::V4));
        assert_eq!(d.element_changes(), whole.element_changes(), "step {i}");
        applied.apply_diff(&d);
        assert_eq!(applied, ruleset(new, Family::V4), "step {i}");
        old = new.clone();
    }
}

#[test]
fn diff_of_changed_ports_converges_to_the_whole_ruleset() {
    let base = many(50, 3);
    let mut steps: Vec<ProxyState> = Vec::new();
    // an endpoint swapped (same shape)
    let mut s = base.clone();
    s.ports.values_mut().nth(7).unwrap().endpoints[1].addr = "10.244.7.7".parse().unwrap();
    steps.push(s.clone());
    // hairpin appears; endpoint counts change (3 -> 4 is a new bucket)
    s.ports.values_mut().nth(7).unwrap().endpoints[1].local = true;
    let mut it = s.ports.values_mut();
    it.next()
        .unwrap()
        .endpoints
        .push(ep("10.244.9.9", 8080, true));
    it.next().unwrap().endpoints.pop();
    steps.push(s.clone());
    // a service goes, another gets affinity and a Local NodePort, one
    // goes empty, a new one comes with an external IP
    s.ports.pop_first();
    let mut it = s.ports.values_mut();
    let p = it.next().unwrap();
    p.affinity_timeout = Some(30);
    p.node_port = Some(30001);
    p.external_local = true;
    it.next().unwrap().endpoints.clear();
    let mut extra = port(
        "extra",
        "10.96.99.1",
        Protocol::Udp,
        53,
        vec![ep("10.244.1.53", 5353, true)],
    );
    extra.external_ips = vec!["192.0.2.1".parse().unwrap()];
    extra.affinity_timeout = Some(60);
    s.ports.insert(extra.name.clone(), extra);
    steps.push(s.clone());
    // the 4-endpoint service back to 3 (bucket 4 unused), affinity off
    let mut s2 = s.clone();
    s2.ports.values_mut().next().unwrap().affinity_timeout = None;
    for p in s2.ports.values_mut() {
        p.endpoints.truncate(3);
    }
    steps.push(s2);
    steps.push(base.clone());

    let mut applied = ruleset(&base, Family::V4);
    let mut shape = Shape::of(&base, Family::V4);
    let mut old = base.clone();
    for (i, new) in steps.iter().enumerate() {
        let names: BTreeSet<&ServicePortName> = old.ports.keys().chain(new.ports.keys()).collect();
        let changes: Vec<_> = names
            .into_iter()
            .map(|n| (old.ports.get(n), new.ports.get(n)))
            .filter(|(a, b)| a != b)
            .collect();
        let d = diff_changes(
            &changes,
            &new.cluster_cidrs,
            Family::V4,
            &applied,
            &mut shape,
        );
        assert!(!d.needs_full, "step {i}");
        applied = apply_model(&applied, &d);
        assert_eq!(
            applied,
            ruleset(new, Family::V4),
            "step {i}:\n{}",
            d.script()
        );
        assert_eq!(shape, Shape::of(new, Family::V4), "step {i}");
        old = new.clone();
    }
}
