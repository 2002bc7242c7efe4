/* backend.h: the one interface every compute backend implements (CPU reference, CUDA).
 *
 * A backend is a table of function pointers plus a context, as in ggml. The model's forward pass
 * calls only these entries, so a new backend is a new table. Activations live in backend memory in
 * the backend's activation dtype (f32 on the CPU; bf16 or f32 on CUDA), weights in the dtype the
 * backend chose at weight_prepare. Shapes are given in comments with this legend:
 *   T tokens in the step, S sequences, C model dim, H query heads, Hkv KV heads, D head dim,
 *   F FFN dim, V vocab, L layers, B block size (tokens per KV block).
 *
 * Threads: a backend object is used by one thread (the engine thread) at a time. */
#ifndef STRATA_BACKEND_H
#define STRATA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"

/* A 2-D weight, row-major: (rows, cols) = (out features, in features), as in PyTorch and GGUF. */
typedef struct {
  const void *data; /* backend memory (CPU: may point into a read-only mmap) */
  dtype_t dtype;
  int64_t rows, cols;
  /* a dummy model's matrix left for the backend to make (data NULL): element i is
   * scale * dummy_value(dummy_tensor_key(seed, tensor), i) rounded to DTYPE (common/dummy_hash.h) */
  struct {
    int on;
    float scale;
    uint64_t seed, tensor;
  } gen;
} weight_t;

enum { ROPE_STYLE_NORM = 0 /* rotates pairs (x[2i], x[2i+1]): GGUF llama */, ROPE_STYLE_NEOX = 1 /* rotates
       (x[i], x[i+D/2]): Hugging Face, GGUF qwen2 */ };

typedef struct {
  int style;              /* ROPE_STYLE_* */
  int head_dim;           /* D; the whole head rotates */
  const float *inv_freq;  /* (D/2) backend memory: theta^(-2i/D) after any scaling (llama3, linear) */
} be_rope_t;

/* One step's batch: a ragged list of sequences, each contributing q_start[s+1]-q_start[s] tokens
 * (a prefill chunk or one decode token). All arrays are backend memory (see batch_upload). */
typedef struct {
  int n_tokens;               /* T */
  int n_seqs;                 /* S */
  const int32_t *tokens;      /* (T) token ids */
  const int32_t *positions;   /* (T) position of each token in its sequence */
  const int32_t *slots;       /* (T) KV slot of each token: block_id * B + offset in block */
  const int32_t *seq_of;      /* (T) sequence index of each token */
  const int32_t *q_start;     /* (S+1) first batch row of each sequence; q_start[S] == T */
  const int32_t *kv_len;      /* (S) context length of each sequence including this step's tokens */
  const int32_t *block_table; /* (S, max_blocks) block ids of each sequence */
  int max_blocks;
  int max_kv_len;             /* max over kv_len */
  const int32_t *logit_rows;  /* (n_logits) batch rows whose logits are wanted */
  int n_logits;
  /* (T) or NULL (asynchronous steps, see patch_tokens): row t's token is the id the previous step drew
   * for its logit row prev_rows[t]; -1: tokens[t] */
  const int32_t *prev_rows;
} be_batch_t;

/* The paged KV cache in backend memory. Layout (n_blocks, L, 2, Hkv, B, D): one block holds K and V
 * of every layer contiguously, so moving a request's cache costs one transfer per block. Block 0 is
 * the null block (never handed to a request). */
typedef struct {
  void *data;
  dtype_t dtype;
  int n_blocks, n_layers, n_kv_heads, block_size, head_dim;
  size_t block_bytes; /* L * 2 * Hkv * B * D * sizeof(dtype) */
} be_kv_t;

/* Per-row sampling parameters for sample_rows (see worker/sample/sample.h for the semantics). */
typedef struct {
  float temperature; /* < 1e-5: greedy (argmax, ties to the lowest id), as sampler_sample */
  int top_k;         /* <= 0: off */
  float top_p;       /* 1: off */
  float min_p;       /* 0: off */
  uint64_t seed;     /* Philox key */
  uint64_t position; /* Philox counter: the number of tokens before the one being sampled */
} be_sample_t;

typedef struct backend backend_t;

typedef struct {
  const char *name;
  void (*destroy)(backend_t *be); /* frees the backend object and everything it owns */
  /* ---- memory ---- */
  void *(*alloc)(backend_t *be, size_t bytes); /* NULL on failure; memory is zeroed */
  void (*free)(backend_t *be, void *p);
  int (*upload)(backend_t *be, void *dst, const void *src, size_t bytes);   /* host -> backend */
  int (*download)(backend_t *be, void *dst, const void *src, size_t bytes); /* backend -> host */
  int (*sync)(backend_t *be);
  int (*mem_info)(backend_t *be, size_t *free_bytes, size_t *total_bytes);
  /* weight_prepare: makes DST a backend-resident copy of host weight SRC in the dtype the backend
   * computes with (CPU: DST aliases SRC; CUDA: upload, converting to bf16 unless f32 is asked for).
   * weight_release undoes it. */
  int (*weight_prepare)(backend_t *be, weight_t *dst, const weight_t *src);
  void (*weight_release)(backend_t *be, weight_t *w);
  /* (optional, default NULL: the forward pass keeps separate projections) weight_prepare_cat: DST = the
   * N host weights SRCS[0..n-1] placed one after the other in one backend weight: matrices of equal cols
   * become (sum of rows, cols) (fused q|k|v or gate|up projections), vectors (rows == 1, f32) become
   * (1, sum of cols) (concatenated biases). Released with weight_release. Returns 0, STRATA_EUNSUPPORTED
   * (fusion turned off or shapes that do not stack: the caller prepares the weights one by one),
   * STRATA_ENOMEM or STRATA_EIO (logged). The CPU backend leaves it NULL: its weights alias the mmap and
   * a fused copy would double host memory. */
  int (*weight_prepare_cat)(backend_t *be, weight_t *dst, const weight_t *const *srcs, int n);
  /* batch_upload: copies a host batch's arrays to backend memory; DST's pointers stay valid until the
   * next batch_upload. CPU: DST = SRC. */
  int (*batch_upload)(backend_t *be, be_batch_t *dst, const be_batch_t *src);

  /* ---- ops (activations in act_dtype) ---- */
  /* out(T,C) = emb[ids[t]] */
  void (*embed)(backend_t *be, void *out, const weight_t *emb, const int32_t *ids, int T);
  /* out(rows,C) = x / rms(x) * w, w (C) f32 */
  void (*rmsnorm)(backend_t *be, void *out, const void *x, const float *w, int rows, int C, float eps);
  /* residual(rows,C) += x; out = rmsnorm(residual) */
  void (*add_rmsnorm)(backend_t *be, void *out, void *residual, const void *x, const float *w, int rows, int C,
                      float eps);
  /* out(T,N) = x(T,K) @ w(N,K)^T + bias(N) (bias f32, may be NULL) */
  void (*matmul)(backend_t *be, void *out, const void *x, const weight_t *w, const float *bias, int T);
  /* q(T,H*D), k(T,Hkv*D) rotated in place at b->positions; then k and v(T,Hkv*D) written to the
   * cache at b->slots for LAYER. */
  void (*rope_kv_write)(backend_t *be, void *q, void *k, const void *v, be_kv_t *kv, int layer, const be_batch_t *b,
                        const be_rope_t *rope, int n_heads, int n_kv_heads);
  /* rope_qkv_write: rope_kv_write for a fused projection. QKV(T, LD) holds in each row of LD elements q (H*D),
   * then k (Hkv*D), then v (Hkv*D). Q_OUT(T,H*D) (packed, must not overlap QKV) = RoPE of q; k is rotated
   * and written with v to the cache (QKV is not modified). Q_NORM, K_NORM (D) f32 or NULL: Qwen3's RMSNorm
   * of each q and k head (with EPS) before RoPE, as rmsnorm then rope_kv_write would compute it. */
  void (*rope_qkv_write)(backend_t *be, void *q_out, const void *qkv, int ld, const float *q_norm,
                         const float *k_norm, float eps, be_kv_t *kv, int layer, const be_batch_t *b,
                         const be_rope_t *rope, int n_heads, int n_kv_heads);
  /* out(T,H*D): causal attention of each query over its sequence's cached K/V (positions
   * 0..positions[t]), GQA (H / Hkv query heads share one KV head), softmax(q.k * scale). */
  void (*attention)(backend_t *be, void *out, const void *q, const be_kv_t *kv, int layer, const be_batch_t *b,
                    int n_heads, int n_kv_heads, float scale);
  /* out(T,F) = silu(gate) * up */
  void (*silu_mul)(backend_t *be, void *out, const void *gate, const void *up, int T, int F);
  /* out(T,F) = silu(gu[:, :F]) * gu[:, F:2F] of a fused gate|up projection gu(T,2F); OUT packed, not
   * overlapping GU. */
  void (*silu_mul_cat)(backend_t *be, void *out, const void *gu, int T, int F);
  /* out(n,C) = x[rows[i]] */
  void (*gather_rows)(backend_t *be, void *out, const void *x, const int32_t *rows, int n, int C);
  /* host_out(n) = f32(x(n)) : the way logits come back to the host */
  int (*to_host_f32)(backend_t *be, float *host_out, const void *x, int64_t n);
  /* (optional, default NULL: the engine samples on the host) host_out(n) int32 = argmax of each row of
   * x(n, V), ties to the lowest id, NaN never wins: greedy decoding without moving logits. Ends the
   * step like to_host_f32. */
  int (*argmax_rows)(backend_t *be, int32_t *host_out, const void *x, int n, int V);
  /* (optional, default NULL) host_out(n) int32 = the token the host sampler (sampler_sample without
   * penalties, logprobs or masking) draws from each row of x(n, V) under P[i] (host memory): temperature,
   * top-k, top-p, min-p, then the Gumbel-max draw keyed by (seed, position). Ends the step like
   * to_host_f32. */
  int (*sample_rows)(backend_t *be, int32_t *host_out, const void *x, const be_sample_t *p, int n, int V);

  /* ---- asynchronous steps (optional: all three or none; default NULL, every step waits for its ids) ----
   * The engine enqueues step N+1 before it has step N's token ids: draw_rows ends a step without waiting,
   * the next step's decode rows take their input ids from the backend's copy of them (patch_tokens), and
   * draw_wait hands a step's ids to the host later. Two host slots (0, 1) let step N's ids travel while
   * step N+1 is built and enqueued. */
  /* patch_tokens: right after batch_upload of B with prev_rows set (the forward pass calls it before the
   * embedding): for every row t with prev_rows[t] >= 0, B's token t becomes the id that the last draw_rows
   * drew for its row prev_rows[t] (which must be < that call's N), read where the backend keeps it: the host
   * never needs it. May repoint B->tokens (backend memory valid until the next batch_upload). Part of the
   * step (a captured CUDA graph replays it). Returns 0 or a STRATA_E* code. */
  int (*patch_tokens)(backend_t *be, be_batch_t *b);
  /* draw_rows: ends the step like argmax_rows (P NULL) or sample_rows (P: N parameter sets in host memory,
   * consumed before it returns) but returns without waiting: the N ids of x(n, V)'s rows stay on the backend
   * for the next step's patch_tokens and travel to host slot SLOT (0 or 1). N 0 only ends the step (no ids).
   * The caller draw_waits SLOT before the next draw_rows into it. Returns 0 or a STRATA_E* code. */
  int (*draw_rows)(backend_t *be, int slot, const void *x, const be_sample_t *p, int n, int V);
  /* draw_wait: waits until the step that drew into SLOT is done, then copies its first N ids to HOST_OUT.
   * Returns 0, or the first error of that step's ops (as to_host_f32 reports them). */
  int (*draw_wait)(backend_t *be, int slot, int32_t *host_out, int n);
} be_ops_t;

struct backend {
  const be_ops_t *ops;
  void *ctx;
  dtype_t act_dtype; /* activation and KV dtype */
  int n_threads;
  char device[32];   /* "cpu", "cuda:0" */
  int pad_decode;    /* > 0: the engine pads decode-only steps of up to this many sequences to a few batch
                        sizes (captured CUDA graphs are per size, so steps reuse a handful); 0: never */
};

/* backend_create: "cpu" or "cuda[:N]" ("auto": a GPU when one is present, else the CPU). N_THREADS
 * 0 = all cores (CPU). ACT_DTYPE -1 = the backend's default. Returns 0 or a STRATA_E* code (logged). */
int backend_create(backend_t **out, const char *device, int n_threads, int act_dtype);
void backend_destroy(backend_t *be);
/* backend_device_is_gpu: 1 when backend_create(DEVICE) would make a GPU backend ("cuda[:N]", or "auto" with a
 * GPU present), else 0; for callers that prepare for the device before creating it (dummy weights). */
int backend_device_is_gpu(const char *device);

/* backend_cpu_create: the CPU backend (worker/backend/cpu). */
int backend_cpu_create(backend_t **out, int n_threads);
void backend_cpu_destroy(backend_t *be);

static inline size_t dtype_act_bytes(dtype_t t) { return t == DTYPE_F32 ? 4 : 2; }

#endif
