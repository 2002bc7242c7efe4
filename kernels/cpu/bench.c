/* bench.c: matmul throughput numbers for the kernel benchmarks (prints; asserts nothing). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/status.h"
#include "kernels/cpu/cpu_int.h"

static double bench_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Fills W (N,K) in TYPE from the f32 matrix F (q8_0: per-block absmax scale). */
static void bench_encode(void *w, dtype_t type, const float *f, int N, int K) {
  uint8_t *p = w;
  for (size_t i = 0; i < (size_t)N * K; i++) {
    if (type == DTYPE_F32) memcpy(p + 4 * i, &f[i], 4);
    if (type == DTYPE_BF16 || type == DTYPE_F16) {
      uint16_t h = type == DTYPE_BF16 ? f32_to_bf16(f[i]) : f32_to_f16(f[i]);
      memcpy(p + 2 * i, &h, 2);
    }
  }
  if (type != DTYPE_Q8_0) return;
  for (size_t b = 0; b < (size_t)N * K / 32; b++, p += 34) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(f[b * 32 + j]));
    float d = amax / 127.0f;
    uint16_t h = f32_to_f16(d);
    memcpy(p, &h, 2);
    for (int j = 0; j < 32; j++) p[2 + j] = (uint8_t)(int8_t)lrintf(d > 0 ? f[b * 32 + j] / d : 0);
  }
}

int kern_bench_matmul(int N, int K, int n_threads) {
  static const dtype_t types[] = {DTYPE_F32, DTYPE_BF16, DTYPE_Q8_0};
  static const int Ts[] = {1, 256};
  kern_pool_t *pool = NULL;
  float *f = malloc((size_t)N * K * 4), *x = malloc((size_t)256 * K * 4), *out = malloc((size_t)256 * N * 4);
  void *w = malloc((size_t)N * K * 4);
  int rc = STRATA_ENOMEM;
  if (!f || !x || !out || !w) {
    log_error("kernel bench: out of memory for a %dx%d matrix", N, K);
    goto fail;
  }
  if ((rc = kern_pool_new(&pool, n_threads)) != 0) goto fail;
  srand(1);
  for (size_t i = 0; i < (size_t)N * K; i++) f[i] = (float)rand() / RAND_MAX - 0.5f;
  for (size_t i = 0; i < (size_t)256 * K; i++) x[i] = (float)rand() / RAND_MAX - 0.5f;
  printf("matmul N=%d K=%d threads=%d simd=%s\n", N, K, kern_pool_size(pool), kern_simd_name());
  for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
    bench_encode(w, types[ti], f, N, K);
    for (size_t tj = 0; tj < sizeof(Ts) / sizeof(Ts[0]); tj++) {
      int T = Ts[tj], reps = 0;
      if ((rc = kern_matmul(out, x, w, types[ti], N, K, NULL, T, pool)) != 0) goto fail; /* warm-up */
      double t0 = bench_now_s(), el;
      do {
        kern_matmul(out, x, w, types[ti], N, K, NULL, T, pool);
        reps++;
      } while ((el = bench_now_s() - t0) < 0.3);
      double s = el / reps;
      printf("  %-5s T=%-4d %8.3f ms  %7.2f GFLOP/s  %7.2f GB/s weights\n", dtype_name(types[ti]), T, s * 1e3,
             2.0 * T * N * K / s * 1e-9, (double)dtype_row_bytes(types[ti], K) * N / s * 1e-9);
    }
  }
  rc = 0;
fail:
  kern_pool_free(pool);
  free(f);
  free(x);
  free(out);
  free(w);
  return rc;
}
