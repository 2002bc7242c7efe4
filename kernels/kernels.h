/* kernels.h: the compute kernels of a transformer forward pass (CPU reference; CUDA keeps the names).
 *
 * Every kernel is a pure function, output first, with shapes in comments. Legend as in
 * worker/backend/backend.h: T tokens, C model dim, H query heads, Hkv KV heads, D head dim,
 * F FFN dim, N output features, K input features, B block size. Activations are f32, row-major.
 * Weights stay in their stored dtype (f32, f16, bf16, q8_0, q4_0; k-quants through dtype_to_f32)
 * and are dequantized per tile into per-thread scratch, never converted whole.
 *
 * The last argument of each kernel is the thread pool (NULL = run on the calling thread). The CUDA
 * versions take a stream in that place.
 *
 * Batch invariance: every output element is computed by the same sequence of floating-point
 * operations whatever T is, however the batch is grouped or chunked, and whichever thread computes
 * it. The engine relies on this: a prompt gives the same tokens alone, batched or chunked. */
#ifndef STRATA_KERNELS_H
#define STRATA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"

/* ---- thread pool ---- */

typedef struct kern_pool kern_pool_t;
typedef struct kern_worker kern_worker_t;

/* A task runs job indices 0..n_jobs-1, each exactly once, on any thread; W gives per-thread scratch. */
typedef void (*kern_task_fn)(void *arg, int64_t job, kern_worker_t *w);

/* kern_pool_new: starts N_THREADS-1 worker threads (the caller is the N-th); N_THREADS 0 = the
 * number of online CPUs. Returns 0, STRATA_EINVAL or STRATA_ENOMEM (logged). Free with kern_pool_free. */
int kern_pool_new(kern_pool_t **out, int n_threads);
void kern_pool_free(kern_pool_t *pool);
int kern_pool_size(const kern_pool_t *pool);
/* kern_pool_run: runs FN over N_JOBS jobs and returns when all are done. POOL may be NULL (serial).
 * Not reentrant: one caller thread at a time. */
void kern_pool_run(kern_pool_t *pool, kern_task_fn fn, void *arg, int64_t n_jobs);
/* kern_worker_scratch: this thread's scratch of at least BYTES (64-byte aligned), kept across calls;
 * NULL on out-of-memory. Valid until the next call with the same W. */
void *kern_worker_scratch(kern_worker_t *w, size_t bytes);
int kern_worker_id(const kern_worker_t *w);

/* kern_force_portable: 1 = use the portable C paths even where AVX2+FMA exist (tests, debugging).
 * Process-wide; call before kernels run, not concurrently with them. */
void kern_force_portable(int on);
/* kern_simd_name: "avx2" or "portable": the path the kernels take on this machine. */
const char *kern_simd_name(void);

/* ---- the paged KV cache ---- */

/* Layout (n_blocks, L, 2, Hkv, B, D) f32: one block holds K and V of every layer contiguously. */
typedef struct {
  float *data;
  int n_blocks, n_layers, n_kv_heads, block_size, head_dim;
} kern_kv_t;

/* ---- ops ---- */

/* out(T,C) = f32(emb[ids[t]]), emb (V,C) in TYPE. An id outside [0,V) gives a zero row (logged).
 * Returns 0 or STRATA_EUNSUPPORTED (dtype without a converter, or C not a multiple of its block). */
int kern_embed(float *out, const void *emb, dtype_t type, int64_t V, int C, const int32_t *ids, int T,
               kern_pool_t *pool);

/* out(rows,C) = x / sqrt(mean(x^2) + eps) * w(C). OUT may equal X. */
void kern_rmsnorm(float *out, const float *x, const float *w, int rows, int C, float eps, kern_pool_t *pool);

/* residual(rows,C) += x(rows,C); out(rows,C) = rmsnorm(residual). */
void kern_add_rmsnorm(float *out, float *residual, const float *x, const float *w, int rows, int C, float eps,
                      kern_pool_t *pool);

/* out(T,N) = x(T,K) @ w(N,K)^T + bias(N). W is row-major in WTYPE (rows of K elements; K must be a
 * multiple of the dtype's block); BIAS f32 or NULL. OUT must not alias X.
 * Returns 0, STRATA_EUNSUPPORTED (dtype) or STRATA_ENOMEM (scratch); logged. */
int kern_matmul(float *out, const float *x, const void *w, dtype_t wtype, int N, int K, const float *bias, int T,
                kern_pool_t *pool);

/* Rotates q(T,H*D) and k(T,Hkv*D) in place by RoPE at POSITIONS(T): angle = position * inv_freq[i]
 * (in double), STYLE 0 rotates (x[2i], x[2i+1]), STYLE 1 (neox) rotates (x[i], x[i+D/2]); then
 * writes k and v(T,Hkv*D) to the cache at SLOTS(T) (block = slot / B, offset slot % B) for LAYER.
 * A token with slot -1 is rotated but not written (a padding row); one past the cache likewise, logged. */
void kern_rope_kv_write(float *q, float *k, const float *v, kern_kv_t *kv, int layer, const int32_t *positions,
                        const int32_t *slots, int T, int H, int style, const float *inv_freq, kern_pool_t *pool);

/* The fused-projection variant of kern_rope_kv_write. QKV(T, LD) holds in each row q (H*D), k (Hkv*D),
 * v (Hkv*D), one after the other. Q_OUT(T,H*D) = RoPE(q) (packed; must not overlap QKV); k is rotated and
 * written with v to the cache at SLOTS; QKV is read only. Q_NORM / K_NORM (D) or NULL: each q / k head
 * goes through kern_rmsnorm (EPS) first, giving exactly what kern_rmsnorm then kern_rope_kv_write give.
 * A token with slot -1 gets its q_out row but no cache write (a padding row); one past the cache
 * likewise, logged. */
void kern_rope_qkv_write(float *q_out, const float *qkv, int ld, const float *q_norm, const float *k_norm, float eps,
                         kern_kv_t *kv, int layer, const int32_t *positions, const int32_t *slots, int T, int H,
                         int style, const float *inv_freq, kern_pool_t *pool);

/* out(T,H*D): causal attention of query row t of sequence s = seq_of[t] over its cached positions
 * 0..positions[t], read through block_table(S, max_blocks); query head h uses KV head h / (H/Hkv).
 * p = softmax(q.k * scale) over positions in order (max-subtracted); out = sum_p p * v.
 * A query whose block table holds a block outside the cache gets a zero row (logged). */
void kern_attention(float *out, const float *q, const kern_kv_t *kv, int layer, const int32_t *positions,
                    const int32_t *seq_of, const int32_t *block_table, int max_blocks, int T, int H, float scale,
                    kern_pool_t *pool);

/* out(T,F) = silu(gate) * up, silu(g) = g / (1 + exp(-g)). OUT may equal GATE or UP. */
void kern_silu_mul(float *out, const float *gate, const float *up, int T, int F, kern_pool_t *pool);

/* out(T,F) = silu(gate) * up with the rows of GATE and UP LD >= F elements apart (a fused gate|up
 * projection: gate = gu, up = gu + F, LD = 2F); OUT (T,F) packed, must not overlap GATE or UP unless
 * LD == F (then as kern_silu_mul). */
void kern_silu_mul_ld(float *out, const float *gate, const float *up, int T, int F, int ld, kern_pool_t *pool);

/* out(T,C) = a + b. OUT may equal A or B. */
void kern_add(float *out, const float *a, const float *b, int T, int C, kern_pool_t *pool);

/* out(n,C) = x[rows[i]]. OUT must not alias X. */
void kern_gather_rows(float *out, const float *x, const int32_t *rows, int n, int C);

/* kern_bench_matmul: prints GFLOP/s of kern_matmul for T=1 and T=256 on an (N,K) matrix in f32, bf16,
 * q8_0 (for the benchmarks; the lead's bench/engine calls it). Returns 0 or a STRATA_E* code. */
int kern_bench_matmul(int N, int K, int n_threads);

#endif
