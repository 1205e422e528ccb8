#!/bin/sh
# agent-scale: one real podnet-agent against the lab's API server holding
# the Kubernetes scalability envelope, in namespaces of its own (root;
# needs ip, bridge, nft). Args are passed on, e.g. `--scale 0.1`.
# Env: CARGO_TARGET_DIR.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
# Workspace members: the workspace's lock file and target directory.
cargo build --release --manifest-path "$root/Cargo.toml" -p podnet-agent -p agent-scale
exec "${CARGO_TARGET_DIR:-$root/target}/release/agent-scale" "$@"
