/* test_kvcache.c: the KV block pool: allocation, prefix matching, LRU eviction, events, invariants. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "common/block_hash.h"
#include "common/status.h"
#include "worker/kvcache/kvcache.h"

#define SEED 1234u

/* Records KV events in order. */
typedef struct {
  int n;
  kv_event_type_t type[256];
  uint64_t hash[256];
} events_t;

static void on_event(void *data, kv_event_type_t type, uint64_t hash) {
  events_t *e = data;
  if (e->n < 256) {
    e->type[e->n] = type;
    e->hash[e->n] = hash;
    e->n++;
  }
}

static void fill(int32_t *t, int n, int32_t base) {
  for (int i = 0; i < n; i++) t[i] = base + i;
}

/* Allocates, "computes" and registers N tokens for T. */
static void compute(kv_pool_t *p, kv_table_t *t, const int32_t *toks, int n) {
  assert_int_equal(kv_ensure(p, t, n), 0);
  kv_commit(p, t, toks, n);
}

static void test_init_invalid(void **state) {
  (void)state;
  kv_pool_t p;
  assert_int_equal(kv_pool_init(&p, 1, 16, 1, SEED), STRATA_EINVAL);
  assert_int_equal(kv_pool_init(&p, 10, 0, 1, SEED), STRATA_EINVAL);
  assert_int_equal(kv_pool_init(&p, 2, 16, 1, SEED), 0);
  assert_int_equal(kv_pool_n_available(&p), 1);
  kv_pool_deinit(&p);
}

static void test_null_block_never_handed_out(void **state) {
  (void)state;
  kv_pool_t p;
  kv_table_t t = {0};
  assert_int_equal(kv_pool_init(&p, 9, 4, 1, SEED), 0);
  assert_int_equal(kv_pool_n_available(&p), 8);
  assert_int_equal(kv_ensure(&p, &t, 32), 0);
  assert_int_equal(t.n, 8);
  int seen[9] = {0};
  for (int i = 0; i < t.n; i++) {
    assert_true(t.ids[i] >= 1 && t.ids[i] <= 8);
    assert_int_equal(seen[t.ids[i]]++, 0);
  }
  assert_int_equal(kv_pool_n_used(&p), 8);
  assert_int_equal(kv_pool_n_available(&p), 0);
  /* one more token needs a 9th block: refused, table unchanged */
  assert_int_equal(kv_ensure(&p, &t, 33), STRATA_EFULL);
  assert_int_equal(t.n, 8);
  /* slots: token 5 lies in the second block at offset 1 */
  assert_int_equal(kv_slot(&p, &t, 5), t.ids[1] * 4 + 1);
  const kv_table_t *tabs[1] = {&t};
  assert_int_equal(kv_pool_check(&p, tabs, 1), 0);
  kv_release(&p, &t);
  assert_int_equal(kv_pool_n_used(&p), 0);
  assert_int_equal(kv_pool_n_available(&p), 8);
  assert_int_equal(kv_pool_check(&p, NULL, 0), 0);
  kv_table_free(&t);
  kv_pool_deinit(&p);
}

static void test_ensure_all_or_nothing(void **state) {
  (void)state;
  kv_pool_t p;
  kv_table_t a = {0}, b = {0};
  assert_int_equal(kv_pool_init(&p, 5, 16, 1, SEED), 0);
  assert_int_equal(kv_ensure(&p, &a, 17), 0); /* 2 blocks */
  assert_int_equal(kv_ensure(&p, &a, 20), 0); /* still 2 */
  assert_int_equal(a.n, 2);
  assert_int_equal(kv_ensure(&p, &b, 48), STRATA_EFULL); /* 3 > 2 left */
  assert_int_equal(b.n, 0);
  assert_int_equal(kv_pool_n_available(&p), 2);
  assert_int_equal(kv_ensure(&p, &b, 32), 0);
  const kv_table_t *tabs[2] = {&a, &b};
  assert_int_equal(kv_pool_check(&p, tabs, 2), 0);
  kv_release(&p, &a);
  kv_release(&p, &b);
  assert_int_equal(kv_pool_n_available(&p), 4);
  kv_table_free(&a);
  kv_table_free(&b);
  kv_pool_deinit(&p);
}

static void test_commit_match_and_events(void **state) {
  (void)state;
  kv_pool_t p;
  events_t ev = {0};
  kv_table_t a = {0}, b = {0};
  int32_t toks[14];
  fill(toks, 14, 100);
  uint64_t ref[3];
  assert_int_equal(block_hash_chain(toks, 14, 4, SEED, ref, 3), 3);
  assert_int_equal(kv_pool_init(&p, 16, 4, 1, SEED), 0);
  p.on_event = on_event;
  p.event_data = &ev;
  compute(&p, &a, toks, 14);
  /* three full blocks registered, in order, with the chained hashes of block_hash_chain */
  assert_int_equal(ev.n, 3);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(ev.type[i], KV_EVENT_STORED);
    assert_true(ev.hash[i] == ref[i]);
  }
  assert_int_equal(a.n_cached, 3);
  int32_t ids[3] = {a.ids[0], a.ids[1], a.ids[2]};
  kv_release(&p, &a);
  assert_int_equal(kv_pool_n_used(&p), 0);
  assert_int_equal(kv_pool_n_available(&p), 15);
  /* the same prompt hits all three blocks (at most 13 of 14 tokens may match) */
  assert_int_equal(kv_match_prefix(&p, &b, toks, 14, 13), 12);
  assert_int_equal(b.n, 3);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(b.ids[i], ids[i]);
    assert_int_equal(kv_block_ref_count(&p, ids[i]), 1);
  }
  assert_int_equal(kv_pool_n_available(&p), 12); /* matched blocks left the LRU */
  assert_true(p.n_queries_tokens == 14 && p.n_hit_tokens == 12);
  const kv_table_t *tabs[1] = {&b};
  assert_int_equal(kv_pool_check(&p, tabs, 1), 0);
  /* a match needs an empty table */
  assert_int_equal(kv_match_prefix(&p, &b, toks, 14, 13), STRATA_EINVAL);
  kv_release(&p, &b);
  /* max_tokens caps the match: 7 tokens allow one block */
  assert_int_equal(kv_match_prefix(&p, &b, toks, 14, 7), 4);
  kv_release(&p, &b);
  assert_int_equal(kv_match_prefix(&p, &b, toks, 14, 0), 0);
  /* a different first token misses everything (hashes chain) */
  toks[0] = 7;
  assert_int_equal(kv_match_prefix(&p, &b, toks, 14, 13), 0);
  assert_int_equal(ev.n, 3); /* no eviction happened */
  assert_int_equal(kv_pool_check(&p, NULL, 0), 0);
  kv_table_free(&a);
  kv_table_free(&b);
  kv_pool_deinit(&p);
}

/* The only way a later block can be cached while an earlier one is not: a duplicate computation
 * registers the tail and the head's owner is evicted. The match must stop at the first miss. */
static void test_match_stops_at_first_miss(void **state) {
  (void)state;
  kv_pool_t p;
  kv_table_t a = {0}, b = {0}, c = {0}, probe = {0};
  int32_t toks[13];
  fill(toks, 13, 5);
  assert_int_equal(kv_pool_init(&p, 9, 4, 1, SEED), 0); /* 8 usable */
  compute(&p, &a, toks, 8);                               /* A computes blocks 0, 1: registered */
  compute(&p, &b, toks, 12);                              /* B: 0, 1 duplicates (private), 2 registered */
  assert_int_equal(kv_pool_n_used(&p), 5);
  kv_release(&p, &a); /* LRU: a1, a0 */
  assert_int_equal(kv_ensure(&p, &c, 16), 0); /* 3 free + 1 eviction: a1 goes */
  assert_int_equal(p.n_evictions, 1);
  /* cached now: block 0 (A's, LRU) and block 2 (B's, held); block 1 missing */
  assert_int_equal(kv_match_prefix(&p, &probe, toks, 13, 12), 4);
  assert_int_equal(probe.n, 1);
  const kv_table_t *tabs[3] = {&b, &c, &probe};
  assert_int_equal(kv_pool_check(&p, tabs, 3), 0);
  kv_release(&p, &probe);
  kv_release(&p, &b);
  kv_release(&p, &c);
  assert_int_equal(kv_pool_n_available(&p), 8);
  assert_int_equal(kv_pool_check(&p, NULL, 0), 0);
  kv_table_free(&a);
  kv_table_free(&b);
  kv_table_free(&c);
  kv_table_free(&probe);
  kv_pool_deinit(&p);
}

static void test_lru_eviction_order(void **state) {
  (void)state;
  kv_pool_t p;
  events_t ev = {0};
  kv_table_t a = {0}, b = {0}, t = {0};
  int32_t ta[12], tb[12];
  fill(ta, 12, 1000);
  fill(tb, 12, 2000);
  uint64_t ha[3], hb[3];
  block_hash_chain(ta, 12, 4, SEED, ha, 3);
  block_hash_chain(tb, 12, 4, SEED, hb, 3);
  assert_int_equal(kv_pool_init(&p, 10, 4, 1, SEED), 0); /* 9 usable */
  p.on_event = on_event;
  p.event_data = &ev;
  compute(&p, &a, ta, 12);
  compute(&p, &b, tb, 12);
  kv_release(&p, &a); /* released first: evicted first, tail block before head */
  kv_release(&p, &b);
  ev.n = 0;
  /* 3 free blocks are handed out before any cached one */
  assert_int_equal(kv_ensure(&p, &t, 12), 0);
  assert_int_equal(ev.n, 0);
  assert_true(p.n_evictions == 0);
  const uint64_t want[6] = {ha[2], ha[1], ha[0], hb[2], hb[1], hb[0]};
  for (int i = 0; i < 6; i++) {
    assert_int_equal(kv_ensure(&p, &t, 12 + 4 * (i + 1)), 0);
    assert_int_equal(ev.n, i + 1);
    assert_int_equal(ev.type[i], KV_EVENT_REMOVED);
    assert_true(ev.hash[i] == want[i]);
    const kv_table_t *tabs[1] = {&t};
    assert_int_equal(kv_pool_check(&p, tabs, 1), 0);
  }
  assert_true(p.n_evictions == 6);
  assert_int_equal(kv_ensure(&p, &t, 40), STRATA_EFULL);
  kv_release(&p, &t);
  /* evicted hashes are gone from the table */
  kv_table_t probe = {0};
  assert_int_equal(kv_match_prefix(&p, &probe, ta, 12, 12), 0);
  assert_int_equal(kv_match_prefix(&p, &probe, tb, 12, 12), 0);
  assert_int_equal(kv_pool_check(&p, NULL, 0), 0);
  kv_table_free(&probe);
  kv_table_free(&a);
  kv_table_free(&b);
  kv_table_free(&t);
  kv_pool_deinit(&p);
}

/* A match refreshes recency: blocks matched and released again move behind the others. */
static void test_lru_refresh_on_hit(void **state) {
  (void)state;
  kv_pool_t p;
  events_t ev = {0};
  kv_table_t a = {0}, b = {0}, t = {0};
  int32_t ta[4], tb[4];
  fill(ta, 4, 10);
  fill(tb, 4, 20);
  assert_int_equal(kv_pool_init(&p, 3, 4, 1, SEED), 0); /* 2 usable */
  p.on_event = on_event;
  p.event_data = &ev;
  compute(&p, &a, ta, 4);
  compute(&p, &b, tb, 4);
  kv_release(&p, &a);
  kv_release(&p, &b); /* LRU: a, b */
  assert_int_equal(kv_match_prefix(&p, &a, ta, 4, 4), 4);
  kv_release(&p, &a); /* LRU: b, a */
  ev.n = 0;
  assert_int_equal(kv_ensure(&p, &t, 1), 0);
  assert_int_equal(ev.n, 1);
  assert_true(ev.hash[0] == block_hash(0, tb, 4, SEED));
  kv_release(&p, &t);
  kv_table_free(&a);
  kv_table_free(&b);
  kv_table_free(&t);
  kv_pool_deinit(&p);
}

static void test_duplicate_registration(void **state) {
  (void)state;
  kv_pool_t p;
  events_t ev = {0};
  kv_table_t a = {0}, b = {0}, c = {0};
  int32_t toks[9];
  fill(toks, 9, 40);
  assert_int_equal(kv_pool_init(&p, 12, 4, 1, SEED), 0);
  p.on_event = on_event;
  p.event_data = &ev;
  compute(&p, &a, toks, 8);
  compute(&p, &b, toks, 8); /* same content computed independently */
  assert_int_equal(ev.n, 2); /* stored once */
  const kv_table_t *tabs[2] = {&a, &b};
  assert_int_equal(kv_pool_check(&p, tabs, 2), 0);
  int32_t a0 = a.ids[0], a1 = a.ids[1];
  kv_release(&p, &b); /* B's copies are not cached: they go to the free list */
  kv_release(&p, &a);
  assert_int_equal(p.n_evictable, 2);
  assert_int_equal(kv_pool_n_available(&p), 11);
  assert_int_equal(kv_match_prefix(&p, &c, toks, 9, 8), 8);
  assert_int_equal(c.ids[0], a0);
  assert_int_equal(c.ids[1], a1);
  kv_release(&p, &c);
  assert_int_equal(kv_pool_check(&p, NULL, 0), 0);
  kv_table_free(&a);
  kv_table_free(&b);
  kv_table_free(&c);
  kv_pool_deinit(&p);
}

static void test_shared_refcount(void **state) {
  (void)state;
  kv_pool_t p;
  kv_table_t a = {0}, b = {0};
  int32_t toks[13];
  fill(toks, 13, 77);
  assert_int_equal(kv_pool_init(&p, 8, 4, 1, SEED), 0);
  compute(&p, &a, toks, 13); /* 4 blocks, 3 full */
  assert_int_equal(kv_match_prefix(&p, &b, toks, 13, 12), 12);
  for (int i = 0; i < 3; i++) assert_int_equal(kv_block_ref_count(&p, b.ids[i]), 2);
  const kv_table_t *both[2] = {&a, &b};
  assert_int_equal(kv_pool_check(&p, both, 2), 0);
  /* the check notices reference counts that do not match the tables it is given */
  const kv_table_t *only_a[1] = {&a};
  assert_int_equal(kv_pool_check(&p, only_a, 1), STRATA_EINTERNAL);
  /* B continues privately after the shared prefix */
  assert_int_equal(kv_ensure(&p, &b, 14), 0);
  assert_int_equal(kv_block_ref_count(&p, b.ids[3]), 1);
  assert_true(b.ids[3] != a.ids[3]);
  kv_release(&p, &a);
  assert_int_equal(kv_pool_n_used(&p), 4); /* the shared prefix stays held by B */
  kv_release(&p, &b);
  assert_int_equal(kv_pool_n_used(&p), 0);
  assert_int_equal(kv_pool_n_available(&p), 7);
  assert_int_equal(kv_pool_check(&p, NULL, 0), 0);
  kv_table_free(&a);
  kv_table_free(&b);
  kv_pool_deinit(&p);
}

static void test_prefix_caching_off(void **state) {
  (void)state;
  kv_pool_t p;
  events_t ev = {0};
  kv_table_t a = {0}, b = {0};
  int32_t toks[9];
  fill(toks, 9, 3);
  assert_int_equal(kv_pool_init(&p, 6, 4, 0, SEED), 0);
  p.on_event = on_event;
  p.event_data = &ev;
  compute(&p, &a, toks, 9);
  kv_release(&p, &a);
  assert_int_equal(ev.n, 0);
  assert_int_equal(p.n_evictable, 0);
  assert_int_equal(kv_match_prefix(&p, &b, toks, 9, 8), 0);
  assert_int_equal(kv_pool_check(&p, NULL, 0), 0);
  kv_table_free(&a);
  kv_table_free(&b);
  kv_pool_deinit(&p);
}

/* Random traffic over a small alphabet (so prefixes collide) with many evictions. The test keeps
 * its own copy of what each block holds (written when a table gets new blocks, as a model would),
 * and every match must return blocks whose content equals the query. */
#define ST_TABLES 6
#define ST_BS 4
#define ST_BLOCKS 24
#define ST_MAXTOK 40
static void test_random_stress(void **state) {
  (void)state;
  kv_pool_t p;
  kv_table_t t[ST_TABLES];
  int32_t toks[ST_TABLES][ST_MAXTOK];
  int n_tok[ST_TABLES] = {0};
  int32_t content[ST_BLOCKS][ST_BS];
  memset(t, 0, sizeof t);
  memset(content, 0xff, sizeof content);
  assert_int_equal(kv_pool_init(&p, ST_BLOCKS, ST_BS, 1, SEED), 0);
  uint32_t rng = 12345;
  for (int step = 0; step < 3000; step++) {
    rng = rng * 1664525u + 1013904223u;
    int k = (int)((rng >> 8) % ST_TABLES);
    int op = (int)((rng >> 16) % 4);
    kv_table_t *tk = &t[k];
    if (tk->n == 0) { /* a new request: match, then compute the rest */
      n_tok[k] = 1 + (int)((rng >> 20) % ST_MAXTOK);
      for (int i = 0; i < n_tok[k]; i++) {
        rng = rng * 1664525u + 1013904223u;
        toks[k][i] = (int32_t)((rng >> 24) % 2); /* two symbols: many shared prefixes */
      }
      int m = kv_match_prefix(&p, tk, toks[k], n_tok[k], n_tok[k] - 1);
      assert_true(m >= 0 && m <= n_tok[k] - 1 && m % ST_BS == 0);
      for (int b = 0; b < m / ST_BS; b++)
        assert_memory_equal(content[tk->ids[b]], toks[k] + b * ST_BS, sizeof(int32_t) * ST_BS);
      int n_old = tk->n;
      if (kv_ensure(&p, tk, n_tok[k]) != 0) {
        kv_release(&p, tk);
        continue;
      }
      for (int pos = n_old * ST_BS; pos < n_tok[k]; pos++) content[tk->ids[pos / ST_BS]][pos % ST_BS] = toks[k][pos];
      kv_commit(&p, tk, toks[k], n_tok[k]);
    } else if (op == 0) {
      kv_release(&p, tk);
    } else if (n_tok[k] < ST_MAXTOK) { /* decode one more token */
      int pos = n_tok[k];
      toks[k][pos] = (int32_t)(step % 2);
      if (kv_ensure(&p, tk, pos + 1) == 0) {
        content[tk->ids[pos / ST_BS]][pos % ST_BS] = toks[k][pos];
        n_tok[k]++;
        kv_commit(&p, tk, toks[k], n_tok[k]);
      }
    }
    const kv_table_t *tabs[ST_TABLES];
    for (int i = 0; i < ST_TABLES; i++) tabs[i] = &t[i];
    assert_int_equal(kv_pool_check(&p, tabs, ST_TABLES), 0);
  }
  assert_true(p.n_evictions > 0 && p.n_hit_tokens > 0);
  for (int i = 0; i < ST_TABLES; i++) {
    kv_release(&p, &t[i]);
    kv_table_free(&t[i]);
  }
  assert_int_equal(kv_pool_n_used(&p), 0);
  assert_int_equal(kv_pool_n_available(&p), ST_BLOCKS - 1);
  assert_int_equal(kv_pool_check(&p, NULL, 0), 0);
  kv_pool_deinit(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_init_invalid),
      cmocka_unit_test(test_null_block_never_handed_out),
      cmocka_unit_test(test_ensure_all_or_nothing),
      cmocka_unit_test(test_commit_match_and_events),
      cmocka_unit_test(test_match_stops_at_first_miss),
      cmocka_unit_test(test_lru_eviction_order),
      cmocka_unit_test(test_lru_refresh_on_hit),
      cmocka_unit_test(test_duplicate_registration),
      cmocka_unit_test(test_shared_refcount),
      cmocka_unit_test(test_prefix_caching_off),
      cmocka_unit_test(test_random_stress),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
