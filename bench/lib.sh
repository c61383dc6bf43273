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
