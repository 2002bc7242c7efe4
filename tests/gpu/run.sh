#!/usr/bin/env bash
# run.sh: the one script to run on a GPU machine: builds strata with CUDA (no network stack), then
#   parity  - cuda_smoke, gpu_parity (every op vs the CPU backend, whole-model logits), sample_parity
#             (sampling on the GPU vs the host sampler), stories260K f32 on cuda against the published
#             golden text, hf_parity.py (transformers on random weights)
#   bench   - strata-bench engine on dummy:llama3-8b (decode at 512 context for several batch sizes,
#             2,048-token prefill; offline throughput of 1,024 x 128/128 requests; cold start) and cold
#             start on an 8B safetensors directory written once under /tmp (OFFLINE=0, COLD=0 skip those)
#   peers   - bench/peers/torch_peer.py (torch.compile static-cache decode, transformers generate)
#   knobs   - decode tokens/s under settings of the backend's switches (KNOBS, KNOB_BATCHES, REPEAT), A/B
#   gemv    - tests/gpu/gemv_bench (GEMV versions per decode shape, prefill GEMMs)
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
  # sampling on the GPU (temperature, top-k, top-p, min-p, Gumbel-max) against sampler_sample
  "$BUILD/tests/gpu/sample_parity" >"$OUT/sample_parity.log" 2>&1
  say "sample_parity: $(tail -1 "$OUT/sample_parity.log")"
  grep -E "FAIL|^time" "$OUT/sample_parity.log" | head -20 | tee -a "$SUMMARY"
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
  [ "${OFFLINE:-1}" = 1 ] && bench_offline
  [ "${COLD:-1}" = 1 ] && bench_cold
  # decode with every step run eagerly (CUDA graphs are the default), to see what the graphs give
  for b in ${GRAPHS_OFF_BATCHES:-1 32}; do
    STRATA_CUDA_GRAPHS=0 "$B" engine --device cuda --model dummy:llama3-8b --batch "$b" --prompt-len 512 \
      --gen-len 64 2>>"$OUT/bench.err" | tee -a "$OUT/bench_nographs.jsonl" |
      python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print('strata cuda:0 no graphs decode batch %4d: %10.1f tok/s' % (r['batch'], r['decode_tok_s']))" |
      tee -a "$SUMMARY"
  done
}

# summarize_case: one summary line of a strata-bench engine offline or cold-start JSON line (stdin).
summarize_case() {
  python3 -c '
import json, sys
for line in sys.stdin:
    if not line.startswith("{"): continue
    r = json.loads(line)
    if r.get("case") == "offline":
        print("strata %s offline %d x %d/%d (max %d seqs, T=%g): %.1f output tok/s, %.1f total tok/s, %.1f s, %d preemptions"
              % (r["device"], r["requests"], r["prompt_len"], r["gen_len"], r["max_num_seqs"], r["temperature"],
                 r["output_tok_s"], r["total_tok_s"], r["wall_s"], r["preemptions"]))
    elif r.get("case") == "cold-start":
        print("strata %s cold start %s%s: first token %.2f s after process start (%.2f after main): open %.2f, "
              "weights read %.2f (%.1f GB/s), engine (device, weights placed, KV) %.2f, first step %.3f"
              % (r["device"], r["model"], sys.argv[1], r["first_token_since_process_start_s"],
                 r["first_token_since_main_s"], r["model_open_s"], r["weights_read_s"], r["weights_read_gb_s"],
                 r["engine_create_s"], r["first_step_s"]))
' "${1:-}"
}

# bench_offline: 1,024 requests of 128 prompt + 128 output tokens queued at once (greedy, then sampled
# with T=0.8 top-p 0.95, which draws on the GPU), continuous batching at the engine's max-num-seqs.
bench_offline() {
  local B="$BUILD/bench/strata-bench" log=$OUT/bench_cases.jsonl
  timeout 400 "$B" engine --case offline --device cuda --model dummy:llama3-8b --requests 1024 --prompt-len 128 \
    --gen-len 128 --max-num-seqs "${MAX_NUM_SEQS:-256}" ${OFFLINE_ARGS:-} 2>>"$OUT/bench.err" | tee -a "$log" | summarize_case |
    tee -a "$SUMMARY"
  timeout 400 "$B" engine --case offline --device cuda --model dummy:llama3-8b --requests 1024 --prompt-len 128 \
    --gen-len 128 --max-num-seqs "${MAX_NUM_SEQS:-256}" ${OFFLINE_ARGS:-} --temperature 0.8 --top-p 0.95 2>>"$OUT/bench.err" |
    tee -a "$log" | summarize_case | tee -a "$SUMMARY"
}

# write_llama8b DIR: a Llama-3-8B-shaped Hugging Face directory with random bf16 weights (values drawn
# once into a 64 Mi-element pool and reused at shifting offsets: writing 16 GB stays disk-bound).
write_llama8b() {
  python3 - "$1" <<'PY'
import json, os, sys, torch
from safetensors.torch import save_file
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
C, F, L, V, H, KV, D = 4096, 14336, 32, 128256, 32, 8, 128
cfg = {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 128000,
       "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": C, "initializer_range": 0.02,
       "intermediate_size": F, "max_position_embeddings": 8192, "model_type": "llama",
       "num_attention_heads": H, "num_hidden_layers": L, "num_key_value_heads": KV, "rms_norm_eps": 1e-05,
       "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": V}
json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
json.dump({"bos_token_id": 128000, "eos_token_id": [128001, 128009]}, open(os.path.join(d, "generation_config.json"), "w"))
torch.manual_seed(0)
pool = (torch.randn(1 << 26) * 0.02).to(torch.bfloat16)
calls = [0]
def rnd(*shape):
    n = 1
    for x in shape: n *= x
    t = torch.empty(n, dtype=torch.bfloat16)
    off = 0
    while off < n:
        m = min(n - off, pool.numel())
        calls[0] += 1
        st = (calls[0] * 7919 * 4096) % (pool.numel() - m + 1)
        t[off:off + m].copy_(pool[st:st + m])
        off += m
    return t.view(*shape)
ones = lambda n: torch.ones(n, dtype=torch.bfloat16)
n_shards, weight_map, total = 4, {}, 0
for s in range(n_shards):
    ts = {}
    if s == 0: ts["model.embed_tokens.weight"] = rnd(V, C)
    for i in range(s * L // n_shards, (s + 1) * L // n_shards):
        p = "model.layers.%d." % i
        ts[p + "input_layernorm.weight"] = ones(C)
        ts[p + "self_attn.q_proj.weight"] = rnd(H * D, C)
        ts[p + "self_attn.k_proj.weight"] = rnd(KV * D, C)
        ts[p + "self_attn.v_proj.weight"] = rnd(KV * D, C)
        ts[p + "self_attn.o_proj.weight"] = rnd(C, H * D)
        ts[p + "post_attention_layernorm.weight"] = ones(C)
        ts[p + "mlp.gate_proj.weight"] = rnd(F, C)
        ts[p + "mlp.up_proj.weight"] = rnd(F, C)
        ts[p + "mlp.down_proj.weight"] = rnd(C, F)
    if s == n_shards - 1:
        ts["model.norm.weight"] = ones(C)
        ts["lm_head.weight"] = rnd(V, C)
    name = "model-%05d-of-%05d.safetensors" % (s + 1, n_shards)
    save_file(ts, os.path.join(d, name), metadata={"format": "pt"})
    for k, t in ts.items():
        weight_map[k] = name
        total += t.numel() * 2
    print("wrote", name, flush=True)
# the index last: its presence means the directory is complete
json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
          open(os.path.join(d, "model.safetensors.index.json"), "w"), indent=2)
PY
}

# bench_cold: process start to first token: dummy:llama3-8b (random weights made in memory), then an 8B
# safetensors directory (Llama-3-8B config, random bf16 weights, 4 shards, no tokenizer: the engine
# needs none) written once under /tmp and loaded twice; the second run (page cache warm) is the figure.
bench_cold() {
  local B="$BUILD/bench/strata-bench" log=$OUT/bench_cases.jsonl dir=${COLD_DIR:-/tmp/strata-llama3-8b-random}
  timeout 300 "$B" engine --case cold-start --device cuda --model dummy:llama3-8b 2>>"$OUT/bench.err" |
    tee -a "$log" | summarize_case | tee -a "$SUMMARY"
  if [ ! -f "$dir/model.safetensors.index.json" ]; then
    local t=$(date +%s)
    if ! write_llama8b "$dir" >"$OUT/write_llama8b.log" 2>&1; then
      say "cold start safetensors: could not write $dir ($(tail -1 "$OUT/write_llama8b.log"))"
      return
    fi
    say "wrote $dir ($(du -sh "$dir" | cut -f1)) in $(($(date +%s) - t)) s"
  fi
  timeout 300 "$B" engine --case cold-start --device cuda --model "$dir" 2>>"$OUT/bench.err" >>"$OUT/cold_first.jsonl"
  timeout 300 "$B" engine --case cold-start --device cuda --model "$dir" 2>>"$OUT/bench.err" | tee -a "$log" |
    summarize_case " (safetensors, second run)" | tee -a "$SUMMARY"
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

# knobs: decode tokens/s at batches $KNOB_BATCHES (default 1) with each setting of $KNOBS (a list of
# VAR=VALUE[,VAR=VALUE...]; "-" is the defaults), REPEAT times each, interleaved, so that settings meet the
# same card state; for A/B checks of the backend's switches.
stage_knobs() {
  local B="$BUILD/bench/strata-bench" log=$OUT/knobs.jsonl
  for r in $(seq "${REPEAT:-2}"); do
    for k in ${KNOBS:-- STRATA_CUDA_CARVEOUT=-1 STRATA_CUDA_PDL=0}; do
      for b in ${KNOB_BATCHES:-1}; do
        local envs=()
        [ "$k" != - ] && IFS=, read -ra envs <<<"$k"
        env "${envs[@]}" "$B" engine --device cuda --model dummy:llama3-8b --batch "$b" --prompt-len 512 --gen-len 64 \
          2>>"$OUT/bench.err" | tee -a "$log" |
          python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print('knobs %-40s batch %4d: %9.1f tok/s, step p50 %.3f ms' % (sys.argv[1], r['batch'], r['decode_tok_s'], r.get('step_ms_p50', 0)))" "$k" |
          tee -a "$SUMMARY"
      done
    done
  done
}

# gemv: tests/gpu/gemv_bench (each GEMV version per decode shape, prefill GEMMs)
stage_gemv() {
  "$BUILD/tests/gpu/gemv_bench" >"$OUT/gemv_bench.log" 2>&1
  grep -E "^[0-9]+ x [0-9]+ +[12] |gemv_bench:" "$OUT/gemv_bench.log" | tee -a "$SUMMARY"
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
