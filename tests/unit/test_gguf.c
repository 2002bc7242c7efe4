/* test_gguf.c: the GGUF reader on real files, hand-built files of every value type, and corrupt copies
 * (truncations at many lengths, bit flips in the header region, bad magic, impossible counts). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/gguf.h"
#include "common/log.h"
#include "common/status.h"

static const char *models_dir(void) {
  const char *d = getenv("STRATA_MODELS_DIR");
  return d ? d : "../shared/models";
}

static void model_path(char *buf, size_t n, const char *rel) { snprintf(buf, n, "%s/%s", models_dir(), rel); }

static void test_stories260k(void **state) {
  (void)state;
  char p[4096];
  model_path(p, sizeof p, "stories260K/stories260K.gguf");
  gguf_file_t f;
  assert_int_equal(gguf_open(&f, p), 0);
  assert_int_equal(f.version, 3);
  assert_int_equal(f.n_tensors, 48); /* 5 layers x 9 + token_embd, output_norm, output */
  uint32_t v;
  assert_int_equal(gguf_get_u32(&f, "llama.embedding_length", &v), 0);
  assert_int_equal(v, 64);
  assert_int_equal(gguf_get_u32(&f, "llama.block_count", &v), 0);
  assert_int_equal(v, 5);
  int64_t i64;
  assert_int_equal(gguf_get_i64(&f, "llama.attention.head_count_kv", &i64), 0);
  assert_int_equal(i64, 4);
  float eps;
  assert_int_equal(gguf_get_f32(&f, "llama.attention.layer_norm_rms_epsilon", &eps), 0);
  assert_true(eps > 0.99e-5f && eps < 1.01e-5f);
  gguf_str_t s;
  assert_int_equal(gguf_get_str(&f, "general.architecture", &s), 0);
  assert_true(gguf_str_eq(s, "llama"));
  gguf_str_t *toks;
  uint64_t n;
  assert_int_equal(gguf_get_str_array(&f, "tokenizer.ggml.tokens", &toks, &n), 0);
  assert_int_equal(n, 512);
  assert_true(gguf_str_eq(toks[1], "<s>"));
  assert_true(gguf_str_eq(toks[3], "<0x00>"));
  free(toks);
  const void *scores;
  assert_int_equal(gguf_get_arr(&f, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, &scores, &n), 0);
  assert_int_equal(n, 512);
  assert_int_equal(gguf_get_arr(&f, "tokenizer.ggml.scores", GGUF_TYPE_INT32, &scores, &n), STRATA_EFORMAT);
  /* Type mismatches and absent keys. */
  assert_int_equal(gguf_get_u32(&f, "general.architecture", &v), STRATA_EFORMAT);
  assert_int_equal(gguf_get_u32(&f, "no.such.key", &v), STRATA_ENOTFOUND);
  /* The stored separator id is 4294967295: it fits u32 and i64 but is not a bool. */
  assert_int_equal(gguf_get_u32(&f, "tokenizer.ggml.seperator_token_id", &v), 0);
  assert_int_equal(v, 4294967295u);
  int b;
  assert_int_equal(gguf_get_bool(&f, "tokenizer.ggml.seperator_token_id", &b), STRATA_EFORMAT);

  const gguf_tensor_t *t = gguf_find_tensor(&f, "token_embd.weight");
  assert_non_null(t);
  assert_int_equal(t->n_dims, 2);
  assert_int_equal(t->ne[0], 64);
  assert_int_equal(t->ne[1], 512);
  assert_int_equal(t->ne[2], 1);
  assert_int_equal(t->dtype, DTYPE_F32);
  assert_int_equal(t->n_bytes, 64 * 512 * 4);
  assert_int_equal(((const uint8_t *)t->data - (const uint8_t *)f.map.data) % 32, 0);
  const gguf_tensor_t *last = &f.tensors[f.n_tensors - 1];
  assert_true((const uint8_t *)last->data + last->n_bytes <= (const uint8_t *)f.map.data + f.map.size);
  assert_null(gguf_find_tensor(&f, "nope"));
  gguf_close(&f);
}

static void test_tiny_random_f16(void **state) {
  (void)state;
  char p[4096];
  model_path(p, sizeof p, "llama-2-tiny-random/llama-2-tiny-random.gguf");
  gguf_file_t f;
  assert_int_equal(gguf_open(&f, p), 0);
  const gguf_tensor_t *t = gguf_find_tensor(&f, "token_embd.weight");
  assert_non_null(t);
  assert_int_equal(t->dtype, DTYPE_F16);
  assert_int_equal(t->ne[0], 8);
  assert_int_equal(t->ne[1], 32000);
  assert_int_equal(t->n_bytes, 8 * 32000 * 2);
  const gguf_tensor_t *q = gguf_find_tensor(&f, "blk.0.attn_q.weight");
  assert_int_equal(q->offset, 512000); /* right after token_embd, as the file's directory says */
  gguf_close(&f);
}

static void test_vocab_only(void **state) {
  (void)state;
  const char *files[] = {"tokenizers/llama.cpp-vocab/ggml-vocab-llama-spm.gguf",
                         "tokenizers/llama.cpp-vocab/ggml-vocab-gpt-2.gguf"};
  for (int i = 0; i < 2; i++) {
    char p[4096];
    model_path(p, sizeof p, files[i]);
    gguf_file_t f;
    assert_int_equal(gguf_open(&f, p), 0);
    assert_int_equal(f.n_tensors, 0);
    gguf_str_t s;
    assert_int_equal(gguf_get_str(&f, "tokenizer.ggml.model", &s), 0);
    assert_true(gguf_str_eq(s, i == 0 ? "llama" : "gpt2"));
    if (i == 0) {
      uint32_t v;
      int b;
      assert_int_equal(gguf_get_u32(&f, "llama.vocab_size", &v), 0);
      assert_int_equal(v, 32000);
      assert_int_equal(gguf_get_bool(&f, "tokenizer.ggml.add_bos_token", &b), 0);
      assert_true(b);
    } else {
      uint64_t n;
      gguf_str_t *m;
      assert_int_equal(gguf_get_str_array(&f, "tokenizer.ggml.merges", &m, &n), 0);
      assert_int_equal(n, 50000);
      assert_true(gguf_str_eq(m[0], "\xc4\xa0 t")); /* GPT-2's first merge, "Ġ t" */
      free(m);
    }
    gguf_close(&f);
  }
}

/* ---- hand-built files ---- */

typedef struct {
  uint8_t *p;
  size_t n, cap;
} wbuf_t;

static void put(wbuf_t *w, const void *d, size_t n) {
  if (w->n + n > w->cap) {
    w->cap = (w->n + n) * 2 + 64;
    w->p = realloc(w->p, w->cap);
  }
  memcpy(w->p + w->n, d, n);
  w->n += n;
}
static void put_u32(wbuf_t *w, uint32_t v) { put(w, &v, 4); }
static void put_u64(wbuf_t *w, uint64_t v) { put(w, &v, 8); }
static void put_str(wbuf_t *w, const char *s) {
  put_u64(w, strlen(s));
  put(w, s, strlen(s));
}
static void put_key(wbuf_t *w, const char *k, uint32_t type) {
  put_str(w, k);
  put_u32(w, type);
}

static char g_dir[64];

static void write_file(const char *name, const wbuf_t *w, char *path, size_t n) {
  snprintf(path, n, "%s/%s", g_dir, name);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(w->p, 1, w->n, f), w->n);
  fclose(f);
}

static int setup_dir(void **state) {
  (void)state;
  snprintf(g_dir, sizeof g_dir, "/tmp/test_gguf_XXXXXX");
  return mkdtemp(g_dir) ? 0 : -1;
}

static int remove_dir(void **state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

/* A file with one KV of each of the 13 types, a nested array, and tensors: F32, unsupported Q4_1. */
static void build_all_types(wbuf_t *w, uint64_t tensor2_offset) {
  memset(w, 0, sizeof *w);
  put(w, "GGUF", 4);
  put_u32(w, 3);
  put_u64(w, 2);  /* tensors */
  put_u64(w, 15); /* kvs */
  uint8_t u8 = 200;
  int8_t i8 = -5;
  uint16_t u16 = 60000;
  int16_t i16 = -30000;
  int32_t i32 = -7;
  float f32 = 1.5f;
  uint64_t u64 = 1ull << 40;
  int64_t i64 = -(1ll << 40);
  double f64 = 2.25;
  put_key(w, "t.u8", GGUF_TYPE_UINT8), put(w, &u8, 1);
  put_key(w, "t.i8", GGUF_TYPE_INT8), put(w, &i8, 1);
  put_key(w, "t.u16", GGUF_TYPE_UINT16), put(w, &u16, 2);
  put_key(w, "t.i16", GGUF_TYPE_INT16), put(w, &i16, 2);
  put_key(w, "t.u32", GGUF_TYPE_UINT32), put_u32(w, 4000000000u);
  put_key(w, "t.i32", GGUF_TYPE_INT32), put(w, &i32, 4);
  put_key(w, "t.f32", GGUF_TYPE_FLOAT32), put(w, &f32, 4);
  put_key(w, "t.bool", GGUF_TYPE_BOOL), put(w, "\1", 1);
  put_key(w, "t.str", GGUF_TYPE_STRING), put_str(w, "hello");
  put_key(w, "t.u64", GGUF_TYPE_UINT64), put(w, &u64, 8);
  put_key(w, "t.i64", GGUF_TYPE_INT64), put(w, &i64, 8);
  put_key(w, "t.f64", GGUF_TYPE_FLOAT64), put(w, &f64, 8);
  put_key(w, "t.arr_i32", GGUF_TYPE_ARRAY), put_u32(w, GGUF_TYPE_INT32), put_u64(w, 3);
  for (int32_t i = 1; i <= 3; i++) put(w, &i, 4);
  /* [["a", "bc"], ["def"]] */
  put_key(w, "t.nested", GGUF_TYPE_ARRAY), put_u32(w, GGUF_TYPE_ARRAY), put_u64(w, 2);
  put_u32(w, GGUF_TYPE_STRING), put_u64(w, 2), put_str(w, "a"), put_str(w, "bc");
  put_u32(w, GGUF_TYPE_STRING), put_u64(w, 1), put_str(w, "def");
  put_key(w, "general.alignment", GGUF_TYPE_UINT32), put_u32(w, 64);
  /* tensor "w": F32 (4, 2) at 0; tensor "q": Q4_1 (type 3, unsupported) */
  put_str(w, "w"), put_u32(w, 2), put_u64(w, 4), put_u64(w, 2), put_u32(w, 0), put_u64(w, 0);
  put_str(w, "q"), put_u32(w, 1), put_u64(w, 32), put_u32(w, 3), put_u64(w, tensor2_offset);
  while (w->n % 64) put(w, "", 1);
  for (int i = 0; i < 8; i++) {
    float x = (float)i;
    put(w, &x, 4);
  }
}

static void test_all_value_types(void **state) {
  (void)state;
  wbuf_t w;
  char path[256];
  build_all_types(&w, 64);
  write_file("types.gguf", &w, path, sizeof path);
  gguf_file_t f;
  assert_int_equal(gguf_open(&f, path), 0);
  assert_int_equal(f.alignment, 64);
  uint32_t u;
  int64_t i;
  float x;
  int b;
  gguf_str_t s;
  assert_int_equal(gguf_get_u32(&f, "t.u8", &u), 0), assert_int_equal(u, 200);
  assert_int_equal(gguf_get_i64(&f, "t.i8", &i), 0), assert_int_equal(i, -5);
  assert_int_equal(gguf_get_u32(&f, "t.i8", &u), STRATA_EFORMAT); /* negative does not fit */
  assert_int_equal(gguf_get_u32(&f, "t.u16", &u), 0), assert_int_equal(u, 60000);
  assert_int_equal(gguf_get_i64(&f, "t.i16", &i), 0), assert_int_equal(i, -30000);
  assert_int_equal(gguf_get_u32(&f, "t.u32", &u), 0), assert_int_equal(u, 4000000000u);
  assert_int_equal(gguf_get_i64(&f, "t.i32", &i), 0), assert_int_equal(i, -7);
  assert_int_equal(gguf_get_f32(&f, "t.f32", &x), 0), assert_true(x == 1.5f);
  assert_int_equal(gguf_get_bool(&f, "t.bool", &b), 0), assert_true(b);
  assert_int_equal(gguf_get_str(&f, "t.str", &s), 0), assert_true(gguf_str_eq(s, "hello"));
  assert_int_equal(gguf_get_u32(&f, "t.u64", &u), STRATA_EFORMAT); /* 2^40 does not fit u32 */
  assert_int_equal(gguf_get_i64(&f, "t.u64", &i), 0), assert_int_equal(i, 1ll << 40);
  assert_int_equal(gguf_get_i64(&f, "t.i64", &i), 0), assert_int_equal(i, -(1ll << 40));
  assert_int_equal(gguf_get_f32(&f, "t.f64", &x), 0), assert_true(x == 2.25f);
  const void *d;
  uint64_t n;
  assert_int_equal(gguf_get_arr(&f, "t.arr_i32", GGUF_TYPE_INT32, &d, &n), 0);
  assert_int_equal(n, 3);
  assert_int_equal(((const int32_t *)d)[2], 3);
  const gguf_kv_t *kv = gguf_find(&f, "t.nested");
  assert_non_null(kv);
  assert_int_equal(kv->arr_type, GGUF_TYPE_ARRAY);
  assert_int_equal(kv->arr_len, 2);
  const gguf_tensor_t *t = gguf_find_tensor(&f, "w");
  assert_int_equal(t->dtype, DTYPE_F32);
  assert_int_equal(t->n_bytes, 32);
  assert_true(((const float *)t->data)[5] == 5.0f);
  t = gguf_find_tensor(&f, "q");
  assert_int_equal(t->dtype, -1); /* unsupported type: not an error at open time */
  assert_null(t->data);
  gguf_close(&f);
  free(w.p);
}

static void expect_format_error(const char *name, const wbuf_t *w) {
  char path[256];
  write_file(name, w, path, sizeof path);
  gguf_file_t f;
  assert_int_equal(gguf_open(&f, path), STRATA_EFORMAT);
}

static void test_bad_files(void **state) {
  (void)state;
  wbuf_t w;
  build_all_types(&w, 64000); /* tensor "q" is unsupported, so its offset is not checked... */
  char path[256];
  write_file("q_far.gguf", &w, path, sizeof path);
  gguf_file_t f;
  assert_int_equal(gguf_open(&f, path), 0);
  gguf_close(&f);
  free(w.p);

  /* A supported tensor past the end of the file. */
  memset(&w, 0, sizeof w);
  put(&w, "GGUF", 4), put_u32(&w, 3), put_u64(&w, 1), put_u64(&w, 0);
  put_str(&w, "x"), put_u32(&w, 1), put_u64(&w, 1024), put_u32(&w, 0), put_u64(&w, 0);
  while (w.n % 32) put(&w, "", 1);
  put(&w, "0123456789abcdef", 16);
  expect_format_error("past_end.gguf", &w);
  free(w.p);

  /* Bad magic, unsupported version, impossible counts, a huge array, a huge string. */
  const struct {
    const char *name;
    uint32_t version;
    uint64_t n_tensors, n_kv;
    const char *magic;
  } hdr[] = {{"magic.gguf", 3, 0, 0, "GGUG"},
             {"v1.gguf", 1, 0, 0, "GGUF"},
             {"v4.gguf", 4, 0, 0, "GGUF"},
             {"kvs.gguf", 3, 0, 1ull << 60, "GGUF"},
             {"tensors.gguf", 3, UINT64_MAX, 0, "GGUF"}};
  for (size_t i = 0; i < sizeof hdr / sizeof hdr[0]; i++) {
    memset(&w, 0, sizeof w);
    put(&w, hdr[i].magic, 4), put_u32(&w, hdr[i].version), put_u64(&w, hdr[i].n_tensors), put_u64(&w, hdr[i].n_kv);
    put(&w, "padding padding padding padding", 32);
    expect_format_error(hdr[i].name, &w);
    free(w.p);
  }
  memset(&w, 0, sizeof w);
  put(&w, "GGUF", 4), put_u32(&w, 3), put_u64(&w, 0), put_u64(&w, 1);
  put_key(&w, "a", GGUF_TYPE_ARRAY), put_u32(&w, GGUF_TYPE_UINT64), put_u64(&w, 1ull << 61);
  expect_format_error("huge_array.gguf", &w);
  free(w.p);
  memset(&w, 0, sizeof w);
  put(&w, "GGUF", 4), put_u32(&w, 3), put_u64(&w, 0), put_u64(&w, 1);
  put_key(&w, "a", GGUF_TYPE_ARRAY), put_u32(&w, GGUF_TYPE_STRING), put_u64(&w, 1ull << 62);
  expect_format_error("huge_str_array.gguf", &w);
  free(w.p);
  memset(&w, 0, sizeof w);
  put(&w, "GGUF", 4), put_u32(&w, 3), put_u64(&w, 0), put_u64(&w, 1);
  put_key(&w, "s", GGUF_TYPE_STRING), put_u64(&w, UINT64_MAX - 3);
  expect_format_error("huge_string.gguf", &w);
  free(w.p);
  memset(&w, 0, sizeof w);
  put(&w, "GGUF", 4), put_u32(&w, 3), put_u64(&w, 0), put_u64(&w, 1);
  put_key(&w, "general.alignment", GGUF_TYPE_UINT32), put_u32(&w, 48);
  expect_format_error("alignment.gguf", &w);
  free(w.p);
  assert_int_equal(gguf_open(&f, "/nonexistent/x.gguf"), STRATA_ENOTFOUND);
}

/* copy_model: the whole file in memory. */
static uint8_t *slurp(const char *rel, size_t *n) {
  char p[4096];
  model_path(p, sizeof p, rel);
  FILE *f = fopen(p, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  *n = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc(*n);
  assert_int_equal(fread(b, 1, *n, f), *n);
  fclose(f);
  return b;
}

/* Truncated copies: valid exactly when every byte up to the end of the last tensor is there. */
static void test_truncations(void **state) {
  (void)state;
  size_t n;
  uint8_t *b = slurp("stories260K/stories260K.gguf", &n);
  char path[256];
  snprintf(path, sizeof path, "%s/trunc.gguf", g_dir);
  int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, b, n), (ssize_t)n);
  gguf_file_t f;
  assert_int_equal(gguf_open(&f, path), 0);
  size_t need = 0, header_end = (size_t)(f.data_base - (const uint8_t *)f.map.data);
  for (uint64_t i = 0; i < f.n_tensors; i++) {
    size_t e = header_end + f.tensors[i].offset + f.tensors[i].n_bytes;
    if (e > need) need = e;
  }
  gguf_close(&f);
  int lvl = log_get_level();
  log_set_level(LOG_LEVEL_OFF);
  int n_ok = 0, n_fail = 0;
  /* Lengths in descending order so that ftruncate keeps the prefix: every byte through the header, a
   * stride through the tensor data. */
  for (long len = (long)n; len >= 0; len -= len > (long)header_end + 64 ? 4093 : 1) {
    assert_int_equal(ftruncate(fd, len), 0);
    int rc = gguf_open(&f, path);
    if ((size_t)len >= need) {
      assert_int_equal(rc, 0);
      gguf_close(&f);
      n_ok++;
    } else {
      assert_int_equal(rc, STRATA_EFORMAT);
      n_fail++;
    }
  }
  log_set_level(lvl);
  printf("truncations: %d opened (complete), %d rejected\n", n_ok, n_fail);
  close(fd);
  free(b);
}

/* Bit flips in the header region: the file either still opens or fails with STRATA_EFORMAT. */
static void test_bit_flips(void **state) {
  (void)state;
  size_t n;
  uint8_t *b = slurp("stories260K/stories260K.gguf", &n);
  char path[256];
  snprintf(path, sizeof path, "%s/flip.gguf", g_dir);
  int fd = open(path, O_CREAT | O_TRUNC | O_RDWR, 0600);
  assert_int_equal(write(fd, b, n), (ssize_t)n);
  gguf_file_t f;
  assert_int_equal(gguf_open(&f, path), 0);
  size_t header_end = (size_t)(f.data_base - (const uint8_t *)f.map.data);
  gguf_close(&f);
  int lvl = log_get_level();
  log_set_level(LOG_LEVEL_OFF);
  uint64_t x = 0x9E3779B97F4A7C15ull;
  int n_ok = 0, n_fail = 0;
  for (int i = 0; i < 3000; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    /* Half the flips land in the first 64 bytes (counts and the first keys), the rest anywhere before data. */
    size_t pos = i % 2 ? (size_t)(x % 64) : (size_t)(x % header_end);
    uint8_t orig = b[pos], flipped = orig ^ (uint8_t)(1u << ((x >> 32) % 8));
    assert_int_equal(pwrite(fd, &flipped, 1, (off_t)pos), 1);
    int rc = gguf_open(&f, path);
    assert_true(rc == 0 || rc == STRATA_EFORMAT);
    if (rc == 0) {
      gguf_close(&f);
      n_ok++;
    } else {
      n_fail++;
    }
    assert_int_equal(pwrite(fd, &orig, 1, (off_t)pos), 1);
  }
  log_set_level(lvl);
  printf("bit flips: %d still valid, %d rejected\n", n_ok, n_fail);
  close(fd);
  free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stories260k),     cmocka_unit_test(test_tiny_random_f16),
      cmocka_unit_test(test_vocab_only),      cmocka_unit_test(test_all_value_types),
      cmocka_unit_test(test_bad_files),       cmocka_unit_test(test_truncations),
      cmocka_unit_test(test_bit_flips),
  };
  return cmocka_run_group_tests(tests, setup_dir, remove_dir);
}
