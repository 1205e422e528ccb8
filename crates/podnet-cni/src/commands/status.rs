//! STATUS: ready only when an ADD could succeed now: the data directory is
//! usable and every range set still has a free address.

use crate::config::{Ipam, NetConf};
use crate::env::CniEnv;
use crate::error::{CniError, code};
use crate::ipam::{delegate, store::LockedStore};

/// Runs STATUS.
pub fn status(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    match &conf.ipam {
        Ipam::Builtin {
            ranges, data_dir, ..
        } => {
            let store = LockedStore::open(data_dir, &conf.name).map_err(|e| {
                CniError::new(
                    code::NOT_AVAILABLE,
                    format!("IPAM store unusable: {}", e.msg),
                )
            })?;
            store.check_writable()?;
            if let Some(i) = store.state.first_exhausted(ranges) {
                let nets: Vec<String> = ranges[i].iter().map(|r| r.subnet.to_string()).collect();
                return Err(CniError::new(
                    code::NOT_AVAILABLE,
                    format!(
                        "range set {i} ({}) is exhausted: no address left for a new pod",
                        nets.join(", ")
                    ),
                ));
            }
            Ok(())
        }
        Ipam::Delegate { plugin } => delegate::find(env, plugin)
            .map(drop)
            .map_err(|e| CniError::new(code::NOT_AVAILABLE, e.msg)),
    }
}
