/* coord.h: strata-coordinator: the OpenAI HTTP API and gRPC strata.v1.Inference in front of a cluster
 * of workers discovered in etcd (registry + KV-aware router), request migration when a worker dies
 * mid-generation, the strata.v1.Admin gRPC service, and leader election with the autoscaler.
 * docs/cluster.md. */
#ifndef STRATA_COORD_H
#define STRATA_COORD_H

#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"

/* Every option of strata-coordinator, declared once in coord_options() (CLI, STRATA_* environment). */
typedef struct {
  char *model;             /* model path (tokenizer + chat template only) or dummy:<preset> (required) */
  char *served_model_name; /* the name clients and workers use (default: the model's short name) */
  char *etcd;              /* "ip:port[,ip:port]" (required) */
  char *cluster;           /* /strata/<cluster>/... */
  char *id;                /* coordinator id (default: coord-<pid>) */
  char *host;
  int port;                /* HTTP (0 picks a free one) */
  int grpc_port;           /* Admin gRPC (0 picks a free one) */
  int inference_grpc_port; /* strata.v1.Inference gRPC (0 picks a free one, -1 disables) */
  cfg_strlist_t api_keys;  /* clients must send one as a Bearer token (HTTP and gRPC) when any is set */
  char *tls_cert, *tls_key; /* PEM files: HTTPS and gRPC over TLS when both are set */
  double overlap_weight, queue_weight;
  int migration_limit;     /* re-sends of one choice to another worker after its worker broke */
  int stall_timeout_ms;    /* a Generate call with no message for this long, while its worker is not
                            * known busy (Events), is moved to another worker; 0: never */
  int max_model_len;       /* 0: the model file's context length, else 2048 */
  int max_n, max_stops, max_stop_len;
  int64_t max_body_bytes;
  char *actuator;          /* local | kubernetes | none */
  char *worker_command;    /* local actuator: worker command template (actuator.h) */
  char *k8s_api_server;    /* kubernetes actuator */
  char *k8s_namespace;
  char *k8s_statefulset;   /* kubernetes actuator: StatefulSet name template ({pool} replaced) */
  int autoscale_tick_ms;   /* how often the leader looks at pools (each pool decides every interval_s) */
  cfg_strlist_t pools;     /* pools the leader scales (default: unified) */
} coord_conf_t;

/* coord_options: the option table for coord_conf_t (see common/config.h). */
const cfg_option_t *coord_options(void);

/* coord_run: loads the tokenizer, connects to etcd, serves HTTP, Inference gRPC and Admin gRPC on the
 * calling thread until SIGINT or SIGTERM. Prints "strata-coordinator: inference grpc HOST:PORT" (unless
 * --inference-grpc-port is -1), then "strata-coordinator: listening on HOST:PORT grpc HOST:PORT" on
 * stdout once it serves. Returns 0 after a clean stop, or a STRATA_E* code (logged) when it could not
 * start. etcd being unreachable at start is not an error: the watch keeps retrying. */
int coord_run(const coord_conf_t *conf);

#endif
