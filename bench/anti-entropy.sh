#!/usr/bin/env bash
# Real-process anti-entropy benchmark (run by hand; not part of the test suite).
#
# Three nodes (N=3) on loopback hold KEYS keys. Measures `dynamokv bench` (workload a) while
# idle, then kills one node, deletes its data directory, restarts it under the same id and
# measures the same benchmark against the two others while the wiped node rebuilds by
# anti-entropy, and how long the rebuild takes.
#
#   cargo build --release -p dynamokv && bench/anti-entropy.sh
#   KEYS=10000 SECS=10 bench/anti-entropy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-100000}
SECS=${SECS:-20}
BIN=${BIN:-target/release/dynamokv}
HTTP_BASE=18080
PEER_BASE=19080
# shellcheck source=lib.sh
source bench/lib.sh
stat() { curl -s "$(url "$1")/admin/stats"; }

start 1
sleep 0.3
start 2 --seeds 127.0.0.1:19081
start 3 --seeds 127.0.0.1:19081
for _ in $(seq 100); do
    up=$(curl -s "$(url 1)/admin/ring" | field 'sum(1 for m in d["members"] if m["up"])' 2>/dev/null || echo 0)
    [ "$up" = 3 ] && break
    sleep 0.1
done
echo "3 nodes up; loading $KEYS keys of 100 B"
"$BIN" bench --node "$(url 1)" --node "$(url 2)" --keys "$KEYS" --workload w --ops "$KEYS" >/dev/null
echo "idle: workload a for $SECS s against n1 and n2"
"$BIN" bench --node "$(url 1)" --node "$(url 2)" --keys "$KEYS" --duration "$SECS" --no-preload | grep -vE '^\s*$' || true
held=$(stat 1 | field 'd["anti_entropy"]["tree_keys"]')
echo "n1 holds $held keys in its trees; n3 loses its disk"
kill -9 "${PIDS[3]}"
wait "${PIDS[3]}" 2>/dev/null || true
rm -rf "$DIR/n3"
t0=$(date +%s.%N)
start 3 --seeds 127.0.0.1:19081
(
    while true; do
        s=$(stat 3 2>/dev/null || true)
        if [ -n "$s" ] && [ "$(echo "$s" | field 'd["anti_entropy"]["rebuilding"]')" = False ] &&
            [ "$(echo "$s" | field 'd["anti_entropy"]["tree_keys"]')" -ge "$held" ]; then
            t1=$(date +%s.%N)
            echo "n3 rebuilt $(echo "$s" | field 'd["anti_entropy"]["tree_keys"]') keys in $(python3 -c "print(round($t1 - $t0, 1))") s: $(echo "$s" | field 'd["anti_entropy"]["keys_repaired"]') keys repaired here, rebuilding over"
            break
        fi
        sleep 0.2
    done
) &
WATCH=$!
echo "during the rebuild: workload a for $SECS s against n1 and n2"
"$BIN" bench --node "$(url 1)" --node "$(url 2)" --keys "$KEYS" --duration "$SECS" --no-preload | grep -vE '^\s*$' || true
wait "$WATCH"
for i in 1 2 3; do
    echo "n$i anti-entropy: $(stat "$i" | field '{k: d["anti_entropy"][k] for k in ["exchanges", "keys_repaired", "objects_sent", "bytes_sent", "tree_memory_bytes"]}')"
done
