/* optimistic.c: what the router believes before workers confirm it: prefix pins (a routed prompt's
 * blocks will be cached where it went) and pending prefill charges (work queued there). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/router/router_int.h"

int64_t router_opt_now_ms(int64_t req_now_ms) {
  if (req_now_ms != 0) return req_now_ms;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void pin_drop(router_wrec_t *rec, int i) {
  free(rec->pins[i].hashes);
  rec->pins[i] = rec->pins[--rec->n_pins];
  rec->pins[rec->n_pins] = (router_pin_t){0};
}

static void rec_clear(router_wrec_t *rec) {
  while (rec->n_pins > 0) pin_drop(rec, rec->n_pins - 1);
}

/* rec_find: the record of worker ID (HINT: the index to try first), or NULL. */
static router_wrec_t *rec_find(router_opt_t *o, const char *id, int hint) {
  if (!o) return NULL;
  if (hint >= 0 && hint < o->n_recs && strcmp(o->recs[hint].id, id) == 0) return &o->recs[hint];
  for (int i = 0; i < o->n_recs; i++)
    if (strcmp(o->recs[i].id, id) == 0) return &o->recs[i];
  return NULL;
}

/* rec_get: the record of W, created when missing; NULL when out of memory. */
static router_wrec_t *rec_get(router_opt_t *o, const registry_worker_t *w, int hint) {
  router_wrec_t *rec = rec_find(o, w->info.id, hint);
  if (rec) return rec;
  if (o->n_recs == o->cap_recs) {
    int cap = o->cap_recs ? 2 * o->cap_recs : 8;
    router_wrec_t *n = realloc(o->recs, sizeof *n * (size_t)cap);
    if (!n) return NULL;
    o->recs = n;
    o->cap_recs = cap;
  }
  rec = &o->recs[o->n_recs++];
  memset(rec, 0, sizeof *rec);
  snprintf(rec->id, sizeof rec->id, "%s", w->info.id);
  rec->stats_ms = w->load_updated_ms;
  rec->pend_seen = w->pending_requests;
  return rec;
}

/* rec_sync: a stats update since we last looked replaces the untracked prefill guess, as it
 * replaces the registry's pending counters. */
static void rec_sync(router_wrec_t *rec, const registry_worker_t *w) {
  if (w->load_updated_ms != rec->stats_ms || w->pending_requests < rec->pend_seen) rec->prefill_untracked = 0;
  rec->stats_ms = w->load_updated_ms;
  rec->pend_seen = w->pending_requests;
}

static void track_drop(router_opt_t *o, int i) {
  router_wrec_t *rec = rec_find(o, o->tracks[i].worker, -1);
  if (rec) {
    rec->prefill_tracked -= o->tracks[i].blocks;
    if (rec->prefill_tracked < 0) rec->prefill_tracked = 0;
  }
  o->tracks[i] = o->tracks[--o->n_tracks];
}

int router_opt_sweep(router_t *r, int64_t now_ms) {
  if (!r->opt && !(r->opt = calloc(1, sizeof *r->opt))) return STRATA_ENOMEM;
  router_opt_t *o = r->opt;
  for (int i = 0; i < o->n_tracks;)
    if (o->tracks[i].expires_ms <= now_ms) track_drop(o, i);
    else i++;
  /* NOTE: records are pruned only when there are more of them than workers, so a steady cluster
   * pays nothing; a worker that left and came back starts afresh, which is right after a restart. */
  if (o->n_recs <= registry_count(r->reg)) return 0;
  for (int i = 0; i < o->n_recs;) {
    if (registry_find(r->reg, o->recs[i].id)) {
      i++;
      continue;
    }
    rec_clear(&o->recs[i]);
    o->recs[i] = o->recs[--o->n_recs];
  }
  return 0;
}

/* common_run: the leading run A and B share. */
static int common_run(const uint64_t *a, int na, const uint64_t *b, int nb) {
  int n = na < nb ? na : nb, i = 0;
  while (i < n && a[i] == b[i]) i++;
  return i;
}

void router_opt_view(router_t *r, const registry_worker_t *w, int hint, const uint64_t *chain, int n,
                     int64_t now_ms, int *pinned, int64_t *prefill) {
  *pinned = 0;
  *prefill = 0;
  router_wrec_t *rec = rec_find(r->opt, w->info.id, hint);
  if (!rec) return;
  rec_sync(rec, w);
  *prefill = rec->prefill_tracked + rec->prefill_untracked;
  for (int i = 0; i < rec->n_pins;) {
    router_pin_t *p = &rec->pins[i];
    if (p->expires_ms <= now_ms) {
      pin_drop(rec, i);
      continue;
    }
    /* The worker's KV events moved on: if they now show the whole pinned run, the registry knows it
     * and the pin has done its job. */
    if (p->kv_seq != w->kv_seq) {
      if (registry_prefix_hits(w, p->hashes, p->n) == p->n) {
        pin_drop(rec, i);
        continue;
      }
      p->kv_seq = w->kv_seq;
    }
    int run = chain ? common_run(p->hashes, p->n, chain, n) : 0;
    if (run > *pinned) *pinned = run;
    i++;
  }
}

/* pin_add: pins the first N hashes of CHAIN on REC until EXPIRES_MS. A pin that already covers the
 * chain is refreshed; one the chain extends is replaced; beyond ROUTER_PINS_PER_WORKER the pin that
 * expires first goes. */
static void pin_add(router_wrec_t *rec, const registry_worker_t *w, const uint64_t *chain, int n, int64_t expires_ms) {
  if (n > ROUTER_PIN_MAX_BLOCKS) n = ROUTER_PIN_MAX_BLOCKS;
  if (n <= 0) return;
  for (int i = 0; i < rec->n_pins; i++) {
    router_pin_t *p = &rec->pins[i];
    int run = common_run(p->hashes, p->n, chain, n);
    if (run == n) { /* already pinned: just longer-lived now */
      p->expires_ms = expires_ms;
      return;
    }
    if (run == p->n) { /* the new chain extends this pin */
      pin_drop(rec, i);
      break;
    }
  }
  if (rec->n_pins == ROUTER_PINS_PER_WORKER) {
    int oldest = 0;
    for (int i = 1; i < rec->n_pins; i++)
      if (rec->pins[i].expires_ms < rec->pins[oldest].expires_ms) oldest = i;
    pin_drop(rec, oldest);
  }
  uint64_t *h = malloc(sizeof *h * (size_t)n);
  if (!h) {
    log_debug("router: out of memory for a prefix pin on worker %s; routing stays correct, only less sticky",
              rec->id);
    return;
  }
  memcpy(h, chain, sizeof *h * (size_t)n);
  rec->pins[rec->n_pins++] = (router_pin_t){.hashes = h, .n = n, .expires_ms = expires_ms, .kv_seq = w->kv_seq};
}

/* track_add: charges BLOCKS of prefill to REC for request ID until its first token, end or expiry. */
static void track_add(router_opt_t *o, router_wrec_t *rec, uint64_t id, int64_t blocks, int64_t expires_ms) {
  if (o->n_tracks == o->cap_tracks) {
    int cap = o->cap_tracks ? 2 * o->cap_tracks : 64;
    router_track_t *n = realloc(o->tracks, sizeof *n * (size_t)cap);
    if (!n) {
      log_debug("router: out of memory tracking request %llu; its prefill is not charged", (unsigned long long)id);
      return;
    }
    o->tracks = n;
    o->cap_tracks = cap;
  }
  router_track_t *t = &o->tracks[o->n_tracks++];
  t->request_id = id;
  snprintf(t->worker, sizeof t->worker, "%s", rec->id);
  t->blocks = blocks;
  t->expires_ms = expires_ms;
  rec->prefill_tracked += blocks;
}

static int track_find(const router_opt_t *o, uint64_t id) {
  for (int i = 0; o && i < o->n_tracks; i++)
    if (o->tracks[i].request_id == id) return i;
  return -1;
}

void router_opt_note(router_t *r, const registry_worker_t *w, int hint, const router_request_t *req,
                     int uncached_blocks, int64_t now_ms) {
  router_opt_t *o = r->opt;
  if (!o) return;
  if (req->request_id) { /* a request routed again (migration): its old charge is void */
    int i = track_find(o, req->request_id);
    if (i >= 0) track_drop(o, i);
  }
  router_wrec_t *rec = rec_get(o, w, hint);
  if (!rec) {
    log_debug("router: out of memory noting a route to worker %s", w->info.id);
    return;
  }
  rec_sync(rec, w);
  if (req->block_size == w->info.block_size)
    pin_add(rec, w, req->hashes, req->n_hashes, now_ms + r->pin_ttl_ms);
  if (uncached_blocks <= 0) return;
  if (req->request_id) track_add(o, rec, req->request_id, uncached_blocks, now_ms + r->pending_ttl_ms);
  else rec->prefill_untracked += uncached_blocks;
}

void router_progress(router_t *r, uint64_t request_id, int n_tokens) {
  if (!r || n_tokens <= 0) return;
  router_finish(r, request_id);
}

void router_finish(router_t *r, uint64_t request_id) {
  if (!r || !r->opt || !request_id) return;
  int i = track_find(r->opt, request_id);
  if (i >= 0) track_drop(r->opt, i);
}

int64_t router_pending_prefill(const router_t *r, const char *id) {
  if (!r || !id) return 0;
  router_wrec_t *rec = rec_find(r->opt, id, -1);
  if (!rec) return 0;
  const registry_worker_t *w = registry_find(r->reg, id);
  int64_t untracked = rec->prefill_untracked;
  if (w && (w->load_updated_ms != rec->stats_ms || w->pending_requests < rec->pend_seen)) untracked = 0;
  return rec->prefill_tracked + untracked;
}

void router_opt_free(router_t *r) {
  router_opt_t *o = r->opt;
  if (!o) return;
  for (int i = 0; i < o->n_recs; i++) rec_clear(&o->recs[i]);
  free(o->recs);
  free(o->tracks);
  free(o);
  r->opt = NULL;
}
