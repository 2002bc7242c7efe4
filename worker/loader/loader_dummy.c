/* loader_dummy.c: "dummy:<preset>" models: known shapes filled with seeded random weights, for
 * benchmarks. Values come from a counter-based hash of (seed, tensor, element), so the result does
 * not depend on the thread count and a GPU kernel could generate the same weights in place. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/dummy_hash.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/loader/loader_int.h"

#define DUMMY_DEFAULT_SEED 0x5eed5eed5eed5eedull
#define DUMMY_MAX_THREADS 16
#define DUMMY_MIN_PER_THREAD (1 << 16) /* elements; below this a thread costs more than it saves */

typedef struct {
  const char *name;
  model_arch_t arch;
  int dim, n_layers, n_heads, n_kv_heads, head_dim, hidden_dim, vocab_size, max_seq_len;
  float rope_theta, norm_eps;
  int llama3_rope; /* factor 8, low 1, high 4, original context 8192 */
  dtype_t dtype;   /* default */
} dummy_preset_t;

static const dummy_preset_t g_presets[] = {
    {"tiny", ARCH_LLAMA, 64, 2, 4, 2, 16, 128, 512, 2048, 10000.0f, 1e-5f, 0, DTYPE_F32},
    {"llama-100m", ARCH_LLAMA, 768, 12, 12, 4, 64, 2048, 32000, 4096, 10000.0f, 1e-5f, 0, DTYPE_F32},
    {"llama3-8b", ARCH_LLAMA, 4096, 32, 32, 8, 128, 14336, 128256, 131072, 500000.0f, 1e-5f, 1, DTYPE_BF16},
    {"llama3-70b", ARCH_LLAMA, 8192, 80, 64, 8, 128, 28672, 128256, 131072, 500000.0f, 1e-5f, 1, DTYPE_BF16},
    {"qwen2-7b", ARCH_QWEN2, 3584, 28, 28, 4, 128, 18944, 152064, 32768, 1000000.0f, 1e-6f, 0, DTYPE_BF16},
};
#define N_PRESETS ((int)(sizeof(g_presets) / sizeof(g_presets[0])))

const char *const *model_dummy_presets(void) {
  static const char *const names[] = {"tiny", "llama-100m", "llama3-8b", "llama3-70b", "qwen2-7b", NULL};
  return names;
}

int ld_dummy_config(const char *preset, int dtype, model_cfg_t *c) {
  const dummy_preset_t *p = NULL;
  for (int i = 0; i < N_PRESETS; i++)
    if (strcmp(preset, g_presets[i].name) == 0) p = &g_presets[i];
  if (!p) return STRATA_ENOTFOUND;
  if (dtype < 0) dtype = (int)p->dtype;
  if (dtype != DTYPE_F32 && dtype != DTYPE_F16 && dtype != DTYPE_BF16) return STRATA_EUNSUPPORTED;
  *c = (model_cfg_t){
      .arch = p->arch, .dim = p->dim, .n_layers = p->n_layers, .n_heads = p->n_heads,
      .n_kv_heads = p->n_kv_heads, .head_dim = p->head_dim, .hidden_dim = p->hidden_dim,
      .vocab_size = p->vocab_size, .max_seq_len = p->max_seq_len, .norm_eps = p->norm_eps,
      .rope_theta = p->rope_theta, .rope_style = ROPE_STYLE_NEOX, .qkv_bias = p->arch == ARCH_QWEN2,
      .qk_norm = p->arch == ARCH_QWEN3, .tied_embeddings = 0, .bos_id = 256, .eos_ids = {257}, .n_eos = 1,
      .dtype = (dtype_t)dtype,
  };
  if (p->llama3_rope) {
    c->rope_scaling = ROPE_SCALING_LLAMA3;
    c->rope_factor = 8.0f;
    c->rope_low_freq_factor = 1.0f;
    c->rope_high_freq_factor = 4.0f;
    c->rope_orig_max_pos = 8192;
  }
  return 0;
}

/* One thread's share of a tensor fill: elements [begin, end). */
typedef struct {
  void *dst;
  dtype_t dtype;
  uint64_t seed, tensor;
  int64_t begin, end;
  float scale; /* 0: constant 1.0 (norms) */
} dummy_fill_t;

static void *dummy_fill_run(void *arg) {
  const dummy_fill_t *f = arg;
  const uint64_t key = dummy_tensor_key(f->seed, f->tensor);
  for (int64_t i = f->begin; i < f->end; i++) {
    float v = f->scale == 0.0f ? 1.0f : f->scale * dummy_value(key, (uint64_t)i);
    switch (f->dtype) {
      case DTYPE_F32: ((float *)f->dst)[i] = v; break;
      case DTYPE_F16: ((uint16_t *)f->dst)[i] = f32_to_f16(v); break;
      default: ((uint16_t *)f->dst)[i] = f32_to_bf16(v); break;
    }
  }
  return NULL;
}

/* dummy_fill: fills N elements of DST on up to DUMMY_MAX_THREADS threads (falling back to this
 * thread for whatever a thread could not be started for). */
static void dummy_fill(void *dst, dtype_t dtype, uint64_t seed, uint64_t tensor, int64_t n, float scale) {
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  int64_t n_threads = cpus < 1 ? 1 : cpus > DUMMY_MAX_THREADS ? DUMMY_MAX_THREADS : cpus;
  if (n_threads > n / DUMMY_MIN_PER_THREAD) n_threads = n / DUMMY_MIN_PER_THREAD;
  if (n_threads < 1) n_threads = 1;
  pthread_t th[DUMMY_MAX_THREADS];
  dummy_fill_t jobs[DUMMY_MAX_THREADS];
  int started[DUMMY_MAX_THREADS] = {0};
  for (int64_t t = 0; t < n_threads; t++) {
    jobs[t] = (dummy_fill_t){dst, dtype, seed, tensor, n * t / n_threads, n * (t + 1) / n_threads, scale};
    if (t > 0) started[t] = pthread_create(&th[t], NULL, dummy_fill_run, &jobs[t]) == 0;
  }
  dummy_fill_run(&jobs[0]);
  for (int64_t t = 1; t < n_threads; t++) {
    if (started[t])
      pthread_join(th[t], NULL);
    else
      dummy_fill_run(&jobs[t]);
  }
}

/* dummy_tensor: allocates and fills one (ROWS, COLS) weight. Matrices of the model dtype hold
 * uniform values in [-1/sqrt(cols), 1/sqrt(cols)] (activations stay O(1) through many layers);
 * NORM vectors are f32 ones; other vectors (biases) are f32 random of their matrix's scale. */
typedef enum { DUMMY_MATRIX, DUMMY_NORM, DUMMY_BIAS } dummy_kind_t;

static int dummy_tensor(model_t *m, weight_t *w, uint64_t seed, uint64_t idx, dummy_kind_t kind, int64_t rows,
                        int64_t cols, float bias_scale) {
  dtype_t dt = kind == DUMMY_MATRIX ? m->cfg.dtype : DTYPE_F32;
  if (kind == DUMMY_MATRIX && m->dummy_on_device) { /* the backend makes it where it lives (weight_t.gen) */
    *w = (weight_t){.dtype = dt, .rows = rows, .cols = cols,
                    .gen = {.on = 1, .scale = 1.0f / sqrtf((float)cols), .seed = seed, .tensor = idx}};
    return 0;
  }
  size_t bytes = dtype_row_bytes(dt, cols) * (size_t)rows;
  /* NOTE: plain malloc, no zero-fill: the fill touches each page once, on the filling thread. */
  void *p = malloc(bytes);
  if (!p) {
    log_error("%s: out of host memory allocating tensor %llu (%zu bytes); the preset needs %.1f GB",
              m->path, (unsigned long long)idx, bytes,
              (double)model_n_params(m) * (double)dtype_block_bytes(m->cfg.dtype) / 1e9);
    return STRATA_ENOMEM;
  }
  int rc = ld_storage_keep(m, p);
  if (rc) return rc;
  float scale = kind == DUMMY_NORM ? 0.0f : kind == DUMMY_BIAS ? bias_scale : 1.0f / sqrtf((float)cols);
  dummy_fill(p, dt, seed, idx, rows * cols, scale);
  *w = (weight_t){.data = p, .dtype = dt, .rows = rows, .cols = cols};
  return 0;
}

/* dummy_mem_check: refuses up front when the weights clearly exceed available memory; with
 * overcommit malloc would succeed and the OOM killer would end the process mid-fill instead. */
static int dummy_mem_check(const model_t *m) {
  double need = (double)model_n_params(m) * (double)dtype_block_bytes(m->cfg.dtype);
  FILE *f = fopen("/proc/meminfo", "r");
  if (!f) return 0;
  char line[256];
  double avail = -1, swap = 0;
  while (fgets(line, sizeof(line), f)) {
    unsigned long long kb;
    if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) avail = (double)kb * 1024;
    if (sscanf(line, "SwapFree: %llu kB", &kb) == 1) swap = (double)kb * 1024;
  }
  fclose(f);
  if (avail >= 0 && need > avail + swap) {
    log_error("%s: needs %.1f GB of host memory for its weights but only %.1f GB is available", m->path, need / 1e9,
              (avail + swap) / 1e9);
    return STRATA_ENOMEM;
  }
  return 0;
}

static int dummy_layer(model_t *m, int l, uint64_t seed) {
  const model_cfg_t *c = &m->cfg;
  layer_weights_t *lw = &m->w.layers[l];
  int64_t C = c->dim, F = c->hidden_dim, D = c->head_dim;
  int64_t QD = (int64_t)c->n_heads * D, KD = (int64_t)c->n_kv_heads * D;
  uint64_t base = 1 + (uint64_t)l * 16; /* tensor indices: 0 embedding, 16 per layer, then norm, output */
  float bs = 1.0f / sqrtf((float)C);
  int rc = 0;
  if ((rc = dummy_tensor(m, &lw->attn_norm, seed, base + 0, DUMMY_NORM, 1, C, 0)) ||
      (rc = dummy_tensor(m, &lw->wq, seed, base + 1, DUMMY_MATRIX, QD, C, 0)) ||
      (rc = dummy_tensor(m, &lw->wk, seed, base + 2, DUMMY_MATRIX, KD, C, 0)) ||
      (rc = dummy_tensor(m, &lw->wv, seed, base + 3, DUMMY_MATRIX, KD, C, 0)))
    return rc;
  if (c->qkv_bias && ((rc = dummy_tensor(m, &lw->bq, seed, base + 4, DUMMY_BIAS, 1, QD, bs)) ||
                      (rc = dummy_tensor(m, &lw->bk, seed, base + 5, DUMMY_BIAS, 1, KD, bs)) ||
                      (rc = dummy_tensor(m, &lw->bv, seed, base + 6, DUMMY_BIAS, 1, KD, bs))))
    return rc;
  if (c->qk_norm && ((rc = dummy_tensor(m, &lw->q_norm, seed, base + 7, DUMMY_NORM, 1, D, 0)) ||
                     (rc = dummy_tensor(m, &lw->k_norm, seed, base + 8, DUMMY_NORM, 1, D, 0))))
    return rc;
  if ((rc = dummy_tensor(m, &lw->wo, seed, base + 9, DUMMY_MATRIX, C, QD, 0)) ||
      (rc = dummy_tensor(m, &lw->ffn_norm, seed, base + 10, DUMMY_NORM, 1, C, 0)) ||
      (rc = dummy_tensor(m, &lw->w_gate, seed, base + 11, DUMMY_MATRIX, F, C, 0)) ||
      (rc = dummy_tensor(m, &lw->w_up, seed, base + 12, DUMMY_MATRIX, F, C, 0)) ||
      (rc = dummy_tensor(m, &lw->w_down, seed, base + 13, DUMMY_MATRIX, C, F, 0)))
    return rc;
  return 0;
}

int ld_load_dummy(model_t *m, const char *preset, const model_load_opts_t *opts) {
  int dtype = opts ? opts->dtype : -1;
  uint64_t seed = opts && opts->seed ? opts->seed : DUMMY_DEFAULT_SEED;
  int rc = ld_dummy_config(preset, dtype, &m->cfg);
  if (rc == STRATA_ENOTFOUND) {
    log_error("%s: unknown dummy preset '%s' (tiny, llama-100m, llama3-8b, llama3-70b, qwen2-7b)", m->path, preset);
    return rc;
  }
  if (rc == STRATA_EUNSUPPORTED) {
    log_error("%s: dummy weights can be f32, f16 or bf16, not %s", m->path, dtype_name((dtype_t)dtype));
    return rc;
  }
  snprintf(m->name, sizeof(m->name), "dummy:%.200s", preset);
  m->tokenizer_path[0] = 0;
  m->dummy_on_device = opts && opts->dummy_on_device;
  if (!m->dummy_on_device && (rc = dummy_mem_check(m)) != 0) return rc;
  const model_cfg_t *c = &m->cfg;
  m->w.layers = calloc((size_t)c->n_layers, sizeof(*m->w.layers));
  if (!m->w.layers) {
    log_error("%s: out of memory", m->path);
    return STRATA_ENOMEM;
  }
  uint64_t last = 1 + (uint64_t)c->n_layers * 16;
  if ((rc = dummy_tensor(m, &m->w.tok_embd, seed, 0, DUMMY_MATRIX, c->vocab_size, c->dim, 0)) != 0) return rc;
  for (int l = 0; l < c->n_layers; l++)
    if ((rc = dummy_layer(m, l, seed)) != 0) return rc;
  if ((rc = dummy_tensor(m, &m->w.out_norm, seed, last, DUMMY_NORM, 1, c->dim, 0)) != 0) return rc;
  return dummy_tensor(m, &m->w.output, seed, last + 1, DUMMY_MATRIX, c->vocab_size, c->dim, 0);
}
