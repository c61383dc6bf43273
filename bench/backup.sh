#!/usr/bin/env bash
# Backup and restore at scale. A 3-node cluster (N=3) loaded with KEYS keys of 100-byte values
# (16-byte keys, through redis-cli --pipe); then:
# - redis-benchmark GET (-c 20, random keys) idle, and again while `dynamokv admin backup` runs:
#   p50 and p99 of both, and the backup's objects/s and MB/s;
# - the file's size against the raw data (keys + values);
# - a new 2-node cluster with N=2, restored from the file: the restore's objects/s; then both
#   clusters exported as JSON lines (`--format jsonl`: key, values, and the whole object with its
#   version vector) and compared line by line - every key, value and sibling equal.
# Not part of CI; needs redis-tools (installed with apt when missing).
#
#   bench/backup.sh                  # 1 million keys
#   KEYS=200000 bench/backup.sh      # quicker
#   PACED_FLAGS="--page 100 --rate 5000;--rate 0" ONLY_BACKUP=1 bench/backup.sh   # compare paces
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
REQS=${REQS:-300000}
# Paced backups measured under the benchmark, one by one (a list of flag sets).
if [ -n "${PACED_FLAGS:-}" ]; then IFS=';' read -r -a PACED <<<"$PACED_FLAGS"; else PACED=(""); fi
HTTP_BASE=${HTTP_BASE:-27600}
PEER_BASE=$((HTTP_BASE + 100))
RESP_BASE=$((HTTP_BASE + 200))
cargo build --release -q -p dynamokv
BIN=${BIN:-$PWD/target/release/dynamokv}
# shellcheck source=lib.sh
source bench/lib.sh
need redis-benchmark redis-tools

port() { echo $((RESP_BASE + $1)); }
start 1 --resp "127.0.0.1:$(port 1)"
sleep 0.3
start 2 --resp "127.0.0.1:$(port 2)" --seeds "127.0.0.1:$((PEER_BASE + 1))"
start 3 --resp "127.0.0.1:$(port 3)" --seeds "127.0.0.1:$((PEER_BASE + 1))"
wait_up 1 3

make_values
echo "$(date -u +%Y-%m-%d) on $(nproc) cores: bench/backup.sh KEYS=$KEYS ($("$BIN" --version))"
T0=$SECONDS
LOADERS=()
for i in 0 1 2; do
    load_keys "$(port $((i + 1)))" "$i" "$KEYS" 3 >/dev/null &
    LOADERS+=($!)
done
wait "${LOADERS[@]}"
echo "loaded $KEYS keys in $((SECONDS - T0)) s"
sleep 5

bench() { # label
    redis-benchmark -p "$(port 1)" -t get -n "$REQS" -c 20 -r "$KEYS" --csv 2>/dev/null |
        awk -F, -v l="$1" '/"GET"/ {gsub(/"/, ""); printf "%-26s GET %7.0f req/s  p50 %s ms  p99 %s ms\n", l, $2, $5, $7}'
}
bench "idle:"
"$BIN" admin backup --node "$(url 1)" --out "$DIR/cluster.dkvb" --rate 0 2>"$DIR/backup.out" &
BACKUP=$!
sleep 1
bench "during backup (--rate 0):"
wait "$BACKUP"
cat "$DIR/backup.out"
for flags in "${PACED[@]}"; do
    # shellcheck disable=SC2086
    "$BIN" admin backup --node "$(url 2)" --out "$DIR/paced.dkvb" $flags 2>"$DIR/paced.out" &
    BACKUP=$!
    sleep 1
    bench "during backup (${flags:-defaults}):"
    wait "$BACKUP"
    cat "$DIR/paced.out"
done
[ -n "${ONLY_BACKUP:-}" ] && exit 0
size=$(stat -c %s "$DIR/cluster.dkvb")
raw=$((KEYS * 116))
echo "file $size bytes for $raw bytes of keys and values ($(python3 -c "print(round($size / $raw, 2))")x)"

# Another cluster: two nodes, N=2.
start 4 --replicas 2 --read-quorum 1 --write-quorum 1
sleep 0.3
start 5 --replicas 2 --read-quorum 1 --write-quorum 1 --seeds "127.0.0.1:$((PEER_BASE + 4))"
wait_up 4 2
"$BIN" admin restore --node "$(url 4)" "$DIR/cluster.dkvb" 2>&1 | tail -3
"$BIN" admin backup --node "$(url 1)" --out "$DIR/a.jsonl" --format jsonl --rate 0 2>/dev/null
"$BIN" admin backup --node "$(url 5)" --out "$DIR/b.jsonl" --format jsonl --rate 0 2>/dev/null
if cmp -s "$DIR/a.jsonl" "$DIR/b.jsonl"; then
    echo "the restored cluster equals the original, object by object ($(wc -l <"$DIR/b.jsonl") objects: key, values, siblings and version vectors)"
else
    echo "THE RESTORED CLUSTER DIFFERS: $(diff "$DIR/a.jsonl" "$DIR/b.jsonl" | grep -c '^[<>]') lines"
    exit 1
fi
