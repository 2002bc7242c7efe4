/* test_sampler.c: the sampler (worker/sample/) against hand-derived values, naive reference
 * computations written here, and the published Philox known-answer vectors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "worker/sample/sample.h"
#include "worker/sample/sample_int.h"

#define MAX_POS 20000

static int32_t g_history[MAX_POS]; /* all token 0: only its length (the position) matters */

/* sample_at: one draw at POSITION with no generated tokens (so penalties and min_tokens are idle). */
static int32_t sample_at(sampler_t *s, const sampling_params_t *sp, const float *logits, int position) {
  float buf[1024];
  memcpy(buf, logits, (size_t)s->vocab_size * sizeof(float));
  sample_result_t r;
  assert_int_equal(sampler_sample(s, sp, buf, g_history, position, position, NULL, 0, &r), 0);
  assert_true(r.token >= 0 && r.token < s->vocab_size);
  return r.token;
}

/* Random123 kat_vectors, "philox4x32 10" lines: counter[4] key[2] -> output[4]. */
static void test_philox_kat(void **state) {
  (void)state;
  static const uint32_t kat[3][10] = {
      {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
      {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d, 0x41c83b0e, 0xa20bc7c6,
       0x6d5451fd},
      {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09, 0x94fdcceb, 0x5001e420,
       0x24126ea1},
  };
  for (int t = 0; t < 3; t++) {
    uint32_t out[4];
    philox4x32_10(kat[t], kat[t] + 4, out);
    for (int i = 0; i < 4; i++) assert_int_equal(out[i], kat[t][6 + i]);
  }
  /* counter 0, key 0 is seed 0, position 0, ids 0..3: the top 24 bits of each word */
  for (uint32_t i = 0; i < 4; i++) {
    float u = rng_uniform(0, 0, i);
    assert_true(u == (float)(kat[0][6 + i] >> 8) / 16777216.0f);
  }
  /* the range is [0, 1) over many draws */
  for (uint32_t i = 0; i < 10000; i++) {
    float u = rng_uniform(12345, i / 100, i);
    assert_true(u >= 0.0f && u < 1.0f);
  }
}

static void test_greedy_ties(void **state) {
  (void)state;
  sampler_t s;
  assert_int_equal(sampler_init(&s, 6), 0);
  sampling_params_t sp;
  sampling_params_default(&sp);
  const float l1[6] = {0.1f, 3.0f, -2.0f, 3.0f, 2.9f, 3.0f};
  assert_int_equal(sample_at(&s, &sp, l1, 0), 1); /* three-way tie: lowest id */
  const float l2[6] = {-INFINITY, -5.0f, -4.0f, NAN, -4.5f, -4.0f};
  assert_int_equal(sample_at(&s, &sp, l2, 7), 2); /* NaN never wins */
  sp.temperature = 5e-6f;                          /* effectively zero: still greedy */
  assert_int_equal(sample_at(&s, &sp, l1, 3), 1);
  sampler_deinit(&s);
}

/* greedy_after: greedy pick for LOGITS with HISTORY (first N_PROMPT prompt); also returns the
 * processed logits in PROCESSED. */
static int32_t greedy_after(const sampling_params_t *sp, const float *logits, int vocab, const int32_t *hist,
                            int n_hist, int n_prompt, float *processed) {
  sampler_t s;
  assert_int_equal(sampler_init(&s, vocab), 0);
  memcpy(processed, logits, (size_t)vocab * sizeof(float));
  sample_result_t r;
  assert_int_equal(sampler_sample(&s, sp, processed, hist, n_hist, n_prompt, NULL, 0, &r), 0);
  sampler_deinit(&s);
  return r.token;
}

static void test_penalties(void **state) {
  (void)state;
  sampling_params_t sp;
  float p[5];
  /* repetition 2 (HF semantics): positive logits are divided, negative multiplied, once per token
   * however often it occurs, prompt and output alike */
  sampling_params_default(&sp);
  sp.repetition_penalty = 2.0f;
  const float a[5] = {1.0f, 3.0f, 2.5f, 2.8f, -0.5f};
  const int32_t ha[5] = {1, 1, 4, 3, 3}; /* prompt {1, 1, 4}, output {3, 3} */
  assert_int_equal(greedy_after(&sp, a, 5, ha, 5, 3, p), 2);
  const float want_a[5] = {1.0f, 1.5f, 2.5f, 1.4f, -1.0f};
  for (int i = 0; i < 5; i++) assert_float_equal(p[i], want_a[i], 1e-6);
  /* without the penalty the argmax is token 1 */
  sp.repetition_penalty = 1.0f;
  assert_int_equal(greedy_after(&sp, a, 5, ha, 5, 3, p), 1);

  /* presence and frequency count only the output: token 1 occurs twice in the output */
  sampling_params_default(&sp);
  sp.presence_penalty = 0.2f;
  sp.frequency_penalty = 0.2f;
  const float b[3] = {2.0f, 2.5f, 1.0f};
  const int32_t hb[3] = {2, 1, 1}; /* prompt {2}, output {1, 1}: 1 -> 2.5 - 0.2 - 0.4 = 1.9 */
  assert_int_equal(greedy_after(&sp, b, 3, hb, 3, 1, p), 0);
  assert_float_equal(p[0], 2.0f, 1e-6);
  assert_float_equal(p[1], 1.9f, 1e-6);
  assert_float_equal(p[2], 1.0f, 1e-6); /* in the prompt only: untouched */
  /* once in the output: 2.5 - 0.2 - 0.2 = 2.1 still beats 2.0 - 0.4 */
  const int32_t hb2[3] = {2, 1, 0};
  assert_int_equal(greedy_after(&sp, b, 3, hb2, 3, 1, p), 1);
  /* a prompt full of token 1 and no output: no presence penalty */
  const int32_t hb3[3] = {1, 1, 1};
  assert_int_equal(greedy_after(&sp, b, 3, hb3, 3, 3, p), 1);
  /* negative presence encourages */
  sampling_params_default(&sp);
  sp.presence_penalty = -1.0f;
  const int32_t hb4[2] = {0, 2}; /* output {2}: 1.0 + 1.0 = 2.0 vs 2.0 and 2.5 */
  assert_int_equal(greedy_after(&sp, b, 3, hb4, 2, 1, p), 1);
  assert_float_equal(p[2], 2.0f, 1e-6);
}

/* softmax of L/T in double, the reference for the draw */
static void ref_softmax(const float *l, int n, double t, double *p) {
  double mx = -INFINITY, z = 0;
  for (int i = 0; i < n; i++) mx = fmax(mx, l[i] / t);
  for (int i = 0; i < n; i++) z += (p[i] = exp(l[i] / t - mx));
  for (int i = 0; i < n; i++) p[i] /= z;
}

static void test_distribution(void **state) {
  (void)state;
  sampler_t s;
  assert_int_equal(sampler_init(&s, 5), 0);
  sampling_params_t sp;
  sampling_params_default(&sp);
  sp.temperature = 0.7f;
  sp.seed = 20240601;
  const float l[5] = {1.0f, 0.5f, 0.0f, -0.5f, 2.0f};
  double p[5];
  ref_softmax(l, 5, 0.7, p);
  int hits[5] = {0};
  for (int pos = 0; pos < MAX_POS; pos++) hits[sample_at(&s, &sp, l, pos)]++;
  double chi2 = 0;
  for (int i = 0; i < 5; i++) {
    double f = hits[i] / (double)MAX_POS;
    print_message("token %d: expected %.4f sampled %.4f\n", i, p[i], f);
    assert_true(fabs(f - p[i]) < 0.015);
    double e = p[i] * MAX_POS;
    chi2 += (hits[i] - e) * (hits[i] - e) / e;
  }
  assert_true(chi2 < 18.47); /* 4 degrees of freedom, p = 0.001 */
  sampler_deinit(&s);
}

static void test_top_k(void **state) {
  (void)state;
  sampler_t s;
  assert_int_equal(sampler_init(&s, 8), 0);
  sampling_params_t sp;
  sampling_params_default(&sp);
  sp.temperature = 1.0f;
  sp.top_k = 2;
  sp.seed = 7;
  const float l[8] = {0.3f, 0.1f, 0.9f, 0.2f, 0.0f, 0.8f, 0.5f, 0.7f}; /* top 2: ids 2, 5 */
  int hits[8] = {0};
  for (int pos = 0; pos < 2000; pos++) hits[sample_at(&s, &sp, l, pos)]++;
  for (int i = 0; i < 8; i++) assert_true((hits[i] > 0) == (i == 2 || i == 5));
  /* k = 1 is greedy; k >= V is off */
  sp.top_k = 1;
  for (int pos = 0; pos < 200; pos++) assert_int_equal(sample_at(&s, &sp, l, pos), 2);
  sp.top_k = 100;
  memset(hits, 0, sizeof(hits));
  for (int pos = 0; pos < 4000; pos++) hits[sample_at(&s, &sp, l, pos)]++;
  for (int i = 0; i < 8; i++) assert_true(hits[i] > 0);
  sampler_deinit(&s);
}

/* sort helpers for the naive top-p reference: probability descending, id ascending */
static const double *g_p;
static int cmp_prob(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  if (g_p[x] != g_p[y]) return g_p[x] > g_p[y] ? -1 : 1;
  return x - y;
}

/* ref_top_p_set: KEEP[i] = 1 for the smallest best-first set of softmax(L) reaching TOP_P. */
static void ref_top_p_set(const float *l, int n, double top_p, int *keep) {
  double *p = malloc(sizeof(double) * (size_t)n);
  int *order = malloc(sizeof(int) * (size_t)n);
  assert_non_null(p);
  assert_non_null(order);
  ref_softmax(l, n, 1.0, p);
  for (int i = 0; i < n; i++) order[i] = i, keep[i] = 0;
  g_p = p;
  qsort(order, (size_t)n, sizeof(int), cmp_prob);
  double cum = 0;
  for (int i = 0; i < n && cum < top_p; i++) {
    keep[order[i]] = 1;
    cum += p[order[i]];
  }
  free(p);
  free(order);
}

static void test_top_p_min_p(void **state) {
  (void)state;
  sampler_t s;
  sampling_params_t sp;
  int hits[1000];
  /* probabilities .05 .30 .25 .40: .40 alone is short of .5; .40 + .30 reaches it -> {3, 1} */
  assert_int_equal(sampler_init(&s, 4), 0);
  sampling_params_default(&sp);
  sp.temperature = 1.0f;
  sp.top_p = 0.5f;
  sp.seed = 99;
  const float lp[4] = {logf(0.05f), logf(0.30f), logf(0.25f), logf(0.40f)};
  memset(hits, 0, sizeof(hits));
  for (int pos = 0; pos < 2000; pos++) hits[sample_at(&s, &sp, lp, pos)]++;
  assert_true(hits[0] == 0 && hits[1] > 0 && hits[2] == 0 && hits[3] > 0);
  /* kept tokens are renormalised: .30/.70 of the draws go to token 1 */
  assert_true(fabs(hits[1] / 2000.0 - 0.3 / 0.7) < 0.04);
  /* a tiny top_p keeps at least the best token */
  sp.top_p = 1e-6f;
  for (int pos = 0; pos < 100; pos++) assert_int_equal(sample_at(&s, &sp, lp, pos), 3);
  sampler_deinit(&s);

  /* min_p 0.3 of a max .5 drops everything under .15 -> {0, 1} */
  assert_int_equal(sampler_init(&s, 5), 0);
  sampling_params_default(&sp);
  sp.temperature = 1.0f;
  sp.min_p = 0.3f;
  sp.seed = 5;
  const float lm[5] = {logf(0.5f), logf(0.2f), logf(0.14f), logf(0.1f), logf(0.06f)};
  memset(hits, 0, sizeof(hits));
  for (int pos = 0; pos < 2000; pos++) hits[sample_at(&s, &sp, lm, pos)]++;
  assert_true(hits[0] > 0 && hits[1] > 0 && hits[2] == 0 && hits[3] == 0 && hits[4] == 0);
  sampler_deinit(&s);

  /* a nucleus far larger than one sort chunk, with ties decided by id: 1000 tokens, the first 300
   * twice as likely as the rest; compared with a full sort done here */
  enum { V = 1000 };
  static float lb[V];
  static int keep[V];
  for (int i = 0; i < V; i++) lb[i] = i < 300 ? logf(2.0f) : 0.0f;
  /* shuffle the heavy ids a little so that they are not one run at the start */
  for (int i = 0; i < 50; i++) {
    float t = lb[i * 7];
    lb[i * 7] = lb[999 - i * 3];
    lb[999 - i * 3] = t;
  }
  ref_top_p_set(lb, V, 0.41, keep);
  int n_keep = 0;
  for (int i = 0; i < V; i++) n_keep += keep[i];
  assert_int_equal(n_keep, 267); /* 0.41 * 1300 = 533 -> 267 tokens of weight 2 */
  assert_int_equal(sampler_init(&s, V), 0);
  sampling_params_default(&sp);
  sp.temperature = 1.0f;
  sp.top_p = 0.41f;
  sp.seed = 11;
  memset(hits, 0, sizeof(hits));
  for (int pos = 0; pos < 3000; pos++) hits[sample_at(&s, &sp, lb, pos)]++;
  int n_seen = 0;
  for (int i = 0; i < V; i++) {
    if (hits[i]) assert_true(keep[i]);
    n_seen += hits[i] > 0;
  }
  assert_true(n_seen > 200); /* the draw spreads over the whole nucleus */
  /* top-k then top-p: k = 100 of the heavy ones, then half of those */
  sp.top_k = 100;
  sp.top_p = 0.5f;
  memset(hits, 0, sizeof(hits));
  for (int pos = 0; pos < 2000; pos++) hits[sample_at(&s, &sp, lb, pos)]++;
  n_seen = 0;
  for (int i = 0; i < V; i++) n_seen += hits[i] > 0;
  assert_true(n_seen <= 50 && n_seen > 40);
  sampler_deinit(&s);
}

static void test_determinism(void **state) {
  (void)state;
  enum { N = 300 };
  sampler_t s;
  assert_int_equal(sampler_init(&s, 5), 0);
  sampling_params_t sp, other;
  sampling_params_default(&sp);
  sp.temperature = 1.0f;
  sp.seed = 0xdeadbeefcafeULL;
  other = sp;
  other.seed = 1;
  other.top_k = 3;
  const float l[5] = {0.2f, 0.1f, 0.0f, 0.15f, 0.05f};
  const float l2[5] = {3.0f, -1.0f, 0.5f, 0.0f, 1.0f};
  int32_t fwd[N], rev[N], alt[N];
  for (int pos = 0; pos < N; pos++) fwd[pos] = sample_at(&s, &sp, l, pos);
  for (int pos = N - 1; pos >= 0; pos--) {
    (void)sample_at(&s, &other, l2, (pos * 7) % N); /* unrelated calls in between */
    rev[pos] = sample_at(&s, &sp, l, pos);
  }
  for (int pos = 0; pos < N; pos++) assert_int_equal(fwd[pos], rev[pos]);
  /* a fresh sampler gives the same stream */
  sampler_t s2;
  assert_int_equal(sampler_init(&s2, 5), 0);
  for (int pos = 0; pos < N; pos += 17) assert_int_equal(sample_at(&s2, &sp, l, pos), fwd[pos]);
  sampler_deinit(&s2);
  /* another seed: a different stream (near-uniform over 5 tokens, agreement would be ~1/5) */
  sp.seed ^= 1;
  int same = 0;
  for (int pos = 0; pos < N; pos++) same += (alt[pos] = sample_at(&s, &sp, l, pos)) == fwd[pos];
  assert_true(same < N / 2);
  sampler_deinit(&s);
}

static void test_logprobs(void **state) {
  (void)state;
  enum { V = 1000 };
  static float l[V], work[V];
  static double ref[V];
  uint32_t x = 2463534242u;
  for (int i = 0; i < V; i++) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    l[i] = (float)((x % 20000) / 100.0 - 50.0); /* [-50, 150): exp would overflow unshifted */
  }
  l[10] = l[20] = 200.0f; /* tied maxima: the lower id lists first */
  l[30] = 199.5f;
  double mx = -INFINITY, z = 0;
  for (int i = 0; i < V; i++) mx = fmax(mx, l[i]);
  for (int i = 0; i < V; i++) z += exp(l[i] - mx);
  for (int i = 0; i < V; i++) ref[i] = l[i] - mx - log(z);

  sampler_t s;
  assert_int_equal(sampler_init(&s, V), 0);
  sampling_params_t sp;
  sampling_params_default(&sp);
  sp.temperature = 3.0f; /* processing must not leak into the reported logprobs */
  sp.repetition_penalty = 1.7f;
  sp.logprobs = 1;
  sp.top_logprobs = 5;
  sp.seed = 3;
  int32_t hist[3] = {10, 20, 5};
  memcpy(work, l, sizeof(l));
  sample_result_t r;
  assert_int_equal(sampler_sample(&s, &sp, work, hist, 3, 2, NULL, 0, &r), 0);
  assert_float_equal(r.logprob, ref[r.token], 1e-5);
  assert_int_equal(r.n_top, 5);
  assert_int_equal(r.top[0].id, 10);
  assert_int_equal(r.top[1].id, 20);
  assert_int_equal(r.top[2].id, 30);
  for (int j = 0; j < 5; j++) {
    assert_float_equal(r.top[j].logprob, ref[r.top[j].id], 1e-5);
    if (j > 0) assert_true(r.top[j].logprob <= r.top[j - 1].logprob);
  }
  /* the 4th and 5th are the best of the rest, found by a plain scan */
  int b4 = -1, b5 = -1;
  for (int i = 0; i < V; i++) {
    if (i == 10 || i == 20 || i == 30) continue;
    if (b4 < 0 || l[i] > l[b4]) b5 = b4, b4 = i;
    else if (b5 < 0 || l[i] > l[b5]) b5 = i;
  }
  assert_int_equal(r.top[3].id, b4);
  assert_int_equal(r.top[4].id, b5);
  /* greedy over the same logits: the argmax 10 with logprob log(1/2) minus the rest's share */
  sampling_params_default(&sp);
  sp.logprobs = 1;
  memcpy(work, l, sizeof(l));
  assert_int_equal(sampler_sample(&s, &sp, work, hist, 0, 0, NULL, 0, &r), 0);
  assert_int_equal(r.token, 10);
  assert_float_equal(r.logprob, ref[10], 1e-5);
  assert_int_equal(r.n_top, 0);
  sampler_deinit(&s);
}

static void test_min_tokens(void **state) {
  (void)state;
  sampler_t s;
  assert_int_equal(sampler_init(&s, 4), 0);
  sampling_params_t sp;
  sampling_params_default(&sp);
  sp.min_tokens = 2;
  sp.n_stop_ids = 1;
  sp.stop_ids[0] = 1;
  const float l[4] = {0.0f, 4.0f, 1.0f, 5.0f};
  const int32_t eos[1] = {3};
  const int32_t hist[4] = {2, 2, 0, 0}; /* prompt of 2 */
  float w[4];
  sample_result_t r;
  /* one generated so far: EOS 3 and stop id 1 are masked, so 2 wins */
  memcpy(w, l, sizeof(l));
  assert_int_equal(sampler_sample(&s, &sp, w, hist, 3, 2, eos, 1, &r), 0);
  assert_int_equal(r.token, 2);
  /* two generated: EOS is allowed again */
  memcpy(w, l, sizeof(l));
  assert_int_equal(sampler_sample(&s, &sp, w, hist, 4, 2, eos, 1, &r), 0);
  assert_int_equal(r.token, 3);
  /* ignore_eos: EOS is not a stop, so it is not masked (stop id 1 still is) */
  sp.ignore_eos = 1;
  memcpy(w, l, sizeof(l));
  assert_int_equal(sampler_sample(&s, &sp, w, hist, 3, 2, eos, 1, &r), 0);
  assert_int_equal(r.token, 3);
  /* random sampling never yields EOS while masked */
  sp.ignore_eos = 0;
  sp.temperature = 2.0f;
  sp.min_tokens = 100000;
  sp.max_tokens = 100000;
  for (int pos = 2; pos < 500; pos++) {
    memcpy(w, l, sizeof(l));
    assert_int_equal(sampler_sample(&s, &sp, w, g_history, pos, 2, eos, 1, &r), 0);
    assert_true(r.token != 3 && r.token != 1);
  }
  sampler_deinit(&s);
}

static void test_validate(void **state) {
  (void)state;
  char err[128];
  sampling_params_t sp;
  sampling_params_default(&sp);
  assert_int_equal(sp.max_tokens, 16);
  assert_int_equal(sampling_params_validate(&sp, 100, err, sizeof(err)), 0);
  sp.top_p = 1.5f;
  assert_int_equal(sampling_params_validate(&sp, 100, err, sizeof(err)), STRATA_EINVAL);
  assert_string_equal(err, "top_p must be in (0, 1], got 1.5");
  sp.top_p = 0.0f;
  assert_int_equal(sampling_params_validate(&sp, 100, err, sizeof(err)), STRATA_EINVAL);
  assert_non_null(strstr(err, "top_p"));
  sampling_params_default(&sp);
  sp.temperature = NAN;
  assert_int_equal(sampling_params_validate(&sp, 100, err, sizeof(err)), STRATA_EINVAL);
  assert_non_null(strstr(err, "temperature"));
  sampling_params_default(&sp);
  sp.temperature = 100.5f;
  assert_int_equal(sampling_params_validate(&sp, 100, err, sizeof(err)), STRATA_EINVAL);
  assert_non_null(strstr(err, "temperature"));
  sampling_params_default(&sp);
  sp.top_k = -2;
  assert_int_equal(sampling_params_validate(&sp, 100, err, sizeof(err)), STRATA_EINVAL);
  assert_non_null(strstr(err, "top_k"));
  sp.top_k = -1;
  assert_int_equal(sampling_params_validate(&sp, 100, err, sizeof(err)), 0);
  sp.repetition_penalty = 0.0f;
  assert_int_equal(sampling_params_validate(&sp, 100, err, sizeof(err)), STRATA_EINVAL);
  assert_non_null(strstr(err, "repetition_penalty"));
  sampling_params_default(&sp);
  sp.frequency_penalty = -2.5f;
  assert_int_equal(sampling_params_validate(&sp, 100, err, sizeof(err)), STRATA_EINVAL);
  assert_non_null(strstr(err, "frequency_penalty"));
  sampling_params_default(&sp);
  sp.top_logprobs = 21;
  assert_int_equal(sampling_params_validate(&sp, 100, err, sizeof(err)), STRATA_EINVAL);
  assert_non_null(strstr(err, "top_logprobs"));
  sampling_params_default(&sp);
  sp.n_stop_ids = 2;
  sp.stop_ids[0] = 5;
  sp.stop_ids[1] = 100;
  assert_int_equal(sampling_params_validate(&sp, 100, err, sizeof(err)), STRATA_EINVAL);
  assert_non_null(strstr(err, "100"));
  sampling_params_default(&sp);
  sp.max_tokens = -1;
  assert_int_equal(sampling_params_validate(&sp, 100, err, sizeof(err)), STRATA_EINVAL);
  assert_non_null(strstr(err, "max_tokens"));
}

/* bad input is refused, never a crash */
static void test_bad_input(void **state) {
  (void)state;
  int saved = log_get_level();
  log_set_level(LOG_LEVEL_OFF);
  sampler_t s;
  assert_int_equal(sampler_init(&s, 0), STRATA_EINVAL);
  assert_int_equal(sampler_init(&s, 3), 0);
  sampling_params_t sp;
  sampling_params_default(&sp);
  sample_result_t r;
  float l[3] = {-INFINITY, NAN, -INFINITY};
  assert_int_equal(sampler_sample(&s, &sp, l, NULL, 0, 0, NULL, 0, &r), STRATA_EINVAL);
  sp.temperature = 1.0f;
  assert_int_equal(sampler_sample(&s, &sp, l, NULL, 0, 0, NULL, 0, &r), STRATA_EINVAL);
  float l2[3] = {1, 2, 3};
  int32_t hist[2] = {0, 7};
  assert_int_equal(sampler_sample(&s, &sp, l2, hist, 2, 1, NULL, 0, &r), STRATA_EINVAL);
  assert_int_equal(sampler_sample(&s, &sp, l2, hist, 1, 2, NULL, 0, &r), STRATA_EINVAL);
  sp.top_p = 2.0f;
  assert_int_equal(sampler_sample(&s, &sp, l2, hist, 1, 1, NULL, 0, &r), STRATA_EINVAL);
  sampler_deinit(&s);
  log_set_level(saved);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_philox_kat),   cmocka_unit_test(test_greedy_ties), cmocka_unit_test(test_penalties),
      cmocka_unit_test(test_distribution), cmocka_unit_test(test_top_k),       cmocka_unit_test(test_top_p_min_p),
      cmocka_unit_test(test_determinism),  cmocka_unit_test(test_logprobs),    cmocka_unit_test(test_min_tokens),
      cmocka_unit_test(test_validate),     cmocka_unit_test(test_bad_input),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
