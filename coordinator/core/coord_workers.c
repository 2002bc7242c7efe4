/* coord_workers.c: one Worker.Events stream per registered worker: load and KV events into the
 * registry, the worker marked unhealthy while its stream is down, reconnection with a delay. The
 * channels ping the workers (keepalive), so a hung worker's streams break within seconds; a worker
 * that leaves the table or whose Events stream stays down has its Generate calls moved elsewhere. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/core/coord_int.h"
#include "strata/v1/worker.pb-c.h"

#define EVENTS_DOWN_REASON "events stream down"

coord_wconn_t *coord_conn_find(coord_t *c, const char *id) {
  for (coord_wconn_t *w = c->conns; w; w = w->next)
    if (!w->removed && strcmp(w->id, id) == 0) return w;
  return NULL;
}

/* ---- rpc thread ---- */

static void ev_on_message(rpc_stream_t *s, const ProtobufCMessage *msg, void *arg) {
  (void)s;
  coord_wconn_t *w = arg;
  coord_post_packed(w->c, CM_WEVENT, w, 0, msg);
}

static void ev_on_close(rpc_stream_t *s, int rc, const rpc_status_t *st, void *arg) {
  (void)s;
  coord_wconn_t *w = arg;
  coord_msg_t *m = calloc(1, sizeof *m);
  if (!m) {
    log_error("coordinator: out of memory reporting the end of worker %s's Events stream", w->id);
    return; /* NOTE: the conn then stays "open" forever; only under memory exhaustion */
  }
  m->kind = CM_WCLOSED;
  m->ptr = w;
  m->rc = rc;
  snprintf(m->text, sizeof m->text, "%s", st ? st->details : "");
  coord_post(w->c, m);
}

/* ---- loop thread ---- */

static void conn_free(coord_wconn_t *w) {
  if (w->ch) grpc_channel_destroy(w->ch);
  free(w);
}

static void conn_unlink(coord_t *c, coord_wconn_t *w) {
  for (coord_wconn_t **p = &c->conns; *p; p = &(*p)->next)
    if (*p == w) {
      *p = w->next;
      return;
    }
}

static void conn_open(coord_t *c, coord_wconn_t *w) {
  /* NOTE: a SIGSTOPped or blackholed worker keeps its TCP connections open and says nothing, so
   * without pings its Generate calls would wait forever. Worker servers (rpc_server_new) permit them. */
  rpc_channel_opts_t co = {.keepalive_ms = COORD_KEEPALIVE_MS, .keepalive_timeout_ms = COORD_KEEPALIVE_TIMEOUT_MS};
  if (!w->ch && rpc_channel_new(w->addr, &co, &w->ch) != 0) {
    log_error("coordinator: cannot create a channel to worker %s at %s", w->id, w->addr);
    w->retry_at_ms = coord_now_ms() + COORD_RECONNECT_MS;
    return;
  }
  Strata__V1__EventsRequest req = STRATA__V1__EVENTS_REQUEST__INIT;
  req.coordinator_id = c->id;
  rpc_stream_cbs_t cbs = {.on_message = ev_on_message, .on_close = ev_on_close};
  w->got_event = 0;
  int rc = rpc_stream_open(c->rpc, w->ch, "/strata.v1.Worker/Events", &strata__v1__worker_event__descriptor,
                           &req.base, 1, 0, &cbs, w, &w->events);
  if (rc) {
    w->events = NULL;
    w->retry_at_ms = coord_now_ms() + COORD_RECONNECT_MS;
  }
}

static coord_wconn_t *conn_new(coord_t *c, const registry_worker_t *rw) {
  coord_wconn_t *w = calloc(1, sizeof *w);
  if (!w) {
    log_error("coordinator: out of memory tracking worker %s", rw->info.id);
    return NULL;
  }
  w->c = c;
  snprintf(w->id, sizeof w->id, "%s", rw->info.id);
  snprintf(w->addr, sizeof w->addr, "%s", rw->info.grpc_address);
  snprintf(w->pool, sizeof w->pool, "%s", rw->info.pool);
  w->next = c->conns;
  c->conns = w;
  return w;
}

/* conn_drop: the worker left (or moved): move its requests, close its stream; freed when the close
 * arrives. */
static void conn_drop(coord_t *c, coord_wconn_t *w, const char *why) {
  coord_gens_move_worker(c, w->id, STRATA_EUNAVAILABLE, why);
  w->removed = 1;
  if (w->events) {
    rpc_stream_cancel(w->events);
  } else {
    conn_unlink(c, w);
    conn_free(w);
  }
}

void coord_workers_sync(coord_t *c) {
  if (atomic_load(&c->stopping)) return; /* the rpc loop may be gone: open nothing new */
  for (coord_wconn_t *w = c->conns, *next; w; w = next) {
    next = w->next;
    if (w->removed) continue;
    registry_worker_t *rw = registry_find(&c->reg, w->id);
    if (!rw) conn_drop(c, w, "it left the cluster (etcd lease expired or deregistered)");
    else if (strcmp(rw->info.grpc_address, w->addr) != 0) conn_drop(c, w, "it registered again at another address");
  }
  int64_t now = coord_now_ms();
  for (coord_wconn_t *w = c->conns; w; w = w->next) {
    if (w->removed || !w->down_since_ms || w->down_moved || now - w->down_since_ms < COORD_EVENTS_GRACE_MS) continue;
    w->down_moved = 1;
    char why[96];
    snprintf(why, sizeof why, "its Events stream has been down for %lld ms", (long long)(now - w->down_since_ms));
    coord_gens_move_worker(c, w->id, STRATA_EUNAVAILABLE, why);
  }
  coord_gens_check_stalls(c, now);
  for (int i = 0; i < registry_count(&c->reg); i++) {
    registry_worker_t *rw = registry_at(&c->reg, i);
    coord_wconn_t *w = coord_conn_find(c, rw->info.id);
    if (!w && !(w = conn_new(c, rw))) continue;
    if (!w->events && now >= w->retry_at_ms) conn_open(c, w);
  }
}

static void apply_event(coord_t *c, coord_wconn_t *w, const Strata__V1__WorkerEvent *ev) {
  registry_worker_t *rw = registry_find(&c->reg, w->id);
  if (!rw) return;
  int64_t now = coord_now_ms();
  w->last_event_ms = now;
  if (!w->got_event) {
    w->got_event = 1;
    w->down_since_ms = 0;
    w->down_moved = 0;
    if (rw->health == REGISTRY_UNHEALTHY && strcmp(rw->health_reason, EVENTS_DOWN_REASON) == 0) {
      log_info("coordinator: worker %s is reachable again", w->id);
      registry_set_health(&c->reg, w->id, REGISTRY_READY, NULL, now);
    }
  }
  if (ev->load) {
    const Strata__V1__WorkerLoad *l = ev->load;
    registry_load_t load = {.running = (int)l->running, .waiting = (int)l->waiting,
                            .active_decode_blocks = (int)l->kv_blocks_used, .kv_used_blocks = (int)l->kv_blocks_used,
                            .kv_total_blocks = (int)l->kv_blocks_total};
    registry_set_load(&c->reg, w->id, &load, now);
    w->prefix_hit_tokens = l->prefix_hit_tokens;
    w->prefix_query_tokens = l->prefix_query_tokens;
    if (l->draining && rw->health == REGISTRY_READY)
      registry_set_health(&c->reg, w->id, REGISTRY_DRAINING, "the worker reports draining", now);
  }
  const Strata__V1__KvEvents *kv = ev->kv;
  if (kv && kv->reset) registry_kv_clear(&c->reg, w->id);
  /* Every event carries the next seq, so even an event without KV changes is applied to keep it. */
  if (ev->seq > 0)
    registry_kv_event(&c->reg, w->id, ev->seq, kv ? kv->stored : NULL, kv ? (int)kv->n_stored : 0,
                      kv ? kv->removed : NULL, kv ? (int)kv->n_removed : 0);
}

void coord_workers_on_event(coord_t *c, coord_msg_t *m) {
  coord_wconn_t *w = m->ptr;
  if (w->removed) return;
  Strata__V1__WorkerEvent *ev = strata__v1__worker_event__unpack(NULL, m->n_bytes, m->bytes);
  if (!ev) {
    log_warn("coordinator: worker %s sent an Events message that does not parse; ignored", w->id);
    return;
  }
  apply_event(c, w, ev);
  strata__v1__worker_event__free_unpacked(ev, NULL);
}

void coord_workers_on_closed(coord_t *c, coord_msg_t *m) {
  coord_wconn_t *w = m->ptr;
  if (w->events) rpc_stream_release(w->events);
  w->events = NULL;
  if (w->removed) {
    conn_unlink(c, w);
    conn_free(w);
    return;
  }
  int64_t now = coord_now_ms();
  registry_worker_t *rw = registry_find(&c->reg, w->id);
  if (rw && rw->health != REGISTRY_UNHEALTHY) {
    log_warn("coordinator: worker %s (%s): Events stream ended (%s%s%s); taking no new requests there until it is back",
             w->id, w->addr, strata_strerror(m->rc), m->text[0] ? ": " : "", m->text);
    registry_set_health(&c->reg, w->id, REGISTRY_UNHEALTHY, EVENTS_DOWN_REASON, now);
  }
  registry_kv_clear(&c->reg, w->id);
  if (!w->down_since_ms) w->down_since_ms = now;
  w->retry_at_ms = now + COORD_RECONNECT_MS;
}

int coord_worker_busy(coord_t *c, const char *id, int64_t now_ms, int64_t window_ms) {
  coord_wconn_t *w = coord_conn_find(c, id);
  registry_worker_t *rw = registry_find(&c->reg, id);
  if (!w || !rw || !w->events || !w->got_event || now_ms - w->last_event_ms > window_ms) return 0;
  return rw->load.running + rw->load.waiting > 0;
}

void coord_workers_stop(coord_t *c) {
  for (coord_wconn_t *w = c->conns; w; w = w->next) {
    w->removed = 1;
    if (w->events) rpc_stream_cancel(w->events);
  }
}

void coord_workers_free(coord_t *c) {
  while (c->conns) {
    coord_wconn_t *w = c->conns;
    c->conns = w->next;
    if (w->events) rpc_stream_release(w->events);
    conn_free(w);
  }
}

void coord_workers_metrics(coord_t *c) {
  for (int i = 0; i < registry_count(&c->reg); i++) {
    registry_worker_t *rw = registry_at(&c->reg, i);
    const char *lv[] = {rw->info.id};
    coord_wconn_t *w = coord_conn_find(c, rw->info.id);
    metrics_gauge_set(c->m.w_running, lv, rw->load.running);
    metrics_gauge_set(c->m.w_waiting, lv, rw->load.waiting);
    metrics_gauge_set(c->m.w_kv, lv,
                      rw->load.kv_total_blocks ? (double)rw->load.kv_used_blocks / rw->load.kv_total_blocks : 0.0);
    metrics_gauge_set(c->m.w_healthy, lv, rw->health == REGISTRY_READY);
    if (w) {
      metrics_gauge_set(c->m.w_hits, lv, (double)w->prefix_hit_tokens);
      metrics_gauge_set(c->m.w_queries, lv, (double)w->prefix_query_tokens);
    }
  }
}
