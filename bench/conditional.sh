#!/usr/bin/env bash
# How often conditional creates race: KEYS keys, each written with `If-None-Match: *` by three
# writers at once, one through each node of a 3-node cluster (a barrier releases them
# together). Prints how many keys had more than one writer told 204 (both passed their read
# before either write landed) and how many hold siblings afterwards. Not part of CI.
#
#   bench/conditional.sh              # 300 keys
#   KEYS=1000 bench/conditional.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-300}
HTTP_BASE=${HTTP_BASE:-27400}
PEER_BASE=$((HTTP_BASE + 100))
cargo build --release -q -p dynamokv
BIN=${BIN:-$PWD/target/release/dynamokv}
# shellcheck source=lib.sh
source bench/lib.sh
start_cluster 3
cat >"$DIR/race.py" <<'EOF'
import json, sys, threading, urllib.error, urllib.request
urls, keys = sys.argv[1].split(","), int(sys.argv[2])
def put(url, key, out, barrier):
    req = urllib.request.Request("%s/kv/%s" % (url, key), data=b"from " + url.encode(),
                                 method="PUT", headers={"If-None-Match": "*"})
    barrier.wait()
    try:
        out.append(urllib.request.urlopen(req).status)
    except urllib.error.HTTPError as e:
        out.append(e.code)
won_twice = siblings = errors = 0
for k in range(keys):
    key, out, barrier = "race%05d" % k, [], threading.Barrier(len(urls))
    threads = [threading.Thread(target=put, args=(u, key, out, barrier)) for u in urls]
    for t in threads: t.start()
    for t in threads: t.join()
    wins = out.count(204)
    errors += sum(1 for s in out if s not in (204, 412))
    won_twice += wins > 1
    req = urllib.request.Request("%s/kv/%s?r=3" % (urls[0], key), headers={"Accept": "application/json"})
    try:
        body = json.load(urllib.request.urlopen(req))
    except urllib.error.HTTPError as e:
        body = json.load(e)
    siblings += len(body.get("siblings", [])) > 1
print("%d keys, 3 conditional creates each at once: %d keys (%.1f%%) had more than one writer told 204; "
      "%d (%.1f%%) hold siblings; %d other answers"
      % (keys, won_twice, 100 * won_twice / keys, siblings, 100 * siblings / keys, errors))
EOF
echo "$(date -u +%Y-%m-%d) on $(nproc) cores: bench/conditional.sh KEYS=$KEYS ($("$BIN" --version))"
python3 "$DIR/race.py" "$ALL" "$KEYS"
