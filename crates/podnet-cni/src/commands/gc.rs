//! GC: every allocation not named in `cni.dev/valid-attachments` is
//! released with its hostPorts, and every podnet host veth on this
//! network's bridge that belongs to no valid attachment is removed.

use std::collections::HashSet;

use podnet_kernel::netlink::Netlink;

use crate::config::{Ipam, NetConf};
use crate::env::CniEnv;
use crate::error::CniError;
use crate::ipam::{delegate, store::LockedStore};
use crate::naming;

/// Runs GC.
pub fn gc(env: &CniEnv, conf: &NetConf, raw: &[u8]) -> Result<(), CniError> {
    let valid: HashSet<(String, String)> = conf
        .valid_attachments
        .clone()
        .ok_or_else(|| CniError::config("cni.dev/valid-attachments", "missing (required for GC)"))?
        .into_iter()
        .collect();
    match &conf.ipam {
        Ipam::Builtin { data_dir, .. } => {
            let mut store = LockedStore::open(data_dir, &conf.name)?;
            let freed = store.state.retain_valid(&valid);
            if !freed.is_empty() {
                store.commit()?;
            }
            let ips: Vec<_> = freed.iter().map(|a| a.ip).collect();
            if conf.ip_masq {
                super::masq::remove(conf, &ips);
            }
            // hostPorts of a pod whose DEL never came would hold the port.
            super::hostport::remove(&ips);
        }
        Ipam::Delegate { plugin } => {
            // Delegates older than 1.1 may not know GC; what they hold is
            // theirs to manage, so a refusal is not our failure.
            let _ = delegate::run(env, plugin, "GC", raw);
        }
    }
    let keep: HashSet<String> = valid
        .iter()
        .map(|(id, ifname)| naming::host_veth(id, ifname))
        .collect();
    let mut host = Netlink::open()?;
    let Some(bridge) = host.link_by_name(&conf.bridge)? else {
        return Ok(());
    };
    for link in host.links()? {
        if link.master == Some(bridge.index)
            && link.name.starts_with(naming::HOST_VETH_PREFIX)
            && link.name.len() == 12
            && !keep.contains(&link.name)
        {
            host.delete_link(&link.name)?;
        }
    }
    Ok(())
}
