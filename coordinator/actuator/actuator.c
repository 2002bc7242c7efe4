/* actuator.c: the actuator interface's dispatch and the `none` actuator (records desired counts for an
 * external autoscaler such as an HPA or KEDA, which the coordinator feeds through its metrics). */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/actuator/actuator_int.h"

typedef struct {
  char *pool;
  int n;
} none_pool_t;

typedef struct {
  none_pool_t *pools; /* (n_pools) */
  int n_pools;
} none_t;

static none_pool_t *none_find(none_t *s, const char *pool) {
  for (int i = 0; i < s->n_pools; i++)
    if (strcmp(s->pools[i].pool, pool) == 0) return &s->pools[i];
  return NULL;
}

static int none_get(void *impl, const char *pool, int *n) {
  none_pool_t *p = none_find(impl, pool);
  if (!p) return STRATA_ENOTFOUND;
  *n = p->n;
  return 0;
}

static int none_set(void *impl, const char *pool, int n) {
  none_t *s = impl;
  none_pool_t *p = none_find(s, pool);
  if (!p) {
    none_pool_t *grown = realloc(s->pools, (size_t)(s->n_pools + 1) * sizeof(*grown));
    if (!grown) return STRATA_ENOMEM;
    s->pools = grown;
    p = &s->pools[s->n_pools];
    p->pool = strdup(pool);
    if (!p->pool) return STRATA_ENOMEM;
    s->n_pools++;
  }
  p->n = n;
  return 0;
}

static int none_pick(void *impl, const char *pool, char *id, size_t len) { return STRATA_EUNSUPPORTED; }
static int none_mark(void *impl, const char *pool, const char *id, actuator_worker_state_t st) {
  return STRATA_ENOTFOUND;
}
static int none_list(void *impl, const char *pool, actuator_worker_t *out, int max) { return 0; }

static void none_destroy(void *impl) {
  none_t *s = impl;
  for (int i = 0; i < s->n_pools; i++) free(s->pools[i].pool);
  free(s->pools);
  free(s);
}

static const actuator_ops_t none_ops = {none_get, none_set, none_pick, none_mark, none_list, none_destroy};

int actuator_kind_parse(const char *s) {
  if (!s) return -1;
  if (strcmp(s, "none") == 0) return ACTUATOR_NONE;
  if (strcmp(s, "local") == 0) return ACTUATOR_LOCAL;
  if (strcmp(s, "kubernetes") == 0) return ACTUATOR_KUBERNETES;
  return -1;
}

int actuator_new(const actuator_config_t *cfg, actuator_t **out) {
  if (!cfg || !out) return STRATA_EINVAL;
  *out = NULL;
  actuator_t *a = calloc(1, sizeof(*a));
  if (!a) return STRATA_ENOMEM;
  a->kind = cfg->kind;
  int rc;
  switch (cfg->kind) {
  case ACTUATOR_NONE:
    a->ops = &none_ops;
    a->impl = calloc(1, sizeof(none_t));
    rc = a->impl ? 0 : STRATA_ENOMEM;
    break;
  case ACTUATOR_LOCAL:
    a->ops = &actuator_local_ops;
    rc = actuator_local_create(cfg, &a->impl);
    break;
  case ACTUATOR_KUBERNETES:
    a->ops = &actuator_k8s_ops;
    rc = actuator_k8s_create(cfg, &a->impl);
    break;
  default:
    log_error("actuator: unknown kind %d (expected local, kubernetes or none)", (int)cfg->kind);
    rc = STRATA_EINVAL;
  }
  if (rc) goto fail;
  *out = a;
  return 0;
fail:
  free(a);
  return rc;
}

void actuator_free(actuator_t *a) {
  if (!a) return;
  if (a->impl) a->ops->destroy(a->impl);
  free(a);
}

actuator_kind_t actuator_kind(const actuator_t *a) { return a->kind; }

/* NOTE: pool names reach URLs, process arguments and worker ids, so they are held to the shape of a
 * Kubernetes name: lower-case letters, digits and '-', at most 40 characters. */
static int pool_ok(const char *pool) {
  if (!pool || !*pool || strlen(pool) > 40) return 0;
  for (const char *c = pool; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-')) return 0;
  return 1;
}

#define CHECK_POOL(a, pool)                                                                          \
  do {                                                                                               \
    if (!(a)) return STRATA_EINVAL;                                                                  \
    if (!pool_ok(pool)) {                                                                            \
      log_error("actuator: pool name \"%s\" must be 1-40 of a-z, 0-9 and '-'", (pool) ? (pool) : ""); \
      return STRATA_EINVAL;                                                                          \
    }                                                                                                \
  } while (0)

int actuator_get_replicas(actuator_t *a, const char *pool, int *n) {
  CHECK_POOL(a, pool);
  if (!n) return STRATA_EINVAL;
  return a->ops->get_replicas(a->impl, pool, n);
}

int actuator_set_replicas(actuator_t *a, const char *pool, int n) {
  CHECK_POOL(a, pool);
  if (n < 0 || n > 100000) {
    log_error("actuator: replica count %d for pool %s is out of range", n, pool);
    return STRATA_EINVAL;
  }
  return a->ops->set_replicas(a->impl, pool, n);
}

int actuator_pick_victim(actuator_t *a, const char *pool, char *id, size_t len) {
  CHECK_POOL(a, pool);
  if (!id || len == 0) return STRATA_EINVAL;
  return a->ops->pick_victim(a->impl, pool, id, len);
}

int actuator_confirm_drained(actuator_t *a, const char *pool, const char *id) {
  CHECK_POOL(a, pool);
  if (!id) return STRATA_EINVAL;
  return a->ops->mark_victim(a->impl, pool, id, ACTUATOR_WORKER_DRAINED);
}

int actuator_release_victim(actuator_t *a, const char *pool, const char *id) {
  CHECK_POOL(a, pool);
  if (!id) return STRATA_EINVAL;
  return a->ops->mark_victim(a->impl, pool, id, ACTUATOR_WORKER_RUNNING);
}

int actuator_list(actuator_t *a, const char *pool, actuator_worker_t *out, int max) {
  CHECK_POOL(a, pool);
  if (max < 0 || (max > 0 && !out)) return STRATA_EINVAL;
  return a->ops->list(a->impl, pool, out, max);
}
