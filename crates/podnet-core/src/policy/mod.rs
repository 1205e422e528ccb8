//! The policy planner (pure; no I/O).
