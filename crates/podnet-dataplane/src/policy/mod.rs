//! The policy applier.
