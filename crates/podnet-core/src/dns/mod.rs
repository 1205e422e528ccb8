//! The dns planner (pure; no I/O).
