#!/usr/bin/env bash
# Memory and data-size benchmark: loads KEYS (default 10 million) 16-byte keys with 100-byte
# values into a 3-node dynamokv cluster (N=3 R=2 W=2) through the RESP port, printing each
# node's RSS along the way, and runs the same redis-benchmark load at one tenth of the keys and
# at all of them (throughput should not fall as data grows). Not part of CI; needs
# redis-tools (installed with apt when missing). Takes about 15 minutes at 10 million keys.
#
#   bench/memory.sh                 # 10 million keys
#   KEYS=1000000 bench/memory.sh    # a quicker run
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-10000000}
BASE=${BASE:-27500}
if ! command -v redis-benchmark >/dev/null; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-tools >/dev/null
fi
cargo build --release -q -p dynamokv
BIN=$PWD/target/release/dynamokv
DIR=$(mktemp -d)
DEV=
cleanup() {
    [ -n "$DEV" ] && kill "$DEV" 2>/dev/null && wait "$DEV" 2>/dev/null
    rm -rf "$DIR"
}
trap cleanup EXIT
"$BIN" dev --nodes 3 --dir "$DIR/dkv" --http-port-base $((BASE + 1)) --peer-port-base $((BASE + 101)) \
    --resp-port-base $((BASE + 201)) --log warn >"$DIR/dev.out" 2>&1 &
DEV=$!
for _ in $(seq 100); do grep -q "agree on the ring" "$DIR/dev.out" && break; sleep 0.3; done
grep -q "agree on the ring" "$DIR/dev.out" || { cat "$DIR/dev.out"; exit 1; }
port() { echo $((BASE + 200 + $1)); }
pid() { cat "$DIR/dkv/n$1.pid"; }
rss() { awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$(pid "$1")/status"; }
START=$(date +%s)
report() { # keys loaded so far
    printf '%8ds %12s keys   RSS MiB: n1 %s  n2 %s  n3 %s   data dir: %s\n' $(($(date +%s) - START)) "$1" \
        "$(rss 1)" "$(rss 2)" "$(rss 3)" "$(du -sh "$DIR/dkv/n1" | cut -f1)"
}
# load FROM TO: SET k<15 digits> for every key in [FROM, TO), spread over the three nodes.
load() {
    local from=$1 to=$2 pids=() i
    for i in 0 1 2; do
        awk -v s="$from" -v e="$to" -v n="$i" 'BEGIN {
            v = sprintf("%0100d", 0)
            for (k = s + n; k < e; k += 3)
                printf "*3\r\n$3\r\nSET\r\n$16\r\nk%015d\r\n$100\r\n%s\r\n", k, v
        }' | redis-cli -p "$(port $((i + 1)))" --pipe --pipe-timeout 0 >"$DIR/load$i.out" 2>&1 &
        pids+=($!)
    done
    local t=0
    while kill -0 "${pids[0]}" 2>/dev/null || kill -0 "${pids[1]}" 2>/dev/null || kill -0 "${pids[2]}" 2>/dev/null; do
        sleep 1
        t=$((t + 1))
        [ $((t % 30)) -eq 0 ] || continue
        local done_cmds=0
        for i in 1 2 3; do
            done_cmds=$((done_cmds + $(redis-cli -p "$(port "$i")" INFO | awk -F: '/total_commands_processed/ {print $2+0}')))
        done
        report "~$((from + done_cmds - LOADED_CMDS))"
    done
    wait "${pids[@]}"
    grep -h "errors" "$DIR"/load*.out | sed 's/^/  /' || true
    LOADED_CMDS=0
    for i in 1 2 3; do
        LOADED_CMDS=$((LOADED_CMDS + $(redis-cli -p "$(port "$i")" INFO | awk -F: '/total_commands_processed/ {print $2+0}')))
    done
}
measure() { # keys
    echo "redis-benchmark -t set,get -n 200000 -c 50 -d 100 -r $1 (keys in the cluster: $1):"
    redis-benchmark -p "$(port 1)" -t set,get -n 200000 -c 50 -d 100 -r "$1" --csv 2>/dev/null |
        awk -F, 'NR > 1 {gsub(/"/, ""); printf "  %s %s requests/s, p99 %s ms\n", $1, $2, $7}'
    LOADED_CMDS=0
    for i in 1 2 3; do
        LOADED_CMDS=$((LOADED_CMDS + $(redis-cli -p "$(port "$i")" INFO | awk -F: '/total_commands_processed/ {print $2+0}')))
    done
}
echo "$(date -u +%Y-%m-%d) on $(nproc) cores: bench/memory.sh KEYS=$KEYS"
LOADED_CMDS=0
report 0
TENTH=$((KEYS / 10))
load 0 "$TENTH"
report "$TENTH"
measure "$TENTH"
load "$TENTH" "$KEYS"
report "$KEYS"
measure "$KEYS"
sleep 20
report "$KEYS (20 s idle)"
echo "node thread stalls (bursts that kept a node busy for 500 ms or more), per node:"
for i in 1 2 3; do
    printf '  n%s: %s, longest %s ms\n' "$i" "$(grep -c 'busy for' "$DIR/dkv/n$i.log" || true)" \
        "$(grep -o 'busy for [0-9]* ms' "$DIR/dkv/n$i.log" | awk '{print $3}' | sort -n | tail -1)"
done
