/* serve_grpc.c: `strata serve`'s side of the shared gRPC strata.v1.Inference front (common/apigrpc):
 * a Generate call is a serve_req_t like an HTTP request, admitted, started and accounted by the HTTP
 * front's own hooks (capacity, engine requests, the request map, metrics); engine events reach
 * serve_grpc_on_event from serve_on_wake. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/apigrpc/api_grpc.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/api/serve_int.h"

/* A gRPC request: the serve_req_t its HTTP twin would be, plus the call. r.grpc points back here,
 * which is how serve_on_wake tells the two kinds apart. */
struct serve_grpc_gen {
  serve_req_t r;           /* first: the HTTP hooks free it as a serve_req_t */
  api_grpc_call_t *call;
};

/* The front, as serve_t knows it (serve_int.h declares serve_grpc_t). */
struct serve_grpc {
  api_grpc_t *front;
};

/* ---- the front's hooks: the HTTP front's, with the call recorded ---- */

static api_http_req_t *grpc_new_req(void *self) {
  struct serve_grpc_gen *gen = calloc(1, sizeof *gen);
  if (!gen) return NULL;
  gen->r.srv = self;
  gen->r.grpc = gen;
  gen->r.t_start_s = serve_now_s();
  return &gen->r.h;
}

static int grpc_admit(void *self, api_http_req_t *r, api_error_t *err) {
  serve_t *s = self;
  return s->front.ops->admit(s, r, err);
}

static int grpc_start(void *self, api_http_req_t *r, api_grpc_call_t *call, api_error_t *err) {
  serve_t *s = self;
  ((struct serve_grpc_gen *)r)->call = call;
  return s->front.ops->start(s, r, err);
}

static void grpc_abort_live(void *self, api_http_req_t *r, const char *outcome) {
  serve_t *s = self;
  s->front.ops->abort_live(s, r, outcome);
}

static void grpc_on_flags(void *self, api_http_req_t *r, int c, const api_event_t *ev, int flags) {
  serve_t *s = self;
  s->front.ops->on_flags(s, r, c, ev, flags);
}

static void grpc_on_finish(void *self, api_http_req_t *r) {
  serve_t *s = self;
  s->front.ops->on_finish(s, r);
}

static void grpc_free_req(void *self, api_http_req_t *r) {
  serve_t *s = self;
  s->front.ops->free_req(s, r);
}

static const char *grpc_health(void *self) {
  serve_t *s = self;
  return s->front.ops->health(s);
}

static const api_grpc_ops_t grpc_ops = {
    .new_req = grpc_new_req,
    .admit = grpc_admit,
    .start = grpc_start,
    .abort_live = grpc_abort_live,
    .on_flags = grpc_on_flags,
    .on_finish = grpc_on_finish,
    .free_req = grpc_free_req,
    .health = grpc_health,
};

/* ---- engine events (loop thread) ---- */

void serve_grpc_on_event(serve_req_t *r, int c, const engine_event_t *ev, double now) {
  serve_t *s = r->srv;
  api_grpc_call_t *call = r->grpc->call;
  if (r->done[c]) return;
  if (ev->rejected) { /* the engine refused choice C: the whole request fails */
    api_error_t e;
    api_error_set(&e, 400, NULL, NULL, "%s", ev->error[0] ? ev->error : "the request cannot be served");
    api_grpc_fail(call, &e);
    return;
  }
  if (ev->out.has_token) {
    if (r->t_last_s[c] == 0) metrics_histogram_observe(s->m.ttft, NULL, now - r->t_start_s);
    else metrics_histogram_observe(s->m.itl, NULL, now - r->t_last_s[c]);
    r->t_last_s[c] = now;
  }
  api_event_t a = serve_to_api_event(&ev->out);
  api_grpc_on_event(call, c, &a);
}

/* ---- start and stop (loop thread) ---- */

int serve_grpc_start(serve_t *s) {
  const serve_conf_t *c = s->conf;
  serve_grpc_t *g = calloc(1, sizeof *g);
  if (!g) return STRATA_ENOMEM;
  api_grpc_config_t gc = {.ops = &grpc_ops, .self = s, .name = "serve", .loop = s->loop, .ctx = &s->ctx,
                          .model_name = s->model_name, .started = &s->started, .next_seq = &s->next_seq,
                          .api_keys = &c->api_keys, .host = c->host ? c->host : "127.0.0.1",
                          .port = c->grpc_port, .port_flag = "--grpc-port (0 disables gRPC)",
                          .tls_cert = c->tls_cert, .tls_key = c->tls_key,
                          .max_recv_bytes = c->max_body_bytes > INT_MAX ? INT_MAX : (int)c->max_body_bytes};
  int rc = api_grpc_new(&gc, &g->front);
  if (rc) {
    free(g);
    return rc;
  }
  s->grpc = g;
  printf("strata serve: grpc %s:%d\n", gc.host, api_grpc_port(g->front));
  fflush(stdout);
  return 0;
}

void serve_grpc_stop(serve_t *s) {
  serve_grpc_t *g = s->grpc;
  if (!g) return;
  api_grpc_free(g->front);
  free(g);
  s->grpc = NULL;
}
