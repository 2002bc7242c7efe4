/* etcd_int.h: the etcd client's internal state, shared by etcd_kv.c, etcd_session.c and etcd_watch.c. */
#ifndef STRATA_ETCD_INT_H
#define STRATA_ETCD_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "common/etcd/etcd.h"
#include "common/rpc/rpc.h"
#include "etcd/rpc.pb-c.h"

#define ETCD_TICK_MS 50
#define ETCD_BACKOFF_MIN_MS 100
#define ETCD_BACKOFF_MAX_MS 2000
/* Budget of one blocking call made from the client thread (it must keep serving streams). */
#define ETCD_LOOP_CALL_MS 1000

typedef struct etcd_reg {
  char *key;
  char *value;
  size_t value_len;
  struct etcd_reg *next;
} etcd_reg_t;

typedef enum { ETCD_CMD_REGISTER, ETCD_CMD_UNREGISTER, ETCD_CMD_CLOSE, ETCD_CMD_STOP } etcd_cmd_kind_t;

/* A request from another thread to the client thread; the requester waits for done. */
typedef struct etcd_cmd {
  etcd_cmd_kind_t kind;
  const char *key;
  const void *value;
  size_t value_len;
  int done, rc;
  struct etcd_cmd *next;
} etcd_cmd_t;

typedef enum { ETCD_SESS_NONE, ETCD_SESS_ACTIVE, ETCD_SESS_LOST } etcd_sess_state_t;

struct etcd_watch {
  etcd_client_t *c;
  char *key, *range_end;
  size_t key_len, range_end_len;
  etcd_watch_cbs_t cbs;
  /* Client thread only: */
  int64_t next_rev;       /* first revision not yet delivered; 0: "from now", not known yet */
  rpc_stream_t *s;        /* the live stream, or NULL */
  int n_streams;          /* streams whose on_close has not come yet */
  int need_relist;        /* compacted: re-list before reopening */
  int resumed;            /* a stream broke: check the store did not go back before resuming */
  int cancel_sent;
  int64_t retry_at_ms;
  int backoff_ms;
  /* Guarded by c->mu: */
  int closing, dead, orphan;
  struct etcd_watch *next;
};

struct etcd_client {
  char **endpoints;
  size_t n_endpoints;
  grpc_channel **channels;
  atomic_size_t cur;          /* endpoint in use; moves on to the next on failure */
  int timeout_ms, ttl_s;
  void (*on_session)(void *arg, etcd_session_event_t ev, int64_t lease);
  void *arg;
  rpc_loop_t *loop;
  atomic_int outage;          /* an outage was logged and has not ended */
  atomic_llong sess_lease_pub;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  /* Guarded by mu: */
  etcd_cmd_t *cmds, **cmds_tail;
  etcd_watch_t *watches;
  /* Client thread only: the session and its keep-alive stream. */
  etcd_sess_state_t sess;
  int64_t lease;
  int64_t ttl_ms;
  int64_t expire_at_ms, next_ka_ms, last_send_ms, retry_at_ms;
  int backoff_ms;
  int64_t stale_lease;        /* lost while unreachable: revoke once the keys are under a new lease */
  int64_t lost_at_ms;
  int check_due;              /* a renewal was answered: verify the registered keys at the next tick */
  etcd_reg_t *regs;
  rpc_stream_t *ka;
  int stopped;                /* ETCD_CMD_STOP ran: streams are being cancelled */
};

int64_t etcd_now_ms(void);
/* etcd_call: one unary call with endpoint failover and retries until BUDGET_MS runs out. */
int etcd_call(etcd_client_t *c, const char *method, const ProtobufCMessage *req,
              const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp, int64_t budget_ms);
/* etcd_prefix_end: the range_end that selects every key starting with P[0..N) (written to OUT,
 * N bytes; *OUT_N 0 with a single NUL byte means "to the end of the keyspace"). */
void etcd_prefix_end(const char *p, size_t n, char *out, size_t *out_n);
/* etcd_range: a Range call filling OUT. */
int etcd_range(etcd_client_t *c, const char *key, size_t key_len, const char *end, size_t end_len,
               int64_t revision, int64_t budget_ms, etcd_kvs_t *out);
int etcd_backoff_next(int ms);
/* The public calls with an explicit time budget (the client thread uses short ones). */
int etcd_put_budget(etcd_client_t *c, const char *key, const void *value, size_t n, int64_t lease,
                    int64_t budget_ms, int64_t *revision);
int etcd_delete_range(etcd_client_t *c, const char *key, int prefix, int64_t budget_ms, int64_t *n_deleted);
int etcd_lease_grant_budget(etcd_client_t *c, int ttl_s, int64_t budget_ms, int64_t *id, int64_t *granted_ttl_s);
int etcd_lease_revoke_budget(etcd_client_t *c, int64_t id, int64_t budget_ms);

/* Client-thread pieces, called from the tick. */
void etcd_session_tick(etcd_client_t *c, int64_t now);
void etcd_session_run_cmd(etcd_client_t *c, etcd_cmd_t *cmd);
/* etcd_post_cmd: hand CMD to the client thread and wait until it ran; returns cmd->rc. */
int etcd_post_cmd(etcd_client_t *c, etcd_cmd_t *cmd);
void etcd_watch_tick(etcd_client_t *c, int64_t now);

#endif
