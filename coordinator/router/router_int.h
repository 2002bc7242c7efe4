/* router_int.h: the router's own bookkeeping (optimistic prefix pins and pending prefill charges),
 * shared by router.c and optimistic.c only. */
#ifndef STRATA_ROUTER_INT_H
#define STRATA_ROUTER_INT_H

#include <stdint.h>

#include "coordinator/registry/registry.h"
#include "coordinator/router/router.h"

/* A pin: "this worker will hold these leading blocks", recorded when a request was routed there. */
typedef struct {
  uint64_t *hashes; /* (n) owned; a copy of the routed request's leading chain */
  int n;
  int64_t expires_ms;
  uint64_t kv_seq; /* the worker's KV sequence when last checked against the registry */
} router_pin_t;

/* What the router charged to one worker beyond what its stats and KV events say. */
typedef struct {
  char id[REGISTRY_ID_MAX];
  int64_t prefill_tracked;   /* uncached blocks of tracked requests still waiting for a first token */
  int64_t prefill_untracked; /* uncached blocks of untracked requests routed since the last stats */
  int64_t stats_ms;          /* the worker's load_updated_ms when last looked at */
  int64_t pend_seen;         /* its pending_requests then (a drop means a stats update came) */
  router_pin_t pins[ROUTER_PINS_PER_WORKER];
  int n_pins;
} router_wrec_t;

/* A tracked request's prefill charge. */
typedef struct {
  uint64_t request_id;
  char worker[REGISTRY_ID_MAX];
  int64_t blocks;
  int64_t expires_ms;
} router_track_t;

struct router_opt {
  router_wrec_t *recs; /* (n_recs) */
  int n_recs, cap_recs;
  router_track_t *tracks; /* (n_tracks) */
  int n_tracks, cap_tracks;
};

/* router_opt_now_ms: REQ_NOW_MS, or CLOCK_MONOTONIC in ms when it is 0. */
int64_t router_opt_now_ms(int64_t req_now_ms);

/* router_opt_sweep: drops expired charges and the records of workers that left the registry.
 * Allocates R->opt on first use; returns 0 or STRATA_ENOMEM. */
int router_opt_sweep(router_t *r, int64_t now_ms);

/* router_opt_view: the extra load on W: *PINNED the longest leading run of CHAIN (N hashes) pinned
 * there (expired pins dropped, confirmed ones retired), *PREFILL its pending prefill blocks. HINT is
 * W's registry index (a lookup shortcut). */
void router_opt_view(router_t *r, const registry_worker_t *w, int hint, const uint64_t *chain, int n,
                     int64_t now_ms, int *pinned, int64_t *prefill);

/* router_opt_note: REQ was routed to W with UNCACHED_BLOCKS to compute: pins its chain there (when
 * block sizes agree) and charges the prefill. */
void router_opt_note(router_t *r, const registry_worker_t *w, int hint, const router_request_t *req,
                     int uncached_blocks, int64_t now_ms);

/* router_opt_free: everything R->opt holds. */
void router_opt_free(router_t *r);

#endif
