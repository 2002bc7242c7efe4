// attention.cu: paged attention over a ragged batch on CUDA: a tensor-core decode kernel that streams K/V from
// the paged cache (16-bit activations), a tensor-core tile kernel (prefill, 16-bit activations), and the earlier
// split-KV and first-version kernels (f32, odd head dims, and comparisons: CUDA_ATT_NO_TC, CUDA_ATT_V1).
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <mma.h>

#include <atomic>

#include "kernels/cuda/cuda_int.cuh"

// ---- version 1: one block per (query token, KV head), so the G = H/Hkv query heads of a group share one
// read of K and V. Each warp takes tiles of 32 positions (lane j owns position j of the tile for q.k; for
// p.v each lane owns head-dim elements), keeping an online softmax per query head; the warps merge through
// shared memory at the end. Too little parallelism for a few long queries (8 blocks at batch 1). ----

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

// ---- split-KV (flash-decoding): block (query token x KV head, split) owns CHUNK positions of the query's
// context, in tiles of SPL_TP positions staged through shared memory as f32 (K rows padded by 4 words, so
// that the 16-byte reads of lanes r = 0..31, one row each, spread over all banks). Scores: thread (head j,
// position r); softmax: one warp per head; p.v: each thread owns one head-dim column (two when D > 128) for
// the query heads jg, jg + NG, ... (NG = 128 / D groups of D threads), so each V element read from shared
// memory serves every head of its group. With one split the block writes the output; with several it
// writes (max, sum, unnormalized accumulators) per head and attention_merge_kernel combines them. ----

#define SPL_THREADS 128
#define SPL_TP 32  // positions per tile (one per lane in the softmax)
#define SPL_LU 4   // 16-byte loads of K (and of V) in flight per thread before the first use

template <typename T> __device__ __forceinline__ float4 ld4(const T *e) {
  return make_float4(ld(&e[0]), ld(&e[1]), ld(&e[2]), ld(&e[3]));
}

template <typename T>
__global__ void __launch_bounds__(SPL_THREADS)
    attention_split_kernel(T *out, float *part, const T *q, const T *cache, int n_blocks, int L, int Hkv, int B,
                           int D, int layer, const int32_t *positions, const int32_t *seq_of,
                           const int32_t *block_table, int max_blocks, int H, float scale, int chunk) {
  extern __shared__ float4 smem4[];
  const int G = H / Hkv, GD = G * D, DP = D + 4, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int nsplit = gridDim.y, split = blockIdx.y;
  float *sq = (float *)smem4;       // (G, D) scaled queries
  float *sk = sq + GD;              // (TP, D + 4) keys of the tile
  float *sv = sk + SPL_TP * DP;     // (TP, D) values of the tile
  float *ss = sv + SPL_TP * D;      // (G, TP) scores, then probabilities
  float *sm = ss + G * SPL_TP;      // (G) running max
  float *sl = sm + G;               // (G) running sum
  float *sc = sl + G;               // (G) rescale of the accumulators for this tile
  const int t = blockIdx.x / Hkv, g = blockIdx.x % Hkv, n = positions[t] + 1;
  const int32_t *bt = block_table + (size_t)seq_of[t] * max_blocks;
  // a block outside the cache (or a table shorter than the context) makes the rows zero, as on the CPU
  int nb = (n + B - 1) / B, bad = n < 1 || nb > max_blocks;
  for (int i = tid; i < nb && !bad; i += SPL_THREADS)
    if (bt[i] < 0 || bt[i] >= n_blocks) bad = 1;
  bad = __syncthreads_or(bad);
  const int p0 = split * chunk, p1 = bad ? p0 : min(n, p0 + chunk);
  const T *qr = q + ((size_t)t * H + (size_t)g * G) * D;
  for (int i = tid; i < GD; i += SPL_THREADS) sq[i] = ld(&qr[i]) * scale;
  if (tid < G) sm[tid] = -INFINITY, sl[tid] = 0.0f;
  // p.v ownership: column d0 (and d0 + 128) of query heads jg + k NG
  const bool two = D > SPL_THREADS;
  const int NG = two ? 1 : SPL_THREADS / D, jg = two ? 0 : tid / D, d0 = two ? tid : tid % D;
  const bool own = jg < NG, own1 = two && d0 + SPL_THREADS < D;
  float acc[2][ATT_MAXG];
#pragma unroll
  for (int k = 0; k < ATT_MAXG; k++) acc[0][k] = 0.0f, acc[1][k] = 0.0f;
  __syncthreads();
  const size_t head_elems = (size_t)B * D, block_elems = (size_t)L * 2 * Hkv * head_elems;
  const size_t k_off = (size_t)layer * 2 * Hkv * head_elems + (size_t)g * head_elems;
  const size_t v_off = k_off + (size_t)Hkv * head_elems;
  constexpr int V = 16 / sizeof(T);
  const int per = D % V == 0 ? D / V : 0;
  for (int base = p0; base < p1; base += SPL_TP) {
    const int nt = min(SPL_TP, p1 - base);
    if (per) {  // 16-byte loads, SPL_LU of K and of V issued before any is used
      for (int i0 = tid; i0 < nt * per; i0 += SPL_THREADS * SPL_LU) {
        uint4 k4[SPL_LU], v4[SPL_LU];
#pragma unroll
        for (int u = 0; u < SPL_LU; u++) {
          int i = i0 + u * SPL_THREADS, r = i / per, c = (i % per) * V, p = base + r;
          if (i < nt * per) {
            size_t off = (size_t)bt[p / B] * block_elems + (size_t)(p % B) * D + c;
            k4[u] = *(const uint4 *)(cache + k_off + off);
            v4[u] = *(const uint4 *)(cache + v_off + off);
          }
        }
#pragma unroll
        for (int u = 0; u < SPL_LU; u++) {
          int i = i0 + u * SPL_THREADS, r = i / per, c = (i % per) * V;
          if (i < nt * per) {
            const T *ke = (const T *)&k4[u], *ve = (const T *)&v4[u];
#pragma unroll
            for (int e = 0; e < V; e += 4) {
              *(float4 *)(sk + r * DP + c + e) = ld4(ke + e);
              *(float4 *)(sv + r * D + c + e) = ld4(ve + e);
            }
          }
        }
      }
    } else {
      for (int i = tid; i < nt * D; i += SPL_THREADS) {
        int r = i / D, d = i % D, p = base + r;
        size_t off = (size_t)bt[p / B] * block_elems + (size_t)(p % B) * D + d;
        sk[r * DP + d] = ld(&cache[k_off + off]);
        sv[r * D + d] = ld(&cache[v_off + off]);
      }
    }
    __syncthreads();
    for (int i = tid; i < G * SPL_TP; i += SPL_THREADS) {
      int j = i / SPL_TP, r = i % SPL_TP;
      float s = -INFINITY;
      if (r < nt) {
        const float *qj = sq + j * D, *kr = sk + r * DP;
        s = 0.0f;
        if (D % 4 == 0) {
          for (int d = 0; d < D; d += 4) {
            float4 a = *(const float4 *)(qj + d), b = *(const float4 *)(kr + d);
            s += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
          }
        } else {
          for (int d = 0; d < D; d++) s += qj[d] * kr[d];
        }
      }
      ss[i] = s;
    }
    __syncthreads();
    for (int j = warp; j < G; j += SPL_THREADS / 32) {
      float s = ss[j * SPL_TP + lane], mt = s;
      for (int o = 16; o > 0; o >>= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
      float mo = sm[j], mn = fmaxf(mo, mt), p = lane < nt ? __expf(s - mn) : 0.0f;
      float sum = warp_sum(p);
      ss[j * SPL_TP + lane] = p;
      if (lane == 0) {
        float c = __expf(mo - mn);  // 0 on the first tile (mo = -inf, mn finite)
        sc[j] = c, sl[j] = sl[j] * c + sum, sm[j] = mn;
      }
    }
    __syncthreads();
    if (own) {
#pragma unroll
      for (int k = 0; k < ATT_MAXG; k++) {
        int j = jg + k * NG;
        if (j < G) acc[0][k] *= sc[j], acc[1][k] *= sc[j];
      }
      for (int r = 0; r < nt; r++) {
        float v0 = sv[r * D + d0], v1 = own1 ? sv[r * D + d0 + SPL_THREADS] : 0.0f;
#pragma unroll
        for (int k = 0; k < ATT_MAXG; k++) {
          int j = jg + k * NG;
          if (j < G) {
            float pj = ss[j * SPL_TP + r];
            acc[0][k] += pj * v0;
            if (two) acc[1][k] += pj * v1;
          }
        }
      }
    }
    __syncthreads();  // the next tile overwrites sk, sv, ss
  }
  if (!own) return;
  T *o = out + ((size_t)t * H + (size_t)g * G) * D;
  float *pp = part + ((size_t)blockIdx.x * nsplit + split) * (size_t)(G * (D + 2));  // (max G, sum G, acc G*D)
  if (nsplit > 1 && tid < G) pp[tid] = sm[tid], pp[G + tid] = sl[tid];
#pragma unroll
  for (int k = 0; k < ATT_MAXG; k++) {
    int j = jg + k * NG;
    if (j >= G) continue;
    float l = sl[j], f = nsplit == 1 ? (l > 0.0f ? 1.0f / l : 0.0f) : 1.0f;
    for (int h2 = 0; h2 < 2; h2++) {
      int d = d0 + h2 * SPL_THREADS;
      if (h2 == 1 && !own1) break;
      float a = h2 ? acc[1][k] : acc[0][k];
      if (nsplit == 1) st(&o[j * D + d], a * f);
      else pp[2 * G + j * D + d] = a;
    }
  }
}

// merges the NSPLIT partials of block (token x KV head); a row no split saw (a bad block table) is zero
template <typename T>
__global__ void attention_merge_kernel(T *out, const float *part, int Hkv, int H, int D, int nsplit) {
  const int G = H / Hkv, t = blockIdx.x / Hkv, g = blockIdx.x % Hkv;
  const size_t stride = (size_t)G * (D + 2);
  const float *pb = part + (size_t)blockIdx.x * nsplit * stride;
  T *o = out + ((size_t)t * H + (size_t)g * G) * D;
  for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
    int j = i / D;
    float M = -INFINITY, Ls = 0.0f, a = 0.0f;
    for (int s = 0; s < nsplit; s++) M = fmaxf(M, pb[s * stride + j]);
    if (M != -INFINITY) {
      for (int s = 0; s < nsplit; s++) {
        float ms = pb[s * stride + j];
        if (ms == -INFINITY) continue;  // a split past the end of this query's context
        float f = __expf(ms - M);
        Ls += pb[s * stride + G + j] * f;
        a += pb[s * stride + 2 * G + i] * f;
      }
    }
    st(&o[i], Ls > 0.0f ? a / Ls : 0.0f);
  }
}

// split_plan: how many splits (and positions per split) for T x Hkv blocks over contexts of at most
// max_blocks * B positions: enough blocks for ~8 per multiprocessor, whole tiles per split, partials that
// fit in the caller's scratch. Depends only on the shape, so a captured graph stays right.
static int split_plan(int T_, int Hkv, int G, int D, int max_blocks, int B, const cuda_att_work_t *w, int *chunk) {
  int64_t ctx = (int64_t)max_blocks * B, tiles = (ctx + SPL_TP - 1) / SPL_TP;
  if (tiles < 1) tiles = 1;
  int64_t blocks = (int64_t)T_ * Hkv, target = 8 * (int64_t)(w && w->n_sms > 0 ? w->n_sms : 132);
  int64_t ns = blocks >= target ? 1 : (target + blocks - 1) / blocks;
  if (ns > tiles) ns = tiles;
  size_t per = (size_t)blocks * G * (D + 2) * sizeof(float);
  if (!w || !w->part) ns = 1;
  else if ((size_t)ns * per > w->part_bytes) ns = (int64_t)(w->part_bytes / per);
  if (ns < 1) ns = 1;
  int64_t tiles_per = (tiles + ns - 1) / ns;
  *chunk = (int)(tiles_per * SPL_TP);
  return (int)((tiles + tiles_per - 1) / tiles_per);
}

template <typename T>
static cudaError_t split_launch(T *out, const T *q, const cuda_kv_t *kv, int layer, const int32_t *positions,
                                const int32_t *seq_of, const int32_t *block_table, int max_blocks, int T_, int H,
                                float scale, const cuda_att_work_t *w, cudaStream_t stream) {
  const int Hkv = kv->n_kv_heads, G = H / Hkv, D = kv->head_dim;
  int chunk = 0, ns = split_plan(T_, Hkv, G, D, max_blocks, kv->block_size, w, &chunk);
  size_t shmem = sizeof(float) * ((size_t)G * D + SPL_TP * (D + 4) + SPL_TP * D + G * SPL_TP + 3 * G);
  if (shmem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(attention_split_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)shmem);
    if (e != cudaSuccess) return e;
  }
  dim3 grid((unsigned)((int64_t)T_ * Hkv), (unsigned)ns);
  attention_split_kernel<T><<<grid, SPL_THREADS, shmem, stream>>>(
      out, ns > 1 ? w->part : NULL, q, (const T *)kv->data, kv->n_blocks, kv->n_layers, Hkv, kv->block_size, D,
      layer, positions, seq_of, block_table, max_blocks, H, scale, chunk);
  if (ns > 1) attention_merge_kernel<T><<<grid.x, 128, 0, stream>>>(out, w->part, Hkv, H, D, ns);
  return cudaSuccess;
}

// ---- decode on tensor cores (16-bit K/V, D in {64, 128}, G <= 8): block (query token x KV head, split) owns
// CHUNK positions of the query's context; each of its DEC_WARPS warps takes tiles of DEC_TP positions in
// turn (warp w: tiles w, w + DEC_WARPS, ...) and runs its own cp.async ring of 3 stages, so K and V go from
// the paged cache to shared memory with 16-byte copies, two tiles ahead of the math, with no block-wide
// barrier. The G query heads of the KV head are the rows of an m16n8k16 A operand (rows G..15 zero), kept in
// registers for the whole block: S = Q K^T (K through ldmatrix), online softmax in f32 (log2 domain) on the
// accumulator fragment, which is then rounded to ACT and reused in place as the A operand of O += P V (V
// through ldmatrix.trans); O stays in registers. At the end the warps merge through shared memory; with one
// split the block writes the output, with several it writes a partial (accumulators, max, sum per head) and
// the last split of the pair to finish (an atomic count per pair) merges them all. The number of splits
// makes about one wave of resident blocks when the (token, KV head) pairs alone fill too few of them. ----

#define DEC_WARPS 4
#define DEC_TP 16        // positions per warp tile: two n8 tiles of S, one k16 step of P V
#define DEC_ST_MAX 4     // stages of a warp's ring: 2..4 (tiles in flight: stages - 1 ahead of the one in use)
#define DEC_MAX_SPLIT 256

template <int D> struct dec_cfg {
  static constexpr int ROW = D + 8;          // padded row (elements): 8 rows of ldmatrix hit 32 banks
  static constexpr int TILE = DEC_TP * ROW;  // one K or V tile (elements)
  static constexpr size_t smem(int nst) { return (size_t)DEC_WARPS * nst * 2 * TILE * 2; }
  static_assert(D % 16 == 0 && D <= 256, "head dim");
  static_assert((size_t)DEC_WARPS * 8 * (D + 2) * 4 <= (size_t)DEC_WARPS * 2 * 2 * TILE * 2,
                "the merge area reuses the rings");
};

__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

// 16 bytes global -> shared, asynchronously; SRC_BYTES 0 writes zeros (positions past the chunk)
__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// c(16x8, f32) += a(16x16, rows a0 = (g, k 2c), a1 = (g + 8, 2c), a2 = (g, 2c + 8), a3 = (g + 8, 2c + 8)) b(16x8)
template <typename T> __device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                               uint32_t a3, uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], uint32_t a0, uint32_t a1,
                                                                    uint32_t a2, uint32_t a3, uint32_t b0,
                                                                    uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<__half>(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                             uint32_t a3, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// (lo, hi) rounded to T and packed (lo in the low half); *SUM += the rounded values
template <typename T> __device__ __forceinline__ uint32_t pack_sum(float lo, float hi, float *sum);
template <> __device__ __forceinline__ uint32_t pack_sum<__nv_bfloat16>(float lo, float hi, float *sum) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  float2 f = __bfloat1622float2(h);
  *sum += f.x + f.y;
  return *(uint32_t *)&h;
}
template <> __device__ __forceinline__ uint32_t pack_sum<__half>(float lo, float hi, float *sum) {
  __half2 h = __floats2half2_rn(lo, hi);
  float2 f = __half22float2(h);
  *sum += f.x + f.y;
  return *(uint32_t *)&h;
}

// dec_fetch: the K and V rows of positions BASE .. BASE + 15 into stage S of a warp's ring; zeros from P1 on
// and for a block id outside the cache (the block-table check runs alongside and zeroes such a query)
template <typename T, int D>
__device__ __forceinline__ void dec_fetch(T *ring, int s, const T *kbase, const T *vbase, const int32_t *bt,
                                          int n_blocks, size_t block_elems, int B, int bshift, int base, int p1,
                                          int lane) {
  constexpr int PER = D / 8, ROW = dec_cfg<D>::ROW, TILE = dec_cfg<D>::TILE;
  T *sk = ring + (size_t)s * 2 * TILE, *sv = sk + TILE;
#pragma unroll
  for (int u = 0; u < DEC_TP * PER / 32; u++) {
    const int i = lane + 32 * u, r = i / PER, c = (i % PER) * 8, p = base + r;
    const int blk = bshift >= 0 ? p >> bshift : p / B, id = p < p1 ? bt[blk] : -1;
    const bool ok = id >= 0 && id < n_blocks;
    const size_t off = ok ? (size_t)id * block_elems + (size_t)(p - blk * B) * D + c : 0;
    cp_async16(smem_addr(sk + r * ROW + c), kbase + off, ok ? 16 : 0);
    cp_async16(smem_addr(sv + r * ROW + c), vbase + off, ok ? 16 : 0);
  }
}

// A split's partial result: (unnormalized accumulators G*D, max G in the natural-log domain, sum G) floats,
// padded to a multiple of 4 so that the merge reads the accumulators with 16-byte loads.
__host__ __device__ static inline int dec_pstride(int G, int D) { return (G * (D + 2) + 3) & ~3; }

// splits of each pair done in the current launch (fused merge); the split that completes a pair resets it, so
// a replayed graph finds zeros. Launches on one device must not overlap (one stream), as for the partials.
#define DEC_FUSED_PAIRS 4096
__device__ unsigned int dec_arrivals[DEC_FUSED_PAIRS];

// dec_merge: the G output rows at OB of one pair from its NSPLIT partials at PB (PST floats apart). SW: shared
// scratch of G * (nsplit + 1) floats. Every one of the block's NT threads calls it. The partials are read past
// L1 (other blocks wrote them during this launch). A row no split saw is zero.
template <typename T>
__device__ void dec_merge(T *ob, const float *pb, int G, int D, int nsplit, int pst, float *sw, int tid, int nt) {
  float *sl = sw + G * nsplit;
  const int warp = tid >> 5, lane = tid & 31;
  for (int j = warp; j < G; j += nt >> 5) {  // weights exp(m_s - M) and the total sum, one warp per head
    float M = -INFINITY, L = 0.0f;
    for (int s = lane; s < nsplit; s += 32) M = fmaxf(M, __ldcg(pb + (size_t)s * pst + G * D + j));
    for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    for (int s = lane; s < nsplit; s += 32) {
      const float ms = __ldcg(pb + (size_t)s * pst + G * D + j), w = ms == -INFINITY ? 0.0f : __expf(ms - M);
      sw[j * nsplit + s] = w;
      L += w * __ldcg(pb + (size_t)s * pst + G * D + G + j);
    }
    L = warp_sum(L);
    if (lane == 0) sl[j] = L;
  }
  __syncthreads();
  for (int i4 = tid; i4 < G * D / 4; i4 += nt) {  // 4 consecutive columns of one head per thread
    const int j = i4 * 4 / D;
    const float *wj = sw + j * nsplit;
    float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 8
    for (int s = 0; s < nsplit; s++) {
      const float w = wj[s];
      const float4 v = __ldcg((const float4 *)(pb + (size_t)s * pst) + i4);
      a.x += w * v.x, a.y += w * v.y, a.z += w * v.z, a.w += w * v.w;
    }
    const float f = sl[j] > 0.0f ? 1.0f / sl[j] : 0.0f;
    st(&ob[4 * i4], a.x * f), st(&ob[4 * i4 + 1], a.y * f), st(&ob[4 * i4 + 2], a.z * f), st(&ob[4 * i4 + 3], a.w * f);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(DEC_WARPS * 32)
    attention_dec_kernel(T *out, float *part, const T *q, const T *cache, int n_blocks, int L, int Hkv, int B,
                         int layer, const int32_t *positions, const int32_t *seq_of, const int32_t *block_table,
                         int max_blocks, int H, float scale_log2, int chunk, int nst, int bshift, int fused) {
  constexpr int ROW = dec_cfg<D>::ROW, TILE = dec_cfg<D>::TILE, KS = D / 16, NT = D / 8;
  extern __shared__ float4 smem4[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gr = lane >> 2, qc = lane & 3;
  const int G = H / Hkv, nsplit = gridDim.y, split = blockIdx.y;
  const int t = blockIdx.x / Hkv, g = blockIdx.x % Hkv, n = positions[t] + 1;
  const int32_t *bt = block_table + (size_t)seq_of[t] * max_blocks;
  // a block outside the cache (or a table shorter than the context) makes the rows zero, as on the CPU; the
  // first table entries are loaded now and checked after the loop, so the check adds no latency
  const int nb = (n + B - 1) / B, nbc = min(nb, max_blocks);
  const int id0 = tid < nbc ? bt[tid] : 0;
  const int p0 = split * chunk, p1 = min(min(n, p0 + chunk), max_blocks * B);
  // dependent launch: the indices above are the step's batch; q and the newest K/V come from the kernel before
  pdl_trigger();
  pdl_wait();
  // the queries as A fragments: row gr = head gr of the group (zero from G on), k-step kk
  const T *qr = q + ((size_t)t * H + (size_t)g * G + (gr < G ? gr : 0)) * D;
  uint32_t qa[KS][2];
#pragma unroll
  for (int kk = 0; kk < KS; kk++) {
    qa[kk][0] = gr < G ? *(const uint32_t *)(qr + kk * 16 + 2 * qc) : 0u;
    qa[kk][1] = gr < G ? *(const uint32_t *)(qr + kk * 16 + 8 + 2 * qc) : 0u;
  }
  const size_t head_elems = (size_t)B * D, block_elems = (size_t)L * 2 * Hkv * head_elems;
  const T *kbase = cache + (size_t)layer * 2 * Hkv * head_elems + (size_t)g * head_elems;
  const T *vbase = kbase + (size_t)Hkv * head_elems;
  T *ring = (T *)smem4 + (size_t)warp * nst * 2 * TILE;
  const int first = p0 + warp * DEC_TP, stride = DEC_WARPS * DEC_TP;
  const int ntiles = p1 > first ? (p1 - first + stride - 1) / stride : 0;
  for (int s = 0; s < nst - 1; s++) {
    if (s < ntiles)
      dec_fetch<T, D>(ring, s, kbase, vbase, bt, n_blocks, block_elems, B, bshift, first + s * stride, p1, lane);
    cp_async_commit();
  }
  float o[NT][4];
#pragma unroll
  for (int j = 0; j < NT; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m = -INFINITY, l = 0.0f;  // row gr: running max (log2 domain, same in the quad), this lane's share of the sum
  // ldmatrix row addresses of this lane (matrix lane / 8, row lane % 8): K as [pos][dim] tiles for the B
  // operand of Q K^T; V transposed for the B operand of P V
  const int mi = lane >> 3, ri = lane & 7;
  const int k_row = (mi >> 1) * 8 + ri, k_col = (mi & 1) * 8, v_row = (mi & 1) * 8 + ri, v_col = (mi >> 1) * 8;
  for (int k = 0; k < ntiles; k++) {
    const int kn = k + nst - 1;
    if (kn < ntiles)
      dec_fetch<T, D>(ring, kn % nst, kbase, vbase, bt, n_blocks, block_elems, B, bshift, first + kn * stride, p1,
                      lane);
    cp_async_commit();
    if (nst == 2) cp_async_wait<1>();
    else if (nst == 3) cp_async_wait<2>();
    else cp_async_wait<3>();
    __syncwarp();
    const T *sk = ring + (size_t)(k % nst) * 2 * TILE, *sv = sk + TILE;
    float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
    const uint32_t ka = smem_addr(sk + k_row * ROW + k_col), va = smem_addr(sv + v_row * ROW + v_col);
#pragma unroll
    for (int kk = 0; kk < KS; kk++) {
      uint32_t b[4];
      ldsm_x4(b, ka + kk * 32);
      mma16816<T>(s[0], qa[kk][0], 0u, qa[kk][1], 0u, b[0], b[1]);
      mma16816<T>(s[1], qa[kk][0], 0u, qa[kk][1], 0u, b[2], b[3]);
    }
    // s[h][e] (e < 2): head gr, position base + 8 h + 2 qc + e
    const int pb = first + k * stride + 2 * qc;
    float x[2][2], mt = -INFINITY;
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        x[h][e] = pb + 8 * h + e < p1 ? s[h][e] * scale_log2 : -INFINITY;
        mt = fmaxf(mt, x[h][e]);
      }
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
    const float mn = fmaxf(m, mt), corr = exp2f(m - mn);  // the tile's first position is valid: mn is finite
    m = mn;
    float sum = 0.0f;
    const uint32_t pa0 = pack_sum<T>(exp2f(x[0][0] - mn), exp2f(x[0][1] - mn), &sum);
    const uint32_t pa2 = pack_sum<T>(exp2f(x[1][0] - mn), exp2f(x[1][1] - mn), &sum);
    l = l * corr + sum;
#pragma unroll
    for (int jj = 0; jj < KS; jj++) {
      uint32_t b[4];
      ldsm_x4_t(b, va + jj * 32);
      o[2 * jj][0] *= corr, o[2 * jj][1] *= corr, o[2 * jj + 1][0] *= corr, o[2 * jj + 1][1] *= corr;
      mma16816<T>(o[2 * jj], pa0, 0u, pa2, 0u, b[0], b[1]);
      mma16816<T>(o[2 * jj + 1], pa0, 0u, pa2, 0u, b[2], b[3]);
    }
    __syncwarp();  // the next fetch overwrites this stage
  }
  cp_async_wait<0>();
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  int bad = n < 1 || nb > max_blocks || id0 < 0 || id0 >= n_blocks;
  for (int i = tid + DEC_WARPS * 32; i < nbc; i += DEC_WARPS * 32) bad |= bt[i] < 0 || bt[i] >= n_blocks;
  bad = __syncthreads_or(bad);  // and the rings become the merge area
  float *mo = (float *)smem4;             // (W, 8, D) accumulators
  float *mm = mo + DEC_WARPS * 8 * D;     // (W, 8) max
  float *ml = mm + DEC_WARPS * 8;         // (W, 8) sum
#pragma unroll
  for (int j = 0; j < NT; j++)
    *(float2 *)(mo + ((size_t)warp * 8 + gr) * D + j * 8 + 2 * qc) = make_float2(o[j][0], o[j][1]);
  if (qc == 0) mm[warp * 8 + gr] = m, ml[warp * 8 + gr] = l;
  __syncthreads();
  T *ob = out + ((size_t)t * H + (size_t)g * G) * D;
  const int pst = dec_pstride(G, D);
  float *pp = part + ((size_t)blockIdx.x * nsplit + split) * pst;  // (acc G*D, max G, sum G)
  for (int i = tid; i < G * D; i += DEC_WARPS * 32) {
    const int j = i / D, d = i % D;
    float M = -INFINITY, Ls = 0.0f, a = 0.0f;
#pragma unroll
    for (int w = 0; w < DEC_WARPS; w++) M = fmaxf(M, mm[w * 8 + j]);
    if (bad) M = -INFINITY;  // zero row (no split of a bad query adds anything)
#pragma unroll
    for (int w = 0; w < DEC_WARPS; w++) {
      const float mw = mm[w * 8 + j];
      if (mw == -INFINITY || bad) continue;  // a warp that saw no position
      const float f = exp2f(mw - M);
      Ls += ml[w * 8 + j] * f;
      a += mo[((size_t)w * 8 + j) * D + d] * f;
    }
    if (nsplit == 1) {
      st(&ob[i], Ls > 0.0f ? a / Ls : 0.0f);
    } else {
      pp[i] = a;
      if (d == 0) pp[G * D + j] = M == -INFINITY ? -INFINITY : M * 0.69314718f, pp[G * D + G + j] = Ls;
    }
  }
  if (nsplit == 1 || !fused) return;
  // fused merge: the last split of this pair to finish merges them all
  __shared__ int last;
  __threadfence();  // this block's partial is visible before it is counted
  __syncthreads();
  if (tid == 0) last = atomicAdd(&dec_arrivals[blockIdx.x], 1u) == (unsigned)nsplit - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  dec_merge<T>(ob, part + (size_t)blockIdx.x * nsplit * pst, G, D, nsplit, pst, (float *)smem4, tid, DEC_WARPS * 32);
  if (tid == 0) dec_arrivals[blockIdx.x] = 0;
}

// the merge as a kernel of its own: block = pair (STRATA_CUDA_ATT_MERGE=kernel, or too many pairs to count)
template <typename T>
__global__ void __launch_bounds__(DEC_WARPS * 32)
    attention_dec_merge_kernel(T *out, const float *part, int Hkv, int H, int D, int nsplit) {
  extern __shared__ float4 smem4[];
  pdl_trigger();
  pdl_wait();
  const int G = H / Hkv, pst = dec_pstride(G, D);
  T *ob = out + ((size_t)(blockIdx.x / Hkv) * H + (size_t)(blockIdx.x % Hkv) * G) * D;
  dec_merge<T>(ob, part + (size_t)blockIdx.x * nsplit * pst, G, D, nsplit, pst, (float *)smem4, threadIdx.x,
               DEC_WARPS * 32);
}

// dec_plan: splits (and positions per split, a multiple of DEC_WARPS * DEC_TP) for T x Hkv pairs over
// contexts of at most max_blocks * B positions: one split while the pairs fill 3/8 of the resident blocks'
// slots, else about one wave of blocks (on an H200, Llama-3-8B shapes, one wave beat two: batch 1 @4096
// 14.5 against 21.0 us, batch 8 @512 16.7 against 20.4 us); at most DEC_MAX_SPLIT, and partials must fit in
// the caller's scratch. Depends only on the shape, so a captured step replays correctly.
static int dec_plan(int T_, int Hkv, int G, int D, int max_blocks, int B, int per_sm, const cuda_att_work_t *w,
                    int *chunk) {
  const int unit = DEC_WARPS * DEC_TP;
  int64_t ctx = (int64_t)max_blocks * B, units = (ctx + unit - 1) / unit;
  if (units < 1) units = 1;
  const int64_t pairs = (int64_t)T_ * Hkv, slots = (int64_t)(w && w->n_sms > 0 ? w->n_sms : 132) * per_sm;
  int64_t ns = pairs * 8 >= slots * 3 ? 1 : (slots + pairs - 1) / pairs;
  if (ns > units) ns = units;
  if (ns > DEC_MAX_SPLIT) ns = DEC_MAX_SPLIT;
  const size_t per = (size_t)pairs * dec_pstride(G, D) * sizeof(float);
  if (!w || !w->part) ns = 1;
  else if ((size_t)ns * per > w->part_bytes) ns = (int64_t)(w->part_bytes / per);
  if (ns < 1) ns = 1;
  const int64_t units_per = (units + ns - 1) / ns;
  *chunk = (int)(units_per * unit);
  return (int)((units + units_per - 1) / units_per);
}

// stages of the rings: 3, or STRATA_CUDA_ATT_STAGES=2..4 (read once; for measurements)
static int dec_stages(void) {
  static std::atomic<int> stages(0);
  int v = stages.load();
  if (!v) {
    const char *e = getenv("STRATA_CUDA_ATT_STAGES");
    v = e ? atoi(e) : 3;
    if (v < 2 || v > DEC_ST_MAX) v = 3;
    stages.store(v);
  }
  return v;
}

// the split merge inside the decode kernel (1), or STRATA_CUDA_ATT_MERGE=kernel: a second kernel (read once)
static int dec_fused(void) {
  static std::atomic<int> fused(-1);
  int v = fused.load();
  if (v < 0) {
    const char *e = getenv("STRATA_CUDA_ATT_MERGE");
    v = !(e && strcmp(e, "kernel") == 0);
    fused.store(v);
  }
  return v;
}

// the shared-memory limit of one instantiation, raised once per device; the number of its blocks resident on
// one multiprocessor with NST stages
template <typename T, int D> static cudaError_t dec_config(int nst, int *per_sm) {
  static std::atomic<unsigned long long> done(0);
  static std::atomic<int> resident[DEC_ST_MAX + 1];
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  const unsigned long long bit = 1ull << (dev & 63);
  if (!(done.load() & bit)) {
    e = cudaFuncSetAttribute(attention_dec_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)dec_cfg<D>::smem(DEC_ST_MAX));
    if (e != cudaSuccess) return e;
    for (int s = 2; s <= DEC_ST_MAX; s++) {
      int r = 0;
      e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&r, attention_dec_kernel<T, D>, DEC_WARPS * 32,
                                                        dec_cfg<D>::smem(s));
      if (e != cudaSuccess) return e;
      resident[s].store(r > 0 ? r : 1);
    }
    done.fetch_or(bit);
  }
  *per_sm = resident[nst].load();
  return cudaSuccess;
}

template <typename T, int D>
static cudaError_t dec_launch(T *out, const T *q, const cuda_kv_t *kv, int layer, const int32_t *positions,
                              const int32_t *seq_of, const int32_t *block_table, int max_blocks, int T_, int H,
                              float scale, const cuda_att_work_t *w, cudaStream_t stream) {
  const int Hkv = kv->n_kv_heads, G = H / Hkv, nst = dec_stages();
  const bool fused = dec_fused() && (int64_t)T_ * Hkv <= DEC_FUSED_PAIRS;
  int per_sm = 1, chunk = 0;
  cudaError_t e = dec_config<T, D>(nst, &per_sm);
  if (e != cudaSuccess) return e;
  const int ns = dec_plan(T_, Hkv, G, D, max_blocks, kv->block_size, per_sm, w, &chunk);
  int bshift = 0;  // log2 of the block size when it is a power of two (shifts instead of divisions), else -1
  while (bshift < 30 && (1 << bshift) < kv->block_size) bshift++;
  if ((1 << bshift) != kv->block_size) bshift = -1;
  dim3 grid((unsigned)((int64_t)T_ * Hkv), (unsigned)ns);
  e = pdl_launch(attention_dec_kernel<T, D>, grid, dim3(DEC_WARPS * 32), dec_cfg<D>::smem(nst), stream, 1, out,
                 ns > 1 ? w->part : (float *)NULL, q, (const T *)kv->data, kv->n_blocks, kv->n_layers, Hkv,
                 kv->block_size, layer, positions, seq_of, block_table, max_blocks, H, scale * 1.44269504f, chunk, nst,
                 bshift, (int)fused);
  if (e == cudaSuccess && ns > 1 && !fused)
    e = pdl_launch(attention_dec_merge_kernel<T>, dim3(grid.x), dim3(DEC_WARPS * 32), sizeof(float) * G * (ns + 1),
                   stream, 1, out, (const float *)w->part, Hkv, H, D, ns);
  return e;
}

// ---- prefill on tensor cores (WMMA m16n16k16, 16-bit inputs, f32 accumulation): block (64 consecutive
// query tokens, query head). The tile's tokens are taken one sequence (a run of equal seq_of) at a time;
// Q rows, then K and V tiles of 64 positions go through shared memory with 16-byte loads; each warp owns
// 16 query rows: S = Q K^T into shared f32, a causal online softmax per row (P rounded to ACT), then
// O = O * rescale + P V with O kept in shared f32. ----

#define TC_Q 64
#define TC_K 64
#define TC_THREADS 128
#define TC_LU 8  // 16-byte loads per thread issued together (a whole 64 x 128 tile of K and V)

typedef struct {
  int ldq, ldp, lds, ldo;              // leading dimensions (elements) of Q/K/V, P, S, O
  size_t q, k, v, p, s, o, st, total;  // byte offsets in dynamic shared memory (each a multiple of 32)
} tc_layout_t;

__host__ __device__ static inline tc_layout_t tc_layout(int D) {
  tc_layout_t l;
  l.ldq = D + 8, l.ldp = TC_K + 8, l.lds = TC_K + 4, l.ldo = D + 4;
  l.q = 0;
  l.k = l.q + (size_t)TC_Q * l.ldq * 2;
  l.v = l.k + (size_t)TC_K * l.ldq * 2;
  l.p = l.v + (size_t)TC_K * l.ldq * 2;
  l.s = l.p + (size_t)TC_Q * l.ldp * 2;
  l.o = l.s + (size_t)TC_Q * l.lds * 4;
  l.st = l.o + (size_t)TC_Q * l.ldo * 4;
  // max, sum, rescale (f32) and context length (int) per row, then the pass's first bad block (int)
  l.total = l.st + (size_t)4 * TC_Q * 4 + 16;
  return l;
}

// tc_fetch: the 16-byte pieces I0, I0 + 128, ... of the K and V tile at position KB (zero past KMAX) into
// registers; tc_put: those pieces into sK and sV. Split so that the next tile's loads fly during the math.
template <typename T>
__device__ __forceinline__ void tc_fetch(uint4 (&k4)[TC_LU], uint4 (&v4)[TC_LU], const T *cache, const int32_t *bt,
                                         size_t k_off, size_t v_off, size_t block_elems, int B, int D, int per,
                                         int kb, int kmax, int i0) {
#pragma unroll
  for (int u = 0; u < TC_LU; u++) {
    int i = i0 + u * TC_THREADS, r = i / per, c = (i % per) * 8, p = kb + r;
    k4[u] = make_uint4(0, 0, 0, 0), v4[u] = k4[u];
    if (i < TC_K * per && p < kmax) {
      size_t off = (size_t)bt[p / B] * block_elems + (size_t)(p % B) * D + c;
      k4[u] = *(const uint4 *)(cache + k_off + off);
      v4[u] = *(const uint4 *)(cache + v_off + off);
    }
  }
}

template <typename T>
__device__ __forceinline__ void tc_put(const uint4 (&k4)[TC_LU], const uint4 (&v4)[TC_LU], T *sK, T *sV, int ldq,
                                       int per, int i0) {
#pragma unroll
  for (int u = 0; u < TC_LU; u++) {
    int i = i0 + u * TC_THREADS, r = i / per, c = (i % per) * 8;
    if (i < TC_K * per) *(uint4 *)(sK + r * ldq + c) = k4[u], *(uint4 *)(sV + r * ldq + c) = v4[u];
  }
}

template <typename T>
__global__ void __launch_bounds__(TC_THREADS)
    attention_tc_kernel(T *out, const T *q, const T *cache, int n_blocks, int L, int Hkv, int B, int D, int layer,
                        const int32_t *positions, const int32_t *seq_of, const int32_t *block_table, int max_blocks,
                        int T_, int H, float scale) {
  using namespace nvcuda;
  extern __shared__ float4 smem4[];  // no static shared memory: the fragments need 32-byte alignment
  char *sb = (char *)smem4;
  const tc_layout_t ly = tc_layout(D);
  const int ldq = ly.ldq, ldp = ly.ldp, lds = ly.lds, ldo = ly.ldo;
  T *sQ = (T *)(sb + ly.q), *sK = (T *)(sb + ly.k), *sV = (T *)(sb + ly.v), *sP = (T *)(sb + ly.p);
  float *sS = (float *)(sb + ly.s), *sO = (float *)(sb + ly.o), *sm = (float *)(sb + ly.st), *sl = sm + TC_Q,
        *sc = sl + TC_Q;
  int *rn = (int *)(sc + TC_Q), *fb = rn + TC_Q;  // fb: the first block-table index outside the cache
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wr = warp * 16;
  const int h = blockIdx.y, g = h / (H / Hkv), t0 = blockIdx.x * TC_Q, nr = min(TC_Q, T_ - t0);
  const size_t head_elems = (size_t)B * D, block_elems = (size_t)L * 2 * Hkv * head_elems;
  const size_t k_off = (size_t)layer * 2 * Hkv * head_elems + (size_t)g * head_elems;
  const size_t v_off = k_off + (size_t)Hkv * head_elems;
  const int per = D / 8;  // 16-byte pieces per row
  for (int r0 = 0; r0 < nr;) {
    const int s = seq_of[t0 + r0];
    int r1 = r0 + 1;
    while (r1 < nr && seq_of[t0 + r1] == s) r1++;
    const int32_t *bt = block_table + (size_t)s * max_blocks;
    if (tid < TC_Q) {
      rn[tid] = tid >= r0 && tid < r1 ? positions[t0 + tid] + 1 : 0;
      sm[tid] = -INFINITY, sl[tid] = 0.0f;
    }
    if (tid == 0) *fb = INT_MAX;
    __syncthreads();
    int nmax = 0;
    for (int r = r0; r < r1; r++) nmax = max(nmax, rn[r]);
    const int nb = (nmax + B - 1) / B;
    for (int i = tid; i < nb; i += TC_THREADS)
      if (i >= max_blocks || bt[i] < 0 || bt[i] >= n_blocks) atomicMin(fb, i);
    for (int i = tid; i < TC_Q * per; i += TC_THREADS) {
      int r = i / per, c = (i % per) * 8;
      uint4 v4 = make_uint4(0, 0, 0, 0);
      if (r >= r0 && r < r1) v4 = *(const uint4 *)(q + ((size_t)(t0 + r) * H + h) * D + c);
      *(uint4 *)(sQ + r * ldq + c) = v4;
    }
    for (int i = tid; i < TC_Q * D; i += TC_THREADS) sO[(i / D) * ldo + i % D] = 0.0f;
    __syncthreads();
    // positions before the first bad block are readable; rows that need more get zeros (as on the CPU)
    const int kmax = *fb == INT_MAX ? nmax : min(nmax, *fb * B);
    int wn = lane < 16 ? min(rn[wr + lane], kmax) : 0;  // the longest context among this warp's rows
    for (int o = 16; o > 0; o >>= 1) wn = max(wn, __shfl_xor_sync(0xffffffffu, wn, o));
    // the first TC_LU pieces of each thread come from the prefetch of the previous tile (the whole tile when
    // D <= 128); the rest, if any, are loaded here
    uint4 pk[TC_LU], pv[TC_LU];
    if (kmax > 0) tc_fetch(pk, pv, cache, bt, k_off, v_off, block_elems, B, D, per, 0, kmax, tid);
    for (int kb = 0; kb < kmax; kb += TC_K) {
      tc_put(pk, pv, sK, sV, ldq, per, tid);
      for (int i0 = tid + TC_THREADS * TC_LU; i0 < TC_K * per; i0 += TC_THREADS * TC_LU) {
        uint4 k4[TC_LU], v4[TC_LU];
        tc_fetch(k4, v4, cache, bt, k_off, v_off, block_elems, B, D, per, kb, kmax, i0);
        tc_put(k4, v4, sK, sV, ldq, per, i0);
      }
      __syncthreads();
      if (kb + TC_K < kmax) tc_fetch(pk, pv, cache, bt, k_off, v_off, block_elems, B, D, per, kb + TC_K, kmax, tid);
      if (kb < wn) {  // else every key of the tile is masked for this warp's rows
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> cs[TC_K / 16];
#pragma unroll
        for (int c = 0; c < TC_K / 16; c++) wmma::fill_fragment(cs[c], 0.0f);
        for (int kk = 0; kk < D; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
          wmma::load_matrix_sync(a, sQ + wr * ldq + kk, ldq);
#pragma unroll
          for (int c = 0; c < TC_K / 16; c++) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
            wmma::load_matrix_sync(b, sK + c * 16 * ldq + kk, ldq);
            wmma::mma_sync(cs[c], a, b, cs[c]);
          }
        }
#pragma unroll
        for (int c = 0; c < TC_K / 16; c++)
          wmma::store_matrix_sync(sS + wr * lds + c * 16, cs[c], lds, wmma::mem_row_major);
        __syncwarp();
        {  // online softmax: lanes l and l + 16 share row wr + l (32 columns each, rotated against bank conflicts)
          const int r = wr + (lane & 15), hb = (lane >> 4) * 32, rot = lane & 15, lim = min(rn[r], kmax) - kb;
          const float *srow = sS + r * lds;
          float mt = -INFINITY;
          for (int c = 0; c < 32; c++) {
            int col = hb + ((c + rot) & 31);
            if (col < lim) mt = fmaxf(mt, srow[col] * scale);
          }
          mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 16));
          const float mo = sm[r], mn = fmaxf(mo, mt), cr = mn == -INFINITY ? 1.0f : __expf(mo - mn);
          float sum = 0.0f;
          for (int c = 0; c < 32; c++) {
            int col = hb + ((c + rot) & 31);
            T hp;
            st(&hp, col < lim && mn != -INFINITY ? __expf(srow[col] * scale - mn) : 0.0f);
            sP[r * ldp + col] = hp;
            sum += ld(&hp);  // the probabilities as they enter P V
          }
          sum += __shfl_xor_sync(0xffffffffu, sum, 16);
          __syncwarp();
          if (lane < 16) sl[r] = sl[r] * cr + sum, sm[r] = mn, sc[r] = cr;
        }
        __syncwarp();
        for (int rr = 0; rr < 16; rr++) {
          const int r = wr + rr;
          const float c = sc[r];
          if (c != 1.0f)
            for (int d = lane; d < D; d += 32) sO[r * ldo + d] *= c;
        }
        __syncwarp();
        for (int n0 = 0; n0 < D; n0 += 16) {
          wmma::fragment<wmma::accumulator, 16, 16, 16, float> co;
          wmma::load_matrix_sync(co, sO + wr * ldo + n0, ldo, wmma::mem_row_major);
#pragma unroll
          for (int kk = 0; kk < TC_K; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
            wmma::load_matrix_sync(a, sP + wr * ldp + kk, ldp);
            wmma::load_matrix_sync(b, sV + kk * ldq + n0, ldq);
            wmma::mma_sync(co, a, b, co);
          }
          wmma::store_matrix_sync(sO + wr * ldo + n0, co, ldo, wmma::mem_row_major);
        }
      }
      __syncthreads();  // the next tile overwrites sK and sV
    }
    for (int i = tid; i < (r1 - r0) * D; i += TC_THREADS) {
      const int r = r0 + i / D, d = i % D;
      const float l = sl[r];
      const bool ok = rn[r] <= kmax && l > 0.0f;  // a row that needs a block outside the cache is zero
      st(&out[((size_t)(t0 + r) * H + h) * D + d], ok ? sO[r * ldo + d] / l : 0.0f);
    }
    __syncthreads();  // the next pass resets the row state
    r0 = r1;
  }
}

template <typename T>
static cudaError_t tc_launch(T *out, const T *q, const cuda_kv_t *kv, int layer, const int32_t *positions,
                             const int32_t *seq_of, const int32_t *block_table, int max_blocks, int T_, int H,
                             float scale, cudaStream_t stream) {
  const tc_layout_t ly = tc_layout(kv->head_dim);
  cudaError_t e = cudaFuncSetAttribute(attention_tc_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       (int)ly.total);
  if (e != cudaSuccess) return e;
  dim3 grid((unsigned)((T_ + TC_Q - 1) / TC_Q), (unsigned)H);
  attention_tc_kernel<T><<<grid, TC_THREADS, ly.total, stream>>>(
      out, q, (const T *)kv->data, kv->n_blocks, kv->n_layers, kv->n_kv_heads, kv->block_size, kv->head_dim, layer,
      positions, seq_of, block_table, max_blocks, T_, H, scale);
  return cudaSuccess;
}

extern "C" int cuda_attention(void *out, const void *q, const cuda_kv_t *kv, int layer, const int32_t *positions,
                              const int32_t *seq_of, const int32_t *block_table, int max_blocks, int T_, int S,
                              int H, float scale, const cuda_att_work_t *work, cudaStream_t stream) {
  if (T_ <= 0) return 0;
  int D = kv->head_dim;
  if (layer < 0 || layer >= kv->n_layers || D < 1 || D > 256 || kv->n_kv_heads < 1 || H % kv->n_kv_heads ||
      H / kv->n_kv_heads > ATT_MAXG || kv->block_size < 1) {
    log_error("cuda attention: layer %d of %d, head dim %d (max 256), %d heads over %d KV heads (at most %d per KV "
              "head), block size %d", layer, kv->n_layers, D, H, kv->n_kv_heads, ATT_MAXG, kv->block_size);
    return STRATA_EINVAL;
  }
  if ((int64_t)T_ * kv->n_kv_heads > 0x7fffffff || H > 65535) {
    log_error("cuda attention: %d tokens x %d KV heads (%d query heads) is too many blocks", T_, kv->n_kv_heads, H);
    return STRATA_EINVAL;
  }
  const cuda_att_impl_t impl = work ? work->impl : CUDA_ATT_AUTO;
  const bool tc = (impl == CUDA_ATT_AUTO || impl == CUDA_ATT_WMMA) && kv->dtype != DTYPE_F32 && D % 16 == 0 &&
                  (int64_t)T_ >= 4 * (int64_t)S;
  // prefill-heavy 16-bit batches: the flash-attention-2 kernel (attn_prefill.cu, D 64 or 128); the WMMA tile
  // kernel below serves the other head dims and CUDA_ATT_WMMA
  if (tc && impl == CUDA_ATT_AUTO) {
    int rc = cuda_attention_prefill(out, q, kv, layer, positions, seq_of, block_table, max_blocks, T_, S, H, scale,
                                    kv->dtype, stream);
    if (rc != STRATA_EUNSUPPORTED) return rc;
  }
  cudaError_t e = cudaSuccess;
#define ATT_GO(ne) e = attention_launch<T, ne>((T *)out, (const T *)q, kv, layer, positions, seq_of, block_table, \
                                             max_blocks, T_, H, scale, stream)
  // 16-bit decode (and mixed batches of few prefill tokens) with D 64 or 128: the tensor-core decode kernel.
  // Otherwise (f32, other D), once the (token, KV head) pairs alone fill the multiprocessors, the first
  // version's kernel is as fast or faster than the split one (H100, Llama-3-8B shapes: batch 32 86 against
  // 101 us, batch 128 321 against 312-327 us; docs/gpu.md), so it keeps those batches
  const int n_sms = work && work->n_sms > 0 ? work->n_sms : 132;
  const bool wide = (int64_t)T_ * kv->n_kv_heads >= (int64_t)n_sms;
  const bool dec = impl == CUDA_ATT_AUTO && !tc && (kv->dtype == DTYPE_BF16 || kv->dtype == DTYPE_F16) &&
                   (D == 64 || D == 128);
  if (dec && kv->dtype == DTYPE_BF16) {
    typedef __nv_bfloat16 B16;
    e = D == 64 ? dec_launch<B16, 64>((B16 *)out, (const B16 *)q, kv, layer, positions, seq_of, block_table,
                                      max_blocks, T_, H, scale, work, stream)
                : dec_launch<B16, 128>((B16 *)out, (const B16 *)q, kv, layer, positions, seq_of, block_table,
                                       max_blocks, T_, H, scale, work, stream);
  } else if (dec) {
    e = D == 64 ? dec_launch<__half, 64>((__half *)out, (const __half *)q, kv, layer, positions, seq_of,
                                         block_table, max_blocks, T_, H, scale, work, stream)
                : dec_launch<__half, 128>((__half *)out, (const __half *)q, kv, layer, positions, seq_of,
                                          block_table, max_blocks, T_, H, scale, work, stream);
  } else if (impl == CUDA_ATT_V1 || (impl != CUDA_ATT_NO_TC && !tc && wide)) {
    DISPATCH_ACT(kv->dtype, if (D <= 32) ATT_GO(1); else if (D <= 64) ATT_GO(2); else if (D <= 128) ATT_GO(4);
                 else ATT_GO(8));
  } else if (tc && kv->dtype == DTYPE_BF16) {
    e = tc_launch<__nv_bfloat16>((__nv_bfloat16 *)out, (const __nv_bfloat16 *)q, kv, layer, positions, seq_of,
                                 block_table, max_blocks, T_, H, scale, stream);
  } else if (tc && kv->dtype == DTYPE_F16) {
    e = tc_launch<__half>((__half *)out, (const __half *)q, kv, layer, positions, seq_of, block_table, max_blocks, T_,
                          H, scale, stream);
  } else {
    DISPATCH_ACT(kv->dtype, e = split_launch<T>((T *)out, (const T *)q, kv, layer, positions, seq_of, block_table,
                                                max_blocks, T_, H, scale, work, stream));
  }
#undef ATT_GO
  if (e != cudaSuccess) {
    log_error("cuda attention: cannot configure the kernel (shared-memory limit, occupancy): %s",
              cudaGetErrorString(e));
    return STRATA_EIO;
  }
  return launched("attention");
}
