//! Prometheus counters of the server: requests by type and rcode, a latency
//! histogram, cache hits, index size. Plain relaxed atomics so the query
//! path never takes a lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use podnet_core::dns::rtype;

const TYPES: [(u16, &str); 9] = [
    (rtype::A, "A"),
    (rtype::AAAA, "AAAA"),
    (rtype::SRV, "SRV"),
    (rtype::PTR, "PTR"),
    (rtype::TXT, "TXT"),
    (rtype::SOA, "SOA"),
    (rtype::NS, "NS"),
    (rtype::CNAME, "CNAME"),
    (rtype::ANY, "ANY"),
];
const N_TYPES: usize = TYPES.len() + 1; // + "other"
const RCODES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "other",
];
/// Histogram bucket upper bounds in microseconds.
const BUCKETS_US: [u64; 14] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 500_000, 2_000_000,
];

fn type_slot(t: u16) -> usize {
    TYPES
        .iter()
        .position(|(c, _)| *c == t)
        .unwrap_or(TYPES.len())
}

fn rcode_slot(rc: u16) -> usize {
    match rc {
        0..=5 => usize::from(rc),
        16 => 6,
        _ => 7,
    }
}

/// The server's counters.
#[derive(Debug)]
pub struct Metrics {
    requests: Vec<AtomicU64>,
    buckets: Vec<AtomicU64>,
    latency_sum_ns: AtomicU64,
    latency_count: AtomicU64,
    /// Packets dropped without an answer (too short, responses).
    pub dropped: AtomicU64,
    /// Index swaps since start.
    pub swaps: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: (0..N_TYPES * RCODES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            buckets: (0..BUCKETS_US.len()).map(|_| AtomicU64::new(0)).collect(),
            latency_sum_ns: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            swaps: AtomicU64::new(0),
        }
    }
}

/// Figures the exposition needs from outside the counters.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Records in the current index.
    pub index_records: usize,
    /// Names in the current index.
    pub index_names: usize,
    /// Forwarder cache hits.
    pub cache_hits: u64,
    /// Forwarder cache misses.
    pub cache_misses: u64,
    /// Queries collapsed onto one in flight.
    pub collapsed: u64,
    /// Failed upstream exchanges.
    pub upstream_failures: u64,
}

impl Metrics {
    /// Counts one answered request of `qtype` with `rcode`, taking `took`.
    pub fn record(&self, qtype: u16, rcode: u16, took: Duration) {
        let i = type_slot(qtype) * RCODES.len() + rcode_slot(rcode);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        let us = took.as_micros() as u64;
        if let Some(b) = BUCKETS_US.iter().position(|&le| us <= le) {
            self.buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Total requests answered with `rcode` (any type).
    pub fn requests_with_rcode(&self, rcode: u16) -> u64 {
        let r = rcode_slot(rcode);
        (0..N_TYPES)
            .map(|t| self.requests[t * RCODES.len() + r].load(Ordering::Relaxed))
            .sum()
    }

    /// The Prometheus text exposition.
    pub fn render(&self, g: &Gauges) -> String {
        let mut s = String::with_capacity(4096);
        s.push_str(
            "# HELP podnet_dns_requests_total DNS requests answered, by query type and rcode.\n",
        );
        s.push_str("# TYPE podnet_dns_requests_total counter\n");
        for t in 0..N_TYPES {
            let tname = TYPES.get(t).map_or("other", |(_, n)| n);
            for (r, rname) in RCODES.iter().enumerate() {
                let v = self.requests[t * RCODES.len() + r].load(Ordering::Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        s,
                        "podnet_dns_requests_total{{type=\"{tname}\",rcode=\"{rname}\"}} {v}"
                    );
                }
            }
        }
        s.push_str("# HELP podnet_dns_request_duration_seconds Time from receiving a query to sending its answer.\n");
        s.push_str("# TYPE podnet_dns_request_duration_seconds histogram\n");
        let mut cum = 0;
        for (i, le) in BUCKETS_US.iter().enumerate() {
            cum += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                s,
                "podnet_dns_request_duration_seconds_bucket{{le=\"{}\"}} {cum}",
                *le as f64 / 1e6
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "podnet_dns_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "podnet_dns_request_duration_seconds_sum {}",
            self.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(s, "podnet_dns_request_duration_seconds_count {count}");
        let counters = [
            (
                "podnet_dns_cache_hits_total",
                "Forwarded questions answered from the cache.",
                g.cache_hits,
            ),
            (
                "podnet_dns_cache_misses_total",
                "Forwarded questions sent upstream.",
                g.cache_misses,
            ),
            (
                "podnet_dns_forward_collapsed_total",
                "Questions joined to an identical one in flight.",
                g.collapsed,
            ),
            (
                "podnet_dns_upstream_failures_total",
                "Failed upstream exchanges.",
                g.upstream_failures,
            ),
            (
                "podnet_dns_dropped_total",
                "Packets dropped unanswered.",
                self.dropped.load(Ordering::Relaxed),
            ),
            (
                "podnet_dns_index_swaps_total",
                "Index rebuilds swapped in.",
                self.swaps.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let gauges = [
            (
                "podnet_dns_index_records",
                "Resource records in the index.",
                g.index_records,
            ),
            (
                "podnet_dns_index_names",
                "Owner names in the index.",
                g.index_names,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_histogram() {
        let m = Metrics::default();
        m.record(rtype::A, 0, Duration::from_micros(30));
        m.record(rtype::A, 3, Duration::from_micros(3000));
        m.record(999, 0, Duration::from_micros(10));
        let s = m.render(&Gauges {
            index_records: 42,
            ..Gauges::default()
        });
        assert!(
            s.contains("podnet_dns_requests_total{type=\"A\",rcode=\"NOERROR\"} 1\n"),
            "{s}"
        );
        assert!(s.contains("podnet_dns_requests_total{type=\"A\",rcode=\"NXDOMAIN\"} 1\n"));
        assert!(s.contains("podnet_dns_requests_total{type=\"other\",rcode=\"NOERROR\"} 1\n"));
        assert!(s.contains("podnet_dns_request_duration_seconds_bucket{le=\"0.000025\"} 1\n"));
        assert!(s.contains("podnet_dns_request_duration_seconds_bucket{le=\"0.00005\"} 2\n"));
        assert!(s.contains("podnet_dns_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(s.contains("podnet_dns_index_records 42\n"));
        assert_eq!(m.requests_with_rcode(0), 2);
    }
}
