/* api_grpc.h: the gRPC strata.v1.Inference front shared by `strata serve` and the coordinator:
 * Generate (a server stream of text and token deltas), Tokenize, ListModels and Health, with the HTTP
 * API's parameters, validation and limits (a GenerateRequest goes through common/api's parser), its
 * errors as gRPC status codes, API keys as "authorization: Bearer" metadata, TLS, and client
 * cancellation aborting the request's choices. What differs between the two servers (how choices
 * run, admission, health) comes in through api_grpc_ops_t, as for the HTTP front (common/apihttp).
 *
 * Threads: handlers run on the gRPC server's completion-queue thread. Tokenize, ListModels and Health
 * read only immutable state and answer there. Generate is parsed there, then handed to the server's
 * libev loop thread (a queue plus ev_async), which owns the requests from then on, exactly as for
 * HTTP; the server feeds its choices' events back with api_grpc_on_event on that thread. */
#ifndef STRATA_API_GRPC_H
#define STRATA_API_GRPC_H

#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "common/api/api.h"
#include "common/apihttp/api_http.h"
#include "common/config.h"

typedef struct api_grpc api_grpc_t;
/* One Generate call from its first message to its final status (owned by the front). */
typedef struct api_grpc_call api_grpc_call_t;

/* The server's side. SELF is api_grpc_config_t.self. Requests are the server's own structs with an
 * api_http_req_t FIRST (the same type its HTTP front uses; for gRPC ones, drv and http stay NULL). */
typedef struct {
  /* new_req: a zeroed request of the server's type, or NULL when out of memory. Runs on the gRPC
   * thread: it may only allocate and set fields nobody else reads yet (start time, owner). */
  api_http_req_t *(*new_req)(void *self);
  /* admit (optional): after parsing, before an id is drawn (loop thread). Nonzero with ERR filled
   * refuses R (ERR's HTTP status becomes the gRPC code: 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE...). */
  int (*admit)(void *self, api_http_req_t *r, api_error_t *err);
  /* start: runs every choice of R (R->seq and R->sess are set) for CALL, which the server keeps to
   * feed events back (loop thread). Nonzero with ERR filled refuses R; then nothing of R may run. */
  int (*start)(void *self, api_http_req_t *r, api_grpc_call_t *call, api_error_t *err);
  /* abort_live: cancels the choices of R still running; OUTCOME is "abort" (client left) or "error". */
  void (*abort_live)(void *self, api_http_req_t *r, const char *outcome);
  /* on_flags: the API_EV_* FLAGS (nonzero) that EV of choice CHOICE produced (loop thread). */
  void (*on_flags)(void *self, api_http_req_t *r, int choice, const api_event_t *ev, int flags);
  /* on_finish (optional): R's session completed; called before its final status is sent. */
  void (*on_finish)(void *self, api_http_req_t *r);
  /* free_req: frees the server's fields and R itself (the front has freed areq and sess). Loop
   * thread, or the gRPC thread for a request that was never queued (R->started is 0 then). */
  void (*free_req)(void *self, api_http_req_t *r);
  /* health (optional): NULL when healthy, else why: Health says NOT_SERVING and Generate is refused
   * with UNAVAILABLE. Called from the gRPC thread and the loop thread: it must be thread-safe. */
  const char *(*health)(void *self);
} api_grpc_ops_t;

/* Everything a front needs; what it points at is borrowed and must outlive the front. */
typedef struct {
  const api_grpc_ops_t *ops;
  void *self;
  const char *name;              /* log prefix: "serve", "coordinator" */
  struct ev_loop *loop;          /* the loop thread that owns requests */
  const api_ctx_t *ctx;          /* immutable while the front runs (read on the gRPC thread) */
  const char *model_name;
  const int64_t *started;        /* unix time the server started (request ids) */
  uint64_t *next_seq;            /* request numbers, shared with the server's other fronts (loop thread) */
  const cfg_strlist_t *api_keys; /* NULL or empty: no auth */
  const char *host;              /* listen address (IPv6 literals without brackets) */
  int port;                      /* 0 picks a free one (api_grpc_port tells which) */
  const char *port_flag;         /* the option that sets PORT, for messages ("--grpc-port") */
  const char *tls_cert, *tls_key; /* PEM files: TLS when both are set */
  int max_recv_bytes;            /* largest request message; 0: gRPC's default */
} api_grpc_config_t;

/* api_grpc_new: serves strata.v1.Inference on CFG->host:CFG->port (its own gRPC server and thread).
 * Call on the loop thread. Returns 0 with *OUT set, or STRATA_EINVAL (one of tls_cert / tls_key
 * without the other), STRATA_EIO (the port cannot be bound or the TLS files cannot be read),
 * STRATA_ENOMEM; logged with CFG->name. */
int api_grpc_new(const api_grpc_config_t *cfg, api_grpc_t **out);
/* api_grpc_port: the bound port. */
int api_grpc_port(const api_grpc_t *g);
/* api_grpc_free: refuses new calls, ends every call in flight with UNAVAILABLE (aborting its live
 * choices), stops the server and frees G. Loop thread; NULL is a no-op. */
void api_grpc_free(api_grpc_t *g);

/* api_grpc_on_event: one event EV for choice CHOICE of CALL's request: formats it (stop strings,
 * UTF-8), passes the flags to ops->on_flags, sends the delta, and ends the call when its session is
 * done or the client is gone. Loop thread. Returns 1 when the request was freed (CALL is gone). */
int api_grpc_on_event(api_grpc_call_t *call, int choice, const api_event_t *ev);
/* api_grpc_fail: the request fails with E: aborts what still runs ("error"), ends the call with E's
 * status and message, and frees the request. Loop thread. */
void api_grpc_fail(api_grpc_call_t *call, const api_error_t *e);

#endif
