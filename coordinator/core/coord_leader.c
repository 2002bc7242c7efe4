/* coord_leader.c: leader election and the autoscaler. A thread per coordinator tries to create the
 * leader key /strata/<cluster>/leader under its etcd session lease (put-if-absent), so exactly one
 * coordinator holds it while its session lives; the others watch it (and re-check it every tick)
 * and take over when it vanishes with its holder's lease. The leader decides each pool's replica count every
 * policy interval (autoscale_decide on p90 latencies over the policy's latency_window_s, the
 * registry's queues and KV use; the autoscaler smooths those over the same window itself)
 * and actuates it; a scale-down drains its victims (Worker.Drain) and waits for them to leave the
 * registry before the actuator removes them. Decisions are logged and exported on /metrics. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/actuator/actuator.h"
#include "coordinator/core/coord_int.h"

#define LEADER_DRAIN_DEADLINE_S 30
#define LEADER_DRAIN_WAIT_S 60.0 /* a victim that has not left by then is removed anyway */
#define LEADER_MAX_VICTIMS 16

typedef struct {
  char pool[16];
  autoscale_state_t st;
  double last_s; /* time of the last decision (0: none yet) */
  char victims[LEADER_MAX_VICTIMS][96]; /* scale-down in progress: drained, waiting to leave */
  int n_victims, target;
  double victims_since_s;
  char last_msg[320];
} leader_pool_t;

typedef struct {
  coord_t *c;
  actuator_t *act;
  etcd_watch_t *watch; /* the leader key: a delete wakes the followers at once */
  atomic_int vacant;
  int is_leader, registered;
  char key[300];
  leader_pool_t pools[COORD_MAX_POOLS];
  int n_pools;
} leader_t;

/* p90: the 90th percentile of the latencies V (at times T) no older than WINDOW_S, NAN when none. */
static double p90(const double *t, const double *v, int n, double now, double window_s) {
  double buf[COORD_LAT_WINDOW];
  int m = 0;
  for (int i = 0; i < n && i < COORD_LAT_WINDOW; i++)
    if (now - t[i] <= window_s) buf[m++] = v[i];
  if (m == 0) return NAN;
  for (int i = 1; i < m; i++) /* insertion sort: at most COORD_LAT_WINDOW samples */
    for (int j = i; j > 0 && buf[j - 1] > buf[j]; j--) {
      double x = buf[j];
      buf[j] = buf[j - 1];
      buf[j - 1] = x;
    }
  return buf[(int)ceil(0.9 * m) - 1];
}

/* sample_pool: POOL's metrics now, latencies over the last WINDOW_S seconds. */
static void sample_pool(coord_t *c, const char *pool, double window_s, autoscale_sample_t *s) {
  double now = coord_now_s();
  *s = (autoscale_sample_t){.now_s = now, .ttft_p90_ms = NAN, .itl_p90_ms = NAN, .kv_usage = NAN};
  pthread_mutex_lock(&c->snap_mu);
  for (int i = 0; i < COORD_MAX_POOLS; i++)
    if (strcmp(c->lat[i].pool, pool) == 0) {
      s->ttft_p90_ms = p90(c->lat[i].t, c->lat[i].ttft_ms, c->lat[i].n_ttft, now, window_s);
      s->itl_p90_ms = p90(c->lat[i].t_itl, c->lat[i].itl_ms, c->lat[i].n_itl, now, window_s);
    }
  pthread_mutex_unlock(&c->snap_mu);
  int n = 0;
  coord_snap_worker_t *w = coord_snap_get(c, &n);
  double kv = 0;
  for (int i = 0; w && i < n; i++) {
    if (strcmp(w[i].info.pool, pool) != 0 || w[i].health != REGISTRY_READY) continue;
    s->ready_replicas++;
    s->n_queued += w[i].load.waiting + (int)w[i].pending_requests;
    s->n_running += w[i].load.running;
    kv += w[i].load.kv_total_blocks ? (double)w[i].load.kv_used_blocks / w[i].load.kv_total_blocks : 0;
  }
  if (s->ready_replicas) s->kv_usage = kv / s->ready_replicas;
  free(w);
}

static int worker_addr(coord_t *c, const char *id, char *addr, size_t len) {
  int n = 0, found = 0;
  coord_snap_worker_t *w = coord_snap_get(c, &n);
  for (int i = 0; w && i < n; i++)
    if (strcmp(w[i].info.id, id) == 0) {
      snprintf(addr, len, "%s", w[i].info.grpc_address);
      found = 1;
    }
  free(w);
  return found;
}

/* scale_down_start: picks and drains K victims. Returns 0 when the scale-down is under way. */
static int scale_down_start(leader_t *l, leader_pool_t *p, int k, int target) {
  p->n_victims = 0;
  for (int i = 0; i < k && p->n_victims < LEADER_MAX_VICTIMS; i++) {
    char *id = p->victims[p->n_victims];
    if (actuator_pick_victim(l->act, p->pool, id, sizeof p->victims[0]) != 0) break;
    char addr[REGISTRY_NAME_MAX], err[400];
    if (worker_addr(l->c, id, addr, sizeof addr) &&
        coord_drain_worker(l->c, id, addr, LEADER_DRAIN_DEADLINE_S, err, sizeof err) != 0)
      log_warn("coordinator: autoscaler: %s; it is removed when it leaves or after %.0f s", err, LEADER_DRAIN_WAIT_S);
    p->n_victims++;
  }
  p->target = target;
  p->victims_since_s = coord_now_s();
  return p->n_victims ? 0 : STRATA_ENOTFOUND;
}

/* scale_down_poll: confirms victims that left the registry (or overstayed) and finishes the
 * scale-down once all did. */
static void scale_down_poll(leader_t *l, leader_pool_t *p) {
  int waited_out = coord_now_s() - p->victims_since_s > LEADER_DRAIN_WAIT_S;
  for (int i = 0; i < p->n_victims; i++) {
    char addr[REGISTRY_NAME_MAX];
    if (worker_addr(l->c, p->victims[i], addr, sizeof addr) && !waited_out) return;
  }
  for (int i = 0; i < p->n_victims; i++) actuator_confirm_drained(l->act, p->pool, p->victims[i]);
  int rc = actuator_set_replicas(l->act, p->pool, p->target);
  log_info("coordinator: autoscaler: pool %s scaled down to %d after draining %d worker(s)%s", p->pool, p->target,
           p->n_victims, rc ? " (the actuator failed; see above)" : "");
  p->n_victims = 0;
}

static void publish(leader_t *l, int idx, const leader_pool_t *p, const autoscale_decision_t *d, int mode_observe) {
  coord_t *c = l->c;
  pthread_mutex_lock(&c->snap_mu);
  coord_pool_status_t *s = &c->pools[idx];
  snprintf(s->pool, sizeof s->pool, "%s", p->pool);
  s->replicas = d->current_replicas;
  s->desired = mode_observe ? d->would_be_replicas : d->desired_replicas;
  snprintf(s->decision, sizeof s->decision, "%s%s", mode_observe ? "observe: " : "",
           autoscale_reason_name(mode_observe ? d->would_be_reason : d->reason));
  snprintf(s->reason, sizeof s->reason, "%s", d->message);
  autoscale_decision_metrics(p->pool, d, s->metrics, sizeof s->metrics);
  if (idx >= c->n_pools) c->n_pools = idx + 1;
  pthread_mutex_unlock(&c->snap_mu);
}

static void decide_pool(leader_t *l, int idx) {
  leader_pool_t *p = &l->pools[idx];
  coord_t *c = l->c;
  if (p->n_victims) {
    scale_down_poll(l, p);
    return;
  }
  autoscale_policy_t pol;
  char err[400] = "";
  if (coord_policy_load(c, p->pool, &pol, err, sizeof err) != 0) return; /* etcd away: hold */
  double now = coord_now_s();
  /* from the last decision with the current interval, so a shorter interval applies at once */
  if (p->last_s > 0 && now < p->last_s + pol.interval_s) return;
  p->last_s = now;
  int current = 0;
  if (actuator_get_replicas(l->act, p->pool, &current) != 0) {
    if (actuator_kind(l->act) != ACTUATOR_NONE) return;
    autoscale_sample_t s0;
    sample_pool(c, p->pool, pol.latency_window_s, &s0);
    current = s0.ready_replicas; /* none: nothing set yet; start from what serves */
  }
  autoscale_sample_t s;
  sample_pool(c, p->pool, pol.latency_window_s, &s);
  autoscale_state_t next;
  autoscale_decision_t d;
  if (autoscale_decide(&pol, &p->st, current, &s, &next, &d) != 0) return;
  publish(l, idx, p, &d, pol.mode == AUTOSCALE_MODE_OBSERVE);
  if (strcmp(d.message, p->last_msg) != 0) {
    log_info("coordinator: autoscaler: pool %s: %s%s", p->pool, pol.mode == AUTOSCALE_MODE_OBSERVE ? "(observe) " : "",
             d.message);
    snprintf(p->last_msg, sizeof p->last_msg, "%s", d.message);
  }
  if (!d.actuate) {
    p->st = next;
    return;
  }
  int rc;
  if (d.desired_replicas > current) rc = actuator_set_replicas(l->act, p->pool, d.desired_replicas);
  else rc = scale_down_start(l, p, current - d.desired_replicas, d.desired_replicas);
  if (rc == 0) p->st = next; /* else keep the old state: the decision is retried next interval */
  else log_warn("coordinator: autoscaler: pool %s: could not carry out '%s' (%s); retrying next interval", p->pool,
                d.message, strata_strerror(rc));
}

/* leadership: tries to become (or stay) the leader. */
static void leadership(leader_t *l) {
  coord_t *c = l->c;
  if (!l->registered) {
    char key[512], val[300];
    snprintf(key, sizeof key, "%scoordinators/%s", c->prefix, c->id);
    snprintf(val, sizeof val, "{\"id\":\"%s\"}", c->id);
    l->registered = etcd_register(c->etcd, key, val, strlen(val)) == 0; /* creates the session lease */
  }
  int64_t lease = etcd_session_lease(c->etcd);
  etcd_kvs_t kvs = {0};
  if (etcd_get(c->etcd, l->key, 0, &kvs) != 0) return; /* etcd away: keep what we believe */
  char holder[128] = "";
  if (kvs.n_kvs == 1) snprintf(holder, sizeof holder, "%.*s", (int)kvs.kvs[0].value_len, kvs.kvs[0].value);
  etcd_kvs_free(&kvs);
  if (!holder[0] && lease) {
    int created = 0;
    if (etcd_put_if_absent(c->etcd, l->key, c->id, strlen(c->id), lease, &created) == 0 && created)
      snprintf(holder, sizeof holder, "%s", c->id);
  }
  int was = l->is_leader;
  l->is_leader = strcmp(holder, c->id) == 0;
  if (l->is_leader != was)
    log_info("coordinator %s: %s", c->id, l->is_leader ? "elected leader: running the autoscaler" : "no longer the leader");
  pthread_mutex_lock(&c->snap_mu);
  snprintf(c->leader, sizeof c->leader, "%s", holder);
  pthread_mutex_unlock(&c->snap_mu);
}

/* on_leader_events (etcd client thread): the leader key went away: try to take it now. */
static void on_leader_events(void *arg, const etcd_event_t *evs, size_t n) {
  leader_t *l = arg;
  for (size_t i = 0; i < n; i++)
    if (evs[i].type == ETCD_EVENT_DELETE) atomic_store(&l->vacant, 1);
}

static void on_leader_reset(void *arg, const etcd_kv_t *kvs, size_t n, int64_t revision) {
  (void)kvs;
  (void)revision;
  leader_t *l = arg;
  if (n == 0) atomic_store(&l->vacant, 1);
}

static void *leader_main(void *arg) {
  leader_t *l = arg;
  coord_t *c = l->c;
  while (!atomic_load(&c->stopping)) {
    leadership(l);
    for (int i = 0; l->is_leader && i < l->n_pools && !atomic_load(&c->stopping); i++) decide_pool(l, i);
    if (!l->watch) {
      etcd_watch_cbs_t cbs = {.on_events = on_leader_events, .on_reset = on_leader_reset, .arg = l};
      if (etcd_watch_new(c->etcd, l->key, 0, &cbs, &l->watch) != 0) l->watch = NULL; /* polling still works */
    }
    atomic_store(&l->vacant, 0);
    for (int t = 0; t < c->conf->autoscale_tick_ms && !atomic_load(&c->stopping) && !atomic_load(&l->vacant); t += 50) {
      struct timespec ts = {0, 50 * 1000000L};
      nanosleep(&ts, NULL);
    }
  }
  if (l->watch) etcd_watch_free(l->watch);
  if (l->is_leader) etcd_delete(c->etcd, l->key, NULL); /* hand over at once rather than after the TTL */
  actuator_free(l->act);
  free(l);
  return NULL;
}

int coord_leader_start(coord_t *c) {
  const coord_conf_t *cf = c->conf;
  leader_t *l = calloc(1, sizeof *l);
  if (!l) return STRATA_ENOMEM;
  l->c = c;
  snprintf(l->key, sizeof l->key, "%sleader", c->prefix);
  for (int i = 0; i < cf->pools.n && l->n_pools < COORD_MAX_POOLS; i++) {
    leader_pool_t *p = &l->pools[l->n_pools++];
    snprintf(p->pool, sizeof p->pool, "%s", cf->pools.items[i]);
    autoscale_state_init(&p->st);
  }
  int kind = actuator_kind_parse(cf->actuator ? cf->actuator : "none");
  if (kind < 0) {
    log_error("coordinator: --actuator '%s' is not one of local, kubernetes, none", cf->actuator);
    free(l);
    return STRATA_EINVAL;
  }
  actuator_config_t ac = {.kind = (actuator_kind_t)kind, .local_command = cf->worker_command,
                          .k8s_api_server = cf->k8s_api_server, .k8s_namespace = cf->k8s_namespace,
                          .k8s_statefulset = cf->k8s_statefulset};
  int rc = actuator_new(&ac, &l->act);
  if (rc) {
    log_error("coordinator: cannot set up the %s actuator (%s)", cf->actuator, strata_strerror(rc));
    free(l);
    return rc;
  }
  if (pthread_create(&c->leader_thread, NULL, leader_main, l) != 0) {
    actuator_free(l->act);
    free(l);
    return STRATA_EINTERNAL;
  }
  c->leader_started = 1;
  return 0;
}

void coord_leader_stop(coord_t *c) {
  if (!c->leader_started) return;
  atomic_store(&c->stopping, 1);
  pthread_join(c->leader_thread, NULL);
  c->leader_started = 0;
}
