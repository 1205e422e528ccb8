#!/bin/sh
# netpol-scale: podnet's NetworkPolicy ruleset vs an iptables chain-per-policy
# anchor, in namespaces of its own (root; needs nft, ip, iptables-legacy).
# Env: SECONDS_PER_RUN (default 1.0), ROUNDS (default 3), CARGO_TARGET_DIR.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
# Same dependency versions as the workspace.
[ -f "$here/Cargo.lock" ] || cp "$here/../../Cargo.lock" "$here/Cargo.lock"
cargo build --release --manifest-path "$here/Cargo.toml"
exec "${CARGO_TARGET_DIR:-$here/target}/release/netpol-scale"
