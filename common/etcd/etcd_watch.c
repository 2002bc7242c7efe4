/* etcd_watch.c: prefix watches that resume after broken streams and re-list when the history to resume
 * from is gone (compacted, or the store itself went back). */
#include <stdlib.h>
#include <string.h>

#include "common/etcd/etcd.h"
#include "common/etcd/etcd_int.h"
#include "common/log.h"
#include "common/status.h"

#define M_WATCH "/etcdserverpb.Watch/Watch"

static int watch_closing(etcd_watch_t *w) {
  pthread_mutex_lock(&w->c->mu);
  int closing = w->closing;
  pthread_mutex_unlock(&w->c->mu);
  return closing;
}

/* Drop the live stream (its on_close still comes and releases it) and retry after DELAY_MS. */
static void watch_drop(etcd_watch_t *w, int64_t delay_ms) {
  if (w->s) rpc_stream_cancel(w->s);
  w->s = NULL;
  w->retry_at_ms = etcd_now_ms() + delay_ms;
}

static void watch_deliver(etcd_watch_t *w, const Etcdserverpb__WatchResponse *r) {
  etcd_event_t stack_evs[16], *evs = stack_evs;
  if (r->n_events > 16 && !(evs = malloc(r->n_events * sizeof(*evs)))) {
    log_error("etcd: out of memory delivering %zu watch events; re-listing %s", r->n_events, w->key);
    w->need_relist = 1;
    watch_drop(w, 0);
    return;
  }
  size_t n = 0;
  int64_t max_rev = 0;
  for (size_t i = 0; i < r->n_events; i++) {
    const Mvccpb__Event *e = r->events[i];
    if (!e->kv) continue;
    /* NOTE: after a reconnect etcd may resend a revision we already delivered; skip it. All events
     * of one revision come in one response, so filtering per event is exact. */
    if (e->kv->mod_revision < w->next_rev) continue;
    etcd_event_t *o = &evs[n++];
    o->type = e->type == MVCCPB__EVENT__EVENT_TYPE__DELETE ? ETCD_EVENT_DELETE : ETCD_EVENT_PUT;
    o->key = (const char *)e->kv->key.data;
    o->key_len = e->kv->key.len;
    o->value = o->type == ETCD_EVENT_PUT ? (const char *)e->kv->value.data : NULL;
    o->value_len = o->type == ETCD_EVENT_PUT ? e->kv->value.len : 0;
    o->mod_revision = e->kv->mod_revision;
    o->lease = e->kv->lease;
    if (o->mod_revision > max_rev) max_rev = o->mod_revision;
  }
  if (n > 0) {
    w->next_rev = max_rev + 1;
    if (w->cbs.on_events && !watch_closing(w)) w->cbs.on_events(w->cbs.arg, evs, n);
  }
  if (evs != stack_evs) free(evs);
}

static void watch_on_message(rpc_stream_t *s, const ProtobufCMessage *m, void *arg) {
  etcd_watch_t *w = arg;
  const Etcdserverpb__WatchResponse *r = (const Etcdserverpb__WatchResponse *)m;
  if (s != w->s) return; /* a stream we already dropped */
  if (r->compact_revision > 0) {
    log_warn("etcd: watch on %s cannot resume at revision %lld (compacted up to %lld); re-listing",
             w->key, (long long)w->next_rev, (long long)r->compact_revision);
    w->need_relist = 1;
    watch_drop(w, 0);
    return;
  }
  if (r->canceled) {
    log_warn("etcd: etcd cancelled the watch on %s (%s); re-creating it", w->key,
             r->cancel_reason ? r->cancel_reason : "no reason");
    w->backoff_ms = etcd_backoff_next(w->backoff_ms);
    watch_drop(w, w->backoff_ms);
    return;
  }
  if (r->created) w->backoff_ms = 0;
  watch_deliver(w, r);
}

static void watch_on_close(rpc_stream_t *s, int rc, const rpc_status_t *st, void *arg) {
  etcd_watch_t *w = arg;
  w->n_streams--;
  if (w->s == s) {
    w->s = NULL;
    w->backoff_ms = etcd_backoff_next(w->backoff_ms);
    w->retry_at_ms = etcd_now_ms() + w->backoff_ms;
    if (rc == STRATA_EUNAVAILABLE) atomic_fetch_add(&w->c->cur, 1);
    w->resumed = 1;
    log_debug("etcd: watch stream on %s ended (%s: %s); resuming at revision %lld in %d ms", w->key,
              rpc_status_name(st->code), st->details, (long long)w->next_rev, w->backoff_ms);
  }
  rpc_stream_release(s);
}

/* Re-read the whole prefix after a compaction and hand it to the owner. */
static int watch_relist(etcd_watch_t *w) {
  etcd_kvs_t kvs;
  int rc = etcd_range(w->c, w->key, w->key_len, w->range_end, w->range_end_len, 0, ETCD_LOOP_CALL_MS, &kvs);
  if (rc < 0) return rc;
  if (w->cbs.on_reset && !watch_closing(w)) w->cbs.on_reset(w->cbs.arg, kvs.kvs, kvs.n_kvs, kvs.revision);
  w->next_rev = kvs.revision + 1;
  w->need_relist = 0;
  etcd_kvs_free(&kvs);
  return 0;
}

/* Before resuming after a broken stream: an etcd restored from a backup, or restarted on an empty data
 * dir, numbers revisions from a lower point; a watch resumed at our revision would then wait silently
 * for changes it has long missed. Re-list instead. */
static int watch_check_store(etcd_watch_t *w) {
  etcd_kvs_t kvs;
  int rc = etcd_range(w->c, w->key, w->key_len, NULL, 0, 0, ETCD_LOOP_CALL_MS, &kvs);
  if (rc < 0) return rc;
  if (kvs.revision + 1 < w->next_rev) {
    log_warn("etcd: the store went back from revision %lld to %lld (restored or wiped?); re-listing %s",
             (long long)(w->next_rev - 1), (long long)kvs.revision, w->key);
    w->need_relist = 1;
  }
  etcd_kvs_free(&kvs);
  return 0;
}

static void watch_open(etcd_watch_t *w) {
  etcd_client_t *c = w->c;
  if ((w->resumed && w->next_rev > 1 && !w->need_relist && watch_check_store(w) < 0) ||
      (w->need_relist && watch_relist(w) < 0)) {
    w->backoff_ms = etcd_backoff_next(w->backoff_ms);
    w->retry_at_ms = etcd_now_ms() + w->backoff_ms;
    return;
  }
  Etcdserverpb__WatchCreateRequest cr = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
  cr.key = (ProtobufCBinaryData){w->key_len, (uint8_t *)w->key};
  cr.range_end = (ProtobufCBinaryData){w->range_end_len, (uint8_t *)w->range_end};
  cr.start_revision = w->next_rev;
  Etcdserverpb__WatchRequest req = ETCDSERVERPB__WATCH_REQUEST__INIT;
  req.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
  req.create_request = &cr;
  rpc_stream_cbs_t cbs = {watch_on_message, watch_on_close};
  size_t i = atomic_load(&c->cur) % c->n_endpoints;
  rpc_stream_t *s = NULL;
  if (rpc_stream_open(c->loop, c->channels[i], M_WATCH, &etcdserverpb__watch_response__descriptor, &req.base, 0, 0,
                      &cbs, w, &s) < 0) {
    w->backoff_ms = etcd_backoff_next(w->backoff_ms);
    w->retry_at_ms = etcd_now_ms() + w->backoff_ms;
    return;
  }
  w->s = s;
  w->n_streams++;
  w->cancel_sent = 0;
  w->resumed = 0;
}

static void watch_free_mem(etcd_watch_t *w) {
  free(w->key);
  free(w->range_end);
  free(w);
}

void etcd_watch_tick(etcd_client_t *c, int64_t now) {
  pthread_mutex_lock(&c->mu);
  etcd_watch_t **p = &c->watches;
  while (*p) {
    etcd_watch_t *w = *p;
    if (w->closing) {
      if (w->s && !w->cancel_sent) {
        rpc_stream_cancel(w->s);
        w->cancel_sent = 1;
      }
      if (w->n_streams == 0) {
        *p = w->next; /* unlinked by this thread only, so iteration stays safe */
        w->dead = 1;
        pthread_cond_broadcast(&c->cv);
        if (w->orphan) watch_free_mem(w);
        continue;
      }
    } else if (!w->s && !c->stopped && now >= w->retry_at_ms) {
      /* Opening may block (re-list): do it without the lock. Only this thread unlinks entries. */
      pthread_mutex_unlock(&c->mu);
      watch_open(w);
      pthread_mutex_lock(&c->mu);
    }
    p = &w->next;
  }
  pthread_mutex_unlock(&c->mu);
}

int etcd_watch_new(etcd_client_t *c, const char *prefix, int64_t start_revision,
                   const etcd_watch_cbs_t *cbs, etcd_watch_t **out) {
  *out = NULL;
  if (!prefix || start_revision < 0) return STRATA_EINVAL;
  etcd_watch_t *w = calloc(1, sizeof(*w));
  size_t n = strlen(prefix);
  if (!w) return STRATA_ENOMEM;
  w->c = c;
  w->cbs = *cbs;
  w->key = malloc(n + 1);
  w->range_end = malloc(n + 1);
  if (!w->key || !w->range_end) {
    watch_free_mem(w);
    return STRATA_ENOMEM;
  }
  memcpy(w->key, prefix, n + 1);
  w->key_len = n ? n : 1; /* the empty prefix is the key "\0" with range_end "\0": everything */
  etcd_prefix_end(prefix, n, w->range_end, &w->range_end_len);
  w->next_rev = start_revision;
  if (start_revision == 0) {
    /* "From now" must mean the revision at this call, not whenever the stream first connects. */
    etcd_kvs_t kvs;
    int rc = etcd_range(c, w->key, w->key_len, NULL, 0, 0, c->timeout_ms, &kvs);
    if (rc < 0) {
      watch_free_mem(w);
      return rc;
    }
    w->next_rev = kvs.revision + 1;
    etcd_kvs_free(&kvs);
  }
  pthread_mutex_lock(&c->mu);
  w->next = c->watches;
  c->watches = w;
  pthread_mutex_unlock(&c->mu);
  *out = w;
  return 0;
}

void etcd_watch_free(etcd_watch_t *w) {
  if (!w) return;
  etcd_client_t *c = w->c;
  pthread_mutex_lock(&c->mu);
  w->closing = 1;
  if (rpc_loop_on_thread(c->loop)) {
    w->orphan = 1; /* the client thread frees it once its stream has closed */
    pthread_mutex_unlock(&c->mu);
    return;
  }
  while (!w->dead) pthread_cond_wait(&c->cv, &c->mu);
  pthread_mutex_unlock(&c->mu);
  watch_free_mem(w);
}
