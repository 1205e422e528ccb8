//! A table's chains and how many rules each holds, read over netlink.
//!
//! Why: the agent checks every few seconds that its tables are still whole
//! (a `flush ruleset`, a deleted table or a flushed chain is repaired).
//! `nft list chain` answers that, but nft first fills its cache, and for a
//! chain whose rules look up sets that means every element of those sets:
//! at 10,000 services the proxy's check cost 1.2 s of CPU and left the
//! agent 200 MiB larger. The kernel can answer without any element: a
//! `NFT_MSG_GETCHAIN` dump names the chains, a `NFT_MSG_GETRULE` dump
//! filtered by table sends one message per rule (its expressions name a
//! set, never its elements), so the cost follows the rule count alone.

use std::collections::BTreeMap;
use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR};
use netlink_sys::Socket;

use crate::nft::Namespace;
use crate::nft_elements::{
    Family, NFNL_SUBSYS_NFTABLES, NLMSG_HDRLEN, Writer, socket_in, u16_at, u32_at,
};

const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
/// nlmsghdr + nfgenmsg.
const NFNL_HDRLEN: usize = NLMSG_HDRLEN + 4;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// A failed read of a table's chains.
#[derive(Debug, thiserror::Error)]
pub enum ChainReadError {
    /// The netlink socket could not be made or used.
    #[error("nf_tables netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused the request.
    #[error("nf_tables refused {what}: {source}")]
    Refused {
        /// The request, e.g. `rule dump of inet podnet-policy`.
        what: String,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
    /// A reply that does not parse as nf_tables netlink.
    #[error("nf_tables reply: {0}")]
    Protocol(String),
}

/// A table's chains as the kernel holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableChains {
    /// Every chain of the table, with its number of rules.
    pub rules: BTreeMap<String, usize>,
    /// Bytes the kernel sent for the whole read: it follows the rule
    /// count, never the sets' sizes (what a caller or test can check).
    pub received_bytes: u64,
}

/// The chains of table `family name` in `ns` with the number of rules in
/// each (chains without rules included); `None` when there is no such
/// table. Set elements are never read.
pub fn chain_rule_counts(
    ns: Namespace<'_>,
    family: Family,
    name: &str,
) -> Result<Option<TableChains>, ChainReadError> {
    let socket = socket_in(ns).map_err(ChainReadError::Socket)?;
    let mut reader = Reader {
        socket,
        buf: vec![0; 64 * 1024],
        seq: 1,
        received_bytes: 0,
    };
    let table = format!("{family} {name}");
    // The table first: a dump filtered by a table that is gone is empty,
    // which must not read as "a table with no chains".
    match reader.request(
        NFT_MSG_GETTABLE,
        NLM_F_REQUEST | NLM_F_ACK,
        family,
        &[(NFTA_TABLE_NAME, name)],
        |_| Ok(()),
    ) {
        Ok(()) => {}
        Err(ChainReadError::Refused { source, .. })
            if source.raw_os_error() == Some(libc::ENOENT) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e.naming(&format!("table {table}"))),
    }
    let mut chains = BTreeMap::new();
    // Chain dumps are not filtered by table in every kernel: filter here.
    reader
        .request(
            NFT_MSG_GETCHAIN,
            NLM_F_REQUEST | NLM_F_DUMP,
            family,
            &[],
            |attrs| {
                if attr_str(attrs, NFTA_CHAIN_TABLE)? == Some(name)
                    && let Some(chain) = attr_str(attrs, NFTA_CHAIN_NAME)?
                {
                    chains.insert(chain.to_string(), 0);
                }
                Ok(())
            },
        )
        .map_err(|e| e.naming(&format!("chain dump of {table}")))?;
    reader
        .request(
            NFT_MSG_GETRULE,
            NLM_F_REQUEST | NLM_F_DUMP,
            family,
            &[(NFTA_RULE_TABLE, name)],
            |attrs| {
                if attr_str(attrs, NFTA_RULE_TABLE)? == Some(name)
                    && let Some(chain) = attr_str(attrs, NFTA_RULE_CHAIN)?
                {
                    *chains.entry(chain.to_string()).or_default() += 1;
                }
                Ok(())
            },
        )
        .map_err(|e| e.naming(&format!("rule dump of {table}")))?;
    Ok(Some(TableChains {
        rules: chains,
        received_bytes: reader.received_bytes,
    }))
}

impl ChainReadError {
    fn naming(self, what: &str) -> Self {
        match self {
            ChainReadError::Refused { source, .. } => ChainReadError::Refused {
                what: what.to_string(),
                source,
            },
            e => e,
        }
    }
}

struct Reader {
    socket: Socket,
    buf: Vec<u8>,
    seq: u32,
    received_bytes: u64,
}

impl Reader {
    /// Sends one request and hands the attributes of every nf_tables
    /// message of the answer to `each`, until the dump's end (or the ACK
    /// of a plain request).
    fn request(
        &mut self,
        ty: u16,
        flags: u16,
        family: Family,
        attrs: &[(u16, &str)],
        mut each: impl FnMut(&[u8]) -> Result<(), ChainReadError>,
    ) -> Result<(), ChainReadError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut w = Writer::default();
        let m = w.begin_msg(
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            flags,
            seq,
            family.nfproto(),
            0,
        );
        for (t, v) in attrs {
            w.attr_str(*t, v);
        }
        w.end_msg(m);
        self.socket
            .send(&w.buf, 0)
            .map_err(ChainReadError::Socket)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        loop {
            let n = {
                let mut slice = &mut self.buf[..];
                self.socket
                    .recv(&mut slice, 0)
                    .map_err(ChainReadError::Socket)?
            };
            self.received_bytes += n as u64;
            let mut data = &self.buf[..n];
            while data.len() >= NLMSG_HDRLEN {
                let len = u32_at(data, 0) as usize;
                if len < NLMSG_HDRLEN || len > data.len() {
                    return Err(ChainReadError::Protocol(format!(
                        "message of {len} bytes in a datagram of {}",
                        data.len()
                    )));
                }
                let (msg, rest) = data.split_at(len);
                data = rest.get(len.next_multiple_of(4) - len..).unwrap_or(&[]);
                if u32_at(msg, 8) != seq {
                    continue; // an answer to an earlier request
                }
                match u16_at(msg, 4) {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let errno = msg
                            .get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
                            .map(|b| -(u32_at(b, 0) as i32))
                            .ok_or_else(|| ChainReadError::Protocol("short error".into()))?;
                        if errno != 0 {
                            return Err(ChainReadError::Refused {
                                what: String::new(),
                                source: io::Error::from_raw_os_error(errno),
                            });
                        }
                        if !dump {
                            return Ok(()); // the ACK comes after the answer
                        }
                    }
                    _ => each(msg.get(NFNL_HDRLEN..).ok_or_else(|| {
                        ChainReadError::Protocol("message shorter than its header".into())
                    })?)?,
                }
            }
        }
    }
}

/// The string attribute `ty` of a message's attributes (NUL-terminated).
fn attr_str(mut attrs: &[u8], ty: u16) -> Result<Option<&str>, ChainReadError> {
    while attrs.len() >= 4 {
        let len = u16_at(attrs, 0) as usize;
        if len < 4 || len > attrs.len() {
            return Err(ChainReadError::Protocol(format!(
                "attribute of {len} bytes in {} left",
                attrs.len()
            )));
        }
        if u16_at(attrs, 2) & NLA_TYPE_MASK == ty {
            let v = &attrs[4..len];
            let v = v.split(|b| *b == 0).next().unwrap_or(&[]);
            return std::str::from_utf8(v)
                .map(Some)
                .map_err(|_| ChainReadError::Protocol("a name that is not UTF-8".into()));
        }
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Ok(None)
}
