#!/usr/bin/env bash
# cluster_stop.sh: a SIGSTOPped worker (a hung process: its TCP connections stay open) leaves
# `strata workers` once its etcd lease runs out (--lease-ttl 3), requests sent after that all succeed
# on the other worker, and SIGCONT brings it back: it registers again under a new lease and serves.
set -uo pipefail
MODELS=${STRATA_MODELS_DIR:-$(dirname "$0")/../../../shared/models}
B=${STRATA_BUILD_DIR:-build}
STRATA=$(realpath "$B/cli/strata")
STORIES=$(realpath "$MODELS/stories260K/stories260K.gguf")
NAME=stories260K.gguf
TTL=3
TMP=$(mktemp -d /tmp/strata_cluster_stop.XXXXXX)
D=$TMP/cluster
STOPPED=
cleanup() {
  [ -n "$STOPPED" ] && kill -CONT "$STOPPED" 2>/dev/null # a stopped process ignores SIGTERM until continued
  "$STRATA" cluster down --dir "$D" >/dev/null 2>&1; rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "cluster_stop: FAIL: $*"; for f in "$D"/*.log; do echo "== $f"; tail -n 20 "$f"; done; exit 1; }
export STRATA_CLUSTER_DIR=$D

"$STRATA" cluster up --workers 2 --model "$STORIES" --dir "$D" \
  --worker-args "--threads 1 --num-kv-blocks 256 --lease-ttl $TTL" >"$TMP/up.out" 2>&1 || { cat "$TMP/up.out"; fail "cluster up"; }
URL=http://$(cat "$D/coordinator.http")
state_of() { "$STRATA" workers 2>/dev/null | awk -v w="$1" '$1==w {print $3}'; }
complete() { # complete I: one request; prints the HTTP status, 000 when it timed out
  curl -s -o "$TMP/resp.$1" -w '%{http_code}' --max-time 10 "$URL/v1/completions" \
    -d "{\"model\":\"$NAME\",\"prompt\":\"Once upon a time $1\",\"max_tokens\":8,\"temperature\":0}"
}
[ "$(state_of worker-0)" == ready ] && [ "$(state_of worker-1)" == ready ] || fail "both workers should be ready"

# 1. SIGSTOP worker-0: it must leave the table within the TTL (plus one renewal period of slack)
STOPPED=$(cat "$D/worker-0.pid")
kill -STOP "$STOPPED"
T0=$(date +%s.%N)
gone=
for _ in $(seq 1 $(( (TTL + 2) * 10 ))); do
  [ -z "$(state_of worker-0)" ] && { gone=1; break; }
  sleep 0.1
done
T1=$(date +%s.%N)
[ -n "$gone" ] || { "$STRATA" workers; fail "the stopped worker is still listed $((TTL + 2)) s after SIGSTOP"; }
echo "cluster_stop: the stopped worker left strata workers after $(python3 -c "print(round($T1-$T0,1))") s (TTL $TTL s)"
[ "$(state_of worker-1)" == ready ] || fail "worker-1 is not ready while worker-0 is stopped"

# 2. meanwhile every request succeeds on worker-1
for i in $(seq 1 12); do
  code=$(complete "$i")
  [ "$code" == 200 ] || fail "request $i while worker-0 is stopped: status $code $(head -c 300 "$TMP/resp.$i")"
  grep -q '"text"' "$TMP/resp.$i" || fail "request $i: no text: $(head -c 300 "$TMP/resp.$i")"
  sleep 0.1
done
echo "cluster_stop: 12 requests succeeded on worker-1 while worker-0 was stopped"

# 3. SIGCONT: it finds its lease gone, registers again and is ready within a few seconds
kill -CONT "$STOPPED"; STOPPED=
back=
for _ in $(seq 1 $((TTL * 2 * 10))); do
  [ "$(state_of worker-0)" == ready ] && { back=1; break; }
  sleep 0.1
done
[ -n "$back" ] || { "$STRATA" workers; fail "worker-0 did not come back within $((TTL * 2)) s of SIGCONT"; }
grep -q "session restored" "$D/worker-0.log" || fail "worker-0 came back without restoring its session"
# and the cluster serves a burst with both workers back
for i in $(seq 20 27); do complete "$i" >"$TMP/code.$i" & done
wait
for i in $(seq 20 27); do [ "$(cat "$TMP/code.$i")" == 200 ] || fail "request $i after SIGCONT: status $(cat "$TMP/code.$i")"; done
echo "cluster_stop: worker-0 registered again after SIGCONT and requests succeed"
echo "cluster_stop: PASS"
