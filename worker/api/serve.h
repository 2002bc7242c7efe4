/* serve.h: `strata serve` on one node: the OpenAI-compatible HTTP API (common/api over common/http)
 * in front of a local engine loop, with Prometheus metrics. */
#ifndef STRATA_SERVE_H
#define STRATA_SERVE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"

/* Every option of `strata serve`, declared once in serve_options() (CLI, STRATA_* environment). */
typedef struct {
  char *model;              /* HF directory, .gguf file or dummy:<preset> (required) */
  char *host;
  int port;
  int grpc_port;            /* strata.v1.Inference (serve_grpc.c); 0 disables it */
  char *served_model_name;  /* default: the model's short name */
  cfg_strlist_t api_keys;   /* clients must send one as a Bearer token when any is set */
  char *tls_cert, *tls_key;
  int max_num_seqs, max_batched_tokens, max_model_len, max_queue;
  double kv_cache_fraction;
  char *device, *dtype;
  int threads, num_kv_blocks, block_size;
  bool prefix_caching;
  int64_t max_body_bytes;
  int max_n, max_stops, max_stop_len;
} serve_conf_t;

/* serve_options: the option table for serve_conf_t (see common/config.h). */
const cfg_option_t *serve_options(void);

/* serve_run: loads the model, starts the engine thread and serves HTTP on the calling thread until
 * SIGINT or SIGTERM. Returns 0 after a clean stop, or a STRATA_E* code (logged) when the model, the
 * engine or the listening socket could not be set up. */
int serve_run(const serve_conf_t *conf);

#endif
