#!/usr/bin/env bash
# Update-to-answer through the real path: the lab's API server
# (podnet-apiserver, release) as our own process on 127.0.0.34, N Services
# loaded through it, podnet-dns watching it with a kubeconfig, then COUNT
# new Services created one at a time, each timed from the POST to its first
# correct answer. Also prints podnet-dns's resident memory with N services
# from the watch (reflector caches included).
#
# usage: bench/dns/watch.sh [N (default 10000)] [COUNT (default 100)]
set -euo pipefail
N=${1:-10000}
COUNT=${2:-100}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build --release -q -p podnet-dns -p podnet-apiserver)
WORK=$(mktemp -d /tmp/podnet-dns-watch.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
API_IP=127.0.0.34 DNS_IP=127.0.0.35 PORT=5300

python3 "$HERE/gen.py" "$N" "$WORK/gen" >/dev/null
"$TARGET/release/podnet-apiserver" serve --listen $API_IP:6443 --tls-san $API_IP \
  --state-dir "$WORK/api" >"$WORK/api.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$WORK/api/admin.kubeconfig" ] && break; sleep 0.1; done
[ -s "$WORK/api/admin.kubeconfig" ] || { echo "the API server did not start:" >&2; cat "$WORK/api.log" >&2; exit 1; }
RUST_LOG=info,podnet_dns::source=debug "$TARGET/release/podnet-dns" --listen $DNS_IP:$PORT \
  --metrics-listen $DNS_IP:9153 --no-forward --udp-workers "$(nproc)" \
  --kubeconfig "$WORK/api/admin.kubeconfig" 2>"$WORK/dns.log" & PIDS+=($!); DNS_PID=$!
python3 "$HERE/watch_latency.py" "$WORK/api/admin.kubeconfig" "$WORK/gen/objects.json" $DNS_IP $PORT "$COUNT"
rss=$(awk '/VmRSS/ {print $2}' /proc/$DNS_PID/status)
echo "podnet-dns resident memory watching $N services: $((rss / 1024)) MiB ($rss kB)"
sed 's/\x1b\[[0-9;]*m//g' "$WORK/dns.log" | grep -o 'took_us=[0-9]*' | cut -d= -f2 | tail -n "$COUNT" | sort -n |
  awk '{a[NR]=$1} END {if (NR) printf "index updates during the run (%d): p50 %.1f ms, p99 %.1f ms\n", NR, a[int(NR*0.5)+1]/1000, a[int(NR*0.99)+1]/1000}'
