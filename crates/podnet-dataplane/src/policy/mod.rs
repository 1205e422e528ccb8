//! The policy applier: carries a node's [`PolicyState`] into its kernel.
//!
//! The first sync (and every resync) replaces podnet's policy table in one
//! `nft -f` transaction; later syncs send only element adds and deletes, one
//! transaction each. The table is never removed when the applier goes away:
//! isolated pods stay isolated while the agent is down (fail closed).

use podnet_core::policy::render::{DropCount, DropCounters, drop_set};
use podnet_core::policy::{Direction, PolicyState, TABLE, diff, render_drop_metrics, render_full};

use crate::nft::{self, Namespace, NftError};

/// A failed policy sync or counter read.
#[derive(Debug, thiserror::Error)]
pub enum PolicyApplyError {
    /// nft refused the transaction; the kernel keeps its previous state.
    #[error("applying the policy table: {0}")]
    Nft(#[from] NftError),
    /// nft's listing could not be understood.
    #[error("reading policy counters: {0}")]
    Parse(String),
}

/// What one sync did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    /// The whole table was (re)loaded.
    Full,
    /// Only elements changed; this many.
    Elements(usize),
    /// Nothing to do.
    Unchanged,
}

/// Keeps a node's policy table equal to the desired state with the fewest
/// kernel transactions.
#[derive(Debug)]
pub struct PolicyApplier<'a> {
    ns: Namespace<'a>,
    applied: Option<PolicyState>,
}

impl<'a> PolicyApplier<'a> {
    /// An applier for the node namespace `ns`; it knows nothing of the
    /// kernel yet, so its first sync is a full (atomic) replacement.
    pub fn new(ns: Namespace<'a>) -> Self {
        PolicyApplier { ns, applied: None }
    }

    /// The state last applied, if any.
    pub fn applied(&self) -> Option<&PolicyState> {
        self.applied.as_ref()
    }

    /// Makes the kernel hold `desired`: a full load the first time, element
    /// changes after. If an element transaction fails (the kernel drifted),
    /// falls back to a full load.
    pub fn sync(&mut self, desired: &PolicyState) -> Result<SyncKind, PolicyApplyError> {
        let Some(old) = &self.applied else {
            return self.resync(desired);
        };
        let d = diff(old, desired);
        if d.is_empty() {
            return Ok(SyncKind::Unchanged);
        }
        match nft::apply(self.ns, &d.render()) {
            Ok(()) => {
                self.applied = Some(desired.clone());
                Ok(SyncKind::Elements(d.len()))
            }
            Err(e) => {
                tracing::warn!(error = %e, "policy element update failed; reloading the table");
                self.resync(desired)
            }
        }
    }

    /// Replaces the whole table in one transaction (start-up, on demand).
    pub fn resync(&mut self, desired: &PolicyState) -> Result<SyncKind, PolicyApplyError> {
        self.applied = None;
        nft::apply(self.ns, &render_full(desired))?;
        self.applied = Some(desired.clone());
        Ok(SyncKind::Full)
    }

    /// Dropped packets per local pod and direction, as the kernel counted
    /// them, plus the drops of local addresses no pod is known for.
    pub fn drop_counts(&self) -> Result<DropCounters, PolicyApplyError> {
        let mut c = DropCounters::default();
        for dir in [Direction::Ingress, Direction::Egress] {
            let text = nft::run(self.ns, &table_args("set", drop_set(dir)))?;
            c.pods.extend(parse_drop_set(dir, &text)?);
        }
        for (slot, name) in [
            (&mut c.unknown_ingress, "unknown_in"),
            (&mut c.unknown_egress, "unknown_eg"),
        ] {
            let text = nft::run(self.ns, &table_args("counter", name))?;
            *slot = field(&text, "packets").ok_or_else(|| {
                PolicyApplyError::Parse(format!("no packets in counter {name}: {text}"))
            })?;
        }
        Ok(c)
    }

    /// The drop counters as Prometheus text, attributed with the applied
    /// state (for the agent's `/metrics`).
    pub fn metrics(&self) -> Result<String, PolicyApplyError> {
        let counters = self.drop_counts()?;
        let empty = PolicyState::default();
        Ok(render_drop_metrics(
            self.applied.as_ref().unwrap_or(&empty),
            &counters,
        ))
    }
}

fn table_args<'s>(kind: &'s str, name: &'s str) -> [&'s str; 5] {
    let (family, table) = TABLE.split_once(' ').expect("family and name");
    ["list", kind, family, table, name]
}

fn field(text: &str, key: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == key {
            return words.next()?.trim_end_matches(',').parse().ok();
        }
    }
    None
}

/// Parses `elements = { 10.244.1.2 counter packets 3 bytes 180, ... }`.
fn parse_drop_set(dir: Direction, text: &str) -> Result<Vec<DropCount>, PolicyApplyError> {
    let Some(start) = text.find("elements = {") else {
        return Ok(Vec::new());
    };
    let body = &text[start + "elements = {".len()..];
    let body = &body[..body.find('}').unwrap_or(body.len())];
    let mut out = Vec::new();
    for item in body.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let addr = item
            .split_whitespace()
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| PolicyApplyError::Parse(format!("drop element {item:?}")))?;
        let (Some(packets), Some(bytes)) = (field(item, "packets"), field(item, "bytes")) else {
            return Err(PolicyApplyError::Parse(format!("drop element {item:?}")));
        };
        out.push(DropCount {
            dir,
            addr,
            packets,
            bytes,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_drop_set_listing() {
        let text = "table inet podnet-policy {\n\tset in_drops {\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic\n\t\tcounter\n\t\telements = { 10.244.1.10 counter packets 3 bytes 180, 10.244.1.11 counter packets 1 bytes 60 }\n\t}\n}\n";
        let d = parse_drop_set(Direction::Ingress, text).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].addr.to_string(), "10.244.1.10");
        assert_eq!((d[0].packets, d[0].bytes), (3, 180));
        assert_eq!(d[1].packets, 1);
        assert!(
            parse_drop_set(Direction::Egress, "set eg_drops {}")
                .unwrap()
                .is_empty()
        );
        assert!(parse_drop_set(Direction::Egress, "elements = { bogus }").is_err());
    }
}
