//! Kernel primitives that every effectful part of podnet shares: a
//! synchronous rtnetlink socket, network namespaces podnet owns, nft
//! transactions, and nf_tables set elements written over netlink. Small and
//! dependency-light, so the CNI plugin can use it without pulling in the
//! planners.

pub mod netlink;
pub mod netns;
#[cfg(feature = "nflog")]
pub mod nflog;
pub mod nft;
pub mod nft_elements;
pub mod nft_rules;
