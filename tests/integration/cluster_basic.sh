#!/usr/bin/env bash
# cluster_basic.sh: `strata cluster up` (etcd + coordinator + 2 stories260K workers on loopback):
# completions and chat through the coordinator equal `strata generate`'s greedy text; requests that
# share a long prefix land on the worker that caches it; `strata workers` lists both; with every
# worker gone the coordinator answers 503 with the router's reason.
set -uo pipefail
MODELS=${STRATA_MODELS_DIR:-$(dirname "$0")/../../../shared/models}
B=${STRATA_BUILD_DIR:-build}
STRATA=$(realpath "$B/cli/strata")
STORIES=$(realpath "$MODELS/stories260K/stories260K.gguf")
NAME=stories260K.gguf
TMP=$(mktemp -d /tmp/strata_cluster_basic.XXXXXX)
D=$TMP/cluster
trap '"$STRATA" cluster down --dir "$D" >/dev/null 2>&1; rm -rf "$TMP"' EXIT
fail() { echo "cluster_basic: FAIL: $*"; for f in "$D"/*.log; do echo "== $f"; tail -n 20 "$f"; done; exit 1; }

"$STRATA" cluster up --workers 2 --model "$STORIES" --dir "$D" --worker-args "--threads 1 --num-kv-blocks 512 --max-model-len 1024" \
  >"$TMP/up.out" 2>&1 || { cat "$TMP/up.out"; fail "cluster up"; }
URL=http://$(cat "$D/coordinator.http")
export STRATA_CLUSTER_DIR=$D

json_field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval("d"+sys.argv[1]), end="")' "$1"; }
metric() { # metric NAME WORKER: the coordinator's gauge for that worker
  curl -s "$URL/metrics" | awk -v n="$1{worker=\"$2\"}" '$1==n {print $2}'
}

# 1. greedy text equals a local engine's
WANT=$("$STRATA" generate --model "$STORIES" --prompt "Once upon a time" --max-tokens 40 --temperature 0 2>/dev/null)
GOT=$(curl -s "$URL/v1/completions" -d "{\"model\":\"$NAME\",\"prompt\":\"Once upon a time\",\"max_tokens\":40,\"temperature\":0}" |
  json_field '["choices"][0]["text"]')
[ "$GOT" == "$WANT" ] || fail "completions: got '$GOT', want '$WANT'"
# the coordinator checks requests against the context length its workers registered (--max-model-len 1024)
ML=$(curl -s "$URL/v1/models" | json_field '["data"][0]["max_model_len"]')
[ "$ML" == "1024" ] || fail "/v1/models max_model_len '$ML', want the workers' 1024"
CODE=$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/completions" \
  -d "{\"model\":\"$NAME\",\"prompt\":\"Once upon a time\",\"max_tokens\":1100}")
[ "$CODE" == "400" ] || fail "a request past the workers' context length got HTTP $CODE, want 400"
CHAT_PROMPT=$'<|im_start|>user\nTell me a story<|im_end|>\n<|im_start|>assistant\n' # the ChatML fallback
WANT=$("$STRATA" generate --model "$STORIES" --prompt "$CHAT_PROMPT" --max-tokens 30 --temperature 0 2>/dev/null)
GOT=$(curl -s "$URL/v1/chat/completions" \
  -d "{\"model\":\"$NAME\",\"messages\":[{\"role\":\"user\",\"content\":\"Tell me a story\"}],\"max_tokens\":30,\"temperature\":0}" |
  json_field '["choices"][0]["message"]["content"]')
[ "$GOT" == "$WANT" ] || fail "chat: got '$GOT', want '$WANT'"
echo "cluster_basic: completions and chat match strata generate"

# 2. KV-aware routing: the worker that computed a long prefix gets the requests that share it
PREFIX=$(python3 -c 'print(" ".join(["Lily and Ben went to the park to play with a big red ball."] * 12))')
q0=$(metric strata:worker_prefix_cache_queries worker-0); q1=$(metric strata:worker_prefix_cache_queries worker-1)
curl -s "$URL/v1/completions" -d "{\"model\":\"$NAME\",\"prompt\":\"$PREFIX Once\",\"max_tokens\":2}" >/dev/null
sleep 1 # one stats interval (200 ms) and then some, for the KV events to arrive
Q0=$(metric strata:worker_prefix_cache_queries worker-0); Q1=$(metric strata:worker_prefix_cache_queries worker-1)
if [ "$Q0" != "$q0" ] && [ "$Q1" == "$q1" ]; then HOT=worker-0; COLD=worker-1
elif [ "$Q1" != "$q1" ] && [ "$Q0" == "$q0" ]; then HOT=worker-1; COLD=worker-0
else fail "the first request's worker is unclear (queries $q0->$Q0, $q1->$Q1)"; fi
h_hot=$(metric strata:worker_prefix_cache_hits $HOT); h_cold=$(metric strata:worker_prefix_cache_hits $COLD)
# NOTE: one at a time, each after a stats interval: the router's optimistic accounting charges a routed
# prompt's blocks to its worker until that worker's next report, which would spread a burst.
for i in 1 2 3 4; do
  curl -s "$URL/v1/completions" -d "{\"model\":\"$NAME\",\"prompt\":\"$PREFIX Then $i\",\"max_tokens\":2}" >"$TMP/shared"
  sleep 0.5
done
# the worker's prefix-cache hit reaches the client through the coordinator (OpenAI usage)
P_TOK=$(json_field '["usage"]["prompt_tokens"]' <"$TMP/shared")
C_TOK=$(json_field '["usage"]["prompt_tokens_details"]["cached_tokens"]' <"$TMP/shared")
[ "$C_TOK" -ge 64 ] && [ "$C_TOK" -lt "$P_TOK" ] ||
  fail "usage.prompt_tokens_details.cached_tokens is $C_TOK of $P_TOK prompt tokens for a shared prefix"
sleep 1
H_hot=$(metric strata:worker_prefix_cache_hits $HOT); H_cold=$(metric strata:worker_prefix_cache_hits $COLD)
python3 -c "import sys; sys.exit(0 if float('$H_hot') >= float('$h_hot') + 4*16 else 1)" ||
  fail "prefix hits on $HOT did not rise ($h_hot -> $H_hot)"
[ "$H_cold" == "$h_cold" ] || fail "prefix hits on $COLD rose ($h_cold -> $H_cold): requests went to the cold worker"
echo "cluster_basic: shared-prefix requests went to $HOT (prefix hits $h_hot -> $H_hot; $COLD stayed at $H_cold;" \
  "the last one's usage: $C_TOK of $P_TOK prompt tokens cached)"

# 3. strata workers lists both
"$STRATA" workers >"$TMP/workers" 2>&1 || { cat "$TMP/workers"; fail "strata workers"; }
grep -q "^worker-0 .*ready" "$TMP/workers" && grep -q "^worker-1 .*ready" "$TMP/workers" ||
  { cat "$TMP/workers"; fail "strata workers does not list both workers as ready"; }

# 4. no worker left: 503 with the reason
for w in 0 1; do kill -9 "$(cat "$D/worker-$w.pid")"; rm -f "$D/worker-$w.pid"; done
sleep 0.5
CODE=$(curl -s -o "$TMP/503" -w '%{http_code}' "$URL/v1/completions" -d "{\"model\":\"$NAME\",\"prompt\":\"Hi\",\"max_tokens\":2}")
[ "$CODE" == 503 ] || fail "status $CODE with no workers, want 503: $(cat "$TMP/503")"
grep -q "No worker can take this request" "$TMP/503" || fail "503 without a clear message: $(cat "$TMP/503")"
echo "cluster_basic: $(json_field '["error"]["message"]' <"$TMP/503")"
echo "cluster_basic: PASS"
