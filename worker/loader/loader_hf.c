/* loader_hf.c: loads a Hugging Face model directory: config.json (+ generation_config.json) and
 * model.safetensors or sharded safetensors with model.safetensors.index.json. */
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "worker/loader/loader_int.h"

#define HF_MAX_JSON_BYTES (64u << 20)
#define HF_MAX_HEADER_BYTES (100u << 20) /* the safetensors format's own limit */
#define HF_MAX_SHARDS 4096
#define HF_REQUIRED INT_MIN

static const ld_names_t hf_names = {
    .tok_embd = "model.embed_tokens.weight",
    .out_norm = "model.norm.weight",
    .output = "lm_head.weight",
    .attn_norm = "model.layers.%d.input_layernorm.weight",
    .wq = "model.layers.%d.self_attn.q_proj.weight",
    .wk = "model.layers.%d.self_attn.k_proj.weight",
    .wv = "model.layers.%d.self_attn.v_proj.weight",
    .wo = "model.layers.%d.self_attn.o_proj.weight",
    .bq = "model.layers.%d.self_attn.q_proj.bias",
    .bk = "model.layers.%d.self_attn.k_proj.bias",
    .bv = "model.layers.%d.self_attn.v_proj.bias",
    .q_norm = "model.layers.%d.self_attn.q_norm.weight",
    .k_norm = "model.layers.%d.self_attn.k_norm.weight",
    .ffn_norm = "model.layers.%d.post_attention_layernorm.weight",
    .w_gate = "model.layers.%d.mlp.gate_proj.weight",
    .w_up = "model.layers.%d.mlp.up_proj.weight",
    .w_down = "model.layers.%d.mlp.down_proj.weight",
    .cfg_source = "config.json",
};

/* Everything a load holds only while it runs: parsed JSON trees (tensor names point into them). */
typedef struct {
  model_t *m;
  const char *dir;
  ld_table_t tab;
  cJSON **roots;
  int n_roots, cap_roots;
} hf_ctx_t;

static int hf_keep_root(hf_ctx_t *h, cJSON *root) {
  if (h->n_roots == h->cap_roots) {
    int cap = h->cap_roots ? h->cap_roots * 2 : 8;
    cJSON **nr = realloc(h->roots, (size_t)cap * sizeof(*nr));
    if (!nr) {
      cJSON_Delete(root);
      log_error("%s: out of memory", h->dir);
      return STRATA_ENOMEM;
    }
    h->roots = nr;
    h->cap_roots = cap;
  }
  h->roots[h->n_roots++] = root;
  return 0;
}

/* hf_read_json: reads and parses DIR/NAME into *OUT (caller deletes). STRATA_ENOTFOUND (not logged)
 * when absent, so callers decide whether that is an error. */
static int hf_read_json(const char *dir, const char *name, cJSON **out, char *path, size_t path_n) {
  *out = NULL;
  if (!path_join(path, path_n, dir, name)) {
    log_error("%s: path too long", dir);
    return STRATA_EINVAL;
  }
  char *text = NULL;
  size_t len = 0;
  int rc = file_read_all(path, HF_MAX_JSON_BYTES, &text, &len);
  if (rc) return rc;
  *out = cJSON_ParseWithLength(text, len);
  free(text);
  if (!*out) {
    log_error("%s: not valid JSON", path);
    return STRATA_EFORMAT;
  }
  return 0;
}

/* ---- config.json ---- */

/* hf_int: integer KEY of ROOT into *OUT; DEF when absent or null (HF_REQUIRED: an error). */
static int hf_int(const cJSON *root, const char *key, int def, int *out, const char *file) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
  if (!v || cJSON_IsNull(v)) {
    if (def == HF_REQUIRED) {
      log_error("%s: missing '%s'", file, key);
      return STRATA_EFORMAT;
    }
    *out = def;
    return 0;
  }
  if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < INT_MIN ||
      v->valuedouble > INT_MAX) {
    log_error("%s: '%s' must be an integer", file, key);
    return STRATA_EFORMAT;
  }
  *out = (int)v->valuedouble;
  return 0;
}

static int hf_float(const cJSON *root, const char *key, float def, int required, float *out, const char *file) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
  if (!v || cJSON_IsNull(v)) {
    if (required) {
      log_error("%s: missing '%s'", file, key);
      return STRATA_EFORMAT;
    }
    *out = def;
    return 0;
  }
  if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
    log_error("%s: '%s' must be a number", file, key);
    return STRATA_EFORMAT;
  }
  *out = (float)v->valuedouble;
  return 0;
}

static int hf_bool(const cJSON *root, const char *key, int def, int *out, const char *file) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
  if (!v || cJSON_IsNull(v)) {
    *out = def;
    return 0;
  }
  if (!cJSON_IsBool(v)) {
    log_error("%s: '%s' must be true or false", file, key);
    return STRATA_EFORMAT;
  }
  *out = cJSON_IsTrue(v);
  return 0;
}

static int hf_arch(const cJSON *root, model_arch_t *arch, const char *file) {
  static const struct {
    const char *cls, *type;
    model_arch_t arch;
  } archs[] = {
      {"LlamaForCausalLM", "llama", ARCH_LLAMA},
      {"MistralForCausalLM", "mistral", ARCH_MISTRAL},
      {"Qwen2ForCausalLM", "qwen2", ARCH_QWEN2},
      {"Qwen3ForCausalLM", "qwen3", ARCH_QWEN3},
  };
  const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, "architectures");
  const cJSON *first = cJSON_IsArray(list) ? cJSON_GetArrayItem(list, 0) : NULL;
  const char *cls = cJSON_IsString(first) ? first->valuestring : NULL;
  const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
  const char *type = cJSON_IsString(mt) ? mt->valuestring : NULL;
  for (size_t i = 0; i < sizeof(archs) / sizeof(archs[0]); i++) {
    if ((cls && strcmp(cls, archs[i].cls) == 0) || (!cls && type && strcmp(type, archs[i].type) == 0)) {
      *arch = archs[i].arch;
      return 0;
    }
  }
  if (!cls && !type) {
    log_error("%s: neither 'architectures' nor 'model_type' says what model this is", file);
    return STRATA_EFORMAT;
  }
  log_error("%s: architecture '%s' is not supported (supported: LlamaForCausalLM, MistralForCausalLM, "
            "Qwen2ForCausalLM, Qwen3ForCausalLM)",
            file, cls ? cls : type);
  return STRATA_EUNSUPPORTED;
}

static int hf_rope_scaling(const cJSON *root, model_cfg_t *c, const char *file) {
  const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
  if (!rs || cJSON_IsNull(rs)) return 0;
  if (!cJSON_IsObject(rs)) {
    log_error("%s: 'rope_scaling' must be an object or null", file);
    return STRATA_EFORMAT;
  }
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
  if (!cJSON_IsString(t)) t = cJSON_GetObjectItemCaseSensitive(rs, "type");
  if (!cJSON_IsString(t)) {
    log_error("%s: 'rope_scaling' has no 'rope_type' or 'type'", file);
    return STRATA_EFORMAT;
  }
  int rc;
  if (strcmp(t->valuestring, "default") == 0) return 0;
  if (strcmp(t->valuestring, "linear") == 0) {
    c->rope_scaling = ROPE_SCALING_LINEAR;
    return hf_float(rs, "factor", 0, 1, &c->rope_factor, file);
  }
  if (strcmp(t->valuestring, "llama3") == 0) {
    c->rope_scaling = ROPE_SCALING_LLAMA3;
    if ((rc = hf_float(rs, "factor", 0, 1, &c->rope_factor, file)) != 0) return rc;
    if ((rc = hf_float(rs, "low_freq_factor", 0, 1, &c->rope_low_freq_factor, file)) != 0) return rc;
    if ((rc = hf_float(rs, "high_freq_factor", 0, 1, &c->rope_high_freq_factor, file)) != 0) return rc;
    return hf_int(rs, "original_max_position_embeddings", HF_REQUIRED, &c->rope_orig_max_pos, file);
  }
  log_error("%s: RoPE scaling type '%s' is not supported (supported: linear, llama3)", file, t->valuestring);
  return STRATA_EUNSUPPORTED;
}

/* hf_token_ids: "eos_token_id" as an integer or a list of integers, added to CFG's EOS list. */
static int hf_eos_ids(const cJSON *root, model_cfg_t *c, const char *file) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
  if (!v || cJSON_IsNull(v)) return 0;
  if (cJSON_IsNumber(v)) {
    int id;
    int rc = hf_int(root, "eos_token_id", -1, &id, file);
    if (rc) return rc;
    ld_add_eos(c, id);
    return 0;
  }
  if (!cJSON_IsArray(v)) {
    log_error("%s: 'eos_token_id' must be an integer or a list of integers", file);
    return STRATA_EFORMAT;
  }
  const cJSON *e;
  cJSON_ArrayForEach(e, v) {
    if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) || e->valuedouble < 0 ||
        e->valuedouble > INT_MAX) {
      log_error("%s: 'eos_token_id' must hold non-negative integers", file);
      return STRATA_EFORMAT;
    }
    ld_add_eos(c, (int)e->valuedouble);
  }
  return 0;
}

static int hf_parse_config(const cJSON *root, model_cfg_t *c, const char *file) {
  int rc;
  if (!cJSON_IsObject(root)) {
    log_error("%s: not a JSON object", file);
    return STRATA_EFORMAT;
  }
  if ((rc = hf_arch(root, &c->arch, file)) != 0) return rc;
  if ((rc = hf_int(root, "hidden_size", HF_REQUIRED, &c->dim, file)) != 0) return rc;
  if ((rc = hf_int(root, "intermediate_size", HF_REQUIRED, &c->hidden_dim, file)) != 0) return rc;
  if ((rc = hf_int(root, "num_hidden_layers", HF_REQUIRED, &c->n_layers, file)) != 0) return rc;
  if ((rc = hf_int(root, "num_attention_heads", HF_REQUIRED, &c->n_heads, file)) != 0) return rc;
  if ((rc = hf_int(root, "num_key_value_heads", c->n_heads, &c->n_kv_heads, file)) != 0) return rc;
  if (c->n_heads <= 0) {
    log_error("%s: 'num_attention_heads' must be positive", file);
    return STRATA_EFORMAT;
  }
  if ((rc = hf_int(root, "head_dim", c->dim / c->n_heads, &c->head_dim, file)) != 0) return rc;
  if ((rc = hf_int(root, "vocab_size", HF_REQUIRED, &c->vocab_size, file)) != 0) return rc;
  if ((rc = hf_int(root, "max_position_embeddings", 2048, &c->max_seq_len, file)) != 0) return rc;
  if ((rc = hf_float(root, "rms_norm_eps", 1e-6f, 0, &c->norm_eps, file)) != 0) return rc;
  if ((rc = hf_float(root, "rope_theta", 10000.0f, 0, &c->rope_theta, file)) != 0) return rc;
  if ((rc = hf_rope_scaling(root, c, file)) != 0) return rc;
  if ((rc = hf_bool(root, "tie_word_embeddings", 0, &c->tied_embeddings, file)) != 0) return rc;
  /* NOTE: Qwen2 has QKV biases whatever attention_bias says; Qwen3 adds per-head RMSNorm on Q and K. */
  if ((rc = hf_bool(root, "attention_bias", 0, &c->qkv_bias, file)) != 0) return rc;
  if (c->arch == ARCH_QWEN2) c->qkv_bias = 1;
  c->qk_norm = c->arch == ARCH_QWEN3;
  if (c->arch == ARCH_MISTRAL && (rc = hf_int(root, "sliding_window", 0, &c->sliding_window, file)) != 0) return rc;
  if (c->sliding_window < 0) c->sliding_window = 0;
  if ((rc = hf_int(root, "bos_token_id", -1, &c->bos_id, file)) != 0) return rc;
  if ((rc = hf_eos_ids(root, c, file)) != 0) return rc;
  c->rope_style = ROPE_STYLE_NEOX; /* HF checkpoints use rotate-half */
  return 0;
}

/* ---- safetensors ---- */

static int64_t st_elem_bytes(const char *dtype) {
  static const struct {
    const char *name;
    int bytes;
  } sizes[] = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},
               {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1},   {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
    if (strcmp(dtype, sizes[i].name) == 0) return sizes[i].bytes;
  return 0;
}

static int st_dtype(const char *s) {
  if (strcmp(s, "F32") == 0) return DTYPE_F32;
  if (strcmp(s, "F16") == 0) return DTYPE_F16;
  if (strcmp(s, "BF16") == 0) return DTYPE_BF16;
  return -1;
}

/* st_u64: a non-negative integral JSON number below 2^53 (where doubles are exact). */
static int st_u64(const cJSON *v, uint64_t *out) {
  if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 9007199254740992.0 ||
      v->valuedouble != floor(v->valuedouble))
    return 0;
  *out = (uint64_t)v->valuedouble;
  return 1;
}

/* st_tensor: one header entry ITEM into *T; DATA/DATA_LEN is the byte buffer after the header. */
static int st_tensor(const cJSON *item, const uint8_t *data, uint64_t data_len, const char *file, ld_tensor_t *t) {
  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
  const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
  const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
  const char *name = item->string;
  if (!cJSON_IsObject(item) || !cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs) ||
      cJSON_GetArraySize(offs) != 2) {
    log_error("%s: header entry '%s' needs 'dtype', 'shape' and two 'data_offsets'", file, name);
    return STRATA_EFORMAT;
  }
  int n_dims = cJSON_GetArraySize(shape);
  if (n_dims > LD_MAX_DIMS) {
    log_error("%s: tensor '%s' has %d dims (at most %d)", file, name, n_dims, LD_MAX_DIMS);
    return STRATA_EFORMAT;
  }
  *t = (ld_tensor_t){.name = name, .name_len = strlen(name), .dtype = st_dtype(dt->valuestring),
                     .dtype_str = dt->valuestring, .n_dims = n_dims, .file = file};
  uint64_t numel = 1, begin, end;
  for (int i = 0; i < n_dims; i++) {
    uint64_t d;
    if (!st_u64(cJSON_GetArrayItem(shape, i), &d) || __builtin_mul_overflow(numel, d, &numel)) {
      log_error("%s: tensor '%s' has an invalid shape", file, name);
      return STRATA_EFORMAT;
    }
    t->shape[i] = (int64_t)d;
  }
  if (!st_u64(cJSON_GetArrayItem(offs, 0), &begin) || !st_u64(cJSON_GetArrayItem(offs, 1), &end) || begin > end ||
      end > data_len) {
    log_error("%s: tensor '%s' has data_offsets outside the file's %llu data bytes", file, name,
              (unsigned long long)data_len);
    return STRATA_EFORMAT;
  }
  uint64_t esize = (uint64_t)st_elem_bytes(dt->valuestring), want;
  if (esize && (__builtin_mul_overflow(numel, esize, &want) || want != end - begin)) {
    log_error("%s: tensor '%s' spans %llu bytes but its shape and dtype %s need %llu", file, name,
              (unsigned long long)(end - begin), dt->valuestring, (unsigned long long)numel * esize);
    return STRATA_EFORMAT;
  }
  t->data = data + begin;
  t->n_bytes = (size_t)(end - begin);
  return 0;
}

/* st_load: maps PATH (kept in the model's storage), parses its header (kept in H) and adds its tensors
 * to H's table. FILE must outlive the load (messages and shard identity). */
static int st_load(hf_ctx_t *h, const char *file) {
  file_map_t map;
  int rc = file_map(&map, file);
  if (rc) return rc;
  if ((rc = ld_storage_add_map(h->m, &map)) != 0) {
    file_unmap(&map);
    return rc;
  }
  const uint8_t *p = map.data;
  if (map.size < 8) {
    log_error("%s: %zu bytes is too short for a safetensors file", file, map.size);
    return STRATA_EFORMAT;
  }
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
  if (hlen > map.size - 8 || hlen > HF_MAX_HEADER_BYTES) {
    log_error("%s: safetensors header length %llu exceeds the file (%zu bytes): truncated or corrupt", file,
              (unsigned long long)hlen, map.size);
    return STRATA_EFORMAT;
  }
  cJSON *root = cJSON_ParseWithLength((const char *)p + 8, (size_t)hlen);
  if (!root || !cJSON_IsObject(root)) {
    cJSON_Delete(root);
    log_error("%s: safetensors header is not a valid JSON object", file);
    return STRATA_EFORMAT;
  }
  if ((rc = hf_keep_root(h, root)) != 0) return rc;
  const cJSON *item;
  cJSON_ArrayForEach(item, root) {
    if (strcmp(item->string, "__metadata__") == 0) continue;
    ld_tensor_t t;
    if ((rc = st_tensor(item, p + 8 + hlen, map.size - 8 - hlen, file, &t)) != 0) return rc;
    if ((rc = ld_table_push(&h->tab, &t)) != 0) return rc;
  }
  return 0;
}

/* hf_keep_path: a model-lifetime copy of DIR/NAME (tensor messages and shard identity point at it). */
static const char *hf_keep_path(hf_ctx_t *h, const char *name) {
  char buf[2048];
  if (!path_join(buf, sizeof(buf), h->dir, name)) {
    log_error("%s: path too long", h->dir);
    return NULL;
  }
  char *s = strdup(buf);
  if (!s || ld_storage_keep(h->m, s) != 0) {
    if (!s) log_error("%s: out of memory", h->dir);
    return NULL;
  }
  return s;
}

static int hf_shard_name_ok(const char *s) {
  return s[0] && s[0] != '.' && !strchr(s, '/') && strlen(s) < 256;
}

/* hf_load_index: every shard named by model.safetensors.index.json, then a check that each tensor
 * of the weight map lives in the shard the index names. */
static int hf_load_index(hf_ctx_t *h, const cJSON *index, const char *index_path) {
  const cJSON *wm = cJSON_GetObjectItemCaseSensitive(index, "weight_map");
  if (!cJSON_IsObject(wm)) {
    log_error("%s: no 'weight_map' object", index_path);
    return STRATA_EFORMAT;
  }
  const char *names[HF_MAX_SHARDS], *paths[HF_MAX_SHARDS];
  int n = 0, rc;
  const cJSON *e;
  cJSON_ArrayForEach(e, wm) {
    if (!cJSON_IsString(e) || !hf_shard_name_ok(e->valuestring)) {
      log_error("%s: tensor '%s' maps to an invalid file name", index_path, e->string);
      return STRATA_EFORMAT;
    }
    int k = 0;
    while (k < n && strcmp(names[k], e->valuestring) != 0) k++;
    if (k < n) continue;
    if (n == HF_MAX_SHARDS) {
      log_error("%s: more than %d shards", index_path, HF_MAX_SHARDS);
      return STRATA_EFORMAT;
    }
    names[n] = e->valuestring;
    if (!(paths[n] = hf_keep_path(h, e->valuestring))) return STRATA_ENOMEM;
    if ((rc = st_load(h, paths[n])) != 0) return rc;
    n++;
  }
  if ((rc = ld_table_sort(&h->tab, h->dir)) != 0) return rc;
  cJSON_ArrayForEach(e, wm) {
    const ld_tensor_t *t = ld_table_find(&h->tab, e->string);
    int k = 0;
    while (strcmp(names[k], e->valuestring) != 0) k++;
    if (!t || t->file != paths[k]) {
      log_error("%s: tensor '%s' is not in %s, where the index puts it", index_path, e->string, e->valuestring);
      return STRATA_EFORMAT;
    }
  }
  return 0;
}

static int hf_load_weights(hf_ctx_t *h) {
  char path[2048];
  int rc;
  if (!path_join(path, sizeof(path), h->dir, "model.safetensors")) {
    log_error("%s: path too long", h->dir);
    return STRATA_EINVAL;
  }
  if (path_exists(path)) {
    const char *kept = hf_keep_path(h, "model.safetensors");
    if (!kept) return STRATA_ENOMEM;
    if ((rc = st_load(h, kept)) != 0) return rc;
    return ld_table_sort(&h->tab, kept);
  }
  cJSON *index = NULL;
  rc = hf_read_json(h->dir, "model.safetensors.index.json", &index, path, sizeof(path));
  if (rc == STRATA_ENOTFOUND) {
    log_error("%s: no model.safetensors or model.safetensors.index.json (only safetensors weights are supported)",
              h->dir);
    return STRATA_ENOTFOUND;
  }
  if (rc) return rc;
  if ((rc = hf_keep_root(h, index)) != 0) return rc;
  return hf_load_index(h, index, path);
}

static int hf_load_configs(hf_ctx_t *h) {
  model_cfg_t *c = &h->m->cfg;
  char path[2048];
  cJSON *root = NULL;
  int rc = hf_read_json(h->dir, "config.json", &root, path, sizeof(path));
  if (rc == STRATA_ENOTFOUND) {
    log_error("%s: missing config.json (not a Hugging Face model directory?)", h->dir);
    return rc;
  }
  if (rc) return rc;
  rc = hf_parse_config(root, c, path);
  cJSON_Delete(root);
  if (rc) return rc;
  if ((rc = ld_cfg_check(c, path)) != 0) return rc;
  /* generation_config.json is optional; its EOS ids (e.g. Llama 3's <|eot_id|>) join config.json's. */
  rc = hf_read_json(h->dir, "generation_config.json", &root, path, sizeof(path));
  if (rc == STRATA_ENOTFOUND) return 0;
  if (rc) return rc;
  if (!cJSON_IsObject(root)) {
    cJSON_Delete(root);
    log_error("%s: not a JSON object", path);
    return STRATA_EFORMAT;
  }
  rc = hf_eos_ids(root, c, path);
  if (rc == 0 && c->bos_id < 0) rc = hf_int(root, "bos_token_id", -1, &c->bos_id, path);
  cJSON_Delete(root);
  return rc;
}

int ld_load_hf(model_t *m, const char *dir) {
  hf_ctx_t h = {.m = m, .dir = dir};
  int rc;
  ld_set_names(m, dir, dir);
  if ((rc = hf_load_configs(&h)) != 0) goto done;
  if ((rc = hf_load_weights(&h)) != 0) goto done;
  rc = ld_bind_weights(m, &h.tab, &hf_names, dir);
done:
  for (int i = 0; i < h.n_roots; i++) cJSON_Delete(h.roots[i]);
  free(h.roots);
  ld_table_free(&h.tab);
  return rc;
}
