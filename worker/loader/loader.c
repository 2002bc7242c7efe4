/* loader.c: model_load's front door (HF directory, GGUF file or dummy preset), the shared weight
 * binding and validation, and model_free / model_n_params. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "worker/loader/loader_int.h"

/* ---- storage ---- */

int ld_storage_new(model_t *m) {
  m->storage = calloc(1, sizeof(*m->storage));
  if (!m->storage) {
    log_error("%s: out of memory", m->path);
    return STRATA_ENOMEM;
  }
  return 0;
}

int ld_storage_keep(model_t *m, void *p) {
  model_storage_t *s = m->storage;
  if (s->n_bufs == s->cap_bufs) {
    int cap = s->cap_bufs ? s->cap_bufs * 2 : 64;
    void **nb = realloc(s->bufs, (size_t)cap * sizeof(*nb));
    if (!nb) {
      free(p);
      log_error("%s: out of memory", m->path);
      return STRATA_ENOMEM;
    }
    s->bufs = nb;
    s->cap_bufs = cap;
  }
  s->bufs[s->n_bufs++] = p;
  return 0;
}

int ld_storage_add_map(model_t *m, const file_map_t *map) {
  model_storage_t *s = m->storage;
  if (s->n_maps == s->cap_maps) {
    int cap = s->cap_maps ? s->cap_maps * 2 : 4;
    file_map_t *nm = realloc(s->maps, (size_t)cap * sizeof(*nm));
    if (!nm) {
      log_error("%s: out of memory", m->path);
      return STRATA_ENOMEM;
    }
    s->maps = nm;
    s->cap_maps = cap;
  }
  s->maps[s->n_maps++] = *map;
  return 0;
}

static void ld_storage_free(model_storage_t *s) {
  if (!s) return;
  for (int i = 0; i < s->n_maps; i++) file_unmap(&s->maps[i]);
  for (int i = 0; i < s->n_bufs; i++) free(s->bufs[i]);
  if (s->gguf) {
    gguf_close(s->gguf);
    free(s->gguf);
  }
  free(s->maps);
  free(s->bufs);
  free(s);
}

/* ---- tensor table ---- */

int ld_table_push(ld_table_t *tab, const ld_tensor_t *t) {
  if (tab->n == tab->cap) {
    size_t cap = tab->cap ? tab->cap * 2 : 256;
    ld_tensor_t *nt = realloc(tab->t, cap * sizeof(*nt));
    if (!nt) {
      log_error("out of memory building the tensor table");
      return STRATA_ENOMEM;
    }
    tab->t = nt;
    tab->cap = cap;
  }
  tab->t[tab->n++] = *t;
  return 0;
}

static int ld_name_cmp(const char *a, size_t na, const char *b, size_t nb) {
  int c = memcmp(a, b, na < nb ? na : nb);
  if (c) return c;
  return na < nb ? -1 : na > nb;
}

static int ld_tensor_cmp(const void *pa, const void *pb) {
  const ld_tensor_t *a = pa, *b = pb;
  return ld_name_cmp(a->name, a->name_len, b->name, b->name_len);
}

int ld_table_sort(ld_table_t *tab, const char *file) {
  if (tab->n > 1) qsort(tab->t, tab->n, sizeof(*tab->t), ld_tensor_cmp);
  for (size_t i = 1; i < tab->n; i++) {
    if (ld_tensor_cmp(&tab->t[i - 1], &tab->t[i]) == 0) {
      log_error("%s: tensor '%.*s' appears twice", file, (int)tab->t[i].name_len, tab->t[i].name);
      return STRATA_EFORMAT;
    }
  }
  return 0;
}

const ld_tensor_t *ld_table_find(const ld_table_t *tab, const char *name) {
  size_t lo = 0, hi = tab->n, n = strlen(name);
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = ld_name_cmp(tab->t[mid].name, tab->t[mid].name_len, name, n);
    if (c == 0) return &tab->t[mid];
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

void ld_table_free(ld_table_t *tab) {
  free(tab->t);
  tab->t = NULL;
  tab->n = tab->cap = 0;
}

/* ---- binding ---- */

typedef struct {
  model_t *m;
  const ld_table_t *tab;
  const ld_names_t *names;
  const char *where;
} ld_bind_t;

static void ld_fmt_shape(char *buf, size_t n, const int64_t *shape, int n_dims) {
  size_t o = 0;
  o += (size_t)snprintf(buf + o, n - o, "[");
  for (int i = 0; i < n_dims && o < n; i++)
    o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (o < n) snprintf(buf + o, n - o, "]");
}

/* ld_find_checked: the tensor NAME with N_DIMS dims of exactly SHAPE, of a supported dtype whose
 * byte size matches; NULL (and *RC set, logged) otherwise. A missing optional tensor gives NULL and
 * *RC = 0. */
static const ld_tensor_t *ld_find_checked(ld_bind_t *b, const char *name, int n_dims, const int64_t *shape,
                                          int optional, int *rc) {
  *rc = 0;
  const ld_tensor_t *t = ld_table_find(b->tab, name);
  char got[128], want[128];
  if (!t) {
    if (optional) return NULL;
    log_error("%s: tensor '%s' is missing (%s requires it)", b->where, name, b->names->cfg_source);
    *rc = STRATA_EFORMAT;
    return NULL;
  }
  int ok = t->n_dims == n_dims;
  for (int i = 0; ok && i < n_dims; i++) ok = t->shape[i] == shape[i];
  if (!ok) {
    ld_fmt_shape(got, sizeof(got), t->shape, t->n_dims);
    ld_fmt_shape(want, sizeof(want), shape, n_dims);
    log_error("%s: tensor '%s' has shape %s, expected %s from %s", t->file, name, got, want, b->names->cfg_source);
    *rc = STRATA_EFORMAT;
    return NULL;
  }
  if (t->dtype < 0 || t->dtype == DTYPE_I32) {
    log_error("%s: tensor '%s' has dtype %s, which is not supported", t->file, name, t->dtype_str);
    *rc = STRATA_EUNSUPPORTED;
    return NULL;
  }
  int64_t cols = shape[n_dims - 1], rows = n_dims == 2 ? shape[0] : 1;
  size_t row_bytes = dtype_row_bytes((dtype_t)t->dtype, cols);
  if (row_bytes == 0 || row_bytes * (size_t)rows != t->n_bytes) {
    ld_fmt_shape(want, sizeof(want), shape, n_dims);
    log_error("%s: tensor '%s' (%s, shape %s) holds %zu bytes, which does not match its shape", t->file, name,
              t->dtype_str, want, t->n_bytes);
    *rc = STRATA_EFORMAT;
    return NULL;
  }
  return t;
}

static int ld_bind_matrix(ld_bind_t *b, weight_t *w, const char *name, int64_t rows, int64_t cols, int optional) {
  int64_t shape[2] = {rows, cols};
  int rc;
  const ld_tensor_t *t = ld_find_checked(b, name, 2, shape, optional, &rc);
  if (!t) return rc;
  const void *data = t->data;
  size_t align = t->dtype == DTYPE_F32 ? 4 : 2;
  if ((uintptr_t)data % align) {
    /* NOTE: safetensors does not promise aligned data; kernels may load f32 directly, so a misaligned
     * tensor gets an aligned copy rather than undefined behaviour. */
    void *copy = malloc(t->n_bytes ? t->n_bytes : 1);
    if (!copy) {
      log_error("%s: out of memory copying tensor '%s' (%zu bytes)", t->file, name, t->n_bytes);
      return STRATA_ENOMEM;
    }
    memcpy(copy, data, t->n_bytes);
    if ((rc = ld_storage_keep(b->m, copy)) != 0) return rc;
    data = copy;
  }
  *w = (weight_t){.data = data, .dtype = (dtype_t)t->dtype, .rows = rows, .cols = cols};
  return 0;
}

static int ld_bind_vector(ld_bind_t *b, weight_t *w, const char *name, int64_t n) {
  int rc;
  const ld_tensor_t *t = ld_find_checked(b, name, 1, &n, 0, &rc);
  if (!t) return rc;
  float *f = malloc((size_t)n * sizeof(float));
  if (!f) {
    log_error("%s: out of memory converting tensor '%s'", t->file, name);
    return STRATA_ENOMEM;
  }
  if (dtype_to_f32((dtype_t)t->dtype, t->data, f, n) != 0) {
    log_error("%s: tensor '%s' has dtype %s, which cannot be converted to f32", t->file, name, t->dtype_str);
    free(f);
    return STRATA_EUNSUPPORTED;
  }
  if ((rc = ld_storage_keep(b->m, f)) != 0) return rc;
  *w = (weight_t){.data = f, .dtype = DTYPE_F32, .rows = 1, .cols = n};
  return 0;
}

static int ld_bind_layer(ld_bind_t *b, int l) {
  const model_cfg_t *c = &b->m->cfg;
  const ld_names_t *nm = b->names;
  layer_weights_t *lw = &b->m->w.layers[l];
  int64_t C = c->dim, F = c->hidden_dim, D = c->head_dim;
  int64_t QD = (int64_t)c->n_heads * D, KD = (int64_t)c->n_kv_heads * D;
  char name[256];
  int rc = 0;
#define LD_NAME(fmt) (snprintf(name, sizeof(name), fmt, l), name)
  if ((rc = ld_bind_vector(b, &lw->attn_norm, LD_NAME(nm->attn_norm), C)) != 0) return rc;
  if ((rc = ld_bind_matrix(b, &lw->wq, LD_NAME(nm->wq), QD, C, 0)) != 0) return rc;
  if ((rc = ld_bind_matrix(b, &lw->wk, LD_NAME(nm->wk), KD, C, 0)) != 0) return rc;
  if ((rc = ld_bind_matrix(b, &lw->wv, LD_NAME(nm->wv), KD, C, 0)) != 0) return rc;
  if (c->qkv_bias) {
    if ((rc = ld_bind_vector(b, &lw->bq, LD_NAME(nm->bq), QD)) != 0) return rc;
    if ((rc = ld_bind_vector(b, &lw->bk, LD_NAME(nm->bk), KD)) != 0) return rc;
    if ((rc = ld_bind_vector(b, &lw->bv, LD_NAME(nm->bv), KD)) != 0) return rc;
  }
  if (c->qk_norm) {
    if ((rc = ld_bind_vector(b, &lw->q_norm, LD_NAME(nm->q_norm), D)) != 0) return rc;
    if ((rc = ld_bind_vector(b, &lw->k_norm, LD_NAME(nm->k_norm), D)) != 0) return rc;
  }
  if ((rc = ld_bind_matrix(b, &lw->wo, LD_NAME(nm->wo), C, QD, 0)) != 0) return rc;
  if ((rc = ld_bind_vector(b, &lw->ffn_norm, LD_NAME(nm->ffn_norm), C)) != 0) return rc;
  if ((rc = ld_bind_matrix(b, &lw->w_gate, LD_NAME(nm->w_gate), F, C, 0)) != 0) return rc;
  if ((rc = ld_bind_matrix(b, &lw->w_up, LD_NAME(nm->w_up), F, C, 0)) != 0) return rc;
  if ((rc = ld_bind_matrix(b, &lw->w_down, LD_NAME(nm->w_down), C, F, 0)) != 0) return rc;
#undef LD_NAME
  return 0;
}

int ld_bind_weights(model_t *m, const ld_table_t *tab, const ld_names_t *names, const char *where) {
  ld_bind_t b = {.m = m, .tab = tab, .names = names, .where = where};
  model_cfg_t *c = &m->cfg;
  int rc;
  m->w.layers = calloc((size_t)c->n_layers, sizeof(*m->w.layers));
  if (!m->w.layers) {
    log_error("%s: out of memory", where);
    return STRATA_ENOMEM;
  }
  if ((rc = ld_bind_matrix(&b, &m->w.tok_embd, names->tok_embd, c->vocab_size, c->dim, 0)) != 0) return rc;
  for (int l = 0; l < c->n_layers; l++)
    if ((rc = ld_bind_layer(&b, l)) != 0) return rc;
  if ((rc = ld_bind_vector(&b, &m->w.out_norm, names->out_norm, c->dim)) != 0) return rc;
  if (c->tied_embeddings)
    m->w.output = m->w.tok_embd; /* NOTE: a tied checkpoint may still carry lm_head: HF ignores it too */
  else if ((rc = ld_bind_matrix(&b, &m->w.output, names->output, c->vocab_size, c->dim, 0)) != 0)
    return rc;
  c->dtype = m->w.layers[0].wq.dtype;
  return 0;
}

/* ---- config checks ---- */

void ld_add_eos(model_cfg_t *cfg, int id) {
  for (int i = 0; i < cfg->n_eos; i++)
    if (cfg->eos_ids[i] == id) return;
  if (cfg->n_eos < MODEL_MAX_EOS) cfg->eos_ids[cfg->n_eos++] = id;
}

#define LD_CHECK(cond, ...)              \
  do {                                   \
    if (!(cond)) {                       \
      log_error(__VA_ARGS__);            \
      return STRATA_EFORMAT;             \
    }                                    \
  } while (0)

int ld_cfg_check(const model_cfg_t *c, const char *file) {
  LD_CHECK(c->dim >= 1 && c->dim <= (1 << 17), "%s: hidden size %d is out of range [1, 131072]", file, c->dim);
  LD_CHECK(c->n_layers >= 1 && c->n_layers <= 1024, "%s: layer count %d is out of range [1, 1024]", file,
           c->n_layers);
  LD_CHECK(c->n_heads >= 1 && c->n_heads <= 1024, "%s: head count %d is out of range [1, 1024]", file, c->n_heads);
  LD_CHECK(c->n_kv_heads >= 1 && c->n_kv_heads <= c->n_heads && c->n_heads % c->n_kv_heads == 0,
           "%s: KV head count %d must divide the head count %d", file, c->n_kv_heads, c->n_heads);
  LD_CHECK(c->head_dim >= 2 && c->head_dim <= 1024 && c->head_dim % 2 == 0,
           "%s: head dim %d must be even and in [2, 1024]", file, c->head_dim);
  LD_CHECK(c->hidden_dim >= 1 && c->hidden_dim <= (1 << 20), "%s: FFN size %d is out of range [1, 1048576]", file,
           c->hidden_dim);
  LD_CHECK(c->vocab_size >= 1 && c->vocab_size <= (1 << 22), "%s: vocab size %d is out of range [1, 4194304]", file,
           c->vocab_size);
  LD_CHECK(c->max_seq_len >= 1, "%s: context length %d must be positive", file, c->max_seq_len);
  LD_CHECK(isfinite(c->norm_eps) && c->norm_eps > 0 && c->norm_eps < 1, "%s: RMSNorm eps %g is out of range (0, 1)",
           file, (double)c->norm_eps);
  LD_CHECK(isfinite(c->rope_theta) && c->rope_theta > 1, "%s: RoPE theta %g must be > 1", file,
           (double)c->rope_theta);
  if (c->rope_scaling != ROPE_SCALING_NONE)
    LD_CHECK(isfinite(c->rope_factor) && c->rope_factor > 0, "%s: RoPE scaling factor %g must be positive", file,
             (double)c->rope_factor);
  if (c->rope_scaling == ROPE_SCALING_LLAMA3) {
    LD_CHECK(isfinite(c->rope_low_freq_factor) && isfinite(c->rope_high_freq_factor) && c->rope_low_freq_factor > 0 &&
                 c->rope_high_freq_factor > c->rope_low_freq_factor,
             "%s: llama3 RoPE scaling needs 0 < low_freq_factor (%g) < high_freq_factor (%g)", file,
             (double)c->rope_low_freq_factor, (double)c->rope_high_freq_factor);
    LD_CHECK(c->rope_orig_max_pos >= 1, "%s: llama3 RoPE scaling needs original_max_position_embeddings", file);
  }
  return 0;
}

/* ld_cfg_fix_ids: special-token ids outside the vocabulary are dropped (with a warning): they can
 * never be sampled, and indexing with them would be out of bounds. */
static void ld_cfg_fix_ids(model_cfg_t *c, const char *file) {
  if (c->bos_id >= c->vocab_size || c->bos_id < -1) {
    log_warn("%s: BOS id %d is outside the vocabulary (%d); ignoring it", file, c->bos_id, c->vocab_size);
    c->bos_id = -1;
  }
  int n = 0;
  for (int i = 0; i < c->n_eos; i++) {
    if (c->eos_ids[i] >= 0 && c->eos_ids[i] < c->vocab_size)
      c->eos_ids[n++] = c->eos_ids[i];
    else
      log_warn("%s: EOS id %d is outside the vocabulary (%d); ignoring it", file, c->eos_ids[i], c->vocab_size);
  }
  c->n_eos = n;
}

void ld_set_names(model_t *m, const char *path, const char *tokenizer_path) {
  snprintf(m->path, sizeof(m->path), "%s", path);
  size_t n = strlen(path);
  while (n > 1 && path[n - 1] == '/') n--; /* "dir/" names "dir" */
  size_t start = n;
  while (start > 0 && path[start - 1] != '/') start--;
  snprintf(m->name, sizeof(m->name), "%.*s", (int)(n - start), path + start);
  snprintf(m->tokenizer_path, sizeof(m->tokenizer_path), "%s", tokenizer_path);
}

/* ---- public API ---- */

int model_load(model_t **out, const char *path, const model_load_opts_t *opts) {
  *out = NULL;
  if (!path || !*path) {
    log_error("model_load: empty model path");
    return STRATA_EINVAL;
  }
  if (strlen(path) >= sizeof(((model_t *)0)->path)) {
    log_error("%.64s...: model path too long", path);
    return STRATA_EINVAL;
  }
  model_t *m = calloc(1, sizeof(*m));
  if (!m) {
    log_error("%s: out of memory", path);
    return STRATA_ENOMEM;
  }
  snprintf(m->path, sizeof(m->path), "%s", path);
  int rc = ld_storage_new(m);
  if (rc) goto fail;
  if (strncmp(path, "dummy:", 6) == 0) {
    rc = ld_load_dummy(m, path + 6, opts);
  } else if (path_is_dir(path)) {
    rc = ld_load_hf(m, path);
  } else if (path_exists(path)) {
    rc = ld_load_gguf(m, path);
  } else {
    log_error("%s: no such model directory or file", path);
    rc = STRATA_ENOTFOUND;
  }
  if (rc) goto fail;
  ld_cfg_fix_ids(&m->cfg, path);
  *out = m;
  return 0;
fail:
  model_free(m);
  return rc;
}

void model_free(model_t *m) {
  if (!m) return;
  ld_storage_free(m->storage);
  free(m->w.layers);
  free(m);
}

int64_t model_n_params(const model_t *m) {
  const model_cfg_t *c = &m->cfg;
  int64_t C = c->dim, F = c->hidden_dim, D = c->head_dim, V = c->vocab_size;
  int64_t QD = (int64_t)c->n_heads * D, KD = (int64_t)c->n_kv_heads * D;
  int64_t layer = 2 * C                        /* attn_norm, ffn_norm */
                  + QD * C + 2 * KD * C + C * QD /* wq, wk, wv, wo */
                  + 3 * F * C;                 /* gate, up, down */
  if (c->qkv_bias) layer += QD + 2 * KD;
  if (c->qk_norm) layer += 2 * D;
  int64_t n = V * C + layer * c->n_layers + C;
  if (!c->tied_embeddings) n += V * C;
  return n;
}
