/* forward.h: the Llama-family forward pass over a ragged batch, on any backend.
 *
 * A fwd_t holds what one model needs on one backend: backend-resident weights, the paged KV cache
 * (be_kv_t) and scratch activations sized for at most max_tokens tokens per step. fwd_run computes
 * one step (prefill chunks and decodes together) and leaves the logits of the batch's logit rows on
 * the host. Owner: the engine thread. */
#ifndef STRATA_FORWARD_H
#define STRATA_FORWARD_H

#include "worker/backend/backend.h"
#include "worker/model/model.h"

/* A layer's fused projections (backends with weight_prepare_cat); a NULL data pointer: not fused. */
typedef struct {
  weight_t wqkv;           /* (H*D + 2*Hkv*D, C): wq | wk | wv */
  weight_t bqkv;           /* (1, H*D + 2*Hkv*D) f32: bq | bk | bv (Qwen2), else absent */
  weight_t wgu;            /* (2F, C): w_gate | w_up */
} fwd_fused_t;

typedef struct {
  const model_t *m;        /* borrowed */
  backend_t *be;           /* borrowed */
  model_weights_t w;       /* backend-resident weights (CPU: the host weights); a fused projection's parts
                              stay absent here */
  fwd_fused_t *fused;      /* (L) */
  int n_fused_qkv, n_fused_gu; /* layers whose q|k|v / gate|up projections are fused */
  float *inv_freq;         /* (D/2) backend memory */
  be_rope_t rope;
  be_kv_t kv;              /* the paged KV cache */
  int max_tokens;          /* T capacity */
  int max_logits;          /* rows of logits per step at most */
  /* scratch activations, backend memory, act dtype */
  void *x;                 /* (T, C) residual stream */
  void *xb;                /* (T, C) normed input of a sub-layer */
  void *xo;                /* (T, C) output of a sub-layer */
  void *q;                 /* (T, H*D) */
  void *k;                 /* (T, Hkv*D) */
  void *v;                 /* (T, Hkv*D) */
  void *qn;                /* (T, H*D) Qwen3: q after its norm */
  void *kn;                /* (T, Hkv*D) Qwen3: k after its norm */
  void *qkv;               /* (T, H*D + 2*Hkv*D) fused q | k | v (when a layer has wqkv) */
  void *gu;                /* (T, 2F) fused gate | up (when a layer has wgu) */
  void *att;               /* (T, H*D) attention output */
  void *gate;              /* (T, F) */
  void *up;                /* (T, F) */
  void *lx;                /* (max_logits, C) rows whose logits are wanted */
  void *logits;            /* (max_logits, V) */
  float *logits_host;      /* (max_logits, V) host */
  int32_t *argmax_host;    /* (max_logits) host: fwd_run_argmax's / fwd_run_sample's token ids */
} fwd_t;

/* fwd_kv_block_bytes: bytes of one KV block (all layers, K and V) in DTYPE. */
size_t fwd_kv_block_bytes(const model_cfg_t *cfg, dtype_t dtype, int block_size);

/* fwd_init: prepares M's weights on BE and allocates scratch for MAX_TOKENS tokens and MAX_LOGITS
 * logit rows per step, for a KV cache of BLOCK_SIZE-token blocks. Returns 0 or a STRATA_E* code
 * (STRATA_ENOMEM with a log line saying how much was asked). The cache itself comes next. */
int fwd_init(fwd_t *f, const model_t *m, backend_t *be, int block_size, int max_tokens, int max_logits);
/* fwd_alloc_kv: allocates the paged KV cache, N_KV_BLOCKS blocks (after fwd_init, so that the
 * caller can size it from the memory the weights left free). */
int fwd_alloc_kv(fwd_t *f, int n_kv_blocks);
void fwd_deinit(fwd_t *f);

/* fwd_run: one forward step over B (host arrays; uploaded here). On return f->logits_host holds
 * (B->n_logits, V) f32 logits, row i for batch row B->logit_rows[i]. */
int fwd_run(fwd_t *f, const be_batch_t *b);

/* fwd_run_argmax: fwd_run for a step whose every logit row decodes greedily: f->argmax_host gets the
 * argmax token of each row and the logits stay on the backend (only ids cross to the host). Only for
 * backends with the optional argmax_rows op. */
int fwd_run_argmax(fwd_t *f, const be_batch_t *b);

/* fwd_run_sample: fwd_run for a step whose logit rows are drawn on the backend with P[i] (host array,
 * B->n_logits entries; see be_sample_t): f->argmax_host gets the drawn token of each row. Only for
 * backends with the optional sample_rows op. */
int fwd_run_sample(fwd_t *f, const be_batch_t *b, const be_sample_t *p);

/* fwd_enqueue: fwd_run_argmax (P NULL) or fwd_run_sample without waiting for the ids (backends with
 * draw_rows): the step is enqueued and its B->n_logits ids travel to the backend's host slot SLOT (0 or 1).
 * B->prev_rows, when set, takes decode inputs from the previous fwd_enqueue's ids (see patch_tokens).
 * Host arrays of B and P may be rewritten once it returns. fwd_wait(F, SLOT, N) then waits for them and
 * leaves the N ids in f->argmax_host. Both return 0 or a STRATA_E* code. */
int fwd_enqueue(fwd_t *f, const be_batch_t *b, const be_sample_t *p, int slot);
int fwd_wait(fwd_t *f, int slot, int n);

#endif
