/* api_grpc.c: the gRPC strata.v1.Inference front shared by `strata serve` and the coordinator (see
 * api_grpc.h): GenerateRequest -> common/api's parser, the hand-over to the loop thread, deltas,
 * cancellation, Tokenize, ListModels, Health and API keys. */
#include "common/apigrpc/api_grpc.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "common/http/http.h"
#include "common/log.h"
#include "common/rpc/rpc.h"
#include "common/status.h"
#include "strata/v1/inference.pb-c.h"

#define GRPC_PATH(m) "/strata.v1.Inference/" m
#define GRPC_MAX_REQUEST_ID 128
#define GRPC_MAX_TOKEN_TEXT 256
#define GRPC_N_METHODS 4

/* Built on the gRPC thread; from the moment it is queued the loop thread owns it. It stays on the
 * active list (under mu) until its status is sent, so that on_generate_done can find it by call and
 * flag a cancellation. */
struct api_grpc_call {
  api_grpc_t *g;
  rpc_server_call_t *call;
  api_http_req_t *r;                      /* the server's request (areq parsed on the gRPC thread) */
  char request_id[GRPC_MAX_REQUEST_ID + 1];
  int cancel, cancel_seen;                /* cancel: under mu; cancel_seen: loop thread */
  struct api_grpc_call *prev, *next;      /* active list, under mu */
  struct api_grpc_call *next_pending;     /* queued for the loop thread, under mu */
  struct api_grpc_call *next_cancel;      /* loop thread scratch */
};

struct api_grpc {
  api_grpc_config_t cfg;
  rpc_server_t *rpc;
  rpc_method_t methods[GRPC_N_METHODS];
  ev_async wake;
  int rpc_inited;
  pthread_mutex_t mu;
  /* Guarded by mu: */
  api_grpc_call_t *active;
  api_grpc_call_t *pending, *pending_tail;
  int stopping;
};

/* ---- errors ---- */

/* status_of: the gRPC code for an HTTP status of common/api (docs/api.md's table). */
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
static int authorized(const api_grpc_t *g, rpc_server_call_t *call) {
  const cfg_strlist_t *keys = g->cfg.api_keys;
  if (!keys || keys->n == 0) return 1;
  char value[1024];
  if (rpc_server_call_metadata(call, "authorization", value, sizeof value) < 0) return 0;
  const char *token = value;
  if (strncasecmp(token, "bearer", 6) != 0 || !isspace((unsigned char)token[6])) return 0;
  for (token += 6; isspace((unsigned char)*token);) token++;
  int ok = 0;
  for (int i = 0; i < keys->n; i++) ok |= http_secure_equal(token, keys->items[i]);
  return ok;
}

static int check_auth(const api_grpc_t *g, rpc_server_call_t *call) {
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

/* parse_generate: Q validated and tokenized into *AREQ, through the same parser as HTTP. Returns 0,
 * or STRATA_EINVAL / STRATA_ENOMEM with ERR filled. Runs on the gRPC thread (ctx is immutable). */
static int parse_generate(const api_ctx_t *ctx, const Strata__V1__GenerateRequest *q, api_request_t *areq,
                          api_error_t *err) {
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
  rc = api_request_parse(areq, ctx, kind, js, strlen(js), err);
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

/* req_free: the front's fields of R, then the server's. */
static void req_free(api_grpc_t *g, api_http_req_t *r) {
  api_session_free(r->sess);
  api_request_free(&r->areq);
  r->sess = NULL;
  g->cfg.ops->free_req(g->cfg.self, r);
}

/* active_unlink: caller holds mu. */
static void active_unlink(api_grpc_t *g, api_grpc_call_t *c) {
  if (c->prev) c->prev->next = c->next;
  else if (g->active == c) g->active = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
}

/* call_end: sends the final status and frees C and its request. C leaves the active list first:
 * after finish the call may be gone, and on_generate_done must not find it. */
static void call_end(api_grpc_call_t *c, grpc_status_code code, const char *details) {
  api_grpc_t *g = c->g;
  pthread_mutex_lock(&g->mu);
  active_unlink(g, c);
  pthread_mutex_unlock(&g->mu);
  rpc_server_call_finish(c->call, code, details);
  req_free(g, c->r);
  free(c);
}

/* call_start: health, admission, the request id and session, then the server runs the choices. */
static void call_start(api_grpc_t *g, api_grpc_call_t *c) {
  const api_grpc_ops_t *ops = g->cfg.ops;
  api_http_req_t *r = c->r;
  api_error_t err;
  const char *why = ops->health ? ops->health(g->cfg.self) : NULL;
  if (why) {
    call_end(c, GRPC_STATUS_UNAVAILABLE, why);
    return;
  }
  if (ops->admit && ops->admit(g->cfg.self, r, &err) != 0) goto fail;
  r->seq = (*g->cfg.next_seq)++;
  if (!c->request_id[0])
    snprintf(c->request_id, sizeof c->request_id, "gen-%llu%06llx", (unsigned long long)r->seq,
             (unsigned long long)(*g->cfg.started & 0xffffff));
  if (api_session_new(&r->sess, &r->areq, g->cfg.ctx, c->request_id, (int64_t)time(NULL))) {
    api_error_set(&err, 500, "internal_error", NULL, "out of memory");
    goto fail;
  }
  if (ops->start(g->cfg.self, r, c, &err) != 0) goto fail;
  r->started = 1;
  return;
fail:
  call_end(c, status_of(err.status), err.message);
}

/* on_wake: new Generate calls, then cancellations, handed over by the gRPC thread. */
static void on_wake(struct ev_loop *loop, ev_async *w, int revents) {
  (void)loop;
  (void)revents;
  api_grpc_t *g = w->data;
  pthread_mutex_lock(&g->mu);
  api_grpc_call_t *todo = g->pending;
  g->pending = g->pending_tail = NULL;
  pthread_mutex_unlock(&g->mu);
  while (todo) {
    api_grpc_call_t *next = todo->next_pending;
    call_start(g, todo);
    todo = next;
  }
  /* collected under the lock, handled outside it: only this thread frees a call */
  api_grpc_call_t *cancelled = NULL;
  pthread_mutex_lock(&g->mu);
  for (api_grpc_call_t *c = g->active; c; c = c->next)
    if (c->cancel && !c->cancel_seen) {
      c->cancel_seen = 1;
      c->next_cancel = cancelled;
      cancelled = c;
    }
  pthread_mutex_unlock(&g->mu);
  while (cancelled) {
    api_grpc_call_t *next = cancelled->next_cancel;
    log_debug("%s: gRPC client of request %llu cancelled; aborting it", g->cfg.name,
              (unsigned long long)cancelled->r->seq);
    g->cfg.ops->abort_live(g->cfg.self, cancelled->r, "abort");
    call_end(cancelled, GRPC_STATUS_CANCELLED, "cancelled by the client");
    cancelled = next;
  }
}

/* ---- Generate: handlers on the gRPC thread ---- */

static void on_generate(void *arg, const ProtobufCMessage *msg, rpc_server_call_t *call) {
  api_grpc_t *g = arg;
  const Strata__V1__GenerateRequest *q = (const Strata__V1__GenerateRequest *)msg;
  api_error_t err;
  if (!check_auth(g, call)) return;
  api_grpc_call_t *c = calloc(1, sizeof *c);
  api_http_req_t *r = c ? g->cfg.ops->new_req(g->cfg.self) : NULL;
  if (!r) {
    free(c);
    rpc_server_call_finish(call, GRPC_STATUS_INTERNAL, "out of memory");
    return;
  }
  c->g = g;
  c->call = call;
  c->r = r;
  if (q->request_id && q->request_id[0]) {
    if (request_id_ok(q->request_id, &err)) goto fail;
    snprintf(c->request_id, sizeof c->request_id, "%s", q->request_id);
  }
  if (parse_generate(g->cfg.ctx, q, &r->areq, &err)) goto fail;
  pthread_mutex_lock(&g->mu);
  if (g->stopping) {
    pthread_mutex_unlock(&g->mu);
    api_error_set(&err, 503, NULL, NULL, "the server is shutting down");
    goto fail;
  }
  c->next = g->active;
  if (g->active) g->active->prev = c;
  g->active = c;
  if (g->pending_tail) g->pending_tail->next_pending = c;
  else g->pending = c;
  g->pending_tail = c;
  pthread_mutex_unlock(&g->mu);
  ev_async_send(g->cfg.loop, &g->wake);
  return;
fail:
  rpc_server_call_finish(call, status_of(err.status), err.message);
  req_free(g, r);
  free(c);
}

/* on_generate_done: the call ended on the wire before we finished it (client cancel, deadline, or
 * server shutdown): flag it for the loop thread, which aborts the request's choices. */
static void on_generate_done(void *arg, rpc_server_call_t *call, int cancelled) {
  api_grpc_t *g = arg;
  (void)cancelled;
  int found = 0;
  pthread_mutex_lock(&g->mu);
  for (api_grpc_call_t *c = g->active; c; c = c->next)
    if (c->call == call) {
      c->cancel = found = 1;
      break;
    }
  pthread_mutex_unlock(&g->mu);
  if (found) ev_async_send(g->cfg.loop, &g->wake);
}

/* ---- Generate: events (loop thread) ---- */

/* send_delta: one GenerateResponse: TEXT (N bytes), the token behind it, and on the last message the
 * finish reason and usage. Returns rpc_server_call_send's result. */
static int send_delta(api_grpc_call_t *c, int choice, const api_event_t *a, const char *text, size_t n,
                      api_finish_t finish) {
  api_http_req_t *r = c->r;
  const api_sampling_t *sp = &r->areq.choices[choice].sp;
  Strata__V1__GenerateResponse resp = STRATA__V1__GENERATE_RESPONSE__INIT;
  Strata__V1__TokenDelta td = STRATA__V1__TOKEN_DELTA__INIT, *tdp = &td;
  Strata__V1__TopLogprob tops[API_MAX_TOP_LOGPROBS], *topp[API_MAX_TOP_LOGPROBS];
  char top_text[API_MAX_TOP_LOGPROBS][GRPC_MAX_TOKEN_TEXT];
  Strata__V1__Usage usage = STRATA__V1__USAGE__INIT;
  char *copy = strndup(text, n); /* protobuf-c strings are NUL-terminated */
  if (!copy) return STRATA_ENOMEM;
  resp.request_id = c->request_id;
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
        api_session_token_text(r->sess, a->top[k].id, top_text[k], sizeof top_text[k]);
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
    api_session_usage(r->sess, &p, &gtok);
    resp.finish_reason = (char *)api_finish_name(finish);
    usage.has_prompt_tokens = usage.has_completion_tokens = usage.has_cached_prompt_tokens = 1;
    usage.prompt_tokens = (uint32_t)p;
    usage.completion_tokens = (uint32_t)gtok;
    usage.cached_prompt_tokens = (uint32_t)api_session_cached(r->sess);
    resp.usage = &usage;
  }
  int rc = rpc_server_call_send(c->call, &resp.base);
  free(copy);
  return rc;
}

int api_grpc_on_event(api_grpc_call_t *c, int choice, const api_event_t *ev) {
  api_grpc_t *g = c->g;
  const api_grpc_ops_t *ops = g->cfg.ops;
  api_http_req_t *r = c->r;
  const char *text;
  size_t n;
  api_finish_t finish;
  int flags = api_session_on_event_text(r->sess, choice, ev, &text, &n, &finish);
  if (flags < 0) {
    log_error("%s: gRPC request %llu: cannot format its output (%s)", g->cfg.name, (unsigned long long)r->seq,
              strata_strerror(flags));
    ops->abort_live(g->cfg.self, r, "error");
    call_end(c, GRPC_STATUS_INTERNAL, "cannot format the output (out of memory)");
    return 1;
  }
  if (flags) ops->on_flags(g->cfg.self, r, choice, ev, flags);
  if ((n || ev->has_token || finish) && send_delta(c, choice, ev, text, n, finish) != 0) {
    /* the client is gone (or we are out of memory): stop generating for it */
    ops->abort_live(g->cfg.self, r, "abort");
    call_end(c, GRPC_STATUS_CANCELLED, "the stream ended");
    return 1;
  }
  if (!api_session_done(r->sess)) return 0;
  if (ops->on_finish) ops->on_finish(g->cfg.self, r);
  call_end(c, GRPC_STATUS_OK, NULL);
  return 1;
}

void api_grpc_fail(api_grpc_call_t *c, const api_error_t *e) {
  c->g->cfg.ops->abort_live(c->g->cfg.self, c->r, "error");
  call_end(c, status_of(e->status), e->message);
}

/* ---- Tokenize, ListModels, Health (gRPC thread; immutable state only) ---- */

static void on_tokenize(void *arg, const ProtobufCMessage *msg, rpc_server_call_t *call) {
  api_grpc_t *g = arg;
  const api_ctx_t *ctx = g->cfg.ctx;
  const Strata__V1__TokenizeRequest *q = (const Strata__V1__TokenizeRequest *)msg;
  if (!check_auth(g, call)) return;
  if (q->model && strcmp(q->model, g->cfg.model_name) != 0) {
    char m[300];
    snprintf(m, sizeof m, "The model `%.200s` does not exist.", q->model);
    rpc_server_call_finish(call, GRPC_STATUS_NOT_FOUND, m);
    return;
  }
  int add_special = q->has_add_special ? q->add_special : 1; /* as `strata tokenize` */
  int flags = add_special ? TOK_PARSE_SPECIAL | (tok_add_bos_default(ctx->tok) ? TOK_ADD_BOS : 0) : 0;
  const char *text = q->text ? q->text : "";
  int32_t *ids = NULL;
  int n = 0;
  int rc = tok_encode(ctx->tok, text, strlen(text), flags, &ids, &n);
  if (rc) {
    rpc_server_call_finish(call, rc == STRATA_ENOMEM ? GRPC_STATUS_INTERNAL : GRPC_STATUS_INVALID_ARGUMENT,
                           rc == STRATA_ENOMEM ? "out of memory" : "'text' could not be tokenized");
    return;
  }
  Strata__V1__TokenizeResponse resp = STRATA__V1__TOKENIZE_RESPONSE__INIT;
  resp.n_ids = (size_t)n;
  resp.ids = ids;
  resp.has_max_model_len = 1;
  resp.max_model_len = (uint32_t)ctx->max_model_len;
  reply(call, &resp.base);
  free(ids);
}

static void on_list_models(void *arg, const ProtobufCMessage *msg, rpc_server_call_t *call) {
  api_grpc_t *g = arg;
  (void)msg;
  if (!check_auth(g, call)) return;
  Strata__V1__ModelInfo mi = STRATA__V1__MODEL_INFO__INIT, *mip = &mi;
  mi.id = (char *)g->cfg.model_name;
  mi.has_max_model_len = 1;
  mi.max_model_len = (uint32_t)g->cfg.ctx->max_model_len;
  mi.owned_by = "strata";
  Strata__V1__ListModelsResponse resp = STRATA__V1__LIST_MODELS_RESPONSE__INIT;
  resp.n_models = 1;
  resp.models = &mip;
  reply(call, &resp.base);
}

/* on_health: unauthenticated, like HTTP /health, so that probes need no key. */
static void on_health(void *arg, const ProtobufCMessage *msg, rpc_server_call_t *call) {
  api_grpc_t *g = arg;
  (void)msg;
  pthread_mutex_lock(&g->mu);
  int stopping = g->stopping;
  pthread_mutex_unlock(&g->mu);
  const char *why = g->cfg.ops->health ? g->cfg.ops->health(g->cfg.self) : NULL;
  Strata__V1__HealthResponse resp = STRATA__V1__HEALTH_RESPONSE__INIT;
  resp.has_status = 1;
  if (why) {
    resp.status = STRATA__V1__HEALTH_RESPONSE__STATUS__NOT_SERVING;
    resp.detail = (char *)why;
  } else if (stopping) {
    resp.status = STRATA__V1__HEALTH_RESPONSE__STATUS__DRAINING;
    resp.detail = "shutting down";
  } else {
    resp.status = STRATA__V1__HEALTH_RESPONSE__STATUS__SERVING;
  }
  reply(call, &resp.base);
}

/* ---- start and stop (loop thread) ---- */

static void set_methods(api_grpc_t *g) {
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
}

int api_grpc_new(const api_grpc_config_t *cfg, api_grpc_t **out) {
  *out = NULL;
  if ((cfg->tls_cert != NULL) != (cfg->tls_key != NULL)) {
    log_error("%s: --tls-cert and --tls-key go together (give both for TLS, or neither)", cfg->name);
    return STRATA_EINVAL;
  }
  api_grpc_t *g = calloc(1, sizeof *g);
  if (!g) return STRATA_ENOMEM;
  g->cfg = *cfg;
  pthread_mutex_init(&g->mu, NULL);
  ev_async_init(&g->wake, on_wake);
  g->wake.data = g;
  ev_async_start(cfg->loop, &g->wake);
  set_methods(g);
  const char *host = cfg->host ? cfg->host : "127.0.0.1";
  char addr[300];
  snprintf(addr, sizeof addr, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, cfg->port);
  rpc_server_opts_t o = {.addr = addr, .cert_file = cfg->tls_cert, .key_file = cfg->tls_key,
                         .max_recv_bytes = cfg->max_recv_bytes};
  rpc_init();
  g->rpc_inited = 1;
  int rc = rpc_server_new(&o, g->methods, GRPC_N_METHODS, &g->rpc);
  if (rc) {
    log_error("%s: cannot serve gRPC strata.v1.Inference on %s (%s): is the port taken (pick another %s), or are "
              "the TLS files unreadable?",
              cfg->name, addr, strata_strerror(rc), cfg->port_flag ? cfg->port_flag : "port");
    api_grpc_free(g);
    return rc;
  }
  log_info("%s: gRPC strata.v1.Inference on %s://%s (Generate, Tokenize, ListModels, Health%s)", cfg->name,
           cfg->tls_cert ? "grpcs" : "grpc", addr, cfg->api_keys && cfg->api_keys->n ? "; API keys required" : "");
  *out = g;
  return 0;
}

int api_grpc_port(const api_grpc_t *g) { return rpc_server_port(g->rpc); }

void api_grpc_free(api_grpc_t *g) {
  if (!g) return;
  /* from now on the gRPC thread refuses new calls itself; then end ours here, because
   * rpc_server_free waits for every call to be finished and only this thread finishes ours */
  pthread_mutex_lock(&g->mu);
  g->stopping = 1;
  g->pending = g->pending_tail = NULL; /* still on the active list: ended below */
  pthread_mutex_unlock(&g->mu);
  for (;;) {
    pthread_mutex_lock(&g->mu);
    api_grpc_call_t *c = g->active;
    pthread_mutex_unlock(&g->mu);
    if (!c) break;
    if (c->r->started) g->cfg.ops->abort_live(g->cfg.self, c->r, "abort");
    call_end(c, GRPC_STATUS_UNAVAILABLE, "the server is shutting down");
  }
  if (g->rpc) rpc_server_free(g->rpc);
  if (g->rpc_inited) rpc_shutdown();
  ev_async_stop(g->cfg.loop, &g->wake);
  pthread_mutex_destroy(&g->mu);
  free(g);
}
