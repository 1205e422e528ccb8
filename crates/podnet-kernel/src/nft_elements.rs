//! nf_tables set elements written straight over netlink.
//!
//! Why: after the first full load, every change podnet makes to its tables
//! is a handful of set-element adds and deletes. Sending them through the
//! `nft` tool costs a process start (~4 ms) and, in nft 1.0.6, a fetch of
//! the whole set into nft's cache before any `delete element` (~12 ms on a
//! set of 6,000 elements). The kernel needs neither: this module encodes the
//! same `NFT_MSG_NEWSETELEM` / `NFT_MSG_DELSETELEM` messages nft would send,
//! wraps them in one `NFNL_MSG_BATCH_BEGIN` ... `NFNL_MSG_BATCH_END` batch
//! (one atomic transaction: all of it or none), and checks the kernel's
//! acknowledgement of every message. Tables, sets and rules still come from
//! nft text ([`crate::nft`]); this only writes elements into sets that
//! exist.
//!
//! Supported, because podnet's sets use exactly these: keys of `ipv4_addr`,
//! `mark`, `inet_proto` and `inet_service` and their concatenations; plain
//! (hashed) sets, interval sets of one field (rbtree: a start element and an
//! interval-end element) and concatenated interval sets (pipapo: a key and
//! a key end); maps whose data is one of those types. Anything else is
//! refused with [`ElementError::Layout`] rather than encoded wrongly.
//!
//! The element text accepted by [`SetLayout::parse_element`] is nft's own
//! (`10.244.1.2 . 0x00000003 . tcp . 80-81`, `10.0.0.0-10.0.0.255 : 0x1`,
//! `10.244.1.0/24`), so a caller that renders nft text for its full load
//! can send the same elements here without a second renderer.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{setsockopt, sockopt};

use crate::nft::Namespace;

pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
/// libnftnl's element user data: a TLV of flags; nft marks an interval that
/// runs to the top of the key space (no end element) as open, and reads the
/// mark back when it lists the set.
const NFTNL_UDATA_SET_ELEM_FLAGS: u8 = 1;
const NFTNL_SET_ELEM_F_INTERVAL_OPEN: u32 = 1;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// The element list is one netlink attribute, whose length is a `u16`:
/// bigger changes are split over several messages of the same batch.
const MAX_ELEMENTS_BYTES: usize = 60_000;
/// How long to wait for the kernel's answers. The kernel handles a batch
/// synchronously within `send`, so they are normally already queued.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed element write, naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum ElementError {
    /// A set declaration this module cannot encode for.
    #[error("set {set}: {reason}")]
    Layout { set: String, reason: String },
    /// An element that does not fit its set's declaration.
    #[error("element {element:?} of set {set}: {reason}")]
    Element {
        set: String,
        element: String,
        reason: String,
    },
    /// The netlink socket failed (open, send, receive).
    #[error("nf_tables netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused one message of the batch; the whole batch was
    /// rolled back. `element` is the one the kernel pointed at, when it did.
    #[error(
        "the kernel refused to {op} {} in set {family} {table} {set}: {source}{}",
        element.as_deref().map_or_else(|| "elements".to_string(), |e| format!("element {e}")),
        message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
    )]
    Rejected {
        op: Op,
        family: Family,
        table: String,
        set: String,
        element: Option<String>,
        message: Option<String>,
        #[source]
        source: io::Error,
    },
    /// The kernel refused the batch as a whole (commit failed, or out of
    /// memory); nothing was applied.
    #[error("the kernel refused the element batch: {source}{}",
        message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Batch {
        message: Option<String>,
        #[source]
        source: io::Error,
    },
    /// The kernel's answers did not make sense (missing acknowledgement,
    /// truncated message).
    #[error("nf_tables netlink protocol: {0}")]
    Protocol(String),
}

impl ElementError {
    /// The errno the kernel answered with, when it was the kernel that
    /// refused (`ENOENT`: no such element or set; `EEXIST`: element exists
    /// with other data; `EINVAL`: malformed element).
    pub fn errno(&self) -> Option<i32> {
        match self {
            ElementError::Rejected { source, .. } | ElementError::Batch { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

/// An nftables address family (`NFPROTO_*`), as a table declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `inet`: IPv4 and IPv6 in one table.
    Inet,
    /// `ip`.
    Ip,
    /// `ip6`.
    Ip6,
    /// `arp`.
    Arp,
    /// `bridge`.
    Bridge,
    /// `netdev`.
    Netdev,
}

impl Family {
    pub(crate) fn nfproto(self) -> u8 {
        match self {
            Family::Inet => 1,
            Family::Ip => 2,
            Family::Arp => 3,
            Family::Netdev => 5,
            Family::Bridge => 7,
            Family::Ip6 => 10,
        }
    }
}

impl FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "inet" => Family::Inet,
            "ip" => Family::Ip,
            "ip6" => Family::Ip6,
            "arp" => Family::Arp,
            "bridge" => Family::Bridge,
            "netdev" => Family::Netdev,
            _ => return Err(format!("unknown nftables family {s:?}")),
        })
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Arp => "arp",
            Family::Bridge => "bridge",
            Family::Netdev => "netdev",
        })
    }
}

/// Add or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `add element` (an element already present with the same data is no
    /// error, as in nft).
    Add,
    /// `delete element` (an absent element is an error: `ENOENT`).
    Delete,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Add => "add",
            Op::Delete => "delete",
        })
    }
}

/// The nft data types a key field (or map data) may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// `ipv4_addr`: 4 bytes, network order.
    Ipv4Addr,
    /// `mark`: a 32-bit value in host order (big-endian in interval sets,
    /// whose keys the kernel compares byte by byte).
    Mark,
    /// `inet_proto`: one byte.
    InetProto,
    /// `inet_service`: a port, 2 bytes, network order.
    InetService,
}

impl FieldType {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "ipv4_addr" => FieldType::Ipv4Addr,
            "mark" => FieldType::Mark,
            "inet_proto" => FieldType::InetProto,
            "inet_service" => FieldType::InetService,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            FieldType::Ipv4Addr => "ipv4_addr",
            FieldType::Mark => "mark",
            FieldType::InetProto => "inet_proto",
            FieldType::InetService => "inet_service",
        }
    }

    /// Parses one field: a value, `lo-hi`, or (addresses) `a.b.c.d/len`.
    fn parse(self, text: &str) -> Result<(Value, Value), String> {
        if self == FieldType::Ipv4Addr
            && let Some((addr, len)) = text.split_once('/')
        {
            let addr: Ipv4Addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
            let len: u32 = len
                .parse()
                .ok()
                .filter(|l| *l <= 32)
                .ok_or_else(|| format!("bad prefix length in {text:?}"))?;
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            let lo = u32::from(addr) & mask;
            return Ok((
                Value::Ipv4(Ipv4Addr::from(lo)),
                Value::Ipv4(Ipv4Addr::from(lo | !mask)),
            ));
        }
        let (lo, hi) = match text.split_once('-') {
            Some((lo, hi)) => (self.parse_one(lo)?, self.parse_one(hi)?),
            None => {
                let v = self.parse_one(text)?;
                (v, v)
            }
        };
        if lo.bytes(true) > hi.bytes(true) {
            return Err(format!("range {text:?} runs backwards"));
        }
        Ok((lo, hi))
    }

    fn parse_one(self, text: &str) -> Result<Value, String> {
        let bad = || format!("{text:?} is no {}", self.name());
        Ok(match self {
            FieldType::Ipv4Addr => Value::Ipv4(text.parse().map_err(|_| bad())?),
            FieldType::Mark => Value::Mark(match text.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16).map_err(|_| bad())?,
                None => text.parse().map_err(|_| bad())?,
            }),
            FieldType::InetProto => Value::Proto(match text {
                "icmp" => 1,
                "tcp" => 6,
                "udp" => 17,
                "icmpv6" => 58,
                "sctp" => 132,
                n => n.parse().map_err(|_| bad())?,
            }),
            FieldType::InetService => Value::Port(text.parse().map_err(|_| bad())?),
        })
    }
}

/// One typed field value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// A mark (or any 32-bit host-order value).
    Mark(u32),
    /// An IP protocol number.
    Proto(u8),
    /// A TCP/UDP/SCTP port.
    Port(u16),
}

impl Value {
    fn ty(self) -> FieldType {
        match self {
            Value::Ipv4(_) => FieldType::Ipv4Addr,
            Value::Mark(_) => FieldType::Mark,
            Value::Proto(_) => FieldType::InetProto,
            Value::Port(_) => FieldType::InetService,
        }
    }

    /// The kernel's bytes for this value (unpadded). Host-order types are
    /// written big-endian when `big_endian` (interval keys).
    fn bytes(self, big_endian: bool) -> Vec<u8> {
        match self {
            Value::Ipv4(a) => a.octets().to_vec(),
            Value::Mark(m) if big_endian => m.to_be_bytes().to_vec(),
            Value::Mark(m) => m.to_ne_bytes().to_vec(),
            Value::Proto(p) => vec![p],
            Value::Port(p) => p.to_be_bytes().to_vec(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Ipv4(a) => write!(f, "{a}"),
            Value::Mark(m) => write!(f, "0x{m:08x}"),
            Value::Proto(6) => f.write_str("tcp"),
            Value::Proto(17) => f.write_str("udp"),
            Value::Proto(132) => f.write_str("sctp"),
            Value::Proto(p) => write!(f, "{p}"),
            Value::Port(p) => write!(f, "{p}"),
        }
    }
}

/// One set element: a key (each field a value, or a range from `key` to
/// `key_end`, inclusive) and, in a map, its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    /// First value of each key field.
    pub key: Vec<Value>,
    /// Last value of each key field (equal to `key` where it is no range).
    pub key_end: Vec<Value>,
    /// The mapped value, in a map.
    pub data: Option<Value>,
}

impl Element {
    /// An element without ranges.
    pub fn exact(key: Vec<Value>, data: Option<Value>) -> Self {
        Element {
            key_end: key.clone(),
            key,
            data,
        }
    }

    fn is_range(&self) -> bool {
        self.key != self.key_end
    }
}

impl fmt::Display for Element {
    /// nft's syntax, so errors name an element as the operator wrote it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.key.iter().zip(&self.key_end).enumerate() {
            if i > 0 {
                f.write_str(" . ")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        if let Some(d) = self.data {
            write!(f, " : {d}")?;
        }
        Ok(())
    }
}

/// How a set's elements are laid out in the kernel: the set's address, its
/// key fields, its data type and whether it holds intervals. It must match
/// the set's declaration, which [`SetLayout::from_decl`] reads from the same
/// nft text that created the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetLayout {
    /// The table's family.
    pub family: Family,
    /// The table's name.
    pub table: String,
    /// The set's (or map's) name.
    pub name: String,
    /// Key fields, in order (more than one: a concatenation).
    pub key: Vec<FieldType>,
    /// Data type, for a map.
    pub data: Option<FieldType>,
    /// `flags interval`.
    pub interval: bool,
}

impl SetLayout {
    /// Reads a declaration body as nft takes it, e.g. `type ipv4_addr .
    /// inet_service; flags interval;` or `type ipv4_addr : mark;`.
    /// Statements other than `type` and `flags` (size, counter, timeout)
    /// do not change how elements are encoded and are ignored.
    pub fn from_decl(
        family: Family,
        table: &str,
        name: &str,
        decl: &str,
    ) -> Result<Self, ElementError> {
        let fail = |reason: String| ElementError::Layout {
            set: format!("{family} {table} {name}"),
            reason,
        };
        let mut key = Vec::new();
        let mut data = None;
        let mut interval = false;
        for stmt in decl.split(';').map(str::trim) {
            if let Some(ty) = stmt.strip_prefix("type ") {
                let (k, d) = match ty.split_once(':') {
                    Some((k, d)) => (k, Some(d.trim())),
                    None => (ty, None),
                };
                for field in k.split('.').map(str::trim) {
                    key.push(
                        FieldType::from_name(field)
                            .ok_or_else(|| fail(format!("unsupported key type {field:?}")))?,
                    );
                }
                if let Some(d) = d {
                    data = Some(
                        FieldType::from_name(d)
                            .ok_or_else(|| fail(format!("unsupported data type {d:?}")))?,
                    );
                }
            } else if let Some(flags) = stmt.strip_prefix("flags ") {
                interval |= flags.split(',').any(|f| f.trim() == "interval");
            }
        }
        if key.is_empty() {
            return Err(fail(format!("no type in {decl:?}")));
        }
        Ok(SetLayout {
            family,
            table: table.into(),
            name: name.into(),
            key,
            data,
            interval,
        })
    }

    /// Parses one element in nft's syntax (`key`, `key : data`, fields
    /// joined by ` . `, ranges `lo-hi`, prefixes `a.b.c.d/len`).
    pub fn parse_element(&self, text: &str) -> Result<Element, ElementError> {
        let fail = |reason: String| ElementError::Element {
            set: self.name.clone(),
            element: text.into(),
            reason,
        };
        let (key_text, data_text) = match text.split_once(" : ") {
            Some((k, d)) => (k.trim(), Some(d.trim())),
            None => (text.trim(), None),
        };
        let fields: Vec<&str> = key_text.split(" . ").map(str::trim).collect();
        if fields.len() != self.key.len() {
            return Err(fail(format!(
                "{} key fields, the set has {}",
                fields.len(),
                self.key.len()
            )));
        }
        let mut key = Vec::with_capacity(fields.len());
        let mut key_end = Vec::with_capacity(fields.len());
        for (ty, f) in self.key.iter().zip(fields) {
            let (lo, hi) = ty.parse(f).map_err(fail)?;
            key.push(lo);
            key_end.push(hi);
        }
        let data = match (self.data, data_text) {
            (Some(ty), Some(d)) => Some(ty.parse_one(d).map_err(fail)?),
            (None, None) => None,
            (Some(_), None) => return Err(fail("a map element needs data".into())),
            (None, Some(_)) => return Err(fail("data given for a set".into())),
        };
        let e = Element { key, key_end, data };
        self.check(&e).map_err(fail)?;
        Ok(e)
    }

    fn check(&self, e: &Element) -> Result<(), String> {
        let types = |v: &[Value]| v.iter().map(|v| v.ty()).collect::<Vec<_>>();
        if types(&e.key) != self.key || types(&e.key_end) != self.key {
            return Err(format!(
                "key types differ from the set's {}",
                self.key
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join(" . ")
            ));
        }
        if e.data.map(Value::ty) != self.data {
            return Err("data type differs from the set's".into());
        }
        if e.is_range() && !self.interval {
            return Err("a range in a set without flags interval".into());
        }
        Ok(())
    }

    /// The key as the kernel stores it: one field as is; a concatenation
    /// with every field padded to 4 bytes.
    fn key_bytes(&self, values: &[Value]) -> Vec<u8> {
        let concat = values.len() > 1;
        let mut out = Vec::with_capacity(values.len() * 4);
        for v in values {
            out.extend(v.bytes(self.interval));
            if concat {
                out.resize(out.len().next_multiple_of(4), 0);
            }
        }
        out
    }
}

/// A kernel element: what one `NFTA_LIST_ELEM` carries.
struct KernelElement {
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    data: Option<Vec<u8>>,
    interval_end: bool,
    open: bool,
}

/// The kernel elements one element becomes: an rbtree interval is a start
/// and an interval-end element one past its last value (none when it runs
/// to the top of the key space); a concatenated interval carries its key
/// end; anything else is one element.
fn kernel_elements(layout: &SetLayout, op: Op, e: &Element) -> Vec<KernelElement> {
    let key = layout.key_bytes(&e.key);
    let data = match op {
        Op::Add => e.data.map(|d| d.bytes(false)),
        Op::Delete => None,
    };
    if !layout.interval {
        return vec![KernelElement {
            key,
            key_end: None,
            data,
            interval_end: false,
            open: false,
        }];
    }
    if layout.key.len() > 1 {
        return vec![KernelElement {
            key,
            key_end: Some(layout.key_bytes(&e.key_end)),
            data,
            interval_end: false,
            open: false,
        }];
    }
    let mut end = layout.key_bytes(&e.key_end);
    let overflow = increment(&mut end);
    let mut out = vec![KernelElement {
        key,
        key_end: None,
        data,
        interval_end: false,
        open: overflow && op == Op::Add,
    }];
    if !overflow {
        out.push(KernelElement {
            key: end,
            key_end: None,
            data: None,
            interval_end: true,
            open: false,
        });
    }
    out
}

/// Adds one to a big-endian byte string; true when it wrapped around.
fn increment(bytes: &mut [u8]) -> bool {
    for b in bytes.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            return false;
        }
    }
    true
}

/// Element changes to apply together, in order: one atomic transaction.
/// Put deletes before adds when an interval is re-cut, so the new pieces
/// never overlap the old ones.
#[derive(Debug, Default)]
pub struct ElementBatch<'l> {
    changes: Vec<(Op, &'l SetLayout, Vec<Element>)>,
}

impl<'l> ElementBatch<'l> {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `elements` to `set`.
    pub fn add(&mut self, set: &'l SetLayout, elements: Vec<Element>) {
        if !elements.is_empty() {
            self.changes.push((Op::Add, set, elements));
        }
    }

    /// Deletes `elements` from `set`.
    pub fn delete(&mut self, set: &'l SetLayout, elements: Vec<Element>) {
        if !elements.is_empty() {
            self.changes.push((Op::Delete, set, elements));
        }
    }

    /// Number of elements changed.
    pub fn len(&self) -> usize {
        self.changes.iter().map(|c| c.2.len()).sum()
    }

    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The batch as bytes for one `send`, with what each message carries
    /// (for naming what the kernel refuses). Sequence numbers start at
    /// `seq` (the batch begin).
    fn encode(&self, seq: u32) -> Result<Encoded, ElementError> {
        let mut w = Writer::default();
        let mut msgs = Vec::new();
        let mut next = seq;
        let mut seq = || {
            let s = next;
            next = next.wrapping_add(1);
            s
        };
        let begin_seq = seq();
        w.batch_marker(NFNL_MSG_BATCH_BEGIN, begin_seq);
        for (change, (op, layout, elements)) in self.changes.iter().enumerate() {
            let mut todo = elements.iter().enumerate().peekable();
            while todo.peek().is_some() {
                let s = seq();
                let (ty, flags) = match op {
                    Op::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK),
                    Op::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
                };
                let msg = w.begin_msg(
                    (NFNL_SUBSYS_NFTABLES << 8) | ty,
                    flags,
                    s,
                    layout.family.nfproto(),
                    0,
                );
                w.attr_str(NFTA_SET_ELEM_LIST_TABLE, &layout.table);
                w.attr_str(NFTA_SET_ELEM_LIST_SET, &layout.name);
                let list = w.nest_begin(NFTA_SET_ELEM_LIST_ELEMENTS);
                let mut spans = Vec::new();
                while let Some((i, e)) =
                    todo.next_if(|_| w.buf.len() - list < MAX_ELEMENTS_BYTES || spans.is_empty())
                {
                    layout.check(e).map_err(|reason| ElementError::Element {
                        set: layout.name.clone(),
                        element: e.to_string(),
                        reason,
                    })?;
                    let start = w.buf.len() - msg;
                    for k in kernel_elements(layout, *op, e) {
                        w.element(&k);
                    }
                    spans.push((start, w.buf.len() - msg, i));
                }
                w.nest_end(list);
                w.end_msg(msg);
                msgs.push(MsgInfo {
                    seq: s,
                    change,
                    spans,
                });
            }
        }
        w.batch_marker(NFNL_MSG_BATCH_END, seq());
        Ok(Encoded {
            bytes: w.buf,
            begin_seq,
            msgs,
        })
    }
}

struct Encoded {
    bytes: Vec<u8>,
    begin_seq: u32,
    msgs: Vec<MsgInfo>,
}

/// One element message: its sequence number, the change it belongs to and
/// where each element sits in it (offsets from the message's start, as the
/// kernel's extended ACK reports them).
struct MsgInfo {
    seq: u32,
    change: usize,
    spans: Vec<(usize, usize, usize)>,
}

/// Netlink message and attribute encoding (TLVs padded to 4 bytes).
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    fn pad(&mut self) {
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
    }

    /// nlmsghdr + nfgenmsg; returns the message's start.
    pub(crate) fn begin_msg(
        &mut self,
        ty: u16,
        flags: u16,
        seq: u32,
        family: u8,
        res_id: u16,
    ) -> usize {
        let start = self.buf.len();
        self.buf.extend(0u32.to_ne_bytes()); // length, set by end_msg
        self.buf.extend(ty.to_ne_bytes());
        self.buf.extend(flags.to_ne_bytes());
        self.buf.extend(seq.to_ne_bytes());
        self.buf.extend(0u32.to_ne_bytes()); // port id: the kernel's
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend(res_id.to_be_bytes());
        start
    }

    pub(crate) fn end_msg(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn batch_marker(&mut self, ty: u16, seq: u32) {
        let m = self.begin_msg(ty, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES);
        self.end_msg(m);
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        self.buf.extend(((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend(ty.to_ne_bytes());
        self.buf.extend(data);
        self.pad();
    }

    pub(crate) fn attr_str(&mut self, ty: u16, s: &str) {
        let mut z = Vec::with_capacity(s.len() + 1);
        z.extend(s.as_bytes());
        z.push(0);
        self.attr(ty, &z);
    }

    fn nest_begin(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend(0u16.to_ne_bytes());
        self.buf.extend((ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    fn nest_end(&mut self, start: usize) {
        let len = self.buf.len() - start;
        // Elements are split over messages well before this (MAX_ELEMENTS_BYTES);
        // one element alone is a few dozen bytes.
        assert!(len <= u16::MAX as usize, "netlink attribute too long");
        self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    }

    fn data_value(&mut self, ty: u16, value: &[u8]) {
        let n = self.nest_begin(ty);
        self.attr(NFTA_DATA_VALUE, value);
        self.nest_end(n);
    }

    fn element(&mut self, k: &KernelElement) {
        let e = self.nest_begin(NFTA_LIST_ELEM);
        if k.interval_end {
            self.attr(
                NFTA_SET_ELEM_FLAGS,
                &NFT_SET_ELEM_INTERVAL_END.to_be_bytes(),
            );
        }
        self.data_value(NFTA_SET_ELEM_KEY, &k.key);
        if let Some(end) = &k.key_end {
            self.data_value(NFTA_SET_ELEM_KEY_END, end);
        }
        if let Some(d) = &k.data {
            self.data_value(NFTA_SET_ELEM_DATA, d);
        }
        if k.open {
            let mut ud = vec![NFTNL_UDATA_SET_ELEM_FLAGS, 4];
            ud.extend(NFTNL_SET_ELEM_F_INTERVAL_OPEN.to_ne_bytes());
            self.attr(NFTA_SET_ELEM_USERDATA, &ud);
        }
        self.nest_end(e);
    }
}

/// A netlink socket to nf_tables in one network namespace, kept open so a
/// change costs one `send` and the reads of its acknowledgements.
pub struct ElementWriter {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
    traffic: Traffic,
}

/// What an [`ElementWriter`] has sent to and received from the kernel over
/// its life: a change that reads a set would show the set's size here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Netlink datagrams sent.
    pub sent_datagrams: u64,
    /// Bytes sent.
    pub sent_bytes: u64,
    /// Netlink datagrams received.
    pub received_datagrams: u64,
    /// Bytes received.
    pub received_bytes: u64,
}

impl fmt::Debug for ElementWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElementWriter")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl ElementWriter {
    /// Opens the socket in `ns`. For another namespace the socket is made
    /// on a short-lived thread that enters it, so the caller's thread never
    /// changes namespace; the socket stays bound to `ns` for its life.
    pub fn open(ns: Namespace<'_>) -> Result<Self, ElementError> {
        let socket = socket_in(ns).map_err(ElementError::Socket)?;
        // Sequence numbers only need to differ between this socket's
        // batches; start somewhere recognisable in `nft monitor` traces.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        Ok(ElementWriter {
            socket,
            seq,
            buf: vec![0; 64 * 1024],
            traffic: Traffic::default(),
        })
    }

    /// What this writer has exchanged with the kernel so far.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// Applies `batch` as one transaction and waits for the kernel's answer
    /// to every message. On `Err` nothing of the batch is in force.
    pub fn apply(&mut self, batch: &ElementBatch<'_>) -> Result<(), ElementError> {
        if batch.is_empty() {
            return Ok(());
        }
        let enc = batch.encode(self.seq)?;
        self.seq = self.seq.wrapping_add(enc.msgs.len() as u32 + 2);
        // A netlink message to the kernel must fit the send buffer whole.
        if enc.bytes.len() + 1024 > 200 * 1024 {
            setsockopt(
                &self.socket,
                sockopt::SndBufForce,
                &(enc.bytes.len() + 4096),
            )
            .map_err(|e| ElementError::Socket(e.into()))?;
        }
        let sent = self
            .socket
            .send(&enc.bytes, 0)
            .map_err(ElementError::Socket)?;
        self.traffic.sent_datagrams += 1;
        self.traffic.sent_bytes += sent as u64;
        if sent != enc.bytes.len() {
            return Err(ElementError::Protocol(format!(
                "sent {sent} of {} bytes",
                enc.bytes.len()
            )));
        }
        self.collect(batch, &enc)
    }

    /// Reads answers until every element message is acknowledged (or the
    /// batch was refused), then whatever else is already queued.
    fn collect(&mut self, batch: &ElementBatch<'_>, enc: &Encoded) -> Result<(), ElementError> {
        let mut acked = vec![false; enc.msgs.len()];
        let mut first_err: Option<ElementError> = None;
        let mut blocking = true;
        loop {
            let done = acked.iter().all(|a| *a) || first_err.is_some();
            if done {
                blocking = false;
            }
            let flags = if blocking { 0 } else { libc::MSG_DONTWAIT };
            let n = {
                let mut slice = &mut self.buf[..];
                match self.socket.recv(&mut slice, flags) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && !blocking => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Err(ElementError::Protocol(format!(
                            "no answer to {} of {} messages within {REPLY_TIMEOUT:?}",
                            acked.iter().filter(|a| !**a).count(),
                            acked.len()
                        )));
                    }
                    Err(e) => return Err(ElementError::Socket(e)),
                }
            };
            self.traffic.received_datagrams += 1;
            self.traffic.received_bytes += n as u64;
            for reply in replies(&self.buf[..n])? {
                let errno = reply.errno;
                if reply.seq == enc.begin_seq && errno != 0 {
                    first_err.get_or_insert(ElementError::Batch {
                        message: reply.message,
                        source: io::Error::from_raw_os_error(errno),
                    });
                    continue;
                }
                let Some(i) = enc.msgs.iter().position(|m| m.seq == reply.seq) else {
                    continue;
                };
                acked[i] = true;
                if errno == 0 {
                    continue;
                }
                let m = &enc.msgs[i];
                let (op, layout, elements) = &batch.changes[m.change];
                let element = reply.offset.and_then(|off| {
                    m.spans
                        .iter()
                        .find(|(s, e, _)| (*s..*e).contains(&off))
                        .map(|(_, _, k)| elements[*k].to_string())
                });
                first_err.get_or_insert(ElementError::Rejected {
                    op: *op,
                    family: layout.family,
                    table: layout.table.clone(),
                    set: layout.name.clone(),
                    element,
                    message: reply.message,
                    source: io::Error::from_raw_os_error(errno),
                });
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A netlink socket to nf_tables in `ns`. For another namespace the
/// socket is made on a short-lived thread that enters it, so the caller's
/// thread never changes namespace; the socket stays bound to `ns` for its
/// life.
pub(crate) fn socket_in(ns: Namespace<'_>) -> io::Result<Socket> {
    match ns {
        Namespace::Current => open_socket(),
        Namespace::Fd(fd) => std::thread::scope(|s| {
            s.spawn(|| {
                setns(fd, CloneFlags::CLONE_NEWNET)?;
                open_socket()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
        }),
    }
}

fn open_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // Errors name the attribute at fault (the element) and do not echo the
    // whole request back.
    socket.set_ext_ack(true)?;
    socket.set_cap_ack(true)?;
    let timeout = nix::sys::time::TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0);
    setsockopt(&socket, sockopt::ReceiveTimeout, &timeout)?;
    Ok(socket)
}

/// The native-endian `u16` at `i` of a netlink message.
pub(crate) fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}

/// The native-endian `u32` at `i` of a netlink message.
pub(crate) fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// One `NLMSG_ERROR` (an ACK when `errno` is 0) from the kernel.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    seq: u32,
    /// 0 for an ACK.
    errno: i32,
    message: Option<String>,
    offset: Option<usize>,
}

/// Splits a datagram into replies; anything but ACKs and errors (there
/// should be none) is passed over.
fn replies(mut data: &[u8]) -> Result<Vec<Reply>, ElementError> {
    let mut out = Vec::new();
    while data.len() >= NLMSG_HDRLEN {
        let len = u32_at(data, 0) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(ElementError::Protocol(format!(
                "reply of {len} bytes in a datagram of {}",
                data.len()
            )));
        }
        let (msg, rest) = data.split_at(len);
        data = rest.get(len.next_multiple_of(4) - len..).unwrap_or(&[]);
        let (ty, flags, seq) = (u16_at(msg, 4), u16_at(msg, 6), u32_at(msg, 8));
        if ty == NLMSG_DONE {
            continue;
        }
        if ty != NLMSG_ERROR {
            continue;
        }
        let body = &msg[NLMSG_HDRLEN..];
        if body.len() < 4 + NLMSG_HDRLEN {
            return Err(ElementError::Protocol("short error message".into()));
        }
        let errno = -(u32_at(body, 0) as i32);
        let orig_len = if flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            (u32_at(body, 4) as usize).next_multiple_of(4)
        };
        let mut reply = Reply {
            seq,
            errno,
            message: None,
            offset: None,
        };
        if flags & NLM_F_ACK_TLVS != 0 {
            let mut tlvs = body.get(4 + orig_len..).unwrap_or(&[]);
            while tlvs.len() >= 4 {
                let alen = u16_at(tlvs, 0) as usize;
                let aty = u16_at(tlvs, 2) & !NLA_F_NESTED;
                if alen < 4 || alen > tlvs.len() {
                    break;
                }
                let val = &tlvs[4..alen];
                match aty {
                    NLMSGERR_ATTR_MSG => {
                        let s = val.split(|b| *b == 0).next().unwrap_or(&[]);
                        reply.message = Some(String::from_utf8_lossy(s).into_owned());
                    }
                    NLMSGERR_ATTR_OFFS if val.len() >= 4 => {
                        reply.offset = Some(u32_at(val, 0) as usize);
                    }
                    _ => {}
                }
                tlvs = tlvs.get(alen.next_multiple_of(4)..).unwrap_or(&[]);
            }
        }
        out.push(reply);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
