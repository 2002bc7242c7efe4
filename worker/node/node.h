/* node.h: strata-worker, the cluster worker process: the strata.v1.Worker gRPC service over the engine
 * thread, registration in etcd under a lease, the stats + KV-event stream, and drain.
 *
 * Threads. worker_node_run() runs the control loop on the calling thread: it drains the engine's
 * events into Generate streams, sends WorkerEvents, retries registration and runs the drain. The
 * gRPC handlers run on the rpc server's thread, the engine on its own, etcd callbacks on the etcd
 * client's; they reach the control loop only through the node's mutex-guarded tables plus a wake-up
 * (an eventfd). See docs/worker.md. */
#ifndef STRATA_WORKER_NODE_H
#define STRATA_WORKER_NODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"

typedef enum { WORKER_POOL_UNIFIED = 0, WORKER_POOL_PREFILL = 1, WORKER_POOL_DECODE = 2 } worker_pool_t;

/* Every option of strata-worker; filled by cfg_load() from worker_node_options(). */
typedef struct {
  char *model;             /* HF directory, .gguf file or dummy:<preset> */
  char *served_model_name; /* the "model" of the registration (NULL: the model's short name) */
  char *cluster;           /* /strata/<cluster>/... */
  int pool;                /* worker_pool_t */
  char *id;                /* NULL: "<hostname>-<pid>" */
  char *host;              /* address the gRPC server binds */
  int grpc_port;           /* 0 picks a free port */
  char *advertise;         /* host:port coordinators dial (NULL: host:bound port) */
  char *etcd;              /* "ip:port,ip:port"; NULL or "": no registration */
  int lease_ttl_s;
  int drain_timeout_s;
  int stats_interval_ms;   /* a WorkerEvent at least this often */
  char *device;
  int max_num_seqs, max_batched_tokens, num_kv_blocks, max_model_len, threads, block_size;
  bool prefix_caching;
} worker_node_conf_t;

/* worker_node_options: the option table (CLI --name, env STRATA_NAME). */
const cfg_option_t *worker_node_options(void);

/* worker_node_key: the registration key "/strata/<cluster>/workers/<pool>/<id>" into BUF. Returns 0,
 * or STRATA_EINVAL (logged) when the cluster or id is empty, holds '/', or does not fit. */
int worker_node_key(const char *cluster, worker_pool_t pool, const char *id, char *buf, size_t len);

/* The registration value (docs/routing.md, "Registration"). */
typedef struct {
  const char *id, *model, *grpc_address, *version;
  worker_pool_t pool;
  int tp, pp, block_size, kv_blocks;
  int max_model_len; /* prompt + output tokens the worker accepts */
} worker_node_reg_t;

/* worker_node_reg_json: REG as the JSON object the coordinator's registry parses (malloc'd,
 * NUL-terminated; the caller frees it). NULL on allocation failure. */
char *worker_node_reg_json(const worker_node_reg_t *reg);

/* worker_pool_name: "unified", "prefill", "decode" ("?" for anything else). */
const char *worker_pool_name(worker_pool_t pool);

/* worker_node_run: loads the model, starts the engine, serves gRPC, registers, and runs until SIGTERM,
 * SIGINT or a Drain RPC has drained the worker (in-flight requests finished, or aborted at the drain
 * deadline) and it deregistered. Prints "strata-worker: listening on HOST:PORT" on stdout once it
 * serves. Returns 0 after a drain, or a STRATA_E* code (logged) when it could not start. Call once
 * per process: it owns SIGTERM and SIGINT while it runs. etcd being unreachable is not an error: the
 * worker serves and keeps trying to register, and a registration lost during an outage (lease lapsed,
 * key deleted) is put back by the etcd client once etcd answers; admission never depends on it (only
 * Drain and SIGTERM/SIGINT stop it). */
int worker_node_run(const worker_node_conf_t *conf);

#endif
