#!/usr/bin/env bash
# A paused node (SIGSTOP): throughput and latency of a 5-node cluster (N=3 R=2 W=2) healthy and
# with n3 stopped, for both client routings, in one run. `dynamokv bench`, CLIENTS closed-loop
# clients, workload a (50% reads, 50% updates) over 10 000 keys, SECS seconds per phase.
#   any-node   the client is given every node's URL (as clients behind a load balancer are)
#   client     the partition-aware client, routing by the ring
#   via-n1     every request through n1, which forwards to the coordinator (the nodes' own
#              routing around the paused node, whatever the client does)
# Not part of CI.
#
#   bench/paused.sh
#   SECS=8 CLIENTS=16 bench/paused.sh
#   BIN=/path/to/old/dynamokv bench/paused.sh   # another build's nodes (same client)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-8}
CLIENTS=${CLIENTS:-16}
cargo build --release -q -p dynamokv
CLIENT=${CLIENT:-$PWD/target/release/dynamokv}
BIN=${BIN:-$PWD/target/release/dynamokv}
HTTP_BASE=${HTTP_BASE:-26300}
PEER_BASE=${PEER_BASE:-26400}
# shellcheck source=lib.sh
source bench/lib.sh

start_cluster 5

run() { # phase, routing
    local nodes=$ALL routing=$2
    if [ "$2" = via-n1 ]; then nodes=$(url 1) routing=any-node; fi
    "$CLIENT" bench --node "$nodes" --routing "$routing" --clients "$CLIENTS" --duration "$SECS" \
        --workload a --keys 10000 --no-preload --json 2>/dev/null |
        python3 -c '
import json, sys
d = json.load(sys.stdin)
r, u = d["read"], d["update"]
ops = r["ops_per_sec"] + u["ops_per_sec"]
print("%-8s %-9s %9.0f %9.2f %9.2f %9.1f %7d" % (sys.argv[1], sys.argv[2], ops,
      r["p99_us"] / 1000, u["p99_us"] / 1000, max(r["max_us"], u["max_us"]) / 1000, d["errors"]))' "$1" "$2"
}

echo "$(date -u +%Y-%m-%d) on $(nproc) cores: bench/paused.sh, nodes: $BIN ($("$BIN" --version))"
"$CLIENT" bench --node "$(url 1)" --clients 8 --ops 10000 --keys 10000 --workload w >/dev/null 2>&1
printf '%-8s %-9s %9s %9s %9s %9s %7s\n' phase routing "ops/s" "read p99" "upd p99" "max ms" errors
for routing in any-node client via-n1; do
    run healthy "$routing"
    kill -STOP "${PIDS[3]}"
    run paused "$routing"
    kill -CONT "${PIDS[3]}"
    sleep 3
done
