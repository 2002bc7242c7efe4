/* runner.c: from a scheduled step to a batch for the forward pass, then to sampled tokens. */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "worker/engine/engine_int.h"

int runner_init(runner_batch_t *rb, int max_tokens, int max_seqs, int max_blocks) {
  memset(rb, 0, sizeof *rb);
  rb->max_tokens = max_tokens;
  rb->max_seqs = max_seqs;
  rb->max_blocks = max_blocks;
  size_t T = (size_t)max_tokens, S = (size_t)max_seqs;
  rb->tokens = malloc(4 * T);
  rb->positions = malloc(4 * T);
  rb->slots = malloc(4 * T);
  rb->seq_of = malloc(4 * T);
  rb->q_start = malloc(4 * (S + 1));
  rb->kv_len = malloc(4 * S);
  rb->block_table = malloc(4 * S * (size_t)max_blocks);
  rb->logit_rows = malloc(4 * S);
  rb->sample = malloc(sizeof *rb->sample * S);
  rb->prev_rows = malloc(4 * T);
  if (!rb->tokens || !rb->positions || !rb->slots || !rb->seq_of || !rb->q_start || !rb->kv_len ||
      !rb->block_table || !rb->logit_rows || !rb->sample || !rb->prev_rows) {
    runner_deinit(rb);
    return STRATA_ENOMEM;
  }
  return 0;
}

void runner_deinit(runner_batch_t *rb) {
  free(rb->tokens);
  free(rb->positions);
  free(rb->slots);
  free(rb->seq_of);
  free(rb->q_start);
  free(rb->kv_len);
  free(rb->block_table);
  free(rb->logit_rows);
  free(rb->sample);
  free(rb->prev_rows);
  memset(rb, 0, sizeof *rb);
}

/* decode_bucket: the batch size a decode-only step of S sequences is padded to (as vLLM's CUDA-graph
 * capture sizes): few sizes, so a backend that captures one graph per step shape reuses a handful. */
static int decode_bucket(int S) {
  static const int sizes[] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    if (S <= sizes[i]) return sizes[i];
  return (S + 63) / 64 * 64;
}

/* pad_decode: appends dummy sequences to decode-only batch B (one token per sequence, each sampled) up to
 * decode_bucket(S) when the backend asks for it: token 0 at position 0, no KV write (slot -1), a block
 * table of null blocks, and a logit row whose token the caller ignores. */
static void pad_decode(engine_t *e, be_batch_t *b) {
  runner_batch_t *rb = &e->rb;
  const int S = b->n_seqs, P = decode_bucket(S);
  if (P > e->be->pad_decode || b->n_tokens != S || b->n_logits != S || P == S || P > rb->max_seqs ||
      P > rb->max_tokens || P > e->fwd.max_logits)
    return;
  for (int i = S; i < P; i++) {
    rb->tokens[i] = 0;
    rb->positions[i] = 0;
    rb->slots[i] = -1;
    rb->seq_of[i] = i;
    rb->q_start[i] = i;
    rb->kv_len[i] = 1;
    memset(rb->block_table + (size_t)i * (size_t)b->max_blocks, 0, sizeof(int32_t) * (size_t)b->max_blocks);
    rb->logit_rows[i] = i;
    if (b->prev_rows) rb->prev_rows[i] = -1;
  }
  rb->q_start[P] = P;
  b->n_tokens = b->n_seqs = b->n_logits = P;
}

/* build_batch: lays out step SO as ragged rows: item i's tokens [start, start+n) in order. With ASYNC the
 * batch carries prev_rows: a placeholder token (always its request's last) is read from the step in flight. */
static void build_batch(engine_t *e, const sched_out_t *so, be_batch_t *b, int async) {
  runner_batch_t *rb = &e->rb;
  const int B = e->kv.block_size;
  int t = 0, n_logits = 0, max_blocks = 1, max_kv = 0, need = 1;
  for (int i = 0; i < so->n_items; i++) {
    const sched_item_t *it = &so->items[i];
    int kv_len = it->start + it->n;
    int nb = (kv_len + B - 1) / B;
    if (nb > need) need = nb;
    if (kv_len > max_kv) max_kv = kv_len;
  }
  /* NOTE: the block-table width is rounded up to a power of two (capped by the longest possible
   * request), so it changes rarely and a backend can reuse a captured CUDA graph across steps. */
  while (max_blocks < need) max_blocks *= 2;
  if (max_blocks > rb->max_blocks) max_blocks = rb->max_blocks;
  for (int i = 0; i < so->n_items; i++) {
    const sched_item_t *it = &so->items[i];
    const req_t *r = it->req;
    rb->q_start[i] = t;
    for (int p = it->start; p < it->start + it->n; p++, t++) {
      int ph = r->n_placeholders > 0 && p >= req_n_known(r);
      if (async) rb->prev_rows[t] = ph ? r->ph_row : -1;
      rb->tokens[t] = ph ? 0 : r->tokens[p];
      rb->positions[t] = p;
      rb->slots[t] = kv_slot(&e->kv, &r->kv, p);
      rb->seq_of[t] = i;
    }
    rb->kv_len[i] = it->start + it->n;
    int32_t *row = rb->block_table + (size_t)i * (size_t)max_blocks;
    int nb = (rb->kv_len[i] + B - 1) / B;
    memcpy(row, r->kv.ids, sizeof(int32_t) * (size_t)nb);
    for (int j = nb; j < max_blocks; j++) row[j] = 0; /* the null block */
    if (it->sample) rb->logit_rows[n_logits++] = t - 1;
  }
  rb->q_start[so->n_items] = t;
  *b = (be_batch_t){.n_tokens = t, .n_seqs = so->n_items, .tokens = rb->tokens, .positions = rb->positions,
                    .slots = rb->slots, .seq_of = rb->seq_of, .q_start = rb->q_start, .kv_len = rb->kv_len,
                    .block_table = rb->block_table, .max_blocks = max_blocks, .max_kv_len = max_kv,
                    .logit_rows = rb->logit_rows, .n_logits = n_logits, .prev_rows = async ? rb->prev_rows : NULL};
}

/* plain_greedy: the sampler would return the argmax for this request (no processing, no logprobs). */
static int plain_greedy(const req_t *r) {
  const sampling_params_t *sp = &r->sp;
  return sp->temperature < 1e-5f && sp->repetition_penalty == 1.0f && sp->presence_penalty == 0.0f &&
         sp->frequency_penalty == 0.0f && !sp->logprobs && sp->top_logprobs == 0 &&
         (sp->min_tokens <= 0 || req_n_generated(r) >= sp->min_tokens);
}

/* device_samplable: the backend's sample_rows gives what sampler_sample would for this request: no
 * penalties (they need the history), no logprobs (they need the raw row), no stop masking pending. */
static int device_samplable(const req_t *r) {
  const sampling_params_t *sp = &r->sp;
  return sp->repetition_penalty == 1.0f && sp->presence_penalty == 0.0f && sp->frequency_penalty == 0.0f &&
         !sp->logprobs && sp->top_logprobs == 0 && (sp->min_tokens <= 0 || req_n_generated(r) >= sp->min_tokens);
}

/* runner_step_mode: where step SO's tokens are drawn. The device paths only move token ids to the host; on
 * a GPU the (S, V) logits copy and the host sampler's sweeps dominate large decode steps otherwise.
 * STRATA_SAMPLE_ON_HOST=1 keeps every non-greedy step on the host sampler (for comparisons). */
int runner_step_mode(const engine_t *e, const sched_out_t *so) {
  const be_ops_t *op = e->be->ops;
  int greedy = op->argmax_rows != NULL, dev = op->sample_rows != NULL;
  if (e->async) greedy = dev = op->draw_rows != NULL; /* draw_rows does both */
  if (dev) {
    const char *env = getenv("STRATA_SAMPLE_ON_HOST");
    if (env && strcmp(env, "0") != 0) dev = 0;
  }
  for (int i = 0; i < so->n_items && (greedy || dev); i++) {
    if (!so->items[i].sample) continue;
    if (greedy) greedy = plain_greedy(so->items[i].req);
    if (dev) dev = device_samplable(so->items[i].req);
  }
  return greedy ? RUN_ARGMAX : dev ? RUN_SAMPLE : RUN_HOST;
}

/* sample_params: the backend's sampling parameters of step SO's B->n_logits rows, in e->rb.sample. */
static const be_sample_t *sample_params(engine_t *e, const sched_out_t *so, const be_batch_t *b) {
  be_sample_t *p = e->rb.sample;
  memset(p, 0, sizeof *p * (size_t)b->n_logits); /* rows past the real ones (padding) stay greedy */
  for (int i = 0, j = 0; i < so->n_items; i++) {
    if (!so->items[i].sample) continue;
    const req_t *r = so->items[i].req;
    /* n_tokens counts a placeholder: the position of the token drawn, as the synchronous step */
    p[j++] = (be_sample_t){.temperature = r->sp.temperature, .top_k = r->sp.top_k, .top_p = r->sp.top_p,
                           .min_p = r->sp.min_p, .seed = r->sp.seed, .position = (uint64_t)r->n_tokens};
  }
  return p;
}

/* take_ids: e->sampled / e->results of step SO's sampled items from f->argmax_host. */
static int take_ids(engine_t *e, const sched_out_t *so) {
  for (int i = 0, j = 0; i < so->n_items; i++) {
    if (!so->items[i].sample) continue;
    int32_t tok = e->fwd.argmax_host[j++];
    if (!so->items[i].req) tok = 0; /* a dropped item (async): its request is gone */
    if (tok < 0 || tok >= e->m->cfg.vocab_size) { /* the host sampler's error: nothing can be drawn */
      log_error("runner: request %llu has no token to draw on %s (every logit is -inf or NaN)",
                (unsigned long long)so->items[i].req->id, e->be->device);
      return STRATA_EINVAL;
    }
    e->results[i] = (sample_result_t){.token = tok};
    e->sampled[i] = tok;
  }
  return 0;
}

/* run_on_device: the forward pass with the tokens drawn on the backend (MODE RUN_ARGMAX or RUN_SAMPLE). */
static int run_on_device(engine_t *e, const sched_out_t *so, const be_batch_t *b, int mode) {
  int rc = mode == RUN_SAMPLE ? fwd_run_sample(&e->fwd, b, sample_params(e, so, b)) : fwd_run_argmax(&e->fwd, b);
  if (rc) {
    log_error("forward pass failed on %s: %s", e->be->device, strata_strerror(rc));
    return rc;
  }
  return take_ids(e, so);
}

int runner_enqueue(engine_t *e, const sched_out_t *so, int mode, int slot, int *n_rows) {
  be_batch_t b;
  build_batch(e, so, &b, 1);
  if (b.n_logits > 0) pad_decode(e, &b);
  *n_rows = b.n_logits;
  int rc = fwd_enqueue(&e->fwd, &b, mode == RUN_SAMPLE ? sample_params(e, so, &b) : NULL, slot);
  if (rc) log_error("forward pass failed on %s: %s", e->be->device, strata_strerror(rc));
  return rc;
}

int runner_wait(engine_t *e, const sched_out_t *so, int slot, int n_rows) {
  int rc = fwd_wait(&e->fwd, slot, n_rows);
  if (rc) {
    log_error("forward pass failed on %s: %s", e->be->device, strata_strerror(rc));
    return rc;
  }
  return take_ids(e, so);
}

int runner_execute(engine_t *e, const sched_out_t *so) {
  be_batch_t b;
  build_batch(e, so, &b, 0);
  int mode = runner_step_mode(e, so);
  if (mode != RUN_HOST && b.n_logits > 0 && !e->async) { /* async: device steps go through runner_enqueue */
    pad_decode(e, &b); /* only ids come back, so padded rows cost a little GPU time and no transfer */
    return run_on_device(e, so, &b, mode);
  }
  int rc = fwd_run(&e->fwd, &b);
  if (rc) {
    log_error("forward pass failed on %s: %s", e->be->device, strata_strerror(rc));
    return rc;
  }
  const int V = e->m->cfg.vocab_size;
  int j = 0;
  for (int i = 0; i < so->n_items; i++) {
    const sched_item_t *it = &so->items[i];
    if (!it->sample) continue;
    const req_t *r = it->req;
    float *logits = e->fwd.logits_host + (size_t)j++ * (size_t)V;
    rc = sampler_sample(&e->sampler, &r->sp, logits, r->tokens, r->n_tokens, r->n_prompt, r->eos_ids, r->n_eos,
                        &e->results[i]);
    if (rc) return rc;
    e->sampled[i] = e->results[i].token;
  }
  return 0;
}
