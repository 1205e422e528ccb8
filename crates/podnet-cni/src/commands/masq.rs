//! Optional `ipMasq`: pods' traffic to anything outside the network's
//! subnets leaves with the node's address. One nft table of the plugin's
//! own in the node's namespace, a base chain and an address set per
//! network, rewritten idempotently in one transaction.

use std::net::IpAddr;

use podnet_kernel::nft::{self, Namespace};

use crate::config::{Ipam, NetConf};
use crate::error::CniError;
use crate::naming;
use crate::result::IpConfig;

use super::NFT_TABLE as TABLE;

/// Adds the pod's IPv4 addresses to its network's masquerade set.
pub fn add(conf: &NetConf, ips: &[IpConfig]) -> Result<(), CniError> {
    let v4: Vec<String> = ips
        .iter()
        .filter(|i| i.address.addr().is_ipv4())
        .map(|i| i.address.addr().to_string())
        .collect();
    if v4.is_empty() {
        return Ok(());
    }
    let id = naming::network_id(&conf.name);
    let subnets: Vec<String> = match &conf.ipam {
        Ipam::Builtin { ranges, .. } => ranges
            .iter()
            .flatten()
            .filter(|r| r.subnet.addr().is_ipv4())
            .map(|r| r.subnet.to_string())
            .collect(),
        Ipam::Delegate { .. } => ips
            .iter()
            .filter(|i| i.address.addr().is_ipv4())
            .map(|i| i.address.trunc().to_string())
            .collect(),
    };
    let script = format!(
        "add table ip {TABLE}\n\
         add set ip {TABLE} src_{id} {{ type ipv4_addr; }}\n\
         add chain ip {TABLE} masq_{id} {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain ip {TABLE} masq_{id}\n\
         add rule ip {TABLE} masq_{id} ip saddr @src_{id} ip daddr != {{ {nets} }} ip daddr != 224.0.0.0/4 masquerade\n\
         add element ip {TABLE} src_{id} {{ {addrs} }}\n",
        nets = subnets.join(", "),
        addrs = v4.join(", "),
    );
    nft::apply(Namespace::Current, &script).map_err(|e| CniError::dataplane(format!("ipMasq: {e}")))
}

/// Removes addresses from the masquerade set; absent ones are fine.
pub fn remove(conf: &NetConf, ips: &[IpAddr]) {
    let id = naming::network_id(&conf.name);
    for ip in ips.iter().filter(|i| i.is_ipv4()) {
        let _ = nft::apply(
            Namespace::Current,
            &format!("delete element ip {TABLE} src_{id} {{ {ip} }}\n"),
        );
    }
}
