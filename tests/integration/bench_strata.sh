#!/usr/bin/env bash
# bench_strata.sh: `strata-bench serve` against a real `strata serve --model dummy:tiny`, over the
# OpenAI HTTP API (SSE) and over gRPC strata.v1.Inference/Generate: 50 requests each with 16 output
# tokens; checks no failures, 16 completion tokens per request (the server's usage), an HTML report
# with SVG plots, and the server's /metrics scraped into the time series.
set -uo pipefail
B=${STRATA_BUILD_DIR:-build}
STRATA=$(realpath "$B/cli/strata")
BENCH=$(realpath "$B/bench/strata-bench")
TMP=$(mktemp -d /tmp/strata_bench_strata.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

"$STRATA" serve --model dummy:tiny --port 0 --grpc-port "$(free_port)" --api-key benchkey >"$TMP/serve.out" 2>"$TMP/serve.err" &
PID=$!
HPORT= GPORT=
for _ in $(seq 1 150); do
  HPORT=$(grep -so '^strata serve: listening on [0-9.]*:[0-9]*' "$TMP/serve.out" | sed 's/.*://')
  GPORT=$(grep -so '^strata serve: grpc [0-9.]*:[0-9]*' "$TMP/serve.out" | sed 's/.*://')
  [ -n "$HPORT" ] && [ -n "$GPORT" ] && break
  kill -0 "$PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$HPORT" ] || [ -z "$GPORT" ]; then
  echo "bench_strata: strata serve did not start"; cat "$TMP/serve.err"; exit 1
fi

# run NAME TARGET-ARGS...: 50 warm-up and 50 measured requests, 32 prompt words, 16 output tokens; summary in $TMP/NAME
run() {
  local name=$1; shift
  "$BENCH" serve "$@" --model dummy:tiny --num-requests 50 --input-len 32 --output-len 16 --warmup 50 \
    --scrape-interval 100ms --no-progress --out "$TMP/$name" >"$TMP/$name.stdout" 2>"$TMP/$name.stderr"
  local rc=$?
  [ $rc -eq 0 ] || { fail "$name: strata-bench exited $rc"; cat "$TMP/$name.stderr"; return; }
  python3 - "$TMP/$name" "$name" <<'EOF' || fails=$((fails + 1))
import json, sys
d, name = sys.argv[1], sys.argv[2]
s = json.load(open(d + "/summary.json"))
reqs = [json.loads(l) for l in open(d + "/requests.jsonl")]
bad = []
if s["requests"] != 50 or len(reqs) != 50: bad.append("requests %d (want 50)" % s["requests"])
if s["failed"] != 0: bad.append("failures %s" % s["failures"])
toks = sorted(set(r["output_tokens"] for r in reqs))
if toks != [16]: bad.append("completion tokens per request %s (want 16 each)" % toks)
if s["output_tokens"] != 800: bad.append("output tokens %d (want 800)" % s["output_tokens"])
if not all(r.get("ttft_ms") is not None and 0 < r["ttft_ms"] <= r["e2e_ms"] for r in reqs):
    bad.append("a request without a TTFT in (0, e2e]")
if "<svg" not in open(d + "/report.html").read(): bad.append("report.html has no <svg")
if "strata:num_requests_running" not in open(d + "/timeseries.csv").read():
    bad.append("timeseries.csv lacks strata:num_requests_running")
for b in bad: print("FAIL: %s: %s" % (name, b))
if not bad:
    print("ok: %s: 50/50 requests, 16 tokens each, TTFT p50 %.1f ms, TPOT p50 %.2f ms, %.0f tok/s"
          % (name, s["ttft_ms"]["p50"], s["tpot_ms"]["p50"], s["output_tok_per_s"]))
sys.exit(1 if bad else 0)
EOF
}

# different seeds: the second run would otherwise hit the prefix cache the first one filled
run http --url "http://127.0.0.1:$HPORT" --api-key benchkey --seed 1
run grpc --grpc "127.0.0.1:$GPORT" --api-key benchkey --metrics-url "http://127.0.0.1:$HPORT/metrics" --seed 2

# The harness's own summary line must say the same over both targets.
for n in http grpc; do
  grep -q '^{"bench":"serve"' "$TMP/$n.stdout" || fail "$n: no JSON summary line on stdout"
done
# The key travels as gRPC call metadata: a wrong one fails every request (UNAUTHENTICATED), counted.
"$BENCH" serve --grpc "127.0.0.1:$GPORT" --api-key wrong --model dummy:tiny --num-requests 2 --output-len 4 \
  --no-progress --out "$TMP/badkey" >/dev/null 2>"$TMP/badkey.err"
python3 -c "import json,sys; s=json.load(open(sys.argv[1])); sys.exit(0 if s['failed'] == 2 else 1)" \
  "$TMP/badkey/summary.json" 2>/dev/null || fail "--grpc with a wrong --api-key: requests not refused"

kill "$PID" 2>/dev/null
wait "$PID" 2>/dev/null
PID=
[ $fails -eq 0 ] && echo "bench_strata: all checks passed" || echo "bench_strata: $fails check(s) failed"
exit $((fails > 0))
