#!/usr/bin/env bash
# run.sh: the main job from a fresh Debian 12 checkout: installs dependencies, builds, and brings up
# a local cluster (etcd, one coordinator, two workers) serving the default model
# (../shared/models/stories260K when present, else dummy:tiny) on loopback. It sends one request to
# show the cluster answering, then serves until Ctrl-C, which stops every process it started.
# Extra arguments go to `strata cluster up` (e.g. --workers 3).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
MODEL=dummy:tiny
[ -f ../shared/models/stories260K/stories260K.gguf ] && MODEL=../shared/models/stories260K/stories260K.gguf
DIR=${STRATA_CLUSTER_DIR:-.strata/cluster}
./build/cli/strata cluster down --dir "$DIR" >/dev/null 2>&1 || true
mkdir -p "$(dirname "$DIR")"
trap './build/cli/strata cluster down --dir "$DIR"' EXIT
./build/cli/strata cluster up --model "$MODEL" --dir "$DIR" "$@" | tee "$DIR.up.txt"
PORT=$(grep -o 'http://127.0.0.1:[0-9]*' "$DIR.up.txt" | head -1 | sed 's/.*://')
if [ -n "$PORT" ]; then
  echo "--- POST /v1/completions on the coordinator (port $PORT):"
  curl -sS "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
    -d '{"model":"'"$(basename "$MODEL")"'","prompt":"Once upon a time","max_tokens":48,"temperature":0}'
  echo
fi
echo "--- serving; press Ctrl-C to stop the cluster"
while sleep 3600; do :; done
