/* cpu_int.h: internals shared by the CPU kernels: run-time SIMD selection and small helpers. */
#ifndef STRATA_KERNELS_CPU_INT_H
#define STRATA_KERNELS_CPU_INT_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

/* kern_rmsnorm_row: out(C) = x / sqrt(mean(x^2) + eps) * w, the row operation of kern_rmsnorm (shared by
 * the fused norm of kern_rope_qkv_write so that both give the same bits). OUT may equal X. */
void kern_rmsnorm_row(float *out, const float *x, const float *w, int C, float eps);

/* kern_use_avx2: 1 when AVX2, FMA and F16C are present and the portable path is not forced. */
int kern_use_avx2(void);

/* NOTE: x86-64 only gets the AVX2 paths; elsewhere every kernel takes its portable path. */
#if defined(__x86_64__) || defined(__i386__)
#define KERN_X86 1
#include <immintrin.h>
#define KERN_AVX2 __attribute__((target("avx2,fma,f16c")))

/* Sum of the 8 lanes in one fixed order (batch invariance needs a fixed order). */
KERN_AVX2 static inline float kern_hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* A mask loading the first N (0..7) lanes. */
KERN_AVX2 static inline __m256i kern_tail_mask(int n) {
  static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256((const __m256i *)(m + 8 - n));
}

/* dot(a, b, n): 8 lanes of FMA in order, the tail masked into the same lanes, then kern_hsum256. */
KERN_AVX2 static inline float kern_dot_avx2(const float *a, const float *b, int n) {
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  if (i < n) {
    __m256i m = kern_tail_mask(n - i);
    acc = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), acc);
  }
  return kern_hsum256(acc);
}
#endif

/* The portable dot product: one accumulator, in order. */
static inline float kern_dot_portable(const float *a, const float *b, int n) {
  float s = 0.0f;
  for (int i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

#endif
