/* serve_grpc.c: the gRPC strata.v1.Inference API of `strata serve`: Generate (a server stream of text
 * and token deltas), Tokenize, ListModels and Health, with the HTTP API's parameters, validation and
 * limits (a GenerateRequest goes through common/api's parser), its errors as gRPC status codes, and
 * client cancellation aborting the engine request.
 *
 * Threads: handlers run on the gRPC server's completion-queue thread. Tokenize, ListModels and Health
 * read only immutable state and answer there. Generate is parsed there, then handed to the libev loop
 * thread (a queue plus ev_async), which owns the engine interface, the request map and the sessions,
 * exactly as for HTTP; engine events reach serve_grpc_on_event from serve_on_wake. */
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "common/log.h"
#include "common/rpc/rpc.h"
#include "common/status.h"
#include "strata/v1/inference.pb-c.h"
#include "worker/api/serve_int.h"

#define GRPC_PATH(m) "/strata.v1.Inference/" m
#define GRPC_MAX_REQUEST_ID 128
#define GRPC_MAX_TOKEN_TEXT 256

/* One Generate call from its first message to its final status. Built on the gRPC thread; from the
 * moment it is queued the loop thread owns it. It stays on the active list (under mu) until its
 * status is sent, so that done() can find it by call and flag a cancellation. */
typedef struct serve_grpc_gen {
  rpc_server_call_t *call;
  serve_req_t *r;                 /* the request as HTTP has it (areq parsed on the gRPC thread) */
  char request_id[GRPC_MAX_REQUEST_ID + 1];
  int n_cached;                   /* prompt tokens the prefix cache served */
  int in_map;
  int cancel, cancel_seen;        /* cancel: under mu; cancel_seen: loop thread */
  struct serve_grpc_gen *prev, *next;     /* active list, under mu */
  struct serve_grpc_gen *next_pending;    /* queued for the loop thread, under mu */
  struct serve_grpc_gen *next_cancel;     /* loop thread scratch */
} serve_grpc_gen_t;

struct serve_grpc {
  serve_t *srv;
  rpc_server_t *rpc;
  rpc_method_t methods[4];
  ev_async wake;
  pthread_mutex_t mu;
  /* Guarded by mu: */
  serve_grpc_gen_t *active;
  serve_grpc_gen_t *pending, *pending_tail;
  int stopping;
};

/* ---- errors ---- */

/* status_of: the gRPC code for an HTTP status of common/api (the table). */
static grpc_status_code status_of(int http_status) {
  switch (http_status) {
  case 400: return GRPC_STATUS_INVALID_ARGUMENT;
  case 401: return GRPC_STATUS_UNAUTHENTICATED;
  case 404: return GRPC_STATUS_NOT_FOUND;
  case 413:
  case 429: return GRPC_STATUS_RESOURCE_EXHAUSTED;
  case 503: return GRPC_STATUS_UNAVAILABLE;
  default: return GRPC_STATUS_INTERNAL;
  }
}

static void finish_error(rpc_server_call_t *call, const api_error_t *e) {
  rpc_server_call_finish(call, status_of(e->status), e->message);
}

/* reply: one message then OK: a unary response on the wire. */
static void reply(rpc_server_call_t *call, const ProtobufCMessage *msg) {
  if (rpc_server_call_send(call, msg) == STRATA_ENOMEM) {
    rpc_server_call_finish(call, GRPC_STATUS_INTERNAL, "out of memory");
    return;
  }
  rpc_server_call_finish(call, GRPC_STATUS_OK, NULL);
}

/* ---- authentication ---- */

/* authorized: with API keys configured, the call must carry one as "authorization: Bearer <key>"
 * metadata. Every key is compared in constant time, and all of them are. */
static int authorized(serve_grpc_t *g, rpc_server_call_t *call) {
  const cfg_strlist_t *keys = &g->srv->conf->api_keys;
  if (keys->n == 0) return 1;
#ifdef RPC_HAVE_CALL_METADATA
  char value[1024];
  if (rpc_server_call_metadata(call, "authorization", value, sizeof value) < 0) return 0;
  const char *token = value;
  if (strncasecmp(token, "bearer", 6) != 0 || !isspace((unsigned char)token[6])) return 0;
  for (token += 6; isspace((unsigned char)*token);) token++;
  int ok = 0;
  for (int i = 0; i < keys->n; i++) ok |= http_secure_equal(token, keys->items[i]);
  return ok;
#else
  (void)call;
  return 0; /* NOTE: no way to read call metadata in this build: refuse rather than serve unauthenticated */
#endif
}

static int check_auth(serve_grpc_t *g, rpc_server_call_t *call) {
  if (authorized(g, call)) return 1;
  rpc_server_call_finish(call, GRPC_STATUS_UNAUTHENTICATED,
                         "Incorrect or missing API key: send it as 'authorization: Bearer <key>' metadata.");
  return 0;
}

/* ---- GenerateRequest -> the HTTP API's JSON, so that one parser validates both ---- */

static int add_float(cJSON *o, const char *name, int has, float v, api_error_t *err) {
  if (!has) return 0;
  if (!isfinite(v)) return api_error_set(err, 400, NULL, name, "'%s' must be a finite number", name);
  return cJSON_AddNumberToObject(o, name, (double)v) ? 0 : STRATA_ENOMEM;
}

static int add_params(cJSON *o, const Strata__V1__SamplingParams *p, api_kind_t kind, api_error_t *err) {
  int rc = 0;
  if (!p) return 0;
  if ((rc = add_float(o, "temperature", p->has_temperature, p->temperature, err)) ||
      (rc = add_float(o, "top_p", p->has_top_p, p->top_p, err)) ||
      (rc = add_float(o, "min_p", p->has_min_p, p->min_p, err)) ||
      (rc = add_float(o, "presence_penalty", p->has_presence_penalty, p->presence_penalty, err)) ||
      (rc = add_float(o, "frequency_penalty", p->has_frequency_penalty, p->frequency_penalty, err)) ||
      (rc = add_float(o, "repetition_penalty", p->has_repetition_penalty, p->repetition_penalty, err)))
    return rc;
  if (p->has_max_tokens) cJSON_AddNumberToObject(o, "max_tokens", p->max_tokens);
  if (p->has_min_tokens) cJSON_AddNumberToObject(o, "min_tokens", p->min_tokens);
  if (p->has_top_k) cJSON_AddNumberToObject(o, "top_k", p->top_k);
  /* NOTE: the JSON parser reads seeds as signed 64-bit; the same bits keep the same sampling */
  if (p->has_seed) cJSON_AddNumberToObject(o, "seed", (double)(int64_t)p->seed);
  if (p->has_ignore_eos) cJSON_AddBoolToObject(o, "ignore_eos", p->ignore_eos);
  if (p->has_logprobs && p->logprobs > 0) {
    if (p->logprobs > API_MAX_TOP_LOGPROBS)
      return api_error_set(err, 400, NULL, "logprobs", "'logprobs' must be in [0, %d], got %u", API_MAX_TOP_LOGPROBS,
                           p->logprobs);
    if (kind == API_CHAT) {
      cJSON_AddBoolToObject(o, "logprobs", 1);
      cJSON_AddNumberToObject(o, "top_logprobs", p->logprobs);
    } else {
      cJSON_AddNumberToObject(o, "logprobs", p->logprobs);
    }
  }
  if (p->n_stop) {
    cJSON *a = cJSON_AddArrayToObject(o, "stop");
    for (size_t i = 0; a && i < p->n_stop; i++)
      cJSON_AddItemToArray(a, cJSON_CreateString(p->stop[i] ? p->stop[i] : ""));
  }
  if (p->n_stop_token_ids) {
    cJSON *a = cJSON_AddArrayToObject(o, "stop_token_ids");
    for (size_t i = 0; a && i < p->n_stop_token_ids; i++)
      cJSON_AddItemToArray(a, cJSON_CreateNumber(p->stop_token_ids[i]));
  }
  return 0;
}

static int add_input(cJSON *o, const Strata__V1__GenerateRequest *q, api_error_t *err) {
  switch (q->input_case) {
  case STRATA__V1__GENERATE_REQUEST__INPUT_PROMPT:
    return cJSON_AddStringToObject(o, "prompt", q->prompt ? q->prompt : "") ? 0 : STRATA_ENOMEM;
  case STRATA__V1__GENERATE_REQUEST__INPUT_PROMPT_IDS: {
    cJSON *a = cJSON_AddArrayToObject(o, "prompt");
    for (size_t i = 0; a && q->prompt_ids && i < q->prompt_ids->n_ids; i++)
      cJSON_AddItemToArray(a, cJSON_CreateNumber(q->prompt_ids->ids[i]));
    return a ? 0 : STRATA_ENOMEM;
  }
  case STRATA__V1__GENERATE_REQUEST__INPUT_MESSAGES: {
    cJSON *a = cJSON_AddArrayToObject(o, "messages");
    for (size_t i = 0; a && q->messages && i < q->messages->n_messages; i++) {
      const Strata__V1__ChatMessage *m = q->messages->messages[i];
      cJSON *jm = cJSON_CreateObject();
      if (!jm) return STRATA_ENOMEM;
      cJSON_AddItemToArray(a, jm);
      if (m->role) cJSON_AddStringToObject(jm, "role", m->role);
      if (m->content) cJSON_AddStringToObject(jm, "content", m->content);
    }
    return a ? 0 : STRATA_ENOMEM;
  }
  default:
    return api_error_set(err, 400, NULL, "prompt", "one of 'prompt', 'prompt_ids' or 'messages' is required");
  }
}

/* parse_generate: Q validated and tokenized into R->areq, through the same parser as HTTP. Returns 0,
 * or STRATA_EINVAL / STRATA_ENOMEM with ERR filled. Runs on the gRPC thread (ctx is immutable). */
static int parse_generate(serve_t *s, const Strata__V1__GenerateRequest *q, serve_req_t *r, api_error_t *err) {
  api_kind_t kind = q->input_case == STRATA__V1__GENERATE_REQUEST__INPUT_MESSAGES ? API_CHAT : API_COMPLETIONS;
  cJSON *o = cJSON_CreateObject();
  char *js = NULL;
  int rc = STRATA_ENOMEM;
  memset(err, 0, sizeof *err);
  if (!o) goto fail;
  if (q->model && !cJSON_AddStringToObject(o, "model", q->model)) goto fail;
  if ((rc = add_input(o, q, err)) || (rc = add_params(o, q->params, kind, err))) goto fail;
  rc = STRATA_ENOMEM;
  if (!(js = cJSON_PrintUnformatted(o))) goto fail;
  rc = api_request_parse(&r->h.areq, &s->ctx, kind, js, strlen(js), err);
fail:
  if (rc == STRATA_ENOMEM && !err->status) api_error_set(err, 500, "internal_error", NULL, "out of memory");
  free(js);
  cJSON_Delete(o);
  return rc;
}

/* request_id_ok: client ids are echoed in every message: printable ASCII, bounded. */
static int request_id_ok(const char *id, api_error_t *err) {
  size_t n = strlen(id);
  if (n > GRPC_MAX_REQUEST_ID)
    return api_error_set(err, 400, NULL, "request_id", "'request_id' is limited to %d bytes, got %zu",
                         GRPC_MAX_REQUEST_ID, n);
  for (size_t i = 0; i < n; i++)
    if (id[i] < 0x20 || id[i] > 0x7e)
      return api_error_set(err, 400, NULL, "request_id", "'request_id' must be printable ASCII");
  return 0;
}

/* ---- Generate: lifetime (loop thread unless said otherwise) ---- */

static void req_free(serve_req_t *r) {
  if (!r) return;
  api_session_free(r->h.sess);
  api_request_free(&r->h.areq);
  free(r->done);
  free(r->t_last_s);
  free(r);
}

/* active_unlink: caller holds mu. */
static void active_unlink(serve_grpc_t *g, serve_grpc_gen_t *gen) {
  if (gen->prev) gen->prev->next = gen->next;
  else if (g->active == gen) g->active = gen->next;
  if (gen->next) gen->next->prev = gen->prev;
  gen->prev = gen->next = NULL;
}

/* gen_end: sends the final status and frees GEN. It leaves the active list first: after finish the
 * call may be gone, and done() must not find it. */
static void gen_end(serve_grpc_t *g, serve_grpc_gen_t *gen, grpc_status_code code, const char *details) {
  pthread_mutex_lock(&g->mu);
  active_unlink(g, gen);
  pthread_mutex_unlock(&g->mu);
  rpc_server_call_finish(gen->call, code, details);
  if (gen->in_map) serve_map_del(g->srv, gen->r->h.seq);
  req_free(gen->r);
  free(gen);
}

/* gen_start: admission (capacity, engine health), the session, and one engine request per choice. */
static void gen_start(serve_grpc_t *g, serve_grpc_gen_t *gen) {
  serve_t *s = g->srv;
  serve_req_t *r = gen->r;
  char msg[256];
  if (engine_loop_failed(s->engine)) {
    gen_end(g, gen, GRPC_STATUS_UNAVAILABLE, "the engine stopped after a fatal error");
    return;
  }
  if (s->n_live + r->h.areq.n_choices > s->capacity) {
    snprintf(msg, sizeof msg,
             "The server is at capacity (%d sequences running or queued, --max-queue %d). Retry later.", s->n_live,
             s->conf->max_queue);
    gen_end(g, gen, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
    return;
  }
  r->h.seq = s->next_seq++;
  if (!gen->request_id[0])
    snprintf(gen->request_id, sizeof gen->request_id, "gen-%llu%06llx", (unsigned long long)r->h.seq,
             (unsigned long long)(s->started & 0xffffff));
  r->done = calloc((size_t)r->h.areq.n_choices, 1);
  r->t_last_s = calloc((size_t)r->h.areq.n_choices, sizeof(double));
  if (!r->done || !r->t_last_s ||
      api_session_new(&r->h.sess, &r->h.areq, &s->ctx, gen->request_id, (int64_t)time(NULL))) {
    gen_end(g, gen, GRPC_STATUS_INTERNAL, "out of memory");
    return;
  }
  serve_map_put(s, r);
  gen->in_map = 1;
  for (int c = 0; c < r->h.areq.n_choices; c++) {
    const api_choice_req_t *ch = &r->h.areq.choices[c];
    uint64_t id = (r->h.seq << SERVE_CHOICE_BITS) | (uint64_t)c;
    if (s->backend.submit(s->backend.self, id, ch->ids, ch->n_ids, &ch->sp) != 0) {
      serve_req_abort_live(r, "error");
      gen_end(g, gen, GRPC_STATUS_INTERNAL, "out of memory");
      return;
    }
    r->n_live++;
    s->n_live++;
  }
}

/* on_wake: new Generate calls, then cancellations, handed over by the gRPC thread. */
static void on_wake(struct ev_loop *loop, ev_async *w, int revents) {
  (void)loop;
  (void)revents;
  serve_grpc_t *g = w->data;
  pthread_mutex_lock(&g->mu);
  serve_grpc_gen_t *todo = g->pending;
  g->pending = g->pending_tail = NULL;
  pthread_mutex_unlock(&g->mu);
  while (todo) {
    serve_grpc_gen_t *next = todo->next_pending;
    gen_start(g, todo);
    todo = next;
  }
  /* collected under the lock, handled outside it: only this thread frees a gen */
  serve_grpc_gen_t *cancelled = NULL;
  pthread_mutex_lock(&g->mu);
  for (serve_grpc_gen_t *gen = g->active; gen; gen = gen->next)
    if (gen->cancel && !gen->cancel_seen) {
      gen->cancel_seen = 1;
      gen->next_cancel = cancelled;
      cancelled = gen;
    }
  pthread_mutex_unlock(&g->mu);
  while (cancelled) {
    serve_grpc_gen_t *next = cancelled->next_cancel;
    log_debug("serve: gRPC client of request %llu cancelled; aborting it", (unsigned long long)cancelled->r->h.seq);
    serve_req_abort_live(cancelled->r, "abort");
    gen_end(g, cancelled, GRPC_STATUS_CANCELLED, "cancelled by the client");
    cancelled = next;
  }
}

/* ---- Generate: handlers on the gRPC thread ---- */

static void on_generate(void *arg, const ProtobufCMessage *msg, rpc_server_call_t *call) {
  serve_grpc_t *g = arg;
  serve_t *s = g->srv;
  const Strata__V1__GenerateRequest *q = (const Strata__V1__GenerateRequest *)msg;
  api_error_t err;
  if (!check_auth(g, call)) return;
  serve_grpc_gen_t *gen = calloc(1, sizeof *gen);
  serve_req_t *r = calloc(1, sizeof *r);
  if (!gen || !r) {
    free(gen);
    free(r);
    rpc_server_call_finish(call, GRPC_STATUS_INTERNAL, "out of memory");
    return;
  }
  gen->call = call;
  gen->r = r;
  r->srv = s;
  r->grpc = gen;
  r->t_start_s = serve_now_s();
  if (q->request_id && q->request_id[0]) {
    if (request_id_ok(q->request_id, &err)) goto fail;
    snprintf(gen->request_id, sizeof gen->request_id, "%s", q->request_id);
  }
  if (parse_generate(s, q, r, &err)) goto fail;
  pthread_mutex_lock(&g->mu);
  if (g->stopping) {
    pthread_mutex_unlock(&g->mu);
    api_error_set(&err, 503, NULL, NULL, "the server is shutting down");
    goto fail;
  }
  gen->next = g->active;
  if (g->active) g->active->prev = gen;
  g->active = gen;
  if (g->pending_tail) g->pending_tail->next_pending = gen;
  else g->pending = gen;
  g->pending_tail = gen;
  pthread_mutex_unlock(&g->mu);
  ev_async_send(s->loop, &g->wake);
  return;
fail:
  finish_error(call, &err);
  req_free(r);
  free(gen);
}

/* on_generate_done: the call ended on the wire before we finished it (client cancel, deadline, or
 * server shutdown): flag it for the loop thread, which aborts the engine request. */
static void on_generate_done(void *arg, rpc_server_call_t *call, int cancelled) {
  serve_grpc_t *g = arg;
  (void)cancelled;
  int found = 0;
  pthread_mutex_lock(&g->mu);
  for (serve_grpc_gen_t *gen = g->active; gen; gen = gen->next)
    if (gen->call == call) {
      gen->cancel = found = 1;
      break;
    }
  pthread_mutex_unlock(&g->mu);
  if (found) ev_async_send(g->srv->loop, &g->wake);
}

/* ---- Generate: engine events (loop thread) ---- */

/* send_delta: one GenerateResponse: TEXT (N bytes), the token behind it, and on the last message the
 * finish reason and usage. Returns rpc_server_call_send's result. */
static int send_delta(serve_grpc_gen_t *gen, int c, const api_event_t *a, const char *text, size_t n,
                      api_finish_t finish) {
  serve_req_t *r = gen->r;
  const api_sampling_t *sp = &r->h.areq.choices[c].sp;
  Strata__V1__GenerateResponse resp = STRATA__V1__GENERATE_RESPONSE__INIT;
  Strata__V1__TokenDelta td = STRATA__V1__TOKEN_DELTA__INIT, *tdp = &td;
  Strata__V1__TopLogprob tops[API_MAX_TOP_LOGPROBS], *topp[API_MAX_TOP_LOGPROBS];
  char top_text[API_MAX_TOP_LOGPROBS][GRPC_MAX_TOKEN_TEXT];
  Strata__V1__Usage usage = STRATA__V1__USAGE__INIT;
  char *copy = strndup(text, n); /* protobuf-c strings are NUL-terminated */
  if (!copy) return STRATA_ENOMEM;
  resp.request_id = gen->request_id;
  resp.text = copy;
  if (a->has_token) {
    td.has_token_id = 1;
    td.token_id = a->token;
    if (sp->logprobs) {
      td.has_logprob = 1;
      td.logprob = a->logprob;
      int n_top = a->n_top < sp->top_logprobs ? a->n_top : sp->top_logprobs;
      for (int k = 0; k < n_top; k++) {
        strata__v1__top_logprob__init(&tops[k]);
        tops[k].has_token_id = tops[k].has_logprob = 1;
        tops[k].token_id = a->top[k].id;
        tops[k].logprob = a->top[k].logprob;
        api_session_token_text(r->h.sess, a->top[k].id, top_text[k], sizeof top_text[k]);
        tops[k].token = top_text[k];
        topp[k] = &tops[k];
      }
      td.n_top_logprobs = (size_t)n_top;
      td.top_logprobs = topp;
    }
    resp.n_tokens = 1;
    resp.tokens = &tdp;
  }
  if (finish) {
    int p, gtok;
    api_session_usage(r->h.sess, &p, &gtok);
    resp.finish_reason = (char *)api_finish_name(finish);
    usage.has_prompt_tokens = usage.has_completion_tokens = usage.has_cached_prompt_tokens = 1;
    usage.prompt_tokens = (uint32_t)p;
    usage.completion_tokens = (uint32_t)gtok;
    usage.cached_prompt_tokens = (uint32_t)gen->n_cached;
    resp.usage = &usage;
  }
  int rc = rpc_server_call_send(gen->call, &resp.base);
  free(copy);
  return rc;
}

void serve_grpc_on_event(serve_req_t *r, int c, const engine_event_t *ev, double now) {
  serve_grpc_gen_t *gen = r->grpc;
  serve_t *s = r->srv;
  serve_grpc_t *g = s->grpc;
  if (r->done[c]) return;
  if (ev->rejected) {
    serve_req_abort_live(r, "error");
    gen_end(g, gen, GRPC_STATUS_INVALID_ARGUMENT, ev->error[0] ? ev->error : "the request cannot be served");
    return;
  }
  if (ev->out.n_cached > gen->n_cached) gen->n_cached = ev->out.n_cached;
  if (ev->out.has_token) {
    if (r->t_last_s[c] == 0) metrics_histogram_observe(s->m.ttft, NULL, now - r->t_start_s);
    else metrics_histogram_observe(s->m.itl, NULL, now - r->t_last_s[c]);
    r->t_last_s[c] = now;
  }
  api_event_t a = serve_to_api_event(&ev->out);
  const char *text;
  size_t n;
  api_finish_t finish;
  int flags = api_session_on_event_text(r->h.sess, c, &a, &text, &n, &finish);
  if (flags < 0) {
    log_error("serve: gRPC request %llu: cannot format its output (%s)", (unsigned long long)r->h.seq,
              strata_strerror(flags));
    serve_req_abort_live(r, "error");
    gen_end(g, gen, GRPC_STATUS_INTERNAL, "cannot format the output (out of memory)");
    return;
  }
  if (flags & API_EV_ABORT) s->backend.abort(s->backend.self, ev->out.id);
  if (flags & API_EV_CHOICE_DONE) {
    const char *reason = (flags & API_EV_ABORT) || finish == API_FINISH_NONE ? "stop" : api_finish_name(finish);
    metrics_counter_add(s->m.success, &reason, 1);
    r->done[c] = 1;
    r->n_live--;
    s->n_live--;
  }
  if ((n || a.has_token || finish) && send_delta(gen, c, &a, text, n, finish) != 0) {
    /* the client is gone (or we are out of memory): stop generating for it */
    serve_req_abort_live(r, "abort");
    gen_end(g, gen, GRPC_STATUS_CANCELLED, "the stream ended");
    return;
  }
  if (api_session_done(r->h.sess)) {
    metrics_histogram_observe(s->m.e2e, NULL, now - r->t_start_s);
    gen_end(g, gen, GRPC_STATUS_OK, NULL);
  }
}

/* ---- Tokenize, ListModels, Health (gRPC thread; immutable state only) ---- */

static void on_tokenize(void *arg, const ProtobufCMessage *msg, rpc_server_call_t *call) {
  serve_grpc_t *g = arg;
  serve_t *s = g->srv;
  const Strata__V1__TokenizeRequest *q = (const Strata__V1__TokenizeRequest *)msg;
  if (!check_auth(g, call)) return;
  if (q->model && strcmp(q->model, s->model_name) != 0) {
    char m[300];
    snprintf(m, sizeof m, "The model `%.200s` does not exist.", q->model);
    rpc_server_call_finish(call, GRPC_STATUS_NOT_FOUND, m);
    return;
  }
  int add_special = q->has_add_special ? q->add_special : 1; /* as `strata tokenize` */
  int flags = add_special ? TOK_PARSE_SPECIAL | (tok_add_bos_default(s->tok) ? TOK_ADD_BOS : 0) : 0;
  const char *text = q->text ? q->text : "";
  int32_t *ids = NULL;
  int n = 0;
  int rc = tok_encode(s->tok, text, strlen(text), flags, &ids, &n);
  if (rc) {
    rpc_server_call_finish(call, rc == STRATA_ENOMEM ? GRPC_STATUS_INTERNAL : GRPC_STATUS_INVALID_ARGUMENT,
                           rc == STRATA_ENOMEM ? "out of memory" : "'text' could not be tokenized");
    return;
  }
  Strata__V1__TokenizeResponse resp = STRATA__V1__TOKENIZE_RESPONSE__INIT;
  resp.n_ids = (size_t)n;
  resp.ids = ids;
  resp.has_max_model_len = 1;
  resp.max_model_len = (uint32_t)s->ctx.max_model_len;
  reply(call, &resp.base);
  free(ids);
}

static void on_list_models(void *arg, const ProtobufCMessage *msg, rpc_server_call_t *call) {
  serve_grpc_t *g = arg;
  (void)msg;
  if (!check_auth(g, call)) return;
  Strata__V1__ModelInfo mi = STRATA__V1__MODEL_INFO__INIT, *mip = &mi;
  mi.id = g->srv->model_name;
  mi.has_max_model_len = 1;
  mi.max_model_len = (uint32_t)g->srv->ctx.max_model_len;
  mi.owned_by = "strata";
  Strata__V1__ListModelsResponse resp = STRATA__V1__LIST_MODELS_RESPONSE__INIT;
  resp.n_models = 1;
  resp.models = &mip;
  reply(call, &resp.base);
}

/* on_health: unauthenticated, like HTTP /health, so that probes need no key. */
static void on_health(void *arg, const ProtobufCMessage *msg, rpc_server_call_t *call) {
  serve_grpc_t *g = arg;
  (void)msg;
  pthread_mutex_lock(&g->mu);
  int stopping = g->stopping;
  pthread_mutex_unlock(&g->mu);
  Strata__V1__HealthResponse resp = STRATA__V1__HEALTH_RESPONSE__INIT;
  resp.has_status = 1;
  if (engine_loop_failed(g->srv->engine)) {
    resp.status = STRATA__V1__HEALTH_RESPONSE__STATUS__NOT_SERVING;
    resp.detail = "the engine stopped after a fatal error";
  } else if (stopping) {
    resp.status = STRATA__V1__HEALTH_RESPONSE__STATUS__DRAINING;
    resp.detail = "shutting down";
  } else {
    resp.status = STRATA__V1__HEALTH_RESPONSE__STATUS__SERVING;
  }
  reply(call, &resp.base);
}

/* ---- start and stop (loop thread) ---- */

int serve_grpc_start(serve_t *s) {
  const serve_conf_t *c = s->conf;
  serve_grpc_t *g = calloc(1, sizeof *g);
  if (!g) return STRATA_ENOMEM;
  g->srv = s;
  pthread_mutex_init(&g->mu, NULL);
  ev_async_init(&g->wake, on_wake);
  g->wake.data = g;
  ev_async_start(s->loop, &g->wake);
  g->methods[0] = (rpc_method_t){.path = GRPC_PATH("Generate"), .request = &strata__v1__generate_request__descriptor,
                                 .stream = on_generate, .done = on_generate_done, .arg = g};
  /* unary methods are registered as streams: they need the call (metadata); one message then OK is
   * a unary response on the wire */
  g->methods[1] = (rpc_method_t){.path = GRPC_PATH("Tokenize"), .request = &strata__v1__tokenize_request__descriptor,
                                 .stream = on_tokenize, .arg = g};
  g->methods[2] = (rpc_method_t){.path = GRPC_PATH("ListModels"),
                                 .request = &strata__v1__list_models_request__descriptor, .stream = on_list_models,
                                 .arg = g};
  g->methods[3] = (rpc_method_t){.path = GRPC_PATH("Health"), .request = &strata__v1__health_request__descriptor,
                                 .stream = on_health, .arg = g};
  const char *host = c->host ? c->host : "127.0.0.1";
  char addr[300];
  snprintf(addr, sizeof addr, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, c->grpc_port);
  rpc_server_opts_t o = {.addr = addr, .cert_file = c->tls_cert, .key_file = c->tls_key,
                         .max_recv_bytes = c->max_body_bytes > INT_MAX ? INT_MAX : (int)c->max_body_bytes};
  s->grpc = g;
  rpc_init();
  int rc = rpc_server_new(&o, g->methods, 4, &g->rpc);
  if (rc) {
    log_error("serve: cannot start the gRPC server on %s (%s); pick another --grpc-port, or 0 to disable gRPC",
              addr, strata_strerror(rc));
    serve_grpc_stop(s);
    return rc;
  }
#ifndef RPC_HAVE_CALL_METADATA
  if (c->api_keys.n)
    log_warn("serve: this build cannot read gRPC metadata, so with --api-key every gRPC call but Health is refused");
#endif
  log_info("serve: gRPC strata.v1.Inference on %s://%s (Generate, Tokenize, ListModels, Health)",
           c->tls_cert ? "grpcs" : "grpc", addr);
  printf("strata serve: grpc %s:%d\n", host, rpc_server_port(g->rpc));
  fflush(stdout);
  return 0;
}

void serve_grpc_stop(serve_t *s) {
  serve_grpc_t *g = s->grpc;
  if (!g) return;
  /* from now on the gRPC thread refuses new calls itself; then end ours here, because
   * rpc_server_free waits for every call to be finished and only this thread finishes ours */
  pthread_mutex_lock(&g->mu);
  g->stopping = 1;
  g->pending = g->pending_tail = NULL; /* still on the active list: ended below */
  pthread_mutex_unlock(&g->mu);
  for (;;) {
    pthread_mutex_lock(&g->mu);
    serve_grpc_gen_t *gen = g->active;
    pthread_mutex_unlock(&g->mu);
    if (!gen) break;
    if (gen->in_map) serve_req_abort_live(gen->r, "abort");
    gen_end(g, gen, GRPC_STATUS_UNAVAILABLE, "the server is shutting down");
  }
  if (g->rpc) rpc_server_free(g->rpc);
  rpc_shutdown();
  ev_async_stop(s->loop, &g->wake);
  pthread_mutex_destroy(&g->mu);
  free(g);
  s->grpc = NULL;
}
