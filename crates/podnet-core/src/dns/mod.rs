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

pub use build::{
    Objects, ServiceKey, ServiceObjects, group_by_service, service_key_of_pod, service_key_of_slice,
};
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
    /// Answer `<service>.<namespace>` (two labels, outside the zone) for a
    /// Service that exists, as `<service>.<namespace>.svc.<zone>`. BusyBox's
    /// `nslookup` (1.29 and later) sends a dotted name as is, never through
    /// the search path, so the seed's `nslookup kubernetes.default` fails
    /// against CoreDNS; names of Services that do not exist are forwarded.
    pub short_service_names: bool,
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
            short_service_names: true,
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
///
/// Two layers, so that a change to one Service costs its own records and
/// not the whole cluster's: `base`, from the last full build (shared by
/// every index updated from it), and a small `overlay` of the names changed
/// since (`None`: deleted). Lookups read the overlay first.
#[derive(Debug)]
pub struct Index {
    config: Config,
    /// Owner name -> records. Names present with no records are empty
    /// non-terminals (they exist: NODATA, not NXDOMAIN).
    base: Arc<NameMap<Vec<RData>>>,
    /// Names changed since `base` was built.
    overlay: NameMap<Option<Vec<RData>>>,
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

    /// Number of distinct owner names held (the overlay's changes counted
    /// against the base).
    pub fn name_count(&self) -> usize {
        let mut n = self.base.len();
        for (name, v) in &self.overlay {
            match (self.base.contains_key(name), v.is_some()) {
                (false, true) => n += 1,
                (true, false) => n -= 1,
                _ => {}
            }
        }
        n
    }

    /// Names changed since the last full build.
    pub fn overlay_len(&self) -> usize {
        self.overlay.len()
    }

    /// The records at `name` (empty: an empty non-terminal), or `None`.
    fn get(&self, name: &str) -> Option<&Vec<RData>> {
        if !self.overlay.is_empty()
            && let Some(v) = self.overlay.get(name)
        {
            return v.as_ref();
        }
        self.base.get(name)
    }

    /// A new index: this one with the records of the Services in
    /// `changes` (key, objects the index was made from, objects now)
    /// replaced, and the SOA serial `serial`. Costs the changed Services'
    /// records, not the cluster's. `None` when a full build is needed
    /// instead: a Service in a namespace the index does not hold yet, or an
    /// overlay grown past an eighth of the base (lookups pay for it, and a
    /// rebuild folds it in).
    pub fn update(
        &self,
        serial: u32,
        changes: &[(&ServiceKey, &ServiceObjects, &ServiceObjects)],
    ) -> Option<Index> {
        let mut config = self.config.clone();
        config.serial = serial;
        let svc_zone = format!("svc.{}", config.zone);
        let mut overlay = self.overlay.clone();
        let mut record_count = self.record_count as isize;
        let current = |overlay: &NameMap<Option<Vec<RData>>>, name: &str| -> Option<Vec<RData>> {
            match overlay.get(name) {
                Some(v) => v.clone(),
                None => self.base.get(name).cloned(),
            }
        };
        for (key, old, new) in changes {
            let ns_name = format!("{}.{svc_zone}", key.0.to_ascii_lowercase());
            if new.service.is_some() && current(&overlay, &ns_name).is_none() {
                return None;
            }
            let svc_name = format!("{}.{ns_name}", key.1.to_ascii_lowercase());
            let below = format!(".{svc_name}");
            let old_c = build::contribution(&config, key, old);
            let new_c = build::contribution(&config, key, new);
            let mut touched: Vec<&Box<str>> = old_c.keys().chain(new_c.keys()).collect();
            touched.sort();
            touched.dedup();
            for name in touched {
                let before = current(&overlay, name);
                let after = if **name == *svc_name || name.ends_with(&below) {
                    // The Service's own names: exactly what it makes now.
                    new_c.get(name).cloned()
                } else {
                    // Shared names (reverse names): others' records stay.
                    let mut v = before.clone().unwrap_or_default();
                    if let Some(gone) = old_c.get(name) {
                        v.retain(|d| !gone.contains(d));
                    }
                    v.extend(new_c.get(name).into_iter().flatten().cloned());
                    v.sort();
                    v.dedup();
                    (!v.is_empty()).then_some(v)
                };
                record_count += after.as_ref().map_or(0, Vec::len) as isize
                    - before.as_ref().map_or(0, Vec::len) as isize;
                if after != before {
                    overlay.insert(name.clone(), after);
                }
            }
        }
        // The apex SOA carries the new serial.
        if let Some(apex) = current(&overlay, &config.zone) {
            let soa = build::soa_data(&config);
            let apex: Vec<RData> = apex
                .into_iter()
                .map(|d| {
                    if matches!(d, RData::Soa { .. }) {
                        soa.clone()
                    } else {
                        d
                    }
                })
                .collect();
            overlay.insert(config.zone.as_str().into(), Some(apex));
        }
        if overlay.len() > (self.base.len() / 8).max(512) {
            return None;
        }
        Some(Index {
            dot_zone: self.dot_zone.clone(),
            base: self.base.clone(),
            overlay,
            record_count: record_count.max(0) as usize,
            config,
        })
    }

    /// True when this server is authoritative for `qname` (lowercase, no
    /// trailing dot): the cluster zone, or a reverse name it holds a PTR for.
    /// Anything else is forwarded.
    pub fn is_authoritative_for(&self, qname: &str) -> bool {
        self.in_zone(qname) || self.get(qname).is_some()
    }

    fn in_zone(&self, qname: &str) -> bool {
        qname == self.config.zone || qname.ends_with(&self.dot_zone)
    }

    /// Answers `qname`/`qtype`, or `None` when the name is not ours to answer
    /// (the caller forwards it). `qname` must be lowercase without the
    /// trailing dot (the root is the empty string).
    pub fn lookup(&self, qname: &str, qtype: u16) -> Option<Answer> {
        if let Some(rdatas) = self.get(qname) {
            return Some(self.answer_from(qname, rdatas, qtype));
        }
        if !self.in_zone(qname) {
            return self
                .short_service(qname)
                .map(|rdatas| self.answer_from(qname, rdatas, qtype));
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

    /// The records of Service `svc` in namespace `ns` for the short name
    /// `svc.ns`, when short names are on and that Service has addresses.
    fn short_service(&self, qname: &str) -> Option<&[RData]> {
        if !self.config.short_service_names {
            return None;
        }
        let (svc, ns) = qname.split_once('.')?;
        if svc.is_empty() || ns.is_empty() || ns.contains('.') {
            return None;
        }
        let rdatas = self.get(&format!("{qname}.svc.{}", self.config.zone))?;
        rdatas
            .iter()
            .any(|d| matches!(d, RData::A(_) | RData::Aaaa(_) | RData::Cname(_)))
            .then_some(rdatas)
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
                && let Some(tdatas) = self.get(target)
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
