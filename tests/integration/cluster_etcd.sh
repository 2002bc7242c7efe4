#!/usr/bin/env bash
# cluster_etcd.sh: etcd dies (SIGKILL) for 10 s under a steady stream of streaming requests and is
# restarted on the same data dir and port: serving does not need etcd, so no request fails (every
# stream ends with [DONE] and no error event), and each worker is registered (ready) again within
# one lease TTL of etcd being back. The workers' lease TTL (20 s) outlasts the outage plus one renewal
# period: a worker whose lease runs out stops admitting by design (docs/worker.md), so with a TTL at
# or below the outage every request fails until etcd is back (CLUSTER_ETCD_TTL=10 shows it).
set -uo pipefail
MODELS=${STRATA_MODELS_DIR:-$(dirname "$0")/../../../shared/models}
B=${STRATA_BUILD_DIR:-build}
STRATA=$(realpath "$B/cli/strata")
STORIES=$(realpath "$MODELS/stories260K/stories260K.gguf")
NAME=stories260K.gguf
TTL=${CLUSTER_ETCD_TTL:-20} # > outage + a renewal period (TTL/3): a worker that loses its lease stops admitting
OUTAGE=10
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
  --worker-args "--threads 1 --num-kv-blocks 1024 --lease-ttl $TTL" >"$TMP/up.out" 2>&1 || { cat "$TMP/up.out"; fail "cluster up"; }
URL=http://$(cat "$D/coordinator.http")
n_ready() { "$STRATA" workers 2>/dev/null | grep -c ' ready '; }
[ "$(n_ready)" -eq 2 ] || fail "two ready workers expected"

# etcd's exact command line, to restart it the same way (same data dir, same ports)
EPID=$(cat "$D/etcd.pid")
mapfile -d '' ECMD <"/proc/$EPID/cmdline"
[ "${#ECMD[@]}" -gt 1 ] || fail "cannot read etcd's command line"

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
T_BACK=$(date +%s)
echo "cluster_etcd: etcd restarted"

# every worker registered (and ready) again within one TTL
back=
for _ in $(seq 1 $((TTL * 10))); do
  [ "$(n_ready)" -eq 2 ] && { back=1; break; }
  sleep 0.1
done
[ -n "$back" ] || { "$STRATA" workers; fail "not every worker is ready $TTL s after etcd came back"; }
echo "cluster_etcd: both workers ready $(( $(date +%s) - T_BACK )) s after etcd came back"
ETCDCTL_API=3 etcdctl --endpoints "$(cat "$D/etcd.addr")" get --prefix --keys-only /strata/default/workers/ >"$TMP/keys" 2>&1 ||
  { cat "$TMP/keys"; fail "etcdctl get"; }
for w in worker-0 worker-1; do grep -q "/$w\$" "$TMP/keys" || { cat "$TMP/keys"; fail "$w has no key in etcd"; }; done
sleep 2
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
