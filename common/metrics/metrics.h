/* metrics.h: a small Prometheus registry (counters, gauges, histograms with fixed buckets and labels)
 * and its text exposition format (version 0.0.4).
 *
 * A registry holds families; a family has a name ("strata:prompt_tokens_total"), a help line, a type,
 * a fixed list of label names and, for histograms, fixed bucket upper bounds. Each distinct set of
 * label values is a child, created on first use. Updates and rendering are thread-safe (one mutex
 * per registry): any thread may update, any thread may render. */
#ifndef STRATA_METRICS_H
#define STRATA_METRICS_H

#include <stddef.h>

#define METRICS_MAX_LABELS 4
#define METRICS_MAX_BUCKETS 32
#define METRICS_MAX_CHILDREN 1024 /* label sets per family; past it updates fail with STRATA_EFULL */

typedef enum { METRICS_COUNTER = 0, METRICS_GAUGE, METRICS_HISTOGRAM } metrics_type_t;

typedef struct metrics_registry metrics_registry_t;
typedef struct metrics_family metrics_family_t;

/* metrics_registry_new: an empty registry, freed with metrics_registry_free (which frees its
 * families too). Returns 0 or STRATA_ENOMEM. */
int metrics_registry_new(metrics_registry_t **out);
void metrics_registry_free(metrics_registry_t *r);

/* metrics_family_new: registers a family in R; the registry owns it (valid until the registry is
 * freed). NAME must match [a-zA-Z_:][a-zA-Z0-9_:]* and be new in R; LABEL_NAMES (N_LABELS of them,
 * at most METRICS_MAX_LABELS) match [a-zA-Z_][a-zA-Z0-9_]* and never "le". Histograms take
 * N_BOUNDS (1..METRICS_MAX_BUCKETS) strictly increasing finite upper bounds (+Inf is implicit);
 * other types pass NULL, 0. Strings are copied. Returns 0, STRATA_EINVAL (logged) or
 * STRATA_ENOMEM. */
int metrics_family_new(metrics_registry_t *r, metrics_type_t type, const char *name, const char *help,
                       const char *const *label_names, int n_labels, const double *bounds, int n_bounds,
                       metrics_family_t **out);

/* Updates. VALUES holds one label value per label name of the family (NULL when it has none); any
 * bytes are allowed (escaped when rendered). Return 0, STRATA_EINVAL (wrong type, a negative counter
 * increment, NaN), STRATA_EFULL (too many label sets) or STRATA_ENOMEM. */
int metrics_counter_add(metrics_family_t *f, const char *const *values, double v);
int metrics_gauge_set(metrics_family_t *f, const char *const *values, double v);
int metrics_gauge_add(metrics_family_t *f, const char *const *values, double v);
int metrics_histogram_observe(metrics_family_t *f, const char *const *values, double v);

/* metrics_render: the whole registry in the Prometheus text format, families in registration order,
 * children in creation order: "# HELP", "# TYPE", then samples; histograms as cumulative
 * NAME_bucket{...,le="B"} lines ending with le="+Inf", then NAME_sum and NAME_count. Stores a
 * malloc'd NUL-terminated string in *OUT (length in *LEN if not NULL). Returns 0 or STRATA_ENOMEM. */
int metrics_render(metrics_registry_t *r, char **out, size_t *len);

/* metrics_exp_buckets: fills OUT with N bounds START, START*FACTOR, ... (a convenience). */
void metrics_exp_buckets(double start, double factor, int n, double *out);

#endif
