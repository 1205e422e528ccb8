//! The DNS wire format on the hot path: a strict query parser and a response
//! encoder with name compression. Written by hand (not through
//! hickory-proto's object model) because every query passes here: parsing
//! borrows the packet, encoding writes straight into one reusable buffer.
//! hickory-proto stays the independent decoder that the tests and the fuzz
//! target check this code against.

use podnet_core::dns::{Answer, RData, Rcode, Record, rtype};

/// Size of the DNS header.
pub const HEADER_LEN: usize = 12;
/// The UDP payload size podnet-dns advertises and accepts at most (the
/// DNS-flag-day value that avoids IP fragmentation).
pub const OUR_UDP_PAYLOAD: u16 = 1232;
/// The classic UDP limit without EDNS0.
pub const PLAIN_UDP_LIMIT: usize = 512;

/// Response codes podnet-dns emits.
pub mod rcode {
    /// No error.
    pub const NOERROR: u16 = 0;
    /// The query could not be parsed.
    pub const FORMERR: u16 = 1;
    /// The server failed (upstream unreachable).
    pub const SERVFAIL: u16 = 2;
    /// The name does not exist.
    pub const NXDOMAIN: u16 = 3;
    /// Opcode not implemented.
    pub const NOTIMP: u16 = 4;
    /// Refused (class other than IN, forwarding disabled).
    pub const REFUSED: u16 = 5;
    /// EDNS version not supported (extended rcode, 16).
    pub const BADVERS: u16 = 16;
}

/// The EDNS0 OPT record of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    /// The client's UDP payload size (at least 512).
    pub payload: u16,
    /// EDNS version (only 0 is supported).
    pub version: u8,
}

/// A parsed, well-formed query borrowing its packet.
#[derive(Debug, PartialEq, Eq)]
pub struct Query<'a> {
    /// Transaction id.
    pub id: u16,
    /// Header flags as sent (RD and CD are echoed).
    pub flags: u16,
    /// The question section, raw (name as sent, type, class): echoed in the
    /// answer so the question's case is preserved.
    pub question: &'a [u8],
    /// The question name in wire form (labels, terminating zero).
    pub qname_wire: &'a [u8],
    /// The question name lowercased, dotted, without the trailing dot.
    pub qname: String,
    /// The question type.
    pub qtype: u16,
    /// The question class.
    pub qclass: u16,
    /// The OPT record, when the client sent one.
    pub edns: Option<Edns>,
}

impl Query<'_> {
    /// The largest response the client takes over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => usize::from(e.payload.clamp(512, OUR_UDP_PAYLOAD)),
            None => PLAIN_UDP_LIMIT,
        }
    }
}

/// Why a packet is not answered normally.
#[derive(Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not worth an answer (shorter than a header, or a response).
    Drop,
    /// Answer with only a header carrying this rcode (FORMERR, NOTIMP,
    /// BADVERS); `id` and `flags` echo the query's.
    Error {
        /// Transaction id of the query.
        id: u16,
        /// Flags of the query.
        flags: u16,
        /// The rcode to answer with (may be extended: BADVERS).
        rcode: u16,
        /// Whether the query carried an OPT record (echo one back).
        edns: bool,
    },
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses the name at `at` strictly for a question: no compression pointers
/// (there is nothing earlier to point at), labels of 1..=63 bytes, at most
/// 255 bytes. Returns the end offset and the lowercase dotted name.
fn parse_question_name(b: &[u8], mut at: usize) -> Option<(usize, String)> {
    let mut name = String::new();
    let mut wire_len = 0usize;
    loop {
        let len = usize::from(*b.get(at)?);
        wire_len += 1 + len;
        if wire_len > 255 {
            return None;
        }
        if len == 0 {
            return Some((at + 1, name));
        }
        if len > 63 {
            // Compression pointers (0xC0) and the obsolete extended label
            // types (0x40, 0x80) have no place in a question.
            return None;
        }
        let label = b.get(at + 1..at + 1 + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        for &c in label {
            // Labels are octets; a dot or non-ASCII inside one cannot be in
            // our zone, keep it distinct so it never matches by accident.
            match c {
                b'.' => name.push_str("\\."),
                c if c.is_ascii() && !c.is_ascii_control() => {
                    name.push(char::from(c.to_ascii_lowercase()))
                }
                c => {
                    name.push('\\');
                    name.push_str(&format!("{c:03}"));
                }
            }
        }
        at += 1 + len;
    }
}

/// Parses a query strictly. Anything odd is a [`Reject`]: FORMERR when the
/// header is readable, a drop otherwise. Never panics on any input.
pub fn parse_query(b: &[u8]) -> Result<Query<'_>, Reject> {
    if b.len() < HEADER_LEN {
        return Err(Reject::Drop);
    }
    let id = u16::from_be_bytes([b[0], b[1]]);
    let flags = u16::from_be_bytes([b[2], b[3]]);
    if flags & 0x8000 != 0 {
        return Err(Reject::Drop); // a response: never answer one (no loops)
    }
    let err = |rcode| Reject::Error {
        id,
        flags,
        rcode,
        edns: false,
    };
    let opcode = (flags >> 11) & 0xf;
    if opcode != 0 {
        return Err(err(rcode::NOTIMP));
    }
    let (qd, an, ns, ar) = (be16(b, 4), be16(b, 6), be16(b, 8), be16(b, 10));
    if qd != Some(1) || an != Some(0) || ns != Some(0) || ar.is_none_or(|n| n > 1) {
        return Err(err(rcode::FORMERR));
    }
    let (name_end, qname) = parse_question_name(b, HEADER_LEN).ok_or(err(rcode::FORMERR))?;
    let qtype = be16(b, name_end).ok_or(err(rcode::FORMERR))?;
    let qclass = be16(b, name_end + 2).ok_or(err(rcode::FORMERR))?;
    let q_end = name_end + 4;
    let mut edns = None;
    let mut at = q_end;
    if ar == Some(1) {
        // The only additional record a query may carry here: OPT at the root.
        if b.get(at) != Some(&0) || be16(b, at + 1) != Some(rtype::OPT) {
            return Err(err(rcode::FORMERR));
        }
        let payload = be16(b, at + 3).ok_or(err(rcode::FORMERR))?;
        let ttl_hi = be16(b, at + 5).ok_or(err(rcode::FORMERR))?;
        be16(b, at + 7).ok_or(err(rcode::FORMERR))?;
        let rdlen = usize::from(be16(b, at + 9).ok_or(err(rcode::FORMERR))?);
        let rdata_start = at + 11;
        let rdata = b
            .get(rdata_start..rdata_start + rdlen)
            .ok_or(err(rcode::FORMERR))?;
        // Options must tile the rdata exactly.
        let mut o = 0;
        while o < rdata.len() {
            let olen = usize::from(be16(rdata, o + 2).ok_or(err(rcode::FORMERR))?);
            o += 4 + olen;
        }
        if o != rdata.len() {
            return Err(err(rcode::FORMERR));
        }
        let version = (ttl_hi & 0xff) as u8;
        at = rdata_start + rdlen;
        if version != 0 {
            return Err(Reject::Error {
                id,
                flags,
                rcode: rcode::BADVERS,
                edns: true,
            });
        }
        edns = Some(Edns {
            payload: payload.max(512),
            version,
        });
    }
    if at != b.len() {
        return Err(Reject::Error {
            id,
            flags,
            rcode: rcode::FORMERR,
            edns: edns.is_some(),
        });
    }
    Ok(Query {
        id,
        flags,
        question: &b[HEADER_LEN..q_end],
        qname_wire: &b[HEADER_LEN..name_end],
        qname,
        qtype,
        qclass,
        edns,
    })
}

/// Flags of a response to a query with `query_flags`: QR, the opcode, RD
/// and CD echoed, RA set (out-of-zone names are resolved), AA and TC as given.
pub fn response_flags(query_flags: u16, aa: bool, tc: bool, rcode: u16) -> u16 {
    let mut f = 0x8000 | (query_flags & 0x7800) | (query_flags & 0x0100) | 0x0080;
    f |= query_flags & 0x0010; // CD
    if aa {
        f |= 0x0400;
    }
    if tc {
        f |= 0x0200;
    }
    f | (rcode & 0xf)
}

fn push16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn push32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends the OPT record of a response (our payload size, the extended
/// part of `rcode`).
pub fn push_opt(out: &mut Vec<u8>, rcode: u16) {
    out.push(0);
    push16(out, rtype::OPT);
    push16(out, OUR_UDP_PAYLOAD);
    out.push((rcode >> 4) as u8);
    out.push(0); // version
    push16(out, 0); // flags
    push16(out, 0); // rdlen
}

/// Writes the header-only answer for a rejected query into `out`.
pub fn encode_reject(reject: &Reject, out: &mut Vec<u8>) -> bool {
    let Reject::Error {
        id,
        flags,
        rcode,
        edns,
    } = *reject
    else {
        return false;
    };
    out.clear();
    push16(out, id);
    push16(out, response_flags(flags, false, false, rcode));
    push16(out, 0);
    push16(out, 0);
    push16(out, 0);
    push16(out, u16::from(edns));
    if edns {
        push_opt(out, rcode);
    }
    true
}

/// Name compression state: the names (lowercase suffixes) already written
/// and their offsets.
struct Compressor<'a> {
    seen: Vec<(&'a str, u16)>,
}

impl<'a> Compressor<'a> {
    fn new(qname: &'a str) -> Self {
        let mut c = Compressor {
            seen: Vec::with_capacity(16),
        };
        // Every suffix of the question name, at its offset in the question.
        let mut off = HEADER_LEN;
        let mut rest = qname;
        while !rest.is_empty() && !qname.contains('\\') {
            c.seen.push((rest, off as u16));
            match rest.split_once('.') {
                Some((label, tail)) => {
                    off += 1 + label.len();
                    rest = tail;
                }
                None => break,
            }
        }
        c
    }

    /// Writes `name` (lowercase dotted; empty is the root), compressing
    /// against earlier names when `compress`.
    fn write(&mut self, out: &mut Vec<u8>, name: &'a str, compress: bool) {
        let mut rest = name;
        while !rest.is_empty() {
            if compress && let Some(&(_, off)) = self.seen.iter().find(|(s, _)| *s == rest) {
                push16(out, 0xC000 | off);
                return;
            }
            let here = out.len();
            let (label, tail) = rest.split_once('.').unwrap_or((rest, ""));
            if compress && here < 0x3FFF {
                self.seen.push((rest, here as u16));
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
            rest = tail;
        }
        out.push(0);
    }
}

fn write_record<'a>(out: &mut Vec<u8>, c: &mut Compressor<'a>, r: &'a Record) {
    c.write(out, &r.name, true);
    push16(out, r.data.rtype());
    push16(out, 1); // IN
    push32(out, r.ttl);
    let len_at = out.len();
    push16(out, 0);
    match &r.data {
        RData::A(v4) => out.extend_from_slice(&v4.octets()),
        RData::Aaaa(v6) => out.extend_from_slice(&v6.octets()),
        RData::Cname(n) | RData::Ptr(n) | RData::Ns(n) => c.write(out, n, true),
        RData::Srv {
            priority,
            weight,
            port,
            target,
        } => {
            push16(out, *priority);
            push16(out, *weight);
            push16(out, *port);
            c.write(out, target, false); // RFC 2782: no compression
        }
        RData::Txt(s) => {
            for chunk in s.as_bytes().chunks(255) {
                out.push(chunk.len() as u8);
                out.extend_from_slice(chunk);
            }
        }
        RData::Soa {
            mname,
            rname,
            serial,
            refresh,
            retry,
            expire,
            minimum,
        } => {
            c.write(out, mname, true);
            c.write(out, rname, true);
            for v in [serial, refresh, retry, expire, minimum] {
                push32(out, *v);
            }
        }
    }
    let rdlen = (out.len() - len_at - 2) as u16;
    out[len_at..len_at + 2].copy_from_slice(&rdlen.to_be_bytes());
}

/// Encodes the authoritative answer `ans` to `q` into `out`, at most `limit`
/// bytes: a response that does not fit is cut to its header and question
/// with TC set, so the client retries over TCP.
pub fn encode_answer(q: &Query<'_>, ans: &Answer, limit: usize, out: &mut Vec<u8>) {
    let rc = match ans.rcode {
        Rcode::NoError => rcode::NOERROR,
        Rcode::NxDomain => rcode::NXDOMAIN,
    };
    out.clear();
    push16(out, q.id);
    push16(out, response_flags(q.flags, true, false, rc));
    push16(out, 1);
    push16(out, ans.answers.len() as u16);
    push16(out, ans.authority.len() as u16);
    push16(
        out,
        (ans.additional.len() + usize::from(q.edns.is_some())) as u16,
    );
    out.extend_from_slice(q.question);
    let mut c = Compressor::new(&q.qname);
    for r in ans
        .answers
        .iter()
        .chain(&ans.authority)
        .chain(&ans.additional)
    {
        write_record(out, &mut c, r);
    }
    if q.edns.is_some() {
        push_opt(out, rc);
    }
    if out.len() > limit {
        truncate(q, out, rc, true);
    }
}

/// Cuts `out` (a response to `q`) to header + question (+ OPT), setting TC
/// when `tc`, with `rc` as rcode.
pub fn truncate(q: &Query<'_>, out: &mut Vec<u8>, rc: u16, tc: bool) {
    let aa = out.len() >= 4 && out[2] & 0x04 != 0;
    out.truncate(HEADER_LEN + q.question.len());
    let flags = response_flags(q.flags, aa, tc, rc);
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    out[4..6].copy_from_slice(&1u16.to_be_bytes());
    out[6..12].copy_from_slice(&[0; 6]);
    if q.edns.is_some() {
        out[10..12].copy_from_slice(&1u16.to_be_bytes());
        push_opt(out, rc);
    }
}

/// Writes a header + question response with `rc` (SERVFAIL, REFUSED).
pub fn encode_status(q: &Query<'_>, rc: u16, out: &mut Vec<u8>) {
    out.clear();
    push16(out, q.id);
    push16(out, response_flags(q.flags, false, false, rc));
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(q.question);
    if q.edns.is_some() {
        out[10..12].copy_from_slice(&1u16.to_be_bytes());
        push_opt(out, rc);
    }
}

/// Reads a (possibly compressed) name at `at`: the lowercase dotted name
/// and the offset after it; `None` when it runs off the end, loops or holds
/// bytes that are not plain host-name characters.
pub fn read_name(b: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut hops = 0;
    let mut end = None;
    loop {
        let len = *b.get(at)?;
        match len {
            0 => return Some((name, end.unwrap_or(at + 1))),
            l if l & 0xC0 == 0xC0 => {
                end.get_or_insert(at + 2);
                hops += 1;
                if hops > 64 {
                    return None;
                }
                at = usize::from(be16(b, at)? & 0x3FFF);
            }
            l if l > 63 => return None,
            l => {
                let label = b.get(at + 1..at + 1 + usize::from(l))?;
                if !label
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
                {
                    return None;
                }
                if !name.is_empty() {
                    name.push('.');
                }
                name.extend(label.iter().map(|c| char::from(c.to_ascii_lowercase())));
                if name.len() > 253 {
                    return None;
                }
                at += 1 + usize::from(l);
            }
        }
    }
}

/// A query packet for `name`/`qtype` (RD set), for questions the server
/// asks itself (chasing a CNAME out of the zone).
pub fn build_query(name: &str, qtype: u16) -> Vec<u8> {
    let mut b = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.').filter(|l| !l.is_empty()) {
        b.push(l.len().min(63) as u8);
        b.extend_from_slice(&l.as_bytes()[..l.len().min(63)]);
    }
    b.push(0);
    push16(&mut b, qtype);
    push16(&mut b, 1);
    b
}

/// Skips a (possibly compressed) name in a message, returning the offset
/// after it; `None` when it runs off the end or loops.
pub fn skip_name(b: &[u8], mut at: usize) -> Option<usize> {
    let mut hops = 0;
    let mut end = None;
    loop {
        let len = *b.get(at)?;
        match len {
            0 => return Some(end.unwrap_or(at + 1)),
            l if l & 0xC0 == 0xC0 => {
                let ptr = usize::from(be16(b, at)? & 0x3FFF);
                end.get_or_insert(at + 2);
                hops += 1;
                if hops > 64 || ptr >= b.len() {
                    return None;
                }
                at = ptr;
            }
            l if l > 63 => return None,
            l => at += 1 + usize::from(l),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
        let mut b = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(edns.is_some()),
        ];
        for l in name.split('.').filter(|l| !l.is_empty()) {
            b.push(l.len() as u8);
            b.extend_from_slice(l.as_bytes());
        }
        b.push(0);
        b.extend_from_slice(&qtype.to_be_bytes());
        b.extend_from_slice(&[0, 1]);
        if let Some(p) = edns {
            b.extend_from_slice(&[0, 0, 41]);
            b.extend_from_slice(&p.to_be_bytes());
            b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        b
    }

    #[test]
    fn parses_and_lowercases() {
        let b = query("Web.Default.SVC.cluster.local", 1, Some(4096));
        let q = parse_query(&b).unwrap();
        assert_eq!(q.qname, "web.default.svc.cluster.local");
        assert_eq!(q.qtype, 1);
        assert_eq!(q.id, 0x1234);
        assert_eq!(
            q.edns,
            Some(Edns {
                payload: 4096,
                version: 0
            })
        );
        assert_eq!(q.udp_limit(), 1232);
        assert_eq!(&q.question[1..4], b"Web");
    }

    #[test]
    fn rejects() {
        assert_eq!(parse_query(&[0; 5]), Err(Reject::Drop));
        let mut b = query("a.b", 1, None);
        b[2] |= 0x80;
        assert_eq!(parse_query(&b), Err(Reject::Drop));
        let fe = |b: &[u8]| {
            matches!(
                parse_query(b),
                Err(Reject::Error {
                    rcode: rcode::FORMERR,
                    ..
                })
            )
        };
        let mut b = query("a.b", 1, None);
        b[5] = 0;
        assert!(fe(&b), "qdcount 0");
        b[5] = 2;
        assert!(fe(&b), "qdcount 2");
        let mut b = query("a.b", 1, None);
        b.push(7);
        assert!(fe(&b), "trailing garbage");
        let mut b = query("", 1, None);
        b.truncate(12);
        b.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert!(fe(&b), "pointer loop");
        let long = "a".repeat(64);
        assert!(fe(&query(&long, 1, None)), "label > 63");
        let name = vec!["abcdefghi"; 30].join(".");
        assert!(fe(&query(&name, 1, None)), "name > 255");
        let mut b = query("a.b", 1, Some(1232));
        let n = b.len();
        b[n - 1] = 5; // rdlen 5 but no rdata
        assert!(fe(&b), "bad OPT");
        let mut b = query("a.b", 1, Some(1232));
        let n = b.len();
        b[n - 5] = 1; // version 1
        assert!(matches!(
            parse_query(&b),
            Err(Reject::Error {
                rcode: rcode::BADVERS,
                ..
            })
        ));
    }

    #[test]
    fn skip_name_handles_loops() {
        let b = [0u8, 0, 0xC0, 2];
        assert_eq!(skip_name(&b, 2), None);
        let b = [1u8, b'a', 0, 0xC0, 0];
        assert_eq!(skip_name(&b, 3), Some(5));
    }
}
