/* registry.c: the coordinator's worker table (etcd registrations, health, load, cached block hashes). */
#include "coordinator/registry/registry.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/registry/hset_int.h"

int registry_init(registry_t *reg, const char *cluster, const registry_config_t *cfg) {
  memset(reg, 0, sizeof *reg);
  if (!cluster || !*cluster || strchr(cluster, '/')) {
    log_error("registry: cluster name '%s' must be non-empty and contain no '/'", cluster ? cluster : "");
    return STRATA_EINVAL;
  }
  int n = snprintf(reg->prefix, sizeof reg->prefix, "/strata/%s/workers/", cluster);
  if (n < 0 || (size_t)n >= sizeof reg->prefix) {
    log_error("registry: cluster name '%s' is too long (at most %zu bytes)", cluster, sizeof reg->prefix - 20);
    return STRATA_EINVAL;
  }
  reg->cfg.max_hashes_per_worker = REGISTRY_DEFAULT_MAX_HASHES;
  if (cfg) {
    if (cfg->max_hashes_per_worker < 1) {
      log_error("registry: max_hashes_per_worker must be >= 1 (got %d)", cfg->max_hashes_per_worker);
      return STRATA_EINVAL;
    }
    reg->cfg = *cfg;
  }
  return 0;
}

static void worker_free(registry_worker_t *w) {
  if (!w) return;
  if (w->cache) registry_hset_deinit(w->cache);
  free(w->cache);
  free(w);
}

void registry_deinit(registry_t *reg) {
  for (int i = 0; i < reg->n; i++) worker_free(reg->workers[i]);
  free(reg->workers);
  memset(reg, 0, sizeof *reg);
}

/* ---- registration JSON ---- */

/* Copies string field NAME of OBJ into DST (CAP bytes). OPTIONAL fields may be absent (-> "").
 * Returns 0 or STRATA_EFORMAT, logging once. */
static int json_str(const cJSON *obj, const char *name, char *dst, size_t cap, int optional, const char *ctx) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
  if (!it || cJSON_IsNull(it)) {
    dst[0] = '\0';
    if (optional) return 0;
    log_error("registry: worker registration %s lacks field \"%s\"; worker ignored", ctx, name);
    return STRATA_EFORMAT;
  }
  if (!cJSON_IsString(it) || !it->valuestring) {
    log_error("registry: worker registration %s: \"%s\" must be a string; worker ignored", ctx, name);
    return STRATA_EFORMAT;
  }
  size_t n = strlen(it->valuestring);
  if ((!optional && n == 0) || n >= cap) {
    log_error("registry: worker registration %s: \"%s\" must be 1..%zu bytes (got %zu); worker ignored", ctx,
              name, cap - 1, n);
    return STRATA_EFORMAT;
  }
  memcpy(dst, it->valuestring, n + 1);
  return 0;
}

/* Reads integer field NAME of OBJ in [LO, HI] into DST. Returns 0 or STRATA_EFORMAT, logging once. */
static int json_int(const cJSON *obj, const char *name, int lo, int hi, int *dst, const char *ctx) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
  if (!it) {
    log_error("registry: worker registration %s lacks field \"%s\"; worker ignored", ctx, name);
    return STRATA_EFORMAT;
  }
  double v = cJSON_IsNumber(it) ? it->valuedouble : 0.0;
  /* Range before the cast: converting an out-of-range double to int is undefined. */
  if (!cJSON_IsNumber(it) || !(v >= lo && v <= hi) || v != (double)(int)v) {
    log_error("registry: worker registration %s: \"%s\" must be an integer in [%d, %d]; worker ignored", ctx,
              name, lo, hi);
    return STRATA_EFORMAT;
  }
  *dst = (int)v;
  return 0;
}

static int valid_pool(const char *p) {
  return strcmp(p, "unified") == 0 || strcmp(p, "prefill") == 0 || strcmp(p, "decode") == 0;
}

int registry_parse_worker(const char *json, size_t len, const char *context, registry_worker_info_t *out) {
  const char *ctx = context ? context : "(no key)";
  int rc = STRATA_EFORMAT;
  memset(out, 0, sizeof *out);
  if (len > REGISTRY_VALUE_MAX) {
    log_error("registry: worker registration %s is %zu bytes (at most %d); worker ignored", ctx, len,
              REGISTRY_VALUE_MAX);
    return STRATA_EFORMAT;
  }
  cJSON *root = json ? cJSON_ParseWithLength(json, len) : NULL;
  if (!root || !cJSON_IsObject(root)) {
    log_error("registry: worker registration %s is not a JSON object; worker ignored", ctx);
    goto fail;
  }
  const struct {
    const char *name;
    char *dst;
    size_t cap;
    int optional;
  } strs[] = {
      {"id", out->id, sizeof out->id, 0},
      {"pool", out->pool, sizeof out->pool, 0},
      {"role", out->role, sizeof out->role, 0},
      {"model", out->model, sizeof out->model, 0},
      {"grpc_address", out->grpc_address, sizeof out->grpc_address, 0},
      {"ucx_address", out->ucx_address, sizeof out->ucx_address, 1},
      {"version", out->version, sizeof out->version, 0},
  };
  const struct {
    const char *name;
    int lo, hi;
    int *dst;
  } ints[] = {
      {"tp", 1, 1024, &out->tp},
      {"pp", 1, 1024, &out->pp},
      {"block_size", 1, 1 << 16, &out->block_size},
      {"kv_blocks", 1, 1 << 30, &out->kv_blocks},
  };
  for (size_t i = 0; i < sizeof strs / sizeof *strs; i++)
    if (json_str(root, strs[i].name, strs[i].dst, strs[i].cap, strs[i].optional, ctx) < 0) goto fail;
  for (size_t i = 0; i < sizeof ints / sizeof *ints; i++)
    if (json_int(root, ints[i].name, ints[i].lo, ints[i].hi, ints[i].dst, ctx) < 0) goto fail;
  if (!valid_pool(out->pool)) {
    log_error("registry: worker registration %s: pool \"%s\" is not unified, prefill or decode; worker ignored",
              ctx, out->pool);
    goto fail;
  }
  if (strchr(out->id, '/')) {
    log_error("registry: worker registration %s: id \"%s\" contains '/'; worker ignored", ctx, out->id);
    goto fail;
  }
  out->max_model_len = 0; /* optional: workers before this field did not send it */
  if (cJSON_GetObjectItemCaseSensitive(root, "max_model_len") &&
      json_int(root, "max_model_len", 1, 1 << 30, &out->max_model_len, ctx) < 0)
    goto fail;
  rc = 0;
fail:
  cJSON_Delete(root);
  return rc;
}

/* Splits KEY into POOL and ID (pointers into KEY; ID runs to the end). Returns 0 or STRATA_EFORMAT. */
static int parse_key(const registry_t *reg, const char *key, char *pool, size_t pool_cap, const char **id) {
  size_t plen = strlen(reg->prefix);
  if (!key || strncmp(key, reg->prefix, plen) != 0) return STRATA_EFORMAT;
  const char *p = key + plen, *slash = strchr(p, '/');
  if (!slash || slash == p || (size_t)(slash - p) >= pool_cap || !slash[1] || strchr(slash + 1, '/'))
    return STRATA_EFORMAT;
  memcpy(pool, p, (size_t)(slash - p));
  pool[slash - p] = '\0';
  *id = slash + 1;
  return 0;
}

/* ---- the table ---- */

static int find_index(const registry_t *reg, const char *id) {
  /* NOTE: a linear scan: clusters have tens to hundreds of workers and events arrive in batches. */
  for (int i = 0; i < reg->n; i++)
    if (strcmp(reg->workers[i]->info.id, id) == 0) return i;
  return -1;
}

registry_worker_t *registry_find(registry_t *reg, const char *id) {
  int i = id ? find_index(reg, id) : -1;
  return i < 0 ? NULL : reg->workers[i];
}

static int worker_cap(const registry_t *reg, const registry_worker_info_t *info) {
  return info->kv_blocks < reg->cfg.max_hashes_per_worker ? info->kv_blocks : reg->cfg.max_hashes_per_worker;
}

static void remove_index(registry_t *reg, int i) {
  worker_free(reg->workers[i]);
  memmove(reg->workers + i, reg->workers + i + 1, (size_t)(reg->n - i - 1) * sizeof *reg->workers);
  reg->n--;
}

/* Inserts or updates the worker described by INFO. Returns 0 or STRATA_ENOMEM. */
static int upsert(registry_t *reg, const registry_worker_info_t *info) {
  int i = find_index(reg, info->id);
  if (i >= 0) {
    registry_worker_t *w = reg->workers[i];
    if (strcmp(w->info.model, info->model) != 0 || strcmp(w->info.pool, info->pool) != 0 ||
        w->info.block_size != info->block_size) {
      /* Its hashes describe another model or block size now: forget them. */
      registry_hset_clear(w->cache);
      w->kv_seq = 0;
    }
    w->info = *info;
    registry_hset_set_cap(w->cache, worker_cap(reg, info));
    return 0;
  }
  if (reg->n == reg->cap) {
    int cap = reg->cap ? 2 * reg->cap : 8;
    registry_worker_t **ws = realloc(reg->workers, (size_t)cap * sizeof *ws);
    if (!ws) goto oom;
    reg->workers = ws;
    reg->cap = cap;
  }
  registry_worker_t *w = calloc(1, sizeof *w);
  if (!w) goto oom;
  w->cache = calloc(1, sizeof *w->cache);
  if (!w->cache) {
    free(w);
    goto oom;
  }
  w->info = *info;
  w->health = REGISTRY_READY;
  registry_hset_init(w->cache, worker_cap(reg, info));
  reg->workers[reg->n++] = w;
  return 0;
oom:
  log_error("registry: out of memory adding worker %s", info->id);
  return STRATA_ENOMEM;
}

/* Parses and checks an etcd (KEY, VALUE) pair into INFO. Returns 0 or STRATA_EFORMAT (logged). */
static int parse_entry(const registry_t *reg, const char *key, const char *value, size_t len,
                       registry_worker_info_t *info) {
  char pool[16];
  const char *id;
  if (parse_key(reg, key, pool, sizeof pool, &id) < 0) {
    log_error("registry: etcd key '%s' is not %s<pool>/<id>; ignored", key ? key : "(null)", reg->prefix);
    return STRATA_EFORMAT;
  }
  if (registry_parse_worker(value, len, key, info) < 0) return STRATA_EFORMAT;
  if (strcmp(info->pool, pool) != 0 || strcmp(info->id, id) != 0) {
    log_error("registry: etcd key '%s' disagrees with its value (pool \"%s\", id \"%s\"); worker ignored", key,
              info->pool, info->id);
    return STRATA_EFORMAT;
  }
  return 0;
}

int registry_put(registry_t *reg, const char *key, const char *value, size_t len) {
  registry_worker_info_t info;
  int rc = parse_entry(reg, key, value, len, &info);
  if (rc < 0) return rc;
  return upsert(reg, &info);
}

int registry_delete(registry_t *reg, const char *key) {
  char pool[16];
  const char *id;
  if (parse_key(reg, key, pool, sizeof pool, &id) < 0) {
    log_error("registry: etcd key '%s' is not %s<pool>/<id>; delete ignored", key ? key : "(null)", reg->prefix);
    return STRATA_EFORMAT;
  }
  int i = find_index(reg, id);
  if (i < 0) return STRATA_ENOTFOUND;
  remove_index(reg, i);
  return 0;
}

int registry_reset(registry_t *reg, const registry_entry_t *entries, int n) {
  /* Mark-and-sweep: SEEN[i] says worker i appears in the re-list (by id, even with a bad value). */
  char *seen = calloc((size_t)reg->n + (size_t)(n > 0 ? n : 0) + 1, 1);
  if (!seen) {
    log_error("registry: out of memory applying an etcd re-list of %d workers", n);
    return STRATA_ENOMEM;
  }
  int rc = 0;
  for (int e = 0; e < n; e++) {
    registry_worker_info_t info;
    char pool[16];
    const char *id;
    if (parse_key(reg, entries[e].key, pool, sizeof pool, &id) == 0) {
      int i = find_index(reg, id);
      if (i >= 0) seen[i] = 1; /* a bad new value keeps the old registration */
    }
    if (parse_entry(reg, entries[e].key, entries[e].value, entries[e].value_len, &info) < 0) continue;
    if ((rc = upsert(reg, &info)) < 0) goto fail;
    seen[find_index(reg, info.id)] = 1; /* new workers are appended, so indices of others hold */
  }
  for (int i = reg->n - 1; i >= 0; i--) {
    if (seen[i]) continue;
    log_info("registry: worker %s is gone from etcd; removed", reg->workers[i]->info.id);
    remove_index(reg, i);
  }
fail:
  free(seen);
  return rc;
}

/* ---- live state ---- */

const char *registry_health_name(registry_health_t h) {
  switch (h) {
    case REGISTRY_READY: return "ready";
    case REGISTRY_DRAINING: return "draining";
    case REGISTRY_SUSPECT: return "suspect";
    case REGISTRY_UNHEALTHY: return "unhealthy";
  }
  return "unknown";
}

int registry_set_health(registry_t *reg, const char *id, registry_health_t health, const char *reason,
                        int64_t now_ms) {
  registry_worker_t *w = registry_find(reg, id);
  if (!w) return STRATA_ENOTFOUND;
  if (health < REGISTRY_READY || health > REGISTRY_UNHEALTHY) return STRATA_EINVAL;
  if (w->health != health)
    log_info("registry: worker %s %s -> %s%s%s", id, registry_health_name(w->health), registry_health_name(health),
             reason && *reason ? ": " : "", reason ? reason : "");
  w->health = health;
  w->health_since_ms = now_ms;
  snprintf(w->health_reason, sizeof w->health_reason, "%s", reason ? reason : "");
  return 0;
}

int registry_set_load(registry_t *reg, const char *id, const registry_load_t *load, int64_t now_ms) {
  registry_worker_t *w = registry_find(reg, id);
  if (!w) return STRATA_ENOTFOUND;
  if (load->running < 0 || load->waiting < 0 || load->active_decode_blocks < 0 || load->kv_used_blocks < 0 ||
      load->kv_total_blocks < 0) {
    log_error("registry: worker %s reported negative load counts; stats update ignored", id);
    return STRATA_EINVAL;
  }
  w->load = *load;
  w->load_updated_ms = now_ms;
  w->pending_blocks = 0;
  w->pending_requests = 0;
  return 0;
}

int registry_kv_event(registry_t *reg, const char *id, uint64_t seq, const uint64_t *stored, int n_stored,
                      const uint64_t *removed, int n_removed) {
  registry_worker_t *w = registry_find(reg, id);
  if (!w) return STRATA_ENOTFOUND;
  if (seq == 0 || n_stored < 0 || n_removed < 0 || (n_stored && !stored) || (n_removed && !removed)) {
    log_error("registry: worker %s sent a malformed KV-event batch (seq %llu); ignored", id,
              (unsigned long long)seq);
    return STRATA_EINVAL;
  }
  if (seq != w->kv_seq + 1) {
    if (w->kv_seq != 0 || registry_cached_count(w) > 0)
      log_warn("registry: worker %s KV events jumped from seq %llu to %llu (lost batch or restart); its prefix "
               "index is wiped and rebuilds from here",
               id, (unsigned long long)w->kv_seq, (unsigned long long)seq);
    registry_hset_clear(w->cache);
    w->n_kv_resyncs++;
  }
  w->kv_seq = seq;
  for (int i = 0; i < n_stored; i++) {
    if (registry_hset_insert(w->cache, stored[i]) < 0) {
      log_error("registry: out of memory indexing worker %s's cached blocks; its index is wiped", id);
      registry_hset_clear(w->cache);
      w->kv_seq = 0;
      return STRATA_ENOMEM;
    }
  }
  for (int i = 0; i < n_removed; i++) registry_hset_remove(w->cache, removed[i]);
  return 0;
}

int registry_kv_clear(registry_t *reg, const char *id) {
  registry_worker_t *w = registry_find(reg, id);
  if (!w) return STRATA_ENOTFOUND;
  registry_hset_clear(w->cache);
  w->kv_seq = 0;
  return 0;
}

int registry_prefix_hits(const registry_worker_t *w, const uint64_t *chain, int n) {
  int i = 0;
  while (i < n && registry_hset_contains(w->cache, chain[i])) i++;
  return i;
}

int registry_cached_count(const registry_worker_t *w) { return w->cache->n; }
