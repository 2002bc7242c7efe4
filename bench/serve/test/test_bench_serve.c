/* test_bench_serve.c: unit tests of the serve harness's pure parts: percentiles, durations, arrival
 * plans, request bytes (HTTP and gRPC), random variates, SLO/failure accounting and streams without
 * text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench/serve/bs_int.h"

static void cfg_init(bs_cfg_t *c) {
  memset(c, 0, sizeof *c);
  strcpy(c->host, "127.0.0.1");
  strcpy(c->port, "8000");
  strcpy(c->path, "/v1/completions");
  c->model = "m";
  c->stream = 1;
  c->burstiness = 1;
  c->num_requests = -1;
  c->in_lo = c->in_hi = 10;
  c->out_lo = c->out_hi = 5;
  c->trace_speed = 1;
}

/* Reference: numpy.percentile(range(1, 101), p) with linear interpolation. */
static void test_percentiles(void **state) {
  (void)state;
  double v[100];
  for (int i = 0; i < 100; i++) v[i] = (double)((i * 37) % 100 + 1); /* 1..100, shuffled */
  bs_dist_t d;
  bs_dist_of(v, 100, &d);
  assert_int_equal(d.n, 100);
  assert_true(fabs(d.mean - 50.5) < 1e-9);
  assert_true(fabs(d.p50 - 50.5) < 1e-9);
  assert_true(fabs(d.p90 - 90.1) < 1e-9);
  assert_true(fabs(d.p99 - 99.01) < 1e-9);
  assert_true(d.min == 1 && d.max == 100);
  bs_dist_of(v, 0, &d);
  assert_int_equal(d.n, 0);
}

static void test_durations(void **state) {
  (void)state;
  assert_true(bs_parse_duration_s("500ms") == 0.5);
  assert_true(bs_parse_duration_s("2s") == 2.0);
  assert_true(bs_parse_duration_s("1.5m") == 90.0);
  assert_true(bs_parse_duration_s("3") == 3.0);
  assert_true(bs_parse_duration_s("x") < 0);
  assert_true(bs_parse_duration_s("5parsecs") < 0);
  assert_true(bs_parse_duration_s("-1s") < 0);
}

/* Sample moments of seeded variates against the distributions' formulas. */
static void test_variates(void **state) {
  (void)state;
  bs_rng_t r;
  bs_rng_seed(&r, 7);
  const int n = 200000;
  double s = 0, g = 0, g2 = 0;
  for (int i = 0; i < n; i++) s += bs_rng_exp(&r, 0.25);
  for (int i = 0; i < n; i++) {
    double x = bs_rng_gamma(&r, 0.5, 2.0); /* mean k*theta = 1, variance k*theta^2 = 2 */
    g += x;
    g2 += x * x;
  }
  assert_true(fabs(s / n - 0.25) < 0.25 * 0.01);
  double mean = g / n, var = g2 / n - mean * mean;
  assert_true(fabs(mean - 1.0) < 0.02);
  assert_true(fabs(var - 2.0) < 0.06);
  for (int i = 0; i < 1000; i++) {
    int k = bs_rng_range(&r, 3, 5);
    assert_true(k >= 3 && k <= 5);
  }
}

static void test_arrivals(void **state) {
  (void)state;
  bs_cfg_t c;
  cfg_init(&c);
  c.rate = 10;
  c.arrival = BS_ARRIVAL_CONSTANT;
  c.num_requests = 5;
  bs_workload_t *w = bs_workload_new(&c);
  assert_non_null(w);
  assert_int_equal(bs_workload_count(w), 5);
  for (int i = 0; i < 5; i++) assert_true(fabs(bs_workload_arrival_s(w, i) - 0.1 * i) < 1e-12);
  assert_true(bs_workload_offered_rate(w) == 10);
  bs_workload_free(w);
  /* stages 1s@4, 1s@2, constant: 0.25, 0.5, 0.75, then 1.5 (2.0 is the end, excluded) */
  cfg_init(&c);
  c.arrival = BS_ARRIVAL_CONSTANT;
  c.stages[0] = (bs_stage_t){1, 4};
  c.stages[1] = (bs_stage_t){1, 2};
  c.n_stages = 2;
  w = bs_workload_new(&c);
  assert_non_null(w);
  assert_int_equal(bs_workload_count(w), 4);
  const double want[4] = {0.25, 0.5, 0.75, 1.5};
  for (int i = 0; i < 4; i++) assert_true(bs_workload_arrival_s(w, i) == want[i]);
  assert_true(bs_workload_offered_rate(w) == 2.0);
  bs_workload_free(w);
  /* closed loop: no plan, the count is --num-requests */
  cfg_init(&c);
  c.concurrency = 3;
  c.num_requests = 9;
  w = bs_workload_new(&c);
  assert_int_equal(bs_workload_count(w), 9);
  assert_true(bs_workload_arrival_s(w, 4) == 0);
  bs_workload_free(w);
}

static int count_words(const char *s) {
  int n = 0, in = 0;
  for (; *s; s++) {
    n += *s != ' ' && !in;
    in = *s != ' ';
  }
  return n;
}

static void check_request(const bs_req_t *q, int chat, int words) {
  const char *body = strstr(q->http, "\r\n\r\n");
  assert_non_null(body);
  body += 4;
  char cl[64];
  snprintf(cl, sizeof cl, "Content-Length: %zu\r\n", strlen(body));
  assert_non_null(strstr(q->http, cl));
  assert_non_null(strstr(q->http, chat ? "POST /v1/chat/completions HTTP/1.1\r\n" : "POST /v1/completions HTTP/1.1\r\n"));
  assert_non_null(strstr(q->http, "Authorization: Bearer sk-test\r\n"));
  cJSON *o = cJSON_Parse(body);
  assert_non_null(o);
  assert_int_equal(cJSON_GetObjectItem(o, "max_tokens")->valueint, q->output_len);
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(o, "ignore_eos")));
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(o, "stream")));
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "stream_options"), "include_usage")));
  const char *prompt = chat ? cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "messages"), 0), "content")->valuestring
                            : cJSON_GetObjectItem(o, "prompt")->valuestring;
  assert_int_equal(count_words(prompt), words);
  assert_int_equal(q->input_len, words);
  cJSON_Delete(o);
}

static void test_request_bytes(void **state) {
  (void)state;
  bs_cfg_t c;
  cfg_init(&c);
  c.api_key = "sk-test";
  c.in_lo = 5, c.in_hi = 40, c.out_lo = 2, c.out_hi = 9;
  c.prefix_groups = 2, c.prefix_len = 16;
  c.concurrency = 1;
  c.num_requests = 10;
  bs_workload_t *w = bs_workload_new(&c);
  for (int i = 0; i < 10; i++) {
    bs_req_t *a = bs_workload_make(w, i, 0), *b = bs_workload_make(w, i, 0);
    assert_non_null(a);
    assert_string_equal(a->http, b->http); /* deterministic under the seed */
    assert_true(a->output_len >= 2 && a->output_len <= 9);
    assert_true(a->group == 0 || a->group == 1);
    check_request(a, 0, a->input_len);
    assert_true(a->input_len >= 21 && a->input_len <= 56);
    bs_req_free(a);
    bs_req_free(b);
  }
  bs_workload_free(w);
  cfg_init(&c);
  c.api = BS_API_CHAT;
  c.api_key = "sk-test";
  strcpy(c.path, "/v1/chat/completions");
  c.num_requests = 1;
  w = bs_workload_new(&c);
  bs_req_t *q = bs_workload_make(w, 0, 0);
  check_request(q, 1, 10);
  bs_req_free(q);
  bs_workload_free(w);
}

/* A synthetic run whose SLO verdicts are worked out by hand. */
static void test_slo_accounting(void **state) {
  (void)state;
  bs_cfg_t c;
  cfg_init(&c);
  c.concurrency = 1;
  c.slo_ttft_ms = 500;
  c.slo_tpot_ms = 50;
  bs_run_t run = {0};
  bs_req_t q[5];
  bs_req_t *ptr[5];
  memset(q, 0, sizeof q);
  /* ttft ms, e2e ms, tokens, fail */
  const double spec[5][4] = {{100, 1000, 10, 0}, {600, 1000, 10, 0}, {100, 1000, 2, 0}, {100, 500, 1, 0},
                             {100, 200, 3, BS_FAIL_HTTP}};
  for (int i = 0; i < 5; i++) {
    q[i].id = i;
    q[i].t_start = 10;
    q[i].t_first = 10 + spec[i][0] / 1000;
    q[i].t_end = 10 + spec[i][1] / 1000;
    q[i].usage_completion = (int)spec[i][2];
    q[i].usage_prompt = 7;
    q[i].n_chunks = (int)spec[i][2];
    q[i].fail = (int)spec[i][3];
    q[i].http_status = q[i].fail ? 500 : 200;
    ptr[i] = &q[i];
  }
  run.reqs = ptr;
  run.n_reqs = 5;
  run.t0 = 10;
  run.t_end = 12;
  bs_summary_t s;
  assert_int_equal(bs_summary_compute(&c, &run, &s), 0);
  /* 0: tpot 900/9=100 > 50 miss; 1: ttft 600 miss; 2: tpot 900/1 miss; 3: one token, no tpot, met; 4 failed */
  assert_int_equal(s.slo_met, 1);
  assert_int_equal(s.n_ok, 4);
  assert_int_equal(s.fail_by_class[BS_FAIL_HTTP], 1);
  assert_int_equal(s.http_status_count[500], 1);
  assert_int_equal(s.out_tokens, 10 + 10 + 2 + 1);
  assert_int_equal(s.in_tokens, 4 * 7);
  assert_int_equal(s.tpot.n, 3);
  assert_true(fabs(s.tpot.max - 900.0) < 1e-6);
  assert_true(fabs(s.goodput - 0.5) < 1e-9);
  assert_true(fabs(s.slo_attainment - 0.2) < 1e-9);
}

/* gRPC requests carry the prompt text instead of HTTP bytes; the text is the same words an HTTP
 * request of the same seed and id would send. */
static void test_grpc_request(void **state) {
  (void)state;
  bs_cfg_t c, gc; /* a workload keeps its config: one each */
  cfg_init(&c);
  c.in_lo = 5, c.in_hi = 40;
  c.num_requests = 3;
  gc = c;
  strcpy(gc.grpc, "127.0.0.1:50051");
  bs_workload_t *hw = bs_workload_new(&c), *gw = bs_workload_new(&gc);
  for (int i = 0; i < 3; i++) {
    bs_req_t *h = bs_workload_make(hw, i, 0), *g = bs_workload_make(gw, i, 0);
    assert_non_null(h);
    assert_non_null(g);
    assert_null(g->http);
    assert_non_null(g->prompt);
    assert_int_equal(g->grpc_status, -1);
    assert_int_equal(g->input_len, h->input_len);
    assert_int_equal(g->output_len, h->output_len);
    int words = 0, in = 0; /* a naive word count: the prompt is input_len words */
    for (const char *p = g->prompt; *p; p++) {
      if (*p != ' ' && !in) words++;
      in = *p != ' ';
    }
    assert_int_equal(words, g->input_len);
    cJSON *body = cJSON_Parse(strstr(h->http, "\r\n\r\n") + 4);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(body, "prompt")->valuestring, g->prompt);
    cJSON_Delete(body);
    bs_req_free(h);
    bs_req_free(g);
  }
  bs_workload_free(hw);
  bs_workload_free(gw);
}

/* A stream without text: good when usage counts tokens (first output = end), a failure otherwise. */
static void test_no_text(void **state) {
  (void)state;
  bs_req_t q = {.t_start = 1, .t_end = 3, .usage_completion = 16};
  assert_int_equal(bs_req_no_text(&q), 0);
  assert_true(q.t_first == 3 && q.t_last == 3);
  bs_req_t empty = {.t_start = 1, .t_end = 3, .usage_completion = -1};
  assert_int_equal(bs_req_no_text(&empty), 1);
  bs_req_t zero = {.t_start = 1, .t_end = 3, .usage_completion = 0};
  assert_int_equal(bs_req_no_text(&zero), 1);
  bs_req_t text = {.t_start = 1, .t_first = 2, .t_end = 3, .n_chunks = 4, .usage_completion = 16};
  assert_int_equal(bs_req_no_text(&text), 0);
  assert_true(text.t_first == 2);
  /* gRPC's published code numbers (grpc/status.h) */
  assert_string_equal(bs_grpc_status_name(4), "DEADLINE_EXCEEDED");
  assert_string_equal(bs_grpc_status_name(8), "RESOURCE_EXHAUSTED");
  assert_string_equal(bs_grpc_status_name(14), "UNAVAILABLE");
  assert_string_equal(bs_grpc_status_name(16), "UNAUTHENTICATED");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_percentiles), cmocka_unit_test(test_durations), cmocka_unit_test(test_variates),
      cmocka_unit_test(test_arrivals),    cmocka_unit_test(test_request_bytes), cmocka_unit_test(test_slo_accounting),
      cmocka_unit_test(test_grpc_request), cmocka_unit_test(test_no_text),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
