#!/usr/bin/env bash
# run.sh: the one script to run on a GPU machine: builds strata with CUDA (no network stack), then
#   parity  - cuda_smoke, gpu_parity (every op vs the CPU backend, whole-model logits), stories260K f32 on
#             cuda against the published golden text, hf_parity.py (transformers on random weights)
#   bench   - strata-bench engine on dummy:llama3-8b (decode at 512 context for several batch sizes,
#             2,048-token prefill) and the device copy bandwidth
#   peers   - bench/peers/torch_peer.py (torch.compile static-cache decode, transformers generate)
# usage: tests/gpu/run.sh [STAGE...]   (default: parity bench peers). Needs .deps from scripts/gpu_deps.sh.
# Logs go to $OUT (default ./build-gpu-out); a short table is printed last.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/build-gpu-out}
mkdir -p "$OUT"
STAGES=${*:-parity bench peers}
BUILD=${BUILD:-$ROOT/build-gpu}
ARCHS=${CUDA_ARCHS:-90a}
BATCHES=${BATCHES:-1 8 32 128}
export PKG_CONFIG_PATH=$ROOT/.deps/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export LD_LIBRARY_PATH=$ROOT/.deps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
command -v pkg-config >/dev/null || export PATH=$ROOT/.deps/bin:$PATH
export STRATA_MODELS_DIR=${STRATA_MODELS_DIR:-$ROOT/.deps/models}
export PYTHONUNBUFFERED=1
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"
say "gpu: $(head -1 "$OUT/gpu.txt")"

t0=$(date +%s)
if ! { cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSTRATA_NET=OFF -DSTRATA_TESTS=OFF -DSTRATA_CUDA=ON \
         -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" &&
       cmake --build "$BUILD" -j"$(nproc)"; } \
     >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  say "build: FAILED (see build.log)"
  cat "$SUMMARY"
  exit 1
fi
say "build: ok in $(($(date +%s) - t0)) s (CUDA archs $ARCHS)"

stage_parity() {
  "$BUILD/tests/gpu/cuda_smoke" >"$OUT/smoke.log" 2>&1 && say "cuda_smoke: $(tail -1 "$OUT/smoke.log")" ||
    say "cuda_smoke: FAILED $(tail -2 "$OUT/smoke.log")"
  "$BUILD/tests/gpu/gpu_parity" >"$OUT/parity.log" 2>&1
  say "gpu_parity: $(tail -1 "$OUT/parity.log")"
  grep FAIL "$OUT/parity.log" | head -20 | tee -a "$SUMMARY"
  # again with our GEMV for every T <= 8 (by default it serves T <= 2 only) and every step run eagerly
  STRATA_CUDA_GEMV_MAX_T=8 STRATA_CUDA_GRAPHS=0 "$BUILD/tests/gpu/gpu_parity" >"$OUT/parity_gemv8.log" 2>&1
  say "gpu_parity (GEMV up to T=8, no CUDA graphs): $(tail -1 "$OUT/parity_gemv8.log")"
  grep FAIL "$OUT/parity_gemv8.log" | head -10 | tee -a "$SUMMARY"
  # and with the split-KV kernel for prefill too (no tensor-core attention)
  STRATA_CUDA_ATTENTION=notc "$BUILD/tests/gpu/gpu_parity" >"$OUT/parity_notc.log" 2>&1
  say "gpu_parity (attention without tensor cores): $(tail -1 "$OUT/parity_notc.log")"
  grep FAIL "$OUT/parity_notc.log" | head -10 | tee -a "$SUMMARY"
  # stories260K: f32 on cuda must print the published golden text (the CPU's); bf16 is reported
  local ref=$STRATA_MODELS_DIR/stories260K/REFERENCE.md
  awk '/^```text$/{on=1; next} /^```$/{on=0} on' "$ref" >"$OUT/stories_ref.txt"
  truncate -s -1 "$OUT/stories_ref.txt"
  for m in stories260K/stories260K.gguf stories260K-hf; do
    for dt in f32 bf16; do
      local o=$OUT/stories_$([ "$m" = stories260K-hf ] && echo hf || echo gguf)_$dt.txt
      "$BUILD/cli/strata" generate --model "$STRATA_MODELS_DIR/$m" --prompt "" --temperature 0 --max-tokens 200 \
        --num-kv-blocks 64 --device cuda --dtype $dt >"$o" 2>"$o.err"
      if cmp -s "$o" "$OUT/stories_ref.txt"; then say "stories260K $m cuda $dt: golden text identical"
      else say "stories260K $m cuda $dt: DIFFERS from the golden text ($(wc -c <"$o") bytes; $(tail -1 "$o.err"))"; fi
    done
  done
  [ "${SKIP_HF:-0}" = 1 ] && return
  python3 tests/gpu/hf_parity.py "$BUILD/tests/gpu/greedy_ids" "$(mktemp -d)" \
    >"$OUT/hf_parity.log" 2>&1
  grep -E "^  |hf_parity|Error|error" "$OUT/hf_parity.log" | tail -14 | tee -a "$SUMMARY"
}

stage_bench() {
  local B="$BUILD/bench/strata-bench" log=$OUT/bench.jsonl
  # the engine sizes the KV cache before the weights reach the GPU: keep room for 16 GB of weights
  export STRATA_CUDA_RESERVE_MIB=${STRATA_CUDA_RESERVE_MIB:-22000}
  : >"$log"
  for b in $BATCHES; do
    "$B" engine --device cuda --model dummy:llama3-8b --batch "$b" --prompt-len 512 --gen-len 64 2>>"$OUT/bench.err" |
      tee -a "$log"
  done
  "$B" engine --device cuda --model dummy:llama3-8b --batch 1 --prompt-len 2048 --gen-len 2 2>>"$OUT/bench.err" |
    tee -a "$log"
  python3 tests/gpu/bench_table.py "$log" | tee -a "$SUMMARY"
  # decode with every step run eagerly (CUDA graphs are the default), to see what the graphs give
  for b in ${GRAPHS_OFF_BATCHES:-1 32}; do
    STRATA_CUDA_GRAPHS=0 "$B" engine --device cuda --model dummy:llama3-8b --batch "$b" --prompt-len 512 \
      --gen-len 64 2>>"$OUT/bench.err" | tee -a "$OUT/bench_nographs.jsonl" |
      python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print('strata cuda:0 no graphs decode batch %4d: %10.1f tok/s' % (r['batch'], r['decode_tok_s']))" |
      tee -a "$SUMMARY"
  done
}

stage_ops() {
  "$BUILD/tests/gpu/op_bench" >"$OUT/op_bench.log" 2>&1
  echo "-- matmul through cuBLASLt only (STRATA_CUDA_GEMV_MAX_T=0):" >>"$OUT/op_bench.log"
  STRATA_CUDA_GEMV_MAX_T=0 "$BUILD/tests/gpu/op_bench" 2>&1 | grep -E "^ *[0-9]+ x [0-9]+ +[1-8] " >>"$OUT/op_bench.log"
  # where a decode step goes: kernel time summary of one batch-32 run (when Nsight Systems is there)
  echo "-- attention of the first version (STRATA_CUDA_ATTENTION=v1):" >>"$OUT/op_bench.log"
  STRATA_CUDA_ATTENTION=v1 "$BUILD/tests/gpu/op_bench" 2>&1 | grep "^attention" >>"$OUT/op_bench.log"
  echo "-- split-KV attention for prefill too (STRATA_CUDA_ATTENTION=notc):" >>"$OUT/op_bench.log"
  STRATA_CUDA_ATTENTION=notc "$BUILD/tests/gpu/op_bench" 2>&1 | grep "^attention prefill" >>"$OUT/op_bench.log"
  grep -E "^attention|^--|^T " "$OUT/op_bench.log" | tee -a "$SUMMARY"
  if [ "${NSYS:-1}" = 1 ] && command -v nsys >/dev/null; then
    STRATA_CUDA_RESERVE_MIB=22000 nsys profile -o "$OUT/prof" --force-overwrite true \
      "$BUILD/bench/strata-bench" engine --device cuda --model dummy:llama3-8b --batch 32 --prompt-len 512 \
      --gen-len 32 >"$OUT/nsys.log" 2>&1
    nsys stats --report cuda_gpu_kern_sum,cuda_api_sum --format csv "$OUT/prof.nsys-rep" >"$OUT/nsys_stats.csv" 2>&1
    python3 - "$OUT/nsys_stats.csv" <<'PY' | tee -a "$SUMMARY"
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 8]
for r in rows[:14]: print(" | ".join([r[0], r[1], r[2], r[-1][:70]]))
PY
    rm -f "$OUT/prof.nsys-rep" "$OUT"/prof.sqlite
  else
    say "nsys: not on this machine"
  fi
}

stage_peers() {
  python3 bench/peers/torch_peer.py --batches ${PEER_BATCHES:-1 32} >"$OUT/peers.log" 2>&1
  grep '^{' "$OUT/peers.log" >"$OUT/peers.jsonl"
  tail -3 "$OUT/peers.log" | grep -v '^{'
  python3 tests/gpu/bench_table.py "$OUT/peers.jsonl" | tee -a "$SUMMARY"
}

for s in $STAGES; do
  t=$(date +%s)
  "stage_$s"
  say "[$s took $(($(date +%s) - t)) s]"
done
# at most 8 files come back from the device machine: keep the summary, pack the rest
(cd "$OUT" && tar czf /tmp/strata-gpu-logs.tgz --exclude summary.txt . && mv /tmp/strata-gpu-logs.tgz logs.tgz &&
  find . -maxdepth 1 -type f ! -name logs.tgz ! -name summary.txt -delete)
echo "======== summary ========"
cat "$SUMMARY"
