/* sched.h: the continuous-batching scheduler. It decides, every step, which requests compute which
 * tokens under a token budget; it deals in requests and block ids only and is tested with fake model
 * outputs.
 *
 * sched_schedule packs a step: every running request first (a decode is 1 token; a prefill that was
 * chunked continues with its next chunk), then waiting requests in arrival order (prefix-cache hits
 * skip their cached tokens; a prompt longer than the remaining budget is chunked), up to
 * max_batched_tokens tokens and max_num_seqs running requests. When blocks run out, the newest
 * running request is preempted: its blocks are released (cached full blocks stay in the prefix cache)
 * and it goes back to the front of the waiting queue to be recomputed; nothing is dropped.
 *
 * sched_update takes the step's sampled tokens, appends them, registers newly full blocks in the
 * prefix cache and finishes requests that hit EOS, a stop id, max_tokens or the length limit.
 * Owner: the engine thread. */
#ifndef STRATA_SCHED_H
#define STRATA_SCHED_H

#include "worker/sched/request.h"
#include "worker/kvcache/kvcache.h"

typedef struct {
  int max_num_seqs;       /* running requests at most (default 256) */
  int max_batched_tokens; /* tokens per step at most (default 2048) */
  int max_model_len;      /* a request never grows past this many tokens */
} sched_cfg_t;

typedef struct {
  req_t *req;
  int start;      /* == req->n_computed when scheduled: first token position computed this step */
  int n;          /* tokens computed this step */
  int sample;     /* 1 when start + n == req->n_tokens: this step produces the request's next token */
} sched_item_t;

typedef struct {
  sched_item_t *items; /* (n_items) running requests first, in queue order */
  int n_items;
  int n_tokens;        /* sum of items[i].n */
  int n_preempted;     /* requests preempted while building this step */
  int cap_items;
} sched_out_t;

typedef struct {
  req_t *head, *tail;
  int n;
} req_queue_t;

typedef struct {
  sched_cfg_t cfg;
  kv_pool_t *kv; /* borrowed */
  req_queue_t waiting;
  req_queue_t running;
  uint64_t n_preemptions_total;
} sched_t;

/* sched_init: a scheduler over KV (borrowed; must outlive S). Zero limits in CFG take the defaults
 * (256 seqs, 2048 tokens, no length limit). Returns 0 or STRATA_EINVAL. */
int sched_init(sched_t *s, const sched_cfg_t *cfg, kv_pool_t *kv);
/* sched_deinit: releases the blocks of every queued request and unlinks it; requests stay the
 * caller's (to req_deinit). */
void sched_deinit(sched_t *s);

/* sched_add: queues R (state REQ_WAITING, n_computed 0) at the back of the waiting queue. A request
 * that can never run (prompt longer than max_model_len, or needing more blocks than the whole pool)
 * is not queued: it is set REQ_FINISHED with FINISH_ERROR and sched_add returns STRATA_EINVAL.
 * R->max_len is capped at max_model_len and at what the whole KV pool holds, so a request alone in
 * the pool always finishes (FINISH_LENGTH) instead of preempting itself forever. R stays the
 * caller's; it must stay valid until it is finished. */
int sched_add(sched_t *s, req_t *r);

/* sched_schedule: builds the next step into OUT (zero-initialize it once; its arrays are reused
 * across calls). Running requests first (decodes, then continuing prefill chunks, each in queue
 * order), then waiting requests if nothing was preempted this step. Requests it preempts have their
 * n_preemptions incremented. Returns the number of scheduled tokens (0 when there is nothing to do
 * or no blocks are available for any waiting request), or STRATA_ENOMEM. */
int sched_schedule(sched_t *s, sched_out_t *out);

/* sched_update: applies a step's results. SAMPLED[i] is the token produced for OUT->items[i] when
 * items[i].sample (ignored otherwise). Finished requests are removed from the running queue, their
 * blocks released, their state set to REQ_FINISHED with a finish reason, and they are written to
 * FINISHED (capacity >= out->n_items); returns how many. A request finishes with FINISH_STOP on a
 * token in its eos_ids (unless sp.ignore_eos) or sp.stop_ids (the token is kept in tokens), else
 * FINISH_LENGTH at sp.max_tokens generated or n_tokens == max_len. Items of requests aborted since
 * sched_schedule are skipped. */
int sched_update(sched_t *s, const sched_out_t *out, const int32_t *sampled, req_t **finished);

/* Asynchronous scheduling splits sched_update in two around a step whose tokens are drawn on the device
 * and not known yet when the next step is scheduled:
 *
 * sched_advance: what sched_update does that needs no token value, right after step OUT is enqueued: each
 * scheduled request advances n_computed and commits its full blocks, and a request that samples gets a
 * placeholder token (n_placeholders 1, ph_row its logit row in the step: sampled items count in order,
 * those with req NULL included), so the next sched_schedule runs its decode at the right position. A
 * request whose length alone ends it (sp.max_tokens generated or n_tokens == max_len, placeholder
 * counted) leaves the running queue and releases its blocks now, as sched_update would before the next
 * step: it is REQ_FINISHED with FINISH_LENGTH until sched_fill gives its final reason. The tokens before
 * the placeholders must be known (sched_fill of the previous step first). Items with req NULL (requests
 * gone since) are skipped.
 *
 * sched_fill: the rest, once the ids are known: SAMPLED[i] replaces item i's placeholder, then the stop
 * checks of sched_update. A request that finishes leaves whichever queue holds it (it may have been
 * preempted since sched_advance) with its blocks released, and is written to FINISHED (capacity >=
 * out->n_items) with those sched_advance finished; returns how many. A finished request is never
 * computed again; a step already enqueued that computes it must drop its result. */
void sched_advance(sched_t *s, const sched_out_t *out);
int sched_fill(sched_t *s, const sched_out_t *out, const int32_t *sampled, req_t **finished);

/* sched_abort: removes R from whichever queue holds it, releases its blocks, finishes it with
 * FINISH_ABORT. A finished request is left as it is. */
void sched_abort(sched_t *s, req_t *r);

static inline int sched_n_running(const sched_t *s) { return s->running.n; }
static inline int sched_n_waiting(const sched_t *s) { return s->waiting.n; }
static inline int sched_has_work(const sched_t *s) { return s->running.n + s->waiting.n > 0; }

void sched_out_free(sched_out_t *out);

#endif
