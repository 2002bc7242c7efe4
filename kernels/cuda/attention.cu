// attention.cu: paged attention over a ragged batch on CUDA: a split-KV kernel (decode), a tensor-core tile
// kernel (prefill, 16-bit activations) and the first version's kernel, kept for comparison (CUDA_ATT_V1).
#include <limits.h>
#include <mma.h>

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
      H / kv->n_kv_heads > ATT_MAXG) {
    log_error("cuda attention: layer %d of %d, head dim %d (max 256), %d heads over %d KV heads (at most %d per KV "
              "head)", layer, kv->n_layers, D, H, kv->n_kv_heads, ATT_MAXG);
    return STRATA_EINVAL;
  }
  if ((int64_t)T_ * kv->n_kv_heads > 0x7fffffff || H > 65535) {
    log_error("cuda attention: %d tokens x %d KV heads (%d query heads) is too many blocks", T_, kv->n_kv_heads, H);
    return STRATA_EINVAL;
  }
  const cuda_att_impl_t impl = work ? work->impl : CUDA_ATT_AUTO;
  const bool tc = impl == CUDA_ATT_AUTO && kv->dtype != DTYPE_F32 && D % 16 == 0 && (int64_t)T_ >= 4 * (int64_t)S;
  cudaError_t e = cudaSuccess;
#define ATT_GO(ne) e = attention_launch<T, ne>((T *)out, (const T *)q, kv, layer, positions, seq_of, block_table, \
                                             max_blocks, T_, H, scale, stream)
  // once the (token, KV head) pairs alone fill the multiprocessors, the first version's kernel is as fast or
  // faster than the split one (H100, Llama-3-8B shapes: batch 32 86 against 101 us, batch 128 321 against
  // 312-327 us; docs/gpu.md), so it keeps those batches
  const int n_sms = work && work->n_sms > 0 ? work->n_sms : 132;
  const bool wide = (int64_t)T_ * kv->n_kv_heads >= (int64_t)n_sms;
  if (impl == CUDA_ATT_V1 || (impl != CUDA_ATT_NO_TC && !tc && wide)) {
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
    log_error("cuda attention: cannot raise the shared-memory limit: %s", cudaGetErrorString(e));
    return STRATA_EIO;
  }
  return launched("attention");
}
