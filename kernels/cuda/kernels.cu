// kernels.cu: the CUDA kernels of the forward pass (see kernels/kernels_cuda.h), templated on the activation type.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "common/dtype.h"
#include "common/log.h"
#include "common/status.h"
}
#include "kernels/kernels_cuda.h"

// ---- element access: every kernel computes in f32 whatever the stored type ----

__device__ __forceinline__ float ld(const float *p) { return *p; }
__device__ __forceinline__ float ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ float ld(const __half *p) { return __half2float(*p); }
__device__ __forceinline__ void st(float *p, float v) { *p = v; }
__device__ __forceinline__ void st(__nv_bfloat16 *p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void st(__half *p, float v) { *p = __float2half(v); }
template <typename T> __device__ __forceinline__ float rnd(float v) {  // v rounded to T, as f32
  T t;
  st(&t, v);
  return ld(&t);
}

// DISPATCH(act, KERNEL_CALL): runs the statement with `T` bound to the C++ type of ACT.
#define DISPATCH_ACT(act, ...)                                                \
  do {                                                                        \
    if ((act) == DTYPE_F32) {                                                 \
      typedef float T;                                                        \
      __VA_ARGS__;                                                            \
    } else if ((act) == DTYPE_BF16) {                                         \
      typedef __nv_bfloat16 T;                                                \
      __VA_ARGS__;                                                            \
    } else if ((act) == DTYPE_F16) {                                          \
      typedef __half T;                                                       \
      __VA_ARGS__;                                                            \
    } else {                                                                  \
      log_error("cuda kernels: activation dtype %s is not f32, bf16 or f16", dtype_name(act)); \
      return STRATA_EINVAL;                                                   \
    }                                                                         \
  } while (0)

// launched: the status of the launch just made, logged once with the kernel's name.
static int launched(const char *what) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return 0;
  log_error("cuda %s: launch failed: %s", what, cudaGetErrorString(e));
  return STRATA_EIO;
}

static unsigned grid_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return (unsigned)(b > (1 << 30) ? (1 << 30) : b);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

extern "C" int cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

// ---- conversion ----

template <typename D, typename S> __global__ void convert_kernel(D *out, const S *src, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    st(&out[i], ld(&src[i]));
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
  DISPATCH_ACT(act, embed_kernel<T><<<T_, 256, 0, stream>>>((T *)out, (const T *)emb, V, C, ids));
  return launched("embed");
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

static int norm_threads(int C) { return C >= 1024 ? 1024 : C >= 256 ? 256 : 32 * ((C + 31) / 32); }

extern "C" int cuda_rmsnorm(void *out, const void *x, const float *w, int rows, int C, float eps, dtype_t act,
                            cudaStream_t stream) {
  if (rows <= 0) return 0;
  DISPATCH_ACT(act, rmsnorm_kernel<T, false><<<rows, norm_threads(C), 0, stream>>>((T *)out, NULL, (const T *)x,
                                                                                     w, C, eps));
  return launched("rmsnorm");
}

extern "C" int cuda_add_rmsnorm(void *out, void *residual, const void *x, const float *w, int rows, int C, float eps,
                                dtype_t act, cudaStream_t stream) {
  if (rows <= 0) return 0;
  DISPATCH_ACT(act, rmsnorm_kernel<T, true><<<rows, norm_threads(C), 0, stream>>>((T *)out, (T *)residual,
                                                                                    (const T *)x, w, C, eps));
  return launched("add_rmsnorm");
}

// ---- GEMV for a few tokens: one warp per output feature, 16-byte streaming loads of W, GEMV_U of them in
// flight per lane before the first use, NT tokens sharing each load of W ----

#define GEMV_WARPS 4
#define GEMV_U 8

template <typename T, int NT>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_kernel(T *out, const T *x, const T *w, int N, int K, const float *bias) {
  constexpr int E = 16 / sizeof(T);  // elements per 16-byte load
  int n = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (n >= N) return;
  const T *wr = w + (size_t)n * K;
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; t++) acc[t] = 0.0f;
  int kv = (K % E == 0) ? K : 0;  // the vector part (W rows and X rows are 16-byte aligned when K % E == 0)
  for (int k0 = lane * E; k0 < kv; k0 += 32 * E * GEMV_U) {
    uint4 wv[GEMV_U];
#pragma unroll
    for (int u = 0; u < GEMV_U; u++) {
      int k = k0 + u * 32 * E;
      wv[u] = k < kv ? __ldcs((const uint4 *)(wr + k)) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < GEMV_U; u++) {
      int k = k0 + u * 32 * E;
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
  }
  for (int k = kv + lane; k < K; k += 32) {  // K not a multiple of E: scalar path
    float wf = ld(&wr[k]);
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] += wf * ld(&x[(size_t)t * K + k]);
  }
#pragma unroll
  for (int t = 0; t < NT; t++) {
    float s = warp_sum(acc[t]);
    if (lane == 0) st(&out[(size_t)t * N + n], s + (bias ? bias[n] : 0.0f));
  }
}

template <typename T>
static void gemv_launch(T *out, const T *x, const T *w, int N, int K, const float *bias, int nt, cudaStream_t s) {
  unsigned g = (unsigned)((N + GEMV_WARPS - 1) / GEMV_WARPS);
  switch (nt) {
#define GEMV_CASE(n_) \
  case n_: gemv_kernel<T, n_><<<g, GEMV_WARPS * 32, 0, s>>>(out, x, w, N, K, bias); break;
    GEMV_CASE(1) GEMV_CASE(2) GEMV_CASE(3) GEMV_CASE(4) GEMV_CASE(5) GEMV_CASE(6) GEMV_CASE(7) GEMV_CASE(8)
#undef GEMV_CASE
    default: break;
  }
}

extern "C" int cuda_gemv(void *out, const void *x, const void *w, int N, int K, const float *bias, int T_,
                         dtype_t act, cudaStream_t stream) {
  if (T_ < 1 || T_ > CUDA_GEMV_MAX_T || N < 1 || K < 1) {
    log_error("cuda gemv: bad shape (T %d, N %d, K %d); T must be 1..%d", T_, N, K, CUDA_GEMV_MAX_T);
    return STRATA_EINVAL;
  }
  DISPATCH_ACT(act, gemv_launch<T>((T *)out, (const T *)x, (const T *)w, N, K, bias, T_, stream));
  return launched("gemv");
}

template <typename T> __global__ void bias_kernel(T *out, const float *bias, int64_t n, int N) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    st(&out[i], ld(&out[i]) + bias[i % N]);
}

extern "C" int cuda_add_bias(void *out, const float *bias, int T_, int N, dtype_t act, cudaStream_t stream) {
  int64_t n = (int64_t)T_ * N;
  if (n <= 0) return 0;
  DISPATCH_ACT(act, bias_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>((T *)out, bias, n, N));
  return launched("add_bias");
}

// ---- RoPE + paged KV write: block (token, head) over the query heads then the KV heads; thread i owns
// rotation pair i (its angle in double, as on the CPU); a KV-head block also writes its K and V rows ----

template <typename T>
__global__ void rope_kv_kernel(T *q, T *k, const T *v, T *cache, int n_blocks, int L, int Hkv, int B, int D,
                               int layer, const int32_t *positions, const int32_t *slots, int H, int style,
                               const float *inv_freq) {
  int t = blockIdx.x, h = blockIdx.y, half = D / 2;
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
  DISPATCH_ACT(kv->dtype, rope_kv_kernel<T><<<grid, threads, 0, stream>>>(
                              (T *)q, (T *)k, (const T *)v, (T *)kv->data, kv->n_blocks, kv->n_layers,
                              kv->n_kv_heads, kv->block_size, kv->head_dim, layer, positions, slots, H, style,
                              inv_freq));
  return launched("rope_kv_write");
}

// ---- paged attention over a ragged batch: one block per (query token, KV head), so the G = H/Hkv query
// heads of a group share one read of K and V. Each warp takes tiles of 32 positions (lane j owns position
// j of the tile for q.k; for p.v each lane owns head-dim elements), keeping an online softmax per query
// head; the warps merge through shared memory at the end. ----

#define ATT_WARPS 8
#define ATT_MAXG 8  // query heads per KV head

template <typename T, int NE>  // NE: head-dim elements per lane in p.v (D <= 32 * NE)
__global__ void __launch_bounds__(ATT_WARPS * 32)
    attention_kernel(T *out, const T *q, const T *cache, int n_blocks, int L, int Hkv, int B, int D, int layer,
                     const int32_t *positions, const int32_t *seq_of, const int32_t *block_table, int max_blocks,
                     int H, float scale) {
  extern __shared__ float4 smem4[];
  float *smem = (float *)smem4;
  const int G = H / Hkv;
  float *sq = smem;                          // (G, D) scaled queries
  float *sp = sq + G * D;                    // (W, G, 32) probabilities of the current tile
  float *sm = sp + ATT_WARPS * G * 32;       // (W, G) running max
  float *sl = sm + ATT_WARPS * G;            // (W, G) running sum
  float *sacc = sl + ATT_WARPS * G;          // (W, G, D) accumulators
  int t = blockIdx.x / Hkv, g = blockIdx.x % Hkv;
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int n = positions[t] + 1;
  const int32_t *bt = block_table + (size_t)seq_of[t] * max_blocks;
  T *o = out + ((size_t)t * H + (size_t)g * G) * D;
  // a block outside the cache (or a table shorter than the context) makes the rows zero, as on the CPU
  int nb = (n + B - 1) / B, bad = nb > max_blocks;
  for (int i = threadIdx.x; i < nb && !bad; i += blockDim.x)
    if (bt[i] < 0 || bt[i] >= n_blocks) bad = 1;
  if (__syncthreads_or(bad)) {
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) st(&o[i], 0.0f);
    return;
  }
  const T *qr = q + ((size_t)t * H + (size_t)g * G) * D;
  for (int i = threadIdx.x; i < G * D; i += blockDim.x) sq[i] = ld(&qr[i]) * scale;
  __syncthreads();
  float m[ATT_MAXG], l[ATT_MAXG], acc[ATT_MAXG][NE];
#pragma unroll
  for (int j = 0; j < ATT_MAXG; j++) {
    m[j] = -INFINITY, l[j] = 0.0f;
#pragma unroll
    for (int e = 0; e < NE; e++) acc[j][e] = 0.0f;
  }
  const size_t head_elems = (size_t)B * D, block_elems = (size_t)L * 2 * Hkv * head_elems;
  const size_t k_off = (size_t)layer * 2 * Hkv * head_elems + (size_t)g * head_elems;
  const size_t v_off = k_off + (size_t)Hkv * head_elems;
  constexpr int V = 16 / sizeof(T);
  const bool vec = D % V == 0 && D % 4 == 0;
  float *my_p = sp + warp * G * 32;
  for (int base = warp * 32; base < n; base += ATT_WARPS * 32) {
    int p = base + lane;
    float s[ATT_MAXG];
#pragma unroll
    for (int j = 0; j < ATT_MAXG; j++) s[j] = 0.0f;
    if (p < n) {
      const T *kp = cache + (size_t)bt[p / B] * block_elems + k_off + (size_t)(p % B) * D;
      if (vec) {
        for (int c = 0; c < D; c += V) {
          uint4 kv4 = *(const uint4 *)(kp + c);
          const T *ke = (const T *)&kv4;
#pragma unroll
          for (int e = 0; e < V; e += 4) {
            float k0 = ld(&ke[e]), k1 = ld(&ke[e + 1]), k2 = ld(&ke[e + 2]), k3 = ld(&ke[e + 3]);
#pragma unroll
            for (int j = 0; j < ATT_MAXG; j++)
              if (j < G) {
                float4 qv = *(const float4 *)(sq + j * D + c + e);
                s[j] += qv.x * k0 + qv.y * k1 + qv.z * k2 + qv.w * k3;
              }
          }
        }
      } else {
        for (int d = 0; d < D; d++) {
          float kd = ld(&kp[d]);
#pragma unroll
          for (int j = 0; j < ATT_MAXG; j++)
            if (j < G) s[j] += sq[j * D + d] * kd;
        }
      }
    }
    // online softmax per query head over this tile
#pragma unroll
    for (int j = 0; j < ATT_MAXG; j++) {
      if (j >= G) break;
      float sj = p < n ? s[j] : -INFINITY, mt = sj;
      for (int off = 16; off > 0; off >>= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
      float mn = fmaxf(m[j], mt), corr = __expf(m[j] - mn), pr = p < n ? __expf(sj - mn) : 0.0f;
      l[j] = l[j] * corr + pr;  // this lane's share; summed over lanes at the end
#pragma unroll
      for (int e = 0; e < NE; e++) acc[j][e] *= corr;
      m[j] = mn;
      my_p[j * 32 + lane] = pr;
    }
    __syncwarp();
    int nt = n - base < 32 ? n - base : 32;
    for (int i = 0; i < nt; i++) {
      int pp = base + i;
      const T *vp = cache + (size_t)bt[pp / B] * block_elems + v_off + (size_t)(pp % B) * D;
      float vv[NE];
#pragma unroll
      for (int e = 0; e < NE; e++) vv[e] = lane + 32 * e < D ? ld(&vp[lane + 32 * e]) : 0.0f;
#pragma unroll
      for (int j = 0; j < ATT_MAXG; j++) {
        if (j >= G) break;
        float pj = my_p[j * 32 + i];
#pragma unroll
        for (int e = 0; e < NE; e++) acc[j][e] += pj * vv[e];
      }
    }
    __syncwarp();
  }
#pragma unroll
  for (int j = 0; j < ATT_MAXG; j++) {
    if (j >= G) break;
    float lj = warp_sum(l[j]);
    if (lane == 0) {
      sm[warp * G + j] = m[j];
      sl[warp * G + j] = lj;
    }
#pragma unroll
    for (int e = 0; e < NE; e++)
      if (lane + 32 * e < D) sacc[((size_t)warp * G + j) * D + lane + 32 * e] = acc[j][e];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
    int j = i / D, d = i % D;
    float M = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, sm[w * G + j]);
    float Ls = 0.0f, a = 0.0f;
    for (int w = 0; w < ATT_WARPS; w++) {
      float mw = sm[w * G + j];
      if (mw == -INFINITY) continue;  // a warp that saw no position
      float f = __expf(mw - M);
      Ls += sl[w * G + j] * f;
      a += sacc[((size_t)w * G + j) * D + d] * f;
    }
    st(&o[i], a / Ls);
  }
}

template <typename T, int NE>
static cudaError_t attention_launch(T *out, const T *q, const cuda_kv_t *kv, int layer, const int32_t *positions,
                                    const int32_t *seq_of, const int32_t *block_table, int max_blocks, int T_,
                                    int H, float scale, cudaStream_t stream) {
  int G = H / kv->n_kv_heads, D = kv->head_dim;
  size_t shmem = sizeof(float) * ((size_t)G * D + ATT_WARPS * G * 32 + 2 * ATT_WARPS * G + (size_t)ATT_WARPS * G * D);
  if (shmem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(attention_kernel<T, NE>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)shmem);
    if (e != cudaSuccess) return e;
  }
  attention_kernel<T, NE><<<(unsigned)((int64_t)T_ * kv->n_kv_heads), ATT_WARPS * 32, shmem, stream>>>(
      out, q, (const T *)kv->data, kv->n_blocks, kv->n_layers, kv->n_kv_heads, kv->block_size, D, layer, positions,
      seq_of, block_table, max_blocks, H, scale);
  return cudaSuccess;
}

extern "C" int cuda_attention(void *out, const void *q, const cuda_kv_t *kv, int layer, const int32_t *positions,
                              const int32_t *seq_of, const int32_t *block_table, int max_blocks, int T_, int H,
                              float scale, cudaStream_t stream) {
  if (T_ <= 0) return 0;
  int D = kv->head_dim;
  if (layer < 0 || layer >= kv->n_layers || D > 256 || kv->n_kv_heads < 1 || H % kv->n_kv_heads ||
      H / kv->n_kv_heads > ATT_MAXG) {
    log_error("cuda attention: layer %d of %d, head dim %d (max 256), %d heads over %d KV heads (at most %d per KV "
              "head)", layer, kv->n_layers, D, H, kv->n_kv_heads, ATT_MAXG);
    return STRATA_EINVAL;
  }
  if ((int64_t)T_ * kv->n_kv_heads > 0x7fffffff) {
    log_error("cuda attention: %d tokens x %d KV heads is too many blocks", T_, kv->n_kv_heads);
    return STRATA_EINVAL;
  }
  cudaError_t e = cudaSuccess;
#define ATT_GO(ne) e = attention_launch<T, ne>((T *)out, (const T *)q, kv, layer, positions, seq_of, block_table, \
                                             max_blocks, T_, H, scale, stream)
  DISPATCH_ACT(kv->dtype, if (D <= 32) ATT_GO(1); else if (D <= 64) ATT_GO(2); else if (D <= 128) ATT_GO(4);
               else ATT_GO(8));
#undef ATT_GO
  if (e != cudaSuccess) {
    log_error("cuda attention: cannot raise the shared-memory limit: %s", cudaGetErrorString(e));
    return STRATA_EIO;
  }
  return launched("attention");
}

// ---- SiLU-mul and row gather ----

template <typename T> __global__ void silu_mul_kernel(T *out, const T *gate, const T *up, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float g = ld(&gate[i]);
    st(&out[i], g / (1.0f + expf(-g)) * ld(&up[i]));
  }
}

extern "C" int cuda_silu_mul(void *out, const void *gate, const void *up, int T_, int F, dtype_t act,
                             cudaStream_t stream) {
  int64_t n = (int64_t)T_ * F;
  if (n <= 0) return 0;
  DISPATCH_ACT(act, silu_mul_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>((T *)out, (const T *)gate,
                                                                              (const T *)up, n));
  return launched("silu_mul");
}

template <typename T> __global__ void gather_kernel(T *out, const T *x, const int32_t *rows, int C) {
  const T *src = x + (size_t)rows[blockIdx.x] * C;
  T *dst = out + (size_t)blockIdx.x * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = src[c];
}

extern "C" int cuda_gather_rows(void *out, const void *x, const int32_t *rows, int n, int C, dtype_t act,
                                cudaStream_t stream) {
  if (n <= 0) return 0;
  DISPATCH_ACT(act, gather_kernel<T><<<n, 256, 0, stream>>>((T *)out, (const T *)x, rows, C));
  return launched("gather_rows");
}
