/* op_bench.c: times each op of the CUDA backend (bf16) at Llama-3-8B shapes, to see where a step goes.
 * Each case runs 3 times untimed, then R times between two syncs (host clock); prints microseconds per
 * call and the achieved GB/s (weights, or KV for attention) or TFLOP/s. Inputs are random, never zeros. Decode
 * attention is also timed kernel by kernel through cuda_attention (bench_kernels), with the relative difference
 * of each kernel's output from the first version's. OP_BENCH_ATTENTION_ONLY=1 runs the attention cases alone. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dtype.h"
#include "kernels/kernels_cuda.h"
#include "worker/backend/backend.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *rnd_dev(backend_t *be, size_t n) {
  uint16_t *h = malloc(n * 2);
  uint64_t s = 0x12345678u + n;
  for (size_t i = 0; i < n; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    h[i] = f32_to_bf16(((float)(s >> 40) / (float)(1 << 24) - 0.5f) * 0.1f);
  }
  void *d = be->ops->alloc(be, n * 2);
  be->ops->upload(be, d, h, n * 2);
  free(h);
  return d;
}

#define TIME(R, stmt)                        \
  ({                                         \
    for (int i_ = 0; i_ < 3; i_++) stmt;     \
    be->ops->sync(be);                       \
    double t0_ = now();                      \
    for (int i_ = 0; i_ < (R); i_++) stmt;   \
    be->ops->sync(be);                       \
    (now() - t0_) / (R) * 1e6;               \
  })

/* bench_kernels: one decode case through cuda_attention with each kernel choice (the first version's kernel,
 * the split-KV kernel, the default, and the default with its KV split sized as if the GPU had N SMs: N 1 never
 * splits, a smaller N splits less, a larger one more):
 * microseconds per call, GB/s of KV, and the relative L2 difference of each output from the first
 * version's (an independent kernel). */
static void bench_kernels(backend_t *be, void *out, const void *q, const be_kv_t *kv, const be_batch_t *b, int H,
                          int S, int ctx, double kvb) {
  static float *part;
  static cudaStream_t st;
  enum { PART = 16 << 20 };
  if (!part && (cudaMalloc((void **)&part, PART) != cudaSuccess || cudaStreamCreate(&st) != cudaSuccess)) return;
  be->ops->sync(be); /* the batch arrays are on the device */
  const cuda_kv_t ck = {.data = kv->data, .dtype = kv->dtype, .n_blocks = kv->n_blocks, .n_layers = kv->n_layers,
                        .n_kv_heads = kv->n_kv_heads, .block_size = kv->block_size, .head_dim = kv->head_dim};
  const struct {
    const char *name;
    cuda_att_impl_t impl;
    int n_sms;
  } ks[] = {{"v1", CUDA_ATT_V1, 132},  {"split", CUDA_ATT_NO_TC, 132}, {"auto", CUDA_ATT_AUTO, 132},
            {"N1", CUDA_ATT_AUTO, 1},     {"N8", CUDA_ATT_AUTO, 8},         {"N16", CUDA_ATT_AUTO, 16},
            {"N33", CUDA_ATT_AUTO, 33},   {"N66", CUDA_ATT_AUTO, 66},       {"N264", CUDA_ATT_AUTO, 264}};
  const size_t n = (size_t)b->n_tokens * H * kv->head_dim;
  uint16_t *ref = malloc(n * 2), *got = malloc(n * 2);
  printf("  kernels batch %3d ctx %5d:", S, ctx);
  for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
    cuda_att_work_t w = {.part = part, .part_bytes = PART, .n_sms = ks[i].n_sms, .impl = ks[i].impl};
#define ATT_CALL                                                                                               \
  cuda_attention(out, q, &ck, 0, b->positions, b->seq_of, b->block_table, b->max_blocks, b->n_tokens, S, H, \
                 0.088f, &w, st)
    for (int r = 0; r < 3; r++) ATT_CALL;
    cudaStreamSynchronize(st);
    double t0 = now();
    for (int r = 0; r < 10; r++) ATT_CALL;
    cudaStreamSynchronize(st);
    double us = (now() - t0) / 10 * 1e6;
    cudaMemsetAsync(out, 0xff, n * 2, st); /* NaN: a row the kernel does not write shows in the difference */
    int rc = ATT_CALL;
#undef ATT_CALL
    if (rc || cudaStreamSynchronize(st) != cudaSuccess) printf(" %s FAILED", ks[i].name);
    cudaMemcpy(i ? got : ref, out, n * 2, cudaMemcpyDeviceToHost);
    double d2 = 0, r2 = 0;
    for (size_t j = 0; i && j < n; j++) {
      double x = bf16_to_f32(got[j]), y = bf16_to_f32(ref[j]);
      d2 += (x - y) * (x - y), r2 += y * y;
    }
    printf(" %s %.1f us (%.0f GB/s)", ks[i].name, us, kvb / us / 1e3);
    if (i) printf(" d %.1e", r2 > 0 ? sqrt(d2 / r2) : sqrt(d2));
  }
  printf("\n");
  free(ref), free(got);
}

int main(void) {
  backend_t *be = NULL;
  setenv("STRATA_CUDA_GRAPHS", "0", 1); /* ops one by one, not as a captured step */
  const int att_only = getenv("OP_BENCH_ATTENTION_ONLY") != NULL; /* skip the matmuls and the small ops */
  if (backend_create(&be, "cuda", 0, DTYPE_BF16) != 0) return 1;
  const int shapes[][2] = {{4096, 4096}, {1024, 4096}, {14336, 4096}, {4096, 14336}, {128256, 4096}};
  const int Ts[] = {1, 2, 4, 8, 32, 128, 2048};
  void *x = rnd_dev(be, att_only ? 1 : (size_t)2048 * 14336);
  void *out = rnd_dev(be, att_only ? (size_t)2048 * 32 * 128 : (size_t)2048 * 128256);
  printf("%-22s %6s %10s %10s\n", "matmul N x K", "T", "us", "GB/s|TF/s");
  for (size_t s = 0; s < (att_only ? 0 : sizeof shapes / sizeof shapes[0]); s++) {
    int N = shapes[s][0], K = shapes[s][1];
    weight_t w = {.data = rnd_dev(be, (size_t)N * K), .dtype = DTYPE_BF16, .rows = N, .cols = K};
    for (size_t t = 0; t < sizeof Ts / sizeof Ts[0]; t++) {
      int T = Ts[t];
      if (N == 128256 && T > 128) continue;
      double us = TIME(20, be->ops->matmul(be, out, x, &w, NULL, T));
      double gbs = (double)N * K * 2 / us / 1e3, tf = 2.0 * N * K * T / us / 1e6;
      printf("%6d x %-13d %6d %10.1f %6.0f GB/s %6.1f TF/s\n", N, K, T, us, gbs, tf);
    }
    be->ops->free(be, (void *)w.data);
  }
  /* attention: decode at 512 context (batch 1 to 256) and 4,096 (batch 1), and one 2,048-token prefill; then
   * each decode case again through cuda_attention directly, to set the kernels side by side in one run */
  enum { H = 32, HKV = 8, D = 128, B = 16 };
  const int cases[][2] = {{1, 512}, {1, 4096}, {8, 512}, {32, 512}, {64, 512}, {128, 512}, {256, 512}, {1, -2048}};
  int nb_total = 256 * ((512 + B) / B + 1) + 2;
  be_kv_t kv = {.dtype = DTYPE_BF16, .n_blocks = nb_total, .n_layers = 1, .n_kv_heads = HKV, .block_size = B,
                .head_dim = D, .block_bytes = (size_t)2 * HKV * B * D * 2};
  kv.data = rnd_dev(be, kv.block_bytes / 2 * nb_total);
  void *q = rnd_dev(be, (size_t)2048 * H * D), *k = rnd_dev(be, (size_t)2048 * HKV * D);
  float inv[D / 2];
  for (int i = 0; i < D / 2; i++) inv[i] = 1.0f / (1.0f + i);
  float *dinv = be->ops->alloc(be, sizeof inv);
  be->ops->upload(be, dinv, inv, sizeof inv);
  be_rope_t rope = {.style = 1, .head_dim = D, .inv_freq = dinv};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    int S = cases[c][0], prefill = cases[c][1] < 0, ctx = prefill ? -cases[c][1] : cases[c][1];
    int T = prefill ? ctx : S, maxb = (ctx + B) / B + 1;
    int32_t *pos = malloc(sizeof(int32_t) * T), *slot = malloc(sizeof(int32_t) * T), *seq = malloc(sizeof(int32_t) * T);
    int32_t *tbl = malloc(sizeof(int32_t) * S * maxb), qs[257], kvl[256], lr[256];
    for (int i = 0; i < S * maxb; i++) tbl[i] = 1 + i % (nb_total - 1);
    for (int t = 0; t < T; t++) {
      int s = prefill ? 0 : t, p = prefill ? t : ctx;
      pos[t] = p, seq[t] = s, slot[t] = tbl[s * maxb + p / B] * B + p % B;
    }
    for (int s = 0; s <= S; s++) qs[s] = prefill ? (s ? T : 0) : s;
    for (int s = 0; s < S; s++) kvl[s] = ctx + (prefill ? 0 : 1), lr[s] = qs[s + 1] - 1;
    be_batch_t hb = {.n_tokens = T, .n_seqs = S, .tokens = pos, .positions = pos, .slots = slot, .seq_of = seq,
                     .q_start = qs, .kv_len = kvl, .block_table = tbl, .max_blocks = maxb, .max_kv_len = ctx + 1,
                     .logit_rows = lr, .n_logits = S},
               b;
    be->ops->batch_upload(be, &b, &hb);
    double us = TIME(10, be->ops->attention(be, out, q, &kv, 0, &b, H, HKV, 0.088f));
    double ur = TIME(10, be->ops->rope_kv_write(be, q, k, k, &kv, 0, &b, &rope, H, HKV));
    /* K and V bytes the queries read: (ctx + 1) positions of each sequence, prefill causal */
    double kvb = (prefill ? (double)ctx * (ctx + 1) / 2 : (double)S * (ctx + 1)) * HKV * D * 2 * 2;
    printf("attention %s T %5d ctx %5d: %9.1f us %7.0f GB/s KV   rope_kv_write %8.1f us\n",
           prefill ? "prefill" : "decode ", T, ctx, us, kvb / us / 1e3, ur);
    if (!prefill) bench_kernels(be, out, q, &kv, &b, H, S, ctx, kvb);
    free(pos), free(slot), free(seq), free(tbl);
  }
  float *nw = be->ops->alloc(be, 4096 * 4);
  for (int T = 1; T <= (att_only ? 0 : 2048); T *= 32) {
    double ua = TIME(20, be->ops->add_rmsnorm(be, out, x, q, nw, T, 4096, 1e-5f));
    double us = TIME(20, be->ops->silu_mul(be, out, x, x, T, 14336));
    printf("T %4d: add_rmsnorm %7.1f us  silu_mul(F 14336) %7.1f us\n", T, ua, us);
  }
  backend_destroy(be);
  return 0;
}
