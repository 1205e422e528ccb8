//! podnet's CNI plugin: a per-node bridge, a veth per pod, built-in IPAM with
//! host-local's semantics, CNI 1.1 complete. Synchronous and small on
//! purpose: it is exec'd once per pod and must finish in milliseconds.

pub mod commands;
pub mod config;
pub mod env;
pub mod error;
pub mod ipam;
pub mod naming;
pub mod result;
pub mod runtime;
pub mod version;
