/* test_metrics.c: the Prometheus registry and its text exposition format (common/metrics). The
 * expected text is written by hand from the exposition format specification. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/metrics/metrics.h"
#include "common/status.h"

static void test_counter_and_gauge(void **state) {
  (void)state;
  metrics_registry_t *r;
  metrics_family_t *c, *g;
  assert_int_equal(metrics_registry_new(&r), 0);
  assert_int_equal(metrics_family_new(r, METRICS_COUNTER, "strata:prompt_tokens_total", "Prompt tokens.", NULL, 0,
                                      NULL, 0, &c), 0);
  assert_int_equal(metrics_family_new(r, METRICS_GAUGE, "strata:num_requests_running", "Running requests.", NULL,
                                      0, NULL, 0, &g), 0);
  assert_int_equal(metrics_counter_add(c, NULL, 5), 0);
  assert_int_equal(metrics_counter_add(c, NULL, 2.5), 0);
  assert_int_equal(metrics_counter_add(c, NULL, -1), STRATA_EINVAL); /* counters never go down */
  assert_int_equal(metrics_gauge_set(g, NULL, 3), 0);
  assert_int_equal(metrics_gauge_add(g, NULL, -1), 0);
  assert_int_equal(metrics_gauge_set(c, NULL, 1), STRATA_EINVAL); /* wrong type */
  char *text;
  assert_int_equal(metrics_render(r, &text, NULL), 0);
  assert_string_equal(text,
                      "# HELP strata:prompt_tokens_total Prompt tokens.\n"
                      "# TYPE strata:prompt_tokens_total counter\n"
                      "strata:prompt_tokens_total 7.5\n"
                      "# HELP strata:num_requests_running Running requests.\n"
                      "# TYPE strata:num_requests_running gauge\n"
                      "strata:num_requests_running 2\n");
  free(text);
  metrics_registry_free(r);
}

static void test_histogram_cumulative(void **state) {
  (void)state;
  metrics_registry_t *r;
  metrics_family_t *h;
  const double bounds[] = {0.125, 0.5, 1};
  const char *labels[] = {"model"};
  assert_int_equal(metrics_registry_new(&r), 0);
  assert_int_equal(metrics_family_new(r, METRICS_HISTOGRAM, "ttft_seconds", "TTFT.", labels, 1, bounds, 3, &h), 0);
  const char *v[] = {"m"};
  /* 0.0625 -> le 0.125; 0.125 -> le 0.125 (bounds are inclusive); 0.25 -> le 0.5; 7 -> only +Inf.
   * The values are exact in binary, so the sum is exactly 7.4375. */
  double obs[] = {0.0625, 0.125, 0.25, 7};
  for (int i = 0; i < 4; i++) assert_int_equal(metrics_histogram_observe(h, v, obs[i]), 0);
  char *text;
  assert_int_equal(metrics_render(r, &text, NULL), 0);
  assert_string_equal(text,
                      "# HELP ttft_seconds TTFT.\n"
                      "# TYPE ttft_seconds histogram\n"
                      "ttft_seconds_bucket{model=\"m\",le=\"0.125\"} 2\n"
                      "ttft_seconds_bucket{model=\"m\",le=\"0.5\"} 3\n"
                      "ttft_seconds_bucket{model=\"m\",le=\"1\"} 3\n"
                      "ttft_seconds_bucket{model=\"m\",le=\"+Inf\"} 4\n"
                      "ttft_seconds_sum{model=\"m\"} 7.4375\n"
                      "ttft_seconds_count{model=\"m\"} 4\n");
  free(text);
  metrics_registry_free(r);
}

static void test_label_escaping_and_children(void **state) {
  (void)state;
  metrics_registry_t *r;
  metrics_family_t *c;
  const char *labels[] = {"finished_reason", "path"};
  assert_int_equal(metrics_registry_new(&r), 0);
  assert_int_equal(metrics_family_new(r, METRICS_COUNTER, "req_total", "Requests by \\ reason\nand \"path\".",
                                      labels, 2, NULL, 0, &c), 0);
  const char *a[] = {"stop", "a\"b\\c\nd"}, *b[] = {"length", "/"};
  assert_int_equal(metrics_counter_add(c, a, 1), 0);
  assert_int_equal(metrics_counter_add(c, b, 1), 0);
  assert_int_equal(metrics_counter_add(c, a, 1), 0);
  char *text;
  assert_int_equal(metrics_render(r, &text, NULL), 0);
  /* HELP escapes backslash and newline only; label values also escape the double quote */
  assert_string_equal(text,
                      "# HELP req_total Requests by \\\\ reason\\nand \"path\".\n"
                      "# TYPE req_total counter\n"
                      "req_total{finished_reason=\"stop\",path=\"a\\\"b\\\\c\\nd\"} 2\n"
                      "req_total{finished_reason=\"length\",path=\"/\"} 1\n");
  free(text);
  metrics_registry_free(r);
}

static void test_bad_declarations(void **state) {
  (void)state;
  metrics_registry_t *r;
  metrics_family_t *f;
  assert_int_equal(metrics_registry_new(&r), 0);
  const double unsorted[] = {1, 0.5};
  const char *le[] = {"le"};
  assert_int_equal(metrics_family_new(r, METRICS_COUNTER, "1bad", "", NULL, 0, NULL, 0, &f), STRATA_EINVAL);
  assert_int_equal(metrics_family_new(r, METRICS_HISTOGRAM, "h", "", NULL, 0, unsorted, 2, &f), STRATA_EINVAL);
  assert_int_equal(metrics_family_new(r, METRICS_HISTOGRAM, "h", "", NULL, 0, NULL, 0, &f), STRATA_EINVAL);
  assert_int_equal(metrics_family_new(r, METRICS_HISTOGRAM, "h", "", le, 1, unsorted + 1, 1, &f), STRATA_EINVAL);
  assert_int_equal(metrics_family_new(r, METRICS_GAUGE, "g", "", NULL, 0, NULL, 0, &f), 0);
  assert_int_equal(metrics_family_new(r, METRICS_GAUGE, "g", "", NULL, 0, NULL, 0, &f), STRATA_EINVAL); /* twice */
  assert_int_equal(metrics_gauge_set(f, NULL, NAN), STRATA_EINVAL);
  metrics_registry_free(r);
}

static void test_exp_buckets(void **state) {
  (void)state;
  double b[4];
  metrics_exp_buckets(0.001, 10, 4, b);
  assert_true(fabs(b[0] - 0.001) < 1e-15 && fabs(b[3] - 1.0) < 1e-12);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_counter_and_gauge),
      cmocka_unit_test(test_histogram_cumulative),
      cmocka_unit_test(test_label_escaping_and_children),
      cmocka_unit_test(test_bad_declarations),
      cmocka_unit_test(test_exp_buckets),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
