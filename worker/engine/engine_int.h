/* engine_int.h: the engine's internals, shared by engine.c (request table, step) and runner.c
 * (from a scheduled step to a batch, logits and sampled tokens). */
#ifndef STRATA_ENGINE_INT_H
#define STRATA_ENGINE_INT_H

#include "worker/backend/backend.h"
#include "worker/engine/engine.h"
#include "worker/kvcache/kvcache.h"
#include "worker/model/forward.h"
#include "worker/sched/sched.h"

/* The host side of one step's batch, sized once for the largest step. */
typedef struct {
  int32_t *tokens, *positions, *slots, *seq_of; /* (max_tokens) */
  int32_t *q_start;                             /* (max_seqs + 1) */
  int32_t *kv_len;                              /* (max_seqs) */
  int32_t *block_table;                         /* (max_seqs, max_blocks) */
  int32_t *logit_rows;                          /* (max_seqs) */
  be_sample_t *sample;                          /* (max_seqs) sampling parameters of the logit rows */
  int32_t *prev_rows;                           /* (max_tokens) asynchronous steps: be_batch_t.prev_rows */
  int max_tokens, max_seqs, max_blocks;
} runner_batch_t;

struct engine {
  engine_cfg_t cfg;
  const model_t *m;
  backend_t *be;
  fwd_t fwd;
  kv_pool_t kv;
  sched_t sched;
  sampler_t sampler;
  int max_model_len;
  runner_batch_t rb;
  /* live requests */
  req_t **reqs;
  int n_reqs, cap_reqs;
  /* one step's results */
  sched_out_t so;
  int32_t *sampled;          /* (max_num_seqs) token per scheduled item */
  sample_result_t *results;  /* (max_num_seqs) */
  req_t **finished;          /* (max_num_seqs) */
  engine_out_t *outs;        /* (cap_outs) */
  int n_outs, cap_outs;
  /* requests ended outside a step (abort, max_tokens 0), reported by the next step */
  engine_out_t *pending;
  int n_pending, cap_pending;
  engine_stats_t st;
  /* asynchronous scheduling: the step in flight (enqueued, its ids not applied yet). Items whose request
   * is gone since (finished by the step before, aborted) have req NULL. */
  int async;                 /* resolved engine_cfg_t.async_sched */
  int fl_active, fl_slot, fl_rows;
  sched_out_t fl_so;
};

/* Where a step's tokens are drawn (runner_step_mode). */
enum { RUN_HOST = 0, RUN_ARGMAX, RUN_SAMPLE };

int runner_init(runner_batch_t *rb, int max_tokens, int max_seqs, int max_blocks);
void runner_deinit(runner_batch_t *rb);
/* runner_execute: builds the batch of step SO, runs the forward pass, and samples a token for every
 * item that samples (written to e->sampled[i] and e->results[i]). With e->async, always on the host
 * sampler (device steps go through runner_enqueue). */
int runner_execute(engine_t *e, const sched_out_t *so);
/* runner_step_mode: RUN_ARGMAX / RUN_SAMPLE when every sampled item of SO can be drawn on the backend
 * (with e->async: by draw_rows), else RUN_HOST. */
int runner_step_mode(const engine_t *e, const sched_out_t *so);
/* runner_enqueue: builds step SO (a request with a placeholder takes its input from the step in flight,
 * on the backend) and enqueues it in MODE (RUN_ARGMAX or RUN_SAMPLE) with its ids bound for host slot
 * SLOT; *N_ROWS = the logit rows drawn (padding included), for runner_wait. */
int runner_enqueue(engine_t *e, const sched_out_t *so, int mode, int slot, int *n_rows);
/* runner_wait: waits for the step SO enqueued into SLOT and writes the token of every sampled item to
 * e->sampled[i] and e->results[i] (items with req NULL get theirs too, unused). */
int runner_wait(engine_t *e, const sched_out_t *so, int slot, int n_rows);

#endif
