//! podnet-apiserver: see README.md.
