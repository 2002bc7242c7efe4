/* op_bench.c: times each op of the CUDA backend (bf16) at Llama-3-8B shapes, to see where a step goes.
 * Each case runs 3 times untimed, then R times between two syncs (host clock); prints microseconds per
 * call and the achieved GB/s (weights) or TFLOP/s. Inputs are random, never zeros. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dtype.h"
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

int main(void) {
  backend_t *be = NULL;
  setenv("STRATA_CUDA_GRAPHS", "0", 1); /* ops one by one, not as a captured step */
  if (backend_create(&be, "cuda", 0, DTYPE_BF16) != 0) return 1;
  const int shapes[][2] = {{4096, 4096}, {1024, 4096}, {14336, 4096}, {4096, 14336}, {128256, 4096}};
  const int Ts[] = {1, 2, 4, 8, 32, 128, 2048};
  void *x = rnd_dev(be, (size_t)2048 * 14336), *out = rnd_dev(be, (size_t)2048 * 128256);
  printf("%-22s %6s %10s %10s\n", "matmul N x K", "T", "us", "GB/s|TF/s");
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
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
  /* attention: decode at 512 context (batch 1, 32, 128) and 4,096 (batch 1), and one 2,048-token prefill */
  enum { H = 32, HKV = 8, D = 128, B = 16 };
  const int cases[][2] = {{1, 512}, {32, 512}, {128, 512}, {1, 4096}, {1, -2048}};
  int nb_total = 128 * (576 / B) + 2;
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
    int32_t *tbl = malloc(sizeof(int32_t) * S * maxb), qs[129], kvl[128], lr[128];
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
    printf("attention %s T %5d ctx %5d: %9.1f us   rope_kv_write %8.1f us\n", prefill ? "prefill" : "decode ", T, ctx,
           us, ur);
    free(pos), free(slot), free(seq), free(tbl);
  }
  float *nw = be->ops->alloc(be, 4096 * 4);
  for (int T = 1; T <= 2048; T *= 32) {
    double ua = TIME(20, be->ops->add_rmsnorm(be, out, x, q, nw, T, 4096, 1e-5f));
    double us = TIME(20, be->ops->silu_mul(be, out, x, x, T, 14336));
    printf("T %4d: add_rmsnorm %7.1f us  silu_mul(F 14336) %7.1f us\n", T, ua, us);
  }
  backend_destroy(be);
  return 0;
}
