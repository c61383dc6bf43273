#!/usr/bin/env bash
# Side-by-side: a single Redis, a 3-member etcd and a 3-node dynamokv (N=3 R=2 W=2, default
# sync policy), all on loopback on this machine, under the same loads; prints one table with
# the ratios. Not part of CI. Installs what it needs with apt when missing.
#
#   bench/compare.sh            # full run (about 3 minutes)
#   REQUESTS=50000 DURATION=5 bench/compare.sh   # a quicker run
#
# Loads:
#   redis-benchmark -t set,get -n $REQUESTS -c 50 -d 100 -r 100000 [-P 16]
#       against Redis and against dynamokv's RESP port (node 1);
#   wrk -t2 -c50 -d${DURATION}s with one Lua shape (100-byte values, 100k random keys)
#       against etcd's JSON gateway (/v3/kv/put, /v3/kv/range) and dynamokv's HTTP API
#       (PUT/GET /kv/{key}), puts first (they also fill the keys the gets read).
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-200000}
DURATION=${DURATION:-10}
BASE=${BASE:-27000}

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v etcd >/dev/null || need+=(etcd-server)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "installing ${need[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q -p dynamokv
BIN=$PWD/target/release/dynamokv

# DIR (a temporary directory) and PIDS (stopped on exit).
source bench/lib.sh

REDIS_PORT=$((BASE + 379))
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$DIR" --logfile "$DIR/redis.log" &
PIDS+=($!)

cluster=""
for i in 1 2 3; do cluster+="e$i=http://127.0.0.1:$((BASE + 380 + i)),"; done
for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$DIR/e$i" \
        --listen-client-urls "http://127.0.0.1:$((BASE + 390 + i))" \
        --advertise-client-urls "http://127.0.0.1:$((BASE + 390 + i))" \
        --listen-peer-urls "http://127.0.0.1:$((BASE + 380 + i))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((BASE + 380 + i))" \
        --initial-cluster "${cluster%,}" --initial-cluster-state new \
        --log-level error >"$DIR/e$i.log" 2>&1 &
    PIDS+=($!)
done
ETCD=http://127.0.0.1:$((BASE + 391))

HTTP_BASE=$((BASE + 1))
"$BIN" dev --nodes 3 --dir "$DIR/dkv" --http-port-base "$HTTP_BASE" \
    --peer-port-base $((BASE + 101)) --resp-port-base $((BASE + 201)) --log warn \
    >"$DIR/dev.out" 2>&1 &
PIDS+=($!)
DKV=http://127.0.0.1:$HTTP_BASE
DKV_RESP=$((BASE + 201))

for _ in $(seq 100); do
    if grep -q "agree on the ring" "$DIR/dev.out" 2>/dev/null &&
        curl -sf "$ETCD/health" >/dev/null 2>&1 &&
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then break; fi
    sleep 0.3
done
grep -q "agree on the ring" "$DIR/dev.out" || { cat "$DIR/dev.out"; echo "dynamokv did not start" >&2; exit 1; }

# --- redis-benchmark: SET and GET requests/s and p99 (ms) from --csv output.
declare -A RPS P99
rb() { # name port pipeline
    local out
    out=$(redis-benchmark -p "$2" -t set,get -n "$REQUESTS" -c 50 -d 100 -r 100000 -P "$3" --csv 2>/dev/null)
    for t in SET GET; do
        local line
        line=$(echo "$out" | grep "^\"$t\"")
        RPS[$1.$t]=$(echo "$line" | cut -d, -f2 | tr -d '"')
        P99[$1.$t]=$(echo "$line" | cut -d, -f7 | tr -d '"')
    done
}
echo "redis-benchmark against Redis and dynamokv (RESP), plain and -P 16..." >&2
rb redis1 "$REDIS_PORT" 1
rb dkv1 "$DKV_RESP" 1
rb redis16 "$REDIS_PORT" 16
rb dkv16 "$DKV_RESP" 16

# --- wrk: one Lua shape for both HTTP stores.
cat >"$DIR/common.lua" <<'LUA'
local b64chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
function b64(data)
    return ((data:gsub('.', function(x)
        local r, b = '', x:byte()
        for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
        return r
    end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
        if #x < 6 then return '' end
        local c = 0
        for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
        return b64chars:sub(c + 1, c + 1)
    end) .. ({ '', '==', '=' })[#data % 3 + 1])
end
value = string.rep('v', 100)
init = function(args) math.randomseed(os.time() + math.floor(os.clock() * 1e6)) end
function key() return 'key:' .. math.random(0, 99999) end
LUA
cat >"$DIR/dkv-put.lua" <<LUA
dofile("$DIR/common.lua")
request = function() return wrk.format("PUT", "/kv/" .. key(), nil, value) end
LUA
cat >"$DIR/dkv-get.lua" <<LUA
dofile("$DIR/common.lua")
request = function() return wrk.format("GET", "/kv/" .. key()) end
LUA
cat >"$DIR/etcd-put.lua" <<LUA
dofile("$DIR/common.lua")
local v64 = b64(value)
request = function()
    return wrk.format("POST", "/v3/kv/put", {["Content-Type"] = "application/json"},
        '{"key":"' .. b64(key()) .. '","value":"' .. v64 .. '"}')
end
LUA
cat >"$DIR/etcd-get.lua" <<LUA
dofile("$DIR/common.lua")
request = function()
    return wrk.format("POST", "/v3/kv/range", {["Content-Type"] = "application/json"},
        '{"key":"' .. b64(key()) .. '"}')
end
LUA
declare -A WRPS WP99
wk() { # name url script
    local out
    out=$(wrk -t2 -c50 -d"${DURATION}s" --latency -s "$3" "$2")
    WRPS[$1]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    WP99[$1]=$(echo "$out" | awk '$1 == "99%" {print $2}')
    local bad
    bad=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    if [ -n "$bad" ]; then echo "  $1: $bad non-2xx answers" >&2; fi
}
echo "wrk against etcd's gateway and dynamokv's HTTP API..." >&2
wk etcd.put "$ETCD" "$DIR/etcd-put.lua"
wk dkv.put "$DKV" "$DIR/dkv-put.lua"
wk etcd.get "$ETCD" "$DIR/etcd-get.lua"
wk dkv.get "$DKV" "$DIR/dkv-get.lua"

ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}x' if b else 'n/a')" "$1" "$2"; }
echo
echo "$(date -u +%Y-%m-%d) on $(nproc) cores; bench/compare.sh REQUESTS=$REQUESTS DURATION=$DURATION"
echo "dynamokv: 3 nodes, N=3 R=2 W=2, sync periodic; Redis: one server, no persistence; etcd: 3 members"
echo
printf '| %-34s | %12s | %12s | %8s | %s |\n' "load" "other" "dynamokv" "ratio" "p99 ms (other / dynamokv)"
printf '|%s|%s|%s|%s|%s|\n' "------------------------------------" "--------------" "--------------" "----------" "----"
for t in SET GET; do
    printf '| %-34s | %12s | %12s | %8s | %s / %s |\n' "redis-benchmark $t vs Redis" "${RPS[redis1.$t]}" "${RPS[dkv1.$t]}" "$(ratio "${RPS[dkv1.$t]}" "${RPS[redis1.$t]}")" "${P99[redis1.$t]}" "${P99[dkv1.$t]}"
done
for t in SET GET; do
    printf '| %-34s | %12s | %12s | %8s | %s / %s |\n' "redis-benchmark -P 16 $t vs Redis" "${RPS[redis16.$t]}" "${RPS[dkv16.$t]}" "$(ratio "${RPS[dkv16.$t]}" "${RPS[redis16.$t]}")" "${P99[redis16.$t]}" "${P99[dkv16.$t]}"
done
for t in put get; do
    printf '| %-34s | %12s | %12s | %8s | %s / %s |\n' "wrk HTTP $t vs etcd gateway" "${WRPS[etcd.$t]}" "${WRPS[dkv.$t]}" "$(ratio "${WRPS[dkv.$t]}" "${WRPS[etcd.$t]}")" "${WP99[etcd.$t]}" "${WP99[dkv.$t]}"
done
