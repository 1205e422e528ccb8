//! Encoding checks. The expected key bytes are those `nft --debug=netlink`
//! (nft 1.0.6) showed for the same elements in sets declared the same way.

use super::*;

fn layout(name: &str, decl: &str) -> SetLayout {
    SetLayout::from_decl(Family::Inet, "podnet-policy", name, decl).unwrap()
}

/// A parsed netlink attribute: type (without the nested flag) and value.
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED;
        out.push((ty, &b[4..len]));
        b = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    out
}

fn find<'a>(a: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    a.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
}

/// The value inside a nested NFTA_DATA_VALUE.
fn value(a: &[(u16, &[u8])], ty: u16) -> Option<Vec<u8>> {
    find(a, ty).map(|v| find(&attrs(v), NFTA_DATA_VALUE).unwrap().to_vec())
}

/// One message of an encoded batch: type, flags, seq, nfgenmsg, and the
/// body after it.
type Message<'a> = (u16, u16, u32, [u8; 4], &'a [u8]);

fn messages(b: &[u8]) -> Vec<Message<'_>> {
    let mut out = Vec::new();
    let mut rest = b;
    while !rest.is_empty() {
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        let m = &rest[..len];
        out.push((
            u16::from_ne_bytes([m[4], m[5]]),
            u16::from_ne_bytes([m[6], m[7]]),
            u32::from_ne_bytes(m[8..12].try_into().unwrap()),
            m[16..20].try_into().unwrap(),
            &m[20..],
        ));
        rest = &rest[len.next_multiple_of(4)..];
    }
    out
}

/// The kernel elements (attribute lists) of every element message.
fn kernel_elems(enc: &Encoded) -> Vec<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    for (_, _, _, _, body) in messages(&enc.bytes) {
        if let Some(list) = find(&attrs(body), NFTA_SET_ELEM_LIST_ELEMENTS) {
            for (ty, e) in attrs(list) {
                assert_eq!(ty, NFTA_LIST_ELEM);
                out.push(attrs(e));
            }
        }
    }
    out
}

fn one(layout: &SetLayout, op: Op, text: &str) -> Vec<u8> {
    let mut b = ElementBatch::new();
    let e = vec![layout.parse_element(text).unwrap()];
    match op {
        Op::Add => b.add(layout, e),
        Op::Delete => b.delete(layout, e),
    }
    b.encode(100).unwrap().bytes
}

fn mark(m: u32) -> [u8; 4] {
    m.to_ne_bytes()
}

#[test]
fn batch_frame_and_message_headers() {
    let l = layout("known", "type ipv4_addr;");
    let bytes = one(&l, Op::Add, "10.244.1.2");
    let msgs = messages(&bytes);
    assert_eq!(msgs.len(), 3);
    // BATCH_BEGIN: AF_UNSPEC, res_id = NFNL_SUBSYS_NFTABLES in network order.
    assert_eq!(msgs[0].0, NFNL_MSG_BATCH_BEGIN);
    assert_eq!(msgs[0].1, NLM_F_REQUEST);
    assert_eq!(msgs[0].2, 100);
    assert_eq!(msgs[0].3, [0, 0, 0, 10]);
    assert_eq!(msgs[2].0, NFNL_MSG_BATCH_END);
    assert_eq!(msgs[2].2, 102);
    // NEWSETELEM in the inet family, acknowledged, created if absent.
    let (ty, flags, seq, nfgen, body) = msgs[1];
    assert_eq!(ty, 0x0a0c);
    assert_eq!(flags, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK);
    assert_eq!(seq, 101);
    assert_eq!(nfgen, [1, 0, 0, 0]);
    let a = attrs(body);
    assert_eq!(
        find(&a, NFTA_SET_ELEM_LIST_TABLE),
        Some(&b"podnet-policy\0"[..])
    );
    assert_eq!(find(&a, NFTA_SET_ELEM_LIST_SET), Some(&b"known\0"[..]));
    // The whole message, byte for byte: header, nfgenmsg, table, set,
    // elements { elem { key { value 10.244.1.2 } } }.
    let m = &bytes[20..20 + 72];
    let mut want = Vec::new();
    want.extend(72u32.to_ne_bytes());
    want.extend(0x0a0cu16.to_ne_bytes());
    want.extend(0x0405u16.to_ne_bytes());
    want.extend(101u32.to_ne_bytes());
    want.extend(0u32.to_ne_bytes());
    want.extend([1, 0, 0, 0]);
    want.extend(18u16.to_ne_bytes());
    want.extend(1u16.to_ne_bytes());
    want.extend(b"podnet-policy\0\0\0");
    want.extend(10u16.to_ne_bytes());
    want.extend(2u16.to_ne_bytes());
    want.extend(b"known\0\0\0");
    want.extend(20u16.to_ne_bytes());
    want.extend(0x8003u16.to_ne_bytes());
    want.extend(16u16.to_ne_bytes());
    want.extend(0x8001u16.to_ne_bytes());
    want.extend(12u16.to_ne_bytes());
    want.extend(0x8001u16.to_ne_bytes());
    want.extend(8u16.to_ne_bytes());
    want.extend(1u16.to_ne_bytes());
    want.extend([10, 244, 1, 2]);
    assert_eq!(m, &want[..]);
}

#[test]
fn delete_is_acked_without_create() {
    let l = layout("known", "type ipv4_addr;");
    let msgs = messages(&one(&l, Op::Delete, "10.244.1.2")).len();
    assert_eq!(msgs, 3);
    let bytes = one(&l, Op::Delete, "10.244.1.2");
    let (ty, flags, ..) = messages(&bytes)[1];
    assert_eq!(ty, 0x0a0e);
    assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK);
}

#[test]
fn hashed_concatenation_pads_fields_and_keeps_marks_in_host_order() {
    // nft: in_peer_port  element 0201f40a 00000003 00000006 00005000
    let l = layout(
        "in_peer_port",
        "type ipv4_addr . mark . inet_proto . inet_service;",
    );
    let mut b = ElementBatch::new();
    b.add(
        &l,
        vec![
            l.parse_element("10.244.1.2 . 0x00000003 . tcp . 80")
                .unwrap(),
        ],
    );
    let enc = b.encode(1).unwrap();
    let els = kernel_elems(&enc);
    assert_eq!(els.len(), 1);
    let mut want = vec![10, 244, 1, 2];
    want.extend(mark(3));
    want.extend([6, 0, 0, 0, 0, 80, 0, 0]);
    assert_eq!(value(&els[0], NFTA_SET_ELEM_KEY).unwrap(), want);
    assert!(find(&els[0], NFTA_SET_ELEM_KEY_END).is_none());
    assert!(find(&els[0], NFTA_SET_ELEM_FLAGS).is_none());
}

#[test]
fn concatenated_interval_has_key_end_and_big_endian_marks() {
    // nft: in_peer_range  element 0201f40a 03000000 00000011 0000e803
    //                           - 0201f40a 03000000 00000011 0000d007
    let l = layout(
        "in_peer_range",
        "type ipv4_addr . mark . inet_proto . inet_service; flags interval;",
    );
    for op in [Op::Add, Op::Delete] {
        let mut b = ElementBatch::new();
        let e = vec![
            l.parse_element("10.244.1.2 . 0x00000003 . udp . 1000-2000")
                .unwrap(),
        ];
        match op {
            Op::Add => b.add(&l, e),
            Op::Delete => b.delete(&l, e),
        }
        let enc = b.encode(1).unwrap();
        let els = kernel_elems(&enc);
        assert_eq!(els.len(), 1, "one pipapo element, no interval end");
        let base = [10, 244, 1, 2, 0, 0, 0, 3, 17, 0, 0, 0];
        let mut key = base.to_vec();
        key.extend([0x03, 0xe8, 0, 0]);
        let mut end = base.to_vec();
        end.extend([0x07, 0xd0, 0, 0]);
        assert_eq!(value(&els[0], NFTA_SET_ELEM_KEY).unwrap(), key);
        // NFTA_SET_ELEM_KEY_END is attribute 10 (PAD and OBJREF come first),
        // as `nft --debug=mnl` shows.
        assert_eq!(value(&els[0], 10).unwrap(), end);
    }
    // A single port is a range of one: the key end equals the key.
    let e = l
        .parse_element("10.244.1.2 . 0x00000003 . tcp . 80-80")
        .unwrap();
    assert_eq!(e.key, e.key_end);
    let mut b = ElementBatch::new();
    b.add(&l, vec![e]);
    let enc = b.encode(1).unwrap();
    let els = kernel_elems(&enc);
    assert_eq!(
        value(&els[0], NFTA_SET_ELEM_KEY),
        value(&els[0], NFTA_SET_ELEM_KEY_END)
    );
}

#[test]
fn interval_map_is_a_start_with_data_and_an_end_one_past() {
    // nft: peer_ranges  element 0000000a : 00000002 0 [end]
    //                   element 0001000a : 1 [end]
    let l = layout("peer_ranges", "type ipv4_addr : mark; flags interval;");
    let bytes = one(&l, Op::Add, "10.0.0.0-10.0.0.255 : 0x00000002");
    let enc = Encoded {
        bytes,
        begin_seq: 0,
        msgs: Vec::new(),
    };
    let els = kernel_elems(&enc);
    assert_eq!(els.len(), 2);
    assert_eq!(value(&els[0], NFTA_SET_ELEM_KEY).unwrap(), [10, 0, 0, 0]);
    assert_eq!(value(&els[0], NFTA_SET_ELEM_DATA).unwrap(), mark(2));
    assert!(find(&els[0], NFTA_SET_ELEM_FLAGS).is_none());
    assert_eq!(value(&els[1], NFTA_SET_ELEM_KEY).unwrap(), [10, 0, 1, 0]);
    assert_eq!(find(&els[1], NFTA_SET_ELEM_FLAGS), Some(&[0, 0, 0, 1][..]));
    assert!(find(&els[1], NFTA_SET_ELEM_DATA).is_none());

    // Deleting names both ends, without data.
    let bytes = one(&l, Op::Delete, "10.0.0.0-10.0.0.255 : 0x00000002");
    let enc = Encoded {
        bytes,
        begin_seq: 0,
        msgs: Vec::new(),
    };
    let els = kernel_elems(&enc);
    assert_eq!(els.len(), 2);
    assert!(els.iter().all(|e| find(e, NFTA_SET_ELEM_DATA).is_none()));
    assert_eq!(find(&els[1], NFTA_SET_ELEM_FLAGS), Some(&[0, 0, 0, 1][..]));
}

#[test]
fn interval_to_the_top_has_no_end_and_is_marked_open() {
    // nft: element 0001000a : 00000001 0 [end] userdata = { \x01\x04\x01\x00\x00\x00 }
    let l = layout("peer_ranges", "type ipv4_addr : mark; flags interval;");
    let enc = Encoded {
        bytes: one(&l, Op::Add, "10.0.1.0-255.255.255.255 : 0x00000001"),
        begin_seq: 0,
        msgs: Vec::new(),
    };
    let els = kernel_elems(&enc);
    assert_eq!(els.len(), 1);
    let mut ud = vec![1, 4];
    ud.extend(1u32.to_ne_bytes());
    assert_eq!(find(&els[0], NFTA_SET_ELEM_USERDATA), Some(&ud[..]));
}

#[test]
fn prefix_is_an_interval() {
    // nft: local_cidrs  element 0001f40a : 0 [end]  element 0002f40a : 1 [end]
    let l = layout("local_cidrs", "type ipv4_addr; flags interval;");
    let e = l.parse_element("10.244.1.0/24").unwrap();
    assert_eq!(e.to_string(), "10.244.1.0-10.244.1.255");
    let enc = Encoded {
        bytes: one(&l, Op::Add, "10.244.1.0/24"),
        begin_seq: 0,
        msgs: Vec::new(),
    };
    let els = kernel_elems(&enc);
    assert_eq!(value(&els[0], NFTA_SET_ELEM_KEY).unwrap(), [10, 244, 1, 0]);
    assert_eq!(value(&els[1], NFTA_SET_ELEM_KEY).unwrap(), [10, 244, 2, 0]);
    // A single address in an interval set: start and start + 1.
    let enc = Encoded {
        bytes: one(&l, Op::Add, "10.244.1.7"),
        begin_seq: 0,
        msgs: Vec::new(),
    };
    let els = kernel_elems(&enc);
    assert_eq!(value(&els[1], NFTA_SET_ELEM_KEY).unwrap(), [10, 244, 1, 8]);
}

#[test]
fn hashed_map_carries_data_on_add_only() {
    let l = layout("peer_pods", "type ipv4_addr : mark;");
    let add = Encoded {
        bytes: one(&l, Op::Add, "10.244.1.2 : 0x00000003"),
        begin_seq: 0,
        msgs: Vec::new(),
    };
    let els = kernel_elems(&add);
    assert_eq!(value(&els[0], NFTA_SET_ELEM_DATA).unwrap(), mark(3));
    let del = Encoded {
        bytes: one(&l, Op::Delete, "10.244.1.2 : 0x00000003"),
        begin_seq: 0,
        msgs: Vec::new(),
    };
    assert!(find(&kernel_elems(&del)[0], NFTA_SET_ELEM_DATA).is_none());
}

#[test]
fn big_changes_are_split_over_messages_of_one_batch() {
    let l = layout("in_port", "type ipv4_addr . inet_proto . inet_service;");
    let els: Vec<Element> = (0..5000u32)
        .map(|i| {
            Element::exact(
                vec![
                    Value::Ipv4(Ipv4Addr::from(0x0af4_0000 + i)),
                    Value::Proto(6),
                    Value::Port(80),
                ],
                None,
            )
        })
        .collect();
    let mut b = ElementBatch::new();
    b.add(&l, els);
    let enc = b.encode(7).unwrap();
    let msgs = messages(&enc.bytes);
    assert!(msgs.len() > 3, "{} messages", msgs.len());
    assert_eq!(msgs.first().unwrap().0, NFNL_MSG_BATCH_BEGIN);
    assert_eq!(msgs.last().unwrap().0, NFNL_MSG_BATCH_END);
    assert_eq!(kernel_elems(&enc).len(), 5000);
    assert_eq!(enc.msgs.len(), msgs.len() - 2);
    // Every element is found again by its offset in its message.
    let total: usize = enc.msgs.iter().map(|m| m.spans.len()).sum();
    assert_eq!(total, 5000);
    let last = enc.msgs.last().unwrap();
    assert_eq!(last.spans.last().unwrap().2, 4999);
}

#[test]
fn elements_that_do_not_fit_their_set_are_refused() {
    let hash = layout("in_port", "type ipv4_addr . inet_proto . inet_service;");
    let bad = [
        "10.244.1.2 . tcp",
        "10.244.1.2 . tcp . 80-81",
        "10.244.1.2 . tcp . http",
        "10.244.1.2 . tcp . 80 : 0x1",
        "10.244.1 . tcp . 80",
    ];
    for text in bad {
        let err = hash.parse_element(text).unwrap_err();
        assert!(
            matches!(&err, ElementError::Element { set, element, .. } if set == "in_port" && element == text),
            "{text}: {err}"
        );
    }
    let map = layout("peer_pods", "type ipv4_addr : mark;");
    assert!(map.parse_element("10.244.1.2").is_err());
    let range = layout(
        "in_range",
        "type ipv4_addr . inet_proto . inet_service; flags interval;",
    );
    assert!(range.parse_element("10.244.1.2 . tcp . 81-80").is_err());
    assert!(SetLayout::from_decl(Family::Inet, "t", "v", "type ipv4_addr : verdict;").is_err());
    assert!(SetLayout::from_decl(Family::Inet, "t", "v", "type ether_addr;").is_err());
}

#[test]
fn layouts_read_from_declarations() {
    let l = layout(
        "in_drops",
        "type ipv4_addr; size 65535; flags dynamic; counter;",
    );
    assert_eq!(l.key, vec![FieldType::Ipv4Addr]);
    assert!(!l.interval && l.data.is_none());
    let l = layout("peer_ranges", "type ipv4_addr : mark; flags interval;");
    assert_eq!(l.data, Some(FieldType::Mark));
    assert!(l.interval);
}

#[test]
fn elements_print_as_nft_writes_them() {
    let l = layout(
        "in_peer_range",
        "type ipv4_addr . mark . inet_proto . inet_service; flags interval;",
    );
    for text in [
        "10.244.1.2 . 0x00000003 . udp . 1000-2000",
        "10.244.1.2 . 0x0000abcd . sctp . 80",
    ] {
        assert_eq!(l.parse_element(text).unwrap().to_string(), text);
    }
    let m = layout("peer_ranges", "type ipv4_addr : mark; flags interval;");
    let t = "0.0.0.0-9.255.255.255 : 0x00000001";
    assert_eq!(m.parse_element(t).unwrap().to_string(), t);
}

#[test]
fn replies_carry_errno_message_and_offset() {
    // An error as the kernel sends it with NETLINK_CAP_ACK and
    // NETLINK_EXT_ACK: header, -errno, the request's header only, then
    // NLMSGERR_ATTR_MSG and NLMSGERR_ATTR_OFFS.
    let mut m = Vec::new();
    let body_len = 4 + 16 + 8 + 8;
    m.extend(((16 + body_len) as u32).to_ne_bytes());
    m.extend(NLMSG_ERROR.to_ne_bytes());
    m.extend((NLM_F_CAPPED | NLM_F_ACK_TLVS).to_ne_bytes());
    m.extend(42u32.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    m.extend((-libc::ENOENT).to_ne_bytes());
    m.extend([0u8; 16]);
    m.extend(8u16.to_ne_bytes());
    m.extend(NLMSGERR_ATTR_MSG.to_ne_bytes());
    m.extend(b"gone");
    m.extend(8u16.to_ne_bytes());
    m.extend(NLMSGERR_ATTR_OFFS.to_ne_bytes());
    m.extend(64u32.to_ne_bytes());
    // Followed by a plain ACK.
    m.extend(36u32.to_ne_bytes());
    m.extend(NLMSG_ERROR.to_ne_bytes());
    m.extend(NLM_F_CAPPED.to_ne_bytes());
    m.extend(43u32.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    m.extend(0i32.to_ne_bytes());
    m.extend([0u8; 16]);
    let r = replies(&m).unwrap();
    assert_eq!(
        r,
        vec![
            Reply {
                seq: 42,
                errno: libc::ENOENT,
                message: Some("gone".into()),
                offset: Some(64),
            },
            Reply {
                seq: 43,
                errno: 0,
                message: None,
                offset: None,
            },
        ]
    );
    assert!(replies(&m[..20]).is_err());
}
