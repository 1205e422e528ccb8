//! podnet: see README.md.

fn main() {}
