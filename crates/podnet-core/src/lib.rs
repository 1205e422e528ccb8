//! podnet's pure heart: the planners that turn Kubernetes objects into a
//! desired dataplane (proxy maps, policy sets, DNS index). Nothing here does
//! I/O, so every decision is unit-testable and `podnet trace` can replay it.

pub mod cron;
pub mod dns;
pub mod policy;
pub mod proxy;
