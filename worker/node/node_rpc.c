/* node_rpc.c: the strata.v1.Worker service: Generate streams fed from the engine's outbox, the Events
 * stream (load + KV-block events), and Drain. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "strata/v1/worker.pb-c.h"
#include "worker/node/node_int.h"

/* ---- request table (callers hold n->mu) ---- */

static node_gen_t *gen_find_eid(worker_node_t *n, uint64_t eid) {
  for (node_gen_t *g = n->gens; g; g = g->next)
    if (g->eid == eid) return g;
  return NULL;
}

static void gen_unlink(worker_node_t *n, node_gen_t *g) {
  for (node_gen_t **p = &n->gens; *p; p = &(*p)->next)
    if (*p == g) {
      *p = g->next;
      n->n_gens--;
      return;
    }
}

static void gen_free(node_gen_t *g) {
  if (!g) return;
  free(g->pend);
  free(g);
}

/* ---- Generate ---- */

/* sampling_from_proto: the engine's parameters for a request that already generated N_PRIOR tokens.
 * proto3 cannot tell "unset" from 0, so 0 means the neutral value where 0 would be meaningless
 * (top_p, repetition_penalty) and "up to the context length" for max_tokens. Returns 0, or
 * STRATA_EINVAL with a message in ERR. */
static int sampling_from_proto(const worker_node_t *n, const Strata__V1__WorkerSampling *p, int n_total,
                               int n_prior, sampling_params_t *sp, char *err, size_t err_len) {
  sampling_params_default(sp);
  int max_tokens = n->max_model_len - n_total;
  if (p) {
    sp->temperature = p->temperature;
    sp->top_p = p->top_p == 0.0f ? 1.0f : p->top_p;
    sp->top_k = p->top_k;
    sp->min_p = p->min_p;
    sp->seed = p->seed;
    sp->presence_penalty = p->presence_penalty;
    sp->frequency_penalty = p->frequency_penalty;
    sp->repetition_penalty = p->repetition_penalty == 0.0f ? 1.0f : p->repetition_penalty;
    sp->ignore_eos = p->ignore_eos;
    if (p->logprobs > SAMPLE_MAX_LOGPROBS + 1) {
      snprintf(err, err_len, "logprobs %u is over the limit %d (1 + top alternatives)", p->logprobs,
               SAMPLE_MAX_LOGPROBS + 1);
      return STRATA_EINVAL;
    }
    sp->logprobs = p->logprobs > 0;
    sp->top_logprobs = p->logprobs > 0 ? (int)p->logprobs - 1 : 0;
    if (p->n_stop_token_ids > SAMPLE_MAX_STOP_IDS) {
      snprintf(err, err_len, "%zu stop token ids; at most %d", p->n_stop_token_ids, SAMPLE_MAX_STOP_IDS);
      return STRATA_EINVAL;
    }
    sp->n_stop_ids = (int)p->n_stop_token_ids;
    if (p->n_stop_token_ids) memcpy(sp->stop_ids, p->stop_token_ids, sizeof(int32_t) * p->n_stop_token_ids);
    if (p->max_tokens > 0) max_tokens = p->max_tokens > (uint32_t)(1 << 30) ? (1 << 30) : (int)p->max_tokens;
    /* NOTE: migration. The tokens already generated are recomputed as prompt, but they count against
     * max_tokens and min_tokens; seeded draws stay identical because the RNG is keyed by the absolute
     * position, which does not depend on where the prompt ends. */
    int min_tokens = (int)(p->min_tokens > (uint32_t)(1 << 30) ? (1 << 30) : p->min_tokens) - n_prior;
    sp->min_tokens = min_tokens > 0 ? min_tokens : 0;
  }
  sp->max_tokens = max_tokens - n_prior;
  if (sp->max_tokens < 0) sp->max_tokens = 0;
  return 0;
}

/* Send one message with FINISH (may be NULL) and end the call with CODE. */
static void call_end(rpc_server_call_t *call, const char *finish, const char *error, uint32_t n_prompt,
                     uint32_t n_cached, grpc_status_code code, const char *details) {
  if (finish) {
    Strata__V1__WorkerGenerateResponse r = STRATA__V1__WORKER_GENERATE_RESPONSE__INIT;
    r.finish_reason = (char *)finish;
    r.error = (char *)(error ? error : "");
    r.prompt_tokens = n_prompt;
    r.cached_tokens = n_cached;
    rpc_server_call_send(call, &r.base);
  }
  rpc_server_call_finish(call, code, details);
}

static int admit_check(worker_node_t *n, char *why, size_t len) {
  if (n->draining) {
    snprintf(why, len, "draining");
    return 0;
  }
  return 1;
}

static void on_generate(void *arg, const ProtobufCMessage *msg, rpc_server_call_t *call) {
  worker_node_t *n = arg;
  const Strata__V1__WorkerGenerateRequest *req = (const Strata__V1__WorkerGenerateRequest *)msg;
  char err[256] = "";
  size_t n_total = req->n_prompt_ids + req->n_generated_ids;
  if (req->n_prompt_ids == 0 || n_total >= (size_t)n->max_model_len) {
    if (req->n_prompt_ids == 0)
      snprintf(err, sizeof err, "the prompt is empty");
    else
      snprintf(err, sizeof err, "this model's maximum context length is %d tokens, but the request has %zu",
               n->max_model_len, n_total);
    rpc_server_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, err);
    return;
  }
  sampling_params_t sp;
  if (sampling_from_proto(n, req->params, (int)n_total, (int)req->n_generated_ids, &sp, err, sizeof err)) {
    rpc_server_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, err);
    return;
  }
  if (sp.max_tokens == 0) { /* a migrated request that had already used its budget */
    call_end(call, "length", NULL, (uint32_t)req->n_prompt_ids, 0, GRPC_STATUS_OK, "");
    return;
  }
  int32_t *ids = malloc(sizeof *ids * n_total);
  node_gen_t *g = calloc(1, sizeof *g);
  if (!ids || !g) {
    free(ids);
    free(g);
    rpc_server_call_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  memcpy(ids, req->prompt_ids, sizeof *ids * req->n_prompt_ids);
  if (req->n_generated_ids) memcpy(ids + req->n_prompt_ids, req->generated_ids, sizeof *ids * req->n_generated_ids);
  g->client_id = req->request_id;
  g->call = call;
  g->n_prompt = (int)req->n_prompt_ids;
  g->n_prior = (int)req->n_generated_ids;
  g->want_logprobs = sp.logprobs;
  pthread_mutex_lock(&n->mu);
  int admit = admit_check(n, err, sizeof err);
  if (admit) {
    g->eid = n->next_eid++;
    g->next = n->gens;
    n->gens = g;
    n->n_gens++;
  }
  pthread_mutex_unlock(&n->mu);
  if (!admit) {
    free(ids);
    gen_free(g);
    rpc_server_call_finish(call, GRPC_STATUS_UNAVAILABLE, err);
    return;
  }
  /* Submitting outside the lock: a refusal comes back as an event like any other outcome. */
  int rc = engine_loop_submit_ex(n->engine, g->eid, ids, (int)n_total, g->n_prior, &sp);
  free(ids);
  if (rc) {
    pthread_mutex_lock(&n->mu);
    gen_unlink(n, g);
    pthread_mutex_unlock(&n->mu);
    gen_free(g);
    rpc_server_call_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED, strata_strerror(rc));
  }
}

/* The client went away (or the server is stopping): abort the request and answer the call now, so
 * that nothing waits on the control thread; the engine's ABORT event frees the entry later. */
static void on_generate_done(void *arg, rpc_server_call_t *call, int cancelled) {
  worker_node_t *n = arg;
  uint64_t eid = 0;
  int found = 0;
  pthread_mutex_lock(&n->mu);
  for (node_gen_t *g = n->gens; g; g = g->next)
    if (g->call == call) {
      g->call = NULL;
      eid = g->eid;
      found = 1;
      break;
    }
  if (found) rpc_server_call_finish(call, GRPC_STATUS_CANCELLED, "cancelled");
  pthread_mutex_unlock(&n->mu);
  if (found) {
    log_debug("worker: request %llu: the client went away; aborting", (unsigned long long)eid);
    engine_loop_abort(n->engine, eid);
  }
}

/* ---- token dispatch (control thread) ---- */

static int gen_push(node_gen_t *g, const sample_result_t *s) {
  if (g->n_pend == g->cap_pend) {
    int cap = g->cap_pend ? 2 * g->cap_pend : 16;
    sample_result_t *p = realloc(g->pend, sizeof *p * (size_t)cap);
    if (!p) return STRATA_ENOMEM;
    g->pend = p;
    g->cap_pend = cap;
  }
  g->pend[g->n_pend++] = *s;
  return 0;
}

/* Send G's queued tokens as one message (with the finish when FIN is set). Caller holds n->mu. */
static void gen_flush(node_gen_t *g, const engine_event_t *fin) {
  if (!g->call || (g->n_pend == 0 && !fin)) {
    g->n_pend = 0;
    return;
  }
  Strata__V1__WorkerGenerateResponse r = STRATA__V1__WORKER_GENERATE_RESPONSE__INIT;
  Strata__V1__WorkerToken *toks = calloc((size_t)g->n_pend + 1, sizeof *toks);
  Strata__V1__WorkerToken **ptrs = calloc((size_t)g->n_pend + 1, sizeof *ptrs);
  int32_t *top_ids = calloc((size_t)g->n_pend * SAMPLE_MAX_LOGPROBS + 1, sizeof *top_ids);
  float *top_lps = calloc((size_t)g->n_pend * SAMPLE_MAX_LOGPROBS + 1, sizeof *top_lps);
  if (!toks || !ptrs || !top_ids || !top_lps) {
    log_error("worker: out of memory sending tokens; ending the stream");
    rpc_server_call_finish(g->call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    g->call = NULL;
    goto out;
  }
  for (int i = 0; i < g->n_pend; i++) {
    const sample_result_t *s = &g->pend[i];
    Strata__V1__WorkerToken *t = &toks[i];
    strata__v1__worker_token__init(t);
    t->token_id = s->token;
    if (g->want_logprobs) {
      t->logprob = s->logprob;
      t->n_top_ids = t->n_top_logprobs = (size_t)s->n_top;
      t->top_ids = top_ids + (size_t)i * SAMPLE_MAX_LOGPROBS;
      t->top_logprobs = top_lps + (size_t)i * SAMPLE_MAX_LOGPROBS;
      for (int k = 0; k < s->n_top; k++) {
        t->top_ids[k] = s->top[k].id;
        t->top_logprobs[k] = s->top[k].logprob;
      }
    }
    ptrs[i] = t;
  }
  r.n_tokens = (size_t)g->n_pend;
  r.tokens = ptrs;
  if (!fin) {
    if (rpc_server_call_send(g->call, &r.base) == STRATA_ECLOSED) log_debug("worker: stream already closed");
    goto out;
  }
  static const char *const names[] = {"", "stop", "length", "abort", "error"};
  const engine_out_t *o = &fin->out;
  int n_cached = o->n_cached < g->n_prompt ? o->n_cached : g->n_prompt;
  r.finish_reason = (char *)names[o->finish <= FINISH_ERROR ? o->finish : FINISH_ERROR];
  r.prompt_tokens = (uint32_t)g->n_prompt;
  r.cached_tokens = (uint32_t)(n_cached > 0 ? n_cached : 0);
  if (o->finish == FINISH_ERROR) r.error = (char *)"the engine failed on this request (see the worker's log)";
  rpc_server_call_send(g->call, &r.base);
  if (o->finish == FINISH_ERROR)
    rpc_server_call_finish(g->call, GRPC_STATUS_INTERNAL, "engine error");
  else if (o->finish == FINISH_ABORT && g->aborted_by_drain)
    rpc_server_call_finish(g->call, GRPC_STATUS_UNAVAILABLE, "draining: the drain deadline passed");
  else
    rpc_server_call_finish(g->call, GRPC_STATUS_OK, "");
  g->call = NULL;
out:
  g->n_pend = 0;
  free(toks);
  free(ptrs);
  free(top_ids);
  free(top_lps);
}

/* One engine event. Caller holds n->mu. Finished entries are unlinked and appended to *DEAD. */
static void dispatch_one(worker_node_t *n, const engine_event_t *ev, node_gen_t ***flush, int *n_flush,
                         node_gen_t **dead) {
  node_gen_t *g = gen_find_eid(n, ev->out.id);
  if (!g) return;
  if (ev->rejected) {
    if (g->call) rpc_server_call_finish(g->call, GRPC_STATUS_INVALID_ARGUMENT, ev->error);
    g->call = NULL;
  } else {
    if (ev->out.has_token) {
      sample_result_t s = ev->out.sample;
      s.token = ev->out.token;
      if (gen_push(g, &s)) log_error("worker: out of memory queueing a token of request %llu; it is lost",
                                     (unsigned long long)g->eid);
    }
    if (ev->out.finished) {
      gen_flush(g, ev);
    } else if (!g->dirty) {
      g->dirty = 1;
      (*flush)[(*n_flush)++] = g;
    }
  }
  if (ev->out.finished || ev->rejected) {
    gen_unlink(n, g);
    g->dirty = 0;
    g->next = *dead;
    *dead = g;
  }
}

void node_dispatch(worker_node_t *n) {
  engine_event_t *evs = n->evs;
  node_gen_t **flush = n->flush;
  int got;
  while ((got = engine_loop_poll(n->engine, evs, NODE_POLL_BATCH)) > 0) {
    int n_flush = 0;
    node_gen_t *dead = NULL;
    pthread_mutex_lock(&n->mu);
    for (int i = 0; i < got; i++) dispatch_one(n, &evs[i], &flush, &n_flush, &dead);
    /* NOTE: one message per request per wake-up: tokens that queued up while the stream was busy go
     * out together. Entries finished in this round were flushed (and dropped from the list) above. */
    for (int i = 0; i < n_flush; i++)
      if (flush[i]->dirty) {
        flush[i]->dirty = 0;
        gen_flush(flush[i], NULL);
      }
    pthread_mutex_unlock(&n->mu);
    while (dead) {
      node_gen_t *g = dead;
      dead = g->next;
      gen_free(g);
    }
  }
}

void node_abort_all(worker_node_t *n) {
  pthread_mutex_lock(&n->mu);
  int k = 0;
  uint64_t *ids = malloc(sizeof *ids * (size_t)(n->n_gens + 1));
  for (node_gen_t *g = n->gens; g && ids; g = g->next) {
    g->aborted_by_drain = 1;
    ids[k++] = g->eid;
  }
  pthread_mutex_unlock(&n->mu);
  for (int i = 0; i < k; i++) engine_loop_abort(n->engine, ids[i]);
  free(ids);
}

/* ---- Events ---- */

void node_on_kv_event(void *data, kv_event_type_t type, uint64_t hash) {
  worker_node_t *n = data;
  pthread_mutex_lock(&n->mu);
  uint64_t **arr = type == KV_EVENT_STORED ? &n->kv_stored : &n->kv_removed;
  int *cnt = type == KV_EVENT_STORED ? &n->n_stored : &n->n_removed;
  int *cap = type == KV_EVENT_STORED ? &n->cap_stored : &n->cap_removed;
  if (*cnt == *cap) {
    int new_cap = *cap ? 2 * *cap : 256;
    uint64_t *p = new_cap <= NODE_KV_MAX_PENDING ? realloc(*arr, sizeof *p * (size_t)new_cap) : NULL;
    if (!p) { /* lost events: tell the coordinators to forget this worker's hashes */
      n->kv_overflow = 1;
      n->n_stored = n->n_removed = 0;
      pthread_mutex_unlock(&n->mu);
      return;
    }
    *arr = p;
    *cap = new_cap;
  }
  (*arr)[(*cnt)++] = hash;
  pthread_mutex_unlock(&n->mu);
}

static void on_events(void *arg, const ProtobufCMessage *msg, rpc_server_call_t *call) {
  worker_node_t *n = arg;
  const Strata__V1__EventsRequest *req = (const Strata__V1__EventsRequest *)msg;
  node_sub_t *s = calloc(1, sizeof *s);
  if (!s) {
    rpc_server_call_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  log_info("worker: coordinator '%s' subscribed to events", req->coordinator_id ? req->coordinator_id : "");
  s->call = call;
  pthread_mutex_lock(&n->mu);
  s->next = n->subs;
  n->subs = s;
  n->new_sub = 1;
  pthread_mutex_unlock(&n->mu);
  node_wake(n);
}

static void on_events_done(void *arg, rpc_server_call_t *call, int cancelled) {
  worker_node_t *n = arg;
  pthread_mutex_lock(&n->mu);
  for (node_sub_t **p = &n->subs; *p; p = &(*p)->next)
    if ((*p)->call == call) {
      node_sub_t *s = *p;
      *p = s->next;
      rpc_server_call_finish(call, GRPC_STATUS_CANCELLED, "cancelled");
      free(s);
      break;
    }
  pthread_mutex_unlock(&n->mu);
}

void node_send_event(worker_node_t *n) {
  engine_stats_t st;
  engine_loop_stats(n->engine, &st);
  Strata__V1__WorkerLoad load = STRATA__V1__WORKER_LOAD__INIT;
  Strata__V1__KvEvents kv = STRATA__V1__KV_EVENTS__INIT;
  Strata__V1__WorkerEvent ev = STRATA__V1__WORKER_EVENT__INIT;
  load.running = (uint32_t)st.n_running;
  load.waiting = (uint32_t)engine_loop_n_pending(n->engine);
  load.kv_blocks_used = (uint32_t)st.kv_blocks_used;
  load.kv_blocks_total = (uint32_t)st.kv_blocks_total;
  load.prefix_hit_tokens = st.prefix_hit_tokens;
  load.prefix_query_tokens = st.prefix_queries_tokens;
  pthread_mutex_lock(&n->mu);
  load.draining = n->draining;
  kv.stored = n->kv_stored;
  kv.n_stored = (size_t)n->n_stored;
  kv.removed = n->kv_removed;
  kv.n_removed = (size_t)n->n_removed;
  kv.reset = n->kv_overflow;
  /* NOTE: every event takes the next seq, load-only ones too, and every subscriber sees the same
   * numbering: a coordinator applies each event's kv (possibly empty) to keep its sequence. */
  ev.seq = ++n->event_seq;
  ev.worker_id = n->id;
  ev.load = &load;
  ev.kv = &kv;
  for (node_sub_t *s = n->subs; s; s = s->next) rpc_server_call_send(s->call, &ev.base);
  n->n_stored = n->n_removed = 0;
  n->kv_overflow = 0;
  n->new_sub = 0;
  pthread_mutex_unlock(&n->mu);
}

void node_finish_subs(worker_node_t *n) {
  pthread_mutex_lock(&n->mu);
  while (n->subs) {
    node_sub_t *s = n->subs;
    n->subs = s->next;
    rpc_server_call_finish(s->call, GRPC_STATUS_OK, "");
    free(s);
  }
  pthread_mutex_unlock(&n->mu);
}

/* ---- Drain ---- */

static void on_drain(void *arg, const ProtobufCMessage *msg, rpc_reply_t *reply) {
  worker_node_t *n = arg;
  const Strata__V1__DrainRequest *req = (const Strata__V1__DrainRequest *)msg;
  int64_t deadline_s = req->deadline_s ? (int64_t)req->deadline_s : n->conf->drain_timeout_s;
  Strata__V1__DrainResponse resp = STRATA__V1__DRAIN_RESPONSE__INIT;
  pthread_mutex_lock(&n->mu);
  int64_t deadline = node_now_ms() + deadline_s * 1000;
  if (!n->draining || deadline < n->drain_deadline_ms) n->drain_deadline_ms = deadline;
  if (!n->draining) log_info("worker: Drain requested (deadline %lld s)", (long long)deadline_s);
  n->draining = 1;
  resp.in_flight = (uint32_t)n->n_gens;
  pthread_mutex_unlock(&n->mu);
  node_wake(n);
  if (rpc_reply_message(reply, &resp.base)) rpc_reply_status(reply, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
}

void node_rpc_methods(worker_node_t *n) {
  n->methods[0] = (rpc_method_t){.path = "/strata.v1.Worker/Generate",
                                 .request = &strata__v1__worker_generate_request__descriptor,
                                 .stream = on_generate, .done = on_generate_done, .arg = n};
  n->methods[1] = (rpc_method_t){.path = "/strata.v1.Worker/Events",
                                 .request = &strata__v1__events_request__descriptor,
                                 .stream = on_events, .done = on_events_done, .arg = n};
  n->methods[2] = (rpc_method_t){.path = "/strata.v1.Worker/Drain",
                                 .request = &strata__v1__drain_request__descriptor, .unary = on_drain, .arg = n};
}
