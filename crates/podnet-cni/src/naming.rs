//! Deterministic names and addresses derived from the attachment, so that a
//! DEL or GC can find the host end without any state, and a retried ADD can
//! clear what a killed one left behind.

/// Prefix of every host-side veth podnet makes.
pub const HOST_VETH_PREFIX: &str = "pn";

fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// `pn` + 10 hex digits of a hash of (container ID, ifname): 12 bytes,
/// within the kernel's 15, collision-free in practice (40 bits).
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    format!(
        "{HOST_VETH_PREFIX}{:010x}",
        fnv1a(&[container_id, ifname]) & 0xff_ffff_ffff
    )
}

/// A locally administered unicast MAC derived from `parts`.
pub fn mac(parts: &[&str]) -> [u8; 6] {
    let h = fnv1a(parts).to_be_bytes();
    [0x02, h[1], h[2], h[3], h[4], h[5]]
}

/// A short stable id for a network name, usable in nft identifiers.
pub fn network_id(name: &str) -> String {
    format!("{:08x}", fnv1a(&[name]) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_differ() {
        let a = host_veth("abc", "eth0");
        assert_eq!(a.len(), 12);
        assert_eq!(a, host_veth("abc", "eth0"));
        assert_ne!(a, host_veth("abc", "eth1"));
        let m = mac(&["x"]);
        assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
    }
}
