#!/usr/bin/env bash
# serve_grpc.sh: runs tests/integration/node/grpc.test.mjs (@grpc/grpc-js, `node --test`) against the
# gRPC strata.v1.Inference API of `strata serve` on stories260K: Generate greedy text equal to
# `strata generate`, usage, Tokenize equal to `strata tokenize`, ListModels, Health, error codes, a
# cancelled stream freeing its KV blocks; API keys on a second server; TLS and RESOURCE_EXHAUSTED on
# a third. Installs the client with
# npm when node_modules lacks it (the lock file pins it).
set -uo pipefail
MODELS=${STRATA_MODELS_DIR:-$(dirname "$0")/../../../shared/models}
B=${STRATA_BUILD_DIR:-build}
STRATA=$(realpath "$B/cli/strata")
STORIES=$MODELS/stories260K/stories260K.gguf
NODE_DIR=$(dirname "$(realpath "$0")")/node
command -v node >/dev/null || { echo "serve_grpc: node is not installed"; exit 1; }
if [ ! -d "$NODE_DIR/node_modules/@grpc/grpc-js" ] || [ ! -d "$NODE_DIR/node_modules/@grpc/proto-loader" ]; then
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund >/dev/null) || { echo "serve_grpc: npm ci failed"; exit 1; }
fi
TMP=$(mktemp -d /tmp/strata_serve_grpc.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$TMP"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start NAME ARGS...: `strata serve --port 0 --grpc-port <free> ARGS`; sets HPORT and GPORT
start() {
  local name=$1; shift
  "$STRATA" serve --port 0 --grpc-port "$(free_port)" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
  PIDS+=($!)
  for _ in $(seq 1 150); do
    HPORT=$(grep -o '^strata serve: listening on [0-9.]*:[0-9]*' "$TMP/$name.out" | sed 's/.*://')
    GPORT=$(grep -o '^strata serve: grpc [0-9.]*:[0-9]*' "$TMP/$name.out" | sed 's/.*://')
    [ -n "$HPORT" ] && [ -n "$GPORT" ] && return 0
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "serve_grpc: server $name did not start"; cat "$TMP/$name.err"; exit 1
}

# servers first: the variables below would read as `strata serve` options (STRATA_MODEL, STRATA_API_KEY)
start main --model "$STORIES"
MAIN_G=$GPORT MAIN_H=$HPORT
start keyed --model "$STORIES" --api-key grpc-key --api-key other-key
KEYED_G=$GPORT
# TLS (a self-signed certificate for 127.0.0.1) and room for one sequence
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1" \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1 || { echo "serve_grpc: openssl failed"; exit 1; }
start tls --model "$STORIES" --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem" --max-num-seqs 1 --max-queue 0
TLS_G=$GPORT

export STRATA_GRPC=127.0.0.1:$MAIN_G STRATA_URL=http://127.0.0.1:$MAIN_H STRATA_MODEL=stories260K.gguf
export STRATA_PROTO_DIR=$(dirname "$(realpath "$0")")/../../proto
export STRATA_GRPC_KEYED=127.0.0.1:$KEYED_G STRATA_API_KEY=grpc-key
export STRATA_GRPC_TLS=127.0.0.1:$TLS_G STRATA_TLS_CA=$TMP/cert.pem
# NOTE: until common/rpc exposes call metadata, a keyed server refuses every call but Health (fail closed)
if grep -q 'cannot read gRPC metadata' "$TMP/keyed.err"; then export STRATA_GRPC_NO_METADATA=1; fi
STRATA_GREEDY=$("$STRATA" generate --model "$STORIES" --prompt "Once upon a time" --max-tokens 40 --temperature 0)
STRATA_TOKENS=$("$STRATA" tokenize --model "$STORIES" "Once upon a time")
STRATA_TOKENS_PLAIN=$("$STRATA" tokenize --model "$STORIES" --no-special "Once upon a time")
export STRATA_GREEDY STRATA_TOKENS STRATA_TOKENS_PLAIN
cd "$NODE_DIR" && node --test grpc.test.mjs
