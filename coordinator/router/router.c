/* router.c: KV-aware worker selection (cost = w x uncached prefill + decode load + queue term). */
#include "coordinator/router/router.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/router/router_int.h"

static int valid_weight(double w) { return isfinite(w) && w >= 0.0 && w <= ROUTER_WEIGHT_MAX; }
static int valid_ttl(int ms) { return ms >= 0 && ms <= ROUTER_TTL_MAX_MS; }

int router_init(router_t *r, registry_t *reg, const router_config_t *cfg) {
  memset(r, 0, sizeof *r);
  if (!reg) return STRATA_EINVAL;
  r->reg = reg;
  r->overlap_weight = ROUTER_DEFAULT_OVERLAP_WEIGHT;
  r->queue_weight = ROUTER_DEFAULT_QUEUE_WEIGHT;
  r->pin_ttl_ms = ROUTER_DEFAULT_PIN_TTL_MS;
  r->pending_ttl_ms = ROUTER_DEFAULT_PENDING_TTL_MS;
  if (cfg) {
    int rc = router_set_weights(r, cfg->overlap_weight, cfg->queue_weight);
    if (rc < 0) return rc;
    if (!valid_ttl(cfg->pin_ttl_ms) || !valid_ttl(cfg->pending_ttl_ms)) {
      log_error("router: pin and pending TTLs must be in [0, %d] ms (got %d, %d)", ROUTER_TTL_MAX_MS,
                cfg->pin_ttl_ms, cfg->pending_ttl_ms);
      return STRATA_EINVAL;
    }
    if (cfg->pin_ttl_ms) r->pin_ttl_ms = cfg->pin_ttl_ms;
    if (cfg->pending_ttl_ms) r->pending_ttl_ms = cfg->pending_ttl_ms;
    r->rng = cfg->seed;
  }
  return 0;
}

void router_deinit(router_t *r) {
  router_opt_free(r);
  memset(r, 0, sizeof *r);
}

int router_set_weights(router_t *r, double overlap_weight, double queue_weight) {
  if (!valid_weight(overlap_weight) || !valid_weight(queue_weight)) {
    log_error("router: weights must be finite and in [0, %g] (got overlap %g, queue %g); unchanged",
              ROUTER_WEIGHT_MAX, overlap_weight, queue_weight);
    return STRATA_EINVAL;
  }
  r->overlap_weight = overlap_weight;
  r->queue_weight = queue_weight;
  return 0;
}

/* splitmix64: small, seedable, good enough to break ties. */
static uint64_t router_rand(router_t *r) {
  uint64_t z = (r->rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static int is_excluded(const router_request_t *req, const char *id) {
  for (int i = 0; i < req->n_exclude; i++)
    if (req->exclude[i] && strcmp(req->exclude[i], id) == 0) return 1;
  return 0;
}

static int serves(const registry_worker_t *w, const char *model, const char *pool) {
  return strcmp(w->info.model, model) == 0 && (!pool || strcmp(w->info.pool, pool) == 0);
}

static int ceil_div(int a, int b) { return a / b + (a % b != 0); }

/* Why nothing was picked: counts of the model's workers by what ruled them out. */
typedef struct {
  int n_serving, n_draining, n_suspect, n_unhealthy, n_excluded;
} router_tally_t;

static void unavailable_reason(const router_request_t *req, const router_tally_t *t, char *out, size_t cap) {
  int n = snprintf(out, cap, "no ready worker for model %s", req->model);
  if (req->pool && n >= 0 && (size_t)n < cap) n += snprintf(out + n, cap - (size_t)n, " in pool %s", req->pool);
  if (t->n_serving == 0) {
    if (n >= 0 && (size_t)n < cap) snprintf(out + n, cap - (size_t)n, ": none registered");
    return;
  }
  const char *names[] = {"draining", "unhealthy", "suspect", "excluded"};
  int counts[] = {t->n_draining, t->n_unhealthy, t->n_suspect, t->n_excluded};
  const char *sep = ": ";
  for (int i = 0; i < 4; i++) {
    if (!counts[i] || n < 0 || (size_t)n >= cap) continue;
    n += snprintf(out + n, cap - (size_t)n, "%s%d %s", sep, counts[i], names[i]);
    sep = ", ";
  }
}

static int check_request(const router_request_t *req) {
  if (!req || !req->model || req->n_prompt_tokens < 0 || req->n_prompt_tokens > ROUTER_MAX_PROMPT_TOKENS || req->n_hashes < 0 || req->n_exclude < 0 ||
      (req->n_hashes && (!req->hashes || req->block_size < 1)) || (req->n_exclude && !req->exclude)) {
    log_error("router: malformed routing request (model %s, %d hashes, block size %d, %d prompt tokens)",
              req && req->model ? req->model : "(none)", req ? req->n_hashes : 0, req ? req->block_size : 0,
              req ? req->n_prompt_tokens : 0);
    return STRATA_EINVAL;
  }
  return 0;
}

/* Fills RES for worker W (registry index IDX) as a candidate and returns its cost. */
static double candidate_cost(router_t *r, const router_request_t *req, registry_worker_t *w, int idx, int64_t now_ms,
                             router_result_t *res) {
  int bs = w->info.block_size;
  int same_bs = bs == req->block_size;
  int confirmed = same_bs ? registry_prefix_hits(w, req->hashes, req->n_hashes) : 0;
  int pinned = 0;
  int64_t prefill = 0;
  router_opt_view(r, w, idx, same_bs ? req->hashes : NULL, req->n_hashes, now_ms, &pinned, &prefill);
  int cached = pinned > confirmed ? pinned : confirmed;
  int prompt_blocks = ceil_div(req->n_prompt_tokens, bs);
  if (cached > prompt_blocks) cached = prompt_blocks;
  res->worker = w;
  res->cached_blocks = cached;
  res->pinned_blocks = cached > confirmed ? cached - confirmed : 0;
  res->uncached_blocks = prompt_blocks - cached;
  res->uncached_tokens = req->n_prompt_tokens - cached * bs;
  if (res->uncached_tokens < 0) res->uncached_tokens = 0;
  /* NOTE: the stats' active_decode_blocks is the worker's KV use, which includes prefix blocks it
   * merely keeps cached. With nothing running those blocks cost decode nothing; counting them made a
   * warm idle worker lose to a cold one. What was routed since is in pending_blocks. */
  double active = w->load.running > 0 ? (double)w->load.active_decode_blocks : 0.0;
  double decode = active + (double)w->pending_blocks + (double)prefill;
  double queue = (double)w->load.waiting + (double)w->pending_requests;
  res->cost = r->overlap_weight * res->uncached_blocks + decode + r->queue_weight * queue;
  return res->cost;
}

int router_route(router_t *r, const router_request_t *req, router_result_t *res) {
  memset(res, 0, sizeof *res);
  int rc = check_request(req);
  if (rc < 0) return rc;
  int64_t now_ms = router_opt_now_ms(req->now_ms);
  if (router_opt_sweep(r, now_ms) < 0) log_debug("router: out of memory for optimistic accounting");
  router_tally_t t = {0};
  int n_ties = 0, pick_idx = -1;
  for (int i = 0; i < registry_count(r->reg); i++) {
    registry_worker_t *w = registry_at(r->reg, i);
    if (!serves(w, req->model, req->pool)) continue;
    t.n_serving++;
    if (is_excluded(req, w->info.id)) {
      t.n_excluded++;
      continue;
    }
    if (w->health != REGISTRY_READY) {
      t.n_draining += w->health == REGISTRY_DRAINING;
      t.n_suspect += w->health == REGISTRY_SUSPECT;
      t.n_unhealthy += w->health == REGISTRY_UNHEALTHY;
      continue;
    }
    router_result_t c;
    double cost = candidate_cost(r, req, w, i, now_ms, &c);
    double eps = 1e-9 * (fabs(res->cost) > 1.0 ? fabs(res->cost) : 1.0);
    if (n_ties == 0 || cost < res->cost - eps) {
      *res = c;
      pick_idx = i;
      n_ties = 1;
    } else if (cost <= res->cost + eps) {
      /* Reservoir sampling: each of the tied workers ends up picked with probability 1/n_ties. */
      if (router_rand(r) % (uint64_t)++n_ties == 0) {
        *res = c;
        pick_idx = i;
      }
    }
  }
  if (n_ties == 0) {
    unavailable_reason(req, &t, res->reason, sizeof res->reason);
    r->n_unavailable++;
    log_debug("router: %s", res->reason); /* the caller answers 503 with this text */
    return STRATA_EUNAVAILABLE;
  }
  /* NOTE: a routed request counts all of its prompt blocks, not only the uncached ones: decode reads
   * the whole context each step, which is what the worker's active_decode_blocks measures. */
  res->worker->pending_blocks += ceil_div(req->n_prompt_tokens, res->worker->info.block_size);
  res->worker->pending_requests += 1;
  router_opt_note(r, res->worker, pick_idx, req, res->uncached_blocks, now_ms);
  if (res->pinned_blocks > 0) r->n_pin_hits++;
  r->n_routed++;
  return 0;
}

int router_disagg_wanted(const router_disagg_t *p, int uncached_tokens, int prefill_queue) {
  return prefill_queue >= 0 && uncached_tokens > p->min_uncached_tokens && prefill_queue < p->max_prefill_queue;
}

int router_pool_queue(const router_t *r, const char *model, const char *pool) {
  int64_t q = 0;
  int n_ready = 0;
  for (int i = 0; i < registry_count(r->reg); i++) {
    const registry_worker_t *w = registry_at(r->reg, i);
    if (!serves(w, model, pool) || w->health != REGISTRY_READY) continue;
    n_ready++;
    q += (int64_t)w->load.waiting + w->pending_requests;
  }
  if (n_ready == 0) return -1;
  return q < INT32_MAX ? (int)q : INT32_MAX;
}

int router_pick_prefill(router_t *r, const router_request_t *req, int uncached_tokens, const router_disagg_t *p,
                        router_result_t *res) {
  memset(res, 0, sizeof *res);
  int rc = check_request(req);
  if (rc < 0) return rc;
  if (!p || !req->pool) {
    log_error("router: prefill pick for model %s needs thresholds and a prefill pool name", req->model);
    return STRATA_EINVAL;
  }
  int queue = router_pool_queue(r, req->model, req->pool);
  if (!router_disagg_wanted(p, uncached_tokens, queue)) {
    if (uncached_tokens <= p->min_uncached_tokens)
      snprintf(res->reason, sizeof res->reason, "uncached prompt of %d tokens is within the local threshold %d",
               uncached_tokens, p->min_uncached_tokens);
    else if (queue < 0)
      snprintf(res->reason, sizeof res->reason, "no ready prefill worker for model %s in pool %s", req->model,
               req->pool);
    else
      snprintf(res->reason, sizeof res->reason, "prefill pool %s queue %d is not below %d", req->pool, queue,
               p->max_prefill_queue);
    return STRATA_ENOTFOUND;
  }
  rc = router_route(r, req, res);
  return rc == STRATA_EUNAVAILABLE ? STRATA_ENOTFOUND : rc;
}
