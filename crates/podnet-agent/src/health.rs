//! The agent's liveness and readiness, for the DaemonSet's probes.
//! Live: the process answers. Ready: the node's dataplane is programmed
//! and its CNI configuration written; until then `/readyz` answers 503
//! with what the agent is waiting for (a pod CIDR, the first syncs).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static READY: AtomicBool = AtomicBool::new(false);
static PHASE: Mutex<String> = Mutex::new(String::new());

/// Says what the agent is doing while not ready.
pub fn set_phase(what: &str) {
    *PHASE.lock().unwrap_or_else(|e| e.into_inner()) = what.to_string();
}

/// Marks the agent ready (or not), with the reason.
pub fn set_ready(ready: bool, what: &str) {
    set_phase(what);
    READY.store(ready, Ordering::SeqCst);
}

/// Whether the agent is ready, and what it is doing.
pub fn ready() -> (bool, String) {
    let phase = PHASE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let phase = if phase.is_empty() {
        "starting".to_string()
    } else {
        phase
    };
    (READY.load(Ordering::SeqCst), phase)
}
