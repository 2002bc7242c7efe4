/* serve.c: `strata serve`: the option table, model + engine set-up, the libev loop and shutdown. */
#include "worker/api/serve.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dtype.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/api/serve_int.h"

static const cfg_option_t g_options[] = {
    CFG_STRING("model", serve_conf_t, model, NULL, 0, "Hugging Face directory, .gguf file or dummy:<preset>"),
    CFG_STRING("host", serve_conf_t, host, "127.0.0.1", 0, "Address to listen on (0.0.0.0 for all)"),
    CFG_INT("port", serve_conf_t, port, "8000", 0, 65535, 0, "HTTP port (0 picks a free one)"),
    CFG_INT("grpc-port", serve_conf_t, grpc_port, "50051", 0, 65535, 0,
            "gRPC port of the strata.v1.Inference API (0 disables gRPC)"),
    CFG_STRING("served-model-name", serve_conf_t, served_model_name, NULL, 0,
               "Model name clients use (default: the model's file or directory name)"),
    CFG_LIST("api-key", serve_conf_t, api_keys, NULL, CFG_SECRET,
             "Bearer token clients must send on /v1 (repeat for several)"),
    CFG_STRING("tls-cert", serve_conf_t, tls_cert, NULL, 0, "PEM certificate chain (with --tls-key: HTTPS)"),
    CFG_STRING("tls-key", serve_conf_t, tls_key, NULL, 0, "PEM private key"),
    CFG_INT("max-num-seqs", serve_conf_t, max_num_seqs, "256", 1, 65536, 0, "Running sequences at most"),
    CFG_INT("max-batched-tokens", serve_conf_t, max_batched_tokens, "0", 0, 1 << 20, 0,
            "Tokens per engine step (0: 8192 on a GPU, 2048 on the CPU)"),
    CFG_FLOAT("kv-cache-fraction", serve_conf_t, kv_cache_fraction, "0.9", 0.01, 1.0, 0,
              "Fraction of free device memory for the KV cache"),
    CFG_INT("max-model-len", serve_conf_t, max_model_len, "0", 0, 1 << 24, 0, "Context length (0: the model's)"),
    CFG_INT("max-queue", serve_conf_t, max_queue, "1024", 0, 1 << 20, 0,
            "Waiting sequences at most beyond max-num-seqs; more are refused with 429"),
    CFG_STRING("device", serve_conf_t, device, "auto", 0, "cpu | cuda[:N] | auto"),
    CFG_STRING("dtype", serve_conf_t, dtype, "auto", 0, "Compute dtype: auto | f32 | bf16 | f16"),
    CFG_INT("threads", serve_conf_t, threads, "0", 0, 4096, 0, "CPU threads (0: all cores)"),
    CFG_INT("num-kv-blocks", serve_conf_t, num_kv_blocks, "0", 0, 1 << 24, 0, "KV cache blocks (0: from memory)"),
    CFG_INT("block-size", serve_conf_t, block_size, "16", 1, 1024, 0, "Tokens per KV block"),
    CFG_BOOL("prefix-caching", serve_conf_t, prefix_caching, "true", 0, "Reuse cached prompt blocks"),
    CFG_INT64("max-body-bytes", serve_conf_t, max_body_bytes, "8388608", 1024, 1LL << 32, 0,
              "Largest request body; larger ones get 413"),
    CFG_INT("max-n", serve_conf_t, max_n, "16", 1, SERVE_MAX_CHOICES, 0, "Choices per request at most (n x prompts)"),
    CFG_INT("max-stops", serve_conf_t, max_stops, "8", 0, 64, 0, "Stop strings per request at most"),
    CFG_INT("max-stop-len", serve_conf_t, max_stop_len, "256", 1, 4096, 0, "Longest stop string in bytes"),
    CFG_END};

const cfg_option_t *serve_options(void) { return g_options; }

double serve_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- the request map (seq -> request), loop thread only ---- */

void serve_map_put(serve_t *s, serve_req_t *r) {
  size_t b = r->h.seq % SERVE_MAP_BUCKETS;
  r->map_next = s->map[b];
  s->map[b] = r;
}

serve_req_t *serve_map_get(serve_t *s, uint64_t seq) {
  for (serve_req_t *r = s->map[seq % SERVE_MAP_BUCKETS]; r; r = r->map_next)
    if (r->h.seq == seq) return r;
  return NULL;
}

void serve_map_del(serve_t *s, uint64_t seq) {
  for (serve_req_t **p = &s->map[seq % SERVE_MAP_BUCKETS]; *p; p = &(*p)->map_next)
    if ((*p)->h.seq == seq) {
      *p = (*p)->map_next;
      return;
    }
}

/* ---- set-up ---- */

static void on_notify(void *data) {
  serve_t *s = data;
  ev_async_send(s->loop, &s->wake); /* the one thread-safe way into the loop */
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents) {
  log_info("serve: signal %d, shutting down", w->signum);
  ev_break(loop, EVBREAK_ALL);
}

static int engine_config(const serve_conf_t *c, engine_cfg_t *ec) {
  engine_cfg_default(ec);
  snprintf(ec->device, sizeof ec->device, "%s", c->device ? c->device : "auto");
  if (c->dtype && strcmp(c->dtype, "auto") != 0) {
    int dt = dtype_parse(c->dtype);
    if (dt < 0 || dtype_is_quant((dtype_t)dt)) {
      log_error("serve: --dtype '%s' is not one of auto, f32, bf16, f16", c->dtype);
      return STRATA_EINVAL;
    }
    ec->act_dtype = dt;
  }
  ec->n_threads = c->threads;
  ec->max_num_seqs = c->max_num_seqs;
  ec->max_batched_tokens = c->max_batched_tokens;
  ec->max_model_len = c->max_model_len;
  ec->block_size = c->block_size;
  ec->num_kv_blocks = c->num_kv_blocks;
  ec->kv_cache_fraction = (float)c->kv_cache_fraction;
  ec->prefix_caching = c->prefix_caching;
  return 0;
}

/* load_model: the model, its tokenizer and chat template, the engine and its thread. */
static int load_model(serve_t *s, model_t **m) {
  const serve_conf_t *c = s->conf;
  engine_cfg_t ec;
  engine_t *e = NULL;
  int rc = engine_config(c, &ec);
  if (rc) return rc;
  model_load_opts_t lo = {.dtype = -1, .dummy_on_device = backend_device_is_gpu(ec.device)};
  if ((rc = model_load(m, c->model, &lo))) return rc;
  if (strncmp(c->model, "dummy:", 6) == 0)
    rc = tok_new_bytes(&s->tok, (*m)->cfg.vocab_size >= 258 ? (*m)->cfg.vocab_size : 512);
  else
    rc = tok_load(&s->tok, (*m)->tokenizer_path[0] ? (*m)->tokenizer_path : c->model);
  if (rc) return rc;
  const char *tmpl = tok_chat_template(s->tok);
  char err[CHAT_ERR_MAX] = "";
  if (tmpl && chat_template_compile(tmpl, (size_t)-1, &s->chat, err, sizeof err) != 0)
    log_warn("serve: the model's chat template does not compile (%s); chat uses the ChatML fallback", err);
  if (!s->chat) log_info("serve: no usable chat template: chat uses the ChatML fallback (docs/api.md)");
  if ((rc = engine_create(&e, *m, &ec))) return rc;
  snprintf(s->model_name, sizeof s->model_name, "%s", c->served_model_name ? c->served_model_name : (*m)->name);
  s->ctx = (api_ctx_t){.tok = s->tok, .chat = s->chat, .model_name = s->model_name,
                       .max_model_len = engine_max_model_len(e), .max_n = c->max_n,
                       .max_stops = c->max_stops, .max_stop_len = c->max_stop_len};
  if ((rc = engine_loop_start(&s->engine, e, on_notify, s))) {
    engine_free(e);
    return rc;
  }
  serve_backend_init(s);
  return 0;
}

static int start_http(serve_t *s) {
  const serve_conf_t *c = s->conf;
  http_server_config_t hc;
  http_server_config_default(&hc);
  hc.host = c->host ? c->host : "127.0.0.1";
  hc.port = c->port;
  hc.max_body_bytes = (size_t)c->max_body_bytes;
  hc.tls_cert_file = c->tls_cert;
  hc.tls_key_file = c->tls_key;
  hc.on_request = api_http_on_request;
  hc.data = &s->front;
  if ((c->tls_cert != NULL) != (c->tls_key != NULL)) {
    log_error("serve: --tls-cert and --tls-key go together (give both for HTTPS, or neither)");
    return STRATA_EINVAL;
  }
  int rc = http_server_new(s->loop, &hc, &s->http);
  if (rc) return rc;
  log_info("serve: %s on %s://%s:%d (max-num-seqs %d, max-queue %d, context %d)", s->model_name,
           c->tls_cert ? "https" : "http", hc.host, http_server_port(s->http), c->max_num_seqs, c->max_queue,
           s->ctx.max_model_len);
  /* one line on stdout for scripts that started us with --port 0 */
  printf("strata serve: listening on %s:%d\n", hc.host, http_server_port(s->http));
  fflush(stdout);
  return 0;
}

int serve_run(const serve_conf_t *conf) {
  if (!conf->model) {
    log_error("serve: --model is required (a Hugging Face directory, a .gguf file or dummy:<preset>)");
    return STRATA_EINVAL;
  }
  serve_t *s = calloc(1, sizeof *s);
  model_t *m = NULL;
  if (!s) return STRATA_ENOMEM;
  s->conf = conf;
  s->loop = ev_default_loop(EVFLAG_AUTO);
  s->started = (int64_t)time(NULL);
  s->next_seq = 1;
  s->capacity = conf->max_num_seqs + conf->max_queue;
  int rc = STRATA_EINTERNAL;
  if (!s->loop) goto fail;
  ev_async_init(&s->wake, serve_on_wake);
  s->wake.data = s;
  ev_async_start(s->loop, &s->wake);
  if ((rc = metrics_registry_new(&s->reg)) || (rc = serve_metrics_init(s))) goto fail;
  if ((rc = load_model(s, &m))) goto fail;
  if ((rc = start_http(s))) goto fail;
  if (conf->grpc_port && (rc = serve_grpc_start(s))) goto fail;
  ev_signal_init(&s->sigint, on_signal, SIGINT);
  ev_signal_init(&s->sigterm, on_signal, SIGTERM);
  ev_signal_start(s->loop, &s->sigint);
  ev_signal_start(s->loop, &s->sigterm);
  ev_run(s->loop, 0);
  rc = 0;
fail:
  serve_grpc_stop(s); /* before the engine: it aborts the calls' engine requests */
  http_server_free(s->http); /* close callbacks abort what is in flight */
  engine_loop_stop(s->engine);
  if (s->loop) {
    ev_async_stop(s->loop, &s->wake);
    ev_signal_stop(s->loop, &s->sigint);
    ev_signal_stop(s->loop, &s->sigterm);
  }
  chat_template_free(s->chat);
  tok_free(s->tok);
  model_free(m);
  metrics_registry_free(s->reg);
  free(s);
  return rc;
}
