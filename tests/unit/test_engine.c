/* test_engine.c: the engine end to end on the trained stories260K model: the published greedy text,
 * and greedy (and seeded) tokens that do not change alone / in a batch of 16 / with prefix caching on
 * or off / with a token budget and KV pool small enough to force chunked prefill and preemption. */
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
#include "worker/engine/engine.h"

#define N_PROMPTS 16
#define MAX_GEN 200

static model_t *g_gguf;
static tok_t *g_tok;
static char g_dir[1024];

static const char *g_prompts[N_PROMPTS] = {
    "",
    "Once upon a time",
    "The little dog",
    "Tom and Lily went to the park. They saw a big tree and",
    "Tom and Lily went to the park. They saw a big tree and a bird",
    "Tom and Lily went to the park. They saw a big tree and a red ball",
    "One day, a girl named Sue",
    "The sun was hot",
    "Ben liked to play with his toy car. One day",
    "Mom said",
    "There was a big fish in the sea",
    "Tom and Lily went to the park. They saw a big tree and they",
    "A cat",
    "The bird sang a song",
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    "He was sad because",
};

static int setup(void **state) {
  (void)state;
  const char *d = getenv("STRATA_MODELS_DIR");
  snprintf(g_dir, sizeof g_dir, "%s", d ? d : "../shared/models");
  char path[1200];
  snprintf(path, sizeof path, "%s/stories260K/stories260K.gguf", g_dir);
  if (model_load(&g_gguf, path, NULL) || tok_load(&g_tok, path)) return -1;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  model_free(g_gguf);
  tok_free(g_tok);
  return 0;
}

typedef struct {
  int32_t ids[MAX_GEN];
  int n;
  finish_reason_t finish;
} gen_t;

static void encode(const char *text, int32_t **ids, int *n) {
  assert_int_equal(tok_encode(g_tok, text, strlen(text), TOK_ADD_BOS, ids, n), 0);
}

/* run: the given prompts through one engine built with CFG; outputs collected per request. */
static void run(const model_t *m, const engine_cfg_t *cfg, const int *which, int n, const sampling_params_t *sp,
                gen_t *out, engine_stats_t *st) {
  engine_t *e = NULL;
  assert_int_equal(engine_create(&e, m, cfg), 0);
  char err[256];
  for (int i = 0; i < n; i++) {
    int32_t *ids;
    int n_ids;
    encode(g_prompts[which[i]], &ids, &n_ids);
    sampling_params_t p = *sp;
    p.seed = sp->seed + (uint64_t)which[i]; /* a different seed per prompt, the same in every run */
    assert_int_equal(engine_add(e, (uint64_t)i, ids, n_ids, &p, err, sizeof err), 0);
    free(ids);
    out[i].n = 0;
    out[i].finish = FINISH_NONE;
  }
  int guard = 0;
  while (engine_has_work(e)) {
    const engine_out_t *outs;
    int n_outs;
    assert_int_equal(engine_step(e, &outs, &n_outs), 0);
    for (int i = 0; i < n_outs; i++) {
      gen_t *g = &out[outs[i].id];
      if (outs[i].has_token) {
        assert_true(g->n < MAX_GEN);
        g->ids[g->n++] = outs[i].token;
      }
      if (outs[i].finished) g->finish = outs[i].finish;
    }
    assert_true(++guard < 100000);
  }
  if (st) engine_stats(e, st);
  engine_stats_t s;
  engine_stats(e, &s);
  assert_int_equal(s.kv_blocks_used, 0); /* every block came back */
  engine_free(e);
}

static void cfg_for_test(engine_cfg_t *c) {
  engine_cfg_default(c);
  snprintf(c->device, sizeof c->device, "cpu");
  c->n_threads = 2;
  c->max_num_seqs = N_PROMPTS;
  c->max_model_len = 512;
}

static void read_reference(char *buf, size_t n) {
  char path[1200], *text;
  size_t len;
  snprintf(path, sizeof path, "%s/stories260K/REFERENCE.md", g_dir);
  assert_int_equal(file_read_all(path, 1 << 20, &text, &len), 0);
  char *a = strstr(text, "```text\n");
  assert_non_null(a);
  a += 8;
  char *b = strstr(a, "\n```");
  assert_non_null(b);
  snprintf(buf, n, "%.*s", (int)(b - a), a);
  free(text);
}

/* The published llama2.c output: greedy, BOS only, 200 tokens. */
static void test_reference_text(void **state) {
  (void)state;
  char ref[4096];
  read_reference(ref, sizeof ref);
  engine_cfg_t c;
  cfg_for_test(&c);
  sampling_params_t sp;
  sampling_params_default(&sp);
  sp.max_tokens = 200;
  int which = 0;
  gen_t g;
  run(g_gguf, &c, &which, 1, &sp, &g, NULL);
  assert_int_equal(g.n, 200);
  assert_int_equal(g.finish, FINISH_LENGTH);
  char *text;
  size_t len;
  assert_int_equal(tok_decode(g_tok, g.ids, g.n, 1, &text, &len), 0);
  assert_string_equal(text, ref);
  free(text);

  /* the Hugging Face layout of the same weights gives the same tokens */
  char path[1200];
  snprintf(path, sizeof path, "%s/stories260K-hf", g_dir);
  model_t *hf = NULL;
  assert_int_equal(model_load(&hf, path, NULL), 0);
  gen_t h;
  run(hf, &c, &which, 1, &sp, &h, NULL);
  assert_int_equal(h.n, g.n);
  assert_memory_equal(h.ids, g.ids, sizeof(int32_t) * (size_t)g.n);
  model_free(hf);
}

/* Each prompt alone, then all 16 together under three configurations: same tokens every time. */
static void check_invariance(const sampling_params_t *sp) {
  engine_cfg_t c;
  cfg_for_test(&c);
  static gen_t alone[N_PROMPTS], batch[N_PROMPTS];
  int all[N_PROMPTS];
  for (int i = 0; i < N_PROMPTS; i++) {
    all[i] = i;
    run(g_gguf, &c, &i, 1, sp, &alone[i], NULL);
    assert_true(alone[i].n > 0);
  }
  engine_stats_t st;
  /* together, prefix caching on (all admitted in one step: nothing computed yet to hit) */
  run(g_gguf, &c, all, N_PROMPTS, sp, batch, &st);
  for (int i = 0; i < N_PROMPTS; i++) {
    assert_int_equal(batch[i].n, alone[i].n);
    assert_memory_equal(batch[i].ids, alone[i].ids, sizeof(int32_t) * (size_t)alone[i].n);
  }
  /* prefix caching off */
  c.prefix_caching = 0;
  run(g_gguf, &c, all, N_PROMPTS, sp, batch, &st);
  assert_true(st.prefix_hit_tokens == 0);
  for (int i = 0; i < N_PROMPTS; i++)
    assert_memory_equal(batch[i].ids, alone[i].ids, sizeof(int32_t) * (size_t)alone[i].n);
  /* a 7-token budget (chunked prefill, staggered admission: the 21-token "Tom and Lily..." prompts
   * share a full block, which later ones must hit) and 20 KV blocks for 16 requests (preemption) */
  c.prefix_caching = 1;
  c.max_batched_tokens = 7;
  c.num_kv_blocks = 20;
  run(g_gguf, &c, all, N_PROMPTS, sp, batch, &st);
  assert_true(st.n_preemptions > 0);
  assert_true(st.prefix_hit_tokens >= 16);
  for (int i = 0; i < N_PROMPTS; i++) {
    assert_int_equal(batch[i].n, alone[i].n);
    assert_memory_equal(batch[i].ids, alone[i].ids, sizeof(int32_t) * (size_t)alone[i].n);
  }
}

static void test_greedy_invariance(void **state) {
  (void)state;
  sampling_params_t sp;
  sampling_params_default(&sp);
  sp.max_tokens = 64;
  check_invariance(&sp);
}

static void test_seeded_sampling_invariance(void **state) {
  (void)state;
  sampling_params_t sp;
  sampling_params_default(&sp);
  sp.max_tokens = 48;
  sp.temperature = 0.9f;
  sp.top_p = 0.95f;
  sp.seed = 1234;
  check_invariance(&sp);
}

/* Decode steps padded with dummy sequences (as on a GPU, where each padded size is one CUDA graph): 11
 * requests decode as a batch of 16 (the CPU backend's kernels are batch-invariant, so every request's
 * greedy tokens must equal its tokens alone). */
static void test_padded_decode(void **state) {
  (void)state;
  engine_cfg_t c;
  cfg_for_test(&c);
  sampling_params_t sp;
  sampling_params_default(&sp);
  sp.max_tokens = 40;
  enum { N = 11 };
  static gen_t alone[N], batch[N];
  int which[N];
  for (int i = 0; i < N; i++) {
    which[i] = i;
    run(g_gguf, &c, &i, 1, &sp, &alone[i], NULL);
  }
  setenv("STRATA_PAD_DECODE", "256", 1);
  run(g_gguf, &c, which, N, &sp, batch, NULL);
  unsetenv("STRATA_PAD_DECODE");
  for (int i = 0; i < N; i++) {
    assert_int_equal(batch[i].n, alone[i].n);
    assert_memory_equal(batch[i].ids, alone[i].ids, sizeof(int32_t) * (size_t)alone[i].n);
  }
}

/* Aborting frees blocks at once; bad requests are refused with a message. */
static void test_abort_and_errors(void **state) {
  (void)state;
  engine_cfg_t c;
  cfg_for_test(&c);
  engine_t *e;
  assert_int_equal(engine_create(&e, g_gguf, &c), 0);
  sampling_params_t sp;
  sampling_params_default(&sp);
  sp.max_tokens = 100;
  sp.ignore_eos = 1;
  char err[256];
  int32_t prompt[40];
  for (int i = 0; i < 40; i++) prompt[i] = 300 + i;
  for (int r = 0; r < 4; r++) assert_int_equal(engine_add(e, (uint64_t)r, prompt, 40, &sp, err, sizeof err), 0);
  const engine_out_t *outs;
  int n_outs;
  for (int s = 0; s < 5; s++) assert_int_equal(engine_step(e, &outs, &n_outs), 0);
  engine_stats_t st;
  engine_stats(e, &st);
  int used = st.kv_blocks_used;
  assert_true(used > 0);
  assert_int_equal(engine_abort(e, 1), 0);
  assert_int_equal(engine_abort(e, 99), STRATA_ENOTFOUND);
  engine_stats(e, &st);
  assert_true(st.kv_blocks_used < used);
  assert_int_equal(engine_step(e, &outs, &n_outs), 0);
  int saw_abort = 0;
  for (int i = 0; i < n_outs; i++) saw_abort |= outs[i].id == 1 && outs[i].finished && outs[i].finish == FINISH_ABORT;
  assert_true(saw_abort);
  /* errors */
  assert_int_equal(engine_add(e, 10, prompt, 0, &sp, err, sizeof err), STRATA_EINVAL);
  assert_int_equal(engine_add(e, 0, prompt, 40, &sp, err, sizeof err), STRATA_EINVAL); /* id in use */
  int32_t bad = 100000;
  assert_int_equal(engine_add(e, 11, &bad, 1, &sp, err, sizeof err), STRATA_EINVAL);
  assert_non_null(strstr(err, "vocabulary"));
  static int32_t longp[600];
  assert_int_equal(engine_add(e, 12, longp, 600, &sp, err, sizeof err), STRATA_EINVAL);
  assert_non_null(strstr(err, "maximum context length"));
  while (engine_has_work(e)) assert_int_equal(engine_step(e, &outs, &n_outs), 0);
  engine_stats(e, &st);
  assert_int_equal(st.kv_blocks_used, 0);
  engine_free(e);
}

/* Migration: a request resubmitted as prompt + its first 15 generated tokens (engine_add_ex) continues
 * with exactly the tokens the undisturbed run produced, penalties and seeded sampling included. */
static void test_migration_continues(void **state) {
  (void)state;
  engine_cfg_t c;
  cfg_for_test(&c);
  sampling_params_t sp;
  sampling_params_default(&sp);
  sp.max_tokens = 40;
  sp.temperature = 0.8f;
  sp.seed = 99;
  sp.presence_penalty = 0.7f;
  sp.frequency_penalty = 0.4f;
  sp.repetition_penalty = 1.2f;
  sp.ignore_eos = 1;
  int which = 3;
  gen_t whole;
  run(g_gguf, &c, &which, 1, &sp, &whole, NULL);
  assert_int_equal(whole.n, 40);
  int32_t *ids, toks[600];
  int n_ids;
  encode(g_prompts[which], &ids, &n_ids);
  memcpy(toks, ids, sizeof(int32_t) * (size_t)n_ids);
  memcpy(toks + n_ids, whole.ids, sizeof(int32_t) * 15);
  free(ids);
  engine_t *e;
  assert_int_equal(engine_create(&e, g_gguf, &c), 0);
  sampling_params_t rest = sp;
  rest.seed = sp.seed + (uint64_t)which; /* run() offsets the seed by the prompt index */
  rest.max_tokens = 40 - 15;
  char err[256];
  assert_int_equal(engine_add_ex(e, 7, toks, n_ids + 15, 15, &rest, err, sizeof err), 0);
  int n = 15;
  while (engine_has_work(e)) {
    const engine_out_t *outs;
    int n_outs;
    assert_int_equal(engine_step(e, &outs, &n_outs), 0);
    for (int i = 0; i < n_outs; i++)
      if (outs[i].has_token) {
        assert_true(n < 40);
        assert_int_equal(outs[i].token, whole.ids[n]);
        n++;
      }
  }
  assert_int_equal(n, 40);
  engine_free(e);
}

/* A dummy model runs through the same engine. */
static void test_dummy_model(void **state) {
  (void)state;
  model_t *m = NULL;
  assert_int_equal(model_load(&m, "dummy:tiny", NULL), 0);
  engine_cfg_t c;
  cfg_for_test(&c);
  engine_t *e;
  assert_int_equal(engine_create(&e, m, &c), 0);
  sampling_params_t sp;
  sampling_params_default(&sp);
  sp.max_tokens = 10;
  sp.ignore_eos = 1;
  char err[256];
  int32_t prompt[3] = {256, 'h', 'i'};
  assert_int_equal(engine_add(e, 1, prompt, 3, &sp, err, sizeof err), 0);
  int n = 0;
  while (engine_has_work(e)) {
    const engine_out_t *outs;
    int n_outs;
    assert_int_equal(engine_step(e, &outs, &n_outs), 0);
    for (int i = 0; i < n_outs; i++) n += outs[i].has_token;
  }
  assert_int_equal(n, 10);
  engine_free(e);
  model_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reference_text),
      cmocka_unit_test(test_greedy_invariance),
      cmocka_unit_test(test_seeded_sampling_invariance),
      cmocka_unit_test(test_padded_decode),
      cmocka_unit_test(test_abort_and_errors),
      cmocka_unit_test(test_migration_continues),
      cmocka_unit_test(test_dummy_model),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
