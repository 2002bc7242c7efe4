/* router.h: KV-aware routing: picks the worker whose cost to serve a request is lowest.
 *
 * cost(w) = overlap_weight x uncached_prefill_blocks(w) + active_decode_blocks(w)
 *           + queue_weight x waiting(w)
 * over READY workers of the request's model (and pool), lowest wins, ties broken by a seeded RNG.
 * uncached_prefill_blocks is the request's prompt blocks minus the longer of two leading runs of its
 * block-hash chain: the one the worker's KV events say it holds (registry_prefix_hits), and the one
 * the router has pinned there itself because it routed a request with that prefix there moments ago
 * (an optimistic pin, dropped when the KV events confirm it or after pin_ttl_ms). A routed request is
 * added to the chosen worker's load at once (optimistic accounting): its prompt blocks and one
 * waiting request until the worker's next stats update, and its uncached blocks as pending prefill
 * until its first token (router_progress), its end (router_finish) or, for a request without an id,
 * the next stats update. docs/routing.md explains the choices.
 *
 * Owner: the thread that owns the registry. Not thread-safe. */
#ifndef STRATA_ROUTER_H
#define STRATA_ROUTER_H

#include <stdint.h>

#include "coordinator/registry/registry.h"

typedef struct {
  double overlap_weight; /* cost of one block to prefill; > 1 favours TTFT, < 1 favours ITL (default 1) */
  double queue_weight;   /* cost of one waiting request, in blocks (default 1) */
  uint64_t seed;         /* tie-breaking RNG seed */
  int pin_ttl_ms;        /* how long an optimistic prefix pin counts unconfirmed; 0: default */
  int pending_ttl_ms;    /* how long a tracked request's prefill charge counts at most; 0: default */
} router_config_t;

#define ROUTER_DEFAULT_OVERLAP_WEIGHT 1.0
#define ROUTER_DEFAULT_QUEUE_WEIGHT 1.0
#define ROUTER_WEIGHT_MAX 1e6
#define ROUTER_MAX_PROMPT_TOKENS (1 << 24) /* bounds the optimistic accounting */
#define ROUTER_DEFAULT_PIN_TTL_MS 10000
#define ROUTER_DEFAULT_PENDING_TTL_MS 60000
#define ROUTER_TTL_MAX_MS 3600000
#define ROUTER_PIN_MAX_BLOCKS 4096   /* a pin remembers at most this many leading blocks */
#define ROUTER_PINS_PER_WORKER 64    /* the oldest pin goes first beyond this */

typedef struct router_opt router_opt_t; /* internal (router_int.h): pins and pending charges */

typedef struct {
  registry_t *reg; /* not owned */
  double overlap_weight, queue_weight;
  int pin_ttl_ms, pending_ttl_ms;
  uint64_t rng;
  uint64_t n_routed, n_unavailable; /* monotonic, for metrics */
  uint64_t n_pin_hits;              /* routes whose pick had more blocks pinned than confirmed */
  router_opt_t *opt;                /* owned; NULL until the first route */
} router_t;

/* A request as the router sees it. Borrowed for the call only. */
typedef struct {
  const char *model;         /* required */
  const char *pool;          /* NULL: any pool */
  const uint64_t *hashes;    /* (n_hashes) block_hash_chain() of the prompt ids, BLOCK_SIZE tokens a block */
  int n_hashes;
  int block_size;            /* of HASHES; workers with another block size count as caching nothing */
  int n_prompt_tokens;
  const char *const *exclude; /* (n_exclude) worker ids never to pick (e.g. those a migration left) */
  int n_exclude;
  int64_t now_ms;             /* caller's monotonic clock; 0: the router reads CLOCK_MONOTONIC */
  uint64_t request_id;        /* != 0: tracked until router_progress/router_finish name it */
} router_request_t;

typedef struct {
  registry_worker_t *worker; /* the pick (valid as registry.h says), or NULL */
  int cached_blocks;         /* leading prompt blocks the pick holds (confirmed or pinned) */
  int pinned_blocks;         /* of which only an optimistic pin vouches for (0 when confirmed) */
  int uncached_blocks;       /* prompt blocks it must compute */
  int uncached_tokens;       /* prompt tokens it must compute */
  double cost;
  char reason[256];          /* when there is no pick: why, for the 503 message */
} router_result_t;

/* router_init: a router over REG (borrowed; must outlive the router). CFG may be NULL (defaults, seed
 * 0). Allocates nothing (pins are allocated on demand). Returns 0 or STRATA_EINVAL (bad weights or
 * TTLs outside [0, ROUTER_TTL_MAX_MS], logged). */
int router_init(router_t *r, registry_t *reg, const router_config_t *cfg);
/* router_deinit: frees the pins and pending charges. */
void router_deinit(router_t *r);

/* router_set_weights: changes the weights at run time (policy watch). Each must be finite and in
 * [0, ROUTER_WEIGHT_MAX]. Returns 0 or STRATA_EINVAL (logged; weights unchanged). */
int router_set_weights(router_t *r, double overlap_weight, double queue_weight);

/* router_route: picks a worker for REQ into RES and adds the request's prompt blocks and one waiting
 * request to its pending load, its uncached blocks to its pending prefill, and pins its hash chain
 * there. A REQ->request_id already tracked is re-tracked on the new pick (a migration). Returns 0,
 * STRATA_EUNAVAILABLE with RES->reason set (e.g. "no ready worker for model m: 2 draining, 1
 * unhealthy"; the API turns it into a 503), or STRATA_EINVAL (a malformed request: no model, negative
 * counts, hashes without a block size). Running out of memory for a pin or a charge only loses that
 * bit of optimism (logged at debug level). */
int router_route(router_t *r, const router_request_t *req, router_result_t *res);

/* router_progress: the tracked request REQUEST_ID produced N_TOKENS new tokens on its worker: its
 * prefill is done, so its pending prefill charge is dropped (the worker's stats show it from now
 * on). Call it at the request's first token; later calls are no-ops. Unknown ids are ignored. */
void router_progress(router_t *r, uint64_t request_id, int n_tokens);

/* router_finish: the tracked request REQUEST_ID ended (finished, failed, cancelled, or is about to
 * be routed again after its worker broke): whatever prefill charge it still had is dropped. Its pin
 * stays: the worker keeps the blocks cached after the request ends. Unknown ids are ignored. */
void router_finish(router_t *r, uint64_t request_id);

/* router_pending_prefill: the prefill blocks currently charged to worker ID by this router (for
 * metrics and tests). */
int64_t router_pending_prefill(const router_t *r, const char *id);

/* Disaggregation thresholds (DESIGN.md §6), from the pool's policy. */
typedef struct {
  int min_uncached_tokens; /* prefill remotely only when the decode pick must compute MORE tokens */
  int max_prefill_queue;   /* ...and the prefill pool's queue (waiting + pending, all ready prefill
                            * workers) is SHORTER than this */
} router_disagg_t;

/* router_disagg_wanted: the pure decision: 1 when UNCACHED_TOKENS > min_uncached_tokens and
 * PREFILL_QUEUE < max_prefill_queue (and PREFILL_QUEUE >= 0, i.e. the pool has a ready worker),
 * else 0. */
int router_disagg_wanted(const router_disagg_t *p, int uncached_tokens, int prefill_queue);

/* router_pool_queue: waiting + pending requests over the READY workers of MODEL in POOL, or -1 when
 * the pool has none. */
int router_pool_queue(const router_t *r, const char *model, const char *pool);

/* router_pick_prefill: after router_route chose a decode worker that must compute UNCACHED_TOKENS,
 * decides whether to prefill remotely and, if so, routes REQ (its pool names the prefill pool) to a
 * prefill worker into RES, as router_route does. Returns 0 with a pick, or STRATA_ENOTFOUND when the
 * decode worker should prefill itself (RES->reason says why: short prompt, long queue, no ready
 * prefill worker), or STRATA_EINVAL. */
int router_pick_prefill(router_t *r, const router_request_t *req, int uncached_tokens, const router_disagg_t *p,
                        router_result_t *res);

#endif
