//! podnet-dns: see README.md.

fn main() {}
