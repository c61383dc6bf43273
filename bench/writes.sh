#!/usr/bin/env bash
# Write latency at the tail: a fresh 3-node cluster (N=3 R=2 W=2, default sync policy) under
# 32 closed-loop HTTP clients with keep-alive and 100-byte values, two loads, RUNS runs each:
#   new keys     puts to keys never written (--workload w over 10^12 keys, no preload)
#   overwrites   puts over 10 000 keys with the context of the key's last write
# One line per run: ops/s, p50, p99, p99.9 and max of the writes. Not part of CI.
#
#   bench/writes.sh                                   # this checkout's build
#   BIN=/path/to/old/dynamokv bench/writes.sh         # another build's nodes, same client
#   CLIENT=/path/to/dynamokv bench/writes.sh          # a fixed client build (for A/B of builds)
#   NODE_FLAGS="--anti-entropy-interval-ms 0" bench/writes.sh   # flags for every node
#   SECS=15 RUNS=2 CLIENTS=32 bench/writes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-15}
RUNS=${RUNS:-2}
CLIENTS=${CLIENTS:-32}
cargo build --release -q -p dynamokv
CLIENT=${CLIENT:-$PWD/target/release/dynamokv}
BIN=${BIN:-$PWD/target/release/dynamokv}
NODE_FLAGS=${NODE_FLAGS:-}
HTTP_BASE=${HTTP_BASE:-26100}
PEER_BASE=${PEER_BASE:-26200}
# shellcheck source=lib.sh
source bench/lib.sh

fresh_cluster() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "${DIR:?}"/n*
    # shellcheck disable=SC2086
    start 1 $NODE_FLAGS
    sleep 0.3
    # shellcheck disable=SC2086
    start 2 --seeds "127.0.0.1:$((PEER_BASE + 1))" $NODE_FLAGS
    # shellcheck disable=SC2086
    start 3 --seeds "127.0.0.1:$((PEER_BASE + 1))" $NODE_FLAGS
    for _ in $(seq 100); do
        local up=0 i
        for i in 1 2 3; do
            n=$(curl -s "$(url "$i")/admin/members" |
                field "sum(1 for m in d['members'] if m['status']=='up')" 2>/dev/null || echo 0)
            [ "$n" = 3 ] && up=$((up + 1))
        done
        [ "$up" = 3 ] && return 0
        sleep 0.2
    done
    echo "the cluster did not come up" >&2
    exit 1
}

run() { # name, extra bench flags
    local name=$1
    shift
    fresh_cluster
    "$CLIENT" bench --node "$(url 1)" --node "$(url 2)" --node "$(url 3)" --clients "$CLIENTS" \
        --duration "$SECS" --workload w "$@" --json 2>/dev/null |
        python3 -c '
import json, sys
d = json.load(sys.stdin)
u = d["update"]
ms = lambda k: u[k] / 1000
print("%-11s %9.0f %8.2f %8.2f %9.2f %8.1f %7d" % (sys.argv[1], u["ops_per_sec"], ms("p50_us"),
      ms("p99_us"), ms("p999_us"), ms("max_us"), d["errors"]))' "$name"
}

echo "$(date -u +%Y-%m-%d) on $(nproc) cores: bench/writes.sh, nodes: $BIN ($("$BIN" --version))"
printf '%-11s %9s %8s %8s %9s %8s %7s\n' load "ops/s" "p50 ms" "p99 ms" "p99.9 ms" "max ms" errors
for _ in $(seq "$RUNS"); do
    run "new keys" --keys 1000000000000 --no-preload
    run overwrites --keys 10000
done
