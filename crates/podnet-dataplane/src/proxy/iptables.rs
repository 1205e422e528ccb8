//! The iptables proxy backend (`--proxy-mode=iptables`): kube-proxy's
//! chains, loaded with one `iptables-restore --noflush` per change.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Stdio;

use podnet_core::proxy::iptables::{IptablesRuleset, JUMPS, ruleset};
use podnet_core::proxy::{Family, ProxyState};

use super::{ProxyError, SyncReport, Target, flush_udp};

/// Applies proxy states as kube-proxy-shaped iptables rules. Each sync
/// rewrites podnet's `KUBE-*` chains (and deletes the ones gone) in one
/// `iptables-restore --noflush`; the built-in chains' jumps into them are
/// added in the first restore if missing.
#[derive(Debug)]
pub struct IptablesProxy {
    target: Target,
    applied: BTreeMap<Family, IptablesRuleset>,
    state: Option<ProxyState>,
}

fn tools(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::V4 => ("iptables", "iptables-restore"),
        Family::V6 => ("ip6tables", "ip6tables-restore"),
    }
}

impl IptablesProxy {
    /// An applier for `target`; nothing is touched until the first sync.
    pub fn new(target: Target) -> Self {
        IptablesProxy {
            target,
            applied: BTreeMap::new(),
            state: None,
        }
    }

    /// Makes the kernel's `KUBE-*` chains say what `state` says.
    pub fn sync(&mut self, state: &ProxyState) -> Result<SyncReport, ProxyError> {
        let full = self.state.is_none();
        for family in state.families() {
            let rs = ruleset(state, family);
            let previous = self.applied.get(&family);
            if previous == Some(&rs) {
                continue;
            }
            let mut text = match previous {
                Some(p) => rs.restore_text(Some(p)),
                // After a restart, chains a former run left behind (an
                // endpoint gone while we were down) are deleted too.
                None => rs.restore_text(Some(&self.existing(family))),
            };
            if previous.is_none() {
                text = self.with_missing_jumps(family, &text);
            }
            self.restore(family, &text)?;
            self.applied.insert(family, rs);
        }
        let old = self.state.replace(state.clone()).unwrap_or_default();
        let flushed = flush_udp(&self.target, &old, state)?;
        Ok(SyncReport {
            full,
            element_changes: 0,
            flushed,
        })
    }

    /// The `KUBE-*` chains the kernel holds now (names only).
    fn existing(&self, family: Family) -> IptablesRuleset {
        let (tool, _) = tools(family);
        let mut rs = IptablesRuleset::default();
        for table in ["nat", "filter"] {
            let Ok(out) = self
                .target
                .command(tool)
                .args(["-w", "-t", table, "-S"])
                .output()
            else {
                continue;
            };
            let chains = if table == "nat" {
                &mut rs.nat
            } else {
                &mut rs.filter
            };
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = line.strip_prefix("-N ").filter(|n| n.starts_with("KUBE-")) {
                    chains.insert(name.to_string(), Vec::new());
                }
            }
        }
        rs
    }

    /// Inserts `-I CHAIN 1 <jump>` lines for jumps not yet present, so the
    /// first restore wires the built-in chains in the same transaction.
    fn with_missing_jumps(&self, family: Family, text: &str) -> String {
        let (tool, _) = tools(family);
        let mut out = String::new();
        for block in text.split_inclusive("COMMIT\n") {
            let table = block
                .lines()
                .next()
                .and_then(|l| l.strip_prefix('*'))
                .unwrap_or("");
            let body = block.strip_suffix("COMMIT\n").unwrap_or(block);
            out.push_str(body);
            for (t, chain, rule) in JUMPS.iter().filter(|(t, _, _)| *t == table) {
                let present = self
                    .target
                    .command(tool)
                    .args(["-w", "-t", t, "-C", chain])
                    .args(rule.split_whitespace())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !present {
                    out.push_str(&format!("-I {chain} 1 {rule}\n"));
                }
            }
            if block.ends_with("COMMIT\n") {
                out.push_str("COMMIT\n");
            }
        }
        out
    }

    fn restore(&self, family: Family, text: &str) -> Result<(), ProxyError> {
        let (_, tool) = tools(family);
        let mut child = self
            .target
            .command(tool)
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ProxyError::Spawn {
                tool,
                package: "iptables",
                source,
            })?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let written = stdin.write_all(text.as_bytes());
        drop(stdin);
        let out = child
            .wait_with_output()
            .map_err(|source| ProxyError::Spawn {
                tool,
                package: "iptables",
                source,
            })?;
        if !out.status.success() || written.is_err() {
            return Err(ProxyError::Tool {
                tool,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Whether every chain last applied is still in the kernel with rules
    /// in it (when it was given any), and the built-in chains still jump
    /// into podnet's. Cheap: one `iptables -S` per table and family. A
    /// single rule deleted by hand inside a chain is not seen.
    pub fn intact(&self) -> bool {
        for (family, rs) in &self.applied {
            let (tool, _) = tools(*family);
            for (table, chains) in [("nat", &rs.nat), ("filter", &rs.filter)] {
                let Ok(out) = self
                    .target
                    .command(tool)
                    .args(["-w", "-t", table, "-S"])
                    .output()
                else {
                    return false;
                };
                let text = String::from_utf8_lossy(&out.stdout);
                for (name, rules) in chains {
                    if !text.lines().any(|l| l == format!("-N {name}")) {
                        return false;
                    }
                    let prefix = format!("-A {name} ");
                    if !rules.is_empty() && !text.lines().any(|l| l.starts_with(&prefix)) {
                        return false;
                    }
                }
                for (_, chain, rule) in JUMPS.iter().filter(|(t, _, _)| *t == table) {
                    if !text.lines().any(|l| l == format!("-A {chain} {rule}")) {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Forgets what was applied and writes the whole state again (after
    /// [`IptablesProxy::intact`] found the kernel drifted).
    pub fn resync(&mut self) -> Result<SyncReport, ProxyError> {
        let state = self.state.take().unwrap_or_default();
        self.applied.clear();
        self.sync(&state)
    }

    /// The rulesets as last applied.
    pub fn applied(&self) -> impl Iterator<Item = &IptablesRuleset> {
        self.applied.values()
    }
}
