#!/usr/bin/env bash
# cli.sh: the `strata` and `strata-bench` commands as a user meets them: help, tokenize, errors.
set -uo pipefail
MODELS=${STRATA_MODELS_DIR:-$(dirname "$0")/../../../shared/models}
B=${STRATA_BUILD_DIR:-build}
STRATA=$B/cli/strata
pass=0; failed=0
check() { # check NAME EXPECTED ACTUAL
  if [ "$2" == "$3" ]; then pass=$((pass+1)); else echo "FAIL $1: expected [$2] got [$3]"; failed=$((failed+1)); fi
}
# --help on every command exits 0 and says "usage"
for cmd in "" generate tokenize; do
  out=$("$STRATA" $cmd --help 2>&1); rc=$?
  check "help $cmd rc" 0 $rc; check "help $cmd text" 1 "$(echo "$out" | grep -c '^usage: strata')"
done
out=$("$B/bench/strata-bench" --help); check "bench help" 0 $?
out=$("$B/bench/strata-bench" engine --help); check "bench engine help" 0 $?
# tokenize: the published stories260K facts (README of the test models)
check "tokenize stories" "1 403 407 261 378" "$("$STRATA" tokenize --model "$MODELS/stories260K/stories260K.gguf" "Once upon a time")"
check "tokenize stories hf" "1 403 407 261 378" "$("$STRATA" tokenize --model "$MODELS/stories260K-hf" "Once upon a time")"
check "tokenize no-special" "403 407 261 378" "$("$STRATA" tokenize --no-special --model "$MODELS/stories260K/stories260K.gguf" "Once upon a time")"
# a vocab-only GGUF: GPT-2 "Hello world" is 15496 995 (no BOS in GPT-2)
check "tokenize gpt2 gguf" "15496 995" "$("$STRATA" tokenize --no-special --model "$MODELS/tokenizers/llama.cpp-vocab/ggml-vocab-gpt-2.gguf" "Hello world")"
# errors: unknown command / option -> 2; missing model -> 1 with a message naming it
"$STRATA" frobnicate >/dev/null 2>&1; check "unknown command" 2 $?
"$STRATA" generate --bogus >/dev/null 2>&1; check "unknown option" 2 $?
"$STRATA" generate --model /nonexistent/model --prompt hi >/dev/null 2>"${TMPDIR:-/tmp}/strata_cli_err.$$"; rc=$?
check "missing model rc" 1 $rc
check "missing model message" 1 "$(grep -c '/nonexistent/model' "${TMPDIR:-/tmp}/strata_cli_err.$$" | head -1 | sed 's/[2-9]/1/')"
rm -f "${TMPDIR:-/tmp}/strata_cli_err.$$"
"$STRATA" generate --model dummy:tiny --prompt hi --temperature -1 >/dev/null 2>&1; check "bad temperature" 2 $?
# generate on dummy:tiny with a seed is reproducible
a=$("$STRATA" generate --model dummy:tiny --prompt "hello" --max-tokens 20 --seed 7 --temperature 0.8)
b=$("$STRATA" generate --model dummy:tiny --prompt "hello" --max-tokens 20 --seed 7 --temperature 0.8)
check "seeded generate reproducible" "$a" "$b"
# a stop string cuts the output before it
out=$("$STRATA" generate --model "$MODELS/stories260K/stories260K.gguf" --prompt "" --max-tokens 200 --temperature 0 --stop "Lily")
check "stop string" "Once upon a time, there was a little girl named " "$out"
# the engine benchmark prints one JSON line
out=$("$B/bench/strata-bench" engine --model dummy:tiny --batch 2 --prompt-len 8 --gen-len 4 --threads 1)
check "bench engine json" 1 "$(echo "$out" | grep -c '^{"bench":"engine".*"decode_tok_s":')"
echo "$pass passed, $failed failed"
[ $failed -eq 0 ]
