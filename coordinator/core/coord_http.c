/* coord_http.c: the coordinator's HTTP front: /v1/completions and /v1/chat/completions through
 * common/api with the router as the engine (streamed with backpressure, or whole), /v1/models,
 * /health and /metrics (the coordinator's own families, per-worker gauges and the autoscaler's
 * decisions). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/core/coord_int.h"

#define SSE_HEADERS "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"

static void respond_error(http_request_t *req, const api_error_t *e) {
  char *js = api_error_json(e);
  http_respond_json(req, e->status, js ? js : "{\"error\":{\"message\":\"out of memory\"}}");
  free(js);
}

static void respond_simple_error(http_request_t *req, int status, const char *type, const char *msg) {
  api_error_t e;
  api_error_set(&e, status, type, NULL, "%s", msg);
  respond_error(req, &e);
}

/* ---- request lifetime ---- */

static void req_free(coord_req_t *r) {
  for (int i = 0; r->gens && i < r->areq.n_choices; i++)
    if (r->gens[i]) r->gens[i]->req = NULL;
  api_session_free(r->sess);
  api_request_free(&r->areq);
  free(r->out);
  free(r->gens);
  free(r);
}

static void abort_live(coord_req_t *r, const char *outcome) {
  coord_t *c = r->c;
  for (int i = 0; i < r->areq.n_choices; i++) {
    coord_gen_t *g = r->gens[i];
    if (!g) continue;
    g->req = NULL;
    r->gens[i] = NULL;
    c->backend.abort(c->backend.self, g->id);
  }
  if (r->n_live) metrics_counter_add(c->m.requests, &outcome, 1);
  r->n_live = 0;
}

static void on_close(http_request_t *req, void *data) {
  (void)req;
  coord_req_t *r = data;
  log_debug("coordinator: client of request %llu left; aborting it", (unsigned long long)r->seq);
  r->http = NULL;
  abort_live(r, "abort");
  req_free(r);
}

static void flush(coord_req_t *r) {
  if (r->paused || !r->out_len || !r->http) return;
  int rc = http_stream_write(r->http, r->out, r->out_len);
  r->out_len = 0;
  if (rc == STRATA_EAGAIN) r->paused = 1;
}

static void finish(coord_req_t *r) {
  coord_t *c = r->c;
  metrics_histogram_observe(c->m.e2e, NULL, coord_now_s() - r->t_start_s);
  const char *ok = "success";
  metrics_counter_add(c->m.requests, &ok, 1);
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
  if (r->paused) return;
  http_stream_end(r->http);
  r->http = NULL;
  req_free(r);
}

static void on_drain(http_request_t *req, void *data) {
  (void)req;
  coord_req_t *r = data;
  r->paused = 0;
  flush(r);
  if (r->finished && !r->paused) {
    http_stream_end(r->http);
    r->http = NULL;
    req_free(r);
  }
}

static int begin_stream(coord_req_t *r) {
  if (r->stream_begun) return 0;
  r->stream_begun = 1;
  int rc = http_stream_begin(r->http, 200, "text/event-stream", SSE_HEADERS);
  if (rc) return rc;
  return api_session_stream_head(r->sess, &r->out, &r->out_len, &r->out_cap);
}

int coord_req_on_event(coord_req_t *r, int choice, const api_event_t *ev) {
  coord_t *c = r->c;
  if (r->finished || !r->http) return 0;
  if (r->areq.stream && begin_stream(r) != 0) return 0; /* closed: on_close frees it */
  int flags = api_session_on_event(r->sess, choice, ev, &r->out, &r->out_len, &r->out_cap);
  if (flags < 0) {
    log_error("coordinator: request %llu: cannot format its output (%s)", (unsigned long long)r->seq,
              strata_strerror(flags));
    flags = API_EV_CHOICE_DONE | API_EV_ABORT;
  }
  if (flags & API_EV_CHOICE_DONE) {
    coord_gen_t *g = r->gens[choice];
    r->gens[choice] = NULL;
    if (g) {
      g->req = NULL;
      if (!ev->finished) c->backend.abort(c->backend.self, g->id); /* a stop string, or done early */
    }
    r->n_live--;
  }
  if (r->areq.stream) flush(r);
  if (api_session_done(r->sess)) {
    finish(r);
    return 1;
  }
  return 0;
}

static void handle_generate(coord_t *c, http_request_t *req, api_kind_t kind) {
  size_t len;
  const char *body = http_request_body(req, &len);
  api_error_t err;
  coord_req_t *r = calloc(1, sizeof *r);
  if (!r) {
    respond_simple_error(req, 500, "internal_error", "out of memory");
    return;
  }
  r->c = c;
  r->http = req;
  r->t_start_s = coord_now_s();
  if (api_request_parse(&r->areq, &c->ctx, kind, body, len, &err) != 0) goto fail;
  r->seq = c->next_seq++;
  char id[64];
  snprintf(id, sizeof id, "%s-%llu%06llx", kind == API_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)r->seq,
           (unsigned long long)(c->started & 0xffffff));
  r->gens = calloc((size_t)r->areq.n_choices, sizeof *r->gens);
  if (!r->gens || api_session_new(&r->sess, &r->areq, &c->ctx, id, (int64_t)time(NULL)) != 0) {
    api_error_set(&err, 500, "internal_error", NULL, "out of memory");
    goto fail;
  }
  for (int i = 0; i < r->areq.n_choices; i++) {
    char why[256] = "";
    int rc = coord_gen_start(r, i, why, sizeof why);
    if (rc) {
      abort_live(r, "unavailable");
      if (rc == STRATA_EUNAVAILABLE)
        api_error_set(&err, 503, "service_unavailable", NULL, "No worker can take this request: %s", why);
      else
        api_error_set(&err, 500, "internal_error", NULL, "%s", why[0] ? why : strata_strerror(rc));
      log_warn("coordinator: request %llu refused: %s", (unsigned long long)r->seq, err.message);
      goto fail;
    }
    r->n_live++;
  }
  http_request_on_close(req, on_close, r);
  http_request_on_drain(req, on_drain, r);
  return;
fail:
  respond_error(req, &err);
  r->http = NULL;
  req_free(r);
}

/* ---- metrics ---- */

int coord_metrics_init(coord_t *c) {
  static const char *outcome[] = {"outcome"}, *pool[] = {"pool"}, *worker[] = {"worker"};
  double lat[20];
  metrics_exp_buckets(0.001, 2.0, 20, lat);
  metrics_registry_t *r = c->mreg;
  coord_metrics_t *m = &c->m;
  int rc;
  if ((rc = metrics_family_new(r, METRICS_COUNTER, "strata:coordinator_requests_total",
                               "Generation requests by outcome (success, abort, unavailable)", outcome, 1, NULL, 0,
                               &m->requests)) ||
      (rc = metrics_family_new(r, METRICS_HISTOGRAM, "strata:time_to_first_token_seconds",
                               "Time to first token as the coordinator sees it, per pool", pool, 1, lat, 20, &m->ttft)) ||
      (rc = metrics_family_new(r, METRICS_HISTOGRAM, "strata:inter_token_latency_seconds",
                               "Time between tokens as the coordinator sees it, per pool", pool, 1, lat, 20, &m->itl)) ||
      (rc = metrics_family_new(r, METRICS_HISTOGRAM, "strata:e2e_request_latency_seconds", "Request latency", NULL,
                               0, lat, 20, &m->e2e)) ||
      (rc = metrics_family_new(r, METRICS_COUNTER, "strata:migrations_total",
                               "Choices moved off a broken worker (migrated), or not (limit, failed)", outcome, 1,
                               NULL, 0, &m->migrations)) ||
      (rc = metrics_family_new(r, METRICS_GAUGE, "strata:worker_running", "Requests running per worker", worker, 1,
                               NULL, 0, &m->w_running)) ||
      (rc = metrics_family_new(r, METRICS_GAUGE, "strata:worker_waiting", "Requests waiting per worker", worker, 1,
                               NULL, 0, &m->w_waiting)) ||
      (rc = metrics_family_new(r, METRICS_GAUGE, "strata:worker_kv_usage", "KV-cache use per worker, 0..1", worker,
                               1, NULL, 0, &m->w_kv)) ||
      (rc = metrics_family_new(r, METRICS_GAUGE, "strata:worker_prefix_cache_hits",
                               "Prompt tokens served from the worker's prefix cache (its Events stream)", worker, 1,
                               NULL, 0, &m->w_hits)) ||
      (rc = metrics_family_new(r, METRICS_GAUGE, "strata:worker_prefix_cache_queries",
                               "Prompt tokens looked up in the worker's prefix cache", worker, 1, NULL, 0,
                               &m->w_queries)) ||
      (rc = metrics_family_new(r, METRICS_GAUGE, "strata:worker_ready", "1 when the worker takes new requests",
                               worker, 1, NULL, 0, &m->w_healthy)))
    return rc;
  return 0;
}

static void respond_metrics(coord_t *c, http_request_t *req) {
  coord_workers_metrics(c);
  char *text = NULL;
  size_t len = 0;
  if (metrics_render(c->mreg, &text, &len) != 0) {
    respond_simple_error(req, 500, "internal_error", "out of memory");
    return;
  }
  pthread_mutex_lock(&c->snap_mu);
  size_t extra = 0;
  for (int i = 0; i < c->n_pools; i++) extra += strlen(c->pools[i].metrics);
  char *all = realloc(text, len + extra + 1);
  if (all) {
    text = all;
    for (int i = 0; i < c->n_pools; i++) {
      size_t n = strlen(c->pools[i].metrics);
      memcpy(text + len, c->pools[i].metrics, n);
      len += n;
    }
    text[len] = 0;
  }
  pthread_mutex_unlock(&c->snap_mu);
  http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, text, len);
  free(text);
}

/* ---- routing ---- */

void coord_on_request(http_request_t *req, void *data) {
  coord_t *c = data;
  const char *path = http_request_path(req), *method = http_request_method(req);
  int is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0, is_post = strcmp(method, "POST") == 0;
  if (strcmp(path, "/health") == 0 && is_get) {
    http_respond(req, 200, "text/plain", NULL, "", 0);
    return;
  }
  if (strcmp(path, "/metrics") == 0 && is_get) {
    respond_metrics(c, req);
    return;
  }
  if (strcmp(path, "/v1/models") == 0) {
    if (!is_get) {
      respond_simple_error(req, 405, "invalid_request_error", "Use GET on /v1/models.");
      return;
    }
    char *js = api_models_json(c->model_name, c->ctx.max_model_len, c->started);
    if (js) http_respond_json(req, 200, js);
    else respond_simple_error(req, 500, "internal_error", "out of memory");
    free(js);
    return;
  }
  int is_cmpl = strcmp(path, "/v1/completions") == 0, is_chat = strcmp(path, "/v1/chat/completions") == 0;
  if (!is_cmpl && !is_chat) {
    char msg[300];
    snprintf(msg, sizeof msg, "No route for %s %.200s", method, path);
    respond_simple_error(req, 404, "not_found_error", msg);
    return;
  }
  if (!is_post) {
    respond_simple_error(req, 405, "invalid_request_error", "Use POST on this endpoint.");
    return;
  }
  handle_generate(c, req, is_cmpl ? API_COMPLETIONS : API_CHAT);
}
