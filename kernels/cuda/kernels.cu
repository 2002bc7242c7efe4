// kernels.cu: the CUDA kernels of the forward pass (see kernels/kernels_cuda.h), templated on the activation type.
#include "kernels/cuda/cuda_int.cuh"
#include "common/dummy_hash.h"

#include <stdlib.h>
#include <string.h>

extern "C" int cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

// ---- launch configuration shared by every kernel file ----

thread_local int cuda_launch_carveout = -1;

extern "C" void cuda_set_launch_carveout(int pct) { cuda_launch_carveout = pct < 0 ? -1 : pct > 100 ? 100 : pct; }

// ---- conversion ----

template <typename D, typename S> __global__ void convert_kernel(D *out, const S *src, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    st(&out[i], ld(&src[i]));
}

// a dummy tensor made in place (kernels_cuda.h: cuda_dummy_fill); S is the model's dtype the value is rounded to
template <typename D, typename S>
__global__ void dummy_fill_kernel(D *out, uint64_t key, float scale, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    S v;
    st(&v, scale * dummy_value(key, (uint64_t)i));
    st(&out[i], ld(&v));
  }
}

extern "C" int cuda_dummy_fill(void *out, dtype_t dtype, dtype_t stype, uint64_t seed, uint64_t tensor, float scale,
                               int64_t n, cudaStream_t stream) {
  if (n <= 0) return 0;
  unsigned g = grid_for(n, 256);
  if (g > 65536) g = 65536;
  const uint64_t key = dummy_tensor_key(seed, tensor);
#define FILL_SRC(D_)                                                                                   \
  do {                                                                                                 \
    if (stype == DTYPE_F32) {                                                                          \
      dummy_fill_kernel<D_, float><<<g, 256, 0, stream>>>((D_ *)out, key, scale, n);                   \
    } else if (stype == DTYPE_BF16) {                                                                  \
      dummy_fill_kernel<D_, __nv_bfloat16><<<g, 256, 0, stream>>>((D_ *)out, key, scale, n);           \
    } else if (stype == DTYPE_F16) {                                                                   \
      dummy_fill_kernel<D_, __half><<<g, 256, 0, stream>>>((D_ *)out, key, scale, n);                  \
    } else {                                                                                           \
      log_error("cuda dummy fill: model dtype %s is not f32, bf16 or f16", dtype_name(stype));        \
      return STRATA_EINVAL;                                                                            \
    }                                                                                                  \
  } while (0)
  DISPATCH_ACT(dtype, FILL_SRC(T));
#undef FILL_SRC
  return launched("dummy fill");
}

extern "C" int cuda_convert(void *out, dtype_t dtype, const void *src, dtype_t stype, int64_t n,
                            cudaStream_t stream) {
  if (n <= 0) return 0;
  unsigned g = grid_for(n, 256);
  if (g > 65536) g = 65536;
#define CONV_SRC(S_)                                                                          \
  do {                                                                                        \
    if (stype == DTYPE_F32) {                                                                 \
      convert_kernel<<<g, 256, 0, stream>>>((S_ *)out, (const float *)src, n);                \
    } else if (stype == DTYPE_BF16) {                                                         \
      convert_kernel<<<g, 256, 0, stream>>>((S_ *)out, (const __nv_bfloat16 *)src, n);       \
    } else if (stype == DTYPE_F16) {                                                          \
      convert_kernel<<<g, 256, 0, stream>>>((S_ *)out, (const __half *)src, n);               \
    } else {                                                                                  \
      log_error("cuda convert: source dtype %s is not f32, bf16 or f16", dtype_name(stype)); \
      return STRATA_EINVAL;                                                                   \
    }                                                                                         \
  } while (0)
  DISPATCH_ACT(dtype, CONV_SRC(T));
#undef CONV_SRC
  return launched("convert");
}

// ---- embedding ----

template <typename T> __global__ void embed_kernel(T *out, const T *emb, int64_t V, int C, const int32_t *ids) {
  int t = blockIdx.x;
  pdl_trigger();
  pdl_wait();  // the ids may have been patched on the device (tokens drawn by the previous step)
  int64_t id = ids[t];
  T *o = out + (size_t)t * C;
  if (id < 0 || id >= V) {
    for (int c = threadIdx.x; c < C; c += blockDim.x) st(&o[c], 0.0f);
    return;
  }
  const T *e = emb + (size_t)id * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = e[c];
}

extern "C" int cuda_embed(void *out, const void *emb, int64_t V, int C, const int32_t *ids, int T_, dtype_t act,
                          cudaStream_t stream) {
  if (T_ <= 0) return 0;
  cudaError_t e = cudaSuccess;
  DISPATCH_ACT(act, e = pdl_launch(embed_kernel<T>, dim3(T_), dim3(256), 0, stream, 1, (T *)out, (const T *)emb, V,
                                   C, ids));
  return launch_status(e, "embed");
}

// ---- RMSNorm (one block per row) ----

__device__ float block_sum(float v, float *red) {
  v = warp_sum(v);
  int w = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  __syncthreads();  // RED may still be read by a previous call
  if (lane == 0) red[w] = v;
  __syncthreads();
  float s = 0.0f;
  for (int i = 0; i < nw; i++) s += red[i];
  return s;
}

// ADD: residual += x first (rounded to T, as it is stored), then the norm of the stored residual.
template <typename T, bool ADD>
__global__ void rmsnorm_kernel(T *out, T *res, const T *x, const float *w, int C, float eps) {
  __shared__ float red[32];
  pdl_trigger();  // the GEMV that follows may start streaming its weights
  pdl_wait();
  size_t row = blockIdx.x;
  const T *xr = x + row * C;
  T *rr = ADD ? res + row * C : NULL;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float v = ld(&xr[c]);
    if (ADD) {
      v = rnd<T>(ld(&rr[c]) + v);
      st(&rr[c], v);
    }
    ss += v * v;
  }
  float inv = rsqrtf(block_sum(ss, red) / (float)C + eps);
  const T *src = ADD ? rr : xr;
  T *o = out + row * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) st(&o[c], ld(&src[c]) * inv * w[c]);
}

// The vector version: thread i owns the 16-byte chunk i of the row (C % (16 / sizeof(T)) == 0 and at most 1,024
// chunks), keeps its values in registers between the sum and the scaling, and loads its norm weights before
// the dependent launch waits: one round trip to memory where the loop above makes two. The same expressions per
// element as rmsnorm_kernel; the sum of squares is added in another order.
template <typename T, bool ADD>
__global__ void rmsnorm_vec_kernel(T *out, T *res, const T *x, const float *w, int C, float eps) {
  constexpr int E = 16 / sizeof(T);
  __shared__ float red[32];
  const int c = threadIdx.x * E;
  const bool on = c < C;
  float wf[E];
#pragma unroll
  for (int e = 0; e < E; e++) wf[e] = on ? w[c + e] : 0.0f;  // weights: ready before the previous kernel
  pdl_trigger();
  pdl_wait();
  const size_t row = blockIdx.x;
  float v[E], ss = 0.0f;
  if (on) {
    uint4 xv = *(const uint4 *)(x + row * C + c);
    const T *xe = (const T *)&xv;
    if (ADD) {
      uint4 rv = *(const uint4 *)(res + row * C + c), ov;
      const T *re = (const T *)&rv;
      T *oe = (T *)&ov;
#pragma unroll
      for (int e = 0; e < E; e++) {
        v[e] = rnd<T>(ld(&re[e]) + ld(&xe[e]));
        st(&oe[e], v[e]);
      }
      *(uint4 *)(res + row * C + c) = ov;
    } else {
#pragma unroll
      for (int e = 0; e < E; e++) v[e] = ld(&xe[e]);
    }
#pragma unroll
    for (int e = 0; e < E; e++) ss += v[e] * v[e];
  }
  const float inv = rsqrtf(block_sum(ss, red) / (float)C + eps);
  if (on) {
    uint4 ov;
    T *oe = (T *)&ov;
#pragma unroll
    for (int e = 0; e < E; e++) st(&oe[e], v[e] * inv * wf[e]);
    *(uint4 *)(out + row * C + c) = ov;
  }
}

static int norm_threads(int C) { return C >= 1024 ? 1024 : C >= 256 ? 256 : 32 * ((C + 31) / 32); }

// norm_go: the vector version where the row splits into at most 1,024 aligned 16-byte chunks, else the loop
template <typename T, bool ADD>
static cudaError_t norm_go(T *out, T *res, const T *x, const float *w, int rows, int C, float eps, cudaStream_t s) {
  constexpr int E = 16 / sizeof(T);
  const int chunks = C / E;
  if (C % E == 0 && chunks <= 1024 && (((uintptr_t)out | (uintptr_t)res | (uintptr_t)x) % 16) == 0) {
    const int threads = (chunks + 31) / 32 * 32;
    return pdl_launch(rmsnorm_vec_kernel<T, ADD>, dim3(rows), dim3(threads), 0, s, 1, out, res, x, w, C, eps);
  }
  return pdl_launch(rmsnorm_kernel<T, ADD>, dim3(rows), dim3(norm_threads(C)), 0, s, 1, out, res, x, w, C, eps);
}

extern "C" int cuda_rmsnorm(void *out, const void *x, const float *w, int rows, int C, float eps, dtype_t act,
                            cudaStream_t stream) {
  if (rows <= 0) return 0;
  cudaError_t e = cudaSuccess;
  DISPATCH_ACT(act, e = norm_go<T, false>((T *)out, (T *)NULL, (const T *)x, w, rows, C, eps, stream));
  return launch_status(e, "rmsnorm");
}

extern "C" int cuda_add_rmsnorm(void *out, void *residual, const void *x, const float *w, int rows, int C, float eps,
                                dtype_t act, cudaStream_t stream) {
  if (rows <= 0) return 0;
  cudaError_t e = cudaSuccess;
  DISPATCH_ACT(act, e = norm_go<T, true>((T *)out, (T *)residual, (const T *)x, w, rows, C, eps, stream));
  return launch_status(e, "add_rmsnorm");
}

// ---- GEMV for a few tokens: one warp per output feature, 16-byte streaming loads of W, U of them in flight
// per lane, NT tokens sharing each load of W, no atomics. Version 2 (the default) keeps 16 loads in flight
// for T <= 2 and is launched with programmatic dependent launch (sm_90): its blocks start while the previous
// kernel drains, issue their first weight loads (weights never depend on the previous kernel), and only
// then wait for the previous kernel's results (pdl_wait) before reading x or writing out. So the ramp of
// each matrix's stream overlaps the tail of the kernel before it. ----

#define GEMV_WARPS 4

// row_prefetch: thread I's first U 16-byte loads of weight row WR when P threads share the row (chunks I, I + P,
// ...; zeros past KV, or when !VALID)
template <typename T, int U, int P>
__device__ __forceinline__ void row_prefetch(uint4 (&wv)[U], const T *wr, int kv, int i, bool valid) {
  constexpr int E = 16 / sizeof(T);
#pragma unroll
  for (int u = 0; u < U; u++) {
    int k = (i + u * P) * E;
    wv[u] = valid && k < kv ? __ldcs((const uint4 *)(wr + k)) : make_uint4(0, 0, 0, 0);
  }
}

// row_dot: thread I's partial dot products, P threads sharing weight row WR (K elements; the thread's first U
// loads already in WV), with the NT rows of X (K elements apart, read through the read-only path), added to
// ACC with the thread's 16-byte chunks I, I + P, ... in order, so a result's bits depend only on P. KV: the
// 16-byte vector part of K (K, or 0 when rows are not 16-byte aligned: element by element).
template <typename T, int NT, int U, int P>
__device__ __forceinline__ void row_dot(float (&acc)[NT], uint4 (&wv)[U], const T *wr, const T *x, int K, int kv,
                                        int i) {
  constexpr int E = 16 / sizeof(T);
  for (int k0 = i * E; k0 < kv;) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      int k = k0 + u * P * E;
      if (k >= kv) break;
      const T *we = (const T *)&wv[u];
      float wf[E];
#pragma unroll
      for (int e = 0; e < E; e++) wf[e] = ld(&we[e]);
#pragma unroll
      for (int t = 0; t < NT; t++) {
        uint4 xv = __ldg((const uint4 *)(x + (size_t)t * K + k));
        const T *xe = (const T *)&xv;
#pragma unroll
        for (int e = 0; e < E; e++) acc[t] += wf[e] * ld(&xe[e]);
      }
    }
    k0 += P * E * U;
    if (k0 >= kv) break;
#pragma unroll
    for (int u = 0; u < U; u++) {
      int k = k0 + u * P * E;
      wv[u] = k < kv ? __ldcs((const uint4 *)(wr + k)) : make_uint4(0, 0, 0, 0);
    }
  }
  for (int k = kv + i; k < K; k += P) {  // K not a multiple of E: scalar path
    float wf = ld(&wr[k]);
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] += wf * ld(&x[(size_t)t * K + k]);
  }
}

// gemv_store: out[t, n] = the warp's sum + bias
template <typename T, int NT>
__device__ __forceinline__ void gemv_store(T *out, float (&acc)[NT], int n, int N, const float *bias, int lane) {
#pragma unroll
  for (int t = 0; t < NT; t++) {
    float s = warp_sum(acc[t]);
    if (lane == 0) st(&out[(size_t)t * N + n], s + (bias ? bias[n] : 0.0f));
  }
}

template <typename T, int NT, int U>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_kernel(T *out, const T *x, const T *w, int N, int K, const float *bias) {
  constexpr int E = 16 / sizeof(T);
  const int n = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  const int kv = (K % E == 0) ? K : 0;  // the vector part (W rows and X rows are 16-byte aligned when K % E == 0)
  const T *wr = w + (size_t)(n < N ? n : 0) * K;
  pdl_trigger();
  uint4 wv[U];
  row_prefetch<T, U, 32>(wv, wr, kv, lane, n < N);  // independent of the previous kernel
  pdl_wait();
  if (n >= N) return;
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; t++) acc[t] = 0.0f;
  row_dot<T, NT, U, 32>(acc, wv, wr, x, K, kv, lane);
  gemv_store<T, NT>(out, acc, n, N, bias, lane);
}

// ---- GEMV version 3 ("coop", the default for T <= 2): the 4 warps of a block stream each of its R rows
// together. Thread i takes the 16-byte chunks i, i + 128, ... of the row, so a block reads 2 KiB of one row
// per load (U loads in flight per thread), far fewer rows are streamed at once than with a row per warp, and
// each row is read front to back by one block; then the block adds its threads' partial sums (so its bits
// differ from versions 1 and 2). On an H100 it streamed the Llama-3-8B decode shapes at 2.8-3.2 TB/s against
// 2.5-3.0 for version 1/2 (docs/gpu.md, round 5). The first loads go out before the dependent launch waits. ----

#define COOP_THREADS 128

// coop_sum: the block's sums of ACC (M values per thread): thread m < M returns sum m (others 0)
template <int M> __device__ __forceinline__ float coop_sum(float (&acc)[M], float (*red)[M]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int m = 0; m < M; m++) {
    float v = warp_sum(acc[m]);
    if (lane == 0) red[warp][m] = v;
  }
  __syncthreads();
  float s = 0.0f;
  if ((int)threadIdx.x < M)
#pragma unroll
    for (int i = 0; i < COOP_THREADS / 32; i++) s += red[i][threadIdx.x];
  __syncthreads();  // RED is reused by the next row
  return s;
}

template <typename T, int NT, int U, int R>
__global__ void __launch_bounds__(COOP_THREADS)
    gemv_coop_kernel(T *out, const T *x, const T *w, int N, int K, const float *bias) {
  constexpr int E = 16 / sizeof(T);
  __shared__ float red[COOP_THREADS / 32][NT];
  const int kv = (K % E == 0) ? K : 0, n0 = blockIdx.x * R;
  pdl_trigger();
  uint4 wv[U];
  const T *wr = w + (size_t)(n0 < N ? n0 : 0) * K;
  row_prefetch<T, U, COOP_THREADS>(wv, wr, kv, threadIdx.x, n0 < N);  // independent of the previous kernel
  pdl_wait();
  for (int r = 0; r < R; r++) {
    const int n = n0 + r;
    if (n >= N) return;  // uniform over the block
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    row_dot<T, NT, U, COOP_THREADS>(acc, wv, wr, x, K, kv, threadIdx.x);
    if (r + 1 < R && n + 1 < N) {  // the next row's first loads go out before this row's sum
      wr = w + (size_t)(n + 1) * K;
      row_prefetch<T, U, COOP_THREADS>(wv, wr, kv, threadIdx.x, true);
    }
    const float s = coop_sum<NT>(acc, red);
    if ((int)threadIdx.x < NT) st(&out[(size_t)threadIdx.x * N + n], s + (bias ? bias[n] : 0.0f));
  }
}

// coop_launch: version 3 with R rows per block and U loads in flight per thread (NT 1 or 2)
template <typename T, int U, int R>
static cudaError_t coop_launch(T *out, const T *x, const T *w, int N, int K, const float *bias, int nt,
                               cudaStream_t s) {
  const dim3 grid((unsigned)((N + R - 1) / R)), block(COOP_THREADS);
  if (nt == 1) return pdl_launch(gemv_coop_kernel<T, 1, U, R>, grid, block, 0, s, 1, out, x, w, N, K, bias);
  if (nt == 2) return pdl_launch(gemv_coop_kernel<T, 2, U, R>, grid, block, 0, s, 1, out, x, w, N, K, bias);
  return cudaErrorInvalidValue;
}

// impl 0: the first version (8 loads in flight, plain launch); 1: version 2 (see above); 2: version 2 without
// programmatic dependent launch; 3: the first version's loads with it
template <typename T>
static cudaError_t gemv_launch(T *out, const T *x, const T *w, int N, int K, const float *bias, int nt, int impl,
                               cudaStream_t s) {
  switch (impl) {  // version 3 (coop), T <= 2: 4, 8 or 16 loads in flight, one row per block; 4 and 2 rows
    case 4: return coop_launch<T, 4, 1>(out, x, w, N, K, bias, nt, s);
    case 5: return coop_launch<T, 8, 1>(out, x, w, N, K, bias, nt, s);
    case 6: return coop_launch<T, 4, 2>(out, x, w, N, K, bias, nt, s);
    case 7: return coop_launch<T, 16, 1>(out, x, w, N, K, bias, nt, s);
    default: break;
  }
  const int pdl = impl == 1 || impl == 3, u8 = impl == 0 || impl == 3;
  const dim3 grid((unsigned)((N + GEMV_WARPS - 1) / GEMV_WARPS)), block(GEMV_WARPS * 32);
  switch (nt) {
#define GEMV_CASE(n_, u_)                                                                                   \
  case n_:                                                                                                  \
    return u8 ? pdl_launch(gemv_kernel<T, n_, 8>, grid, block, 0, s, pdl, out, x, w, N, K, bias)            \
              : pdl_launch(gemv_kernel<T, n_, u_>, grid, block, 0, s, pdl, out, x, w, N, K, bias);
    GEMV_CASE(1, 16) GEMV_CASE(2, 16) GEMV_CASE(3, 8) GEMV_CASE(4, 8) GEMV_CASE(5, 8) GEMV_CASE(6, 8)
    GEMV_CASE(7, 8) GEMV_CASE(8, 8)
#undef GEMV_CASE
    default: return cudaErrorInvalidValue;
  }
}

extern "C" int cuda_gemv_impl(int impl, void *out, const void *x, const void *w, int N, int K, const float *bias,
                              int T_, dtype_t act, cudaStream_t stream) {
  if (T_ < 1 || T_ > CUDA_GEMV_MAX_T || N < 1 || K < 1 || impl < 0 || impl > 7 || (impl > 3 && T_ > 2)) {
    log_error("cuda gemv: bad shape (T %d, N %d, K %d) or version %d; T must be 1..%d", T_, N, K, impl,
              CUDA_GEMV_MAX_T);
    return STRATA_EINVAL;
  }
  cudaError_t e = cudaSuccess;
  DISPATCH_ACT(act, e = gemv_launch<T>((T *)out, (const T *)x, (const T *)w, N, K, bias, T_, impl, stream));
  return launch_status(e, "gemv");
}

// gemv_pick: the version that measured fastest for the shape (tests/gpu/gemv_bench, H100, bf16, 2026-11-25):
// for T <= 2 version 3 (coop), 8 loads in flight, except long rows (K >= 12288, the 4096 x 14336 down
// projection: 39.2 us with 4 against 40.5 with 8, 44.0 for version 1); above, where our GEMV serves T <= 8
// (STRATA_CUDA_GEMV_MAX_T), versions 1/2 as measured in round 4: 8 loads with the dependent launch, 16 for
// tall (N >= 4K) and short (N <= K/2) matrices.
static int gemv_pick(int N, int K, int T_) {
  if (T_ <= 2) return K >= 12288 ? 4 : 5;
  if ((int64_t)N >= 4 * (int64_t)K || 2 * (int64_t)N <= K) return 1;
  return 3;
}

// gemv_version: the version cuda_gemv runs for the shape: STRATA_CUDA_GEMV's (read once), else gemv_pick's
static int gemv_version(int N, int K, int T_) {
  static int mode = -2;  // -1: per shape (gemv_pick), else one version for every shape
  if (mode == -2) {
    const char *e = getenv("STRATA_CUDA_GEMV");
    mode = e && strcmp(e, "v1") == 0 ? 3 : e && strcmp(e, "v2") == 0 ? 1 : e && e[0] == 'c' ? atoi(e + 1) : -1;
    if (mode > 7 || (mode >= 0 && mode < 4 && e[0] == 'c')) mode = -1;
  }
  return mode >= 0 && !(mode > 3 && T_ > 2) ? mode : gemv_pick(N, K, T_);
}

extern "C" int cuda_gemv(void *out, const void *x, const void *w, int N, int K, const float *bias, int T_,
                         dtype_t act, cudaStream_t stream) {
  return cuda_gemv_impl(gemv_version(N, K, T_), out, x, w, N, K, bias, T_, act, stream);
}

template <typename T> __global__ void bias_kernel(T *out, const float *bias, int64_t n, int N) {
  pdl_trigger();
  pdl_wait();
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    st(&out[i], ld(&out[i]) + bias[i % N]);
}

extern "C" int cuda_add_bias(void *out, const float *bias, int T_, int N, dtype_t act, cudaStream_t stream) {
  int64_t n = (int64_t)T_ * N;
  if (n <= 0) return 0;
  cudaError_t e = cudaSuccess;
  DISPATCH_ACT(act, e = pdl_launch(bias_kernel<T>, dim3(grid_for(n, 256)), dim3(256), 0, stream, 1, (T *)out, bias,
                                   n, N));
  return launch_status(e, "add_bias");
}

// ---- RoPE + paged KV write: block (token, head) over the query heads then the KV heads; thread i owns
// rotation pair i (its angle in double, as on the CPU); a KV-head block also writes its K and V rows ----

template <typename T>
__global__ void rope_kv_kernel(T *q, T *k, const T *v, T *cache, int n_blocks, int L, int Hkv, int B, int D,
                               int layer, const int32_t *positions, const int32_t *slots, int H, int style,
                               const float *inv_freq) {
  int t = blockIdx.x, h = blockIdx.y, half = D / 2;
  pdl_trigger();
  pdl_wait();
  int64_t slot = slots[t];
  bool write = h >= H && slot >= 0 && slot < (int64_t)n_blocks * B;
  size_t head_elems = (size_t)B * D;
  T *x = h < H ? q + ((size_t)t * H + h) * D : k + ((size_t)t * Hkv + (h - H)) * D;
  T *kc = NULL, *vc = NULL;
  const T *vh = NULL;
  if (write) {
    kc = cache + (size_t)(slot / B) * L * 2 * Hkv * head_elems + (size_t)layer * 2 * Hkv * head_elems +
         (size_t)(h - H) * head_elems + (size_t)(slot % B) * D;
    vc = kc + (size_t)Hkv * head_elems;
    vh = v + ((size_t)t * Hkv + (h - H)) * D;
  }
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    double ang = (double)positions[t] * (double)inv_freq[i], sn, cs;
    sincos(ang, &sn, &cs);
    int i0 = style == 1 ? i : 2 * i, i1 = style == 1 ? i + half : 2 * i + 1;
    double a = ld(&x[i0]), b = ld(&x[i1]);
    st(&x[i0], (float)(a * cs - b * sn));
    st(&x[i1], (float)(a * sn + b * cs));
    if (write) {
      kc[i0] = x[i0];
      kc[i1] = x[i1];
      vc[i0] = vh[i0];
      vc[i1] = vh[i1];
    }
  }
}

extern "C" int cuda_rope_kv_write(void *q, void *k, const void *v, cuda_kv_t *kv, int layer,
                                  const int32_t *positions, const int32_t *slots, int T_, int H, int style,
                                  const float *inv_freq, cudaStream_t stream) {
  if (T_ <= 0) return 0;
  if (layer < 0 || layer >= kv->n_layers || kv->head_dim % 2) {
    log_error("cuda rope_kv_write: layer %d of %d or odd head dim %d", layer, kv->n_layers, kv->head_dim);
    return STRATA_EINVAL;
  }
  int half = kv->head_dim / 2, threads = half < 128 ? 32 * ((half + 31) / 32) : 128;
  dim3 grid((unsigned)T_, (unsigned)(H + kv->n_kv_heads));
  cudaError_t e = cudaSuccess;
  DISPATCH_ACT(kv->dtype, e = pdl_launch(rope_kv_kernel<T>, grid, dim3(threads), 0, stream, 1, (T *)q, (T *)k,
                                         (const T *)v, (T *)kv->data, kv->n_blocks, kv->n_layers, kv->n_kv_heads,
                                         kv->block_size, kv->head_dim, layer, positions, slots, H, style, inv_freq));
  return launch_status(e, "rope_kv_write");
}

// ---- RoPE + paged KV write from a fused q|k|v row (stride LD): block (token, head) as above; Qwen3's
// per-head RMSNorm first (rounded to T, as the separate rmsnorm stores it); q goes to the packed Q_OUT ----

template <typename T>
__global__ void rope_qkv_kernel(T *q_out, const T *qkv, int ldq, const float *q_norm, const float *k_norm, float eps,
                                T *cache, int n_blocks, int L, int Hkv, int B, int D, int layer,
                                const int32_t *positions, const int32_t *slots, int H, int style,
                                const float *inv_freq) {
  __shared__ float red[32];
  int t = blockIdx.x, h = blockIdx.y, half = D / 2;
  bool is_q = h < H;
  pdl_trigger();
  // the angles of this thread's first pair: positions are the step's batch, ready before the previous kernel
  double sn0 = 0.0, cs0 = 1.0;
  if ((int)threadIdx.x < half) sincos((double)positions[t] * (double)inv_freq[threadIdx.x], &sn0, &cs0);
  int64_t slot = slots[t];
  pdl_wait();
  if (!is_q && !(slot >= 0 && slot < (int64_t)n_blocks * B)) return;  // whole block: a k head not written
  const T *row = qkv + (size_t)t * ldq;
  const T *x = row + (size_t)h * D;  // q heads, then the k heads (h >= H) right after them
  const float *nw = is_q ? q_norm : k_norm;
  T *dst, *vc = NULL;
  const T *vh = NULL;
  if (is_q) {
    dst = q_out + ((size_t)t * H + h) * D;
  } else {
    size_t head_elems = (size_t)B * D;
    dst = cache + (size_t)(slot / B) * L * 2 * Hkv * head_elems + (size_t)layer * 2 * Hkv * head_elems +
          (size_t)(h - H) * head_elems + (size_t)(slot % B) * D;
    vc = dst + (size_t)Hkv * head_elems;
    vh = row + (size_t)(Hkv + h) * D;  // v head h - H after the H + Hkv heads of q and k
  }
  float inv = 1.0f;
  if (nw) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
      float v = ld(&x[i]);
      ss += v * v;
    }
    inv = rsqrtf(block_sum(ss, red) / (float)D + eps);
  }
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    double sn = sn0, cs = cs0;
    if (i != (int)threadIdx.x) sincos((double)positions[t] * (double)inv_freq[i], &sn, &cs);
    int i0 = style == 1 ? i : 2 * i, i1 = style == 1 ? i + half : 2 * i + 1;
    float a = ld(&x[i0]), b = ld(&x[i1]);
    if (nw) {
      a = rnd<T>(a * inv * nw[i0]);
      b = rnd<T>(b * inv * nw[i1]);
    }
    st(&dst[i0], (float)((double)a * cs - (double)b * sn));
    st(&dst[i1], (float)((double)a * sn + (double)b * cs));
    if (vc) {
      vc[i0] = vh[i0];
      vc[i1] = vh[i1];
    }
  }
}

extern "C" int cuda_rope_qkv_write(void *q_out, const void *qkv, int ldq, const float *q_norm, const float *k_norm,
                                   float eps, cuda_kv_t *kv, int layer, const int32_t *positions,
                                   const int32_t *slots, int T_, int H, int style, const float *inv_freq,
                                   cudaStream_t stream) {
  if (T_ <= 0) return 0;
  const int D = kv->head_dim;
  if (layer < 0 || layer >= kv->n_layers || D % 2 || ldq < (H + 2 * kv->n_kv_heads) * D) {
    log_error("cuda rope_qkv_write: layer %d of %d, head dim %d (must be even) or row stride %d < %d", layer,
              kv->n_layers, D, ldq, (H + 2 * kv->n_kv_heads) * D);
    return STRATA_EINVAL;
  }
  int half = D / 2, threads = half < 128 ? 32 * ((half + 31) / 32) : 128;
  dim3 grid((unsigned)T_, (unsigned)(H + kv->n_kv_heads));
  cudaError_t e = cudaSuccess;
  DISPATCH_ACT(kv->dtype, e = pdl_launch(rope_qkv_kernel<T>, grid, dim3(threads), 0, stream, 1, (T *)q_out,
                                         (const T *)qkv, ldq, q_norm, k_norm, eps, (T *)kv->data, kv->n_blocks,
                                         kv->n_layers, kv->n_kv_heads, kv->block_size, D, layer, positions, slots, H,
                                         style, inv_freq));
  return launch_status(e, "rope_qkv_write");
}

// ---- SiLU-mul and row gather ----

template <typename T> __global__ void silu_mul_kernel(T *out, const T *gate, const T *up, int64_t n) {
  pdl_trigger();
  pdl_wait();
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float g = ld(&gate[i]);
    st(&out[i], g / (1.0f + expf(-g)) * ld(&up[i]));
  }
}

extern "C" int cuda_silu_mul(void *out, const void *gate, const void *up, int T_, int F, dtype_t act,
                             cudaStream_t stream) {
  int64_t n = (int64_t)T_ * F;
  if (n <= 0) return 0;
  cudaError_t e = cudaSuccess;
  DISPATCH_ACT(act, e = pdl_launch(silu_mul_kernel<T>, dim3(grid_for(n, 256)), dim3(256), 0, stream, 1, (T *)out,
                                   (const T *)gate, (const T *)up, n));
  return launch_status(e, "silu_mul");
}

// gate and up rows LD apart, out packed (T, F)
template <typename T> __global__ void silu_mul_ld_kernel(T *out, const T *gate, const T *up, int64_t n, int F, int ldg) {
  pdl_trigger();
  pdl_wait();
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    size_t j = (size_t)(i / F) * ldg + (size_t)(i % F);
    float g = ld(&gate[j]);
    st(&out[i], g / (1.0f + expf(-g)) * ld(&up[j]));
  }
}

extern "C" int cuda_silu_mul_ld(void *out, const void *gate, const void *up, int T_, int F, int ldg, dtype_t act,
                                cudaStream_t stream) {
  int64_t n = (int64_t)T_ * F;
  if (n <= 0) return 0;
  if (ldg < F) {
    log_error("cuda silu_mul: row stride %d < %d", ldg, F);
    return STRATA_EINVAL;
  }
  cudaError_t e = cudaSuccess;
  DISPATCH_ACT(act, e = pdl_launch(silu_mul_ld_kernel<T>, dim3(grid_for(n, 256)), dim3(256), 0, stream, 1, (T *)out,
                                   (const T *)gate, (const T *)up, n, F, ldg));
  return launch_status(e, "silu_mul");
}

template <typename T> __global__ void gather_kernel(T *out, const T *x, const int32_t *rows, int C) {
  pdl_trigger();
  pdl_wait();
  const T *src = x + (size_t)rows[blockIdx.x] * C;
  T *dst = out + (size_t)blockIdx.x * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = src[c];
}

extern "C" int cuda_gather_rows(void *out, const void *x, const int32_t *rows, int n, int C, dtype_t act,
                                cudaStream_t stream) {
  if (n <= 0) return 0;
  cudaError_t e = cudaSuccess;
  DISPATCH_ACT(act, e = pdl_launch(gather_kernel<T>, dim3(n), dim3(256), 0, stream, 1, (T *)out, (const T *)x, rows,
                                   C));
  return launch_status(e, "gather_rows");
}

// ---- argmax_rows: out(n) = argmax over V of x(n, V); ties to the lowest id, NaN never wins ----
// The greedy fast path of the engine: only token ids cross to the host, not (n, V) logits.
__device__ __forceinline__ bool am_better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

template <typename T> __global__ void argmax_kernel(int32_t *out, const T *x, int V) {
  pdl_trigger();
  pdl_wait();
  const T *row = x + (size_t)blockIdx.x * V;
  float bv = -INFINITY;
  int bi = V;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    float v = ld(row + i);
    if (v == v && am_better(v, i, bv, bi)) bv = v, bi = i;  // v == v: not NaN
  }
  for (int off = 16; off > 0; off >>= 1) {
    float ov = __shfl_down_sync(0xffffffffu, bv, off);
    int oi = __shfl_down_sync(0xffffffffu, bi, off);
    if (am_better(ov, oi, bv, bi)) bv = ov, bi = oi;
  }
  __shared__ float sv[32];
  __shared__ int si[32];
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sv[warp] = bv, si[warp] = bi;
  __syncthreads();
  if (warp == 0) {
    int nw = blockDim.x / 32;
    bv = lane < nw ? sv[lane] : -INFINITY;
    bi = lane < nw ? si[lane] : V;
    for (int off = 16; off > 0; off >>= 1) {
      float ov = __shfl_down_sync(0xffffffffu, bv, off);
      int oi = __shfl_down_sync(0xffffffffu, bi, off);
      if (am_better(ov, oi, bv, bi)) bv = ov, bi = oi;
    }
    if (lane == 0) out[blockIdx.x] = bi < V ? bi : 0;
  }
}

extern "C" int cuda_argmax_rows(int32_t *out, const void *x, int n, int V, dtype_t act, cudaStream_t stream) {
  if (n <= 0) return 0;
  cudaError_t e = cudaSuccess;
  DISPATCH_ACT(act, e = pdl_launch(argmax_kernel<T>, dim3(n), dim3(1024), 0, stream, 1, out, (const T *)x, V));
  return launch_status(e, "argmax_rows");
}
