/* test_router.c: KV-aware routing over the worker registry (coordinator/router). Expected picks are
 * derived by hand from cost = w x uncached_prefill_blocks + active_decode_blocks + q x waiting, plus
 * the router's own optimistic charges (docs/routing.md): a routed request adds its prompt blocks,
 * its uncached blocks (pending prefill) and one waiting request to its worker, and pins its chain
 * there so that the next request with that prefix counts it as cached. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/block_hash.h"
#include "common/log.h"
#include "common/status.h"
#include "coordinator/registry/registry.h"
#include "coordinator/router/router.h"

#define BS 16

typedef struct {
  registry_t reg;
  router_t r;
} fixture_t;

static void add_worker(registry_t *reg, const char *id, const char *pool, const char *model, int bs) {
  char key[256], val[1024];
  snprintf(key, sizeof key, "/strata/t/workers/%s/%s", pool, id);
  snprintf(val, sizeof val,
           "{\"id\":\"%s\",\"pool\":\"%s\",\"role\":\"worker\",\"model\":\"%s\",\"grpc_address\":\"h:1\","
           "\"tp\":1,\"pp\":1,\"block_size\":%d,\"kv_blocks\":1000,\"version\":\"0.1.0\"}",
           id, pool, model, bs);
  assert_int_equal(registry_put(reg, key, val, strlen(val)), 0);
}

/* N unified workers w0..w(N-1) of model "m", router seeded with SEED. */
static void fixture_init(fixture_t *f, int n, uint64_t seed) {
  assert_int_equal(registry_init(&f->reg, "t", NULL), 0);
  for (int i = 0; i < n; i++) {
    char id[16];
    snprintf(id, sizeof id, "w%d", i);
    add_worker(&f->reg, id, "unified", "m", BS);
  }
  router_config_t cfg = {.overlap_weight = 1.0, .queue_weight = 1.0, .seed = seed};
  assert_int_equal(router_init(&f->r, &f->reg, &cfg), 0);
}

static void fixture_deinit(fixture_t *f) {
  router_deinit(&f->r);
  registry_deinit(&f->reg);
}

static void set_load(fixture_t *f, const char *id, int active_blocks, int waiting) {
  registry_load_t l = {.running = 1, .waiting = waiting, .active_decode_blocks = active_blocks,
                       .kv_total_blocks = 1000};
  assert_int_equal(registry_set_load(&f->reg, id, &l, 1), 0);
}

/* Prompt token ids: a shared prefix of PREFIX_BLOCKS blocks (same for every caller), then a tail
 * that depends on VARIANT; N_TOKENS in all. Hashes go to HASHES (returns their count). */
static int make_prompt(int32_t *toks, int n_tokens, int prefix_blocks, int variant, uint64_t *hashes, int max) {
  for (int i = 0; i < n_tokens; i++) toks[i] = i < prefix_blocks * BS ? 1000 + i : 50000 + variant * 997 + i;
  return block_hash_chain(toks, n_tokens, BS, BLOCK_HASH_DEFAULT_SEED, hashes, max);
}

static router_request_t request(const uint64_t *h, int n_h, int n_tokens) {
  router_request_t q = {.model = "m", .hashes = h, .n_hashes = n_h, .block_size = BS, .n_prompt_tokens = n_tokens};
  return q;
}

static int quiet_setup(void **state) {
  (void)state;
  log_set_level(LOG_LEVEL_OFF);
  return 0;
}

static void test_prefix_wins_until_evicted(void **state) {
  (void)state;
  fixture_t f;
  fixture_init(&f, 3, 1);
  int32_t toks[160];
  uint64_t h[10];
  /* w1 holds the first 8 blocks of the shared prefix (what its KV events said). */
  assert_int_equal(make_prompt(toks, 160, 8, 0, h, 10), 10);
  assert_int_equal(registry_kv_event(&f.reg, "w1", 1, h, 8, NULL, 0), 0);
  set_load(&f, "w0", 0, 0);
  set_load(&f, "w1", 1, 0);
  set_load(&f, "w2", 0, 0);

  /* w1: 1 x 2 uncached + 1 active = 3; w0, w2: 10 uncached = 10. */
  router_request_t q = request(h, 10, 160);
  q.now_ms = 1000;
  router_result_t res;
  assert_int_equal(router_route(&f.r, &q, &res), 0);
  assert_string_equal(res.worker->info.id, "w1");
  assert_int_equal(res.cached_blocks, 8);
  assert_int_equal(res.uncached_blocks, 2);
  assert_int_equal(res.uncached_tokens, 32);
  assert_true(res.cost == 3.0);

  /* Another prompt with the same 8-block prefix and a different tail goes there too. */
  set_load(&f, "w1", 1, 0);
  uint64_t h2[10];
  make_prompt(toks, 160, 8, 1, h2, 10);
  assert_true(h2[7] == h[7] && h2[8] != h[8]);
  q = request(h2, 10, 160);
  q.now_ms = 1000;
  assert_int_equal(router_route(&f.r, &q, &res), 0);
  assert_string_equal(res.worker->info.id, "w1");

  /* A prompt that shares only a later block (not the first) gets nothing from w1's cache. */
  uint64_t skew[3] = {12345, h[1], h[2]};
  set_load(&f, "w1", 1, 0);
  q = request(skew, 3, 48);
  q.now_ms = 1000;
  assert_int_equal(router_route(&f.r, &q, &res), 0);
  assert_string_not_equal(res.worker->info.id, "w1");

  /* w1 evicts the first block: its run is 0, so its extra active block now loses (11 vs 10). The
   * requests above pinned their chains on w1, so this holds once those pins expired. */
  set_load(&f, "w0", 0, 0);
  set_load(&f, "w1", 1, 0);
  set_load(&f, "w2", 0, 0);
  assert_int_equal(registry_kv_event(&f.reg, "w1", 2, NULL, 0, h, 1), 0);
  q = request(h, 10, 160);
  q.now_ms = 1000 + ROUTER_DEFAULT_PIN_TTL_MS;
  assert_int_equal(router_route(&f.r, &q, &res), 0);
  assert_string_not_equal(res.worker->info.id, "w1");
  assert_int_equal(res.cached_blocks, 0);
  fixture_deinit(&f);
}

static void test_load_decides_without_cache(void **state) {
  (void)state;
  fixture_t f;
  fixture_init(&f, 3, 2);
  uint64_t h[4] = {1, 2, 3, 4};
  router_request_t q = request(h, 4, 64);
  router_result_t res;
  set_load(&f, "w0", 50, 0);
  set_load(&f, "w1", 10, 0);
  set_load(&f, "w2", 30, 0);
  assert_int_equal(router_route(&f.r, &q, &res), 0);
  assert_string_equal(res.worker->info.id, "w1");
  assert_true(res.cost == 4.0 + 10.0);

  /* The queue term: w1 with 30 waiting costs 4 + 10 + 30 = 44 > w2's 4 + 30 = 34. */
  set_load(&f, "w1", 10, 30);
  assert_int_equal(router_route(&f.r, &q, &res), 0);
  assert_string_equal(res.worker->info.id, "w2");
  /* Weights change at run time: without the queue term w1 wins again. */
  set_load(&f, "w2", 30, 0);
  assert_int_equal(router_set_weights(&f.r, 1.0, 0.0), 0);
  assert_int_equal(router_route(&f.r, &q, &res), 0);
  assert_string_equal(res.worker->info.id, "w1");
  assert_int_equal(router_set_weights(&f.r, -1.0, 0.0), STRATA_EINVAL);
  assert_int_equal(router_set_weights(&f.r, 1.0, INFINITY), STRATA_EINVAL);
  assert_true(f.r.queue_weight == 0.0);
  fixture_deinit(&f);
}

/* Routes 300 tied requests of unrelated prompts (stats reset the optimistic load between them);
 * records the picks. */
static void tied_picks(uint64_t seed, int *picks, int *counts) {
  fixture_t f;
  fixture_init(&f, 3, seed);
  for (int i = 0; i < 300; i++) {
    uint64_t h[2] = {7 + 2 * (uint64_t)i, 8 + 2 * (uint64_t)i};
    router_request_t q = request(h, 2, 32);
    for (int w = 0; w < 3; w++) {
      char id[8];
      snprintf(id, sizeof id, "w%d", w);
      set_load(&f, id, 5, 1);
    }
    router_result_t res;
    assert_int_equal(router_route(&f.r, &q, &res), 0);
    picks[i] = res.worker->info.id[1] - '0';
    counts[picks[i]]++;
  }
  fixture_deinit(&f);
}

static void test_ties_random_but_seeded(void **state) {
  (void)state;
  int a[300], b[300], c[300], ca[3] = {0}, cb[3] = {0}, cc[3] = {0};
  tied_picks(99, a, ca);
  tied_picks(99, b, cb);
  tied_picks(100, c, cc);
  assert_memory_equal(a, b, sizeof a); /* same seed, same picks */
  assert_memory_not_equal(a, c, sizeof a);
  /* Spread: each worker gets a fair share (expected 100, sd ~8; 60 is ~5 sd below). */
  for (int w = 0; w < 3; w++) assert_true(ca[w] >= 60 && cc[w] >= 60);
}

static void test_unavailable_workers_never_chosen(void **state) {
  (void)state;
  fixture_t f;
  fixture_init(&f, 4, 3);
  int32_t toks[160];
  uint64_t h[10];
  make_prompt(toks, 160, 10, 0, h, 10);
  /* w0..w2 hold the whole prompt and are idle; w3 holds nothing and is busy. */
  for (int w = 0; w < 3; w++) {
    char id[8];
    snprintf(id, sizeof id, "w%d", w);
    assert_int_equal(registry_kv_event(&f.reg, id, 1, h, 10, NULL, 0), 0);
  }
  assert_int_equal(registry_set_health(&f.reg, "w0", REGISTRY_DRAINING, "scale-down", 1), 0);
  assert_int_equal(registry_set_health(&f.reg, "w1", REGISTRY_UNHEALTHY, "stream broke", 1), 0);
  set_load(&f, "w3", 500, 20);
  const char *exclude[] = {"w2"};
  router_request_t q = request(h, 10, 160);
  q.exclude = exclude;
  q.n_exclude = 1;
  for (int i = 0; i < 50; i++) {
    router_result_t res;
    assert_int_equal(router_route(&f.r, &q, &res), 0);
    assert_string_equal(res.worker->info.id, "w3");
  }
  /* Suspect workers get nothing either. */
  assert_int_equal(registry_set_health(&f.reg, "w3", REGISTRY_SUSPECT, "late stats", 2), 0);
  router_result_t res;
  assert_int_equal(router_route(&f.r, &q, &res), STRATA_EUNAVAILABLE);
  assert_null(res.worker);
  assert_string_equal(res.reason, "no ready worker for model m: 1 draining, 1 unhealthy, 1 suspect, 1 excluded");
  fixture_deinit(&f);
}

static void test_503_reason(void **state) {
  (void)state;
  fixture_t f;
  fixture_init(&f, 3, 4);
  add_worker(&f.reg, "other", "unified", "m2", BS); /* another model does not count */
  assert_int_equal(registry_set_health(&f.reg, "w0", REGISTRY_DRAINING, NULL, 1), 0);
  assert_int_equal(registry_set_health(&f.reg, "w1", REGISTRY_DRAINING, NULL, 1), 0);
  assert_int_equal(registry_set_health(&f.reg, "w2", REGISTRY_UNHEALTHY, "cuda error", 1), 0);
  router_request_t q = request(NULL, 0, 10);
  router_result_t res;
  assert_int_equal(router_route(&f.r, &q, &res), STRATA_EUNAVAILABLE);
  assert_string_equal(res.reason, "no ready worker for model m: 2 draining, 1 unhealthy");
  q.model = "nope";
  assert_int_equal(router_route(&f.r, &q, &res), STRATA_EUNAVAILABLE);
  assert_string_equal(res.reason, "no ready worker for model nope: none registered");
  q.model = "m2";
  q.pool = "decode";
  assert_int_equal(router_route(&f.r, &q, &res), STRATA_EUNAVAILABLE);
  assert_string_equal(res.reason, "no ready worker for model m2 in pool decode: none registered");
  q.pool = "unified";
  assert_int_equal(router_route(&f.r, &q, &res), 0);
  assert_string_equal(res.worker->info.id, "other");
  /* Malformed requests are refused. */
  q.model = NULL;
  assert_int_equal(router_route(&f.r, &q, &res), STRATA_EINVAL);
  uint64_t h = 1;
  router_request_t bad = request(&h, 1, 16);
  bad.block_size = 0;
  assert_int_equal(router_route(&f.r, &bad, &res), STRATA_EINVAL);
  bad = request(NULL, 0, ROUTER_MAX_PROMPT_TOKENS + 1);
  assert_int_equal(router_route(&f.r, &bad, &res), STRATA_EINVAL);
  fixture_deinit(&f);
}

static void test_burst_spreads(void **state) {
  (void)state;
  fixture_t f;
  fixture_init(&f, 3, 5);
  int32_t toks[64];
  uint64_t h[4];
  make_prompt(toks, 64, 0, 0, h, 4);
  router_request_t q = request(h, 4, 64);
  int counts[3] = {0};
  /* No stats update arrives during the burst: only optimistic accounting keeps costs apart. The
   * first pick adds 4 prompt blocks, 4 pending prefill blocks and 1 request (9) and pins the chain:
   * 0 uncached + 9 there vs 4 on a cold worker, so the next picks go elsewhere; after every 3 picks
   * the three costs are equal again, so each worker gets 10. */
  for (int i = 0; i < 30; i++) {
    router_result_t res;
    assert_int_equal(router_route(&f.r, &q, &res), 0);
    counts[res.worker->info.id[1] - '0']++;
  }
  assert_int_equal(counts[0], 10);
  assert_int_equal(counts[1], 10);
  assert_int_equal(counts[2], 10);
  assert_int_equal(registry_find(&f.reg, "w0")->pending_blocks, 40);
  /* The next stats update replaces the guess. */
  set_load(&f, "w0", 3, 0);
  assert_int_equal(registry_find(&f.reg, "w0")->pending_blocks, 0);
  fixture_deinit(&f);
}

static void test_block_size_mismatch_counts_no_hits(void **state) {
  (void)state;
  registry_t reg;
  router_t r;
  assert_int_equal(registry_init(&reg, "t", NULL), 0);
  add_worker(&reg, "big", "unified", "m", 32);
  add_worker(&reg, "small", "unified", "m", BS);
  uint64_t h[4] = {10, 20, 30, 40};
  assert_int_equal(registry_kv_event(&reg, "big", 1, h, 4, NULL, 0), 0);
  router_config_t cfg = {.overlap_weight = 1.0, .queue_weight = 1.0, .seed = 1};
  assert_int_equal(router_init(&r, &reg, &cfg), 0);
  /* The request's hashes are over 16-token blocks: "big" cannot hold them. big: 2 blocks of 32
   * uncached = 2; small: 4 uncached = 4, so big still wins on size alone, with 0 cached blocks. */
  router_request_t q = {.model = "m", .hashes = h, .n_hashes = 4, .block_size = BS, .n_prompt_tokens = 64};
  router_result_t res;
  assert_int_equal(router_route(&r, &q, &res), 0);
  assert_string_equal(res.worker->info.id, "big");
  assert_int_equal(res.cached_blocks, 0);
  assert_int_equal(res.uncached_tokens, 64);
  router_deinit(&r);
  registry_deinit(&reg);
}

static void test_prefill_picker(void **state) {
  (void)state;
  router_disagg_t p = {.min_uncached_tokens = 512, .max_prefill_queue = 4};
  /* The pure decision. */
  assert_int_equal(router_disagg_wanted(&p, 513, 0), 1);
  assert_int_equal(router_disagg_wanted(&p, 512, 0), 0);
  assert_int_equal(router_disagg_wanted(&p, 4096, 3), 1);
  assert_int_equal(router_disagg_wanted(&p, 4096, 4), 0);
  assert_int_equal(router_disagg_wanted(&p, 4096, -1), 0);

  registry_t reg;
  router_t r;
  assert_int_equal(registry_init(&reg, "t", NULL), 0);
  add_worker(&reg, "d0", "decode", "m", BS);
  router_config_t cfg = {.overlap_weight = 1.0, .queue_weight = 1.0, .seed = 9};
  assert_int_equal(router_init(&r, &reg, &cfg), 0);
  router_request_t q = {.model = "m", .pool = "prefill", .n_prompt_tokens = 2048};
  router_result_t res;
  assert_int_equal(router_pick_prefill(&r, &q, 2048, &p, &res), STRATA_ENOTFOUND);
  assert_string_equal(res.reason, "no ready prefill worker for model m in pool prefill");

  add_worker(&reg, "p0", "prefill", "m", BS);
  add_worker(&reg, "p1", "prefill", "m", BS);
  assert_int_equal(router_pool_queue(&r, "m", "prefill"), 0);
  assert_int_equal(router_pick_prefill(&r, &q, 100, &p, &res), STRATA_ENOTFOUND);
  assert_string_equal(res.reason, "uncached prompt of 100 tokens is within the local threshold 512");
  /* Long prompts go remote while the pool's queue (optimistically counted) stays below 4. */
  for (int i = 0; i < 4; i++) {
    assert_int_equal(router_pick_prefill(&r, &q, 2048, &p, &res), 0);
    assert_string_equal(res.worker->info.pool, "prefill");
  }
  assert_int_equal(router_pool_queue(&r, "m", "prefill"), 4);
  assert_int_equal(router_pick_prefill(&r, &q, 2048, &p, &res), STRATA_ENOTFOUND);
  assert_string_equal(res.reason, "prefill pool prefill queue 4 is not below 4");
  /* Stats show the queue drained: remote prefill again. */
  registry_load_t idle = {0};
  assert_int_equal(registry_set_load(&reg, "p0", &idle, 2), 0);
  assert_int_equal(registry_set_load(&reg, "p1", &idle, 2), 0);
  assert_int_equal(router_pick_prefill(&r, &q, 2048, &p, &res), 0);
  q.pool = NULL;
  assert_int_equal(router_pick_prefill(&r, &q, 2048, &p, &res), STRATA_EINVAL);
  router_deinit(&r);
  registry_deinit(&reg);
}

/* A 1,100-token prompt: a 1,000-token prefix shared by every caller, then a 100-token tail that
 * depends on VARIANT (SHARED == 0: the whole prompt depends on it). 68 full blocks are hashed; the
 * prompt spans 69 blocks; a shared prefix gives 62 common leading hashes (992 of its 1,000 tokens). */
#define LONG_TOKENS 1100
#define LONG_HASHES 68
#define LONG_BLOCKS 69
#define LONG_SHARED 62
static void long_prompt(int shared, int variant, uint64_t *hashes) {
  int32_t toks[LONG_TOKENS];
  for (int i = 0; i < LONG_TOKENS; i++)
    toks[i] = shared && i < 1000 ? 1000 + i : 70000 + variant * 1009 + i;
  assert_int_equal(block_hash_chain(toks, LONG_TOKENS, BS, BLOCK_HASH_DEFAULT_SEED, hashes, LONG_HASHES),
                   LONG_HASHES);
}

/* Routes 8 long prompts (SHARED prefix or not) back to back at one instant, with no stats or KV event
 * in between, over 4 idle workers with overlap weight W; counts picks per worker. */
static void burst(double w, int shared, int counts[4]) {
  fixture_t f;
  fixture_init(&f, 4, 77);
  assert_int_equal(router_set_weights(&f.r, w, 1.0), 0);
  for (int i = 0; i < 8; i++) {
    uint64_t h[LONG_HASHES];
    long_prompt(shared, i, h);
    router_request_t q = request(h, LONG_HASHES, LONG_TOKENS);
    q.now_ms = 5000;
    q.request_id = 100 + (uint64_t)i;
    router_result_t res;
    assert_int_equal(router_route(&f.r, &q, &res), 0);
    counts[res.worker->info.id[1] - '0']++;
    if (shared && i > 0 && res.cached_blocks > 0) {
      assert_int_equal(res.cached_blocks, LONG_SHARED);
      assert_int_equal(res.pinned_blocks, LONG_SHARED); /* no KV event confirmed anything yet */
    }
  }
  fixture_deinit(&f);
}

static void test_shared_prefix_burst_sticks(void **state) {
  (void)state;
  /* By hand: after k of the burst went to worker A, a further one costs there
   *   w x 7 uncached + 69k prompt blocks + (69 + 7(k-1)) pending prefill + k waiting
   * and on a cold worker w x 69. For k = 7 (the 8th request) A costs 7w + 483 + 111 + 7 = 7w + 601,
   * below 69w whenever w > 601 / 62 ~ 9.7. With w = 16 all 8 go to A. */
  int counts[4] = {0};
  burst(16.0, 1, counts);
  int max = 0;
  for (int i = 0; i < 4; i++) max = counts[i] > max ? counts[i] : max;
  assert_int_equal(max, 8);
  /* With w = 1 the second one already costs 7 + 69 + 69 + 1 = 146 on A against 69 cold: they spread. */
  int spread[4] = {0};
  burst(1.0, 1, spread);
  for (int i = 0; i < 4; i++) assert_true(spread[i] < 8);
}

static void test_unrelated_burst_spreads(void **state) {
  (void)state;
  /* Unrelated prompts: each costs 16 x 69 on every worker plus that worker's load; a worker that got
   * one carries 69 + 69 + 1 more, so the first 4 go to 4 workers, and so do the next 4. */
  int counts[4] = {0};
  burst(16.0, 0, counts);
  for (int i = 0; i < 4; i++) assert_int_equal(counts[i], 2);
}

/* Picks worker X with a first request at T=0, then loads X with one active block: pinned, X wins the
 * same prompt (0 + 1 against 4 cold) until the pin expires, then loses (4 + 1 against 4). */
static void test_pin_expires(void **state) {
  (void)state;
  fixture_t f;
  fixture_init(&f, 2, 11);
  uint64_t h[4];
  int32_t toks[64];
  make_prompt(toks, 64, 4, 0, h, 4);
  router_request_t q = request(h, 4, 64);
  router_result_t res;
  q.now_ms = 1;
  assert_int_equal(router_route(&f.r, &q, &res), 0);
  char x[REGISTRY_ID_MAX], other[REGISTRY_ID_MAX];
  snprintf(x, sizeof x, "%s", res.worker->info.id);
  snprintf(other, sizeof other, "%s", strcmp(x, "w0") == 0 ? "w1" : "w0");
  set_load(&f, x, 1, 0);
  set_load(&f, other, 0, 0);
  q.now_ms = ROUTER_DEFAULT_PIN_TTL_MS; /* 1 ms before the pin expires */
  assert_int_equal(router_route(&f.r, &q, &res), 0);
  assert_string_equal(res.worker->info.id, x);
  assert_int_equal(res.pinned_blocks, 4);
  assert_true(res.cost == 1.0);
  /* That route refreshed the pin; let it lapse, then X is just a loaded cold worker. */
  set_load(&f, x, 1, 0);
  set_load(&f, other, 0, 0);
  q.now_ms = 2 * ROUTER_DEFAULT_PIN_TTL_MS;
  assert_int_equal(router_route(&f.r, &q, &res), 0);
  assert_string_equal(res.worker->info.id, other);
  assert_int_equal(res.cached_blocks, 0);
  fixture_deinit(&f);
}

/* KV events that confirm a pin retire it; the blocks stay cached through the registry. */
static void test_pin_confirmed(void **state) {
  (void)state;
  fixture_t f;
  fixture_init(&f, 2, 12);
  uint64_t h[4];
  int32_t toks[64];
  make_prompt(toks, 64, 4, 0, h, 4);
  router_request_t q = request(h, 4, 64);
  q.now_ms = 1;
  router_result_t res;
  assert_int_equal(router_route(&f.r, &q, &res), 0);
  const char *x = res.worker->info.id;
  assert_int_equal(registry_kv_event(&f.reg, x, 1, h, 4, NULL, 0), 0);
  set_load(&f, "w0", 0, 0);
  set_load(&f, "w1", 0, 0);
  assert_int_equal(router_route(&f.r, &q, &res), 0);
  assert_string_equal(res.worker->info.id, x);
  assert_int_equal(res.cached_blocks, 4);
  assert_int_equal(res.pinned_blocks, 0);
  fixture_deinit(&f);
}

/* Pending prefill: a tracked request's uncached blocks count until its first token or its end; an
 * untracked one's until the next stats update; a tracked one's at most pending_ttl_ms. */
static void test_pending_prefill(void **state) {
  (void)state;
  registry_t reg;
  router_t r;
  assert_int_equal(registry_init(&reg, "t", NULL), 0);
  add_worker(&reg, "w0", "unified", "m", BS);
  router_config_t cfg = {.overlap_weight = 1.0, .queue_weight = 1.0, .seed = 1, .pending_ttl_ms = 500};
  assert_int_equal(router_init(&r, &reg, &cfg), 0);
  uint64_t a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8}, c[2] = {9, 10};
  router_request_t q = request(a, 4, 64);
  q.now_ms = 100;
  q.request_id = 1;
  router_result_t res;
  assert_int_equal(router_route(&r, &q, &res), 0);
  assert_int_equal(router_pending_prefill(&r, "w0"), 4);
  q = request(b, 4, 60); /* 60 tokens: 4 blocks, the last one partial */
  q.now_ms = 100;
  q.request_id = 2;
  assert_int_equal(router_route(&r, &q, &res), 0);
  assert_int_equal(router_pending_prefill(&r, "w0"), 8);
  /* cost of a third: 2 uncached + (4 + 4 prompt + 8 prefill) + 2 waiting = 20. */
  q = request(c, 2, 32);
  q.now_ms = 100;
  assert_int_equal(router_route(&r, &q, &res), 0);
  assert_true(res.cost == 20.0);
  assert_int_equal(router_pending_prefill(&r, "w0"), 10);
  router_progress(&r, 1, 1); /* request 1's first token */
  router_progress(&r, 1, 1); /* later tokens change nothing */
  assert_int_equal(router_pending_prefill(&r, "w0"), 6);
  registry_load_t l = {.running = 2, .waiting = 1, .active_decode_blocks = 10, .kv_total_blocks = 1000};
  assert_int_equal(registry_set_load(&reg, "w0", &l, 200), 0); /* clears the untracked request's 2 */
  assert_int_equal(router_pending_prefill(&r, "w0"), 4);
  router_finish(&r, 99); /* unknown: ignored */
  assert_int_equal(router_pending_prefill(&r, "w0"), 4);
  /* Request 2 never reports: its charge lapses 500 ms after it was routed. */
  q = request(c, 2, 32);
  q.now_ms = 600;
  assert_int_equal(router_route(&r, &q, &res), 0);
  assert_int_equal(router_pending_prefill(&r, "w0"), 0);
  /* Bad TTLs are refused. */
  router_deinit(&r);
  cfg.pin_ttl_ms = -1;
  assert_int_equal(router_init(&r, &reg, &cfg), STRATA_EINVAL);
  router_deinit(&r);
  registry_deinit(&reg);
}

/* KV use reported by an idle worker is cached prefix, not decode load: it counts only while the
 * worker runs something. */
static void test_idle_kv_use_is_not_decode_load(void **state) {
  (void)state;
  fixture_t f;
  fixture_init(&f, 2, 13);
  int32_t toks[160];
  uint64_t h[10];
  make_prompt(toks, 160, 8, 0, h, 10);
  assert_int_equal(registry_kv_event(&f.reg, "w0", 1, h, 8, NULL, 0), 0);
  registry_load_t warm = {.running = 0, .active_decode_blocks = 500, .kv_used_blocks = 500, .kv_total_blocks = 1000};
  registry_load_t cold = {.kv_total_blocks = 1000};
  assert_int_equal(registry_set_load(&f.reg, "w0", &warm, 1), 0);
  assert_int_equal(registry_set_load(&f.reg, "w1", &cold, 1), 0);
  /* w0: 2 uncached + 0 = 2; w1: 10 uncached = 10. */
  router_request_t q = request(h, 10, 160);
  router_result_t res;
  assert_int_equal(router_route(&f.r, &q, &res), 0);
  assert_string_equal(res.worker->info.id, "w0");
  assert_true(res.cost == 2.0);
  /* Running: its 500 blocks are decode load now (2 + 500 against w1's 10). */
  warm.running = 1;
  assert_int_equal(registry_set_load(&f.reg, "w0", &warm, 2), 0);
  uint64_t other[2] = {77, 78};
  q = request(other, 2, 32);
  assert_int_equal(router_route(&f.r, &q, &res), 0);
  assert_string_equal(res.worker->info.id, "w1");
  fixture_deinit(&f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_prefix_wins_until_evicted),
      cmocka_unit_test(test_load_decides_without_cache),
      cmocka_unit_test(test_ties_random_but_seeded),
      cmocka_unit_test(test_unavailable_workers_never_chosen),
      cmocka_unit_test(test_503_reason),
      cmocka_unit_test(test_burst_spreads),
      cmocka_unit_test(test_block_size_mismatch_counts_no_hits),
      cmocka_unit_test(test_prefill_picker),
      cmocka_unit_test(test_shared_prefix_burst_sticks),
      cmocka_unit_test(test_unrelated_burst_spreads),
      cmocka_unit_test(test_pin_expires),
      cmocka_unit_test(test_pin_confirmed),
      cmocka_unit_test(test_pending_prefill),
      cmocka_unit_test(test_idle_kv_use_is_not_decode_load),
  };
  return cmocka_run_group_tests(tests, quiet_setup, NULL);
}
