/* api_http.h: the OpenAI HTTP front shared by `strata serve` and the coordinator: routing of the
 * /v1 endpoints, /health and /metrics, Bearer auth, error replies and each generation request's
 * lifetime (SSE head and tail with backpressure, client disconnect, the final JSON). What differs
 * between the two servers (how choices run, metrics, health) comes in through api_http_ops_t. */
#ifndef STRATA_API_HTTP_H
#define STRATA_API_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "common/api/api.h"
#include "common/config.h"
#include "common/http/http.h"

typedef struct api_http api_http_t;
typedef struct api_http_req api_http_req_t;

/* One generation request in flight. A server embeds it as the FIRST member of its own request
 * struct, so that the ops can cast back. Owner: the loop thread. */
struct api_http_req {
  api_http_t *drv;
  http_request_t *http;  /* NULL once the response ended (or for requests that are not HTTP) */
  uint64_t seq;
  api_request_t areq;
  api_session_t *sess;
  char *out;             /* SSE bytes not handed to the connection yet */
  size_t out_len, out_cap;
  int stream_begun, paused, finished;
  int started;           /* ops->start succeeded */
};

/* The server's side. SELF is api_http_t.self. All are called on the loop thread. */
typedef struct {
  /* new_req: a zeroed request of the server's type (api_http_req_t first), or NULL when out of
   * memory. The server sets its own fields (start time...). */
  api_http_req_t *(*new_req)(void *self);
  /* admit (optional): after parsing, before an id is drawn. Nonzero with ERR filled refuses R. */
  int (*admit)(void *self, api_http_req_t *r, api_error_t *err);
  /* start: runs every choice of R (R->seq and R->sess are set). Nonzero with ERR filled refuses R;
   * then nothing of R may still run. */
  int (*start)(void *self, api_http_req_t *r, api_error_t *err);
  /* abort_live: cancels the choices of R still running; OUTCOME is "abort" (client left) or "error". */
  void (*abort_live)(void *self, api_http_req_t *r, const char *outcome);
  /* on_flags: the API_EV_* FLAGS (nonzero) that EV of choice CHOICE produced. */
  void (*on_flags)(void *self, api_http_req_t *r, int choice, const api_event_t *ev, int flags);
  /* on_finish (optional): R's session completed; called before its response or tail is sent. */
  void (*on_finish)(void *self, api_http_req_t *r);
  /* free_req: frees the server's fields and R itself (the driver has freed its own). */
  void (*free_req)(void *self, api_http_req_t *r);
  /* health (optional): NULL when healthy, else why (a 503). */
  const char *(*health)(void *self);
  /* metrics: the Prometheus text (malloc'd, *LEN bytes), or NULL when out of memory. */
  char *(*metrics)(void *self, size_t *len);
} api_http_ops_t;

/* One server's front. Everything it points at outlives the HTTP server. */
struct api_http {
  const api_http_ops_t *ops;
  void *self;
  const char *name;              /* log prefix: "serve", "coordinator" */
  const api_ctx_t *ctx;
  const char *model_name;
  const int64_t *started;        /* unix time the server started (ids, /v1/models) */
  uint64_t *next_seq;            /* request numbers, shared with the server's other fronts */
  const cfg_strlist_t *api_keys; /* NULL or empty: no auth */
};

/* api_http_on_request: http_server on_request callback; DATA is the api_http_t. Answers every
 * request: /health, /metrics, /v1/models, /v1/completions, /v1/chat/completions. */
void api_http_on_request(http_request_t *req, void *data);

/* api_http_stream_begin: for a streamed R, sends the SSE response head at the first event (so that a
 * refusal before it can still be a plain error). Idempotent. Returns 0 or a STRATA_E* code when the
 * client is gone (its close callback then frees R). */
int api_http_stream_begin(api_http_req_t *r);

/* api_http_on_event: one event EV for choice CHOICE of R: formats it, passes the flags to
 * ops->on_flags, flushes, and ends R when its session is done. Returns 1 when R was freed. */
int api_http_on_event(api_http_req_t *r, int choice, const api_event_t *ev);

/* api_http_fail: R fails with E: aborts what still runs ("error"), replies E (inside the stream
 * when it has begun) and frees R. */
void api_http_fail(api_http_req_t *r, const api_error_t *e);

#endif
