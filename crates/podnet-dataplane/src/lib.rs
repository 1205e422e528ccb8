//! Effects at the edge: network namespaces, synchronous rtnetlink, and the
//! nftables/iptables appliers. Decisions are made by `podnet-core`'s
//! planners; this crate only carries them out, atomically.

pub mod netns;
pub mod nft;
pub mod policy;
pub mod proxy;
