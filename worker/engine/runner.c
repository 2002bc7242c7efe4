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
  if (!rb->tokens || !rb->positions || !rb->slots || !rb->seq_of || !rb->q_start || !rb->kv_len ||
      !rb->block_table || !rb->logit_rows) {
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
  memset(rb, 0, sizeof *rb);
}

/* build_batch: lays out step SO as ragged rows: item i's tokens [start, start+n) in order. */
static void build_batch(engine_t *e, const sched_out_t *so, be_batch_t *b) {
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
      rb->tokens[t] = r->tokens[p];
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
                    .logit_rows = rb->logit_rows, .n_logits = n_logits};
}

/* plain_greedy: the sampler would return the argmax for this request (no processing, no logprobs). */
static int plain_greedy(const req_t *r) {
  const sampling_params_t *sp = &r->sp;
  return sp->temperature < 1e-5f && sp->repetition_penalty == 1.0f && sp->presence_penalty == 0.0f &&
         sp->frequency_penalty == 0.0f && !sp->logprobs && sp->top_logprobs == 0 &&
         (sp->min_tokens <= 0 || req_n_generated(r) >= sp->min_tokens);
}

int runner_execute(engine_t *e, const sched_out_t *so) {
  be_batch_t b;
  build_batch(e, so, &b);
  /* NOTE: a step whose every sampling request is plain greedy takes the argmax on the backend, so
   * only token ids cross to the host (on a GPU the (S, V) logits copy dominates large decode steps). */
  int all_greedy = e->be->ops->argmax_rows != NULL;
  for (int i = 0; i < so->n_items && all_greedy; i++)
    if (so->items[i].sample) all_greedy = plain_greedy(so->items[i].req);
  if (all_greedy && b.n_logits > 0) {
    int rc = fwd_run_argmax(&e->fwd, &b);
    if (rc) {
      log_error("forward pass failed on %s: %s", e->be->device, strata_strerror(rc));
      return rc;
    }
    for (int i = 0, j = 0; i < so->n_items; i++) {
      if (!so->items[i].sample) continue;
      e->results[i] = (sample_result_t){.token = e->fwd.argmax_host[j++]};
      e->sampled[i] = e->results[i].token;
    }
    return 0;
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
