/* attention.c: causal attention over the paged KV cache, ragged batches of prefill chunks and decodes, GQA.
 *
 * NOTE: batch invariance. A query's result depends only on its own q, its position and the cache:
 * the scores, the softmax and the weighted sum of V run over positions 0..pos in order, in the same
 * code whether the query is one of a 40-token prefill or a single decode. */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "common/log.h"
#include "kernels/cpu/cpu_int.h"

typedef struct {
  float *out;                  /* (T,H*D) */
  const float *q;              /* (T,H*D) */
  const kern_kv_t *kv;
  int layer;
  const int32_t *positions;    /* (T) */
  const int32_t *seq_of;       /* (T) */
  const int32_t *block_table;  /* (S,max_blocks) */
  int max_blocks, H;
  float scale;
  int avx2;
  atomic_int n_bad;
} attn_task_t;

#ifdef KERN_X86
KERN_AVX2 static void attn_scores_avx2(float *sc, int stride, const float *q, int G, const float *k, int D,
                                       float scale) {
  for (int h = 0; h < G; h++) sc[(size_t)h * stride] = kern_dot_avx2(q + (size_t)h * D, k, D) * scale;
}

/* o(G,D) += p[h*stride] * v(D) for each head h. */
KERN_AVX2 static void attn_accum_avx2(float *o, const float *p, int stride, int G, const float *v, int D) {
  for (int h = 0; h < G; h++) {
    float *oh = o + (size_t)h * D;
    __m256 pv = _mm256_set1_ps(p[(size_t)h * stride]);
    int d = 0;
    for (; d + 8 <= D; d += 8)
      _mm256_storeu_ps(oh + d, _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + d), _mm256_loadu_ps(oh + d)));
    for (; d < D; d++) oh[d] = fmaf(p[(size_t)h * stride], v[d], oh[d]);
  }
}
#endif

static void attn_scores_portable(float *sc, int stride, const float *q, int G, const float *k, int D, float scale) {
  for (int h = 0; h < G; h++) sc[(size_t)h * stride] = kern_dot_portable(q + (size_t)h * D, k, D) * scale;
}

static void attn_accum_portable(float *o, const float *p, int stride, int G, const float *v, int D) {
  for (int h = 0; h < G; h++)
    for (int d = 0; d < D; d++) o[(size_t)h * D + d] += p[(size_t)h * stride] * v[d];
}

/* Softmax of each of G rows of N scores in place (max-subtracted); returns nothing, writes 1/sum to INV. */
static void attn_softmax(float *sc, int G, int n, float *inv) {
  for (int h = 0; h < G; h++) {
    float *s = sc + (size_t)h * n, m = -INFINITY, sum = 0.0f;
    for (int p = 0; p < n; p++) m = s[p] > m ? s[p] : m;
    for (int p = 0; p < n; p++) {
      s[p] = expf(s[p] - m);
      sum += s[p];
    }
    inv[h] = 1.0f / sum;
  }
}

/* Job = (token t, KV head g): the G = H/Hkv query heads of g share each K and V row read. */
static void attn_job(void *arg, int64_t job, kern_worker_t *wk) {
  attn_task_t *a = arg;
  const kern_kv_t *kv = a->kv;
  int Hkv = kv->n_kv_heads, D = kv->head_dim, B = kv->block_size, G = a->H / Hkv;
  int t = (int)(job / Hkv), g = (int)(job % Hkv);
  float *o = a->out + (size_t)t * a->H * D + (size_t)g * G * D;
  const float *q = a->q + (size_t)t * a->H * D + (size_t)g * G * D;
  memset(o, 0, (size_t)G * D * sizeof(float));
  int pos = a->positions[t], n = pos + 1;
  const int32_t *bt = a->block_table + (size_t)a->seq_of[t] * a->max_blocks;
  if (pos < 0 || pos / B >= a->max_blocks) goto bad;
  for (int b = 0; b <= pos / B; b++)
    if (bt[b] < 0 || bt[b] >= kv->n_blocks) goto bad;
  float *sc = kern_worker_scratch(wk, ((size_t)G * n + G) * sizeof(float));
  if (!sc) goto bad;
  float *inv = sc + (size_t)G * n;
  size_t head_elems = (size_t)B * D, block_elems = (size_t)kv->n_layers * 2 * Hkv * head_elems;
  const float *kbase = kv->data + ((size_t)a->layer * 2 * Hkv + g) * head_elems;
  const float *vbase = kbase + (size_t)Hkv * head_elems;
  for (int p = 0; p < n; p++) {
    const float *k = kbase + (size_t)bt[p / B] * block_elems + (size_t)(p % B) * D;
#ifdef KERN_X86
    if (a->avx2) {
      attn_scores_avx2(sc + p, n, q, G, k, D, a->scale);
      continue;
    }
#endif
    attn_scores_portable(sc + p, n, q, G, k, D, a->scale);
  }
  attn_softmax(sc, G, n, inv);
  for (int p = 0; p < n; p++) {
    const float *v = vbase + (size_t)bt[p / B] * block_elems + (size_t)(p % B) * D;
#ifdef KERN_X86
    if (a->avx2) {
      attn_accum_avx2(o, sc + p, n, G, v, D);
      continue;
    }
#endif
    attn_accum_portable(o, sc + p, n, G, v, D);
  }
  for (int h = 0; h < G; h++)
    for (int d = 0; d < D; d++) o[(size_t)h * D + d] *= inv[h];
  return;
bad:
  atomic_fetch_add(&a->n_bad, 1);
}

void kern_attention(float *out, const float *q, const kern_kv_t *kv, int layer, const int32_t *positions,
                    const int32_t *seq_of, const int32_t *block_table, int max_blocks, int T, int H, float scale,
                    kern_pool_t *pool) {
  if (T <= 0) return;
  if (layer < 0 || layer >= kv->n_layers || kv->n_kv_heads <= 0 || H % kv->n_kv_heads) {
    log_error("attention: layer %d of %d, %d query heads for %d KV heads", layer, kv->n_layers, H, kv->n_kv_heads);
    memset(out, 0, (size_t)T * H * kv->head_dim * sizeof(float));
    return;
  }
  attn_task_t a = {.out = out, .q = q, .kv = kv, .layer = layer, .positions = positions, .seq_of = seq_of,
                   .block_table = block_table, .max_blocks = max_blocks, .H = H, .scale = scale,
                   .avx2 = kern_use_avx2()};
  atomic_init(&a.n_bad, 0);
  kern_pool_run(pool, attn_job, &a, (int64_t)T * kv->n_kv_heads);
  int n_bad = atomic_load(&a.n_bad);
  if (n_bad)
    log_error("attention: %d (token, KV head) pairs had a position beyond the block table (%d blocks of %d) or a "
              "block outside the cache (%d blocks); their output is zero",
              n_bad, max_blocks, kv->block_size, kv->n_blocks);
}
