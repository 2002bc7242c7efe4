/* test_sched.c: the scheduler driven by a fake model that reads its "KV cache" through the block
 * tables, so that a wrong slot, a stale evicted block or a bad prefix hit changes the tokens. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "worker/kvcache/kvcache.h"
#include "worker/sched/sched.h"

#define EOS 2
#define MAX_REQS 16
#define MAX_TOK 512

/* ---- the fake model ----
 * Computing position P of a request stores mix(token, P) in that position's cache slot. The token
 * sampled after position P is a hash of the slots of positions 0..P read through the block table,
 * except that the request's spec may force EOS as its K-th generated token. The reference below
 * computes the same function from the token list alone, with no cache. */

static uint64_t mix(int32_t tok, int pos) { return (uint64_t)(uint32_t)tok * 1000003u + (uint64_t)pos * 7919u + 1; }

static uint64_t fold(uint64_t h, uint64_t v) { return (h ^ v) * 1099511628211ull; }

static int32_t next_token(uint64_t h, int n_generated, int eos_at) {
  if (n_generated == eos_at) return EOS;
  return (int32_t)(3 + (h >> 17) % 500);
}

typedef struct {
  int n_prompt;
  int32_t prompt[MAX_TOK];
  int max_tokens;
  int eos_at; /* generated-token index at which the model emits EOS; -1 never */
  int ignore_eos;
  int n_stop;
  int32_t stop[4];
} spec_t;

/* The naive reference: whole-history recompute, finish rules as the API documents them. */
static int reference(const spec_t *sp, int max_len, int32_t *out, finish_reason_t *why) {
  int n = sp->n_prompt;
  memcpy(out, sp->prompt, sizeof(int32_t) * (size_t)n);
  for (;;) {
    uint64_t h = 1469598103934665603ull;
    for (int p = 0; p < n; p++) h = fold(h, mix(out[p], p));
    int32_t tok = next_token(h, n - sp->n_prompt, sp->eos_at);
    out[n++] = tok;
    int stop = (!sp->ignore_eos && tok == EOS);
    for (int i = 0; i < sp->n_stop; i++) stop |= tok == sp->stop[i];
    if (stop) {
      *why = FINISH_STOP;
      return n;
    }
    if (n - sp->n_prompt >= sp->max_tokens || n >= max_len) {
      *why = FINISH_LENGTH;
      return n;
    }
  }
}

typedef struct {
  kv_pool_t pool;
  sched_t s;
  sched_out_t out;
  uint64_t *mem; /* (n_blocks * block_size) the fake KV cache */
  req_t reqs[MAX_REQS];
  spec_t specs[MAX_REQS];
  int n_reqs;
  int n_steps;
  int n_finished;
} harness_t;

static void h_init(harness_t *h, int n_blocks, int bs, int max_seqs, int max_tokens, int max_model_len) {
  memset(h, 0, sizeof *h);
  assert_int_equal(kv_pool_init(&h->pool, n_blocks, bs, 1, 99), 0);
  sched_cfg_t cfg = {.max_num_seqs = max_seqs, .max_batched_tokens = max_tokens, .max_model_len = max_model_len};
  assert_int_equal(sched_init(&h->s, &cfg, &h->pool), 0);
  h->mem = malloc(sizeof(uint64_t) * (size_t)n_blocks * (size_t)bs);
  assert_non_null(h->mem);
  memset(h->mem, 0xab, sizeof(uint64_t) * (size_t)n_blocks * (size_t)bs); /* garbage, not zeros */
}

static void h_deinit(harness_t *h) {
  sched_deinit(&h->s);
  for (int i = 0; i < h->n_reqs; i++) req_deinit(&h->reqs[i]);
  sched_out_free(&h->out);
  kv_pool_deinit(&h->pool);
  free(h->mem);
}

/* A spec with a prompt of N tokens: the first N_SHARED from a common sequence, the rest from SALT. */
static spec_t make_spec(int n, int n_shared, int salt, int max_tokens, int eos_at) {
  spec_t sp;
  memset(&sp, 0, sizeof sp);
  sp.n_prompt = n;
  for (int i = 0; i < n; i++) sp.prompt[i] = i < n_shared ? 10 + (i * 37) % 900 : 1000 + salt * 131 + i;
  sp.max_tokens = max_tokens;
  sp.eos_at = eos_at;
  return sp;
}

/* Creates and queues a request for SP; returns sched_add's code. */
static int h_add(harness_t *h, const spec_t *sp) {
  assert_true(h->n_reqs < MAX_REQS);
  int k = h->n_reqs++;
  h->specs[k] = *sp;
  sampling_params_t p;
  memset(&p, 0, sizeof p);
  p.max_tokens = sp->max_tokens;
  p.ignore_eos = sp->ignore_eos;
  p.n_stop_ids = sp->n_stop;
  memcpy(p.stop_ids, sp->stop, sizeof(int32_t) * (size_t)sp->n_stop);
  req_t *r = &h->reqs[k];
  assert_int_equal(req_init(r, (uint64_t)k, sp->prompt, sp->n_prompt, &p, 0), 0);
  r->eos_ids[0] = EOS;
  r->n_eos = 1;
  return sched_add(&h->s, r);
}

static int item_of(const sched_out_t *out, const req_t *r) {
  for (int i = 0; i < out->n_items; i++)
    if (out->items[i].req == r) return i;
  return -1;
}

static void check_pool(harness_t *h) {
  const kv_table_t *tabs[MAX_REQS];
  for (int i = 0; i < h->n_reqs; i++) tabs[i] = &h->reqs[i].kv;
  assert_int_equal(kv_pool_check(&h->pool, tabs, h->n_reqs), 0);
}

/* Checks a freshly built step: limits, order, progress and exclusive slots. WAS_RUNNING[k] says
 * whether request k was running before sched_schedule. */
static void check_step(harness_t *h, const int *was_running) {
  const sched_out_t *out = &h->out;
  const sched_cfg_t *cfg = &h->s.cfg;
  int bs = h->pool.block_size, sum = 0, seen_prefill = 0, seen_new = 0;
  assert_true(out->n_tokens <= cfg->max_batched_tokens);
  assert_true(out->n_items <= cfg->max_num_seqs);
  assert_true(sched_n_running(&h->s) <= cfg->max_num_seqs);
  for (int i = 0; i < out->n_items; i++) {
    const sched_item_t *it = &out->items[i];
    req_t *r = it->req;
    int k = (int)(r - h->reqs);
    assert_int_equal(r->state, REQ_RUNNING);
    assert_int_equal(item_of(out, r), i); /* once per step */
    assert_int_equal(it->start, r->n_computed);
    assert_true(it->n >= 1 && it->start + it->n <= r->n_tokens);
    assert_int_equal(it->sample, it->start + it->n == r->n_tokens);
    sum += it->n;
    /* order: earlier-running decodes, then their prefill chunks, then admissions */
    int decode = r->n_tokens - r->n_computed == 1;
    if (!was_running[k]) {
      seen_new = 1;
      assert_int_equal(out->n_preempted, 0); /* a step that preempted admits nobody */
    }
    else {
      assert_false(seen_new);
      if (decode) assert_false(seen_prefill);
      else seen_prefill = 1;
    }
    /* slots written this step lie in blocks this request holds alone */
    for (int pos = it->start; pos < it->start + it->n; pos++) {
      assert_true(pos / bs < r->kv.n);
      int32_t blk = r->kv.ids[pos / bs];
      assert_true(blk >= 1 && blk < h->pool.n_blocks);
      assert_int_equal(kv_block_ref_count(&h->pool, blk), 1);
      assert_int_equal(kv_slot(&h->pool, &r->kv, pos), blk * bs + pos % bs);
    }
  }
  assert_int_equal(sum, out->n_tokens);
  /* every running request progresses unless the budget ran out */
  for (req_t *r = h->s.running.head; r; r = r->next) {
    if (item_of(out, r) >= 0) continue;
    assert_int_equal(out->n_tokens, cfg->max_batched_tokens);
    assert_true(r->n_tokens - r->n_computed > 1); /* decodes always come first */
  }
}

/* read_step: the fake model's reads of a step whose writes are done: each sampled item's token hashes its
 * request's cache contents (as attention would read them). */
static void read_step(harness_t *h, int32_t *sampled) {
  const sched_out_t *out = &h->out;
  for (int i = 0; i < out->n_items; i++) {
    const sched_item_t *it = &out->items[i];
    sampled[i] = -1;
    if (!it->sample) continue;
    req_t *r = it->req;
    uint64_t hv = 1469598103934665603ull;
    for (int pos = 0; pos < it->start + it->n; pos++) hv = fold(hv, h->mem[kv_slot(&h->pool, &r->kv, pos)]);
    sampled[i] = next_token(hv, req_n_generated(r), h->specs[r - h->reqs].eos_at);
  }
}

/* Executes the step with the fake model: all writes first, then the reads (as attention would). */
static void execute(harness_t *h, int32_t *sampled) {
  const sched_out_t *out = &h->out;
  for (int i = 0; i < out->n_items; i++) {
    const sched_item_t *it = &out->items[i];
    for (int pos = it->start; pos < it->start + it->n; pos++)
      h->mem[kv_slot(&h->pool, &it->req->kv, pos)] = mix(it->req->tokens[pos], pos);
  }
  read_step(h, sampled);
}

/* One engine step with all checks; returns the scheduled token count. */
static int h_step(harness_t *h) {
  int was_running[MAX_REQS];
  for (int k = 0; k < h->n_reqs; k++) was_running[k] = h->reqs[k].state == REQ_RUNNING;
  int n = sched_schedule(&h->s, &h->out);
  assert_true(n >= 0);
  check_step(h, was_running);
  check_pool(h);
  int32_t sampled[MAX_REQS];
  req_t *fin[MAX_REQS];
  execute(h, sampled);
  int n_fin = sched_update(&h->s, &h->out, sampled, fin);
  for (int i = 0; i < n_fin; i++) {
    assert_int_equal(fin[i]->state, REQ_FINISHED);
    assert_true(fin[i]->finish == FINISH_STOP || fin[i]->finish == FINISH_LENGTH);
    assert_int_equal(fin[i]->kv.n, 0);
  }
  h->n_finished += n_fin;
  h->n_steps++;
  check_pool(h);
  return n;
}

static void h_run(harness_t *h) {
  for (int guard = 0; sched_has_work(&h->s); guard++) {
    assert_true(guard < 5000);
    h_step(h);
  }
}

/* ---- asynchronous scheduling: step N+1 is scheduled and computed while step N's tokens are placeholders
 * (sched_advance), then step N's tokens are applied (sched_fill). The fake model reads a placeholder's value
 * from step N's results by its logit row, as the device does. ---- */

/* execute_async: execute() for a step whose placeholders take ROW_VAL[ph_row]. */
static void execute_async(harness_t *h, const int32_t *row_val, int32_t *sampled) {
  const sched_out_t *out = &h->out;
  for (int i = 0; i < out->n_items; i++) {
    const sched_item_t *it = &out->items[i];
    const req_t *r = it->req;
    for (int pos = it->start; pos < it->start + it->n; pos++) {
      int32_t tok = pos >= req_n_known(r) ? row_val[r->ph_row] : r->tokens[pos];
      h->mem[kv_slot(&h->pool, &r->kv, pos)] = mix(tok, pos);
    }
  }
  read_step(h, sampled);
}

static void h_run_async(harness_t *h) {
  sched_out_t fl = {0};
  int32_t fl_sampled[MAX_REQS], row_val[MAX_REQS];
  int active = 0;
  for (int guard = 0; sched_has_work(&h->s) || active; guard++) {
    assert_true(guard < 5000);
    int was_running[MAX_REQS];
    for (int k = 0; k < h->n_reqs; k++) was_running[k] = h->reqs[k].state == REQ_RUNNING;
    int n = sched_schedule(&h->s, &h->out);
    assert_true(n >= 0);
    check_step(h, was_running);
    int32_t sampled[MAX_REQS];
    if (n > 0) execute_async(h, row_val, sampled);
    if (active) { /* step N's tokens are known now */
      req_t *fin[MAX_REQS];
      int n_fin = sched_fill(&h->s, &fl, fl_sampled, fin);
      for (int i = 0; i < n_fin; i++) {
        assert_int_equal(fin[i]->state, REQ_FINISHED);
        assert_int_equal(fin[i]->n_placeholders, 0);
        assert_int_equal(fin[i]->kv.n, 0);
      }
      h->n_finished += n_fin;
    }
    active = n > 0;
    if (!active) continue;
    for (int i = 0; i < h->out.n_items; i++) /* step N+1 computed them once more: dropped */
      if (h->out.items[i].req->state == REQ_FINISHED) h->out.items[i].req = NULL;
    sched_advance(&h->s, &h->out);
    for (int i = 0, j = 0; i < h->out.n_items; i++) {
      fl_sampled[i] = sampled[i];
      if (h->out.items[i].sample) row_val[j++] = sampled[i];
    }
    sched_out_t t = fl;
    fl = h->out;
    h->out = t;
    h->n_steps++;
    check_pool(h);
  }
  sched_out_free(&fl);
}

/* Every request finished with the reference's tokens and reason, and nothing leaked. */
static void h_verify(harness_t *h, int max_len_cap) {
  int32_t want[MAX_TOK + 64];
  for (int k = 0; k < h->n_reqs; k++) {
    req_t *r = &h->reqs[k];
    if (r->finish == FINISH_ERROR || r->finish == FINISH_ABORT) continue;
    int max_len = h->specs[k].n_prompt + h->specs[k].max_tokens;
    if (max_len_cap > 0 && max_len > max_len_cap) max_len = max_len_cap;
    finish_reason_t why;
    int n = reference(&h->specs[k], max_len, want, &why);
    assert_int_equal(r->state, REQ_FINISHED);
    assert_int_equal(r->finish, why);
    assert_int_equal(r->n_tokens, n);
    assert_memory_equal(r->tokens, want, sizeof(int32_t) * (size_t)n);
  }
  assert_int_equal(kv_pool_n_used(&h->pool), 0);
  assert_int_equal(kv_pool_n_available(&h->pool), h->pool.n_blocks - 1);
  check_pool(h);
}

/* A mix of prompts and finish rules, more requests than sequence slots. */
static void test_mixed_requests(void **state) {
  (void)state;
  harness_t *h = malloc(sizeof *h);
  h_init(h, 200, 16, 4, 64, 100);
  spec_t sp;
  sp = make_spec(5, 0, 1, 20, 7);    /* EOS as its 8th token */
  assert_int_equal(h_add(h, &sp), 0);
  sp = make_spec(70, 0, 2, 9, -1);   /* max_tokens */
  assert_int_equal(h_add(h, &sp), 0);
  sp = make_spec(33, 0, 3, 30, 4);   /* EOS ignored: runs to max_tokens */
  sp.ignore_eos = 1;
  assert_int_equal(h_add(h, &sp), 0);
  sp = make_spec(90, 0, 4, 50, -1);  /* max_model_len 100 stops it first */
  assert_int_equal(h_add(h, &sp), 0);
  sp = make_spec(17, 0, 5, 40, -1);
  assert_int_equal(h_add(h, &sp), 0);
  sp = make_spec(40, 0, 6, 12, 0);   /* EOS at once */
  assert_int_equal(h_add(h, &sp), 0);
  sp = make_spec(1, 0, 7, 1, -1);    /* one-token prompt, one token out */
  assert_int_equal(h_add(h, &sp), 0);
  h_run(h);
  assert_int_equal(h->n_finished, 7);
  h_verify(h, 100);
  assert_int_equal(h->reqs[0].n_tokens, 5 + 8);
  assert_int_equal(h->reqs[2].n_tokens, 33 + 30);
  assert_int_equal(h->reqs[3].n_tokens, 100);
  assert_int_equal(h->reqs[3].finish, FINISH_LENGTH);
  assert_int_equal(h->reqs[5].finish, FINISH_STOP);
  assert_int_equal(h->reqs[5].tokens[40], EOS); /* the stop token stays in tokens */
  h_deinit(h);
  free(h);
}

/* A stop token id: the reference tells where the fake model first produces one of the chosen ids. */
static void test_stop_ids(void **state) {
  (void)state;
  harness_t *h = malloc(sizeof *h);
  h_init(h, 64, 16, 4, 256, 0);
  spec_t sp = make_spec(20, 0, 9, 40, -1);
  int32_t want[MAX_TOK];
  finish_reason_t why;
  int n = reference(&sp, 60, want, &why);
  assert_int_equal(n, 60);
  sp.n_stop = 1;
  sp.stop[0] = want[20 + 5]; /* the 6th generated token (if it appeared earlier, it stops there) */
  assert_int_equal(h_add(h, &sp), 0);
  h_run(h);
  h_verify(h, 0);
  assert_int_equal(h->reqs[0].finish, FINISH_STOP);
  assert_true(h->reqs[0].n_tokens <= 26);
  assert_int_equal(h->reqs[0].tokens[h->reqs[0].n_tokens - 1], sp.stop[0]);
  h_deinit(h);
  free(h);
}

/* A 100-token prompt under a budget of 32 takes 4 steps (32, 32, 32, 4) before its first token. */
static void test_chunked_prefill(void **state) {
  (void)state;
  harness_t *h = malloc(sizeof *h);
  h_init(h, 64, 16, 4, 32, 0);
  spec_t sp = make_spec(100, 0, 1, 3, -1);
  assert_int_equal(h_add(h, &sp), 0);
  const int want_n[4] = {32, 32, 32, 4};
  for (int s = 0; s < 4; s++) {
    assert_int_equal(h_step(h), want_n[s]);
    assert_int_equal(h->out.n_items, 1);
    assert_int_equal(h->out.items[0].start, 32 * s);
    assert_int_equal(h->out.items[0].sample, s == 3);
    assert_int_equal(h->reqs[0].n_tokens, s < 3 ? 100 : 101);
  }
  /* a second request arriving now shares the budget with the decode */
  sp = make_spec(50, 0, 2, 2, -1);
  assert_int_equal(h_add(h, &sp), 0);
  assert_int_equal(h_step(h), 32);
  assert_int_equal(h->out.items[0].req, &h->reqs[0]);
  assert_int_equal(h->out.items[0].n, 1);
  assert_int_equal(h->out.items[1].n, 31);
  h_run(h);
  h_verify(h, 0);
  h_deinit(h);
  free(h);
}

/* Prefix hits: a finished request's blocks, then a concurrent one's. */
static void test_prefix_hits(void **state) {
  (void)state;
  harness_t *h = malloc(sizeof *h);
  h_init(h, 64, 16, 8, 48, 0);
  /* A: 48 shared + 12 own. Step 1 computes its first 48 tokens and commits 3 blocks. */
  spec_t a = make_spec(60, 48, 1, 4, -1);
  assert_int_equal(h_add(h, &a), 0);
  assert_int_equal(h_step(h), 48);
  /* B arrives while A still runs: it hits A's 48 tokens and computes only its 12-token tail */
  spec_t b = make_spec(60, 48, 2, 4, -1);
  assert_int_equal(h_add(h, &b), 0);
  uint64_t hits0 = h->pool.n_hit_tokens;
  assert_int_equal(h_step(h), 12 + 12);
  int ib = item_of(&h->out, &h->reqs[1]);
  assert_true(ib >= 0);
  assert_int_equal(h->out.items[ib].start, 48);
  assert_int_equal(h->out.items[ib].n, 12);
  assert_int_equal(h->reqs[1].n_cached_prompt, 48);
  assert_true(h->pool.n_hit_tokens == hits0 + 48);
  h_run(h);
  /* C: the bare 48-token prefix. The last token must be computed for logits and a shared block is
   * never written, so C recomputes the whole last block: 32 cached, 16 computed. */
  spec_t c = make_spec(48, 48, 3, 4, -1);
  assert_int_equal(h_add(h, &c), 0);
  hits0 = h->pool.n_hit_tokens;
  assert_int_equal(h_step(h), 16);
  assert_int_equal(h->out.items[0].start, 32);
  assert_true(h->pool.n_hit_tokens == hits0 + 32);
  /* D: A's whole prompt and more, after A finished: hits all of A's full blocks */
  spec_t d = make_spec(70, 48, 1, 4, -1);
  assert_int_equal(h_add(h, &d), 0);
  h_step(h);
  int id = item_of(&h->out, &h->reqs[3]);
  assert_true(id >= 0);
  assert_int_equal(h->out.items[id].start, 48); /* A's 4th block was partial (60 + 3 computed) */
  h_run(h);
  h_verify(h, 0);
  h_deinit(h);
  free(h);
}

static void run_four_mode(harness_t *h, int n_blocks, int async) {
  h_init(h, n_blocks, 16, 4, 512, 0);
  for (int k = 0; k < 4; k++) {
    spec_t sp = make_spec(40, 0, k, 30, k == 2 ? 20 : -1);
    assert_int_equal(h_add(h, &sp), 0);
  }
  if (async) h_run_async(h);
  else h_run(h);
  h_verify(h, 0);
}

static void run_four(harness_t *h, int n_blocks) { run_four_mode(h, n_blocks, 0); }

/* Asynchronous scheduling gives the reference's tokens and reasons: EOS discovered a step late, max_tokens and
 * max_model_len known ahead (never scheduled past them), stop ids, prefix hits (only known tokens are
 * hashed), and preemption of requests whose last token is still a placeholder. */
static void test_async_placeholders(void **state) {
  (void)state;
  harness_t *h = malloc(sizeof *h);
  h_init(h, 200, 16, 4, 64, 100);
  spec_t sp;
  sp = make_spec(5, 0, 1, 20, 7);
  assert_int_equal(h_add(h, &sp), 0);
  sp = make_spec(70, 0, 2, 9, -1);
  assert_int_equal(h_add(h, &sp), 0);
  sp = make_spec(33, 0, 3, 30, 4);
  sp.ignore_eos = 1;
  assert_int_equal(h_add(h, &sp), 0);
  sp = make_spec(90, 0, 4, 50, -1); /* max_model_len 100 */
  assert_int_equal(h_add(h, &sp), 0);
  sp = make_spec(17, 16, 5, 40, -1);
  sp.n_stop = 1;
  sp.stop[0] = 3 + 17 % 500; /* may or may not fire: the reference says */
  assert_int_equal(h_add(h, &sp), 0);
  sp = make_spec(40, 32, 6, 12, 0); /* EOS at once; shares 2 blocks with the one before */
  assert_int_equal(h_add(h, &sp), 0);
  sp = make_spec(1, 0, 7, 1, -1); /* one token out: finished by length ahead of its value */
  assert_int_equal(h_add(h, &sp), 0);
  h_run_async(h);
  assert_int_equal(h->n_finished, 7);
  h_verify(h, 100);
  assert_int_equal(h->reqs[3].n_tokens, 100);
  h_deinit(h);
  /* 12 blocks for 4 requests of 40 + 30 tokens: preemptions */
  run_four_mode(h, 12, 1);
  assert_true(h->s.n_preemptions_total > 0);
  h_deinit(h);
  free(h);
}

/* 12 blocks (11 usable) for 4 requests of 40 + 30 tokens: preemptions, same tokens as a big pool. */
static void test_preemption_same_tokens(void **state) {
  (void)state;
  harness_t *big = malloc(sizeof *big), *small = malloc(sizeof *small);
  run_four(big, 200);
  assert_true(big->s.n_preemptions_total == 0);
  run_four(small, 12);
  assert_true(small->s.n_preemptions_total > 0);
  int n_pre = 0;
  for (int k = 0; k < 4; k++) {
    assert_int_equal(small->reqs[k].n_tokens, big->reqs[k].n_tokens);
    assert_memory_equal(small->reqs[k].tokens, big->reqs[k].tokens, sizeof(int32_t) * (size_t)big->reqs[k].n_tokens);
    n_pre += small->reqs[k].n_preemptions;
  }
  assert_true((uint64_t)n_pre == small->s.n_preemptions_total);
  h_deinit(big);
  h_deinit(small);
  free(big);
  free(small);
}

/* Hand-traced: block size 4, 8 usable blocks, A and B with 16-token prompts (4 blocks each).
 * Step 2: A's decode needs a 5th block; B is the newest and is preempted (its 4 committed blocks go
 * to the LRU) and A's new block evicts B's last one. A finishes; B is re-admitted and hits its own
 * first 3 blocks. */
static void test_preempted_request_hits_own_blocks(void **state) {
  (void)state;
  harness_t *h = malloc(sizeof *h);
  h_init(h, 9, 4, 4, 256, 0);
  spec_t a = make_spec(16, 0, 1, 2, -1), b = make_spec(16, 0, 2, 5, -1);
  assert_int_equal(h_add(h, &a), 0);
  assert_int_equal(h_add(h, &b), 0);
  assert_int_equal(h_step(h), 32);
  assert_int_equal(h_step(h), 1);
  assert_int_equal(h->out.n_preempted, 1);
  assert_int_equal(h->out.items[0].req, &h->reqs[0]);
  assert_int_equal(h->reqs[1].n_preemptions, 1);
  assert_int_equal(h->reqs[1].state, REQ_WAITING);
  assert_int_equal(h->reqs[1].n_computed, 0);
  assert_int_equal(h->reqs[0].state, REQ_FINISHED); /* max_tokens 2 */
  uint64_t hits0 = h->pool.n_hit_tokens;
  assert_int_equal(h_step(h), 5); /* B: 17 tokens, 12 cached */
  assert_int_equal(h->out.items[0].start, 12);
  assert_true(h->pool.n_hit_tokens == hits0 + 12);
  h_run(h);
  h_verify(h, 0);
  h_deinit(h);
  free(h);
}

/* When the request that needs a block is itself the newest, it is the one preempted, and no other
 * running request is scheduled after it in that step. */
static void test_preempt_self(void **state) {
  (void)state;
  harness_t *h = malloc(sizeof *h);
  h_init(h, 9, 4, 4, 256, 0);
  spec_t a = make_spec(15, 0, 1, 3, -1), b = make_spec(16, 0, 2, 3, -1);
  assert_int_equal(h_add(h, &a), 0);
  assert_int_equal(h_add(h, &b), 0);
  assert_int_equal(h_step(h), 31);
  assert_int_equal(kv_pool_n_available(&h->pool), 0);
  spec_t c = make_spec(4, 0, 3, 2, -1); /* waits: no block left */
  assert_int_equal(h_add(h, &c), 0);
  /* A's decode (position 15) fits its 4th block; B's (position 16) needs a 5th */
  assert_int_equal(h_step(h), 1);
  assert_int_equal(h->out.n_items, 1);
  assert_int_equal(h->out.items[0].req, &h->reqs[0]);
  assert_int_equal(h->out.n_preempted, 1);
  assert_int_equal(h->reqs[1].n_preemptions, 1);
  assert_int_equal(h->s.waiting.head, &h->reqs[1]); /* preempted: back at the FRONT of the queue */
  assert_int_equal(h->s.waiting.tail, &h->reqs[2]);
  h_run(h);
  h_verify(h, 0);
  h_deinit(h);
  free(h);
}

/* A waiting request that does not fit waits; running requests are not preempted for it. */
static void test_waiting_does_not_preempt(void **state) {
  (void)state;
  harness_t *h = malloc(sizeof *h);
  h_init(h, 9, 4, 4, 256, 0);
  spec_t a = make_spec(20, 0, 1, 6, -1), b = make_spec(16, 0, 2, 3, -1);
  assert_int_equal(h_add(h, &a), 0);
  assert_int_equal(h_step(h), 20); /* A holds 5 of 8 blocks */
  assert_int_equal(h_add(h, &b), 0); /* B needs 4 */
  for (int s = 0; s < 3; s++) {
    assert_int_equal(h_step(h), 1);
    assert_int_equal(h->reqs[1].state, REQ_WAITING);
  }
  h_run(h);
  assert_true(h->s.n_preemptions_total == 0);
  h_verify(h, 0);
  h_deinit(h);
  free(h);
}

/* max_num_seqs caps the running set; the rest wait their turn in arrival order. */
static void test_max_num_seqs(void **state) {
  (void)state;
  harness_t *h = malloc(sizeof *h);
  h_init(h, 200, 16, 3, 512, 0);
  for (int k = 0; k < 8; k++) {
    spec_t sp = make_spec(10 + k, 0, k, 3 + k % 3, -1);
    assert_int_equal(h_add(h, &sp), 0);
  }
  h_step(h);
  assert_int_equal(h->out.n_items, 3);
  for (int k = 0; k < 3; k++) assert_int_equal(h->reqs[k].state, REQ_RUNNING);
  h_run(h); /* check_step asserts the cap every step */
  assert_int_equal(h->n_finished, 8);
  h_verify(h, 0);
  h_deinit(h);
  free(h);
}

/* Requests that can never run are refused at once; one that fills the pool exactly still runs and
 * ends at the pool's length. */
static void test_refuse_never_fits(void **state) {
  (void)state;
  harness_t *h = malloc(sizeof *h);
  h_init(h, 5, 4, 4, 256, 30); /* 16 tokens of cache */
  spec_t sp = make_spec(17, 0, 1, 4, -1);
  assert_int_equal(h_add(h, &sp), STRATA_EINVAL);
  assert_int_equal(h->reqs[0].state, REQ_FINISHED);
  assert_int_equal(h->reqs[0].finish, FINISH_ERROR);
  assert_int_equal(sched_n_waiting(&h->s), 0);
  h_deinit(h);
  h_init(h, 100, 4, 4, 256, 30); /* longer than max_model_len */
  sp = make_spec(31, 0, 1, 4, -1);
  assert_int_equal(h_add(h, &sp), STRATA_EINVAL);
  assert_int_equal(h->reqs[0].finish, FINISH_ERROR);
  h_deinit(h);
  h_init(h, 5, 4, 4, 256, 0);
  sp = make_spec(16, 0, 1, 10, -1);
  assert_int_equal(h_add(h, &sp), 0);
  h_run(h);
  assert_int_equal(h->reqs[0].finish, FINISH_LENGTH);
  assert_int_equal(h->reqs[0].n_tokens, 17);
  h_verify(h, 17);
  h_deinit(h);
  free(h);
}

static void test_abort(void **state) {
  (void)state;
  harness_t *h = malloc(sizeof *h);
  h_init(h, 40, 4, 2, 24, 0);
  spec_t sp = make_spec(30, 12, 1, 50, -1);
  assert_int_equal(h_add(h, &sp), 0); /* 0: running, mid-prefill after one step */
  sp = make_spec(10, 12, 2, 50, -1);
  assert_int_equal(h_add(h, &sp), 0); /* 1: waiting (budget) */
  sp = make_spec(10, 0, 3, 50, -1);
  assert_int_equal(h_add(h, &sp), 0); /* 2: waiting */
  sp = make_spec(8, 0, 4, 50, -1);
  assert_int_equal(h_add(h, &sp), 0); /* 3: aborted between schedule and update */
  h_step(h);
  assert_int_equal(h->reqs[0].state, REQ_RUNNING);
  assert_int_equal(h->reqs[0].n_computed, 24);
  sched_abort(&h->s, &h->reqs[0]);
  sched_abort(&h->s, &h->reqs[2]);
  assert_int_equal(h->reqs[0].finish, FINISH_ABORT);
  assert_int_equal(h->reqs[2].finish, FINISH_ABORT);
  assert_int_equal(sched_n_running(&h->s), 0);
  assert_int_equal(sched_n_waiting(&h->s), 2);
  sched_abort(&h->s, &h->reqs[2]); /* twice: no effect */
  check_pool(h);
  /* the aborted request's committed blocks still serve request 1's prefix: 8 of its 10 tokens */
  assert_int_equal(sched_schedule(&h->s, &h->out), 2 + 8);
  assert_int_equal(h->out.n_items, 2);
  assert_int_equal(h->out.items[0].start, 8);
  sched_abort(&h->s, &h->reqs[3]);
  int32_t sampled[2] = {100, 100};
  req_t *fin[2];
  assert_int_equal(sched_update(&h->s, &h->out, sampled, fin), 0);
  assert_int_equal(h->reqs[3].n_tokens, 8); /* its item was skipped */
  sched_abort(&h->s, &h->reqs[1]);
  assert_false(sched_has_work(&h->s));
  assert_int_equal(kv_pool_n_used(&h->pool), 0);
  assert_int_equal(kv_pool_n_available(&h->pool), 39);
  check_pool(h);
  h_deinit(h);
  free(h);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mixed_requests),
      cmocka_unit_test(test_stop_ids),
      cmocka_unit_test(test_chunked_prefill),
      cmocka_unit_test(test_prefix_hits),
      cmocka_unit_test(test_preemption_same_tokens),
      cmocka_unit_test(test_preempted_request_hits_own_blocks),
      cmocka_unit_test(test_preempt_self),
      cmocka_unit_test(test_waiting_does_not_preempt),
      cmocka_unit_test(test_max_num_seqs),
      cmocka_unit_test(test_refuse_never_fits),
      cmocka_unit_test(test_abort),
      cmocka_unit_test(test_async_placeholders),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
