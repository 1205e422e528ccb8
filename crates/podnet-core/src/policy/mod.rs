//! NetworkPolicy, planned (pure; no I/O).
//!
//! - [`model`]: the API's semantics read straight (selectors, peers, ports,
//!   the verdict of one connection) and [`expected_matrix`], the truth table
//!   `podnet connectivity --expect` holds against live probes;
//! - [`plan`]: from Pods, Namespaces, NetworkPolicies and one node's facts to
//!   that node's [`PolicyState`] (sets keyed by address and peer class);
//! - [`render`]: the state as one nft table with constant rules, and the
//!   element diff between two states.

pub mod labels;
pub mod model;
pub mod plan;
pub mod render;

#[cfg(test)]
mod tests;

pub use model::{
    Direction, Explanation, Matrix, Mismatch, PodFacts, PodKey, PolicyWorld, Probe, Proto, Verdict,
    expected_matrix,
};
pub use plan::{NodeFacts, PolicyState, plan, plan_world};
pub use render::{
    DROP_LOG_PREFIX_EGRESS, DROP_LOG_PREFIX_INGRESS, DropCount, DropCounters, DropLog, StateDiff,
    TABLE, diff, render_drop_metrics, render_full, render_full_with,
};

/// A policy object the API could not have accepted; the caller keeps its
/// last good state and reports this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// What was wrong, naming the policy.
    #[error("invalid NetworkPolicy: {0}")]
    Invalid(String),
}
