/* etcd.h: an etcd v3 client on gRPC core + protobuf-c: KV, transactions, leases with keep-alive,
 * "registered keys" that survive lease loss, and prefix watches that survive etcd restarts.
 *
 * Threading. The client owns one thread (an rpc_loop_t completion-queue thread) that drives the
 * keep-alive stream, the watch streams, the session (registered keys) and every callback below.
 * Callbacks (on_session, on_events, on_reset) run on that thread, one at a time, in order; they
 * must be cheap and must not call back into this client (no etcd_get/put/register/watch_free
 * from a callback: forward the data into your own loop, e.g. a queue plus ev_async_send).
 * Everything else (get/put/delete/txn/lease/register/watch_new/watch_free) is safe from any other
 * thread; the synchronous calls block the calling thread for at most cfg.timeout_ms.
 *
 * Availability. Each synchronous call retries over the endpoints with a short backoff until its
 * deadline and then fails with STRATA_EUNAVAILABLE; the outage is logged once (and its end once),
 * not per retry. Streams reconnect by themselves with backoff (100 ms doubling to 2 s). */
#ifndef STRATA_ETCD_H
#define STRATA_ETCD_H

#include <stddef.h>
#include <stdint.h>

typedef struct etcd_client etcd_client_t;
typedef struct etcd_watch etcd_watch_t;

typedef enum {
  /* the session lease lapsed (etcd unreachable for a TTL) or etcd no longer knows it (revoked,
   * expired): the registered keys may be gone; they are put again as soon as etcd answers */
  ETCD_SESSION_LOST = 1,
  ETCD_SESSION_RESTORED = 2, /* a new lease was granted and every registered key was put again */
} etcd_session_event_t;

typedef struct {
  const char *endpoints;  /* "127.0.0.1:2379" or "a:p,b:p": tried in order, next one on failure.
                           * Use IP literals (hostnames pull in c-ares). */
  const char *ca_file;    /* PEM roots for TLS; NULL for plaintext */
  int timeout_ms;         /* deadline of each synchronous call; 0 means 5000 */
  int session_ttl_s;      /* TTL of the lease behind registered keys; 0 means 10 (etcd's floor: 2) */
  /* on_session (optional): session lease lost / restored, on the client thread. LEASE is the lost
   * lease for LOST and the new one for RESTORED. Informational: the client re-registers by itself,
   * and losing the session says nothing about the caller's own health (a worker keeps serving). Both
   * transitions are logged by the client, once each. */
  void (*on_session)(void *arg, etcd_session_event_t ev, int64_t lease);
  void *arg;
} etcd_config_t;

/* One key-value pair. key and value are NUL-terminated copies (values may hold NULs: use value_len). */
typedef struct {
  char *key;
  size_t key_len;
  char *value;
  size_t value_len;
  int64_t create_revision, mod_revision, version, lease;
} etcd_kv_t;

/* The result of a range read: pairs sorted by key, and the store revision the read saw. */
typedef struct {
  etcd_kv_t *kvs;
  size_t n_kvs;
  int64_t revision;
} etcd_kvs_t;

/* etcd_kvs_free: release what a get filled in (the struct itself is the caller's). */
void etcd_kvs_free(etcd_kvs_t *r);

/* etcd_client_new: validate CFG (copied), create channels and start the client thread. Nothing is
 * contacted yet. Returns 0 and *OUT, STRATA_EINVAL for an empty endpoint list, STRATA_EIO for an
 * unreadable CA file, STRATA_ENOMEM. Calls rpc_init() itself. */
int etcd_client_new(const etcd_config_t *cfg, etcd_client_t **out);
/* etcd_client_free: stop the thread and free. The session lease is NOT revoked (call
 * etcd_session_close first for a graceful exit; otherwise keys vanish after one TTL). Every watch
 * must have been freed. No callback runs after this returns. */
void etcd_client_free(etcd_client_t *c);

/* ---- KV (keys are C strings; values are bytes) ------------------------------------------------ */

/* etcd_get: the pair at KEY (n_kvs 0 or 1) at REVISION (0: latest). Returns 0, STRATA_EUNAVAILABLE,
 * STRATA_ERANGE when REVISION was compacted, other STRATA_E* codes. OUT is filled only on 0. */
int etcd_get(etcd_client_t *c, const char *key, int64_t revision, etcd_kvs_t *out);
/* etcd_get_prefix: every pair whose key starts with PREFIX ("" means all keys). */
int etcd_get_prefix(etcd_client_t *c, const char *prefix, int64_t revision, etcd_kvs_t *out);
/* etcd_put: KEY = VALUE[0..N), attached to LEASE (0: none). *REVISION (optional) gets the store
 * revision of the write. STRATA_ENOTFOUND when LEASE does not exist. */
int etcd_put(etcd_client_t *c, const char *key, const void *value, size_t n, int64_t lease,
             int64_t *revision);
/* etcd_delete / etcd_delete_prefix: *N_DELETED (optional) gets how many keys went. */
int etcd_delete(etcd_client_t *c, const char *key, int64_t *n_deleted);
int etcd_delete_prefix(etcd_client_t *c, const char *prefix, int64_t *n_deleted);
/* etcd_compact: drop history older than REVISION (watches from before it get a reset). */
int etcd_compact(etcd_client_t *c, int64_t revision);

/* ---- transactions ------------------------------------------------------------------------------ */

typedef enum { ETCD_CMP_VERSION, ETCD_CMP_CREATE, ETCD_CMP_MOD, ETCD_CMP_VALUE } etcd_cmp_target_t;
typedef enum { ETCD_CMP_EQUAL, ETCD_CMP_GREATER, ETCD_CMP_LESS, ETCD_CMP_NOT_EQUAL } etcd_cmp_result_t;

/* "KEY's TARGET is RESULT than NUMBER (or VALUE)". A missing key has version, create and mod
 * revision 0, so {key, ETCD_CMP_CREATE, ETCD_CMP_EQUAL, 0} means "absent". */
typedef struct {
  const char *key;
  etcd_cmp_target_t target;
  etcd_cmp_result_t result;
  int64_t number;        /* for VERSION, CREATE, MOD */
  const void *value;     /* for VALUE */
  size_t value_len;
} etcd_cmp_t;

typedef enum { ETCD_OP_PUT, ETCD_OP_DELETE, ETCD_OP_DELETE_PREFIX } etcd_op_kind_t;

typedef struct {
  etcd_op_kind_t kind;
  const char *key;
  const void *value;     /* PUT only */
  size_t value_len;
  int64_t lease;         /* PUT only */
} etcd_op_t;

/* etcd_txn: if every CMPS holds, apply SUCCESS, else FAILURE, atomically. *SUCCEEDED tells which
 * branch ran; *REVISION (optional) the store revision after it. Returns 0 whichever branch ran. */
int etcd_txn(etcd_client_t *c, const etcd_cmp_t *cmps, size_t n_cmps, const etcd_op_t *success,
             size_t n_success, const etcd_op_t *failure, size_t n_failure, int *succeeded,
             int64_t *revision);
/* etcd_put_if_absent: create KEY only if it does not exist. *CREATED is 1 when it was written. */
int etcd_put_if_absent(etcd_client_t *c, const char *key, const void *value, size_t n, int64_t lease,
                       int *created);
/* etcd_put_if_revision: compare-and-swap: write only if KEY's mod_revision is still MOD_REVISION
 * (as read by an earlier get). *SWAPPED is 1 when it was written. */
int etcd_put_if_revision(etcd_client_t *c, const char *key, const void *value, size_t n,
                         int64_t lease, int64_t mod_revision, int *swapped);

/* ---- leases ------------------------------------------------------------------------------------ */

/* etcd_lease_grant: a new lease of TTL_S seconds (etcd may raise it: *GRANTED_TTL_S, optional).
 * This lease is not kept alive: use registered keys for that. */
int etcd_lease_grant(etcd_client_t *c, int ttl_s, int64_t *id, int64_t *granted_ttl_s);
/* etcd_lease_revoke: end lease ID now; its keys are deleted. STRATA_ENOTFOUND if it is gone. */
int etcd_lease_revoke(etcd_client_t *c, int64_t id);

/* ---- registered keys (the session) ------------------------------------------------------------ */

/* etcd_register: put KEY = VALUE under the session lease and keep it there: the lease is granted on
 * first use and kept alive (renewed at a third of the TTL, or at half the remaining time when
 * renewals go unanswered). Outages are ridden out:
 *  - etcd unreachable past the TTL, or the lease revoked/expired in etcd: ETCD_SESSION_LOST; the
 *    client retries (backoff up to 2 s) until etcd answers, grants a new lease, puts every key again
 *    (ETCD_SESSION_RESTORED) and revokes the old lease if it may still exist (etcd re-extends leases
 *    when it restarts), so a key is back at most ~3 s after etcd serves again;
 *  - a key deleted or overwritten by someone else while the lease lives (`etcdctl del`): noticed
 *    after the next answered renewal (within a third of the TTL) and put again; no event.
 * Registering a key again replaces its value. Returns 0 when the key is in etcd, or (while the
 * session is lost) will be put when it is restored; a STRATA_E* code otherwise (STRATA_EUNAVAILABLE
 * when no session exists yet and etcd cannot be reached), and then the key is not registered. */
int etcd_register(etcd_client_t *c, const char *key, const void *value, size_t n);
/* etcd_unregister: forget KEY and delete it. STRATA_ENOTFOUND if it was not registered. */
int etcd_unregister(etcd_client_t *c, const char *key);
/* etcd_session_lease: the current session lease (0 when none or lost). */
int64_t etcd_session_lease(etcd_client_t *c);
/* etcd_session_close: revoke the session lease (every registered key vanishes at once) and forget
 * all registrations. For a graceful exit. */
int etcd_session_close(etcd_client_t *c);

/* ---- watches ----------------------------------------------------------------------------------- */

typedef enum { ETCD_EVENT_PUT = 0, ETCD_EVENT_DELETE = 1 } etcd_event_type_t;

/* One change. Pointers are valid only during the callback. A DELETE carries no value. */
typedef struct {
  etcd_event_type_t type;
  const char *key;
  size_t key_len;
  const char *value;
  size_t value_len;
  int64_t mod_revision;
  int64_t lease;
} etcd_event_t;

typedef struct {
  /* on_events: changes in revision order, each revision exactly once, even across reconnects. */
  void (*on_events)(void *arg, const etcd_event_t *events, size_t n);
  /* on_reset: the history needed to resume is gone (compacted, or etcd came back with a store that
   * went back: restored from a backup, data dir lost): KVS is the full current content of the prefix
   * at REVISION; rebuild from it (keep live state for keys still there, drop the others). Events
   * after REVISION follow through on_events. A stream that merely broke (etcd unreachable,
   * restarted) resumes where it stopped with no reset: keep what you have meanwhile. */
  void (*on_reset)(void *arg, const etcd_kv_t *kvs, size_t n, int64_t revision);
  void *arg;
} etcd_watch_cbs_t;

/* etcd_watch_new: watch every key under PREFIX from START_REVISION (0: changes after now). The
 * stream starts within one client tick (50 ms). Returns 0 and *OUT, STRATA_ENOMEM, STRATA_EINVAL. */
int etcd_watch_new(etcd_client_t *c, const char *prefix, int64_t start_revision,
                   const etcd_watch_cbs_t *cbs, etcd_watch_t **out);
/* etcd_watch_free: stop watching; when it returns no callback of W runs any more. From a callback
 * (the client thread) it only schedules the stop. */
void etcd_watch_free(etcd_watch_t *w);

#endif
