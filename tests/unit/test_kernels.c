/* test_kernels.c: the CPU kernels against naive double-precision references, and their batch invariance. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/kernels.h"

/* ---- helpers ---- */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static float frand(void) { /* uniform in [-1, 1) */
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (float)((g_rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static float *rand_vec(size_t n) {
  float *v = malloc(n * sizeof(float));
  assert_non_null(v);
  for (size_t i = 0; i < n; i++) v[i] = frand();
  return v;
}

/* Encodes f (N,K) into TYPE the way GGML does (q8_0: absmax/127; q4_0: max/-8, offset 8). */
static void *encode(dtype_t type, const float *f, int N, int K) {
  size_t rb = dtype_row_bytes(type, K);
  assert_true(rb > 0);
  uint8_t *w = calloc((size_t)N, rb), *p = w;
  assert_non_null(w);
  size_t n = (size_t)N * K;
  for (size_t i = 0; i < n && (type == DTYPE_F32 || type == DTYPE_F16 || type == DTYPE_BF16); i++) {
    if (type == DTYPE_F32) memcpy(w + 4 * i, &f[i], 4);
    uint16_t h = type == DTYPE_F16 ? f32_to_f16(f[i]) : f32_to_bf16(f[i]);
    if (type != DTYPE_F32) memcpy(w + 2 * i, &h, 2);
  }
  for (size_t b = 0; b < n / 32 && type == DTYPE_Q8_0; b++, p += 34) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(f[b * 32 + j]));
    float d = amax / 127.0f;
    uint16_t h = f32_to_f16(d);
    memcpy(p, &h, 2);
    for (int j = 0; j < 32; j++) p[2 + j] = (uint8_t)(int8_t)lrintf(d > 0 ? f[b * 32 + j] / d : 0);
  }
  for (size_t b = 0; b < n / 32 && type == DTYPE_Q4_0; b++, p += 18) {
    float m = 0;
    for (int j = 0; j < 32; j++)
      if (fabsf(f[b * 32 + j]) > fabsf(m)) m = f[b * 32 + j];
    float d = m / -8.0f;
    uint16_t h = f32_to_f16(d);
    memcpy(p, &h, 2);
    for (int j = 0; j < 16; j++) {
      int lo = d != 0 ? (int)lrintf(f[b * 32 + j] / d) + 8 : 8, hi = d != 0 ? (int)lrintf(f[b * 32 + j + 16] / d) + 8 : 8;
      lo = lo < 0 ? 0 : lo > 15 ? 15 : lo;
      hi = hi < 0 ? 0 : hi > 15 ? 15 : hi;
      p[2 + j] = (uint8_t)(lo | hi << 4);
    }
  }
  return w;
}

/* Reference: dequantize with common's dtype_to_f32 (not the kernels' own converters), dot in double. */
static void ref_matmul(double *out, double *mag, const float *x, const void *w, dtype_t type, int N, int K,
                       const float *bias, int T) {
  float *row = malloc((size_t)K * sizeof(float));
  size_t rb = dtype_row_bytes(type, K);
  for (int n = 0; n < N; n++) {
    assert_int_equal(dtype_to_f32(type, (const uint8_t *)w + n * rb, row, K), 0);
    for (int t = 0; t < T; t++) {
      double s = bias ? bias[n] : 0, m = bias ? fabs(bias[n]) : 0;
      for (int k = 0; k < K; k++) {
        s += (double)x[(size_t)t * K + k] * row[k];
        m += fabs((double)x[(size_t)t * K + k] * row[k]);
      }
      out[(size_t)t * N + n] = s;
      mag[(size_t)t * N + n] = m;
    }
  }
  free(row);
}

static kern_pool_t *pool_of(int n) {
  kern_pool_t *p = NULL;
  assert_int_equal(kern_pool_new(&p, n), 0);
  return p;
}

/* ---- matmul ---- */

static const dtype_t k_wtypes[] = {DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_Q8_0, DTYPE_Q4_0};

/* Every dtype, odd T, N and K (K = 45 for plain types, 96 for block types), bias or not, both paths. */
static void check_matmul_accuracy(int portable) {
  kern_force_portable(portable);
  kern_pool_t *pool = pool_of(4);
  static const int Ts[] = {1, 3, 17};
  const int N = 37;
  for (size_t ti = 0; ti < sizeof(k_wtypes) / sizeof(k_wtypes[0]); ti++) {
    dtype_t type = k_wtypes[ti];
    int K = dtype_block_elems(type) > 1 ? 96 : 45;
    float *wf = rand_vec((size_t)N * K), *x = rand_vec((size_t)17 * K), *bias = rand_vec(N);
    void *w = encode(type, wf, N, K);
    float *out = malloc((size_t)17 * N * sizeof(float));
    double *ref = malloc((size_t)17 * N * sizeof(double)), *mag = malloc((size_t)17 * N * sizeof(double));
    for (int bi = 0; bi < 2; bi++)
      for (size_t tj = 0; tj < 3; tj++) {
        int T = Ts[tj];
        const float *b = bi ? bias : NULL;
        assert_int_equal(kern_matmul(out, x, w, type, N, K, b, T, tj == 1 ? NULL : pool), 0);
        ref_matmul(ref, mag, x, w, type, N, K, b, T);
        for (int i = 0; i < T * N; i++) /* f32 sums of K terms: a few ulps of the magnitude */
          if (fabs(out[i] - ref[i]) > 1e-6 * mag[i] + 1e-7)
            fail_msg("%s T=%d elem %d: %.9g vs %.9g", dtype_name(type), T, i, out[i], ref[i]);
      }
    free(wf), free(x), free(bias), free(w), free(out), free(ref), free(mag);
  }
  kern_pool_free(pool);
  kern_force_portable(0);
}

static void test_matmul_accuracy(void **state) { (void)state; check_matmul_accuracy(0); }
static void test_matmul_accuracy_portable(void **state) { (void)state; check_matmul_accuracy(1); }

/* Rows of a T=13 batch are bit-identical to the same rows computed one at a time, in other
 * groupings, and with 1 or 4 threads. */
static void test_matmul_batch_invariance(void **state) {
  (void)state;
  kern_pool_t *p1 = pool_of(1), *p4 = pool_of(4);
  const int T = 13, N = 50;
  static const int groupings[][4] = {{5, 8, 0, 0}, {1, 4, 8, 0}, {3, 3, 3, 4}, {12, 1, 0, 0}};
  for (size_t ti = 0; ti < sizeof(k_wtypes) / sizeof(k_wtypes[0]); ti++) {
    dtype_t type = k_wtypes[ti];
    int K = dtype_block_elems(type) > 1 ? 160 : 77;
    float *wf = rand_vec((size_t)N * K), *x = rand_vec((size_t)T * K), *bias = rand_vec(N);
    void *w = encode(type, wf, N, K);
    float *full = malloc((size_t)T * N * 4), *part = malloc((size_t)T * N * 4);
    assert_int_equal(kern_matmul(full, x, w, type, N, K, bias, T, p4), 0);
    for (int t = 0; t < T; t++)
      assert_int_equal(kern_matmul(part + (size_t)t * N, x + (size_t)t * K, w, type, N, K, bias, 1, p4), 0);
    assert_memory_equal(full, part, (size_t)T * N * 4);
    for (size_t g = 0; g < sizeof(groupings) / sizeof(groupings[0]); g++) {
      memset(part, 0, (size_t)T * N * 4);
      for (int i = 0, t0 = 0; i < 4 && groupings[g][i]; t0 += groupings[g][i++])
        assert_int_equal(kern_matmul(part + (size_t)t0 * N, x + (size_t)t0 * K, w, type, N, K, bias, groupings[g][i],
                                     g % 2 ? p1 : p4), 0);
      assert_memory_equal(full, part, (size_t)T * N * 4);
    }
    assert_int_equal(kern_matmul(part, x, w, type, N, K, bias, T, p1), 0);
    assert_memory_equal(full, part, (size_t)T * N * 4);
    free(wf), free(x), free(bias), free(w), free(full), free(part);
  }
  kern_pool_free(p1);
  kern_pool_free(p4);
}

/* A big enough matrix that the pool splits it into many jobs; still bit-identical to one row at a time. */
static void test_matmul_large_invariance(void **state) {
  (void)state;
  kern_pool_t *p4 = pool_of(4);
  const int T = 9, N = 301, K = 256;
  float *wf = rand_vec((size_t)N * K), *x = rand_vec((size_t)T * K);
  void *w = encode(DTYPE_BF16, wf, N, K);
  float *full = malloc((size_t)T * N * 4), *one = malloc((size_t)N * 4);
  assert_int_equal(kern_matmul(full, x, w, DTYPE_BF16, N, K, NULL, T, p4), 0);
  for (int t = 0; t < T; t++) {
    assert_int_equal(kern_matmul(one, x + (size_t)t * K, w, DTYPE_BF16, N, K, NULL, 1, NULL), 0);
    assert_memory_equal(full + (size_t)t * N, one, (size_t)N * 4);
  }
  free(wf), free(x), free(w), free(full), free(one);
  kern_pool_free(p4);
}

/* k-quants go through common's row dequantizer: random blocks with sane f16 scales, odd T and N,
 * against the reference, and one row at a time bit-identical to the batch. */
static void test_matmul_kquants(void **state) {
  (void)state;
  static const dtype_t types[] = {DTYPE_Q4_K, DTYPE_Q5_K, DTYPE_Q6_K};
  kern_pool_t *pool = pool_of(4);
  const int T = 5, N = 7, K = 512;
  float *x = rand_vec((size_t)T * K), *out = malloc((size_t)T * N * 4), *one = malloc((size_t)N * 4);
  double *ref = malloc((size_t)T * N * sizeof(double)), *mag = malloc((size_t)T * N * sizeof(double));
  for (size_t ti = 0; ti < 3; ti++) {
    dtype_t type = types[ti];
    size_t bb = dtype_block_bytes(type), nblk = (size_t)N * K / 256;
    uint8_t *w = malloc(nblk * bb);
    for (size_t i = 0; i < nblk * bb; i++) w[i] = (uint8_t)(frand() * 128 + 128);
    for (size_t b = 0; b < nblk; b++) { /* f16 scales: d, dmin at 0 (q4_k, q5_k); d at 208 (q6_k) */
      uint16_t d = f32_to_f16(0.01f + 0.01f * fabsf(frand())), dm = f32_to_f16(0.005f);
      memcpy(w + b * bb + (type == DTYPE_Q6_K ? 208 : 0), &d, 2);
      if (type != DTYPE_Q6_K) memcpy(w + b * bb + 2, &dm, 2);
    }
    float probe[256];
    if (dtype_to_f32(type, w, probe, 256) != 0) { /* no converter in common yet: must refuse cleanly */
      assert_int_equal(kern_matmul(out, x, w, type, N, K, NULL, T, pool), STRATA_EUNSUPPORTED);
      free(w);
      continue;
    }
    assert_int_equal(kern_matmul(out, x, w, type, N, K, NULL, T, pool), 0);
    ref_matmul(ref, mag, x, w, type, N, K, NULL, T);
    for (int i = 0; i < T * N; i++)
      if (fabs(out[i] - ref[i]) > 1e-6 * mag[i] + 1e-7) fail_msg("%s elem %d: %.9g vs %.9g", dtype_name(type), i, out[i], ref[i]);
    for (int t = 0; t < T; t++) {
      assert_int_equal(kern_matmul(one, x + (size_t)t * K, w, type, N, K, NULL, 1, NULL), 0);
      assert_memory_equal(one, out + (size_t)t * N, (size_t)N * 4);
    }
    free(w);
  }
  free(x), free(out), free(one), free(ref), free(mag);
  kern_pool_free(pool);
}

static void test_matmul_bad_dtype(void **state) {
  (void)state;
  float x[64] = {0}, out[2];
  uint8_t w[512] = {0};
  assert_int_equal(kern_matmul(out, x, w, DTYPE_Q8_0, 2, 33, NULL, 1, NULL), STRATA_EUNSUPPORTED); /* K % 32 */
  assert_int_equal(kern_matmul(out, x, w, DTYPE_I32, 2, 8, NULL, 1, NULL), STRATA_EUNSUPPORTED);
  assert_int_equal(kern_matmul(out, x, w, (dtype_t)99, 2, 8, NULL, 1, NULL), STRATA_EUNSUPPORTED);
}

/* ---- norms and element-wise ---- */

static void test_rmsnorm(void **state) {
  (void)state;
  kern_pool_t *pool = pool_of(4);
  const int rows = 7, C = 67;
  const float eps = 1e-5f;
  float *x = rand_vec((size_t)rows * C), *w = rand_vec(C), *r = rand_vec((size_t)rows * C);
  float *out = malloc((size_t)rows * C * 4), *res = malloc((size_t)rows * C * 4);
  memcpy(res, r, (size_t)rows * C * 4);
  kern_rmsnorm(out, x, w, rows, C, eps, pool);
  for (int i = 0; i < rows; i++) {
    double ss = 0;
    for (int c = 0; c < C; c++) ss += (double)x[i * C + c] * x[i * C + c];
    double inv = 1.0 / sqrt(ss / C + eps);
    for (int c = 0; c < C; c++) assert_float_equal(out[i * C + c], x[i * C + c] * inv * w[c], 2e-6);
  }
  kern_add_rmsnorm(out, res, x, w, rows, C, eps, pool);
  for (int i = 0; i < rows; i++) {
    double ss = 0;
    for (int c = 0; c < C; c++) {
      double s = (double)r[i * C + c] + x[i * C + c];
      assert_float_equal(res[i * C + c], s, 1e-6);
      ss += s * s;
    }
    double inv = 1.0 / sqrt(ss / C + eps);
    for (int c = 0; c < C; c++) assert_float_equal(out[i * C + c], res[i * C + c] * inv * w[c], 2e-6);
  }
  free(x), free(w), free(r), free(out), free(res);
  kern_pool_free(pool);
}

static void test_elementwise(void **state) {
  (void)state;
  kern_pool_t *pool = pool_of(4);
  const int T = 3, F = 20001; /* more than one job of elements */
  float *g = rand_vec((size_t)T * F), *u = rand_vec((size_t)T * F), *out = malloc((size_t)T * F * 4);
  for (int i = 0; i < T * F; i++) g[i] *= 8;
  kern_silu_mul(out, g, u, T, F, pool);
  for (int i = 0; i < T * F; i++) {
    double ref = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
    assert_float_equal(out[i], ref, 1e-6 * (1 + fabs(ref)));
  }
  kern_add(out, g, u, T, F, pool);
  for (int i = 0; i < T * F; i++) assert_true(out[i] == g[i] + u[i]);
  /* strided gate and up (one fused (T, 2F) buffer): against the formula, and the same bits as packed rows */
  float *gu = rand_vec((size_t)T * 2 * F), *ref2 = malloc((size_t)T * F * 4);
  for (int i = 0; i < T * 2 * F; i++) gu[i] *= 8;
  kern_silu_mul_ld(out, gu, gu + F, T, F, 2 * F, pool);
  for (int t = 0; t < T; t++)
    for (int i = 0; i < F; i++) {
      double gv = gu[(size_t)t * 2 * F + i], uv = gu[(size_t)t * 2 * F + F + i], ref = gv / (1.0 + exp(-gv)) * uv;
      assert_float_equal(out[(size_t)t * F + i], ref, 1e-6 * (1 + fabs(ref)));
      g[(size_t)t * F + i] = (float)gv, u[(size_t)t * F + i] = (float)uv;
    }
  kern_silu_mul(ref2, g, u, T, F, pool);
  assert_memory_equal(out, ref2, (size_t)T * F * 4);
  free(gu), free(ref2);
  int32_t rows[3] = {2, 0, 2};
  float *gat = malloc((size_t)3 * F * 4);
  kern_gather_rows(gat, g, rows, 3, F);
  for (int i = 0; i < 3; i++) assert_memory_equal(gat + (size_t)i * F, g + (size_t)rows[i] * F, (size_t)F * 4);
  free(g), free(u), free(out), free(gat);
  kern_pool_free(pool);
}

static void test_embed(void **state) {
  (void)state;
  kern_pool_t *pool = pool_of(2);
  const int V = 11, C = 64;
  int32_t ids[5] = {3, 0, 10, 3, 7};
  float *f = rand_vec((size_t)V * C), *out = malloc((size_t)5 * C * 4), *ref = malloc((size_t)C * 4);
  for (size_t ti = 0; ti < sizeof(k_wtypes) / sizeof(k_wtypes[0]); ti++) {
    void *w = encode(k_wtypes[ti], f, V, C);
    size_t rb = dtype_row_bytes(k_wtypes[ti], C);
    assert_int_equal(kern_embed(out, w, k_wtypes[ti], V, C, ids, 5, pool), 0);
    for (int t = 0; t < 5; t++) {
      dtype_to_f32(k_wtypes[ti], (uint8_t *)w + ids[t] * rb, ref, C);
      assert_memory_equal(out + (size_t)t * C, ref, (size_t)C * 4);
    }
    free(w);
  }
  int32_t bad[2] = {-1, V};
  assert_int_equal(kern_embed(out, f, DTYPE_F32, V, C, bad, 2, pool), 0);
  for (int i = 0; i < 2 * C; i++) assert_true(out[i] == 0.0f);
  assert_int_equal(kern_embed(out, f, DTYPE_Q8_0, V, 33, ids, 1, pool), STRATA_EUNSUPPORTED);
  free(f), free(out), free(ref);
  kern_pool_free(pool);
}

/* ---- RoPE and the KV write ---- */

static float *kv_at(kern_kv_t *kv, int block, int layer, int which, int h, int off) {
  size_t he = (size_t)kv->block_size * kv->head_dim;
  return kv->data + (size_t)block * kv->n_layers * 2 * kv->n_kv_heads * he +
         ((size_t)(layer * 2 + which) * kv->n_kv_heads + h) * he + (size_t)off * kv->head_dim;
}

static kern_kv_t kv_new(int n_blocks, int L, int Hkv, int B, int D) {
  kern_kv_t kv = {.n_blocks = n_blocks, .n_layers = L, .n_kv_heads = Hkv, .block_size = B, .head_dim = D};
  kv.data = calloc((size_t)n_blocks * L * 2 * Hkv * B * D, sizeof(float));
  assert_non_null(kv.data);
  return kv;
}

static void ref_rope(double *out, const float *x, int n_heads, int D, int style, int pos, const float *inv_freq) {
  for (int h = 0; h < n_heads; h++)
    for (int i = 0; i < D / 2; i++) {
      int i0 = style ? i : 2 * i, i1 = style ? i + D / 2 : 2 * i + 1;
      double a = (double)pos * inv_freq[i], x0 = x[h * D + i0], x1 = x[h * D + i1];
      out[h * D + i0] = x0 * cos(a) - x1 * sin(a);
      out[h * D + i1] = x0 * sin(a) + x1 * cos(a);
    }
}

static void test_rope_kv_write(void **state) {
  (void)state;
  kern_pool_t *pool = pool_of(4);
  const int T = 3, H = 4, Hkv = 2, D = 18, B = 4, L = 2, layer = 1;
  int32_t positions[3] = {0, 1000, 32767}, slots[3] = {5, 2 * B + 3, 1 * B + 0};
  float inv_freq[9];
  for (int i = 0; i < D / 2; i++) inv_freq[i] = (float)pow(10000.0, -2.0 * i / D);
  for (int style = 0; style < 2; style++) {
    kern_kv_t kv = kv_new(4, L, Hkv, B, D);
    float *q = rand_vec((size_t)T * H * D), *k = rand_vec((size_t)T * Hkv * D), *v = rand_vec((size_t)T * Hkv * D);
    float *q0 = malloc((size_t)T * H * D * 4), *k0 = malloc((size_t)T * Hkv * D * 4);
    memcpy(q0, q, (size_t)T * H * D * 4);
    memcpy(k0, k, (size_t)T * Hkv * D * 4);
    kern_rope_kv_write(q, k, v, &kv, layer, positions, slots, T, H, style, inv_freq, pool);
    double ref[4 * 18];
    for (int t = 0; t < T; t++) {
      ref_rope(ref, q0 + t * H * D, H, D, style, positions[t], inv_freq);
      for (int i = 0; i < H * D; i++) assert_float_equal(q[t * H * D + i], ref[i], 1e-6 * (1 + fabs(ref[i])));
      ref_rope(ref, k0 + t * Hkv * D, Hkv, D, style, positions[t], inv_freq);
      for (int i = 0; i < Hkv * D; i++) assert_float_equal(k[t * Hkv * D + i], ref[i], 1e-6 * (1 + fabs(ref[i])));
      for (int h = 0; h < Hkv; h++) { /* the cache holds the rotated k and the plain v */
        assert_memory_equal(kv_at(&kv, slots[t] / B, layer, 0, h, slots[t] % B), k + (t * Hkv + h) * D, D * 4);
        assert_memory_equal(kv_at(&kv, slots[t] / B, layer, 1, h, slots[t] % B), v + (t * Hkv + h) * D, D * 4);
        assert_true(kv_at(&kv, slots[t] / B, 0, 0, h, slots[t] % B)[0] == 0.0f); /* other layer untouched */
      }
    }
    /* position 0 is the identity */
    assert_memory_equal(q, q0, (size_t)H * D * 4);
    int32_t bad_slot = 4 * B; /* outside the cache: rotated, not written, no crash */
    kern_rope_kv_write(q, k, v, &kv, layer, positions, &bad_slot, 1, H, style, inv_freq, pool);
    free(kv.data), free(q), free(k), free(v), free(q0), free(k0);
  }
  kern_pool_free(pool);
}

/* Naive RMSNorm of one head in double (Qwen3's q/k norm). */
static void ref_head_norm(float *out, const float *x, const float *w, int D, float eps) {
  double ss = 0;
  for (int i = 0; i < D; i++) ss += (double)x[i] * x[i];
  double inv = 1.0 / sqrt(ss / D + eps);
  for (int i = 0; i < D; i++) out[i] = (float)(x[i] * inv * w[i]);
}

/* The fused-projection variant: q, k, v read from strided rows of one (T, LD) buffer, with and without the
 * per-head norm, against the naive references, and bit-identical to rmsnorm + kern_rope_kv_write. */
static void test_rope_qkv_write(void **state) {
  (void)state;
  kern_pool_t *pool = pool_of(3);
  enum { T = 3, H = 4, Hkv = 2, D = 18, B = 4, L = 2, layer = 1, N = (H + 2 * Hkv) * D, LD = N + 5 };
  int32_t positions[T] = {0, 77, 32767}, slots[T] = {5, 2 * B + 3, 1 * B + 0};
  float inv_freq[D / 2];
  for (int i = 0; i < D / 2; i++) inv_freq[i] = (float)pow(10000.0, -2.0 * i / D);
  const float eps = 1e-6f;
  for (int style = 0; style < 2; style++) {
    for (int norm = 0; norm < 2; norm++) {
      float *qkv = rand_vec((size_t)T * LD), *qn = rand_vec(D), *kn = rand_vec(D);
      float *qkv0 = malloc((size_t)T * LD * 4), *q_out = malloc((size_t)T * H * D * 4);
      memcpy(qkv0, qkv, (size_t)T * LD * 4);
      kern_kv_t kv = kv_new(4, L, Hkv, B, D);
      kern_rope_qkv_write(q_out, qkv, LD, norm ? qn : NULL, norm ? kn : NULL, eps, &kv, layer, positions, slots, T, H,
                          style, inv_freq, pool);
      assert_memory_equal(qkv, qkv0, (size_t)T * LD * 4); /* read only */
      double ref[H * D];
      float head[D];
      for (int t = 0; t < T; t++) {
        const float *row = qkv + (size_t)t * LD;
        for (int h = 0; h < H + Hkv; h++) {
          const float *src = row + (size_t)h * D;
          if (norm)
            ref_head_norm(head, src, h < H ? qn : kn, D, eps);
          else
            memcpy(head, src, sizeof head);
          ref_rope(ref, head, 1, D, style, positions[t], inv_freq);
          const float *got = h < H ? q_out + ((size_t)t * H + h) * D
                                   : kv_at(&kv, slots[t] / B, layer, 0, h - H, slots[t] % B);
          for (int i = 0; i < D; i++) assert_float_equal(got[i], ref[i], 2e-6 * (1 + fabs(ref[i])));
        }
        for (int h = 0; h < Hkv; h++) /* v: copied as it is */
          assert_memory_equal(kv_at(&kv, slots[t] / B, layer, 1, h, slots[t] % B), row + (size_t)(H + Hkv + h) * D,
                              D * 4);
      }
      /* the same bits as the separate ops: (rmsnorm of each head,) then kern_rope_kv_write on packed q, k, v */
      float *q = malloc((size_t)T * H * D * 4), *k = malloc((size_t)T * Hkv * D * 4), *v = malloc((size_t)T * Hkv * D * 4);
      for (int t = 0; t < T; t++) {
        memcpy(q + (size_t)t * H * D, qkv + (size_t)t * LD, (size_t)H * D * 4);
        memcpy(k + (size_t)t * Hkv * D, qkv + (size_t)t * LD + H * D, (size_t)Hkv * D * 4);
        memcpy(v + (size_t)t * Hkv * D, qkv + (size_t)t * LD + (H + Hkv) * D, (size_t)Hkv * D * 4);
      }
      if (norm) {
        kern_rmsnorm(q, q, qn, T * H, D, eps, NULL);
        kern_rmsnorm(k, k, kn, T * Hkv, D, eps, NULL);
      }
      kern_kv_t kv2 = kv_new(4, L, Hkv, B, D);
      kern_rope_kv_write(q, k, v, &kv2, layer, positions, slots, T, H, style, inv_freq, NULL);
      assert_memory_equal(q, q_out, (size_t)T * H * D * 4);
      assert_memory_equal(kv.data, kv2.data, (size_t)4 * L * 2 * Hkv * B * D * 4);
      /* a slot outside the cache: q still written, the cache untouched */
      int32_t bad_slot = 4 * B;
      memset(q_out, 0, (size_t)H * D * 4);
      kern_rope_qkv_write(q_out, qkv + LD, LD, norm ? qn : NULL, norm ? kn : NULL, eps, &kv, layer, positions + 1,
                          &bad_slot, 1, H, style, inv_freq, pool);
      assert_memory_equal(q_out, q + H * D, (size_t)H * D * 4);
      assert_memory_equal(kv.data, kv2.data, (size_t)4 * L * 2 * Hkv * B * D * 4);
      free(qkv), free(qkv0), free(qn), free(kn), free(q_out), free(q), free(k), free(v), free(kv.data), free(kv2.data);
    }
  }
  kern_pool_free(pool);
}

/* ---- attention ---- */

/* Naive reference for one query row: softmax over positions 0..pos in double. */
static void ref_attention(double *out, const float *q, kern_kv_t *kv, int layer, const int32_t *bt, int pos, int H,
                          float scale) {
  int Hkv = kv->n_kv_heads, D = kv->head_dim, B = kv->block_size;
  double *s = malloc((size_t)(pos + 1) * sizeof(double));
  for (int h = 0; h < H; h++) {
    int g = h / (H / Hkv);
    double m = -INFINITY, sum = 0;
    for (int p = 0; p <= pos; p++) {
      const float *k = kv_at(kv, bt[p / B], layer, 0, g, p % B);
      double d = 0;
      for (int i = 0; i < D; i++) d += (double)q[h * D + i] * k[i];
      s[p] = d * scale;
      m = fmax(m, s[p]);
    }
    for (int p = 0; p <= pos; p++) sum += (s[p] = exp(s[p] - m));
    for (int i = 0; i < D; i++) {
      double o = 0;
      for (int p = 0; p <= pos; p++) o += s[p] / sum * kv_at(kv, bt[p / B], layer, 1, g, p % B)[i];
      out[h * D + i] = o;
    }
  }
  free(s);
}

static void fill_kv(kern_kv_t *kv) {
  size_t n = (size_t)kv->n_blocks * kv->n_layers * 2 * kv->n_kv_heads * kv->block_size * kv->head_dim;
  for (size_t i = 0; i < n; i++) kv->data[i] = 2 * frand();
}

/* A ragged batch: a 6-token prefill chunk of sequence 0 (positions 5..10) and one decode of
 * sequence 1 (position 6); blocks of 4 scattered through the cache; GQA ratios 1, 2 and 4. */
static void test_attention_accuracy(void **state) {
  (void)state;
  kern_pool_t *pool = pool_of(4);
  const int H = 4, D = 20, B = 4, L = 2, layer = 1, T = 7, max_blocks = 3;
  int32_t positions[7] = {5, 6, 7, 8, 9, 10, 6}, seq_of[7] = {0, 0, 0, 0, 0, 0, 1};
  int32_t bt[6] = {7, 2, 5, 1, 6, 0};
  const float scale = 1.0f / sqrtf((float)D);
  for (int Hkv = 4; Hkv >= 1; Hkv /= 2) {
    for (int portable = 0; portable < 2; portable++) {
      kern_force_portable(portable);
      kern_kv_t kv = kv_new(8, L, Hkv, B, D);
      fill_kv(&kv);
      float *q = rand_vec((size_t)T * H * D), *out = malloc((size_t)T * H * D * 4);
      for (int i = 0; i < T * H * D; i++) q[i] *= 3;
      kern_attention(out, q, &kv, layer, positions, seq_of, bt, max_blocks, T, H, scale, pool);
      double ref[4 * 20];
      for (int t = 0; t < T; t++) {
        ref_attention(ref, q + t * H * D, &kv, layer, bt + seq_of[t] * max_blocks, positions[t], H, scale);
        for (int i = 0; i < H * D; i++)
          if (fabs(out[t * H * D + i] - ref[i]) > 2e-6 * (1 + fabs(ref[i])))
            fail_msg("Hkv=%d t=%d i=%d: %.9g vs %.9g", Hkv, t, i, out[t * H * D + i], ref[i]);
      }
      /* a block id outside the cache gives zeros for that query, not a crash */
      int32_t bad_bt[3] = {7, 99, 5}, zero_seq = 0, p9 = 9;
      kern_attention(out, q, &kv, layer, &p9, &zero_seq, bad_bt, 3, 1, H, scale, pool);
      for (int i = 0; i < H * D; i++) assert_true(out[i] == 0.0f);
      free(kv.data), free(q), free(out);
    }
  }
  kern_force_portable(0);
  kern_pool_free(pool);
}

/* A 40-token prefill equals, bit for bit, a 25-token chunk then 15 single decodes (each batched
 * with another sequence's decode), on 1 and 4 threads. */
static void test_attention_chunk_invariance(void **state) {
  (void)state;
  kern_pool_t *p1 = pool_of(1), *p4 = pool_of(4);
  const int H = 8, Hkv = 2, D = 32, B = 16, L = 1, T = 40, max_blocks = 3;
  kern_kv_t kv = kv_new(8, L, Hkv, B, D);
  fill_kv(&kv);
  int32_t bt[6] = {3, 6, 1, 4, 2, 7};
  int32_t positions[40], seq_of[40] = {0};
  for (int t = 0; t < T; t++) positions[t] = t;
  float *q = rand_vec((size_t)T * H * D), *full = malloc((size_t)T * H * D * 4), *part = malloc((size_t)T * H * D * 4);
  float *qq = rand_vec((size_t)2 * H * D), *oo = malloc((size_t)2 * H * D * 4);
  kern_attention(full, q, &kv, 0, positions, seq_of, bt, max_blocks, T, H, 0.17f, p4);
  kern_attention(part, q, &kv, 0, positions, seq_of, bt, max_blocks, 25, H, 0.17f, p1);
  for (int t = 25; t < T; t++) { /* decode of sequence 1 first, ours second */
    int32_t pos2[2] = {t % 30, t}, seq2[2] = {1, 0};
    memcpy(qq + H * D, q + (size_t)t * H * D, (size_t)H * D * 4);
    kern_attention(oo, qq, &kv, 0, pos2, seq2, bt, max_blocks, 2, H, 0.17f, t % 2 ? p1 : p4);
    memcpy(part + (size_t)t * H * D, oo + H * D, (size_t)H * D * 4);
  }
  assert_memory_equal(full, part, (size_t)T * H * D * 4);
  free(kv.data), free(q), free(full), free(part), free(qq), free(oo);
  kern_pool_free(p1);
  kern_pool_free(p4);
}

/* The pool runs every job exactly once, whatever the thread count. */
static void count_job(void *arg, int64_t job, kern_worker_t *w) {
  (void)w;
  __atomic_fetch_add(&((int *)arg)[job], 1, __ATOMIC_RELAXED);
}

static void test_pool(void **state) {
  (void)state;
  int counts[1000];
  for (int n = 0; n <= 5; n++) {
    kern_pool_t *p = pool_of(n);
    assert_true(kern_pool_size(p) >= 1);
    for (int rep = 0; rep < 20; rep++) {
      memset(counts, 0, sizeof(counts));
      kern_pool_run(p, count_job, counts, 1000);
      for (int i = 0; i < 1000; i++) assert_int_equal(counts[i], 1);
    }
    kern_pool_free(p);
  }
  kern_pool_t *p = NULL;
  assert_int_equal(kern_pool_new(&p, -1), STRATA_EINVAL);
  assert_null(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pool),
      cmocka_unit_test(test_matmul_accuracy),
      cmocka_unit_test(test_matmul_accuracy_portable),
      cmocka_unit_test(test_matmul_batch_invariance),
      cmocka_unit_test(test_matmul_large_invariance),
      cmocka_unit_test(test_matmul_kquants),
      cmocka_unit_test(test_matmul_bad_dtype),
      cmocka_unit_test(test_rmsnorm),
      cmocka_unit_test(test_elementwise),
      cmocka_unit_test(test_embed),
      cmocka_unit_test(test_rope_kv_write),
      cmocka_unit_test(test_rope_qkv_write),
      cmocka_unit_test(test_attention_accuracy),
      cmocka_unit_test(test_attention_chunk_invariance),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
