//! The DNS planner (pure; no I/O): Services, EndpointSlices, Pods and
//! Namespaces become an immutable [`Index`] of the records the Kubernetes
//! DNS-Based Service Discovery specification asks for, and [`Index::lookup`]
//! answers a question from it with the exact negative answers (NXDOMAIN
//! against NODATA) a resolver needs. The server swaps whole indexes
//! atomically, so a lookup never sees half an update.

mod build;
mod name;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

pub use build::Objects;
pub use name::{NameError, normalize_zone, reverse_name};

/// The schema version of the specification this index implements, served as
/// the `dns-version.<zone>` TXT record.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// Record types the index knows, by their wire code.
pub mod rtype {
    /// IPv4 address.
    pub const A: u16 = 1;
    /// Authoritative name server.
    pub const NS: u16 = 2;
    /// Canonical name (alias).
    pub const CNAME: u16 = 5;
    /// Start of authority.
    pub const SOA: u16 = 6;
    /// Reverse pointer.
    pub const PTR: u16 = 12;
    /// Text.
    pub const TXT: u16 = 16;
    /// IPv6 address.
    pub const AAAA: u16 = 28;
    /// Service location.
    pub const SRV: u16 = 33;
    /// EDNS0 pseudo-record.
    pub const OPT: u16 = 41;
    /// Every record at a name.
    pub const ANY: u16 = 255;
}

/// How `a-b-c-d.<ns>.pod.<zone>` names are answered (CoreDNS's `pods` option).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PodMode {
    /// No pod records at all: the names are NXDOMAIN.
    Disabled,
    /// Any well-formed dashed address answers with that address (the
    /// default, kube-dns compatible).
    #[default]
    Insecure,
    /// Only addresses of existing pods in that namespace answer.
    Verified,
}

/// What shapes the index beyond the objects: the zone and the TTLs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster domain, lowercase, without a trailing dot.
    pub zone: String,
    /// TTL of every positive record.
    pub ttl: u32,
    /// TTL of negative answers (the SOA minimum and the SOA's own TTL there).
    pub negative_ttl: u32,
    /// How pod A records are answered.
    pub pods: PodMode,
    /// Addresses of this DNS service, served as `ns.dns.<zone>`.
    pub ns_addrs: Vec<IpAddr>,
    /// SOA serial; the builder bumps it per rebuild so secondaries see change.
    pub serial: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            zone: "cluster.local".into(),
            ttl: 30,
            negative_ttl: 30,
            pods: PodMode::Insecure,
            ns_addrs: vec![],
            serial: 1,
        }
    }
}

/// The data of one record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RData {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// An alias to another name (absolute, lowercase, no trailing dot).
    Cname(Arc<str>),
    /// A reverse pointer to a name.
    Ptr(Arc<str>),
    /// A service location.
    Srv {
        /// RFC 2782 priority.
        priority: u16,
        /// RFC 2782 weight.
        weight: u16,
        /// The port number.
        port: u16,
        /// The target host name.
        target: Arc<str>,
    },
    /// One text string.
    Txt(String),
    /// The zone's start of authority.
    Soa {
        /// Primary name server.
        mname: Arc<str>,
        /// Mailbox of the responsible person.
        rname: Arc<str>,
        /// Serial.
        serial: u32,
        /// Refresh interval.
        refresh: u32,
        /// Retry interval.
        retry: u32,
        /// Expiry.
        expire: u32,
        /// Negative caching TTL.
        minimum: u32,
    },
    /// A name server of the zone.
    Ns(Arc<str>),
}

impl RData {
    /// The wire type code of this data.
    pub fn rtype(&self) -> u16 {
        match self {
            RData::A(_) => rtype::A,
            RData::Aaaa(_) => rtype::AAAA,
            RData::Cname(_) => rtype::CNAME,
            RData::Ptr(_) => rtype::PTR,
            RData::Srv { .. } => rtype::SRV,
            RData::Txt(_) => rtype::TXT,
            RData::Soa { .. } => rtype::SOA,
            RData::Ns(_) => rtype::NS,
        }
    }

    /// The name this record points at whose addresses belong in the
    /// additional section (SRV targets, NS hosts).
    fn additional_target(&self) -> Option<&str> {
        match self {
            RData::Srv { target, .. } | RData::Ns(target) => Some(target),
            _ => None,
        }
    }
}

/// One resource record: owner name (lowercase, no trailing dot), TTL, data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The owner name.
    pub name: Arc<str>,
    /// Time to live in seconds.
    pub ttl: u32,
    /// The data.
    pub data: RData,
}

/// The response code of an in-zone answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    /// The name exists (answers may still be empty: NODATA).
    NoError,
    /// The name does not exist.
    NxDomain,
}

/// The index's answer to one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// NOERROR or NXDOMAIN.
    pub rcode: Rcode,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section (the SOA on negative answers).
    pub authority: Vec<Record>,
    /// The additional section (addresses of SRV and NS targets).
    pub additional: Vec<Record>,
}

impl Answer {
    /// NODATA: the name exists, the type does not.
    pub fn is_nodata(&self) -> bool {
        self.rcode == Rcode::NoError && self.answers.is_empty()
    }
}

/// A small multiplicative hasher for owner names (FxHash's mix): the index
/// is looked up on every query and rebuilt on every change, and its keys
/// come from the cluster's own objects, so SipHash's flooding resistance
/// buys nothing here while costing a third of a lookup.
#[derive(Default, Clone, Copy)]
pub struct NameHasher(u64);

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(i)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The map type of the index.
pub(crate) type NameMap<V> = HashMap<Box<str>, V, BuildHasherDefault<NameHasher>>;

/// The immutable record index for one snapshot of the cluster.
#[derive(Debug)]
pub struct Index {
    config: Config,
    /// Owner name -> records. Names present with no records are empty
    /// non-terminals (they exist: NODATA, not NXDOMAIN).
    names: NameMap<Vec<RData>>,
    /// `.<zone>` for suffix checks.
    dot_zone: String,
    record_count: usize,
}

impl Index {
    /// Builds the index from a snapshot of the cluster's objects.
    pub fn build(config: Config, objects: &Objects) -> Index {
        build::build(config, objects)
    }

    /// An index holding only the zone's own records (before the first sync).
    pub fn empty(config: Config) -> Index {
        build::build(config, &Objects::default())
    }

    /// The configuration this index was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of resource records held (for the `index size` metric).
    pub fn record_count(&self) -> usize {
        self.record_count
    }

    /// Number of distinct owner names held.
    pub fn name_count(&self) -> usize {
        self.names.len()
    }

    /// True when this server is authoritative for `qname` (lowercase, no
    /// trailing dot): the cluster zone, or a reverse name it holds a PTR for.
    /// Anything else is forwarded.
    pub fn is_authoritative_for(&self, qname: &str) -> bool {
        self.in_zone(qname) || self.names.contains_key(qname)
    }

    fn in_zone(&self, qname: &str) -> bool {
        qname == self.config.zone || qname.ends_with(&self.dot_zone)
    }

    /// Answers `qname`/`qtype`, or `None` when the name is not ours to answer
    /// (the caller forwards it). `qname` must be lowercase without the
    /// trailing dot (the root is the empty string).
    pub fn lookup(&self, qname: &str, qtype: u16) -> Option<Answer> {
        if let Some(rdatas) = self.names.get(qname) {
            return Some(self.answer_from(qname, rdatas, qtype));
        }
        if !self.in_zone(qname) {
            return None;
        }
        if let Some(ip) = self.insecure_pod_address(qname) {
            let data = match ip {
                IpAddr::V4(v4) => RData::A(v4),
                IpAddr::V6(v6) => RData::Aaaa(v6),
            };
            return Some(self.answer_from(qname, std::slice::from_ref(&data), qtype));
        }
        Some(self.negative(Rcode::NxDomain))
    }

    fn answer_from(&self, qname: &str, rdatas: &[RData], qtype: u16) -> Answer {
        let owner: Arc<str> = Arc::from(qname);
        let ttl = self.config.ttl;
        let mut answers: Vec<Record> = rdatas
            .iter()
            .filter(|d| qtype == rtype::ANY || d.rtype() == qtype)
            .map(|d| Record {
                name: owner.clone(),
                ttl,
                data: d.clone(),
            })
            .collect();
        if answers.is_empty() && qtype != rtype::CNAME {
            // An alias answers every type with itself (RFC 1034 3.6.2).
            answers.extend(
                rdatas
                    .iter()
                    .filter(|d| matches!(d, RData::Cname(_)))
                    .map(|d| Record {
                        name: owner.clone(),
                        ttl,
                        data: d.clone(),
                    }),
            );
        }
        if answers.is_empty() {
            return self.negative(Rcode::NoError);
        }
        let mut additional = Vec::new();
        for rec in &answers {
            if let Some(target) = rec.data.additional_target()
                && let Some(tdatas) = self.names.get(target)
            {
                let tname: Arc<str> = Arc::from(target);
                for d in tdatas
                    .iter()
                    .filter(|d| matches!(d, RData::A(_) | RData::Aaaa(_)))
                {
                    let r = Record {
                        name: tname.clone(),
                        ttl,
                        data: d.clone(),
                    };
                    if !additional.contains(&r) {
                        additional.push(r);
                    }
                }
            }
        }
        Answer {
            rcode: Rcode::NoError,
            answers,
            authority: vec![],
            additional,
        }
    }

    /// The negative answer: `rcode` with the zone's SOA in authority, whose
    /// TTL is the negative TTL (RFC 2308).
    fn negative(&self, rcode: Rcode) -> Answer {
        Answer {
            rcode,
            answers: vec![],
            authority: vec![self.soa()],
            additional: vec![],
        }
    }

    /// The zone's SOA record, TTL set to the negative TTL.
    pub fn soa(&self) -> Record {
        Record {
            name: Arc::from(self.config.zone.as_str()),
            ttl: self.config.negative_ttl,
            data: build::soa_data(&self.config),
        }
    }

    /// `a-b-c-d.<ns>.pod.<zone>` in `pods insecure` mode: the address parsed
    /// from the first label, whatever the namespace.
    fn insecure_pod_address(&self, qname: &str) -> Option<IpAddr> {
        if self.config.pods != PodMode::Insecure {
            return None;
        }
        let rest = qname.strip_suffix(&self.dot_zone)?;
        let rest = rest.strip_suffix(".pod")?;
        let (first, ns) = rest.split_once('.')?;
        if ns.is_empty() || ns.contains('.') {
            return None;
        }
        name::parse_dashed_ip(first)
    }
}
