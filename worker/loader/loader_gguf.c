/* loader_gguf.c: loads a GGUF v3 model file (llama, mistral, qwen2, qwen3) through common/gguf.h. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "worker/loader/loader_int.h"

static const ld_names_t gguf_names = {
    .tok_embd = "token_embd.weight",
    .out_norm = "output_norm.weight",
    .output = "output.weight",
    .attn_norm = "blk.%d.attn_norm.weight",
    .wq = "blk.%d.attn_q.weight",
    .wk = "blk.%d.attn_k.weight",
    .wv = "blk.%d.attn_v.weight",
    .wo = "blk.%d.attn_output.weight",
    .bq = "blk.%d.attn_q.bias",
    .bk = "blk.%d.attn_k.bias",
    .bv = "blk.%d.attn_v.bias",
    .q_norm = "blk.%d.attn_q_norm.weight",
    .k_norm = "blk.%d.attn_k_norm.weight",
    .ffn_norm = "blk.%d.ffn_norm.weight",
    .w_gate = "blk.%d.ffn_gate.weight",
    .w_up = "blk.%d.ffn_up.weight",
    .w_down = "blk.%d.ffn_down.weight",
    .cfg_source = "the GGUF metadata",
};

/* GGML type names, for messages about types we cannot load. */
static const char *gguf_type_name(uint32_t t) {
  static const char *names[] = {
      "F32",     "F16",    "Q4_0",   "Q4_1",  "Q4_2(removed)", "Q4_3(removed)", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
      "Q2_K",    "Q3_K",   "Q4_K",   "Q5_K",  "Q6_K",          "Q8_K",          "IQ2_XXS", "IQ2_XS", "IQ3_XXS",
      "IQ1_S",   "IQ4_NL", "IQ3_S",  "IQ2_S", "IQ4_XS",        "I8",            "I16",  "I32",  "I64",  "F64",
      "IQ1_M",   "BF16",
  };
  return t < sizeof(names) / sizeof(names[0]) ? names[t] : "unknown GGML type";
}

typedef struct {
  model_t *m;
  const gguf_file_t *f;
  const char *path;
  char arch[16];
} gguf_ctx_t;

/* gguf_int: integer metadata "<arch>.<KEY>" (or KEY itself when RAW) in [LO, HI]; DEF when absent
 * (INT_MIN: required). */
static int gguf_int(gguf_ctx_t *g, const char *key, int raw, int def, int lo, int hi, int *out) {
  char full[160];
  snprintf(full, sizeof(full), raw ? "%s%s" : "%s.%s", raw ? "" : g->arch, key);
  int64_t v;
  int rc = gguf_get_i64(g->f, full, &v);
  if (rc == STRATA_ENOTFOUND && def != INT_MIN) {
    *out = def;
    return 0;
  }
  if (rc == STRATA_ENOTFOUND) {
    log_error("%s: missing metadata '%s'", g->path, full);
    return STRATA_EFORMAT;
  }
  if (rc || v < lo || v > hi) {
    log_error("%s: metadata '%s' must be an integer in [%d, %d]", g->path, full, lo, hi);
    return STRATA_EFORMAT;
  }
  *out = (int)v;
  return 0;
}

static int gguf_float(gguf_ctx_t *g, const char *key, float def, float *out) {
  char full[160];
  snprintf(full, sizeof(full), "%s.%s", g->arch, key);
  int rc = gguf_get_f32(g->f, full, out);
  if (rc == STRATA_ENOTFOUND) {
    *out = def;
    return 0;
  }
  if (rc || !isfinite(*out)) {
    log_error("%s: metadata '%s' must be a finite number", g->path, full);
    return STRATA_EFORMAT;
  }
  return 0;
}

static int gguf_arch(gguf_ctx_t *g) {
  static const struct {
    const char *name;
    model_arch_t arch;
  } archs[] = {{"llama", ARCH_LLAMA}, {"mistral", ARCH_MISTRAL}, {"qwen2", ARCH_QWEN2}, {"qwen3", ARCH_QWEN3}};
  gguf_str_t s;
  int rc = gguf_get_str(g->f, "general.architecture", &s);
  if (rc) {
    log_error("%s: missing or non-string metadata 'general.architecture'", g->path);
    return STRATA_EFORMAT;
  }
  for (size_t i = 0; i < sizeof(archs) / sizeof(archs[0]); i++) {
    if (gguf_str_eq(s, archs[i].name)) {
      g->m->cfg.arch = archs[i].arch;
      snprintf(g->arch, sizeof(g->arch), "%s", archs[i].name);
      return 0;
    }
  }
  log_error("%s: architecture '%.*s' is not supported (supported: llama, mistral, qwen2, qwen3)", g->path,
            (int)(s.len > 64 ? 64 : s.len), s.ptr);
  return STRATA_EUNSUPPORTED;
}

static int gguf_rope_scaling(gguf_ctx_t *g) {
  model_cfg_t *c = &g->m->cfg;
  char key[160];
  gguf_str_t s;
  snprintf(key, sizeof(key), "%s.rope.scaling.type", g->arch);
  int rc = gguf_get_str(g->f, key, &s);
  if (rc == STRATA_ENOTFOUND || (rc == 0 && gguf_str_eq(s, "none"))) return 0;
  if (rc) {
    log_error("%s: metadata '%s' must be a string", g->path, key);
    return STRATA_EFORMAT;
  }
  if (gguf_str_eq(s, "linear")) {
    c->rope_scaling = ROPE_SCALING_LINEAR;
  } else if (gguf_str_eq(s, "llama3")) {
    c->rope_scaling = ROPE_SCALING_LLAMA3;
    c->rope_low_freq_factor = 1.0f; /* Meta's published values; GGUF has no keys for them */
    c->rope_high_freq_factor = 4.0f;
    if ((rc = gguf_int(g, "rope.scaling.original_context_length", 0, 8192, 1, INT_MAX, &c->rope_orig_max_pos)) != 0)
      return rc;
  } else {
    log_error("%s: RoPE scaling type '%.*s' is not supported (supported: none, linear, llama3)", g->path,
              (int)(s.len > 64 ? 64 : s.len), s.ptr);
    return STRATA_EUNSUPPORTED;
  }
  if ((rc = gguf_float(g, "rope.scaling.factor", 0.0f, &c->rope_factor)) != 0) return rc;
  return 0;
}

/* gguf_rope_freqs: llama.cpp stores Llama 3.1-style scaling as a tensor of per-frequency divisors
 * (rope_freqs.weight) rather than metadata. When the metadata gives no scaling, recognise the tensor
 * as llama3 scaling with Meta's parameters (factor = last divisor, low 1, high 4, original 8192),
 * checking every divisor; anything else is ignored with a warning. */
static void gguf_rope_freqs(gguf_ctx_t *g) {
  model_cfg_t *c = &g->m->cfg;
  const gguf_tensor_t *t = gguf_find_tensor(g->f, "rope_freqs.weight");
  int n = c->head_dim / 2;
  if (!t || c->rope_scaling != ROPE_SCALING_NONE) return;
  if (t->dtype != DTYPE_F32 || t->n_dims != 1 || t->ne[0] != n) {
    log_warn("%s: ignoring rope_freqs.weight (not %d f32 values)", g->path, n);
    return;
  }
  const float *f = t->data;
  float factor, lo = 1.0f, hi = 4.0f, orig = 8192.0f;
  memcpy(&factor, &f[n - 1], sizeof(factor));
  int ok = isfinite(factor) && factor >= 1.0f;
  for (int i = 0; ok && i < n; i++) {
    double freq = pow((double)c->rope_theta, -2.0 * i / c->head_dim), wavelen = 2 * M_PI / freq, want;
    if (wavelen < orig / hi)
      want = 1.0;
    else if (wavelen > orig / lo)
      want = factor;
    else {
      double smooth = (orig / wavelen - lo) / (hi - lo);
      want = 1.0 / ((1 - smooth) / factor + smooth);
    }
    float v;
    memcpy(&v, &f[i], sizeof(v));
    ok = fabs(v - want) <= 1e-3 * want;
  }
  if (!ok) {
    log_warn("%s: rope_freqs.weight does not match llama3 RoPE scaling (factor %g, low 1, high 4, original "
             "8192); ignoring it, so positions beyond the original context may degrade",
             g->path, (double)factor);
    return;
  }
  if (factor == 1.0f) return;
  c->rope_scaling = ROPE_SCALING_LLAMA3;
  c->rope_factor = factor;
  c->rope_low_freq_factor = lo;
  c->rope_high_freq_factor = hi;
  c->rope_orig_max_pos = (int)orig;
}

static int gguf_special_ids(gguf_ctx_t *g) {
  model_cfg_t *c = &g->m->cfg;
  int rc, id;
  if ((rc = gguf_int(g, "tokenizer.ggml.bos_token_id", 1, -1, -1, INT_MAX, &c->bos_id)) != 0) return rc;
  /* NOTE: end-of-turn / end-of-message tokens stop generation as EOS does (Llama 3 instruct). */
  static const char *eos_keys[] = {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                   "tokenizer.ggml.eom_token_id"};
  for (int i = 0; i < 3; i++) {
    if ((rc = gguf_int(g, eos_keys[i], 1, -1, -1, INT_MAX, &id)) != 0) return rc;
    if (id >= 0) ld_add_eos(c, id);
  }
  return 0;
}

/* gguf_output_tied: whether the output projection is the embedding: no output.weight, or one that is
 * a byte-for-byte copy of token_embd.weight (llama2.c exports write the tied matrix twice; sharing it
 * halves the memory the backend uploads). memcmp stops at the first difference, so untied models pay
 * almost nothing. */
static int gguf_output_tied(const gguf_file_t *f) {
  const gguf_tensor_t *out = gguf_find_tensor(f, "output.weight"), *emb = gguf_find_tensor(f, "token_embd.weight");
  if (!out) return 1;
  if (!emb || !out->data || !emb->data || out->dtype != emb->dtype || out->n_bytes != emb->n_bytes ||
      out->n_dims != emb->n_dims || out->ne[0] != emb->ne[0] || out->ne[1] != emb->ne[1])
    return 0;
  return memcmp(out->data, emb->data, (size_t)out->n_bytes) == 0;
}

static int gguf_parse_config(gguf_ctx_t *g) {
  model_cfg_t *c = &g->m->cfg;
  int rc, rope_dims;
  if ((rc = gguf_arch(g)) != 0) return rc;
  if ((rc = gguf_int(g, "embedding_length", 0, INT_MIN, 1, INT_MAX, &c->dim)) != 0) return rc;
  if ((rc = gguf_int(g, "block_count", 0, INT_MIN, 1, INT_MAX, &c->n_layers)) != 0) return rc;
  if ((rc = gguf_int(g, "feed_forward_length", 0, INT_MIN, 1, INT_MAX, &c->hidden_dim)) != 0) return rc;
  if ((rc = gguf_int(g, "attention.head_count", 0, INT_MIN, 1, INT_MAX, &c->n_heads)) != 0) return rc;
  if ((rc = gguf_int(g, "attention.head_count_kv", 0, c->n_heads, 1, INT_MAX, &c->n_kv_heads)) != 0) return rc;
  if ((rc = gguf_int(g, "attention.key_length", 0, c->dim / c->n_heads, 1, INT_MAX, &c->head_dim)) != 0) return rc;
  if ((rc = gguf_int(g, "context_length", 0, 2048, 1, INT_MAX, &c->max_seq_len)) != 0) return rc;
  if ((rc = gguf_int(g, "rope.dimension_count", 0, c->head_dim, 1, INT_MAX, &rope_dims)) != 0) return rc;
  if (rope_dims != c->head_dim) {
    log_error("%s: partial rotary embeddings (%d of %d head dims) are not supported", g->path, rope_dims,
              c->head_dim);
    return STRATA_EUNSUPPORTED;
  }
  if ((rc = gguf_float(g, "attention.layer_norm_rms_epsilon", 1e-5f, &c->norm_eps)) != 0) return rc;
  if ((rc = gguf_float(g, "rope.freq_base", 10000.0f, &c->rope_theta)) != 0) return rc;
  if ((rc = gguf_rope_scaling(g)) != 0) return rc;
  if (c->arch == ARCH_MISTRAL &&
      (rc = gguf_int(g, "attention.sliding_window", 0, 0, 0, INT_MAX, &c->sliding_window)) != 0)
    return rc;
  /* NOTE: llama.cpp permutes llama/mistral Q and K rows at conversion so that RoPE rotates adjacent
   * pairs; qwen2/qwen3 are converted unpermuted and keep rotate-half. */
  c->rope_style = (c->arch == ARCH_QWEN2 || c->arch == ARCH_QWEN3) ? ROPE_STYLE_NEOX : ROPE_STYLE_NORM;
  c->qk_norm = c->arch == ARCH_QWEN3;
  c->qkv_bias = c->arch == ARCH_QWEN2 || gguf_find_tensor(g->f, "blk.0.attn_q.bias") != NULL;
  c->tied_embeddings = gguf_output_tied(g->f);
  /* The vocabulary: the embedding's rows, else the embedded tokenizer's token count. NOTE: converters
   * may pad the embedding past the tokenizer (Qwen2: 152064 rows, 151646 tokens), never the reverse:
   * a token without a row would index out of bounds. */
  const gguf_kv_t *tok = gguf_find(g->f, "tokenizer.ggml.tokens");
  const gguf_tensor_t *emb = gguf_find_tensor(g->f, "token_embd.weight");
  uint64_t n_tok = tok && tok->type == GGUF_TYPE_ARRAY ? tok->arr_len : 0;
  if (emb && emb->n_dims == 2 && emb->ne[1] <= INT_MAX) {
    c->vocab_size = (int)emb->ne[1];
    if (n_tok > (uint64_t)c->vocab_size) {
      log_error("%s: the tokenizer has %llu tokens but token_embd.weight only %d rows", g->path,
                (unsigned long long)n_tok, c->vocab_size);
      return STRATA_EFORMAT;
    }
  } else if (n_tok > 0 && n_tok <= INT_MAX) {
    c->vocab_size = (int)n_tok;
  } else {
    log_error("%s: no vocabulary size (no tokenizer.ggml.tokens and no 2-D token_embd.weight)", g->path);
    return STRATA_EFORMAT;
  }
  if ((rc = ld_cfg_check(c, g->path)) != 0) return rc;
  gguf_rope_freqs(g);
  return gguf_special_ids(g);
}

/* gguf_table: the file's tensors in PyTorch dim order (GGUF's ne[0] is the row length). */
static int gguf_table(gguf_ctx_t *g, ld_table_t *tab) {
  int rc;
  for (uint64_t i = 0; i < g->f->n_tensors; i++) {
    const gguf_tensor_t *gt = &g->f->tensors[i];
    ld_tensor_t t = {.name = gt->name.ptr, .name_len = (size_t)gt->name.len, .dtype = gt->dtype,
                     .n_dims = (int)gt->n_dims, .data = gt->data, .n_bytes = (size_t)gt->n_bytes, .file = g->path};
    t.dtype_str = gt->dtype >= 0 ? dtype_name((dtype_t)gt->dtype) : gguf_type_name(gt->ggml_type);
    if (t.n_dims > 4) t.n_dims = 4;
    for (int d = 0; d < t.n_dims; d++) t.shape[d] = gt->ne[t.n_dims - 1 - d];
    if ((rc = ld_table_push(tab, &t)) != 0) return rc;
  }
  return ld_table_sort(tab, g->path);
}

int ld_load_gguf(model_t *m, const char *path) {
  ld_table_t tab = {0};
  int rc;
  ld_set_names(m, path, path);
  m->storage->gguf = calloc(1, sizeof(gguf_file_t));
  if (!m->storage->gguf) {
    log_error("%s: out of memory", path);
    return STRATA_ENOMEM;
  }
  if ((rc = gguf_open(m->storage->gguf, path)) != 0) {
    free(m->storage->gguf); /* NOTE: gguf_open cleans up after itself on failure */
    m->storage->gguf = NULL;
    return rc;
  }
  gguf_ctx_t g = {.m = m, .f = m->storage->gguf, .path = path};
  if ((rc = gguf_parse_config(&g)) != 0) goto done;
  if ((rc = gguf_table(&g, &tab)) != 0) goto done;
  rc = ld_bind_weights(m, &tab, &gguf_names, path);
done:
  ld_table_free(&tab);
  return rc;
}
