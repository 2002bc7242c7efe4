/* norm.c: RMSNorm, alone and fused with the residual add. */
#include <math.h>

#include "kernels/cpu/cpu_int.h"

enum { NORM_ROWS_PER_JOB = 4 };

typedef struct {
  float *out;            /* (rows,C) */
  float *residual;       /* (rows,C) or NULL (plain rmsnorm) */
  const float *x;        /* (rows,C) */
  const float *w;        /* (C) */
  int rows, C;
  float eps;
} norm_task_t;

/* out(C) = x / sqrt(mean(x^2) + eps) * w. The sum of squares runs in double over four interleaved
 * partial sums (a fixed order, so a row's result never depends on its neighbours). */
void kern_rmsnorm_row(float *out, const float *x, const float *w, int C, float eps) {
  double s[4] = {0, 0, 0, 0};
  int i = 0;
  for (; i + 4 <= C; i += 4)
    for (int j = 0; j < 4; j++) s[j] += (double)x[i + j] * x[i + j];
  for (; i < C; i++) s[0] += (double)x[i] * x[i];
  double inv = 1.0 / sqrt((s[0] + s[1] + s[2] + s[3]) / C + eps);
  for (i = 0; i < C; i++) out[i] = (float)(x[i] * inv) * w[i];
}

static void norm_job(void *arg, int64_t job, kern_worker_t *wk) {
  (void)wk;
  norm_task_t *n = arg;
  int r0 = (int)job * NORM_ROWS_PER_JOB;
  int r1 = r0 + NORM_ROWS_PER_JOB < n->rows ? r0 + NORM_ROWS_PER_JOB : n->rows;
  for (int r = r0; r < r1; r++) {
    size_t off = (size_t)r * n->C;
    const float *src = n->x + off;
    if (n->residual) {
      float *res = n->residual + off;
      for (int i = 0; i < n->C; i++) res[i] += src[i];
      src = res;
    }
    kern_rmsnorm_row(n->out + off, src, n->w, n->C, n->eps);
  }
}

void kern_rmsnorm(float *out, const float *x, const float *w, int rows, int C, float eps, kern_pool_t *pool) {
  if (rows <= 0 || C <= 0) return;
  norm_task_t n = {.out = out, .x = x, .w = w, .rows = rows, .C = C, .eps = eps};
  kern_pool_run(pool, norm_job, &n, (rows + NORM_ROWS_PER_JOB - 1) / NORM_ROWS_PER_JOB);
}

void kern_add_rmsnorm(float *out, float *residual, const float *x, const float *w, int rows, int C, float eps,
                      kern_pool_t *pool) {
  if (rows <= 0 || C <= 0) return;
  norm_task_t n = {.out = out, .residual = residual, .x = x, .w = w, .rows = rows, .C = C, .eps = eps};
  kern_pool_run(pool, norm_job, &n, (rows + NORM_ROWS_PER_JOB - 1) / NORM_ROWS_PER_JOB);
}
