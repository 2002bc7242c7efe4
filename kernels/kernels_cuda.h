/* kernels_cuda.h: the CUDA versions of the kernels of kernels.h (same names with a cuda_ prefix, same order).
 *
 * Differences from the CPU reference: activations, residuals and the KV cache are in ACT (f32, bf16 or
 * f16) instead of f32, with f32 arithmetic inside every kernel; weights are already in ACT (the backend
 * converts them once, see cuda_convert); norm weights and biases stay f32. The last argument is the
 * stream instead of the thread pool. All pointers are device memory. Every function launches
 * asynchronously and returns 0, STRATA_EINVAL (bad shape or dtype) or STRATA_EIO (the launch failed);
 * errors are logged. None of them synchronizes. Matrix products live in the backend (cuBLASLt); the
 * GEMV here covers the few-token case. */
#ifndef STRATA_KERNELS_CUDA_H
#define STRATA_KERNELS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "common/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The paged KV cache on the device: layout (n_blocks, L, 2, Hkv, B, D) in DTYPE (the activation dtype). */
typedef struct {
  void *data;
  dtype_t dtype;
  int n_blocks, n_layers, n_kv_heads, block_size, head_dim;
} cuda_kv_t;

/* cuda_device_count: the number of usable CUDA devices, 0 when there is none or no driver (never fails). */
int cuda_device_count(void);

/* out(n) = SRC(n) converted from STYPE (f32, f16, bf16) to DTYPE (f32, f16, bf16); OUT must not alias SRC. */
int cuda_convert(void *out, dtype_t dtype, const void *src, dtype_t stype, int64_t n, cudaStream_t stream);

/* cuda_dummy_fill: out(n) in DTYPE = a dummy model's tensor made on the GPU: element i is
 * SCALE * dummy_value(dummy_tensor_key(SEED, TENSOR), i) (common/dummy_hash.h), rounded to the model's
 * dtype STYPE first, exactly the values the host loader makes (then converted to DTYPE, as an upload). */
int cuda_dummy_fill(void *out, dtype_t dtype, dtype_t stype, uint64_t seed, uint64_t tensor, float scale, int64_t n,
                    cudaStream_t stream);

/* cuda_set_launch_carveout: the preferred split of each multiprocessor's L1 and shared memory (PCT percent
 * shared, 0..100; -1: the driver's choice) for the kernels this thread launches from now on (the GEMV, norms,
 * RoPE, decode attention, argmax). A multiprocessor runs blocks of consecutive kernels side by side (with
 * programmatic dependent launch) only while they agree on it. */
void cuda_set_launch_carveout(int pct);

/* out(T,C) = emb[ids[t]], emb (V,C) in ACT. An id outside [0,V) gives a zero row. */
int cuda_embed(void *out, const void *emb, int64_t V, int C, const int32_t *ids, int T, dtype_t act,
               cudaStream_t stream);

/* out(rows,C) = x / sqrt(mean(x^2) + eps) * w(C) (w f32). OUT may equal X. */
int cuda_rmsnorm(void *out, const void *x, const float *w, int rows, int C, float eps, dtype_t act,
                 cudaStream_t stream);

/* residual(rows,C) += x (rounded to ACT); out(rows,C) = rmsnorm(residual). */
int cuda_add_rmsnorm(void *out, void *residual, const void *x, const float *w, int rows, int C, float eps,
                     dtype_t act, cudaStream_t stream);

/* out(T,N) = x(T,K) @ w(N,K)^T + bias(N) for 1 <= T <= CUDA_GEMV_MAX_T: one pass over W with 16-byte
 * loads (the memory-bound decode case). BIAS f32 or NULL. OUT must not alias X. */
#define CUDA_GEMV_MAX_T 8
int cuda_gemv(void *out, const void *x, const void *w, int N, int K, const float *bias, int T, dtype_t act,
              cudaStream_t stream);

/* cuda_gemv_impl: cuda_gemv with a chosen version, for benchmarks: 0 the first (a row per warp, 8 loads in
 * flight per lane, plain launch), 1 version 2 (16 in flight for T <= 2, programmatic dependent launch on sm_90
 * unless STRATA_CUDA_PDL=0), 2 as 1 without the dependent launch, 3 as 0 with it; for T <= 2 only, version 3
 * ("coop": a block of 4 warps streams each row together, then adds its partial sums): 4, 5, 7 with 4, 8, 16
 * loads in flight per thread and a row per block, 6 with 4 loads and 2 rows per block. cuda_gemv picks the
 * version per shape (the fastest measured on H100: 5 for T <= 2, 4 where K >= 12288; above, 1 for N >= 4K or
 * N <= K/2, else 3); STRATA_CUDA_GEMV=v1 forces 3, =v2 forces 1, =cN forces coop version N (T <= 2).
 * Versions 0..3 give the same bits (each lane sums its slice of K in the same order), as do 4..7 among
 * themselves; the two families differ in the last bits. */
int cuda_gemv_impl(int impl, void *out, const void *x, const void *w, int N, int K, const float *bias, int T,
                   dtype_t act, cudaStream_t stream);

/* out(T,N) += bias(N) (f32), after a cuBLASLt product. */
int cuda_add_bias(void *out, const float *bias, int T, int N, dtype_t act, cudaStream_t stream);

/* As kern_rope_kv_write: rotates q(T,H*D) and k(T,Hkv*D) in place at POSITIONS (angles in double), then
 * writes k and v to the cache at SLOTS for LAYER; a slot outside the cache is rotated but not written. */
int cuda_rope_kv_write(void *q, void *k, const void *v, cuda_kv_t *kv, int layer, const int32_t *positions,
                       const int32_t *slots, int T, int H, int style, const float *inv_freq, cudaStream_t stream);

/* As kern_rope_qkv_write: q, k, v read from the rows of QKV(T, LDQ) (q | k | v), q_out(T,H*D) packed, k
 * rotated and written with v to the cache (QKV is read only); Q_NORM / K_NORM (D, f32) or NULL: each head's
 * RMSNorm first, rounded to ACT as a separate cuda_rmsnorm would store it. */
int cuda_rope_qkv_write(void *q_out, const void *qkv, int ldq, const float *q_norm, const float *k_norm, float eps,
                        cuda_kv_t *kv, int layer, const int32_t *positions, const int32_t *slots, int T, int H,
                        int style, const float *inv_freq, cudaStream_t stream);

/* Scratch and choices of cuda_attention, owned by the caller (the backend allocates PART once: no
 * allocation happens inside a step, so a step can be captured as a CUDA graph). */
typedef enum {
  CUDA_ATT_AUTO = 0, /* tensor-core tiles for prefill-heavy 16-bit batches; other 16-bit batches with D 64 or
                        128 the tensor-core decode kernel; else (f32, other D) split-KV below as many
                        (token, KV head) pairs as SMs, the first version's kernel from there on */
  CUDA_ATT_V1,       /* the first version's kernel (one block per token and KV head) for every batch */
  CUDA_ATT_NO_TC,    /* the split-KV kernel for every batch (tests it on prefill too) */
  CUDA_ATT_WMMA,     /* as AUTO, but prefill-heavy batches use the WMMA tile kernel instead of the
                        flash-attention-2 one (attn_prefill.cu): for comparisons */
} cuda_att_impl_t;
typedef struct {
  float *part;       /* device scratch for the partial results of a KV split, PART_BYTES long (may be NULL) */
  size_t part_bytes;
  int n_sms;         /* multiprocessors of the device (sizes the split) */
  cuda_att_impl_t impl;
} cuda_att_work_t;

/* As kern_attention: out(T,H*D), query t of sequence seq_of[t] over its positions 0..positions[t] through
 * block_table(S, max_blocks), GQA, online softmax in f32. A query whose block table holds a block
 * outside the cache gets a zero row. D <= 256, H / Hkv <= 8. S (the number of sequences) only picks the
 * kernel: prefill-heavy (T >= 4 S) bf16/f16 batches with D % 16 == 0 use tensor cores (tiles of 64 query
 * rows of one head, f32 accumulation, probabilities rounded to ACT before the product with V). Other
 * bf16/f16 batches with D 64 or 128 use the decode kernel: one block per (token, KV head) streams K and V
 * from the cache with 16-byte asynchronous copies, the G heads of the group share every read as the rows
 * of a tensor-core product (P rounded to ACT before the product with V); when the pairs do not fill the
 * SMs, each query's KV range is split over several blocks (partials in WORK->part, merged by the last
 * block of each pair, or by a second kernel with STRATA_CUDA_ATT_MERGE=kernel). Other batches (f32, other
 * D) use the split-KV kernel below as many pairs as SMs, one block per pair above. Calls on one device
 * must not overlap (they share WORK->part and the decode kernel's per-pair counters). WORK may be NULL
 * (no split, AUTO). The launch configuration depends only on (T, S, max_blocks) and the model, so a
 * captured step replays correctly. */
int cuda_attention(void *out, const void *q, const cuda_kv_t *kv, int layer, const int32_t *positions,
                   const int32_t *seq_of, const int32_t *block_table, int max_blocks, int T, int S, int H,
                   float scale, const cuda_att_work_t *work, cudaStream_t stream);

/* out(T,F) = silu(gate) * up. OUT may equal GATE or UP. */
int cuda_silu_mul(void *out, const void *gate, const void *up, int T, int F, dtype_t act, cudaStream_t stream);
/* out(T,F) packed = silu(gate) * up with the rows of GATE and UP LDG >= F elements apart (a fused gate|up:
 * gate = gu, up = gu + F, LDG = 2F). OUT must not overlap GATE or UP. */
int cuda_silu_mul_ld(void *out, const void *gate, const void *up, int T, int F, int ldg, dtype_t act,
                     cudaStream_t stream);

/* out(n,C) = x[rows[i]]. OUT must not alias X. */
/* cuda_argmax_rows: out(n) int32 = argmax of each row of x(n, V); ties to the lowest id, NaN never wins
 * (the CPU sampler's greedy rule). */
int cuda_argmax_rows(int32_t *out, const void *x, int n, int V, dtype_t act, cudaStream_t stream);
int cuda_gather_rows(void *out, const void *x, const int32_t *rows, int n, int C, dtype_t act, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
