/* serve_int.h: the state `strata serve` shares between its files. Everything here belongs to the
 * loop thread, except what the engine thread reaches through engine_loop and ev_async. */
#ifndef STRATA_SERVE_INT_H
#define STRATA_SERVE_INT_H

#include <ev.h>

#include "common/api/api.h"
#include "common/apihttp/api_http.h"
#include "common/http/http.h"
#include "common/metrics/metrics.h"
#include "worker/api/serve.h"
#include "worker/engine/engine_loop.h"

/* NOTE: engine ids are (seq << SERVE_CHOICE_BITS) | choice, so one map entry per HTTP request
 * routes the events of all its choices. */
#define SERVE_CHOICE_BITS 8
#define SERVE_MAX_CHOICES (1 << SERVE_CHOICE_BITS)
#define SERVE_MAP_BUCKETS 4096

typedef struct serve serve_t;
typedef struct serve_grpc serve_grpc_t;            /* serve_grpc.c */
struct serve_grpc_gen;

/* One generation request in flight (owner: the loop thread). HTTP requests run through the shared
 * front (common/apihttp); gRPC ones use its fields too (then h.http and h.drv are NULL). */
typedef struct serve_req {
  api_http_req_t h;      /* first: the front casts back */
  serve_t *srv;
  int n_live;            /* choices whose engine request may still run */
  unsigned char *done;   /* (n_choices) */
  double t_start_s;
  double *t_last_s;      /* (n_choices) time of the last token, 0 before the first */
  struct serve_grpc_gen *grpc; /* a gRPC Generate call (then h.http is NULL), or NULL for HTTP */
  struct serve_req *map_next;
} serve_req_t;

typedef struct {
  metrics_family_t *ttft, *itl, *e2e, *running, *waiting, *kv_usage, *kv_used, *prefix_queries, *prefix_hits,
      *prompt_tokens, *gen_tokens, *preemptions, *success;
  engine_stats_t last; /* for counters mirrored from the engine's cumulative statistics */
} serve_metrics_t;

struct serve {
  const serve_conf_t *conf;
  struct ev_loop *loop;
  ev_async wake;
  ev_signal sigint, sigterm;
  http_server_t *http;
  engine_loop_t *engine;
  tok_t *tok;
  chat_template_t *chat;
  api_ctx_t ctx;
  api_backend_t backend; /* the engine loop behind common/api's engine interface */
  api_http_t front;      /* the HTTP front (serve_front_init) */
  char model_name[256];
  int64_t started;
  uint64_t next_seq;
  int n_live;            /* engine requests admitted and not finished, over all HTTP requests */
  int capacity;          /* max_num_seqs + max_queue */
  serve_req_t *map[SERVE_MAP_BUCKETS]; /* seq -> request, chained through map_next */
  metrics_registry_t *reg;
  serve_metrics_t m;
  serve_grpc_t *grpc;    /* the gRPC server, or NULL when --grpc-port is 0 */
};

/* serve_http.c */
/* serve_backend_init: fills S->backend with submit/abort over S->engine, and S->front (the HTTP
 * front's hooks; it points into S, so S must not move). */
void serve_backend_init(serve_t *s);
void serve_on_wake(struct ev_loop *loop, ev_async *w, int revents);
/* serve_req_abort_live: cancels every choice of R still running in the engine (their KV blocks are
 * freed there), counting each under REASON; HTTP and gRPC requests alike. */
void serve_req_abort_live(serve_req_t *r, const char *reason);
/* serve_to_api_event: an engine output as common/api's event. */
api_event_t serve_to_api_event(const engine_out_t *o);
/* serve_grpc.c */
/* serve_grpc_start: serves strata.v1.Inference on --host:--grpc-port (TLS with --tls-cert/--tls-key)
 * and prints "strata serve: grpc HOST:PORT". Returns 0 or a STRATA_E* code (logged). */
int serve_grpc_start(serve_t *s);
/* serve_grpc_stop: ends every gRPC call (their engine requests aborted) and stops the server. Loop
 * thread; safe when never started. */
void serve_grpc_stop(serve_t *s);
/* serve_grpc_on_event: one engine event for gRPC request R (R->grpc set), choice C. */
void serve_grpc_on_event(serve_req_t *r, int c, const engine_event_t *ev, double now);
/* serve_metrics.c */
int serve_metrics_init(serve_t *s);
/* serve_metrics_render: refreshes the engine gauges and renders the registry (malloc'd). */
char *serve_metrics_render(serve_t *s, size_t *len);
/* serve.c: the request map */
void serve_map_put(serve_t *s, serve_req_t *r);
serve_req_t *serve_map_get(serve_t *s, uint64_t seq);
void serve_map_del(serve_t *s, uint64_t seq);
double serve_now_s(void);

#endif
