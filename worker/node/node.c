/* node.c: strata-worker's set-up, registration (etcd session key) and control loop (engine events,
 * WorkerEvents, signals, drain, shutdown). */
#define _GNU_SOURCE /* pipe2 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/log.h"
#include "common/status.h"
#include "worker/node/node_int.h"

#ifndef STRATA_VERSION
#define STRATA_VERSION "0.0.0"
#endif

/* How long after the drain deadline aborted requests may take to report back before we exit anyway. */
#define NODE_ABORT_GRACE_MS 5000
/* How long finished streams get to flush their last messages before the server cancels every call.
 * NOTE: rpc_server_free() cancels at once; a graceful rpc shutdown (wait for calls to end, up to a
 * grace period) would make this exact instead of a fixed pause. */
#define NODE_FLUSH_GRACE_MS 500

static const char *const g_pool_names[] = {"unified", "prefill", "decode", NULL};

static const cfg_option_t g_options[] = {
    CFG_STRING("model", worker_node_conf_t, model, NULL, 0, "Hugging Face directory, .gguf file or dummy:<preset>"),
    CFG_STRING("served-model-name", worker_node_conf_t, served_model_name, NULL, 0,
               "Model name in the registration (default: the model's short name)"),
    CFG_STRING("cluster", worker_node_conf_t, cluster, "default", 0, "Cluster name: /strata/<cluster>/..."),
    CFG_ENUM("pool", worker_node_conf_t, pool, g_pool_names, "unified", 0, "unified | prefill | decode"),
    CFG_STRING("id", worker_node_conf_t, id, NULL, 0, "Worker id (default: <hostname>-<pid>)"),
    CFG_STRING("host", worker_node_conf_t, host, "127.0.0.1", 0, "Address the gRPC server binds (0.0.0.0: all)"),
    CFG_INT("grpc-port", worker_node_conf_t, grpc_port, "0", 0, 65535, 0, "gRPC port (0 picks a free one)"),
    CFG_STRING("advertise", worker_node_conf_t, advertise, NULL, 0,
               "host:port coordinators dial (default: --host and the bound port)"),
    CFG_STRING("etcd", worker_node_conf_t, etcd, NULL, 0, "etcd endpoints ip:port[,ip:port]; empty: no registration"),
    CFG_INT("lease-ttl", worker_node_conf_t, lease_ttl_s, "10", 2, 3600, 0, "etcd lease TTL in seconds"),
    CFG_INT("drain-timeout", worker_node_conf_t, drain_timeout_s, "30", 0, 86400, 0,
            "Seconds in-flight requests get to finish on SIGTERM or Drain"),
    CFG_INT("stats-interval-ms", worker_node_conf_t, stats_interval_ms, "200", 10, 60000, 0,
            "A load + KV-event update at least this often"),
    CFG_STRING("device", worker_node_conf_t, device, "auto", 0, "cpu | cuda[:N] | auto"),
    CFG_INT("max-num-seqs", worker_node_conf_t, max_num_seqs, "256", 1, 65536, 0, "Running sequences at most"),
    CFG_INT("max-batched-tokens", worker_node_conf_t, max_batched_tokens, "0", 0, 1 << 20, 0,
            "Tokens per engine step (0: 8192 on a GPU, 2048 on the CPU)"),
    CFG_INT("num-kv-blocks", worker_node_conf_t, num_kv_blocks, "0", 0, 1 << 24, 0, "KV cache blocks (0: from memory)"),
    CFG_INT("max-model-len", worker_node_conf_t, max_model_len, "0", 0, 1 << 24, 0, "Context length (0: the model's)"),
    CFG_INT("threads", worker_node_conf_t, threads, "0", 0, 4096, 0, "CPU threads (0: all cores)"),
    CFG_INT("block-size", worker_node_conf_t, block_size, "16", 1, 1024, 0, "Tokens per KV block"),
    CFG_BOOL("prefix-caching", worker_node_conf_t, prefix_caching, "true", 0, "Reuse cached prompt blocks"),
    CFG_END};

const cfg_option_t *worker_node_options(void) { return g_options; }

const char *worker_pool_name(worker_pool_t pool) {
  return (unsigned)pool <= WORKER_POOL_DECODE ? g_pool_names[pool] : "?";
}

int worker_node_key(const char *cluster, worker_pool_t pool, const char *id, char *buf, size_t len) {
  if (!cluster || !*cluster || strchr(cluster, '/') || !id || !*id || strchr(id, '/') || strlen(id) > 127 ||
      (unsigned)pool > WORKER_POOL_DECODE) {
    log_error("worker: cluster '%s' and id '%s' must be non-empty, without '/', id at most 127 bytes",
              cluster ? cluster : "", id ? id : "");
    return STRATA_EINVAL;
  }
  int k = snprintf(buf, len, "/strata/%s/workers/%s/%s", cluster, worker_pool_name(pool), id);
  if (k < 0 || (size_t)k >= len) {
    log_error("worker: the registration key for cluster '%s' and id '%s' is too long", cluster, id);
    return STRATA_EINVAL;
  }
  return 0;
}

char *worker_node_reg_json(const worker_node_reg_t *reg) {
  cJSON *o = cJSON_CreateObject();
  char *out = NULL;
  if (!o) return NULL;
  if (cJSON_AddStringToObject(o, "id", reg->id) && cJSON_AddStringToObject(o, "pool", worker_pool_name(reg->pool)) &&
      cJSON_AddStringToObject(o, "role", worker_pool_name(reg->pool)) &&
      cJSON_AddStringToObject(o, "model", reg->model) &&
      cJSON_AddStringToObject(o, "grpc_address", reg->grpc_address) &&
      cJSON_AddStringToObject(o, "version", reg->version) && cJSON_AddNumberToObject(o, "tp", reg->tp) &&
      cJSON_AddNumberToObject(o, "pp", reg->pp) && cJSON_AddNumberToObject(o, "block_size", reg->block_size) &&
      cJSON_AddNumberToObject(o, "kv_blocks", reg->kv_blocks) &&
      cJSON_AddNumberToObject(o, "max_model_len", reg->max_model_len))
    out = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return out;
}

/* ---- plumbing ---- */

int64_t node_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void node_wake(worker_node_t *n) {
  uint64_t one = 1;
  /* A full counter already means "wake up": nothing to do when the write fails. */
  if (write(n->wake_fd, &one, sizeof one) < 0) return;
}

static void on_engine_notify(void *data) { node_wake(data); }

/* NOTE: a self-pipe rather than signalfd: threads that libraries start before main() (BLAS pools,
 * sanitizers) do not have SIGTERM blocked, and a signal delivered to one of them would kill us. */
static int g_sig_pipe[2] = {-1, -1};

static void on_signal(int signo) {
  int saved = errno;
  unsigned char b = (unsigned char)signo;
  if (write(g_sig_pipe[1], &b, 1) < 0) { /* the pipe is full: a drain is already pending */
  }
  errno = saved;
}

static int signals_install(struct sigaction *old_term, struct sigaction *old_int) {
  if (pipe2(g_sig_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return STRATA_EIO;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, old_term);
  sigaction(SIGINT, &sa, old_int);
  return 0;
}

static void signals_restore(const struct sigaction *old_term, const struct sigaction *old_int) {
  if (g_sig_pipe[0] < 0) return;
  sigaction(SIGTERM, old_term, NULL);
  sigaction(SIGINT, old_int, NULL);
  close(g_sig_pipe[0]);
  close(g_sig_pipe[1]);
  g_sig_pipe[0] = g_sig_pipe[1] = -1;
}

/* The registrar thread: etcd may be down at start; keep trying without blocking the control loop. */
static void *registrar_main(void *arg) {
  worker_node_t *n = arg;
  int warned = 0;
  while (!atomic_load(&n->stopping)) {
    int rc = etcd_register(n->etcd, n->key, n->reg_json, strlen(n->reg_json));
    if (rc == 0) {
      log_info("worker: registered %s", n->key);
      return NULL;
    }
    if (!warned++)
      log_warn("worker: cannot register %s in etcd (%s): serving anyway, retrying every second", n->key,
               strata_strerror(rc));
    for (int i = 0; i < 10 && !atomic_load(&n->stopping); i++) usleep(100 * 1000);
  }
  return NULL;
}

static int engine_config(const worker_node_conf_t *c, engine_cfg_t *ec) {
  engine_cfg_default(ec);
  snprintf(ec->device, sizeof ec->device, "%s", c->device ? c->device : "auto");
  ec->n_threads = c->threads;
  ec->max_num_seqs = c->max_num_seqs;
  ec->max_batched_tokens = c->max_batched_tokens;
  ec->max_model_len = c->max_model_len;
  ec->block_size = c->block_size;
  ec->num_kv_blocks = c->num_kv_blocks;
  ec->prefix_caching = c->prefix_caching;
  return 0;
}

/* start_engine: the model, the engine (KV events into N) and its thread. */
static int start_engine(worker_node_t *n, model_t **m) {
  engine_cfg_t ec;
  engine_t *e = NULL;
  int rc = engine_config(n->conf, &ec);
  model_load_opts_t lo = {.dtype = -1, .dummy_on_device = backend_device_is_gpu(ec.device)};
  if (rc || (rc = model_load(m, n->conf->model, &lo)) || (rc = engine_create(&e, *m, &ec))) return rc;
  engine_set_kv_event_cb(e, node_on_kv_event, n);
  n->max_model_len = engine_max_model_len(e);
  n->vocab_size = (*m)->cfg.vocab_size;
  snprintf(n->model_name, sizeof n->model_name, "%s",
           n->conf->served_model_name ? n->conf->served_model_name : (*m)->name);
  engine_stats_t st;
  engine_stats(e, &st);
  n->kv_blocks = st.kv_blocks_total;
  if ((rc = engine_loop_start(&n->engine, e, on_engine_notify, n))) engine_free(e);
  return rc;
}

static int start_rpc(worker_node_t *n) {
  const worker_node_conf_t *c = n->conf;
  char addr[300];
  const char *host = c->host && *c->host ? c->host : "127.0.0.1";
  snprintf(addr, sizeof addr, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, c->grpc_port);
  node_rpc_methods(n);
  rpc_server_opts_t o = {.addr = addr, .max_recv_bytes = 64 << 20};
  int rc = rpc_server_new(&o, n->methods, 3, &n->rpc);
  if (rc) return rc;
  int port = rpc_server_port(n->rpc);
  if (c->advertise && *c->advertise)
    snprintf(n->grpc_address, sizeof n->grpc_address, "%s", c->advertise);
  else
    snprintf(n->grpc_address, sizeof n->grpc_address, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
  log_info("worker %s: %s serving strata.v1.Worker on %s (context %d, %d KV blocks)", n->id, n->model_name, addr,
           n->max_model_len, n->kv_blocks);
  printf("strata-worker: listening on %s:%d\n", host, port);
  fflush(stdout);
  return 0;
}

static int make_identity(worker_node_t *n) {
  const worker_node_conf_t *c = n->conf;
  if (c->id && *c->id) {
    snprintf(n->id, sizeof n->id, "%s", c->id);
  } else {
    char host[64] = "worker";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    snprintf(n->id, sizeof n->id, "%s-%d", host, (int)getpid());
  }
  return worker_node_key(c->cluster ? c->cluster : "default", (worker_pool_t)c->pool, n->id, n->key, sizeof n->key);
}

static int start_etcd(worker_node_t *n, pthread_t *th) {
  worker_node_reg_t reg = {.id = n->id, .model = n->model_name, .grpc_address = n->grpc_address,
                           .version = STRATA_VERSION, .pool = (worker_pool_t)n->conf->pool, .tp = 1, .pp = 1,
                           .block_size = n->conf->block_size, .kv_blocks = n->kv_blocks,
                           .max_model_len = n->max_model_len};
  if (!(n->reg_json = worker_node_reg_json(&reg))) return STRATA_ENOMEM;
  /* No on_session: a lapsed lease changes nothing here. The client re-puts the key by itself. */
  etcd_config_t ec = {.endpoints = n->conf->etcd, .timeout_ms = 2000, .session_ttl_s = n->conf->lease_ttl_s};
  int rc = etcd_client_new(&ec, &n->etcd);
  if (rc) {
    log_error("worker: cannot set up the etcd client for '%s': %s", n->conf->etcd, strata_strerror(rc));
    return rc;
  }
  if (pthread_create(th, NULL, registrar_main, n) != 0) {
    log_error("worker: cannot start the registration thread");
    return STRATA_EINTERNAL;
  }
  return 0;
}

/* ---- the control loop ---- */

static void begin_drain(worker_node_t *n, int64_t deadline_ms, const char *why) {
  pthread_mutex_lock(&n->mu);
  if (!n->draining || deadline_ms < n->drain_deadline_ms) n->drain_deadline_ms = deadline_ms;
  if (!n->draining) log_info("worker: %s: draining (%d in flight)", why, n->n_gens);
  n->draining = 1;
  pthread_mutex_unlock(&n->mu);
}

/* One pass of the loop after a wake-up or a timeout. Returns 1 when the drain is complete. */
static int control_step(worker_node_t *n, int64_t now) {
  node_dispatch(n);
  pthread_mutex_lock(&n->mu);
  int draining = n->draining, n_gens = n->n_gens, new_sub = n->new_sub;
  int64_t deadline = n->drain_deadline_ms;
  pthread_mutex_unlock(&n->mu);
  if (new_sub || now >= n->next_event_ms) {
    node_send_event(n);
    n->next_event_ms = now + n->conf->stats_interval_ms;
  }
  if (!draining) return 0;
  if (n_gens == 0) return 1;
  if (now >= deadline && !n->drain_aborted) {
    log_warn("worker: drain deadline passed with %d request(s) in flight; aborting them", n_gens);
    node_abort_all(n);
    n->drain_aborted = 1;
  }
  if (n->drain_aborted && now >= deadline + NODE_ABORT_GRACE_MS) {
    log_error("worker: %d aborted request(s) did not finish; exiting anyway", n_gens);
    return 1;
  }
  return 0;
}

static int control_loop(worker_node_t *n, int sig_fd) {
  n->next_event_ms = node_now_ms();
  for (;;) {
    struct pollfd pf[2] = {{.fd = n->wake_fd, .events = POLLIN}, {.fd = sig_fd, .events = POLLIN}};
    int timeout = n->conf->stats_interval_ms < 100 ? n->conf->stats_interval_ms : 100;
    if (poll(pf, 2, timeout) < 0 && errno != EINTR) {
      log_error("worker: poll failed: %s", strerror(errno));
      return STRATA_EIO;
    }
    uint64_t cnt;
    if (pf[0].revents & POLLIN) (void)!read(n->wake_fd, &cnt, sizeof cnt);
    if (pf[1].revents & POLLIN) {
      unsigned char signo;
      if (read(sig_fd, &signo, 1) == 1) {
        char why[32];
        snprintf(why, sizeof why, "signal %u", (unsigned)signo);
        begin_drain(n, node_now_ms() + (int64_t)n->conf->drain_timeout_s * 1000, why);
      }
    }
    if (control_step(n, node_now_ms())) return 0;
  }
}

static void deregister(worker_node_t *n, pthread_t *registrar) {
  if (!n->etcd) return;
  atomic_store(&n->stopping, 1);
  if (registrar) pthread_join(*registrar, NULL);
  /* Revoking the lease deletes the key at once; without etcd it expires after one TTL anyway. */
  int rc = etcd_session_close(n->etcd);
  if (rc) log_warn("worker: could not revoke the etcd lease (%s); %s expires within %d s", strata_strerror(rc),
                   n->key, n->conf->lease_ttl_s);
  else log_info("worker: deregistered %s", n->key);
}

int worker_node_run(const worker_node_conf_t *conf) {
  if (!conf->model || !*conf->model) {
    log_error("worker: --model is required (a Hugging Face directory, a .gguf file or dummy:<preset>)");
    return STRATA_EINVAL;
  }
  worker_node_t *n = calloc(1, sizeof *n);
  model_t *m = NULL;
  int rc = STRATA_ENOMEM, have_registrar = 0, rpc_inited = 0;
  pthread_t registrar;
  struct sigaction old_term = {0}, old_int = {0};
  if (!n) return STRATA_ENOMEM;
  n->conf = conf;
  n->next_eid = 1;
  n->wake_fd = -1;
  pthread_mutex_init(&n->mu, NULL);
  n->evs = malloc(sizeof *n->evs * NODE_POLL_BATCH);
  n->flush = malloc(sizeof *n->flush * NODE_POLL_BATCH);
  if (!n->evs || !n->flush) goto fail;
  rc = STRATA_EIO;
  if (signals_install(&old_term, &old_int) || (n->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
    log_error("worker: cannot create the signal / wake-up descriptors: %s", strerror(errno));
    goto fail;
  }
  if ((rc = make_identity(n)) || (rc = start_engine(n, &m))) goto fail;
  rpc_init();
  rpc_inited = 1;
  if ((rc = start_rpc(n))) goto fail;
  if (conf->etcd && *conf->etcd) {
    if ((rc = start_etcd(n, &registrar))) goto fail;
    have_registrar = 1;
  } else {
    log_info("worker: no --etcd: not registering (standalone)");
  }
  rc = control_loop(n, g_sig_pipe[0]);
  deregister(n, have_registrar ? &registrar : NULL);
  have_registrar = 0;
  node_finish_subs(n);
  usleep(NODE_FLUSH_GRACE_MS * 1000);
  log_info("worker: drained; exiting");
fail:
  if (have_registrar) {
    atomic_store(&n->stopping, 1);
    pthread_join(registrar, NULL);
  }
  if (n->rpc) node_finish_subs(n);
  rpc_server_free(n->rpc); /* cancels what is left: Generate done() handlers answer those calls */
  engine_loop_stop(n->engine);
  if (n->etcd) etcd_client_free(n->etcd);
  if (rpc_inited) rpc_shutdown();
  model_free(m);
  while (n->gens) {
    node_gen_t *g = n->gens;
    n->gens = g->next;
    free(g->pend);
    free(g);
  }
  free(n->kv_stored);
  free(n->kv_removed);
  free(n->reg_json);
  free(n->evs);
  free(n->flush);
  if (n->wake_fd >= 0) close(n->wake_fd);
  pthread_mutex_destroy(&n->mu);
  free(n);
  signals_restore(&old_term, &old_int);
  return rc;
}
