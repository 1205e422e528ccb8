//! Removing UDP conntrack entries that point at endpoints that are gone,
//! through the `conntrack` tool (conntrack-tools), run in the target
//! namespace.

use std::net::IpAddr;
use std::process::Stdio;

use podnet_core::proxy::StaleUdp;

use super::{ProxyError, Target};

fn family_flag(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "ipv4" } else { "ipv6" }
}

/// Runs `conntrack -D` with `args`; returns how many flows it deleted
/// (conntrack exits 1 when none matched, which is not a failure).
fn delete(target: &Target, args: &[String]) -> Result<usize, ProxyError> {
    let out = target
        .command("conntrack")
        .arg("-D")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ProxyError::Spawn {
            tool: "conntrack",
            package: "conntrack",
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted."
    let count = stderr
        .split(':')
        .next_back()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok());
    match count {
        Some(n) => Ok(n),
        None if out.status.success() => Ok(0),
        None => Err(ProxyError::Tool {
            tool: "conntrack",
            stderr: stderr.trim().to_string(),
        }),
    }
}

/// Deletes UDP flows from clients to the service address (or NodePort)
/// that were translated to the endpoint that left.
pub(super) fn delete_stale(target: &Target, s: &StaleUdp) -> Result<usize, ProxyError> {
    let mut args = vec![
        "-f".to_string(),
        family_flag(&s.endpoint).into(),
        "-p".into(),
        "udp".into(),
    ];
    if let Some(ip) = s.service_ip {
        args.extend(["--orig-dst".into(), ip.to_string()]);
    }
    args.extend([
        "--orig-port-dst".into(),
        s.port.to_string(),
        "--dst-nat".into(),
        s.endpoint.to_string(),
    ]);
    delete(target, &args)
}

/// Deletes every UDP flow to a service address and port (used when the
/// service gets its first endpoint: earlier flows were never translated).
pub(super) fn delete_service(target: &Target, ip: IpAddr, port: u16) -> Result<usize, ProxyError> {
    let args = vec![
        "-f".to_string(),
        family_flag(&ip).into(),
        "-p".into(),
        "udp".into(),
        "--orig-dst".into(),
        ip.to_string(),
        "--orig-port-dst".into(),
        port.to_string(),
    ];
    delete(target, &args)
}
