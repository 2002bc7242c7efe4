/* test_detok.c: incremental detokenization (multi-byte characters split over tokens) and stop strings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fileio.h"
#include "common/status.h"
#include "common/tok/tok.h"

static tok_t *load(const char *rel) {
  char path[4096];
  const char *d = getenv("STRATA_MODELS_DIR");
  snprintf(path, sizeof path, "%s/%s", d ? d : "../shared/models", rel);
  tok_t *t = NULL;
  assert_int_equal(tok_load(&t, path), 0);
  return t;
}

/* utf8_valid: an independent strict UTF-8 check (RFC 3629). */
static int utf8_valid(const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    unsigned c = s[i];
    size_t need = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!need || i + need > n) return 0;
    unsigned cp = need == 1 ? c : c & (0x7f >> need);
    for (size_t k = 1; k < need; k++) {
      if ((s[i + k] & 0xc0) != 0x80) return 0;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    static const unsigned min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[need] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    i += need;
  }
  return 1;
}

/* push_expect: feeds IDS one by one; after id i the new output must equal WANT[i]. */
static void push_expect(const tok_t *t, const int32_t *ids, int n, const char *const *want) {
  detok_t d;
  detok_init(&d, t, 1);
  char *out = NULL;
  size_t len = 0, cap = 0;
  for (int i = 0; i < n; i++) {
    size_t before = len;
    assert_int_equal(detok_push(&d, ids[i], &out, &len, &cap), 0);
    assert_int_equal(len - before, strlen(want[i]));
    assert_memory_equal(out + before, want[i], len - before);
  }
  assert_int_equal(detok_flush(&d, &out, &len, &cap), 0);
  free(out);
}

/* Llama 2: U+1F999 (llama) has no token, so it falls back to 4 byte tokens (published ids). */
static void test_spm_byte_fallback(void **state) {
  (void)state;
  tok_t *t = load("tokenizers/llama.cpp-vocab/ggml-vocab-llama-spm.gguf");
  const int32_t llama[] = {1, 29871, 243, 162, 169, 156, 237, 156, 141}; /* "🦙Ꙋ" with BOS */
  const char *want[] = {"", "", "", "", "", "\xf0\x9f\xa6\x99", "", "", "\xea\x99\x8a"};
  push_expect(t, llama, 9, want);
  tok_free(t);
}

/* Llama 3 byte-level: U+1F44D (thumbs up) spans three tokens (cl100k's published ids). */
static void test_byte_level_emoji(void **state) {
  (void)state;
  tok_t *t = load("tokenizers/llama3/tokenizer.model");
  const int32_t ids[] = {9468, 239, 235};
  const char *want[] = {"", "", "\xf0\x9f\x91\x8d"};
  push_expect(t, ids, 3, want);
  tok_free(t);
}

/* For every llama.cpp test string: the streamed text is valid UTF-8 at every step and its concatenation
 * equals tok_decode of all ids. */
static void stream_matches_decode(const char *tok_rel, int flags) {
  tok_t *t = load(tok_rel);
  char path[4096], *inp;
  size_t n;
  const char *d = getenv("STRATA_MODELS_DIR");
  snprintf(path, sizeof path, "%s/tokenizers/llama.cpp-vocab/ggml-vocab-llama-spm.gguf.inp", d ? d : "../shared/models");
  assert_int_equal(file_read_all(path, 1 << 20, &inp, &n), 0);
  static const char sep[] = "\n__ggml_vocab_test__\n";
  int cases = 0;
  for (char *p = inp, *s; (s = strstr(p, sep)); p = s + strlen(sep)) {
    int32_t *ids;
    int k;
    assert_int_equal(tok_encode(t, p, (size_t)(s - p), flags, &ids, &k), 0);
    for (int skip = 0; skip < 2; skip++) {
      char *ref;
      size_t ref_len;
      assert_int_equal(tok_decode(t, ids, k, skip, &ref, &ref_len), 0);
      detok_t dt;
      detok_init(&dt, t, skip);
      char *out = NULL;
      size_t len = 0, cap = 0;
      for (int i = 0; i < k; i++) {
        assert_int_equal(detok_push(&dt, ids[i], &out, &len, &cap), 0);
        assert_true(utf8_valid((const unsigned char *)out, len));
      }
      assert_int_equal(detok_flush(&dt, &out, &len, &cap), 0);
      assert_int_equal(len, ref_len);
      assert_memory_equal(out, ref, len);
      free(out);
      free(ref);
    }
    free(ids);
    cases++;
  }
  printf("streamed == decoded via %s: %d/%d strings\n", tok_rel, cases, cases);
  assert_true(cases >= 40);
  free(inp);
  tok_free(t);
}

static void test_stream_equals_decode(void **state) {
  (void)state;
  stream_matches_decode("tokenizers/llama.cpp-vocab/ggml-vocab-llama-spm.gguf", TOK_ADD_BOS);
  stream_matches_decode("tokenizers/llama3/tokenizer.model", TOK_ADD_BOS);
  stream_matches_decode("tokenizers/qwen/qwen.tiktoken", 0); /* CJK split over byte-level tokens */
}

static void test_flush_incomplete(void **state) {
  (void)state;
  tok_t *t = load("tokenizers/llama.cpp-vocab/ggml-vocab-llama-spm.gguf");
  detok_t d;
  detok_init(&d, t, 1);
  char *out = NULL;
  size_t len = 0, cap = 0;
  assert_int_equal(detok_push(&d, 72, &out, &len, &cap), 0); /* <0x45> = 'E' */
  assert_int_equal(detok_push(&d, 243, &out, &len, &cap), 0); /* <0xF0>: a 4-byte lead, held back */
  assert_int_equal(len, 1);
  assert_int_equal(detok_push(&d, 162, &out, &len, &cap), 0); /* <0x9F> */
  assert_int_equal(len, 1);
  assert_int_equal(detok_flush(&d, &out, &len, &cap), 0);
  assert_string_equal(out, "E\xef\xbf\xbd"); /* the cut-off character becomes U+FFFD */
  free(out);
  tok_free(t);
}

/* ---- stop strings ---- */

typedef struct {
  stop_matcher_t m;
  char *out;
  size_t len, cap;
} stop_run_t;

static void run_init(stop_run_t *r, const char *const *stops, int n) {
  memset(r, 0, sizeof *r);
  assert_int_equal(stop_init(&r->m, stops, n), 0);
}

static int run_push(stop_run_t *r, const char *s) { return stop_push(&r->m, s, strlen(s), &r->out, &r->len, &r->cap); }

static void run_done(stop_run_t *r, const char *want) {
  assert_int_equal(stop_flush(&r->m, &r->out, &r->len, &r->cap), 0);
  assert_int_equal(r->len, strlen(want));
  assert_memory_equal(r->out, want, r->len);
  free(r->out);
  stop_deinit(&r->m);
}

static void test_stop_spanning(void **state) {
  (void)state;
  const char *stops[] = {"world"};
  stop_run_t r;
  run_init(&r, stops, 1);
  assert_int_equal(run_push(&r, "hello wo"), 0);
  assert_int_equal(r.len, 6); /* "wo" is held: it may start "world" */
  assert_int_equal(run_push(&r, "rl"), 0);
  assert_int_equal(run_push(&r, "d! more"), 1);
  assert_int_equal(r.m.stopped, 1);
  assert_int_equal(run_push(&r, "after"), 1); /* nothing after a stop */
  run_done(&r, "hello ");
}

static void test_stop_at_start(void **state) {
  (void)state;
  const char *stops[] = {"<|end|>"};
  stop_run_t r;
  run_init(&r, stops, 1);
  assert_int_equal(run_push(&r, "<|"), 0);
  assert_int_equal(r.len, 0);
  assert_int_equal(run_push(&r, "end|>tail"), 1);
  run_done(&r, "");
}

static void test_stop_overlapping(void **state) {
  (void)state;
  /* "ab" completes before "abc" could. */
  const char *s1[] = {"abc", "ab"};
  stop_run_t r;
  run_init(&r, s1, 2);
  assert_int_equal(run_push(&r, "xa"), 0);
  assert_int_equal(run_push(&r, "bc"), 1);
  assert_int_equal(r.m.stopped, 2);
  run_done(&r, "x");
  /* A failed candidate ("abd") releases its text; the other one ("bc") matches inside it. */
  const char *s2[] = {"abd", "bc"};
  run_init(&r, s2, 2);
  assert_int_equal(run_push(&r, "ab"), 0);
  assert_int_equal(r.len, 0);
  assert_int_equal(run_push(&r, "c"), 1);
  assert_int_equal(r.m.stopped, 2);
  run_done(&r, "a");
  /* A near miss is released as soon as it cannot match. */
  const char *s3[] = {"abc"};
  run_init(&r, s3, 1);
  assert_int_equal(run_push(&r, "ab"), 0);
  assert_int_equal(r.len, 0);
  assert_int_equal(run_push(&r, "x"), 0);
  assert_int_equal(r.len, 3);
  run_done(&r, "abx");
}

static void test_stop_none_flush(void **state) {
  (void)state;
  const char *stops[] = {"zzz", "\n\n"};
  stop_run_t r;
  run_init(&r, stops, 2);
  assert_int_equal(run_push(&r, "az"), 0);
  assert_int_equal(run_push(&r, "z"), 0);
  assert_int_equal(run_push(&r, "\n"), 0);
  assert_int_equal(r.len, 3); /* "az" "z" released once "\n" arrives; "\n" is still held */
  run_done(&r, "azz\n"); /* flush releases everything */
  run_init(&r, NULL, 0);
  assert_int_equal(run_push(&r, "free text"), 0);
  run_done(&r, "free text");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_spm_byte_fallback), cmocka_unit_test(test_byte_level_emoji),
      cmocka_unit_test(test_stream_equals_decode), cmocka_unit_test(test_flush_incomplete),
      cmocka_unit_test(test_stop_spanning),     cmocka_unit_test(test_stop_at_start),
      cmocka_unit_test(test_stop_overlapping),  cmocka_unit_test(test_stop_none_flush),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
