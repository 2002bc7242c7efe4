/* gemv_bench.c: our GEMV (cuda_gemv_impl) at the batch-1 decode shapes of Llama-3-8B in bf16, T = 1 and 2:
 * microseconds per call and GB/s of weights read, for each version (v1 the first kernel's 8 loads in flight,
 * v2 16, each with and without programmatic dependent launch; "auto" is cuda_gemv, which picks one per
 * shape), and version 3 ("coop") with 4, 8 or 16 loads in flight and 1 or 2 rows per block. Each case
 * rotates over enough copies of the matrix to exceed the L2 cache (>= 256 MiB), captures at least 16 calls
 * as one CUDA graph (as a decode step runs them) and times 7 replays with events; the median replay over its
 * calls is printed. Every output is checked against a double-precision host reference on 64 rows. Last,
 * the prefill GEMMs (cuBLASLt through the backend's matmul, T = 2048 and 512) with the first heuristic
 * (STRATA_CUDA_GEMM_TUNE=0) and with the timed choice of up to 8 candidates: microseconds (host clock over
 * 20 calls after 3 untimed ones, the first of which tunes) and TFLOP/s. Random data, no zeros. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include <time.h>

#include "common/dtype.h"
#include "kernels/kernels_cuda.h"
#include "worker/backend/backend.h"

#define CK(call)                                                                        \
  do {                                                                                  \
    cudaError_t e_ = (call);                                                            \
    if (e_ != cudaSuccess) {                                                            \
      fprintf(stderr, "gemv_bench: %s: %s (line %d)\n", #call, cudaGetErrorString(e_), __LINE__); \
      return 1; /* only main uses CK */                                                 \
    }                                                                                   \
  } while (0)

static uint64_t g_s = 0x2545f4914f6cdd1dull;

static uint16_t *rand_bf16(size_t n, float scale) {
  uint16_t *h = malloc(n * 2);
  if (!h) return NULL;
  for (size_t i = 0; i < n; i++) {
    g_s = g_s * 6364136223846793005ull + 1442695040888963407ull;
    h[i] = f32_to_bf16(((float)(g_s >> 40) / (float)(1 << 24) * 2.0f - 1.0f) * scale);
  }
  return h;
}

static int cmp_f(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return x < y ? -1 : x > y;
}

/* max relative error of 64 rows of out(T, N) against a double reference */
static double check_rows(const uint16_t *w, const uint16_t *x, const uint16_t *out, int N, int K, int T) {
  double worst = 0;
  for (int r = 0; r < 64; r++) {
    int n = (int)((int64_t)r * (N - 1) / 63);
    for (int t = 0; t < T; t++) {
      double ref = 0, mag = 0;
      for (int k = 0; k < K; k++) {
        double p = (double)bf16_to_f32(w[(size_t)n * K + k]) * bf16_to_f32(x[(size_t)t * K + k]);
        ref += p;
        mag += fabs(p);
      }
      double err = fabs(bf16_to_f32(out[(size_t)t * N + n]) - ref) / (mag > 0 ? mag : 1);
      if (err > worst) worst = err;
    }
  }
  return worst;
}

/* one call of version IMPL (4: cuda_gemv's own choice; 5..8: coop versions 4..7) */
static int call(int impl, void *out, const void *x, const void *w, int N, int K, int T, cudaStream_t st) {
  switch (impl) {
    case 4: return cuda_gemv(out, x, w, N, K, NULL, T, DTYPE_BF16, st);
    case 5: case 6: case 7: case 8: return cuda_gemv_impl(impl - 1, out, x, w, N, K, NULL, T, DTYPE_BF16, st);
    default: return cuda_gemv_impl(impl, out, x, w, N, K, NULL, T, DTYPE_BF16, st);
  }
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* bench_gemm: the prefill GEMMs through the backend's matmul, without and with the tuning of cuBLASLt plans */
static void bench_gemm(void) {
  const int shapes[][2] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}};
  const int Ts[] = {2048, 512};
  double us[2][4][2];
  for (int tune = 0; tune < 2; tune++) {
    backend_t *be = NULL;
    setenv("STRATA_CUDA_GEMM_TUNE", tune ? "1" : "0", 1);
    if (backend_create(&be, "cuda", 0, DTYPE_BF16) != 0) return;
    uint16_t *xh = rand_bf16((size_t)2048 * 14336, 1.0f);
    if (!xh) return;
    void *x = be->ops->alloc(be, (size_t)2048 * 14336 * 2), *out = be->ops->alloc(be, (size_t)2048 * 28672 * 2);
    be->ops->upload(be, x, xh, (size_t)2048 * 14336 * 2);
    free(xh);
    for (int si = 0; si < 4; si++) {
      const int N = shapes[si][0], K = shapes[si][1];
      uint16_t *wh = rand_bf16((size_t)N * K, 0.05f);
      if (!wh) return;
      weight_t w = {.data = be->ops->alloc(be, (size_t)N * K * 2), .dtype = DTYPE_BF16, .rows = N, .cols = K};
      be->ops->upload(be, (void *)w.data, wh, (size_t)N * K * 2);
      free(wh);
      for (int ti = 0; ti < 2; ti++) {
        for (int r = 0; r < 3; r++) be->ops->matmul(be, out, x, &w, NULL, Ts[ti]);
        be->ops->sync(be);
        double t0 = now();
        for (int r = 0; r < 20; r++) be->ops->matmul(be, out, x, &w, NULL, Ts[ti]);
        if (be->ops->sync(be) != 0) fprintf(stderr, "gemv_bench: matmul failed\n");
        us[tune][si][ti] = (now() - t0) / 20 * 1e6;
      }
      be->ops->free(be, (void *)w.data);
    }
    be->ops->free(be, x);
    be->ops->free(be, out);
    backend_destroy(be);
  }
  unsetenv("STRATA_CUDA_GEMM_TUNE");
  printf("%-16s %5s %12s %12s %9s %9s\n", "GEMM N x K", "T", "heur. us", "tuned us", "heur. TF", "tuned TF");
  double sum[2] = {0, 0};
  for (int ti = 0; ti < 2; ti++)
    for (int si = 0; si < 4; si++) {
      double fl = 2.0 * shapes[si][0] * shapes[si][1] * Ts[ti];
      char shape[32];
      snprintf(shape, sizeof shape, "%d x %d", shapes[si][0], shapes[si][1]);
      printf("%-16s %5d %12.1f %12.1f %9.1f %9.1f\n", shape, Ts[ti], us[0][si][ti], us[1][si][ti],
             fl / us[0][si][ti] * 1e-6, fl / us[1][si][ti] * 1e-6);
      if (ti == 0) sum[0] += us[0][si][ti], sum[1] += us[1][si][ti];
    }
  printf("GEMM one Llama-3-8B layer at T 2048: heuristic %.1f us, tuned %.1f us (x32 layers: %.1f / %.1f ms)\n",
         sum[0], sum[1], sum[0] * 32e-3, sum[1] * 32e-3);
}

int main(void) {
  if (cuda_device_count() <= 0) {
    fprintf(stderr, "gemv_bench: no CUDA device\n");
    return 1;
  }
  struct cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("gemv_bench: %s, %d SMs, L2 %d MiB, bf16\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  const int shapes[][2] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}, {128256, 4096}, {1024, 4096}};
  const int n_shapes = sizeof shapes / sizeof shapes[0];
  const char *names[] = {"v1",        "v2+pdl",    "v2",        "v1+pdl",    "auto",
                         "coop r1u4", "coop r1u8", "coop r2u4", "coop r1u16"};
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  int bad = 0;
  printf("%-16s %2s %-10s %9s %9s %10s\n", "N x K", "T", "version", "us", "GB/s", "max rel err");
  for (int si = 0; si < n_shapes; si++) {
    const int N = shapes[si][0], K = shapes[si][1];
    const size_t wbytes = (size_t)N * K * 2;
    int copies = (int)(((size_t)256 << 20) / wbytes) + 1;
    int launches = copies < 16 ? 16 : copies;
    uint16_t *wh = rand_bf16((size_t)N * K, 0.05f), *xh = rand_bf16((size_t)2 * K, 1.0f);
    uint16_t *oh = malloc((size_t)2 * N * 2);
    if (!wh || !xh || !oh) {
      fprintf(stderr, "gemv_bench: out of host memory\n");
      return 1;
    }
    void **wd = calloc((size_t)copies, sizeof *wd);
    void *xd, *od;
    for (int c = 0; c < copies; c++) {
      CK(cudaMalloc(&wd[c], wbytes));
      CK(cudaMemcpy(wd[c], wh, wbytes, cudaMemcpyHostToDevice));
    }
    CK(cudaMalloc(&xd, (size_t)2 * K * 2));
    CK(cudaMalloc(&od, (size_t)2 * N * 2));
    CK(cudaMemcpy(xd, xh, (size_t)2 * K * 2, cudaMemcpyHostToDevice));
    for (int T = 1; T <= 2; T++) {
      for (int impl = 0; impl < 9; impl++) {
        CK(cudaMemset(od, 0xff, (size_t)2 * N * 2)); /* poison: NaN in bf16 */
        if (call(impl, od, xd, wd[0], N, K, T, st) != 0) return 1;
        CK(cudaStreamSynchronize(st));
        const size_t n_out = (size_t)T * N;
        CK(cudaMemcpy(oh, od, n_out * 2, cudaMemcpyDeviceToHost));
        double err = check_rows(wh, xh, oh, N, K, T);
        int nan = 0;
        for (size_t i = 0; i < n_out; i++) nan |= isnan(bf16_to_f32(oh[i]));
        if (err > 1e-2 || nan) bad++;
        cudaGraph_t g = NULL;
        cudaGraphExec_t ge = NULL;
        int graph = cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
        for (int l = 0; graph && l < launches; l++) call(impl, od, xd, wd[l % copies], N, K, T, st);
        if (graph) graph = cudaStreamEndCapture(st, &g) == cudaSuccess && cudaGraphInstantiate(&ge, g, 0) == cudaSuccess;
        if (!graph) { /* time eager launches instead (noted in the line) */
          fprintf(stderr, "gemv_bench: no graph for version %s: %s\n", names[impl], cudaGetErrorString(cudaGetLastError()));
          cudaGetLastError();
        }
        float ms[7];
        for (int r = -1; r < 7; r++) { /* r = -1: warm-up */
          CK(cudaEventRecord(e0, st));
          if (graph)
            CK(cudaGraphLaunch(ge, st));
          else
            for (int l = 0; l < launches; l++) call(impl, od, xd, wd[l % copies], N, K, T, st);
          CK(cudaEventRecord(e1, st));
          CK(cudaEventSynchronize(e1));
          if (r >= 0) CK(cudaEventElapsedTime(&ms[r], e0, e1));
        }
        qsort(ms, 7, sizeof ms[0], cmp_f);
        double us = ms[3] * 1e3 / launches;
        char shape[32];
        snprintf(shape, sizeof shape, "%d x %d", N, K);
        printf("%-16s %2d %-10s %9.2f %9.0f %10.1e%s%s\n", shape, T, names[impl], us, wbytes / us * 1e-3, err,
               nan ? " NaN/unwritten" : "", graph ? "" : " (eager)");
        if (ge) cudaGraphExecDestroy(ge);
        if (g) cudaGraphDestroy(g);
      }
    }
    for (int c = 0; c < copies; c++) cudaFree(wd[c]);
    cudaFree(xd);
    cudaFree(od);
    free(wd), free(wh), free(xh), free(oh);
  }
  bench_gemm();
  printf("gemv_bench: %s\n", bad ? "WRONG results (see max rel err)" : "all results within 1e-2 of the reference");
  return bad ? 1 : 0;
}
