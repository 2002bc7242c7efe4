/* sample.c: the sampler (penalties, temperature, top-k/top-p/min-p, a seeded Gumbel-max draw) and
 * Philox4x32-10, written by hand from Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"
 * (SC'11), because the draw must be bit-identical to the one a GPU kernel computes. */
#include "worker/sample/sample.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "worker/sample/sample_int.h"

/* ---- Philox4x32-10 ---------------------------------------------------------------------------- */

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u /* golden ratio */
#define PHILOX_W1 0xBB67AE85u /* sqrt(3) - 1 */

void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
  uint32_t k0 = key[0], k1 = key[1];
  for (int r = 0; r < 10; r++) {
    if (r > 0) { /* the key schedule bumps the key before every round but the first */
      k0 += PHILOX_W0;
      k1 += PHILOX_W1;
    }
    uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
    uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/* NOTE: one Philox call yields four words, so token ids 4j..4j+3 share the counter
 * (j, position lo, position hi, 0) and take word id % 4; the key is the 64-bit seed. A sweep over the
 * vocabulary thus costs V/4 Philox calls, and any device can compute any token's number alone. */
static void rng_block(uint64_t seed, uint64_t position, uint32_t block, uint32_t out[4]) {
  const uint32_t ctr[4] = {block, (uint32_t)position, (uint32_t)(position >> 32), 0};
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  philox4x32_10(ctr, key, out);
}

static float u24_to_float(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }

float rng_uniform(uint64_t seed, uint64_t position, uint32_t index) {
  uint32_t w[4];
  rng_block(seed, position, index >> 2, w);
  return u24_to_float(w[index & 3]);
}

/* gumbel: -log(-log(u)). u = 0 would give -inf and make a sole survivor unpickable, so it is moved to
 * half a step above 0 (a 2^-25 nudge that no test of the distribution can see). */
static float gumbel(float u) {
  if (u <= 0.0f) u = 1.0f / 33554432.0f;
  return -logf(-logf(u));
}

/* ---- parameters -------------------------------------------------------------------------------- */

void sampling_params_default(sampling_params_t *sp) {
  memset(sp, 0, sizeof(*sp));
  sp->temperature = 0.0f;
  sp->top_k = 0;
  sp->top_p = 1.0f;
  sp->min_p = 0.0f;
  sp->repetition_penalty = 1.0f;
  sp->max_tokens = 16;
}

/* in_range: LO <= X <= HI (or LO < X when LO_OPEN); false for NaN. */
static int in_range(float x, float lo, float hi, int lo_open) {
  if (!(x <= hi)) return 0;
  return lo_open ? x > lo : x >= lo;
}

int sampling_params_validate(const sampling_params_t *sp, int vocab_size, char *err, int err_len) {
  char dummy[8];
  if (!err || err_len <= 0) {
    err = dummy;
    err_len = (int)sizeof(dummy);
  }
  err[0] = '\0';
#define SP_FAIL(...)                     \
  do {                                   \
    snprintf(err, (size_t)err_len, __VA_ARGS__); \
    return STRATA_EINVAL;                \
  } while (0)
  if (!sp) SP_FAIL("sampling parameters are missing");
  if (!in_range(sp->temperature, 0.0f, 100.0f, 0))
    SP_FAIL("temperature must be in [0, 100], got %g", (double)sp->temperature);
  if (!in_range(sp->top_p, 0.0f, 1.0f, 1)) SP_FAIL("top_p must be in (0, 1], got %g", (double)sp->top_p);
  if (!in_range(sp->min_p, 0.0f, 1.0f, 0)) SP_FAIL("min_p must be in [0, 1], got %g", (double)sp->min_p);
  if (sp->top_k < -1) SP_FAIL("top_k must be -1, 0 (both off) or positive, got %d", sp->top_k);
  if (!in_range(sp->repetition_penalty, 0.0f, 10.0f, 1))
    SP_FAIL("repetition_penalty must be in (0, 10], got %g", (double)sp->repetition_penalty);
  if (!in_range(sp->presence_penalty, -2.0f, 2.0f, 0))
    SP_FAIL("presence_penalty must be in [-2, 2], got %g", (double)sp->presence_penalty);
  if (!in_range(sp->frequency_penalty, -2.0f, 2.0f, 0))
    SP_FAIL("frequency_penalty must be in [-2, 2], got %g", (double)sp->frequency_penalty);
  if (sp->top_logprobs < 0 || sp->top_logprobs > SAMPLE_MAX_LOGPROBS)
    SP_FAIL("top_logprobs must be in [0, %d], got %d", SAMPLE_MAX_LOGPROBS, sp->top_logprobs);
  if (sp->max_tokens < 0) SP_FAIL("max_tokens must be >= 0, got %d", sp->max_tokens);
  if (sp->min_tokens < 0) SP_FAIL("min_tokens must be >= 0, got %d", sp->min_tokens);
  if (sp->max_tokens > 0 && sp->min_tokens > sp->max_tokens)
    SP_FAIL("min_tokens (%d) must not exceed max_tokens (%d)", sp->min_tokens, sp->max_tokens);
  if (sp->n_stop_ids < 0 || sp->n_stop_ids > SAMPLE_MAX_STOP_IDS)
    SP_FAIL("at most %d stop token ids are allowed, got %d", SAMPLE_MAX_STOP_IDS, sp->n_stop_ids);
  for (int i = 0; i < sp->n_stop_ids; i++)
    if (sp->stop_ids[i] < 0 || sp->stop_ids[i] >= vocab_size)
      SP_FAIL("stop_token_ids[%d] = %d is outside the vocabulary [0, %d)", i, (int)sp->stop_ids[i], vocab_size);
#undef SP_FAIL
  return 0;
}

/* ---- scratch ----------------------------------------------------------------------------------- */

int sampler_init(sampler_t *s, int vocab_size) {
  memset(s, 0, sizeof(*s));
  if (vocab_size <= 0) {
    log_error("sampler: vocabulary size must be positive, got %d", vocab_size);
    return STRATA_EINVAL;
  }
  s->buf = malloc((size_t)vocab_size * sizeof(*s->buf));
  s->idx = malloc((size_t)vocab_size * sizeof(*s->idx));
  s->counts = calloc((size_t)vocab_size, sizeof(*s->counts));
  if (!s->buf || !s->idx || !s->counts) {
    log_error("sampler: out of memory for a vocabulary of %d", vocab_size);
    sampler_deinit(s);
    return STRATA_ENOMEM;
  }
  s->vocab_size = vocab_size;
  return 0;
}

void sampler_deinit(sampler_t *s) {
  if (!s) return;
  free(s->buf);
  free(s->idx);
  free(s->counts);
  memset(s, 0, sizeof(*s));
}

/* ---- ordering helpers: (value descending, id ascending) is a strict total order ---------------- */

static inline int tok_better(const float *l, int32_t a, int32_t b) {
  return l[a] > l[b] || (l[a] == l[b] && a < b);
}

static inline void swap_i32(int32_t *a, int32_t *b) {
  int32_t t = *a;
  *a = *b;
  *b = t;
}

static void sift_down(const float *l, int32_t *v, int root, int n) {
  for (;;) {
    int c = 2 * root + 1;
    if (c >= n) return;
    /* a min-heap under tok_better puts the worst on top, so popping yields best-first order */
    if (c + 1 < n && tok_better(l, v[c], v[c + 1])) c++;
    if (!tok_better(l, v[root], v[c])) return;
    swap_i32(&v[root], &v[c]);
    root = c;
  }
}

/* sort_best_first: V (N ids) sorted best first. Heapsort: O(n log n) always, no recursion. */
static void sort_best_first(const float *l, int32_t *v, int n) {
  for (int i = n / 2 - 1; i >= 0; i--) sift_down(l, v, i, n);
  for (int end = n - 1; end > 0; end--) {
    swap_i32(&v[0], &v[end]);
    sift_down(l, v, 0, end);
  }
}

/* select_best: reorders V (N ids) so that v[0..k) hold the K best (in no order). Quickselect with a
 * median-of-three pivot, O(n) expected; a depth limit falls back to sorting, so never O(n^2). */
static void select_best(const float *l, int32_t *v, int n, int k) {
  if (k <= 0 || k >= n) return;
  int lo = 0, hi = n - 1, budget = 64;
  while (hi > lo) {
    if (--budget == 0) {
      sort_best_first(l, v + lo, hi - lo + 1);
      return;
    }
    int mid = lo + (hi - lo) / 2;
    if (tok_better(l, v[mid], v[lo])) swap_i32(&v[mid], &v[lo]);
    if (tok_better(l, v[hi], v[lo])) swap_i32(&v[hi], &v[lo]);
    if (tok_better(l, v[hi], v[mid])) swap_i32(&v[hi], &v[mid]);
    swap_i32(&v[mid], &v[hi]); /* the median is the pivot, parked at hi */
    int32_t pivot = v[hi];
    int store = lo;
    for (int i = lo; i < hi; i++)
      if (tok_better(l, v[i], pivot)) swap_i32(&v[i], &v[store++]);
    swap_i32(&v[store], &v[hi]);
    if (store == k - 1 || store == k) return;
    if (store > k) hi = store - 1;
    else lo = store + 1;
  }
}

/* ---- processing steps -------------------------------------------------------------------------- */

/* apply_penalties: repetition over prompt and output, presence and frequency over output. COUNTS is
 * all zero on entry and on exit. History ids were checked by the caller. */
static void apply_penalties(const sampling_params_t *sp, float *logits, int32_t *counts, const int32_t *history,
                            int n_history, int n_prompt) {
  const int32_t in_prompt = 1 << 30; /* flag bit; output counts stay far below it */
  const float rep = sp->repetition_penalty;
  for (int i = n_prompt; i < n_history; i++) counts[history[i]]++;
  if (rep != 1.0f)
    for (int i = 0; i < n_prompt; i++) counts[history[i]] |= in_prompt;
  /* each distinct token is penalised once: the first visit applies and zeroes its count */
  for (int i = 0; i < n_history; i++) {
    int32_t t = history[i], c = counts[t];
    if (c == 0) continue;
    int32_t n_out = c & ~in_prompt;
    float x = logits[t];
    if (rep != 1.0f) x = x > 0.0f ? x / rep : x * rep;
    if (n_out > 0) x -= sp->presence_penalty + sp->frequency_penalty * (float)n_out;
    logits[t] = x;
    counts[t] = 0;
  }
}

/* mask_stops: while fewer than min_tokens were generated, EOS (unless ignored) and stop ids cannot
 * be sampled. */
static void mask_stops(const sampling_params_t *sp, float *logits, int vocab, const int32_t *eos_ids, int n_eos) {
  if (!sp->ignore_eos)
    for (int i = 0; i < n_eos; i++) logits[eos_ids[i]] = -INFINITY;
  for (int i = 0; i < sp->n_stop_ids; i++)
    if (sp->stop_ids[i] >= 0 && sp->stop_ids[i] < vocab) logits[sp->stop_ids[i]] = -INFINITY;
}

/* argmax_lowest: the best finite logit, lowest id on ties; -1 when none is finite or above -inf. */
static int32_t argmax_lowest(const float *l, int n) {
  int32_t best = -1;
  float bv = -INFINITY;
  for (int i = 0; i < n; i++)
    if (l[i] > bv) { /* strict: an equal later id never wins; NaN never compares greater */
      bv = l[i];
      best = i;
    }
  return best;
}

/* truncate_top_p: with V (N ids, best first once sorted here) holding the candidates, returns how many
 * form the smallest set whose probability reaches TOP_P (at least one). LMAX is the best logit, Z the
 * sum of exp(l - LMAX) over all N. Sorts only as far as needed: chunks of 64, 128, ... best ids. */
static int truncate_top_p(const float *l, int32_t *v, int n, float lmax, double z, float top_p) {
  double target = (double)top_p * z, cum = 0.0;
  int done = 0, chunk = 64;
  while (done < n) {
    int m = n - done < chunk ? n : done + chunk;
    select_best(l, v + done, n - done, m - done);
    sort_best_first(l, v + done, m - done);
    for (int i = done; i < m; i++) {
      cum += (double)expf(l[v[i]] - lmax);
      if (cum >= target) return i + 1;
    }
    done = m;
    chunk *= 2;
  }
  return n;
}

/* gumbel_draw: argmax over V (N ids) of l + Gumbel noise keyed by (SEED, POSITION, id).
 * NOTE: 24-bit uniforms bound the noise by G_MAX = gumbel(1 - 2^-24) (about 16.6), and float rounding is
 * monotone, so a token whose l + G_MAX is below the best score so far can neither win nor tie: it is
 * skipped without drawing its number. The result is exactly that of the full sweep, only cheaper
 * when logits are spread out (as an LLM's are). */
static int32_t gumbel_draw(const float *l, const int32_t *v, int n, uint64_t seed, uint64_t position) {
  const float g_max = gumbel(u24_to_float(UINT32_MAX));
  uint32_t w[4], cached = UINT32_MAX;
  if (n <= 0) return -1;
  int32_t best = v[0];
  float bv = -INFINITY;
  for (int i = 0; i < n; i++) {
    uint32_t id = (uint32_t)v[i];
    if (l[id] + g_max < bv) continue;
    if ((id >> 2) != cached) { /* ids usually come in runs, so one Philox call serves four */
      cached = id >> 2;
      rng_block(seed, position, cached, w);
    }
    float g = l[id] + gumbel(u24_to_float(w[id & 3]));
    if (g > bv || (g == bv && (int32_t)id < best)) {
      bv = g;
      best = (int32_t)id;
    }
  }
  return best;
}

/* fill_logprobs: OUT's logprob and top alternatives from RAW (V) logits, by a stable log-softmax in
 * double: log p_i = (l_i - max) - log(sum exp(l_j - max)). NaN counts as -inf. */
static void fill_logprobs(const float *raw, int vocab, int n_top, sample_result_t *out) {
  double mx = -INFINITY;
  for (int i = 0; i < vocab; i++)
    if (raw[i] > mx) mx = raw[i];
  double sum = 0.0;
  if (isfinite(mx))
    for (int i = 0; i < vocab; i++)
      if (raw[i] > -INFINITY) sum += (double)expf(raw[i] - (float)mx); /* float terms, double sum */
  double lse = isfinite(mx) ? mx + log(sum) : 0.0;
  float rt = raw[out->token];
  out->logprob = rt > -INFINITY ? (float)((double)rt - lse) : -INFINITY;
  /* top-N by insertion: N <= 20 and most logits lose to the current N-th at the first comparison */
  int k = 0;
  for (int i = 0; i < vocab && n_top > 0; i++) {
    float x = raw[i];
    if (!(x > -INFINITY)) continue;
    if (k == n_top && !(x > raw[out->top[k - 1].id])) continue;
    int j = k < n_top ? k++ : k - 1;
    while (j > 0 && x > raw[out->top[j - 1].id]) {
      out->top[j] = out->top[j - 1];
      j--;
    }
    out->top[j].id = i;
  }
  for (int j = 0; j < k; j++) out->top[j].logprob = (float)((double)raw[out->top[j].id] - lse);
  out->n_top = k;
}

/* check_ids: every id of IDS (N) lies in [0, VOCAB). */
static int check_ids(const char *what, const int32_t *ids, int n, int vocab) {
  for (int i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= vocab) {
      log_error("sampler: %s[%d] = %d is outside the vocabulary [0, %d)", what, i, (int)ids[i], vocab);
      return STRATA_EINVAL;
    }
  return 0;
}

/* sample_random: temperature, top-k, top-p, min-p and the draw over the finite candidates. */
static int32_t sample_random(sampler_t *s, const sampling_params_t *sp, float *l, uint64_t position) {
  const int vocab = s->vocab_size;
  int32_t *v = s->idx;
  int n = 0;
  for (int i = 0; i < vocab; i++) {
    float x = l[i] / sp->temperature;
    if (x > FLT_MAX) x = FLT_MAX; /* +inf would turn every l - lmax below into NaN */
    l[i] = x;
    if (x > -INFINITY) v[n++] = i; /* NaN and -inf (masked) tokens are no candidates */
  }
  if (n == 0) return -1;
  if (sp->top_k > 0 && sp->top_k < n) {
    select_best(l, v, n, sp->top_k);
    n = sp->top_k;
  }
  if (sp->top_p < 1.0f || sp->min_p > 0.0f) {
    float lmax = -INFINITY;
    for (int i = 0; i < n; i++)
      if (l[v[i]] > lmax) lmax = l[v[i]];
    if (sp->top_p < 1.0f) {
      double z = 0.0;
      for (int i = 0; i < n; i++) z += (double)expf(l[v[i]] - lmax);
      n = truncate_top_p(l, v, n, lmax, z, sp->top_p);
    }
    if (sp->min_p > 0.0f) { /* p_i / p_max = exp(l_i - l_max): no normalisation needed */
      int kept = 0;
      for (int i = 0; i < n; i++)
        if (expf(l[v[i]] - lmax) >= sp->min_p) v[kept++] = v[i];
      n = kept; /* the best token always passes (ratio 1) */
    }
  }
  return gumbel_draw(l, v, n, sp->seed, position);
}

/* draw: the token of LOGITS (processed) at POSITION, or -1 when every logit is -inf or NaN. */
static int32_t draw(sampler_t *s, const sampling_params_t *sp, float *logits, uint64_t position) {
  /* NOTE: below 1e-5 the scaled logits would overflow float and the draw is argmax anyway */
  return sp->temperature < 1e-5f ? argmax_lowest(logits, s->vocab_size) : sample_random(s, sp, logits, position);
}

int32_t sampler_draw(sampler_t *s, const sampling_params_t *sp, float *logits, uint64_t position) {
  if (!s || !s->buf || !sp || !logits) return -1;
  return draw(s, sp, logits, position);
}

int sampler_sample(sampler_t *s, const sampling_params_t *sp, float *logits, const int32_t *history, int n_history,
                   int n_prompt, const int32_t *eos_ids, int n_eos, sample_result_t *out) {
  char err[160];
  if (!s || !s->buf || !sp || !logits || !out || n_history < 0 || n_prompt < 0 || n_prompt > n_history ||
      n_eos < 0 || (n_history > 0 && !history) || (n_eos > 0 && !eos_ids)) {
    log_error("sampler: invalid arguments (n_history %d, n_prompt %d, n_eos %d)", n_history, n_prompt, n_eos);
    return STRATA_EINVAL;
  }
  const int vocab = s->vocab_size;
  if (sampling_params_validate(sp, vocab, err, (int)sizeof(err)) != 0) {
    log_error("sampler: %s", err);
    return STRATA_EINVAL;
  }
  if (check_ids("history", history, n_history, vocab) || check_ids("eos_ids", eos_ids, n_eos, vocab))
    return STRATA_EINVAL;
  memset(out, 0, sizeof(*out));
  const int want_logprobs = sp->logprobs || sp->top_logprobs > 0;
  if (want_logprobs) memcpy(s->buf, logits, (size_t)vocab * sizeof(*logits)); /* the raw distribution */

  if (sp->repetition_penalty != 1.0f || sp->presence_penalty != 0.0f || sp->frequency_penalty != 0.0f)
    apply_penalties(sp, logits, s->counts, history, n_history, n_prompt);
  if (n_history - n_prompt < sp->min_tokens) mask_stops(sp, logits, vocab, eos_ids, n_eos);

  int32_t tok = draw(s, sp, logits, (uint64_t)n_history);
  if (tok < 0) {
    log_error("sampler: every logit is -inf or NaN after masking (vocabulary %d, position %d)", vocab, n_history);
    return STRATA_EINVAL;
  }
  out->token = tok;
  if (want_logprobs) fill_logprobs(s->buf, vocab, sp->top_logprobs, out);
  return 0;
}
