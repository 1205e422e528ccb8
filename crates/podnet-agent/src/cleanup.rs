//! `podnet-agent cleanup`: the uninstall of one node. It removes what
//! podnet made there and nothing else:
//!
//! - links: the VXLAN device `podnet.1` (its FDB and neighbour entries go
//!   with it), the bridge `podnet0`, and every host-side veth the plugin
//!   made (`pn` + 10 hex digits);
//! - routes: to pod CIDRs inside the cluster CIDR through the uplink
//!   (host-gw), and the on-link route to the service CIDR the proxy adds
//!   where a node has none;
//! - nft tables `ip podnet-proxy`, `ip6 podnet-proxy`, `inet podnet-policy`,
//!   `ip podnet-cni` (hostPorts);
//! - iptables: only with `--proxy-mode iptables` (then the KUBE-* chains
//!   are podnet's; otherwise they may be kube-proxy's and stay);
//! - files: the conflist, the plugin `podnet`, the IPAM directory; other
//!   networks' configurations that `--cni-exclusive` moved aside are put
//!   back.
//!
//! Sysctls (`ip_forward`, `bridge-nf-call-iptables`) are left as they are:
//! other components of a node rely on them too.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::cni_install::{CONFLIST_NAME, MOVED_ASIDE};

/// Arguments of `podnet-agent cleanup`.
#[derive(clap::Args, Debug)]
pub struct CleanupArgs {
    /// Where the kubelet reads CNI configurations.
    #[arg(long, env = "PODNET_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The node's CNI plugin directory.
    #[arg(long, env = "PODNET_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The plugin's IPAM state.
    #[arg(long, env = "PODNET_IPAM_DIR", default_value = "/var/lib/cni/podnet")]
    pub ipam_dir: PathBuf,
    /// The cluster's pod CIDR: routes into it through the uplink are podnet's.
    #[arg(long, env = "PODNET_CLUSTER_CIDR", default_value = "10.244.0.0/16")]
    pub cluster_cidr: ipnet::Ipv4Net,
    /// The service CIDR whose on-link route the proxy may have added.
    #[arg(long, env = "PODNET_SERVICE_CIDR", default_value = "10.96.0.0/12")]
    pub service_cidr: ipnet::Ipv4Net,
    /// The proxy mode podnet ran with: with `iptables` the KUBE-* chains
    /// are podnet's and go too.
    #[arg(long, env = "PODNET_PROXY_MODE", default_value = "nftables")]
    pub proxy_mode: String,
}

fn run_cmd(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the cleanup and prints one line per thing removed.
pub fn run(a: &CleanupArgs) -> anyhow::Result<()> {
    let mut removed: Vec<String> = Vec::new();
    // Links.
    let mut nl = podnet_kernel::netlink::Netlink::open().context("netlink")?;
    for link in nl.links()? {
        let ours = link.name == crate::routes::VXLAN_DEV
            || link.name == "podnet0"
            || (link.name.len() == 12
                && link.name.starts_with("pn")
                && link.name[2..].chars().all(|c| c.is_ascii_hexdigit())
                && link.kind.as_deref() == Some("veth"));
        if ours && run_cmd("ip", &["link", "del", &link.name]).is_some() {
            removed.push(format!("link {}", link.name));
        }
    }
    // Routes left after the links: pod CIDRs via the uplink, the service
    // CIDR on-link route.
    let routes = run_cmd("ip", &["-4", "-o", "route", "show"]).unwrap_or_default();
    for line in routes.lines() {
        let Some(dst) = line.split_whitespace().next() else {
            continue;
        };
        let Ok(net) = dst.parse::<ipnet::Ipv4Net>() else {
            continue;
        };
        let pod_route = a.cluster_cidr.contains(&net) && line.contains(" via ");
        let service_route = net == a.service_cidr && !line.contains(" via ");
        if (pod_route || service_route) && run_cmd("ip", &["route", "del", dst]).is_some() {
            removed.push(format!("route {}", line.trim()));
        }
    }
    // nftables.
    for table in [
        "ip podnet-proxy",
        "ip6 podnet-proxy",
        "inet podnet-policy",
        "ip podnet-cni",
    ] {
        let mut args = vec!["delete", "table"];
        args.extend(table.split(' '));
        if run_cmd("nft", &args).is_some() {
            removed.push(format!("nft table {table}"));
        }
    }
    // iptables, when podnet was the proxy.
    if a.proxy_mode == "iptables" {
        for (table, chain, rule) in podnet_core::proxy::iptables::JUMPS {
            let mut args = vec!["-w", "-t", table, "-D", chain];
            args.extend(rule.split(' '));
            while run_cmd("iptables", &args).is_some() {
                removed.push(format!("iptables -t {table} {chain} jump"));
            }
        }
        for table in ["nat", "filter"] {
            let save = run_cmd("iptables-save", &["-t", table]).unwrap_or_default();
            let chains: Vec<String> = save
                .lines()
                .filter_map(|l| l.strip_prefix(':'))
                .filter_map(|l| l.split_whitespace().next())
                .filter(|c| c.starts_with("KUBE-"))
                .map(String::from)
                .collect();
            for c in &chains {
                let _ = run_cmd("iptables", &["-w", "-t", table, "-F", c]);
            }
            for c in &chains {
                if run_cmd("iptables", &["-w", "-t", table, "-X", c]).is_some() {
                    removed.push(format!("iptables -t {table} chain {c}"));
                }
            }
        }
    }
    // Files.
    let conflist = a.cni_conf_dir.join(CONFLIST_NAME);
    if std::fs::remove_file(&conflist).is_ok() {
        removed.push(format!("file {}", conflist.display()));
    }
    let aside = a.cni_conf_dir.join(MOVED_ASIDE);
    if let Ok(entries) = std::fs::read_dir(&aside) {
        for e in entries.flatten() {
            let back = a.cni_conf_dir.join(e.file_name());
            if !back.exists() && std::fs::rename(e.path(), &back).is_ok() {
                removed.push(format!("restored {}", back.display()));
            }
        }
        let _ = std::fs::remove_dir(&aside);
    }
    let plugin = a.cni_bin_dir.join("podnet");
    if std::fs::remove_file(&plugin).is_ok() {
        removed.push(format!("file {}", plugin.display()));
    }
    if a.ipam_dir.exists() && std::fs::remove_dir_all(&a.ipam_dir).is_ok() {
        removed.push(format!("directory {}", a.ipam_dir.display()));
    }
    for r in &removed {
        println!("removed {r}");
    }
    println!("podnet cleanup: {} things removed", removed.len());
    Ok(())
}
