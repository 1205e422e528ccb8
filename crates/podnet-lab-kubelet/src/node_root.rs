//! The node's own filesystem. A kind node is a container with a root of
//! its own; a lab node is a network namespace on the host's filesystem. So
//! that `/etc/cni/net.d`, `/opt/cni/bin` and `/var/lib/cni` are the node's
//! (written by the podnet DaemonSet's pod through hostPath volumes, read
//! by this kubelet and by the CNI plugin it execs), the kubelet enters a
//! mount namespace of its own at start and binds the node's directories
//! there. Every sandbox, shim and plugin it starts inherits that view.
//!
//! Only the root mount is made a slave (so these binds never reach the
//! host); `/run/netns` stays shared, so pods' network namespaces made here
//! are seen by `ip netns` on the host as before.

use std::path::Path;

use anyhow::Context;
use nix::mount::{MsFlags, mount};

/// The node paths that are the node's own.
pub const NODE_PATHS: &[&str] = &["/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni"];

/// Enters a mount namespace where each of [`NODE_PATHS`] is `root` joined
/// with it. Call it single-threaded (unshare of a mount namespace).
pub fn enter(root: &Path) -> anyhow::Result<()> {
    // /run/netns must already be a shared mount for pods' namespaces to
    // be seen from the host: make it so before leaving the host's view.
    podnet_kernel::netns::share_netns_dir().context("sharing /run/netns")?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("unshare a mount namespace")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("make / a slave mount")?;
    for path in NODE_PATHS {
        let src = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&src).with_context(|| format!("mkdir {}", src.display()))?;
        // The mount point itself: the host gets an empty directory where
        // it had none (never anything in it).
        std::fs::create_dir_all(path).with_context(|| format!("mkdir {path}"))?;
        mount(
            Some(&src),
            *path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind {} on {path}", src.display()))?;
        mount(
            None::<&str>,
            *path,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .with_context(|| format!("make {path} private"))?;
    }
    Ok(())
}
