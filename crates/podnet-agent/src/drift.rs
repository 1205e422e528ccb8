//! Drift repairs: what the agent programmed (routes, FDB and neighbour
//! entries, the VXLAN device, the proxy and policy tables) is compared
//! with the kernel every `PODNET_RECONCILE_INTERVAL` seconds, and only
//! what differs is programmed again. Why: a route deleted by hand, a
//! flushed table, stayed broken until some object changed. Each repair is
//! logged and counted here for `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;

static REPAIRS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());
static CHECKS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// Every periodic check, so each appears in `/metrics` from the start.
pub const CHECKS_RUN: &[&str] = &["routes", "proxy", "policy"];

/// Every kind of repair, so each appears in `/metrics` from the start.
pub const KINDS: &[&str] = &[
    "route",
    "fdb",
    "neighbour",
    "vxlan-link",
    "proxy-table",
    "policy-table",
];

/// Records `n` repairs of `kind` (logged by the caller, with what).
pub fn repaired(kind: &'static str, n: u64) {
    if n > 0 {
        *REPAIRS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += n;
    }
}

/// Records one completed check of `check` (one of [`CHECKS_RUN`]): with
/// the repair counters, it tells "checked, nothing drifted" from "never
/// checked".
pub fn checked(check: &'static str) {
    *CHECKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(check)
        .or_default() += 1;
}

/// The repair and check counters as Prometheus text.
pub fn metrics() -> String {
    let counts = REPAIRS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut s = String::from(
        "# HELP podnet_drift_repairs_total Kernel state the agent found changed behind its back (deleted by hand, flushed) and programmed again.\n# TYPE podnet_drift_repairs_total counter\n",
    );
    for kind in KINDS {
        s.push_str(&format!(
            "podnet_drift_repairs_total{{kind=\"{kind}\"}} {}\n",
            counts.get(kind).copied().unwrap_or(0)
        ));
    }
    let checks = CHECKS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    s.push_str("# HELP podnet_drift_checks_total Periodic comparisons of the kernel with what the agent programmed, completed.\n# TYPE podnet_drift_checks_total counter\n");
    for check in CHECKS_RUN {
        s.push_str(&format!(
            "podnet_drift_checks_total{{check=\"{check}\"}} {}\n",
            checks.get(check).copied().unwrap_or(0)
        ));
    }
    s
}
