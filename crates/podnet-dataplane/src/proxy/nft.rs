//! The nftables proxy backend: podnet's own `podnet-proxy` table(s).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use podnet_core::proxy::nft::{
    NftTable, PROTOCOLS, Shape, TABLE, diff_changes, parse_affinity_elements, ruleset,
};
use podnet_core::proxy::{Family, ProxyState, ServicePortName, ServicePortPlan};

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
    /// What each applied table's skeleton is needed by (see [`Shape`]).
    shapes: BTreeMap<Family, Shape>,
    /// Service ports with an IPv6 address (the `ip6` table exists while
    /// any does), counted so a change need not look at every port.
    v6_ports: usize,
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
            shapes: BTreeMap::new(),
            v6_ports: 0,
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
    /// planner's fresh output), which saves copying it. Finding what
    /// changed walks both states once (O(services) comparisons); a caller
    /// that knows which service ports changed calls [`NftProxy::update`].
    pub fn sync_owned(&mut self, owned: ProxyState) -> Result<SyncReport, ProxyError> {
        let Some(old) = self.state.as_ref() else {
            return self.full_sync(&owned);
        };
        if old.cluster_cidrs != owned.cluster_cidrs {
            return self.full_sync(&owned);
        }
        let mut changes = Vec::new();
        // One ordered walk over both maps (no per-port lookups).
        let mut a = old.ports.iter().peekable();
        let mut b = owned.ports.iter().peekable();
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some((ka, va)), Some((kb, vb))) if ka == kb => {
                    if va != vb {
                        changes.push(((*kb).clone(), Some((*vb).clone())));
                    }
                    a.next();
                    b.next();
                }
                (Some((ka, _)), Some((kb, _))) if ka < kb => {
                    changes.push(((*ka).clone(), None));
                    a.next();
                }
                (Some((ka, _)), None) => {
                    changes.push(((*ka).clone(), None));
                    a.next();
                }
                (_, Some((kb, vb))) => {
                    changes.push(((*kb).clone(), Some((*vb).clone())));
                    b.next();
                }
            }
        }
        self.update(changes)
    }

    /// Applies a change to some service ports: each named port becomes
    /// the given plan (`None`: it is gone); every other port stays. One
    /// transaction of element adds and deletes (plus the few chains and
    /// maps that start or stop being needed), computed from the changed
    /// ports alone: its cost does not grow with the number of services.
    /// Before any full sync, the ports make up the whole state.
    pub fn update(
        &mut self,
        changes: Vec<(ServicePortName, Option<ServicePortPlan>)>,
    ) -> Result<SyncReport, ProxyError> {
        let Some(mut state) = self.state.take() else {
            let mut state = ProxyState::default();
            for (name, plan) in changes {
                if let Some(p) = plan {
                    state.ports.insert(name, p);
                }
            }
            return self.full_sync(&state);
        };
        // (old, new) of every port that really changes
        let mut pairs: Vec<(Option<ServicePortPlan>, Option<ServicePortPlan>)> = Vec::new();
        let mut v6_ports = self.v6_ports;
        for (name, plan) in changes {
            let old = match &plan {
                Some(p) => state.ports.insert(name, p.clone()),
                None => state.ports.remove(&name),
            };
            if old == plan {
                continue;
            }
            v6_ports -= old.as_ref().is_some_and(has_v6) as usize;
            v6_ports += plan.as_ref().is_some_and(has_v6) as usize;
            pairs.push((old, plan));
        }
        if pairs.is_empty() {
            self.state = Some(state);
            return Ok(SyncReport::default());
        }
        let families = families(&state, v6_ports);
        if families.iter().ne(self.applied.keys()) {
            return self.full_sync(&state);
        }
        let refs: Vec<_> = pairs
            .iter()
            .map(|(o, n)| (o.as_ref(), n.as_ref()))
            .collect();
        let mut script = String::new();
        let mut element_changes = 0;
        let mut diffs = Vec::new();
        // (the shapes are updated in place: if the kernel refuses, the
        // full sync below recomputes them)
        for family in &families {
            let shape = self
                .shapes
                .get_mut(family)
                .expect("a shape per applied table");
            let d = diff_changes(
                &refs,
                &state.cluster_cidrs,
                *family,
                &self.applied[family],
                shape,
            );
            if d.needs_full {
                return self.full_sync(&state);
            }
            element_changes += d.element_changes();
            script.push_str(&d.script());
            diffs.push((*family, d));
        }
        if !script.is_empty()
            && let Err(e) = self.apply(&script)
        {
            tracing::warn!(error = %e, "incremental proxy sync refused; loading the whole table");
            return self.full_sync(&state);
        }
        for (family, d) in &diffs {
            if let Some(t) = self.applied.get_mut(family) {
                t.apply_diff(d);
            }
        }
        self.v6_ports = v6_ports;
        let mut old_sub = ProxyState {
            ports: BTreeMap::new(),
            cluster_cidrs: state.cluster_cidrs.clone(),
        };
        let mut new_sub = old_sub.clone();
        for (o, n) in pairs {
            if let Some(o) = o {
                old_sub.ports.insert(o.name.clone(), o);
            }
            if let Some(n) = n {
                new_sub.ports.insert(n.name.clone(), n);
            }
        }
        self.state = Some(state);
        let flushed = self.after_change(&old_sub, &new_sub)?;
        Ok(SyncReport {
            full: false,
            element_changes,
            flushed,
        })
    }

    /// Replaces the tables with `state`'s in one transaction (start-up,
    /// resync on demand). Tables of a family no longer used are deleted in
    /// the same transaction.
    pub fn full_sync(&mut self, state: &ProxyState) -> Result<SyncReport, ProxyError> {
        self.full_sync_by(state, false)
    }

    /// [`NftProxy::full_sync`], through an `nft -f` child process when
    /// `in_child` (else in process when libnftables is there).
    fn full_sync_by(
        &mut self,
        state: &ProxyState,
        in_child: bool,
    ) -> Result<SyncReport, ProxyError> {
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
        if in_child {
            nft::apply(self.target.nft(), &script)?;
        } else {
            self.apply(&script)?;
        }
        self.shapes = tables.keys().map(|f| (*f, Shape::of(state, *f))).collect();
        self.v6_ports = state.ports.values().filter(|p| has_v6(p)).count();
        self.applied = tables;
        let old = self.state.replace(state.clone()).unwrap_or_default();
        let flushed = self.after_change(&old, state)?;
        Ok(SyncReport {
            full: true,
            element_changes: 0,
            flushed,
        })
    }

    /// The first load of `state` on a node where podnet's tables are not
    /// in the kernel yet (a fresh node, not an agent restart): in steps of
    /// `step` service ports, each its own transaction, the first a
    /// [`NftProxy::full_sync`] and the rest [`NftProxy::update`]s.
    /// libnftables holds a whole transaction in memory at once (parse
    /// tree, cache, netlink batch): 10,000 services in one peaked the
    /// agent at hundreds of MiB. Where a state was applied already, or
    /// the state is one step or less, this is [`NftProxy::sync`]. Where
    /// the tables are there (an agent restart; also when they cannot be
    /// listed) the old table serves traffic until one transaction replaces
    /// it, never half of it; that transaction goes through an `nft -f`
    /// child process, so its memory is the child's, returned whole when it
    /// exits, not left in the agent's heap.
    pub fn first_load(
        &mut self,
        state: &ProxyState,
        step: usize,
    ) -> Result<SyncReport, ProxyError> {
        if self.state.is_some() || state.ports.len() <= step {
            return self.sync(state);
        }
        if self.kernel_has_table() {
            return self.full_sync_by(state, true);
        }
        let mut ports = state.ports.iter();
        let first = ProxyState {
            ports: ports
                .by_ref()
                .take(step)
                .map(|(n, p)| (n.clone(), p.clone()))
                .collect(),
            cluster_cidrs: state.cluster_cidrs.clone(),
        };
        let mut report = self.full_sync(&first)?;
        loop {
            let changes: Vec<_> = ports
                .by_ref()
                .take(step)
                .map(|(n, p)| (n.clone(), Some(p.clone())))
                .collect();
            if changes.is_empty() {
                return Ok(report);
            }
            let r = self.update(changes)?;
            report.element_changes += r.element_changes;
            report.flushed += r.flushed;
        }
    }

    /// Whether the kernel holds a table of podnet's proxy (in any family);
    /// `true` when the tables cannot be listed.
    fn kernel_has_table(&mut self) -> bool {
        match self.list(&["list", "tables"]) {
            Ok(l) => l
                .lines()
                .any(|l| l.split_whitespace().last() == Some(TABLE)),
            Err(_) => true,
        }
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
        self.shapes.clear();
        self.v6_ports = 0;
        self.state = None;
        Ok(())
    }

    /// Whether every table last applied is still in the kernel with each
    /// of its chains, and no chain that should have rules is empty (a
    /// flushed table). Set elements are not read, so this stays cheap at
    /// any number of services.
    pub fn intact(&mut self) -> bool {
        let ns = self.target.nft();
        for t in self.applied.values() {
            let family = match t.family {
                Family::V4 => podnet_kernel::nft_elements::Family::Ip,
                Family::V6 => podnet_kernel::nft_elements::Family::Ip6,
            };
            // Over netlink: nft would read every set element first.
            let kernel = match podnet_kernel::nft_rules::chain_rule_counts(ns, family, TABLE) {
                Ok(Some(k)) => k,
                Ok(None) => return false,
                Err(e) => {
                    tracing::warn!(error = %e, table = %t.qualified_name(), "reading the proxy table's chains");
                    return false;
                }
            };
            for (chain, c) in &t.chains {
                match kernel.rules.get(chain) {
                    None => return false,
                    Some(0) if !c.rules.is_empty() => return false,
                    Some(_) => {}
                }
            }
        }
        true
    }

    /// Reloads the whole state last applied (after
    /// [`NftProxy::intact`] found the kernel drifted).
    pub fn resync(&mut self) -> Result<SyncReport, ProxyError> {
        let state = self.state.clone().unwrap_or_default();
        self.full_sync(&state)
    }

    /// The tables as last applied (what `podnet rules` can show).
    pub fn applied(&self) -> impl Iterator<Item = &NftTable> {
        self.applied.values()
    }

    /// What follows a change from `old` to `new` (the changed ports, or
    /// whole states): stale UDP flows flushed, stale affinity entries
    /// deleted (against the whole current state).
    fn after_change(&mut self, old: &ProxyState, new: &ProxyState) -> Result<usize, ProxyError> {
        let mut n = flush_udp(&self.target, old, new)?;
        if affinity_may_be_stale(old, new) {
            let state = self.state.take().unwrap_or_default();
            let cleaned = self.clean_affinity(&state);
            self.state = Some(state);
            n += cleaned?;
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

/// Whether a service port has an IPv6 address (and so needs `ip6`).
fn has_v6(p: &ServicePortPlan) -> bool {
    p.cluster_ips
        .iter()
        .chain(&p.external_ips)
        .any(|a| a.is_ipv6())
}

/// [`ProxyState::families`] from the count of IPv6 ports.
fn families(state: &ProxyState, v6_ports: usize) -> Vec<Family> {
    let v6 = v6_ports > 0 || state.cluster_cidrs.iter().any(|c| c.addr().is_ipv6());
    if v6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

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
