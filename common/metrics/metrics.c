/* metrics.c: the Prometheus registry and its text exposition format. */
#include "common/metrics/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"

typedef struct metrics_child {
  struct metrics_child *next;
  char **values;      /* (n_labels) owned copies */
  double value;       /* counter / gauge */
  double sum;         /* histogram */
  unsigned long long count;
  unsigned long long buckets[METRICS_MAX_BUCKETS]; /* per bucket, not cumulative */
} metrics_child_t;

struct metrics_family {
  metrics_family_t *next;
  metrics_registry_t *reg;
  metrics_type_t type;
  char *name, *help;
  char *labels[METRICS_MAX_LABELS];
  int n_labels;
  double bounds[METRICS_MAX_BUCKETS];
  int n_bounds;
  metrics_child_t *children, *last_child;
  int n_children;
};

struct metrics_registry {
  pthread_mutex_t mu;
  metrics_family_t *head, *tail;
};

int metrics_registry_new(metrics_registry_t **out) {
  metrics_registry_t *r = calloc(1, sizeof *r);
  if (!r) return STRATA_ENOMEM;
  pthread_mutex_init(&r->mu, NULL);
  *out = r;
  return 0;
}

static void child_free(metrics_child_t *c, int n_labels) {
  if (!c) return;
  for (int i = 0; c->values && i < n_labels; i++) free(c->values[i]);
  free(c->values);
  free(c);
}

static void family_free(metrics_family_t *f) {
  for (metrics_child_t *c = f->children; c;) {
    metrics_child_t *n = c->next;
    child_free(c, f->n_labels);
    c = n;
  }
  for (int i = 0; i < f->n_labels; i++) free(f->labels[i]);
  free(f->name);
  free(f->help);
  free(f);
}

void metrics_registry_free(metrics_registry_t *r) {
  if (!r) return;
  for (metrics_family_t *f = r->head; f;) {
    metrics_family_t *n = f->next;
    family_free(f);
    f = n;
  }
  pthread_mutex_destroy(&r->mu);
  free(r);
}

static int valid_name(const char *s, int allow_colon) {
  if (!s || !*s) return 0;
  for (const char *p = s; *p; p++) {
    char c = *p;
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':') ||
             (p > s && c >= '0' && c <= '9');
    if (!ok) return 0;
  }
  return 1;
}

static int check_family(metrics_registry_t *r, metrics_type_t type, const char *name,
                        const char *const *label_names, int n_labels, const double *bounds, int n_bounds) {
  if (!valid_name(name, 1)) {
    log_error("metrics: '%s' is not a valid metric name", name ? name : "(null)");
    return STRATA_EINVAL;
  }
  if (n_labels < 0 || n_labels > METRICS_MAX_LABELS || (n_labels && !label_names)) {
    log_error("metrics: %s: %d labels (at most %d)", name, n_labels, METRICS_MAX_LABELS);
    return STRATA_EINVAL;
  }
  for (int i = 0; i < n_labels; i++)
    if (!valid_name(label_names[i], 0) || strcmp(label_names[i], "le") == 0) {
      log_error("metrics: %s: bad label name '%s'", name, label_names[i] ? label_names[i] : "(null)");
      return STRATA_EINVAL;
    }
  if (type == METRICS_HISTOGRAM) {
    if (n_bounds < 1 || n_bounds > METRICS_MAX_BUCKETS || !bounds) {
      log_error("metrics: %s: a histogram needs 1..%d bucket bounds", name, METRICS_MAX_BUCKETS);
      return STRATA_EINVAL;
    }
    for (int i = 0; i < n_bounds; i++)
      if (!isfinite(bounds[i]) || (i && bounds[i] <= bounds[i - 1])) {
        log_error("metrics: %s: bucket bounds must be finite and strictly increasing", name);
        return STRATA_EINVAL;
      }
  } else if (n_bounds) {
    log_error("metrics: %s: only histograms have buckets", name);
    return STRATA_EINVAL;
  }
  for (metrics_family_t *f = r->head; f; f = f->next)
    if (strcmp(f->name, name) == 0) {
      log_error("metrics: %s is registered twice", name);
      return STRATA_EINVAL;
    }
  return 0;
}

int metrics_family_new(metrics_registry_t *r, metrics_type_t type, const char *name, const char *help,
                       const char *const *label_names, int n_labels, const double *bounds, int n_bounds,
                       metrics_family_t **out) {
  if (!r || !out || type < METRICS_COUNTER || type > METRICS_HISTOGRAM) return STRATA_EINVAL;
  pthread_mutex_lock(&r->mu);
  int rc = check_family(r, type, name, label_names, n_labels, bounds, n_bounds);
  metrics_family_t *f = NULL;
  if (rc) goto fail;
  rc = STRATA_ENOMEM;
  if (!(f = calloc(1, sizeof *f))) goto fail;
  f->reg = r;
  f->type = type;
  if (!(f->name = strdup(name)) || !(f->help = strdup(help ? help : ""))) goto fail;
  for (int i = 0; i < n_labels; i++, f->n_labels++)
    if (!(f->labels[i] = strdup(label_names[i]))) goto fail;
  f->n_bounds = n_bounds;
  if (n_bounds) memcpy(f->bounds, bounds, sizeof(double) * (size_t)n_bounds);
  if (r->tail)
    r->tail->next = f;
  else
    r->head = f;
  r->tail = f;
  pthread_mutex_unlock(&r->mu);
  *out = f;
  return 0;
fail:
  if (f) family_free(f);
  pthread_mutex_unlock(&r->mu);
  return rc;
}

/* child_get: the child for VALUES, created when new; called with the registry mutex held. */
static int child_get(metrics_family_t *f, const char *const *values, metrics_child_t **out) {
  for (metrics_child_t *c = f->children; c; c = c->next) {
    int same = 1;
    for (int i = 0; i < f->n_labels && same; i++) same = strcmp(c->values[i], values[i] ? values[i] : "") == 0;
    if (same) return *out = c, 0;
  }
  if (f->n_children >= METRICS_MAX_CHILDREN) return STRATA_EFULL;
  metrics_child_t *c = calloc(1, sizeof *c);
  if (!c) return STRATA_ENOMEM;
  if (f->n_labels && !(c->values = calloc((size_t)f->n_labels, sizeof(char *)))) goto fail;
  for (int i = 0; i < f->n_labels; i++)
    if (!(c->values[i] = strdup(values[i] ? values[i] : ""))) goto fail;
  if (f->last_child)
    f->last_child->next = c;
  else
    f->children = c;
  f->last_child = c;
  f->n_children++;
  *out = c;
  return 0;
fail:
  child_free(c, f->n_labels);
  return STRATA_ENOMEM;
}

enum { OP_ADD, OP_SET, OP_OBSERVE };

static int update(metrics_family_t *f, const char *const *values, double v, int op) {
  if (!f || isnan(v) || (f->n_labels && !values)) return STRATA_EINVAL;
  metrics_child_t *c;
  pthread_mutex_lock(&f->reg->mu);
  int rc = child_get(f, values, &c);
  if (rc == 0) {
    if (op == OP_ADD) {
      c->value += v;
    } else if (op == OP_SET) {
      c->value = v;
    } else {
      int b = 0;
      while (b < f->n_bounds && v > f->bounds[b]) b++;
      if (b < f->n_bounds) c->buckets[b]++;
      c->sum += v;
      c->count++;
    }
  }
  pthread_mutex_unlock(&f->reg->mu);
  return rc;
}

int metrics_counter_add(metrics_family_t *f, const char *const *values, double v) {
  if (!f || f->type != METRICS_COUNTER || v < 0) return STRATA_EINVAL;
  return update(f, values, v, OP_ADD);
}
int metrics_gauge_set(metrics_family_t *f, const char *const *values, double v) {
  if (!f || f->type != METRICS_GAUGE) return STRATA_EINVAL;
  return update(f, values, v, OP_SET);
}
int metrics_gauge_add(metrics_family_t *f, const char *const *values, double v) {
  if (!f || f->type != METRICS_GAUGE) return STRATA_EINVAL;
  return update(f, values, v, OP_ADD);
}
int metrics_histogram_observe(metrics_family_t *f, const char *const *values, double v) {
  if (!f || f->type != METRICS_HISTOGRAM) return STRATA_EINVAL;
  return update(f, values, v, OP_OBSERVE);
}

void metrics_exp_buckets(double start, double factor, int n, double *out) {
  for (int i = 0; i < n; i++, start *= factor) out[i] = start;
}

/* ---- rendering ---- */

typedef struct {
  char *p;
  size_t len, cap;
  int oom;
} sbuf_t;

static void sb_put(sbuf_t *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf_t *b, const char *fmt, ...) {
  char tmp[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0) sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* sb_escaped: S with '\\' and '\n' escaped, plus '"' when QUOTE (label values; help text keeps it). */
static void sb_escaped(sbuf_t *b, const char *s, int quote) {
  for (; *s; s++) {
    if (*s == '\\') sb_put(b, "\\\\", 2);
    else if (*s == '\n') sb_put(b, "\\n", 2);
    else if (quote && *s == '"') sb_put(b, "\\\"", 2);
    else sb_put(b, s, 1);
  }
}

/* fmt_double: the shortest of %.15g / %.17g that reads back as V (so 0.1 prints as "0.1"). */
static void fmt_double(char *buf, size_t len, double v) {
  snprintf(buf, len, "%.15g", v);
  if (strtod(buf, NULL) != v) snprintf(buf, len, "%.17g", v);
}

static void sb_number(sbuf_t *b, double v) {
  char tmp[64];
  if (isinf(v)) sb_put(b, v > 0 ? "+Inf" : "-Inf", 4);
  else if (isnan(v)) sb_put(b, "NaN", 3);
  else if (v == floor(v) && fabs(v) < 1e15) sb_printf(b, "%.0f", v);
  else {
    fmt_double(tmp, sizeof tmp, v);
    sb_put(b, tmp, strlen(tmp));
  }
}

/* sb_labels: {a="x",b="y"[,le="B"]}, or nothing when there are no labels at all. */
static void sb_labels(sbuf_t *b, const metrics_family_t *f, const metrics_child_t *c, const char *le) {
  if (!f->n_labels && !le) return;
  sb_put(b, "{", 1);
  for (int i = 0; i < f->n_labels; i++) {
    sb_printf(b, "%s%s=\"", i ? "," : "", f->labels[i]);
    sb_escaped(b, c->values[i], 1);
    sb_put(b, "\"", 1);
  }
  if (le) sb_printf(b, "%sle=\"%s\"", f->n_labels ? "," : "", le);
  sb_put(b, "}", 1);
}

static void render_family(sbuf_t *b, const metrics_family_t *f) {
  static const char *types[] = {"counter", "gauge", "histogram"};
  sb_printf(b, "# HELP %s ", f->name);
  sb_escaped(b, f->help, 0);
  sb_printf(b, "\n# TYPE %s %s\n", f->name, types[f->type]);
  for (const metrics_child_t *c = f->children; c; c = c->next) {
    if (f->type != METRICS_HISTOGRAM) {
      sb_put(b, f->name, strlen(f->name));
      sb_labels(b, f, c, NULL);
      sb_put(b, " ", 1);
      sb_number(b, c->value);
      sb_put(b, "\n", 1);
      continue;
    }
    unsigned long long cum = 0;
    for (int i = 0; i <= f->n_bounds; i++) {
      char le[64];
      if (i < f->n_bounds) {
        cum += c->buckets[i];
        fmt_double(le, sizeof le, f->bounds[i]);
      } else {
        cum = c->count;
        snprintf(le, sizeof le, "+Inf");
      }
      sb_printf(b, "%s_bucket", f->name);
      sb_labels(b, f, c, le);
      sb_printf(b, " %llu\n", cum);
    }
    sb_printf(b, "%s_sum", f->name);
    sb_labels(b, f, c, NULL);
    sb_put(b, " ", 1);
    sb_number(b, c->sum);
    sb_printf(b, "\n%s_count", f->name);
    sb_labels(b, f, c, NULL);
    sb_printf(b, " %llu\n", c->count);
  }
}

int metrics_render(metrics_registry_t *r, char **out, size_t *len) {
  sbuf_t b = {0};
  sb_put(&b, "", 0);
  pthread_mutex_lock(&r->mu);
  for (const metrics_family_t *f = r->head; f; f = f->next) render_family(&b, f);
  pthread_mutex_unlock(&r->mu);
  if (b.oom) {
    free(b.p);
    return STRATA_ENOMEM;
  }
  *out = b.p;
  if (len) *len = b.len;
  return 0;
}
