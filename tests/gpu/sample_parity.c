/* sample_parity.c: the CUDA backend's sample_rows against the host sampler (sampler_sample) on the same
 * logits, and its draws against the softmax they should follow. Prints one line per check and
 * `PASS n/n` (or `FAIL k/n`) last; exits 1 on any failure.
 *  - parity: random rows (V = 128256 and 512; peaked, flat and heavily tied logits; f32 and bf16
 *    activations) x every combination of temperature {0.3, 1, 1.7}, top-k {off, 1, 40, 1000}, top-p
 *    {0.5, 0.9, 1}, min-p {0, 0.1}, plus greedy rows, each with its own seed and position. The GPU token
 *    must equal the host's; a mismatch is excused only when the two tokens' perturbed scores
 *    (x/T + Gumbel noise) differ by less than 1e-5 relative (a near tie that float rounding of logf/expf
 *    may flip), and those are counted.
 *  - batch invariance: the same rows in reverse order give the same tokens.
 *  - statistics: 2,000 draws (positions 0..1999) from V = 16 logits against the distribution computed
 *    here by a naive sort (softmax, truncated and renormalised where top-k/top-p/min-p apply): a
 *    chi-square test at the 0.1% level, and no draw outside the kept set.
 * Timings of a (256, 128256) bf16 step are printed too (numbers only). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/status.h"
#include "worker/backend/backend.h"
#include "worker/sample/sample.h"


/* The large vocabulary and whether to time; smaller/off only for running this program against a slow
 * host emulation of the kernel. */
#ifndef SAMPLE_PARITY_BIG_V
#define SAMPLE_PARITY_BIG_V 128256
#endif
#ifndef SAMPLE_PARITY_TIMING
#define SAMPLE_PARITY_TIMING 1
#endif

static int n_fail, n_pass;
static uint64_t rng = 0x2545f4914f6cdd1dull;

static double urand(void) { /* uniform in [0, 1) */
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (double)(rng >> 11) * (1.0 / 9007199254740992.0);
}

static double nrand(void) { /* roughly normal: sum of three uniforms, unit variance */
  return (urand() + urand() + urand() - 1.5) * 2.0;
}

static void report(int ok, const char *msg, const char *what) {
  printf("%-4s %s %s\n", ok ? "ok" : "FAIL", what, msg);
  ok ? n_pass++ : n_fail++;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static float round_act(dtype_t t, float v) { return t == DTYPE_BF16 ? bf16_to_f32(f32_to_bf16(v)) : v; }

enum { DIST_PEAKED, DIST_FLAT, DIST_TIES };
static const char *dist_name[] = {"peaked", "flat", "ties"};

/* fill_row: V logits of kind DIST, rounded to the activation dtype (the host sees what the GPU sees). */
static void fill_row(float *l, int V, int dist, dtype_t t) {
  for (int i = 0; i < V; i++) {
    double x = dist == DIST_PEAKED ? 2.5 * nrand() : dist == DIST_FLAT ? urand() - 0.5 : floor(nrand() * 4.0) / 4.0;
    l[i] = round_act(t, (float)x);
  }
  if (dist == DIST_PEAKED) /* a few tokens far above the rest, as after a confident model */
    for (int k = 0; k < 6; k++) l[(int)(urand() * V)] = round_act(t, (float)(8.0 + 4.0 * urand()));
}

/* dev_rows: (N, V) host f32 -> backend memory in the act dtype. */
static void *dev_rows(backend_t *be, const float *h, size_t n) {
  void *d = be->ops->alloc(be, n * dtype_act_bytes(be->act_dtype));
  if (!d) return NULL;
  if (be->act_dtype == DTYPE_F32) {
    be->ops->upload(be, d, h, n * 4);
    return d;
  }
  uint16_t *tmp = malloc(n * 2);
  for (size_t i = 0; i < n; i++) tmp[i] = f32_to_bf16(h[i]);
  be->ops->upload(be, d, tmp, n * 2);
  free(tmp);
  return d;
}

static int32_t *g_history; /* zeros: positions up to MAX_POS need that much history on the host */
#define MAX_POS 100000

/* host_draw: sampler_sample on a copy of L under P. */
static int32_t host_draw(sampler_t *s, const float *l, int V, const be_sample_t *p, float *work) {
  sampling_params_t sp;
  sampling_params_default(&sp);
  sp.temperature = p->temperature;
  sp.top_k = p->top_k;
  sp.top_p = p->top_p;
  sp.min_p = p->min_p;
  sp.seed = p->seed;
  sample_result_t r;
  memcpy(work, l, (size_t)V * sizeof *work);
  int n = (int)p->position;
  if (sampler_sample(s, &sp, work, g_history, n, n, NULL, 0, &r) != 0) return -1;
  return r.token;
}

/* perturbed: the host's Gumbel score of token ID: x/T (clamped) + -log(-log(u)). */
static float perturbed(const float *l, const be_sample_t *p, int id) {
  float x = l[id] / p->temperature;
  if (x > 3.402823466e38f) x = 3.402823466e38f;
  float u = rng_uniform(p->seed, p->position, (uint32_t)id);
  if (u <= 0.0f) u = 1.0f / 33554432.0f;
  return x + -logf(-logf(u));
}

/* parity_group: one batch of rows of DIST over V through sample_rows, each compared with the host. */
static void parity_group(backend_t *be, int V, int dist) {
  static const float temps[] = {0.3f, 1.0f, 1.7f}, top_ps[] = {0.5f, 0.9f, 1.0f}, min_ps[] = {0.0f, 0.1f};
  static const int top_ks[] = {0, 1, 40, 1000};
  const dtype_t act = be->act_dtype;
  enum { N_COMBO = 3 * 4 * 3 * 2, N = N_COMBO + 2 };
  be_sample_t p[N], prev[N];
  float *l = malloc(sizeof *l * (size_t)N * (size_t)V), *work = malloc(sizeof *work * (size_t)V);
  int32_t gpu[N], gpu2[N], host[N];
  sampler_t s;
  char what[96];
  snprintf(what, sizeof what, "%-5s V=%-6d %-6s", dtype_name(act), V, dist_name[dist]);
  if (!l || !work || sampler_init(&s, V) != 0) {
    report(0, "out of host memory", what);
    free(l), free(work);
    return;
  }
  int r = 0;
  for (int a = 0; a < 3; a++)
    for (int b = 0; b < 4; b++)
      for (int c = 0; c < 3; c++)
        for (int d = 0; d < 2; d++, r++)
          p[r] = (be_sample_t){.temperature = temps[a], .top_k = top_ks[b], .top_p = top_ps[c], .min_p = min_ps[d]};
  p[r++] = (be_sample_t){.temperature = 0.0f, .top_p = 1.0f}; /* greedy rows share the kernel */
  p[r++] = (be_sample_t){.temperature = 0.0f, .top_p = 1.0f};
  for (int i = 0; i < N; i++) {
    p[i].seed = ((uint64_t)(urand() * 4294967296.0) << 32) | (uint64_t)(urand() * 4294967296.0);
    p[i].position = (uint64_t)(urand() * MAX_POS);
    fill_row(l + (size_t)i * V, V, dist, act);
  }
  float *tie = l + (size_t)(N - 1) * V; /* the last greedy row has its maximum twice: the lower id wins */
  tie[V / 3] = tie[V - 1] = round_act(act, 50.0f);
  memcpy(prev, p, sizeof p);

  void *x = dev_rows(be, l, (size_t)N * V);
  int rc = x ? be->ops->sample_rows(be, gpu, x, p, N, V) : STRATA_ENOMEM;
  if (rc) {
    snprintf(what + strlen(what), sizeof what - strlen(what), " (sample_rows: %s)", strata_strerror(rc));
    report(0, "", what);
    goto done;
  }
  int exact = 0, excused = 0, bad = 0;
  for (int i = 0; i < N; i++) {
    const float *li = l + (size_t)i * V;
    host[i] = host_draw(&s, li, V, &p[i], work);
    if (gpu[i] == host[i]) {
      exact++;
      continue;
    }
    int near = 0;
    if (p[i].temperature > 0.0f && gpu[i] >= 0 && gpu[i] < V && host[i] >= 0) {
      float sh = perturbed(li, &p[i], host[i]), sg = perturbed(li, &p[i], gpu[i]);
      float scale = fmaxf(fabsf(sh), fabsf(sg));
      near = fabsf(sh - sg) <= 1e-5f * (scale > 1e-30f ? scale : 1e-30f);
    }
    near ? excused++ : bad++;
    printf("     row %2d T=%.1f k=%d p=%.1f min_p=%.1f seed=%016llx pos=%llu: gpu %d host %d%s\n", i,
           (double)p[i].temperature, p[i].top_k, (double)p[i].top_p, (double)p[i].min_p,
           (unsigned long long)p[i].seed, (unsigned long long)p[i].position, gpu[i], host[i],
           near ? " (near tie: excused)" : "");
  }
  char msg[96];
  snprintf(msg, sizeof msg, "%d/%d rows equal the host's token, %d near ties excused", exact, N, excused);
  report(bad == 0, msg, what);

  /* batch invariance: rows reversed, same tokens */
  float *lr = malloc(sizeof *lr * (size_t)N * (size_t)V);
  be_sample_t pr[N];
  for (int i = 0; i < N && lr; i++) {
    memcpy(lr + (size_t)i * V, l + (size_t)(N - 1 - i) * V, sizeof *lr * (size_t)V);
    pr[i] = prev[N - 1 - i];
  }
  void *xr = lr ? dev_rows(be, lr, (size_t)N * V) : NULL;
  rc = xr ? be->ops->sample_rows(be, gpu2, xr, pr, N, V) : STRATA_ENOMEM;
  int same = rc == 0;
  for (int i = 0; i < N && same; i++) same = gpu2[i] == gpu[N - 1 - i];
  snprintf(msg, sizeof msg, "the rows reversed give the same tokens%s", rc ? " (sample_rows failed)" : "");
  report(same, msg, what);
  if (xr) be->ops->free(be, xr);
  free(lr);
done:
  if (x) be->ops->free(be, x);
  sampler_deinit(&s);
  free(l);
  free(work);
}

/* ---- statistics ---- */

typedef struct {
  float v;
  int id;
} vi_t;

static int cmp_vi(const void *a, const void *b) { /* value descending, id ascending: the sampler's order */
  const vi_t *x = a, *y = b;
  if (x->v != y->v) return x->v > y->v ? -1 : 1;
  return x->id - y->id;
}

/* naive_probs: PROB(V) of each token under P, by sorting: softmax of l/T over the top-k, cut at the
 * first token where the cumulative probability reaches top-p, then min-p, renormalised. */
static void naive_probs(const float *l, int V, const be_sample_t *p, double *prob) {
  vi_t *s = malloc(sizeof *s * (size_t)V);
  for (int i = 0; i < V; i++) s[i] = (vi_t){l[i] / p->temperature, i};
  qsort(s, (size_t)V, sizeof *s, cmp_vi);
  int n = p->top_k > 0 && p->top_k < V ? p->top_k : V;
  double z = 0.0, cum = 0.0;
  for (int i = 0; i < n; i++) z += exp((double)s[i].v - s[0].v);
  if (p->top_p < 1.0f)
    for (int i = 0; i < n; i++) {
      cum += exp((double)s[i].v - s[0].v);
      if (cum >= p->top_p * z) {
        n = i + 1;
        break;
      }
    }
  memset(prob, 0, sizeof *prob * (size_t)V);
  double tot = 0.0;
  for (int i = 0; i < n; i++) {
    double e = exp((double)s[i].v - s[0].v);
    if (e >= p->min_p) prob[s[i].id] = e, tot += e;
  }
  for (int i = 0; i < V; i++) prob[i] /= tot;
  free(s);
}

/* stats_check: 2,000 draws of one row under P0 (positions 0..1999) vs naive_probs. */
static void stats_check(backend_t *be, const be_sample_t *p0, const char *what) {
  enum { V = 16, N = 2000 };
  float *l = malloc(sizeof *l * (size_t)N * V);
  be_sample_t *p = malloc(sizeof *p * N);
  int32_t *tok = malloc(sizeof *tok * N);
  double prob[V];
  int count[V] = {0};
  for (int i = 0; i < N; i++) {
    for (int j = 0; j < V; j++) l[(size_t)i * V + j] = 0.25f * (float)j - 2.0f;
    p[i] = *p0;
    p[i].position = (uint64_t)i;
  }
  naive_probs(l, V, p0, prob);
  void *x = dev_rows(be, l, (size_t)N * V);
  int rc = x ? be->ops->sample_rows(be, tok, x, p, N, V) : STRATA_ENOMEM;
  double chi2 = 0.0;
  int outside = 0, df = -1;
  for (int i = 0; i < N && rc == 0; i++) {
    if (tok[i] < 0 || tok[i] >= V || prob[tok[i]] == 0.0) outside++;
    else count[tok[i]]++;
  }
  for (int j = 0; j < V; j++)
    if (prob[j] > 0.0) {
      double e = prob[j] * N;
      chi2 += (count[j] - e) * (count[j] - e) / e;
      df++;
    }
  /* 0.999 quantiles of chi-square for df = 1..15 */
  static const double crit[16] = {0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12,
                                  27.88, 29.59, 31.26, 32.91, 34.53, 36.12, 37.70};
  double lim = df >= 1 && df <= 15 ? crit[df] : 0.0;
  char msg[128];
  snprintf(msg, sizeof msg, "chi2 %.2f (df %d, limit %.2f), %d draws outside the kept set%s", chi2, df, lim, outside,
           rc ? " (sample_rows failed)" : "");
  report(rc == 0 && outside == 0 && (df < 1 || chi2 <= lim), msg, what);
  if (x) be->ops->free(be, x);
  free(l), free(p), free(tok);
}

/* ---- timing (numbers only) ---- */

static void timing(backend_t *be) {
  enum { S = 256, V = 128256 };
  float *l = malloc(sizeof *l * (size_t)S * V), *work = malloc(sizeof *work * V);
  be_sample_t p[S];
  int32_t tok[S];
  sampler_t s;
  if (!l || !work || sampler_init(&s, V) != 0) goto out;
  for (int i = 0; i < S; i++) fill_row(l + (size_t)i * V, V, DIST_PEAKED, be->act_dtype);
  void *x = dev_rows(be, l, (size_t)S * V);
  if (!x) goto out_s;
  static const struct { float t; int k; float p, m; const char *name; } cases[] = {
      {1.0f, 0, 1.0f, 0.0f, "T=1"}, {0.8f, 40, 0.9f, 0.0f, "T=0.8 top-k 40 top-p 0.9"},
      {1.0f, 0, 0.95f, 0.05f, "T=1 top-p 0.95 min-p 0.05"}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    for (int i = 0; i < S; i++)
      p[i] = (be_sample_t){cases[c].t, cases[c].k, cases[c].p, cases[c].m, (uint64_t)i, (uint64_t)(1000 + i)};
    be->ops->sample_rows(be, tok, x, p, S, V); /* warm-up */
    double t0 = now_s();
    for (int r = 0; r < 10; r++) be->ops->sample_rows(be, tok, x, p, S, V);
    double gpu_ms = (now_s() - t0) * 100.0;
    t0 = now_s();
    be->ops->to_host_f32(be, l, x, (int64_t)S * V);
    double copy_ms = (now_s() - t0) * 1e3;
    t0 = now_s();
    for (int i = 0; i < S; i++) host_draw(&s, l + (size_t)i * V, V, &p[i], work);
    double host_ms = (now_s() - t0) * 1e3;
    printf("time %-5s %d x %d %-28s: sample_rows %.3f ms; logits to host %.3f ms + host sampler %.1f ms\n",
           dtype_name(be->act_dtype), S, V, cases[c].name, gpu_ms, copy_ms, host_ms);
  }
  be->ops->free(be, x);
out_s:
  sampler_deinit(&s);
out:
  free(l);
  free(work);
}

int main(void) {
  g_history = calloc(MAX_POS + 1, sizeof *g_history);
  if (!g_history) return 1;
  const dtype_t types[2] = {DTYPE_F32, DTYPE_BF16};
  for (int t = 0; t < 2; t++) {
    backend_t *be = NULL;
    if (backend_create(&be, "cuda", 0, types[t]) != 0) {
      printf("FAIL cannot create the CUDA backend in %s\n", dtype_name(types[t]));
      return 1;
    }
    if (!be->ops->sample_rows) {
      printf("FAIL the CUDA backend has no sample_rows op\n");
      return 1;
    }
    for (int v = 0; v < 2; v++)
      for (int d = 0; d < 3; d++) parity_group(be, v == 0 ? SAMPLE_PARITY_BIG_V : 512, d);
    if (t == 0) {
      be_sample_t plain = {.temperature = 1.0f, .top_p = 1.0f, .seed = 42};
      be_sample_t cut = {.temperature = 0.7f, .top_k = 12, .top_p = 0.9f, .min_p = 0.05f, .seed = 7};
      be_sample_t hot = {.temperature = 1.7f, .top_k = 0, .top_p = 0.5f, .seed = 99};
      stats_check(be, &plain, "stats T=1 V=16 (softmax)");
      stats_check(be, &cut, "stats T=0.7 top-k 12 top-p 0.9 min-p 0.05 V=16");
      stats_check(be, &hot, "stats T=1.7 top-p 0.5 V=16");
    } else if (SAMPLE_PARITY_TIMING) {
      timing(be);
    }
    if (be->ops->sync(be) != 0) report(0, "", "the CUDA backend reported an error");
    backend_destroy(be);
  }
  free(g_history);
  if (n_fail) printf("FAIL %d/%d\n", n_fail, n_pass + n_fail);
  else printf("PASS %d/%d\n", n_pass, n_pass);
  return n_fail ? 1 : 0;
}
