//! One file per CNI verb, and the dispatch from the environment to it.

mod add;
mod check;
mod del;
mod gc;
mod hostport;
mod masq;
mod status;

use serde_json::Value;

use crate::config::{self, Ipam, NetConf};
use crate::env::{CniEnv, Command};
use crate::error::{CniError, code};
use crate::ipam::store::LockedStore;
use crate::version;

/// Runs the verb named by the environment on the configuration bytes and
/// returns what to print on stdout (nothing for DEL, CHECK, STATUS, GC).
pub fn run(env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        let requested = config::cni_version_of(stdin);
        return Ok(Some(version::version_report(requested.as_deref())));
    }
    let conf = config::parse(stdin)?;
    let v = conf.cni_version.as_str();
    match env.command {
        Command::Check if !version::supports_check(v) => {
            return Err(unsupported_verb("CHECK", v, "0.4.0"));
        }
        Command::Status | Command::Gc if !version::supports_status_and_gc(v) => {
            return Err(unsupported_verb(
                if env.command == Command::Gc {
                    "GC"
                } else {
                    "STATUS"
                },
                v,
                "1.1.0",
            ));
        }
        _ => {}
    }
    match env.command {
        Command::Add => add::add(env, &conf, stdin).map(Some),
        Command::Del => del::del(env, &conf, stdin).map(|_| None),
        Command::Check => check::check(env, &conf).map(|_| None),
        Command::Status => status::status(env, &conf).map(|_| None),
        Command::Gc => gc::gc(env, &conf, stdin).map(|_| None),
        Command::Version => unreachable!("handled above"),
    }
}

fn unsupported_verb(verb: &str, v: &str, since: &str) -> CniError {
    CniError::new(
        code::INCOMPATIBLE_VERSION,
        format!("{verb} needs cniVersion {since} or later; the configuration says {v}"),
    )
}

/// The plugin's nft table in the node's namespace (ipMasq, hostPorts).
const NFT_TABLE: &str = "podnet-cni";

/// Releases a builtin allocation (used by DEL and by ADD's rollback).
fn release_builtin(conf: &NetConf, env: &CniEnv) -> Result<bool, CniError> {
    let Ipam::Builtin { data_dir, .. } = &conf.ipam else {
        return Ok(false);
    };
    let mut store = LockedStore::open(data_dir, &conf.name)?;
    let freed = store.state.release(&env.container_id, &env.ifname);
    if freed {
        store.commit()?;
    }
    Ok(freed)
}

/// Turns on forwarding for the families in use, once: the node routes pod
/// traffic when the bridge is the gateway.
fn enable_forwarding(v4: bool, v6: bool) -> Result<(), CniError> {
    let knobs = [
        (v4, "/proc/sys/net/ipv4/ip_forward"),
        (v6, "/proc/sys/net/ipv6/conf/all/forwarding"),
    ];
    for (wanted, path) in knobs {
        if !wanted {
            continue;
        }
        let current = std::fs::read(path).map_err(|e| CniError::io(path, e))?;
        if current.first() != Some(&b'1') {
            std::fs::write(path, b"1").map_err(|e| CniError::io(path, e))?;
        }
    }
    Ok(())
}
