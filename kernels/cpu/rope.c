/* rope.c: rotary position embedding of q and k, fused with the write of k and v into the paged KV cache. */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "common/log.h"
#include "kernels/cpu/cpu_int.h"

typedef struct {
  float *q;                  /* (T,H*D) */
  float *k;                  /* (T,Hkv*D) */
  const float *v;            /* (T,Hkv*D) */
  kern_kv_t *kv;
  int layer;
  const int32_t *positions;  /* (T) */
  const int32_t *slots;      /* (T) */
  int H, style;
  const float *inv_freq;     /* (D/2) */
  atomic_int n_bad;
} rope_task_t;

/* Rotates N_HEADS heads of D at X by the angles whose cos/sin are CS (D/2 each), in double. */
static void rope_heads(float *x, int n_heads, int D, int style, const double *cs, const double *sn) {
  int half = D / 2;
  for (int h = 0; h < n_heads; h++) {
    float *xh = x + (size_t)h * D;
    for (int i = 0; i < half; i++) {
      int i0 = style == 1 ? i : 2 * i, i1 = style == 1 ? i + half : 2 * i + 1;
      double a = xh[i0], b = xh[i1];
      xh[i0] = (float)(a * cs[i] - b * sn[i]);
      xh[i1] = (float)(a * sn[i] + b * cs[i]);
    }
  }
}

static void rope_job(void *arg, int64_t t, kern_worker_t *wk) {
  rope_task_t *r = arg;
  kern_kv_t *kv = r->kv;
  int D = kv->head_dim, Hkv = kv->n_kv_heads, B = kv->block_size, half = D / 2;
  double *cs = kern_worker_scratch(wk, (size_t)D * sizeof(double));
  if (!cs) { /* out of memory (logged by the scratch) */
    atomic_fetch_add(&r->n_bad, 1);
    return;
  }
  double *sn = cs + half;
  for (int i = 0; i < half; i++) {
    double ang = (double)r->positions[t] * (double)r->inv_freq[i];
    cs[i] = cos(ang);
    sn[i] = sin(ang);
  }
  float *k = r->k + (size_t)t * Hkv * D;
  rope_heads(r->q + (size_t)t * r->H * D, r->H, D, r->style, cs, sn);
  rope_heads(k, Hkv, D, r->style, cs, sn);
  int64_t slot = r->slots[t];
  if (slot < 0 || slot >= (int64_t)kv->n_blocks * B) {
    atomic_fetch_add(&r->n_bad, 1);
    return;
  }
  size_t head_elems = (size_t)B * D;
  float *blk = kv->data + (size_t)(slot / B) * kv->n_layers * 2 * Hkv * head_elems;
  float *kc = blk + (size_t)r->layer * 2 * Hkv * head_elems + (size_t)(slot % B) * D;
  float *vc = kc + (size_t)Hkv * head_elems;
  const float *v = r->v + (size_t)t * Hkv * D;
  for (int h = 0; h < Hkv; h++) {
    memcpy(kc + h * head_elems, k + (size_t)h * D, (size_t)D * sizeof(float));
    memcpy(vc + h * head_elems, v + (size_t)h * D, (size_t)D * sizeof(float));
  }
}

void kern_rope_kv_write(float *q, float *k, const float *v, kern_kv_t *kv, int layer, const int32_t *positions,
                        const int32_t *slots, int T, int H, int style, const float *inv_freq, kern_pool_t *pool) {
  if (T <= 0) return;
  if (layer < 0 || layer >= kv->n_layers || kv->head_dim % 2) {
    log_error("rope_kv_write: layer %d of %d or odd head dim %d", layer, kv->n_layers, kv->head_dim);
    return;
  }
  rope_task_t r = {.q = q, .k = k, .v = v, .kv = kv, .layer = layer, .positions = positions, .slots = slots,
                   .H = H, .style = style, .inv_freq = inv_freq};
  atomic_init(&r.n_bad, 0);
  kern_pool_run(pool, rope_job, &r, T);
  int n_bad = atomic_load(&r.n_bad);
  if (n_bad)
    log_error("rope_kv_write: %d tokens had a KV slot outside the cache (%d blocks of %d) or no scratch; not "
              "written",
              n_bad, kv->n_blocks, kv->block_size);
}
