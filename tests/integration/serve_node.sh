#!/usr/bin/env bash
# serve_node.sh: runs tests/integration/node (the official `openai` Node client, `node --test`)
# against a `strata serve` on stories260K with an API key; installs the client with npm when
# node_modules is missing (the lock file pins it).
set -uo pipefail
MODELS=${STRATA_MODELS_DIR:-$(dirname "$0")/../../../shared/models}
B=${STRATA_BUILD_DIR:-build}
STRATA=$(realpath "$B/cli/strata")
STORIES=$MODELS/stories260K/stories260K.gguf
NODE_DIR=$(dirname "$(realpath "$0")")/node
command -v node >/dev/null || { echo "serve_node: node is not installed"; exit 1; }
if [ ! -d "$NODE_DIR/node_modules/openai" ]; then
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund >/dev/null) || { echo "serve_node: npm ci failed"; exit 1; }
fi
TMP=$(mktemp -d /tmp/strata_serve_node.XXXXXX)
"$STRATA" serve --model "$STORIES" --port 0 --grpc-port 0 --api-key node-test-key >"$TMP/out" 2>"$TMP/err" &
SPID=$!
trap 'kill $SPID 2>/dev/null; wait $SPID 2>/dev/null; rm -rf "$TMP"' EXIT
PORT=""
for _ in $(seq 1 100); do
  PORT=$(grep -o 'listening on [0-9.]*:[0-9]*' "$TMP/out" | sed 's/.*://')
  [ -n "$PORT" ] && curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  PORT=""; sleep 0.1
done
[ -n "$PORT" ] || { echo "serve_node: the server did not start"; cat "$TMP/err"; exit 1; }
export STRATA_URL=http://127.0.0.1:$PORT STRATA_API_KEY=node-test-key STRATA_MODEL=stories260K.gguf
STRATA_GREEDY=$("$STRATA" generate --model "$STORIES" --prompt "Once upon a time" --max-tokens 40 --temperature 0)
export STRATA_GREEDY
cd "$NODE_DIR" && node --test serve.test.mjs
