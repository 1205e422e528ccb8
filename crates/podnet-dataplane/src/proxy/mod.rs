//! The proxy applier.
