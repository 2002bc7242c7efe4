#!/usr/bin/env bash
# corrupt_models.sh: a truncated, bit-flipped, wrong-shape or unsupported model makes `strata generate`
# exit non-zero with an error naming the file, and never crash (no signal exit, no sanitizer report).
set -uo pipefail
MODELS=${STRATA_MODELS_DIR:-$(dirname "$0")/../../../shared/models}
STRATA=${STRATA_BUILD_DIR:-build}/cli/strata
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0; failed=0
expect_clean_failure() { # NAME MODEL_PATH NEEDLE
  "$STRATA" generate --model "$2" --prompt "Once" --max-tokens 4 --temperature 0 >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ $rc -ne 1 ]; then echo "FAIL $1: exit $rc (want 1)"; head -5 "$tmp/err"; failed=$((failed+1)); return; fi
  if ! grep -q -- "$3" "$tmp/err"; then echo "FAIL $1: error does not name $3:"; head -5 "$tmp/err"; failed=$((failed+1)); return; fi
  pass=$((pass+1))
}
gguf="$MODELS/stories260K/stories260K.gguf"
size=$(stat -c %s "$gguf")
# truncated at many lengths: inside the header, the metadata, the tensor directory, the data
for n in 0 3 8 23 100 1000 5000 20000 100000 $((size / 2)) $((size - 1)); do
  head -c $n "$gguf" > "$tmp/trunc_$n.gguf"
  expect_clean_failure "truncated at $n" "$tmp/trunc_$n.gguf" "trunc_$n.gguf"
done
# bad magic
{ printf 'XXXX'; tail -c +5 "$gguf"; } > "$tmp/magic.gguf"
expect_clean_failure "bad magic" "$tmp/magic.gguf" "magic.gguf"
# an unsupported version (byte 4 = 99)
{ head -c 4 "$gguf"; printf '\x63'; tail -c +6 "$gguf"; } > "$tmp/version.gguf"
expect_clean_failure "bad version" "$tmp/version.gguf" "version.gguf"
# bit flips across the header: must not crash (either a clean error or a model that loads)
for off in 9 17 25 33 41 60 90 130 200 400 700 1200 2000 3000; do
  cp "$gguf" "$tmp/flip.gguf"; chmod u+w "$tmp/flip.gguf"
  byte=$(od -An -tu1 -j $off -N1 "$tmp/flip.gguf" | tr -d ' ')
  printf "$(printf '\\%03o' $((byte ^ 0x40)))" | dd of="$tmp/flip.gguf" bs=1 seek=$off conv=notrunc status=none
  "$STRATA" generate --model "$tmp/flip.gguf" --prompt "Once" --max-tokens 4 --temperature 0 >/dev/null 2>"$tmp/err"
  rc=$?
  if [ $rc -ge 2 ]; then echo "FAIL flip at $off: exit $rc"; head -3 "$tmp/err"; failed=$((failed+1)); else pass=$((pass+1)); fi
done
# a Hugging Face directory whose config.json disagrees with the tensor shapes
mkdir -p "$tmp/hf"; cp "$MODELS/stories260K-hf/"* "$tmp/hf/"; chmod u+w "$tmp/hf/"*
sed -i 's/"intermediate_size": 172/"intermediate_size": 171/' "$tmp/hf/config.json"
expect_clean_failure "wrong shape" "$tmp/hf" "mlp"
# an unsupported architecture
cp "$MODELS/stories260K-hf/config.json" "$tmp/hf/config.json"; chmod u+w "$tmp/hf/config.json"
sed -i 's/"LlamaForCausalLM"/"GPTNeoXForCausalLM"/; s/"model_type": "llama"/"model_type": "gpt_neox"/' "$tmp/hf/config.json"
expect_clean_failure "unsupported arch" "$tmp/hf" "GPTNeoX"
# a truncated safetensors file
cp "$MODELS/stories260K-hf/config.json" "$tmp/hf/config.json"
head -c 500000 "$MODELS/stories260K-hf/model.safetensors" > "$tmp/hf/model.safetensors"
expect_clean_failure "truncated safetensors" "$tmp/hf" "model.safetensors"
echo "$pass passed, $failed failed"
[ $failed -eq 0 ]
