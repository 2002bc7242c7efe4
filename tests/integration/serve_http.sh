#!/usr/bin/env bash
# serve_http.sh: `strata serve` as curl sees it: every endpoint and error code, greedy text equal to
# `strata generate`, usage counts, 256 concurrent streams, and a killed client freeing its KV blocks.
set -uo pipefail
MODELS=${STRATA_MODELS_DIR:-$(dirname "$0")/../../../shared/models}
B=${STRATA_BUILD_DIR:-build}
STRATA=$B/cli/strata
STORIES=$MODELS/stories260K/stories260K.gguf
TMP=$(mktemp -d /tmp/strata_serve_http.XXXXXX)
pass=0; failed=0; PIDS=()
check() { # check NAME EXPECTED ACTUAL
  if [ "$2" == "$3" ]; then pass=$((pass+1)); else echo "FAIL $1: expected [$2] got [$3]"; failed=$((failed+1)); fi
}
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
jqget() { python3 -c "import sys,json; d=json.load(sys.stdin); print(eval('d'+sys.argv[1]))" "$1"; }

# start NAME ARGS...: starts `strata serve --port 0 ARGS` and sets PORT (the port it printed)
start() {
  local name=$1; shift
  "$STRATA" serve --port 0 --grpc-port 0 "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
  PIDS+=($!)
  PORT=""
  for _ in $(seq 1 100); do
    PORT=$(grep -o 'listening on [0-9.]*:[0-9]*' "$TMP/$name.out" 2>/dev/null | sed 's/.*://')
    [ -n "$PORT" ] && { curl -sf "http://127.0.0.1:$PORT/health" || curl -skf "https://127.0.0.1:$PORT/health"; } >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "FAIL: server $name did not start"; cat "$TMP/$name.err"; exit 1
}
code() { curl -s -o "$TMP/body" -w '%{http_code}' "$@"; }

# ---- stories260K with an API key ----
start main --model "$STORIES" --api-key sekrit --api-key other --max-body-bytes 65536
U=http://127.0.0.1:$PORT; AUTH=(-H "Authorization: Bearer sekrit")
check "health" 200 "$(code "$U/health")"
check "metrics without key" 200 "$(code "$U/metrics")"
check "models" 200 "$(code "${AUTH[@]}" "$U/v1/models")"
check "models id" "stories260K.gguf" "$(jqget "['data'][0]['id']" <"$TMP/body")"
check "401 missing key" 401 "$(code "$U/v1/models")"
check "401 error type" "authentication_error" "$(jqget "['error']['type']" <"$TMP/body")"
check "401 wrong key" 401 "$(code -H "Authorization: Bearer sekrit2" "$U/v1/models")"
check "second key accepted" 200 "$(code -H "Authorization: Bearer other" "$U/v1/models")"
check "404 path" 404 "$(code "${AUTH[@]}" "$U/v1/nothing")"
check "404 model" 404 "$(code "${AUTH[@]}" "$U/v1/completions" -d '{"model":"gpt-4","prompt":"x"}')"
check "400 bad json" 400 "$(code "${AUTH[@]}" "$U/v1/completions" -d '{"prompt":')"
check "400 bad param" 400 "$(code "${AUTH[@]}" "$U/v1/completions" -d '{"prompt":"x","temperature":-3}')"
check "400 param name" "temperature" "$(jqget "['error']['param']" <"$TMP/body")"
check "400 bad token id" 400 "$(code "${AUTH[@]}" "$U/v1/completions" -d '{"prompt":[1,99999]}')"
check "400 bad role" 400 "$(code "${AUTH[@]}" "$U/v1/chat/completions" -d '{"messages":[{"role":"x","content":"y"}]}')"
head -c 100000 /dev/zero | tr '\0' 'a' >"$TMP/big"
check "413 body too big" 413 "$(code "${AUTH[@]}" "$U/v1/completions" --data-binary @"$TMP/big")"

# greedy completion == strata generate (same prompt, temperature 0)
want=$("$STRATA" generate --model "$STORIES" --prompt "Once upon a time" --max-tokens 40 --temperature 0)
check "completion 200" 200 "$(code "${AUTH[@]}" "$U/v1/completions" -d '{"prompt":"Once upon a time","max_tokens":40,"temperature":0}')"
check "greedy text == generate" "$want" "$(jqget "['choices'][0]['text']" <"$TMP/body")"
check "usage prompt" 5 "$(jqget "['usage']['prompt_tokens']" <"$TMP/body")" # BOS + 4 (tokenizer README)
check "usage completion" 40 "$(jqget "['usage']['completion_tokens']" <"$TMP/body")"
check "usage total" 45 "$(jqget "['usage']['total_tokens']" <"$TMP/body")"
check "finish length" length "$(jqget "['choices'][0]['finish_reason']" <"$TMP/body")"
# prefix caching in usage.prompt_tokens_details.cached_tokens: a prompt of 30-odd tokens twice; the second
# time every full 16-token block before its last token comes from the cache
long='{"prompt":"The big brown dog ran to the park to play with a red ball, and his friends the cat and the bird were there too","max_tokens":2,"temperature":0}'
code "${AUTH[@]}" "$U/v1/completions" -d "$long" >/dev/null
check "cached tokens, first time" 0 "$(jqget "['usage']['prompt_tokens_details']['cached_tokens']" <"$TMP/body")"
code "${AUTH[@]}" "$U/v1/completions" -d "$long" >/dev/null
p2=$(jqget "['usage']['prompt_tokens']" <"$TMP/body")
check "cached tokens, second time" "$(((p2 - 1) / 16 * 16))" "$(jqget "['usage']['prompt_tokens_details']['cached_tokens']" <"$TMP/body")"
echo "cached tokens: $(jqget "['usage']['prompt_tokens_details']['cached_tokens']" <"$TMP/body") of $p2 prompt tokens"
[ "$p2" -gt 17 ] || { echo "FAIL: the cached-tokens prompt has only $p2 tokens"; exit 1; }
# streamed: the concatenated deltas equal the same text, then [DONE]
curl -sN "${AUTH[@]}" "$U/v1/completions" -d '{"prompt":"Once upon a time","max_tokens":40,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}' >"$TMP/sse"
got=$(python3 - "$TMP/sse" <<'PY'
import json, sys
text, usage = "", None
for line in open(sys.argv[1]).read().split("\n\n"):
    if not line.startswith("data: ") or line == "data: [DONE]": continue
    d = json.loads(line[6:])
    for c in d["choices"]: text += c["text"]
    if d.get("usage"): usage = d["usage"]["completion_tokens"]
print(repr(text), usage)
PY
)
check "stream text + usage" "$(python3 -c 'import sys; print(repr(sys.argv[1]), 40)' "$want")" "$got"
check "stream ends with DONE" "data: [DONE]" "$(grep -v '^$' "$TMP/sse" | tail -1)"
# a stop string: the text before it, finish_reason stop
code "${AUTH[@]}" "$U/v1/completions" -d '{"prompt":"","max_tokens":200,"temperature":0,"stop":["Lily"]}' >/dev/null
check "stop string text" "Once upon a time, there was a little girl named " "$(jqget "['choices'][0]['text']" <"$TMP/body")"
check "stop string finish" stop "$(jqget "['choices'][0]['finish_reason']" <"$TMP/body")"
# chat, non-streamed
check "chat 200" 200 "$(code "${AUTH[@]}" "$U/v1/chat/completions" -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":8,"temperature":0}')"
check "chat object" chat.completion "$(jqget "['object']" <"$TMP/body")"
check "chat role" assistant "$(jqget "['choices'][0]['message']['role']" <"$TMP/body")"
check "chat usage" 8 "$(jqget "['usage']['completion_tokens']" <"$TMP/body")"

# ---- dummy:tiny: 429, 256 concurrent streams, a killed client ----
start small --model dummy:tiny --max-num-seqs 1 --max-queue 0
check "429 over capacity" 429 "$(code "http://127.0.0.1:$PORT/v1/completions" -d '{"prompt":"hi","n":2}')"
check "429 type" rate_limit_error "$(jqget "['error']['type']" <"$TMP/body")"
start tiny --model dummy:tiny --max-num-seqs 256
U=http://127.0.0.1:$PORT
seq 1 256 | xargs -P 256 -I{} sh -c "curl -sN '$U/v1/completions' -d '{\"prompt\":\"client {}\",\"max_tokens\":24,\"ignore_eos\":true,\"temperature\":0.7,\"stream\":true,\"stream_options\":{\"include_usage\":true}}' > '$TMP/c{}.sse'"
ok=0
for i in $(seq 1 256); do
  grep -q '"completion_tokens":24,' "$TMP/c$i.sse" && grep -q '^data: \[DONE\]' "$TMP/c$i.sse" && ok=$((ok+1))
done
check "256 streams complete with 24 tokens each" 256 "$ok"
# a bad request while others run gets 400, the others carry on
curl -sN "$U/v1/completions" -d '{"prompt":"a","max_tokens":500,"ignore_eos":true,"stream":true}' >"$TMP/other.sse" &
check "400 during load" 400 "$(code "$U/v1/completions" -d '{"prompt":"x","top_p":7}')"
wait $!
check "other stream finished" 1 "$(grep -c '^data: \[DONE\]' "$TMP/other.sse")"
# a killed client frees its KV blocks: 16 long choices, killed mid-stream
blocks() { curl -s "$U/metrics" | awk '$1=="strata:kv_cache_blocks_used"{print $2}'; }
check "blocks idle" 0 "$(blocks)"
curl -sN "$U/v1/completions" -d '{"prompt":"kill me","n":16,"max_tokens":2000,"ignore_eos":true,"stream":true}' >"$TMP/killed.sse" &
KPID=$!
for _ in $(seq 1 100); do [ -s "$TMP/killed.sse" ] && break; sleep 0.02; done
busy=$(blocks)
kill $KPID; wait $KPID 2>/dev/null
for _ in $(seq 1 50); do [ "$(blocks)" == 0 ] && break; sleep 0.1; done
check "blocks in use while streaming" 1 "$([ "${busy:-0}" -gt 0 ] && echo 1 || echo "0 (busy=$busy)")"
check "blocks freed after kill" 0 "$(blocks)"
check "abort counted" 1 "$(curl -s "$U/metrics" | awk '$1=="strata:request_success_total{finished_reason=\"abort\"}"{print ($2>=16)}')"

# a slow reader (its output paused by backpressure) does not stall a short request; killing it frees its blocks
curl -sN --limit-rate 20k "$U/v1/completions" -d '{"prompt":"slow","n":8,"max_tokens":2000,"ignore_eos":true,"stream":true,"logprobs":5}' >"$TMP/slow.sse" &
SPID2=$!
for _ in $(seq 1 100); do [ -s "$TMP/slow.sse" ] && break; sleep 0.02; done
check "short request beside a slow reader" 200 "$(code "$U/v1/completions" -d '{"prompt":"quick","max_tokens":8}')"
check "slow reader still streaming" 1 "$(kill -0 $SPID2 2>/dev/null && echo 1 || echo 0)"
kill $SPID2; wait $SPID2 2>/dev/null
for _ in $(seq 1 50); do [ "$(blocks)" == 0 ] && break; sleep 0.1; done
check "slow reader's blocks freed" 0 "$(blocks)"

# ---- options through the environment; an engine refusal is a 400 too ----
STRATA_API_KEY=envkey STRATA_SERVED_MODEL_NAME=envname STRATA_NUM_KV_BLOCKS=3 start env --model dummy:tiny
U=http://127.0.0.1:$PORT
check "env api key + name" envname "$(curl -s -H 'Authorization: Bearer envkey' "$U/v1/models" | jqget "['data'][0]['id']")"
check "env api key enforced" 401 "$(code "$U/v1/models")"
long=$(head -c 100 /dev/zero | tr '\0' 'a')
check "prompt larger than the KV cache" 400 "$(code -H 'Authorization: Bearer envkey' "$U/v1/completions" -d "{\"prompt\":\"$long\",\"max_tokens\":1}")"
check "KV refusal message" 1 "$(grep -c 'does not fit in the KV cache' "$TMP/body")"

# ---- HTTPS with a throwaway self-signed certificate ----
if openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1; then
  start tls --model dummy:tiny --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem"
  check "https completion" 200 "$(code -k "https://127.0.0.1:$PORT/v1/completions" -d '{"prompt":"hi","max_tokens":4}')"
  check "https usage" 4 "$(jqget "['usage']['completion_tokens']" <"$TMP/body")"
  check "plain http refused on the TLS port" 1 "$(curl -s -m 2 "http://127.0.0.1:$PORT/health" -o /dev/null -w '%{http_code}' | grep -vc '^200$')"
fi

# stop by PID: a clean exit
for p in "${PIDS[@]}"; do kill -TERM "$p"; done
for p in "${PIDS[@]}"; do wait "$p"; check "clean exit $p" 0 $?; done
PIDS=()
echo "serve_http: $pass passed, $failed failed"
[ "$failed" -eq 0 ]
