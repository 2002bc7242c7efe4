/* coord_int.h: the coordinator's shared state. The libev loop thread owns the registry, the router,
 * the HTTP requests and every Generate/Events stream's bookkeeping; the rpc loop thread (stream
 * callbacks) and the etcd client thread (watch callbacks) hand their input over through the inbox
 * (a mutex-guarded list plus ev_async_send). The Admin server thread and the leader thread read the
 * snapshot (mutex-guarded copies the loop refreshes) and talk to etcd and workers directly. */
#ifndef STRATA_COORD_INT_H
#define STRATA_COORD_INT_H

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>

#include "common/api/api.h"
#include "common/apigrpc/api_grpc.h"
#include "common/apihttp/api_http.h"
#include "common/etcd/etcd.h"
#include "common/http/http.h"
#include "common/metrics/metrics.h"
#include "common/rpc/rpc.h"
#include "coordinator/autoscaler/autoscaler.h"
#include "coordinator/core/coord.h"
#include "coordinator/registry/registry.h"
#include "coordinator/router/router.h"

#define COORD_BLOCK_SIZE 16     /* the workers' KV block size, for the routing hash chain */
#define COORD_CHOICE_BITS 8
#define COORD_MAX_CHOICES (1 << COORD_CHOICE_BITS)
#define COORD_MAP_BUCKETS 4096
#define COORD_RECONNECT_MS 500  /* Events stream retry delay */
#define COORD_EVENTS_GRACE_MS 3000  /* Events down this long: the worker's Generate calls move */
#define COORD_KEEPALIVE_MS 1000     /* HTTP/2 pings to workers: a hung worker's calls fail within */
#define COORD_KEEPALIVE_TIMEOUT_MS 2500 /* about KEEPALIVE + KEEPALIVE_TIMEOUT */
#define COORD_STALL_CHECK_MS 250
#define COORD_MAX_POOLS 4
#define COORD_DEFAULT_MODEL_LEN 2048 /* until a worker reports its context length */
#define COORD_LAT_WINDOW 512    /* latency samples kept per pool for the autoscaler's p90 */

typedef struct coord coord_t;

/* ---- inbox ---- */

typedef enum {
  CM_WATCH_PUT = 0, /* key, value */
  CM_WATCH_DEL,     /* key */
  CM_WATCH_RESET,   /* keys[], values[] */
  CM_WEVENT,        /* ptr = conn, bytes = packed WorkerEvent */
  CM_WCLOSED,       /* ptr = conn, rc */
  CM_GEN_MSG,       /* ptr = gen, attempt, bytes = packed WorkerGenerateResponse */
  CM_GEN_CLOSED,    /* ptr = gen, attempt, rc, text = details */
  CM_SET_HEALTH,    /* key = worker id, rc = registry_health_t, text = reason */
} coord_msg_kind_t;

typedef struct coord_msg {
  struct coord_msg *next;
  coord_msg_kind_t kind;
  void *ptr;
  uint64_t attempt;
  int rc;
  char *key, *value;
  size_t value_len;
  uint8_t *bytes;
  size_t n_bytes;
  char **keys, **values; /* (n) CM_WATCH_RESET */
  size_t *value_lens;
  int n;
  char text[256];
} coord_msg_t;

/* coord_post: queue M (ownership passes) and wake the loop. Any thread. */
void coord_post(coord_t *c, coord_msg_t *m);
void coord_msg_free(coord_msg_t *m);
/* coord_post_packed: KIND with PTR, ATTEMPT and MSG packed into bytes. Any thread. */
void coord_post_packed(coord_t *c, coord_msg_kind_t kind, void *ptr, uint64_t attempt, const ProtobufCMessage *msg);

/* ---- workers: one Events stream (and channel) per registered worker ---- */

typedef struct coord_wconn {
  struct coord_wconn *next;
  coord_t *c;
  char id[REGISTRY_ID_MAX];
  char addr[REGISTRY_NAME_MAX];
  char pool[16];
  grpc_channel *ch;
  rpc_stream_t *events;   /* NULL while closed */
  int removed;            /* left the registry: freed once its stream closed */
  int got_event;          /* the current stream delivered something */
  int64_t retry_at_ms;
  int64_t last_event_ms;  /* when the last event arrived (0: none yet) */
  int64_t down_since_ms;  /* when the Events stream broke (0: up, or never connected yet) */
  int down_moved;         /* the worker's Generate calls were moved for this outage */
  uint64_t prefix_hit_tokens, prefix_query_tokens;
} coord_wconn_t;

/* ---- requests ---- */

typedef struct coord_req coord_req_t;

/* One choice: one engine request on some worker (migrated to another when its worker breaks). */
typedef struct coord_gen {
  struct coord_gen *map_next;
  coord_t *c;
  uint64_t id;            /* (seq << COORD_CHOICE_BITS) | choice */
  coord_req_t *req;       /* NULL once the HTTP side is gone */
  int choice;
  int32_t *prompt;        /* (n_prompt) */
  int n_prompt;
  int32_t *out;           /* (n_out) tokens received so far: resent on migration */
  int n_out, cap_out;
  int n_cached;           /* prompt tokens the worker served from its prefix cache (its last word) */
  api_sampling_t sp;
  char worker[REGISTRY_ID_MAX];
  char pool[16];
  rpc_stream_t *stream;   /* the current attempt's Generate call; NULL between attempts */
  uint64_t attempt;
  int n_migrations;
  char (*exclude)[REGISTRY_ID_MAX];
  int n_exclude;
  int aborted;            /* we cancelled it: free at close */
  char finish[16];        /* the worker's finish_reason, reported at close */
  double t_last_s;        /* time of the last token (0 before the first) */
  int64_t progress_ms;    /* the current attempt's start or last message (stall detection) */
  int kill_rc;            /* we cancelled the attempt to move it (STRATA_E*): migrate at close */
  char kill_why[128];
} coord_gen_t;

/* One generation request: HTTP (through the shared front, common/apihttp), or gRPC (coord_grpc.c
 * embeds it first in its own struct and leaves h.drv NULL). */
struct coord_req {
  api_http_req_t h;       /* first: the front casts back */
  coord_t *c;
  int n_live;
  coord_gen_t **gens;     /* (n_choices), NULL once the choice is done */
  double t_start_s;
};

/* ---- what other threads may read (under snap_mu) ---- */

typedef struct {
  registry_worker_info_t info;
  registry_health_t health;
  registry_load_t load;
  int64_t pending_requests; /* routed here since its last stats report: queued at the coordinator's end */
} coord_snap_worker_t;

typedef struct {
  char pool[16];
  int replicas, desired;
  char decision[64], reason[320];
  char metrics[2048];     /* autoscale_decision_metrics() text */
} coord_pool_status_t;

typedef struct {
  char pool[16];
  double t[COORD_LAT_WINDOW], ttft_ms[COORD_LAT_WINDOW];
  int n_ttft, i_ttft;
  double t_itl[COORD_LAT_WINDOW], itl_ms[COORD_LAT_WINDOW];
  int n_itl, i_itl;
} coord_lat_t;

typedef struct {
  metrics_family_t *requests, *ttft, *itl, *e2e, *migrations, *w_running, *w_waiting, *w_kv, *w_hits,
      *w_queries, *w_healthy;
} coord_metrics_t;

struct coord {
  const coord_conf_t *conf;
  struct ev_loop *loop;
  ev_async wake;
  ev_timer tick;
  ev_signal sigint, sigterm;
  http_server_t *http;
  rpc_loop_t *rpc;
  rpc_server_t *admin;
  etcd_client_t *etcd;
  etcd_watch_t *watch;
  tok_t *tok;
  chat_template_t *chat;
  api_ctx_t ctx;
  api_backend_t backend;
  api_http_t front;       /* the HTTP front (coord_front_init) */
  api_grpc_t *grpc;       /* coordgrpc: the gRPC Inference front (coord_grpc.c), NULL when disabled */
  char model_name[256];
  char id[128];
  char last_reason[256]; /* why the last submit found no worker */
  char prefix[256];       /* /strata/<cluster>/ */
  int64_t started;
  uint64_t next_seq;
  registry_t reg;
  router_t router;
  coord_wconn_t *conns;
  coord_gen_t *gens[COORD_MAP_BUCKETS];
  int64_t next_stall_check_ms;
  metrics_registry_t *mreg;
  coord_metrics_t m;

  pthread_mutex_t inbox_mu;
  coord_msg_t *inbox_head, *inbox_tail;

  pthread_mutex_t snap_mu;
  coord_snap_worker_t *snap;
  int n_snap;
  coord_pool_status_t pools[COORD_MAX_POOLS];
  int n_pools;
  char leader[128];
  coord_lat_t lat[COORD_MAX_POOLS];

  pthread_t leader_thread;
  int leader_started;
  int rpc_inited;
  atomic_int stopping;
};

/* coord.c */
int64_t coord_now_ms(void);
double coord_now_s(void);
/* coord_snap_get: a copy of the worker snapshot (malloc'd, *N entries) for other threads. */
coord_snap_worker_t *coord_snap_get(coord_t *c, int *n);
/* coord_lat_add: one TTFT (ITL when IS_ITL) sample in ms for POOL. Loop thread. */
void coord_lat_add(coord_t *c, const char *pool, int is_itl, double ms);

/* coord_workers.c */
/* coord_workers_sync: opens/closes Events streams to match the registry; retries broken ones. */
void coord_workers_sync(coord_t *c);
void coord_workers_on_event(coord_t *c, coord_msg_t *m);
void coord_workers_on_closed(coord_t *c, coord_msg_t *m);
/* coord_workers_stop: cancels every Events stream (before the rpc loop is freed). */
void coord_workers_stop(coord_t *c);
void coord_workers_free(coord_t *c);
coord_wconn_t *coord_conn_find(coord_t *c, const char *id);
void coord_workers_metrics(coord_t *c);
/* coord_worker_busy: nonzero when worker ID's Events stream reported, within the last WINDOW_MS,
 * requests running or waiting (so a call there may be slow rather than lost). Loop thread. */
int coord_worker_busy(coord_t *c, const char *id, int64_t now_ms, int64_t window_ms);

/* coord_gen.c */
void coord_backend_init(coord_t *c);
/* coord_gen_start: routes choice CHOICE of R and opens its Generate call. Returns 0, or
 * STRATA_EUNAVAILABLE with WHY (the router's reason) filled. */
int coord_gen_start(coord_req_t *r, int choice, char *why, size_t why_len);
void coord_gen_on_msg(coord_t *c, coord_msg_t *m);
void coord_gen_on_closed(coord_t *c, coord_msg_t *m);
coord_gen_t *coord_gen_get(coord_t *c, uint64_t id);
/* coord_gens_cancel_all: at shutdown. */
void coord_gens_cancel_all(coord_t *c);
/* coord_gens_move_worker: cancels every Generate call open to worker ID, each then migrating as if
 * the call had broken (exclude list, --migration-limit). RC (STRATA_E*) and WHY are for the logs.
 * Returns how many calls were cancelled. Loop thread. */
int coord_gens_move_worker(coord_t *c, const char *id, int rc, const char *why);
/* coord_gens_check_stalls: moves the calls with no message for --stall-timeout-ms whose worker is
 * not known busy (a fresh Events report with requests running or waiting). Loop thread. */
void coord_gens_check_stalls(coord_t *c, int64_t now_ms);

/* coord_http.c */
/* coord_front_init: fills C->front (the HTTP front's hooks, which the gRPC front shares). */
void coord_front_init(coord_t *c);
void coord_on_request(http_request_t *req, void *data);
/* coord_req_on_event: one event for choice CHOICE of R. Returns 1 when R was freed. */
int coord_req_on_event(coord_req_t *r, int choice, const api_event_t *ev);
int coord_metrics_init(coord_t *c);

/* coord_grpc.c (coordgrpc) */
/* coord_grpc_start: serves strata.v1.Inference on --host:--inference-grpc-port (nothing when -1). */
int coord_grpc_start(coord_t *c);
/* coord_grpc_stop: ends every gRPC call (aborting its choices) and stops the server. Loop thread. */
void coord_grpc_stop(coord_t *c);
/* coord_grpc_on_event: coord_req_on_event for a gRPC request (one whose h.drv is NULL). */
int coord_grpc_on_event(coord_req_t *r, int choice, const api_event_t *ev);

/* coord_admin.c */
int coord_admin_start(coord_t *c);
int coord_policy_load(coord_t *c, const char *pool, autoscale_policy_t *p, char *err, size_t err_len);
/* coord_drain_worker: Worker.Drain on ID at ADDR, then marks it draining in the registry. Any thread
 * but the loop (it blocks up to 5 s). Returns 0 or a STRATA_E* code with ERR filled. */
int coord_drain_worker(coord_t *c, const char *id, const char *addr, uint32_t deadline_s, char *err, size_t err_len);

/* coord_leader.c */
int coord_leader_start(coord_t *c);
void coord_leader_stop(coord_t *c);

#endif
