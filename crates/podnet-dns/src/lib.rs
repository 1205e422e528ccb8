//! podnet-dns: the cluster DNS server. It answers the cluster zone from a
//! [`podnet_core::dns::Index`] held behind an atomic pointer (no lock on the
//! read path) and forwards everything else to upstream resolvers with a
//! cache. The binary in `main.rs` wires these parts to flags; tests and the
//! agent can start the same server in-process with [`server::start`].

pub mod forward;
pub mod metrics;
pub mod server;
pub mod source;
pub mod wire;
