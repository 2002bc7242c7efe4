/* test_loader.c: model loading (worker/loader/): HF safetensors, GGUF, dummy presets, k-quant
 * dequantizers, and corrupt inputs of every kind. */
#define _GNU_SOURCE /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/dtype.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/backend/backend.h"
#include "worker/loader/loader_int.h"
#include "worker/model/model.h"

/* ---------------------------------------------------------------- helpers */

static void model_path(char *buf, size_t n, const char *rel) {
  const char *d = getenv("STRATA_MODELS_DIR");
  snprintf(buf, n, "%s/%s", d ? d : "/work/shared/models", rel);
}

static char *tmp_dir(void) {
  char *t = strdup("/tmp/strata_test_loader_XXXXXX");
  assert_non_null(t);
  assert_non_null(mkdtemp(t));
  return t;
}

static void tmp_rm(char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;
  char p[1200];
  while (d && (e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
    unlink(p);
  }
  if (d) closedir(d);
  rmdir(dir);
  free(dir);
}

static void write_file(const char *dir, const char *name, const void *data, size_t len) {
  char p[1200];
  snprintf(p, sizeof(p), "%s/%s", dir, name);
  FILE *f = fopen(p, "wb");
  assert_non_null(f);
  if (len) assert_int_equal(fwrite(data, 1, len, f), len);
  fclose(f);
}

static char *read_whole(const char *path, size_t *len) {
  char *buf = NULL;
  assert_int_equal(file_read_all(path, 64u << 20, &buf, len), 0);
  return buf;
}

static void link_into(const char *dir, const char *name, const char *target) {
  char p[1200];
  snprintf(p, sizeof(p), "%s/%s", dir, name);
  assert_int_equal(symlink(target, p), 0);
}

/* load_quiet: model_load with logging off (for the many expected failures). */
static int load_quiet(model_t **m, const char *path) {
  int lvl = log_get_level();
  if (!getenv("STRATA_TEST_VERBOSE")) log_set_level(LOG_LEVEL_OFF);
  int rc = model_load(m, path, NULL);
  log_set_level(lvl);
  return rc;
}

static int64_t weight_bytes(const weight_t *w) { return (int64_t)dtype_row_bytes(w->dtype, w->cols) * w->rows; }

static void assert_weight_shape(const weight_t *w, int64_t rows, int64_t cols) {
  assert_non_null(w->data);
  assert_int_equal(w->rows, rows);
  assert_int_equal(w->cols, cols);
}

/* assert_same_weight: identical shape, dtype and bytes. */
static void assert_same_weight(const weight_t *a, const weight_t *b) {
  assert_int_equal(a->rows, b->rows);
  assert_int_equal(a->cols, b->cols);
  assert_int_equal(a->dtype, b->dtype);
  assert_memory_equal(a->data, b->data, (size_t)weight_bytes(a));
}

/* ---------------------------------------------------------------- a test-side safetensors writer */

typedef struct {
  char name[128];
  char dtype[16];
  int n_dims;
  int64_t shape[4];
  const void *data;
  size_t n_bytes;
  long long bad_end; /* nonzero: write this as the end offset instead */
} st_entry_t;

/* st_build: a safetensors file of the N entries, data in order (malloc'd; *LEN its size). */
static uint8_t *st_build(const st_entry_t *e, int n, size_t *len) {
  size_t cap = 256 + (size_t)n * 256, hl = 0, data = 0;
  char *h = malloc(cap);
  assert_non_null(h);
  hl += (size_t)snprintf(h + hl, cap - hl, "{\"__metadata__\":{\"format\":\"pt\"}");
  for (int i = 0; i < n; i++) {
    hl += (size_t)snprintf(h + hl, cap - hl, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", e[i].name, e[i].dtype);
    for (int d = 0; d < e[i].n_dims; d++)
      hl += (size_t)snprintf(h + hl, cap - hl, "%s%lld", d ? "," : "", (long long)e[i].shape[d]);
    long long end = e[i].bad_end ? e[i].bad_end : (long long)(data + e[i].n_bytes);
    hl += (size_t)snprintf(h + hl, cap - hl, "],\"data_offsets\":[%zu,%lld]}", data, end);
    data += e[i].n_bytes;
  }
  hl += (size_t)snprintf(h + hl, cap - hl, "}");
  assert_true(hl < cap - 8);
  while (hl % 8) h[hl++] = ' ';
  uint8_t *out = malloc(8 + hl + data);
  assert_non_null(out);
  for (int i = 0; i < 8; i++) out[i] = (uint8_t)((uint64_t)hl >> (8 * i));
  memcpy(out + 8, h, hl);
  size_t o = 8 + hl;
  for (int i = 0; i < n; i++) {
    memcpy(out + o, e[i].data, e[i].n_bytes);
    o += e[i].n_bytes;
  }
  free(h);
  *len = o;
  return out;
}

/* st_parse: an independent reading of a safetensors file (entries point into BUF). */
static int st_parse(const uint8_t *buf, size_t len, st_entry_t *e, int max, cJSON **root_out) {
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = (hl << 8) | buf[i];
  assert_true(8 + hl <= len);
  cJSON *root = cJSON_ParseWithLength((const char *)buf + 8, hl);
  assert_non_null(root);
  int n = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, root) {
    if (strcmp(it->string, "__metadata__") == 0) continue;
    assert_true(n < max);
    st_entry_t *x = &e[n++];
    memset(x, 0, sizeof(*x));
    snprintf(x->name, sizeof(x->name), "%s", it->string);
    snprintf(x->dtype, sizeof(x->dtype), "%s", cJSON_GetObjectItem(it, "dtype")->valuestring);
    const cJSON *sh = cJSON_GetObjectItem(it, "shape"), *of = cJSON_GetObjectItem(it, "data_offsets");
    x->n_dims = cJSON_GetArraySize(sh);
    for (int d = 0; d < x->n_dims; d++) x->shape[d] = (int64_t)cJSON_GetArrayItem(sh, d)->valuedouble;
    size_t b = (size_t)cJSON_GetArrayItem(of, 0)->valuedouble, en = (size_t)cJSON_GetArrayItem(of, 1)->valuedouble;
    x->data = buf + 8 + hl + b;
    x->n_bytes = en - b;
  }
  *root_out = root;
  return n;
}

/* ---------------------------------------------------------------- stories260K, GGUF and HF */

static void check_stories_cfg(const model_cfg_t *c) {
  assert_int_equal(c->arch, ARCH_LLAMA);
  assert_int_equal(c->dim, 64);
  assert_int_equal(c->hidden_dim, 172);
  assert_int_equal(c->n_layers, 5);
  assert_int_equal(c->n_heads, 8);
  assert_int_equal(c->n_kv_heads, 4);
  assert_int_equal(c->head_dim, 8);
  assert_int_equal(c->vocab_size, 512);
  assert_true(c->tied_embeddings);
  assert_true(fabsf(c->norm_eps - 1e-5f) < 1e-9f);
  assert_true(c->rope_theta == 10000.0f);
  assert_int_equal(c->rope_scaling, ROPE_SCALING_NONE);
  assert_int_equal(c->bos_id, 1);
  assert_int_equal(c->n_eos, 1);
  assert_int_equal(c->eos_ids[0], 2);
  assert_int_equal(c->dtype, DTYPE_F32);
  assert_false(c->qkv_bias);
  assert_false(c->qk_norm);
}

static void test_stories_gguf(void **state) {
  (void)state;
  char p[1024];
  model_path(p, sizeof(p), "stories260K/stories260K.gguf");
  model_t *m = NULL;
  assert_int_equal(model_load(&m, p, NULL), 0);
  check_stories_cfg(&m->cfg);
  assert_int_equal(m->cfg.rope_style, ROPE_STYLE_NORM);
  assert_int_equal(m->cfg.max_seq_len, 2048); /* what the GGUF says */
  assert_string_equal(m->name, "stories260K.gguf");
  assert_string_equal(m->tokenizer_path, p);
  assert_ptr_equal(m->w.output.data, m->w.tok_embd.data); /* output.weight is a copy of the embedding */
  assert_weight_shape(&m->w.tok_embd, 512, 64);
  assert_weight_shape(&m->w.layers[4].w_down, 64, 172);
  assert_weight_shape(&m->w.out_norm, 1, 64);
  /* 1-D: f32 owned copies; params: V*C + L*(2C + 2*C*C + 2*32*C + 3*172*C) + C */
  assert_int_equal(m->w.layers[0].attn_norm.dtype, DTYPE_F32);
  assert_int_equal(model_n_params(m), 512 * 64 + 5 * (2 * 64 + 2 * 64 * 64 + 2 * 32 * 64 + 3 * 172 * 64) + 64);
  model_free(m);
}

static void test_stories_hf(void **state) {
  (void)state;
  char p[1024];
  model_path(p, sizeof(p), "stories260K-hf");
  model_t *m = NULL;
  assert_int_equal(model_load(&m, p, NULL), 0);
  check_stories_cfg(&m->cfg);
  assert_int_equal(m->cfg.rope_style, ROPE_STYLE_NEOX);
  assert_int_equal(m->cfg.max_seq_len, 512);
  assert_string_equal(m->name, "stories260K-hf");
  assert_string_equal(m->tokenizer_path, p);
  assert_ptr_equal(m->w.output.data, m->w.tok_embd.data);
  for (int l = 0; l < 5; l++) {
    const layer_weights_t *lw = &m->w.layers[l];
    assert_weight_shape(&lw->wq, 64, 64);
    assert_weight_shape(&lw->wk, 32, 64);
    assert_weight_shape(&lw->wv, 32, 64);
    assert_weight_shape(&lw->wo, 64, 64);
    assert_weight_shape(&lw->w_gate, 172, 64);
    assert_weight_shape(&lw->w_up, 172, 64);
    assert_weight_shape(&lw->w_down, 64, 172);
    assert_weight_shape(&lw->attn_norm, 1, 64);
    assert_weight_shape(&lw->ffn_norm, 1, 64);
    assert_null(lw->bq.data);
    assert_null(lw->q_norm.data);
  }
  model_free(m);
}

/* Q/K rows: llama.cpp stores each head's rows interleaved (pair i = rows 2i, 2i+1, rotated as
 * adjacent elements); HF stores them rotate-half (pair i = rows i, i + D/2). So HF row i of head h
 * is GGUF row 2i of that head, and HF row i + D/2 is GGUF row 2i + 1. */
static void assert_rope_permuted(const weight_t *hf, const weight_t *gg, int n_heads, int D, dtype_t dt) {
  assert_int_equal(hf->rows, (int64_t)n_heads * D);
  assert_int_equal(gg->rows, hf->rows);
  size_t rb = dtype_row_bytes(dt, hf->cols);
  const uint8_t *a = hf->data, *b = gg->data;
  for (int h = 0; h < n_heads; h++) {
    for (int i = 0; i < D / 2; i++) {
      assert_memory_equal(a + (size_t)(h * D + i) * rb, b + (size_t)(h * D + 2 * i) * rb, rb);
      assert_memory_equal(a + (size_t)(h * D + i + D / 2) * rb, b + (size_t)(h * D + 2 * i + 1) * rb, rb);
    }
  }
  /* and the layouts are really different (the permutation is not the identity for D > 2) */
  assert_true(memcmp(a, b, rb * (size_t)hf->rows) != 0);
}

static void compare_layouts(const model_t *hf, const model_t *gg) {
  const model_cfg_t *c = &hf->cfg;
  assert_same_weight(&hf->w.tok_embd, &gg->w.tok_embd);
  assert_same_weight(&hf->w.output, &gg->w.output);
  assert_same_weight(&hf->w.out_norm, &gg->w.out_norm);
  for (int l = 0; l < c->n_layers; l++) {
    const layer_weights_t *a = &hf->w.layers[l], *b = &gg->w.layers[l];
    assert_same_weight(&a->attn_norm, &b->attn_norm);
    assert_same_weight(&a->ffn_norm, &b->ffn_norm);
    assert_same_weight(&a->wv, &b->wv);
    assert_same_weight(&a->wo, &b->wo);
    assert_same_weight(&a->w_gate, &b->w_gate);
    assert_same_weight(&a->w_up, &b->w_up);
    assert_same_weight(&a->w_down, &b->w_down);
    assert_rope_permuted(&a->wq, &b->wq, c->n_heads, c->head_dim, c->dtype);
    assert_rope_permuted(&a->wk, &b->wk, c->n_kv_heads, c->head_dim, c->dtype);
  }
}

static void test_stories_layouts_agree(void **state) {
  (void)state;
  char p1[1024], p2[1024];
  model_path(p1, sizeof(p1), "stories260K-hf");
  model_path(p2, sizeof(p2), "stories260K/stories260K.gguf");
  model_t *hf = NULL, *gg = NULL;
  assert_int_equal(model_load(&hf, p1, NULL), 0);
  assert_int_equal(model_load(&gg, p2, NULL), 0);
  compare_layouts(hf, gg);
  model_free(hf);
  model_free(gg);
}

static void test_tiny_random_f16(void **state) {
  (void)state;
  char p1[1024], p2[1024];
  model_path(p1, sizeof(p1), "llama-2-tiny-random-hf");
  model_path(p2, sizeof(p2), "llama-2-tiny-random/llama-2-tiny-random.gguf");
  model_t *hf = NULL, *gg = NULL;
  assert_int_equal(model_load(&hf, p1, NULL), 0);
  assert_int_equal(model_load(&gg, p2, NULL), 0);
  for (int k = 0; k < 2; k++) {
    const model_cfg_t *c = k ? &gg->cfg : &hf->cfg;
    assert_int_equal(c->dim, 8);
    assert_int_equal(c->hidden_dim, 32);
    assert_int_equal(c->n_layers, 1);
    assert_int_equal(c->n_heads, 2);
    assert_int_equal(c->n_kv_heads, 2);
    assert_int_equal(c->head_dim, 4);
    assert_int_equal(c->vocab_size, 32000);
    assert_false(c->tied_embeddings);
    assert_int_equal(c->dtype, DTYPE_F16);
  }
  assert_true(hf->w.output.data != hf->w.tok_embd.data);
  assert_true(gg->w.output.data != gg->w.tok_embd.data);
  assert_int_equal(hf->w.layers[0].attn_norm.dtype, DTYPE_F32);
  compare_layouts(hf, gg);
  model_free(hf);
  model_free(gg);
}

/* ---------------------------------------------------------------- sharded HF */

static void test_sharded_hf(void **state) {
  (void)state;
  char src[1024], cfgp[1024];
  model_path(src, sizeof(src), "stories260K-hf/model.safetensors");
  model_path(cfgp, sizeof(cfgp), "stories260K-hf/config.json");
  size_t len;
  char *buf = read_whole(src, &len);
  st_entry_t e[64];
  cJSON *root;
  int n = st_parse((const uint8_t *)buf, len, e, 64, &root);
  assert_int_equal(n, 47); /* 5 x 9 per layer + embedding + final norm; tied: no lm_head */
  char *dir = tmp_dir();
  link_into(dir, "config.json", cfgp);
  /* shard 1: every even entry, shard 2: every odd one */
  st_entry_t a[64], b[64];
  int na = 0, nb = 0;
  cJSON *idx = cJSON_CreateObject(), *wm = cJSON_AddObjectToObject(idx, "weight_map");
  for (int i = 0; i < n; i++) {
    const char *file = i % 2 ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
    if (i % 2)
      b[nb++] = e[i];
    else
      a[na++] = e[i];
    cJSON_AddStringToObject(wm, e[i].name, file);
  }
  size_t la, lb;
  uint8_t *fa = st_build(a, na, &la), *fb = st_build(b, nb, &lb);
  write_file(dir, "model-00001-of-00002.safetensors", fa, la);
  write_file(dir, "model-00002-of-00002.safetensors", fb, lb);
  char *js = cJSON_PrintUnformatted(idx);
  write_file(dir, "model.safetensors.index.json", js, strlen(js));

  char ref_dir[1024];
  model_path(ref_dir, sizeof(ref_dir), "stories260K-hf");
  model_t *ref = NULL, *m = NULL;
  assert_int_equal(model_load(&ref, ref_dir, NULL), 0);
  assert_int_equal(model_load(&m, dir, NULL), 0);
  assert_memory_equal(&ref->cfg, &m->cfg, sizeof(m->cfg));
  assert_same_weight(&ref->w.tok_embd, &m->w.tok_embd);
  assert_same_weight(&ref->w.out_norm, &m->w.out_norm);
  for (int l = 0; l < 5; l++) {
    const layer_weights_t *x = &ref->w.layers[l], *y = &m->w.layers[l];
    const weight_t *wx[] = {&x->attn_norm, &x->wq,     &x->wk,   &x->wv,    &x->wo,
                            &x->ffn_norm,  &x->w_gate, &x->w_up, &x->w_down};
    const weight_t *wy[] = {&y->attn_norm, &y->wq,     &y->wk,   &y->wv,    &y->wo,
                            &y->ffn_norm,  &y->w_gate, &y->w_up, &y->w_down};
    for (int k = 0; k < 9; k++) assert_same_weight(wx[k], wy[k]);
  }
  model_free(m);

  /* the index puts a tensor in the wrong shard */
  cJSON_ReplaceItemInObject(wm, e[0].name, cJSON_CreateString("model-00002-of-00002.safetensors"));
  free(js);
  js = cJSON_PrintUnformatted(idx);
  write_file(dir, "model.safetensors.index.json", js, strlen(js));
  assert_int_equal(load_quiet(&m, dir), STRATA_EFORMAT);
  /* ... names a shard that does not exist */
  cJSON_ReplaceItemInObject(wm, e[0].name, cJSON_CreateString("model-00003-of-00002.safetensors"));
  free(js);
  js = cJSON_PrintUnformatted(idx);
  write_file(dir, "model.safetensors.index.json", js, strlen(js));
  assert_int_equal(load_quiet(&m, dir), STRATA_ENOTFOUND);
  /* ... or a path outside the directory */
  cJSON_ReplaceItemInObject(wm, e[0].name, cJSON_CreateString("../x.safetensors"));
  free(js);
  js = cJSON_PrintUnformatted(idx);
  write_file(dir, "model.safetensors.index.json", js, strlen(js));
  assert_int_equal(load_quiet(&m, dir), STRATA_EFORMAT);
  assert_null(m);

  model_free(ref);
  free(js);
  cJSON_Delete(idx);
  free(fa);
  free(fb);
  cJSON_Delete(root);
  free(buf);
  tmp_rm(dir);
}

/* ---------------------------------------------------------------- synthetic HF models */

/* A small model: C 16, F 24, L 2, H 4, Hkv 2, D 4, V 32. */
enum { SC = 16, SF = 24, SL = 2, SH = 4, SHKV = 2, SD = 4, SV = 32 };

typedef struct {
  const char *arch;  /* "LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", ... */
  const char *dtype; /* matrices: "F32", "F16" or "BF16" */
  int tied;
  const char *skip;      /* a tensor name to leave out */
  const char *bad_shape; /* a tensor written with one column too many */
  const char *bad_dtype; /* a tensor written with dtype "F64" */
  const char *bad_end;   /* a tensor whose end offset points past the file */
  const char *extra_cfg; /* raw JSON members added to config.json */
} synth_t;

static int synth_add(st_entry_t *e, int n, const synth_t *s, const char *name, int64_t rows, int64_t cols,
                     uint8_t *pool, size_t *pool_used) {
  if (s->skip && strcmp(name, s->skip) == 0) return n;
  st_entry_t *x = &e[n];
  memset(x, 0, sizeof(*x));
  snprintf(x->name, sizeof(x->name), "%s", name);
  int vec = rows == 0;
  const char *dt = vec ? "F32" : s->dtype;
  if (s->bad_dtype && strcmp(name, s->bad_dtype) == 0) dt = "F64";
  snprintf(x->dtype, sizeof(x->dtype), "%s", dt);
  if (s->bad_shape && strcmp(name, s->bad_shape) == 0) cols++;
  x->n_dims = vec ? 1 : 2;
  x->shape[0] = vec ? cols : rows;
  x->shape[1] = cols;
  int64_t numel = vec ? cols : rows * cols;
  size_t es = strcmp(dt, "F64") == 0 ? 8 : strcmp(dt, "F32") == 0 ? 4 : 2;
  x->data = pool + *pool_used;
  x->n_bytes = (size_t)numel * es;
  for (int64_t i = 0; i < numel; i++) {
    float v = vec ? 1.0f + 0.01f * (float)i : 0.001f * (float)((i * 37 + n * 11) % 1000 - 500);
    uint8_t *p = pool + *pool_used + (size_t)i * es;
    if (es == 8) {
      double d = v;
      memcpy(p, &d, 8);
    } else if (es == 4) {
      memcpy(p, &v, 4);
    } else {
      uint16_t h = strcmp(dt, "F16") == 0 ? f32_to_f16(v) : f32_to_bf16(v);
      memcpy(p, &h, 2);
    }
  }
  *pool_used += x->n_bytes;
  if (s->bad_end && strcmp(name, s->bad_end) == 0) x->bad_end = 1LL << 40;
  return n + 1;
}

/* synth_write: config.json and model.safetensors of S into DIR. */
static void synth_write(const char *dir, const synth_t *s) {
  int qwen2 = strstr(s->arch, "Qwen2") != NULL, qwen3 = strstr(s->arch, "Qwen3") != NULL;
  char cfg[2048];
  int n = snprintf(cfg, sizeof(cfg),
                   "{\"architectures\":[\"%s\"],\"hidden_size\":%d,\"intermediate_size\":%d,"
                   "\"num_hidden_layers\":%d,\"num_attention_heads\":%d,\"num_key_value_heads\":%d,"
                   "\"head_dim\":%d,\"vocab_size\":%d,\"max_position_embeddings\":1024,\"rms_norm_eps\":1e-6,"
                   "\"rope_theta\":1000000.0,\"tie_word_embeddings\":%s,\"bos_token_id\":1,\"eos_token_id\":[2,3]%s%s}",
                   s->arch, SC, SF, SL, SH, SHKV, SD, SV, s->tied ? "true" : "false", s->extra_cfg ? "," : "",
                   s->extra_cfg ? s->extra_cfg : "");
  write_file(dir, "config.json", cfg, (size_t)n);
  static st_entry_t e[64];
  static uint8_t pool[1 << 20];
  size_t used = 0;
  int k = 0;
  char nm[128];
  k = synth_add(e, k, s, "model.embed_tokens.weight", SV, SC, pool, &used);
  for (int l = 0; l < SL; l++) {
#define ADD(suffix, r, c) \
  (snprintf(nm, sizeof(nm), "model.layers.%d.%s", l, suffix), k = synth_add(e, k, s, nm, r, c, pool, &used))
    ADD("input_layernorm.weight", 0, SC);
    ADD("self_attn.q_proj.weight", SH * SD, SC);
    ADD("self_attn.k_proj.weight", SHKV * SD, SC);
    ADD("self_attn.v_proj.weight", SHKV * SD, SC);
    ADD("self_attn.o_proj.weight", SC, SH * SD);
    if (qwen2) {
      ADD("self_attn.q_proj.bias", 0, SH * SD);
      ADD("self_attn.k_proj.bias", 0, SHKV * SD);
      ADD("self_attn.v_proj.bias", 0, SHKV * SD);
    }
    if (qwen3) {
      ADD("self_attn.q_norm.weight", 0, SD);
      ADD("self_attn.k_norm.weight", 0, SD);
    }
    ADD("post_attention_layernorm.weight", 0, SC);
    ADD("mlp.gate_proj.weight", SF, SC);
    ADD("mlp.up_proj.weight", SF, SC);
    ADD("mlp.down_proj.weight", SC, SF);
#undef ADD
  }
  k = synth_add(e, k, s, "model.norm.weight", 0, SC, pool, &used);
  if (!s->tied) k = synth_add(e, k, s, "lm_head.weight", SV, SC, pool, &used);
  size_t len;
  uint8_t *f = st_build(e, k, &len);
  write_file(dir, "model.safetensors", f, len);
  free(f);
}

static int synth_load(const synth_t *s, model_t **m) {
  char *dir = tmp_dir();
  synth_write(dir, s);
  int rc = load_quiet(m, dir);
  tmp_rm(dir);
  return rc;
}

static void test_synth_archs(void **state) {
  (void)state;
  model_t *m = NULL;
  /* Qwen2: QKV biases whatever attention_bias says; values survive conversion to f32 */
  synth_t q2 = {.arch = "Qwen2ForCausalLM", .dtype = "BF16", .tied = 1};
  assert_int_equal(synth_load(&q2, &m), 0);
  assert_int_equal(m->cfg.arch, ARCH_QWEN2);
  assert_true(m->cfg.qkv_bias);
  assert_int_equal(m->cfg.dtype, DTYPE_BF16);
  assert_weight_shape(&m->w.layers[1].bq, 1, SH * SD);
  assert_weight_shape(&m->w.layers[1].bk, 1, SHKV * SD);
  assert_int_equal(m->w.layers[1].bv.dtype, DTYPE_F32);
  assert_true(((const float *)m->w.layers[1].bk.data)[3] == 1.0f + 0.01f * 3);
  assert_int_equal(m->cfg.n_eos, 2);
  assert_int_equal(m->cfg.eos_ids[1], 3);
  assert_true(m->cfg.norm_eps == 1e-6f && m->cfg.rope_theta == 1e6f);
  int64_t C = SC, F = SF, QD = SH * SD, KD = SHKV * SD;
  assert_int_equal(model_n_params(m), SV * C + C + SL * (2 * C + 2 * QD * C + 2 * KD * C + 3 * F * C + QD + 2 * KD));
  model_free(m);
  /* Qwen3: per-head Q/K norms */
  synth_t q3 = {.arch = "Qwen3ForCausalLM", .dtype = "F16", .tied = 0};
  assert_int_equal(synth_load(&q3, &m), 0);
  assert_int_equal(m->cfg.arch, ARCH_QWEN3);
  assert_true(m->cfg.qk_norm);
  assert_false(m->cfg.qkv_bias);
  assert_weight_shape(&m->w.layers[0].q_norm, 1, SD);
  assert_weight_shape(&m->w.layers[0].k_norm, 1, SD);
  assert_weight_shape(&m->w.output, SV, SC);
  assert_int_equal(m->w.output.dtype, DTYPE_F16);
  model_free(m);
  /* Mistral with a sliding window and Llama 3 RoPE scaling; Llama with attention_bias */
  synth_t mi = {.arch = "MistralForCausalLM",
                .dtype = "F32",
                .tied = 1,
                .extra_cfg =
                    "\"sliding_window\":4096,\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,"
                    "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}"};
  assert_int_equal(synth_load(&mi, &m), 0);
  assert_int_equal(m->cfg.arch, ARCH_MISTRAL);
  assert_int_equal(m->cfg.sliding_window, 4096);
  assert_int_equal(m->cfg.rope_scaling, ROPE_SCALING_LLAMA3);
  assert_true(m->cfg.rope_factor == 8.0f && m->cfg.rope_low_freq_factor == 1.0f &&
              m->cfg.rope_high_freq_factor == 4.0f);
  assert_int_equal(m->cfg.rope_orig_max_pos, 8192);
  model_free(m);
  synth_t li = {.arch = "LlamaForCausalLM",
                .dtype = "F32",
                .tied = 1,
                .extra_cfg = "\"rope_scaling\":{\"type\":\"linear\",\"factor\":2.0}"};
  assert_int_equal(synth_load(&li, &m), 0);
  assert_int_equal(m->cfg.rope_scaling, ROPE_SCALING_LINEAR);
  assert_true(m->cfg.rope_factor == 2.0f);
  model_free(m);
  /* generation_config.json's EOS ids join config.json's (Llama 3 instruct stops on <|eot_id|>) */
  {
    char *dir = tmp_dir();
    synth_t g = {.arch = "LlamaForCausalLM", .dtype = "F32", .tied = 1};
    synth_write(dir, &g);
    const char *gen = "{\"bos_token_id\": 1, \"eos_token_id\": [2, 5, 3]}";
    write_file(dir, "generation_config.json", gen, strlen(gen));
    assert_int_equal(load_quiet(&m, dir), 0);
    assert_int_equal(m->cfg.n_eos, 3);
    assert_int_equal(m->cfg.eos_ids[0], 2);
    assert_int_equal(m->cfg.eos_ids[1], 3);
    assert_int_equal(m->cfg.eos_ids[2], 5);
    model_free(m);
    gen = "{\"eos_token_id\": \"two\"}";
    write_file(dir, "generation_config.json", gen, strlen(gen));
    assert_int_equal(load_quiet(&m, dir), STRATA_EFORMAT);
    tmp_rm(dir);
  }
  /* an unsupported RoPE scaling type is named, not silently ignored */
  synth_t yarn = {.arch = "LlamaForCausalLM",
                  .dtype = "F32",
                  .tied = 1,
                  .extra_cfg = "\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4.0}"};
  assert_int_equal(synth_load(&yarn, &m), STRATA_EUNSUPPORTED);
  assert_null(m);
}

static void test_synth_errors(void **state) {
  (void)state;
  model_t *m = NULL;
  synth_t base = {.arch = "LlamaForCausalLM", .dtype = "F16", .tied = 0};
  assert_int_equal(synth_load(&base, &m), 0);
  model_free(m);
  synth_t s = base;
  s.bad_shape = "model.layers.1.mlp.up_proj.weight";
  assert_int_equal(synth_load(&s, &m), STRATA_EFORMAT);
  s = base;
  s.skip = "model.layers.1.self_attn.v_proj.weight";
  assert_int_equal(synth_load(&s, &m), STRATA_EFORMAT);
  s = base;
  s.skip = "lm_head.weight"; /* untied but no output matrix */
  assert_int_equal(synth_load(&s, &m), STRATA_EFORMAT);
  s = base;
  s.bad_dtype = "model.layers.0.mlp.gate_proj.weight";
  assert_int_equal(synth_load(&s, &m), STRATA_EUNSUPPORTED);
  s = base;
  s.bad_end = "model.layers.0.mlp.gate_proj.weight";
  assert_int_equal(synth_load(&s, &m), STRATA_EFORMAT);
  s = base;
  s.arch = "GPT2LMHeadModel";
  assert_int_equal(synth_load(&s, &m), STRATA_EUNSUPPORTED);
  {
    /* write a llama checkpoint under a Qwen2 config: the bias tensors are missing */
    char *dir = tmp_dir();
    synth_write(dir, &base);
    const char *cfg =
        "{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":16,\"intermediate_size\":24,"
        "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":32}";
    write_file(dir, "config.json", cfg, strlen(cfg));
    assert_int_equal(load_quiet(&m, dir), STRATA_EFORMAT);
    /* bad config values: heads not dividing, a string where a number belongs, missing sizes */
    const char *bad[] = {
        "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":16,\"intermediate_size\":24,\"num_hidden_layers\":2,"
        "\"num_attention_heads\":4,\"num_key_value_heads\":3,\"vocab_size\":32}",
        "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":\"16\",\"intermediate_size\":24,"
        "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":32}",
        "{\"architectures\":[\"LlamaForCausalLM\"],\"intermediate_size\":24,\"num_hidden_layers\":2,"
        "\"num_attention_heads\":4,\"vocab_size\":32}",
        "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":16,\"intermediate_size\":24,\"num_hidden_layers\":2,"
        "\"num_attention_heads\":0,\"vocab_size\":32}",
        "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":16,\"intermediate_size\":24,\"num_hidden_layers\":"
        "1e12,"
        "\"num_attention_heads\":4,\"vocab_size\":32}",
        "[1,2,3]",
        "{\"hidden_size\":16",
        "{}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
      write_file(dir, "config.json", bad[i], strlen(bad[i]));
      assert_int_equal(load_quiet(&m, dir), STRATA_EFORMAT);
    }
    /* no config.json at all */
    char p[1200];
    snprintf(p, sizeof(p), "%s/config.json", dir);
    unlink(p);
    assert_int_equal(load_quiet(&m, dir), STRATA_ENOTFOUND);
    /* config but no weights */
    write_file(dir, "config.json", cfg, strlen(cfg));
    snprintf(p, sizeof(p), "%s/model.safetensors", dir);
    unlink(p);
    assert_int_equal(load_quiet(&m, dir), STRATA_ENOTFOUND);
    tmp_rm(dir);
  }
  assert_int_equal(load_quiet(&m, "/nonexistent/model/dir"), STRATA_ENOTFOUND);
  assert_int_equal(load_quiet(&m, "dummy:no-such-preset"), STRATA_ENOTFOUND);
  assert_null(m);
}

/* A tensor of the real stories checkpoint against a config.json that disagrees by one column. */
static void test_stories_wrong_config(void **state) {
  (void)state;
  char src[1024], cfgp[1024];
  model_path(src, sizeof(src), "stories260K-hf/model.safetensors");
  model_path(cfgp, sizeof(cfgp), "stories260K-hf/config.json");
  size_t len;
  char *text = read_whole(cfgp, &len);
  cJSON *cfg = cJSON_Parse(text);
  cJSON_ReplaceItemInObject(cfg, "intermediate_size", cJSON_CreateNumber(171));
  char *js = cJSON_Print(cfg);
  char *dir = tmp_dir();
  link_into(dir, "model.safetensors", src);
  write_file(dir, "config.json", js, strlen(js));
  model_t *m = NULL;
  assert_int_equal(load_quiet(&m, dir), STRATA_EFORMAT);
  cJSON_ReplaceItemInObject(cfg, "intermediate_size", cJSON_CreateNumber(172));
  cJSON_ReplaceItemInObject(cfg, "architectures", cJSON_CreateStringArray((const char *[]){"FalconForCausalLM"}, 1));
  free(js);
  js = cJSON_Print(cfg);
  write_file(dir, "config.json", js, strlen(js));
  assert_int_equal(load_quiet(&m, dir), STRATA_EUNSUPPORTED);
  assert_null(m);
  tmp_rm(dir);
  free(js);
  cJSON_Delete(cfg);
  free(text);
}

/* ---------------------------------------------------------------- corrupt files */

static void test_truncated_gguf(void **state) {
  (void)state;
  char src[1024];
  model_path(src, sizeof(src), "stories260K/stories260K.gguf");
  size_t len;
  char *buf = read_whole(src, &len);
  char *dir = tmp_dir(), p[1200];
  snprintf(p, sizeof(p), "%s/t.gguf", dir);
  size_t cuts[80];
  int n = 0;
  for (size_t c = 0; c < 32; c += 3) cuts[n++] = c;
  for (size_t c = 32; c < 14200; c += 487) cuts[n++] = c; /* metadata and tensor directory */
  size_t tail[] = {14152, 14176, 20000, 300000, 900000, len - 4, len - 1};
  for (size_t i = 0; i < sizeof(tail) / sizeof(tail[0]); i++) cuts[n++] = tail[i];
  for (int i = 0; i < n; i++) {
    write_file(dir, "t.gguf", buf, cuts[i]);
    model_t *m = NULL;
    int rc = load_quiet(&m, p);
    if (rc != STRATA_EFORMAT) fprintf(stderr, "cut at %zu: %d\n", cuts[i], rc);
    assert_int_equal(rc, STRATA_EFORMAT);
    assert_null(m);
  }
  /* the whole file still loads from the temp dir */
  write_file(dir, "t.gguf", buf, len);
  model_t *m = NULL;
  assert_int_equal(model_load(&m, p, NULL), 0);
  assert_string_equal(m->name, "t.gguf");
  model_free(m);
  tmp_rm(dir);
  free(buf);
}

static void test_truncated_safetensors(void **state) {
  (void)state;
  char src[1024], cfgp[1024];
  model_path(src, sizeof(src), "stories260K-hf/model.safetensors");
  model_path(cfgp, sizeof(cfgp), "stories260K-hf/config.json");
  size_t len;
  char *buf = read_whole(src, &len);
  char *dir = tmp_dir();
  link_into(dir, "config.json", cfgp);
  size_t cuts[80];
  int n = 0;
  for (size_t c = 0; c < 12; c++) cuts[n++] = c;
  for (size_t c = 12; c < 4870; c += 211) cuts[n++] = c; /* inside the JSON header */
  size_t tail[] = {4864, 4865, 5000, 131072, 600000, len - 4, len - 1};
  for (size_t i = 0; i < sizeof(tail) / sizeof(tail[0]); i++) cuts[n++] = tail[i];
  for (int i = 0; i < n; i++) {
    write_file(dir, "model.safetensors", buf, cuts[i]);
    model_t *m = NULL;
    int rc = load_quiet(&m, dir);
    if (rc != STRATA_EFORMAT) fprintf(stderr, "cut at %zu: %d\n", cuts[i], rc);
    assert_int_equal(rc, STRATA_EFORMAT);
    assert_null(m);
  }
  /* a header whose JSON is cut: the length field shrunk to half the header */
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = (hl << 8) | (uint8_t)buf[i];
  char *cut = malloc(len);
  memcpy(cut, buf, len);
  for (int i = 0; i < 8; i++) cut[i] = (char)((hl / 2) >> (8 * i));
  write_file(dir, "model.safetensors", cut, len);
  model_t *m = NULL;
  assert_int_equal(load_quiet(&m, dir), STRATA_EFORMAT);
  /* a length field far past the file */
  memcpy(cut, buf, len);
  memset(cut, 0xff, 8);
  write_file(dir, "model.safetensors", cut, len);
  assert_int_equal(load_quiet(&m, dir), STRATA_EFORMAT);
  free(cut);
  tmp_rm(dir);
  free(buf);
}

static uint32_t lcg(uint32_t *s) {
  *s = *s * 1664525u + 1013904223u;
  return *s >> 8;
}

/* Bit flips in the headers: whatever happens, an error code or a model, never a crash or a leak. */
static void test_bit_flips(void **state) {
  (void)state;
  char g[1024], st[1024], cfgp[1024];
  model_path(g, sizeof(g), "stories260K/stories260K.gguf");
  model_path(st, sizeof(st), "stories260K-hf/model.safetensors");
  model_path(cfgp, sizeof(cfgp), "stories260K-hf/config.json");
  size_t glen, slen;
  char *gbuf = read_whole(g, &glen), *sbuf = read_whole(st, &slen);
  char *dir = tmp_dir(), gp[1200];
  snprintf(gp, sizeof(gp), "%s/f.gguf", dir);
  link_into(dir, "config.json", cfgp);
  uint32_t seed = 12345;
  int n_ok = 0, n_err = 0;
  for (int i = 0; i < 40; i++) {
    /* GGUF: the fixed header and the tensor directory (the token strings are less interesting) */
    size_t at = i < 8 ? (size_t)(lcg(&seed) % 24) : 10600 + lcg(&seed) % (14152 - 10600);
    int bit = (int)(lcg(&seed) % 8);
    gbuf[at] ^= (char)(1 << bit);
    write_file(dir, "f.gguf", gbuf, glen);
    gbuf[at] ^= (char)(1 << bit);
    model_t *m = NULL;
    int rc = load_quiet(&m, gp);
    assert_true(rc == 0 || rc == STRATA_EFORMAT || rc == STRATA_EUNSUPPORTED);
    assert_true((rc == 0) == (m != NULL));
    rc ? n_err++ : n_ok++;
    model_free(m);
    /* safetensors: the length field and the JSON header */
    at = i < 4 ? (size_t)(lcg(&seed) % 8) : 8 + lcg(&seed) % 4856;
    sbuf[at] ^= (char)(1 << bit);
    write_file(dir, "model.safetensors", sbuf, slen);
    sbuf[at] ^= (char)(1 << bit);
    m = NULL;
    rc = load_quiet(&m, dir);
    assert_true(rc == 0 || rc == STRATA_EFORMAT || rc == STRATA_EUNSUPPORTED);
    assert_true((rc == 0) == (m != NULL));
    rc ? n_err++ : n_ok++;
    model_free(m);
  }
  assert_true(n_err > 20); /* most flips in a header must be caught */
  tmp_rm(dir);
  free(gbuf);
  free(sbuf);
}

/* ---------------------------------------------------------------- a test-side GGUF writer */

typedef struct {
  uint8_t *b;
  size_t n, cap;
} gbuf_t;

static void gb_put(gbuf_t *g, const void *p, size_t n) {
  if (g->n + n > g->cap) {
    g->cap = (g->n + n) * 2;
    g->b = realloc(g->b, g->cap);
    assert_non_null(g->b);
  }
  memcpy(g->b + g->n, p, n);
  g->n += n;
}
static void gb_u32(gbuf_t *g, uint32_t v) { gb_put(g, &v, 4); }
static void gb_u64(gbuf_t *g, uint64_t v) { gb_put(g, &v, 8); }
static void gb_str(gbuf_t *g, const char *s) {
  gb_u64(g, strlen(s));
  gb_put(g, s, strlen(s));
}
static void gb_kv_u32(gbuf_t *g, const char *k, uint32_t v) {
  gb_str(g, k);
  gb_u32(g, 4);
  gb_u32(g, v);
}
static void gb_kv_f32(gbuf_t *g, const char *k, float v) {
  gb_str(g, k);
  gb_u32(g, 6);
  gb_put(g, &v, 4);
}
static void gb_kv_str(gbuf_t *g, const char *k, const char *v) {
  gb_str(g, k);
  gb_u32(g, 8);
  gb_str(g, v);
}

typedef struct {
  char name[64];
  int n_dims;
  int64_t ne[2]; /* ne[0] = row length */
  uint32_t ggml_type;
  size_t n_bytes;
} gg_t;

/* gguf_synth: a GGUF v3 model of ARCH (C 256, F 256, L 1, H 2, Hkv 1, D 128, V 8) with matrices of
 * GGML type MTYPE; returns the file (malloc'd) and fills the tensor list for checks. */
/* ROPE_FREQS: 0 none, 1 llama3 divisors (factor 8, low 1, high 4, original 8192), 2 arbitrary ones. */
static uint8_t *gguf_synth(const char *arch, uint32_t mtype, size_t mblock_bytes, size_t *len, gg_t *t, int *nt,
                           int rope_freqs) {
  const int C = 256, F = 256, H = 2, HKV = 1, D = 128, V = 8;
  int n = 0;
#define T(nm, nd, e0, e1, ty)                                                                  \
  do {                                                                                         \
    snprintf(t[n].name, sizeof(t[n].name), "%s", nm);                                          \
    t[n].n_dims = nd, t[n].ne[0] = e0, t[n].ne[1] = e1, t[n].ggml_type = ty;                   \
    t[n].n_bytes = ty == 0 ? (size_t)(e0) * (e1)*4 : (size_t)(e0) / 256 * mblock_bytes * (e1); \
    n++;                                                                                       \
  } while (0)
  T("token_embd.weight", 2, C, V, mtype);
  T("blk.0.attn_norm.weight", 1, C, 1, 0);
  T("blk.0.attn_q.weight", 2, C, H * D, mtype);
  T("blk.0.attn_k.weight", 2, C, HKV * D, mtype);
  T("blk.0.attn_v.weight", 2, C, HKV * D, mtype);
  if (strcmp(arch, "qwen2") == 0) {
    T("blk.0.attn_q.bias", 1, H * D, 1, 0);
    T("blk.0.attn_k.bias", 1, HKV * D, 1, 0);
    T("blk.0.attn_v.bias", 1, HKV * D, 1, 0);
  }
  if (strcmp(arch, "qwen3") == 0) {
    T("blk.0.attn_q_norm.weight", 1, D, 1, 0);
    T("blk.0.attn_k_norm.weight", 1, D, 1, 0);
  }
  T("blk.0.attn_output.weight", 2, H * D, C, mtype);
  T("blk.0.ffn_norm.weight", 1, C, 1, 0);
  T("blk.0.ffn_gate.weight", 2, C, F, mtype);
  T("blk.0.ffn_up.weight", 2, C, F, mtype);
  T("blk.0.ffn_down.weight", 2, F, C, mtype);
  T("output_norm.weight", 1, C, 1, 0);
  T("output.weight", 2, C, V, mtype);
  if (rope_freqs) T("rope_freqs.weight", 1, D / 2, 1, 0);
#undef T
  *nt = n;
  gbuf_t g = {0};
  char k[128];
  gb_put(&g, "GGUF", 4);
  gb_u32(&g, 3);
  gb_u64(&g, (uint64_t)n);
  gb_u64(&g, 11);
  gb_kv_str(&g, "general.architecture", arch);
#define KU(key, v) (snprintf(k, sizeof(k), "%s." key, arch), gb_kv_u32(&g, k, v))
  KU("embedding_length", C);
  KU("block_count", 1);
  KU("feed_forward_length", F);
  KU("attention.head_count", H);
  KU("attention.head_count_kv", HKV);
  KU("context_length", 4096);
#undef KU
  snprintf(k, sizeof(k), "%s.attention.layer_norm_rms_epsilon", arch);
  gb_kv_f32(&g, k, 1e-6f);
  snprintf(k, sizeof(k), "%s.rope.freq_base", arch);
  gb_kv_f32(&g, k, 1e6f);
  gb_kv_u32(&g, "tokenizer.ggml.bos_token_id", 1);
  gb_kv_u32(&g, "tokenizer.ggml.eos_token_id", 2);
  uint64_t off = 0;
  for (int i = 0; i < n; i++) {
    gb_str(&g, t[i].name);
    gb_u32(&g, (uint32_t)t[i].n_dims);
    for (int d = 0; d < t[i].n_dims; d++) gb_u64(&g, (uint64_t)t[i].ne[d]);
    gb_u32(&g, t[i].ggml_type);
    gb_u64(&g, off);
    off += (t[i].n_bytes + 31) / 32 * 32;
  }
  uint8_t zero[32] = {0};
  if (g.n % 32) gb_put(&g, zero, 32 - g.n % 32);
  for (int i = 0; i < n; i++) {
    uint8_t *d = malloc(t[i].n_bytes);
    for (size_t j = 0; j < t[i].n_bytes; j++) d[j] = (uint8_t)(j * 7 + (size_t)i);
    if (t[i].ggml_type == 0)
      for (size_t j = 0; j < t[i].n_bytes / 4; j++) memcpy(d + 4 * j, &(float){1.0f}, 4);
    if (strcmp(t[i].name, "rope_freqs.weight") == 0) {
      /* Meta's Llama 3.1 rule: wavelengths under 8192/4 keep their frequency, over 8192/1 are
       * divided by 8, and in between the divisor blends smoothly; llama.cpp stores the divisors. */
      for (int j = 0; j < D / 2; j++) {
        double wl = 2 * M_PI * pow(1e6, 2.0 * j / D), smooth = (8192.0 / wl - 1.0) / 3.0;
        float div = wl < 2048.0 ? 1.0f : wl > 8192.0 ? 8.0f : (float)(1.0 / ((1 - smooth) / 8.0 + smooth));
        if (rope_freqs == 2) div = 1.0f + (float)j;
        memcpy(d + 4 * j, &div, 4);
      }
    }
    gb_put(&g, d, t[i].n_bytes);
    free(d);
    if (g.n % 32) gb_put(&g, zero, 32 - g.n % 32);
  }
  *len = g.n;
  return g.b;
}

static void test_gguf_synth(void **state) {
  (void)state;
  static const struct {
    const char *arch;
    uint32_t ggml;
    size_t block;
    dtype_t dt;
  } cases[] = {
      {"llama", 12, 144, DTYPE_Q4_K},   {"mistral", 14, 210, DTYPE_Q6_K},
      {"qwen2", 13, 176, DTYPE_Q5_K},   {"qwen3", 8, 34 * 8, DTYPE_Q8_0}, /* 8 Q8_0 blocks per 256 elements */
      {"llama", 2, 18 * 8, DTYPE_Q4_0},
  };
  char *dir = tmp_dir(), p[1200];
  snprintf(p, sizeof(p), "%s/s.gguf", dir);
  gg_t t[32];
  int nt;
  for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
    size_t len;
    uint8_t *f = gguf_synth(cases[c].arch, cases[c].ggml, cases[c].block, &len, t, &nt, 0);
    write_file(dir, "s.gguf", f, len);
    model_t *m = NULL;
    assert_int_equal(load_quiet(&m, p), 0);
    assert_int_equal(m->cfg.dtype, cases[c].dt);
    assert_int_equal(m->cfg.head_dim, 128);
    assert_int_equal(m->cfg.vocab_size, 8); /* from the embedding: no token list */
    assert_int_equal(m->cfg.rope_style, c == 2 || c == 3 ? ROPE_STYLE_NEOX : ROPE_STYLE_NORM);
    assert_int_equal(m->cfg.qkv_bias, c == 2);
    assert_int_equal(m->cfg.qk_norm, c == 3);
    assert_false(m->cfg.tied_embeddings);
    const weight_t *wq = &m->w.layers[0].wq;
    assert_weight_shape(wq, 256, 256);
    assert_weight_shape(&m->w.layers[0].wk, 128, 256);
    assert_int_equal(weight_bytes(wq), 256 / 256 * cases[c].block * 256);
    /* wq is the third tensor: its bytes are the pattern the writer put there */
    assert_int_equal(((const uint8_t *)wq->data)[5], (uint8_t)(5 * 7 + 2));
    if (c == 2) assert_true(((const float *)m->w.layers[0].bv.data)[0] == 1.0f);
    model_free(m);
    free(f);
  }
  /* an unsupported GGML type (Q4_1) and an unsupported architecture */
  size_t len;
  uint8_t *f = gguf_synth("llama", 3, 20 * 8, &len, t, &nt, 0);
  write_file(dir, "s.gguf", f, len);
  model_t *m = NULL;
  assert_int_equal(load_quiet(&m, p), STRATA_EUNSUPPORTED);
  free(f);
  /* Llama 3.1-style rope_freqs.weight without scaling metadata: recognised as llama3 scaling */
  f = gguf_synth("llama", 8, 34 * 8, &len, t, &nt, 1);
  write_file(dir, "s.gguf", f, len);
  assert_int_equal(load_quiet(&m, p), 0);
  assert_int_equal(m->cfg.rope_scaling, ROPE_SCALING_LLAMA3);
  assert_true(m->cfg.rope_factor == 8.0f && m->cfg.rope_low_freq_factor == 1.0f);
  assert_true(m->cfg.rope_high_freq_factor == 4.0f && m->cfg.rope_orig_max_pos == 8192);
  model_free(m);
  free(f);
  /* divisors that follow no known rule: loaded, scaling left off (with a warning) */
  f = gguf_synth("llama", 8, 34 * 8, &len, t, &nt, 2);
  write_file(dir, "s.gguf", f, len);
  assert_int_equal(load_quiet(&m, p), 0);
  assert_int_equal(m->cfg.rope_scaling, ROPE_SCALING_NONE);
  model_free(m);
  free(f);
  f = gguf_synth("gpt2", 0, 0, &len, t, &nt, 0);
  write_file(dir, "s.gguf", f, len);
  assert_int_equal(load_quiet(&m, p), STRATA_EUNSUPPORTED);
  free(f);
  /* stories260K's architecture string rewritten to "bloom" */
  char src[1024];
  model_path(src, sizeof(src), "stories260K/stories260K.gguf");
  char *buf = read_whole(src, &len);
  char *at = memmem(buf, len, "general.architecture\x08\0\0\0\x05\0\0\0\0\0\0\0llama", 37);
  assert_non_null(at);
  memcpy(at + 32, "bloom", 5);
  write_file(dir, "s.gguf", buf, len);
  assert_int_equal(load_quiet(&m, p), STRATA_EUNSUPPORTED);
  assert_null(m);
  free(buf);
  tmp_rm(dir);
}

/* ---------------------------------------------------------------- dummy presets */

/* Published parameter counts: Llama 3 8B 8,030,261,248; Llama 3 70B 70,553,706,496; Qwen2 7B
 * 7,615,616,512 (their model cards / safetensors metadata). The small presets use the formula. */
static int64_t naive_params(int64_t C, int64_t L, int64_t H, int64_t Hkv, int64_t D, int64_t F, int64_t V, int bias) {
  int64_t attn = C * H * D * 2 + C * Hkv * D * 2 + (bias ? H * D + 2 * Hkv * D : 0);
  return 2 * V * C + C + L * (attn + 3 * C * F + 2 * C);
}

static void test_dummy_presets(void **state) {
  (void)state;
  const char *const *names = model_dummy_presets();
  static const struct {
    const char *name;
    int C, L, H, Hkv, D, F, V;
    dtype_t dt;
    int64_t params;
  } want[] = {
      {"tiny", 64, 2, 4, 2, 16, 128, 512, DTYPE_F32, 0},
      {"llama-100m", 768, 12, 12, 4, 64, 2048, 32000, DTYPE_F32, 0},
      {"llama3-8b", 4096, 32, 32, 8, 128, 14336, 128256, DTYPE_BF16, 8030261248LL},
      {"llama3-70b", 8192, 80, 64, 8, 128, 28672, 128256, DTYPE_BF16, 70553706496LL},
      {"qwen2-7b", 3584, 28, 28, 4, 128, 18944, 152064, DTYPE_BF16, 7615616512LL},
  };
  int n = 0;
  while (names[n]) n++;
  assert_int_equal(n, 5);
  for (int i = 0; i < n; i++) {
    assert_string_equal(names[i], want[i].name);
    model_t m;
    memset(&m, 0, sizeof(m));
    assert_int_equal(ld_dummy_config(names[i], -1, &m.cfg), 0);
    const model_cfg_t *c = &m.cfg;
    assert_int_equal(c->dim, want[i].C);
    assert_int_equal(c->n_layers, want[i].L);
    assert_int_equal(c->n_heads, want[i].H);
    assert_int_equal(c->n_kv_heads, want[i].Hkv);
    assert_int_equal(c->head_dim, want[i].D);
    assert_int_equal(c->hidden_dim, want[i].F);
    assert_int_equal(c->vocab_size, want[i].V);
    assert_int_equal(c->dtype, want[i].dt);
    assert_int_equal(c->bos_id, 256);
    assert_int_equal(c->eos_ids[0], 257);
    int bias = strcmp(names[i], "qwen2-7b") == 0;
    assert_int_equal(c->qkv_bias, bias);
    assert_int_equal(model_n_params(&m),
                     naive_params(want[i].C, want[i].L, want[i].H, want[i].Hkv, want[i].D, want[i].F, want[i].V, bias));
    if (want[i].params) assert_int_equal(model_n_params(&m), want[i].params);
    if (strncmp(names[i], "llama3", 6) == 0) {
      assert_int_equal(c->rope_scaling, ROPE_SCALING_LLAMA3);
      assert_true(c->rope_factor == 8.0f && c->rope_low_freq_factor == 1.0f && c->rope_high_freq_factor == 4.0f);
      assert_int_equal(c->rope_orig_max_pos, 8192);
      assert_true(c->rope_theta == 500000.0f);
    }
  }
  assert_int_equal(naive_params(768, 12, 12, 4, 64, 2048, 32000, 0) / 1000000, 124); /* untied: 124.7M */
  model_cfg_t c;
  assert_int_equal(ld_dummy_config("qwen2-7b", DTYPE_F16, &c), 0);
  assert_int_equal(c.dtype, DTYPE_F16);
  assert_true(c.rope_theta == 1e6f);
  assert_int_equal(ld_dummy_config("tiny", DTYPE_Q8_0, &c), STRATA_EUNSUPPORTED);
}

/* An independent statement of the documented generator: splitmix64's finalizer keyed by seed, then
 * tensor, then element; the top 24 bits scaled to [-1, 1). */
static uint64_t ref_mix(uint64_t z) {
  z ^= z >> 30;
  z *= 0xbf58476d1ce4e5b9ull;
  z ^= z >> 27;
  z *= 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static float ref_dummy(uint64_t seed, uint64_t tensor, uint64_t e) {
  const uint64_t g = 0x9e3779b97f4a7c15ull;
  uint64_t key = ref_mix(ref_mix(seed) + tensor * g);
  return (float)(ref_mix(key + (e + 1) * g) >> 40) / 8388608.0f - 1.0f;
}

static void check_dummy_matrix(const weight_t *w, uint64_t seed, uint64_t idx) {
  float bound = 1.0f / sqrtf((float)w->cols);
  int64_t n = w->rows * w->cols;
  double sum = 0;
  for (int64_t i = 0; i < n; i++) {
    float v = w->dtype == DTYPE_F32 ? ((const float *)w->data)[i] : bf16_to_f32(((const uint16_t *)w->data)[i]);
    assert_true(fabsf(v) <= bound * 1.004f);
    sum += v;
  }
  assert_true(fabs(sum / (double)n) < bound * 0.1); /* centred */
  for (int64_t i = 0; i < n; i += n / 7 + 1) {
    float want = bound * ref_dummy(seed, idx, (uint64_t)i);
    float v = w->dtype == DTYPE_F32 ? ((const float *)w->data)[i] : bf16_to_f32(((const uint16_t *)w->data)[i]);
    assert_true(fabsf(v - want) <= fabsf(want) * 0.008f + 1e-7f);
  }
}

/* Left for a GPU: the matrices carry their generator (seed, tensor index, scale) and no host data; vectors
 * stay on the host; the CPU backend refuses such a weight with an error instead of reading NULL. */
static void test_dummy_on_device(void **state) {
  (void)state;
  model_t *m = NULL;
  model_load_opts_t o = {.seed = 7, .dtype = -1, .dummy_on_device = 1};
  assert_int_equal(model_load(&m, "dummy:tiny", &o), 0);
  const weight_t *wq = &m->w.layers[1].wq;
  assert_null(wq->data);
  assert_int_equal(wq->gen.on, 1);
  assert_int_equal(wq->gen.seed, 7);
  assert_int_equal(wq->gen.tensor, 1 + 16 + 1); /* the host loader's tensor index */
  assert_true(wq->gen.scale == 1.0f / sqrtf((float)wq->cols));
  assert_int_equal(wq->rows, 64);
  assert_int_equal(wq->cols, 64);
  assert_non_null(m->w.layers[1].attn_norm.data);
  backend_t *cpu = NULL;
  assert_int_equal(backend_create(&cpu, "cpu", 1, -1), 0);
  weight_t dst;
  int lvl = log_get_level();
  log_set_level(LOG_LEVEL_OFF);
  assert_int_equal(cpu->ops->weight_prepare(cpu, &dst, wq), STRATA_EUNSUPPORTED);
  log_set_level(lvl);
  backend_destroy(cpu);
  model_free(m);
}

static void test_dummy_tiny(void **state) {
  (void)state;
  model_t *a = NULL, *b = NULL, *c = NULL, *d = NULL;
  assert_int_equal(model_load(&a, "dummy:tiny", NULL), 0);
  model_load_opts_t o = {.seed = 0, .dtype = -1};
  assert_int_equal(model_load(&b, "dummy:tiny", &o), 0);
  o.seed = 7;
  assert_int_equal(model_load(&c, "dummy:tiny", &o), 0);
  o.dtype = DTYPE_BF16;
  assert_int_equal(model_load(&d, "dummy:tiny", &o), 0);
  assert_string_equal(a->name, "dummy:tiny");
  assert_string_equal(a->path, "dummy:tiny");
  assert_string_equal(a->tokenizer_path, "");
  assert_int_equal(d->cfg.dtype, DTYPE_BF16);
  const model_cfg_t *cf = &a->cfg;
  int64_t total = weight_bytes(&a->w.tok_embd) / 4 + weight_bytes(&a->w.output) / 4 + cf->dim;
  for (int l = 0; l < cf->n_layers; l++) {
    const layer_weights_t *x = &a->w.layers[l];
    assert_weight_shape(&x->wq, 64, 64);
    assert_weight_shape(&x->wk, 32, 64);
    assert_weight_shape(&x->w_down, 64, 128);
    for (int i = 0; i < 64; i++) assert_true(((const float *)x->attn_norm.data)[i] == 1.0f);
    const weight_t *ws[] = {&x->wq, &x->wk, &x->wv, &x->wo, &x->w_gate, &x->w_up, &x->w_down};
    for (int k = 0; k < 7; k++) total += ws[k]->rows * ws[k]->cols;
    total += 2 * cf->dim;
    /* same seed: same weights; another seed: others; bf16: the f32 values rounded */
    assert_same_weight(&x->w_up, &b->w.layers[l].w_up);
    assert_true(memcmp(x->w_up.data, c->w.layers[l].w_up.data, (size_t)weight_bytes(&x->w_up)) != 0);
    for (int64_t i = 0; i < x->w_up.rows * x->w_up.cols; i++)
      assert_int_equal(((const uint16_t *)d->w.layers[l].w_up.data)[i],
                       f32_to_bf16(((const float *)c->w.layers[l].w_up.data)[i]));
  }
  assert_int_equal(total, model_n_params(a));
  /* tensor indices: 0 embedding, 1 + 16 l + slot (wq slot 1, w_up slot 12), then norm and output */
  check_dummy_matrix(&a->w.tok_embd, 0x5eed5eed5eed5eedull, 0);
  check_dummy_matrix(&a->w.layers[1].wq, 0x5eed5eed5eed5eedull, 1 + 16 + 1);
  check_dummy_matrix(&c->w.layers[0].w_up, 7, 1 + 12);
  check_dummy_matrix(&d->w.layers[1].w_down, 7, 1 + 16 + 13);
  check_dummy_matrix(&d->w.output, 7, 1 + 2 * 16 + 1);
  model_free(a);
  model_free(b);
  model_free(c);
  model_free(d);
  o.dtype = DTYPE_Q4_K;
  int lvl = log_get_level();
  log_set_level(LOG_LEVEL_OFF);
  assert_int_equal(model_load(&a, "dummy:tiny", &o), STRATA_EUNSUPPORTED);
  log_set_level(lvl);
  assert_null(a);
}

static void test_dummy_100m(void **state) {
  (void)state;
  model_t *m = NULL;
  assert_int_equal(model_load(&m, "dummy:llama-100m", NULL), 0);
  const model_cfg_t *c = &m->cfg;
  assert_int_equal(c->dtype, DTYPE_F32);
  assert_int_equal(model_n_params(m), naive_params(768, 12, 12, 4, 64, 2048, 32000, 0));
  assert_weight_shape(&m->w.layers[11].wk, 256, 768);
  assert_weight_shape(&m->w.layers[11].w_gate, 2048, 768);
  check_dummy_matrix(&m->w.layers[11].w_gate, 0x5eed5eed5eed5eedull, 1 + 11 * 16 + 11);
  check_dummy_matrix(&m->w.output, 0x5eed5eed5eed5eedull, 1 + 12 * 16 + 1);
  model_free(m);
}

/* ---------------------------------------------------------------- k-quant dequantizers */

static uint16_t h16(float f) { return f32_to_f16(f); }

/* Pack 8 six-bit scales and mins as GGML's k-quants do (see dtype.c's description). */
static void pack_scales(uint8_t out[12], const int sc[8], const int mn[8]) {
  for (int k = 0; k < 4; k++) {
    out[k] = (uint8_t)(sc[k] | ((sc[k + 4] >> 4) << 6));
    out[k + 4] = (uint8_t)(mn[k] | ((mn[k + 4] >> 4) << 6));
    out[k + 8] = (uint8_t)((sc[k + 4] & 15) | ((mn[k + 4] & 15) << 4));
  }
}

static void test_kquants(void **state) {
  (void)state;
  uint32_t s = 99;
  float out[512];
  for (int five = 0; five < 2; five++) {
    /* two super-blocks */
    uint8_t blk[2 * 176];
    float want[512];
    size_t bs = five ? 176 : 144;
    memset(blk, 0, sizeof(blk));
    for (int b = 0; b < 2; b++) {
      uint8_t *p = blk + b * bs;
      float d = b ? 0.5f : 0.125f, dmin = b ? 0.25f : 1.0f;
      uint16_t hd = h16(d), hm = h16(dmin);
      memcpy(p, &hd, 2);
      memcpy(p + 2, &hm, 2);
      int sc[8], mn[8];
      for (int j = 0; j < 8; j++) sc[j] = (int)(lcg(&s) % 64), mn[j] = (int)(lcg(&s) % 64);
      pack_scales(p + 4, sc, mn);
      uint8_t *qh = p + 16, *qs = p + (five ? 48 : 16);
      for (int e = 0; e < 256; e++) {
        int q = (int)(lcg(&s) % (five ? 32 : 16)), sb = e / 32, l = e % 32;
        qs[32 * (sb / 2) + l] |= (uint8_t)((q & 15) << ((sb & 1) * 4));
        if (five && (q & 16)) qh[l] |= (uint8_t)(1 << sb);
        want[b * 256 + e] = d * (float)sc[sb] * (float)q - dmin * (float)mn[sb];
      }
    }
    assert_int_equal(dtype_to_f32(five ? DTYPE_Q5_K : DTYPE_Q4_K, blk, out, 512), 0);
    for (int i = 0; i < 512; i++) assert_true(fabsf(out[i] - want[i]) <= 1e-4f * (1 + fabsf(want[i])));
  }
  /* Q6_K */
  uint8_t blk[2 * 210];
  float want[512];
  memset(blk, 0, sizeof(blk));
  for (int b = 0; b < 2; b++) {
    uint8_t *p = blk + b * 210;
    float d = b ? 0.03125f : 2.0f;
    uint16_t hd = h16(d);
    memcpy(p + 208, &hd, 2);
    int8_t *scales = (int8_t *)(p + 192);
    for (int j = 0; j < 16; j++) scales[j] = (int8_t)((int)(lcg(&s) % 256) - 128);
    for (int e = 0; e < 256; e++) {
      int q = (int)(lcg(&s) % 64), half = e / 128, i = e % 128;
      p[64 * half + i % 64] |= (uint8_t)((q & 15) << (i < 64 ? 0 : 4));
      p[128 + 32 * half + i % 32] |= (uint8_t)((q >> 4) << (2 * (i / 32)));
      want[b * 256 + e] = d * (float)scales[e / 16] * (float)(q - 32);
    }
  }
  assert_int_equal(dtype_to_f32(DTYPE_Q6_K, blk, out, 512), 0);
  for (int i = 0; i < 512; i++) assert_true(fabsf(out[i] - want[i]) <= 1e-4f * (1 + fabsf(want[i])));
  /* A hand-worked Q4_K value: d 1, dmin 0.5; sub-block 5 gets scale 33 (0b10_0001) and min 18
   * (0b01_0010): byte 9 of the scales holds both low nibbles (0x21), the top two bits of byte 1 the
   * scale's high bits (0x80), those of byte 5 the min's (0x40). Element 160 is the first of
   * sub-block 5, an odd sub-block, so the high nibble of qs[64]: 7. 1 * 33 * 7 - 0.5 * 18 = 222. */
  uint8_t q4[144];
  memset(q4, 0, sizeof(q4));
  uint16_t one = h16(1.0f), half_ = h16(0.5f);
  memcpy(q4, &one, 2);
  memcpy(q4 + 2, &half_, 2);
  q4[4 + 9] = 0x21;
  q4[4 + 1] = 0x80;
  q4[4 + 5] = 0x40;
  q4[16 + 64] = 0x70;
  assert_int_equal(dtype_to_f32(DTYPE_Q4_K, q4, out, 256), 0);
  assert_true(out[160] == 222.0f);
  assert_true(out[161] == -9.0f); /* q 0: just the min */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stories_gguf),
      cmocka_unit_test(test_stories_hf),
      cmocka_unit_test(test_stories_layouts_agree),
      cmocka_unit_test(test_tiny_random_f16),
      cmocka_unit_test(test_sharded_hf),
      cmocka_unit_test(test_synth_archs),
      cmocka_unit_test(test_synth_errors),
      cmocka_unit_test(test_stories_wrong_config),
      cmocka_unit_test(test_truncated_gguf),
      cmocka_unit_test(test_truncated_safetensors),
      cmocka_unit_test(test_bit_flips),
      cmocka_unit_test(test_gguf_synth),
      cmocka_unit_test(test_dummy_presets),
      cmocka_unit_test(test_dummy_tiny),
      cmocka_unit_test(test_dummy_on_device),
      cmocka_unit_test(test_dummy_100m),
      cmocka_unit_test(test_kquants),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
