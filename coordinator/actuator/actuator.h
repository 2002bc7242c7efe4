/* actuator.h: carries out the autoscaler's replica counts: `local` (worker processes on this host),
 * `kubernetes` (the scale subresource of each pool's StatefulSet) or `none` (records the count for an
 * external HPA/KEDA). One interface, one context per kind.
 *
 * Scale-down never removes a worker that is still serving. The protocol, for a pool at N replicas going
 * to N-K:
 *   1. actuator_pick_victim() K times: each names one worker (its id, as the worker registers it) and
 *      marks it DRAINING in the actuator.
 *   2. the coordinator drains each victim (stops routing to it, waits for its in-flight requests).
 *   3. actuator_confirm_drained() for each victim (or actuator_release_victim() to keep it after all).
 *   4. actuator_set_replicas(pool, N-K): refused with STRATA_EAGAIN unless K victims are confirmed
 *      drained; then exactly those are removed.
 * Scale-up (set_replicas above the current count) needs nothing first. The `none` actuator has no
 * victims: the external scaler picks pods and each worker drains itself on SIGTERM.
 *
 * Not thread-safe: the autoscaler thread owns an actuator. Errors are logged where they are born.
 * The local actuator reaps its children by PID: the process must not set SIGCHLD to SIG_IGN or call
 * waitpid(-1, ...) elsewhere, or workers would look as if they had exited. */
#ifndef STRATA_ACTUATOR_H
#define STRATA_ACTUATOR_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef enum {
  ACTUATOR_NONE = 0,
  ACTUATOR_LOCAL = 1,
  ACTUATOR_KUBERNETES = 2,
} actuator_kind_t;

typedef struct {
  actuator_kind_t kind;

  /* local: the worker command line. Split on spaces (single and double quotes group, no shell), then
   * {pool}, {port}, {id} and {index} are replaced in each argument: {port} is a free TCP port on this
   * host, {id} is "<pool>-<index>", {index} counts up from 0 per pool. The program is looked up in
   * PATH. Example: "strata-worker --pool {pool} --port {port} --id {id} --coordinator 127.0.0.1:7000". */
  const char *local_command;
  int local_stop_timeout_ms; /* SIGTERM, then SIGKILL after this long; 0: 10000 */

  /* kubernetes: every field NULL/0 takes the in-cluster default. */
  const char *k8s_api_server;     /* "https://host:port"; default from KUBERNETES_SERVICE_HOST/_PORT */
  const char *k8s_token_file;     /* default /var/run/secrets/kubernetes.io/serviceaccount/token */
  const char *k8s_ca_file;        /* default .../serviceaccount/ca.crt */
  const char *k8s_namespace;      /* default: the contents of .../serviceaccount/namespace */
  const char *k8s_namespace_file; /* where to read the namespace when k8s_namespace is NULL */
  const char *k8s_statefulset;    /* name template, {pool} replaced; default "strata-worker-{pool}" */
  int k8s_timeout_ms;             /* per request; 0: 10000 */
} actuator_config_t;

typedef struct actuator actuator_t;

/* actuator_new: an actuator of CFG's kind. CFG's strings are copied. The kubernetes actuator reads the
 * namespace here and the token at every request (tokens rotate); it contacts nobody yet. Returns 0 with
 * *OUT set, or STRATA_EINVAL (bad config: a missing command, an unparsable template, no API server),
 * STRATA_EIO (namespace file unreadable) or STRATA_ENOMEM. */
int actuator_new(const actuator_config_t *cfg, actuator_t **out);

/* actuator_free: local: stops every worker it started (SIGTERM, SIGKILL after the deadline, reaped).
 * kubernetes and none: changes nothing outside. NULL is fine. */
void actuator_free(actuator_t *a);

actuator_kind_t actuator_kind(const actuator_t *a);
/* actuator_kind_parse: "local" | "kubernetes" | "none" -> kind, or -1. */
int actuator_kind_parse(const char *s);

/* actuator_get_replicas: POOL's current replica count into *N. local: live workers it started
 * (exited ones are reaped and no longer count); kubernetes: the StatefulSet's spec.replicas; none: the
 * last count set (STRATA_ENOTFOUND before the first). Returns 0 or a negative STRATA_E* code
 * (kubernetes: EAUTH for 401/403, ENOTFOUND for 404, ETIMEDOUT, EUNAVAILABLE when unreachable). */
int actuator_get_replicas(actuator_t *a, const char *pool, int *n);

/* actuator_set_replicas: makes POOL have N (>= 0) replicas. Growing starts workers (local) or patches
 * the count. Shrinking by K needs K victims confirmed drained (see the top of this file), else
 * STRATA_EAGAIN and nothing changes. local: on a start failure the workers already started this call
 * stay and the error is returned. kubernetes: 409 -> STRATA_EAGAIN (retry next interval). */
int actuator_set_replicas(actuator_t *a, const char *pool, int n);

/* actuator_pick_victim: chooses the next worker of POOL to remove and marks it draining; its worker id
 * goes to ID (LEN bytes). local: the newest running worker; kubernetes: the highest ordinal not yet
 * picked ("<statefulset>-<ordinal>", the pod name, which is the worker id on Kubernetes). Returns 0,
 * STRATA_ENOTFOUND (nothing left to pick) or STRATA_EUNSUPPORTED (none). */
int actuator_pick_victim(actuator_t *a, const char *pool, char *id, size_t len);

/* actuator_confirm_drained: the caller's word that victim ID of POOL serves nothing any more.
 * Returns 0 or STRATA_ENOTFOUND (ID was not picked). */
int actuator_confirm_drained(actuator_t *a, const char *pool, const char *id);

/* actuator_release_victim: victim ID goes back to serving (a scale-down called off). 0 or ENOTFOUND. */
int actuator_release_victim(actuator_t *a, const char *pool, const char *id);

typedef enum { ACTUATOR_WORKER_RUNNING, ACTUATOR_WORKER_DRAINING, ACTUATOR_WORKER_DRAINED } actuator_worker_state_t;

typedef struct {
  char id[96];
  pid_t pid; /* local only, else 0 */
  int port;  /* local only, else 0 */
  actuator_worker_state_t state;
} actuator_worker_t;

/* actuator_list: the workers of POOL this actuator knows (local: the processes it started and that are
 * alive; kubernetes: only picked victims). Writes up to MAX into OUT and returns how many there are
 * (may exceed MAX), or a negative STRATA_E* code. */
int actuator_list(actuator_t *a, const char *pool, actuator_worker_t *out, int max);

#endif
