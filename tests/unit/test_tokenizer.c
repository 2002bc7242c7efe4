/* test_tokenizer.c: tokenizers against published vectors (llama.cpp test-tokenizer-0, llama2.c, Meta, ollama,
 * tiktoken) and cross-source agreement (GGUF vs tokenizer.json vs tokenizer.model vs vocab files). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"
#include "common/tok/tok.h"
#include "common/tok/tok_int.h"

static const char *models_dir(void) {
  const char *d = getenv("STRATA_MODELS_DIR");
  return d ? d : "../shared/models";
}

static tok_t *load(const char *rel) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", models_dir(), rel);
  tok_t *t = NULL;
  int rc = tok_load(&t, path);
  if (rc) fprintf(stderr, "cannot load %s: %s\n", path, strata_strerror(rc));
  assert_int_equal(rc, 0);
  return t;
}

static char *read_rel(const char *rel, size_t *len) {
  char path[4096], *buf = NULL;
  snprintf(path, sizeof path, "%s/%s", models_dir(), rel);
  assert_int_equal(file_read_all(path, 64 << 20, &buf, len), 0);
  return buf;
}

/* ids_equal: encodes TEXT and compares with WANT, printing the difference on failure. */
static int ids_equal(const tok_t *t, const char *text, size_t len, int flags, const int32_t *want, int n_want,
                     const char *what) {
  int32_t *ids = NULL;
  int n = 0;
  if (tok_encode(t, text, len, flags, &ids, &n) != 0) return 0;
  int ok = n == n_want && (n == 0 || memcmp(ids, want, (size_t)n * sizeof *ids) == 0);
  if (!ok) {
    fprintf(stderr, "[%s] mismatch for \"%.*s\"\n  got :", what, (int)(len > 80 ? 80 : len), text);
    for (int i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "\n  want:");
    for (int i = 0; i < n_want; i++) fprintf(stderr, " %d", want[i]);
    fprintf(stderr, "\n");
  }
  free(ids);
  return ok;
}

/* round_trips: decode(encode(text)) == text (no specials involved). */
static int round_trips(const tok_t *t, const char *text, size_t len) {
  int32_t *ids = NULL;
  int n = 0;
  char *out = NULL;
  size_t out_len = 0;
  if (tok_encode(t, text, len, 0, &ids, &n) || tok_decode(t, ids, n, 1, &out, &out_len)) return 0;
  int ok = out_len == len && memcmp(out, text, len) == 0;
  if (!ok) fprintf(stderr, "round trip failed for \"%.*s\" -> \"%s\"\n", (int)len, text, out);
  free(ids);
  free(out);
  return ok;
}

/* ---- llama.cpp test-tokenizer-0 vectors ---- */

typedef struct {
  char *inp;
  char **texts;
  size_t *lens;
  int32_t **ids;
  int *n_ids;
  int n;
  char *out;
} vec_file_t;

static void vec_load(vec_file_t *v, const char *name) {
  char rel[512];
  size_t len, olen;
  memset(v, 0, sizeof *v);
  snprintf(rel, sizeof rel, "tokenizers/llama.cpp-vocab/%s.inp", name);
  v->inp = read_rel(rel, &len);
  snprintf(rel, sizeof rel, "tokenizers/llama.cpp-vocab/%s.out", name);
  v->out = read_rel(rel, &olen);
  static const char sep[] = "\n__ggml_vocab_test__\n";
  v->texts = calloc(256, sizeof *v->texts);
  v->lens = calloc(256, sizeof *v->lens);
  v->ids = calloc(256, sizeof *v->ids);
  v->n_ids = calloc(256, sizeof *v->n_ids);
  char *p = v->inp, *end = v->inp + len;
  while (p < end && v->n < 256) {
    char *s = strstr(p, sep);
    if (!s) break;
    v->texts[v->n] = p;
    v->lens[v->n] = (size_t)(s - p);
    v->n++;
    p = s + strlen(sep);
  }
  char *line = v->out;
  for (int i = 0; i < v->n; i++) {
    assert_non_null(line);
    char *nl = strchr(line, '\n');
    if (nl) *nl = 0;
    v->ids[i] = malloc(4096 * sizeof(int32_t));
    char *q = line, *e;
    for (long x; (x = strtol(q, &e, 10)), e != q; q = e) v->ids[i][v->n_ids[i]++] = (int32_t)x;
    line = nl ? nl + 1 : NULL;
  }
}

static void vec_free(vec_file_t *v) {
  for (int i = 0; i < v->n; i++) free(v->ids[i]);
  free(v->ids);
  free(v->n_ids);
  free(v->texts);
  free(v->lens);
  free(v->inp);
  free(v->out);
}

static void run_vec_file(const char *name, const char *tok_rel) {
  vec_file_t v;
  vec_load(&v, name);
  tok_t *t = load(tok_rel);
  int pass = 0, rt = 0;
  for (int i = 0; i < v.n; i++) {
    pass += ids_equal(t, v.texts[i], v.lens[i], 0, v.ids[i], v.n_ids[i], name);
    rt += round_trips(t, v.texts[i], v.lens[i]);
  }
  printf("%-28s via %-40s: %d/%d vectors, %d/%d round trips\n", name, tok_rel, pass, v.n, rt, v.n);
  assert_true(v.n >= 40);
  assert_int_equal(pass, v.n);
  assert_int_equal(rt, v.n);
  tok_free(t);
  vec_free(&v);
}

static void test_llamacpp_spm(void **state) {
  (void)state;
  run_vec_file("ggml-vocab-llama-spm.gguf", "tokenizers/llama.cpp-vocab/ggml-vocab-llama-spm.gguf");
  run_vec_file("ggml-vocab-llama-spm.gguf", "tokenizers/llama2/tokenizer.model");
  run_vec_file("ggml-vocab-llama-spm.gguf", "llama-2-tiny-random-hf");
  run_vec_file("ggml-vocab-llama-spm.gguf", "llama-2-tiny-random/llama-2-tiny-random.gguf");
}

static void test_llamacpp_gpt2(void **state) {
  (void)state;
  run_vec_file("ggml-vocab-gpt-2.gguf", "tokenizers/llama.cpp-vocab/ggml-vocab-gpt-2.gguf");
  run_vec_file("ggml-vocab-gpt-2.gguf", "tokenizers/gpt2/tokenizer.json");
  run_vec_file("ggml-vocab-gpt-2.gguf", "tokenizers/gpt2/vocab.json"); /* + merges.txt */
  run_vec_file("ggml-vocab-gpt-2.gguf", "tokenizers/gpt2");            /* the directory: tokenizer.json */
}

static void test_llamacpp_llama3(void **state) {
  (void)state;
  run_vec_file("ggml-vocab-llama-bpe.gguf", "tokenizers/llama3/tokenizer.model");
  run_vec_file("ggml-vocab-llama-bpe.gguf", "tokenizers/llama3.2-ollama");
}

static void test_llamacpp_qwen2(void **state) {
  (void)state;
  run_vec_file("ggml-vocab-qwen2.gguf", "tokenizers/qwen/qwen.tiktoken");
}

/* ---- published-vectors.json ---- */

typedef struct {
  const char *group;
  const char *toks[3];
  int flags;
} group_rule_t;

/* Each group's notes state its tokenizer file and BOS / special-token convention. */
static const group_rule_t k_rules[] = {
    {"llama2-spm/llama2.c-test.c",
     {"tokenizers/llama2/tokenizer.model", "tokenizers/llama.cpp-vocab/ggml-vocab-llama-spm.gguf"},
     TOK_ADD_BOS},
    {"llama2-spm/llama-tokenizer-js",
     {"tokenizers/llama2/tokenizer.model", "tokenizers/llama.cpp-vocab/ggml-vocab-llama-spm.gguf"},
     TOK_ADD_BOS},
    {"llama3/meta-llama3-test_tokenizer", {"tokenizers/llama3/tokenizer.model", "tokenizers/llama3.2-ollama"},
     TOK_PARSE_SPECIAL},
    {"llama3/ollama-bytepairencoding_test", {"tokenizers/llama3/tokenizer.model", "tokenizers/llama3.2-ollama"},
     TOK_PARSE_SPECIAL},
    {"llama3/ollama-pretokenizer-split", {"tokenizers/llama3/tokenizer.model"}, 0},
    {"llama3/tiktoken-cl100k-tests", {"tokenizers/llama3/tokenizer.model"}, 0},
    {"gpt2/tiktoken-tests",
     {"tokenizers/gpt2/vocab.json", "tokenizers/gpt2/tokenizer.json",
      "tokenizers/llama.cpp-vocab/ggml-vocab-gpt-2.gguf"},
     TOK_PARSE_SPECIAL},
};

typedef struct {
  char **pieces;
  int n, cap;
} pieces_t;

static int collect_piece(void *ctx, const char *p, size_t len) {
  pieces_t *ps = ctx;
  if (ps->n == ps->cap) {
    ps->cap = ps->cap ? ps->cap * 2 : 16;
    ps->pieces = realloc(ps->pieces, (size_t)ps->cap * sizeof *ps->pieces);
  }
  ps->pieces[ps->n++] = strndup(p, len);
  return 0;
}

static int check_split(const tok_t *t, const cJSON *c) {
  const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
  const cJSON *want = cJSON_GetObjectItem(c, "pieces");
  pieces_t ps = {0};
  assert_int_equal(tok_pre_split(t, text, strlen(text), collect_piece, &ps), 0);
  int ok = ps.n == cJSON_GetArraySize(want);
  for (int i = 0; i < ps.n; i++) {
    if (ok && strcmp(ps.pieces[i], cJSON_GetArrayItem(want, i)->valuestring) != 0) ok = 0;
    free(ps.pieces[i]);
  }
  free(ps.pieces);
  if (!ok) fprintf(stderr, "pre-tokenizer split mismatch for \"%s\"\n", text);
  return ok;
}

static int check_case(const tok_t *t, const cJSON *c, int flags, const char *group) {
  const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
  const cJSON *arr = cJSON_GetObjectItem(c, "ids");
  if (!arr) return check_split(t, c);
  int n = cJSON_GetArraySize(arr);
  int32_t *want = malloc((size_t)(n ? n : 1) * sizeof *want);
  for (int i = 0; i < n; i++) want[i] = (int32_t)cJSON_GetArrayItem(arr, i)->valueint;
  int ok = ids_equal(t, text, strlen(text), flags, want, n, group);
  free(want);
  return ok;
}

static void test_published_vectors(void **state) {
  (void)state;
  size_t len;
  char *buf = read_rel("tokenizers/test-vectors/published-vectors.json", &len);
  cJSON *root = cJSON_ParseWithLength(buf, len);
  assert_non_null(root);
  const cJSON *g;
  int n_groups = 0;
  cJSON_ArrayForEach(g, cJSON_GetObjectItem(root, "groups")) {
    const char *name = cJSON_GetObjectItem(g, "name")->valuestring;
    const group_rule_t *r = NULL;
    for (size_t i = 0; i < sizeof k_rules / sizeof k_rules[0]; i++)
      if (strcmp(k_rules[i].group, name) == 0) r = &k_rules[i];
    if (!r) fprintf(stderr, "group %s has no rule in this test\n", name);
    assert_non_null(r);
    for (int k = 0; k < 3 && r->toks[k]; k++) {
      tok_t *t = load(r->toks[k]);
      int pass = 0, total = 0;
      const cJSON *c;
      cJSON_ArrayForEach(c, cJSON_GetObjectItem(g, "cases")) {
        total++;
        pass += check_case(t, c, r->flags, name);
      }
      printf("%-38s via %-52s: %d/%d\n", name, r->toks[k], pass, total);
      assert_int_equal(pass, total);
      tok_free(t);
    }
    n_groups++;
  }
  assert_int_equal(n_groups, (int)(sizeof k_rules / sizeof k_rules[0]));
  cJSON_Delete(root);
  free(buf);
}

/* ---- model tokenizers and cross-source agreement ---- */

static void test_stories260k(void **state) {
  (void)state;
  static const int32_t want[] = {1, 403, 407, 261, 378};
  const char *srcs[] = {"stories260K/stories260K.gguf", "stories260K-hf", "stories260K-hf/tokenizer.json"};
  for (int i = 0; i < 3; i++) {
    tok_t *t = load(srcs[i]);
    assert_true(ids_equal(t, "Once upon a time", 16, TOK_ADD_BOS, want, 5, srcs[i]));
    assert_true(ids_equal(t, "Once upon a time", 16, 0, want + 1, 4, srcs[i]));
    assert_int_equal(tok_bos(t), 1);
    assert_int_equal(tok_eos(t), 2);
    assert_true(tok_add_bos_default(t));
    assert_int_equal(tok_vocab_size(t), 512);
    char *out;
    size_t n;
    assert_int_equal(tok_decode(t, want, 5, 1, &out, &n), 0);
    assert_string_equal(out, "Once upon a time");
    free(out);
    assert_int_equal(tok_decode(t, want, 5, 0, &out, &n), 0);
    assert_string_equal(out, "<s>Once upon a time");
    free(out);
    tok_free(t);
  }
}

/* Every source of the same vocab agrees on every llama.cpp test string (and on a mixed extra text). */
static void same_ids(const char *vec, const char *const *srcs, int n_srcs) {
  vec_file_t v;
  vec_load(&v, vec);
  tok_t *ref = load(srcs[0]);
  for (int s = 1; s < n_srcs; s++) {
    tok_t *t = load(srcs[s]);
    for (int i = 0; i < v.n; i++) {
      int32_t *a, *b;
      int na, nb;
      assert_int_equal(tok_encode(ref, v.texts[i], v.lens[i], TOK_ADD_BOS, &a, &na), 0);
      assert_int_equal(tok_encode(t, v.texts[i], v.lens[i], TOK_ADD_BOS, &b, &nb), 0);
      assert_int_equal(na, nb);
      assert_memory_equal(a, b, (size_t)na * sizeof *a);
      free(a);
      free(b);
    }
    tok_free(t);
  }
  tok_free(ref);
  vec_free(&v);
}

static void test_cross_sources(void **state) {
  (void)state;
  const char *gpt2[] = {"tokenizers/llama.cpp-vocab/ggml-vocab-gpt-2.gguf", "tokenizers/gpt2/tokenizer.json",
                        "tokenizers/gpt2/vocab.json"};
  same_ids("ggml-vocab-gpt-2.gguf", gpt2, 3);
  const char *spm[] = {"tokenizers/llama.cpp-vocab/ggml-vocab-llama-spm.gguf", "llama-2-tiny-random-hf/tokenizer.model"};
  same_ids("ggml-vocab-llama-spm.gguf", spm, 2);
  const char *l3[] = {"tokenizers/llama3/tokenizer.model", "tokenizers/llama3.2-ollama"};
  same_ids("ggml-vocab-llama-bpe.gguf", l3, 2);
}

static void test_specials_and_config(void **state) {
  (void)state;
  tok_t *t = load("tokenizers/llama3/tokenizer.model");
  static const int32_t parsed[] = {128006, 882, 128007};
  const char *s = "<|start_header_id|>user<|end_header_id|>";
  assert_true(ids_equal(t, s, strlen(s), TOK_PARSE_SPECIAL, parsed, 3, "special"));
  int32_t *ids;
  int n;
  assert_int_equal(tok_encode(t, s, strlen(s), 0, &ids, &n), 0);
  assert_true(n > 3); /* plain text: no special ids */
  for (int i = 0; i < n; i++) assert_true(ids[i] < 128000);
  free(ids);
  assert_int_equal(tok_find(t, "<|eot_id|>"), 128009);
  assert_true(tok_is_special(t, 128009));
  int32_t eos[16];
  int ne = tok_eos_ids(t, eos, 16), has_eot = 0;
  for (int i = 0; i < ne; i++) has_eot |= eos[i] == 128009;
  assert_true(has_eot);
  assert_int_equal(tok_bos(t), 128000);
  assert_true(tok_add_bos_default(t));
  tok_free(t);

  const char *gpt2[] = {"tokenizers/gpt2", "tokenizers/gpt2/vocab.json",
                        "tokenizers/llama.cpp-vocab/ggml-vocab-gpt-2.gguf"};
  for (int i = 0; i < 3; i++) {
    t = load(gpt2[i]);
    assert_false(tok_add_bos_default(t));
    assert_int_equal(tok_eos(t), 50256);
    assert_true(tok_is_special(t, 50256));
    tok_free(t);
  }
  /* tokenizer_config.json beside a tokenizer.json / tokenizer.model. */
  t = load("llama-2-tiny-random-hf");
  assert_true(tok_add_bos_default(t));
  assert_int_equal(tok_bos(t), 1);
  assert_int_equal(tok_eos(t), 2);
  assert_null(tok_chat_template(t));
  tok_free(t);

  t = load("tokenizers/qwen/qwen.tiktoken");
  ne = tok_eos_ids(t, eos, 16);
  int has_im_end = 0;
  for (int i = 0; i < ne; i++) has_im_end |= eos[i] == tok_find(t, "<|im_end|>");
  assert_int_equal(tok_find(t, "<|im_end|>"), 151645);
  assert_true(has_im_end);
  assert_int_equal(tok_bos(t), -1);
  tok_free(t);
}

static void write_text(const char *dir, const char *name, const char *text, size_t n) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(text, 1, n, f), n);
  fclose(f);
}

/* tokenizer_config.json (add_bos_token, eos_token, chat_template) and generation_config.json (eos ids)
 * in a model directory. */
static void test_config_files(void **state) {
  (void)state;
  char dir[] = "/tmp/test_tok_XXXXXX";
  assert_non_null(mkdtemp(dir));
  size_t n;
  char *tj = read_rel("stories260K-hf/tokenizer.json", &n);
  write_text(dir, "tokenizer.json", tj, n);
  free(tj);
  const char cfg[] = "{\"add_bos_token\": false, \"eos_token\": {\"content\": \"</s>\"},"
                     " \"chat_template\": \"{{ messages }}\"}";
  const char gen[] = "{\"eos_token_id\": [2, 0]}";
  write_text(dir, "tokenizer_config.json", cfg, strlen(cfg));
  write_text(dir, "generation_config.json", gen, strlen(gen));
  tok_t *t = NULL;
  assert_int_equal(tok_load(&t, dir), 0);
  assert_false(tok_add_bos_default(t));
  assert_int_equal(tok_eos(t), 2);
  assert_string_equal(tok_chat_template(t), "{{ messages }}");
  int32_t eos[8];
  int ne = tok_eos_ids(t, eos, 8);
  assert_int_equal(ne, 2);
  assert_int_equal(eos[0], 2);
  assert_int_equal(eos[1], 0);
  static const int32_t no_bos[] = {403, 407, 261, 378};
  assert_true(ids_equal(t, "Once upon a time", 16, TOK_ADD_BOS, no_bos, 4, "config"));
  tok_free(t);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

static void test_bytes_tokenizer(void **state) {
  (void)state;
  tok_t *t;
  assert_int_equal(tok_new_bytes(&t, 100), STRATA_EINVAL);
  assert_int_equal(tok_new_bytes(&t, 300), 0);
  static const int32_t want[] = {256, 'h', 'i', 0xc3, 0xa9};
  assert_true(ids_equal(t, "hi\xc3\xa9", 4, TOK_ADD_BOS, want, 5, "bytes"));
  const int32_t ids[] = {256, 'h', 299, 'i', 257};
  char *out;
  size_t n;
  assert_int_equal(tok_decode(t, ids, 5, 1, &out, &n), 0);
  assert_string_equal(out, "hi");
  free(out);
  assert_int_equal(tok_vocab_size(t), 300);
  tok_free(t);
}

/* Any bytes may come in: invalid UTF-8 must encode (via byte tokens) and decode back unchanged. */
static void test_invalid_utf8(void **state) {
  (void)state;
  const char *srcs[] = {"tokenizers/llama.cpp-vocab/ggml-vocab-llama-spm.gguf", "tokenizers/llama3/tokenizer.model",
                        "tokenizers/qwen/qwen.tiktoken"};
  const char bad[] = "a\xff\xfe b\xc3 \xe2\x82 z\x80\x80";
  for (int i = 0; i < 3; i++) {
    tok_t *t = load(srcs[i]);
    assert_true(round_trips(t, bad, sizeof bad - 1));
    tok_free(t);
  }
}

/* Not a timing assertion: prints how long a 10,000-word prompt takes (it must not be quadratic). */
static void test_long_prompt(void **state) {
  (void)state;
  const char *words[] = {"the ", "quick ", "brown ", "fox ", "jumps ", "over ", "lazy ", "dogs, ", "42 ", "émigré "};
  size_t cap = 10000 * 8 + 1, n = 0;
  char *text = malloc(cap);
  for (int i = 0; i < 10000; i++) {
    size_t l = strlen(words[i % 10]);
    memcpy(text + n, words[i % 10], l);
    n += l;
  }
  /* Worst cases for merging and for the split pattern: one 100 kB word, 100 kB of spaces, 100 kB of '<'. */
  size_t big = 100000;
  char *runs[3];
  const char fill[3] = {'a', ' ', '<'};
  for (int r = 0; r < 3; r++) {
    runs[r] = malloc(big + 1);
    memset(runs[r], fill[r], big);
    runs[r][big - 1] = 'x';
  }
  const char *srcs[] = {"tokenizers/llama.cpp-vocab/ggml-vocab-llama-spm.gguf", "tokenizers/llama3/tokenizer.model",
                        "tokenizers/gpt2/tokenizer.json"};
  for (int i = 0; i < 3; i++) {
    tok_t *t = load(srcs[i]);
    for (int r = -1; r < 3; r++) {
      struct timespec a, b;
      int32_t *ids;
      int k;
      clock_gettime(CLOCK_MONOTONIC, &a);
      assert_int_equal(tok_encode(t, r < 0 ? text : runs[r], r < 0 ? n : big, TOK_PARSE_SPECIAL, &ids, &k), 0);
      clock_gettime(CLOCK_MONOTONIC, &b);
      printf("%-22s via %-52s: %6d tokens in %7.2f ms\n", r < 0 ? "10,000-word prompt" : r == 0 ? "100 kB of 'a'" : r == 1 ? "100 kB of spaces" : "100 kB of '<'",
             srcs[i], k, (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6);
      assert_true(k > 0);
      if (r < 0) assert_true(k > 10000);
      free(ids);
    }
    tok_free(t);
  }
  for (int r = 0; r < 3; r++) free(runs[r]);
  free(text);
}

/* Truncated tokenizer files fail cleanly (or load, when the cut falls between records): no crash. */
static void test_truncated_tokenizer_files(void **state) {
  (void)state;
  const char *files[] = {"tokenizers/llama2/tokenizer.model", "stories260K-hf/tokenizer.json",
                         "tokenizers/llama3/tokenizer.model"};
  const char *names[] = {"tokenizer.model", "tokenizer.json", "tokenizer.model"};
  char dir[] = "/tmp/test_tok_XXXXXX";
  assert_non_null(mkdtemp(dir));
  int lvl = log_get_level();
  log_set_level(LOG_LEVEL_OFF);
  for (int f = 0; f < 3; f++) {
    size_t n;
    char *buf = read_rel(files[f], &n), path[512];
    snprintf(path, sizeof path, "%s/%s", dir, names[f]);
    int ok = 0, bad = 0;
    for (int i = 0; i < 40; i++) {
      size_t len = (size_t)((double)n * i / 40.0) + (size_t)i * 7 % 13;
      if (len >= n) len = n - 1;
      write_text(dir, names[f], buf, len);
      tok_t *t = NULL;
      int rc = tok_load(&t, path);
      if (rc == 0) {
        int32_t *ids;
        int k;
        assert_int_equal(tok_encode(t, "hello world", 11, TOK_ADD_BOS, &ids, &k), 0);
        free(ids);
        tok_free(t);
        ok++;
      } else {
        assert_null(t);
        bad++;
      }
    }
    printf("truncated %s: %d loaded, %d rejected\n", files[f], ok, bad);
    free(buf);
  }
  log_set_level(lvl);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

static void test_load_errors(void **state) {
  (void)state;
  tok_t *t = NULL;
  assert_int_equal(tok_load(&t, "/nonexistent/tokenizer.json"), STRATA_ENOTFOUND);
  assert_null(t);
  char path[4096];
  snprintf(path, sizeof path, "%s/stories260K/REFERENCE.md", models_dir());
  assert_true(tok_load(&t, path) < 0);
  assert_null(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_llamacpp_spm),      cmocka_unit_test(test_llamacpp_gpt2),
      cmocka_unit_test(test_llamacpp_llama3),   cmocka_unit_test(test_llamacpp_qwen2),
      cmocka_unit_test(test_published_vectors), cmocka_unit_test(test_stories260k),
      cmocka_unit_test(test_cross_sources),     cmocka_unit_test(test_specials_and_config),
      cmocka_unit_test(test_bytes_tokenizer),   cmocka_unit_test(test_invalid_utf8),
      cmocka_unit_test(test_long_prompt),       cmocka_unit_test(test_load_errors),
      cmocka_unit_test(test_config_files),      cmocka_unit_test(test_truncated_tokenizer_files),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
