//! The nftables proxy backend: podnet's own `podnet-proxy` table(s).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use podnet_core::proxy::nft::{
    NftTable, PROTOCOLS, TABLE, diff_states, parse_affinity_elements, ruleset,
};
use podnet_core::proxy::{Family, ProxyState};

use super::libnft::Session;
use super::{ProxyError, SyncReport, Target, flush_udp};
use crate::nft;

/// Applies proxy states as nftables tables. The first sync (and
/// [`NftProxy::full_sync`]) replaces the tables in one `nft -f`; later
/// syncs send one transaction of element adds and deletes.
#[derive(Debug)]
pub struct NftProxy {
    target: Target,
    applied: BTreeMap<Family, NftTable>,
    state: Option<ProxyState>,
    /// An in-process libnftables context (no process per change), opened
    /// on first use; `None` after a failed open means "use `nft -f`".
    session: Option<Option<Session>>,
}

impl NftProxy {
    /// An applier for `target`; nothing is touched until the first sync.
    pub fn new(target: Target) -> Self {
        NftProxy {
            target,
            applied: BTreeMap::new(),
            state: None,
            session: None,
        }
    }

    /// Makes the kernel hold `state`: the whole table the first time,
    /// only what changed afterwards (falling back to a full load if the
    /// kernel refuses the patch, e.g. because someone edited the table).
    pub fn sync(&mut self, state: &ProxyState) -> Result<SyncReport, ProxyError> {
        self.sync_owned(state.clone())
    }

    /// [`NftProxy::sync`] for a state the caller no longer needs (the
    /// planner's fresh output), which saves copying it.
    pub fn sync_owned(&mut self, owned: ProxyState) -> Result<SyncReport, ProxyError> {
        let Some(old) = self.state.take() else {
            return self.full_sync(&owned);
        };
        let state = &owned;
        let families = state.families();
        if families.iter().ne(self.applied.keys()) {
            return self.full_sync(state);
        }
        let mut script = String::new();
        let mut changes = 0;
        let mut diffs = Vec::new();
        for family in families {
            let d = diff_states(&old, state, family, &self.applied[&family]);
            if d.needs_full {
                return self.full_sync(state);
            }
            changes += d.element_changes();
            script.push_str(&d.script());
            diffs.push((family, d));
        }
        if !script.is_empty()
            && let Err(e) = self.apply(&script)
        {
            tracing::warn!(error = %e, "incremental proxy sync refused; loading the whole table");
            return self.full_sync(state);
        }
        for (family, d) in &diffs {
            if let Some(t) = self.applied.get_mut(family) {
                t.apply_diff(d);
            }
        }
        let flushed = self.after_change(&old, state)?;
        self.state = Some(owned);
        Ok(SyncReport {
            full: false,
            element_changes: changes,
            flushed,
        })
    }

    /// Replaces the tables with `state`'s in one transaction (start-up,
    /// resync on demand). Tables of a family no longer used are deleted in
    /// the same transaction.
    pub fn full_sync(&mut self, state: &ProxyState) -> Result<SyncReport, ProxyError> {
        let tables = tables(state);
        let mut script = String::new();
        for t in tables.values() {
            script.push_str(&t.full_script());
        }
        for family in [Family::V4, Family::V6] {
            if !tables.contains_key(&family) {
                let q = format!("{} {TABLE}", family.nft_family());
                script.push_str(&format!("table {q} {{}}\ndelete table {q}\n"));
            }
        }
        self.apply(&script)?;
        self.applied = tables;
        let old = self.state.replace(state.clone()).unwrap_or_default();
        let flushed = self.after_change(&old, state)?;
        Ok(SyncReport {
            full: true,
            element_changes: 0,
            flushed,
        })
    }

    /// Loads `script` as one transaction, in process when libnftables is
    /// there, else through `nft -f`.
    fn apply(&mut self, script: &str) -> Result<(), ProxyError> {
        let target = &self.target;
        let session = self.session.get_or_insert_with(|| {
            let s = Session::open(target);
            if s.is_none() {
                tracing::info!("libnftables.so.1 not usable; applying through `nft -f`");
            }
            s
        });
        match session {
            Some(s) => s.run(script).map_err(|stderr| {
                ProxyError::Nft(nft::NftError::Rejected {
                    what: "transaction".into(),
                    stderr,
                })
            }),
            None => Ok(nft::apply(self.target.nft(), script)?),
        }
    }

    /// Deletes podnet's proxy tables (when the proxy is switched off).
    pub fn remove(&mut self) -> Result<(), ProxyError> {
        let mut script = String::new();
        for family in [Family::V4, Family::V6] {
            let q = format!("{} {TABLE}", family.nft_family());
            script.push_str(&format!("table {q} {{}}\ndelete table {q}\n"));
        }
        nft::apply(self.target.nft(), &script)?;
        self.applied.clear();
        self.state = None;
        Ok(())
    }

    /// The tables as last applied (what `podnet rules` can show).
    pub fn applied(&self) -> impl Iterator<Item = &NftTable> {
        self.applied.values()
    }

    fn after_change(&self, old: &ProxyState, new: &ProxyState) -> Result<usize, ProxyError> {
        let mut n = flush_udp(&self.target, old, new)?;
        if lost_affinity_endpoint(old, new) {
            n += self.clean_affinity(new)?;
        }
        Ok(n)
    }

    /// Deletes affinity entries that point at endpoints no longer in
    /// `state`, so a sticky client moves on at once instead of after its
    /// timeout.
    fn clean_affinity(&self, state: &ProxyState) -> Result<usize, ProxyError> {
        // (service ip, proto, port) -> live endpoints
        let mut live: BTreeMap<ServiceKey<'_>, BTreeSet<(IpAddr, u16)>> = BTreeMap::new();
        for sp in state.ports.values() {
            for ip in sp.cluster_ips.iter().chain(&sp.external_ips) {
                live.entry((*ip, sp.name.protocol.as_str(), sp.port))
                    .or_default()
                    .extend(sp.endpoints.iter().map(|e| (e.addr, e.port)));
            }
        }
        let mut removed = 0;
        for family in self.applied.keys() {
            let fam = family.nft_family();
            for proto in PROTOCOLS {
                let map = format!("affinity-{proto}");
                let listing = nft::run(self.target.nft(), &["list", "map", fam, TABLE, &map])?;
                let mut stale = Vec::new();
                for (key, ep, port) in parse_affinity_elements(&listing) {
                    let parts: Vec<&str> = key.split(" . ").collect();
                    let [_, svc, proto, sport] = parts.as_slice() else {
                        continue;
                    };
                    let (Ok(svc), Ok(sport)) = (svc.parse::<IpAddr>(), sport.parse::<u16>()) else {
                        continue;
                    };
                    let ok = live
                        .get(&(svc, *proto, sport))
                        .is_some_and(|eps| eps.contains(&(ep, port)));
                    if !ok {
                        stale.push(key);
                    }
                }
                if stale.is_empty() {
                    continue;
                }
                let script = format!(
                    "delete element {fam} {TABLE} {map} {{ {} }}\n",
                    stale.join(", ")
                );
                // An entry may expire between listing and deleting; that
                // only means there was less to clean.
                match nft::apply(self.target.nft(), &script) {
                    Ok(()) => removed += stale.len(),
                    Err(e) => tracing::debug!(error = %e, "affinity cleanup raced with expiry"),
                }
            }
        }
        Ok(removed)
    }
}

/// A service address, protocol and port.
type ServiceKey<'a> = (IpAddr, &'a str, u16);

fn tables(state: &ProxyState) -> BTreeMap<Family, NftTable> {
    state
        .families()
        .into_iter()
        .map(|f| (f, ruleset(state, f)))
        .collect()
}

/// Whether a service port with ClientIP affinity lost an endpoint.
fn lost_affinity_endpoint(old: &ProxyState, new: &ProxyState) -> bool {
    old.ports.iter().any(|(name, op)| {
        op.affinity_timeout.is_some()
            && op.endpoints.iter().any(|e| {
                new.ports.get(name).is_none_or(|np| {
                    !np.endpoints
                        .iter()
                        .any(|n| n.addr == e.addr && n.port == e.port)
                })
            })
    })
}
