/* test_autoscale.c: autoscaling policies (JSON, key=value, validation) and decisions on a fake clock
 * (coordinator/autoscaler). Expected tables are worked out by hand from the policy's rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "coordinator/autoscaler/autoscaler.h"

/* ---- decisions ---------------------------------------------------------------------------------- */

typedef struct {
  double t;
  double ttft; /* NAN: no finished request */
  int queued, running;
  int expect_replicas; /* after this tick (the fake actuator applies every actuated decision) */
  autoscale_reason_t expect_reason;
} tick_t;

#define R(x) AUTOSCALE_REASON_##x

/* run_table: feeds TICKS through autoscale_decide with every replica ready, applying each actuated
 * decision, and checks the replica count and reason after every tick. */
static void run_table(const autoscale_policy_t *p, int start, const tick_t *ticks, int n) {
  autoscale_state_t st;
  autoscale_state_init(&st);
  int cur = start;
  for (int i = 0; i < n; i++) {
    autoscale_sample_t x = {.now_s = ticks[i].t, .ttft_p90_ms = ticks[i].ttft, .itl_p90_ms = NAN,
                            .n_queued = ticks[i].queued, .n_running = ticks[i].running, .kv_usage = NAN,
                            .ready_replicas = cur};
    autoscale_decision_t d;
    assert_int_equal(autoscale_decide(p, &st, cur, &x, &st, &d), 0);
    if (d.actuate) cur = d.desired_replicas;
    if (cur != ticks[i].expect_replicas || d.reason != ticks[i].expect_reason)
      print_error("t=%g: replicas %d reason %s (%s); expected %d %s\n", ticks[i].t, cur,
                  autoscale_reason_name(d.reason), d.message, ticks[i].expect_replicas,
                  autoscale_reason_name(ticks[i].expect_reason));
    assert_int_equal(cur, ticks[i].expect_replicas);
    assert_int_equal(d.reason, ticks[i].expect_reason);
    assert_true(strlen(d.message) > 0);
  }
}

/* Only TTFT is watched (target 500 ms); other targets off so the tables stay readable. */
static void ttft_only(autoscale_policy_t *p) {
  autoscale_policy_defaults(p);
  p->itl_p90_ms = 0;
  p->queue_per_replica = 0;
  p->kv_usage = 0;
}

/* TTFT at 3x target from t=0: each step waits for a full 30 s up-window; the first step is capped by
 * scale_up_step=1 (3x would want 3), the last by max_replicas=3. */
static void test_ramp_up(void **state) {
  (void)state;
  autoscale_policy_t p;
  ttft_only(&p);
  p.min_replicas = 1, p.max_replicas = 3, p.scale_up_step = 1, p.scale_up_window_s = 30, p.cooldown_s = 20;
  const tick_t t[] = {
      {0, 1500, 0, 8, 1, R(UP_WINDOW)},   {10, 1500, 0, 8, 1, R(UP_WINDOW)},
      {20, 1500, 0, 8, 1, R(UP_WINDOW)},  {30, 1500, 0, 8, 2, R(TTFT_ABOVE_TARGET)},
      /* the window restarts after a change: 40 is the first sample against 2 replicas */
      {40, 1500, 0, 8, 2, R(UP_WINDOW)},  {50, 1500, 0, 8, 2, R(UP_WINDOW)},
      {60, 1500, 0, 8, 2, R(UP_WINDOW)},  {70, 1500, 0, 8, 3, R(TTFT_ABOVE_TARGET)},
      {80, 1500, 0, 8, 3, R(MAX_REPLICAS)}, {200, 1500, 0, 8, 3, R(MAX_REPLICAS)},
  };
  run_table(&p, 1, t, sizeof(t) / sizeof(t[0]));
}

/* Load gone (no traffic, no latency sample): down one step after the 60 s window, then the next step
 * waits for the 90 s cooldown, then min_replicas holds. */
static void test_scale_down(void **state) {
  (void)state;
  autoscale_policy_t p;
  ttft_only(&p);
  p.min_replicas = 1, p.max_replicas = 3, p.scale_down_step = 1, p.scale_down_window_s = 60, p.cooldown_s = 90;
  const tick_t t[] = {
      {0, NAN, 0, 0, 3, R(DOWN_WINDOW)},     {30, NAN, 0, 0, 3, R(DOWN_WINDOW)},
      {50, NAN, 0, 0, 3, R(DOWN_WINDOW)},    {60, NAN, 0, 0, 2, R(BELOW_TARGETS)},
      {70, NAN, 0, 0, 2, R(DOWN_WINDOW)},    {120, NAN, 0, 0, 2, R(DOWN_WINDOW)},
      {130, NAN, 0, 0, 2, R(COOLDOWN)},      {140, NAN, 0, 0, 2, R(COOLDOWN)},
      {150, NAN, 0, 0, 1, R(BELOW_TARGETS)}, {160, NAN, 0, 0, 1, R(MIN_REPLICAS)},
      {1000, NAN, 0, 0, 1, R(MIN_REPLICAS)},
  };
  run_table(&p, 3, t, sizeof(t) / sizeof(t[0]));
}

/* Signals that flip inside the windows never act: up (1.8x) alternating with in-band (0.6x), and low
 * (0.2x) alternating with in-band. */
static void test_flapping(void **state) {
  (void)state;
  autoscale_policy_t p;
  ttft_only(&p);
  p.scale_up_window_s = 30, p.scale_down_window_s = 30, p.cooldown_s = 0;
  tick_t t[40];
  for (int i = 0; i < 20; i++) {
    bool hi = i % 2 == 0;
    t[i] = (tick_t){i * 10, hi ? 900 : 300, 0, 4, 2, hi ? R(UP_WINDOW) : R(WITHIN_TARGETS)};
  }
  for (int i = 20; i < 40; i++) {
    bool lo = i % 2 == 0;
    t[i] = (tick_t){i * 10, lo ? 100 : 300, 0, 4, 2, lo ? R(DOWN_WINDOW) : R(WITHIN_TARGETS)};
  }
  run_table(&p, 2, t, 40);
}

/* Observe mode: the ramp's decisions are reported as would-be, replicas never change. */
static void test_observe(void **state) {
  (void)state;
  autoscale_policy_t p;
  ttft_only(&p);
  p.mode = AUTOSCALE_MODE_OBSERVE, p.scale_up_step = 1, p.scale_up_window_s = 30;
  autoscale_state_t st;
  autoscale_state_init(&st);
  int would[] = {1, 1, 1, 2, 2, 2};
  for (int i = 0; i < 6; i++) {
    autoscale_sample_t x = {.now_s = i * 10, .ttft_p90_ms = 1500, .itl_p90_ms = NAN, .n_running = 8,
                            .kv_usage = NAN, .ready_replicas = 1};
    autoscale_decision_t d;
    assert_int_equal(autoscale_decide(&p, &st, 1, &x, &st, &d), 0);
    assert_false(d.actuate);
    assert_int_equal(d.desired_replicas, 1);
    assert_int_equal(d.would_be_replicas, would[i]);
    if (would[i] == 2) {
      assert_int_equal(d.reason, R(OBSERVE_ONLY));
      assert_int_equal(d.would_be_reason, R(TTFT_ABOVE_TARGET));
      assert_non_null(strstr(d.message, "1 -> 2"));
    } else {
      assert_int_equal(d.reason, R(UP_WINDOW));
    }
  }
}

static autoscale_decision_t decide_once(const autoscale_policy_t *p, int cur, double ttft, int queued, int ready) {
  autoscale_state_t st;
  autoscale_state_init(&st);
  autoscale_sample_t x = {.now_s = 100, .ttft_p90_ms = ttft, .itl_p90_ms = NAN, .n_queued = queued,
                          .n_running = 1, .kv_usage = NAN, .ready_replicas = ready};
  autoscale_decision_t d;
  assert_int_equal(autoscale_decide(p, &st, cur, &x, &st, &d), 0);
  return d;
}

/* 2 GPUs per replica under a 5-GPU budget: at most 2 replicas whatever max_replicas says. */
static void test_gpu_budget(void **state) {
  (void)state;
  autoscale_policy_t p;
  ttft_only(&p);
  p.max_replicas = 8, p.scale_up_step = 4, p.scale_up_window_s = 0, p.cooldown_s = 0;
  p.gpus_per_replica = 2, p.gpu_budget = 5;
  autoscale_decision_t d = decide_once(&p, 1, 2000, 0, 1); /* 4x: wants 4 */
  assert_true(d.actuate);
  assert_int_equal(d.desired_replicas, 2);
  assert_int_equal(d.reason, R(GPU_BUDGET_CAP));
  assert_int_equal(d.signal, R(TTFT_ABOVE_TARGET));
  d = decide_once(&p, 2, 2000, 0, 2); /* at the cap */
  assert_false(d.actuate);
  assert_int_equal(d.desired_replicas, 2);
  assert_int_equal(d.reason, R(GPU_BUDGET_CAP));
  d = decide_once(&p, 3, 100, 0, 3); /* the budget was lowered under 3 replicas: down at once */
  assert_true(d.actuate);
  assert_int_equal(d.desired_replicas, 2);
  assert_int_equal(d.reason, R(GPU_BUDGET_CAP));
}

static void test_min_max(void **state) {
  (void)state;
  autoscale_policy_t p;
  ttft_only(&p); /* windows 30/300 s, cooldown 60 s: bounds apply regardless */
  p.min_replicas = 2, p.max_replicas = 4;
  autoscale_decision_t d = decide_once(&p, 0, NAN, 0, 0);
  assert_true(d.actuate);
  assert_int_equal(d.desired_replicas, 2);
  assert_int_equal(d.reason, R(MIN_REPLICAS));
  d = decide_once(&p, 6, 5000, 0, 6);
  assert_true(d.actuate);
  assert_int_equal(d.desired_replicas, 4);
  assert_int_equal(d.reason, R(MAX_REPLICAS));
}

/* Scale from zero on queued requests: 10 queued at 4 per replica wants 3, step 2 allows 2. */
static void test_from_zero_and_guards(void **state) {
  (void)state;
  autoscale_policy_t p;
  autoscale_policy_defaults(&p);
  p.min_replicas = 0, p.scale_up_window_s = 0, p.scale_down_window_s = 0, p.cooldown_s = 0;
  autoscale_decision_t d = decide_once(&p, 0, NAN, 10, 0);
  assert_int_equal(d.desired_replicas, 2);
  assert_int_equal(d.reason, R(QUEUE_ABOVE_TARGET));
  /* latency unknown while a request runs: not evidence of idleness, so no scale-down */
  d = decide_once(&p, 2, NAN, 0, 2);
  assert_false(d.actuate);
  assert_int_equal(d.reason, R(WITHIN_TARGETS));
  /* replicas still starting: no further scale-up */
  d = decide_once(&p, 2, 5000, 0, 1);
  assert_false(d.actuate);
  assert_int_equal(d.reason, R(REPLICAS_STARTING));
  /* one replica, every watched signal low but a request running: never to zero */
  p.itl_p90_ms = 0, p.kv_usage = 0;
  d = decide_once(&p, 1, 10, 0, 1);
  assert_false(d.actuate);
  assert_int_equal(d.desired_replicas, 1);
  assert_int_equal(d.reason, R(WITHIN_TARGETS));
}

/* The worst enabled signal drives the step and names the reason. */
static void test_worst_signal(void **state) {
  (void)state;
  autoscale_policy_t p;
  autoscale_policy_defaults(&p); /* ttft 500, itl 50, queue 4, kv 0.8; step 2, max 4 */
  p.scale_up_window_s = 0, p.cooldown_s = 0;
  struct {
    double ttft, itl;
    int queued;
    double kv;
    int want;
    autoscale_reason_t reason;
  } rows[] = {
      {400, 120, 4, 0.5, 4, R(ITL_ABOVE_TARGET)},   /* itl 2.4x: ceil(2 x 2.4) = 5, step caps at 4 */
      {400, 40, 4, 0.96, 3, R(KV_ABOVE_TARGET)},    /* kv 1.2x: ceil(2.4) = 3 */
      {400, 40, 10, 0.5, 3, R(QUEUE_ABOVE_TARGET)}, /* 5 per replica, 1.25x: ceil(2.5) = 3 */
      {600, 40, 0, 0.5, 3, R(TTFT_ABOVE_TARGET)},   /* 1.2x */
      {400, 40, 4, 0.5, 2, R(WITHIN_TARGETS)},      /* 0.8x at worst */
  };
  for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
    autoscale_state_t st;
    autoscale_state_init(&st);
    autoscale_sample_t x = {.now_s = 5, .ttft_p90_ms = rows[i].ttft, .itl_p90_ms = rows[i].itl,
                            .n_queued = rows[i].queued, .n_running = 6, .kv_usage = rows[i].kv, .ready_replicas = 2};
    autoscale_decision_t d;
    assert_int_equal(autoscale_decide(&p, &st, 2, &x, &st, &d), 0);
    assert_int_equal(d.desired_replicas, rows[i].want);
    assert_int_equal(d.reason, rows[i].reason);
  }
}

/* A count changed by someone else (an operator's edit) is a change: the cooldown starts over. */
static void test_external_edit(void **state) {
  (void)state;
  autoscale_policy_t p;
  ttft_only(&p);
  p.scale_down_window_s = 0, p.cooldown_s = 60;
  autoscale_state_t st;
  autoscale_state_init(&st);
  autoscale_decision_t d;
  autoscale_sample_t x = {.now_s = 0, .ttft_p90_ms = 100, .itl_p90_ms = NAN, .n_running = 1, .kv_usage = NAN,
                          .ready_replicas = 1};
  assert_int_equal(autoscale_decide(&p, &st, 1, &x, &st, &d), 0);
  assert_int_equal(d.reason, R(MIN_REPLICAS));
  x.now_s = 10, x.ready_replicas = 3;
  assert_int_equal(autoscale_decide(&p, &st, 3, &x, &st, &d), 0); /* edited 1 -> 3 */
  assert_false(d.actuate);
  assert_int_equal(d.reason, R(COOLDOWN));
  x.now_s = 70;
  assert_int_equal(autoscale_decide(&p, &st, 3, &x, &st, &d), 0);
  assert_true(d.actuate);
  assert_int_equal(d.desired_replicas, 2);
  assert_int_equal(d.reason, R(BELOW_TARGETS));
}

/* Queue-only policy for the smoothing tests: 4 waiting per replica, windows and steps as given. */
static void queue_only(autoscale_policy_t *p) {
  autoscale_policy_defaults(p);
  p->ttft_p90_ms = 0, p->itl_p90_ms = 0, p->kv_usage = 0, p->queue_per_replica = 4;
  p->cooldown_s = 0;
}

/* Bursty load: every 40 s one sample sees 48 queued, the three between see none (6 always running).
 * Judged one sample at a time (latency_window_s 1 here: the mean is the sample), the gaps look idle:
 * the 20 s down-window fills with zeros, 3 -> 1, the next burst 1 -> 3, and so on. Over a 60 s mean
 * any 60 s holds at least one burst, 48/7 = 6.9 queued, 2.3 per replica out of 3, above half the
 * target, so the pool stays at 3. */
static int bursty_changes(int latency_window_s, int *final) {
  autoscale_policy_t p;
  queue_only(&p);
  p.max_replicas = 3, p.scale_up_step = 2, p.scale_down_step = 2, p.scale_up_window_s = 0;
  p.scale_down_window_s = 20, p.latency_window_s = latency_window_s;
  autoscale_state_t st;
  autoscale_state_init(&st);
  int cur = 3, changes = 0;
  for (int t = 0; t <= 400; t += 10) {
    autoscale_sample_t x = {.now_s = t, .ttft_p90_ms = NAN, .itl_p90_ms = NAN, .n_queued = t % 40 == 0 ? 48 : 0,
                            .n_running = 6, .kv_usage = NAN, .ready_replicas = cur};
    autoscale_decision_t d;
    assert_int_equal(autoscale_decide(&p, &st, cur, &x, &st, &d), 0);
    assert_true(strlen(d.message) > 0);
    if (d.actuate) {
      changes++;
      cur = d.desired_replicas;
    } else if (latency_window_s == 60) {
      /* bursts: more is wanted than the cap; gaps: low now, but not on the mean */
      assert_int_equal(d.reason, t % 40 == 0 ? R(MAX_REPLICAS) : R(WITHIN_TARGETS));
      if (t % 40 && !strstr(d.message, "low now, but queue per replica (mean over 60s)"))
        print_error("t=%d: %s\n", t, d.message);
      if (t % 40) assert_non_null(strstr(d.message, "low now, but queue per replica (mean over 60s)"));
    }
  }
  *final = cur;
  return changes;
}

static void test_bursty_load_does_not_flap(void **state) {
  (void)state;
  int final;
  assert_true(bursty_changes(1, &final) >= 8); /* the single-sample signal: 3 -> 1 -> 3 ... */
  assert_int_equal(bursty_changes(60, &final), 0);
  assert_int_equal(final, 3);
}

/* A sustained rise from idle: scale-up acts exactly one up-window (30 s) after the rise, again one
 * window later (capped by max_replicas 4), holds while the load lasts; when it stops, scale-down waits
 * for the 30 s mean to drop below half the target (2 per replica at 4: 8 queued), then for the 20 s
 * down-window, one replica at a time.
 *   t=200: mean of 20,20,20,0 = 15 -> 3.75/replica   t=210: 10 -> 2.5   t=220: 5 -> 1.25 (below) */
static void test_sustained_rise_and_fall(void **state) {
  (void)state;
  autoscale_policy_t p;
  queue_only(&p);
  p.min_replicas = 1, p.max_replicas = 4, p.scale_up_step = 2, p.scale_down_step = 1;
  p.scale_up_window_s = 30, p.scale_down_window_s = 20, p.latency_window_s = 30;
  tick_t t[48];
  int n = 0;
  for (int s = 0; s <= 50; s += 10) t[n++] = (tick_t){s, NAN, 0, 0, 1, R(MIN_REPLICAS)};
  const tick_t rest[] = {
      {60, NAN, 20, 1, 1, R(UP_WINDOW)},          {70, NAN, 20, 1, 1, R(UP_WINDOW)},
      {80, NAN, 20, 1, 1, R(UP_WINDOW)},          {90, NAN, 20, 1, 3, R(QUEUE_ABOVE_TARGET)},
      {100, NAN, 20, 1, 3, R(UP_WINDOW)},         {110, NAN, 20, 1, 3, R(UP_WINDOW)},
      {120, NAN, 20, 1, 3, R(UP_WINDOW)},         {130, NAN, 20, 1, 4, R(MAX_REPLICAS)},
      {140, NAN, 20, 1, 4, R(MAX_REPLICAS)},      {150, NAN, 20, 1, 4, R(MAX_REPLICAS)},
      {160, NAN, 20, 1, 4, R(MAX_REPLICAS)},      {170, NAN, 20, 1, 4, R(MAX_REPLICAS)},
      {180, NAN, 20, 1, 4, R(MAX_REPLICAS)},      {190, NAN, 20, 1, 4, R(MAX_REPLICAS)},
      {200, NAN, 0, 0, 4, R(WITHIN_TARGETS)},     {210, NAN, 0, 0, 4, R(WITHIN_TARGETS)},
      {220, NAN, 0, 0, 4, R(DOWN_WINDOW)},        {230, NAN, 0, 0, 4, R(DOWN_WINDOW)},
      {240, NAN, 0, 0, 3, R(BELOW_TARGETS)},      {250, NAN, 0, 0, 3, R(DOWN_WINDOW)},
      {260, NAN, 0, 0, 3, R(DOWN_WINDOW)},        {270, NAN, 0, 0, 2, R(BELOW_TARGETS)},
      {280, NAN, 0, 0, 2, R(DOWN_WINDOW)},        {300, NAN, 0, 0, 1, R(BELOW_TARGETS)},
      {310, NAN, 0, 0, 1, R(MIN_REPLICAS)},
  };
  for (size_t i = 0; i < sizeof(rest) / sizeof(rest[0]); i++) t[n++] = rest[i];
  run_table(&p, 1, t, n);

  /* The decision that scaled says why, with the number behind it. */
  autoscale_state_t st;
  autoscale_state_init(&st);
  autoscale_decision_t d;
  p.scale_up_window_s = 0;
  autoscale_sample_t x = {.now_s = 1, .ttft_p90_ms = NAN, .itl_p90_ms = NAN, .n_queued = 20, .n_running = 1,
                          .kv_usage = NAN, .ready_replicas = 1};
  assert_int_equal(autoscale_decide(&p, &st, 1, &x, &st, &d), 0);
  assert_true(d.actuate);
  assert_int_equal(d.reason, R(QUEUE_ABOVE_TARGET));
  assert_string_equal(d.message, "scale 1 -> 3: queue per replica 20 > target 4");
}

static void test_metrics_text(void **state) {
  (void)state;
  autoscale_policy_t p;
  ttft_only(&p);
  p.scale_up_window_s = 0;
  autoscale_decision_t d = decide_once(&p, 1, 900, 0, 1);
  char buf[4096];
  int n = autoscale_decision_metrics("decode", &d, buf, sizeof(buf));
  assert_true(n > 0 && (size_t)n < sizeof(buf));
  assert_non_null(strstr(buf, "strata:autoscaler_desired_replicas{pool=\"decode\"} 2\n"));
  assert_non_null(
      strstr(buf, "strata:autoscaler_decision_reason{pool=\"decode\",reason=\"ttft_p90_above_target\"} 1\n"));
  assert_non_null(strstr(buf, "strata:autoscaler_decision_reason{pool=\"decode\",reason=\"cooldown\"} 0\n"));
  int ones = 0;
  for (const char *c = buf; (c = strstr(c, "decision_reason")); c++) ones += strncmp(strchr(c, '}'), "} 1\n", 4) == 0;
  assert_int_equal(ones, 1);
  char small[16];
  assert_int_equal(autoscale_decision_metrics("decode", &d, small, sizeof(small)), n);
}

/* ---- policies ----------------------------------------------------------------------------------- */

/* Field by field: struct padding is not part of a policy. */
static void assert_policy_equal(const autoscale_policy_t *a, const autoscale_policy_t *b) {
  assert_int_equal(a->min_replicas, b->min_replicas);
  assert_int_equal(a->max_replicas, b->max_replicas);
  assert_true(a->ttft_p90_ms == b->ttft_p90_ms);
  assert_true(a->itl_p90_ms == b->itl_p90_ms);
  assert_true(a->queue_per_replica == b->queue_per_replica);
  assert_true(a->kv_usage == b->kv_usage);
  assert_int_equal(a->scale_up_step, b->scale_up_step);
  assert_int_equal(a->scale_down_step, b->scale_down_step);
  assert_int_equal(a->scale_up_window_s, b->scale_up_window_s);
  assert_int_equal(a->scale_down_window_s, b->scale_down_window_s);
  assert_int_equal(a->cooldown_s, b->cooldown_s);
  assert_int_equal(a->gpus_per_replica, b->gpus_per_replica);
  assert_int_equal(a->gpu_budget, b->gpu_budget);
  assert_int_equal(a->mode, b->mode);
  assert_int_equal(a->interval_s, b->interval_s);
  assert_int_equal(a->latency_window_s, b->latency_window_s);
}

static void test_policy_roundtrip(void **state) {
  (void)state;
  autoscale_policy_t p, q;
  autoscale_policy_defaults(&p);
  assert_int_equal(autoscale_policy_validate(&p, NULL, 0), 0);
  p.min_replicas = 2, p.max_replicas = 7, p.ttft_p90_ms = 321.5, p.itl_p90_ms = 0, p.queue_per_replica = 2.5;
  p.kv_usage = 0.75, p.scale_up_step = 3, p.scale_down_step = 2, p.scale_up_window_s = 15;
  p.scale_down_window_s = 600, p.cooldown_s = 45, p.gpus_per_replica = 4, p.gpu_budget = 28;
  p.mode = AUTOSCALE_MODE_OBSERVE, p.interval_s = 5, p.latency_window_s = 45;
  char *js = autoscale_policy_to_json(&p);
  assert_non_null(js);
  /* Read back independently of our parser. */
  cJSON *j = cJSON_Parse(js);
  assert_non_null(j);
  assert_string_equal(cJSON_GetObjectItem(j, "mode")->valuestring, "observe");
  assert_true(cJSON_GetObjectItem(j, "ttft_p90_ms")->valuedouble == 321.5);
  assert_int_equal(cJSON_GetObjectItem(j, "gpu_budget")->valueint, 28);
  assert_int_equal(cJSON_GetObjectItem(j, "latency_window_s")->valueint, 45);
  assert_int_equal(cJSON_GetArraySize(j), 16);
  cJSON_Delete(j);
  autoscale_policy_defaults(&q);
  char err[256];
  assert_int_equal(autoscale_policy_merge_json(&q, js, strlen(js), err, sizeof(err)), 0);
  assert_policy_equal(&p, &q);
  free(js);
}

static void test_policy_partial_json(void **state) {
  (void)state;
  autoscale_policy_t p;
  autoscale_policy_defaults(&p);
  p.ttft_p90_ms = 300;
  const char *js = "{\"max_replicas\": 8, \"mode\": \"observe\"}";
  char err[256];
  assert_int_equal(autoscale_policy_merge_json(&p, js, strlen(js), err, sizeof(err)), 0);
  assert_int_equal(p.max_replicas, 8);
  assert_int_equal(p.mode, AUTOSCALE_MODE_OBSERVE);
  assert_true(p.ttft_p90_ms == 300);
  assert_int_equal(p.min_replicas, 1);
}

typedef struct {
  const char *json;
  int code;
  const char *want1, *want2; /* substrings the message must hold */
} bad_json_t;

static void test_policy_errors(void **state) {
  (void)state;
  const bad_json_t cases[] = {
      {"{\"max_replicas\": 0}", STRATA_EINVAL, "max_replicas", "minimum 1"},
      {"{\"kv_usage\": 1.5}", STRATA_EINVAL, "kv_usage", "maximum 1"},
      {"{\"min_replicas\": 5, \"max_replicas\": 4}", STRATA_EINVAL, "min_replicas", "max_replicas 4"},
      {"{\"max_replicas\": 2.5}", STRATA_EINVAL, "max_replicas", "whole number"},
      {"{\"bogus\": 1}", STRATA_EINVAL, "bogus", "unknown"},
      {"{\"mode\": \"turbo\"}", STRATA_EINVAL, "mode", "active, observe"},
      {"{\"cooldown_s\": \"60\"}", STRATA_EINVAL, "cooldown_s", "number"},
      {"{\"latency_window_s\": 0}", STRATA_EINVAL, "latency_window_s", "minimum 1"},
      {"{\"latency_window_s\": 3601}", STRATA_EINVAL, "latency_window_s", "maximum 3600"},
      {"{\"gpus_per_replica\": 2, \"gpu_budget\": 3, \"min_replicas\": 2}", STRATA_EINVAL, "gpu_budget 3",
       "min_replicas"},
      {"[1, 2]", STRATA_EFORMAT, "JSON", "object"},
      {"{\"ttft_p90_ms\": 100, \"max_replicas\": 0", STRATA_EFORMAT, "JSON", "object"},
      /* all or nothing: the good ttft must not stick */
      {"{\"ttft_p90_ms\": 100, \"max_replicas\": 0}", STRATA_EINVAL, "max_replicas", "minimum"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    autoscale_policy_t p, before;
    autoscale_policy_defaults(&p);
    before = p;
    char err[256] = "";
    int rc = autoscale_policy_merge_json(&p, cases[i].json, strlen(cases[i].json), err, sizeof(err));
    if (rc != cases[i].code || !strstr(err, cases[i].want1) || !strstr(err, cases[i].want2))
      print_error("%s -> %d \"%s\"\n", cases[i].json, rc, err);
    assert_int_equal(rc, cases[i].code);
    assert_non_null(strstr(err, cases[i].want1));
    assert_non_null(strstr(err, cases[i].want2));
    assert_policy_equal(&p, &before);
  }
}

static void test_policy_kv(void **state) {
  (void)state;
  autoscale_policy_t p;
  autoscale_policy_defaults(&p);
  const char *ok[] = {"ttft_p90_ms=300", "max_replicas=6", "mode=observe", "kv_usage=0.9"};
  char err[256];
  assert_int_equal(autoscale_policy_merge_kv(&p, 4, ok, err, sizeof(err)), 0);
  assert_true(p.ttft_p90_ms == 300);
  assert_int_equal(p.max_replicas, 6);
  assert_int_equal(p.mode, AUTOSCALE_MODE_OBSERVE);
  assert_true(p.kv_usage == 0.9);
  assert_int_equal(p.scale_down_window_s, 300); /* untouched default */

  autoscale_policy_t before = p;
  const char *bad1[] = {"itl_p90_ms=20", "max_replicas=abc"};
  assert_int_equal(autoscale_policy_merge_kv(&p, 2, bad1, err, sizeof(err)), STRATA_EINVAL);
  assert_non_null(strstr(err, "max_replicas"));
  assert_non_null(strstr(err, "not a number"));
  const char *bad2[] = {"max_replicas"};
  assert_int_equal(autoscale_policy_merge_kv(&p, 1, bad2, err, sizeof(err)), STRATA_EINVAL);
  assert_non_null(strstr(err, "name=value"));
  const char *bad3[] = {"min_replicas=7"};
  assert_int_equal(autoscale_policy_merge_kv(&p, 1, bad3, err, sizeof(err)), STRATA_EINVAL);
  assert_non_null(strstr(err, "min_replicas: 7 is above max_replicas 6"));
  const char *bad4[] = {"scale_up_step=0"};
  assert_int_equal(autoscale_policy_merge_kv(&p, 1, bad4, err, sizeof(err)), STRATA_EINVAL);
  assert_non_null(strstr(err, "scale_up_step: 0 is below the minimum 1"));
  assert_policy_equal(&p, &before);
}

/* SetPolicy's json + pairs are one update: only the end result must be valid. */
static void test_policy_update(void **state) {
  (void)state;
  autoscale_policy_t p;
  autoscale_policy_defaults(&p); /* max_replicas 4 */
  const char *js = "{\"min_replicas\": 6}";
  const char *pairs[] = {"max_replicas=8"};
  char err[256];
  assert_int_equal(autoscale_policy_update(&p, js, strlen(js), 1, pairs, err, sizeof(err)), 0);
  assert_int_equal(p.min_replicas, 6);
  assert_int_equal(p.max_replicas, 8);
  const char *js2 = "{\"min_replicas\": 7}";
  const char *pairs2[] = {"max_replicas=5"};
  assert_int_equal(autoscale_policy_update(&p, js2, strlen(js2), 1, pairs2, err, sizeof(err)), STRATA_EINVAL);
  assert_string_equal(err, "min_replicas: 7 is above max_replicas 5");
  assert_int_equal(p.min_replicas, 6);
  assert_int_equal(p.max_replicas, 8);
}

static void test_bad_decide_args(void **state) {
  (void)state;
  autoscale_policy_t p;
  autoscale_policy_defaults(&p);
  autoscale_state_t st;
  autoscale_state_init(&st);
  autoscale_sample_t x = {.now_s = 0, .ttft_p90_ms = NAN, .itl_p90_ms = NAN, .kv_usage = NAN};
  autoscale_decision_t d;
  assert_int_equal(autoscale_decide(&p, &st, -1, &x, &st, &d), STRATA_EINVAL);
  x.n_queued = -5;
  assert_int_equal(autoscale_decide(&p, &st, 1, &x, &st, &d), STRATA_EINVAL);
  x.n_queued = 0;
  p.max_replicas = 0; /* invalid policy */
  assert_int_equal(autoscale_decide(&p, &st, 1, &x, &st, &d), STRATA_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ramp_up),          cmocka_unit_test(test_scale_down),
      cmocka_unit_test(test_flapping),         cmocka_unit_test(test_observe),
      cmocka_unit_test(test_gpu_budget),       cmocka_unit_test(test_min_max),
      cmocka_unit_test(test_from_zero_and_guards), cmocka_unit_test(test_worst_signal),
      cmocka_unit_test(test_external_edit),    cmocka_unit_test(test_metrics_text),
      cmocka_unit_test(test_bursty_load_does_not_flap), cmocka_unit_test(test_sustained_rise_and_fall),
      cmocka_unit_test(test_policy_roundtrip), cmocka_unit_test(test_policy_partial_json),
      cmocka_unit_test(test_policy_errors),    cmocka_unit_test(test_policy_kv),
      cmocka_unit_test(test_policy_update),    cmocka_unit_test(test_bad_decide_args),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
