//! Set elements written over netlink land in the kernel exactly as nft
//! writes them: for every kind of set podnet's policy table declares, one
//! copy is filled by `ElementWriter` and a twin by `nft -f`, and `nft list
//! set` must print both the same, after adds and after deletes. Also: a
//! refused batch changes nothing and names the set and element at fault.
//!
//! Root: each test works in a network namespace of its own.

use std::fs::File;
use std::os::fd::AsFd;
use std::time::Instant;

use podnet_kernel::netns::{NetNs, sweep_stale};
use podnet_kernel::nft::{self, Namespace};
use podnet_kernel::nft_elements::{
    Element, ElementBatch, ElementError, ElementWriter, Family, Op, SetLayout, Value,
};

const PREFIX: &str = "pnnftel";
const TABLE: &str = "pn-elements";

/// The set kinds of podnet's policy table, with elements to add first, then
/// to delete, then to add (re-cut intervals, neighbours, the top of the
/// address space, single ports in concatenated intervals).
struct Case {
    decl: &'static str,
    first: &'static [&'static str],
    delete: &'static [&'static str],
    then: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        decl: "type ipv4_addr; flags interval;",
        first: &["10.244.1.0/24", "10.244.3.0/24", "10.244.9.7"],
        delete: &["10.244.3.0/24"],
        then: &["10.244.2.0/24", "10.245.0.0/16"],
    },
    Case {
        decl: "type ipv4_addr;",
        first: &["10.244.1.2", "10.244.1.3", "10.244.1.4"],
        delete: &["10.244.1.3"],
        then: &["10.244.1.5"],
    },
    Case {
        decl: "type ipv4_addr : mark; flags interval;",
        first: &[
            "0.0.0.0-9.255.255.255 : 0x00000001",
            "10.0.0.0-10.0.0.255 : 0x00000002",
            "10.0.1.0-255.255.255.255 : 0x00000001",
        ],
        delete: &[
            "10.0.0.0-10.0.0.255 : 0x00000002",
            "10.0.1.0-255.255.255.255 : 0x00000001",
        ],
        then: &[
            "10.0.0.0-10.0.0.127 : 0x00000003",
            "10.0.0.128-10.0.0.128 : 0x00000004",
            "10.0.0.129-255.255.255.255 : 0x00000001",
        ],
    },
    Case {
        decl: "type ipv4_addr : mark;",
        first: &["10.244.1.2 : 0x00000003", "10.244.1.3 : 0x8000abcd"],
        delete: &["10.244.1.2 : 0x00000003"],
        then: &["10.244.1.2 : 0x00000004"],
    },
    Case {
        decl: "type ipv4_addr . mark;",
        first: &["10.244.1.2 . 0x00000003", "10.244.1.2 . 0x00000004"],
        delete: &["10.244.1.2 . 0x00000004"],
        then: &["10.244.1.9 . 0xfffffffe"],
    },
    Case {
        decl: "type ipv4_addr . mark . inet_proto . inet_service;",
        first: &[
            "10.244.1.2 . 0x00000003 . tcp . 80",
            "10.244.1.2 . 0x00000003 . udp . 53",
            "10.244.1.2 . 0x00000003 . sctp . 9999",
        ],
        delete: &["10.244.1.2 . 0x00000003 . udp . 53"],
        then: &["10.244.1.2 . 0x00000003 . tcp . 443"],
    },
    Case {
        decl: "type ipv4_addr . mark . inet_proto . inet_service; flags interval;",
        first: &[
            "10.244.1.2 . 0x00000003 . tcp . 80-80",
            "10.244.1.2 . 0x00000003 . udp . 1000-2000",
            "10.244.1.3 . 0x01020304 . tcp . 0-65535",
        ],
        delete: &["10.244.1.2 . 0x00000003 . udp . 1000-2000"],
        then: &[
            "10.244.1.2 . 0x00000003 . udp . 1000-1500",
            "10.244.1.2 . 0x00000003 . udp . 1501-2000",
        ],
    },
    Case {
        decl: "type ipv4_addr . inet_proto . inet_service; flags interval;",
        first: &["10.244.1.2 . tcp . 80-81", "10.244.1.2 . udp . 5000-5100"],
        delete: &["10.244.1.2 . tcp . 80-81"],
        then: &["10.244.1.2 . tcp . 8080-8080"],
    },
];

fn require_nft() {
    let ok = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "`nft` is required (install nftables)");
}

fn setup(decls: &[(String, &str)]) -> (NetNs, File) {
    require_nft();
    sweep_stale(PREFIX);
    let ns = NetNs::unique(PREFIX).expect("namespace");
    let fd = File::open(ns.path()).expect("namespace file");
    let mut script = format!("table inet {TABLE} {{\n");
    for (name, decl) in decls {
        let kind = if decl.contains(':') { "map" } else { "set" };
        script.push_str(&format!("\t{kind} {name} {{ {decl} }}\n"));
    }
    script.push_str("}\n");
    nft::apply(Namespace::Fd(fd.as_fd()), &script).expect("load table");
    (ns, fd)
}

fn layout(name: &str, decl: &str) -> SetLayout {
    SetLayout::from_decl(Family::Inet, TABLE, name, decl).expect("layout")
}

fn parse(l: &SetLayout, texts: &[&str]) -> Vec<Element> {
    texts
        .iter()
        .map(|t| l.parse_element(t).expect("element"))
        .collect()
}

fn list(fd: &File, name: &str) -> String {
    nft::run(
        Namespace::Fd(fd.as_fd()),
        &["list", "set", "inet", TABLE, name],
    )
    .or_else(|_| {
        nft::run(
            Namespace::Fd(fd.as_fd()),
            &["list", "map", "inet", TABLE, name],
        )
    })
    .expect("list")
}

fn nft_elements(fd: &File, verb: &str, name: &str, texts: &[&str]) {
    if texts.is_empty() {
        return;
    }
    let script = format!(
        "{verb} element inet {TABLE} {name} {{ {} }}\n",
        texts.join(", ")
    );
    nft::apply(Namespace::Fd(fd.as_fd()), &script).expect(&script);
}

#[test]
fn netlink_elements_equal_nft_elements_for_every_policy_set_kind() {
    let decls: Vec<(String, &str)> = (0..CASES.len())
        .flat_map(|i| {
            [
                (format!("nl_{i}"), CASES[i].decl),
                (format!("cli_{i}"), CASES[i].decl),
            ]
        })
        .collect();
    let (_ns, fd) = setup(&decls);
    let layouts: Vec<SetLayout> = CASES
        .iter()
        .enumerate()
        .map(|(i, c)| layout(&format!("nl_{i}"), c.decl))
        .collect();
    let mut writer = ElementWriter::open(Namespace::Fd(fd.as_fd())).expect("socket");

    // Step 1: adds into every set in one batch.
    let mut batch = ElementBatch::new();
    for (c, l) in CASES.iter().zip(&layouts) {
        batch.add(l, parse(l, c.first));
    }
    writer.apply(&batch).expect("first adds");
    for (i, c) in CASES.iter().enumerate() {
        nft_elements(&fd, "add", &format!("cli_{i}"), c.first);
    }
    compare(&fd, "after adds");

    // Step 2: deletes then adds, all sets in one batch.
    let mut batch = ElementBatch::new();
    for (c, l) in CASES.iter().zip(&layouts) {
        batch.delete(l, parse(l, c.delete));
    }
    for (c, l) in CASES.iter().zip(&layouts) {
        batch.add(l, parse(l, c.then));
    }
    writer.apply(&batch).expect("deletes and adds");
    for (i, c) in CASES.iter().enumerate() {
        let name = format!("cli_{i}");
        let mut script = String::new();
        if !c.delete.is_empty() {
            script.push_str(&format!(
                "delete element inet {TABLE} {name} {{ {} }}\n",
                c.delete.join(", ")
            ));
        }
        script.push_str(&format!(
            "add element inet {TABLE} {name} {{ {} }}\n",
            c.then.join(", ")
        ));
        nft::apply(Namespace::Fd(fd.as_fd()), &script).expect(&script);
    }
    compare(&fd, "after deletes and adds");

    // Step 3: nft can delete what netlink added (its cache reads our
    // elements back as its own), and netlink what nft added.
    for (i, c) in CASES.iter().enumerate() {
        nft_elements(&fd, "delete", &format!("nl_{i}"), c.then);
    }
    let mut batch = ElementBatch::new();
    let cli: Vec<SetLayout> = CASES
        .iter()
        .enumerate()
        .map(|(i, c)| layout(&format!("cli_{i}"), c.decl))
        .collect();
    for (c, l) in CASES.iter().zip(&cli) {
        batch.delete(l, parse(l, c.then));
    }
    writer
        .apply(&batch)
        .expect("netlink deletes nft's elements");
    compare(&fd, "after crossed deletes");
}

fn compare(fd: &File, when: &str) {
    for (i, case) in CASES.iter().enumerate() {
        let nl = list(fd, &format!("nl_{i}")).replace(&format!("nl_{i}"), "X");
        let cli = list(fd, &format!("cli_{i}")).replace(&format!("cli_{i}"), "X");
        assert_eq!(nl, cli, "{when}: set of `{}`", case.decl);
    }
}

#[test]
fn a_refused_batch_changes_nothing_and_names_the_element() {
    let decl = "type ipv4_addr . inet_proto . inet_service;";
    let (_ns, fd) = setup(&[("ports".into(), decl)]);
    let l = layout("ports", decl);
    let mut writer = ElementWriter::open(Namespace::Fd(fd.as_fd())).expect("socket");
    let mut batch = ElementBatch::new();
    batch.add(&l, parse(&l, &["10.244.1.2 . tcp . 80"]));
    writer.apply(&batch).expect("add");
    let before = list(&fd, "ports");

    let mut batch = ElementBatch::new();
    batch.add(&l, parse(&l, &["10.244.1.2 . tcp . 443"]));
    batch.delete(
        &l,
        parse(&l, &["10.244.1.2 . tcp . 80", "10.244.1.2 . udp . 53"]),
    );
    let err = writer.apply(&batch).expect_err("udp/53 is not in the set");
    match &err {
        ElementError::Rejected {
            op, set, element, ..
        } => {
            assert_eq!(*op, Op::Delete);
            assert_eq!(set, "ports");
            assert_eq!(element.as_deref(), Some("10.244.1.2 . udp . 53"), "{err}");
        }
        other => panic!("expected a rejection, got {other}"),
    }
    assert_eq!(err.errno(), Some(ENOENT));
    assert_eq!(list(&fd, "ports"), before, "nothing of the batch applied");

    // The socket stays usable after a refusal.
    let mut batch = ElementBatch::new();
    batch.add(&l, parse(&l, &["10.244.1.2 . tcp . 443"]));
    writer.apply(&batch).expect("add after a refusal");
    assert!(list(&fd, "ports").contains("10.244.1.2 . tcp . 443"));

    // A set that does not exist is named too.
    let ghost = layout("ghost", decl);
    let mut batch = ElementBatch::new();
    batch.add(&ghost, parse(&ghost, &["10.244.1.2 . tcp . 80"]));
    let err = writer.apply(&batch).expect_err("no such set");
    assert!(err.to_string().contains("ghost"), "{err}");
}

/// No such file or directory: what the kernel answers for an absent element.
const ENOENT: i32 = 2;

/// One delete + add on a set of 6,000 elements exchanges a few hundred
/// bytes with the kernel, in one datagram each way and its answers, where
/// `nft -f` (1.0.6) first reads the whole set (6,000 elements: hundreds of
/// KiB). The time printed is a figure, not a check.
#[test]
fn a_change_in_a_big_set_does_not_read_the_set() {
    let decl = "type ipv4_addr . inet_proto . inet_service;";
    let (_ns, fd) = setup(&[("big".into(), decl)]);
    let l = layout("big", decl);
    let el = |i: u32, port: u16| {
        Element::exact(
            vec![
                Value::Ipv4(std::net::Ipv4Addr::from(0x0af4_0000 + i)),
                Value::Proto(6),
                Value::Port(port),
            ],
            None,
        )
    };
    let mut writer = ElementWriter::open(Namespace::Fd(fd.as_fd())).expect("socket");
    let mut batch = ElementBatch::new();
    batch.add(&l, (0..6000).map(|i| el(i, 80)).collect());
    writer.apply(&batch).expect("6,000 elements in one batch");
    let listed = list(&fd, "big");
    assert_eq!(listed.matches(". tcp . 80").count(), 6000);

    // Reading the set back would bring at least its elements' keys (4 +
    // 1 + 2 bytes each, before any netlink framing) to this socket.
    let set_bytes = 6000 * 7;
    let mut times = Vec::new();
    for k in 0..10u16 {
        let mut batch = ElementBatch::new();
        batch.delete(&l, vec![el(3000, 80 + k)]);
        batch.add(&l, vec![el(3000, 81 + k)]);
        let before = writer.traffic();
        let t = Instant::now();
        writer.apply(&batch).expect("delete + add");
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let after = writer.traffic();
        let (sent, received) = (
            after.sent_bytes - before.sent_bytes,
            after.received_bytes - before.received_bytes,
        );
        assert_eq!(after.sent_datagrams - before.sent_datagrams, 1);
        assert!(
            sent < 1024 && received < 1024 && received < set_bytes / 10,
            "delete + add sent {sent} B and received {received} B in {} datagrams: \
             the set ({set_bytes} B of keys) was read or written whole",
            after.received_datagrams - before.received_datagrams
        );
    }
    println!("traffic of the writer: {:?}", writer.traffic());
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "delete + add on a 6,000-element set over netlink: median {:.3} ms",
        times[times.len() / 2]
    );
    assert!(list(&fd, "big").contains("10.244.11.184 . tcp . 90"));
}
