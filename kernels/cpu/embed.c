/* embed.c: token embedding lookup, one dequantized row per token. */
#include <stdatomic.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "kernels/cpu/cpu_int.h"

typedef struct {
  float *out;            /* (T,C) */
  const uint8_t *emb;    /* (V,C) in type */
  dtype_t type;
  int64_t V;
  int C;
  size_t row_bytes;
  const int32_t *ids;    /* (T) */
  atomic_int n_bad;      /* ids outside [0,V) */
  atomic_int first_bad;
} embed_task_t;

static void embed_job(void *arg, int64_t t, kern_worker_t *wk) {
  (void)wk;
  embed_task_t *e = arg;
  float *row = e->out + (size_t)t * e->C;
  int32_t id = e->ids[t];
  if (id < 0 || id >= e->V) {
    memset(row, 0, (size_t)e->C * sizeof(float));
    if (atomic_fetch_add(&e->n_bad, 1) == 0) atomic_store(&e->first_bad, id);
    return;
  }
  dtype_to_f32(e->type, e->emb + (size_t)id * e->row_bytes, row, e->C);
}

int kern_embed(float *out, const void *emb, dtype_t type, int64_t V, int C, const int32_t *ids, int T,
               kern_pool_t *pool) {
  if (T <= 0) return 0;
  size_t row_bytes = dtype_row_bytes(type, C);
  float probe[256]; /* one block of the largest type: asks the converter whether it knows TYPE */
  if (row_bytes == 0 || C <= 0 || dtype_block_elems(type) > 256 ||
      dtype_to_f32(type, emb, probe, dtype_block_elems(type)) != 0) {
    log_error("embed: embedding dtype %s with rows of %d elements is not supported", dtype_name(type), C);
    return STRATA_EUNSUPPORTED;
  }
  embed_task_t e = {.out = out, .emb = emb, .type = type, .V = V, .C = C, .row_bytes = row_bytes, .ids = ids};
  atomic_init(&e.n_bad, 0);
  atomic_init(&e.first_bad, 0);
  kern_pool_run(pool, embed_job, &e, T);
  int n_bad = atomic_load(&e.n_bad);
  if (n_bad > 0)
    log_error("embed: %d token ids outside the vocabulary [0, %lld) (first: %d); their rows are zero", n_bad,
              (long long)V, atomic_load(&e.first_bad));
  return 0;
}
