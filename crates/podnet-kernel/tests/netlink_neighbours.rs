//! A VXLAN device's neighbour and FDB entries read over netlink
//! (`Netlink::neighbours`, what the agent's route drift check reads) are
//! the ones `ip neigh` and `bridge fdb` list, on that device only: the
//! oracle is iproute2's JSON, parsed here, sharing no code with the reader.
//!
//! Root: the test works in a network namespace of its own.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;

use podnet_kernel::netlink::Netlink;
use podnet_kernel::netns::{NetNs, sweep_stale};

const PREFIX: &str = "pnneigh";

fn sh(ns: &NetNs, tool: &str, args: &[&str]) -> String {
    let out = ns.command(tool).args(args).output().expect(tool);
    assert!(
        out.status.success(),
        "{tool} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mac_text(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `(ip, mac)` pairs of iproute2's JSON listing, with `ip_key`/`mac_key`.
fn listed(json: &str, ip_key: &str, mac_key: &str) -> BTreeSet<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(json).expect("iproute2 JSON");
    v.as_array()
        .expect("a JSON array")
        .iter()
        .filter(|e| e[ip_key].is_string())
        .map(|e| {
            (
                e[ip_key].as_str().unwrap().to_string(),
                e[mac_key].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn vxlan_neighbours_and_fdb_over_netlink_equal_iproute2s_listing() {
    sweep_stale(PREFIX);
    let ns = NetNs::unique(PREFIX).expect("namespace");
    sh(
        &ns,
        "ip",
        &["link", "add", "up0", "type", "veth", "peer", "name", "up1"],
    );
    sh(&ns, "ip", &["addr", "add", "192.0.2.1/24", "dev", "up0"]);
    sh(&ns, "ip", &["link", "set", "up0", "up"]);
    for dev in ["vx0", "vx1"] {
        let id = if dev == "vx0" { "1" } else { "2" };
        sh(
            &ns,
            "ip",
            &[
                "link",
                "add",
                dev,
                "type",
                "vxlan",
                "id",
                id,
                "dev",
                "up0",
                "dstport",
                "0",
                "nolearning",
            ],
        );
        sh(&ns, "ip", &["link", "set", dev, "up"]);
    }
    // 300 remotes on vx0, so the dump spans several netlink reads; one on
    // vx1 that must not be listed for vx0.
    for i in 0..300u32 {
        let remote = Ipv4Addr::from(0xc633_6400 + i); // 198.51.100.0 + i
        let via = Ipv4Addr::from(0x0af4_0000 + (i << 8)); // 10.244.i.0
        let mac = format!("0e:70:{:02x}:{:02x}:00:01", i >> 8, i & 0xff);
        sh(
            &ns,
            "bridge",
            &[
                "fdb",
                "append",
                &mac,
                "dev",
                "vx0",
                "dst",
                &remote.to_string(),
                "self",
                "permanent",
            ],
        );
        sh(
            &ns,
            "ip",
            &[
                "neigh",
                "replace",
                &via.to_string(),
                "lladdr",
                &mac,
                "dev",
                "vx0",
                "nud",
                "permanent",
            ],
        );
    }
    sh(
        &ns,
        "bridge",
        &[
            "fdb",
            "append",
            "0e:70:ff:ff:ff:ff",
            "dev",
            "vx1",
            "dst",
            "203.0.113.9",
            "self",
            "permanent",
        ],
    );
    sh(
        &ns,
        "ip",
        &[
            "neigh",
            "replace",
            "10.99.0.0",
            "lladdr",
            "0e:70:ff:ff:ff:ff",
            "dev",
            "vx1",
            "nud",
            "permanent",
        ],
    );

    let fd = File::open(ns.path()).expect("namespace file");
    let mut nl = Netlink::open_in(fd.as_fd()).expect("netlink");
    let index = nl.link_by_name("vx0").expect("link").expect("vx0").index;
    let text = |ip: Option<IpAddr>, mac: &[u8]| {
        (ip.map(|i| i.to_string()).unwrap_or_default(), mac_text(mac))
    };

    let neigh: BTreeSet<(String, String)> = nl
        .neighbours(index, false)
        .expect("neighbour dump")
        .iter()
        .map(|n| text(n.ip, &n.mac))
        .collect();
    let want = listed(
        &sh(&ns, "ip", &["-j", "neigh", "show", "dev", "vx0"]),
        "dst",
        "lladdr",
    );
    assert_eq!(want.len(), 300, "iproute2 lists the 300 neighbours made");
    assert_eq!(neigh, want);

    // `bridge fdb` also lists the all-zero default entry's kind of rows
    // without a dst; both sides keep only rows with a remote.
    let fdb: BTreeSet<(String, String)> = nl
        .neighbours(index, true)
        .expect("fdb dump")
        .iter()
        .filter(|n| n.ip.is_some())
        .map(|n| text(n.ip, &n.mac))
        .collect();
    let want = listed(
        &sh(&ns, "bridge", &["-j", "fdb", "show", "dev", "vx0"]),
        "dst",
        "mac",
    );
    assert_eq!(want.len(), 300, "bridge lists the 300 FDB entries made");
    assert_eq!(fdb, want);
    assert!(
        !fdb.iter().any(|(ip, _)| ip == "203.0.113.9"),
        "another device's entry was listed"
    );

    // A deleted entry is gone from the next dump.
    sh(&ns, "ip", &["neigh", "del", "10.244.0.0", "dev", "vx0"]);
    let after = nl.neighbours(index, false).expect("neighbour dump");
    assert_eq!(after.len(), 299);
    assert!(
        !after
            .iter()
            .any(|n| n.ip == Some("10.244.0.0".parse().unwrap()))
    );
}
