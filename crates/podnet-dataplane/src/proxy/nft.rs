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

    fn after_change(&mut self, old: &ProxyState, new: &ProxyState) -> Result<usize, ProxyError> {
        let mut n = flush_udp(&self.target, old, new)?;
        if affinity_may_be_stale(old, new) {
            n += self.clean_affinity(new)?;
        }
        Ok(n)
    }

    /// A listing, through the session when there is one.
    fn list(&mut self, args: &[&str]) -> Result<String, ProxyError> {
        if let Some(Some(s)) = self.session.as_mut() {
            return s.query(&args.join(" ")).map_err(|stderr| {
                ProxyError::Nft(nft::NftError::Rejected {
                    what: "listing".into(),
                    stderr,
                })
            });
        }
        Ok(nft::run(self.target.nft(), args)?)
    }

    /// Deletes affinity entries the kernel should no longer hold: those
    /// of service ports without affinity (switched off, or deleted) and
    /// those pointing at an endpoint the port no longer has, so a sticky
    /// client moves on at once instead of after its timeout. (The packet
    /// path never honours such an entry anyway, see `affinity-stale` in
    /// the ruleset; this keeps the map from filling with them.)
    fn clean_affinity(&mut self, state: &ProxyState) -> Result<usize, ProxyError> {
        // (service ip, proto, port) -> endpoints it may be sent to
        let mut live: BTreeMap<ServiceKey<'_>, BTreeSet<(IpAddr, u16)>> = BTreeMap::new();
        for sp in state
            .ports
            .values()
            .filter(|p| p.affinity_timeout.is_some())
        {
            let proto = sp.name.protocol.as_str();
            for family in [Family::V4, Family::V6] {
                if let Some(ip) = sp.cluster_ip(family) {
                    live.entry((ip, proto, sp.port)).or_default().extend(
                        sp.cluster_endpoints(family)
                            .iter()
                            .map(|e| (e.addr, e.port)),
                    );
                }
                for ip in sp.external_ips.iter().filter(|a| Family::of(a) == family) {
                    if sp.cluster_ip(family) == Some(*ip) {
                        continue;
                    }
                    live.entry((*ip, proto, sp.port)).or_default().extend(
                        sp.external_endpoints(family)
                            .iter()
                            .map(|e| (e.addr, e.port)),
                    );
                }
            }
        }
        let mut script = String::new();
        let mut removed = 0;
        let families: Vec<Family> = self.applied.keys().copied().collect();
        for family in families {
            let fam = family.nft_family();
            for proto in PROTOCOLS {
                let map = format!("affinity-{proto}");
                let listing = self.list(&["list", "map", fam, TABLE, &map])?;
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
                        // Added first (a no-op if still there) so that an
                        // entry expiring meanwhile cannot fail the delete.
                        let elem = format!("{key} timeout 1s : {ep} . {port}");
                        script.push_str(&format!(
                            "add element {fam} {TABLE} {map} {{ {elem} }}\n\
                             delete element {fam} {TABLE} {map} {{ {key} }}\n"
                        ));
                        removed += 1;
                    }
                }
            }
        }
        if script.is_empty() {
            return Ok(0);
        }
        match self.apply(&script) {
            Ok(()) => Ok(removed),
            Err(e) => {
                // e.g. an entry re-recorded with another endpoint between
                // listing and deleting; the packet path ignores stale
                // entries, and the next change cleans again.
                tracing::debug!(error = %e, "affinity cleanup raced with the packet path");
                Ok(0)
            }
        }
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

/// Whether the affinity maps may hold entries `new` no longer allows: a
/// service port that had ClientIP affinity lost it, went away, or lost an
/// endpoint (or changed which endpoints its addresses may reach).
fn affinity_may_be_stale(old: &ProxyState, new: &ProxyState) -> bool {
    old.ports.iter().any(|(name, op)| {
        op.affinity_timeout.is_some()
            && new.ports.get(name).is_none_or(|np| {
                np.affinity_timeout.is_none()
                    || np.cluster_ips != op.cluster_ips
                    || np.external_ips != op.external_ips
                    || np.port != op.port
                    || np.external_local != op.external_local
                    || np.internal_local != op.internal_local
                    || op.endpoints.iter().any(|e| {
                        !np.endpoints
                            .iter()
                            .any(|n| n.addr == e.addr && n.port == e.port && n.local == e.local)
                    })
            })
    })
}
