//! DEL: the host veth goes (taking the pod end with it), then the address is
//! released, in that order so an address is never reused while the old
//! interface still holds it. Deleting what is already gone succeeds.

use podnet_kernel::netlink::Netlink;

use super::{masq, release_builtin};
use crate::config::{Ipam, NetConf};
use crate::env::CniEnv;
use crate::error::CniError;
use crate::ipam::{delegate, store::LockedStore};
use crate::naming;

/// Runs DEL.
pub fn del(env: &CniEnv, conf: &NetConf, raw: &[u8]) -> Result<(), CniError> {
    let mut host = Netlink::open()?;
    host.delete_link(&naming::host_veth(&env.container_id, &env.ifname))?;
    match &conf.ipam {
        Ipam::Builtin { data_dir, .. } => {
            if conf.ip_masq {
                let store = LockedStore::open(data_dir, &conf.name)?;
                let held: Vec<_> = store
                    .state
                    .held_by(&env.container_id, &env.ifname)
                    .iter()
                    .map(|a| a.ip)
                    .collect();
                drop(store);
                masq::remove(conf, &held);
            }
            release_builtin(conf, env)?;
        }
        Ipam::Delegate { plugin } => {
            delegate::run(env, plugin, "DEL", raw)?;
        }
    }
    Ok(())
}
