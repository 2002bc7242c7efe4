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

/* rope_angles: cos and sin of POS times each of the HALF inverse frequencies, in double. */
static void rope_angles(double *cs, double *sn, int32_t pos, const float *inv_freq, int half) {
  for (int i = 0; i < half; i++) {
    double ang = (double)pos * (double)inv_freq[i];
    cs[i] = cos(ang);
    sn[i] = sin(ang);
  }
}

/* cache_rows: token SLOT's K row of KV head 0 in LAYER (head h at + h * B * D), with its V row in *VC; NULL when
 * no write is asked for (a negative slot: a padding row) or, counted in N_BAD, when the slot is outside the cache. */
static float *cache_rows(kern_kv_t *kv, int layer, int64_t slot, float **vc, atomic_int *n_bad) {
  const int B = kv->block_size, D = kv->head_dim, Hkv = kv->n_kv_heads;
  if (slot < 0) return NULL;
  if (slot >= (int64_t)kv->n_blocks * B) {
    atomic_fetch_add(n_bad, 1);
    return NULL;
  }
  size_t head_elems = (size_t)B * D;
  float *blk = kv->data + (size_t)(slot / B) * kv->n_layers * 2 * Hkv * head_elems;
  float *kc = blk + (size_t)layer * 2 * Hkv * head_elems + (size_t)(slot % B) * D;
  *vc = kc + (size_t)Hkv * head_elems;
  return kc;
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
  rope_angles(cs, sn, r->positions[t], r->inv_freq, half);
  float *k = r->k + (size_t)t * Hkv * D;
  rope_heads(r->q + (size_t)t * r->H * D, r->H, D, r->style, cs, sn);
  rope_heads(k, Hkv, D, r->style, cs, sn);
  float *vc, *kc = cache_rows(kv, r->layer, r->slots[t], &vc, &r->n_bad);
  if (!kc) return;
  const size_t head_elems = (size_t)B * D;
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

/* ---- the fused-projection variant: q, k, v read from one (T, LD) row, q written packed ---- */

typedef struct {
  float *q_out;              /* (T,H*D) */
  const float *qkv;          /* (T,LD): q | k | v */
  int ld;
  const float *q_norm, *k_norm; /* (D) or NULL */
  float eps;
  kern_kv_t *kv;
  int layer;
  const int32_t *positions, *slots;
  int H, style;
  const float *inv_freq;
  atomic_int n_bad;
} rope_qkv_task_t;

/* One head: DST = rmsnorm(SRC) (or a copy), then rotated. */
static void head_norm_rope(float *dst, const float *src, const float *norm, float eps, int D, int style,
                           const double *cs, const double *sn) {
  if (norm)
    kern_rmsnorm_row(dst, src, norm, D, eps);
  else
    memcpy(dst, src, (size_t)D * sizeof(float));
  rope_heads(dst, 1, D, style, cs, sn);
}

static void rope_qkv_job(void *arg, int64_t t, kern_worker_t *wk) {
  rope_qkv_task_t *r = arg;
  kern_kv_t *kv = r->kv;
  int D = kv->head_dim, Hkv = kv->n_kv_heads, B = kv->block_size, half = D / 2, H = r->H;
  double *cs = kern_worker_scratch(wk, (size_t)D * sizeof(double) + (size_t)D * sizeof(float));
  if (!cs) {
    atomic_fetch_add(&r->n_bad, 1);
    return;
  }
  double *sn = cs + half;
  float *kh = (float *)(cs + D); /* one rotated k head */
  rope_angles(cs, sn, r->positions[t], r->inv_freq, half);
  const float *row = r->qkv + (size_t)t * r->ld, *k = row + (size_t)H * D, *v = k + (size_t)Hkv * D;
  for (int h = 0; h < H; h++)
    head_norm_rope(r->q_out + ((size_t)t * H + h) * D, row + (size_t)h * D, r->q_norm, r->eps, D, r->style, cs, sn);
  float *vc, *kc = cache_rows(kv, r->layer, r->slots[t], &vc, &r->n_bad);
  if (!kc) return;
  const size_t head_elems = (size_t)B * D;
  for (int h = 0; h < Hkv; h++) {
    head_norm_rope(kh, k + (size_t)h * D, r->k_norm, r->eps, D, r->style, cs, sn);
    memcpy(kc + h * head_elems, kh, (size_t)D * sizeof(float));
    memcpy(vc + h * head_elems, v + (size_t)h * D, (size_t)D * sizeof(float));
  }
}

void kern_rope_qkv_write(float *q_out, const float *qkv, int ld, const float *q_norm, const float *k_norm, float eps,
                         kern_kv_t *kv, int layer, const int32_t *positions, const int32_t *slots, int T, int H,
                         int style, const float *inv_freq, kern_pool_t *pool) {
  if (T <= 0) return;
  const int D = kv->head_dim;
  if (layer < 0 || layer >= kv->n_layers || D % 2 || ld < (H + 2 * kv->n_kv_heads) * D) {
    log_error("rope_qkv_write: layer %d of %d, head dim %d (must be even) or row stride %d < %d", layer,
              kv->n_layers, D, ld, (H + 2 * kv->n_kv_heads) * D);
    return;
  }
  rope_qkv_task_t r = {.q_out = q_out, .qkv = qkv, .ld = ld, .q_norm = q_norm, .k_norm = k_norm, .eps = eps,
                       .kv = kv, .layer = layer, .positions = positions, .slots = slots, .H = H, .style = style,
                       .inv_freq = inv_freq};
  atomic_init(&r.n_bad, 0);
  kern_pool_run(pool, rope_qkv_job, &r, T);
  int n_bad = atomic_load(&r.n_bad);
  if (n_bad)
    log_error("rope_qkv_write: %d tokens had a KV slot outside the cache (%d blocks of %d) or no scratch; not "
              "written",
              n_bad, kv->n_blocks, kv->block_size);
}
