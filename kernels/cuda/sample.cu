// sample.cu: sampling on the GPU: one block per logits row computes the host sampler's draw
// (worker/sample/sample.c: temperature -> top-k -> top-p -> min-p -> Gumbel-max keyed by Philox4x32-10),
// so only token ids cross to the host. No sort: top-k and top-p are radix selects over a 64-bit key
// that orders tokens exactly as the host does (value descending, id ascending), the row being re-read
// from L2 on every pass instead of being copied.
#include <float.h>
#include <limits.h>

#include "kernels/cuda/cuda_int.cuh"
#include "kernels/kernels_cuda_sample.h"

#define SAMPLE_THREADS 512
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)
#define FULL_MASK 0xffffffffu

// ---- Philox4x32-10 and the Gumbel noise: the same words and the same float steps as sample.c ----

__device__ __forceinline__ void philox_block(uint64_t seed, uint64_t position, uint32_t block, uint32_t out[4]) {
  uint32_t c0 = block, c1 = (uint32_t)position, c2 = (uint32_t)(position >> 32), c3 = 0;
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int r = 0; r < 10; r++) {
    if (r > 0) {  // the key is bumped before every round but the first
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

__device__ __forceinline__ float gumbel_of(uint32_t w) {
  float u = (float)(w >> 8) * (1.0f / 16777216.0f);
  if (u <= 0.0f) u = 1.0f / 33554432.0f;  // as the host: u = 0 would make a sole survivor unpickable
  return -logf(-logf(u));
}

// ---- the token order ----

// scaled: logit I of ROW divided by the temperature, +inf clamped to FLT_MAX (as the host does).
// __fdiv_rn: correctly rounded whatever the compiler flags, so the host's quotient exactly.
template <typename T> __device__ __forceinline__ float scaled(const T *row, int i, float temp) {
  float x = __fdiv_rn(ld(row + i), temp);
  return x > FLT_MAX ? FLT_MAX : x;
}

// order_key: a 64-bit key whose unsigned order is the host's token order: value descending, then id
// ascending (a larger key is a better token). -0 is keyed as +0 because the host sees them equal.
__device__ __forceinline__ uint64_t order_key(float x, int id) {
  uint32_t b = __float_as_uint(x == 0.0f ? 0.0f : x);
  uint32_t k = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return ((uint64_t)k << 32) | (uint32_t)(0xFFFFFFFFu - (uint32_t)id);
}

// ---- block reductions (every thread calls; every thread gets the result) ----

__device__ float block_max(float v, float *sh) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
  int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = sh[0];
  for (int i = 1; i < SAMPLE_WARPS; i++) v = fmaxf(v, sh[i]);
  return v;
}

__device__ int block_count(bool b, int *sh) {
  int c = __popc(__ballot_sync(FULL_MASK, b));
  int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) sh[w] = c;
  __syncthreads();
  c = 0;
  for (int i = 0; i < SAMPLE_WARPS; i++) c += sh[i];
  return c;
}

__device__ __forceinline__ bool pick_better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

// block_pick: the (value, id) pair that is best under pick_better (ids < 0 never win); the id, or -1.
__device__ int block_pick(float bv, int bi, float *shv, int *shi) {
  if (bi < 0) bv = -INFINITY, bi = INT_MAX;
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(FULL_MASK, bv, o);
    int oi = __shfl_xor_sync(FULL_MASK, bi, o);
    if (pick_better(ov, oi, bv, bi)) bv = ov, bi = oi;
  }
  int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) shv[w] = bv, shi[w] = bi;
  __syncthreads();
  bv = shv[0], bi = shi[0];
  for (int i = 1; i < SAMPLE_WARPS; i++)
    if (pick_better(shv[i], shi[i], bv, bi)) bv = shv[i], bi = shi[i];
  return bi == INT_MAX ? -1 : bi;
}

// ---- radix select ----

typedef struct {
  unsigned hc[256];  // tokens per digit
  double hw[256];    // their weight (top-p) in double, as the host accumulates
  uint64_t prefix, result;
  double need;
  int nbits, done;
} select_smem_t;

// hist_add: adds (1, W) to digit D of the histogram for every lane with IN. Lanes of a warp mostly
// share a digit (logits cluster in a few exponents), so each distinct digit is reduced in the warp
// first and added by one lane: shared atomics on one address would serialise 32 ways otherwise.
// Every lane of the warp must call it.
__device__ __forceinline__ void hist_add(select_smem_t *s, bool in, unsigned d, double w, bool weighted) {
  unsigned pending = __ballot_sync(FULL_MASK, in);
  const int lane = threadIdx.x % 32;
  while (pending) {
    int leader = __ffs(pending) - 1;
    unsigned dl = __shfl_sync(FULL_MASK, d, leader);
    bool mine = in && d == dl;
    unsigned grp = __ballot_sync(FULL_MASK, mine);
    double sum = 0.0;
    if (weighted) {
      sum = mine ? w : 0.0;
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(FULL_MASK, sum, o);
    }
    if (lane == leader) {
      atomicAdd(&s->hc[dl], (unsigned)__popc(grp));
      if (weighted) atomicAdd(&s->hw[dl], sum);
    }
    if (mine) in = false;
    pending &= ~grp;
  }
}

// radix_select: among the candidates of ROW whose key is >= LO, the smallest best-first prefix whose
// weight reaches the target, returned as a key threshold C (the prefix is {key >= max(C, LO)}).
// Count mode (!WEIGHTED): weight 1 per token and target NEED (top-k: the K best).
// Weighted mode: weight expf(x - LMAX) and target NEED times the total weight (top-p: the host's
// "first token where the cumulative probability reaches top_p", the boundary token included).
// Eight-bit digits from the top; a pass stops early once the chosen digit's group is known to be all
// in (count mode: exactly as many as still needed; weighted: a single token). Every thread calls.
template <typename T, bool WEIGHTED>
__device__ uint64_t radix_select(select_smem_t *s, const T *row, int V, float temp, float lmax, uint64_t lo,
                                 double need) {
  if (threadIdx.x == 0) s->prefix = 0, s->nbits = 0, s->done = 0, s->need = need, s->result = 0;
  for (int pass = 0; pass < 8; pass++) {
    const int shift = 56 - 8 * pass;
    for (int d = threadIdx.x; d < 256; d += blockDim.x) s->hc[d] = 0, s->hw[d] = 0.0;
    __syncthreads();
    const uint64_t prefix = s->prefix;
    const int nbits = s->nbits;
    for (int base = 0; base < V; base += blockDim.x) {  // uniform trip count: hist_add needs whole warps
      int i = base + threadIdx.x;
      bool in = false;
      unsigned d = 0;
      double w = 0.0;
      if (i < V) {
        float x = scaled(row, i, temp);
        uint64_t k = order_key(x, i);
        in = x > -INFINITY && k >= lo && (nbits == 0 || (k >> (64 - nbits)) == prefix);
        d = (unsigned)(k >> shift) & 255u;
        if (in && WEIGHTED) w = (double)expf(x - lmax);
      }
      hist_add(s, in, d, w, WEIGHTED);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      double t = s->need;
      if (WEIGHTED && pass == 0) {  // NEED is a fraction of the total on entry
        double z = 0.0;
        for (int d = 0; d < 256; d++) z += s->hw[d];
        t *= z;
      }
      int chosen = -1;
      double acc = 0.0;
      for (int d = 255; d >= 0 && chosen < 0; d--) {
        if (s->hc[d] == 0) continue;
        double before = acc;
        acc += WEIGHTED ? s->hw[d] : (double)s->hc[d];
        if (acc >= t) chosen = d, t -= before;  // what this digit's group must still supply
      }
      if (chosen < 0) {  // rounding left the target just out of reach: the whole group is in
        s->result = nbits == 0 ? 0 : prefix << (64 - nbits);
        s->done = 1;
      } else {
        uint64_t p = (prefix << 8) | (unsigned)chosen;
        int nb = nbits + 8;
        s->prefix = p, s->nbits = nb, s->need = t;
        if (nb == 64 || (WEIGHTED ? s->hc[chosen] == 1 : t == (double)s->hc[chosen])) {
          s->result = nb == 64 ? p : p << (64 - nb);
          s->done = 1;
        }
      }
    }
    __syncthreads();
    if (s->done) break;
  }
  uint64_t r = s->result;
  __syncthreads();  // before anyone reuses the shared state
  return r;
}

// ---- the kernel: one block per row ----

template <typename T> __global__ void __launch_bounds__(SAMPLE_THREADS) sample_kernel(int32_t *out, const T *x,
                                                                                    const be_sample_t *params,
                                                                                    int V) {
  __shared__ select_smem_t sel;
  __shared__ float shf[SAMPLE_WARPS];
  __shared__ int shi[SAMPLE_WARPS];
  const T *row = x + (size_t)blockIdx.x * V;
  const be_sample_t p = params[blockIdx.x];

  if (!(p.temperature >= 1e-5f)) {  // greedy, as the host below 1e-5: argmax, lowest id, NaN never wins
    float bv = -INFINITY;
    int bi = -1;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
      float v = ld(row + i);
      if (v > -INFINITY && (bi < 0 || pick_better(v, i, bv, bi))) bv = v, bi = i;
    }
    int best = block_pick(bv, bi, shf, shi);
    if (threadIdx.x == 0) out[blockIdx.x] = best;
    return;
  }
  const float temp = p.temperature;

  // candidates: finite (or clamped) scaled logits; NaN and -inf are none. lmax: the best of them.
  int n_local = 0;
  float lmax = -INFINITY;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    float v = scaled(row, i, temp);
    if (v > -INFINITY) n_local++, lmax = fmaxf(lmax, v);
  }
  lmax = block_max(lmax, shf);
  int n_cand = 0;
  {  // sum of per-thread counts through the same shared slots
    for (int o = 16; o > 0; o >>= 1) n_local += __shfl_xor_sync(FULL_MASK, n_local, o);
    __syncthreads();
    if (threadIdx.x % 32 == 0) shi[threadIdx.x / 32] = n_local;
    __syncthreads();
    for (int i = 0; i < SAMPLE_WARPS; i++) n_cand += shi[i];
  }
  if (n_cand == 0) {
    if (threadIdx.x == 0) out[blockIdx.x] = -1;
    return;
  }

  uint64_t thr = 0;  // survivors of top-k and top-p: candidates with key >= thr
  if (p.top_k > 0 && p.top_k < n_cand) thr = radix_select<T, false>(&sel, row, V, temp, lmax, 0, (double)p.top_k);
  if (p.top_p < 1.0f) {
    uint64_t tp = radix_select<T, true>(&sel, row, V, temp, lmax, thr, (double)p.top_p);
    if (tp > thr) thr = tp;
  }

  // min-p on the survivors, then Gumbel-max; ids 4j..4j+3 share one Philox call
  const float min_p = p.min_p;
  float bv = -INFINITY;
  int bi = -1;
  for (int j = threadIdx.x; 4 * j < V; j += blockDim.x) {
    uint32_t w[4];
    bool have_w = false;
    for (int q = 0; q < 4; q++) {
      int i = 4 * j + q;
      if (i >= V) break;
      float v = scaled(row, i, temp);
      if (!(v > -INFINITY) || order_key(v, i) < thr) continue;
      if (min_p > 0.0f && !(expf(v - lmax) >= min_p)) continue;
      if (!have_w) philox_block(p.seed, p.position, (uint32_t)j, w), have_w = true;
      float g = v + gumbel_of(w[q]);
      if (bi < 0 || pick_better(g, i, bv, bi)) bv = g, bi = i;
    }
  }
  int best = block_pick(bv, bi, shf, shi);
  if (threadIdx.x == 0) out[blockIdx.x] = best;
}

extern "C" size_t cuda_sample_scratch_bytes(int n, int V) {
  (void)n, (void)V;
  return 16;  // the kernel keeps its state in shared memory; the glue wants a non-empty allocation
}

extern "C" int cuda_sample_rows(int32_t *out, const void *x, const be_sample_t *p, int n, int V, dtype_t act,
                                void *scratch, cudaStream_t stream) {
  (void)scratch;
  if (n <= 0) return 0;
  if (V <= 0 || !out || !x || !p) {
    log_error("cuda sample_rows: invalid arguments (n %d, V %d)", n, V);
    return STRATA_EINVAL;
  }
  DISPATCH_ACT(act, sample_kernel<T><<<n, SAMPLE_THREADS, 0, stream>>>(out, (const T *)x, p, V));
  return launched("sample_rows");
}
