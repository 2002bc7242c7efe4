/* matmul.c: out(T,N) = x(T,K) @ w(N,K)^T + bias, weights in any stored dtype, batch-invariant.
 *
 * NOTE: batch invariance. Each output element is one dot product computed the same way everywhere:
 * on AVX2, 8 lanes of FMA over k = 0, 8, 16, ... in order (the K tail masked into the same lanes),
 * then one fixed horizontal sum, then + bias; on the portable path, one float accumulator in k
 * order. The micro-kernel tiles MR tokens x NR weight rows so that every weight row loaded is used
 * for MR tokens, but a tile only decides which dot products run together, never how each one is
 * reduced, so the result of a row does not depend on T, on the tiling or on the thread. K is never
 * split. This is why the default path does not call BLAS (its blocking depends on the shape). */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "kernels/cpu/cpu_int.h"

enum {
  MM_MR = 4,  /* tokens per micro-kernel tile */
  MM_NR = 3,  /* weight rows per micro-kernel tile: 12 accumulators + 3 weights + 1 token = 16 ymm */
  MM_NB = 48, /* weight rows per job: the dequantized panel (NB x K f32) stays in L2 */
};

typedef struct {
  float *out;           /* (T,N) */
  const float *x;       /* (T,K) */
  const uint8_t *w;     /* (N,K) in wtype */
  const float *bias;    /* (N) or NULL */
  dtype_t wtype;
  int N, K, T;
  size_t row_bytes;     /* bytes of one weight row */
  int nb, tb, n_nblk;   /* job tiling: NB weight rows x TB tokens */
  int avx2;
  atomic_int err;
} mm_task_t;

/* ---- dequantization of weight rows (the values equal dtype_to_f32's, bit for bit) ---- */

#ifdef KERN_X86
KERN_AVX2 static void deq_row_avx2(dtype_t t, const uint8_t *p, float *dst, int K) {
  int i = 0;
  switch (t) {
    case DTYPE_BF16:
      for (; i + 8 <= K; i += 8) {
        __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 2 * i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(u, 16)));
      }
      dtype_to_f32(t, p + 2 * i, dst + i, K - i);
      return;
    case DTYPE_F16:
      for (; i + 8 <= K; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i))));
      dtype_to_f32(t, p + 2 * i, dst + i, K - i);
      return;
    case DTYPE_Q8_0: /* { f16 d; int8 q[32]; } */
      for (; i < K; i += 32, p += 34) {
        uint16_t h;
        memcpy(&h, p, 2);
        __m256 d = _mm256_set1_ps(f16_to_f32(h));
        for (int j = 0; j < 32; j += 8) {
          __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 2 + j)));
          _mm256_storeu_ps(dst + i + j, _mm256_mul_ps(d, _mm256_cvtepi32_ps(q)));
        }
      }
      return;
    case DTYPE_Q4_0: /* { f16 d; uint8 q[16]; }: low nibbles are elements 0..15, high ones 16..31 */
      for (; i < K; i += 32, p += 18) {
        uint16_t h;
        memcpy(&h, p, 2);
        __m256 d = _mm256_set1_ps(f16_to_f32(h));
        __m128i q = _mm_loadu_si128((const __m128i *)(p + 2));
        __m128i m = _mm_set1_epi8(0x0f), eight = _mm_set1_epi8(8);
        __m128i lo = _mm_sub_epi8(_mm_and_si128(q, m), eight);
        __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m), eight);
        const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
        for (int j = 0; j < 4; j++)
          _mm256_storeu_ps(dst + i + 8 * j, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[j]))));
      }
      return;
    default:
      dtype_to_f32(t, p, dst, K);
      return;
  }
}

/* One tile of MR <= 4 tokens x NR <= 3 weight rows: out[i][j] = dot(x[i], w[j]) (+ bias[j]).
 * Accumulators are named (GCC keeps arrays of vectors on the stack). A partial tile repeats its
 * last row or column in the spare accumulators and stores only the MR x NR results. Per element:
 * 8 lanes of FMA over k in order, the K tail masked into the same lanes, kern_hsum256, + bias. */
KERN_AVX2 static void mm_tile43_avx2(float *out, int ldo, const float *x, const float *w, int K,
                                     const float *bias, int mr, int nr) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00;
  __m256 c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
  const float *w0 = w, *w1 = w + (size_t)(nr > 1 ? 1 : 0) * K, *w2 = w + (size_t)(nr > 2 ? 2 : nr - 1) * K;
  const float *x0 = x, *x1 = x + (size_t)(mr > 1 ? 1 : 0) * K, *x2 = x + (size_t)(mr > 2 ? 2 : mr - 1) * K;
  const float *x3 = x + (size_t)(mr > 3 ? 3 : mr - 1) * K;
  int k = 0;
#define MM_STEP(LOAD)                                                                       \
  do {                                                                                      \
    __m256 b0 = LOAD(w0 + k), b1 = LOAD(w1 + k), b2 = LOAD(w2 + k), a;                     \
    a = LOAD(x0 + k);                                                                       \
    c00 = _mm256_fmadd_ps(a, b0, c00), c01 = _mm256_fmadd_ps(a, b1, c01), c02 = _mm256_fmadd_ps(a, b2, c02); \
    a = LOAD(x1 + k);                                                                       \
    c10 = _mm256_fmadd_ps(a, b0, c10), c11 = _mm256_fmadd_ps(a, b1, c11), c12 = _mm256_fmadd_ps(a, b2, c12); \
    a = LOAD(x2 + k);                                                                       \
    c20 = _mm256_fmadd_ps(a, b0, c20), c21 = _mm256_fmadd_ps(a, b1, c21), c22 = _mm256_fmadd_ps(a, b2, c22); \
    a = LOAD(x3 + k);                                                                       \
    c30 = _mm256_fmadd_ps(a, b0, c30), c31 = _mm256_fmadd_ps(a, b1, c31), c32 = _mm256_fmadd_ps(a, b2, c32); \
  } while (0)
  for (; k + 8 <= K; k += 8) MM_STEP(_mm256_loadu_ps);
  if (k < K) {
    __m256i m = kern_tail_mask(K - k);
#define MM_MASKLOAD(p) _mm256_maskload_ps((p), m)
    MM_STEP(MM_MASKLOAD);
#undef MM_MASKLOAD
  }
#undef MM_STEP
  const __m256 c[4][3] = {{c00, c01, c02}, {c10, c11, c12}, {c20, c21, c22}, {c30, c31, c32}};
  for (int i = 0; i < mr; i++)
    for (int j = 0; j < nr; j++) {
      float r = kern_hsum256(c[i][j]);
      if (bias) r += bias[j];
      out[(size_t)i * ldo + j] = r;
    }
}

/* The one-token tile (decode is a GEMV): 1 token x NR <= 4 weight rows, the same per-element
 * operations as mm_tile43_avx2. */
KERN_AVX2 static void mm_tile14_avx2(float *out, const float *x, const float *w, int K, const float *bias, int nr) {
  __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
  const float *w0 = w, *w1 = w + (size_t)(nr > 1 ? 1 : 0) * K, *w2 = w + (size_t)(nr > 2 ? 2 : nr - 1) * K;
  const float *w3 = w + (size_t)(nr > 3 ? 3 : nr - 1) * K;
  int k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 a = _mm256_loadu_ps(x + k);
    c0 = _mm256_fmadd_ps(a, _mm256_loadu_ps(w0 + k), c0);
    c1 = _mm256_fmadd_ps(a, _mm256_loadu_ps(w1 + k), c1);
    c2 = _mm256_fmadd_ps(a, _mm256_loadu_ps(w2 + k), c2);
    c3 = _mm256_fmadd_ps(a, _mm256_loadu_ps(w3 + k), c3);
  }
  if (k < K) {
    __m256i m = kern_tail_mask(K - k);
    __m256 a = _mm256_maskload_ps(x + k, m);
    c0 = _mm256_fmadd_ps(a, _mm256_maskload_ps(w0 + k, m), c0);
    c1 = _mm256_fmadd_ps(a, _mm256_maskload_ps(w1 + k, m), c1);
    c2 = _mm256_fmadd_ps(a, _mm256_maskload_ps(w2 + k, m), c2);
    c3 = _mm256_fmadd_ps(a, _mm256_maskload_ps(w3 + k, m), c3);
  }
  const __m256 c[4] = {c0, c1, c2, c3};
  for (int j = 0; j < nr; j++) {
    float r = kern_hsum256(c[j]);
    if (bias) r += bias[j];
    out[j] = r;
  }
}

/* Eight weights w[k..k+7] of a row in TYPE as f32, equal to dtype_to_f32's values (k % 8 == 0; for
 * the plain 16-bit types the row must hold 8 elements from k: the tail goes through mm_tail8). */
KERN_AVX2 static inline __attribute__((always_inline)) __m256 mm_load8(dtype_t type, const uint8_t *row, int k) {
  switch (type) {
    case DTYPE_BF16:
      return _mm256_castsi256_ps(
          _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(row + 2 * (size_t)k))), 16));
    case DTYPE_F16:
      return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 2 * (size_t)k)));
    case DTYPE_Q8_0: {
      const uint8_t *b = row + (size_t)(k >> 5) * 34;
      uint16_t h;
      memcpy(&h, b, 2);
      __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + (k & 31)))));
      return _mm256_mul_ps(_mm256_cvtph_ps(_mm_set1_epi16((short)h)), q);
    }
    case DTYPE_Q4_0: {
      const uint8_t *b = row + (size_t)(k >> 5) * 18;
      int j = k & 31;
      uint16_t h;
      memcpy(&h, b, 2);
      __m128i q = _mm_loadl_epi64((const __m128i *)(b + 2 + (j & 15)));
      if (j >= 16) q = _mm_srli_epi16(q, 4);
      q = _mm_sub_epi8(_mm_and_si128(q, _mm_set1_epi8(0x0f)), _mm_set1_epi8(8));
      return _mm256_mul_ps(_mm256_cvtph_ps(_mm_set1_epi16((short)h)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
    }
    default:
      return _mm256_loadu_ps((const float *)row + k);
  }
}

/* The K tail (K % 8 elements from k, plain types only) zero-padded: the lanes a masked load would give. */
static inline void mm_tail8(float *buf, dtype_t type, const uint8_t *row, int k, int K) {
  memset(buf, 0, 8 * sizeof(float));
  dtype_to_f32(type, row + (size_t)k * (type == DTYPE_F32 ? 4 : 2), buf, K - k);
}

/* c += x[k..k+32] * w[k..k+32] for one q8_0 / q4_0 block, as 4 FMAs of 8 lanes in k order (the same
 * operations as four mm_load8 steps). */
KERN_AVX2 static inline __attribute__((always_inline)) __m256 mm_fma_block(dtype_t type, __m256 a0, __m256 a1,
                                                                          __m256 a2, __m256 a3, const uint8_t *row,
                                                                          int k, __m256 c) {
  uint16_t h;
  __m128i q0, q1, q2, q3;
  if (type == DTYPE_Q8_0) {
    const uint8_t *b = row + (size_t)(k >> 5) * 34;
    memcpy(&h, b, 2);
    __m128i lo = _mm_loadu_si128((const __m128i *)(b + 2)), hi = _mm_loadu_si128((const __m128i *)(b + 18));
    q0 = lo, q1 = _mm_srli_si128(lo, 8), q2 = hi, q3 = _mm_srli_si128(hi, 8);
  } else {
    const uint8_t *b = row + (size_t)(k >> 5) * 18;
    memcpy(&h, b, 2);
    __m128i q = _mm_loadu_si128((const __m128i *)(b + 2)), m = _mm_set1_epi8(0x0f), eight = _mm_set1_epi8(8);
    __m128i lo = _mm_sub_epi8(_mm_and_si128(q, m), eight);
    __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m), eight);
    q0 = lo, q1 = _mm_srli_si128(lo, 8), q2 = hi, q3 = _mm_srli_si128(hi, 8);
  }
  __m256 d = _mm256_cvtph_ps(_mm_set1_epi16((short)h));
#define MM_Q8(q) _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)))
  c = _mm256_fmadd_ps(a0, MM_Q8(q0), c);
  c = _mm256_fmadd_ps(a1, MM_Q8(q1), c);
  c = _mm256_fmadd_ps(a2, MM_Q8(q2), c);
  c = _mm256_fmadd_ps(a3, MM_Q8(q3), c);
#undef MM_Q8
  return c;
}

/* One token x NR <= 4 weight rows read straight from their stored dtype (decode: no scratch round
 * trip). The same per-element operations as mm_tile14_avx2 on dequantized rows. */
KERN_AVX2 static inline __attribute__((always_inline)) void mm_gemv14(dtype_t type, float *out, const float *x,
                                                                     const uint8_t *w, size_t rb, int K,
                                                                     const float *bias, int nr) {
  __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
  const uint8_t *w0 = w, *w1 = w + (nr > 1 ? 1 : 0) * rb, *w2 = w + (size_t)(nr > 2 ? 2 : nr - 1) * rb;
  const uint8_t *w3 = w + (size_t)(nr > 3 ? 3 : nr - 1) * rb;
  int k = 0;
  if (type == DTYPE_Q8_0 || type == DTYPE_Q4_0) /* block by block: one scale per 32 weights */
    for (; k < K; k += 32) {
      __m256 a0 = _mm256_loadu_ps(x + k), a1 = _mm256_loadu_ps(x + k + 8);
      __m256 a2 = _mm256_loadu_ps(x + k + 16), a3 = _mm256_loadu_ps(x + k + 24);
      c0 = mm_fma_block(type, a0, a1, a2, a3, w0, k, c0);
      c1 = mm_fma_block(type, a0, a1, a2, a3, w1, k, c1);
      c2 = mm_fma_block(type, a0, a1, a2, a3, w2, k, c2);
      c3 = mm_fma_block(type, a0, a1, a2, a3, w3, k, c3);
    }
  for (; k + 8 <= K; k += 8) {
    __m256 a = _mm256_loadu_ps(x + k);
    c0 = _mm256_fmadd_ps(a, mm_load8(type, w0, k), c0);
    c1 = _mm256_fmadd_ps(a, mm_load8(type, w1, k), c1);
    c2 = _mm256_fmadd_ps(a, mm_load8(type, w2, k), c2);
    c3 = _mm256_fmadd_ps(a, mm_load8(type, w3, k), c3);
  }
  if (k < K) {
    float t0[8], t1[8], t2[8], t3[8];
    mm_tail8(t0, type, w0, k, K), mm_tail8(t1, type, w1, k, K), mm_tail8(t2, type, w2, k, K);
    mm_tail8(t3, type, w3, k, K);
    __m256 a = _mm256_maskload_ps(x + k, kern_tail_mask(K - k));
    c0 = _mm256_fmadd_ps(a, _mm256_loadu_ps(t0), c0);
    c1 = _mm256_fmadd_ps(a, _mm256_loadu_ps(t1), c1);
    c2 = _mm256_fmadd_ps(a, _mm256_loadu_ps(t2), c2);
    c3 = _mm256_fmadd_ps(a, _mm256_loadu_ps(t3), c3);
  }
  const __m256 c[4] = {c0, c1, c2, c3};
  for (int j = 0; j < nr; j++) {
    float r = kern_hsum256(c[j]);
    if (bias) r += bias[j];
    out[j] = r;
  }
}

#define MM_GEMV_FN(name, type)                                                                                 \
  KERN_AVX2 static void name(float *out, const float *x, const uint8_t *w, size_t rb, int K, const float *bias, \
                             int nn) {                                                                         \
    for (int n = 0; n < nn; n += 4)                                                                            \
      mm_gemv14(type, out + n, x, w + (size_t)n * rb, rb, K, bias ? bias + n : NULL, nn - n < 4 ? nn - n : 4); \
  }
MM_GEMV_FN(mm_gemv_bf16, DTYPE_BF16)
MM_GEMV_FN(mm_gemv_f16, DTYPE_F16)
MM_GEMV_FN(mm_gemv_q8_0, DTYPE_Q8_0)
MM_GEMV_FN(mm_gemv_q4_0, DTYPE_Q4_0)

/* mm_gemv_avx2: out(nn) = w(nn rows) @ x for the dtypes with a fused loader; 0 when done, -1 if not. */
static int mm_gemv_avx2(dtype_t type, float *out, const float *x, const uint8_t *w, size_t rb, int K,
                        const float *bias, int nn) {
  switch (type) {
    case DTYPE_BF16: mm_gemv_bf16(out, x, w, rb, K, bias, nn); return 0;
    case DTYPE_F16: mm_gemv_f16(out, x, w, rb, K, bias, nn); return 0;
    case DTYPE_Q8_0: mm_gemv_q8_0(out, x, w, rb, K, bias, nn); return 0;
    case DTYPE_Q4_0: mm_gemv_q4_0(out, x, w, rb, K, bias, nn); return 0;
    default: return -1;
  }
}

/* out(nt, ldo) block = x(nt,K) @ w(nn,K)^T, tile by tile. */
KERN_AVX2 static void mm_block_avx2(float *out, int ldo, const float *x, const float *w, int K, const float *bias,
                                    int nt, int nn) {
  for (int t = 0; t < nt; t += MM_MR) {
    int mr = nt - t < MM_MR ? nt - t : MM_MR;
    const float *xt = x + (size_t)t * K;
    float *ot = out + (size_t)t * ldo;
    if (mr == 1) {
      for (int n = 0; n < nn; n += 4)
        mm_tile14_avx2(ot + n, xt, w + (size_t)n * K, K, bias ? bias + n : NULL, nn - n < 4 ? nn - n : 4);
      continue;
    }
    for (int n = 0; n < nn; n += MM_NR)
      mm_tile43_avx2(ot + n, ldo, xt, w + (size_t)n * K, K, bias ? bias + n : NULL, mr,
                     nn - n < MM_NR ? nn - n : MM_NR);
  }
}
#endif

static void mm_block_portable(float *out, int ldo, const float *x, const float *w, int K, const float *bias, int nt,
                              int nn) {
  for (int t = 0; t < nt; t++)
    for (int n = 0; n < nn; n++) {
      float r = kern_dot_portable(x + (size_t)t * K, w + (size_t)n * K, K);
      if (bias) r += bias[n];
      out[(size_t)t * ldo + n] = r;
    }
}

/* Job = (token block, weight-row block): dequantize the weight rows once, use them for every token. */
static void mm_job(void *arg, int64_t job, kern_worker_t *wk) {
  mm_task_t *m = arg;
  int nblk = (int)(job % m->n_nblk), tblk = (int)(job / m->n_nblk);
  int n0 = nblk * m->nb, nn = m->N - n0 < m->nb ? m->N - n0 : m->nb;
  int t0 = tblk * m->tb, nt = m->T - t0 < m->tb ? m->T - t0 : m->tb;
#ifdef KERN_X86
  /* One token: read the stored weights directly; the scratch round trip would double the traffic. */
  if (m->avx2 && nt == 1 &&
      mm_gemv_avx2(m->wtype, m->out + (size_t)t0 * m->N + n0, m->x + (size_t)t0 * m->K,
                   m->w + (size_t)n0 * m->row_bytes, m->row_bytes, m->K, m->bias ? m->bias + n0 : NULL, nn) == 0)
    return;
#endif
  const float *wp;
  if (m->wtype == DTYPE_F32) {
    wp = (const float *)m->w + (size_t)n0 * m->K;
  } else {
    float *s = kern_worker_scratch(wk, (size_t)nn * m->K * sizeof(float));
    if (!s) {
      atomic_store(&m->err, STRATA_ENOMEM);
      return;
    }
    for (int r = 0; r < nn; r++) {
      const uint8_t *src = m->w + (size_t)(n0 + r) * m->row_bytes;
#ifdef KERN_X86
      if (m->avx2) {
        deq_row_avx2(m->wtype, src, s + (size_t)r * m->K, m->K);
        continue;
      }
#endif
      dtype_to_f32(m->wtype, src, s + (size_t)r * m->K, m->K);
    }
    wp = s;
  }
  float *out = m->out + (size_t)t0 * m->N + n0;
  const float *x = m->x + (size_t)t0 * m->K;
  const float *bias = m->bias ? m->bias + n0 : NULL;
#ifdef KERN_X86
  if (m->avx2) {
    mm_block_avx2(out, m->N, x, wp, m->K, bias, nt, nn);
    return;
  }
#endif
  mm_block_portable(out, m->N, x, wp, m->K, bias, nt, nn);
}

/* mm_check_dtype: whether rows of WTYPE with K elements can be dequantized. */
static int mm_check_dtype(dtype_t wtype, int K, const void *w) {
  if ((unsigned)wtype >= DTYPE_COUNT || wtype == DTYPE_I32 || dtype_row_bytes(wtype, K) == 0) {
    log_error("matmul: weight dtype %s with rows of %d elements is not supported (rows must be whole blocks of %d)",
              dtype_name(wtype), K, dtype_block_elems(wtype));
    return STRATA_EUNSUPPORTED;
  }
  if (wtype <= DTYPE_Q4_0) return 0;
  float *tmp = malloc((size_t)K * sizeof(float)); /* k-quants: ask the converter once */
  if (!tmp) {
    log_error("matmul: out of memory for one row of %d elements", K);
    return STRATA_ENOMEM;
  }
  int rc = dtype_to_f32(wtype, w, tmp, K);
  free(tmp);
  if (rc != 0) log_error("matmul: no dequantizer for weight dtype %s yet", dtype_name(wtype));
  return rc;
}

int kern_matmul(float *out, const float *x, const void *w, dtype_t wtype, int N, int K, const float *bias, int T,
                kern_pool_t *pool) {
  if (T <= 0 || N <= 0) return 0;
  if (K <= 0 || !out || !x || !w) {
    log_error("matmul: bad arguments (T=%d N=%d K=%d)", T, N, K);
    return STRATA_EINVAL;
  }
  int rc = mm_check_dtype(wtype, K, w);
  if (rc != 0) return rc;
  mm_task_t m = {.out = out, .x = x, .w = w, .bias = bias, .wtype = wtype, .N = N, .K = K, .T = T,
                 .row_bytes = dtype_row_bytes(wtype, K), .nb = MM_NB, .avx2 = kern_use_avx2()};
  atomic_init(&m.err, 0);
  int threads = kern_pool_size(pool);
  m.n_nblk = (N + m.nb - 1) / m.nb;
  /* Few weight-row blocks for the threads (small N): shrink them, then split the tokens too. */
  while (m.n_nblk < 2 * threads && m.nb > MM_NR) {
    m.nb = (m.nb / 2 + MM_NR - 1) / MM_NR * MM_NR;
    m.n_nblk = (N + m.nb - 1) / m.nb;
  }
  int n_tblk = 1;
  if (m.n_nblk < 2 * threads) {
    n_tblk = (2 * threads + m.n_nblk - 1) / m.n_nblk;
    int max_tblk = (T + MM_MR - 1) / MM_MR;
    if (n_tblk > max_tblk) n_tblk = max_tblk;
  }
  m.tb = ((T + n_tblk - 1) / n_tblk + MM_MR - 1) / MM_MR * MM_MR;
  n_tblk = (T + m.tb - 1) / m.tb;
  kern_pool_run(pool, mm_job, &m, (int64_t)m.n_nblk * n_tblk);
  return atomic_load(&m.err);
}
