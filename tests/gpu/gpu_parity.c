/* gpu_parity.c: every op of the CUDA backend against the CPU backend (the reference) on the same random
 * inputs, in f32 and bf16 (the fused-projection ops too: weight_prepare_cat + matmul, silu_mul_cat,
 * rope_qkv_write on strided rows), then whole-model logits of dummy:tiny, plain and with Qwen2 biases and
 * Qwen3 q/k norms added (the GPU runs fused q|k|v and gate|up projections, the CPU separate ones). Prints one
 * line per check with the
 * relative error ||gpu - cpu|| / ||cpu|| and its tolerance; exits 1 if any check fails.
 * Tolerances: f32 activations 1e-5 (ops) / 1e-4 (whole model); bf16 2e-2 (ops) / 5e-2 (whole model),
 * since every bf16 output carries a rounding of 2^-9 relative. Inputs are rounded to the tested dtype
 * before the CPU sees them, so both sides compute on the same values. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "worker/backend/backend.h"
#include "worker/model/forward.h"
#include "worker/model/model.h"

static int n_fail, n_pass;
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(void) { /* uniform in [-1, 1) */
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static float round_to(dtype_t t, float v) {
  return t == DTYPE_BF16 ? bf16_to_f32(f32_to_bf16(v)) : t == DTYPE_F16 ? f16_to_f32(f32_to_f16(v)) : v;
}

static float *rnd_vec(size_t n, float scale, dtype_t t) {
  float *v = malloc(n * sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = round_to(t, frand() * scale);
  return v;
}

static void check(const char *what, dtype_t t, const float *got, const float *ref, size_t n, double tol) {
  double num = 0, den = 0;
  int nan = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(got[i])) nan = 1;
    num += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
    den += (double)ref[i] * ref[i];
  }
  double rel = den > 0 ? sqrt(num / den) : sqrt(num);
  int ok = !nan && rel <= tol;
  printf("%-4s %-34s %-5s rel err %.2e (tol %.0e)\n", ok ? "ok" : "FAIL", what, dtype_name(t), rel, tol);
  ok ? n_pass++ : n_fail++;
}

/* The device side of one test: host f32 <-> backend buffers in the act dtype. */
static void *dev_put(backend_t *be, const float *h, size_t n) {
  size_t es = dtype_act_bytes(be->act_dtype);
  void *d = be->ops->alloc(be, n * es);
  if (be->act_dtype == DTYPE_F32) {
    be->ops->upload(be, d, h, n * 4);
    return d;
  }
  uint16_t *tmp = malloc(n * 2);
  for (size_t i = 0; i < n; i++) tmp[i] = be->act_dtype == DTYPE_BF16 ? f32_to_bf16(h[i]) : f32_to_f16(h[i]);
  be->ops->upload(be, d, tmp, n * 2);
  free(tmp);
  return d;
}

static float *dev_get(backend_t *be, const void *d, size_t n) {
  float *h = malloc(n * sizeof *h);
  if (be->ops->to_host_f32(be, h, d, (int64_t)n) != 0) {
    printf("FAIL to_host_f32 returned an error\n");
    n_fail++;
  }
  return h;
}

static void *dev_i32(backend_t *be, const int32_t *h, size_t n) {
  void *d = be->ops->alloc(be, n * 4);
  be->ops->upload(be, d, h, n * 4);
  return d;
}

/* C 1000: the vector kernel (16-byte chunks in registers); 999: the loop */
static void test_norms(backend_t *cpu, backend_t *gpu, dtype_t t, int C) {
  const int rows = 7;
  float *x = rnd_vec((size_t)rows * C, 2.0f, t), *r = rnd_vec((size_t)rows * C, 2.0f, t), *w = rnd_vec(C, 1.0f, DTYPE_F32);
  float *out = malloc(sizeof(float) * rows * C), *r2 = malloc(sizeof(float) * rows * C);
  void *dx = dev_put(gpu, x, (size_t)rows * C), *dr = dev_put(gpu, r, (size_t)rows * C), *dout = dev_put(gpu, x, (size_t)rows * C);
  float *dw = gpu->ops->alloc(gpu, C * 4);
  gpu->ops->upload(gpu, dw, w, C * 4);
  cpu->ops->rmsnorm(cpu, out, x, w, rows, C, 1e-5f);
  gpu->ops->rmsnorm(gpu, dout, dx, dw, rows, C, 1e-5f);
  float *g = dev_get(gpu, dout, (size_t)rows * C);
  char what[64];
  snprintf(what, sizeof what, "rmsnorm (7 x %d)", C);
  check(what, t, g, out, (size_t)rows * C, t == DTYPE_F32 ? 1e-5 : 2e-2);
  free(g);
  memcpy(r2, r, sizeof(float) * rows * C);
  cpu->ops->add_rmsnorm(cpu, out, r2, x, w, rows, C, 1e-5f);
  gpu->ops->add_rmsnorm(gpu, dout, dr, dx, dw, rows, C, 1e-5f);
  g = dev_get(gpu, dout, (size_t)rows * C);
  check("add_rmsnorm out", t, g, out, (size_t)rows * C, t == DTYPE_F32 ? 1e-5 : 2e-2);
  free(g);
  g = dev_get(gpu, dr, (size_t)rows * C);
  check("add_rmsnorm residual", t, g, r2, (size_t)rows * C, t == DTYPE_F32 ? 1e-6 : 1e-2);
  free(g);
  /* silu_mul and gather_rows on the same buffers */
  cpu->ops->silu_mul(cpu, out, x, r2, rows, C); /* dr now holds the residual sum, as r2 does */
  gpu->ops->silu_mul(gpu, dout, dx, dr, rows, C);
  g = dev_get(gpu, dout, (size_t)rows * C);
  check("silu_mul (7 x 1000)", t, g, out, (size_t)rows * C, t == DTYPE_F32 ? 1e-6 : 1e-2);
  free(g);
  int32_t rws[3] = {5, 0, 5};
  void *drows = dev_i32(gpu, rws, 3);
  cpu->ops->gather_rows(cpu, out, x, rws, 3, C);
  gpu->ops->gather_rows(gpu, dout, dx, drows, 3, C);
  g = dev_get(gpu, dout, (size_t)3 * C);
  check("gather_rows", t, g, out, (size_t)3 * C, 0);
  free(g);
  void *bufs[] = {dx, dr, dout, dw, drows};
  for (int i = 0; i < 5; i++) gpu->ops->free(gpu, bufs[i]);
  free(x), free(r), free(w), free(out), free(r2);
}

/* matmul through weight_prepare from host weights in WT (f32 or bf16), T covering the GEMV and cuBLASLt
 * paths, with and without bias; embed from the same matrix. */
static void test_matmul(backend_t *cpu, backend_t *gpu, dtype_t t, dtype_t wt, int N, int K) {
  float *wf = rnd_vec((size_t)N * K, 0.1f, t);
  void *wh = wf;
  uint16_t *wb = NULL;
  if (wt == DTYPE_BF16) {
    wb = malloc((size_t)N * K * 2);
    for (size_t i = 0; i < (size_t)N * K; i++) wb[i] = f32_to_bf16(wf[i]), wf[i] = bf16_to_f32(wb[i]);
    wh = wb;
  }
  weight_t hw = {.data = wh, .dtype = wt, .rows = N, .cols = K}, cw, gw;
  float *bias = rnd_vec(N, 1.0f, DTYPE_F32);
  float *db = gpu->ops->alloc(gpu, (size_t)N * 4);
  gpu->ops->upload(gpu, db, bias, (size_t)N * 4);
  cpu->ops->weight_prepare(cpu, &cw, &hw);
  if (gpu->ops->weight_prepare(gpu, &gw, &hw) != 0) {
    printf("FAIL weight_prepare\n");
    n_fail++;
    return;
  }
  const int Ts[] = {1, 3, 8, 9, 77};
  for (size_t i = 0; i < sizeof Ts / sizeof Ts[0]; i++) {
    int T = Ts[i];
    float *x = rnd_vec((size_t)T * K, 1.0f, t), *out = malloc(sizeof(float) * T * N);
    void *dx = dev_put(gpu, x, (size_t)T * K), *dout = gpu->ops->alloc(gpu, (size_t)T * N * 4);
    for (int withb = 0; withb < 2; withb++) {
      cpu->ops->matmul(cpu, out, x, &cw, withb ? bias : NULL, T);
      gpu->ops->matmul(gpu, dout, dx, &gw, withb ? db : NULL, T);
      float *g = dev_get(gpu, dout, (size_t)T * N);
      char what[64];
      snprintf(what, sizeof what, "matmul %s T%d N%d K%d%s", dtype_name(wt), T, N, K, withb ? " +bias" : "");
      check(what, t, g, out, (size_t)T * N, t == DTYPE_F32 ? 1e-5 : 2e-2);
      free(g);
    }
    gpu->ops->free(gpu, dx);
    gpu->ops->free(gpu, dout);
    free(x), free(out);
  }
  int32_t ids[4] = {3, 0, N - 1, 3};
  void *dids = dev_i32(gpu, ids, 4), *dout = gpu->ops->alloc(gpu, (size_t)4 * K * 4);
  float *out = malloc(sizeof(float) * 4 * K);
  cpu->ops->embed(cpu, out, &cw, ids, 4);
  gpu->ops->embed(gpu, dout, &gw, dids, 4);
  float *g = dev_get(gpu, dout, (size_t)4 * K);
  check("embed", t, g, out, (size_t)4 * K, t == DTYPE_F32 ? 0 : 1e-2);
  free(g), free(out);
  gpu->ops->free(gpu, dids);
  gpu->ops->free(gpu, dout);
  gpu->ops->free(gpu, db);
  gpu->ops->weight_release(gpu, &gw);
  free(wf), free(wb), free(bias);
}

/* Fused projections: weight_prepare_cat of three matrices (from WT) and their biases, one matmul against the
 * CPU's three; silu_mul_cat of a (T, 2F) row; rope_qkv_write of strided q|k|v rows (with and without the
 * Qwen3 head norms, a token whose slot is outside the cache) against the CPU's op. */
static void test_fused(backend_t *cpu, backend_t *gpu, dtype_t t, dtype_t wt, int K) {
  enum { NP = 3 };
  const int rows[NP] = {96, 32, 40};
  weight_t hw[NP], hb[NP], cw[NP], gw, gb;
  float *wf[NP], *bf[NP];
  uint16_t *wb[NP];
  int N = 0;
  for (int i = 0; i < NP; i++) {
    wf[i] = rnd_vec((size_t)rows[i] * K, 0.1f, t);
    wb[i] = malloc((size_t)rows[i] * K * 2);
    for (size_t j = 0; j < (size_t)rows[i] * K; j++) wb[i][j] = f32_to_bf16(wf[i][j]), wf[i][j] = bf16_to_f32(wb[i][j]);
    bf[i] = rnd_vec((size_t)rows[i], 1.0f, DTYPE_F32);
    hw[i] = (weight_t){.data = wt == DTYPE_BF16 ? (void *)wb[i] : (void *)wf[i], .dtype = wt, .rows = rows[i], .cols = K};
    hb[i] = (weight_t){.data = bf[i], .dtype = DTYPE_F32, .rows = 1, .cols = rows[i]};
    cpu->ops->weight_prepare(cpu, &cw[i], &hw[i]);
    N += rows[i];
  }
  const weight_t *ws[NP] = {&hw[0], &hw[1], &hw[2]}, *bs[NP] = {&hb[0], &hb[1], &hb[2]};
  if (!gpu->ops->weight_prepare_cat || gpu->ops->weight_prepare_cat(gpu, &gw, ws, NP) != 0 ||
      gpu->ops->weight_prepare_cat(gpu, &gb, bs, NP) != 0 || gw.rows != N || gw.cols != K || gb.rows != 1 ||
      gb.cols != N) {
    printf("FAIL weight_prepare_cat\n");
    n_fail++;
    return;
  }
  const int Ts[] = {1, 2, 9};
  for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
    int T = Ts[ti];
    float *x = rnd_vec((size_t)T * K, 1.0f, t), *ref = malloc(sizeof(float) * T * N), *part = malloc(sizeof(float) * T * N);
    void *dx = dev_put(gpu, x, (size_t)T * K), *dout = gpu->ops->alloc(gpu, (size_t)T * N * 4);
    for (int i = 0, off = 0; i < NP; off += rows[i], i++) {
      cpu->ops->matmul(cpu, part, x, &cw[i], bf[i], T);
      for (int r = 0; r < T; r++) memcpy(ref + (size_t)r * N + off, part + (size_t)r * rows[i], sizeof(float) * rows[i]);
    }
    gpu->ops->matmul(gpu, dout, dx, &gw, gb.data, T);
    float *g = dev_get(gpu, dout, (size_t)T * N);
    char what[64];
    snprintf(what, sizeof what, "fused matmul %s T%d N%d K%d +bias", dtype_name(wt), T, N, K);
    check(what, t, g, ref, (size_t)T * N, t == DTYPE_F32 ? 1e-5 : 2e-2);
    free(g), free(x), free(ref), free(part);
    gpu->ops->free(gpu, dx);
    gpu->ops->free(gpu, dout);
  }
  gpu->ops->weight_release(gpu, &gw);
  gpu->ops->weight_release(gpu, &gb);
  for (int i = 0; i < NP; i++) free(wf[i]), free(wb[i]), free(bf[i]);

  /* silu_mul_cat */
  const int T = 7, F = 1000;
  float *gu = rnd_vec((size_t)T * 2 * F, 4.0f, t), *out = malloc(sizeof(float) * T * F);
  void *dgu = dev_put(gpu, gu, (size_t)T * 2 * F), *dout = gpu->ops->alloc(gpu, (size_t)T * F * 4);
  cpu->ops->silu_mul_cat(cpu, out, gu, T, F);
  gpu->ops->silu_mul_cat(gpu, dout, dgu, T, F);
  float *g = dev_get(gpu, dout, (size_t)T * F);
  check("silu_mul_cat (7 x 2 x 1000)", t, g, out, (size_t)T * F, t == DTYPE_F32 ? 1e-6 : 1e-2);
  free(g), free(gu), free(out);
  gpu->ops->free(gpu, dgu);
  gpu->ops->free(gpu, dout);
}

/* rope_qkv_write on strided q|k|v rows (LD with padding), both rotation styles, with and without the per-head
 * norm; 5 tokens of 2 sequences, one with a slot outside the cache. */
static void test_rope_qkv(backend_t *cpu, backend_t *gpu, dtype_t t, int style, int D, int norm) {
  enum { H = 8, HKV = 2, B = 16, NB = 9, T = 5 };
  const int LD = (H + 2 * HKV) * D + 8;
  be_kv_t ckv = {.dtype = DTYPE_F32, .n_blocks = NB, .n_layers = 2, .n_kv_heads = HKV, .block_size = B, .head_dim = D};
  ckv.block_bytes = (size_t)2 * 2 * HKV * B * D * 4;
  be_kv_t gkv = ckv;
  gkv.dtype = t;
  gkv.block_bytes = ckv.block_bytes / 4 * dtype_act_bytes(t);
  ckv.data = calloc(1, ckv.block_bytes * NB);
  gkv.data = gpu->ops->alloc(gpu, gkv.block_bytes * NB);
  float inv[128];
  for (int i = 0; i < D / 2; i++) inv[i] = (float)(1.0 / pow(10000.0, 2.0 * i / D));
  float *dinv = gpu->ops->alloc(gpu, sizeof(float) * (size_t)(D / 2));
  gpu->ops->upload(gpu, dinv, inv, sizeof(float) * (size_t)(D / 2));
  float *qn = rnd_vec((size_t)D, 1.0f, DTYPE_F32), *kn = rnd_vec((size_t)D, 1.0f, DTYPE_F32);
  float *dqn = gpu->ops->alloc(gpu, (size_t)D * 4), *dkn = gpu->ops->alloc(gpu, (size_t)D * 4);
  gpu->ops->upload(gpu, dqn, qn, (size_t)D * 4);
  gpu->ops->upload(gpu, dkn, kn, (size_t)D * 4);
  be_rope_t crope = {.style = style, .head_dim = D, .inv_freq = inv}, grope = {.style = style, .head_dim = D, .inv_freq = dinv};
  int32_t tok[T] = {0}, pos[T] = {0, 1, 2, 40, 41}, seq[T] = {0, 0, 0, 1, 1}, qs[3] = {0, 3, 5}, kvl[2] = {3, 42};
  int32_t slot[T] = {3 * B, 3 * B + 1, 3 * B + 2, 5 * B + 8, NB * B + 1}, table[4] = {3, 0, 7, 5}, lr[2] = {2, 4};
  be_batch_t hb = {.n_tokens = T, .n_seqs = 2, .tokens = tok, .positions = pos, .slots = slot, .seq_of = seq,
                   .q_start = qs, .kv_len = kvl, .block_table = table, .max_blocks = 2, .max_kv_len = 42,
                   .logit_rows = lr, .n_logits = 2},
             gb;
  float *qkv = rnd_vec((size_t)T * LD, 2.0f, t), *q = malloc(sizeof(float) * T * H * D);
  void *dqkv = dev_put(gpu, qkv, (size_t)T * LD), *dq = gpu->ops->alloc(gpu, (size_t)T * H * D * 4);
  gpu->ops->batch_upload(gpu, &gb, &hb);
  cpu->ops->rope_qkv_write(cpu, q, qkv, LD, norm ? qn : NULL, norm ? kn : NULL, 1e-6f, &ckv, 1, &hb, &crope, H, HKV);
  gpu->ops->rope_qkv_write(gpu, dq, dqkv, LD, norm ? dqn : NULL, norm ? dkn : NULL, 1e-6f, &gkv, 1, &gb, &grope, H,
                           HKV);
  char what[64];
  float *g = dev_get(gpu, dq, (size_t)T * H * D);
  snprintf(what, sizeof what, "rope_qkv (%s%s D%d) q", style ? "neox" : "norm", norm ? ", qk norm" : "", D);
  check(what, t, g, q, (size_t)T * H * D, t == DTYPE_F32 ? 1e-6 : 1e-2);
  free(g);
  size_t nkv = ckv.block_bytes / 4 * NB;
  g = dev_get(gpu, gkv.data, nkv);
  snprintf(what, sizeof what, "rope_qkv (%s%s D%d) cache", style ? "neox" : "norm", norm ? ", qk norm" : "", D);
  check(what, t, g, ckv.data, nkv, t == DTYPE_F32 ? 1e-6 : 1e-2);
  free(g), free(qkv), free(q), free(qn), free(kn), free(ckv.data);
  void *bufs[] = {dqkv, dq, dqn, dkn, dinv, gkv.data};
  for (int i = 0; i < 6; i++) gpu->ops->free(gpu, bufs[i]);
}

/* A ragged batch over a paged cache: sequence s has its tokens in blocks given by a shuffled table.
 * Step 0 is a prefill of PRE[s] tokens per sequence (prefill chunks of different lengths), step 1 one
 * decode token per sequence: rope_kv_write then attention, compared after each step (q, cache, out).
 * With LONG, prefills of 200/130/9 tokens (several key tiles, several splits per decode query), and a
 * step 2 decode in which sequence 1's table points outside the cache (its rows must be zero). */
static void test_attention(backend_t *cpu, backend_t *gpu, dtype_t t, int style, int D, int HKV, int lng) {
  enum { S = 3, H = 8, B = 16, NB = 49, MAXB = 16, TMAX = 352 };
  const int pre[S] = {lng ? 200 : 21, lng ? 130 : 70, lng ? 9 : 4};
  be_kv_t ckv = {.dtype = DTYPE_F32, .n_blocks = NB, .n_layers = 2, .n_kv_heads = HKV, .block_size = B, .head_dim = D};
  ckv.block_bytes = (size_t)2 * 2 * HKV * B * D * 4;
  be_kv_t gkv = ckv;
  gkv.dtype = t;
  gkv.block_bytes = ckv.block_bytes / 4 * dtype_act_bytes(t);
  ckv.data = calloc(1, ckv.block_bytes * NB);
  gkv.data = gpu->ops->alloc(gpu, gkv.block_bytes * NB);
  int32_t table[S * MAXB];
  for (int i = 0; i < S * MAXB; i++) table[i] = 1 + (i * 7) % (NB - 1); /* distinct blocks 1..23, shuffled */
  float inv[128];
  for (int i = 0; i < D / 2; i++) inv[i] = (float)(1.0 / pow(10000.0, 2.0 * i / D));
  float *dinv = gpu->ops->alloc(gpu, sizeof(float) * (size_t)(D / 2));
  gpu->ops->upload(gpu, dinv, inv, sizeof(float) * (size_t)(D / 2));
  be_rope_t crope = {.style = style, .head_dim = D, .inv_freq = inv}, grope = {.style = style, .head_dim = D, .inv_freq = dinv};
  for (int step = 0; step < (lng ? 3 : 2); step++) {
    int T = 0, tok[TMAX], pos[TMAX], slot[TMAX], seq[TMAX], qs[S + 1], kvl[S], lr[S];
    if (step == 2) table[1 * MAXB + 1] = NB + 5; /* outside the cache */
    for (int s = 0; s < S; s++) {
      qs[s] = T;
      int first = step == 0 ? 0 : pre[s] + step - 1, n = step == 0 ? pre[s] : 1;
      for (int j = 0; j < n; j++, T++) {
        int p = first + j;
        tok[T] = 0, pos[T] = p, seq[T] = s, slot[T] = table[s * MAXB + p / B] * B + p % B;
      }
      kvl[s] = first + n;
      lr[s] = T - 1;
    }
    qs[S] = T;
    be_batch_t hb = {.n_tokens = T, .n_seqs = S, .tokens = tok, .positions = pos, .slots = slot, .seq_of = seq,
                     .q_start = qs, .kv_len = kvl, .block_table = table, .max_blocks = MAXB,
                     .max_kv_len = lng ? 202 : 72, .logit_rows = lr, .n_logits = S};
    size_t nq = (size_t)T * H * D, nk = (size_t)T * HKV * D;
    float *q = rnd_vec(nq, 1.0f, t), *k = rnd_vec(nk, 1.0f, t), *v = rnd_vec(nk, 1.0f, t);
    void *dq = dev_put(gpu, q, nq), *dk = dev_put(gpu, k, nk), *dv = dev_put(gpu, v, nk);
    void *dout = gpu->ops->alloc(gpu, nq * 4);
    be_batch_t gb; /* a step: batch_upload, the ops, then the results (a decode step may be a CUDA graph) */
    gpu->ops->batch_upload(gpu, &gb, &hb);
    float *out = malloc(nq * sizeof(float));
    for (int layer = 0; layer < 2; layer++) {
      cpu->ops->rope_kv_write(cpu, q, k, v, &ckv, layer, &hb, &crope, H, HKV);
      gpu->ops->rope_kv_write(gpu, dq, dk, dv, &gkv, layer, &gb, &grope, H, HKV);
      cpu->ops->attention(cpu, out, q, &ckv, layer, &hb, H, HKV, 0.125f);
      gpu->ops->attention(gpu, dout, dq, &gkv, layer, &gb, H, HKV, 0.125f);
    }
    char what[64];
    float *g = dev_get(gpu, dq, nq);
    snprintf(what, sizeof what, "rope (%s) q, step %d", style ? "neox" : "norm", step);
    check(what, t, g, q, nq, t == DTYPE_F32 ? 1e-6 : 1e-2);
    free(g);
    size_t nkv = ckv.block_bytes / 4 * NB;
    g = dev_get(gpu, gkv.data, nkv);
    snprintf(what, sizeof what, "rope+kv write: cache, step %d", step);
    check(what, t, g, ckv.data, nkv, t == DTYPE_F32 ? 1e-6 : 1e-2);
    free(g);
    g = dev_get(gpu, dout, nq);
    snprintf(what, sizeof what, "attention %s T%d D%d G%d%s", step ? "decode" : "prefill", T, D, H / HKV,
             step == 2 ? " bad table" : "");
    check(what, t, g, out, nq, t == DTYPE_F32 ? 1e-5 : 2e-2);
    free(g);
    void *bufs[] = {dq, dk, dv, dout};
    for (int i = 0; i < 4; i++) gpu->ops->free(gpu, bufs[i]);
    free(q), free(k), free(v), free(out);
  }
  gpu->ops->free(gpu, gkv.data);
  gpu->ops->free(gpu, dinv);
  free(ckv.data);
}

/* dummy:tiny (GQA, f32 weights): one prefill of 2 sequences then 3 decode steps, logits of both backends.
 * QWEN: with q/k/v biases (Qwen2) and per-head q/k norms (Qwen3) added, random, so that the GPU's fused
 * projections (bias concatenated, norm inside rope_qkv_write) meet the CPU's separate ones. */
static void test_model(backend_t *cpu, backend_t *gpu, dtype_t t, const char *preset, int qwen) {
  model_t *m = NULL;
  model_load_opts_t o = {.seed = 7, .dtype = DTYPE_F32};
  if (model_load(&m, preset, &o) != 0) {
    printf("FAIL cannot load %s\n", preset);
    n_fail++;
    return;
  }
  float *extra[64] = {0};
  int n_extra = 0;
  if (qwen) {
    model_cfg_t *c = &m->cfg;
    c->qkv_bias = c->qk_norm = 1;
    for (int l = 0; l < c->n_layers && n_extra + 5 <= 64; l++) {
      layer_weights_t *w = &m->w.layers[l];
      const int HD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim, D = c->head_dim;
      weight_t *vs[5] = {&w->bq, &w->bk, &w->bv, &w->q_norm, &w->k_norm};
      const int len[5] = {HD, KD, KD, D, D};
      for (int i = 0; i < 5; i++) {
        float *v = rnd_vec((size_t)len[i], i < 3 ? 0.5f : 1.0f, DTYPE_F32);
        if (i >= 3)
          for (int j = 0; j < len[i]; j++) v[j] += 1.0f; /* norm weights around 1 */
        extra[n_extra++] = v;
        *vs[i] = (weight_t){.data = v, .dtype = DTYPE_F32, .rows = 1, .cols = len[i]};
      }
    }
  }
  fwd_t fc, fg;
  enum { B = 16, MAXB = 4 };
  if (fwd_init(&fc, m, cpu, B, 64, 4) || fwd_alloc_kv(&fc, 16) || fwd_init(&fg, m, gpu, B, 64, 4) ||
      fwd_alloc_kv(&fg, 16)) {
    printf("FAIL fwd_init\n");
    n_fail++;
    model_free(m);
    return;
  }
  int32_t table[2 * MAXB] = {3, 9, 4, 1, 7, 2, 12, 5};
  const int V = m->cfg.vocab_size;
  for (int step = 0; step < 4; step++) {
    int pre[2] = {13, 30}, T = 0, tok[64], pos[64], slot[64], seq[64], qs[3], kvl[2], lr[2];
    for (int s = 0; s < 2; s++) {
      qs[s] = T;
      int first = step == 0 ? 0 : pre[s] + step - 1, n = step == 0 ? pre[s] : 1;
      for (int j = 0; j < n; j++, T++) {
        int p = first + j;
        tok[T] = (p * 31 + s * 7 + 1) % V, pos[T] = p, seq[T] = s, slot[T] = table[s * MAXB + p / B] * B + p % B;
      }
      kvl[s] = first + n;
      lr[s] = T - 1;
    }
    qs[2] = T;
    be_batch_t hb = {.n_tokens = T, .n_seqs = 2, .tokens = tok, .positions = pos, .slots = slot, .seq_of = seq,
                     .q_start = qs, .kv_len = kvl, .block_table = table, .max_blocks = MAXB, .max_kv_len = 33,
                     .logit_rows = lr, .n_logits = 2};
    if (fwd_run(&fc, &hb) || fwd_run(&fg, &hb)) {
      printf("FAIL fwd_run\n");
      n_fail++;
      break;
    }
    char what[64];
    snprintf(what, sizeof what, "%s%s logits, step %d", preset, qwen ? "+qwen" : "", step);
    check(what, t, fg.logits_host, fc.logits_host, (size_t)2 * V, t == DTYPE_F32 ? 1e-4 : 5e-2);
  }
  if (fg.n_fused_qkv != m->cfg.n_layers || fg.n_fused_gu != m->cfg.n_layers) printf("note: %s%s: %d / %d layers with fused q|k|v / gate|up on the GPU\n", preset, qwen ? "+qwen" : "", fg.n_fused_qkv, fg.n_fused_gu);
  fwd_deinit(&fc);
  fwd_deinit(&fg);
  for (int l = 0; qwen && l < m->cfg.n_layers; l++) {
    layer_weights_t *w = &m->w.layers[l];
    weight_t *vs[5] = {&w->bq, &w->bk, &w->bv, &w->q_norm, &w->k_norm};
    for (int i = 0; i < 5; i++) memset(vs[i], 0, sizeof *vs[i]);
  }
  for (int i = 0; i < n_extra; i++) free(extra[i]);
  model_free(m);
}

/* dummy weights made on the GPU (model_load_opts_t.dummy_on_device) must be bit-identical, once placed, to
 * the host loader's placed through an upload: model dtypes f32 and bf16, four matrices of dummy:tiny. */
static void test_dummy_on_device(backend_t *gpu, dtype_t t) {
  const dtype_t mdt[2] = {DTYPE_F32, DTYPE_BF16};
  for (int k = 0; k < 2; k++) {
    model_t *mh = NULL, *md = NULL;
    model_load_opts_t oh = {.seed = 11, .dtype = mdt[k]}, od = oh;
    od.dummy_on_device = 1;
    if (model_load(&mh, "dummy:tiny", &oh) || model_load(&md, "dummy:tiny", &od)) {
      printf("FAIL cannot load dummy:tiny\n");
      n_fail++;
      model_free(mh);
      return;
    }
    const weight_t *wh[4] = {&mh->w.tok_embd, &mh->w.layers[0].wq, &mh->w.layers[1].w_down, &mh->w.output};
    const weight_t *wd[4] = {&md->w.tok_embd, &md->w.layers[0].wq, &md->w.layers[1].w_down, &md->w.output};
    int same = md->w.layers[0].wq.data == NULL && md->w.layers[0].wq.gen.on;
    for (int i = 0; i < 4 && same; i++) {
      weight_t ph = {0}, pd = {0};
      size_t bytes = (size_t)(wh[i]->rows * wh[i]->cols) * dtype_act_bytes(t);
      char *a = malloc(bytes), *b = malloc(bytes);
      same = a && b && gpu->ops->weight_prepare(gpu, &ph, wh[i]) == 0 && gpu->ops->weight_prepare(gpu, &pd, wd[i]) == 0 &&
             gpu->ops->download(gpu, a, ph.data, bytes) == 0 && gpu->ops->download(gpu, b, pd.data, bytes) == 0 &&
             memcmp(a, b, bytes) == 0;
      gpu->ops->weight_release(gpu, &ph);
      gpu->ops->weight_release(gpu, &pd);
      free(a), free(b);
    }
    printf("%s dummy weights made on the GPU = the host's, model %s, act %s\n", same ? "ok  " : "FAIL",
           dtype_name(mdt[k]), dtype_name(t));
    same ? n_pass++ : n_fail++;
    model_free(mh);
    model_free(md);
  }
}

int main(void) {
  backend_t *cpu = NULL;
  /* unless the caller chose: cuBLASLt plan tuning on (off by default), so that both paths are checked (the
   * matmul cases of T 77 tune) */
  setenv("STRATA_CUDA_GEMM_TUNE", "1", 0);
  if (backend_create(&cpu, "cpu", 0, -1) != 0) return 1;
  const dtype_t types[2] = {DTYPE_F32, DTYPE_BF16};
  for (int i = 0; i < 2; i++) {
    backend_t *gpu = NULL;
    if (backend_create(&gpu, "cuda", 0, types[i]) != 0) {
      printf("FAIL cannot create the CUDA backend in %s\n", dtype_name(types[i]));
      return 1;
    }
    test_norms(cpu, gpu, types[i], 1000);
    test_norms(cpu, gpu, types[i], 999);
    test_matmul(cpu, gpu, types[i], DTYPE_F32, 320, 512);
    test_matmul(cpu, gpu, types[i], DTYPE_BF16, 130, 100);
    test_attention(cpu, gpu, types[i], 0, 64, 2, 0);
    test_attention(cpu, gpu, types[i], 1, 128, 1, 0);
    test_attention(cpu, gpu, types[i], 1, 36, 8, 0);
    test_attention(cpu, gpu, types[i], 1, 128, 2, 1);
    test_attention(cpu, gpu, types[i], 0, 64, 1, 1);
    test_fused(cpu, gpu, types[i], DTYPE_F32, 512);
    test_fused(cpu, gpu, types[i], DTYPE_BF16, 100);
    test_rope_qkv(cpu, gpu, types[i], 1, 128, 0);
    test_rope_qkv(cpu, gpu, types[i], 1, 128, 1);
    test_rope_qkv(cpu, gpu, types[i], 0, 64, 1);
    test_model(cpu, gpu, types[i], "dummy:tiny", 0);
    test_model(cpu, gpu, types[i], "dummy:tiny", 1);
    test_dummy_on_device(gpu, types[i]);
    if (gpu->ops->sync(gpu) != 0) {
      printf("FAIL the CUDA backend reported an error\n");
      n_fail++;
    }
    backend_destroy(gpu);
  }
  backend_destroy(cpu);
  printf("gpu_parity: %d passed, %d failed\n", n_pass, n_fail);
  return n_fail ? 1 : 0;
}
