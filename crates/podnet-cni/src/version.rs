//! The spec versions podnet speaks, and the result shape each expects.

/// Every version podnet accepts and can answer in.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version, used when a request names none.
pub const LATEST: &str = "1.1.0";

/// Results before 1.0.0 carry `"version": "4"|"6"` on each IP.
pub fn ips_carry_version(v: &str) -> bool {
    v.starts_with("0.")
}

/// 1.1.0 added `mtu` on interfaces.
pub fn interfaces_carry_mtu(v: &str) -> bool {
    v == "1.1.0"
}

/// CHECK was introduced in 0.4.0.
pub fn supports_check(v: &str) -> bool {
    !v.starts_with("0.3")
}

/// STATUS and GC were introduced in 1.1.0.
pub fn supports_status_and_gc(v: &str) -> bool {
    v == "1.1.0"
}

/// The VERSION verb's answer.
pub fn version_report(requested: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": requested.filter(|v| SUPPORTED.contains(v)).unwrap_or(LATEST),
        "supportedVersions": SUPPORTED,
    })
}
