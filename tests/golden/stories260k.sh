#!/usr/bin/env bash
# stories260k.sh: `strata generate` on the trained stories260K model (GGUF and Hugging Face layouts)
# prints exactly the text llama2.c's own test expects (../shared/models/stories260K/REFERENCE.md).
set -euo pipefail
MODELS=${STRATA_MODELS_DIR:-$(dirname "$0")/../../../shared/models}
STRATA=${STRATA_BUILD_DIR:-build}/cli/strata
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# The reference is the fenced ```text block of REFERENCE.md (without its final newline).
awk '/^```text$/{on=1; next} /^```$/{on=0} on' "$MODELS/stories260K/REFERENCE.md" > "$tmp/ref.txt"
truncate -s -1 "$tmp/ref.txt"
fail=0
for model in "$MODELS/stories260K/stories260K.gguf" "$MODELS/stories260K-hf"; do
  "$STRATA" generate --model "$model" --prompt "" --max-tokens 200 --temperature 0 > "$tmp/out.txt"
  if cmp -s "$tmp/out.txt" "$tmp/ref.txt"; then
    echo "ok: $model"
  else
    echo "FAIL: $model differs from REFERENCE.md:"; diff "$tmp/ref.txt" "$tmp/out.txt" | head -20; fail=1
  fi
done
exit $fail
