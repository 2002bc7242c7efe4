/* autoscaler.h: per-pool scaling policies (parse, merge, validate, serialize) and the scaling decision.
 *
 * The leader coordinator calls autoscale_decide() every policy interval_s for each pool with a metrics
 * sample, then hands decision.desired_replicas to an actuator (coordinator/actuator/actuator.h) when
 * decision.actuate is set. The decision is a pure function: the same policy, state and sample always
 * give the same decision and next state, so a fake clock is all a test needs. Nothing here logs,
 * allocates (except autoscale_policy_to_json) or talks to etcd; the caller stores policy JSON at
 * /strata/<cluster>/policy/<pool> and logs/exports every decision (autoscale_decision_metrics()).
 * Not thread-safe: one thread owns a pool's policy and state. See docs/autoscaling.md. */
#ifndef STRATA_AUTOSCALER_H
#define STRATA_AUTOSCALER_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
  AUTOSCALE_MODE_ACTIVE = 0,  /* decide and actuate */
  AUTOSCALE_MODE_OBSERVE = 1, /* decide and report, never actuate */
} autoscale_mode_t;

/* A pool's policy. A target of 0 disables that signal. Defaults and bounds: docs/autoscaling.md and
 * the field table in policy.c (autoscale_policy_defaults()). */
typedef struct {
  int min_replicas;           /* 1; 0 allows scale to zero */
  int max_replicas;           /* 4 */
  double ttft_p90_ms;         /* 500: time to first token, 90th percentile */
  double itl_p90_ms;          /* 50: inter-token latency, 90th percentile */
  double queue_per_replica;   /* 4: waiting requests per ready replica */
  double kv_usage;            /* 0.8: mean KV-cache use of ready replicas, 0..1 */
  int scale_up_step;          /* 2: most replicas added by one decision */
  int scale_down_step;        /* 1: most replicas removed by one decision */
  int scale_up_window_s;      /* 30: a scale-up recommendation must hold this long */
  int scale_down_window_s;    /* 300: a scale-down recommendation must hold this long */
  int cooldown_s;             /* 60: no change this long after any change */
  int gpus_per_replica;       /* 1 */
  int gpu_budget;             /* 0: no cap; else replicas * gpus_per_replica never exceeds it */
  autoscale_mode_t mode;      /* active */
  int interval_s;             /* 10: how often the leader decides */
  int latency_window_s;       /* 60: TTFT/ITL p90 are over requests that finished this recently, and
                               * scale-down looks at the mean queue and KV use over this span */
} autoscale_policy_t;

/* autoscale_policy_defaults: fills P with the documented defaults. */
void autoscale_policy_defaults(autoscale_policy_t *p);

/* autoscale_policy_validate: checks every field against its bounds and the fields against each other
 * (min <= max, min replicas within the GPU budget). Returns 0 or STRATA_EINVAL with ERR naming the field
 * and the bound ("max_replicas: 0 is below the minimum 1"). ERR may be NULL. */
int autoscale_policy_validate(const autoscale_policy_t *p, char *err, size_t err_len);

/* autoscale_policy_merge_json: applies the JSON object JSON (LEN bytes, not necessarily NUL-terminated)
 * onto P: fields present replace P's, absent ones keep P's values (a partial update), so a full
 * document over defaults parses a stored policy. Unknown fields, wrong types and out-of-bounds values
 * are errors. All or nothing: on error P is unchanged. Returns 0, STRATA_EFORMAT (not a JSON object)
 * or STRATA_EINVAL, with ERR saying which field and why. */
int autoscale_policy_merge_json(autoscale_policy_t *p, const char *json, size_t len, char *err, size_t err_len);

/* autoscale_policy_merge_kv: applies N_PAIRS "name=value" strings (as typed after `strata policy set`)
 * onto P, as autoscale_policy_merge_json() does (all or nothing, then validated). Values are numbers,
 * or "active"/"observe" for mode. Returns 0 or STRATA_EINVAL with ERR naming the pair. */
int autoscale_policy_merge_kv(autoscale_policy_t *p, int n_pairs, const char *const *pairs, char *err,
                              size_t err_len);

/* autoscale_policy_update: both at once, as SetPolicy carries them (admin.proto): the JSON object (may
 * be NULL), then the pairs, validated once at the end, all or nothing. Returns as the two above. */
int autoscale_policy_update(autoscale_policy_t *p, const char *json, size_t json_len, int n_pairs,
                            const char *const *pairs, char *err, size_t err_len);

/* autoscale_policy_to_json: P as a complete JSON object with every field. Returns a malloc'd
 * NUL-terminated string the caller frees, or NULL when out of memory. */
char *autoscale_policy_to_json(const autoscale_policy_t *p);

/* X(code, name): every reason a decision can give; the name is the `reason` metric label. */
#define AUTOSCALE_REASON_MAP(X)                              \
  X(WITHIN_TARGETS, "within_targets")                        \
  X(TTFT_ABOVE_TARGET, "ttft_p90_above_target")              \
  X(ITL_ABOVE_TARGET, "itl_p90_above_target")                \
  X(QUEUE_ABOVE_TARGET, "queue_above_target")                \
  X(KV_ABOVE_TARGET, "kv_usage_above_target")                \
  X(BELOW_TARGETS, "below_targets")                          \
  X(UP_WINDOW, "scale_up_window")                            \
  X(DOWN_WINDOW, "scale_down_window")                        \
  X(COOLDOWN, "cooldown")                                    \
  X(REPLICAS_STARTING, "replicas_starting")                  \
  X(MAX_REPLICAS, "max_replicas")                            \
  X(MIN_REPLICAS, "min_replicas")                            \
  X(GPU_BUDGET_CAP, "gpu_budget_cap")                        \
  X(OBSERVE_ONLY, "observe_only")

typedef enum {
#define AUTOSCALE_REASON_ENUM(code, name) AUTOSCALE_REASON_##code,
  AUTOSCALE_REASON_MAP(AUTOSCALE_REASON_ENUM)
#undef AUTOSCALE_REASON_ENUM
  AUTOSCALE_REASON_COUNT
} autoscale_reason_t;

/* autoscale_reason_name: "ttft_p90_above_target"..., "unknown" when out of range. */
const char *autoscale_reason_name(autoscale_reason_t r);

/* One pool's metrics at one instant. Latencies are NAN when no request finished in the sample window
 * (no traffic), which counts as comfortably low only while nothing is queued or running. */
typedef struct {
  double now_s;        /* monotonic seconds (the fake clock in tests) */
  double ttft_p90_ms;  /* over requests that finished within the policy's latency_window_s; NAN: none */
  double itl_p90_ms;   /* likewise; NAN when unknown */
  int n_queued;        /* requests waiting across the pool (coordinator and worker queues) */
  int n_running;       /* requests being generated across the pool */
  double kv_usage;     /* mean over ready replicas, 0..1; NAN when unknown */
  int ready_replicas;  /* replicas registered and admitting work */
} autoscale_sample_t;

/* Samples remembered for the smoothed (scale-down) view of the load signals. */
#define AUTOSCALE_HISTORY 256

typedef struct {
  double t_s;
  int n_queued;
  double kv_usage; /* NAN when unknown */
} autoscale_hist_t;

/* What the autoscaler remembers between decisions. Caller-owned plain data: zero it with
 * autoscale_state_init(); to undo a decision whose actuation failed, keep the previous state. */
typedef struct {
  bool seen;                /* a decision was made before */
  int last_replicas;        /* replicas the last decision left (detects external edits) */
  double last_change_s;     /* time of the last change; cooldown counts from here */
  bool changed;             /* last_change_s is meaningful */
  double up_since_s;        /* a scale-up recommendation has held since then (up_target > 0) */
  int up_target;            /* smallest replica count recommended since up_since_s; 0: no run */
  double down_since_s;      /* a scale-down recommendation has held since then (down_target >= 0) */
  int down_target;          /* largest replica count recommended since down_since_s; -1: no run */
  /* The last AUTOSCALE_HISTORY samples (a ring; i_hist is the next slot). Kept across changes: the
   * load just before a scale-up is exactly what must keep the pool from shrinking right after it. */
  autoscale_hist_t hist[AUTOSCALE_HISTORY];
  int n_hist, i_hist;
} autoscale_state_t;

void autoscale_state_init(autoscale_state_t *s);

/* The outcome of one decision: what to do, why, and the numbers to export as metrics. */
typedef struct {
  int current_replicas;      /* as given */
  int desired_replicas;      /* what the actuator should be asked for (== current when holding) */
  int recommended_replicas;  /* the raw recommendation of this sample alone, after min/max/budget */
  autoscale_reason_t reason; /* why desired is what it is */
  autoscale_reason_t signal; /* the signal behind the recommendation (a *_ABOVE_TARGET, BELOW_TARGETS
                              * or WITHIN_TARGETS) */
  double signal_ratio;       /* the largest observed/target ratio among enabled signals (this sample) */
  double queue_mean;         /* mean queued requests over the latency window (the scale-down view) */
  bool actuate;              /* desired != current and mode is active */
  /* In observe mode: what active mode would have done. Otherwise equal to desired/reason. */
  int would_be_replicas;
  autoscale_reason_t would_be_reason;
  char message[320]; /* one human-readable line: "scale 1 -> 2: ttft p90 900 ms > target 500 ms" */
} autoscale_decision_t;

/* autoscale_decide: one decision for a pool with policy P (valid), CURRENT replicas (>= 0, what the
 * actuator reports), metrics SAMPLE and the previous state IN. Writes the decision to D and the next
 * state to OUT (OUT may alias IN). Returns 0, or STRATA_EINVAL when an argument is NULL or out of range
 * (nothing written). The rules, in order (docs/autoscaling.md has the reasoning):
 *  - current outside [min, min(max, budget cap)]: move to the bound at once (operator intent).
 *  - any enabled signal above its target: recommend current * worst ratio (rounded up), at least +1
 *    and at most +scale_up_step, capped by max and the GPU budget.
 *  - all signals below half their targets, queue and KV use taken as their means over the policy's
 *    latency_window_s (the samples this state remembers), latencies as given: recommend
 *    current - scale_down_step (not below min). A burst in that span keeps the pool up.
 *  - a recommendation acts only after it has held for the whole window (continuously; the smallest
 *    up / largest down count seen in that time is used), outside the cooldown after any change, and a
 *    scale-up waits while fewer replicas are ready than exist.
 *  - observe mode: the same decision is reported as would_be_*, desired stays current. */
int autoscale_decide(const autoscale_policy_t *p, const autoscale_state_t *in, int current,
                     const autoscale_sample_t *sample, autoscale_state_t *out, autoscale_decision_t *d);

/* autoscale_decision_metrics: the decision as Prometheus text lines for pool POOL:
 *   strata:autoscaler_desired_replicas{pool="P"} N
 *   strata:autoscaler_current_replicas{pool="P"} N
 *   strata:autoscaler_decision_reason{pool="P",reason="R"} 0|1   (one line per reason, 1 for the current)
 * into BUF (LEN bytes, NUL-terminated when LEN > 0). Returns the length needed, as snprintf. */
int autoscale_decision_metrics(const char *pool, const autoscale_decision_t *d, char *buf, size_t len);

#endif
