/* sched.c: the continuous-batching scheduler (schedule -> execute -> update, as vLLM v1). */
#include "worker/sched/sched.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"

/* ---- intrusive queues (req->prev / req->next) ---- */

static void queue_push_back(req_queue_t *q, req_t *r) {
  r->next = NULL;
  r->prev = q->tail;
  if (q->tail) q->tail->next = r;
  else q->head = r;
  q->tail = r;
  q->n++;
}

static void queue_push_front(req_queue_t *q, req_t *r) {
  r->prev = NULL;
  r->next = q->head;
  if (q->head) q->head->prev = r;
  else q->tail = r;
  q->head = r;
  q->n++;
}

/* Unlinks R from Q, which must be the queue R is in (or none: then nothing happens). */
static void queue_remove(req_queue_t *q, req_t *r) {
  if (r->prev == NULL && q->head != r) return;
  if (r->prev) r->prev->next = r->next;
  else q->head = r->next;
  if (r->next) r->next->prev = r->prev;
  else q->tail = r->prev;
  r->prev = r->next = NULL;
  q->n--;
}

int sched_init(sched_t *s, const sched_cfg_t *cfg, kv_pool_t *kv) {
  memset(s, 0, sizeof *s);
  if (!cfg || !kv || cfg->max_num_seqs < 0 || cfg->max_batched_tokens < 0 || cfg->max_model_len < 0) {
    log_error("scheduler: invalid configuration (limits must be >= 0, and a KV pool is required)");
    return STRATA_EINVAL;
  }
  s->cfg = *cfg;
  if (s->cfg.max_num_seqs == 0) s->cfg.max_num_seqs = 256;
  if (s->cfg.max_batched_tokens == 0) s->cfg.max_batched_tokens = 2048;
  if (s->cfg.max_model_len == 0) s->cfg.max_model_len = INT_MAX;
  s->kv = kv;
  return 0;
}

/* Releases the blocks of every queued request and empties the queues; the requests stay the caller's. */
void sched_deinit(sched_t *s) {
  req_queue_t *queues[2] = {&s->running, &s->waiting};
  for (int k = 0; k < 2; k++) {
    while (queues[k]->head) {
      req_t *r = queues[k]->head;
      queue_remove(queues[k], r);
      if (s->kv) kv_release(s->kv, &r->kv);
    }
  }
  memset(s, 0, sizeof *s);
}

int sched_add(sched_t *s, req_t *r) {
  int bs = s->kv->block_size;
  long pool_tokens = (long)(s->kv->n_blocks - 1) * bs;
  r->prev = r->next = NULL;
  r->n_computed = 0;
  if (r->n_tokens > s->cfg.max_model_len || r->n_tokens > pool_tokens || r->n_tokens <= 0 || !r->tokens) {
    log_error("request %llu: %d prompt tokens cannot run here (max_model_len %d, KV cache %ld tokens)",
              (unsigned long long)r->id, r->n_tokens, s->cfg.max_model_len, pool_tokens);
    r->state = REQ_FINISHED;
    r->finish = FINISH_ERROR;
    return STRATA_EINVAL;
  }
  /* NOTE: the KV cache is this worker's real context limit. A request alone in the pool must be able
   * to reach its end, or it would preempt itself forever; computing up to n_tokens - 1 needs
   * n_tokens - 1 slots, so pool_tokens + 1 tokens fit. */
  if (r->max_len > s->cfg.max_model_len) r->max_len = s->cfg.max_model_len;
  if (r->max_len > pool_tokens + 1) r->max_len = (int)(pool_tokens + 1);
  if (r->max_len < r->n_tokens) r->max_len = r->n_tokens;
  r->state = REQ_WAITING;
  r->finish = FINISH_NONE;
  queue_push_back(&s->waiting, r);
  return 0;
}

static int out_reserve(sched_out_t *out, int n) {
  if (n <= out->cap_items) return 0;
  int cap = out->cap_items > 0 ? out->cap_items : 16;
  while (cap < n) cap *= 2;
  sched_item_t *items = realloc(out->items, sizeof *items * (size_t)cap);
  if (!items) {
    log_error("scheduler: out of memory for a step of %d requests", n);
    return STRATA_ENOMEM;
  }
  out->items = items;
  out->cap_items = cap;
  return 0;
}

static int out_push(sched_out_t *out, req_t *r, int n) {
  int rc = out_reserve(out, out->n_items + 1);
  if (rc) return rc;
  sched_item_t *it = &out->items[out->n_items++];
  it->req = r;
  it->start = r->n_computed;
  it->n = n;
  it->sample = r->n_computed + n == r->n_tokens;
  out->n_tokens += n;
  return 0;
}

/* Preempts R (the newest running request): drops it from this step if it was scheduled, releases its
 * blocks (full committed ones stay cached, so its recompute can hit them) and puts it at the front of
 * the waiting queue. */
static void sched_preempt(sched_t *s, req_t *r, sched_out_t *out, int *budget) {
  for (int i = 0; i < out->n_items; i++) {
    if (out->items[i].req != r) continue;
    *budget += out->items[i].n;
    out->n_tokens -= out->items[i].n;
    memmove(&out->items[i], &out->items[i + 1], sizeof *out->items * (size_t)(out->n_items - i - 1));
    out->n_items--;
    break;
  }
  queue_remove(&s->running, r);
  kv_release(s->kv, &r->kv);
  r->n_computed = 0;
  r->state = REQ_WAITING;
  r->n_preemptions++;
  s->n_preemptions_total++;
  out->n_preempted++;
  queue_push_front(&s->waiting, r);
}

/* Schedules N tokens of running request R, preempting the newest running requests while blocks are
 * short. Returns 1 when R was scheduled, 0 when R itself had to be preempted, or a negative error. */
static int schedule_running(sched_t *s, req_t *r, int n, sched_out_t *out, int *budget) {
  for (;;) {
    int rc = kv_ensure(s->kv, &r->kv, r->n_computed + n);
    if (rc == 0) break;
    if (rc != STRATA_EFULL) return rc;
    req_t *victim = s->running.tail;
    sched_preempt(s, victim, out, budget);
    if (victim == r) return 0;
  }
  int rc = out_push(out, r, n);
  if (rc) return rc;
  *budget -= n;
  return 1;
}

/* Running requests in queue order: pass 0 takes decodes (one token to compute), pass 1 the chunks of
 * prefills that are still catching up, so a long prompt never delays the decodes. Returns 0, 1 when a
 * request preempted itself (nothing more runs this step) or a negative error.
 * NOTE: with FIFO admission an older request never still prefills while a newer one decodes (a newer
 * one is admitted only when budget is left after every older chunk), so today the two passes give
 * queue order; they keep the guarantee for requests that join mid-prompt (e.g. KV handed over). */
static int schedule_running_all(sched_t *s, sched_out_t *out, int *budget) {
  for (int pass = 0; pass < 2; pass++) {
    req_t *r = s->running.head;
    while (r && *budget > 0) {
      int remaining = r->n_tokens - r->n_computed;
      if ((pass == 0) != (remaining == 1)) {
        r = r->next;
        continue;
      }
      int n = remaining < *budget ? remaining : *budget;
      int rc = schedule_running(s, r, n, out, budget);
      if (rc < 0) return rc;
      if (rc == 0) return 1;
      r = r->next; /* read after scheduling: a preemption may have removed the old successor */
    }
  }
  return 0;
}

/* Admits waiting requests in FIFO order while tokens, sequence slots and blocks allow. */
static int schedule_waiting(sched_t *s, sched_out_t *out, int *budget) {
  while (s->waiting.head && *budget > 0 && s->running.n < s->cfg.max_num_seqs) {
    req_t *r = s->waiting.head;
    /* NOTE: at most n_tokens - 1 tokens come from the cache so that the last one is computed and
     * yields logits; matching is per full block, so a fully cached prompt recomputes its last block
     * (a shared block is never written). */
    int cached = kv_match_prefix(s->kv, &r->kv, r->tokens, r->n_tokens, r->n_tokens - 1);
    if (cached < 0) return cached;
    int n = r->n_tokens - cached;
    if (n > *budget) n = *budget;
    int rc = kv_ensure(s->kv, &r->kv, cached + n);
    if (rc) {
      kv_release(s->kv, &r->kv);
      if (rc == STRATA_EFULL) return 0; /* wait for running requests to free blocks */
      return rc;
    }
    queue_remove(&s->waiting, r);
    queue_push_back(&s->running, r);
    r->state = REQ_RUNNING;
    r->n_computed = cached;
    r->n_cached_prompt = cached < r->n_prompt ? cached : r->n_prompt;
    rc = out_push(out, r, n);
    if (rc) return rc;
    *budget -= n;
  }
  return 0;
}

int sched_schedule(sched_t *s, sched_out_t *out) {
  out->n_items = 0;
  out->n_tokens = 0;
  out->n_preempted = 0;
  int budget = s->cfg.max_batched_tokens;
  int rc = out_reserve(out, s->running.n + 1);
  if (rc) return rc;
  rc = schedule_running_all(s, out, &budget);
  if (rc < 0) return rc;
  /* NOTE: after a preemption, admitting waiting requests would only take back the blocks just freed
   * (as vLLM: no admissions in a step that preempted). */
  if (out->n_preempted == 0) {
    rc = schedule_waiting(s, out, &budget);
    if (rc < 0) return rc;
  }
  return out->n_tokens;
}

/* The finish reason for R after it appended TOKEN, or FINISH_NONE. */
static finish_reason_t check_finish(const req_t *r, int32_t token) {
  if (!r->sp.ignore_eos)
    for (int i = 0; i < r->n_eos && i < REQ_MAX_EOS; i++)
      if (r->eos_ids[i] == token) return FINISH_STOP;
  for (int i = 0; i < r->sp.n_stop_ids && i < SAMPLE_MAX_STOP_IDS; i++)
    if (r->sp.stop_ids[i] == token) return FINISH_STOP;
  if (req_n_generated(r) >= r->sp.max_tokens || r->n_tokens >= r->max_len) return FINISH_LENGTH;
  return FINISH_NONE;
}

int sched_update(sched_t *s, const sched_out_t *out, const int32_t *sampled, req_t **finished) {
  int n_finished = 0;
  for (int i = 0; i < out->n_items; i++) {
    const sched_item_t *it = &out->items[i];
    req_t *r = it->req;
    if (r->state != REQ_RUNNING || r->n_computed != it->start) continue; /* aborted since scheduling */
    r->n_computed = it->start + it->n;
    finish_reason_t fin = FINISH_NONE;
    if (it->sample) {
      req_append(r, sampled[i]);
      fin = check_finish(r, sampled[i]);
    }
    /* every step, so that concurrent requests with a shared prefix hit each other's blocks */
    kv_commit(s->kv, &r->kv, r->tokens, r->n_computed);
    if (fin == FINISH_NONE) continue;
    queue_remove(&s->running, r);
    kv_release(s->kv, &r->kv);
    r->state = REQ_FINISHED;
    r->finish = fin;
    finished[n_finished++] = r;
  }
  return n_finished;
}

/* length_done: R ends after its last token whatever the value of that token. */
static int length_done(const req_t *r) { return req_n_generated(r) >= r->sp.max_tokens || r->n_tokens >= r->max_len; }

void sched_advance(sched_t *s, const sched_out_t *out) {
  for (int i = 0, row = 0; i < out->n_items; i++) {
    const sched_item_t *it = &out->items[i];
    req_t *r = it->req;
    int my_row = it->sample ? row++ : -1;
    if (!r || r->state != REQ_RUNNING || r->n_computed != it->start) continue;
    r->n_computed = it->start + it->n;
    kv_commit(s->kv, &r->kv, r->tokens, r->n_computed);
    if (!it->sample) continue;
    req_append(r, 0); /* the value comes with sched_fill; the scheduler needs only the count */
    r->n_placeholders = 1;
    r->ph_row = my_row;
    if (!length_done(r)) continue;
    queue_remove(&s->running, r);
    kv_release(s->kv, &r->kv);
    r->state = REQ_FINISHED;
    r->finish = FINISH_LENGTH;
  }
}

int sched_fill(sched_t *s, const sched_out_t *out, const int32_t *sampled, req_t **finished) {
  int n_finished = 0;
  for (int i = 0; i < out->n_items; i++) {
    const sched_item_t *it = &out->items[i];
    req_t *r = it->req;
    if (!r || !it->sample || r->n_placeholders == 0) continue;
    r->tokens[r->n_tokens - 1] = sampled[i];
    r->n_placeholders = 0;
    finish_reason_t fin = check_finish(r, sampled[i]);
    if (r->state == REQ_FINISHED) { /* sched_advance ended it: the token decides STOP or LENGTH */
      r->finish = fin != FINISH_NONE ? fin : FINISH_LENGTH;
      finished[n_finished++] = r;
      continue;
    }
    if (fin == FINISH_NONE) continue;
    queue_remove(r->state == REQ_RUNNING ? &s->running : &s->waiting, r);
    kv_release(s->kv, &r->kv);
    r->state = REQ_FINISHED;
    r->finish = fin;
    finished[n_finished++] = r;
  }
  return n_finished;
}

void sched_abort(sched_t *s, req_t *r) {
  if (r->state == REQ_FINISHED) return;
  /* the state names the queue: a request's links alone cannot tell running from waiting */
  queue_remove(r->state == REQ_RUNNING ? &s->running : &s->waiting, r);
  kv_release(s->kv, &r->kv);
  r->state = REQ_FINISHED;
  r->finish = FINISH_ABORT;
}

void sched_out_free(sched_out_t *out) {
  free(out->items);
  memset(out, 0, sizeof *out);
}
