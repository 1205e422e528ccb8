//! The proxy planner (pure; no I/O).
