#!/usr/bin/env bash
# cluster_etcd.sh: etcd dies (SIGKILL) for 10 s under a steady stream of streaming requests and is
# restarted on the same data dir and port. Serving does not need etcd: no request fails (every stream
# ends with [DONE] and no error event) and the coordinator keeps its worker table throughout. The
# outage outlasts the workers' lease TTL (the default, 10 s), so each worker's lease lapses and it must
# register again: within one TTL of etcd's return each key is in etcd under a new lease, and one TTL
# later it is still there while the old lease (which etcd re-extends when it restarts) is gone.
set -uo pipefail
MODELS=${STRATA_MODELS_DIR:-$(dirname "$0")/../../../shared/models}
B=${STRATA_BUILD_DIR:-build}
STRATA=$(realpath "$B/cli/strata")
STORIES=$(realpath "$MODELS/stories260K/stories260K.gguf")
NAME=stories260K.gguf
TTL=10    # strata-worker's default --lease-ttl (not passed: the default is what users run)
OUTAGE=10 # >= TTL: every lease lapses
TMP=$(mktemp -d /tmp/strata_cluster_etcd.XXXXXX)
D=$TMP/cluster
LOADER=
cleanup() {
  [ -n "$LOADER" ] && { kill "$LOADER" 2>/dev/null; wait "$LOADER" 2>/dev/null; }
  "$STRATA" cluster down --dir "$D" >/dev/null 2>&1; rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "cluster_etcd: FAIL: $*"; for f in "$D"/*.log; do echo "== $f"; tail -n 20 "$f"; done; exit 1; }
export STRATA_CLUSTER_DIR=$D

"$STRATA" cluster up --workers 2 --model "$STORIES" --dir "$D" \
  --worker-args "--threads 1 --num-kv-blocks 1024" >"$TMP/up.out" 2>&1 || { cat "$TMP/up.out"; fail "cluster up"; }
URL=http://$(cat "$D/coordinator.http")
n_ready() { "$STRATA" workers 2>/dev/null | grep -c ' ready '; }
[ "$(n_ready)" -eq 2 ] || fail "two ready workers expected"

# etcd's exact command line, to restart it the same way (same data dir, same ports)
EPID=$(cat "$D/etcd.pid")
mapfile -d '' ECMD <"/proc/$EPID/cmdline"
[ "${#ECMD[@]}" -gt 1 ] || fail "cannot read etcd's command line"

ETCDCTL() { ETCDCTL_API=3 etcdctl --endpoints "$(cat "$D/etcd.addr")" --command-timeout=2s "$@"; }
KEYS=/strata/default/workers/unified
key_lease() { # key_lease WORKER: the decimal lease id of its key, or "" when absent
  ETCDCTL get "$KEYS/$1" -w json 2>/dev/null | grep -o '"lease":[0-9]*' | cut -d: -f2
}
declare -A OLD
for w in worker-0 worker-1; do
  OLD[$w]=$(key_lease "$w")
  [ -n "${OLD[$w]}" ] || fail "$w has no key in etcd before the outage"
done

# the load: a streaming request every 0.25 s, each about a second long, until $TMP/stop appears
stream() { # stream I
  curl -sN --max-time 30 -o "$TMP/got.$1" -w '%{http_code}' "$URL/v1/completions" \
    -d "{\"model\":\"$NAME\",\"prompt\":\"Once upon a time, child $1\",\"max_tokens\":200,\"temperature\":0,\"ignore_eos\":true,\"stream\":true}" \
    >"$TMP/code.$1" 2>/dev/null
}
load() {
  local i=0
  while [ ! -e "$TMP/stop" ]; do i=$((i + 1)); stream "$i" & sleep 0.25; done
  wait
}
load &
LOADER=$!

sleep 3
kill -9 "$EPID"
while kill -0 "$EPID" 2>/dev/null; do sleep 0.05; done
echo "cluster_etcd: etcd killed"
sleep "$OUTAGE"
"${ECMD[@]}" </dev/null >>"$D/etcd.out" 2>&1 &
echo $! >"$D/etcd.pid" # so that `cluster down` stops the new one
T_START=$(date +%s)
# "etcd's return" is when it serves again (its own start-up takes seconds on a loaded machine)
for _ in $(seq 1 120); do ETCDCTL endpoint health >/dev/null 2>&1 && break; sleep 0.25; done
ETCDCTL endpoint health >/dev/null 2>&1 || fail "etcd did not come back"
T_BACK=$(date +%s)
echo "cluster_etcd: etcd restarted; serving after $((T_BACK - T_START)) s"

# every worker registered again (its key under a new lease) within one TTL of etcd's return; the
# coordinator never lost them (ready throughout, checked at the end as well)
T_END=$((T_BACK + TTL))
pending="worker-0 worker-1"
while [ -n "$pending" ] && [ "$(date +%s)" -le "$T_END" ]; do
  left=
  for w in $pending; do
    l=$(key_lease "$w")
    { [ -n "$l" ] && [ "$l" != 0 ] && [ "$l" != "${OLD[$w]}" ]; } || left="$left $w"
  done
  pending=$left
  [ -n "$pending" ] && sleep 0.25
done
[ -z "$pending" ] || { ETCDCTL get --prefix "$KEYS/" -w json; fail "not registered again $TTL s after etcd came back:$pending"; }
echo "cluster_etcd: both workers registered again $(( $(date +%s) - T_BACK )) s after etcd came back"
[ "$(n_ready)" -eq 2 ] || { "$STRATA" workers; fail "two ready workers expected after etcd came back"; }

# one TTL later the keys are still there (the new leases are kept alive) and the old leases are gone
sleep "$((TTL + 4))"
for w in worker-0 worker-1; do
  l=$(key_lease "$w")
  [ -n "$l" ] || fail "$w's key vanished after it registered again"
  ETCDCTL lease timetolive "$(printf '%x' "${OLD[$w]}")" | grep -q 'already expired' ||
    fail "$w's old lease still lives: $(ETCDCTL lease timetolive "$(printf '%x' "${OLD[$w]}")")"
done
[ "$(n_ready)" -eq 2 ] || { "$STRATA" workers; fail "two ready workers expected at the end"; }
touch "$TMP/stop"
wait "$LOADER"; LOADER=

# every request: HTTP 200, [DONE], no error event, 200 tokens
n=0
for f in "$TMP"/code.*; do
  i=${f##*.}; n=$((n + 1))
  [ "$(cat "$f")" == 200 ] || fail "request $i: status $(cat "$f"): $(head -c 300 "$TMP/got.$i")"
  grep -q '^data: \[DONE\]' "$TMP/got.$i" || fail "request $i: no [DONE]: $(tail -c 300 "$TMP/got.$i")"
  grep -q '"error"' "$TMP/got.$i" && fail "request $i: error event: $(grep '"error"' "$TMP/got.$i" | head -c 300)"
  grep -q '"finish_reason":"error"' "$TMP/got.$i" && fail "request $i ended with finish_reason error"
done
[ "$n" -ge 40 ] || fail "only $n requests were sent"
echo "cluster_etcd: all $n streaming requests completed across the etcd outage"
echo "cluster_etcd: PASS"
