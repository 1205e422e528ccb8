//! podnet-cni: see README.md.

fn main() {}
