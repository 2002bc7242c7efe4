#!/usr/bin/env bash
# run.sh: the main job from a fresh Debian 12 checkout: installs dependencies, builds, and generates
# text with the default model (../shared/models/stories260K when present, else dummy:tiny).
# Extra arguments go to `strata generate` (e.g. --prompt "Once upon a time" --temperature 0.8).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
MODEL=dummy:tiny
[ -f ../shared/models/stories260K/stories260K.gguf ] && MODEL=../shared/models/stories260K/stories260K.gguf
if [ $# -eq 0 ]; then set -- --prompt "Once upon a time" --max-tokens 200; fi
exec ./build/cli/strata generate --model "$MODEL" "$@"
