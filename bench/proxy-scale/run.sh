#!/bin/sh
# proxy-scale: podnet's service proxy (nft maps; kube-proxy-shaped iptables)
# against one `nft -f` of a ruleset shaped like upstream kube-proxy's
# nftables mode, in namespaces of its own (root; needs nft, ip,
# iptables-restore). Env: SIZES (default "1000 10000"), ENDPOINTS (10),
# IPTABLES_MAX (default 1000: the iptables backend is measured up to this
# many services; at 10,000 x 10 its restore takes many minutes),
# CARGO_TARGET_DIR.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
# A workspace member: the workspace's lock file and target directory.
cargo build --release --manifest-path "$root/Cargo.toml" -p proxy-scale
exec "${CARGO_TARGET_DIR:-$root/target}/release/proxy-scale" "$@"
