/* router.h: KV-aware routing: picks the worker whose cost to serve a request is lowest.
 *
 * cost(w) = overlap_weight x uncached_prefill_blocks(w) + active_decode_blocks(w)
 *           + queue_weight x waiting(w)
 * over READY workers of the request's model (and pool), lowest wins, ties broken by a seeded RNG.
 * uncached_prefill_blocks is the request's prompt blocks minus the leading run of its block-hash
 * chain that the worker holds (registry_prefix_hits). A routed request is added to the chosen
 * worker's load at once (optimistic accounting) until that worker's next stats update.
 * docs/routing.md explains the choices.
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
} router_config_t;

#define ROUTER_DEFAULT_OVERLAP_WEIGHT 1.0
#define ROUTER_DEFAULT_QUEUE_WEIGHT 1.0
#define ROUTER_WEIGHT_MAX 1e6
#define ROUTER_MAX_PROMPT_TOKENS (1 << 24) /* bounds the optimistic accounting */

typedef struct {
  registry_t *reg; /* not owned */
  double overlap_weight, queue_weight;
  uint64_t rng;
  uint64_t n_routed, n_unavailable; /* monotonic, for metrics */
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
} router_request_t;

typedef struct {
  registry_worker_t *worker; /* the pick (valid as registry.h says), or NULL */
  int cached_blocks;         /* leading prompt blocks the pick already holds */
  int uncached_blocks;       /* prompt blocks it must compute */
  int uncached_tokens;       /* prompt tokens it must compute */
  double cost;
  char reason[256];          /* when there is no pick: why, for the 503 message */
} router_result_t;

/* router_init: a router over REG (borrowed; must outlive the router). CFG may be NULL (defaults, seed
 * 0). Returns 0 or STRATA_EINVAL (bad weights, logged). */
int router_init(router_t *r, registry_t *reg, const router_config_t *cfg);
void router_deinit(router_t *r);

/* router_set_weights: changes the weights at run time (policy watch). Each must be finite and in
 * [0, ROUTER_WEIGHT_MAX]. Returns 0 or STRATA_EINVAL (logged; weights unchanged). */
int router_set_weights(router_t *r, double overlap_weight, double queue_weight);

/* router_route: picks a worker for REQ into RES and adds the request's prompt blocks and one waiting
 * request to its pending load. Returns 0, STRATA_EUNAVAILABLE with RES->reason set (e.g. "no ready
 * worker for model m: 2 draining, 1 unhealthy"; the API turns it into a 503), or STRATA_EINVAL (a
 * malformed request: no model, negative counts, hashes without a block size). */
int router_route(router_t *r, const router_request_t *req, router_result_t *res);

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
