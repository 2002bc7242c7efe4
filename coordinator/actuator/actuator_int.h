/* actuator_int.h: the table of operations behind actuator.h, one per kind, and helpers they share. */
#ifndef STRATA_ACTUATOR_INT_H
#define STRATA_ACTUATOR_INT_H

#include "coordinator/actuator/actuator.h"

typedef struct {
  int (*get_replicas)(void *impl, const char *pool, int *n);
  int (*set_replicas)(void *impl, const char *pool, int n);
  int (*pick_victim)(void *impl, const char *pool, char *id, size_t len);
  /* mark: sets victim ID's state; RUNNING releases it. ENOTFOUND when ID is not a victim. */
  int (*mark_victim)(void *impl, const char *pool, const char *id, actuator_worker_state_t state);
  int (*list)(void *impl, const char *pool, actuator_worker_t *out, int max);
  void (*destroy)(void *impl);
} actuator_ops_t;

struct actuator {
  actuator_kind_t kind;
  const actuator_ops_t *ops;
  void *impl;
};

/* Constructors of each kind: 0 with *IMPL set, or a STRATA_E* code (logged). */
int actuator_local_create(const actuator_config_t *cfg, void **impl);
int actuator_k8s_create(const actuator_config_t *cfg, void **impl);
extern const actuator_ops_t actuator_local_ops;
extern const actuator_ops_t actuator_k8s_ops;

#endif
