#!/usr/bin/env bash
# DNS benchmark: dnsperf (4 clients, same settings) against podnet-dns, NSD
# and dnsmasq, each loaded with the same generated records for 1,000 and
# 10,000 services, all on loopback addresses of this machine as our own
# processes (no system service is touched). Prints QPS, p50/p99 latency,
# podnet's ratio to NSD, podnet's resident memory at 10,000 services and
# the update-to-answer latency of new services.
#
# usage: bench/dns/run.sh [seconds per run (default 10)]
# needs: dnsperf nsd dnsmasq python3 (Debian), a release build of podnet-dns
#        (built here with cargo if missing; set PODNET_DNS to use another).
set -euo pipefail
SECS=${1:-10}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
for t in dnsperf nsd dnsmasq python3; do
  command -v $t >/dev/null || { echo "missing $t (apt-get install -y dnsperf nsd dnsmasq python3)" >&2; exit 1; }
done
if [ -z "${PODNET_DNS:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p podnet-dns)
  PODNET_DNS=${CARGO_TARGET_DIR:-$ROOT/target}/release/podnet-dns
fi
WORK=$(mktemp -d /tmp/podnet-dns-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=5300
CORES=$(nproc)
PODNET_IP=127.0.0.31 NSD_IP=127.0.0.32 DNSMASQ_IP=127.0.0.33

wait_answer() { # ip name
  for _ in $(seq 1 200); do
    dig @"$1" -p $PORT "$2" +short +tries=1 +time=1 2>/dev/null | grep -q . && return 0
    sleep 0.05
  done
  echo "server at $1 never answered $2" >&2; exit 1
}

# dnsperf: QPS and mean latency (plain run), p50/p99 from a verbose run.
perf() { # ip queries -> "qps p50_ms p99_ms"
  local out qps
  out=$(dnsperf -s "$1" -p $PORT -d "$2" -c 4 -T 2 -q 200 -l "$SECS" 2>&1)
  qps=$(echo "$out" | awk '/Queries per second/ {print $4}')
  lost=$(echo "$out" | awk '/Queries lost/ {print $3}')
  dnsperf -s "$1" -p $PORT -d "$2" -c 4 -T 2 -q 200 -l 3 -v 2>/dev/null |
    awk '$1 == ">" && $NF ~ /^[0-9.]+$/ {print $NF}' | sort -g > "$WORK/lat"
  python3 - "$WORK/lat" "$qps" "$lost" <<'PY'
import sys
lat = [float(l) for l in open(sys.argv[1]) if l.strip()]
pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
print(f"{float(sys.argv[2]):.0f} {pct(0.50):.3f} {pct(0.99):.3f} {sys.argv[3]}")
PY
}

printf "%-8s %-10s %12s %10s %10s %8s\n" services server QPS p50_ms p99_ms lost
for N in 1000 10000; do
  D="$WORK/$N"; python3 "$HERE/gen.py" $N "$D"
  FIRST=$(head -1 "$D/queries" | cut -d' ' -f1)

  RUST_LOG=info,podnet_dns::source=debug "$PODNET_DNS" --listen $PODNET_IP:$PORT --metrics-listen $PODNET_IP:9153 \
    --no-forward --zone-from-file "$D/objects.json" --udp-workers "$CORES" 2>"$WORK/podnet-$N.log" &
  PIDS+=($!); PODNET_PID=$!
  cat > "$D/nsd.conf" <<CONF
server:
  ip-address: $NSD_IP@$PORT
  port: $PORT
  server-count: $CORES
  username: ""
  chroot: ""
  zonesdir: "$D"
  database: ""
  zonelistfile: "$D/zone.list"
  xfrdfile: "$D/xfrd.state"
  xfrdir: "$D"
  pidfile: "$D/nsd.pid"
  logfile: "$D/nsd.log"
  verbosity: 0
  hide-version: yes
remote-control:
  control-enable: no
zone:
  name: cluster.local
  zonefile: "$D/zone"
CONF
  nsd -d -c "$D/nsd.conf" 2>>"$WORK/nsd-$N.log" & PIDS+=($!)
  dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --no-dhcp-interface='*' \
    --listen-address=$DNSMASQ_IP --bind-interfaces --port=$PORT --user=root --group=root \
    --addn-hosts="$D/hosts" --local=/cluster.local/ --pid-file="$D/dnsmasq.pid" \
    2>>"$WORK/dnsmasq-$N.log" & PIDS+=($!)
  for ip in $PODNET_IP $NSD_IP $DNSMASQ_IP; do wait_answer $ip "$FIRST"; done

  declare -A R=()
  for s in podnet:$PODNET_IP nsd:$NSD_IP dnsmasq:$DNSMASQ_IP; do
    name=${s%%:*}; ip=${s#*:}
    R[$name]=$(perf "$ip" "$D/queries")
    read -r qps p50 p99 lost <<<"${R[$name]}"
    printf "%-8s %-10s %12s %10s %10s %8s\n" $N "$name" "$qps" "$p50" "$p99" "$lost"
  done
  read -r pq _ pp99 _ <<<"${R[podnet]}"; read -r nq _ np99 _ <<<"${R[nsd]}"; read -r dq _ _ _ <<<"${R[dnsmasq]}"
  python3 -c "print(f'{$N} services: podnet/NSD QPS ratio {$pq/$nq:.2f}, podnet/dnsmasq {$pq/$dq:.2f}, p99 podnet {$pp99} ms vs NSD {$np99} ms')"

  if [ $N = 10000 ]; then
    rss=$(awk '/VmRSS/ {print $2}' /proc/$PODNET_PID/status)
    echo "podnet-dns resident memory at $N services: $((rss / 1024)) MiB ($rss kB)"
    # Update-to-answer: add one service at a time to the file, SIGHUP, and
    # poll until it answers; p50/p99 over 100 services.
    python3 "$HERE/update_latency.py" "$D/objects.json" $PODNET_PID $PODNET_IP $PORT 100
    # The part a watch event pays (no JSON re-read): rebuilding the index.
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/podnet-$N.log" | grep -o 'took_us=[0-9]*' | cut -d= -f2 | sort -n |
      awk '{a[NR]=$1} END {printf "index rebuild at %d services over %d rebuilds: p50 %.1f ms, p99 %.1f ms\n", '$N', NR, a[int(NR*0.5)+1]/1000, a[int(NR*0.99)+1]/1000}'
  fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
done

# Update-to-answer through the real path (API server -> watch -> index).
"$HERE/watch.sh" 10000 100
