/* threadpool.c: the kernels' fork-join thread pool (persistent workers, jobs taken from a shared counter). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"
#include "kernels/cpu/cpu_int.h"

struct kern_worker {
  int tid;
  void *scratch;
  size_t scratch_bytes;
};

/* Owned by the thread that created it (the engine thread); workers read the task under MU. */
struct kern_pool {
  int n_threads;
  pthread_t *threads;      /* (n_threads-1) */
  kern_worker_t *workers;  /* (n_threads); worker 0 is the caller */
  pthread_mutex_t mu;
  pthread_cond_t cv_start, cv_done;
  uint64_t generation;     /* bumped for every task; workers wait for a change */
  int stop;
  int n_busy;              /* helper threads still inside the current task */
  kern_task_fn fn;
  void *arg;
  int64_t n_jobs;
  atomic_int_fast64_t next; /* next job index to hand out */
};

typedef struct {
  kern_pool_t *pool;
  kern_worker_t *w;
} pool_start_t;

static void pool_drain(kern_pool_t *p, kern_worker_t *w) {
  for (;;) {
    int64_t j = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
    if (j >= p->n_jobs) break;
    p->fn(p->arg, j, w);
  }
}

static void *pool_main(void *arg) {
  kern_pool_t *p = ((pool_start_t *)arg)->pool;
  kern_worker_t *w = ((pool_start_t *)arg)->w;
  free(arg);
  uint64_t seen = 0;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (p->generation == seen && !p->stop) pthread_cond_wait(&p->cv_start, &p->mu);
    if (p->stop) break;
    seen = p->generation;
    pthread_mutex_unlock(&p->mu);
    pool_drain(p, w);
    pthread_mutex_lock(&p->mu);
    if (--p->n_busy == 0) pthread_cond_signal(&p->cv_done);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

int kern_pool_new(kern_pool_t **out, int n_threads) {
  *out = NULL;
  if (n_threads < 0 || n_threads > 1024) {
    log_error("kernel thread pool: %d threads asked; give 0 (all cores) to 1024", n_threads);
    return STRATA_EINVAL;
  }
  if (n_threads == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    n_threads = n > 0 ? (int)(n > 1024 ? 1024 : n) : 1;
  }
  kern_pool_t *p = calloc(1, sizeof(*p));
  if (!p) goto fail_nomem;
  p->n_threads = n_threads;
  p->workers = calloc((size_t)n_threads, sizeof(*p->workers));
  p->threads = calloc((size_t)n_threads, sizeof(*p->threads));
  if (!p->workers || !p->threads) goto fail_nomem;
  for (int i = 0; i < n_threads; i++) p->workers[i].tid = i;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv_start, NULL);
  pthread_cond_init(&p->cv_done, NULL);
  atomic_init(&p->next, 0);
  for (int i = 1; i < n_threads; i++) {
    pool_start_t *st = malloc(sizeof(*st));
    if (st) *st = (pool_start_t){.pool = p, .w = &p->workers[i]};
    int rc = st ? pthread_create(&p->threads[i - 1], NULL, pool_main, st) : ENOMEM;
    if (rc != 0) {
      free(st);
      log_error("kernel thread pool: cannot start thread %d of %d: %s", i + 1, n_threads, strerror(rc));
      p->n_threads = i; /* kern_pool_free joins the ones already started */
      kern_pool_free(p);
      return STRATA_ENOMEM;
    }
  }
  *out = p;
  return 0;
fail_nomem:
  log_error("kernel thread pool: out of memory for %d threads", n_threads);
  if (p) {
    free(p->workers);
    free(p->threads);
    free(p);
  }
  return STRATA_ENOMEM;
}

void kern_pool_free(kern_pool_t *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  pthread_cond_broadcast(&p->cv_start);
  pthread_mutex_unlock(&p->mu);
  for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i - 1], NULL);
  for (int i = 0; i < p->n_threads; i++) free(p->workers[i].scratch);
  pthread_cond_destroy(&p->cv_start);
  pthread_cond_destroy(&p->cv_done);
  pthread_mutex_destroy(&p->mu);
  free(p->workers);
  free(p->threads);
  free(p);
}

int kern_pool_size(const kern_pool_t *p) { return p ? p->n_threads : 1; }

void kern_pool_run(kern_pool_t *p, kern_task_fn fn, void *arg, int64_t n_jobs) {
  if (n_jobs <= 0) return;
  if (!p) { /* serial: a transient worker whose scratch lives for this call */
    kern_worker_t w = {0};
    for (int64_t j = 0; j < n_jobs; j++) fn(arg, j, &w);
    free(w.scratch);
    return;
  }
  if (p->n_threads == 1 || n_jobs == 1) {
    for (int64_t j = 0; j < n_jobs; j++) fn(arg, j, &p->workers[0]);
    return;
  }
  pthread_mutex_lock(&p->mu);
  p->fn = fn;
  p->arg = arg;
  p->n_jobs = n_jobs;
  atomic_store(&p->next, 0);
  p->n_busy = p->n_threads - 1;
  p->generation++;
  pthread_cond_broadcast(&p->cv_start);
  pthread_mutex_unlock(&p->mu);
  pool_drain(p, &p->workers[0]);
  pthread_mutex_lock(&p->mu);
  while (p->n_busy > 0) pthread_cond_wait(&p->cv_done, &p->mu);
  pthread_mutex_unlock(&p->mu);
}

void *kern_worker_scratch(kern_worker_t *w, size_t bytes) {
  if (bytes <= w->scratch_bytes) return w->scratch;
  size_t n = (bytes + 63) & ~(size_t)63;
  void *s = aligned_alloc(64, n);
  if (!s) {
    log_error("kernel scratch: out of memory for %zu bytes", n);
    return NULL;
  }
  free(w->scratch);
  w->scratch = s;
  w->scratch_bytes = n;
  return s;
}

int kern_worker_id(const kern_worker_t *w) { return w->tid; }

/* 0 unknown, 1 avx2, 2 portable. Set once; a benign race would store the same value. */
static atomic_int g_simd;
static atomic_int g_force_portable;

void kern_force_portable(int on) {
  atomic_store(&g_force_portable, on ? 1 : 0);
  atomic_store(&g_simd, 0);
}

int kern_use_avx2(void) {
  int s = atomic_load_explicit(&g_simd, memory_order_relaxed);
  if (s == 0) {
    s = 2;
#ifdef KERN_X86
    __builtin_cpu_init();
    if (!atomic_load(&g_force_portable) && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))
      s = 1;
#endif
    atomic_store_explicit(&g_simd, s, memory_order_relaxed);
  }
  return s == 1;
}

const char *kern_simd_name(void) { return kern_use_avx2() ? "avx2" : "portable"; }
