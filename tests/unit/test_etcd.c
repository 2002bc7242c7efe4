/* test_etcd.c: the etcd client (common/etcd) against a real etcd on loopback ports
 * (tests/integration/etcd_util.sh): KV, txn, leases, registered keys (revoked lease, deleted key,
 * etcd restart longer than the TTL), watches, restart, compaction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/etcd/etcd.h"
#include "common/status.h"

static char g_dir[PATH_MAX];
static char g_script[PATH_MAX];
static char g_addr[64];

static int sh(const char *verb) {
  char cmd[2 * PATH_MAX + 64];
  snprintf(cmd, sizeof(cmd), "bash '%s' %s '%s'", g_script, verb, g_dir);
  return system(cmd);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

static int group_setup(void **state) {
  const char *src = getenv("STRATA_SOURCE_DIR");
  if (src) {
    snprintf(g_script, sizeof(g_script), "%s/tests/integration/etcd_util.sh", src);
  } else { /* run by hand: this file lives in tests/unit/ */
    snprintf(g_script, sizeof(g_script), "%s", __FILE__);
    char *slash = strrchr(g_script, '/');
    if (slash) *slash = '\0';
    strncat(g_script, "/../integration/etcd_util.sh", sizeof(g_script) - strlen(g_script) - 1);
  }
  snprintf(g_dir, sizeof(g_dir), "/tmp/strata_etcd_XXXXXX");
  if (!mkdtemp(g_dir)) return -1;
  if (sh("start") != 0) {
    fprintf(stderr, "test_etcd: could not start etcd with %s (is etcd installed?)\n", g_script);
    g_addr[0] = '\0';
    return 0; /* tests skip */
  }
  char path[PATH_MAX + 16];
  snprintf(path, sizeof(path), "%s/client_addr", g_dir);
  FILE *f = fopen(path, "r");
  if (!f || !fgets(g_addr, sizeof(g_addr), f)) g_addr[0] = '\0';
  if (f) fclose(f);
  g_addr[strcspn(g_addr, "\n")] = '\0';
  return 0;
}

static int group_teardown(void **state) {
  sh("stop");
  char cmd[PATH_MAX + 16];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

/* ---- observers (called on the client thread) ---- */

typedef struct {
  pthread_mutex_t mu;
  int n_lost, n_restored;
  int64_t last_lease;
} sess_obs_t;

static void on_session(void *arg, etcd_session_event_t ev, int64_t lease) {
  sess_obs_t *o = arg;
  pthread_mutex_lock(&o->mu);
  if (ev == ETCD_SESSION_LOST) o->n_lost++;
  if (ev == ETCD_SESSION_RESTORED) o->n_restored++;
  o->last_lease = lease;
  pthread_mutex_unlock(&o->mu);
}

typedef struct {
  int type;
  char key[64], value[64];
  int64_t rev;
} ev_copy_t;

typedef struct {
  pthread_mutex_t mu;
  ev_copy_t evs[64];
  int n;
  int n_resets;
  char reset_keys[8][64];
  int n_reset_keys;
  int64_t reset_rev;
} watch_obs_t;

static void on_events(void *arg, const etcd_event_t *evs, size_t n) {
  watch_obs_t *o = arg;
  pthread_mutex_lock(&o->mu);
  for (size_t i = 0; i < n && o->n < 64; i++) {
    ev_copy_t *e = &o->evs[o->n++];
    e->type = evs[i].type;
    snprintf(e->key, sizeof(e->key), "%.*s", (int)evs[i].key_len, evs[i].key);
    snprintf(e->value, sizeof(e->value), "%.*s", (int)evs[i].value_len, evs[i].value ? evs[i].value : "");
    e->rev = evs[i].mod_revision;
  }
  pthread_mutex_unlock(&o->mu);
}

static void on_reset(void *arg, const etcd_kv_t *kvs, size_t n, int64_t revision) {
  watch_obs_t *o = arg;
  pthread_mutex_lock(&o->mu);
  o->n_resets++;
  o->reset_rev = revision;
  o->n_reset_keys = 0;
  for (size_t i = 0; i < n && i < 8; i++) snprintf(o->reset_keys[o->n_reset_keys++], 64, "%s", kvs[i].key);
  pthread_mutex_unlock(&o->mu);
}

static int wait_events(watch_obs_t *o, int want, int timeout_ms) {
  for (int t = 0; t < timeout_ms; t += 20) {
    pthread_mutex_lock(&o->mu);
    int n = o->n;
    pthread_mutex_unlock(&o->mu);
    if (n >= want) return n;
    sleep_ms(20);
  }
  pthread_mutex_lock(&o->mu);
  int n = o->n;
  pthread_mutex_unlock(&o->mu);
  return n;
}

static etcd_client_t *client(int ttl_s, sess_obs_t *obs) {
  if (!g_addr[0]) return NULL;
  etcd_config_t cfg = {.endpoints = g_addr, .timeout_ms = 5000, .session_ttl_s = ttl_s,
                       .on_session = obs ? on_session : NULL, .arg = obs};
  etcd_client_t *c = NULL;
  assert_int_equal(etcd_client_new(&cfg, &c), 0);
  return c;
}

#define NEED_ETCD(c)                   \
  do {                                 \
    if (!(c)) {                        \
      skip();                          \
      return;                          \
    }                                  \
  } while (0)

static int key_present(etcd_client_t *c, const char *key, int64_t *lease) {
  etcd_kvs_t r;
  if (etcd_get(c, key, 0, &r) != 0) return -1;
  int n = (int)r.n_kvs;
  if (n && lease) *lease = r.kvs[0].lease;
  etcd_kvs_free(&r);
  return n;
}

/* ---- tests ---- */

static void test_kv(void **state) {
  etcd_client_t *c = client(0, NULL);
  NEED_ETCD(c);
  int64_t r1 = 0, r2 = 0, r3 = 0, n = 0;
  assert_int_equal(etcd_put(c, "/kv/a", "1", 1, 0, &r1), 0);
  assert_int_equal(etcd_put(c, "/kv/b", "two", 3, 0, &r2), 0);
  assert_int_equal(etcd_put(c, "/kv/a", "3", 1, 0, &r3), 0);
  assert_true(r1 < r2 && r2 < r3);
  assert_int_equal(etcd_put(c, "/kw", "x", 1, 0, NULL), 0); /* shares the prefix "/k" only */
  etcd_kvs_t r;
  assert_int_equal(etcd_get(c, "/kv/a", 0, &r), 0);
  assert_int_equal(r.n_kvs, 1);
  assert_string_equal(r.kvs[0].value, "3");
  assert_int_equal(r.kvs[0].mod_revision, r3);
  assert_int_equal(r.kvs[0].create_revision, r1);
  assert_int_equal(r.kvs[0].version, 2);
  etcd_kvs_free(&r);
  /* An older revision still shows the old value. */
  assert_int_equal(etcd_get(c, "/kv/a", r1, &r), 0);
  assert_int_equal(r.n_kvs, 1);
  assert_string_equal(r.kvs[0].value, "1");
  etcd_kvs_free(&r);
  assert_int_equal(etcd_get_prefix(c, "/kv/", 0, &r), 0);
  assert_int_equal(r.n_kvs, 2);
  assert_string_equal(r.kvs[0].key, "/kv/a");
  assert_string_equal(r.kvs[1].key, "/kv/b");
  assert_int_equal(r.kvs[1].value_len, 3);
  etcd_kvs_free(&r);
  assert_int_equal(etcd_get(c, "/kv/missing", 0, &r), 0);
  assert_int_equal(r.n_kvs, 0);
  etcd_kvs_free(&r);
  assert_int_equal(etcd_delete(c, "/kv/b", &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(etcd_put(c, "/kv/c", "", 0, 0, NULL), 0);
  assert_int_equal(etcd_delete_prefix(c, "/kv/", &n), 0);
  assert_int_equal(n, 2);
  assert_int_equal(key_present(c, "/kw", NULL), 1); /* outside the prefix */
  assert_int_equal(etcd_delete(c, "/kw", NULL), 0);
  etcd_client_free(c);
}

static void test_txn(void **state) {
  etcd_client_t *c = client(0, NULL);
  NEED_ETCD(c);
  int ok = -1;
  assert_int_equal(etcd_put_if_absent(c, "/txn/leader", "A", 1, 0, &ok), 0);
  assert_int_equal(ok, 1);
  assert_int_equal(etcd_put_if_absent(c, "/txn/leader", "B", 1, 0, &ok), 0);
  assert_int_equal(ok, 0);
  etcd_kvs_t r;
  assert_int_equal(etcd_get(c, "/txn/leader", 0, &r), 0);
  assert_string_equal(r.kvs[0].value, "A");
  int64_t rev = r.kvs[0].mod_revision;
  etcd_kvs_free(&r);
  assert_int_equal(etcd_put_if_revision(c, "/txn/leader", "C", 1, 0, rev, &ok), 0);
  assert_int_equal(ok, 1);
  assert_int_equal(etcd_put_if_revision(c, "/txn/leader", "D", 1, 0, rev, &ok), 0); /* stale */
  assert_int_equal(ok, 0);
  /* A general txn: value compare, then a prefix delete and a put in one step (etcd refuses ops on
   * overlapping keys in one txn, so the put lies outside the deleted range). */
  etcd_cmp_t cmp = {.key = "/txn/leader", .target = ETCD_CMP_VALUE, .result = ETCD_CMP_EQUAL, .value = "C", .value_len = 1};
  etcd_op_t ops[2] = {{.kind = ETCD_OP_DELETE_PREFIX, .key = "/txn/l"},
                      {.kind = ETCD_OP_PUT, .key = "/txn/done", .value = "y", .value_len = 1}};
  etcd_op_t fail = {.kind = ETCD_OP_PUT, .key = "/txn/failed", .value = "y", .value_len = 1};
  assert_int_equal(etcd_txn(c, &cmp, 1, ops, 2, &fail, 1, &ok, NULL), 0);
  assert_int_equal(ok, 1);
  assert_int_equal(key_present(c, "/txn/leader", NULL), 0);
  assert_int_equal(key_present(c, "/txn/done", NULL), 1);
  assert_int_equal(key_present(c, "/txn/failed", NULL), 0);
  assert_int_equal(etcd_txn(c, &cmp, 1, ops, 2, &fail, 1, &ok, NULL), 0); /* leader is gone now */
  assert_int_equal(ok, 0);
  assert_int_equal(key_present(c, "/txn/failed", NULL), 1);
  assert_int_equal(etcd_delete_prefix(c, "/txn/", NULL), 0);
  etcd_client_free(c);
}

static void test_lease_revoke(void **state) {
  etcd_client_t *c = client(0, NULL);
  NEED_ETCD(c);
  int64_t id = 0, ttl = 0;
  assert_int_equal(etcd_lease_grant(c, 30, &id, &ttl), 0);
  assert_int_equal(ttl, 30);
  assert_int_equal(etcd_put(c, "/lease/a", "1", 1, id, NULL), 0);
  assert_int_equal(etcd_put(c, "/lease/b", "2", 1, id, NULL), 0);
  int64_t lease = 0;
  assert_int_equal(key_present(c, "/lease/a", &lease), 1);
  assert_int_equal(lease, id);
  assert_int_equal(etcd_lease_revoke(c, id), 0);
  assert_int_equal(key_present(c, "/lease/a", NULL), 0);
  assert_int_equal(key_present(c, "/lease/b", NULL), 0);
  assert_int_equal(etcd_put(c, "/lease/c", "3", 1, id, NULL), STRATA_ENOTFOUND);
  assert_int_equal(etcd_lease_revoke(c, id), STRATA_ENOTFOUND);
  etcd_client_free(c);
}

/* Registered keys outlive several TTLs, come back when the lease is revoked behind the client's
 * back, and vanish at once on session close. */
static void test_registered_keys(void **state) {
  sess_obs_t obs = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0};
  etcd_client_t *c = client(2, &obs);
  NEED_ETCD(c);
  assert_int_equal(etcd_register(c, "/reg/w1", "{\"id\":1}", 8), 0);
  assert_int_equal(etcd_register(c, "/reg/w2", "{\"id\":2}", 8), 0);
  int64_t l1 = etcd_session_lease(c), lease = 0;
  assert_true(l1 != 0);
  sleep_ms(6500); /* more than three TTLs of 2 s */
  assert_int_equal(key_present(c, "/reg/w1", &lease), 1);
  assert_int_equal(lease, l1);
  assert_int_equal(obs.n_lost, 0);
  /* Someone revokes the lease: keys go, the client notices and puts them back under a new lease. */
  assert_int_equal(etcd_lease_revoke(c, l1), 0);
  int back = 0;
  for (int t = 0; t < 4000 && !back; t += 50) {
    sleep_ms(50);
    pthread_mutex_lock(&obs.mu);
    back = obs.n_restored > 0;
    pthread_mutex_unlock(&obs.mu);
  }
  assert_true(back);
  assert_int_equal(obs.n_lost, 1);
  int64_t l2 = etcd_session_lease(c);
  assert_true(l2 != 0 && l2 != l1);
  assert_int_equal(obs.last_lease, l2);
  assert_int_equal(key_present(c, "/reg/w1", &lease), 1);
  assert_int_equal(lease, l2);
  assert_int_equal(key_present(c, "/reg/w2", &lease), 1);
  /* Unregister removes one key; closing the session removes the rest at once, for good. */
  assert_int_equal(etcd_unregister(c, "/reg/w2"), 0);
  assert_int_equal(key_present(c, "/reg/w2", NULL), 0);
  assert_int_equal(etcd_unregister(c, "/reg/w2"), STRATA_ENOTFOUND);
  assert_int_equal(etcd_session_close(c), 0);
  assert_int_equal(key_present(c, "/reg/w1", NULL), 0);
  assert_int_equal(etcd_session_lease(c), 0);
  sleep_ms(800);
  assert_int_equal(key_present(c, "/reg/w1", NULL), 0);
  etcd_client_free(c);
}

static void test_watch(void **state) {
  etcd_client_t *c = client(0, NULL);
  NEED_ETCD(c);
  watch_obs_t o = {.mu = PTHREAD_MUTEX_INITIALIZER};
  assert_int_equal(etcd_put(c, "/w/old", "before", 6, 0, NULL), 0); /* before the watch: not seen */
  etcd_watch_t *w = NULL;
  etcd_watch_cbs_t cbs = {on_events, on_reset, &o};
  assert_int_equal(etcd_watch_new(c, "/w/", 0, &cbs, &w), 0);
  int64_t r[4];
  assert_int_equal(etcd_put(c, "/w/a", "1", 1, 0, &r[0]), 0);
  assert_int_equal(etcd_put(c, "/x/other", "1", 1, 0, NULL), 0); /* outside the prefix */
  assert_int_equal(etcd_put(c, "/w/b", "2", 1, 0, &r[1]), 0);
  assert_int_equal(etcd_delete(c, "/w/a", NULL), 0);
  etcd_kvs_t kv;
  assert_int_equal(etcd_get(c, "/w/b", 0, &kv), 0);
  r[2] = kv.revision; /* the delete was the last write */
  etcd_kvs_free(&kv);
  assert_int_equal(etcd_put(c, "/w/b", "3", 1, 0, &r[3]), 0);
  assert_int_equal(wait_events(&o, 4, 5000), 4);
  sleep_ms(200);
  pthread_mutex_lock(&o.mu);
  assert_int_equal(o.n, 4);
  const char *keys[4] = {"/w/a", "/w/b", "/w/a", "/w/b"};
  const char *vals[4] = {"1", "2", "", "3"};
  const int types[4] = {ETCD_EVENT_PUT, ETCD_EVENT_PUT, ETCD_EVENT_DELETE, ETCD_EVENT_PUT};
  for (int i = 0; i < 4; i++) {
    assert_string_equal(o.evs[i].key, keys[i]);
    assert_string_equal(o.evs[i].value, vals[i]);
    assert_int_equal(o.evs[i].type, types[i]);
    assert_int_equal(o.evs[i].rev, r[i]);
  }
  pthread_mutex_unlock(&o.mu);
  etcd_watch_free(w);
  assert_int_equal(etcd_delete_prefix(c, "/w/", NULL), 0);
  assert_int_equal(etcd_delete_prefix(c, "/x/", NULL), 0);
  etcd_client_free(c);
}

static void test_compaction_relist(void **state) {
  etcd_client_t *c = client(0, NULL);
  NEED_ETCD(c);
  int64_t r1 = 0, rl = 0;
  assert_int_equal(etcd_put(c, "/cmp/x1", "1", 1, 0, &r1), 0);
  assert_int_equal(etcd_put(c, "/cmp/x2", "2", 1, 0, NULL), 0);
  assert_int_equal(etcd_put(c, "/cmp/x3", "3", 1, 0, NULL), 0);
  assert_int_equal(etcd_delete(c, "/cmp/x1", NULL), 0);
  assert_int_equal(etcd_put(c, "/cmp/x3", "33", 2, 0, &rl), 0);
  assert_int_equal(etcd_compact(c, rl), 0);
  /* A watch from before the compaction cannot replay history: it gets the current set instead. */
  watch_obs_t o = {.mu = PTHREAD_MUTEX_INITIALIZER};
  etcd_watch_t *w = NULL;
  etcd_watch_cbs_t cbs = {on_events, on_reset, &o};
  assert_int_equal(etcd_watch_new(c, "/cmp/", r1, &cbs, &w), 0);
  int reset = 0;
  for (int t = 0; t < 5000 && !reset; t += 20) {
    sleep_ms(20);
    pthread_mutex_lock(&o.mu);
    reset = o.n_resets;
    pthread_mutex_unlock(&o.mu);
  }
  assert_int_equal(reset, 1);
  pthread_mutex_lock(&o.mu);
  assert_int_equal(o.n_reset_keys, 2);
  assert_string_equal(o.reset_keys[0], "/cmp/x2");
  assert_string_equal(o.reset_keys[1], "/cmp/x3");
  assert_true(o.reset_rev >= rl);
  assert_int_equal(o.n, 0);
  pthread_mutex_unlock(&o.mu);
  int64_t r4 = 0;
  assert_int_equal(etcd_put(c, "/cmp/x4", "4", 1, 0, &r4), 0);
  assert_int_equal(wait_events(&o, 1, 5000), 1);
  pthread_mutex_lock(&o.mu);
  assert_string_equal(o.evs[0].key, "/cmp/x4");
  assert_int_equal(o.evs[0].rev, r4);
  pthread_mutex_unlock(&o.mu);
  etcd_watch_free(w);
  assert_int_equal(etcd_delete_prefix(c, "/cmp/", NULL), 0);
  etcd_client_free(c);
}

/* etcd is killed, stays down ~3 s (longer than the 2 s session TTL) and restarts on the same data
 * dir and port: the watch resumes without missing or repeating events, and the registered key is
 * back under a live lease within one TTL. */
static void test_restart(void **state) {
  sess_obs_t obs = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0};
  etcd_client_t *c = client(2, &obs);
  NEED_ETCD(c);
  watch_obs_t o = {.mu = PTHREAD_MUTEX_INITIALIZER};
  etcd_watch_t *w = NULL;
  etcd_watch_cbs_t cbs = {on_events, on_reset, &o};
  assert_int_equal(etcd_register(c, "/rs/reg/me", "up", 2), 0);
  int64_t l1 = etcd_session_lease(c);
  assert_true(l1 != 0);
  assert_int_equal(etcd_watch_new(c, "/rs/w/", 0, &cbs, &w), 0);
  int64_t r[3];
  assert_int_equal(etcd_put(c, "/rs/w/1", "a", 1, 0, &r[0]), 0);
  assert_int_equal(wait_events(&o, 1, 5000), 1);
  assert_int_equal(sh("kill"), 0);
  sleep_ms(3000);
  assert_int_equal(sh("start"), 0);
  /* Written right after the restart; the puts retry until etcd answers. */
  assert_int_equal(etcd_put(c, "/rs/w/2", "b", 1, 0, &r[1]), 0);
  assert_int_equal(etcd_put(c, "/rs/w/3", "c", 1, 0, &r[2]), 0);
  assert_int_equal(wait_events(&o, 3, 8000), 3);
  /* etcd re-extends the old lease when it restarts, so the key alone proves nothing: it must be
   * under a new lease of the session, within one TTL (plus slack for the tick and the backoff). */
  int64_t lease = 0;
  int present = 0;
  for (int t = 0; t <= 2000 + 2500 && !(present == 1 && lease != l1); t += 100) {
    present = key_present(c, "/rs/reg/me", &lease);
    if (!(present == 1 && lease != l1)) sleep_ms(100);
  }
  assert_int_equal(present, 1);
  assert_true(lease != l1 && lease != 0);
  /* The replaced lease is revoked rather than left to run out: putting under it fails. */
  int rc = 0;
  for (int t = 0; t <= 2000 && rc != STRATA_ENOTFOUND; t += 100) {
    rc = etcd_put(c, "/rs/probe", "x", 1, l1, NULL);
    if (rc != STRATA_ENOTFOUND) sleep_ms(100);
  }
  assert_int_equal(rc, STRATA_ENOTFOUND);
  /* One loss and one restore for the whole outage, however many retries it took. */
  pthread_mutex_lock(&obs.mu);
  assert_int_equal(obs.n_lost, 1);
  assert_int_equal(obs.n_restored, 1);
  assert_int_equal(obs.last_lease, lease);
  pthread_mutex_unlock(&obs.mu);
  sleep_ms(300);
  pthread_mutex_lock(&o.mu);
  assert_int_equal(o.n, 3); /* nothing repeated */
  for (int i = 0; i < 3; i++) assert_int_equal(o.evs[i].rev, r[i]);
  assert_string_equal(o.evs[1].key, "/rs/w/2");
  assert_string_equal(o.evs[2].key, "/rs/w/3");
  pthread_mutex_unlock(&o.mu);
  /* The key hangs on a lease that is being kept alive: still there two TTLs later. */
  sleep_ms(4200);
  assert_int_equal(key_present(c, "/rs/reg/me", &lease), 1);
  assert_int_equal(lease, etcd_session_lease(c));
  etcd_watch_free(w);
  assert_int_equal(etcd_session_close(c), 0);
  assert_int_equal(etcd_delete_prefix(c, "/rs/", NULL), 0);
  etcd_client_free(c);
}

/* An operator deletes a registered key while the lease lives (etcdctl del): the session notices
 * after an answered renewal (a third of the TTL) and puts it back under the same lease, without
 * reporting a lost session. A key overwritten without a lease is taken back too. */
static void test_key_deleted(void **state) {
  sess_obs_t obs = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0};
  etcd_client_t *c = client(3, &obs);
  NEED_ETCD(c);
  assert_int_equal(etcd_register(c, "/del/me", "v1", 2), 0);
  assert_int_equal(etcd_register(c, "/del/other", "v2", 2), 0);
  int64_t l1 = etcd_session_lease(c), lease = 0;
  int64_t n_del = 0;
  assert_int_equal(etcd_delete(c, "/del/me", &n_del), 0);
  assert_int_equal(n_del, 1);
  int present = 0;
  for (int t = 0; t <= 3000 + 1000 && present != 1; t += 50) { /* one TTL, plus slack */
    present = key_present(c, "/del/me", &lease);
    if (present != 1) sleep_ms(50);
  }
  assert_int_equal(present, 1);
  assert_int_equal(lease, l1);
  etcd_kvs_t r;
  assert_int_equal(etcd_get(c, "/del/me", 0, &r), 0);
  assert_int_equal(r.n_kvs, 1);
  assert_memory_equal(r.kvs[0].value, "v1", 2);
  etcd_kvs_free(&r);
  /* Overwritten by someone else, without a lease: the registered value comes back. */
  assert_int_equal(etcd_put(c, "/del/other", "intruder", 8, 0, NULL), 0);
  int ok = 0;
  for (int t = 0; t <= 3000 + 1000 && !ok; t += 50) {
    if (etcd_get(c, "/del/other", 0, &r) == 0) {
      ok = r.n_kvs == 1 && r.kvs[0].lease == l1 && r.kvs[0].value_len == 2 && !memcmp(r.kvs[0].value, "v2", 2);
      etcd_kvs_free(&r);
    }
    if (!ok) sleep_ms(50);
  }
  assert_true(ok);
  pthread_mutex_lock(&obs.mu);
  assert_int_equal(obs.n_lost, 0);
  pthread_mutex_unlock(&obs.mu);
  assert_int_equal(etcd_session_lease(c), l1);
  assert_int_equal(etcd_session_close(c), 0);
  assert_int_equal(key_present(c, "/del/me", NULL), 0);
  assert_int_equal(key_present(c, "/del/other", NULL), 0);
  etcd_client_free(c);
}

/* etcd comes back with an empty store (data dir lost; revisions start over): a watch cannot resume at
 * its revision, so it re-lists (on_reset) and follows the new store from there. Wipes etcd: run last. */
static void test_store_wiped(void **state) {
  etcd_client_t *c = client(0, NULL);
  NEED_ETCD(c);
  watch_obs_t o = {.mu = PTHREAD_MUTEX_INITIALIZER};
  etcd_watch_t *w = NULL;
  etcd_watch_cbs_t cbs = {on_events, on_reset, &o};
  for (int i = 0; i < 5; i++) assert_int_equal(etcd_put(c, "/wp/old", "x", 1, 0, NULL), 0);
  assert_int_equal(etcd_watch_new(c, "/wp/", 0, &cbs, &w), 0);
  assert_int_equal(etcd_put(c, "/wp/a", "1", 1, 0, NULL), 0);
  assert_int_equal(wait_events(&o, 1, 5000), 1);
  assert_int_equal(sh("kill"), 0);
  char cmd[PATH_MAX + 32];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s/data'", g_dir);
  assert_int_equal(system(cmd), 0);
  assert_int_equal(sh("start"), 0);
  int64_t rev = 0;
  assert_int_equal(etcd_put(c, "/wp/new", "2", 1, 0, &rev), 0);
  assert_true(rev < 5); /* the store really started over */
  int seen = 0;
  for (int t = 0; t < 8000 && !seen; t += 50) {
    pthread_mutex_lock(&o.mu);
    int in_reset = 0;
    for (int i = 0; i < o.n_reset_keys; i++) in_reset |= strcmp(o.reset_keys[i], "/wp/new") == 0;
    seen = o.n_resets == 1 && (in_reset || (o.n > 1 && strcmp(o.evs[o.n - 1].key, "/wp/new") == 0));
    if (seen) {
      for (int i = 0; i < o.n_reset_keys; i++) assert_string_not_equal(o.reset_keys[i], "/wp/a");
    }
    pthread_mutex_unlock(&o.mu);
    if (!seen) sleep_ms(50);
  }
  assert_true(seen);
  etcd_watch_free(w);
  etcd_client_free(c);
}

static void test_unreachable(void **state) {
  etcd_config_t cfg = {.endpoints = "127.0.0.1:1", .timeout_ms = 300};
  etcd_client_t *c = NULL;
  assert_int_equal(etcd_client_new(&cfg, &c), 0);
  etcd_kvs_t r;
  assert_int_equal(etcd_get(c, "/x", 0, &r), STRATA_EUNAVAILABLE);
  assert_int_equal(etcd_put(c, "/x", "1", 1, 0, NULL), STRATA_EUNAVAILABLE);
  assert_int_equal(etcd_register(c, "/x", "1", 1), STRATA_EUNAVAILABLE);
  etcd_client_free(c);
  etcd_config_t bad = {.endpoints = " , "};
  assert_int_equal(etcd_client_new(&bad, &c), STRATA_EINVAL);
  if (!g_addr[0]) return;
  /* A dead endpoint first, then the live one: calls fail over. */
  char list[128];
  snprintf(list, sizeof(list), "127.0.0.1:1,%s", g_addr);
  etcd_config_t two = {.endpoints = list, .timeout_ms = 3000};
  assert_int_equal(etcd_client_new(&two, &c), 0);
  assert_int_equal(etcd_put(c, "/fo/k", "v", 1, 0, NULL), 0);
  assert_int_equal(key_present(c, "/fo/k", NULL), 1);
  assert_int_equal(etcd_delete(c, "/fo/k", NULL), 0);
  etcd_client_free(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_kv),
      cmocka_unit_test(test_txn),
      cmocka_unit_test(test_lease_revoke),
      cmocka_unit_test(test_watch),
      cmocka_unit_test(test_compaction_relist),
      cmocka_unit_test(test_unreachable),
      cmocka_unit_test(test_registered_keys),
      cmocka_unit_test(test_key_deleted),
      cmocka_unit_test(test_restart),
      cmocka_unit_test(test_store_wiped),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
