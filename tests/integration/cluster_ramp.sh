#!/usr/bin/env bash
# cluster_ramp.sh: the autoscaler under a load ramp. `cluster up --autoscale` with a queue policy
# (min 1, max 3, queue_per_replica 1, 1 s interval, 1 s up / 5 s down windows, 5 s latency window):
# 18 clients streaming 1200-token completions back to back for ~20 s against workers that run 1
# sequence each make the leader's local actuator grow the pool from 1 to 3 workers, which it holds
# while the load lasts; once the load stops it shrinks back to 1, draining before removing. No
# request fails: every curl gets HTTP 200 and a stream that ends with [DONE] and no error.
set -uo pipefail
MODELS=${STRATA_MODELS_DIR:-$(dirname "$0")/../../../shared/models}
B=${STRATA_BUILD_DIR:-build}
STRATA=$(realpath "$B/cli/strata")
STORIES=$(realpath "$MODELS/stories260K/stories260K.gguf")
NAME=stories260K.gguf
CLIENTS=18
LOAD_S=20
TMP=$(mktemp -d /tmp/strata_cluster_ramp.XXXXXX)
D=$TMP/cluster
LOADERS=()
cleanup() {
  touch "$TMP/stop"
  for p in "${LOADERS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  "$STRATA" cluster down --dir "$D" >/dev/null 2>&1; rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "cluster_ramp: FAIL: $*"; for f in "$D"/*.log; do echo "== $f"; tail -n 20 "$f"; done; exit 1; }
export STRATA_CLUSTER_DIR=$D

"$STRATA" cluster up --workers 0 --autoscale --model "$STORIES" --dir "$D" \
  --worker-args "--threads 1 --num-kv-blocks 512 --max-num-seqs 1" >"$TMP/up.out" 2>&1 || { cat "$TMP/up.out"; fail "cluster up"; }
URL=http://$(cat "$D/coordinator.http")
n_ready() { "$STRATA" workers 2>/dev/null | grep -c ' ready '; }
n_workers() { "$STRATA" workers 2>/dev/null | grep -c ' unified '; }
wait_until() { # wait_until SECONDS COMMAND...: poll every 0.2 s
  local s=$1; shift
  for _ in $(seq 1 $((s * 5))); do "$@" && return 0; sleep 0.2; done; return 1
}
ready_is() { [ "$(n_ready)" -eq "$1" ]; }
workers_are() { [ "$(n_workers)" -eq "$1" ]; }
wait_until 20 ready_is 1 || fail "the leader did not start the first worker"

# queue is the only signal (latency and KV targets off); short windows, interval and cooldown; a 5 s
# latency window, over which scale-down averages the queue (the default 60 s would keep the pool up
# for about a minute after the load)
"$STRATA" policy set min_replicas=1 max_replicas=3 queue_per_replica=1 ttft_p90_ms=0 itl_p90_ms=0 kv_usage=0 \
  scale_up_step=2 scale_down_step=2 scale_up_window_s=1 scale_down_window_s=5 cooldown_s=1 interval_s=1 \
  latency_window_s=5 \
  >"$TMP/set" 2>&1 || { cat "$TMP/set"; fail "policy set"; }

client() { # client C: streaming requests back to back until $TMP/stop exists
  local k=0
  while [ ! -e "$TMP/stop" ]; do
    k=$((k + 1))
    curl -sN --max-time 60 -o "$TMP/got.$1.$k" -w '%{http_code}' "$URL/v1/completions" \
      -d "{\"model\":\"$NAME\",\"prompt\":\"Once upon a time, client $1 story $k\",\"max_tokens\":1200,\"temperature\":0,\"ignore_eos\":true,\"stream\":true}" \
      >"$TMP/code.$1.$k" 2>/dev/null
  done
}
for c in $(seq 1 $CLIENTS); do client "$c" & LOADERS+=($!); done
T0=$(date +%s)
wait_until $LOAD_S ready_is 3 || { "$STRATA" workers; "$STRATA" policy status; fail "the pool did not reach 3 ready workers under load"; }
echo "cluster_ramp: 3 workers ready $(( $(date +%s) - T0 )) s into the load"
while [ $(( $(date +%s) - T0 )) -lt $LOAD_S ]; do sleep 0.5; done
LOAD_LINES=$(wc -l <"$D/coordinator.log")
touch "$TMP/stop"
for p in "${LOADERS[@]}"; do wait "$p"; done
LOADERS=()
T1=$(date +%s)
# once at 3, the autoscaler held 3 while the load lasted (no flapping inside the ramp)
head -n "$LOAD_LINES" "$D/coordinator.log" | awk '/autoscaler: pool unified: scale [0-9]+ -> 3:/ {up=1} up && /autoscaler: pool unified: scale 3 -> / {print; bad=1} END {exit bad}' ||
  fail "the pool shrank while the load was still running"

wait_until 30 workers_are 1 || { "$STRATA" workers; "$STRATA" policy status; fail "the pool did not shrink back to 1 worker"; }
echo "cluster_ramp: back to 1 worker $(( $(date +%s) - T1 )) s after the load stopped"
drained() { grep -Eq "scaled down to 1 after draining [12] worker\(s\)$" "$D/coordinator.log"; }
wait_until 10 drained || fail "the scale-down to 1 was not completed by draining"
ready_is 1 || fail "the remaining worker is not ready"

n=0
for f in "$TMP"/code.*; do
  r=${f#"$TMP"/code.}; n=$((n + 1))
  [ "$(cat "$f")" == 200 ] || fail "request $r: status $(cat "$f"): $(head -c 300 "$TMP/got.$r")"
  grep -q '^data: \[DONE\]' "$TMP/got.$r" || fail "request $r: no [DONE]: $(tail -c 300 "$TMP/got.$r")"
  grep -q '"error"' "$TMP/got.$r" && fail "request $r: error event: $(grep '"error"' "$TMP/got.$r" | head -c 300)"
done
[ "$n" -ge $CLIENTS ] || fail "only $n requests ran"
echo "cluster_ramp: all $n streaming requests succeeded"
echo "cluster_ramp: PASS"
