#!/usr/bin/env bash
# cluster_stop.sh: a SIGSTOPped worker (a hung process: its TCP connections stay open).
# 0. The user's case: 16 streaming greedy requests in flight on 2 workers, one worker SIGSTOPped
#    mid-stream: every client stream completes, with the text of an undisturbed run (its requests
#    move to the other worker once keepalive or the lease finds it hung), and SIGCONT brings it back.
# 1-3. It leaves `strata workers` once its etcd lease runs out (--lease-ttl 3), requests sent after
#    that all succeed on the other worker, and SIGCONT brings it back under a new lease.
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
  --worker-args "--threads 1 --num-kv-blocks 2048 --lease-ttl $TTL" >"$TMP/up.out" 2>&1 || { cat "$TMP/up.out"; fail "cluster up"; }
URL=http://$(cat "$D/coordinator.http")
state_of() { "$STRATA" workers 2>/dev/null | awk -v w="$1" '$1==w {print $3}'; }
complete() { # complete I: one request; prints the HTTP status, 000 when it timed out
  curl -s -o "$TMP/resp.$1" -w '%{http_code}' --max-time 10 "$URL/v1/completions" \
    -d "{\"model\":\"$NAME\",\"prompt\":\"Once upon a time $1\",\"max_tokens\":8,\"temperature\":0}"
}
# both_ready: polls (5 s) for both workers ready; `strata workers` may time out once on a loaded machine
both_ready() {
  for _ in $(seq 1 50); do [ "$(state_of worker-0)" == ready ] && [ "$(state_of worker-1)" == ready ] && return 0; sleep 0.1; done
  "$STRATA" workers; return 1
}
both_ready || fail "both workers should be ready"

# ---- 0. streams in flight when a worker hangs ----
N=16
MAX_TOKENS=${CLUSTER_STOP_TOKENS:-384}
# Every stream must move on (get tokens again) within DETECT s of SIGSTOP: the hung worker is found in
# about 1-4 s (keepalive pings every 1 s with a 2.5 s timeout, lease TTL 3 s), well under TTL + the
# default --stall-timeout-ms (3 + 15 s), so the stall timeout is not what rescues them. Completion
# itself is then bounded by BOUND s: the surviving worker generates the rest on this loaded machine.
DETECT=${CLUSTER_STOP_DETECT:-8}
BOUND=${CLUSTER_STOP_BOUND:-90}
body() { # body I STREAM
  printf '{"model":"%s","prompt":"Once upon a time, hung %d","max_tokens":%d,"temperature":0,"ignore_eos":true,"stream":%s}' \
    "$NAME" "$1" "$MAX_TOKENS" "$2"
}
. "$(dirname "$0")/sse_util.sh" # sse_text, streams_begun, busiest_worker
wait_all() { for _ in $(seq 1 $(($1 * 10))); do jobs -r | grep -q . || return 0; sleep 0.1; done; return 1; }
for i in $(seq 1 $N); do curl -s --max-time 120 "$URL/v1/completions" -d "$(body "$i" false)" >"$TMP/want.$i.json" & done
wait_all 90 || fail "the undisturbed run did not finish in 90 s"
for i in $(seq 1 $N); do
  python3 -c 'import json,sys; sys.stdout.write(json.load(open(sys.argv[1]))["choices"][0]["text"])' "$TMP/want.$i.json" \
    >"$TMP/want.$i" || fail "reference request $i: $(head -c 300 "$TMP/want.$i.json")"
done
# all streams from one process, so that they start together (16 curl processes on this loaded
# machine start over a second or more, and the first would be done before the last begins)
python3 - "$URL/v1/completions" "$TMP" "$N" "$NAME" "$MAX_TOKENS" <<'PY' &
import json, sys, threading, urllib.request
url, tmp, n, name, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
def one(i):
    body = {"model": name, "prompt": "Once upon a time, hung %d" % i, "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True}
    with open("%s/got.%d" % (tmp, i), "wb") as out:
        try:
            req = urllib.request.Request(url, data=json.dumps(body).encode())
            with urllib.request.urlopen(req, timeout=120) as r:
                for line in r:
                    out.write(line); out.flush()
        except Exception as e:
            out.write(("client error: %s\n" % e).encode())
ts = [threading.Thread(target=one, args=(i,)) for i in range(1, n + 1)]
for t in ts: t.start()
for t in ts: t.join()
PY
begun=$(streams_begun "$N" 1000 "$TMP/got.")
# the victim: the worker running the most requests now (the coordinator's view of its Events stream)
VICTIM=$(busiest_worker "$URL")
STOPPED=$(cat "$D/$VICTIM.pid")
kill -STOP "$STOPPED"
T0=$(date +%s.%N)
done_streams=$(grep -l '^data: \[DONE\]' "$TMP"/got.* 2>/dev/null | wc -l)
echo "cluster_stop: SIGSTOPped $VICTIM with $begun/$N streams begun, $done_streams already complete"
[ "$done_streams" -lt "$N" ] || fail "every stream was complete before SIGSTOP: raise CLUSTER_STOP_TOKENS"
# Every stream must move on within DETECT s of SIGSTOP: one left on the hung worker cannot. The sizes
# are taken 1 s after SIGSTOP, once what the worker sent before it stopped has reached the clients.
sleep 1
for i in $(seq 1 $N); do SIZE0[$i]=$(stat -c %s "$TMP/got.$i"); done
for _ in $(seq 1 $(((DETECT - 1) * 10))); do
  stuck=
  for i in $(seq 1 $N); do
    grep -q '^data: \[DONE\]' "$TMP/got.$i" || [ "$(stat -c %s "$TMP/got.$i")" -gt "${SIZE0[$i]}" ] || { stuck="$stuck $i"; }
  done
  [ -z "$stuck" ] && break
  sleep 0.1
done
[ -z "$stuck" ] || fail "streams$stuck got nothing for $DETECT s after SIGSTOP of $VICTIM (they hang on the hung worker)"
echo "cluster_stop: every stream moved on within $(python3 -c "print(round($(date +%s.%N)-$T0,1))") s of SIGSTOP"
wait_all "$BOUND" || fail "client streams were not complete $BOUND s after SIGSTOP of $VICTIM"
T1=$(date +%s.%N)
for i in $(seq 1 $N); do
  got=$(sse_text "$TMP/got.$i") || fail "stream $i: $got"
  [ "$got" == "$(cat "$TMP/want.$i")" ] || fail "stream $i differs from the undisturbed run"
done
MIG=$(curl -s "$URL/metrics" | awk '$1=="strata:migrations_total{outcome=\"migrated\"}" {print $2}')
[ -n "$MIG" ] && [ "${MIG%.*}" -ge 1 ] || fail "no migration was counted (strata:migrations_total: '$MIG')"
echo "cluster_stop: $N streams identical to the undisturbed run, complete $(python3 -c "print(round($T1-$T0,1))") s after SIGSTOP; $MIG moved"
kill -CONT "$STOPPED"; STOPPED=
back=
for _ in $(seq 1 $((TTL * 4 * 10))); do
  [ "$(state_of "$VICTIM")" == ready ] && { back=1; break; }
  sleep 0.1
done
[ -n "$back" ] || { "$STRATA" workers; fail "$VICTIM did not come back within $((TTL * 4)) s of SIGCONT"; }
for i in $(seq 40 47); do complete "$i" >"$TMP/code.$i" & done
wait
for i in $(seq 40 47); do [ "$(cat "$TMP/code.$i")" == 200 ] || fail "request $i after SIGCONT of $VICTIM: status $(cat "$TMP/code.$i")"; done
echo "cluster_stop: $VICTIM is ready again after SIGCONT and requests succeed"
both_ready || fail "both workers should be ready again"
# the etcd client logs one of these when it puts the registration again under a new lease
REJOINED='session restored|registered again under lease'
RESTORED0=$(grep -cE "$REJOINED" "$D/worker-0.log")

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
ok=
for _ in $(seq 1 50); do [ "$(state_of worker-1)" == ready ] && { ok=1; break; }; sleep 0.1; done
[ -n "$ok" ] || { "$STRATA" workers; fail "worker-1 is not ready while worker-0 is stopped"; }

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
[ "$(grep -cE "$REJOINED" "$D/worker-0.log")" -gt "$RESTORED0" ] || fail "worker-0 came back without restoring its session"
# and the cluster serves a burst with both workers back
for i in $(seq 20 27); do complete "$i" >"$TMP/code.$i" & done
wait
for i in $(seq 20 27); do [ "$(cat "$TMP/code.$i")" == 200 ] || fail "request $i after SIGCONT: status $(cat "$TMP/code.$i")"; done
echo "cluster_stop: worker-0 registered again after SIGCONT and requests succeed"
echo "cluster_stop: PASS"
