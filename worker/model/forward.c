/* forward.c: the Llama-family transformer forward pass (Llama 2/3, Mistral, Qwen2, Qwen3), written
 * once against the backend interface. It reads like the paper: one comment per step. */
#include "worker/model/forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"

void model_rope_inv_freq(const model_cfg_t *cfg, float *inv_freq) {
  const int D = cfg->head_dim;
  for (int i = 0; i < D / 2; i++) {
    double f = 1.0 / pow((double)cfg->rope_theta, (double)(2 * i) / (double)D);
    if (cfg->rope_scaling == ROPE_SCALING_LINEAR && cfg->rope_factor > 0) {
      f /= cfg->rope_factor;
    } else if (cfg->rope_scaling == ROPE_SCALING_LLAMA3 && cfg->rope_factor > 0) {
      /* Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, a smooth ramp between. */
      double lo = cfg->rope_low_freq_factor > 0 ? cfg->rope_low_freq_factor : 1.0;
      double hi = cfg->rope_high_freq_factor > 0 ? cfg->rope_high_freq_factor : 4.0;
      double orig = cfg->rope_orig_max_pos > 0 ? cfg->rope_orig_max_pos : 8192;
      double wavelen = 2.0 * M_PI / f;
      if (wavelen > orig / lo) {
        f /= cfg->rope_factor;
      } else if (wavelen >= orig / hi) {
        double smooth = (orig / wavelen - lo) / (hi - lo);
        f = (1.0 - smooth) * f / cfg->rope_factor + smooth * f;
      }
    }
    inv_freq[i] = (float)f;
  }
}

size_t fwd_kv_block_bytes(const model_cfg_t *cfg, dtype_t dtype, int block_size) {
  return (size_t)cfg->n_layers * 2 * (size_t)cfg->n_kv_heads * (size_t)block_size * (size_t)cfg->head_dim *
         dtype_act_bytes(dtype);
}

/* prepare_weight: W on the backend (CPU: an alias); an absent optional weight stays absent. */
static int prepare_weight(backend_t *be, weight_t *dst, const weight_t *src) {
  memset(dst, 0, sizeof *dst);
  if (!src->data && !src->gen.on) return 0;
  return be->ops->weight_prepare(be, dst, src);
}

static void release_weight(backend_t *be, weight_t *w) {
  if (w->data) be->ops->weight_release(be, w);
  memset(w, 0, sizeof *w);
}

/* prepare_cat: DST = the N weights of SRCS stacked on the backend, when it can fuse them. Returns 0 (fused),
 * 1 (not fused: the caller places them one by one) or a STRATA_E* code. */
static int prepare_cat(backend_t *be, weight_t *dst, const weight_t *const *srcs, int n) {
  memset(dst, 0, sizeof *dst);
  if (!be->ops->weight_prepare_cat) return 1;
  int rc = be->ops->weight_prepare_cat(be, dst, srcs, n);
  return rc == STRATA_EUNSUPPORTED ? 1 : rc;
}

/* prepare_fused: layer L's q|k|v and gate|up as single weights where the backend fuses (the parts in D
 * stay absent), so that a layer runs 4 matrix products instead of 7. The biases must be all present or all
 * absent. */
static int prepare_fused(fwd_t *f, const layer_weights_t *s, fwd_fused_t *fu) {
  backend_t *be = f->be;
  memset(fu, 0, sizeof *fu);
  if (!be->ops->weight_prepare_cat || !be->ops->rope_qkv_write || !be->ops->silu_mul_cat) return 0;
  int n_bias = !!s->bq.data + !!s->bk.data + !!s->bv.data;
  int rc = 0;
  if (n_bias == 0 || n_bias == 3) {
    const weight_t *w[3] = {&s->wq, &s->wk, &s->wv}, *bias[3] = {&s->bq, &s->bk, &s->bv};
    rc = prepare_cat(be, &fu->wqkv, w, 3);
    if (rc == 0 && n_bias) {
      rc = prepare_cat(be, &fu->bqkv, bias, 3);
      if (rc) release_weight(be, &fu->wqkv); /* both or neither */
    }
    if (rc == 0) f->n_fused_qkv++;
    if (rc > 0) rc = 0;
  }
  if (!rc) {
    const weight_t *w[2] = {&s->w_gate, &s->w_up};
    rc = prepare_cat(be, &fu->wgu, w, 2);
    if (rc == 0) f->n_fused_gu++;
    if (rc > 0) rc = 0;
  }
  return rc;
}

static int prepare_weights(fwd_t *f) {
  const model_t *m = f->m;
  backend_t *be = f->be;
  const int L = m->cfg.n_layers;
  f->w.layers = calloc((size_t)L, sizeof(layer_weights_t));
  f->fused = calloc((size_t)L, sizeof(fwd_fused_t));
  if (!f->w.layers || !f->fused) return STRATA_ENOMEM;
  int rc = prepare_weight(be, &f->w.tok_embd, &m->w.tok_embd);
  if (!rc) rc = prepare_weight(be, &f->w.out_norm, &m->w.out_norm);
  if (!rc) {
    if (m->cfg.tied_embeddings || (m->w.output.data && m->w.output.data == m->w.tok_embd.data))
      f->w.output = f->w.tok_embd; /* shared, released once */
    else
      rc = prepare_weight(be, &f->w.output, &m->w.output);
  }
  for (int l = 0; l < L && !rc; l++) {
    const layer_weights_t *s = &m->w.layers[l];
    layer_weights_t *d = &f->w.layers[l];
    const weight_t *src[] = {&s->attn_norm, &s->wq, &s->wk, &s->wv, &s->bq, &s->bk, &s->bv,
                             &s->q_norm, &s->k_norm, &s->wo, &s->ffn_norm, &s->w_gate, &s->w_up, &s->w_down};
    weight_t *dst[] = {&d->attn_norm, &d->wq, &d->wk, &d->wv, &d->bq, &d->bk, &d->bv,
                       &d->q_norm, &d->k_norm, &d->wo, &d->ffn_norm, &d->w_gate, &d->w_up, &d->w_down};
    fwd_fused_t *fu = &f->fused[l];
    rc = prepare_fused(f, s, fu);
    for (size_t i = 0; i < sizeof src / sizeof src[0] && !rc; i++) {
      int in_qkv = i >= 1 && i <= 6, in_gu = i == 11 || i == 12; /* wq..bv; w_gate, w_up */
      if ((in_qkv && fu->wqkv.data) || (in_gu && fu->wgu.data)) continue;
      rc = prepare_weight(be, dst[i], src[i]);
    }
  }
  if (rc) log_error("cannot place the weights of %s on %s: %s", m->name, be->device, strata_strerror(rc));
  return rc;
}

static void release_weights(fwd_t *f) {
  backend_t *be = f->be;
  if (!f->w.layers) return;
  int tied = f->w.output.data == f->w.tok_embd.data;
  release_weight(be, &f->w.tok_embd);
  release_weight(be, &f->w.out_norm);
  if (!tied) release_weight(be, &f->w.output);
  for (int l = 0; l < f->m->cfg.n_layers; l++) {
    layer_weights_t *d = &f->w.layers[l];
    weight_t *ws[] = {&d->attn_norm, &d->wq, &d->wk, &d->wv, &d->bq, &d->bk, &d->bv,
                      &d->q_norm, &d->k_norm, &d->wo, &d->ffn_norm, &d->w_gate, &d->w_up, &d->w_down};
    for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) release_weight(be, ws[i]);
    if (f->fused) {
      release_weight(be, &f->fused[l].wqkv);
      release_weight(be, &f->fused[l].bqkv);
      release_weight(be, &f->fused[l].wgu);
    }
  }
  free(f->w.layers);
  free(f->fused);
  f->w.layers = NULL;
  f->fused = NULL;
}

static void *alloc_act(fwd_t *f, int rows, int cols, int *rc) {
  if (*rc) return NULL;
  size_t n = (size_t)rows * (size_t)cols * dtype_act_bytes(f->be->act_dtype);
  void *p = f->be->ops->alloc(f->be, n ? n : 1);
  if (!p) {
    log_error("%s: out of memory allocating %zu bytes of activations", f->be->device, n);
    *rc = STRATA_ENOMEM;
  }
  return p;
}

int fwd_init(fwd_t *f, const model_t *m, backend_t *be, int block_size, int max_tokens, int max_logits) {
  memset(f, 0, sizeof *f);
  f->m = m;
  f->be = be;
  f->max_tokens = max_tokens;
  f->max_logits = max_logits;
  const model_cfg_t *c = &m->cfg;
  if (block_size < 1 || max_tokens < 1 || max_logits < 1 || c->head_dim % 2) {
    log_error("forward: bad sizes (block size %d, max tokens %d, head dim %d)", block_size, max_tokens,
              c->head_dim);
    return STRATA_EINVAL;
  }
  int rc = prepare_weights(f);
  /* rotary frequencies, computed once on the host */
  float *inv = NULL;
  if (!rc) {
    inv = malloc(sizeof(float) * (size_t)(c->head_dim / 2));
    f->inv_freq = be->ops->alloc(be, sizeof(float) * (size_t)(c->head_dim / 2));
    if (!inv || !f->inv_freq) rc = STRATA_ENOMEM;
  }
  if (!rc) {
    model_rope_inv_freq(c, inv);
    rc = be->ops->upload(be, f->inv_freq, inv, sizeof(float) * (size_t)(c->head_dim / 2));
  }
  free(inv);
  f->rope = (be_rope_t){.style = c->rope_style, .head_dim = c->head_dim, .inv_freq = f->inv_freq};
  f->kv = (be_kv_t){.dtype = be->act_dtype, .n_layers = c->n_layers, .n_kv_heads = c->n_kv_heads,
                    .block_size = block_size, .head_dim = c->head_dim,
                    .block_bytes = fwd_kv_block_bytes(c, be->act_dtype, block_size)};
  /* scratch activations */
  const int T = max_tokens, C = c->dim, HD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
  f->x = alloc_act(f, T, C, &rc);
  f->xb = alloc_act(f, T, C, &rc);
  f->xo = alloc_act(f, T, C, &rc);
  const int L = c->n_layers;
  f->q = alloc_act(f, T, HD, &rc);
  if (f->n_fused_qkv > 0) f->qkv = alloc_act(f, T, HD + 2 * KD, &rc);
  if (f->n_fused_qkv < L) {
    f->k = alloc_act(f, T, KD, &rc);
    f->v = alloc_act(f, T, KD, &rc);
    if (c->qk_norm) {
      f->qn = alloc_act(f, T, HD, &rc);
      f->kn = alloc_act(f, T, KD, &rc);
    }
  }
  f->att = alloc_act(f, T, HD, &rc);
  f->gate = alloc_act(f, T, c->hidden_dim, &rc);
  if (f->n_fused_gu > 0) f->gu = alloc_act(f, T, 2 * c->hidden_dim, &rc);
  if (f->n_fused_gu < L) f->up = alloc_act(f, T, c->hidden_dim, &rc);
  f->lx = alloc_act(f, max_logits, C, &rc);
  f->logits = alloc_act(f, max_logits, c->vocab_size, &rc);
  if (!rc) {
    f->logits_host = malloc(sizeof(float) * (size_t)max_logits * (size_t)c->vocab_size);
    f->argmax_host = malloc(sizeof(int32_t) * (size_t)max_logits);
    if (!f->logits_host || !f->argmax_host) rc = STRATA_ENOMEM;
  }
  if (rc) fwd_deinit(f);
  return rc;
}

int fwd_alloc_kv(fwd_t *f, int n_kv_blocks) {
  backend_t *be = f->be;
  if (n_kv_blocks < 2 || f->kv.data) {
    log_error("forward: bad KV cache size (%d blocks)", n_kv_blocks);
    return STRATA_EINVAL;
  }
  f->kv.n_blocks = n_kv_blocks;
  f->kv.data = be->ops->alloc(be, f->kv.block_bytes * (size_t)n_kv_blocks);
  if (!f->kv.data) {
    log_error("%s: out of memory allocating the KV cache (%d blocks, %.1f MiB)", be->device, n_kv_blocks,
              (double)f->kv.block_bytes * n_kv_blocks / (1 << 20));
    return STRATA_ENOMEM;
  }
  return 0;
}

void fwd_deinit(fwd_t *f) {
  backend_t *be = f->be;
  if (!be) return;
  void *bufs[] = {f->x, f->xb, f->xo, f->q, f->k, f->v, f->qn, f->kn, f->qkv, f->gu, f->att, f->gate, f->up,
                  f->lx, f->logits, f->kv.data, f->inv_freq};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
    if (bufs[i]) be->ops->free(be, bufs[i]);
  release_weights(f);
  free(f->logits_host);
  free(f->argmax_host);
  memset(f, 0, sizeof *f);
}

enum { FWD_LOGITS = 0, FWD_ARGMAX, FWD_SAMPLE, FWD_ASYNC };

static int fwd_run_mode(fwd_t *f, const be_batch_t *hb, int mode, const be_sample_t *sp, int slot);

int fwd_run(fwd_t *f, const be_batch_t *hb) { return fwd_run_mode(f, hb, FWD_LOGITS, NULL, 0); }

int fwd_run_argmax(fwd_t *f, const be_batch_t *hb) { return fwd_run_mode(f, hb, FWD_ARGMAX, NULL, 0); }

int fwd_run_sample(fwd_t *f, const be_batch_t *hb, const be_sample_t *p) {
  return fwd_run_mode(f, hb, FWD_SAMPLE, p, 0);
}

int fwd_enqueue(fwd_t *f, const be_batch_t *hb, const be_sample_t *p, int slot) {
  if (!f->be->ops->draw_rows || !f->be->ops->patch_tokens || !f->be->ops->draw_wait) {
    log_error("forward: %s cannot run asynchronous steps", f->be->device);
    return STRATA_EUNSUPPORTED;
  }
  return fwd_run_mode(f, hb, FWD_ASYNC, p, slot);
}

int fwd_wait(fwd_t *f, int slot, int n) {
  if (n < 0 || n > f->max_logits) return STRATA_EINVAL;
  return f->be->ops->draw_wait(f->be, slot, f->argmax_host, n);
}

/* add_norm: xb = rmsnorm(x) with weight NORM_W, after x += xo (the previous sub-layer's output) unless X is the
 * embeddings (FIRST: the first layer's attention norm) */
static void add_norm(fwd_t *f, const float *norm_w, int T, int first) {
  const model_cfg_t *c = &f->m->cfg;
  if (first)
    f->be->ops->rmsnorm(f->be, f->xb, f->x, norm_w, T, c->dim, c->norm_eps);
  else
    f->be->ops->add_rmsnorm(f->be, f->xb, f->x, f->xo, norm_w, T, c->dim, c->norm_eps);
}

/* fwd_layer: transformer layer L over batch B (backend arrays, T tokens): the residual stream x, with the
 * previous layer's output still in xo, gets this layer's attention; its FFN output is left in xo. */
static void fwd_layer(fwd_t *f, int l, const be_batch_t *b, int T) {
  const model_cfg_t *c = &f->m->cfg;
  const be_ops_t *op = f->be->ops;
  backend_t *be = f->be;
  const int H = c->n_heads, Hkv = c->n_kv_heads, D = c->head_dim, F = c->hidden_dim;
  const layer_weights_t *w = &f->w.layers[l];
  const fwd_fused_t *fu = &f->fused[l];
  void *q = f->q;
  if (fu->wqkv.data) {
    /* attention norm and q | k | v in one projection (Qwen2: with bias); then (Qwen3: each head's RMSNorm and)
     * RoPE read the strided rows, writing q packed and k, v to the paged cache at each token's slot */
    add_norm(f, w->attn_norm.data, T, l == 0);
    op->matmul(be, f->qkv, f->xb, &fu->wqkv, fu->bqkv.data, T);
    op->rope_qkv_write(be, f->q, f->qkv, (H + 2 * Hkv) * D, c->qk_norm ? w->q_norm.data : NULL,
                       c->qk_norm ? w->k_norm.data : NULL, c->norm_eps, &f->kv, l, b, &f->rope, H, Hkv);
  } else {
    /* attention norm; q, k, v projections (Qwen2: with bias) */
    add_norm(f, w->attn_norm.data, T, l == 0);
    op->matmul(be, f->q, f->xb, &w->wq, w->bq.data, T);
    op->matmul(be, f->k, f->xb, &w->wk, w->bk.data, T);
    op->matmul(be, f->v, f->xb, &w->wv, w->bv.data, T);
    void *k = f->k;

    /* Qwen3: RMSNorm of each head of q and k before RoPE */
    if (c->qk_norm) {
      op->rmsnorm(be, f->qn, f->q, w->q_norm.data, T * H, D, c->norm_eps);
      op->rmsnorm(be, f->kn, f->k, w->k_norm.data, T * Hkv, D, c->norm_eps);
      q = f->qn;
      k = f->kn;
    }

    /* RoPE on q and k, then k and v into the paged cache at each token's slot */
    op->rope_kv_write(be, q, k, f->v, &f->kv, l, b, &f->rope, H, Hkv);
  }

  /* causal attention of every query over its sequence's cached keys and values (GQA) */
  op->attention(be, f->att, q, &f->kv, l, b, H, Hkv, 1.0f / sqrtf((float)D));

  /* output projection; then the FFN norm adds it to the residual */
  op->matmul(be, f->xo, f->att, &w->wo, NULL, T);
  add_norm(f, w->ffn_norm.data, T, 0);

  /* SwiGLU FFN: xo = W_down (silu(W_gate xb) * W_up xb) */
  if (fu->wgu.data) {
    op->matmul(be, f->gu, f->xb, &fu->wgu, NULL, T);
    op->silu_mul_cat(be, f->gate, f->gu, T, F);
  } else {
    op->matmul(be, f->gate, f->xb, &w->w_gate, NULL, T);
    op->matmul(be, f->up, f->xb, &w->w_up, NULL, T);
    op->silu_mul(be, f->gate, f->gate, f->up, T, F);
  }
  op->matmul(be, f->xo, f->gate, &w->w_down, NULL, T);
}

/* logits_identity: the logit rows are the batch rows 0..T-1 in order (a decode step): the LM head reads the
 * normed rows directly (no gather) */
static int logits_identity(const be_batch_t *hb) {
  if (hb->n_logits != hb->n_tokens) return 0;
  for (int i = 0; i < hb->n_logits; i++)
    if (hb->logit_rows[i] != i) return 0;
  return 1;
}

static int fwd_run_mode(fwd_t *f, const be_batch_t *hb, int mode, const be_sample_t *sp, int slot) {
  const model_cfg_t *c = &f->m->cfg;
  const be_ops_t *op = f->be->ops;
  backend_t *be = f->be;
  const int T = hb->n_tokens, V = c->vocab_size;
  if (T < 1 || T > f->max_tokens || hb->n_logits > f->max_logits) {
    log_error("forward: batch of %d tokens / %d logit rows exceeds %d / %d", T, hb->n_logits, f->max_tokens,
              f->max_logits);
    return STRATA_EINVAL;
  }
  be_batch_t bb;
  int rc = op->batch_upload(be, &bb, hb);
  if (rc) return rc;
  /* asynchronous steps: decode inputs that the previous step drew are read on the backend */
  if (bb.prev_rows && (rc = op->patch_tokens(be, &bb)) != 0) return rc;
  const be_batch_t *b = &bb;

  /* token embeddings: x = E[tokens]; then the layers */
  op->embed(be, f->x, &f->w.tok_embd, b->tokens, T);
  for (int l = 0; l < c->n_layers; l++) fwd_layer(f, l, b, T);

  /* final norm, then logits only for the rows that sample */
  if (b->n_logits == 0) return mode == FWD_ASYNC ? op->draw_rows(be, slot, NULL, NULL, 0, V) : op->sync(be);
  add_norm(f, f->w.out_norm.data, T, 0);
  if (logits_identity(hb)) {
    op->matmul(be, f->logits, f->xb, &f->w.output, NULL, T);
  } else {
    op->gather_rows(be, f->lx, f->xb, b->logit_rows, b->n_logits, c->dim);
    op->matmul(be, f->logits, f->lx, &f->w.output, NULL, b->n_logits);
  }
  if (mode == FWD_ASYNC) return op->draw_rows(be, slot, f->logits, sp, b->n_logits, V);
  if (mode == FWD_ARGMAX) return op->argmax_rows(be, f->argmax_host, f->logits, b->n_logits, V);
  if (mode == FWD_SAMPLE) return op->sample_rows(be, f->argmax_host, f->logits, sp, b->n_logits, V);
  return op->to_host_f32(be, f->logits_host, f->logits, (int64_t)b->n_logits * V);
}
