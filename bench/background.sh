#!/usr/bin/env bash
# Foreground latency while a large hint drain runs, with and without the scheduler's feedback.
#
# For each target (background_p99_target_ms; 0 = feedback off) on a fresh 4-node cluster
# (N=3 R=2 W=2): measures an idle baseline with `dynamokv bench`, stops n4, writes HINT_KEYS keys
# (about three quarters of them leave a hint for n4 on another node), starts n4 again and runs
# the same bench while the hints drain; prints both p99s and how long the drain took. Not part
# of CI. Takes a few minutes per target.
#
#   bench/background.sh             # targets 0 and 20
#   TARGETS="0 10 20" HINT_KEYS=200000 bench/background.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=${TARGETS:-"0 20"}
HINT_KEYS=${HINT_KEYS:-300000}
SECS=${SECS:-20}
CLIENTS=${CLIENTS:-8}
BASE=${BASE:-28500}
EXTRA=${EXTRA:-}   # more server flags, e.g. EXTRA="--background-items-per-sec 2000"
cargo build --release -q -p dynamokv
BIN=$PWD/target/release/dynamokv
HTTP_BASE=$BASE
PEER_BASE=$((BASE + 100))
# shellcheck source=lib.sh
source bench/lib.sh

http() { url "$1"; }
node() { # node I TARGET: starts nI (seeded with n1) and waits until it listens
    local i=$1 seeds=()
    [ "$i" -gt 1 ] && seeds=(--seeds "127.0.0.1:$((PEER_BASE + 1))")
    start "$i" --io-threads 1 --background-p99-target-ms "$2" $EXTRA "${seeds[@]}"
    for _ in $(seq 100); do grep -q "^listening" "$DIR/n$i.log" 2>/dev/null && return; sleep 0.1; done
    echo "n$i did not start:"; cat "$DIR/n$i.log"; exit 1
}
pending() { # hints waiting on every node
    local total=0 i
    for i in 1 2 3 4; do
        n=$(curl -s "$(http "$i")/admin/stats" | sed -n 's/.*"hints_pending":\([0-9]*\).*/\1/p')
        total=$((total + ${n:-0}))
    done
    echo "$total"
}
bench() { # bench LABEL: prints throughput and p99
    "$BIN" bench --node "$(http 1)" --node "$(http 2)" --node "$(http 3)" --workload a \
        --clients "$CLIENTS" --duration "$SECS" --keys 100000 --no-preload --json >"$DIR/bench.json"
    python3 -c "
import json; r = json.load(open('$DIR/bench.json'))
t = r['total']
print('  %-28s %7.0f ops/s   p50 %6.2f ms   p99 %7.2f ms   p99.9 %7.2f ms   errors %d' % ('$1', t['ops_per_sec'], t['p50_us'] / 1000, t['p99_us'] / 1000, t['p999_us'] / 1000, r['errors']))"
}

for target in $TARGETS; do
    rm -rf "${DIR:?}"/n*
    echo "== background_p99_target_ms = $target $([ "$target" = 0 ] && echo '(feedback off)')"
    for i in 1 2 3 4; do node "$i" "$target"; done
    for _ in $(seq 150); do
        up=$(curl -s "$(http 1)/admin/ring" | grep -o '"up":true' | wc -l)
        [ "$up" -eq 4 ] && break
        sleep 0.2
    done
    "$BIN" bench --node "$(http 1)" --workload w --clients 16 --ops 100000 --keys 100000 >/dev/null
    bench "idle (no background job)"
    kill -9 "${PIDS[4]}"; wait "${PIDS[4]}" 2>/dev/null || true
    sleep 3
    if [ "$HINT_KEYS" -gt 0 ]; then # HINT_KEYS=0: a control run, the restart alone
        "$BIN" bench --node "$(http 1)" --node "$(http 2)" --node "$(http 3)" --workload w \
            --clients 32 --ops "$HINT_KEYS" --keys "$HINT_KEYS" --no-preload --seed 7 >/dev/null
    fi
    hints=$(pending)
    echo "  hints waiting for n4: $hints"
    node 4 "$target"
    t0=$(date +%s.%N)
    bench "during the hint drain"
    left=$(pending)
    while [ "$(pending)" -gt 0 ]; do sleep 0.5; done
    t1=$(date +%s.%N)
    share=$(curl -s "$(http 1)/admin/stats" | sed -n 's/.*"backoffs":\([0-9]*\).*/\1/p')
    printf '  hints left when the bench ended: %s; drain took %.1f s (%.0f hints/s); n1 backed off in %s windows\n' \
        "$left" "$(echo "$t1 - $t0" | bc -l)" "$(echo "$hints / ($t1 - $t0)" | bc -l)" "$share"
    for i in 1 2 3 4; do kill "${PIDS[$i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
done
