/* coord_gen.c: the router behind common/api's engine interface: each choice is routed to a worker
 * (its prompt's block-hash chain against the workers' caches) and generated over Worker.Generate;
 * when that stream breaks before the worker finished, the prompt plus the tokens received so far go
 * to another worker (the broken ones excluded), up to --migration-limit times, and the client's
 * stream goes on as if nothing happened. A call is also moved on purpose (cancelled, then migrated
 * the same way) when its worker leaves the table, when the worker's Events stream stays down, or
 * when it delivers nothing for --stall-timeout-ms while the worker does not report being busy. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/block_hash.h"
#include "common/log.h"
#include "common/status.h"
#include "coordinator/core/coord_int.h"
#include "strata/v1/worker.pb-c.h"

/* ---- the id -> choice map (loop thread) ---- */

coord_gen_t *coord_gen_get(coord_t *c, uint64_t id) {
  for (coord_gen_t *g = c->gens[id % COORD_MAP_BUCKETS]; g; g = g->map_next)
    if (g->id == id) return g;
  return NULL;
}

static void gen_unmap(coord_t *c, coord_gen_t *g) {
  for (coord_gen_t **p = &c->gens[g->id % COORD_MAP_BUCKETS]; *p; p = &(*p)->map_next)
    if (*p == g) {
      *p = g->map_next;
      return;
    }
}

static void gen_free(coord_gen_t *g) {
  router_finish(&g->c->router, g->id); /* whatever prefill it was still charged for */
  if (g->req && g->req->gens) g->req->gens[g->choice] = NULL;
  gen_unmap(g->c, g);
  if (g->stream) rpc_stream_release(g->stream);
  free(g->prompt);
  free(g->out);
  free(g->exclude);
  free(g);
}

/* ---- rpc thread ---- */

static void gen_on_message(rpc_stream_t *s, const ProtobufCMessage *msg, void *arg) {
  (void)s;
  coord_gen_t *g = arg;
  coord_post_packed(g->c, CM_GEN_MSG, g, g->attempt, msg);
}

static void gen_on_close(rpc_stream_t *s, int rc, const rpc_status_t *st, void *arg) {
  (void)s;
  coord_gen_t *g = arg;
  coord_msg_t *m = calloc(1, sizeof *m);
  if (!m) {
    log_error("coordinator: out of memory reporting the end of request %llu's Generate call", (unsigned long long)g->id);
    return;
  }
  m->kind = CM_GEN_CLOSED;
  m->ptr = g;
  m->attempt = g->attempt;
  m->rc = rc;
  snprintf(m->text, sizeof m->text, "%s", st ? st->details : "");
  coord_post(g->c, m);
}

/* ---- loop thread ---- */

static void to_proto(const api_sampling_t *a, Strata__V1__WorkerSampling *p) {
  strata__v1__worker_sampling__init(p);
  p->max_tokens = a->max_tokens > 0 ? (uint32_t)a->max_tokens : 0;
  p->temperature = a->temperature;
  p->top_p = a->top_p;
  p->top_k = a->top_k;
  p->min_p = a->min_p;
  p->seed = a->seed;
  p->n_stop_token_ids = (size_t)a->n_stop_ids;
  p->stop_token_ids = (int32_t *)a->stop_ids;
  p->presence_penalty = a->presence_penalty;
  p->frequency_penalty = a->frequency_penalty;
  p->repetition_penalty = a->repetition_penalty;
  p->ignore_eos = a->ignore_eos;
  p->logprobs = a->logprobs || a->top_logprobs > 0 ? 1u + (uint32_t)a->top_logprobs : 0;
  p->min_tokens = a->min_tokens > 0 ? (uint32_t)a->min_tokens : 0;
}

/* gen_route_open: picks a worker for G (prompt + tokens so far, excluding G's broken workers) and
 * opens the Generate call. Returns 0 or STRATA_EUNAVAILABLE with WHY filled. */
static int gen_route_open(coord_gen_t *g, char *why, size_t why_len) {
  coord_t *c = g->c;
  if (atomic_load(&c->stopping)) {
    snprintf(why, why_len, "the coordinator is shutting down");
    return STRATA_EUNAVAILABLE;
  }
  int n_ctx = g->n_prompt + g->n_out;
  int32_t *ctx = malloc(sizeof *ctx * (size_t)(n_ctx ? n_ctx : 1));
  int max_h = n_ctx / COORD_BLOCK_SIZE;
  uint64_t *hashes = malloc(sizeof *hashes * (size_t)(max_h ? max_h : 1));
  const char **excl = malloc(sizeof *excl * (size_t)(g->n_exclude ? g->n_exclude : 1));
  int rc = STRATA_ENOMEM;
  if (!ctx || !hashes || !excl) {
    snprintf(why, why_len, "out of memory");
    goto out;
  }
  memcpy(ctx, g->prompt, sizeof *ctx * (size_t)g->n_prompt);
  if (g->n_out) memcpy(ctx + g->n_prompt, g->out, sizeof *ctx * (size_t)g->n_out);
  int n_h = block_hash_chain(ctx, n_ctx, COORD_BLOCK_SIZE, BLOCK_HASH_DEFAULT_SEED, hashes, max_h);
  for (int i = 0; i < g->n_exclude; i++) excl[i] = g->exclude[i];
  router_request_t rq = {.model = c->model_name, .pool = "unified", .hashes = hashes, .n_hashes = n_h,
                         .block_size = COORD_BLOCK_SIZE, .n_prompt_tokens = n_ctx, .exclude = excl,
                         .n_exclude = g->n_exclude, .now_ms = coord_now_ms(), .request_id = g->id};
  router_result_t res;
  rc = router_route(&c->router, &rq, &res);
  if (rc) {
    snprintf(why, why_len, "%s", res.reason[0] ? res.reason : strata_strerror(rc));
    rc = STRATA_EUNAVAILABLE;
    goto out;
  }
  coord_wconn_t *w = coord_conn_find(c, res.worker->info.id);
  if (!w || !w->ch) {
    snprintf(why, why_len, "worker %s has no channel yet", res.worker->info.id);
    rc = STRATA_EUNAVAILABLE;
    goto out;
  }
  snprintf(g->worker, sizeof g->worker, "%s", w->id);
  snprintf(g->pool, sizeof g->pool, "%s", res.worker->info.pool);
  Strata__V1__WorkerSampling sp;
  to_proto(&g->sp, &sp);
  Strata__V1__WorkerGenerateRequest req = STRATA__V1__WORKER_GENERATE_REQUEST__INIT;
  req.request_id = g->id;
  req.n_prompt_ids = (size_t)g->n_prompt;
  req.prompt_ids = g->prompt;
  req.n_generated_ids = (size_t)g->n_out;
  req.generated_ids = g->out;
  req.params = &sp;
  rpc_stream_cbs_t cbs = {.on_message = gen_on_message, .on_close = gen_on_close};
  g->attempt++;
  g->finish[0] = 0;
  rc = rpc_stream_open(c->rpc, w->ch, "/strata.v1.Worker/Generate", &strata__v1__worker_generate_response__descriptor,
                       &req.base, 1, 0, &cbs, g, &g->stream);
  if (rc) {
    g->stream = NULL;
    snprintf(why, why_len, "cannot call worker %s (%s)", w->id, strata_strerror(rc));
    rc = STRATA_EUNAVAILABLE;
    goto out;
  }
  g->progress_ms = coord_now_ms();
  g->kill_rc = 0;
  log_debug("coordinator: request %llu -> worker %s (%d of %d blocks cached)", (unsigned long long)g->id, w->id,
            res.cached_blocks, n_h);
out:
  free(ctx);
  free(hashes);
  free(excl);
  return rc;
}

static int backend_submit(void *self, uint64_t id, const int32_t *ids, int n_ids, const api_sampling_t *sp) {
  coord_t *c = self;
  coord_gen_t *g = calloc(1, sizeof *g);
  if (!g || !(g->prompt = malloc(sizeof *g->prompt * (size_t)(n_ids ? n_ids : 1)))) {
    free(g);
    snprintf(c->last_reason, sizeof c->last_reason, "out of memory");
    return STRATA_ENOMEM;
  }
  g->c = c;
  g->id = id;
  g->choice = (int)(id & (COORD_MAX_CHOICES - 1));
  memcpy(g->prompt, ids, sizeof *ids * (size_t)n_ids);
  g->n_prompt = n_ids;
  g->sp = *sp;
  int rc = gen_route_open(g, c->last_reason, sizeof c->last_reason);
  if (rc) {
    free(g->prompt);
    free(g);
    return rc;
  }
  g->map_next = c->gens[id % COORD_MAP_BUCKETS];
  c->gens[id % COORD_MAP_BUCKETS] = g;
  return 0;
}

static void backend_abort(void *self, uint64_t id) {
  coord_t *c = self;
  coord_gen_t *g = coord_gen_get(c, id);
  if (!g || g->aborted) return;
  g->aborted = 1;
  if (g->stream) rpc_stream_cancel(g->stream); /* the close frees it */
  else gen_free(g);
}

void coord_backend_init(coord_t *c) { c->backend = (api_backend_t){.self = c, .submit = backend_submit, .abort = backend_abort}; }

int coord_gen_start(coord_req_t *r, int choice, char *why, size_t why_len) {
  coord_t *c = r->c;
  const api_choice_req_t *ch = &r->h.areq.choices[choice];
  uint64_t id = (r->h.seq << COORD_CHOICE_BITS) | (uint64_t)choice;
  int rc = c->backend.submit(c->backend.self, id, ch->ids, ch->n_ids, &ch->sp);
  if (rc) {
    snprintf(why, why_len, "%s", c->last_reason);
    return rc;
  }
  coord_gen_t *g = coord_gen_get(c, id);
  g->req = r;
  r->gens[choice] = g;
  return 0;
}

static int push_token(coord_gen_t *g, int32_t t) {
  if (g->n_out == g->cap_out) {
    int cap = g->cap_out ? 2 * g->cap_out : 64;
    int32_t *p = realloc(g->out, sizeof *p * (size_t)cap);
    if (!p) return STRATA_ENOMEM;
    g->out = p;
    g->cap_out = cap;
  }
  g->out[g->n_out++] = t;
  return 0;
}

static void observe_latency(coord_gen_t *g) {
  coord_t *c = g->c;
  double now = coord_now_s();
  const char *lv[] = {g->pool};
  if (g->t_last_s == 0) {
    double t0 = g->req ? g->req->t_start_s : now;
    metrics_histogram_observe(c->m.ttft, lv, now - t0);
    coord_lat_add(c, g->pool, 0, 1e3 * (now - t0));
  } else {
    metrics_histogram_observe(c->m.itl, lv, now - g->t_last_s);
    coord_lat_add(c, g->pool, 1, 1e3 * (now - g->t_last_s));
  }
  g->t_last_s = now;
}

void coord_gen_on_msg(coord_t *c, coord_msg_t *m) {
  coord_gen_t *g = m->ptr;
  if (m->attempt != g->attempt) return;
  g->progress_ms = coord_now_ms();
  Strata__V1__WorkerGenerateResponse *r =
      strata__v1__worker_generate_response__unpack(NULL, m->n_bytes, m->bytes);
  if (!r) {
    log_warn("coordinator: worker %s sent a Generate message that does not parse; ignored", g->worker);
    return;
  }
  if (r->n_tokens > 0) router_progress(&c->router, g->id, (int)r->n_tokens); /* its prefill is done */
  /* a migrated request's prompt on the new worker includes what it generated before: only the client's
   * prompt counts */
  if (r->cached_tokens > 0) g->n_cached = (int)r->cached_tokens < g->n_prompt ? (int)r->cached_tokens : g->n_prompt;
  for (size_t i = 0; i < r->n_tokens && !g->aborted; i++) {
    const Strata__V1__WorkerToken *t = r->tokens[i];
    if (push_token(g, t->token_id)) {
      log_error("coordinator: out of memory recording request %llu's tokens", (unsigned long long)g->id);
      break;
    }
    observe_latency(g);
    if (!g->req) continue;
    api_event_t ev = {.has_token = 1, .token = t->token_id, .logprob = t->logprob,
                      .n_prompt = g->n_prompt, .n_generated = g->n_out, .n_cached = g->n_cached};
    size_t n_top = t->n_top_ids < t->n_top_logprobs ? t->n_top_ids : t->n_top_logprobs;
    ev.n_top = n_top < API_MAX_TOP_LOGPROBS ? (int)n_top : API_MAX_TOP_LOGPROBS;
    for (int k = 0; k < ev.n_top; k++) {
      ev.top[k].id = t->top_ids[k];
      ev.top[k].logprob = t->top_logprobs[k];
    }
    coord_req_on_event(g->req, g->choice, &ev); /* may abort G (stop string) or free the request */
  }
  if (r->finish_reason && r->finish_reason[0]) snprintf(g->finish, sizeof g->finish, "%s", r->finish_reason);
  if (r->error && r->error[0]) log_warn("coordinator: worker %s: request %llu: %s", g->worker, (unsigned long long)g->id, r->error);
  strata__v1__worker_generate_response__free_unpacked(r, NULL);
}

static api_finish_t finish_parse(const char *s) {
  if (strcmp(s, "stop") == 0) return API_FINISH_STOP;
  if (strcmp(s, "length") == 0) return API_FINISH_LENGTH;
  if (strcmp(s, "abort") == 0) return API_FINISH_ABORT;
  return API_FINISH_ERROR;
}

/* gen_finish: reports the end of G to its request and frees G. */
static void gen_finish(coord_gen_t *g, api_finish_t f) {
  if (g->req) {
    api_event_t ev = {.finished = 1, .finish = f, .n_prompt = g->n_prompt, .n_generated = g->n_out,
                      .n_cached = g->n_cached};
    coord_req_on_event(g->req, g->choice, &ev);
  }
  gen_free(g);
}

/* gen_migrate: G's worker broke: try the next one. Returns 0 when G goes on elsewhere. */
static int gen_migrate(coord_gen_t *g, int rc, const char *details) {
  coord_t *c = g->c;
  const char *outcome = "migrated";
  if (g->n_migrations >= c->conf->migration_limit) {
    log_error("coordinator: request %llu: worker %s broke (%s%s%s) and the request already moved %d times "
              "(--migration-limit); failing it",
              (unsigned long long)g->id, g->worker, strata_strerror(rc), details[0] ? ": " : "", details, g->n_migrations);
    outcome = "limit";
    metrics_counter_add(c->m.migrations, &outcome, 1);
    return STRATA_EFULL;
  }
  char (*ex)[REGISTRY_ID_MAX] = realloc(g->exclude, sizeof *ex * (size_t)(g->n_exclude + 1));
  if (!ex) return STRATA_ENOMEM;
  g->exclude = ex;
  snprintf(g->exclude[g->n_exclude++], REGISTRY_ID_MAX, "%s", g->worker);
  g->n_migrations++;
  char old[REGISTRY_ID_MAX], why[256];
  snprintf(old, sizeof old, "%s", g->worker);
  if (gen_route_open(g, why, sizeof why) != 0) {
    log_error("coordinator: request %llu: worker %s broke (%s) after %d tokens and no other worker can take it: %s",
              (unsigned long long)g->id, old, strata_strerror(rc), g->n_out, why);
    outcome = "failed";
    metrics_counter_add(c->m.migrations, &outcome, 1);
    return STRATA_EUNAVAILABLE;
  }
  log_info("coordinator: request %llu: worker %s broke (%s%s%s); moved to %s with %d prompt + %d generated tokens",
           (unsigned long long)g->id, old, strata_strerror(rc), details[0] ? ": " : "", details, g->worker, g->n_prompt,
           g->n_out);
  metrics_counter_add(c->m.migrations, &outcome, 1);
  return 0;
}

void coord_gen_on_closed(coord_t *c, coord_msg_t *m) {
  (void)c;
  coord_gen_t *g = m->ptr;
  if (m->attempt != g->attempt) return;
  if (g->stream) rpc_stream_release(g->stream);
  g->stream = NULL;
  if (g->aborted) {
    gen_free(g);
    return;
  }
  /* A finish other than a drain's abort ends the choice; a missing finish means the worker broke. */
  int broke = g->finish[0] == 0 || (strcmp(g->finish, "abort") == 0 && m->rc != 0);
  int kill_rc = g->kill_rc;
  g->kill_rc = 0;
  if (!broke) {
    gen_finish(g, finish_parse(g->finish));
    return;
  }
  if (kill_rc) { /* we cancelled it to move it: our reason, not gRPC's CANCELLED */
    if (gen_migrate(g, kill_rc, g->kill_why) != 0) gen_finish(g, API_FINISH_ERROR);
    return;
  }
  if (m->rc == STRATA_EINVAL) { /* the worker refused the request itself: another would too */
    log_warn("coordinator: worker %s refused request %llu: %s", g->worker, (unsigned long long)g->id, m->text);
    gen_finish(g, API_FINISH_ERROR);
    return;
  }
  if (m->rc == 0) m->rc = STRATA_EINTERNAL; /* OK without a finish: treat as broken */
  if (gen_migrate(g, m->rc, m->text) != 0) gen_finish(g, API_FINISH_ERROR);
}

/* gen_move: cancels G's current call so that its close migrates it (coord_gen_on_closed). Returns 1
 * when it did, 0 when there is nothing to move (no call, cancelled by the client, already moving). */
static int gen_move(coord_gen_t *g, int rc, const char *why) {
  if (!g->stream || g->aborted || g->kill_rc) return 0;
  g->kill_rc = rc;
  snprintf(g->kill_why, sizeof g->kill_why, "%s", why);
  rpc_stream_cancel(g->stream);
  return 1;
}

int coord_gens_move_worker(coord_t *c, const char *id, int rc, const char *why) {
  if (atomic_load(&c->stopping)) return 0; /* shutdown cancels everything anyway */
  int n = 0;
  for (int b = 0; b < COORD_MAP_BUCKETS; b++)
    for (coord_gen_t *g = c->gens[b]; g; g = g->map_next)
      if (strcmp(g->worker, id) == 0) n += gen_move(g, rc, why);
  if (n) log_warn("coordinator: worker %s: %s; moving its %d request(s) to other workers", id, why, n);
  return n;
}

void coord_gens_check_stalls(coord_t *c, int64_t now_ms) {
  int64_t limit = c->conf->stall_timeout_ms;
  if (limit <= 0 || now_ms < c->next_stall_check_ms || atomic_load(&c->stopping)) return;
  c->next_stall_check_ms = now_ms + COORD_STALL_CHECK_MS;
  for (int b = 0; b < COORD_MAP_BUCKETS; b++)
    for (coord_gen_t *g = c->gens[b]; g; g = g->map_next) {
      if (!g->stream || g->aborted || g->kill_rc || now_ms - g->progress_ms < limit) continue;
      /* NOTE: a long prefill on a loaded worker delivers nothing for a while too; its Events stream
       * then reports requests running or queued, and we wait. A worker that reports nothing, or
       * reports being idle while it holds our request, has lost or hung on it. */
      if (coord_worker_busy(c, g->worker, now_ms, limit)) continue;
      char why[128];
      snprintf(why, sizeof why, "no token for %lld ms (--stall-timeout-ms) and the worker reports no work",
               (long long)(now_ms - g->progress_ms));
      if (gen_move(g, STRATA_ETIMEDOUT, why))
        log_warn("coordinator: request %llu on worker %s: %s; moving it", (unsigned long long)g->id, g->worker, why);
    }
}

void coord_gens_cancel_all(coord_t *c) {
  for (int b = 0; b < COORD_MAP_BUCKETS; b++) {
    coord_gen_t *g = c->gens[b];
    while (g) {
      coord_gen_t *next = g->map_next;
      g->aborted = 1;
      if (g->stream) rpc_stream_cancel(g->stream);
      else gen_free(g);
      g = next;
    }
  }
}
