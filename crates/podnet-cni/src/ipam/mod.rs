//! Built-in IPAM with host-local's semantics: one address per range set,
//! the gateway never handed out, first free address after the last one
//! given, allocations keyed by container ID and interface.
//!
//! The allocator here is pure (state in, state out); `store` keeps the state
//! on disk under an exclusive lock with atomic replacement, and `delegate`
//! runs another IPAM plugin instead.

pub mod delegate;
pub mod store;

use std::collections::HashSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::Range;
use crate::env::PodRef;
use crate::error::{CniError, code};

/// One address held by one attachment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The address.
    pub ip: IpAddr,
    /// Which range set it came from.
    pub range_set: usize,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The pod, from `CNI_ARGS`.
    #[serde(default)]
    pub pod: PodRef,
}

/// Everything IPAM knows about one network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The boot the allocations belong to (`/proc/sys/kernel/random/boot_id`):
    /// every attachment dies with the boot, so a state from another boot
    /// holds nothing and is started afresh.
    #[serde(default)]
    pub boot_id: String,
    /// Last address given, per range set (where the next search starts).
    #[serde(default)]
    pub last_reserved: Vec<Option<IpAddr>>,
    /// Every current allocation.
    #[serde(default)]
    pub allocations: Vec<Allocation>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((n as u32).into())
    } else {
        IpAddr::V6(n.into())
    }
}

/// The range of `set` that holds `ip`, if any.
fn range_of(set: &[Range], ip: IpAddr) -> Option<&Range> {
    set.iter()
        .find(|r| r.start <= ip && ip <= r.end && r.subnet.contains(&ip))
}

/// Walks a range set in host-local's order: after `last`, through the
/// ranges, wrapping around, each candidate once.
fn candidates<'a>(
    set: &'a [Range],
    last: Option<IpAddr>,
) -> impl Iterator<Item = (IpAddr, &'a Range)> + 'a {
    let v4 = set[0].start.is_ipv4();
    let (start_range, start_at) = match last.and_then(|l| {
        set.iter()
            .position(|r| r.start <= l && l <= r.end)
            .map(|i| (i, l))
    }) {
        Some((i, l)) => (i, Some(to_u128(l) + 1)),
        None => (0, None),
    };
    let n = set.len();
    // Visit the starting range from `start_at`, then every range whole,
    // then the starting range's head up to `start_at`.
    (0..=n).flat_map(move |k| {
        let idx = (start_range + k) % n;
        let r = &set[idx];
        let (lo, hi) = (to_u128(r.start), to_u128(r.end));
        let (from, to) = match (k, start_at) {
            (0, Some(s)) => (s, hi),
            (0, None) => (lo, hi),
            (k, Some(s)) if k == n => (lo, s.saturating_sub(1).min(hi)),
            (k, None) if k == n => (1, 0), // nothing: already visited whole
            _ => (lo, hi),
        };
        // An empty span (from > to) yields nothing.
        (from..=to).map(move |i| (from_u128(i, v4), r))
    })
}

impl State {
    /// The addresses held by one attachment, in range-set order.
    pub fn held_by(&self, container_id: &str, ifname: &str) -> Vec<&Allocation> {
        let mut v: Vec<&Allocation> = self
            .allocations
            .iter()
            .filter(|a| a.container_id == container_id && a.ifname == ifname)
            .collect();
        v.sort_by_key(|a| a.range_set);
        v
    }

    /// Gives the attachment one address per range set. An attachment that
    /// already holds addresses gets the same ones back (a retried ADD).
    pub fn allocate(
        &mut self,
        sets: &[Vec<Range>],
        container_id: &str,
        ifname: &str,
        pod: &PodRef,
        requested: &[IpAddr],
    ) -> Result<Vec<(IpAddr, Range)>, CniError> {
        let held = self.held_by(container_id, ifname);
        if held.len() == sets.len() && !held.is_empty() {
            return held
                .iter()
                .map(|a| {
                    range_of(&sets[a.range_set.min(sets.len() - 1)], a.ip)
                        .map(|r| (a.ip, r.clone()))
                        .ok_or_else(|| {
                            CniError::new(
                                code::ADDRESS_UNAVAILABLE,
                                format!("{} held by {container_id} is no longer in range", a.ip),
                            )
                        })
                })
                .collect();
        }
        self.release(container_id, ifname);

        for ip in requested {
            if !sets.iter().any(|s| range_of(s, *ip).is_some()) {
                return Err(CniError::new(
                    code::ADDRESS_UNAVAILABLE,
                    format!("requested address {ip} is in no configured range"),
                ));
            }
        }
        let used: HashSet<IpAddr> = self.allocations.iter().map(|a| a.ip).collect();
        self.last_reserved.resize(sets.len(), None);
        let mut out = Vec::with_capacity(sets.len());
        for (i, set) in sets.iter().enumerate() {
            let gateways: HashSet<IpAddr> = set.iter().map(|r| r.gateway).collect();
            let wanted = requested.iter().find(|ip| range_of(set, **ip).is_some());
            let found = match wanted {
                Some(ip) => {
                    if used.contains(ip) || gateways.contains(ip) {
                        return Err(CniError::new(
                            code::ADDRESS_UNAVAILABLE,
                            format!("requested address {ip} is already in use"),
                        ));
                    }
                    range_of(set, *ip).map(|r| (*ip, r))
                }
                None => candidates(set, self.last_reserved[i])
                    .find(|(ip, _)| !used.contains(ip) && !gateways.contains(ip)),
            };
            let Some((ip, range)) = found else {
                let desc: Vec<String> = set.iter().map(|r| r.subnet.to_string()).collect();
                return Err(CniError::new(
                    code::RANGE_EXHAUSTED,
                    format!(
                        "no free address in range set {i} ({}): every address is allocated",
                        desc.join(", ")
                    ),
                ));
            };
            out.push((ip, range.clone()));
        }
        for (i, (ip, _)) in out.iter().enumerate() {
            if requested.is_empty() || !requested.contains(ip) {
                self.last_reserved[i] = Some(*ip);
            }
            self.allocations.push(Allocation {
                ip: *ip,
                range_set: i,
                container_id: container_id.into(),
                ifname: ifname.into(),
                pod: pod.clone(),
            });
        }
        Ok(out)
    }

    /// Frees what the attachment holds; `false` when it held nothing.
    pub fn release(&mut self, container_id: &str, ifname: &str) -> bool {
        let before = self.allocations.len();
        self.allocations
            .retain(|a| !(a.container_id == container_id && a.ifname == ifname));
        before != self.allocations.len()
    }

    /// Frees every allocation not in `valid`; returns what was freed.
    pub fn retain_valid(&mut self, valid: &HashSet<(String, String)>) -> Vec<Allocation> {
        let (keep, freed): (Vec<_>, Vec<_>) = self
            .allocations
            .drain(..)
            .partition(|a| valid.contains(&(a.container_id.clone(), a.ifname.clone())));
        self.allocations = keep;
        freed
    }

    /// Whether every range set still has a free address (STATUS).
    pub fn first_exhausted(&self, sets: &[Vec<Range>]) -> Option<usize> {
        let used: HashSet<IpAddr> = self.allocations.iter().map(|a| a.ip).collect();
        sets.iter().position(|set| {
            let gateways: HashSet<IpAddr> = set.iter().map(|r| r.gateway).collect();
            !candidates(set, None).any(|(ip, _)| !used.contains(&ip) && !gateways.contains(&ip))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(subnet: &str, start: Option<&str>, end: Option<&str>) -> Range {
        let json = serde_json::json!({
            "cniVersion": "1.0.0", "name": "t",
            "ipam": {"ranges": [[{"subnet": subnet, "rangeStart": start, "rangeEnd": end}]]}
        });
        let c = crate::config::parse(json.to_string().as_bytes()).unwrap();
        match c.ipam {
            crate::config::Ipam::Builtin { ranges, .. } => ranges[0][0].clone(),
            _ => unreachable!(),
        }
    }

    fn alloc(s: &mut State, sets: &[Vec<Range>], id: &str) -> Result<IpAddr, CniError> {
        s.allocate(sets, id, "eth0", &PodRef::default(), &[])
            .map(|v| v[0].0)
    }

    #[test]
    fn first_free_after_last_given_and_gateway_skipped() {
        let sets = vec![vec![range("10.0.0.0/29", None, None)]];
        let mut s = State::default();
        // .1 is the gateway; .2 .. .6 are usable.
        let got: Vec<String> = (0..5)
            .map(|i| alloc(&mut s, &sets, &format!("c{i}")).unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        let e = alloc(&mut s, &sets, "c5").unwrap_err();
        assert_eq!(e.code, code::RANGE_EXHAUSTED);
        assert_eq!(s.first_exhausted(&sets), Some(0));
        assert!(s.release("c1", "eth0"));
        assert!(!s.release("c1", "eth0"));
        // After .6 was last given, the search wraps and finds .3.
        assert_eq!(alloc(&mut s, &sets, "c6").unwrap().to_string(), "10.0.0.3");
        // Released then freed again: next search starts after .3.
        assert!(s.release("c2", "eth0"));
        assert_eq!(alloc(&mut s, &sets, "c7").unwrap().to_string(), "10.0.0.4");
    }

    #[test]
    fn retried_add_gets_the_same_address() {
        let sets = vec![vec![range(
            "10.0.0.0/24",
            Some("10.0.0.10"),
            Some("10.0.0.20"),
        )]];
        let mut s = State::default();
        let a = alloc(&mut s, &sets, "c").unwrap();
        assert_eq!(a.to_string(), "10.0.0.10");
        assert_eq!(alloc(&mut s, &sets, "c").unwrap(), a);
        assert_eq!(s.allocations.len(), 1);
    }

    #[test]
    fn requested_address_and_gc() {
        let sets = vec![
            vec![range("10.0.0.0/24", None, None)],
            vec![range("fd00::/120", None, None)],
        ];
        let mut s = State::default();
        let got = s
            .allocate(
                &sets,
                "a",
                "eth0",
                &PodRef::default(),
                &["10.0.0.77".parse().unwrap()],
            )
            .unwrap();
        assert_eq!(got[0].0.to_string(), "10.0.0.77");
        assert_eq!(got[1].0.to_string(), "fd00::2");
        let e = s
            .allocate(
                &sets,
                "b",
                "eth0",
                &PodRef::default(),
                &["10.0.0.77".parse().unwrap()],
            )
            .unwrap_err();
        assert_eq!(e.code, code::ADDRESS_UNAVAILABLE);
        let e = s
            .allocate(
                &sets,
                "b",
                "eth0",
                &PodRef::default(),
                &["10.9.0.1".parse().unwrap()],
            )
            .unwrap_err();
        assert_eq!(e.code, code::ADDRESS_UNAVAILABLE);
        alloc(&mut s, &sets, "c").unwrap();
        let valid = HashSet::from([("c".to_string(), "eth0".to_string())]);
        let freed = s.retain_valid(&valid);
        assert_eq!(freed.len(), 2);
        assert_eq!(s.allocations.len(), 2);
    }

    #[test]
    fn multi_range_set_wraps_across_ranges() {
        let sets = vec![vec![
            range("10.0.0.0/24", Some("10.0.0.5"), Some("10.0.0.6")),
            range("10.0.1.0/24", Some("10.0.1.5"), Some("10.0.1.5")),
        ]];
        let mut s = State::default();
        let got: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|id| alloc(&mut s, &sets, id).unwrap().to_string())
            .collect();
        assert_eq!(got, ["10.0.0.5", "10.0.0.6", "10.0.1.5"]);
        s.release("a", "eth0");
        assert_eq!(alloc(&mut s, &sets, "d").unwrap().to_string(), "10.0.0.5");
    }
}
