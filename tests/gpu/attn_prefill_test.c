/* attn_prefill_test.c: cuda_attention_prefill (the flash-attention-2 prefill kernel) against a naive
 * attention computed here on the CPU in double from the same rounded inputs, for every kernel variant
 * (STRATA_CUDA_ATTNP = 4, 4x3, 8, 4r2, 4r2k32, and "auto": the default pick); then the time of a 2,048-token
 * causal prefill at Llama-3-8B shapes (and a few chunked batches) next to cuda_attention's in the same run.
 * A case passes when ||gpu - ref|| / ||ref|| <= 2e-2 over the checked rows (bf16/f16 outputs carry a
 * rounding of 2^-9 relative, and P enters P V rounded to 16 bits) and every row whose context needs a
 * block outside the cache is exactly zero. Prints one line per check, "attn_prefill: N passed, M failed"
 * at the end of the checks, then the timings; exits 1 on any failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/kernels_cuda.h"

/* declared for C++ in kernels/cuda/cuda_int.cuh (attn_prefill.cu) */
int cuda_attention_prefill(void *out, const void *q, const cuda_kv_t *kv, int layer, const int32_t *positions,
                           const int32_t *seq_of, const int32_t *block_table, int max_blocks, int T, int S, int H,
                           float scale, dtype_t act, cudaStream_t stream);

#define TOL 2e-2
#define MAXS 8

static int n_pass, n_fail;
static int g_dead; /* a CUDA call failed (CK): the remaining cases cannot run */
static uint64_t rng = 0x243f6a8885a308d3ull;

static float frand(void) { /* uniform in [-1, 1) */
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static uint16_t to16(dtype_t t, float v) { return t == DTYPE_BF16 ? f32_to_bf16(v) : f32_to_f16(v); }
static float from16(dtype_t t, uint16_t h) { return t == DTYPE_BF16 ? bf16_to_f32(h) : f16_to_f32(h); }

#define CK(call)                                                                     \
  do {                                                                               \
    cudaError_t e_ = (call);                                                         \
    if (e_ != cudaSuccess) {                                                         \
      printf("FAIL %s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      n_fail++, g_dead = 1; /* the device is unusable: main stops at its next check */    \
      return;                                                                        \
    }                                                                                \
  } while (0)

/* One batch: S sequences, sequence s contributes LEN[s] query tokens at positions START[s].. (its earlier
 * positions are the cached prefix). BAD_SEQ >= 0 puts a block id outside the cache at index BAD_IDX of
 * that sequence's table. CHECK_EVERY > 1 checks only every so many rows (and the last 130) of a long one. */
typedef struct {
  const char *name;
  int D, H, Hkv, B, S, len[MAXS], start[MAXS], bad_seq, bad_idx, check_every;
  dtype_t act;
} case_t;

typedef struct { /* host and device copies of one batch */
  int T, S, H, max_blocks, L, layer, nb_total;
  float scale;
  cuda_kv_t kv;
  uint16_t *hq, *hcache;
  float *fq, *fcache; /* the same values as f32, for the reference */
  int32_t *pos, *seq, *tbl;
  void *dq, *dout;
  int32_t *dpos, *dseq, *dtbl;
} batch_t;

/* fills the cache with random values everywhere (blocks handed out in a scattered order) */
static void batch_make(batch_t *b, const case_t *c) {
  memset(b, 0, sizeof *b);
  b->S = c->S, b->H = c->H, b->L = 2, b->layer = 1, b->scale = 1.0f / sqrtf((float)c->D);
  int need = 0;
  for (int s = 0; s < c->S; s++) {
    b->T += c->len[s];
    int nb = (c->start[s] + c->len[s] + c->B - 1) / c->B;
    need += nb;
    if (nb + 1 > b->max_blocks) b->max_blocks = nb + 1;
  }
  b->nb_total = need + 3;
  b->kv = (cuda_kv_t){.dtype = c->act, .n_blocks = b->nb_total, .n_layers = b->L, .n_kv_heads = c->Hkv,
                      .block_size = c->B, .head_dim = c->D};
  size_t n_cache = (size_t)b->nb_total * b->L * 2 * c->Hkv * c->B * c->D, n_q = (size_t)b->T * c->H * c->D;
  b->hcache = malloc(n_cache * 2), b->hq = malloc(n_q * 2);
  b->fcache = malloc(n_cache * sizeof(float)), b->fq = malloc(n_q * sizeof(float));
  for (size_t i = 0; i < n_cache; i++)
    b->hcache[i] = to16(c->act, frand()), b->fcache[i] = from16(c->act, b->hcache[i]);
  for (size_t i = 0; i < n_q; i++) b->hq[i] = to16(c->act, 1.5f * frand()), b->fq[i] = from16(c->act, b->hq[i]);
  b->pos = malloc(sizeof(int32_t) * b->T), b->seq = malloc(sizeof(int32_t) * b->T);
  b->tbl = malloc(sizeof(int32_t) * c->S * b->max_blocks);
  int next = 0;
  for (int s = 0; s < c->S; s++)
    for (int i = 0; i < b->max_blocks; i++) {
      int nb = (c->start[s] + c->len[s] + c->B - 1) / c->B;
      /* block k of the batch -> id (7 k + 2) mod nb_total: scattered, not in order (two sharing an id would
       * still be a valid table: the reference reads the same cache) */
      b->tbl[s * b->max_blocks + i] = i < nb ? (int32_t)((7 * next++ + 2) % b->nb_total) : -1;
    }
  if (c->bad_seq >= 0) b->tbl[c->bad_seq * b->max_blocks + c->bad_idx] = b->nb_total + 5;
  for (int s = 0, t = 0; s < c->S; s++)
    for (int i = 0; i < c->len[s]; i++, t++) b->pos[t] = c->start[s] + i, b->seq[t] = s;
  b->kv.data = NULL;
  CK(cudaMalloc(&b->kv.data, n_cache * 2));
  CK(cudaMalloc(&b->dq, n_q * 2));
  CK(cudaMalloc(&b->dout, n_q * 2));
  CK(cudaMalloc((void **)&b->dpos, sizeof(int32_t) * b->T));
  CK(cudaMalloc((void **)&b->dseq, sizeof(int32_t) * b->T));
  CK(cudaMalloc((void **)&b->dtbl, sizeof(int32_t) * c->S * b->max_blocks));
  CK(cudaMemcpy(b->kv.data, b->hcache, n_cache * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(b->dq, b->hq, n_q * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(b->dpos, b->pos, sizeof(int32_t) * b->T, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(b->dseq, b->seq, sizeof(int32_t) * b->T, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(b->dtbl, b->tbl, sizeof(int32_t) * c->S * b->max_blocks, cudaMemcpyHostToDevice));
}

static void batch_free(batch_t *b) {
  cudaFree(b->kv.data), cudaFree(b->dq), cudaFree(b->dout), cudaFree(b->dpos), cudaFree(b->dseq), cudaFree(b->dtbl);
  free(b->hcache), free(b->hq), free(b->fcache), free(b->fq), free(b->pos), free(b->seq), free(b->tbl);
}

/* the naive reference for token t, all heads: ref(H, D); returns 0, or 1 if the row must be zero */
static int reference(const batch_t *b, const case_t *c, int t, float *ref) {
  const int D = c->D, B = c->B, Hkv = c->Hkv, G = c->H / Hkv, n = b->pos[t] + 1;
  const int32_t *bt = b->tbl + (size_t)b->seq[t] * b->max_blocks;
  for (int i = 0; i <= b->pos[t] / B; i++)
    if (i >= b->max_blocks || bt[i] < 0 || bt[i] >= b->nb_total) return 1;
  double *sc = malloc(sizeof(double) * n), *acc = malloc(sizeof(double) * D);
  const size_t head = (size_t)B * D, blk = (size_t)b->L * 2 * Hkv * head;
  for (int h = 0; h < c->H; h++) {
    const int g = h / G;
    const float *qh = b->fq + ((size_t)t * c->H + h) * D;
    double m = -INFINITY, sum = 0;
    for (int p = 0; p < n; p++) {
      const float *k =
          b->fcache + (size_t)bt[p / B] * blk + ((size_t)b->layer * 2 * Hkv + g) * head + (size_t)(p % B) * D;
      double s = 0;
      for (int d = 0; d < D; d++) s += (double)qh[d] * k[d];
      sc[p] = s * b->scale;
      if (sc[p] > m) m = sc[p];
    }
    for (int d = 0; d < D; d++) acc[d] = 0;
    for (int p = 0; p < n; p++) {
      const float *v = b->fcache + (size_t)bt[p / B] * blk + ((size_t)(b->layer * 2 + 1) * Hkv + g) * head +
                          (size_t)(p % B) * D;
      double w = exp(sc[p] - m);
      sum += w;
      for (int d = 0; d < D; d++) acc[d] += w * v[d];
    }
    for (int d = 0; d < D; d++) ref[(size_t)h * D + d] = (float)(acc[d] / sum);
  }
  free(sc), free(acc);
  return 0;
}

static int checked(const case_t *c, int T, int t) {
  return c->check_every <= 1 || t % c->check_every == 3 || t >= T - 130;
}

/* reference rows of the case, computed once for every variant: ref(T, H, D); zero(T) */
static float *references(const batch_t *b, const case_t *c, int *zero) {
  const size_t row = (size_t)c->H * c->D;
  float *ref = calloc((size_t)b->T * row, sizeof(float));
  for (int t = 0; t < b->T; t++)
    if (checked(c, b->T, t)) zero[t] = reference(b, c, t, ref + t * row);
  return ref;
}

static void run_case(const case_t *c, const char *variant, const batch_t *b, const float *ref, const int *zero) {
  setenv("STRATA_CUDA_ATTNP", variant, 1);
  const size_t row = (size_t)c->H * c->D, n = (size_t)b->T * row;
  CK(cudaMemset(b->dout, 0x7f, n * 2)); /* garbage where nothing is written (huge in bf16, NaN in f16) */
  int rc = cuda_attention_prefill(b->dout, b->dq, &b->kv, b->layer, b->dpos, b->dseq, b->dtbl, b->max_blocks, b->T,
                                  b->S, c->H, b->scale, c->act, 0);
  CK(cudaDeviceSynchronize());
  uint16_t *got = malloc(n * 2);
  CK(cudaMemcpy(got, b->dout, n * 2, cudaMemcpyDeviceToHost));
  double num = 0, den = 0;
  int bad_zero = 0, nan = 0, n_zero_rows = 0, n_rows = 0;
  for (int t = 0; t < b->T; t++) {
    if (!checked(c, b->T, t)) continue;
    n_rows++, n_zero_rows += zero[t];
    for (size_t i = 0; i < row; i++) {
      float g = from16(c->act, got[t * row + i]), r = ref[t * row + i];
      if (!isfinite(g)) nan = 1;
      if (zero[t]) {
        bad_zero |= g != 0.0f;
        continue;
      }
      num += ((double)g - r) * ((double)g - r), den += (double)r * r;
    }
  }
  double rel = den > 0 ? sqrt(num / den) : 0;
  int ok = rc == 0 && !nan && !bad_zero && rel <= TOL;
  printf("%-4s %-46s %-4s %-4s rows %4d (zero %3d) rel err %.2e (tol %.0e)%s%s\n", ok ? "ok" : "FAIL", c->name,
         dtype_name(c->act), variant, n_rows, n_zero_rows, rel, TOL, bad_zero ? " NONZERO BAD ROW" : "",
         rc ? " RETURNED AN ERROR" : "");
  ok ? n_pass++ : n_fail++;
  free(got);
}

/* unsupported shapes are refused (so that the caller falls back), never run */
static void check_refusals(void) {
  cuda_kv_t kv = {.dtype = DTYPE_BF16, .n_blocks = 4, .n_layers = 1, .n_kv_heads = 2, .block_size = 16, .head_dim = 96};
  int a = cuda_attention_prefill(NULL, NULL, &kv, 0, NULL, NULL, NULL, 1, 8, 1, 4, 0.1f, DTYPE_BF16, 0);
  kv.head_dim = 128, kv.dtype = DTYPE_F32;
  int b = cuda_attention_prefill(NULL, NULL, &kv, 0, NULL, NULL, NULL, 1, 8, 1, 4, 0.1f, DTYPE_F32, 0);
  kv.dtype = DTYPE_BF16;
  int c = cuda_attention_prefill(NULL, NULL, &kv, 0, NULL, NULL, NULL, 1, 8, 1, 3, 0.1f, DTYPE_BF16, 0);
  int ok = a == STRATA_EUNSUPPORTED && b == STRATA_EUNSUPPORTED && c == STRATA_EINVAL;
  printf("%-4s refuses D 96 and f32 (EUNSUPPORTED), 3 heads over 2 KV heads (EINVAL): %d %d %d\n", ok ? "ok" : "FAIL",
         a, b, c);
  ok ? n_pass++ : n_fail++;
}

static float ms_of(cudaEvent_t e0, cudaEvent_t e1) {
  float ms = 0;
  if (cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess) n_fail++, g_dead = 1;
  return ms;
}

/* times cuda_attention (old) and every variant of cuda_attention_prefill on one batch; FLOPs counted as
 * 4 D H per (query, visible key) pair, i.e. 4 T T/2 D H for one causal sequence from position 0 */
static void time_case(const case_t *c) {
  batch_t b;
  batch_make(&b, c);
  if (g_dead) return;
  double pairs = 0;
  for (int t = 0; t < b.T; t++) pairs += b.pos[t] + 1;
  const double flop = 4.0 * pairs * c->D * c->H;
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  const size_t n = (size_t)b.T * c->H * c->D;
  void *old_out = NULL;
  CK(cudaMalloc(&old_out, n * 2));
  enum { R = 20 };
  int rc = 0;
  for (int i = 0; i < 3; i++)
    rc |= cuda_attention(old_out, b.dq, &b.kv, b.layer, b.dpos, b.dseq, b.dtbl, b.max_blocks, b.T, b.S, c->H, b.scale,
                         NULL, 0);
  CK(cudaEventRecord(e0, 0));
  for (int i = 0; i < R; i++)
    rc |= cuda_attention(old_out, b.dq, &b.kv, b.layer, b.dpos, b.dseq, b.dtbl, b.max_blocks, b.T, b.S, c->H, b.scale,
                         NULL, 0);
  CK(cudaEventRecord(e1, 0));
  CK(cudaEventSynchronize(e1));
  double us = ms_of(e0, e1) * 1e3 / R;
  printf("time %-40s cuda_attention                %8.1f us %6.1f TFLOP/s\n", c->name, us, flop / us * 1e-6);
  uint16_t *ho = malloc(n * 2), *hn = malloc(n * 2);
  CK(cudaMemcpy(ho, old_out, n * 2, cudaMemcpyDeviceToHost));
  const char *variants[] = {"4", "4x3", "8", "4r2", "4r2k32", "auto"};
  for (int v = 0; v < 6; v++) {
    setenv("STRATA_CUDA_ATTNP", variants[v], 1);
    for (int i = 0; i < 3; i++)
      rc |= cuda_attention_prefill(b.dout, b.dq, &b.kv, b.layer, b.dpos, b.dseq, b.dtbl, b.max_blocks, b.T, b.S,
                                   c->H, b.scale, c->act, 0);
    CK(cudaEventRecord(e0, 0));
    for (int i = 0; i < R; i++)
      rc |= cuda_attention_prefill(b.dout, b.dq, &b.kv, b.layer, b.dpos, b.dseq, b.dtbl, b.max_blocks, b.T, b.S,
                                   c->H, b.scale, c->act, 0);
    CK(cudaEventRecord(e1, 0));
    CK(cudaEventSynchronize(e1));
    us = ms_of(e0, e1) * 1e3 / R;
    CK(cudaMemcpy(hn, b.dout, n * 2, cudaMemcpyDeviceToHost));
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
      double o = from16(c->act, ho[i]), d = from16(c->act, hn[i]) - o;
      num += d * d, den += o * o;
    }
    const double rel = den > 0 ? sqrt(num / den) : 0.0;
    printf("time %-40s cuda_attention_prefill %-6s %8.1f us %6.1f TFLOP/s (rel diff to cuda_attention %.1e)%s\n",
           c->name, variants[v], us, flop / us * 1e-6, rel, rel <= TOL ? "" : " FAIL");
    if (rel > TOL) n_fail++;
  }
  if (rc) {
    printf("FAIL a timed call returned %d\n", rc);
    n_fail++;
  }
  free(ho), free(hn);
  cudaFree(old_out);
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  batch_free(&b);
}

int main(void) {
  if (cuda_device_count() < 1) {
    printf("attn_prefill: no CUDA device\n");
    return 1;
  }
  const case_t cases[] = {
      {"1 seq x 2048 from 0, D128 G4", 128, 32, 8, 16, 1, {2048}, {0}, -1, 0, 16, DTYPE_BF16},
      {"3 seqs 21/70/4 from 0, D64 G8", 64, 16, 2, 16, 3, {21, 70, 4}, {0, 0, 0}, -1, 0, 1, DTYPE_BF16},
      {"3 seqs 21/70/4 from 0, D128 G4", 128, 32, 8, 16, 3, {21, 70, 4}, {0, 0, 0}, -1, 0, 1, DTYPE_BF16},
      {"3 seqs 21/70/4 from 0, D128 G4", 128, 32, 8, 16, 3, {21, 70, 4}, {0, 0, 0}, -1, 0, 1, DTYPE_F16},
      {"200 at 300 after a cached prefix, D128 G4", 128, 32, 8, 16, 1, {200}, {300}, -1, 0, 1, DTYPE_BF16},
      {"200 at 300 after a cached prefix, D64 G8", 64, 16, 2, 16, 1, {200}, {300}, -1, 0, 1, DTYPE_F16},
      {"5 chunks 21/70/4/130/9 at 0/45/130/7/64, D128", 128, 8, 2, 16, 5, {21, 70, 4, 130, 9}, {0, 45, 130, 7, 64},
       -1, 0, 1, DTYPE_BF16},
      {"bad block id (seq 1 block 3), D128 G4", 128, 32, 8, 16, 3, {21, 70, 4}, {0, 0, 0}, 1, 3, 1, DTYPE_BF16},
      {"bad block id (seq 0 block 0), D64 G8", 64, 16, 2, 16, 3, {21, 70, 4}, {0, 40, 0}, 0, 0, 1, DTYPE_BF16},
      {"block size 32, chunk 100 at 77, D64 G8", 64, 16, 2, 32, 1, {100}, {77}, -1, 0, 1, DTYPE_BF16},
      {"block size 24, 2 chunks 90/40 at 50/0, D128 G4", 128, 32, 8, 24, 2, {90, 40}, {50, 0}, -1, 0, 1, DTYPE_F16},
  };
  const char *variants[] = {"4", "4x3", "8", "4r2", "4r2k32", "auto"};
  /* ATTNP_QUICK=1: the short cases only, no timings (for a run under compute-sanitizer) */
  const int quick = getenv("ATTNP_QUICK") && atoi(getenv("ATTNP_QUICK"));
  for (size_t i = quick ? 1 : 0; i < sizeof cases / sizeof cases[0]; i++) {
    batch_t b;
    batch_make(&b, &cases[i]);
    if (g_dead) return 1;
    int *zero = calloc(b.T, sizeof(int));
    float *ref = references(&b, &cases[i], zero);
    for (int v = 0; v < 6 && !g_dead; v++) run_case(&cases[i], variants[v], &b, ref, zero);
    free(ref), free(zero);
    batch_free(&b);
    if (g_dead) return 1;
  }
  check_refusals();
  printf("attn_prefill: %d passed, %d failed\n", n_pass, n_fail);
  if (quick) return n_fail ? 1 : 0;
  /* timings, H100 figures in docs/gpu.md: Llama-3-8B shapes (H 32, Hkv 8, D 128, bf16, blocks of 16) */
  const case_t timed[] = {
      {"prefill 2048 causal, Llama-3-8B", 128, 32, 8, 16, 1, {2048}, {0}, -1, 0, 1, DTYPE_BF16},
      {"prefill 8 x 256, Llama-3-8B", 128, 32, 8, 16, 8, {256, 256, 256, 256, 256, 256, 256, 256}, {0}, -1, 0, 1,
       DTYPE_BF16},
      {"chunk 512 at 1536, Llama-3-8B", 128, 32, 8, 16, 1, {512}, {1536}, -1, 0, 1, DTYPE_BF16},
      {"prefill 2048 causal, D64 H32 Hkv4", 64, 32, 4, 16, 1, {2048}, {0}, -1, 0, 1, DTYPE_BF16},
  };
  for (size_t i = 0; i < sizeof timed / sizeof timed[0] && !g_dead; i++) time_case(&timed[i]);
  return n_fail ? 1 : 0;
}
