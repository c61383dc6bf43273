# Shared by the benchmark scripts: nodes on loopback in a temporary directory, stopped on exit.
# The caller sets BIN, HTTP_BASE and PEER_BASE before sourcing.
DIR=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

# start I [FLAGS...]: node nI, HTTP on 127.0.0.1:HTTP_BASE+I, peers on PEER_BASE+I.
start() {
    local i=$1
    shift
    "$BIN" server --node-id "n$i" --data-dir "$DIR/n$i" --http "127.0.0.1:$((HTTP_BASE + i))" \
        --listen "127.0.0.1:$((PEER_BASE + i))" --cluster-secret bench-secret --log warn "$@" \
        >>"$DIR/n$i.log" 2>&1 &
    PIDS[$i]=$!
}
url() { echo "http://127.0.0.1:$((HTTP_BASE + $1))"; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

# start_cluster COUNT [FLAGS...]: nodes n1..nCOUNT with FLAGS (n1 founds the cluster, the
# others join through it); returns once n1 sees all of them up. Sets ALL to their URLs, comma
# separated.
start_cluster() {
    local count=$1 i n=0
    shift
    start 1 "$@"
    sleep 0.3
    for i in $(seq 2 "$count"); do start "$i" --seeds "127.0.0.1:$((PEER_BASE + 1))" "$@"; done
    for _ in $(seq 150); do
        n=$(curl -s "$(url 1)/admin/members" |
            field "sum(1 for m in d['members'] if m['status']=='up' and m['up'])" 2>/dev/null || echo 0)
        [ "$n" = "$count" ] && break
        sleep 0.2
    done
    [ "$n" = "$count" ] || { echo "the cluster did not come up" >&2; exit 1; }
    ALL=$(for i in $(seq "$count"); do url "$i"; done | paste -sd,)
}

# need CMD PACKAGE...: installs Debian's PACKAGEs with apt when CMD is missing.
need() {
    local cmd=$1 sudo=""
    shift
    command -v "$cmd" >/dev/null && return 0
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# wait_up I COUNT: returns once node nI sees COUNT members up (30 s at most, else exits).
wait_up() {
    local up=0
    for _ in $(seq 150); do
        up=$(curl -s "$(url "$1")/admin/members" | field "sum(1 for m in d['members'] if m['status']=='up')" 2>/dev/null || echo 0)
        [ "$up" = "$2" ] && return 0
        sleep 0.2
    done
    echo "the cluster did not come up" >&2
    exit 1
}

# make_values: 4 096 random 100-byte values (hex) in $DIR/values, for load_keys (from a pool,
# so the engine's compression gains nothing a user's random data would not give it).
make_values() {
    od -An -v -tx1 -N $((4096 * 50)) /dev/urandom | tr -d ' \n' | fold -w 100 >"$DIR/values"
}

# load_keys PORT FROM TO STEP: SET key:<12 digits> (16 bytes, redis-benchmark's own keys) to a
# value of $DIR/values for keys FROM, FROM+STEP, ... below TO, through redis-cli --pipe on PORT;
# prints redis-cli's report (errors and replies).
load_keys() {
    awk -v s="$2" -v e="$3" -v m="$4" 'NR == FNR { v[FNR - 1] = $0; next } END {
        for (k = s; k < e; k += m)
            printf "*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$100\r\n%s\r\n", k, v[(k * 7919) % 4096]
    }' "$DIR/values" /dev/null | redis-cli -p "$1" --pipe --pipe-timeout 0
}
