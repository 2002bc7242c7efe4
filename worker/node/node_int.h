/* node_int.h: the worker node's shared state (node.c: set-up and control loop; node_rpc.c: the
 * strata.v1.Worker handlers, token dispatch and the event stream). */
#ifndef STRATA_WORKER_NODE_INT_H
#define STRATA_WORKER_NODE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "common/etcd/etcd.h"
#include "common/rpc/rpc.h"
#include "worker/engine/engine_loop.h"
#include "worker/node/node.h"

/* KV events buffered between two WorkerEvents; beyond this the batch is dropped and the next event
 * says reset (the coordinator forgets this worker's hashes, which only costs prefills). */
#define NODE_KV_MAX_PENDING 65536
/* Engine events read per poll. */
#define NODE_POLL_BATCH 256

/* One Generate call. Owner: the node's mutex (created on the rpc thread, fed and freed by the
 * control thread when the engine reports the request finished). */
typedef struct node_gen {
  struct node_gen *next;
  uint64_t eid;              /* the engine's request id (ours, unique; the client's id is only logged) */
  uint64_t client_id;
  rpc_server_call_t *call;   /* NULL once the call was finished (client gone, or we answered) */
  int n_prompt;              /* the client's prompt_ids */
  int n_prior;               /* migration: generated_ids carried in (recomputed as prompt) */
  int want_logprobs;
  int aborted_by_drain;
  /* tokens waiting to be sent (control thread only) */
  sample_result_t *pend;
  int n_pend, cap_pend;
  int dirty;                 /* on this round's flush list */
} node_gen_t;

/* One Events subscriber. Owner: the node's mutex. */
typedef struct node_sub {
  struct node_sub *next;
  rpc_server_call_t *call;
} node_sub_t;

typedef struct worker_node {
  const worker_node_conf_t *conf;
  engine_loop_t *engine;
  rpc_server_t *rpc;
  etcd_client_t *etcd;
  int wake_fd;               /* eventfd: engine events, handler requests */
  rpc_method_t methods[3];

  /* identity (set before serving, then read-only) */
  char id[128];
  char key[512];
  char model_name[256];
  char grpc_address[300];
  char *reg_json;
  int max_model_len, vocab_size, kv_blocks;

  pthread_mutex_t mu;
  /* Guarded by mu: */
  node_gen_t *gens;
  int n_gens;
  node_sub_t *subs;
  int new_sub;               /* send an event at once */
  uint64_t next_eid;
  int draining;
  int64_t drain_deadline_ms;
  uint64_t *kv_stored, *kv_removed;
  int n_stored, n_removed, cap_stored, cap_removed;
  int kv_overflow;

  /* NOTE: nothing here ties admission to etcd: registration is discovery, not health. Only a drain
   * (Drain RPC, SIGTERM) stops admission; an etcd outage is the etcd client's to ride out. */
  atomic_int stopping;       /* the registrar thread gives up */

  /* control thread only */
  engine_event_t *evs;       /* (NODE_POLL_BATCH) engine events of one poll */
  struct node_gen **flush;   /* (NODE_POLL_BATCH) requests with tokens to send this round */
  uint64_t event_seq;        /* the last WorkerEvent's seq; 1, 2, 3... from start */
  int64_t next_event_ms;
  int drain_aborted;
} worker_node_t;

int64_t node_now_ms(void);
void node_wake(worker_node_t *n);

/* node_rpc.c */
void node_rpc_methods(worker_node_t *n);
void node_on_kv_event(void *data, kv_event_type_t type, uint64_t hash);
/* node_dispatch: drain the engine's outbox into the Generate streams (control thread). */
void node_dispatch(worker_node_t *n);
/* node_send_event: one WorkerEvent (load + buffered KV events) to every subscriber (control thread). */
void node_send_event(worker_node_t *n);
/* node_abort_all: engine_loop_abort every in-flight request (drain deadline). */
void node_abort_all(worker_node_t *n);
/* node_finish_subs: end every Events stream with OK (shutdown). */
void node_finish_subs(worker_node_t *n);

#endif
