#!/usr/bin/env bash
# cluster_grpc.sh: strata-coordinator's gRPC strata.v1.Inference API, driven by @grpc/grpc-js
# (tests/integration/node/cluster_grpc.test.mjs): etcd, 2 stories260K workers and two coordinators on
# fresh loopback ports, every process started here and stopped by PID. Coordinator A is plain: Health,
# ListModels, Tokenize equal to `strata tokenize`, Generate streaming the greedy text of
# `strata generate` through the router, a cancelled stream aborting its worker call, 32 streams that
# all complete with their undisturbed text when one worker is SIGKILLed mid-stream (migration), and
# UNAVAILABLE with the router's reason once the workers are gone. Coordinator B has API keys (STRATA_API_KEY, a
# comma list) and TLS: UNAUTHENTICATED without or with a wrong key over gRPC, and over HTTPS 401 with
# a wrong key, 200 with a right one.
set -uo pipefail
HERE=$(dirname "$(realpath "$0")")
MODELS=${STRATA_MODELS_DIR:-$HERE/../../../shared/models}
B=${STRATA_BUILD_DIR:-build}
STRATA=$(realpath "$B/cli/strata")
COORD=$(realpath "$B/coordinator/strata-coordinator")
WORKER=$(realpath "$B/worker/node/strata-worker")
STORIES=$(realpath "$MODELS/stories260K/stories260K.gguf")
NAME=stories260K.gguf
NODE_DIR=$HERE/node
command -v node >/dev/null || { echo "cluster_grpc: node is not installed"; exit 1; }
if [ ! -d "$NODE_DIR/node_modules/@grpc/grpc-js" ] || [ ! -d "$NODE_DIR/node_modules/@grpc/proto-loader" ]; then
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund >/dev/null) || { echo "cluster_grpc: npm ci failed"; exit 1; }
fi
TMP=$(mktemp -d /tmp/strata_cluster_grpc.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  bash "$HERE/etcd_util.sh" stop "$TMP/etcd" >/dev/null 2>&1
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "cluster_grpc: FAIL: $*"; for f in "$TMP"/*.log; do echo "== $f"; tail -n 20 "$f"; done; exit 1; }

bash "$HERE/etcd_util.sh" start "$TMP/etcd" || fail "etcd did not start"
ETCD=$(cat "$TMP/etcd/client_addr")

# coordinator NAME ARGS...: strata-coordinator on free ports; sets HTTP, ADMIN and GRPC (host:port)
coordinator() {
  local name=$1; shift
  "$COORD" --model "$STORIES" --etcd "$ETCD" --id "coord-$name" --port 0 --grpc-port 0 --inference-grpc-port 0 "$@" \
    >"$TMP/$name.out" 2>"$TMP/$name.log" &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    GRPC=$(sed -n 's/^strata-coordinator: inference grpc //p' "$TMP/$name.out")
    local l
    l=$(grep '^strata-coordinator: listening on' "$TMP/$name.out")
    if [ -n "$l" ] && [ -n "$GRPC" ]; then
      HTTP=$(echo "$l" | awk '{print $4}') ADMIN=$(echo "$l" | awk '{print $6}')
      return 0
    fi
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  fail "coordinator $name did not start"
}

openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1" \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1 || fail "openssl failed"
coordinator plain
PLAIN_HTTP=$HTTP PLAIN_ADMIN=$ADMIN PLAIN_GRPC=$GRPC
# the keys through the environment, as the Helm chart passes them
STRATA_API_KEY=grpc-key,other-key coordinator keyed --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem"
KEYED_HTTP=$HTTP KEYED_GRPC=$GRPC

WPIDS=
for i in 0 1; do
  "$WORKER" --model "$STORIES" --etcd "$ETCD" --id "worker-$i" --grpc-port 0 --threads 1 --num-kv-blocks 2048 \
    >"$TMP/worker-$i.out" 2>"$TMP/worker-$i.log" &
  PIDS+=($!)
  WPIDS="$WPIDS $!"
  disown $! # the last test SIGKILLs it: no "Killed" notice from bash
done
for _ in $(seq 1 150); do
  "$STRATA" workers --coordinator "$PLAIN_ADMIN" >"$TMP/workers" 2>&1
  [ "$(grep -c ' ready' "$TMP/workers")" == 2 ] && break
  sleep 0.1
done
[ "$(grep -c ' ready' "$TMP/workers")" == 2 ] || { cat "$TMP/workers"; fail "the workers are not ready"; }

# HTTP shares the keys and TLS: a wrong key is 401, a right one is served
CODE=$(curl -s -o "$TMP/401" -w '%{http_code}' --cacert "$TMP/cert.pem" -H 'Authorization: Bearer wrong-key' \
  "https://$KEYED_HTTP/v1/models")
[ "$CODE" == 401 ] || fail "HTTPS with a wrong key: status $CODE, want 401: $(cat "$TMP/401")"
CODE=$(curl -s -o "$TMP/200" -w '%{http_code}' --cacert "$TMP/cert.pem" -H 'Authorization: Bearer other-key' \
  "https://$KEYED_HTTP/v1/completions" -d "{\"model\":\"$NAME\",\"prompt\":\"Hi\",\"max_tokens\":2}")
[ "$CODE" == 200 ] || fail "HTTPS with the second key: status $CODE, want 200: $(cat "$TMP/200")"
echo "cluster_grpc: HTTPS: 401 with a wrong key, 200 with a right one"

export STRATA_PROTO_DIR=$HERE/../../proto STRATA_MODEL=$NAME
export STRATA_GRPC=$PLAIN_GRPC STRATA_URL=http://$PLAIN_HTTP
export STRATA_GRPC_TLS=$KEYED_GRPC STRATA_TLS_CA=$TMP/cert.pem STRATA_TEST_API_KEY=grpc-key
export STRATA_WORKER_PIDS=$WPIDS
STRATA_GREEDY=$("$STRATA" generate --model "$STORIES" --prompt "Once upon a time" --max-tokens 40 --temperature 0)
STRATA_TOKENS=$("$STRATA" tokenize --model "$STORIES" "Once upon a time")
STRATA_TOKENS_PLAIN=$("$STRATA" tokenize --model "$STORIES" --no-special "Once upon a time")
export STRATA_GREEDY STRATA_TOKENS STRATA_TOKENS_PLAIN
(cd "$NODE_DIR" && node --test cluster_grpc.test.mjs) || fail "node --test cluster_grpc.test.mjs"
echo "cluster_grpc: PASS"
