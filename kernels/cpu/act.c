/* act.c: element-wise kernels: SiLU-gated product, residual add, row gather. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_int.h"

enum { ACT_ELEMS_PER_JOB = 16384 };

typedef struct {
  float *out;
  const float *a, *b;
  int64_t n;
  int silu; /* 1: out = silu(a) * b; 0: out = a + b */
} act_task_t;

static void act_job(void *arg, int64_t job, kern_worker_t *wk) {
  (void)wk;
  act_task_t *t = arg;
  int64_t i0 = job * ACT_ELEMS_PER_JOB, i1 = i0 + ACT_ELEMS_PER_JOB < t->n ? i0 + ACT_ELEMS_PER_JOB : t->n;
  if (t->silu) {
    for (int64_t i = i0; i < i1; i++) {
      float g = t->a[i];
      t->out[i] = g / (1.0f + expf(-g)) * t->b[i];
    }
  } else {
    for (int64_t i = i0; i < i1; i++) t->out[i] = t->a[i] + t->b[i];
  }
}

static void act_run(float *out, const float *a, const float *b, int64_t n, int silu, kern_pool_t *pool) {
  if (n <= 0) return;
  act_task_t t = {.out = out, .a = a, .b = b, .n = n, .silu = silu};
  kern_pool_run(pool, act_job, &t, (n + ACT_ELEMS_PER_JOB - 1) / ACT_ELEMS_PER_JOB);
}

void kern_silu_mul(float *out, const float *gate, const float *up, int T, int F, kern_pool_t *pool) {
  act_run(out, gate, up, (int64_t)T * F, 1, pool);
}

typedef struct {
  float *out;
  const float *gate, *up;
  int F, ld;
} silu_ld_task_t;

static void silu_ld_job(void *arg, int64_t t, kern_worker_t *wk) {
  (void)wk;
  const silu_ld_task_t *s = arg;
  const float *g = s->gate + (size_t)t * s->ld, *u = s->up + (size_t)t * s->ld;
  float *o = s->out + (size_t)t * s->F;
  for (int i = 0; i < s->F; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void kern_silu_mul_ld(float *out, const float *gate, const float *up, int T, int F, int ld, kern_pool_t *pool) {
  if (ld == F) {
    kern_silu_mul(out, gate, up, T, F, pool);
    return;
  }
  if (T <= 0 || F <= 0) return;
  silu_ld_task_t s = {.out = out, .gate = gate, .up = up, .F = F, .ld = ld};
  kern_pool_run(pool, silu_ld_job, &s, T); /* one row per job: a row is F elements (thousands) */
}

void kern_add(float *out, const float *a, const float *b, int T, int C, kern_pool_t *pool) {
  act_run(out, a, b, (int64_t)T * C, 0, pool);
}

void kern_gather_rows(float *out, const float *x, const int32_t *rows, int n, int C) {
  for (int i = 0; i < n; i++) memcpy(out + (size_t)i * C, x + (size_t)rows[i] * C, (size_t)C * sizeof(float));
}
