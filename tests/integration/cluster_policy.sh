#!/usr/bin/env bash
# cluster_policy.sh: `strata policy set` changes a pool's policy and the leader coordinator acts on it
# within one interval: with the local actuator, mode=observe only reports that min_replicas=2 wants a
# second worker; mode=active makes the actuator start it.
set -uo pipefail
MODELS=${STRATA_MODELS_DIR:-$(dirname "$0")/../../../shared/models}
B=${STRATA_BUILD_DIR:-build}
STRATA=$(realpath "$B/cli/strata")
STORIES=$(realpath "$MODELS/stories260K/stories260K.gguf")
TMP=$(mktemp -d /tmp/strata_cluster_policy.XXXXXX)
D=$TMP/cluster
trap '"$STRATA" cluster down --dir "$D" >/dev/null 2>&1; rm -rf "$TMP"' EXIT
fail() { echo "cluster_policy: FAIL: $*"; for f in "$D"/*.log; do echo "== $f"; tail -n 20 "$f"; done; exit 1; }
export STRATA_CLUSTER_DIR=$D

# no workers of its own: the leader's local actuator starts min_replicas (default 1) of them
"$STRATA" cluster up --workers 0 --autoscale --model "$STORIES" --dir "$D" \
  --worker-args "--threads 1 --num-kv-blocks 256" >"$TMP/up.out" 2>&1 || { cat "$TMP/up.out"; fail "cluster up"; }
n_ready() { "$STRATA" workers 2>/dev/null | grep -c ' ready '; }
wait_ready() { # wait_ready N SECONDS
  for _ in $(seq 1 $(($2 * 10))); do [ "$(n_ready)" -ge "$1" ] && return 0; sleep 0.1; done; return 1
}
wait_ready 1 20 || fail "the leader did not start the first worker (min_replicas 1)"

"$STRATA" policy set mode=observe min_replicas=2 interval_s=1 >"$TMP/set1" 2>&1 || { cat "$TMP/set1"; fail "policy set"; }
grep -q '"min_replicas": *2' "$TMP/set1" && grep -q '"mode": *"observe"' "$TMP/set1" || { cat "$TMP/set1"; fail "policy set did not echo the new policy"; }
"$STRATA" policy get | grep -q '"interval_s": *1' || fail "policy get does not show the new interval"
"$STRATA" policy get | grep -q '"latency_window_s": *60' || fail "policy get does not show latency_window_s (default 60)"
sleep 3 # three intervals: observe mode must not act
[ "$(n_ready)" -eq 1 ] || fail "observe mode changed the replica count"
"$STRATA" policy status >"$TMP/status" 2>&1 || { cat "$TMP/status"; fail "policy status"; }
grep -q "leader coord-" "$TMP/status" && grep -q "pool unified .*desired 2 .*observe" "$TMP/status" ||
  { cat "$TMP/status"; fail "policy status does not show the leader and the observed decision"; }

"$STRATA" policy set mode=active >/dev/null || fail "policy set mode=active"
wait_ready 2 15 || fail "mode=active with min_replicas=2 did not bring a second worker"
URL=http://$(cat "$D/coordinator.http")
curl -s "$URL/metrics" | grep -q 'strata:autoscaler_desired_replicas{pool="unified"} 2' || fail "/metrics lacks the decision"
echo "cluster_policy: observe reported, active started the second worker"

echo '{"queue_per_replica": 8}' >"$TMP/policy.json"
"$STRATA" policy set --file "$TMP/policy.json" >/dev/null || fail "policy set --file"
"$STRATA" policy get | grep -q '"queue_per_replica": *8' || fail "policy set --file did not land"
"$STRATA" policy set no_such_field=1 >"$TMP/bad" 2>&1 && fail "an unknown field was accepted"
grep -q "no_such_field" "$TMP/bad" || { cat "$TMP/bad"; fail "the error does not name the field"; }
"$STRATA" policy set latency_window_s=0 >"$TMP/bad" 2>&1 && fail "latency_window_s=0 was accepted"
grep -q "latency_window_s" "$TMP/bad" || { cat "$TMP/bad"; fail "the error does not name latency_window_s"; }
"$STRATA" policy set latency_window_s=30 >/dev/null || fail "policy set latency_window_s=30"
"$STRATA" policy get | grep -q '"latency_window_s": *30' || fail "latency_window_s=30 did not land"

# scale-down: max_replicas=1 drains the newest worker (Worker.Drain), which deregisters and goes
n_workers() { "$STRATA" workers 2>/dev/null | grep -c ' unified '; }
"$STRATA" policy set min_replicas=1 max_replicas=1 >/dev/null || fail "policy set max_replicas=1"
for _ in $(seq 1 150); do [ "$(n_workers)" -eq 1 ] && break; sleep 0.1; done
[ "$(n_workers)" -eq 1 ] || { "$STRATA" workers; fail "max_replicas=1 did not drain and remove a worker"; }
for _ in $(seq 1 50); do grep -q "scaled down to 1 after draining 1" "$D/coordinator.log" && break; sleep 0.1; done
grep -q "scaled down to 1 after draining 1" "$D/coordinator.log" || fail "the scale-down was not completed"
echo "cluster_policy: max_replicas=1 drained and removed a worker"

# leader failover: a second coordinator follows, and takes over once the first one stops
COORD=$(realpath "$B/coordinator/strata-coordinator")
"$COORD" --model "$STORIES" --etcd "$(cat "$D/etcd.addr")" --port 0 --grpc-port 0 --inference-grpc-port 0 --id coord-second \
  >"$TMP/second.log" 2>&1 &
SECOND=$!
trap 'kill $SECOND 2>/dev/null; wait $SECOND 2>/dev/null; "$STRATA" cluster down --dir "$D" >/dev/null 2>&1; rm -rf "$TMP"' EXIT
sleep 2
grep -q "elected leader" "$TMP/second.log" && fail "two leaders"
kill "$(cat "$D/coordinator.pid")"
for _ in $(seq 1 100); do grep -q "elected leader" "$TMP/second.log" && break; sleep 0.1; done
grep -q "elected leader" "$TMP/second.log" || { cat "$TMP/second.log"; fail "the second coordinator did not take over"; }
echo "cluster_policy: the second coordinator took over as leader"
echo "cluster_policy: PASS"
