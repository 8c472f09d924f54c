#!/usr/bin/env bash
# Container smoke test of the overlay ring.
#
# Builds the image, starts 5 nodes with compose, puts 500 keys through the CLI in a container,
# then: kills one node (docker kill), disconnects another from the network while writes
# continue, reconnects it, and checks that every acknowledged key is readable with its last
# acknowledged value and back on n = 3 replicas. Then it starts 16 nodes and times `up` until the
# ring is correct. Everything is torn down on exit, failure included; the whole run is bounded.
# The last line is a one-line summary with the figures.
#
#   deploy/smoke.sh                 # build the image first
#   SKIP_BUILD=1 deploy/smoke.sh    # reuse overlay:latest
set -euo pipefail
cd "$(dirname "$0")/.."

deadline=$((SECONDS + ${SMOKE_TIMEOUT_S:-1500}))
project="overlay-smoke-$$"
if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose_cmd=(docker-compose)
else
    echo "smoke: neither 'docker compose' nor 'docker-compose' is available" >&2
    exit 2
fi
compose() { "${compose_cmd[@]}" -p "$project" -f deploy/compose.yaml "$@"; }
cleanup() { compose down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT
say() { echo "smoke: $*" >&2; }
fail() {
    say "FAILED: $*"
    compose logs --tail=40 >&2 2>/dev/null || true
    if [[ -n "${SMOKE_LOG_DIR:-}" ]]; then # full logs of every container, for a post-mortem
        mkdir -p "$SMOKE_LOG_DIR"
        for c in $(compose ps -q); do docker logs "$c" >"$SMOKE_LOG_DIR/${c:0:12}.log" 2>&1; done
        say "container logs saved in $SMOKE_LOG_DIR"
    fi
    echo "smoke: FAILED: $*"
    exit 1
}
check_time() { ((SECONDS < deadline)) || fail "ran out of time"; }

# The published API port: a free one, so a local node on 7001 does not collide.
export OVERLAY_HTTP_PORT
OVERLAY_HTTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The nodes' API token (compose requires one; the API binds 0.0.0.0 in the containers): the
# caller's, or a fresh one for this run.
export OVERLAY_API_TOKEN
OVERLAY_API_TOKEN=${OVERLAY_API_TOKEN:-$(python3 -c 'import secrets; print(secrets.token_hex(32))')}

[[ -n "${SKIP_BUILD:-}" ]] || deploy/build-image.sh

network="${project}_overlay"
seed() { compose ps -q seed; }
nodes() { compose ps -q node; }
seed_id=""
# The seed container's id is looked up once per ring (compose itself is slow to ask).
cli() { docker exec "$seed_id" /usr/local/bin/overlay --node http://127.0.0.1:7001 "$@"; }

# Waits until the ring walked from the seed has $1 nodes, in ring order, and closes; prints the
# seconds it took.
wait_ring() {
    local want=$1 started=$SECONDS
    while true; do
        check_time
        if cli ring --json 2>/dev/null | python3 -c '
import json, sys
ring = json.load(sys.stdin)
ids = [n["ring_id"] for n in ring["nodes"]]
wraps = sum(1 for a, b in zip(ids, ids[1:] + ids[:1]) if b <= a)
sys.exit(0 if ring["complete"] and len(set(ids)) == int(sys.argv[1]) and wraps == 1 else 1)
' "$want"; then
            echo $((SECONDS - started))
            return 0
        fi
        sleep 0.5
    done
}

say "starting 5 nodes"
compose up -d --no-build >/dev/null 2>&1 || fail "compose up"
seed_id=$(seed)
t5=$(wait_ring 5)
say "5 nodes: ring correct after ${t5} s"

declare -A acked attempted
put_errors=() # why puts failed, for the failure message
put() { # key value: records the value if the write was acknowledged, else as merely attempted
    local error
    if error=$(cli put "$1" "$2" 2>&1 >/dev/null); then
        acked[$1]=$2
        unset "attempted[$1]"
    else
        attempted[$1]=$2
        put_errors+=("$1: ${error//$'\n'/ }")
    fi
}
say "putting 500 keys through the CLI in the seed container"
for i in $(seq 1 500); do
    put "key-$i" "value-$i-a"
    ((i % 100)) || check_time
done
((${#acked[@]} == 500)) ||
    fail "only ${#acked[@]} of 500 puts were acknowledged with all nodes up; $(printf '%s; ' "${put_errors[@]:0:5}")"

mapfile -t members < <(nodes)
victim=${members[0]}
isolated=${members[1]}
say "killing node ${victim:0:12}"
docker kill "$victim" >/dev/null
say "partitioning node ${isolated:0:12} while writes continue"
docker network disconnect "$network" "$isolated"
for i in $(seq 1 150); do
    put "key-$i" "value-$i-b"
done
sleep 3 # keep the partition open for a while longer: nodes must notice it
docker network connect "$network" "$isolated"
healed=$SECONDS
say "healed; waiting for the ring (4 live nodes) and the replicas"

wait_ring 4 >/dev/null
# Every acknowledged key must be readable with its last acknowledged value and held by 3 live
# replicas (each replica's own copy, read with `get --local` in its container). Prints the number
# of keys still wrong; 0 means converged.
ack_file=$(mktemp)
trap 'rm -f "$ack_file"; cleanup' EXIT
check_all() {
    : >"$ack_file"
    for key in "${!acked[@]}"; do echo "$key ${acked[$key]} ${attempted[$key]:-}" >>"$ack_file"; done
    local live=()
    for c in $(seed) $(nodes); do
        [[ "$c" == "$victim" ]] && continue
        live+=("$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$c")")
    done
    # Reads go straight to the containers' own addresses on the bridge network (the host reaches
    # them): the seed answers quorum reads and lookups, each replica its own copy (?local=true).
    python3 - "$ack_file" "${live[@]}" <<'PY'
import json, os, sys, urllib.error, urllib.parse, urllib.request
AUTH = {"Authorization": "Bearer " + os.environ["OVERLAY_API_TOKEN"]}
acks, ips = sys.argv[1], sys.argv[2:]
def get(ip, path):
    try:
        req = urllib.request.Request(f"http://{ip}:7001{path}", headers=AUTH)
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""
peers = {}
for ip in ips:
    code, body = get(ip, "/v1/status")
    if code == 200:
        peers[json.loads(body)["peer_id"]] = ip
reader = ips[0]
wrong = []
for line in open(acks):
    key, *allowed = line.split()
    k = urllib.parse.quote(key, safe="")
    code, body = get(reader, f"/v1/kv/{k}")
    value = body.decode(errors="replace")
    if code != 200 or value not in allowed:
        wrong.append(f"{key}: read {body[:40]!r} (HTTP {code}), acknowledged {allowed[0]!r}")
        continue
    code, body = get(reader, f"/v1/lookup/{k}")
    replicas = json.loads(body)["replicas"] if code == 200 else []
    holding = sum(1 for r in replicas if r["peer_id"] in peers
                  and get(peers[r["peer_id"]], f"/v1/kv/{k}?local=true") == (200, value.encode()))
    if holding < 3:
        wrong.append(f"{key}: on {holding} of its replicas")
print(len(wrong))
if wrong:
    print(f"e.g. {wrong[0]}", file=sys.stderr)
PY
}
while true; do
    check_time
    wrong=$(check_all)
    [[ "$wrong" == 0 ]] && break
    say "$wrong acknowledged keys not yet right on 3 replicas"
    sleep 2
done
converged=$((SECONDS - healed))
lost=0
say "all ${#acked[@]} acknowledged keys readable with their last values, on 3 replicas, ${converged} s after the heal"

say "16 nodes: a fresh ring"
compose down -v --remove-orphans >/dev/null 2>&1
up_started=$SECONDS
compose up -d --no-build --scale node=15 >/dev/null 2>&1 || fail "compose up of 16 nodes"
seed_id=$(seed)
t16=$(wait_ring 16)
t16_total=$((SECONDS - up_started))
say "16 nodes: ring correct ${t16_total} s after 'up' was called"
echo "smoke: OK 5 nodes ring ${t5}s; ${#acked[@]} acknowledged keys, ${lost} lost after kill + partition; replicas converged ${converged}s after heal; 16 nodes ring correct ${t16_total}s after up"
