/* engine.c: the worker engine: request table and the step (schedule -> execute -> update). */
#include "worker/engine/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/block_hash.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/engine/engine_int.h"

void engine_cfg_default(engine_cfg_t *c) {
  memset(c, 0, sizeof *c);
  snprintf(c->device, sizeof c->device, "auto");
  c->act_dtype = -1;
  c->max_num_seqs = 256;
  c->max_batched_tokens = 0; /* auto: ENGINE_GPU_BATCHED_TOKENS on a GPU, ENGINE_CPU_BATCHED_TOKENS on the CPU */
  c->block_size = 16;
  c->kv_cache_fraction = 0.9f;
  c->prefix_caching = 1;
  c->hash_seed = BLOCK_HASH_DEFAULT_SEED;
  c->async_sched = -1;
}

/* resolve_async: asynchronous scheduling on or off: the configuration, then STRATA_ASYNC_SCHED, within
 * what the backend can do. */
static int resolve_async(const engine_cfg_t *c, const backend_t *be) {
  int want = c->async_sched;
  const char *env = getenv("STRATA_ASYNC_SCHED");
  if (env && *env) want = atoi(env) != 0;
  int can = be->ops->patch_tokens && be->ops->draw_rows && be->ops->draw_wait;
  if (want > 0 && !can) log_warn("engine: the %s backend cannot schedule asynchronously; steps run one by one",
                                 be->ops->name);
  return want != 0 && can;
}

/* size_kv: how many KV blocks to allocate: the operator's number, else a fraction of the backend's
 * free memory, and on the CPU no more than max_num_seqs full-length requests need. */
static int size_kv(engine_t *e, int *n_blocks) {
  const engine_cfg_t *c = &e->cfg;
  const int B = c->block_size;
  const int per_seq = (e->max_model_len + B - 1) / B;
  size_t block_bytes = fwd_kv_block_bytes(&e->m->cfg, e->be->act_dtype, B);
  if (c->num_kv_blocks > 0) {
    *n_blocks = c->num_kv_blocks;
    return 0;
  }
  size_t free_b = 0, total_b = 0;
  int rc = e->be->ops->mem_info(e->be, &free_b, &total_b);
  if (rc) return rc;
  double avail = (double)free_b * (double)c->kv_cache_fraction;
  double n = avail / (double)block_bytes;
  double need = (double)c->max_num_seqs * per_seq + 1;
  if (strncmp(e->be->device, "cpu", 3) == 0 && n > need) n = need;
  if (n > 1 << 30) n = 1 << 30;
  if (n < per_seq + 1) {
    log_error("not enough memory for the KV cache: %.0f MiB free x %.2f holds %.0f blocks of %zu bytes, "
              "but one %d-token request needs %d; lower --max-model-len or raise --kv-cache-fraction",
              free_b / 1048576.0, c->kv_cache_fraction, n, block_bytes, e->max_model_len, per_seq + 1);
    return STRATA_ENOMEM;
  }
  *n_blocks = (int)n;
  return 0;
}

static int alloc_step_arrays(engine_t *e) {
  const int S = e->cfg.max_num_seqs;
  e->sampled = calloc((size_t)S, sizeof *e->sampled);
  e->results = calloc((size_t)S, sizeof *e->results);
  e->finished = calloc((size_t)S, sizeof *e->finished);
  e->cap_outs = 2 * S + 16;
  e->outs = calloc((size_t)e->cap_outs, sizeof *e->outs);
  return e->sampled && e->results && e->finished && e->outs ? 0 : STRATA_ENOMEM;
}

int engine_create(engine_t **out, const model_t *m, const engine_cfg_t *cfg) {
  *out = NULL;
  engine_t *e = calloc(1, sizeof *e);
  if (!e) return STRATA_ENOMEM;
  e->cfg = *cfg;
  e->m = m;
  engine_cfg_t *c = &e->cfg;
  if (c->max_num_seqs < 1 || c->max_batched_tokens < 0 || c->block_size < 1 || c->block_size > 64) {
    log_error("engine: bad configuration (max_num_seqs %d, max_batched_tokens %d, block_size %d)",
              c->max_num_seqs, c->max_batched_tokens, c->block_size);
    free(e);
    return STRATA_EINVAL;
  }
  e->max_model_len = c->max_model_len > 0 ? c->max_model_len : m->cfg.max_seq_len;
  if (e->max_model_len <= 0) e->max_model_len = 2048;
  int n_blocks = 0;
  int rc = backend_create(&e->be, c->device, c->n_threads, c->act_dtype);
  /* STRATA_PAD_DECODE=0|1 overrides the backend's wish to pad decode steps (tests pad on the CPU too) */
  const char *pad = getenv("STRATA_PAD_DECODE");
  if (!rc && pad) e->be->pad_decode = atoi(pad);
  /* NOTE: a GPU step of 2,048 tokens leaves its matmuls short of the tensor cores' peak and splits a
   * burst of prompts over many steps; as vLLM does, a larger budget is the default there */
  if (!rc && !c->max_batched_tokens)
    c->max_batched_tokens = strcmp(e->be->ops->name, "cpu") == 0 ? ENGINE_CPU_BATCHED_TOKENS : ENGINE_GPU_BATCHED_TOKENS;
  /* NOTE: the KV cache is sized after the weights and scratch are placed, from what they left free. */
  if (!rc) rc = fwd_init(&e->fwd, m, e->be, c->block_size, c->max_batched_tokens, c->max_num_seqs);
  if (!rc) rc = size_kv(e, &n_blocks);
  if (!rc) rc = fwd_alloc_kv(&e->fwd, n_blocks);
  if (!rc) rc = kv_pool_init(&e->kv, n_blocks, c->block_size, c->prefix_caching, c->hash_seed);
  if (!rc) {
    sched_cfg_t sc = {.max_num_seqs = c->max_num_seqs, .max_batched_tokens = c->max_batched_tokens,
                      .max_model_len = e->max_model_len};
    rc = sched_init(&e->sched, &sc, &e->kv);
  }
  if (!rc) rc = sampler_init(&e->sampler, m->cfg.vocab_size);
  if (!rc) rc = runner_init(&e->rb, c->max_batched_tokens, c->max_num_seqs,
                            (e->max_model_len + c->block_size - 1) / c->block_size);
  if (!rc) rc = alloc_step_arrays(e);
  if (!rc) e->async = resolve_async(c, e->be);
  if (rc) {
    engine_free(e);
    return rc;
  }
  e->st.kv_blocks_total = n_blocks - 1;
  log_info("engine: %s on %s, %d KV blocks of %d tokens (%.1f MiB), max %d seqs, %d tokens/step, context %d%s",
           m->name, e->be->device, n_blocks - 1, c->block_size,
           (double)e->fwd.kv.block_bytes * n_blocks / 1048576.0, c->max_num_seqs, c->max_batched_tokens,
           e->max_model_len, e->async ? ", async scheduling" : "");
  *out = e;
  return 0;
}

void engine_free(engine_t *e) {
  if (!e) return;
  if (e->fl_active) fwd_wait(&e->fwd, e->fl_slot, e->fl_rows); /* the backend may still write the step's ids */
  e->fl_active = 0;
  for (int i = 0; i < e->n_reqs; i++) {
    sched_abort(&e->sched, e->reqs[i]);
    req_deinit(e->reqs[i]);
    free(e->reqs[i]);
  }
  free(e->reqs);
  if (e->sched.kv) sched_deinit(&e->sched);
  sched_out_free(&e->so);
  sched_out_free(&e->fl_so);
  kv_pool_deinit(&e->kv);
  fwd_deinit(&e->fwd);
  sampler_deinit(&e->sampler);
  runner_deinit(&e->rb);
  if (e->be) backend_destroy(e->be);
  free(e->sampled);
  free(e->results);
  free(e->finished);
  free(e->outs);
  free(e->pending);
  free(e);
}

static int find_req(const engine_t *e, uint64_t id) {
  for (int i = 0; i < e->n_reqs; i++)
    if (e->reqs[i]->id == id) return i;
  return -1;
}

/* forget_items: the items of R in the steps held (scheduled, in flight) lose their request. */
static void forget_items(engine_t *e, const req_t *r) {
  sched_out_t *sos[2] = {&e->so, &e->fl_so};
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < sos[k]->n_items; i++)
      if (sos[k]->items[i].req == r) sos[k]->items[i].req = NULL;
}

static void remove_req(engine_t *e, int i) {
  req_t *r = e->reqs[i];
  forget_items(e, r);
  e->reqs[i] = e->reqs[--e->n_reqs];
  req_deinit(r);
  free(r);
}

static int push_pending(engine_t *e, const req_t *r, finish_reason_t why) {
  if (e->n_pending == e->cap_pending) {
    int cap = e->cap_pending ? 2 * e->cap_pending : 16;
    engine_out_t *p = realloc(e->pending, sizeof *p * (size_t)cap);
    if (!p) return STRATA_ENOMEM;
    e->pending = p;
    e->cap_pending = cap;
  }
  e->pending[e->n_pending++] = (engine_out_t){.id = r->id, .finished = 1, .finish = why, .n_prompt = r->n_prompt,
                                              .n_generated = req_n_known(r) - r->n_prompt};
  return 0;
}

int engine_add(engine_t *e, uint64_t id, const int32_t *prompt, int n_prompt, const sampling_params_t *sp,
               char *err, int err_len) {
  return engine_add_ex(e, id, prompt, n_prompt, 0, sp, err, err_len);
}

int engine_add_ex(engine_t *e, uint64_t id, const int32_t *prompt, int n_prompt, int n_prior,
                  const sampling_params_t *sp, char *err, int err_len) {
  const model_cfg_t *mc = &e->m->cfg;
  if (n_prompt < 1) {
    snprintf(err, (size_t)err_len, "the prompt is empty");
    return STRATA_EINVAL;
  }
  if (n_prompt >= e->max_model_len) {
    snprintf(err, (size_t)err_len,
             "this model's maximum context length is %d tokens, but the prompt has %d tokens", e->max_model_len,
             n_prompt);
    return STRATA_EINVAL;
  }
  for (int i = 0; i < n_prompt; i++)
    if (prompt[i] < 0 || prompt[i] >= mc->vocab_size) {
      snprintf(err, (size_t)err_len, "token id %d at position %d is outside the vocabulary (0..%d)", prompt[i],
               i, mc->vocab_size - 1);
      return STRATA_EINVAL;
    }
  int rc = sampling_params_validate(sp, mc->vocab_size, err, err_len);
  if (rc) return rc;
  if (find_req(e, id) >= 0) {
    snprintf(err, (size_t)err_len, "request id %llu is already in use", (unsigned long long)id);
    return STRATA_EINVAL;
  }
  if (e->n_reqs == e->cap_reqs) {
    int cap = e->cap_reqs ? 2 * e->cap_reqs : 64;
    req_t **p = realloc(e->reqs, sizeof *p * (size_t)cap);
    if (!p) return STRATA_ENOMEM;
    e->reqs = p;
    e->cap_reqs = cap;
  }
  req_t *r = malloc(sizeof *r);
  if (!r) return STRATA_ENOMEM;
  rc = req_init(r, id, prompt, n_prompt, sp, e->max_model_len);
  if (rc) {
    free(r);
    return rc;
  }
  if (n_prior > 0 && n_prior < n_prompt) { /* migration: the tail is output, budgets count it */
    r->n_prompt = n_prompt - n_prior;
    r->sp.max_tokens += n_prior;
    r->sp.min_tokens += r->sp.min_tokens > 0 ? n_prior : 0;
  }
  r->n_eos = mc->n_eos < REQ_MAX_EOS ? mc->n_eos : REQ_MAX_EOS;
  memcpy(r->eos_ids, mc->eos_ids, sizeof(int32_t) * (size_t)r->n_eos);
  if (sp->max_tokens == 0) { /* nothing to generate: finished before it starts */
    rc = push_pending(e, r, FINISH_LENGTH);
    req_deinit(r);
    free(r);
    return rc;
  }
  rc = sched_add(&e->sched, r);
  if (rc) {
    snprintf(err, (size_t)err_len, "the prompt (%d tokens) does not fit in the KV cache", n_prompt);
    req_deinit(r);
    free(r);
    return rc;
  }
  e->reqs[e->n_reqs++] = r;
  return 0;
}

int engine_abort(engine_t *e, uint64_t id) {
  int i = find_req(e, id);
  if (i < 0) return STRATA_ENOTFOUND;
  req_t *r = e->reqs[i];
  sched_abort(&e->sched, r);
  int rc = push_pending(e, r, FINISH_ABORT);
  remove_req(e, i);
  return rc;
}

static int grow_outs(engine_t *e, int need) {
  if (need <= e->cap_outs) return 0;
  engine_out_t *p = realloc(e->outs, sizeof *p * (size_t)need);
  if (!p) return STRATA_ENOMEM;
  e->outs = p;
  e->cap_outs = need;
  return 0;
}

/* collect: one output per sampled item (with its finish, if any), then frees finished requests. */
static void collect(engine_t *e, const sched_out_t *so, int n_finished) {
  for (int i = 0; i < so->n_items; i++) {
    const sched_item_t *it = &so->items[i];
    if (!it->sample || !it->req) continue;
    req_t *r = it->req;
    engine_out_t *o = &e->outs[e->n_outs++];
    *o = (engine_out_t){.id = r->id, .has_token = 1, .token = e->sampled[i], .sample = e->results[i],
                        .finished = r->state == REQ_FINISHED, .finish = r->finish, .n_prompt = r->n_prompt,
                        .n_cached = r->n_cached_prompt, .n_generated = req_n_generated(r)};
    e->st.n_generated_tokens++;
  }
  for (int i = 0; i < n_finished; i++) {
    int k = find_req(e, e->finished[i]->id);
    if (k >= 0) remove_req(e, k);
  }
}

static void count_prompt_tokens(engine_t *e, const sched_out_t *so) {
  for (int i = 0; i < so->n_items; i++) {
    const sched_item_t *it = &so->items[i];
    if (it->req && it->start < it->req->n_prompt) {
      int end = it->start + it->n, n_prompt = it->req->n_prompt;
      e->st.n_prompt_tokens += (uint64_t)((end < n_prompt ? end : n_prompt) - it->start);
    }
  }
}

/* step_sync: execute -> update of the step scheduled in e->so. */
static int step_sync(engine_t *e) {
  int rc = runner_execute(e, &e->so);
  if (rc) return rc;
  count_prompt_tokens(e, &e->so);
  int n_finished = sched_update(&e->sched, &e->so, e->sampled, e->finished);
  collect(e, &e->so, n_finished);
  e->st.n_steps++;
  return 0;
}

/* drain: the step in flight, if any: waits for its ids, applies them and collects its events. Requests it
 * finishes are freed, and their items in e->so (scheduled meanwhile) lose their request. */
static int drain(engine_t *e) {
  if (!e->fl_active) return 0;
  e->fl_active = 0;
  int rc = runner_wait(e, &e->fl_so, e->fl_slot, e->fl_rows);
  if (rc) return rc;
  int n_finished = sched_fill(&e->sched, &e->fl_so, e->sampled, e->finished);
  collect(e, &e->fl_so, n_finished);
  e->fl_so.n_items = 0;
  return 0;
}

/* drop_gone: removes the items of e->so whose request is gone. */
static void drop_gone(engine_t *e) {
  int k = 0;
  for (int i = 0; i < e->so.n_items; i++)
    if (e->so.items[i].req) e->so.items[k++] = e->so.items[i];
  e->so.n_items = k;
}

/* step_async: the step just scheduled (N_TOKENS, may be 0) is enqueued before the one in flight is applied;
 * the events of that one come back now. A step that needs the host sampler runs the old way once nothing
 * is in flight. */
static int step_async(engine_t *e, int n_tokens) {
  if (n_tokens <= 0) return drain(e);
  int mode = runner_step_mode(e, &e->so);
  if (mode == RUN_HOST) {
    int rc = drain(e);
    if (rc) return rc;
    drop_gone(e); /* requests that the drained step finished */
    if (e->so.n_items == 0) return 0;
    mode = runner_step_mode(e, &e->so);
    if (mode == RUN_HOST) return step_sync(e);
  }
  count_prompt_tokens(e, &e->so);
  int slot = e->fl_active ? 1 - e->fl_slot : 0, n_rows = 0;
  int rc = runner_enqueue(e, &e->so, mode, slot, &n_rows);
  if (!rc) rc = drain(e);
  if (rc) return rc;
  /* NOTE: after the drain, so that every token before the new placeholders is known (kv_commit hashes them) */
  sched_advance(&e->sched, &e->so);
  sched_out_t t = e->fl_so;
  e->fl_so = e->so;
  e->so = t;
  e->fl_active = 1;
  e->fl_slot = slot;
  e->fl_rows = n_rows;
  e->st.n_steps++;
  return 0;
}

int engine_step(engine_t *e, const engine_out_t **outs, int *n_outs) {
  e->n_outs = 0;
  *outs = e->outs;
  *n_outs = 0;
  /* async: the drained step's events and a synchronous step's may come back together */
  int rc = grow_outs(e, (e->async ? 2 : 1) * e->cfg.max_num_seqs + e->n_pending);
  if (rc) return rc;
  *outs = e->outs; /* grow_outs may have moved it */
  if (e->n_pending) memcpy(e->outs, e->pending, sizeof *e->pending * (size_t)e->n_pending);
  e->n_outs = e->n_pending;
  e->n_pending = 0;

  /* schedule -> execute -> update */
  int n_tokens = sched_schedule(&e->sched, &e->so);
  rc = e->async ? step_async(e, n_tokens) : n_tokens > 0 ? step_sync(e) : 0;
  *n_outs = e->n_outs;
  return rc;
}

int engine_has_work(const engine_t *e) {
  return sched_has_work(&e->sched) || e->n_pending > 0 || e->fl_active;
}

void engine_stats(const engine_t *e, engine_stats_t *st) {
  *st = e->st;
  st->n_running = sched_n_running(&e->sched);
  st->n_waiting = sched_n_waiting(&e->sched);
  st->kv_blocks_used = kv_pool_n_used(&e->kv);
  st->prefix_queries_tokens = e->kv.n_queries_tokens;
  st->prefix_hit_tokens = e->kv.n_hit_tokens;
  st->n_preemptions = e->sched.n_preemptions_total;
}

const engine_cfg_t *engine_cfg(const engine_t *e) { return &e->cfg; }
const model_t *engine_model(const engine_t *e) { return e->m; }
const char *engine_device(const engine_t *e) { return e->be->device; }
void engine_set_kv_event_cb(engine_t *e, kv_event_cb cb, void *data) {
  e->kv.on_event = cb;
  e->kv.event_data = data;
}

int engine_max_model_len(const engine_t *e) { return e->max_model_len; }
