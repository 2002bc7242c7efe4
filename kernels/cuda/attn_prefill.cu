// attn_prefill.cu: prefill attention over the paged KV cache on tensor cores, flash-attention-2 style
// (mma.sync m16n8k16 and ldmatrix through inline PTX, K/V tiles double-buffered with cp.async).
//
// Block (query head, tile of BM = 16 MR NW consecutive query tokens), NW warps of 16 MR query rows each.
// The tile's tokens are taken one sequence (a run of equal seq_of) at a time, so a tile may straddle
// sequences. Q goes to shared memory once (and to registers when MR = 1); K and V tiles of KN positions
// are read through the block table with cp.async into shared memory (rows padded by 16 bytes, so that the
// eight rows an ldmatrix phase reads sit in distinct banks), the next tile's copies flying during the
// current tile's math. Per warp: S = Q K^T in registers (f32), the causal mask only where a tile reaches
// past the shortest context of the warp's rows, online softmax in the log2 domain with each row's state
// held by the four lanes of a quad, P rounded to ACT straight from the S accumulators into A fragments,
// O += P V in registers. Keys past every row of a warp are skipped by that warp in steps of 8 (the causal
// upper triangle costs only the copies). Blocks of the last query tiles (the longest contexts) start first.
//
// NOTE: written by hand (no library offers paged, ragged, causal prefill attention for our cache layout);
// it uses only sm_80 instructions so one source serves the 80 and 90a builds.
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_int.cuh"

// ---- PTX wrappers ----

__device__ __forceinline__ uint32_t ap_smem(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

// 16 bytes global -> shared, asynchronously; OK false writes 16 zero bytes and reads nothing
__device__ __forceinline__ void ap_cp16(uint32_t dst, const void *src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void ap_commit(void) { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void ap_wait(void) {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ap_ldsm4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ap_ldsm4t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c(16x8, f32) += a(16x16) b(16x8), 16-bit inputs of type T
template <typename T>
__device__ __forceinline__ void ap_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void ap_mma<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void ap_mma<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// two f32 as one 32-bit register of T (A lo, B hi: the lower column in the lower half, as mma expects)
template <typename T> __device__ __forceinline__ uint32_t ap_pack(float a, float b);
template <> __device__ __forceinline__ uint32_t ap_pack<__nv_bfloat16>(float a, float b) {
  __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *(uint32_t *)&v;
}
template <> __device__ __forceinline__ uint32_t ap_pack<__half>(float a, float b) {
  __half2 v = __floats2half2_rn(a, b);
  return *(uint32_t *)&v;
}

__device__ __forceinline__ float ap_exp2(float x) {  // 2^x; 2^-inf = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float ap_quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float ap_quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// ---- the kernel ----

template <int D> struct ap_dims {
  static constexpr int LD = D + 8;  // shared row pitch in elements (16 bytes of padding)
  static constexpr int PER = D / 8; // 16-byte pieces per row
};

// shared memory: two stages of (K tile, V tile), then BM context lengths and the first bad block index.
// With MR = 1, Q (BM <= 2 KN rows) lands in stage 1, which the pipeline fills only once Q is in registers;
// with MR = 2 the warps re-read Q from shared memory for every tile, so it has rows of its own (first).
template <int D> __host__ __device__ constexpr size_t ap_shmem(int bm, int mr, int KN) {
  return ((size_t)(mr > 1 ? bm : 0) + 4 * KN) * ap_dims<D>::LD * 2 + (size_t)(bm + 1) * sizeof(int);
}

// copies of the K and V tile at positions KB.. (zero from KMAX on) into SK and SV, NT threads
template <typename T, int D, int NT, int KN>
__device__ __forceinline__ void ap_load_kv(T *sk, T *sv, const T *cache, const int32_t *bt, size_t k_off,
                                           size_t v_off, size_t block_elems, int B, int bshift, int kb, int kmax,
                                           int tid) {
  constexpr int LD = ap_dims<D>::LD, PER = ap_dims<D>::PER;
  static_assert(KN * PER % NT == 0, "tile pieces must split evenly over the threads");
#pragma unroll
  for (int u = 0; u < KN * PER / NT; u++) {
    const int i = tid + u * NT, r = i / PER, c = (i % PER) * 8, p = kb + r;
    const bool ok = p < kmax;
    // a power-of-two block size (the usual 16) spares the integer division
    const int blk = bshift >= 0 ? p >> bshift : p / B, in = bshift >= 0 ? p & (B - 1) : p % B;
    const size_t off = ok ? (size_t)bt[blk] * block_elems + (size_t)in * D + c : 0;
    ap_cp16(ap_smem(sk + r * LD + c), cache + k_off + off, ok);
    ap_cp16(ap_smem(sv + r * LD + c), cache + v_off + off, ok);
  }
}

// per-pass state of one warp's MR x 16 rows; this lane holds rows mr * 16 + lane / 4 (half 0) and + 8 (half 1)
template <int D, int MR> struct ap_acc {
  float o[MR][D / 8][4];  // (m tile, d tile, {half 0 d, d + 1, half 1 d, d + 1})
  float m[MR][2], l[MR][2];  // running max (log2 domain) and this lane's share of the running sum
};

// one K/V tile for one warp: S = Q K^T, mask, online softmax, O += P V. Q comes from QF (MR = 1) or from SQ,
// the warp's first row in shared memory (MR = 2). RN: context lengths of the warp's rows (0 outside the pass),
// read only for a tile that needs the mask (registers are scarce); KMAX caps them; WN, WMIN: the longest and
// shortest capped context among the warp's rows.
template <typename T, int D, int MR, int KN>
__device__ __forceinline__ void ap_tile(ap_acc<D, MR> &a, const uint32_t (&qf)[D / 16][4], const T *sq, const T *ks,
                                        const T *vs, const int *rn, int kmax, int kb, int wn, int wmin, float sl2,
                                        int lane) {
  constexpr int LD = ap_dims<D>::LD;
  float s[MR][KN / 8][4];
#pragma unroll
  for (int mr = 0; mr < MR; mr++)
#pragma unroll
    for (int nt = 0; nt < KN / 8; nt++) s[mr][nt][0] = s[mr][nt][1] = s[mr][nt][2] = s[mr][nt][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < D / 16; kk += 2) {
    uint32_t qa[MR][2][4];
#pragma unroll
    for (int mr = 0; mr < MR; mr++)
#pragma unroll
      for (int k2 = 0; k2 < 2; k2++) {
        if constexpr (MR == 1) {
#pragma unroll
          for (int i = 0; i < 4; i++) qa[mr][k2][i] = qf[kk + k2][i];
        } else {
          ap_ldsm4(qa[mr][k2], ap_smem(sq + (mr * 16 + (lane & 15)) * LD + (kk + k2) * 16 + (lane >> 4) * 8));
        }
      }
#pragma unroll
    for (int nt = 0; nt < KN / 8; nt++) {
      if (kb + nt * 8 < wn) {  // else these 8 keys are past every row of the warp
        uint32_t b[4];
        ap_ldsm4(b, ap_smem(ks + (nt * 8 + (lane & 7)) * LD + kk * 16 + (lane >> 3) * 8));
#pragma unroll
        for (int mr = 0; mr < MR; mr++) {
          ap_mma<T>(s[mr][nt], qa[mr][0], b[0], b[1]);
          ap_mma<T>(s[mr][nt], qa[mr][1], b[2], b[3]);
        }
      }
    }
  }
  // the row max is taken on the raw scores (SL2 > 0), and the scaling folds into the exponent's FFMA
  const bool mask = kb + KN > wmin;
#pragma unroll
  for (int mr = 0; mr < MR; mr++)
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      float x = -INFINITY;
      const int n = mask ? min(rn[mr * 16 + hf * 8 + (lane >> 2)], kmax) : 0;
#pragma unroll
      for (int nt = 0; nt < KN / 8; nt++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
          if (mask && kb + nt * 8 + (lane & 3) * 2 + e >= n) s[mr][nt][2 * hf + e] = -INFINITY;
          x = fmaxf(x, s[mr][nt][2 * hf + e]);
        }
      x = fmaxf(a.m[mr][hf], ap_quad_max(x) * sl2);
      // a row with nothing seen yet keeps max -inf: subtract 0 instead, so that every exponent is -inf (p = 0)
      const float base = x == -INFINITY ? 0.0f : x, c = ap_exp2(a.m[mr][hf] - base);
      a.m[mr][hf] = x;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < KN / 8; nt++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
          s[mr][nt][2 * hf + e] = ap_exp2(fmaf(s[mr][nt][2 * hf + e], sl2, -base));
          sum += s[mr][nt][2 * hf + e];
        }
      a.l[mr][hf] = a.l[mr][hf] * c + sum;
      if (__any_sync(0xffffffffu, c != 1.0f))  // once the maxima settle, most tiles leave O as it is
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) a.o[mr][dt][2 * hf] *= c, a.o[mr][dt][2 * hf + 1] *= c;
    }
#pragma unroll
  for (int kk = 0; kk < KN / 16; kk++) {
    if (kb + kk * 16 >= wn) continue;
    // the C fragments of key tiles 2kk and 2kk+1 are exactly the A fragment of keys 16kk..16kk+15
    uint32_t pa[MR][4];
#pragma unroll
    for (int mr = 0; mr < MR; mr++) {
      pa[mr][0] = ap_pack<T>(s[mr][2 * kk][0], s[mr][2 * kk][1]);
      pa[mr][1] = ap_pack<T>(s[mr][2 * kk][2], s[mr][2 * kk][3]);
      pa[mr][2] = ap_pack<T>(s[mr][2 * kk + 1][0], s[mr][2 * kk + 1][1]);
      pa[mr][3] = ap_pack<T>(s[mr][2 * kk + 1][2], s[mr][2 * kk + 1][3]);
    }
#pragma unroll
    for (int dt = 0; dt < D / 8; dt += 2) {
      uint32_t b[4];
      ap_ldsm4t(b, ap_smem(vs + (kk * 16 + (lane & 15)) * LD + dt * 8 + (lane >> 4) * 8));
#pragma unroll
      for (int mr = 0; mr < MR; mr++) {
        ap_mma<T>(a.o[mr][dt], pa[mr], b[0], b[1]);
        ap_mma<T>(a.o[mr][dt + 1], pa[mr], b[2], b[3]);
      }
    }
  }
}

// writes the warp's rows (first row W0 of the tile) that belong to the pass [R0, R1); a row needing a block
// outside the cache (context longer than KMAX) is zero
template <typename T, int D, int MR>
__device__ __forceinline__ void ap_store(T *out, const ap_acc<D, MR> &a, const int *rn, int kmax, int r0, int r1,
                                         int w0, int t0, int H, int h, int lane) {
#pragma unroll
  for (int mr = 0; mr < MR; mr++)
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      const int r = w0 + mr * 16 + hf * 8 + (lane >> 2);
      const float l = ap_quad_sum(a.l[mr][hf]);
      if (r < r0 || r >= r1) continue;
      const float f = rn[r] <= kmax && l > 0.0f ? 1.0f / l : 0.0f;
      T *o = out + ((size_t)(t0 + r) * H + h) * D + (lane & 3) * 2;
#pragma unroll
      for (int dt = 0; dt < D / 8; dt++)
        *(uint32_t *)(o + dt * 8) = ap_pack<T>(a.o[mr][dt][2 * hf] * f, a.o[mr][dt][2 * hf + 1] * f);
    }
}

// KN: key positions per K/V tile; MB: blocks per SM the registers must allow
template <typename T, int D, int NW, int MR, int KN, int MB>
__global__ void __launch_bounds__(NW * 32, MB)
    attn_prefill_kernel(T *out, const T *q, const T *cache, int n_blocks, int L, int Hkv, int B, int bshift,
                        int layer, const int32_t *positions, const int32_t *seq_of, const int32_t *block_table,
                        int max_blocks, int T_, int H, float sl2) {
  constexpr int BM = NW * 16 * MR, NT = NW * 32, LD = ap_dims<D>::LD, PER = ap_dims<D>::PER;
  static_assert((MR > 1 || BM <= 2 * KN) && D % 32 == 0, "Q must fit stage 1; D a multiple of 32");
  extern __shared__ float4 smem4[];
  T *sq = (T *)smem4, *sm = sq + (MR > 1 ? BM * LD : 0);  // stage st: K at st * 2 KN rows, V KN rows later
  if (MR == 1) sq = sm + 2 * KN * LD;
  int *rn = (int *)(sm + 4 * KN * LD), *fb = rn + BM;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, w0 = warp * 16 * MR;
  const int h = blockIdx.x, g = h / (H / Hkv);
  const int t0 = (int)(gridDim.y - 1 - blockIdx.y) * BM, nr = min(BM, T_ - t0);
  const size_t head_elems = (size_t)B * D, block_elems = (size_t)L * 2 * Hkv * head_elems;
  const size_t k_off = (size_t)layer * 2 * Hkv * head_elems + (size_t)g * head_elems;
  const size_t v_off = k_off + (size_t)Hkv * head_elems;

  // Q of the tile (zero rows past T) -> shared memory (-> registers, A fragments of 16 columns, if MR = 1)
  for (int i = tid; i < BM * PER; i += NT) {
    const int r = i / PER, c = (i % PER) * 8;
    ap_cp16(ap_smem(sq + r * LD + c), r < nr ? q + ((size_t)(t0 + r) * H + h) * D + c : q, r < nr);
  }
  ap_commit();
  ap_wait<0>();
  __syncthreads();
  uint32_t qf[D / 16][4];
  if constexpr (MR == 1) {
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
      ap_ldsm4(qf[kk], ap_smem(sq + (w0 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8));
  }

  for (int r0 = 0; r0 < nr;) {
    const int s = seq_of[t0 + r0];
    int r1 = r0 + 1;
    while (r1 < nr && seq_of[t0 + r1] == s) r1++;
    const int32_t *bt = block_table + (size_t)s * max_blocks;
    __syncthreads();  // the Q reads of stage 1, or the previous pass's reads of rn, are done
    if (tid < BM) rn[tid] = tid >= r0 && tid < r1 ? max(0, positions[t0 + tid] + 1) : 0;
    if (tid == 0) *fb = INT_MAX;
    __syncthreads();
    int nmax = 0;
    for (int r = r0; r < r1; r++) nmax = max(nmax, rn[r]);
    for (int i = tid; i < (nmax + B - 1) / B; i += NT)
      if (i >= max_blocks || bt[i] < 0 || bt[i] >= n_blocks) atomicMin(fb, i);
    __syncthreads();
    // positions before the first bad block are readable; rows that need more get zeros (as on the CPU)
    const int kmax = *fb == INT_MAX ? nmax : min(nmax, *fb * B);
    ap_acc<D, MR> acc;
    int wn = 0, wmin = INT_MAX;
#pragma unroll
    for (int mr = 0; mr < MR; mr++)
#pragma unroll
      for (int hf = 0; hf < 2; hf++) {
        const int n = min(rn[w0 + mr * 16 + hf * 8 + (lane >> 2)], kmax);
        wn = max(wn, n), wmin = min(wmin, n);
        acc.m[mr][hf] = -INFINITY, acc.l[mr][hf] = 0.0f;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) acc.o[mr][dt][2 * hf] = acc.o[mr][dt][2 * hf + 1] = 0.0f;
      }
    for (int o = 4; o < 32; o <<= 1) {
      wn = max(wn, __shfl_xor_sync(0xffffffffu, wn, o));
      wmin = min(wmin, __shfl_xor_sync(0xffffffffu, wmin, o));
    }
    const int ntiles = (kmax + KN - 1) / KN;
    if (ntiles > 0)
      ap_load_kv<T, D, NT, KN>(sm, sm + KN * LD, cache, bt, k_off, v_off, block_elems, B, bshift, 0, kmax, tid);
    ap_commit();
    for (int j = 0; j < ntiles; j++) {
      T *nxt = sm + ((j + 1) & 1) * 2 * KN * LD;
      if (j + 1 < ntiles)
        ap_load_kv<T, D, NT, KN>(nxt, nxt + KN * LD, cache, bt, k_off, v_off, block_elems, B, bshift, (j + 1) * KN,
                                 kmax, tid);
      ap_commit();
      ap_wait<1>();  // tile j has landed (for this thread's copies; the barrier covers the others')
      __syncthreads();
      const T *ks = sm + (j & 1) * 2 * KN * LD;
      if (j * KN < wn)
        ap_tile<T, D, MR, KN>(acc, qf, sq + w0 * LD, ks, ks + KN * LD, rn + w0, kmax, j * KN, wn, wmin, sl2,
                              lane);
      __syncthreads();  // the next iteration's copies overwrite this stage
    }
    ap_wait<0>();
    ap_store<T, D, MR>(out, acc, rn, kmax, r0, r1, w0, t0, H, h, lane);
    r0 = r1;
  }
}

// ---- launch ----

template <typename T, int D, int NW, int MR, int KN, int MB>
static cudaError_t ap_launch(void *out, const void *q, const cuda_kv_t *kv, int layer, const int32_t *positions,
                             const int32_t *seq_of, const int32_t *block_table, int max_blocks, int T_, int H,
                             float scale, cudaStream_t stream) {
  const size_t shmem = ap_shmem<D>(NW * 16 * MR, MR, KN);
  cudaError_t e = cudaFuncSetAttribute(attn_prefill_kernel<T, D, NW, MR, KN, MB>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shmem);
  if (e != cudaSuccess) return e;
  const int B = kv->block_size;
  int bshift = -1;  // log2 of the block size when it is a power of two
  for (int i = 0; i < 31 && bshift < 0; i++)
    if (B == 1 << i) bshift = i;
  dim3 grid((unsigned)H, (unsigned)((T_ + NW * 16 * MR - 1) / (NW * 16 * MR)));
  attn_prefill_kernel<T, D, NW, MR, KN, MB><<<grid, NW * 32, shmem, stream>>>(
      (T *)out, (const T *)q, (const T *)kv->data, kv->n_blocks, kv->n_layers, kv->n_kv_heads, B, bshift, layer,
      positions, seq_of, block_table, max_blocks, T_, H, scale * 1.4426950408889634f);
  return cudaSuccess;
}

// the kernel variants: "4" 4 warps of 16 rows (Q in registers; the registers the compiler wants, 2 blocks
// per SM at D = 128), "4x3" the same with registers capped for 3 blocks per SM, "8" 8 warps of 16 rows,
// "4r2" 4 warps of 32 rows (Q re-read from shared memory, so each K/V fragment read serves 2 row tiles),
// "4r2k32" the same with key tiles of 32. STRATA_CUDA_ATTNP picks one for measurements; by default
// ap_pick_variant decides from the grid size.
typedef enum { AP_AUTO = -1, AP_W4 = 0, AP_W4X3, AP_W8, AP_W4R2, AP_W4R2K32 } ap_variant_t;

static ap_variant_t ap_variant(void) {
  const char *s = getenv("STRATA_CUDA_ATTNP");
  static const char *const names[] = {"4", "4x3", "8", "4r2", "4r2k32"};
  for (int i = 0; s && i < (int)(sizeof names / sizeof names[0]); i++)
    if (strcmp(s, names[i]) == 0) return (ap_variant_t)i;
  return AP_AUTO;
}

// NOTE: measured on H100 (Llama-3-8B shapes, bf16, tests/gpu/attn_prefill_test.c): with at least two
// 128-row blocks per SM, 32 rows per warp win (2,048 causal tokens: 4r2k32 210 us, 4r2 212, 4 254, 8 275,
// 4x3 286); with fewer, the 64-row tiles fill the machine better (a 512-token chunk at 1,536: 4 115 us
// against 148 for 4r2k32)
static ap_variant_t ap_pick_variant(int T_, int H) {
  int dev = 0, n_sms = 132;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n_sms, cudaDevAttrMultiProcessorCount, dev) !=
                                                cudaSuccess)
    n_sms = 132;
  return (int64_t)H * ((T_ + 127) / 128) >= 2 * (int64_t)n_sms ? AP_W4R2K32 : AP_W4;
}

template <typename T, int D>
static cudaError_t ap_dispatch_d(ap_variant_t v, void *out, const void *q, const cuda_kv_t *kv, int layer,
                                 const int32_t *positions, const int32_t *seq_of, const int32_t *block_table,
                                 int max_blocks, int T_, int H, float scale, cudaStream_t stream) {
#define AP_GO(w, mr, kn, mb) \
  ap_launch<T, D, w, mr, kn, mb>(out, q, kv, layer, positions, seq_of, block_table, max_blocks, T_, H, scale, stream)
  switch (v) {
  case AP_W8: return AP_GO(8, 1, 64, 1);
  case AP_W4X3: return AP_GO(4, 1, 64, 3);
  case AP_W4R2: return AP_GO(4, 2, 64, 1);
  case AP_W4R2K32: return AP_GO(4, 2, 32, 1);
  default: return AP_GO(4, 1, 64, 1);
  }
#undef AP_GO
}

template <typename T>
static cudaError_t ap_dispatch(ap_variant_t v, void *out, const void *q, const cuda_kv_t *kv, int layer,
                               const int32_t *positions, const int32_t *seq_of, const int32_t *block_table,
                               int max_blocks, int T_, int H, float scale, cudaStream_t stream) {
  if (kv->head_dim == 64)
    return ap_dispatch_d<T, 64>(v, out, q, kv, layer, positions, seq_of, block_table, max_blocks, T_, H, scale, stream);
  return ap_dispatch_d<T, 128>(v, out, q, kv, layer, positions, seq_of, block_table, max_blocks, T_, H, scale, stream);
}

extern "C" int cuda_attention_prefill(void *out, const void *q, const cuda_kv_t *kv, int layer,
                                      const int32_t *positions, const int32_t *seq_of, const int32_t *block_table,
                                      int max_blocks, int T_, int S, int H, float scale, dtype_t act,
                                      cudaStream_t stream) {
  (void)S;  // the tiles find the sequence boundaries themselves (runs of equal seq_of)
  if (T_ <= 0) return 0;
  const int D = kv->head_dim, Hkv = kv->n_kv_heads;
  // shapes this kernel does not serve: the caller falls back to cuda_attention (not an error, not logged)
  if ((D != 64 && D != 128) || (act != DTYPE_BF16 && act != DTYPE_F16) || kv->dtype != act || !(scale > 0.0f))
    return STRATA_EUNSUPPORTED;
  if (layer < 0 || layer >= kv->n_layers || Hkv < 1 || H < 1 || H % Hkv || kv->block_size < 1 || H > 65535 ||
      (T_ + 15) / 16 > 65535) {
    log_error("cuda attention_prefill: layer %d of %d, %d heads over %d KV heads, block size %d, %d tokens "
              "(at most 65,535 heads and 1,048,560 tokens)", layer, kv->n_layers, H, Hkv, kv->block_size, T_);
    return STRATA_EINVAL;
  }
  ap_variant_t v = ap_variant();
  if (v == AP_AUTO) v = ap_pick_variant(T_, H);
  cudaError_t e = act == DTYPE_BF16 ? ap_dispatch<__nv_bfloat16>(v, out, q, kv, layer, positions, seq_of, block_table,
                                                                  max_blocks, T_, H, scale, stream)
                                    : ap_dispatch<__half>(v, out, q, kv, layer, positions, seq_of, block_table,
                                                          max_blocks, T_, H, scale, stream);
  if (e != cudaSuccess) {
    log_error("cuda attention_prefill: cannot raise the shared-memory limit: %s", cudaGetErrorString(e));
    return STRATA_EIO;
  }
  return launched("attention_prefill");
}
