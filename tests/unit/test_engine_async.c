/* test_engine_async.c: asynchronous scheduling (step N+1 enqueued before step N's ids are back) gives
 * exactly the events of the synchronous engine: the same tokens, finish reasons and counts per request, for
 * greedy and seeded requests, stop ids that fire mid-way, min_tokens, penalties and logprobs (synchronous
 * steps in the middle), aborts while a step is in flight, requests added mid-run, a KV pool small enough to
 * preempt, padded decode steps, on stories260K and on a dummy model. The synchronous engine is the
 * reference (test_engine checks it against published outputs); the property under test is equivalence. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "common/tok/tok.h"
#include "worker/engine/engine.h"

#define MAX_REQS 16
#define MAX_EVENTS 256

static model_t *g_stories, *g_dummy;
static tok_t *g_tok;

static const char *g_texts[] = {
    "Once upon a time",
    "The little dog",
    "Tom and Lily went to the park. They saw a big tree and",
    "One day, a girl named Sue",
    "The sun was hot",
    "Ben liked to play with his toy car. One day",
    "Mom said",
    "There was a big fish in the sea",
    "A cat",
    "The bird sang a song",
    "He was sad because",
    "Lily wanted to",
    "The old man",
    "It was a rainy day",
    "Sam had a red ball",
    "The boy ran",
};

/* One request of a scenario. */
typedef struct {
  int add_at;      /* added before this engine_step call (0: at the start) */
  int abort_after; /* aborted once this many of its tokens came back (0: never) */
  sampling_params_t sp;
  int32_t prompt[64];
  int n_prompt;
} spec_t;

/* What a user sees of a request: its events in order. */
typedef struct {
  int has_token, finished, n_generated, n_prompt;
  int32_t token;
  finish_reason_t finish;
} ev_t;

typedef struct {
  ev_t ev[MAX_EVENTS];
  int n_ev, n_tokens, done;
} trace_t;

static int setup(void **state) {
  (void)state;
  const char *d = getenv("STRATA_MODELS_DIR");
  char path[1200];
  snprintf(path, sizeof path, "%s/stories260K/stories260K.gguf", d ? d : "../shared/models");
  if (model_load(&g_stories, path, NULL) || tok_load(&g_tok, path)) return -1;
  if (model_load(&g_dummy, "dummy:tiny", NULL)) return -1;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  model_free(g_stories);
  model_free(g_dummy);
  tok_free(g_tok);
  return 0;
}

static void cfg_for_test(engine_cfg_t *c, int async) {
  engine_cfg_default(c);
  snprintf(c->device, sizeof c->device, "cpu");
  c->n_threads = 2;
  c->max_num_seqs = MAX_REQS;
  c->max_model_len = 512;
  c->async_sched = async;
}

/* run: SPECS through one engine made with CFG; every event goes to its request's trace. */
static void run(const model_t *m, const engine_cfg_t *cfg, const spec_t *specs, int n, trace_t *tr,
                engine_stats_t *st) {
  engine_t *e = NULL;
  assert_int_equal(engine_create(&e, m, cfg), 0);
  memset(tr, 0, sizeof *tr * (size_t)n);
  char err[256];
  int n_added = 0;
  for (int call = 0; n_added < n || engine_has_work(e); call++) {
    assert_true(call < 20000);
    for (int i = 0; i < n; i++)
      if (specs[i].add_at == call) {
        assert_int_equal(engine_add(e, (uint64_t)i, specs[i].prompt, specs[i].n_prompt, &specs[i].sp, err, sizeof err), 0);
        n_added++;
      }
    const engine_out_t *outs;
    int n_outs;
    assert_int_equal(engine_step(e, &outs, &n_outs), 0);
    for (int k = 0; k < n_outs; k++) {
      const engine_out_t *o = &outs[k];
      assert_true(o->id < (uint64_t)n);
      trace_t *t = &tr[o->id];
      assert_false(t->done); /* nothing after a request's end */
      assert_true(t->n_ev < MAX_EVENTS);
      t->ev[t->n_ev++] = (ev_t){.has_token = o->has_token, .token = o->has_token ? o->token : 0,
                                .finished = o->finished, .finish = o->finished ? o->finish : FINISH_NONE,
                                .n_generated = o->n_generated, .n_prompt = o->n_prompt};
      t->n_tokens += o->has_token;
      t->done = o->finished;
      const spec_t *s = &specs[o->id];
      if (!t->done && s->abort_after > 0 && t->n_tokens == s->abort_after)
        assert_int_equal(engine_abort(e, o->id), 0);
    }
  }
  engine_stats(e, st);
  assert_int_equal(st->kv_blocks_used, 0); /* every block came back */
  engine_free(e);
}

/* check_same: the scenario with async off and on: identical events per request, each ending once. */
static void check_same(const model_t *m, const engine_cfg_t *base, const spec_t *specs, int n, trace_t *out,
                       engine_stats_t *st_sync, engine_stats_t *st_async) {
  static trace_t a[MAX_REQS];
  engine_cfg_t c = *base;
  c.async_sched = 0;
  run(m, &c, specs, n, out, st_sync);
  c.async_sched = 1;
  run(m, &c, specs, n, a, st_async);
  for (int i = 0; i < n; i++) {
    assert_true(out[i].done);
    assert_int_equal(a[i].n_ev, out[i].n_ev);
    for (int k = 0; k < out[i].n_ev; k++) {
      const ev_t *x = &out[i].ev[k], *y = &a[i].ev[k];
      assert_int_equal(y->has_token, x->has_token);
      assert_int_equal(y->token, x->token);
      assert_int_equal(y->finished, x->finished);
      assert_int_equal(y->finish, x->finish);
      assert_int_equal(y->n_generated, x->n_generated);
      assert_int_equal(y->n_prompt, x->n_prompt);
    }
  }
  assert_int_equal(st_async->n_generated_tokens, st_sync->n_generated_tokens);
}

static void set_prompt(spec_t *s, const model_t *m, int k) {
  if (m == g_stories) {
    int32_t *ids;
    int n;
    const char *text = g_texts[k % (int)(sizeof g_texts / sizeof g_texts[0])];
    assert_int_equal(tok_encode(g_tok, text, strlen(text), TOK_ADD_BOS, &ids, &n), 0);
    assert_true(n <= 64);
    memcpy(s->prompt, ids, sizeof(int32_t) * (size_t)n);
    s->n_prompt = n;
    free(ids);
  } else { /* the dummy model: a BOS and a few distinct ids */
    s->n_prompt = 3 + k % 7;
    s->prompt[0] = m->cfg.bos_id;
    for (int i = 1; i < s->n_prompt; i++) s->prompt[i] = 3 + (k * 37 + i * 11) % 250;
  }
}

enum { N_SPECS = 15, STOP_GREEDY = 6, STOP_SEEDED = 7 };

/* make_specs: the mix of requests (see the file comment); the stop ids of requests STOP_GREEDY and STOP_SEEDED
 * are their 6th token of a probe run without them, so that they fire mid-way. */
static void make_specs(const model_t *m, spec_t *s) {
  memset(s, 0, sizeof *s * N_SPECS);
  for (int i = 0; i < N_SPECS; i++) {
    sampling_params_default(&s[i].sp);
    s[i].sp.max_tokens = 64;
    s[i].sp.seed = 1000 + (uint64_t)i;
    set_prompt(&s[i], m, i);
  }
  s[1].sp.max_tokens = 5;
  s[2].sp.max_tokens = 17;
  s[3].sp.temperature = 0.8f, s[3].sp.top_k = 40, s[3].sp.max_tokens = 48;
  s[4].sp.temperature = 1.0f, s[4].sp.top_p = 0.9f, s[4].sp.max_tokens = 40;
  s[5].sp.temperature = 0.7f, s[5].sp.top_k = 20, s[5].sp.min_p = 0.05f, s[5].sp.max_tokens = 30;
  s[STOP_SEEDED].sp.temperature = 0.9f;
  /* host sampling (synchronous steps) while min_tokens is pending, then for a request with penalties and one
   * with logprobs added later: the engine switches between the two kinds of steps several times */
  s[8].sp.min_tokens = 4, s[8].sp.max_tokens = 30;
  s[9].sp.repetition_penalty = 1.3f, s[9].sp.max_tokens = 8, s[9].add_at = 8;
  s[10].abort_after = 3;
  s[11].sp.temperature = 0.9f, s[11].abort_after = 7, s[11].add_at = 2;
  s[12].add_at = 4, s[12].sp.max_tokens = 40;
  s[13].sp.logprobs = 1, s[13].sp.max_tokens = 6, s[13].add_at = 20;
  s[14].sp.max_tokens = 200; /* until EOS, on stories260K */
  /* probe: the stop requests alone, synchronously */
  static trace_t probe[2];
  spec_t p[2] = {s[STOP_GREEDY], s[STOP_SEEDED]};
  engine_cfg_t c;
  cfg_for_test(&c, 0);
  engine_stats_t st;
  run(m, &c, p, 2, probe, &st);
  for (int k = 0; k < 2; k++) {
    assert_true(probe[k].n_tokens > 6);
    spec_t *t = &s[k == 0 ? STOP_GREEDY : STOP_SEEDED];
    t->sp.n_stop_ids = 1;
    t->sp.stop_ids[0] = probe[k].ev[5].token;
  }
}

/* check_scenarios: the mix under a large KV pool, then under small pools (chunked prefill, preemption), then
 * with padded decode steps. */
static void check_scenarios(const model_t *m) {
  static spec_t s[N_SPECS];
  static trace_t tr[N_SPECS];
  make_specs(m, s);
  engine_cfg_t c;
  engine_stats_t ss, sa;
  cfg_for_test(&c, 0);
  check_same(m, &c, s, N_SPECS, tr, &ss, &sa);
  assert_int_equal(tr[STOP_GREEDY].ev[tr[STOP_GREEDY].n_ev - 1].finish, FINISH_STOP); /* they did fire */
  assert_int_equal(tr[STOP_SEEDED].ev[tr[STOP_SEEDED].n_ev - 1].finish, FINISH_STOP);
  assert_true(tr[STOP_GREEDY].n_tokens < 64 && tr[STOP_SEEDED].n_tokens < 64);
  assert_int_equal(tr[10].ev[tr[10].n_ev - 1].finish, FINISH_ABORT);
  assert_int_equal(tr[10].n_tokens, 3);
  assert_int_equal(tr[1].n_tokens <= 5, 1);

  static const int pools[2][2] = {{10, 7}, {14, 32}}; /* KV blocks, token budget */
  for (int k = 0; k < 2; k++) {
    c.num_kv_blocks = pools[k][0];
    c.max_batched_tokens = pools[k][1];
    check_same(m, &c, s, N_SPECS, tr, &ss, &sa);
    assert_true(ss.n_preemptions > 0);
    assert_true(sa.n_preemptions > 0);
  }

  cfg_for_test(&c, 0);
  setenv("STRATA_PAD_DECODE", "256", 1);
  check_same(m, &c, s, N_SPECS, tr, &ss, &sa);
  unsetenv("STRATA_PAD_DECODE");
}

static void test_stories_equivalence(void **state) {
  (void)state;
  check_scenarios(g_stories);
}

static void test_dummy_equivalence(void **state) {
  (void)state;
  check_scenarios(g_dummy);
}

/* With async on, the call that enqueues step N+1 returns step N's events: the first token of a lone greedy
 * request comes back from the second engine_step, not the first (with async off, from the first). */
static void test_outputs_lag_one_step(void **state) {
  (void)state;
  for (int async = 0; async <= 1; async++) {
    engine_cfg_t c;
    cfg_for_test(&c, async);
    engine_t *e;
    assert_int_equal(engine_create(&e, g_stories, &c), 0);
    spec_t s;
    memset(&s, 0, sizeof s);
    set_prompt(&s, g_stories, 0);
    sampling_params_default(&s.sp);
    s.sp.max_tokens = 3;
    char err[256];
    assert_int_equal(engine_add(e, 7, s.prompt, s.n_prompt, &s.sp, err, sizeof err), 0);
    const engine_out_t *outs;
    int n_outs;
    assert_int_equal(engine_step(e, &outs, &n_outs), 0);
    assert_int_equal(n_outs, async ? 0 : 1);
    assert_true(engine_has_work(e));
    int n_tokens = 0, finished = 0;
    while (engine_has_work(e)) {
      assert_int_equal(engine_step(e, &outs, &n_outs), 0);
      for (int k = 0; k < n_outs; k++) n_tokens += outs[k].has_token, finished += outs[k].finished;
    }
    assert_int_equal(n_tokens, async ? 3 : 2);
    assert_int_equal(finished, 1);
    engine_free(e);
  }
}

/* engine_free with a step in flight, and an abort of a request whose token is in flight. */
static void test_free_and_abort_in_flight(void **state) {
  (void)state;
  engine_cfg_t c;
  cfg_for_test(&c, 1);
  engine_t *e;
  assert_int_equal(engine_create(&e, g_stories, &c), 0);
  spec_t s;
  memset(&s, 0, sizeof s);
  set_prompt(&s, g_stories, 1);
  sampling_params_default(&s.sp);
  s.sp.max_tokens = 50;
  char err[256];
  for (int i = 0; i < 3; i++) assert_int_equal(engine_add(e, (uint64_t)i, s.prompt, s.n_prompt, &s.sp, err, sizeof err), 0);
  const engine_out_t *outs;
  int n_outs, n1 = 0;
  for (int k = 0; k < 4; k++) {
    assert_int_equal(engine_step(e, &outs, &n_outs), 0);
    for (int j = 0; j < n_outs; j++) n1 += outs[j].id == 1 && outs[j].has_token;
  }
  assert_int_equal(n1, 3); /* the 4th is in flight */
  assert_int_equal(engine_abort(e, 1), 0);
  assert_int_equal(engine_step(e, &outs, &n_outs), 0);
  int saw = 0;
  for (int j = 0; j < n_outs; j++) {
    if (outs[j].id != 1) continue;
    assert_false(outs[j].has_token); /* the in-flight token is dropped */
    assert_int_equal(outs[j].finish, FINISH_ABORT);
    assert_int_equal(outs[j].n_generated, 3);
    saw = 1;
  }
  assert_true(saw);
  engine_free(e); /* requests 0 and 2 still running, a step in flight */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_outputs_lag_one_step),
      cmocka_unit_test(test_free_and_abort_in_flight),
      cmocka_unit_test(test_stories_equivalence),
      cmocka_unit_test(test_dummy_equivalence),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
