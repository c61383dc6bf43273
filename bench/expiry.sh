#!/usr/bin/env bash
# The cost of expiry: one 3-node cluster (N=3, default settings but a 10 s tombstone minimum
# age) loaded with KEYS keys that all expire at the same moment (SET ... PXAT, 16-byte keys,
# 100-byte values, through redis-cli --pipe) and LIVE keys that never expire. Then:
# - foreground GETs of the live keys (redis-benchmark, 20 clients) for MEASURE seconds before
#   the deadline: throughput and p50/p99;
# - from the deadline on, 10 s of the same GETs at a time until the expired keys are collected
#   from disk (at most WAIT seconds): throughput and p50/p99 of each, and how many keys were
#   collected so far (from the nodes' tombstones_collected, 3 copies a key); the keys per second;
# - that no expired key is readable any more, and the data directories' size before and after.
# Not part of CI; needs redis-tools (installed with apt when missing).
#
#   bench/expiry.sh                   # 1 million expiring keys
#   KEYS=100000 bench/expiry.sh       # a quick run
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
LIVE=${LIVE:-100000}
MEASURE=${MEASURE:-30}
WAIT=${WAIT:-900}
HTTP_BASE=${HTTP_BASE:-27900}
PEER_BASE=$((HTTP_BASE + 100))
RESP_BASE=$((HTTP_BASE + 200))
cargo build --release -q -p dynamokv
BIN=${BIN:-$PWD/target/release/dynamokv}
# shellcheck source=lib.sh
source bench/lib.sh
need redis-cli redis-tools

port() { echo $((RESP_BASE + $1)); }
for i in 1 2 3; do
    seeds=()
    [ "$i" = 1 ] || seeds=(--seeds "127.0.0.1:$((PEER_BASE + 1))")
    start "$i" --resp "127.0.0.1:$(port "$i")" --tombstone-min-age-ms 10000 "${seeds[@]}"
    [ "$i" = 1 ] && sleep 0.3
done
wait_up 1 3
make_values
echo "$(date -u +%Y-%m-%d) on $(nproc) cores: bench/expiry.sh KEYS=$KEYS LIVE=$LIVE ($("$BIN" --version))"

# load PORT FROM TO STEP PREFIX [PXAT]: SET PREFIX<12 digits> to a 100-byte value, expiring at
# PXAT (ms since the Unix epoch) when given.
load() {
    awk -v s="$2" -v e="$3" -v m="$4" -v p="$5" -v at="${6:-}" 'NR == FNR { v[FNR - 1] = $0; next } END {
        for (k = s; k < e; k += m) {
            key = sprintf("%s%012d", p, k)
            if (at == "")
                printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$100\r\n%s\r\n", length(key), key, v[(k * 7919) % 4096]
            else
                printf "*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$100\r\n%s\r\n$4\r\nPXAT\r\n$%d\r\n%s\r\n", length(key), key, v[(k * 7919) % 4096], length(at), at
        }
    }' "$DIR/values" /dev/null | redis-cli -p "$1" --pipe --pipe-timeout 0 | grep -o 'errors: [0-9]*, replies: [0-9]*'
}
load "$(port 1)" 0 "$LIVE" 1 "key:"
# The deadline: far enough for the load (about 25 000 keys/s here) and a first measurement.
T0=$SECONDS
AT=$(($(date +%s%3N) + (KEYS / 15000 + MEASURE + 30) * 1000))
LOADERS=()
for i in 0 1 2; do
    load "$(port $((i + 1)))" "$i" "$KEYS" 3 "exp:" "$AT" &
    LOADERS+=($!)
done
wait "${LOADERS[@]}"
echo "loaded $LIVE live keys and $KEYS keys expiring at $AT in $((SECONDS - T0)) s"
left=$(((AT - $(date +%s%3N)) / 1000))
[ "$left" -gt "$MEASURE" ] || { echo "the load took too long: raise the deadline" >&2; exit 1; }
echo "disk before, MiB: $(du -sm "$DIR"/n1 "$DIR"/n2 "$DIR"/n3 | awk '{printf "%s ", $1}')"

collected() {
    local total=0 i c
    for i in 1 2 3; do
        c=$(curl -s "$(url "$i")/admin/stats" | field "d['anti_entropy']['tombstones_collected']")
        total=$((total + c))
    done
    echo "$total"
}
measure() {
    local n=$1
    redis-benchmark -p "$(port 2)" -c 20 -n "$n" -r "$LIVE" -t get -d 100 --csv |
        tr -d '"' | awk -F, '$1 == "GET" {printf "%d requests/s, p50 %s ms, p99 %s ms, max %s ms", $2, $5, $7, $8}'
}
# How many GETs take about MEASURE seconds, from a short sample.
rate=$(redis-benchmark -p "$(port 2)" -c 20 -n 20000 -r "$LIVE" -t get -d 100 --csv | tr -d '"' | awk -F, '$1 == "GET" {print int($2)}')
N=$((rate * MEASURE))
echo "foreground before the deadline ($N GETs of live keys, 20 clients): $(measure "$N")"
before=$(collected)
while [ "$(date +%s%3N)" -lt "$AT" ]; do sleep 0.2; done
echo "deadline passed: every expiring key reads as absent at once:" \
    "GET exp:000000000000 -> '$(redis-cli -p "$(port 3)" GET exp:000000000000)'," \
    "EXISTS of 5 -> $(redis-cli -p "$(port 1)" EXISTS exp:000000000001 exp:000000000002 exp:000000000003 exp:000000000500 exp:000000099999)"
T1=$SECONDS
# Until every copy is collected: 10 s of foreground GETs at a time, then the collection so far.
N10=$((rate * 10))
target=$((before + 3 * KEYS))
last=$before
while :; do
    fgr=$(measure "$N10")
    now=$(collected)
    el=$((SECONDS - T1))
    echo "  +${el}s: $(((now - before) / 3)) of $KEYS keys collected; foreground: $fgr"
    last=$now
    [ "$now" -ge "$target" ] && break
    [ "$el" -ge "$WAIT" ] && { echo "  not all collected after $WAIT s"; break; }
done
el=$((SECONDS - T1))
echo "collected $(((last - before) / 3)) expired keys (3 copies each) in ${el} s after the deadline: $(((last - before) / 3 / (el > 0 ? el : 1))) keys/s"
echo "foreground once collected: $(measure "$N")"
echo "disk after, MiB: $(du -sm "$DIR"/n1 "$DIR"/n2 "$DIR"/n3 | awk '{printf "%s ", $1}')"
