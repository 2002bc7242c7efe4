/* serve_http.c: the HTTP handlers of `strata serve`: routing, auth, generation requests (streamed
 * with backpressure, or whole), cancellation on client disconnect, and routing of engine events. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/status.h"
#include "worker/api/serve_int.h"

#define SSE_HEADERS "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"

/* respond_error: E as OpenAI's error JSON with its status; ends REQ. */
static void respond_error(http_request_t *req, const api_error_t *e) {
  char *js = api_error_json(e);
  if (e->status == 401)
    http_respond(req, 401, "application/json", "WWW-Authenticate: Bearer\r\n", js ? js : "{}", js ? strlen(js) : 2);
  else
    http_respond_json(req, e->status, js ? js : "{\"error\":{\"message\":\"out of memory\"}}");
  free(js);
}

static void respond_simple_error(http_request_t *req, int status, const char *type, const char *msg) {
  api_error_t e;
  api_error_set(&e, status, type, NULL, "%s", msg);
  respond_error(req, &e);
}

/* ---- request lifetime ---- */

static void req_free(serve_req_t *r) {
  serve_map_del(r->srv, r->seq);
  api_session_free(r->sess);
  api_request_free(&r->areq);
  free(r->out);
  free(r->done);
  free(r->t_last_s);
  free(r);
}

/* abort_live: cancels every choice still running in the engine (their blocks are freed there). */
static void abort_live(serve_req_t *r, const char *reason) {
  for (int c = 0; c < r->areq.n_choices; c++) {
    if (r->done[c]) continue;
    r->done[c] = 1;
    r->srv->backend.abort(r->srv->backend.self, (r->seq << SERVE_CHOICE_BITS) | (uint64_t)c);
    metrics_counter_add(r->srv->m.success, &reason, 1);
  }
  r->srv->n_live -= r->n_live;
  r->n_live = 0;
}

static void on_close(http_request_t *req, void *data) {
  serve_req_t *r = data;
  log_debug("serve: client of request %llu left; aborting it", (unsigned long long)r->seq);
  abort_live(r, "abort");
  req_free(r);
}

/* flush: hands buffered SSE bytes to the connection unless it asked us to pause. */
static void flush(serve_req_t *r) {
  if (r->paused || !r->out_len || !r->http) return;
  int rc = http_stream_write(r->http, r->out, r->out_len);
  r->out_len = 0;
  if (rc == STRATA_EAGAIN) r->paused = 1; /* queued; hold further output until on_drain */
  /* STRATA_ECLOSED: the close callback follows and frees R */
}

/* finish: the session is complete: send the whole response or end the stream. */
static void finish(serve_req_t *r) {
  serve_t *s = r->srv;
  metrics_histogram_observe(s->m.e2e, NULL, serve_now_s() - r->t_start_s);
  if (!r->areq.stream) {
    char *js = api_session_final_json(r->sess);
    if (js) http_respond_json(r->http, 200, js);
    else respond_simple_error(r->http, 500, "internal_error", "out of memory");
    free(js);
    r->http = NULL;
    req_free(r);
    return;
  }
  if (api_session_stream_tail(r->sess, &r->out, &r->out_len, &r->out_cap) == 0) flush(r);
  r->finished = 1;
  if (r->paused) return; /* on_drain ends it */
  http_stream_end(r->http);
  r->http = NULL;
  req_free(r);
}

static void on_drain(http_request_t *req, void *data) {
  serve_req_t *r = data;
  r->paused = 0;
  flush(r);
  if (r->finished && !r->paused) {
    http_stream_end(r->http);
    r->http = NULL;
    req_free(r);
  }
}

/* begin_stream: the SSE response starts at the first engine event, so that an engine refusal can
 * still be a plain 400. */
static int begin_stream(serve_req_t *r) {
  if (r->stream_begun) return 0;
  r->stream_begun = 1;
  int rc = http_stream_begin(r->http, 200, "text/event-stream", SSE_HEADERS);
  if (rc) return rc;
  return api_session_stream_head(r->sess, &r->out, &r->out_len, &r->out_cap);
}

/* on_rejected: the engine refused choice C: the whole request fails. */
static void on_rejected(serve_req_t *r, const char *why) {
  api_error_t e;
  api_error_set(&e, 400, NULL, NULL, "%s", why[0] ? why : "the request cannot be served");
  abort_live(r, "error");
  if (!r->stream_begun) {
    respond_error(r->http, &e);
  } else {
    char *js = api_error_json(&e);
    if (js) {
      http_stream_write(r->http, "data: ", 6);
      http_stream_write(r->http, js, strlen(js));
      http_stream_write(r->http, "\n\ndata: [DONE]\n\n", 16);
    }
    free(js);
    http_stream_end(r->http);
  }
  r->http = NULL;
  req_free(r);
}

static api_event_t to_api_event(const engine_out_t *o) {
  api_event_t a = {.has_token = o->has_token, .token = o->token, .logprob = o->sample.logprob,
                   .finished = o->finished, .n_prompt = o->n_prompt, .n_generated = o->n_generated};
  a.n_top = o->sample.n_top < API_MAX_TOP_LOGPROBS ? o->sample.n_top : API_MAX_TOP_LOGPROBS;
  for (int k = 0; k < a.n_top; k++) {
    a.top[k].id = o->sample.top[k].id;
    a.top[k].logprob = o->sample.top[k].logprob;
  }
  static const api_finish_t map[] = {API_FINISH_NONE, API_FINISH_STOP, API_FINISH_LENGTH, API_FINISH_ABORT,
                                     API_FINISH_ERROR};
  a.finish = o->finish >= FINISH_NONE && o->finish <= FINISH_ERROR ? map[o->finish] : API_FINISH_ERROR;
  return a;
}

/* on_event: one engine event for request R, choice C. Returns 1 when R was freed. */
static int on_event(serve_req_t *r, int c, const engine_event_t *ev, double now) {
  serve_t *s = r->srv;
  if (r->done[c]) return 0;
  if (ev->rejected) {
    on_rejected(r, ev->error);
    return 1;
  }
  if (r->areq.stream && begin_stream(r) != 0) return 0; /* closed: on_close frees it */
  if (ev->out.has_token) {
    if (r->t_last_s[c] == 0) metrics_histogram_observe(s->m.ttft, NULL, now - r->t_start_s);
    else metrics_histogram_observe(s->m.itl, NULL, now - r->t_last_s[c]);
    r->t_last_s[c] = now;
  }
  api_event_t a = to_api_event(&ev->out);
  int flags = api_session_on_event(r->sess, c, &a, &r->out, &r->out_len, &r->out_cap);
  if (flags < 0) {
    log_error("serve: request %llu: cannot format its output (%s)", (unsigned long long)r->seq, strata_strerror(flags));
    flags = API_EV_CHOICE_DONE | API_EV_ABORT;
  }
  if (flags & API_EV_ABORT) s->backend.abort(s->backend.self, ev->out.id);
  if (flags & API_EV_CHOICE_DONE) {
    const char *reason = (flags & API_EV_ABORT) || a.finish == API_FINISH_NONE ? "stop" : api_finish_name(a.finish);
    metrics_counter_add(s->m.success, &reason, 1);
    r->done[c] = 1;
    r->n_live--;
    s->n_live--;
  }
  if (r->areq.stream) flush(r);
  if (api_session_done(r->sess)) {
    finish(r);
    return 1;
  }
  return 0;
}

void serve_on_wake(struct ev_loop *loop, ev_async *w, int revents) {
  serve_t *s = w->data;
  engine_event_t evs[128];
  int n;
  while ((n = engine_loop_poll(s->engine, evs, 128)) > 0) {
    double now = serve_now_s();
    for (int i = 0; i < n; i++) {
      uint64_t seq = evs[i].out.id >> SERVE_CHOICE_BITS;
      int c = (int)(evs[i].out.id & (SERVE_MAX_CHOICES - 1));
      serve_req_t *r = serve_map_get(s, seq);
      if (r && c < r->areq.n_choices) { /* else: aborted earlier */
        if (r->grpc) serve_grpc_on_event(r, c, &evs[i], now);
        else on_event(r, c, &evs[i], now);
      }
    }
  }
}

/* ---- generation requests ---- */

static void to_sampling(const api_sampling_t *a, sampling_params_t *sp) {
  sampling_params_default(sp);
  sp->temperature = a->temperature;
  sp->top_k = a->top_k;
  sp->top_p = a->top_p;
  sp->min_p = a->min_p;
  sp->repetition_penalty = a->repetition_penalty;
  sp->presence_penalty = a->presence_penalty;
  sp->frequency_penalty = a->frequency_penalty;
  sp->seed = a->seed;
  sp->logprobs = a->logprobs;
  sp->top_logprobs = a->top_logprobs;
  sp->max_tokens = a->max_tokens;
  sp->min_tokens = a->min_tokens;
  sp->ignore_eos = a->ignore_eos;
  sp->n_stop_ids = a->n_stop_ids < SAMPLE_MAX_STOP_IDS ? a->n_stop_ids : SAMPLE_MAX_STOP_IDS;
  memcpy(sp->stop_ids, a->stop_ids, sizeof(int32_t) * (size_t)sp->n_stop_ids);
}

static int backend_submit(void *self, uint64_t id, const int32_t *ids, int n_ids, const api_sampling_t *a) {
  serve_t *s = self;
  sampling_params_t sp;
  to_sampling(a, &sp);
  return engine_loop_submit(s->engine, id, ids, n_ids, &sp);
}

static void backend_abort(void *self, uint64_t id) {
  serve_t *s = self;
  engine_loop_abort(s->engine, id);
}

void serve_backend_init(serve_t *s) { s->backend = (api_backend_t){.self = s, .submit = backend_submit, .abort = backend_abort}; }

/* submit: one engine request per choice. The parameters were validated by the API layer; the
 * sampler's own check runs too so that the two never disagree silently. */
static int submit(serve_req_t *r, api_error_t *err) {
  serve_t *s = r->srv;
  for (int c = 0; c < r->areq.n_choices; c++) {
    sampling_params_t sp;
    char msg[256];
    to_sampling(&r->areq.choices[c].sp, &sp);
    if (sampling_params_validate(&sp, tok_vocab_size(s->tok), msg, sizeof msg))
      return api_error_set(err, 400, NULL, NULL, "%s", msg);
  }
  for (int c = 0; c < r->areq.n_choices; c++) {
    const api_choice_req_t *ch = &r->areq.choices[c];
    uint64_t id = (r->seq << SERVE_CHOICE_BITS) | (uint64_t)c;
    if (s->backend.submit(s->backend.self, id, ch->ids, ch->n_ids, &ch->sp) != 0) {
      abort_live(r, "error");
      return api_error_set(err, 500, "internal_error", NULL, "out of memory");
    }
    r->n_live++;
    s->n_live++;
  }
  return 0;
}

static void handle_generate(serve_t *s, http_request_t *req, api_kind_t kind) {
  size_t len;
  const char *body = http_request_body(req, &len);
  api_error_t err;
  serve_req_t *r = calloc(1, sizeof *r);
  if (!r) {
    respond_simple_error(req, 500, "internal_error", "out of memory");
    return;
  }
  r->srv = s;
  r->http = req;
  r->t_start_s = serve_now_s();
  if (api_request_parse(&r->areq, &s->ctx, kind, body, len, &err) != 0) goto fail;
  if (s->n_live + r->areq.n_choices > s->capacity) {
    api_error_set(&err, 429, "rate_limit_error", NULL,
                  "The server is at capacity (%d sequences running or queued, --max-queue %d). Retry later.",
                  s->n_live, s->conf->max_queue);
    goto fail;
  }
  r->seq = s->next_seq++;
  char id[64];
  snprintf(id, sizeof id, "%s-%llu%06llx", kind == API_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)r->seq,
           (unsigned long long)(s->started & 0xffffff));
  r->done = calloc((size_t)r->areq.n_choices, 1);
  r->t_last_s = calloc((size_t)r->areq.n_choices, sizeof(double));
  if (!r->done || !r->t_last_s || api_session_new(&r->sess, &r->areq, &s->ctx, id, (int64_t)time(NULL)) != 0) {
    api_error_set(&err, 500, "internal_error", NULL, "out of memory");
    goto fail;
  }
  if (submit(r, &err) != 0) goto fail;
  serve_map_put(s, r);
  http_request_on_close(req, on_close, r);
  http_request_on_drain(req, on_drain, r);
  return;
fail:
  respond_error(req, &err);
  r->http = NULL;
  api_session_free(r->sess);
  api_request_free(&r->areq);
  free(r->done);
  free(r->t_last_s);
  free(r);
}

/* ---- routing ---- */

/* authorized: when keys are configured, the request must carry one as a Bearer token. Each key is
 * compared in constant time (http_secure_equal), and all of them are always compared. */
static int authorized(serve_t *s, http_request_t *req) {
  const cfg_strlist_t *keys = &s->conf->api_keys;
  if (keys->n == 0) return 1;
  const char *token = http_request_bearer(req);
  int ok = 0;
  for (int i = 0; i < keys->n; i++) ok |= http_secure_equal(token ? token : "", keys->items[i]);
  return ok;
}

void serve_on_request(http_request_t *req, void *data) {
  serve_t *s = data;
  const char *path = http_request_path(req), *method = http_request_method(req);
  int is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0, is_post = strcmp(method, "POST") == 0;
  if (strcmp(path, "/health") == 0 && is_get) {
    if (engine_loop_failed(s->engine))
      respond_simple_error(req, 503, "service_unavailable", "the engine stopped after a fatal error");
    else
      http_respond(req, 200, "text/plain", NULL, "", 0);
    return;
  }
  if (strcmp(path, "/metrics") == 0 && is_get) {
    size_t len;
    char *text = serve_metrics_render(s, &len);
    if (text) http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, text, len);
    else respond_simple_error(req, 500, "internal_error", "out of memory");
    free(text);
    return;
  }
  int known = strcmp(path, "/v1/models") == 0 || strcmp(path, "/v1/completions") == 0 ||
              strcmp(path, "/v1/chat/completions") == 0;
  if (!known) {
    char msg[300];
    snprintf(msg, sizeof msg, "No route for %s %.200s", method, path);
    respond_simple_error(req, 404, "not_found_error", msg);
    return;
  }
  if (!authorized(s, req)) {
    respond_simple_error(req, 401, "authentication_error",
                         "Incorrect or missing API key: send it as 'Authorization: Bearer <key>'.");
    return;
  }
  if (strcmp(path, "/v1/models") == 0) {
    if (!is_get) {
      respond_simple_error(req, 405, "invalid_request_error", "Use GET on /v1/models.");
      return;
    }
    char *js = api_models_json(s->model_name, s->ctx.max_model_len, s->started);
    if (js) http_respond_json(req, 200, js);
    else respond_simple_error(req, 500, "internal_error", "out of memory");
    free(js);
    return;
  }
  if (!is_post) {
    respond_simple_error(req, 405, "invalid_request_error", "Use POST on this endpoint.");
    return;
  }
  handle_generate(s, req, strcmp(path, "/v1/completions") == 0 ? API_COMPLETIONS : API_CHAT);
}
