/* coord_grpc.c: the coordinator's side of the shared gRPC strata.v1.Inference front (common/apigrpc):
 * a Generate call is a coord_req_t like an HTTP request, started, aborted and accounted by the HTTP
 * front's hooks (coord_http.c), so it is routed, streamed and migrated exactly the same way. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/core/coord_int.h"

/* A gRPC request: the coord_req_t an HTTP request would be, plus its call. Its h.drv stays NULL,
 * which is how coord_req_on_event tells the two kinds apart. */
typedef struct {
  coord_req_t r;          /* first: the HTTP hooks treat (and free) it as a coord_req_t */
  api_grpc_call_t *call;
} coord_greq_t;

/* ---- the front's hooks: the HTTP front's, with the call recorded ---- */

static api_http_req_t *grpc_new_req(void *self) {
  coord_greq_t *q = calloc(1, sizeof *q);
  if (!q) return NULL;
  q->r.c = self;
  q->r.t_start_s = coord_now_s();
  return &q->r.h;
}

static int grpc_start(void *self, api_http_req_t *h, api_grpc_call_t *call, api_error_t *err) {
  coord_t *c = self;
  ((coord_greq_t *)h)->call = call;
  return c->front.ops->start(c, h, err);
}

static void grpc_abort_live(void *self, api_http_req_t *h, const char *outcome) {
  coord_t *c = self;
  c->front.ops->abort_live(c, h, outcome);
}

static void grpc_on_flags(void *self, api_http_req_t *h, int choice, const api_event_t *ev, int flags) {
  coord_t *c = self;
  c->front.ops->on_flags(c, h, choice, ev, flags);
}

static void grpc_on_finish(void *self, api_http_req_t *h) {
  coord_t *c = self;
  c->front.ops->on_finish(c, h);
}

static void grpc_free_req(void *self, api_http_req_t *h) {
  coord_t *c = self;
  c->front.ops->free_req(c, h);
}

static const api_grpc_ops_t grpc_ops = {
    .new_req = grpc_new_req,
    .start = grpc_start,
    .abort_live = grpc_abort_live,
    .on_flags = grpc_on_flags,
    .on_finish = grpc_on_finish,
    .free_req = grpc_free_req,
};

int coord_grpc_on_event(coord_req_t *r, int choice, const api_event_t *ev) {
  return api_grpc_on_event(((coord_greq_t *)r)->call, choice, ev);
}

/* ---- start and stop (loop thread) ---- */

int coord_grpc_start(coord_t *c) {
  const coord_conf_t *cf = c->conf;
  if (cf->inference_grpc_port < 0) {
    log_info("coordinator: gRPC strata.v1.Inference disabled (--inference-grpc-port -1)");
    return 0;
  }
  api_grpc_config_t gc = {.ops = &grpc_ops, .self = c, .name = "coordinator", .loop = c->loop, .ctx = &c->ctx,
                          .model_name = c->model_name, .started = &c->started, .next_seq = &c->next_seq,
                          .api_keys = &cf->api_keys, .host = cf->host, .port = cf->inference_grpc_port,
                          .port_flag = "--inference-grpc-port (-1 disables it)", .tls_cert = cf->tls_cert,
                          .tls_key = cf->tls_key,
                          .max_recv_bytes = cf->max_body_bytes > INT_MAX ? INT_MAX : (int)cf->max_body_bytes};
  int rc = api_grpc_new(&gc, &c->grpc);
  if (rc) return rc;
  printf("strata-coordinator: inference grpc %s:%d\n", cf->host, api_grpc_port(c->grpc));
  fflush(stdout);
  return 0;
}

void coord_grpc_stop(coord_t *c) {
  api_grpc_free(c->grpc);
  c->grpc = NULL;
}
