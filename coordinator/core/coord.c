/* coord.c: strata-coordinator: the option table, set-up (tokenizer, etcd watch, HTTP, Inference and
 * Admin gRPC, leader thread), the inbox that carries other threads' input into the loop, the periodic
 * tick and shutdown. */
#include "coordinator/core/coord.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/core/coord_int.h"

static const cfg_option_t g_options[] = {
    CFG_STRING("model", coord_conf_t, model, NULL, 0,
               "Model path (.gguf file or HF directory: only its tokenizer and chat template are read) or dummy:<preset>"),
    CFG_STRING("served-model-name", coord_conf_t, served_model_name, NULL, 0,
               "Model name clients and workers use (default: the model's file or directory name)"),
    CFG_STRING("etcd", coord_conf_t, etcd, NULL, 0, "etcd endpoints ip:port[,ip:port] (required)"),
    CFG_STRING("cluster", coord_conf_t, cluster, "default", 0, "Cluster name: /strata/<cluster>/..."),
    CFG_STRING("id", coord_conf_t, id, NULL, 0, "Coordinator id (default: coord-<hostname>-<pid>)"),
    CFG_STRING("host", coord_conf_t, host, "127.0.0.1", 0, "Address HTTP and gRPC listen on (0.0.0.0 for all)"),
    CFG_INT("port", coord_conf_t, port, "8000", 0, 65535, 0, "HTTP port (0 picks a free one)"),
    CFG_INT("grpc-port", coord_conf_t, grpc_port, "50052", 0, 65535, 0, "Admin gRPC port (0 picks a free one)"),
    CFG_INT("inference-grpc-port", coord_conf_t, inference_grpc_port, "50051", -1, 65535, 0,
            "gRPC port of the strata.v1.Inference API (0 picks a free one, -1 disables it)"),
    CFG_LIST("api-key", coord_conf_t, api_keys, NULL, CFG_SECRET,
             "Bearer token clients must send on /v1 and on gRPC Inference calls (repeat, or a comma list)"),
    CFG_STRING("tls-cert", coord_conf_t, tls_cert, NULL, 0,
               "PEM certificate chain (with --tls-key: HTTPS, and TLS on the Inference gRPC port)"),
    CFG_STRING("tls-key", coord_conf_t, tls_key, NULL, 0, "PEM private key"),
    CFG_FLOAT("overlap-weight", coord_conf_t, overlap_weight, "1.0", 0.0, ROUTER_WEIGHT_MAX, 0,
              "Router: cost of one uncached prompt block (docs/routing.md)"),
    CFG_FLOAT("queue-weight", coord_conf_t, queue_weight, "1.0", 0.0, ROUTER_WEIGHT_MAX, 0,
              "Router: cost of one waiting request, in blocks"),
    CFG_INT("migration-limit", coord_conf_t, migration_limit, "3", 0, 100, 0,
            "Times one request may move to another worker after its worker broke"),
    CFG_INT("stall-timeout-ms", coord_conf_t, stall_timeout_ms, "15000", 0, 3600000, 0,
            "Move a request whose worker sent nothing for this long while not reporting busy (0: never)"),
    CFG_INT("max-model-len", coord_conf_t, max_model_len, "0", 0, 1 << 24, 0,
            "Context length requests are checked against (0: the largest a registered worker of the model "
            "accepts, 2048 until one registers; workers check their own)"),
    CFG_INT("max-n", coord_conf_t, max_n, "16", 1, COORD_MAX_CHOICES, 0, "Choices per request at most (n x prompts)"),
    CFG_INT("max-stops", coord_conf_t, max_stops, "8", 0, 64, 0, "Stop strings per request at most"),
    CFG_INT("max-stop-len", coord_conf_t, max_stop_len, "256", 1, 4096, 0, "Longest stop string in bytes"),
    CFG_INT64("max-body-bytes", coord_conf_t, max_body_bytes, "8388608", 1024, 1LL << 32, 0,
              "Largest request body; larger ones get 413"),
    CFG_STRING("actuator", coord_conf_t, actuator, "none", 0, "How the leader scales pools: local | kubernetes | none"),
    CFG_STRING("worker-command", coord_conf_t, worker_command, NULL, 0,
               "local actuator: worker command template ({pool} {port} {id} {index}; see actuator.h)"),
    CFG_STRING("k8s-api-server", coord_conf_t, k8s_api_server, NULL, 0, "kubernetes actuator: API server URL"),
    CFG_STRING("k8s-namespace", coord_conf_t, k8s_namespace, NULL, 0, "kubernetes actuator: namespace"),
    CFG_STRING("k8s-statefulset", coord_conf_t, k8s_statefulset, NULL, 0,
               "kubernetes actuator: each pool's StatefulSet, {pool} replaced (default strata-worker-{pool})"),
    CFG_INT("autoscale-tick-ms", coord_conf_t, autoscale_tick_ms, "1000", 50, 60000, 0,
            "How often the leader checks leadership and pools (each pool decides every interval_s)"),
    CFG_LIST("pool", coord_conf_t, pools, "unified", 0, "Pools the leader scales (repeat for several)"),
    CFG_END};

const cfg_option_t *coord_options(void) { return g_options; }

int64_t coord_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double coord_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- inbox ---- */

void coord_msg_free(coord_msg_t *m) {
  if (!m) return;
  free(m->key);
  free(m->value);
  free(m->bytes);
  for (int i = 0; i < m->n; i++) {
    free(m->keys[i]);
    free(m->values[i]);
  }
  free(m->keys);
  free(m->values);
  free(m->value_lens);
  free(m);
}

void coord_post(coord_t *c, coord_msg_t *m) {
  m->next = NULL;
  pthread_mutex_lock(&c->inbox_mu);
  if (c->inbox_tail) c->inbox_tail->next = m;
  else c->inbox_head = m;
  c->inbox_tail = m;
  pthread_mutex_unlock(&c->inbox_mu);
  ev_async_send(c->loop, &c->wake);
}

void coord_post_packed(coord_t *c, coord_msg_kind_t kind, void *ptr, uint64_t attempt, const ProtobufCMessage *msg) {
  coord_msg_t *m = calloc(1, sizeof *m);
  size_t n = protobuf_c_message_get_packed_size(msg);
  uint8_t *b = malloc(n ? n : 1);
  if (!m || !b) {
    log_error("coordinator: out of memory queueing a worker message; it is lost");
    free(m);
    free(b);
    return;
  }
  protobuf_c_message_pack(msg, b);
  m->kind = kind;
  m->ptr = ptr;
  m->attempt = attempt;
  m->bytes = b;
  m->n_bytes = n;
  coord_post(c, m);
}

static char *dup_bytes(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (!d) return NULL;
  memcpy(d, s, n);
  d[n] = 0;
  return d;
}

/* etcd watch callbacks (etcd client thread): copy and forward. */
static void on_watch_events(void *arg, const etcd_event_t *evs, size_t n) {
  coord_t *c = arg;
  for (size_t i = 0; i < n; i++) {
    coord_msg_t *m = calloc(1, sizeof *m);
    if (!m) goto oom;
    m->kind = evs[i].type == ETCD_EVENT_PUT ? CM_WATCH_PUT : CM_WATCH_DEL;
    m->key = dup_bytes(evs[i].key, evs[i].key_len);
    m->value = dup_bytes(evs[i].value ? evs[i].value : "", evs[i].value ? evs[i].value_len : 0);
    m->value_len = evs[i].value ? evs[i].value_len : 0;
    if (!m->key || !m->value) {
      coord_msg_free(m);
      goto oom;
    }
    coord_post(c, m);
  }
  return;
oom:
  log_error("coordinator: out of memory copying etcd watch events; the worker table may be stale until the next re-list");
}

static void on_watch_reset(void *arg, const etcd_kv_t *kvs, size_t n, int64_t revision) {
  coord_t *c = arg;
  coord_msg_t *m = calloc(1, sizeof *m);
  if (!m) goto oom;
  m->kind = CM_WATCH_RESET;
  m->keys = calloc(n + 1, sizeof *m->keys);
  m->values = calloc(n + 1, sizeof *m->values);
  m->value_lens = calloc(n + 1, sizeof *m->value_lens);
  if (!m->keys || !m->values || !m->value_lens) goto oom_m;
  for (size_t i = 0; i < n; i++) {
    m->keys[i] = dup_bytes(kvs[i].key, kvs[i].key_len);
    m->values[i] = dup_bytes(kvs[i].value, kvs[i].value_len);
    m->value_lens[i] = kvs[i].value_len;
    m->n = (int)i + 1;
    if (!m->keys[i] || !m->values[i]) goto oom_m;
  }
  log_info("coordinator: worker table re-listed at etcd revision %lld (%zu workers)", (long long)revision, n);
  coord_post(c, m);
  return;
oom_m:
  coord_msg_free(m);
oom:
  log_error("coordinator: out of memory copying an etcd re-list; the worker table may be stale");
}

/* workers_max_model_len: the largest context a registered worker of the served model accepts (a request
 * that fits none is refused up front), or COORD_DEFAULT_MODEL_LEN while none has reported one. */
static int workers_max_model_len(coord_t *c) {
  int best = 0;
  for (int i = 0; i < registry_count(&c->reg); i++) {
    const registry_worker_info_t *w = &registry_at(&c->reg, i)->info;
    if (strcmp(w->model, c->model_name) == 0 && w->max_model_len > best) best = w->max_model_len;
  }
  return best ? best : COORD_DEFAULT_MODEL_LEN;
}

static void apply_watch(coord_t *c, coord_msg_t *m) {
  if (m->kind == CM_WATCH_PUT) {
    if (registry_put(&c->reg, m->key, m->value, m->value_len) == 0) log_info("coordinator: worker %s registered", m->key);
  } else if (m->kind == CM_WATCH_DEL) {
    if (registry_delete(&c->reg, m->key) == 0) log_info("coordinator: worker %s left", m->key);
  } else {
    registry_entry_t *e = calloc((size_t)m->n + 1, sizeof *e);
    if (!e) {
      log_error("coordinator: out of memory applying an etcd re-list");
      return;
    }
    for (int i = 0; i < m->n; i++) e[i] = (registry_entry_t){m->keys[i], m->values[i], m->value_lens[i]};
    if (registry_reset(&c->reg, e, m->n) != 0) log_error("coordinator: out of memory applying an etcd re-list");
    free(e);
  }
  coord_workers_sync(c);
  /* NOTE: the gRPC thread parses requests against ctx too: one aligned int, stored atomically */
  if (!c->conf->max_model_len) __atomic_store_n(&c->ctx.max_model_len, workers_max_model_len(c), __ATOMIC_RELAXED);
}

static void on_wake(struct ev_loop *loop, ev_async *w, int revents) {
  (void)loop;
  (void)revents;
  coord_t *c = w->data;
  for (;;) {
    pthread_mutex_lock(&c->inbox_mu);
    coord_msg_t *m = c->inbox_head;
    c->inbox_head = c->inbox_tail = NULL;
    pthread_mutex_unlock(&c->inbox_mu);
    if (!m) break;
    while (m) {
      coord_msg_t *next = m->next;
      switch (m->kind) {
        case CM_WATCH_PUT:
        case CM_WATCH_DEL:
        case CM_WATCH_RESET: apply_watch(c, m); break;
        case CM_WEVENT: coord_workers_on_event(c, m); break;
        case CM_WCLOSED: coord_workers_on_closed(c, m); break;
        case CM_GEN_MSG: coord_gen_on_msg(c, m); break;
        case CM_GEN_CLOSED: coord_gen_on_closed(c, m); break;
        case CM_SET_HEALTH:
          registry_set_health(&c->reg, m->key, (registry_health_t)m->rc, m->text, coord_now_ms());
          break;
      }
      coord_msg_free(m);
      m = next;
    }
  }
}

/* ---- snapshot for other threads ---- */

static void snap_refresh(coord_t *c) {
  int n = registry_count(&c->reg);
  coord_snap_worker_t *s = calloc((size_t)n + 1, sizeof *s);
  if (!s) return; /* keep the old one; retried next tick */
  for (int i = 0; i < n; i++) {
    const registry_worker_t *w = registry_at(&c->reg, i);
    s[i].info = w->info;
    s[i].health = w->health;
    s[i].load = w->load;
    s[i].pending_requests = w->pending_requests;
  }
  pthread_mutex_lock(&c->snap_mu);
  free(c->snap);
  c->snap = s;
  c->n_snap = n;
  pthread_mutex_unlock(&c->snap_mu);
}

coord_snap_worker_t *coord_snap_get(coord_t *c, int *n) {
  pthread_mutex_lock(&c->snap_mu);
  coord_snap_worker_t *s = malloc(sizeof *s * ((size_t)c->n_snap + 1));
  *n = s ? c->n_snap : 0;
  if (s && c->n_snap) memcpy(s, c->snap, sizeof *s * (size_t)c->n_snap);
  pthread_mutex_unlock(&c->snap_mu);
  return s;
}

void coord_lat_add(coord_t *c, const char *pool, int is_itl, double ms) {
  pthread_mutex_lock(&c->snap_mu);
  coord_lat_t *l = NULL;
  for (int i = 0; i < COORD_MAX_POOLS && !l; i++)
    if (strcmp(c->lat[i].pool, pool) == 0 || c->lat[i].pool[0] == 0) l = &c->lat[i];
  if (l) {
    snprintf(l->pool, sizeof l->pool, "%s", pool);
    double now = coord_now_s();
    if (is_itl) {
      l->t_itl[l->i_itl] = now;
      l->itl_ms[l->i_itl] = ms;
      l->i_itl = (l->i_itl + 1) % COORD_LAT_WINDOW;
      if (l->n_itl < COORD_LAT_WINDOW) l->n_itl++;
    } else {
      l->t[l->i_ttft] = now;
      l->ttft_ms[l->i_ttft] = ms;
      l->i_ttft = (l->i_ttft + 1) % COORD_LAT_WINDOW;
      if (l->n_ttft < COORD_LAT_WINDOW) l->n_ttft++;
    }
  }
  pthread_mutex_unlock(&c->snap_mu);
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  coord_t *c = w->data;
  coord_workers_sync(c);
  coord_workers_metrics(c);
  snap_refresh(c); /* loads change with every event: refresh each tick */
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents) {
  (void)revents;
  log_info("coordinator: signal %d, shutting down", w->signum);
  ev_break(loop, EVBREAK_ALL);
}

/* ---- set-up ---- */

static int load_tokenizer(coord_t *c) {
  const coord_conf_t *cf = c->conf;
  int rc;
  if (strncmp(cf->model, "dummy:", 6) == 0) rc = tok_new_bytes(&c->tok, 512);
  else rc = tok_load(&c->tok, cf->model);
  if (rc) {
    log_error("coordinator: cannot load the tokenizer of %s (%s); --model takes a .gguf file, an HF directory or dummy:<preset>",
              cf->model, strata_strerror(rc));
    return rc;
  }
  const char *tmpl = tok_chat_template(c->tok);
  char err[CHAT_ERR_MAX] = "";
  if (tmpl && chat_template_compile(tmpl, (size_t)-1, &c->chat, err, sizeof err) != 0)
    log_warn("coordinator: the model's chat template does not compile (%s); chat uses the ChatML fallback", err);
  /* The served name is the model's short name, as the workers compute it (their registrations must match). */
  const char *p = cf->model;
  size_t n = strlen(p);
  while (n > 1 && p[n - 1] == '/') n--;
  size_t start = n;
  while (start > 0 && p[start - 1] != '/') start--;
  if (cf->served_model_name) snprintf(c->model_name, sizeof c->model_name, "%s", cf->served_model_name);
  else snprintf(c->model_name, sizeof c->model_name, "%.*s", (int)(n - start), p + start);
  c->ctx = (api_ctx_t){.tok = c->tok, .chat = c->chat, .model_name = c->model_name,
                       .max_model_len = cf->max_model_len ? cf->max_model_len : COORD_DEFAULT_MODEL_LEN,
                       .max_n = cf->max_n, .max_stops = cf->max_stops,
                       .max_stop_len = cf->max_stop_len};
  return 0;
}

static int start_etcd(coord_t *c) {
  etcd_config_t ec = {.endpoints = c->conf->etcd, .timeout_ms = 3000};
  int rc = etcd_client_new(&ec, &c->etcd);
  if (rc) {
    log_error("coordinator: cannot create the etcd client for '%s' (%s)", c->conf->etcd, strata_strerror(rc));
    return rc;
  }
  char prefix[300];
  snprintf(prefix, sizeof prefix, "%sworkers/", c->prefix);
  etcd_watch_cbs_t cbs = {.on_events = on_watch_events, .on_reset = on_watch_reset, .arg = c};
  /* NOTE: from revision 1, so the first thing the watch delivers is the whole history (or, once
   * compacted, a reset with the current content): no separate initial listing to race with. */
  rc = etcd_watch_new(c->etcd, prefix, 1, &cbs, &c->watch);
  if (rc) log_error("coordinator: cannot watch %s in etcd (%s)", prefix, strata_strerror(rc));
  return rc;
}

static int start_http(coord_t *c) {
  http_server_config_t hc;
  http_server_config_default(&hc);
  hc.host = c->conf->host;
  hc.port = c->conf->port;
  hc.max_body_bytes = (size_t)c->conf->max_body_bytes;
  hc.tls_cert_file = c->conf->tls_cert;
  hc.tls_key_file = c->conf->tls_key;
  hc.on_request = coord_on_request;
  hc.data = c;
  return http_server_new(c->loop, &hc, &c->http);
}

static int coord_init(coord_t *c, const coord_conf_t *conf) {
  c->conf = conf;
  c->started = (int64_t)time(NULL);
  c->next_seq = 1;
  pthread_mutex_init(&c->inbox_mu, NULL);
  pthread_mutex_init(&c->snap_mu, NULL);
  if (conf->id) snprintf(c->id, sizeof c->id, "%s", conf->id);
  else {
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    snprintf(c->id, sizeof c->id, "coord-%s-%d", host, (int)getpid());
  }
  snprintf(c->prefix, sizeof c->prefix, "/strata/%s/", conf->cluster);
  int rc = registry_init(&c->reg, conf->cluster, NULL);
  if (rc) {
    log_error("coordinator: bad --cluster '%s'", conf->cluster);
    return rc;
  }
  router_config_t rcfg = {.overlap_weight = conf->overlap_weight, .queue_weight = conf->queue_weight,
                          .seed = (uint64_t)getpid()};
  return router_init(&c->router, &c->reg, &rcfg);
}

int coord_run(const coord_conf_t *conf) {
  if (!conf->model || !conf->etcd) {
    log_error("coordinator: --model and --etcd are required (see --help)");
    return STRATA_EINVAL;
  }
  if ((conf->tls_cert != NULL) != (conf->tls_key != NULL)) {
    log_error("coordinator: --tls-cert and --tls-key go together (give both for TLS, or neither)");
    return STRATA_EINVAL;
  }
  coord_t *c = calloc(1, sizeof *c);
  if (!c) return STRATA_ENOMEM;
  int rc = coord_init(c, conf);
  if (rc) goto fail_early;
  rc = STRATA_EINTERNAL;
  c->loop = ev_default_loop(EVFLAG_AUTO);
  if (!c->loop) goto fail;
  ev_async_init(&c->wake, on_wake);
  c->wake.data = c;
  ev_async_start(c->loop, &c->wake);
  if ((rc = metrics_registry_new(&c->mreg)) || (rc = coord_metrics_init(c))) goto fail;
  if ((rc = load_tokenizer(c))) goto fail;
  coord_backend_init(c);
  coord_front_init(c);
  rpc_init();
  c->rpc_inited = 1;
  if ((rc = rpc_loop_new(NULL, NULL, 100, &c->rpc))) goto fail;
  if ((rc = start_http(c))) goto fail;
  if ((rc = coord_grpc_start(c))) goto fail;
  if ((rc = coord_admin_start(c))) goto fail;
  if ((rc = start_etcd(c))) goto fail;
  if ((rc = coord_leader_start(c))) goto fail;
  ev_timer_init(&c->tick, on_tick, 0.1, 0.1);
  c->tick.data = c;
  ev_timer_start(c->loop, &c->tick);
  ev_signal_init(&c->sigint, on_signal, SIGINT);
  ev_signal_init(&c->sigterm, on_signal, SIGTERM);
  ev_signal_start(c->loop, &c->sigint);
  ev_signal_start(c->loop, &c->sigterm);
  log_info("coordinator %s: %s on %s://%s:%d, Admin gRPC on %s:%d, etcd %s, cluster %s%s", c->id, c->model_name,
           conf->tls_cert ? "https" : "http", conf->host, http_server_port(c->http), conf->host,
           rpc_server_port(c->admin), conf->etcd, conf->cluster, conf->api_keys.n ? ", API keys required" : "");
  printf("strata-coordinator: listening on %s:%d grpc %s:%d\n", conf->host, http_server_port(c->http), conf->host,
         rpc_server_port(c->admin));
  fflush(stdout);
  ev_run(c->loop, 0);
  rc = 0;
fail:
  atomic_store(&c->stopping, 1);
  coord_leader_stop(c);
  if (c->watch) etcd_watch_free(c->watch);
  http_server_free(c->http); /* close callbacks cancel what is in flight */
  coord_grpc_stop(c);        /* so does this, for the gRPC calls */
  if (c->admin) rpc_server_free(c->admin);
  coord_gens_cancel_all(c);
  coord_workers_stop(c);
  if (c->rpc) rpc_loop_free(c->rpc); /* the streams' last callbacks run here */
  if (c->loop) {
    on_wake(c->loop, &c->wake, 0); /* frees what the last callbacks posted */
    ev_async_stop(c->loop, &c->wake);
    ev_timer_stop(c->loop, &c->tick);
    ev_signal_stop(c->loop, &c->sigint);
    ev_signal_stop(c->loop, &c->sigterm);
  }
  coord_workers_free(c);
  if (c->etcd) {
    etcd_session_close(c->etcd);
    etcd_client_free(c->etcd);
  }
  if (c->rpc_inited) rpc_shutdown();
  chat_template_free(c->chat);
  tok_free(c->tok);
  metrics_registry_free(c->mreg);
  router_deinit(&c->router);
  registry_deinit(&c->reg);
fail_early:
  free(c->snap);
  pthread_mutex_destroy(&c->inbox_mu);
  pthread_mutex_destroy(&c->snap_mu);
  free(c);
  return rc;
}
