//! The proxy applier: carries a node's [`ProxyState`] (from
//! `podnet_core::proxy::plan`) into its kernel, as nftables ([`NftProxy`],
//! the default) or kube-proxy-shaped iptables ([`IptablesProxy`]).
//!
//! Every sync is one atomic transaction. The nft backend loads the whole
//! table on its first sync and afterwards sends only element adds and
//! deletes; both flush the UDP conntrack entries of endpoints that went
//! away, as kube-proxy does.

mod conntrack;
mod iptables;
mod libnft;
mod nft;

pub use iptables::IptablesProxy;
pub use nft::NftProxy;

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use podnet_core::proxy::ProxyState;

use crate::nft::{Namespace, NftError};

/// A failed proxy sync; the kernel keeps what the last good sync gave it.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// nft refused a transaction.
    #[error("proxy nft transaction: {0}")]
    Nft(#[from] NftError),
    /// A helper program (iptables-restore, conntrack) could not start.
    #[error("cannot run {tool}: {source} (install the {package} package)")]
    Spawn {
        /// The program.
        tool: &'static str,
        /// Where it comes from in Debian.
        package: &'static str,
        /// Why it could not start.
        #[source]
        source: std::io::Error,
    },
    /// A helper program ran and failed.
    #[error("{tool} failed: {stderr}")]
    Tool {
        /// The program.
        tool: &'static str,
        /// Its error output.
        stderr: String,
    },
    /// The target network namespace could not be opened.
    #[error("opening network namespace {path}: {source}")]
    Namespace {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where an applier works: the caller's own network namespace (the agent
/// inside its node) or another one, by path (tests, the lab).
#[derive(Debug, Default)]
pub struct Target {
    file: Option<File>,
}

impl Target {
    /// The caller's network namespace.
    pub fn current() -> Self {
        Target { file: None }
    }

    /// The network namespace bound at `path` (e.g. `/run/netns/<name>`).
    pub fn namespace(path: &Path) -> Result<Self, ProxyError> {
        let file = File::open(path).map_err(|source| ProxyError::Namespace {
            path: path.into(),
            source,
        })?;
        Ok(Target { file: Some(file) })
    }

    fn nft(&self) -> Namespace<'_> {
        match &self.file {
            None => Namespace::Current,
            Some(f) => Namespace::Fd(f.as_fd()),
        }
    }

    fn command(&self, program: &str) -> Command {
        match &self.file {
            None => Command::new(program),
            Some(f) => crate::netns::command_in(f.as_fd(), program),
        }
    }
}

/// What one sync did, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The whole ruleset was (re)loaded rather than patched.
    pub full: bool,
    /// Set and map elements added plus deleted (nft, incremental only).
    pub element_changes: usize,
    /// Stale UDP flows (and affinity entries) removed.
    pub flushed: usize,
}

/// The part of a sync both backends share: stale UDP conntrack entries of
/// endpoints that left, and of services that came back to life.
fn flush_udp(target: &Target, old: &ProxyState, new: &ProxyState) -> Result<usize, ProxyError> {
    let mut n = 0;
    for stale in podnet_core::proxy::stale_udp_endpoints(old, new) {
        n += conntrack::delete_stale(target, &stale)?;
    }
    for (ip, port) in podnet_core::proxy::revived_udp_services(old, new) {
        n += conntrack::delete_service(target, ip, port)?;
    }
    Ok(n)
}
