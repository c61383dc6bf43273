#!/usr/bin/env bash
# Listing at scale: one 3-node cluster (N=3, default settings) loaded with KEYS keys (16-byte
# redis-benchmark-style keys, 100-byte values, through redis-cli --pipe), then:
# - every key listed in pages of PAGE with `dynamokv list` (time, keys, bytes, the client's peak
#   RSS from GNU time, each node's peak RSS before and after);
# - SAMPLES single pages of PAGE keys at random starting points: p50, p99 and max;
# - the same keys in a Redis server (redis-server, same machine, same run): every key with
#   redis-py's scan_iter against Redis and against dynamokv's RESP port, and single SCAN pages
#   at random cursors, for comparison.
# Not part of CI; needs redis-tools, redis-server and GNU time (installed with apt when missing).
#
#   bench/listing.sh                    # 1 million keys
#   KEYS=10000000 bench/listing.sh      # the issue's 10 million (about 10 minutes to load)
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
PAGE=${PAGE:-1000}
SAMPLES=${SAMPLES:-200}
HTTP_BASE=${HTTP_BASE:-27700}
PEER_BASE=$((HTTP_BASE + 100))
RESP_BASE=$((HTTP_BASE + 200))
REDIS_PORT=$((HTTP_BASE + 299))
cargo build --release -q -p dynamokv
BIN=${BIN:-$PWD/target/release/dynamokv}
# shellcheck source=lib.sh
source bench/lib.sh
need redis-cli redis-tools
need redis-server redis-server
need /usr/bin/time time

port() { echo $((RESP_BASE + $1)); }
hwm() { awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/${PIDS[$1]}/status"; }
for i in 1 2 3; do
    seeds=()
    [ "$i" = 1 ] || seeds=(--seeds "127.0.0.1:$((PEER_BASE + 1))")
    start "$i" --resp "127.0.0.1:$(port "$i")" "${seeds[@]}"
    [ "$i" = 1 ] && sleep 0.3
done
wait_up 1 3
redis-server --port "$REDIS_PORT" --save "" --appendonly no --dir "$DIR" >"$DIR/redis.log" 2>&1 &
PIDS[9]=$!
sleep 1

make_values
echo "$(date -u +%Y-%m-%d) on $(nproc) cores: bench/listing.sh KEYS=$KEYS PAGE=$PAGE ($("$BIN" --version))"
T0=$SECONDS
LOADERS=()
for i in 0 1 2; do
    load_keys "$(port $((i + 1)))" "$i" "$KEYS" 3 | grep -o 'errors: [0-9]*, replies: [0-9]*' &
    LOADERS+=($!)
done
wait "${LOADERS[@]}"
echo "loaded $KEYS keys into dynamokv in $((SECONDS - T0)) s"
load_keys "$REDIS_PORT" 0 "$KEYS" 1 >/dev/null
echo "RSS peak before listing, MiB: n1 $(hwm 1)  n2 $(hwm 2)  n3 $(hwm 3)"

# Every key, in pages.
/usr/bin/time -f "%e %M" -o "$DIR/time" "$BIN" list --node "$(url 2)" --page "$PAGE" >"$DIR/keys"
read -r secs kib <"$DIR/time"
listed=$(wc -l <"$DIR/keys")
bytes=$(wc -c <"$DIR/keys")
sorted=$(sort -c "$DIR/keys" 2>/dev/null && echo "in key order" || echo "NOT IN ORDER")
echo "dynamokv list: $listed keys ($bytes bytes of keys, $sorted) in $secs s = $(python3 -c "print(round($listed / max($secs, 0.001)))") keys/s; client peak RSS $((kib / 1024)) MiB"
echo "RSS peak after listing, MiB:  n1 $(hwm 1)  n2 $(hwm 2)  n3 $(hwm 3)"

# The same through RESP, against dynamokv and Redis, with redis-py (the venv scripts/test makes,
# or a new one), all from one process: every key with scan_iter, then SAMPLES single pages at
# random points (dynamokv over HTTP after a random key, Redis SCAN at a random cursor).
PY=target/redis-py/bin/python
if [ ! -x "$PY" ]; then
    python3 -m venv "$DIR/venv" && "$DIR/venv/bin/pip" install -q redis==8.2.0
    PY="$DIR/venv/bin/python"
fi
cat >"$DIR/scan.py" <<'EOF'
import random, sys, time, urllib.request
import redis
dkv_port, redis_port, url, keys, page, samples = sys.argv[1:7]
keys, page, samples = int(keys), int(page), int(samples)
def pct(xs):
    xs = sorted(xs)
    return "p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (
        xs[len(xs) // 2] * 1000, xs[int(len(xs) * 0.99)] * 1000, xs[-1] * 1000)
for name, port in (("dynamokv", dkv_port), ("Redis", redis_port)):
    r = redis.Redis(port=int(port))
    t = time.time()
    n = sum(1 for _ in r.scan_iter(count=page))
    took = time.time() - t
    print("%-8s SCAN COUNT %d over every key (redis-py scan_iter): %d keys in %.2f s = %d keys/s"
          % (name, page, n, took, n / took))
times = []
for _ in range(samples):
    after = "key:%012d" % random.randrange(keys)
    t = time.time()
    urllib.request.urlopen("%s/kv?after=%s&limit=%d" % (url, after, page)).read()
    times.append(time.time() - t)
print("dynamokv one page of %d (GET /kv?after=random&limit=%d): %s" % (page, page, pct(times)))
r = redis.Redis(port=int(redis_port))
times = []
for _ in range(samples):
    t = time.time()
    r.scan(cursor=random.randrange(1 << 20), count=page)
    times.append(time.time() - t)
print("Redis    one SCAN page of COUNT %d (random cursor): %s" % (page, pct(times)))
EOF
"$PY" "$DIR/scan.py" "$(port 2)" "$REDIS_PORT" "$(url 1)" "$KEYS" "$PAGE" "$SAMPLES"
