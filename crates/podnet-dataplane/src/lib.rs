//! Effects at the edge: the appliers that carry out `podnet-core`'s plans
//! (proxy maps, policy sets) atomically. The kernel primitives live in
//! `podnet-kernel` and are re-exported here.

pub use podnet_kernel::{netlink, netns, nft};

pub mod policy;
pub mod proxy;
