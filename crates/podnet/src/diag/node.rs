//! The node-facts layer: what a node's kernel and files hold, read where
//! they live. [`NodeShell`] is the one way in; everything above it parses
//! the same commands (`ip -j`, `bridge -j`, `nft -j`, `conntrack -L`,
//! `iptables-save`) whoever runs them. [`LabShell`] runs them in the lab's
//! node and pod namespaces (`ip netns exec`) and reads the node's files
//! under its root in `/var/lib/podnet/<lab>/nodes/<node>/root`. On a real
//! cluster the same commands can run in the agent's pod on each node (it is
//! hostNetwork with `NET_ADMIN` and mounts the CNI directories), which is
//! the implementation to add when doctor grows beyond the lab.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

/// Runs commands on nodes and in pods' network namespaces, and reads the
/// nodes' files.
pub trait NodeShell: Send + Sync {
    /// Runs `argv` in `node`'s network namespace.
    fn node_cmd(&self, node: &str, argv: &[&str]) -> anyhow::Result<Output>;
    /// Reads `path` (absolute, as the node sees it) from `node`'s
    /// filesystem with its mode bits; `None` when absent.
    fn node_file(&self, node: &str, path: &str) -> anyhow::Result<Option<(Vec<u8>, u32)>>;
    /// Runs `argv` in `pod`'s network namespace (with the node's tools).
    fn pod_cmd(&self, pod: &Pod, argv: &[&str]) -> anyhow::Result<Output>;
}

/// The lab's node facts: its node namespaces and node roots.
pub struct LabShell {
    /// The lab's name (namespaces are `<lab>-...`).
    pub lab: String,
}

impl LabShell {
    /// Node facts for lab `lab`.
    pub fn new(lab: &str) -> Self {
        LabShell {
            lab: lab.to_string(),
        }
    }

    /// The pod's network namespace name (the lab kubelet's naming).
    pub fn pod_netns(&self, pod: &Pod) -> Option<String> {
        let uid = pod.metadata.uid.as_deref()?;
        Some(format!("{}-pod-{}", self.lab, &uid[..uid.len().min(13)]))
    }

    fn is_lab_node(&self, node: &str) -> bool {
        node.starts_with(&format!("{}-", self.lab))
            && std::path::Path::new("/run/netns").join(node).exists()
    }
}

fn netns_exec(ns: &str, argv: &[&str]) -> anyhow::Result<Output> {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("ip netns exec {ns} {}", argv.join(" ")))
}

impl NodeShell for LabShell {
    fn node_cmd(&self, node: &str, argv: &[&str]) -> anyhow::Result<Output> {
        anyhow::ensure!(
            self.is_lab_node(node),
            "{node} is not a node namespace of lab {}",
            self.lab
        );
        netns_exec(node, argv)
    }

    fn node_file(&self, node: &str, path: &str) -> anyhow::Result<Option<(Vec<u8>, u32)>> {
        use std::os::unix::fs::PermissionsExt;
        let full: PathBuf = crate::lab::state_dir(&self.lab)
            .join("nodes")
            .join(node)
            .join("root")
            .join(path.trim_start_matches('/'));
        match std::fs::read(&full) {
            Ok(b) => {
                let mode = std::fs::metadata(&full)?.permissions().mode();
                Ok(Some((b, mode)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", full.display())),
        }
    }

    fn pod_cmd(&self, pod: &Pod, argv: &[&str]) -> anyhow::Result<Output> {
        let ns = self.pod_netns(pod).context("pod without a UID")?;
        anyhow::ensure!(
            std::path::Path::new("/run/netns").join(&ns).exists(),
            "pod {} has no network namespace {ns} in lab {}",
            crate::diag::world::key(&pod.metadata),
            self.lab
        );
        netns_exec(&ns, argv)
    }
}

/// Runs a command whose stdout is JSON.
fn json(sh: &dyn NodeShell, node: &str, argv: &[&str]) -> anyhow::Result<Value> {
    let out = sh.node_cmd(node, argv)?;
    anyhow::ensure!(
        out.status.success(),
        "{}: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Value::Array(vec![]));
    }
    serde_json::from_str(&text).with_context(|| format!("parsing {}", argv.join(" ")))
}

/// One IPv4 route of the main table.
#[derive(Clone, Debug)]
pub struct RouteFact {
    /// `10.244.1.0/24`, or `default`.
    pub dst: String,
    /// The next hop, if any.
    pub gateway: Option<String>,
    /// The device.
    pub dev: String,
}

/// The node's IPv4 routes.
pub fn routes(sh: &dyn NodeShell, node: &str) -> anyhow::Result<Vec<RouteFact>> {
    let v = json(sh, node, &["ip", "-4", "-j", "route", "show"])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|r| RouteFact {
            dst: r["dst"].as_str().unwrap_or_default().to_string(),
            gateway: r["gateway"].as_str().map(str::to_string),
            dev: r["dev"].as_str().unwrap_or_default().to_string(),
        })
        .collect())
}

/// `(address, MAC)` of the neighbour entries on `dev`.
pub fn neighbours(
    sh: &dyn NodeShell,
    node: &str,
    dev: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let v = json(sh, node, &["ip", "-4", "-j", "neigh", "show", "dev", dev])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            Some((
                n["dst"].as_str()?.to_string(),
                n["lladdr"].as_str()?.to_lowercase(),
            ))
        })
        .collect())
}

/// `(MAC, remote address)` of the FDB entries on `dev` that have a
/// destination (VXLAN tunnel endpoints).
pub fn fdb(sh: &dyn NodeShell, node: &str, dev: &str) -> anyhow::Result<Vec<(String, String)>> {
    let v = json(sh, node, &["bridge", "-j", "fdb", "show", "dev", dev])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            Some((
                n["mac"].as_str()?.to_lowercase(),
                n["dst"].as_str()?.to_string(),
            ))
        })
        .collect())
}

/// One link of a node.
#[derive(Clone, Debug)]
pub struct LinkFact {
    /// Its name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
    /// `veth`, `bridge`, `vxlan`, ... (empty for plain devices).
    pub kind: String,
    /// The bridge it is a port of.
    pub master: Option<String>,
    /// As a bridge port: hairpin mode.
    pub hairpin: Option<bool>,
}

/// The node's links.
pub fn links(sh: &dyn NodeShell, node: &str) -> anyhow::Result<Vec<LinkFact>> {
    let v = json(sh, node, &["ip", "-d", "-j", "link", "show"])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|l| LinkFact {
            name: l["ifname"].as_str().unwrap_or_default().to_string(),
            mtu: l["mtu"].as_u64().unwrap_or(0) as u32,
            kind: l["linkinfo"]["info_kind"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            master: l["master"].as_str().map(str::to_string),
            hairpin: l["linkinfo"]["info_slave_data"]["hairpin"].as_bool(),
        })
        .collect())
}

/// The VTEP MAC podnet's agent gives a node (`podnet-agent`'s
/// `routes::vtep_mac`: locally administered, from the node's address), so
/// doctor knows which FDB and neighbour entries to expect.
pub fn vtep_mac(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("0e:70:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// What the kernel holds of one nft table: chains with their rule counts,
/// sets and maps with their element keys (rendered as nft writes them).
#[derive(Clone, Debug, Default)]
pub struct NftListing {
    /// Chain name → rules in it.
    pub chains: std::collections::BTreeMap<String, usize>,
    /// Set or map name → element keys.
    pub sets: std::collections::BTreeMap<String, Vec<String>>,
}

/// `nft -j list table <family> <name>`, or `None` when there is no such
/// table.
pub fn nft_table(
    sh: &dyn NodeShell,
    node: &str,
    family: &str,
    table: &str,
) -> anyhow::Result<Option<NftListing>> {
    let out = sh.node_cmd(node, &["nft", "-j", "list", "table", family, table])?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file") || err.contains("does not exist") {
            return Ok(None);
        }
        anyhow::bail!("nft list table {family} {table}: {}", err.trim());
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("parsing nft -j")?;
    let mut l = NftListing::default();
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(c) = item.get("chain") {
            l.chains
                .entry(c["name"].as_str().unwrap_or_default().to_string())
                .or_default();
        } else if let Some(r) = item.get("rule") {
            *l.chains
                .entry(r["chain"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        } else if let Some(s) = item.get("set").or_else(|| item.get("map")) {
            let keys = s["elem"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| match e {
                    Value::Array(kv) if !kv.is_empty() => expr_text(&kv[0]),
                    other => expr_text(other),
                })
                .collect();
            l.sets
                .insert(s["name"].as_str().unwrap_or_default().to_string(), keys);
        }
    }
    Ok(Some(l))
}

/// An nft JSON expression as nft's text would show it.
pub fn expr_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => a.iter().map(expr_text).collect::<Vec<_>>().join(" . "),
        Value::Object(o) => {
            if let Some(c) = o.get("concat") {
                expr_text(c)
            } else if let Some(e) = o.get("elem") {
                expr_text(&e["val"])
            } else if let Some(p) = o.get("prefix") {
                format!("{}/{}", expr_text(&p["addr"]), expr_text(&p["len"]))
            } else if let Some(r) = o.get("range") {
                format!("{}-{}", expr_text(&r[0]), expr_text(&r[1]))
            } else {
                v.to_string()
            }
        }
        other => other.to_string(),
    }
}

/// Chain name → rule count in one iptables table (`iptables-save -t`).
pub fn iptables_chains(
    sh: &dyn NodeShell,
    node: &str,
    table: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
    let out = sh.node_cmd(node, &["iptables-save", "-t", table])?;
    anyhow::ensure!(out.status.success(), "iptables-save -t {table} failed");
    let mut m = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(c) = line.strip_prefix(':') {
            m.entry(c.split_whitespace().next().unwrap_or_default().to_string())
                .or_insert(0);
        } else if let Some(r) = line.strip_prefix("-A ") {
            *m.entry(r.split_whitespace().next().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
    }
    Ok(m)
}

/// One conntrack entry: the original and reply tuples.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CtEntry {
    /// `tcp`, `udp`, ...
    pub proto: String,
    /// The original source.
    pub src: String,
    /// The original destination (a service address before DNAT).
    pub dst: String,
    /// The original source port.
    pub sport: u16,
    /// The original destination port.
    pub dport: u16,
    /// The reply's source: the endpoint the connection was sent to.
    pub reply_src: String,
    /// The reply's source port.
    pub reply_sport: u16,
    /// The line as conntrack printed it.
    pub line: String,
}

/// Parses `conntrack -L` lines.
pub fn parse_conntrack(text: &str) -> Vec<CtEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(proto) = f.next() else { continue };
        let mut kv: Vec<(&str, &str)> = Vec::new();
        for w in line.split_whitespace() {
            if let Some((k, v)) = w.split_once('=') {
                kv.push((k, v));
            }
        }
        let nth = |key: &str, n: usize| {
            kv.iter()
                .filter(|(k, _)| *k == key)
                .nth(n)
                .map(|(_, v)| v.to_string())
        };
        let port = |key: &str, n: usize| nth(key, n).and_then(|v| v.parse().ok()).unwrap_or(0);
        let (Some(src), Some(dst), Some(reply_src)) = (nth("src", 0), nth("dst", 0), nth("src", 1))
        else {
            continue;
        };
        out.push(CtEntry {
            proto: proto.to_string(),
            src,
            dst,
            sport: port("sport", 0),
            dport: port("dport", 0),
            reply_src,
            reply_sport: port("sport", 1),
            line: line.to_string(),
        });
    }
    out
}

/// The node's conntrack entries of `proto` (`udp`, `tcp`).
pub fn conntrack(sh: &dyn NodeShell, node: &str, proto: &str) -> anyhow::Result<Vec<CtEntry>> {
    let out = sh.node_cmd(node, &["conntrack", "-L", "-p", proto])?;
    anyhow::ensure!(
        out.status.success(),
        "conntrack -L: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(parse_conntrack(&String::from_utf8_lossy(&out.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_lines_parse() {
        let e = parse_conntrack(
            "udp      17 27 src=10.244.1.3 dst=10.96.0.10 sport=40000 dport=53 [UNREPLIED] src=10.244.2.4 dst=10.244.1.3 sport=53 dport=40000 mark=0 use=1\n",
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].dst, "10.96.0.10");
        assert_eq!(e[0].dport, 53);
        assert_eq!(e[0].reply_src, "10.244.2.4");
        assert_eq!(e[0].reply_sport, 53);
    }

    #[test]
    fn nft_json_expressions_read_as_text() {
        let v: Value = serde_json::from_str(r#"{"concat": ["10.96.0.1", "tcp", 443]}"#).unwrap();
        assert_eq!(expr_text(&v), "10.96.0.1 . tcp . 443");
    }
}
