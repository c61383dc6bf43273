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
