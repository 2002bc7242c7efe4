/* decide.c: the scaling decision: signals -> recommendation -> stabilisation windows, cooldown and
 * bounds -> desired replicas with a reason; and its export as metrics. A pure function of its inputs. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/status.h"
#include "coordinator/autoscaler/autoscaler.h"

/* NOTE: scale down only when every signal is below half its target. A replica removed from N raises
 * each one's load by N/(N-1); the gap keeps the pool from bouncing between two counts. */
#define DOWN_FRACTION 0.5

static const char *const reason_names[] = {
#define AUTOSCALE_REASON_NAME(code, name) name,
    AUTOSCALE_REASON_MAP(AUTOSCALE_REASON_NAME)
#undef AUTOSCALE_REASON_NAME
};

const char *autoscale_reason_name(autoscale_reason_t r) {
  return (unsigned)r < AUTOSCALE_REASON_COUNT ? reason_names[r] : "unknown";
}

void autoscale_state_init(autoscale_state_t *s) {
  memset(s, 0, sizeof(*s));
  s->down_target = -1;
}

/* What the sample says, before windows and cooldown. */
typedef struct {
  double ratio;              /* worst observed/target ratio among known signals (0 when none) */
  autoscale_reason_t signal; /* *_ABOVE_TARGET of the worst one, BELOW_TARGETS or WITHIN_TARGETS */
  bool unknown;              /* an enabled signal had no value while there was traffic */
  int n_enabled;             /* signals with a target */
  char what[128];            /* "ttft p90 900 ms > target 500 ms" */
} signals_t;

/* consider: folds one signal (VALUE against TARGET, NAN = no value) into S. */
static void consider(signals_t *s, autoscale_reason_t code, const char *label, const char *unit, double value,
                     double target, bool traffic) {
  if (target <= 0) return; /* disabled */
  s->n_enabled++;
  double r;
  if (isnan(value)) {
    if (traffic) {
      s->unknown = true;
      return;
    }
    r = 0; /* nothing running, nothing measured: as idle as it gets */
  } else {
    r = value / target;
  }
  if (r > s->ratio) {
    s->ratio = r;
    s->signal = code;
    snprintf(s->what, sizeof(s->what), "%s %g%s %s target %g%s", label, value, unit, r > 1 ? ">" : "<=", target,
             unit);
  }
}

/* The load values one view of the signals uses: this sample's, or the smoothed ones. */
typedef struct {
  double n_queued;  /* requests waiting across the pool */
  double kv_usage;  /* NAN when unknown */
  const char *tag;  /* "" or " (mean over 60s)": shown after queue and KV values */
} load_view_t;

static void read_signals(const autoscale_policy_t *p, int current, const autoscale_sample_t *x,
                         const load_view_t *v, signals_t *s) {
  memset(s, 0, sizeof(*s));
  s->ratio = -1;
  s->signal = AUTOSCALE_REASON_WITHIN_TARGETS;
  bool traffic = x->n_queued + x->n_running > 0;
  char qlabel[64], kvlabel[64];
  snprintf(qlabel, sizeof(qlabel), "queue per replica%s", v->tag);
  snprintf(kvlabel, sizeof(kvlabel), "kv usage%s", v->tag);
  consider(s, AUTOSCALE_REASON_TTFT_ABOVE_TARGET, "ttft p90", " ms", x->ttft_p90_ms, p->ttft_p90_ms, traffic);
  consider(s, AUTOSCALE_REASON_ITL_ABOVE_TARGET, "itl p90", " ms", x->itl_p90_ms, p->itl_p90_ms, traffic);
  if (p->queue_per_replica > 0) {
    int ready = x->ready_replicas < current ? x->ready_replicas : current;
    /* NOTE: with no ready replica any queued request is infinitely far above target (scale from zero). */
    double q = ready > 0 ? v->n_queued / ready : (v->n_queued > 0 ? INFINITY : 0);
    consider(s, AUTOSCALE_REASON_QUEUE_ABOVE_TARGET, qlabel, "", q, p->queue_per_replica, traffic);
  }
  consider(s, AUTOSCALE_REASON_KV_ABOVE_TARGET, kvlabel, "", v->kv_usage, p->kv_usage, traffic);
  if (s->ratio < 0) s->ratio = 0; /* no signal enabled or known */
  if (s->n_enabled == 0) {
    snprintf(s->what, sizeof(s->what), "no signal has a target");
  } else if (s->ratio <= 1 && !s->unknown && s->ratio < DOWN_FRACTION) {
    s->signal = AUTOSCALE_REASON_BELOW_TARGETS;
    snprintf(s->what, sizeof(s->what), "all signals below %g%% of target%s", DOWN_FRACTION * 100, v->tag);
  } else if (s->ratio <= 1) {
    s->signal = AUTOSCALE_REASON_WITHIN_TARGETS;
    if (s->unknown) snprintf(s->what, sizeof(s->what), "some signals unknown under traffic");
    /* else WHAT names the worst signal: "queue per replica 2.5 <= target 4" */
  }
}

/* remember: appends sample X to the history ring of ST. */
static void remember(autoscale_state_t *st, const autoscale_sample_t *x) {
  st->hist[st->i_hist] = (autoscale_hist_t){.t_s = x->now_s, .n_queued = x->n_queued, .kv_usage = x->kv_usage};
  st->i_hist = (st->i_hist + 1) % AUTOSCALE_HISTORY;
  if (st->n_hist < AUTOSCALE_HISTORY) st->n_hist++;
}

/* smoothed: the mean queue and KV use over the samples of the last latency_window_s (the current one
 * included, as remember() stored it). A sample from a clock that went backwards counts as recent. */
static void smoothed(const autoscale_policy_t *p, const autoscale_state_t *st, double now, load_view_t *v) {
  double q = 0, kv = 0;
  int n_q = 0, n_kv = 0;
  for (int k = 0; k < st->n_hist; k++) {
    const autoscale_hist_t *h = &st->hist[(st->i_hist - 1 - k + AUTOSCALE_HISTORY) % AUTOSCALE_HISTORY];
    if (now - h->t_s > p->latency_window_s) break; /* newest first: the rest are older still */
    q += h->n_queued;
    n_q++;
    if (!isnan(h->kv_usage)) {
      kv += h->kv_usage;
      n_kv++;
    }
  }
  v->n_queued = n_q ? q / n_q : 0;
  v->kv_usage = n_kv ? kv / n_kv : NAN;
}

/* read_views: the signals as scale-up sees them (this sample: react to what is happening now) into
 * S, unless scale-down would act on them, which needs the smoothed view to agree (queue and KV use
 * low over the whole latency window: a gap between bursts is not an idle pool). */
static void read_views(const autoscale_policy_t *p, int current, const autoscale_sample_t *x, const autoscale_state_t *st,
                       signals_t *s, double *queue_mean) {
  load_view_t now_view = {.n_queued = x->n_queued, .kv_usage = x->kv_usage, .tag = ""};
  read_signals(p, current, x, &now_view, s);
  char tag[40];
  snprintf(tag, sizeof(tag), " (mean over %ds)", p->latency_window_s);
  load_view_t mean_view = {.tag = tag};
  smoothed(p, st, x->now_s, &mean_view);
  *queue_mean = mean_view.n_queued;
  if (s->signal != AUTOSCALE_REASON_BELOW_TARGETS) return;
  signals_t m;
  read_signals(p, current, x, &mean_view, &m);
  if (m.signal == AUTOSCALE_REASON_BELOW_TARGETS) {
    *s = m;
    return;
  }
  s->signal = AUTOSCALE_REASON_WITHIN_TARGETS;
  snprintf(s->what, sizeof(s->what), "low now, but %.110s", m.what);
}

/* replica_cap: max_replicas, lowered by the GPU budget; *BY_BUDGET says which bound binds. */
static int replica_cap(const autoscale_policy_t *p, bool *by_budget) {
  *by_budget = false;
  if (p->gpu_budget > 0 && p->gpus_per_replica > 0 && p->gpu_budget / p->gpus_per_replica < p->max_replicas) {
    *by_budget = true;
    return p->gpu_budget / p->gpus_per_replica;
  }
  return p->max_replicas;
}

/* wanted: the unbounded recommendation of this sample alone. */
static int wanted(const autoscale_policy_t *p, int current, const autoscale_sample_t *x, const signals_t *s) {
  if (s->ratio > 1) {
    int want;
    if (current == 0)
      want = p->queue_per_replica > 0 ? (int)ceil(fmin(x->n_queued / p->queue_per_replica, 1e6)) : 1;
    else if (isinf(s->ratio))
      want = current + p->scale_up_step;
    else
      want = (int)ceil(fmin(current * s->ratio, 1e6) - 1e-9);
    if (want <= current) want = current + 1;
    return want > current + p->scale_up_step ? current + p->scale_up_step : want;
  }
  if (s->signal == AUTOSCALE_REASON_BELOW_TARGETS && current > 0) {
    int want = current - p->scale_down_step;
    /* NOTE: never to zero while a request is queued or running: it would have nowhere to go. */
    if (want < 1 && x->n_queued + x->n_running > 0) want = 1;
    return want < 0 ? 0 : want;
  }
  return current;
}

/* track: extends or restarts the stabilisation runs with this sample's recommendation REC. */
static void track(autoscale_state_t *st, int current, int rec, double now) {
  if (rec > current) {
    if (st->up_target == 0 || st->up_target <= current) {
      st->up_since_s = now;
      st->up_target = rec;
    } else if (rec < st->up_target) {
      st->up_target = rec;
    }
    st->down_target = -1;
  } else if (rec < current) {
    if (st->down_target < 0 || st->down_target >= current) {
      st->down_since_s = now;
      st->down_target = rec;
    } else if (rec > st->down_target) {
      st->down_target = rec;
    }
    st->up_target = 0;
  } else {
    st->up_target = 0;
    st->down_target = -1;
  }
}

static void note_change(autoscale_state_t *st, int desired, double now) {
  st->changed = true;
  st->last_change_s = now;
  st->up_target = 0;
  st->down_target = -1;
  st->last_replicas = desired;
}

static int check_args(const autoscale_policy_t *p, const autoscale_state_t *in, int current,
                      const autoscale_sample_t *x, autoscale_state_t *out, autoscale_decision_t *d) {
  if (!p || !in || !x || !out || !d || current < 0 || current > 1000000) return STRATA_EINVAL;
  if (!isfinite(x->now_s) || x->n_queued < 0 || x->n_running < 0 || x->ready_replicas < 0) return STRATA_EINVAL;
  return autoscale_policy_validate(p, NULL, 0);
}

/* stabilise: the windows, cooldown and readiness rules applied to REC; sets D's desired and reason. */
static void stabilise(const autoscale_policy_t *p, autoscale_state_t *st, int current, int rec,
                      const autoscale_sample_t *x, const signals_t *s, autoscale_decision_t *d) {
  bool cooling = st->changed && x->now_s - st->last_change_s < p->cooldown_s;
  d->desired_replicas = current;
  if (rec > current) {
    if (x->now_s - st->up_since_s < p->scale_up_window_s) {
      d->reason = AUTOSCALE_REASON_UP_WINDOW;
      snprintf(d->message, sizeof(d->message), "hold %d: %s for %gs of the %ds scale-up window", current, s->what,
               x->now_s - st->up_since_s, p->scale_up_window_s);
    } else if (cooling) {
      d->reason = AUTOSCALE_REASON_COOLDOWN;
      snprintf(d->message, sizeof(d->message), "hold %d: %s, but in the %ds cooldown after the last change", current,
               s->what, p->cooldown_s);
    } else if (x->ready_replicas < current) {
      d->reason = AUTOSCALE_REASON_REPLICAS_STARTING;
      snprintf(d->message, sizeof(d->message), "hold %d: %s, but only %d of %d replicas are ready", current, s->what,
               x->ready_replicas, current);
    } else {
      d->desired_replicas = st->up_target;
      d->reason = s->signal;
    }
  } else if (rec < current) {
    if (x->now_s - st->down_since_s < p->scale_down_window_s) {
      d->reason = AUTOSCALE_REASON_DOWN_WINDOW;
      snprintf(d->message, sizeof(d->message), "hold %d: %s for %gs of the %ds scale-down window", current, s->what,
               x->now_s - st->down_since_s, p->scale_down_window_s);
    } else if (cooling) {
      d->reason = AUTOSCALE_REASON_COOLDOWN;
      snprintf(d->message, sizeof(d->message), "hold %d: %s, but in the %ds cooldown after the last change", current,
               s->what, p->cooldown_s);
    } else {
      d->desired_replicas = st->down_target;
      d->reason = AUTOSCALE_REASON_BELOW_TARGETS;
    }
  }
}

/* explain_hold: the reason and message when the recommendation is the current count. WANT above it
 * means a cap binds; low signals mean the floor, or the last replica kept for live traffic. */
static void explain_hold(const autoscale_policy_t *p, int current, int want, bool by_budget, const signals_t *s,
                         autoscale_decision_t *d) {
  const char *why = "";
  d->reason = s->signal;
  if (want > current) {
    d->reason = by_budget ? AUTOSCALE_REASON_GPU_BUDGET_CAP : AUTOSCALE_REASON_MAX_REPLICAS;
    why = by_budget ? " (at the GPU budget)" : " (at max_replicas)";
  } else if (s->signal == AUTOSCALE_REASON_BELOW_TARGETS && current <= p->min_replicas) {
    d->reason = AUTOSCALE_REASON_MIN_REPLICAS;
    why = " (at min_replicas)";
  } else if (s->signal == AUTOSCALE_REASON_BELOW_TARGETS) {
    d->reason = AUTOSCALE_REASON_WITHIN_TARGETS;
    why = " (the last replica stays while requests run)";
  }
  snprintf(d->message, sizeof(d->message), "hold %d: %s%s", current, s->what, why);
}

int autoscale_decide(const autoscale_policy_t *p, const autoscale_state_t *in, int current,
                     const autoscale_sample_t *x, autoscale_state_t *out, autoscale_decision_t *d) {
  if (check_args(p, in, current, x, out, d)) return STRATA_EINVAL;
  autoscale_state_t st = *in;
  memset(d, 0, sizeof(*d));
  d->current_replicas = current;
  /* NOTE: a count that changed under us (an operator's edit, a crashed worker) restarts the windows
   * and the cooldown: recommendations made against the old count no longer mean anything. */
  if (st.seen && current != st.last_replicas) note_change(&st, current, x->now_s);
  st.seen = true;
  st.last_replicas = current;

  remember(&st, x);
  signals_t s;
  read_views(p, current, x, &st, &s, &d->queue_mean);
  d->signal = s.signal;
  d->signal_ratio = s.ratio;
  bool by_budget;
  int cap = replica_cap(p, &by_budget);
  autoscale_reason_t cap_reason = by_budget ? AUTOSCALE_REASON_GPU_BUDGET_CAP : AUTOSCALE_REASON_MAX_REPLICAS;
  int want = wanted(p, current, x, &s);
  int rec = want > cap ? cap : want < p->min_replicas ? p->min_replicas : want;
  d->recommended_replicas = rec;

  if (current < p->min_replicas || current > cap) {
    d->desired_replicas = current < p->min_replicas ? p->min_replicas : cap;
    d->reason = current < p->min_replicas ? AUTOSCALE_REASON_MIN_REPLICAS : cap_reason;
    snprintf(d->message, sizeof(d->message), "scale %d -> %d: outside the policy's bounds [%d, %d]", current,
             d->desired_replicas, p->min_replicas, cap);
  } else {
    track(&st, current, rec, x->now_s);
    stabilise(p, &st, current, rec, x, &s, d);
    if (rec == current) {
      explain_hold(p, current, want, by_budget, &s, d);
    } else if (d->desired_replicas != current) {
      bool capped = d->desired_replicas > current && want > d->desired_replicas && d->desired_replicas == cap;
      if (capped) d->reason = cap_reason;
      snprintf(d->message, sizeof(d->message), "scale %d -> %d: %s%s", current, d->desired_replicas, s.what,
               capped ? (by_budget ? " (capped by the GPU budget)" : " (capped by max_replicas)") : "");
    }
  }

  d->would_be_replicas = d->desired_replicas;
  d->would_be_reason = d->reason;
  if (d->desired_replicas != current) {
    if (p->mode == AUTOSCALE_MODE_OBSERVE) {
      char msg[sizeof(d->message)];
      memcpy(msg, d->message, sizeof(msg));
      snprintf(d->message, sizeof(d->message), "observe only, would %.*s", (int)sizeof(msg) - 40, msg);
      d->desired_replicas = current;
      d->reason = AUTOSCALE_REASON_OBSERVE_ONLY;
    } else {
      d->actuate = true;
      note_change(&st, d->desired_replicas, x->now_s);
    }
  }
  *out = st;
  return 0;
}

int autoscale_decision_metrics(const char *pool, const autoscale_decision_t *d, char *buf, size_t len) {
  int total = 0;
  if (!buf) len = 0;
  if (len > 0) buf[0] = '\0';
  char label[128];
  /* Prometheus label values escape backslash, quote and newline. */
  size_t j = 0;
  for (const char *c = pool ? pool : ""; *c && j + 2 < sizeof(label); c++) {
    if (*c == '\\' || *c == '"' || *c == '\n') label[j++] = '\\';
    label[j++] = *c == '\n' ? 'n' : *c;
  }
  label[j] = '\0';
#define EMIT(...)                                                               \
  do {                                                                          \
    size_t at_ = (size_t)total < len ? (size_t)total : len;                     \
    int w_ = snprintf(buf ? buf + at_ : NULL, buf ? len - at_ : 0, __VA_ARGS__); \
    if (w_ > 0) total += w_;                                                    \
  } while (0)
  EMIT("strata:autoscaler_desired_replicas{pool=\"%s\"} %d\n", label, d->desired_replicas);
  EMIT("strata:autoscaler_current_replicas{pool=\"%s\"} %d\n", label, d->current_replicas);
  for (int r = 0; r < AUTOSCALE_REASON_COUNT; r++)
    EMIT("strata:autoscaler_decision_reason{pool=\"%s\",reason=\"%s\"} %d\n", label, reason_names[r],
         r == (int)d->reason);
#undef EMIT
  return total;
}
