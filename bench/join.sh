#!/usr/bin/env bash
# Real-process join benchmark (run by hand; not part of the test suite).
#
# Three nodes (N=3) on loopback hold KEYS keys. A fourth node joins while `dynamokv bench`
# (workload a) runs against the first three: prints the time the join took, the data it
# received, and the benchmark's figures against an idle run. With KILL=1 the joining node is
# killed (SIGKILL) halfway and restarted, to show the transfer resuming: keys received before
# the kill, after the restart, and the total.
#
#   cargo build --release -p dynamokv && bench/join.sh
#   KEYS=100000 KILL=1 bench/join.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-100000}
SECS=${SECS:-20}
KILL=${KILL:-0}
BIN=${BIN:-target/release/dynamokv}
HTTP_BASE=18180
PEER_BASE=19180
# shellcheck source=lib.sh
source bench/lib.sh
status_of() {
    curl -s "$(url "$1")/admin/members" |
        field "[m['status'] for m in d['members'] if m['id']=='n$1'][0]" 2>/dev/null || echo down
}

start 1
sleep 0.3
start 2 --seeds 127.0.0.1:19181
start 3 --seeds 127.0.0.1:19181
for _ in $(seq 200); do
    [ "$(status_of 2)" = up ] && [ "$(status_of 3)" = up ] && break
    sleep 0.1
done
echo "3 nodes up; loading $KEYS keys of 100 B"
"$BIN" bench --node "$(url 1)" --keys "$KEYS" --workload w --ops "$KEYS" >/dev/null
echo "idle: workload a for $SECS s"
"$BIN" bench --node "$(url 1)" --node "$(url 2)" --node "$(url 3)" --keys "$KEYS" \
    --duration "$SECS" --no-preload | grep -vE '^\s*$' || true
echo "n4 joins"
t0=$(date +%s.%N)
start 4 --seeds 127.0.0.1:19181
"$BIN" bench --node "$(url 1)" --node "$(url 2)" --node "$(url 3)" --keys "$KEYS" \
    --duration "$SECS" --no-preload >"$DIR/during.txt" 2>&1 &
BENCH=$!
if [ "$KILL" = 1 ]; then
    sleep 4
    before=$(curl -s "$(url 4)/admin/stats" | field 'd["anti_entropy"]["keys_repaired"]')
    echo "killing n4 after $before keys received"
    kill -9 "${PIDS[4]}"
    wait "${PIDS[4]}" 2>/dev/null || true
    start 4 --seeds 127.0.0.1:19181
fi
while [ "$(status_of 4)" != up ]; do sleep 0.2; done
t1=$(date +%s.%N)
s=$(curl -s "$(url 4)/admin/stats")
echo "n4 joined in $(python3 -c "print(round($t1 - $t0, 1))") s; it holds $(echo "$s" | field 'd["anti_entropy"]["tree_keys"]') keys, received $(echo "$s" | field 'd["anti_entropy"]["keys_repaired"]') by anti-entropy since its last start"
wait "$BENCH" || true
echo "during the join: workload a for $SECS s"
grep -vE '^\s*$' "$DIR/during.txt" || true
sleep 12
for i in 1 2 3 4; do
    echo "n$i: $(curl -s "$(url "$i")/admin/stats" | field '{k: d["anti_entropy"][k] for k in ["tree_keys", "moved_keys", "objects_sent"]}')"
done
