/* policy.c: the autoscaling policy: one field table (name, type, bounds) behind the defaults, JSON and
 * key=value merges, validation and serialization. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "coordinator/autoscaler/autoscaler.h"

typedef enum { FIELD_INT, FIELD_DOUBLE, FIELD_MODE } field_type_t;

typedef struct {
  const char *name;
  field_type_t type;
  size_t offset;
  double lo, hi; /* inclusive bounds of INT and DOUBLE fields */
} field_t;

#define F_INT(name, lo, hi) {#name, FIELD_INT, offsetof(autoscale_policy_t, name), (lo), (hi)}
#define F_DBL(name, lo, hi) {#name, FIELD_DOUBLE, offsetof(autoscale_policy_t, name), (lo), (hi)}

/* NOTE: the bounds are sanity limits (a day of window, a thousand replicas), not advice; the advice
 * lives in docs/autoscaling.md. */
static const field_t fields[] = {
    F_INT(min_replicas, 0, 1000),
    F_INT(max_replicas, 1, 1000),
    F_DBL(ttft_p90_ms, 0, 600000),
    F_DBL(itl_p90_ms, 0, 60000),
    F_DBL(queue_per_replica, 0, 100000),
    F_DBL(kv_usage, 0, 1),
    F_INT(scale_up_step, 1, 1000),
    F_INT(scale_down_step, 1, 1000),
    F_INT(scale_up_window_s, 0, 86400),
    F_INT(scale_down_window_s, 0, 86400),
    F_INT(cooldown_s, 0, 86400),
    F_INT(gpus_per_replica, 0, 1024),
    F_INT(gpu_budget, 0, 1000000),
    {"mode", FIELD_MODE, offsetof(autoscale_policy_t, mode), 0, 1},
    F_INT(interval_s, 1, 3600),
    F_INT(latency_window_s, 1, 3600),
};
#define N_FIELDS (sizeof(fields) / sizeof(fields[0]))

static const char *const mode_names[] = {"active", "observe"};

static int fail(char *err, size_t err_len, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t err_len, int code, const char *fmt, ...) {
  if (err && err_len > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
  }
  return code;
}

void autoscale_policy_defaults(autoscale_policy_t *p) {
  *p = (autoscale_policy_t){
      .min_replicas = 1,
      .max_replicas = 4,
      .ttft_p90_ms = 500,
      .itl_p90_ms = 50,
      .queue_per_replica = 4,
      .kv_usage = 0.8,
      .scale_up_step = 2,
      .scale_down_step = 1,
      .scale_up_window_s = 30,
      .scale_down_window_s = 300,
      .cooldown_s = 60,
      .gpus_per_replica = 1,
      .gpu_budget = 0,
      .mode = AUTOSCALE_MODE_ACTIVE,
      .interval_s = 10,
      .latency_window_s = 60,
  };
}

static const field_t *field_find(const char *name, size_t len) {
  for (size_t i = 0; i < N_FIELDS; i++)
    if (strlen(fields[i].name) == len && memcmp(fields[i].name, name, len) == 0) return &fields[i];
  return NULL;
}

static double field_get(const field_t *f, const autoscale_policy_t *p) {
  const char *at = (const char *)p + f->offset;
  if (f->type == FIELD_DOUBLE) return *(const double *)at;
  if (f->type == FIELD_MODE) return (double)*(const autoscale_mode_t *)at;
  return (double)*(const int *)at;
}

/* field_set_number: stores V into F of P after the type and bounds checks; ERR names the field. */
static int field_set_number(const field_t *f, autoscale_policy_t *p, double v, char *err, size_t err_len) {
  char *at = (char *)p + f->offset;
  if (!isfinite(v)) return fail(err, err_len, STRATA_EINVAL, "%s: not a finite number", f->name);
  if (f->type == FIELD_INT && v != floor(v))
    return fail(err, err_len, STRATA_EINVAL, "%s: %g is not a whole number", f->name, v);
  if (v < f->lo) return fail(err, err_len, STRATA_EINVAL, "%s: %g is below the minimum %g", f->name, v, f->lo);
  if (v > f->hi) return fail(err, err_len, STRATA_EINVAL, "%s: %g is above the maximum %g", f->name, v, f->hi);
  if (f->type == FIELD_DOUBLE)
    *(double *)at = v;
  else
    *(int *)at = (int)v;
  return 0;
}

static int field_set_mode(const field_t *f, autoscale_policy_t *p, const char *s, char *err, size_t err_len) {
  for (int i = 0; i < 2; i++) {
    if (strcmp(s, mode_names[i]) == 0) {
      *(autoscale_mode_t *)((char *)p + f->offset) = (autoscale_mode_t)i;
      return 0;
    }
  }
  return fail(err, err_len, STRATA_EINVAL, "mode: \"%s\" is not one of active, observe", s);
}

int autoscale_policy_validate(const autoscale_policy_t *p, char *err, size_t err_len) {
  if (!p) return fail(err, err_len, STRATA_EINVAL, "policy: missing");
  for (size_t i = 0; i < N_FIELDS; i++) {
    const field_t *f = &fields[i];
    double v = field_get(f, p);
    if (!isfinite(v)) return fail(err, err_len, STRATA_EINVAL, "%s: not a finite number", f->name);
    if (v < f->lo) return fail(err, err_len, STRATA_EINVAL, "%s: %g is below the minimum %g", f->name, v, f->lo);
    if (v > f->hi) return fail(err, err_len, STRATA_EINVAL, "%s: %g is above the maximum %g", f->name, v, f->hi);
  }
  if (p->min_replicas > p->max_replicas)
    return fail(err, err_len, STRATA_EINVAL, "min_replicas: %d is above max_replicas %d", p->min_replicas,
                p->max_replicas);
  if (p->gpu_budget > 0 && p->gpus_per_replica > 0) {
    if (p->gpu_budget < p->gpus_per_replica)
      return fail(err, err_len, STRATA_EINVAL, "gpu_budget: %d is below gpus_per_replica %d (no replica fits)",
                  p->gpu_budget, p->gpus_per_replica);
    if ((int64_t)p->min_replicas * p->gpus_per_replica > p->gpu_budget)
      return fail(err, err_len, STRATA_EINVAL, "min_replicas: %d replicas x %d GPUs exceeds gpu_budget %d",
                  p->min_replicas, p->gpus_per_replica, p->gpu_budget);
  }
  return 0;
}

/* apply_json_item: one member of a policy JSON object onto P. */
static int apply_json_item(autoscale_policy_t *p, const cJSON *it, char *err, size_t err_len) {
  const char *name = it->string ? it->string : "";
  const field_t *f = field_find(name, strlen(name));
  if (!f) return fail(err, err_len, STRATA_EINVAL, "%s: unknown policy field", name);
  if (f->type == FIELD_MODE) {
    if (!cJSON_IsString(it)) return fail(err, err_len, STRATA_EINVAL, "mode: expected a string (active or observe)");
    return field_set_mode(f, p, it->valuestring, err, err_len);
  }
  if (!cJSON_IsNumber(it)) return fail(err, err_len, STRATA_EINVAL, "%s: expected a number", name);
  return field_set_number(f, p, it->valuedouble, err, err_len);
}

/* apply_json: the members of the JSON object onto P, unvalidated. */
static int apply_json(autoscale_policy_t *p, const char *json, size_t len, char *err, size_t err_len) {
  cJSON *root = cJSON_ParseWithLength(json, len);
  if (!root || !cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return fail(err, err_len, STRATA_EFORMAT, "policy JSON: not a JSON object");
  }
  int rc = 0;
  for (const cJSON *it = root->child; it && rc == 0; it = it->next) rc = apply_json_item(p, it, err, err_len);
  cJSON_Delete(root);
  return rc;
}

/* apply_pair: one "name=value" onto P. */
static int apply_pair(autoscale_policy_t *p, const char *pair, char *err, size_t err_len) {
  const char *eq = strchr(pair, '=');
  if (!eq || eq == pair) return fail(err, err_len, STRATA_EINVAL, "\"%s\": expected name=value", pair);
  const field_t *f = field_find(pair, (size_t)(eq - pair));
  if (!f) return fail(err, err_len, STRATA_EINVAL, "%.*s: unknown policy field", (int)(eq - pair), pair);
  const char *val = eq + 1;
  if (f->type == FIELD_MODE) return field_set_mode(f, p, val, err, err_len);
  char *end = NULL;
  errno = 0;
  double v = strtod(val, &end);
  if (!*val || end == val || *end || errno == ERANGE)
    return fail(err, err_len, STRATA_EINVAL, "%s: \"%s\" is not a number", f->name, val);
  return field_set_number(f, p, v, err, err_len);
}

int autoscale_policy_update(autoscale_policy_t *p, const char *json, size_t json_len, int n_pairs,
                            const char *const *pairs, char *err, size_t err_len) {
  if (!p || n_pairs < 0 || (n_pairs > 0 && !pairs)) return fail(err, err_len, STRATA_EINVAL, "policy: missing");
  autoscale_policy_t tmp = *p;
  int rc = json ? apply_json(&tmp, json, json_len, err, err_len) : 0;
  for (int i = 0; i < n_pairs && rc == 0; i++) {
    if (!pairs[i]) return fail(err, err_len, STRATA_EINVAL, "policy: missing pair");
    rc = apply_pair(&tmp, pairs[i], err, err_len);
  }
  if (rc == 0) rc = autoscale_policy_validate(&tmp, err, err_len);
  if (rc == 0) *p = tmp;
  return rc;
}

int autoscale_policy_merge_json(autoscale_policy_t *p, const char *json, size_t len, char *err, size_t err_len) {
  if (!json) return fail(err, err_len, STRATA_EINVAL, "policy JSON: missing");
  return autoscale_policy_update(p, json, len, 0, NULL, err, err_len);
}

int autoscale_policy_merge_kv(autoscale_policy_t *p, int n_pairs, const char *const *pairs, char *err,
                              size_t err_len) {
  return autoscale_policy_update(p, NULL, 0, n_pairs, pairs, err, err_len);
}

char *autoscale_policy_to_json(const autoscale_policy_t *p) {
  char *out = NULL, *printed = NULL;
  cJSON *root = cJSON_CreateObject();
  if (!root || !p) goto done;
  for (size_t i = 0; i < N_FIELDS; i++) {
    const field_t *f = &fields[i];
    cJSON *v = f->type == FIELD_MODE ? cJSON_CreateString(mode_names[p->mode == AUTOSCALE_MODE_OBSERVE])
                                     : cJSON_CreateNumber(field_get(f, p));
    if (!v) goto done;
    cJSON_AddItemToObject(root, f->name, v);
  }
  printed = cJSON_PrintUnformatted(root);
  /* NOTE: copied so that the caller's free() matches malloc() whatever hooks cJSON was given. */
  if (printed) out = strdup(printed);
done:
  if (printed) cJSON_free(printed);
  cJSON_Delete(root);
  return out;
}
