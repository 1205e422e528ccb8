#!/bin/sh
# netpol-scale: podnet's NetworkPolicy ruleset vs an iptables chain-per-policy
# anchor, in namespaces of its own (root; needs nft, ip, iptables-legacy).
# Env: SECONDS_PER_RUN (default 1.0), ROUNDS (default 3), CARGO_TARGET_DIR.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
# A workspace member: the workspace's lock file and target directory.
cargo build --release --manifest-path "$root/Cargo.toml" -p netpol-scale
exec "${CARGO_TARGET_DIR:-$root/target}/release/netpol-scale"
