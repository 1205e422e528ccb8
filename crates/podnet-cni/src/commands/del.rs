//! DEL: the pod is cut off first (its host veth set down, so the bridge
//! stops forwarding to it), its hostPorts stop leading to it, then its
//! address is released, then the veth pair
//! is deleted. The kernel takes 15-30 ms of RCU grace periods to delete a
//! veth, longer than everything else a DEL does together, so that last step
//! runs in a detached child that deletes by interface index (never a newer
//! link that reuses the name). Deleting what is already gone succeeds.

use podnet_kernel::netlink::Netlink;

use super::{hostport, masq, release_builtin};
use crate::config::{Ipam, NetConf};
use crate::env::CniEnv;
use crate::error::CniError;
use crate::ipam::{delegate, store::LockedStore};
use crate::naming;
use crate::result::CniResult;

/// Runs DEL.
pub fn del(env: &CniEnv, conf: &NetConf, raw: &[u8]) -> Result<(), CniError> {
    let mut host = Netlink::open()?;
    let host_link = host.link_by_name(&naming::host_veth(&env.container_id, &env.ifname))?;
    if let Some(link) = &host_link {
        host.set_up(link.index, false)?;
    }
    match &conf.ipam {
        Ipam::Builtin { data_dir, .. } => {
            if conf.ip_masq || !conf.port_mappings.is_empty() {
                let held =
                    LockedStore::held_ips(data_dir, &conf.name, &env.container_id, &env.ifname)?;
                if conf.ip_masq {
                    masq::remove(conf, &held);
                }
                if !conf.port_mappings.is_empty() {
                    hostport::remove(&held);
                }
            }
            release_builtin(conf, env)?;
        }
        Ipam::Delegate { plugin } => {
            // The delegate keeps the addresses; prevResult names them.
            if !conf.port_mappings.is_empty()
                && let Some(prev) = &conf.prev_result
                && let Ok(prev) = CniResult::from_json(prev, "prevResult")
            {
                let ips: Vec<_> = prev.ips.iter().map(|i| i.address.addr()).collect();
                hostport::remove(&ips);
            }
            delegate::run(env, plugin, "DEL", raw)?;
        }
    }
    if let Some(link) = host_link {
        delete_in_background(link.index);
    }
    Ok(())
}

/// Deletes a link from a detached child so the runtime need not wait for
/// the kernel's teardown; falls back to deleting in place if fork fails.
fn delete_in_background(index: u32) {
    use nix::unistd::{ForkResult, fork, setsid};
    // SAFETY: the plugin is single-threaded; the child only makes syscalls
    // (dup2, netlink) and exits without running destructors.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = setsid();
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                use std::os::fd::AsRawFd;
                for fd in 0..3 {
                    // SAFETY: redirecting our own standard descriptors.
                    unsafe { libc::dup2(null.as_raw_fd(), fd) };
                }
            }
            let ok = Netlink::open()
                .and_then(|mut nl| nl.delete_link_index(index))
                .is_ok();
            // SAFETY: leave without flushing the parent's stdio buffers twice.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        Ok(ForkResult::Parent { .. }) => {}
        Err(_) => {
            if let Ok(mut nl) = Netlink::open() {
                let _ = nl.delete_link_index(index);
            }
        }
    }
}
