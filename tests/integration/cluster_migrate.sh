#!/usr/bin/env bash
# cluster_migrate.sh: 32 streaming requests through the coordinator; one of the two workers is
# killed with SIGKILL in the middle: every client stream still completes, with text identical to an
# undisturbed run (the coordinator re-sends prompt + tokens so far to the surviving worker).
# CLUSTER_MIGRATE_SIGNAL=STOP: SIGSTOP the worker instead (hung, its connections stay open) with a
# 30 s etcd lease: only the coordinator's keepalive pings can find it, and every stream must move on
# within 8 s.
set -uo pipefail
MODELS=${STRATA_MODELS_DIR:-$(dirname "$0")/../../../shared/models}
B=${STRATA_BUILD_DIR:-build}
STRATA=$(realpath "$B/cli/strata")
STORIES=$(realpath "$MODELS/stories260K/stories260K.gguf")
NAME=stories260K.gguf
N=32
MAX_TOKENS=${CLUSTER_MIGRATE_TOKENS:-512}
SIG=${CLUSTER_MIGRATE_SIGNAL:-KILL}
DETECT=8
WARGS="--threads 1 --num-kv-blocks 2048"
[ "$SIG" == STOP ] && WARGS="$WARGS --lease-ttl 30"
TMP=$(mktemp -d /tmp/strata_cluster_migrate.XXXXXX)
D=$TMP/cluster
STOPPED=
cleanup() {
  [ -n "$STOPPED" ] && kill -CONT "$STOPPED" 2>/dev/null # a stopped process ignores SIGTERM until continued
  "$STRATA" cluster down --dir "$D" >/dev/null 2>&1; rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "cluster_migrate: FAIL: $*"; for f in "$D"/*.log; do echo "== $f"; tail -n 20 "$f"; done; exit 1; }

"$STRATA" cluster up --workers 2 --model "$STORIES" --dir "$D" --worker-args "$WARGS" \
  >"$TMP/up.out" 2>&1 || { cat "$TMP/up.out"; fail "cluster up"; }
URL=http://$(cat "$D/coordinator.http")

body() { # body I STREAM
  printf '{"model":"%s","prompt":"Once upon a time, child %d","max_tokens":%d,"temperature":0,"ignore_eos":true,"stream":%s}' \
    "$NAME" "$1" "$MAX_TOKENS" "$2"
}
. "$(dirname "$0")/sse_util.sh" # sse_text, streams_begun, busiest_worker

wait_all() { for _ in $(seq 1 600); do jobs -r | grep -q . || return 0; sleep 0.1; done; return 1; }
# the undisturbed run (whole responses, all at once: the kernels are batch-invariant)
for i in $(seq 1 $N); do curl -s "$URL/v1/completions" -d "$(body "$i" false)" >"$TMP/want.$i.json" & done
wait_all || fail "the undisturbed run did not finish in 60 s"
for i in $(seq 1 $N); do
  python3 -c 'import json,sys; sys.stdout.write(json.load(open(sys.argv[1]))["choices"][0]["text"])' "$TMP/want.$i.json" \
    >"$TMP/want.$i" || fail "reference request $i: $(head -c 300 "$TMP/want.$i.json")"
done

# the disturbed run: 32 streams at once, then SIGKILL a worker once every stream has begun
for i in $(seq 1 $N); do curl -sN "$URL/v1/completions" -d "$(body "$i" true)" >"$TMP/got.$i" 2>/dev/null & done
begun=$(streams_begun "$N" 500 "$TMP/got.")
# the victim: the worker running the most requests now (the coordinator's view of its Events stream)
VICTIM=$(busiest_worker "$URL")
if [ "$SIG" == STOP ]; then
  STOPPED=$(cat "$D/$VICTIM.pid")
  kill -STOP "$STOPPED"
  echo "cluster_migrate: stopped $VICTIM with $begun/$N streams begun"
  # sizes 1 s later (what it sent before stopping has landed), then every stream must grow or finish
  sleep 1
  for i in $(seq 1 $N); do SIZE0[$i]=$(stat -c %s "$TMP/got.$i"); done
  for _ in $(seq 1 $(((DETECT - 1) * 10))); do
    stuck=
    for i in $(seq 1 $N); do
      grep -q '^data: \[DONE\]' "$TMP/got.$i" || [ "$(stat -c %s "$TMP/got.$i")" -gt "${SIZE0[$i]}" ] || stuck="$stuck $i"
    done
    [ -z "$stuck" ] && break
    sleep 0.1
  done
  [ -z "$stuck" ] || fail "streams$stuck got nothing for $DETECT s after SIGSTOP of $VICTIM (lease 30 s: keepalive should find it)"
else
  kill -9 "$(cat "$D/$VICTIM.pid")" && rm -f "$D/$VICTIM.pid"
  echo "cluster_migrate: killed $VICTIM with $begun/$N streams begun"
fi
wait_all || fail "client streams did not finish in 60 s"
for i in $(seq 1 $N); do
  got=$(sse_text "$TMP/got.$i") || fail "stream $i: $got"
  [ "$got" == "$(cat "$TMP/want.$i")" ] || fail "stream $i differs from the undisturbed run"
done
MIG=$(curl -s "$URL/metrics" | awk '$1=="strata:migrations_total{outcome=\"migrated\"}" {print $2}')
[ -n "$MIG" ] && [ "${MIG%.*}" -ge 1 ] || fail "no migration was counted (strata:migrations_total: '$MIG')"
echo "cluster_migrate: $N streams identical to the undisturbed run; $MIG choices migrated off $VICTIM"
echo "cluster_migrate: PASS"
