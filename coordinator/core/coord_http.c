/* coord_http.c: the coordinator's side of the shared HTTP front (common/apihttp): /v1/completions
 * and /v1/chat/completions with the router as the engine, /v1/models, /health and /metrics (the
 * coordinator's own families, per-worker gauges and the autoscaler's decisions), Bearer API keys.
 * The gRPC front (coord_grpc.c) runs its requests through the same hooks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/core/coord_int.h"

/* ---- request lifetime ---- */

static void abort_live(coord_req_t *r, const char *outcome) {
  coord_t *c = r->c;
  for (int i = 0; r->gens && i < r->h.areq.n_choices; i++) {
    coord_gen_t *g = r->gens[i];
    if (!g) continue;
    g->req = NULL;
    r->gens[i] = NULL;
    c->backend.abort(c->backend.self, g->id);
  }
  if (r->n_live) metrics_counter_add(c->m.requests, &outcome, 1);
  r->n_live = 0;
}

int coord_req_on_event(coord_req_t *r, int choice, const api_event_t *ev) {
  if (!r->h.drv) return coord_grpc_on_event(r, choice, ev); /* only HTTP requests have a driver */
  return api_http_on_event(&r->h, choice, ev);
}

/* ---- the front's hooks ---- */

static api_http_req_t *front_new_req(void *self) {
  coord_req_t *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->c = self;
  r->t_start_s = coord_now_s();
  return &r->h;
}

static int front_start(void *self, api_http_req_t *h, api_error_t *err) {
  coord_req_t *r = (coord_req_t *)h;
  r->gens = calloc((size_t)h->areq.n_choices, sizeof *r->gens);
  if (!r->gens) return api_error_set(err, 500, "internal_error", NULL, "out of memory");
  for (int i = 0; i < h->areq.n_choices; i++) {
    char why[256] = "";
    int rc = coord_gen_start(r, i, why, sizeof why);
    if (rc) {
      abort_live(r, "unavailable");
      if (rc == STRATA_EUNAVAILABLE)
        api_error_set(err, 503, "service_unavailable", NULL, "No worker can take this request: %s", why);
      else
        api_error_set(err, 500, "internal_error", NULL, "%s", why[0] ? why : strata_strerror(rc));
      log_warn("coordinator: request %llu refused: %s", (unsigned long long)h->seq, err->message);
      return rc;
    }
    r->n_live++;
  }
  return 0;
}

static void front_abort_live(void *self, api_http_req_t *h, const char *outcome) {
  abort_live((coord_req_t *)h, outcome);
}

static void front_on_flags(void *self, api_http_req_t *h, int choice, const api_event_t *ev, int flags) {
  coord_t *c = self;
  coord_req_t *r = (coord_req_t *)h;
  if (!(flags & API_EV_CHOICE_DONE)) return;
  coord_gen_t *g = r->gens[choice];
  r->gens[choice] = NULL;
  if (g) {
    g->req = NULL;
    if (!ev->finished) c->backend.abort(c->backend.self, g->id); /* a stop string, or done early */
  }
  r->n_live--;
}

static void front_on_finish(void *self, api_http_req_t *h) {
  coord_t *c = self;
  metrics_histogram_observe(c->m.e2e, NULL, coord_now_s() - ((coord_req_t *)h)->t_start_s);
  const char *ok = "success";
  metrics_counter_add(c->m.requests, &ok, 1);
}

static void front_free_req(void *self, api_http_req_t *h) {
  coord_req_t *r = (coord_req_t *)h;
  for (int i = 0; r->gens && i < h->areq.n_choices; i++)
    if (r->gens[i]) r->gens[i]->req = NULL;
  free(r->gens);
  free(r);
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

/* front_metrics: the registry, then each pool's autoscaler text. */
static char *front_metrics(void *self, size_t *len) {
  coord_t *c = self;
  coord_workers_metrics(c);
  char *text = NULL;
  *len = 0;
  if (metrics_render(c->mreg, &text, len) != 0) return NULL;
  pthread_mutex_lock(&c->snap_mu);
  size_t extra = 0;
  for (int i = 0; i < c->n_pools; i++) extra += strlen(c->pools[i].metrics);
  char *all = realloc(text, *len + extra + 1);
  if (all) {
    text = all;
    for (int i = 0; i < c->n_pools; i++) {
      size_t n = strlen(c->pools[i].metrics);
      memcpy(text + *len, c->pools[i].metrics, n);
      *len += n;
    }
    text[*len] = 0;
  }
  pthread_mutex_unlock(&c->snap_mu);
  return text;
}

static const api_http_ops_t front_ops = {
    .new_req = front_new_req,
    .start = front_start,
    .abort_live = front_abort_live,
    .on_flags = front_on_flags,
    .on_finish = front_on_finish,
    .free_req = front_free_req,
    .metrics = front_metrics,
};

/* ---- routing ---- */

void coord_front_init(coord_t *c) {
  c->front = (api_http_t){.ops = &front_ops, .self = c, .name = "coordinator", .ctx = &c->ctx,
                          .model_name = c->model_name, .started = &c->started, .next_seq = &c->next_seq,
                          .api_keys = &c->conf->api_keys};
}

void coord_on_request(http_request_t *req, void *data) {
  coord_t *c = data;
  api_http_on_request(req, &c->front);
}
