/* registry.h: the coordinator's table of workers: registrations from etcd, health, load, and the
 * block hashes each worker holds in its prefix cache (fed by its KV events).
 *
 * Inputs arrive from three planes (DESIGN.md §2): etcd watch events and re-lists
 * (registry_put / registry_delete / registry_reset), the worker's stats stream (registry_set_load)
 * and its KV-event stream (registry_kv_event). The router (coordinator/router) reads the table.
 *
 * Owner: the coordinator's event-loop thread. Not thread-safe: other threads hand their input over
 * through that loop's queue. A registry_worker_t pointer stays valid until the next call that can
 * remove workers (registry_delete, registry_reset, registry_deinit). */
#ifndef STRATA_REGISTRY_H
#define STRATA_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#define REGISTRY_ID_MAX 128      /* bytes, including the terminating NUL */
#define REGISTRY_NAME_MAX 256    /* model, addresses, version */
#define REGISTRY_UCX_MAX 2048    /* a UCX worker address as text (hex or base64) */
#define REGISTRY_REASON_MAX 160
#define REGISTRY_VALUE_MAX 65536 /* bytes of one registration value */

/* A worker's registration, as parsed from its etcd value (docs/routing.md gives the JSON). */
typedef struct {
  char id[REGISTRY_ID_MAX];
  char pool[16];  /* "unified" | "prefill" | "decode" */
  char role[32];  /* free text from the worker (e.g. "worker"); shown, not interpreted */
  char model[REGISTRY_NAME_MAX];
  char grpc_address[REGISTRY_NAME_MAX];
  char ucx_address[REGISTRY_UCX_MAX]; /* "" when the worker has no UCX */
  char version[64];
  int tp, pp;
  int block_size; /* tokens per KV block */
  int kv_blocks;  /* KV blocks the worker allocated */
  int max_model_len; /* prompt + output tokens it accepts (0: not reported, an older worker) */
} registry_worker_info_t;

typedef enum {
  REGISTRY_READY = 0,     /* takes new requests */
  REGISTRY_DRAINING = 1,  /* finishes what it has, takes nothing new */
  REGISTRY_SUSPECT = 2,   /* something looks wrong (missed stats, stream errors); takes nothing new */
  REGISTRY_UNHEALTHY = 3, /* known broken; takes nothing new */
} registry_health_t;

/* Load as last reported by the worker's stats stream. */
typedef struct {
  int running;              /* requests being computed */
  int waiting;              /* requests queued */
  int active_decode_blocks; /* KV blocks held by running requests */
  int kv_used_blocks, kv_total_blocks;
} registry_load_t;

typedef struct registry_hset registry_hset_t; /* internal (hset_int.h) */

typedef struct {
  registry_worker_info_t info;
  registry_health_t health;
  char health_reason[REGISTRY_REASON_MAX]; /* why it is in its health state ("" when ready) */
  int64_t health_since_ms;                 /* caller's clock at the last health change */
  registry_load_t load;
  int64_t load_updated_ms; /* 0: no stats yet */
  /* Optimistic accounting (router): load routed here since the last stats update. */
  int64_t pending_blocks, pending_requests;
  /* KV events */
  uint64_t kv_seq;       /* last sequence number applied; 0: none yet */
  uint64_t n_kv_resyncs; /* times the hash set was wiped because of a gap or a restart */
  registry_hset_t *cache;
} registry_worker_t;

typedef struct {
  int max_hashes_per_worker; /* cap of each worker's hash set (also capped by its kv_blocks) */
} registry_config_t;

#define REGISTRY_DEFAULT_MAX_HASHES (1 << 20)

typedef struct {
  char prefix[192]; /* "/strata/<cluster>/workers/" */
  registry_config_t cfg;
  registry_worker_t **workers; /* (n) in registration order */
  int n, cap;
} registry_t;

/* registry_init: an empty registry for CLUSTER (names the etcd prefix). CFG may be NULL (defaults).
 * Returns 0 or STRATA_EINVAL (empty or over-long cluster name, bad cap). */
int registry_init(registry_t *reg, const char *cluster, const registry_config_t *cfg);
void registry_deinit(registry_t *reg);

/* registry_parse_worker: parses and validates a registration value (JSON, LEN bytes, not necessarily
 * NUL-terminated) into OUT. Unknown fields are ignored. Returns 0, or STRATA_EFORMAT with OUT
 * unspecified: the problem is logged with CONTEXT (e.g. the etcd key; may be NULL). Values over
 * REGISTRY_VALUE_MAX bytes are refused unparsed. */
int registry_parse_worker(const char *json, size_t len, const char *context, registry_worker_info_t *out);

/* registry_put: applies an etcd put of KEY (/strata/<cluster>/workers/<pool>/<id>) with VALUE. A new
 * id joins READY with no load; a known id gets the new registration and keeps its live state, except
 * that its hash set is wiped when model, pool or block size changed. A bad key or value (not ours,
 * not JSON, missing fields, key and value disagreeing on pool or id) is logged and ignored: returns
 * STRATA_EFORMAT and changes nothing. Returns 0 or STRATA_ENOMEM otherwise. */
int registry_put(registry_t *reg, const char *key, const char *value, size_t len);

/* registry_delete: applies an etcd delete (lease expiry or deregistration) of KEY. Returns 0,
 * STRATA_ENOTFOUND (no such worker) or STRATA_EFORMAT (not a worker key; logged). */
int registry_delete(registry_t *reg, const char *key);

typedef struct {
  const char *key;
  const char *value;
  size_t value_len;
} registry_entry_t;

/* registry_reset: replaces the whole table with an etcd re-list of N ENTRIES (every key under the
 * workers prefix). Workers present before and after keep their live state (as registry_put); those
 * absent are removed. A bad value for a known worker leaves that worker as it was; a bad value for a
 * new one is ignored (both logged). Returns 0 or STRATA_ENOMEM (the table is then partly updated:
 * re-list again). */
int registry_reset(registry_t *reg, const registry_entry_t *entries, int n);

/* registry_find: the worker with ID, or NULL. */
registry_worker_t *registry_find(registry_t *reg, const char *id);
static inline int registry_count(const registry_t *reg) { return reg->n; }
static inline registry_worker_t *registry_at(const registry_t *reg, int i) { return reg->workers[i]; }

/* registry_set_health: moves worker ID to HEALTH with REASON (may be NULL; truncated) at NOW_MS.
 * Any transition is allowed (an operator may un-drain). Returns 0 or STRATA_ENOTFOUND. */
int registry_set_health(registry_t *reg, const char *id, registry_health_t health, const char *reason,
                        int64_t now_ms);
/* registry_health_name: "ready", "draining", "suspect", "unhealthy". */
const char *registry_health_name(registry_health_t h);

/* registry_set_load: a stats update from worker ID at NOW_MS. It replaces the optimistic accounting
 * (the report now includes what was routed). Negative counts are rejected. Returns 0,
 * STRATA_ENOTFOUND or STRATA_EINVAL. */
int registry_set_load(registry_t *reg, const char *id, const registry_load_t *load, int64_t now_ms);

/* registry_kv_event: one batch of worker ID's KV events: hashes STORED into its prefix cache, then
 * hashes REMOVED from it. SEQ numbers batches 1, 2, 3... from the worker's start. A batch whose SEQ is
 * not the last one + 1 (a lost batch, a restarted worker, a coordinator that joined mid-stream) wipes
 * the worker's set first and is then applied: an empty index is only slow, a stale one routes wrong.
 * The set keeps at most min(max_hashes_per_worker, kv_blocks) hashes, forgetting the oldest stored.
 * Returns 0, STRATA_ENOTFOUND, STRATA_EINVAL (SEQ 0, negative counts, NULL arrays with counts) or
 * STRATA_ENOMEM (the worker's set is then wiped). */
int registry_kv_event(registry_t *reg, const char *id, uint64_t seq, const uint64_t *stored, int n_stored,
                      const uint64_t *removed, int n_removed);

/* registry_kv_clear: wipes worker ID's hash set and sequence (its KV stream broke). Returns 0 or
 * STRATA_ENOTFOUND. */
int registry_kv_clear(registry_t *reg, const char *id);

/* registry_prefix_hits: how many leading hashes of CHAIN (N of them, in order) worker W holds: only a
 * contiguous run from the first block counts. O(hits + 1). */
int registry_prefix_hits(const registry_worker_t *w, const uint64_t *chain, int n);

/* registry_cached_count: hashes in W's set now (for metrics and tests). */
int registry_cached_count(const registry_worker_t *w);

#endif
