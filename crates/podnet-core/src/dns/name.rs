//! Domain-name helpers of the index: zone normalisation, reverse names and
//! the dashed-address form of pod and endpoint names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a configured zone name is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// The zone is empty (the root cannot be the cluster domain).
    #[error("zone name is empty")]
    Empty,
    /// A label is empty, longer than 63 bytes or not LDH.
    #[error("zone {zone:?}: bad label {label:?} (1-63 letters, digits or '-')")]
    BadLabel {
        /// The zone as given.
        zone: String,
        /// The offending label.
        label: String,
    },
    /// The whole name is longer than 253 characters.
    #[error("zone {0:?} is longer than 253 characters")]
    TooLong(String),
}

/// Lowercases `zone` and strips the trailing dot, checking it is a valid
/// host name, so every later comparison is a plain string compare.
pub fn normalize_zone(zone: &str) -> Result<String, NameError> {
    let z = zone.trim().trim_end_matches('.').to_ascii_lowercase();
    if z.is_empty() {
        return Err(NameError::Empty);
    }
    if z.len() > 253 {
        return Err(NameError::TooLong(zone.into()));
    }
    for label in z.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(NameError::BadLabel {
                zone: zone.into(),
                label: label.into(),
            });
        }
    }
    Ok(z)
}

/// `a.b` joined with a dot (`b` may be empty, meaning the root).
pub(crate) fn join(a: &str, b: &str) -> String {
    if b.is_empty() {
        a.to_string()
    } else {
        let mut s = String::with_capacity(a.len() + 1 + b.len());
        s.push_str(a);
        s.push('.');
        s.push_str(b);
        s
    }
}

/// The reverse-lookup name of an address: `d.c.b.a.in-addr.arpa` or the 32
/// nibbles of `ip6.arpa`.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                for nib in [byte & 0xf, byte >> 4] {
                    s.push(char::from_digit(u32::from(nib), 16).unwrap_or('0'));
                    s.push('.');
                }
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// The dashed form of an address used as a DNS label: `10-244-1-5`, or for
/// IPv6 the compressed text with `:` replaced by `-` (`fd00-10-244--5`).
pub fn dashed_ip(ip: IpAddr) -> String {
    ip.to_string().replace([':', '.'], "-")
}

/// Parses a dashed label back into an address; `None` for anything that is
/// not exactly a dashed IPv4 (four decimal octets) or a dashed IPv6.
pub fn parse_dashed_ip(label: &str) -> Option<IpAddr> {
    let parts: Vec<&str> = label.split('-').collect();
    if parts.len() == 4 && parts.iter().all(|p| !p.is_empty()) {
        let mut o = [0u8; 4];
        for (i, p) in parts.iter().enumerate() {
            if p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            o[i] = p.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(o)));
    }
    if label.contains("--") || parts.len() == 8 {
        return label
            .replace('-', ":")
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6);
    }
    None
}
