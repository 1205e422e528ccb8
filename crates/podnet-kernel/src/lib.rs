//! Kernel primitives that every effectful part of podnet shares: a
//! synchronous rtnetlink socket, network namespaces podnet owns, nft
//! transactions, nf_tables set elements written over netlink, and a table's
//! chains and rule counts read over netlink (drift checks that never read
//! set elements). Small and dependency-light, so the CNI plugin can use it
//! without pulling in the planners.

pub mod netlink;
pub mod netns;
#[cfg(feature = "nflog")]
pub mod nflog;
pub mod nft;
pub mod nft_elements;
pub mod nft_rules;
