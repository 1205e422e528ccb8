//! podnet-agent: see README.md.

fn main() {}
