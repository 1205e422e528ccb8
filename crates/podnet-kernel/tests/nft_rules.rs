//! A table's chains and rule counts read over netlink match what `nft list
//! table` prints, for a table whose rules look up a set of 20,000 elements;
//! the read's size does not grow with the set; a flushed chain reads 0 and
//! a deleted table reads as absent.
//!
//! Root: the test works in a network namespace of its own.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;

use podnet_kernel::netns::{NetNs, sweep_stale};
use podnet_kernel::nft::{self, Namespace};
use podnet_kernel::nft_elements::Family;
use podnet_kernel::nft_rules::chain_rule_counts;

const PREFIX: &str = "pnnftru";

fn elements(n: u32) -> String {
    (0..n)
        .map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn rule_counts_over_netlink_match_nft_and_do_not_read_sets() {
    let ok = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "`nft` is required (install nftables)");
    sweep_stale(PREFIX);
    let ns_owned = NetNs::unique(PREFIX).expect("namespace");
    let fd = File::open(ns_owned.path()).expect("namespace file");
    let ns = Namespace::Fd(fd.as_fd());

    let load = |n: u32| {
        let script = format!(
            "table inet pn-rules {{\n\
             \tset peers {{ type ipv4_addr; elements = {{ {} }} }}\n\
             \tchain input {{ type filter hook input priority 0; policy accept;\n\
             \t\tip saddr @peers counter accept\n\
             \t\tip saddr 192.0.2.1 drop\n\
             \t\tjump side\n\t}}\n\
             \tchain side {{\n\t\tip daddr @peers counter\n\t}}\n\
             \tchain empty {{\n\t}}\n\
             }}\n\
             table ip pn-other {{\n\tchain c {{\n\t\tcounter\n\t\tcounter\n\t}}\n}}\n",
            elements(n)
        );
        nft::apply(ns, &script).expect("load tables");
    };
    // The oracle: nft's own listing, counted from its text (no code shared
    // with the netlink reader).
    let listed = || {
        let text = nft::run(ns, &["list", "table", "inet", "pn-rules"]).expect("list");
        nft::chain_rule_counts(&text)
    };

    load(10);
    let small = chain_rule_counts(ns, Family::Inet, "pn-rules")
        .expect("read")
        .expect("table is there");
    assert_eq!(small.rules, listed());
    assert_eq!(
        small.rules,
        BTreeMap::from([("empty".into(), 0), ("input".into(), 3), ("side".into(), 1)])
    );

    // The same rules over a set of 20,000 elements: the listing through
    // nft carries them all; the netlink read must not grow with them.
    nft::apply(ns, "delete table inet pn-rules\ndelete table ip pn-other\n").expect("delete");
    load(20_000);
    let big = chain_rule_counts(ns, Family::Inet, "pn-rules")
        .expect("read")
        .expect("table is there");
    assert_eq!(big.rules, small.rules);
    let set_bytes = 20_000 * 4;
    assert!(
        big.received_bytes == small.received_bytes && big.received_bytes < set_bytes / 10,
        "the read took {} B with 20,000 elements and {} B with 10: it read the set",
        big.received_bytes,
        small.received_bytes
    );
    println!(
        "netlink read: {} B; `nft list table` text: {} B",
        big.received_bytes,
        nft::run(ns, &["list", "table", "inet", "pn-rules"])
            .unwrap()
            .len()
    );

    // Another family's table of the same namespace is not counted, and is
    // read on its own.
    let other = chain_rule_counts(ns, Family::Ip, "pn-other")
        .expect("read")
        .expect("there");
    assert_eq!(other.rules, BTreeMap::from([("c".into(), 2)]));
    assert_eq!(
        chain_rule_counts(ns, Family::Ip, "pn-rules").expect("read"),
        None,
        "pn-rules is an inet table, not an ip one"
    );

    // A flushed chain reads 0; a deleted table reads as absent.
    nft::apply(ns, "flush chain inet pn-rules input\n").expect("flush");
    let flushed = chain_rule_counts(ns, Family::Inet, "pn-rules")
        .expect("read")
        .expect("there");
    assert_eq!(flushed.rules, listed());
    assert_eq!(flushed.rules["input"], 0);
    nft::apply(ns, "delete table inet pn-rules\n").expect("delete");
    assert_eq!(
        chain_rule_counts(ns, Family::Inet, "pn-rules").expect("read"),
        None
    );
}
