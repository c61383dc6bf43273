#!/usr/bin/env bash
# Speed as data grows: one 3-node cluster (N=3 R=2 W=2, default settings) measured at SMALL keys
# and at KEYS keys in one run. Keys are redis-benchmark's own (`key:` and 12 digits, 16 bytes) so
# its random GETs hit; loaded values are 100 random bytes (hex, from a pool of 4 096, so the
# engine's compression gains nothing a user's random data would not give it).
#
# Prints: redis-benchmark SET and GET (-c 50 -d 100, random keys over the whole set) at SMALL keys,
# right after loading KEYS, and after SETTLE seconds of quiet (steady state), each with p50 and
# p99 and its share of the SMALL figure; the load rate of `redis-cli --pipe`, its errors and the
# node-thread stalls (100 ms or more) during it; disk bytes per key against the stored record
# (key + value + version); RSS per node. Not part of CI; needs redis-tools (installed with apt
# when missing). About 12 minutes at 10 million keys on 2 cores.
#
#   bench/memory.sh                                 # 10 million keys
#   KEYS=2000000 bench/memory.sh                    # a quicker run
#   NODE_FLAGS="--cache-mb 256" bench/memory.sh     # flags for every node
#   SMALL=100000 REQS=200000 SETTLE=60 bench/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-10000000}
SMALL=${SMALL:-100000}
REQS=${REQS:-200000}
SETTLE=${SETTLE:-60}
NODE_FLAGS=${NODE_FLAGS:-}
HTTP_BASE=${HTTP_BASE:-27500}
PEER_BASE=$((HTTP_BASE + 100))
RESP_BASE=$((HTTP_BASE + 200))
cargo build --release -q -p dynamokv
BIN=${BIN:-$PWD/target/release/dynamokv}
# shellcheck source=lib.sh
source bench/lib.sh
need redis-benchmark redis-tools

port() { echo $((RESP_BASE + $1)); }
rss() { awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/${PIDS[$1]}/status"; }
metric() { # node, series: the sum of the series' samples
    curl -s "$(url "$1")/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%d", s}'
}
stalls() { echo $(($(metric 1 dynamokv_node_thread_stalls_total) + $(metric 2 dynamokv_node_thread_stalls_total) + $(metric 3 dynamokv_node_thread_stalls_total))); }

for i in 1 2 3; do
    seeds=()
    [ "$i" = 1 ] || seeds=(--seeds "127.0.0.1:$((PEER_BASE + 1))")
    # shellcheck disable=SC2086
    start "$i" --resp "127.0.0.1:$(port "$i")" "${seeds[@]}" $NODE_FLAGS
    [ "$i" = 1 ] && sleep 0.3
done
wait_up 1 3
sleep 3

make_values

# load FROM TO: SET key:<12 digits> for every key in [FROM, TO), one redis-cli --pipe per node.
LOAD_ERRORS=0
load() {
    local from=$1 to=$2 pids=() i
    for i in 0 1 2; do
        load_keys "$(port $((i + 1)))" $((from + i)) "$to" 3 >"$DIR/load$i.out" 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}"
    local e
    for i in 0 1 2; do
        e=$(grep -o 'errors: [0-9]*' "$DIR/load$i.out" | awk '{print $2}')
        LOAD_ERRORS=$((LOAD_ERRORS + ${e:-0}))
        grep -v "^All data transferred\|^Waiting for\|^errors:" "$DIR/load$i.out" | sort | uniq -c | head -3 | sed 's/^/  /' || true
    done
}

declare -A SET GET
measure() { # label, keys
    local out
    out=$(redis-benchmark -p "$(port 1)" -t set,get -n "$REQS" -c 50 -d 100 -r "$2" --csv 2>/dev/null)
    SET[$1]=$(echo "$out" | awk -F, '/"SET"/ {gsub(/"/, ""); printf "%.0f %s %s", $2, $5, $7}')
    GET[$1]=$(echo "$out" | awk -F, '/"GET"/ {gsub(/"/, ""); printf "%.0f %s %s", $2, $5, $7}')
}
report() {
    printf '  %6ds %10s keys   RSS MiB: n1 %s  n2 %s  n3 %s   data dir n1: %s\n' $((SECONDS - T0)) "$1" \
        "$(rss 1)" "$(rss 2)" "$(rss 3)" "$(du -sh "$DIR/n1" | cut -f1)"
}

echo "$(date -u +%Y-%m-%d) on $(nproc) cores: bench/memory.sh KEYS=$KEYS SMALL=$SMALL NODE_FLAGS='$NODE_FLAGS' ($("$BIN" --version))"
T0=$SECONDS
report 0
load 0 "$SMALL"
measure small "$SMALL"
report "$SMALL"
(while sleep 30; do report "..."; done) &
REPORTER=$!
STALLS0=$(stalls)
L0=$SECONDS
load "$SMALL" "$KEYS"
LOAD_SECS=$((SECONDS - L0))
kill "$REPORTER"
LOAD_STALLS=$(($(stalls) - STALLS0))
report "$KEYS"
measure loaded "$KEYS"
sleep "$SETTLE"
measure steady "$KEYS"
report "$KEYS, steady"

echo
printf 'load of %d keys with redis-cli --pipe (one per node): %d s, %d keys/s, %d errors, %d node-thread stalls >= 100 ms\n' \
    $((KEYS - SMALL)) "$LOAD_SECS" $(((KEYS - SMALL) / (LOAD_SECS > 0 ? LOAD_SECS : 1))) "$LOAD_ERRORS" "$LOAD_STALLS"
echo
echo "redis-benchmark -t set,get -n $REQS -c 50 -d 100 -r KEYS on node 1's RESP port:"
printf '| %-28s | %8s | %7s | %7s | %6s | %8s | %7s | %7s | %6s |\n' keys "SET/s" "p50 ms" "p99 ms" share "GET/s" "p50 ms" "p99 ms" share
printf '|%s|\n' "------------------------------|----------|---------|---------|--------|----------|---------|---------|--------"
row() { # label, phase
    read -r s s50 s99 <<<"${SET[$2]}"
    read -r g g50 g99 <<<"${GET[$2]}"
    read -r S0 _ _ <<<"${SET[small]}"
    read -r G0 _ _ <<<"${GET[small]}"
    printf '| %-28s | %8s | %7s | %7s | %5s%% | %8s | %7s | %7s | %5s%% |\n' "$1" "$s" "$s50" "$s99" $((100 * s / S0)) "$g" "$g50" "$g99" $((100 * g / G0))
}
row "$SMALL" small
row "$KEYS, right after the load" loaded
row "$KEYS, after ${SETTLE} s quiet" steady
echo
record=$(curl -s "$(url 1)/admin/local/key:000000000001" | field "d['stored_bytes']")
echo "stored record of one key: $record bytes (key 16 + value 100 + version, ring position and framing $((record - 116)))"
for i in 1 2 3; do
    bytes=$(du -sb "$DIR/n$i" | cut -f1)
    awk -v i="$i" -v b="$bytes" -v k="$KEYS" -v r="$record" -v m="$(rss "$i")" 'BEGIN {
        printf "n%s: %.0f MB on disk, %.0f bytes per key, %.2fx the stored record; RSS %s MiB\n", i, b / 1e6, b / k, b / k / r, m }'
done
echo "n1's data directory by part:"
(cd "$DIR/n1" && du -sb -- * */* 2>/dev/null | sort -rn | head -8 | awk '{printf "  %8.1f MB  %s\n", $1 / 1e6, $2}')
