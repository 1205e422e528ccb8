//! The CNI install on a node, in the order the kubelet must see it:
//!
//! 1. the DaemonSet's init container copies the plugin into the node's
//!    `/opt/cni/bin` (temp file + rename: a runtime never execs half a
//!    binary);
//! 2. the agent writes its conflist (temp file + rename) only once it has
//!    the node's pod CIDR and its routes, proxy and policy are programmed;
//!    a node is Ready for pods only then;
//! 3. an older podnet release's conflist is replaced, not left beside the
//!    new one, and with `--cni-exclusive` every other configuration is
//!    moved aside, so the kubelet can pick no other network.
//!
//! The conflist is kept: removed or changed by hand, it is written again
//! within two seconds.

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ipnet::Ipv4Net;

use crate::AgentArgs;

/// The file name of podnet's configuration: first by name among usual
/// neighbours (libcni and the kubelet take the first).
pub const CONFLIST_NAME: &str = "10-podnet.conflist";

/// Where configurations moved aside by `--cni-exclusive` go.
pub const MOVED_ASIDE: &str = ".podnet-moved";

/// Arguments of `podnet-agent install-cni`.
#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// The plugin to install (default: `podnet-cni` beside this binary).
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// The node's CNI plugin directory.
    #[arg(long, env = "PODNET_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub to: PathBuf,
}

/// Writes `data` to `path` through a temp file in the same directory,
/// synced, then renamed over it: a reader sees the old file or the new
/// one, never a part.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.podnet-tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// `install-cni`: the plugin into the node's directory as `podnet`.
pub fn install_binary(a: &InstallArgs) -> anyhow::Result<()> {
    let from = match &a.from {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for podnet-agent")?
            .join("podnet-cni"),
    };
    let data = std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
    std::fs::create_dir_all(&a.to).with_context(|| format!("mkdir {}", a.to.display()))?;
    let to = a.to.join("podnet");
    write_atomic(&to, &data, 0o755).with_context(|| format!("writing {}", to.display()))?;
    tracing::info!(from = %from.display(), to = %to.display(), bytes = data.len(), "CNI plugin installed");
    println!("installed {} as {}", from.display(), to.display());
    Ok(())
}

/// The IPv4 GSO limit of the uplink when it is above the kernel's 64 KiB:
/// pods get BIG TCP only when their packets can leave the node as they are
/// (as Cilium decides from its native device), never over VXLAN.
fn uplink_gso_max_size(uplink: &str) -> Option<u32> {
    let mut nl = podnet_kernel::netlink::Netlink::open().ok()?;
    let size = nl
        .links()
        .ok()?
        .into_iter()
        .find(|l| l.name == uplink)?
        .gso_ipv4_max_size?;
    (size > 65536).then_some(size)
}

fn uplink_mtu(uplink: &str) -> Option<u32> {
    let mut nl = podnet_kernel::netlink::Netlink::open().ok()?;
    nl.links()
        .ok()?
        .into_iter()
        .find(|l| l.name == uplink)
        .map(|l| l.mtu)
}

/// The pods' MTU: as configured, else the uplink's less VXLAN's 50 bytes.
pub fn pod_mtu(args: &AgentArgs) -> u32 {
    if args.mtu > 0 {
        return args.mtu;
    }
    let base = uplink_mtu(&args.uplink).unwrap_or(1500);
    if args.encap == "vxlan" {
        base.saturating_sub(50)
    } else {
        base
    }
}

/// The node's conflist: podnet alone, with the node's pod CIDR, serving
/// `hostPort`s itself (the `portMappings` capability), so a pod start is
/// one plugin exec; the reference `portmap` could be chained instead.
pub fn conflist(args: &AgentArgs, cidr: &Ipv4Net) -> serde_json::Value {
    let mut podnet = serde_json::json!({
        "type": "podnet", "bridge": "podnet0", "mtu": pod_mtu(args), "isGateway": true, "hairpinMode": true,
        "capabilities": {"portMappings": true},
        "ipam": {"type": "podnet", "ranges": [[{"subnet": cidr.to_string()}]],
                 "dataDir": args.ipam_dir.join(&args.node).display().to_string()}
    });
    if args.encap != "vxlan"
        && let Some(size) = uplink_gso_max_size(&args.uplink)
    {
        podnet["gsoMaxSize"] = size.into();
    }
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "podnet",
        "plugins": [podnet]
    })
}

/// Whether a configuration file is podnet's (of any release): its network
/// is named `podnet`, or its first plugin is of type `podnet`.
fn is_podnets(path: &Path) -> bool {
    let Ok(text) = std::fs::read(path) else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return false;
    };
    v["name"] == "podnet" || v["type"] == "podnet" || v["plugins"][0]["type"] == "podnet"
}

fn is_config(path: &Path) -> bool {
    path.is_file()
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("conflist" | "conf" | "json")
        )
}

/// Puts the conflist in place: replaces older podnet configurations, moves
/// the others aside when exclusive, and writes ours if it differs. Returns
/// whether anything changed.
pub fn install_conflist(args: &AgentArgs, want: &[u8]) -> anyhow::Result<bool> {
    let dir = &args.cni_conf_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let ours = dir.join(CONFLIST_NAME);
    let mut changed = false;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path == ours || !is_config(&path) {
            continue;
        }
        if is_podnets(&path) {
            tracing::info!(path = %path.display(), "removing an older podnet configuration");
            std::fs::remove_file(&path)?;
            changed = true;
        } else if args.cni_exclusive {
            let aside = dir.join(MOVED_ASIDE);
            std::fs::create_dir_all(&aside)?;
            let to = aside.join(path.file_name().unwrap_or_default());
            tracing::info!(path = %path.display(), to = %to.display(), "moving another CNI configuration aside (exclusive)");
            std::fs::rename(&path, &to)?;
            changed = true;
        }
    }
    if std::fs::read(&ours).ok().as_deref() != Some(want) {
        write_atomic(&ours, want, 0o644).with_context(|| format!("writing {}", ours.display()))?;
        tracing::info!(path = %ours.display(), "CNI configuration written");
        changed = true;
    }
    Ok(changed)
}

/// Waits for `programmed` (routes, proxy and policy synced once), then
/// writes the conflist and keeps it, checking every two seconds.
pub async fn keep_conflist(
    args: AgentArgs,
    cidr: Ipv4Net,
    programmed: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    programmed.await;
    let want = serde_json::to_vec_pretty(&conflist(&args, &cidr))?;
    let mut first = true;
    loop {
        match install_conflist(&args, &want) {
            Ok(changed) => {
                if changed && !first {
                    tracing::warn!("the CNI configuration was missing or changed: restored");
                }
                if first {
                    crate::health::set_ready(
                        true,
                        "dataplane programmed, CNI configuration installed",
                    );
                    first = false;
                }
            }
            Err(e) => {
                crate::health::set_ready(
                    false,
                    &format!("cannot install the CNI configuration: {e:#}"),
                );
                tracing::error!(error = %format!("{e:#}"), "CNI configuration");
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, exclusive: bool) -> AgentArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: AgentArgs,
        }
        let mut a = P::parse_from(["x", "--node", "n1"]).a;
        a.cni_conf_dir = dir.to_path_buf();
        a.cni_exclusive = exclusive;
        a
    }

    #[test]
    fn older_podnet_configurations_are_replaced_and_others_kept_unless_exclusive() {
        let dir = std::env::temp_dir().join(format!("podnet-cni-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("05-podnet.conflist"),
            br#"{"name":"podnet","plugins":[{"type":"podnet"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("10-flannel.conflist"),
            br#"{"name":"cbr0","plugins":[{"type":"flannel"}]}"#,
        )
        .unwrap();
        let a = args(&dir, false);
        assert!(install_conflist(&a, b"{\"name\":\"podnet\"}").unwrap());
        assert!(
            !dir.join("05-podnet.conflist").exists(),
            "an older podnet conflist is left beside the new one"
        );
        assert!(
            dir.join("10-flannel.conflist").exists(),
            "another network's conflist was touched without --cni-exclusive"
        );
        assert_eq!(
            std::fs::read(dir.join(CONFLIST_NAME)).unwrap(),
            b"{\"name\":\"podnet\"}"
        );
        assert!(
            !install_conflist(&a, b"{\"name\":\"podnet\"}").unwrap(),
            "an unchanged conflist was written again"
        );
        let a = args(&dir, true);
        assert!(install_conflist(&a, b"{\"name\":\"podnet\"}").unwrap());
        assert!(!dir.join("10-flannel.conflist").exists());
        assert!(dir.join(MOVED_ASIDE).join("10-flannel.conflist").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
