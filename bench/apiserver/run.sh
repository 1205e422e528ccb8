#!/usr/bin/env bash
# podnet-apiserver benchmark: creates/s, LIST 10k (plain, Table), watch
# delivery p50/p99 over 50 watchers, RSS. Builds in release.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo bench -p podnet-apiserver --bench apiserver "$@"
