/* backend_cpu.c: the CPU backend: host memory, f32 activations and KV, the kernels of kernels/cpu on a thread pool. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"
#include "kernels/kernels.h"
#include "worker/backend/backend.h"
#include "worker/sample/sample.h"

typedef struct {
  kern_pool_t *pool; /* created once; used only from the thread that calls the backend */
  /* asynchronous steps, run synchronously here: the last draw_rows' ids (what patch_tokens reads), each
   * host slot's copy of its ids, the patched tokens, and the sampler and row copy of sampled draws */
  int32_t *ids, *slot_ids[2], *tok;
  int ids_cap, slot_cap[2], tok_cap;
  sampler_t sampler;
  float *row;
} cpu_ctx_t;

static kern_pool_t *cpu_pool(backend_t *be) { return ((cpu_ctx_t *)be->ctx)->pool; }

/* ---- memory ---- */

static void *cpu_alloc(backend_t *be, size_t bytes) {
  (void)be;
  size_t n = ((bytes ? bytes : 1) + 63) & ~(size_t)63;
  void *p = aligned_alloc(64, n);
  if (!p) {
    log_error("cpu backend: out of memory allocating %zu bytes", bytes);
    return NULL;
  }
  memset(p, 0, n);
  return p;
}

static void cpu_free(backend_t *be, void *p) { free(p); }

static int cpu_copy(backend_t *be, void *dst, const void *src, size_t bytes) {
  if (bytes) memmove(dst, src, bytes);
  return 0;
}

static int cpu_sync(backend_t *be) { return 0; }

/* Free = MemAvailable from /proc/meminfo (falls back to free pages); total = physical memory. */
static int cpu_mem_info(backend_t *be, size_t *free_bytes, size_t *total_bytes) {
  long page = sysconf(_SC_PAGESIZE), phys = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES);
  if (page <= 0 || phys <= 0) {
    log_error("cpu backend: cannot read the memory size (sysconf)");
    return STRATA_EIO;
  }
  *total_bytes = (size_t)phys * (size_t)page;
  *free_bytes = avail > 0 ? (size_t)avail * (size_t)page : 0;
  FILE *f = fopen("/proc/meminfo", "r");
  if (f) {
    char line[256];
    unsigned long long kb;
    while (fgets(line, sizeof(line), f))
      if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) *free_bytes = (size_t)kb * 1024;
    fclose(f);
  }
  return 0;
}

/* The CPU computes from the stored dtype, so a prepared weight aliases the host one (often an mmap). */
static int cpu_weight_prepare(backend_t *be, weight_t *dst, const weight_t *src) {
  (void)be;
  if (src->gen.on) {
    log_error("cpu backend: this dummy model's weights were left for a GPU to generate; load it for the CPU");
    return STRATA_EUNSUPPORTED;
  }
  *dst = *src;
  return 0;
}

static void cpu_weight_release(backend_t *be, weight_t *w) { memset(w, 0, sizeof(*w)); }

static int cpu_batch_upload(backend_t *be, be_batch_t *dst, const be_batch_t *src) {
  *dst = *src;
  return 0;
}

/* ---- ops ---- */

static void cpu_embed(backend_t *be, void *out, const weight_t *emb, const int32_t *ids, int T) {
  kern_embed(out, emb->data, emb->dtype, emb->rows, (int)emb->cols, ids, T, cpu_pool(be));
}

static void cpu_rmsnorm(backend_t *be, void *out, const void *x, const float *w, int rows, int C, float eps) {
  kern_rmsnorm(out, x, w, rows, C, eps, cpu_pool(be));
}

static void cpu_add_rmsnorm(backend_t *be, void *out, void *residual, const void *x, const float *w, int rows, int C,
                            float eps) {
  kern_add_rmsnorm(out, residual, x, w, rows, C, eps, cpu_pool(be));
}

static void cpu_matmul(backend_t *be, void *out, const void *x, const weight_t *w, const float *bias, int T) {
  kern_matmul(out, x, w->data, w->dtype, (int)w->rows, (int)w->cols, bias, T, cpu_pool(be));
}

static kern_kv_t cpu_kv(const be_kv_t *kv) {
  return (kern_kv_t){.data = kv->data, .n_blocks = kv->n_blocks, .n_layers = kv->n_layers,
                     .n_kv_heads = kv->n_kv_heads, .block_size = kv->block_size, .head_dim = kv->head_dim};
}

static void cpu_rope_kv_write(backend_t *be, void *q, void *k, const void *v, be_kv_t *kv, int layer,
                              const be_batch_t *b, const be_rope_t *rope, int n_heads, int n_kv_heads) {
  kern_kv_t kkv = cpu_kv(kv);
  if (n_kv_heads != kv->n_kv_heads || rope->head_dim != kv->head_dim) {
    log_error("cpu backend: rope_kv_write with %d KV heads of %d for a cache of %d heads of %d", n_kv_heads,
              rope->head_dim, kv->n_kv_heads, kv->head_dim);
    return;
  }
  kern_rope_kv_write(q, k, v, &kkv, layer, b->positions, b->slots, b->n_tokens, n_heads, rope->style,
                     rope->inv_freq, cpu_pool(be));
}

static void cpu_rope_qkv_write(backend_t *be, void *q_out, const void *qkv, int ld, const float *q_norm,
                               const float *k_norm, float eps, be_kv_t *kv, int layer, const be_batch_t *b,
                               const be_rope_t *rope, int n_heads, int n_kv_heads) {
  kern_kv_t kkv = cpu_kv(kv);
  if (n_kv_heads != kv->n_kv_heads || rope->head_dim != kv->head_dim) {
    log_error("cpu backend: rope_qkv_write with %d KV heads of %d for a cache of %d heads of %d", n_kv_heads,
              rope->head_dim, kv->n_kv_heads, kv->head_dim);
    return;
  }
  kern_rope_qkv_write(q_out, qkv, ld, q_norm, k_norm, eps, &kkv, layer, b->positions, b->slots, b->n_tokens, n_heads,
                      rope->style, rope->inv_freq, cpu_pool(be));
}

static void cpu_attention(backend_t *be, void *out, const void *q, const be_kv_t *kv, int layer, const be_batch_t *b,
                          int n_heads, int n_kv_heads, float scale) {
  kern_kv_t kkv = cpu_kv(kv);
  if (n_kv_heads != kv->n_kv_heads) {
    log_error("cpu backend: attention with %d KV heads for a cache of %d", n_kv_heads, kv->n_kv_heads);
    memset(out, 0, (size_t)b->n_tokens * n_heads * kv->head_dim * sizeof(float));
    return;
  }
  kern_attention(out, q, &kkv, layer, b->positions, b->seq_of, b->block_table, b->max_blocks, b->n_tokens, n_heads,
                 scale, cpu_pool(be));
}

static void cpu_silu_mul(backend_t *be, void *out, const void *gate, const void *up, int T, int F) {
  kern_silu_mul(out, gate, up, T, F, cpu_pool(be));
}

static void cpu_silu_mul_cat(backend_t *be, void *out, const void *gu, int T, int F) {
  const float *g = gu;
  kern_silu_mul_ld(out, g, g + F, T, F, 2 * F, cpu_pool(be));
}

static void cpu_gather_rows(backend_t *be, void *out, const void *x, const int32_t *rows, int n, int C) {
  kern_gather_rows(out, x, rows, n, C);
}

static int cpu_to_host_f32(backend_t *be, float *host_out, const void *x, int64_t n) {
  if (n > 0) memmove(host_out, x, (size_t)n * sizeof(float));
  return 0;
}

/* cpu_argmax_rows: the greedy rule of the sampler (ties to the lowest id, NaN never wins). */
static int cpu_argmax_rows(backend_t *be, int32_t *host_out, const void *x, int n, int V) {
  const float *l = x;
  for (int r = 0; r < n; r++, l += V) {
    int best = -1;
    for (int i = 0; i < V; i++)
      if (l[i] == l[i] && (best < 0 || l[i] > l[best])) best = i;
    host_out[r] = best < 0 ? 0 : best;
  }
  return 0;
}

/* grow_ids: *P holds at least N int32 (contents kept). */
static int grow_ids(int32_t **p, int *cap, int n) {
  if (n <= *cap) return 0;
  int c = n < 256 ? 256 : 2 * n;
  int32_t *q = realloc(*p, sizeof *q * (size_t)c);
  if (!q) {
    log_error("cpu backend: out of memory for %d token ids", c);
    return STRATA_ENOMEM;
  }
  *p = q;
  *cap = c;
  return 0;
}

/* cpu_patch_tokens: a copy of the batch's tokens with the rows of prev_rows taken from the last draw. */
static int cpu_patch_tokens(backend_t *be, be_batch_t *b) {
  cpu_ctx_t *c = be->ctx;
  if (!b->prev_rows || b->n_tokens <= 0) return 0;
  int rc = grow_ids(&c->tok, &c->tok_cap, b->n_tokens);
  if (rc) return rc;
  for (int t = 0; t < b->n_tokens; t++) {
    int j = b->prev_rows[t];
    c->tok[t] = j >= 0 && j < c->ids_cap ? c->ids[j] : b->tokens[t];
  }
  b->tokens = c->tok;
  return 0;
}

/* cpu_sample_row: sample_rows' draw for one row, with the host sampler's code (it is the reference). */
static int32_t cpu_sample_row(cpu_ctx_t *c, const float *x, const be_sample_t *p, int V) {
  if (c->sampler.vocab_size != V) {
    sampler_deinit(&c->sampler);
    free(c->row);
    c->row = malloc(sizeof *c->row * (size_t)V);
    if (!c->row || sampler_init(&c->sampler, V)) {
      log_error("cpu backend: out of memory for sampling a vocabulary of %d", V);
      return -1;
    }
  }
  sampling_params_t sp;
  sampling_params_default(&sp);
  sp.temperature = p->temperature;
  sp.top_k = p->top_k;
  sp.top_p = p->top_p;
  sp.min_p = p->min_p;
  sp.seed = p->seed;
  memcpy(c->row, x, sizeof *c->row * (size_t)V); /* the draw scales in place; X stays as it was */
  return sampler_draw(&c->sampler, &sp, c->row, p->position);
}

/* cpu_draw_rows: computes at once; the "transfer" to SLOT is a copy. A row with nothing to draw gets -1. */
static int cpu_draw_rows(backend_t *be, int slot, const void *x, const be_sample_t *p, int n, int V) {
  cpu_ctx_t *c = be->ctx;
  if (slot < 0 || slot > 1) return STRATA_EINVAL;
  int rc = grow_ids(&c->ids, &c->ids_cap, n);
  if (!rc) rc = grow_ids(&c->slot_ids[slot], &c->slot_cap[slot], n);
  if (rc || n <= 0) return rc;
  if (!p) {
    cpu_argmax_rows(be, c->ids, x, n, V);
  } else {
    for (int r = 0; r < n; r++) c->ids[r] = cpu_sample_row(c, (const float *)x + (size_t)r * (size_t)V, &p[r], V);
  }
  memcpy(c->slot_ids[slot], c->ids, sizeof *c->ids * (size_t)n);
  return 0;
}

static int cpu_draw_wait(backend_t *be, int slot, int32_t *host_out, int n) {
  cpu_ctx_t *c = be->ctx;
  if (slot < 0 || slot > 1 || n > c->slot_cap[slot]) return STRATA_EINVAL;
  if (n > 0) memcpy(host_out, c->slot_ids[slot], sizeof *host_out * (size_t)n);
  return 0;
}

static const be_ops_t cpu_ops = {
    .name = "cpu",
    .destroy = backend_cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .sync = cpu_sync,
    .mem_info = cpu_mem_info,
    .weight_prepare = cpu_weight_prepare,
    .weight_release = cpu_weight_release,
    .batch_upload = cpu_batch_upload,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .add_rmsnorm = cpu_add_rmsnorm,
    .matmul = cpu_matmul,
    .rope_kv_write = cpu_rope_kv_write,
    .rope_qkv_write = cpu_rope_qkv_write,
    .attention = cpu_attention,
    .silu_mul = cpu_silu_mul,
    .silu_mul_cat = cpu_silu_mul_cat,
    .gather_rows = cpu_gather_rows,
    .to_host_f32 = cpu_to_host_f32,
    .argmax_rows = cpu_argmax_rows,
    .patch_tokens = cpu_patch_tokens,
    .draw_rows = cpu_draw_rows,
    .draw_wait = cpu_draw_wait,
};

int backend_cpu_create(backend_t **out, int n_threads) {
  *out = NULL;
  backend_t *be = calloc(1, sizeof(*be));
  cpu_ctx_t *ctx = calloc(1, sizeof(*ctx));
  int rc = STRATA_ENOMEM;
  if (!be || !ctx) {
    log_error("cpu backend: out of memory");
    goto fail;
  }
  if ((rc = kern_pool_new(&ctx->pool, n_threads)) != 0) goto fail;
  be->ops = &cpu_ops;
  be->ctx = ctx;
  be->act_dtype = DTYPE_F32;
  be->n_threads = kern_pool_size(ctx->pool);
  snprintf(be->device, sizeof(be->device), "cpu");
  log_debug("cpu backend: %d threads, %s kernels", be->n_threads, kern_simd_name());
  *out = be;
  return 0;
fail:
  free(ctx);
  free(be);
  return rc;
}

/* backend_cpu_destroy: frees a backend made by backend_cpu_create (called by backend_destroy). */
void backend_cpu_destroy(backend_t *be) {
  if (!be) return;
  cpu_ctx_t *ctx = be->ctx;
  if (ctx) {
    kern_pool_free(ctx->pool);
    sampler_deinit(&ctx->sampler);
    free(ctx->row);
    free(ctx->ids);
    free(ctx->slot_ids[0]);
    free(ctx->slot_ids[1]);
    free(ctx->tok);
  }
  free(ctx);
  free(be);
}
