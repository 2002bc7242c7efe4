#!/usr/bin/env bash
# bench_serve.sh: `strata-bench serve` against the deterministic stub server: measured TTFT, ITL and
# throughput within 5% of what the stub was told, exact SLO and failure counts, workloads, report files.
set -uo pipefail
B=${STRATA_BUILD_DIR:-build}
BENCH="$B/bench/strata-bench"
STUB="$B/bench/serve/strata-stub-server"
GSTUB="$B/bench/serve/strata-stub-grpc"
for f in "$BENCH" "$STUB" "$GSTUB"; do
  [ -x "$f" ] || { echo "missing $f (build strata-bench, strata-stub-server and strata-stub-grpc)"; exit 1; }
done
TMP=$(mktemp -d /tmp/bench_serve.XXXXXX)
STUB_PID=""
cleanup() { [ -n "$STUB_PID" ] && kill "$STUB_PID" 2>/dev/null && wait "$STUB_PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
pass=0; failed=0
check() { # check NAME EXPECTED ACTUAL
  if [ "$2" == "$3" ]; then pass=$((pass+1)); else echo "FAIL $1: expected [$2] got [$3]"; failed=$((failed+1)); return 1; fi
}
within() { # within NAME EXPECTED ACTUAL PERCENT
  if awk -v e="$2" -v a="$3" -v p="$4" 'BEGIN{d=a-e; if(d<0)d=-d; exit !(a!="" && a!="null" && d<=e*p/100)}'; then
    pass=$((pass+1)); else echo "FAIL $1: expected $2 +-$4% got [$3]"; failed=$((failed+1)); fi
}
start_stub() { # start_stub ARGS...: sets PORT and STUB_PID
  stop_stub
  "${STUB_PROG:-$STUB}" "$@" >"$TMP/stub.port" 2>"$TMP/stub.err" &
  STUB_PID=$!
  PORT=""
  for _ in $(seq 50); do PORT=$(awk '/^PORT/{print $2}' "$TMP/stub.port"); [ -n "$PORT" ] && return 0; sleep 0.1; done
  echo "FAIL: the stub server did not start: $(cat "$TMP/stub.err")"; exit 1
}
stop_stub() { if [ -n "$STUB_PID" ]; then kill "$STUB_PID" 2>/dev/null; wait "$STUB_PID" 2>/dev/null; STUB_PID=""; fi; }
run() { # run NAME ARGS...: the harness into $TMP/NAME; summary fields through j NAME FILTER
  local name=$1; shift
  "$BENCH" serve --url "http://127.0.0.1:$PORT" --no-progress --out "$TMP/$name" "$@" >"$TMP/$name.stdout" 2>"$TMP/$name.stderr"
  check "$name exit status" 0 $?
}
grun() { # grun NAME ARGS...: the harness over gRPC into $TMP/NAME
  local name=$1; shift
  "$BENCH" serve --grpc "127.0.0.1:$PORT" --no-progress --out "$TMP/$name" "$@" >"$TMP/$name.stdout" 2>"$TMP/$name.stderr"
  check "$name exit status" 0 $?
}
j() { jq -r "$2" "$TMP/$1/summary.json"; }

# 1. Closed loop: 8 streams of ttft + 19 * itl = 290 ms each, 5 rounds. Reference values are the
#    stub's configured delays; throughput = 8 * 20 tokens / 0.290 s.
start_stub --ttft-ms 100 --itl-ms 10
run closed --concurrency 8 --num-requests 40 --warmup 4 --input-len 32 --output-len 20 --scrape-interval 200ms
check "closed ok" 40 "$(j closed .ok)"
within "closed TTFT mean" 100 "$(j closed .ttft_ms.mean)" 5
# p90, not p99: one late wake-up on a busy 2-core machine moves the p99 of 40 requests past 5%.
within "closed TTFT p90" 100 "$(j closed .ttft_ms.p90)" 5
within "closed ITL mean" 10 "$(j closed .itl_ms.mean)" 5
within "closed ITL p50" 10 "$(j closed .itl_ms.p50)" 5
within "closed TPOT mean" 10 "$(j closed .tpot_ms.mean)" 5
within "closed E2E mean" 290 "$(j closed .e2e_ms.mean)" 5
within "closed output tok/s" "$(awk 'BEGIN{print 8*20/0.290}')" "$(j closed .output_tok_per_s)" 5
within "closed req/s" "$(awk 'BEGIN{print 8/0.290}')" "$(j closed .req_per_s)" 5
check "closed output tokens (usage)" 800 "$(j closed .output_tokens)"
check "closed prompt tokens = words sent" 1280 "$(j closed .input_tokens)"
check "closed itl samples" $((40*19)) "$(j closed .itl_ms.n)"
check "closed peak concurrency" 8 "$(j closed .peak_concurrency)"
# --out files: summary, one JSONL line per request, time series with scraped metrics, HTML with SVG
for f in summary.json requests.jsonl timeseries.csv report.html; do check "file $f" yes "$([ -s "$TMP/closed/$f" ] && echo yes)"; done
check "requests.jsonl lines" 40 "$(wc -l <"$TMP/closed/requests.jsonl" | tr -d ' ')"
check "html has svg" yes "$(grep -q '<svg' "$TMP/closed/report.html" && echo yes)"
check "html svg count >= 7" yes "$([ "$(grep -o '<svg' "$TMP/closed/report.html" | wc -l)" -ge 7 ] && echo yes)"
check "csv scraped running" yes "$(grep -q '"strata:num_requests_running{model=""stub""}"' "$TMP/closed/timeseries.csv" && echo yes)"
check "csv scraped replicas" yes "$(grep -q 'strata:desired_replicas' "$TMP/closed/timeseries.csv" && echo yes)"
check "stdout JSON line" 1 "$(grep -c '^{"bench":"serve"' "$TMP/closed.stdout")"
check "stdout table" 1 "$(grep -c '^TTFT ' "$TMP/closed.stdout")"

# 2. Open loop, constant 40 req/s, with failures and SLOs chosen by the stub's rules on request ids:
#    slow (ttft 600 ms) if id%4==0, HTTP 500 if id%10==1, stream cut if id%10==2.
start_stub --ttft-ms 20 --itl-ms 5 --slow-every 4 --slow-ttft-ms 600 --fail-every 10 --cut-every 10
run slo --rate 40 --arrival constant --num-requests 40 --output-len 10 --slo ttft=500ms,tpot=50ms
http=0; cut=0; met=0
for i in $(seq 0 39); do
  if [ $((i % 10)) -eq 1 ]; then http=$((http+1)); elif [ $((i % 10)) -eq 2 ]; then cut=$((cut+1));
  elif [ $((i % 4)) -ne 0 ]; then met=$((met+1)); fi
done
check "slo http failures" $http "$(j slo .failures.http)"
check "slo http 500 count" $http "$(j slo '.http_status["500"]')"
check "slo stream cuts" $cut "$(j slo .failures.stream_cut)"
check "slo ok" $((40-http-cut)) "$(j slo .ok)"
check "slo met" $met "$(j slo .slo.met)"
check "slo timeouts" 0 "$(j slo .failures.timeout)"
within "slo offered rate" 40 "$(j slo .offered_rate)" 0.01
within "slo achieved send rate" 40 "$(j slo .achieved_rate)" 5
check "slo per-request failure classes" "$http $cut" "$(grep -c '"status":"http"' "$TMP/slo/requests.jsonl") $(grep -c '"status":"stream_cut"' "$TMP/slo/requests.jsonl")"

# 3. TPOT SLO on the chat API, infinite rate: every 3rd request decodes at 80 ms per token.
start_stub --ttft-ms 20 --itl-ms 5 --slow-every 3 --slow-itl-ms 80
run tpot --api chat --num-requests 30 --output-len 6 --slo tpot=50ms
check "tpot ok" 30 "$(j tpot .ok)"
check "tpot met" 20 "$(j tpot .slo.met)"
within "tpot goodput" "$(awk -v d="$(j tpot .duration_s)" 'BEGIN{print 20/d}')" "$(j tpot .goodput_req_per_s)" 0.1
check "tpot api echoed" chat "$(j tpot .config.api)"

# 3b. Whole (non-streamed) responses arrive after ttft + 9 * itl = 190 ms; TTFT is then the E2E time.
start_stub --ttft-ms 100 --itl-ms 10
run whole --no-stream --concurrency 4 --num-requests 12 --output-len 10
check "whole ok" 12 "$(j whole .ok)"
within "whole E2E mean" 190 "$(j whole .e2e_ms.mean)" 5
within "whole TTFT mean" 190 "$(j whole .ttft_ms.mean)" 5
check "whole no TPOT" 0 "$(j whole .tpot_ms.n)"
check "whole output tokens (usage)" 120 "$(j whole .output_tokens)"

# 4. Timeouts: ids 0 and 5 wait 2 s for a first token; --timeout 500ms.
start_stub --ttft-ms 10 --itl-ms 1 --slow-every 5 --slow-ttft-ms 2000
run timeout --concurrency 10 --num-requests 10 --output-len 4 --timeout 500ms
check "timeout count" 2 "$(j timeout .failures.timeout)"
check "timeout ok" 8 "$(j timeout .ok)"

# 5. Seeded workloads: same seed, same lengths; the stub's word count equals the harness's input_len.
start_stub --ttft-ms 1 --itl-ms 1
run seed_a --num-requests 20 --input-len 5:50 --output-len 2:9 --seed 42
run seed_b --num-requests 20 --input-len 5:50 --output-len 2:9 --seed 42
run seed_c --num-requests 20 --input-len 5:50 --output-len 2:9 --seed 43
lens() { jq -c '[.id,.input_len,.output_len,.output_tokens]' "$TMP/$1/requests.jsonl" | sort; }
check "seed reproducible" "$(lens seed_a)" "$(lens seed_b)"
check "seed changes workload" no "$([ "$(lens seed_a)" == "$(lens seed_c)" ] && echo yes || echo no)"
check "prompt tokens == input_len" 0 "$(jq -c 'select(.prompt_tokens != .input_len)' "$TMP/seed_a/requests.jsonl" | wc -l | tr -d ' ')"
check "output tokens == max_tokens" 0 "$(jq -c 'select(.output_tokens != .output_len)' "$TMP/seed_a/requests.jsonl" | wc -l | tr -d ' ')"

# 6. Shared-prefix groups: each request is prefix (64 words) + suffix (16 words).
run prefix --num-requests 12 --prefix-groups 3 --prefix-len 64 --input-len 16 --output-len 2
check "prefix prompt tokens" $((12*80)) "$(j prefix .input_tokens)"
check "prefix groups used" 3 "$(jq -r .group "$TMP/prefix/requests.jsonl" | sort -u | wc -l | tr -d ' ')"

# 7. ShareGPT dataset on /v1/chat/completions: 5-word prompts, output length forced to 7.
for k in 1 2 3; do
  echo "{\"conversations\":[{\"from\":\"human\",\"value\":\"tell me story number $k\"},{\"from\":\"gpt\",\"value\":\"once upon a time\"}]}"
done >"$TMP/sharegpt.jsonl"
"$BENCH" serve --url "http://127.0.0.1:$PORT/v1/chat/completions" --dataset "$TMP/sharegpt.jsonl" --num-requests 10 \
  --concurrency 2 --output-len 7 --no-progress --out "$TMP/dataset" >/dev/null 2>&1
check "dataset ok" 10 "$(j dataset .ok)"
check "dataset prompt tokens" 50 "$(j dataset .input_tokens)"
check "dataset output tokens" 70 "$(j dataset .output_tokens)"
check "dataset chat api from url" chat "$(j dataset .config.api)"

# 8. Mooncake trace replay: 6 requests 200 ms apart, 600 tokens each; every request starts with the
#    512-token block of hash id 1, so the stub's prefix cache hits 5 x 512 tokens.
start_stub --ttft-ms 5 --itl-ms 2
for k in 0 1 2 3 4 5; do
  echo "{\"timestamp\": $((k*200)), \"input_length\": 600, \"output_length\": 4, \"hash_ids\": [1, $((k+2))]}"
done >"$TMP/trace.jsonl"
run trace --trace "$TMP/trace.jsonl"
check "trace ok" 6 "$(j trace .ok)"
within "trace send rate" 5 "$(j trace .achieved_rate)" 5
check "trace prompt tokens" 3600 "$(j trace .input_tokens)"
check "trace prefix hits at the stub" 2560 "$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^strata:prefix_cache_hits_total/{print $2}')"

# 9. Staged schedule: 1 s at 20 req/s then 1 s at 5 req/s (Poisson); about 25 requests.
run stages --stages 1s@20rps,1s@5rps --output-len 2 --seed 1
n=$(j stages .requests)
check "stages count plausible" yes "$([ "$n" -ge 12 ] && [ "$n" -le 40 ] && echo yes)"
check "stages all ok" "$n" "$(j stages .ok)"

# 10. Errors a user meets: two targets at once, a gRPC server that is not listening (every request
#     fails as connect, logged once), a bad URL, an HTTP server that is not listening.
"$BENCH" serve --grpc 127.0.0.1:1 --url http://127.0.0.1:1 >/dev/null 2>"$TMP/grpc.err"; check "grpc+url rc" 2 $?
check "grpc+url message" 1 "$(grep -c 'choose one' "$TMP/grpc.err")"
"$BENCH" serve --grpc 127.0.0.1:1 --num-requests 3 --no-progress >"$TMP/gdown.out" 2>"$TMP/gdown.err"; check "grpc down rc" 0 $?
check "grpc down connect failures" 3 "$(grep '^{"bench"' "$TMP/gdown.out" | jq -r .failures.connect)"
check "grpc down logged once" 1 "$(grep -c 'gRPC Generate on 127.0.0.1:1 failed: UNAVAILABLE' "$TMP/gdown.err")"
"$BENCH" serve --url ftp://x >/dev/null 2>&1; check "bad url rc" 2 $?
"$BENCH" serve --url http://127.0.0.1:1 --num-requests 5 --no-progress >"$TMP/down.out" 2>/dev/null; check "down rc" 0 $?
check "down connect failures" 5 "$(grep '^{"bench"' "$TMP/down.out" | jq -r .failures.connect)"

# 11. TLS: a self-signed certificate for 127.0.0.1; trusted with --ca-file or skipped with --insecure,
#     refused otherwise (every request then fails to connect).
if openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -days 1 -subj /CN=strata-test \
     -addext "subjectAltName=IP:127.0.0.1" >/dev/null 2>&1; then
  start_stub --ttft-ms 100 --itl-ms 10 --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem"
  for mode in ca insecure; do
    opt=(--ca-file "$TMP/cert.pem"); [ $mode == insecure ] && opt=(--insecure)
    "$BENCH" serve --url "https://127.0.0.1:$PORT" "${opt[@]}" --concurrency 4 --warmup 4 --num-requests 12 --output-len 10 \
      --scrape-interval 200ms --no-progress --out "$TMP/tls_$mode" >/dev/null 2>"$TMP/tls_$mode.err"
    check "tls $mode ok" 12 "$(j tls_$mode .ok)" || { cat "$TMP/tls_$mode.err"; jq -c . "$TMP/tls_$mode/summary.json"; }
    within "tls $mode TTFT mean" 100 "$(j tls_$mode .ttft_ms.mean)" 5
    within "tls $mode ITL mean" 10 "$(j tls_$mode .itl_ms.mean)" 5
    check "tls $mode keep-alive (4 streams + 1 scraper)" 5 "$(j tls_$mode .connections_opened)"
  done
  check "tls scraped over https" yes "$([ "$(j tls_ca .scrape_points)" -gt 0 ] && echo yes)"
  "$BENCH" serve --url "https://127.0.0.1:$PORT" --num-requests 3 --scrape-interval 0 --no-progress >"$TMP/tls_bad.out" 2>"$TMP/tls_bad.err"
  check "tls untrusted refused" 3 "$(grep '^{"bench"' "$TMP/tls_bad.out" | jq -r .failures.connect)"
  check "tls error logged once" 1 "$(grep -c 'TLS handshake' "$TMP/tls_bad.err")"
  # gRPC over TLS: trusted with --ca-file; without it the plaintext channel cannot talk to the server
  STUB_PROG=$GSTUB start_stub --ttft-ms 50 --itl-ms 5 --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem"
  grun gtls --ca-file "$TMP/cert.pem" --concurrency 4 --warmup 4 --num-requests 8 --output-len 10
  check "grpc tls ok" 8 "$(j gtls .ok)"
  within "grpc tls TTFT p50" 50 "$(j gtls .ttft_ms.p50)" 5
  grun gtls_bad --concurrency 4 --num-requests 4 --output-len 10 --timeout 5s
  check "grpc tls without --ca-file fails" 4 "$(j gtls_bad .failed)"
else
  echo "SKIP tls: openssl cannot make a test certificate"
fi

# 12. The gRPC target against strata-stub-grpc (Generate, token k at ttft + k * itl): the same
#     measurements and tolerances as over HTTP, exact SLO and failure counts, deadlines as timeouts.
STUB_PROG=$GSTUB start_stub --ttft-ms 100 --itl-ms 10
grun gclosed --concurrency 8 --num-requests 40 --warmup 4 --input-len 32 --output-len 20
check "grpc closed ok" 40 "$(j gclosed .ok)"
within "grpc closed TTFT mean" 100 "$(j gclosed .ttft_ms.mean)" 5
# p90, not p99: with gRPC's threads on both sides of a busy 2-core machine, one late wake-up in 40
# requests (the p99) can exceed 5% while the harness measures correctly.
within "grpc closed TTFT p90" 100 "$(j gclosed .ttft_ms.p90)" 5
within "grpc closed ITL mean" 10 "$(j gclosed .itl_ms.mean)" 5
within "grpc closed ITL p50" 10 "$(j gclosed .itl_ms.p50)" 5
within "grpc closed TPOT mean" 10 "$(j gclosed .tpot_ms.mean)" 5
within "grpc closed E2E mean" 290 "$(j gclosed .e2e_ms.mean)" 5
within "grpc closed output tok/s" "$(awk 'BEGIN{print 8*20/0.290}')" "$(j gclosed .output_tok_per_s)" 5
check "grpc closed output tokens (usage)" 800 "$(j gclosed .output_tokens)"
check "grpc closed prompt tokens = words sent" 1280 "$(j gclosed .input_tokens)"
check "grpc closed itl samples" $((40*19)) "$(j gclosed .itl_ms.n)"
check "grpc closed peak concurrency" 8 "$(j gclosed .peak_concurrency)"
check "grpc html has svg" yes "$(grep -q '<svg' "$TMP/gclosed/report.html" && echo yes)"
check "grpc jsonl status" 40 "$(grep -c '"grpc_status":0,"status":"ok"' "$TMP/gclosed/requests.jsonl")"
# ids 0,5,..,35 are slow (300 ms TTFT: miss ttft=200ms), ids 1,11,21,31 fail: 40 - 8 - 4 = 28 meet the SLO
STUB_PROG=$GSTUB start_stub --ttft-ms 20 --itl-ms 5 --slow-every 5 --slow-ttft-ms 300 --fail-every 10
grun gslo --concurrency 10 --num-requests 40 --input-len 8 --output-len 10 --slo ttft=200ms,tpot=50ms --api chat
check "grpc slo met" 28 "$(j gslo .slo.met)"
check "grpc slo failures" 4 "$(j gslo .failures.grpc_status)"
check "grpc slo status by name" 4 "$(j gslo .grpc_status.RESOURCE_EXHAUSTED)"
check "grpc slo failure logged once" 1 "$(grep -c 'RESOURCE_EXHAUSTED' "$TMP/gslo.stderr")"
# a deadline shorter than the stub's TTFT: every request is a timeout
STUB_PROG=$GSTUB start_stub --ttft-ms 400 --itl-ms 5
grun gtimeout --concurrency 4 --num-requests 4 --input-len 8 --output-len 4 --timeout 100ms
check "grpc timeouts" 4 "$(j gtimeout .failures.timeout)"

# 13. How fast the harness itself is (printed, not asserted): zero-delay stub, 16 chunks per request.
start_stub --ttft-ms 0 --itl-ms 0
"$BENCH" serve --url "http://127.0.0.1:$PORT" --concurrency 64 --num-requests 4000 --input-len 8 --output-len 16 \
  --scrape-interval 0 --no-progress --out "$TMP/speed_closed" >/dev/null 2>&1
"$BENCH" serve --url "http://127.0.0.1:$PORT" --rate 1000 --duration 3s --input-len 8 --output-len 16 \
  --scrape-interval 0 --no-progress --out "$TMP/speed_open" >/dev/null 2>&1
echo "harness speed, closed loop c=64: $(j speed_closed '"\(.req_per_s|floor) req/s, \(.chunks_per_s|floor) chunks/s"')"
echo "harness speed, open loop 1000 req/s: $(j speed_open '"achieved \(.achieved_rate|floor) req/s, \(.chunks_per_s|floor) chunks/s, behind=\(.harness_behind), late=\(.late_sends)"')"
STUB_PROG=$GSTUB start_stub --ttft-ms 0 --itl-ms 0
"$BENCH" serve --grpc "127.0.0.1:$PORT" --concurrency 64 --num-requests 2000 --input-len 8 --output-len 16 \
  --no-progress --out "$TMP/speed_grpc" >/dev/null 2>&1
echo "harness speed over gRPC, closed loop c=64: $(j speed_grpc '"\(.req_per_s|floor) req/s, \(.chunks_per_s|floor) chunks/s"')"

echo "bench_serve: $pass passed, $failed failed"
[ "$failed" -eq 0 ]
