#!/usr/bin/env bash
# A slow replica: read latency of a 5-node cluster (N=3 R=2 W=2) healthy and with n3's storage
# slowed by a fault (every object read and write on n3 waits DELAY_MS first, as on a slow disk),
# for both client routings, in one run. `dynamokv bench --workload c` (reads only), CLIENTS
# closed-loop clients, 10 000 keys written first, SECS seconds per phase. Prints ops/s, read
# p50/p99/p99.9 and the reads the client hedged. Not part of CI.
#
#   bench/slow.sh
#   SECS=8 CLIENTS=16 DELAY_MS=200 bench/slow.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-8}
CLIENTS=${CLIENTS:-16}
DELAY_MS=${DELAY_MS:-200}
cargo build --release -q -p dynamokv
CLIENT=${CLIENT:-$PWD/target/release/dynamokv}
BIN=${BIN:-$PWD/target/release/dynamokv}
HTTP_BASE=${HTTP_BASE:-26500}
PEER_BASE=${PEER_BASE:-26600}
# shellcheck source=lib.sh
source bench/lib.sh

start_cluster 5 --enable-fault-injection

run() { # phase, routing
    "$CLIENT" bench --node "$ALL" --routing "$2" --clients "$CLIENTS" --duration "$SECS" \
        --workload c --keys 10000 --no-preload --json 2>/dev/null |
        python3 -c '
import json, sys
d = json.load(sys.stdin)
r = d["read"]
print("%-8s %-9s %9.0f %9.2f %9.2f %9.2f %8d %7d" % (sys.argv[1], sys.argv[2], r["ops_per_sec"],
      r["p50_us"] / 1000, r["p99_us"] / 1000, r["p999_us"] / 1000, d.get("hedged_reads", 0), d["errors"]))' "$1" "$2"
}

echo "$(date -u +%Y-%m-%d) on $(nproc) cores: bench/slow.sh (n3 storage delay ${DELAY_MS} ms), nodes: $BIN ($("$BIN" --version))"
"$CLIENT" bench --node "$(url 1)" --clients 8 --ops 10000 --keys 10000 --workload w >/dev/null 2>&1
printf '%-8s %-9s %9s %9s %9s %9s %8s %7s\n' phase routing "reads/s" "p50 ms" "p99 ms" "p99.9 ms" hedged errors
for routing in client any-node; do
    run healthy "$routing"
    curl -s -X POST "$(url 3)/admin/faults" -d "{\"storage_delay_ms\": $DELAY_MS}" >/dev/null
    run slow "$routing"
    curl -s -X DELETE "$(url 3)/admin/faults" >/dev/null
    sleep 3
done
