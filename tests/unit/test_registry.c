/* test_registry.c: the coordinator's worker table: registration JSON, etcd events, health, load,
 * KV events and the capped hash sets (coordinator/registry). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/registry/hset_int.h"
#include "coordinator/registry/registry.h"

#define KEY(pool, id) "/strata/c1/workers/" pool "/" id

/* A complete, valid registration value. */
static const char *worker_json(char *buf, size_t cap, const char *id, const char *pool, const char *model,
                               int block_size, int kv_blocks) {
  snprintf(buf, cap,
           "{\"id\":\"%s\",\"pool\":\"%s\",\"role\":\"worker\",\"model\":\"%s\","
           "\"grpc_address\":\"10.0.0.1:7000\",\"ucx_address\":\"0a0b0c\",\"tp\":2,\"pp\":1,"
           "\"block_size\":%d,\"kv_blocks\":%d,\"version\":\"0.1.0\",\"future_field\":[1,2]}",
           id, pool, model, block_size, kv_blocks);
  return buf;
}

static int put(registry_t *reg, const char *key, const char *id, const char *pool, const char *model, int bs,
               int kvb) {
  char buf[1024];
  worker_json(buf, sizeof buf, id, pool, model, bs, kvb);
  return registry_put(reg, key, buf, strlen(buf));
}

static int quiet_setup(void **state) {
  (void)state;
  log_set_level(LOG_LEVEL_OFF); /* the bad inputs below are logged by design */
  return 0;
}

static void test_parse_good(void **state) {
  (void)state;
  char buf[1024];
  registry_worker_info_t info;
  worker_json(buf, sizeof buf, "w-1", "decode", "llama-3-8b", 16, 4096);
  assert_int_equal(registry_parse_worker(buf, strlen(buf), "k", &info), 0);
  assert_string_equal(info.id, "w-1");
  assert_string_equal(info.pool, "decode");
  assert_string_equal(info.role, "worker");
  assert_string_equal(info.model, "llama-3-8b");
  assert_string_equal(info.grpc_address, "10.0.0.1:7000");
  assert_string_equal(info.ucx_address, "0a0b0c");
  assert_string_equal(info.version, "0.1.0");
  assert_int_equal(info.tp, 2);
  assert_int_equal(info.pp, 1);
  assert_int_equal(info.block_size, 16);
  assert_int_equal(info.kv_blocks, 4096);

  /* The UCX address is optional (workers built without UCX). */
  const char *no_ucx = "{\"id\":\"a\",\"pool\":\"unified\",\"role\":\"r\",\"model\":\"m\",\"grpc_address\":\"h:1\","
                       "\"tp\":1,\"pp\":1,\"block_size\":16,\"kv_blocks\":8,\"version\":\"v\"}";
  assert_int_equal(registry_parse_worker(no_ucx, strlen(no_ucx), NULL, &info), 0);
  assert_string_equal(info.ucx_address, "");
  assert_int_equal(info.max_model_len, 0); /* not reported (an older worker) */

  /* The context length a worker accepts is optional, and checked when given. */
  const char *with_len = "{\"id\":\"a\",\"pool\":\"unified\",\"role\":\"r\",\"model\":\"m\",\"grpc_address\":\"h:1\","
                         "\"tp\":1,\"pp\":1,\"block_size\":16,\"kv_blocks\":8,\"version\":\"v\",\"max_model_len\":8192}";
  assert_int_equal(registry_parse_worker(with_len, strlen(with_len), NULL, &info), 0);
  assert_int_equal(info.max_model_len, 8192);
  const char *bad_len = "{\"id\":\"a\",\"pool\":\"unified\",\"role\":\"r\",\"model\":\"m\",\"grpc_address\":\"h:1\","
                        "\"tp\":1,\"pp\":1,\"block_size\":16,\"kv_blocks\":8,\"version\":\"v\",\"max_model_len\":-3}";
  assert_int_equal(registry_parse_worker(bad_len, strlen(bad_len), NULL, &info), STRATA_EFORMAT);

  /* LEN bounds the input: the text need not be NUL-terminated. */
  char copy[1100];
  size_t n = strlen(buf);
  memcpy(copy, buf, n);
  memcpy(copy + n, "garbage", 8);
  assert_int_equal(registry_parse_worker(copy, n, "k", &info), 0);
}

static void test_parse_missing_and_wrong_fields(void **state) {
  (void)state;
  static const char *required[] = {"id",      "pool", "role", "model",      "grpc_address",
                                   "version", "tp",   "pp",   "block_size", "kv_blocks"};
  char buf[1024];
  registry_worker_info_t info;
  worker_json(buf, sizeof buf, "w", "unified", "m", 16, 64);
  for (size_t i = 0; i < sizeof required / sizeof *required; i++) {
    cJSON *o = cJSON_Parse(buf);
    cJSON_DeleteItemFromObjectCaseSensitive(o, required[i]);
    char *s = cJSON_PrintUnformatted(o);
    assert_int_equal(registry_parse_worker(s, strlen(s), required[i], &info), STRATA_EFORMAT);
    free(s);
    cJSON_Delete(o);
  }
  /* Wrong types and out-of-range values. */
  static const struct {
    const char *field, *json_value;
  } bad[] = {
      {"tp", "\"2\""},        {"tp", "0"},          {"pp", "1.5"},     {"block_size", "-16"},
      {"kv_blocks", "1e12"},  {"pool", "\"gpu\""},  {"id", "\"a/b\""}, {"id", "\"\""},
      {"model", "7"},         {"ucx_address", "3"}, {"version", "{}"}, {"grpc_address", "null"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    cJSON *o = cJSON_Parse(buf);
    cJSON_ReplaceItemInObjectCaseSensitive(o, bad[i].field, cJSON_Parse(bad[i].json_value));
    char *s = cJSON_PrintUnformatted(o);
    assert_int_equal(registry_parse_worker(s, strlen(s), bad[i].field, &info), STRATA_EFORMAT);
    free(s);
    cJSON_Delete(o);
  }
  /* Over-long strings are refused, not truncated. */
  char longid[300];
  memset(longid, 'x', sizeof longid - 1);
  longid[sizeof longid - 1] = '\0';
  worker_json(buf, sizeof buf, longid, "unified", "m", 16, 64);
  assert_int_equal(registry_parse_worker(buf, strlen(buf), "long", &info), STRATA_EFORMAT);
}

static void test_parse_garbage(void **state) {
  (void)state;
  registry_worker_info_t info;
  static const char *garbage[] = {"", "{", "[]", "null", "\"str\"", "42", "{\"id\":", "{}}", "\xff\xfe{}"};
  for (size_t i = 0; i < sizeof garbage / sizeof *garbage; i++)
    assert_int_equal(registry_parse_worker(garbage[i], strlen(garbage[i]), "g", &info), STRATA_EFORMAT);
  assert_int_equal(registry_parse_worker(NULL, 0, "g", &info), STRATA_EFORMAT);
  /* A valid value padded past the size bound is refused without parsing. */
  static char big[REGISTRY_VALUE_MAX + 2048];
  worker_json(big, sizeof big, "w", "unified", "m", 16, 64);
  size_t n = strlen(big);
  memset(big + n, ' ', sizeof big - n - 1);
  big[sizeof big - 1] = '\0';
  assert_int_equal(registry_parse_worker(big, strlen(big), "big", &info), STRATA_EFORMAT);
  assert_int_equal(registry_parse_worker(big, n, "big", &info), 0);
  /* Random bytes, with NULs inside. */
  unsigned char rnd[512];
  uint32_t x = 12345;
  for (int round = 0; round < 50; round++) {
    for (size_t i = 0; i < sizeof rnd; i++) {
      x = x * 1664525u + 1013904223u;
      rnd[i] = (unsigned char)(x >> 24);
    }
    assert_int_equal(registry_parse_worker((const char *)rnd, sizeof rnd, "rnd", &info), STRATA_EFORMAT);
  }
}

static void test_put_update_delete(void **state) {
  (void)state;
  registry_t reg;
  assert_int_equal(registry_init(&reg, "c1", NULL), 0);
  assert_int_equal(put(&reg, KEY("unified", "a"), "a", "unified", "m", 16, 100), 0);
  assert_int_equal(put(&reg, KEY("decode", "b"), "b", "decode", "m", 16, 100), 0);
  assert_int_equal(registry_count(&reg), 2);
  registry_worker_t *a = registry_find(&reg, "a");
  assert_non_null(a);
  assert_int_equal(a->health, REGISTRY_READY);

  /* Bad keys and values change nothing. */
  assert_int_equal(put(&reg, KEY("decode", "a"), "a", "unified", "m", 16, 100), STRATA_EFORMAT); /* pool */
  assert_int_equal(put(&reg, KEY("unified", "z"), "a", "unified", "m", 16, 100), STRATA_EFORMAT); /* id */
  assert_int_equal(put(&reg, "/strata/other/workers/unified/a", "a", "unified", "m", 16, 100), STRATA_EFORMAT);
  assert_int_equal(put(&reg, "/strata/c1/workers/unified", "a", "unified", "m", 16, 100), STRATA_EFORMAT);
  assert_int_equal(registry_put(&reg, KEY("unified", "a"), "{oops", 5), STRATA_EFORMAT);
  assert_int_equal(registry_count(&reg), 2);
  assert_string_equal(registry_find(&reg, "a")->info.model, "m");

  /* An update keeps live state (health, load, cached hashes) when the model and block size hold. */
  registry_load_t load = {.running = 3, .waiting = 1, .active_decode_blocks = 40};
  assert_int_equal(registry_set_load(&reg, "a", &load, 1000), 0);
  assert_int_equal(registry_set_health(&reg, "a", REGISTRY_DRAINING, "scale-down", 1000), 0);
  uint64_t h[2] = {11, 22};
  assert_int_equal(registry_kv_event(&reg, "a", 1, h, 2, NULL, 0), 0);
  char buf[1024];
  worker_json(buf, sizeof buf, "a", "unified", "m", 16, 100);
  char *p = strstr(buf, "10.0.0.1:7000");
  memcpy(p, "10.0.0.9", 8);
  assert_int_equal(registry_put(&reg, KEY("unified", "a"), buf, strlen(buf)), 0);
  a = registry_find(&reg, "a");
  assert_string_equal(a->info.grpc_address, "10.0.0.9:7000");
  assert_int_equal(a->health, REGISTRY_DRAINING);
  assert_int_equal(a->load.running, 3);
  assert_int_equal(registry_prefix_hits(a, h, 2), 2);

  /* A new block size invalidates the hashes. */
  assert_int_equal(put(&reg, KEY("unified", "a"), "a", "unified", "m", 32, 100), 0);
  assert_int_equal(registry_prefix_hits(a, h, 2), 0);
  assert_int_equal(a->info.block_size, 32);

  assert_int_equal(registry_delete(&reg, KEY("unified", "a")), 0);
  assert_null(registry_find(&reg, "a"));
  assert_int_equal(registry_delete(&reg, KEY("unified", "a")), STRATA_ENOTFOUND);
  assert_int_equal(registry_delete(&reg, "/elsewhere"), STRATA_EFORMAT);
  assert_int_equal(registry_count(&reg), 1);
  assert_string_equal(registry_at(&reg, 0)->info.id, "b");
  registry_deinit(&reg);

  assert_int_equal(registry_init(&reg, "", NULL), STRATA_EINVAL);
  assert_int_equal(registry_init(&reg, "a/b", NULL), STRATA_EINVAL);
  registry_config_t bad = {.max_hashes_per_worker = 0};
  assert_int_equal(registry_init(&reg, "c1", &bad), STRATA_EINVAL);
}

static void test_reset(void **state) {
  (void)state;
  registry_t reg;
  assert_int_equal(registry_init(&reg, "c1", NULL), 0);
  assert_int_equal(put(&reg, KEY("unified", "a"), "a", "unified", "m", 16, 100), 0);
  assert_int_equal(put(&reg, KEY("unified", "b"), "b", "unified", "m", 16, 100), 0);
  assert_int_equal(put(&reg, KEY("unified", "c"), "c", "unified", "m", 16, 100), 0);
  assert_int_equal(registry_set_health(&reg, "a", REGISTRY_DRAINING, "operator", 5), 0);

  char va[1024], vd[1024];
  worker_json(va, sizeof va, "a", "unified", "m", 16, 100);
  worker_json(vd, sizeof vd, "d", "unified", "m2", 16, 100);
  registry_entry_t relist[] = {
      {KEY("unified", "a"), va, strlen(va)},
      {KEY("unified", "d"), vd, strlen(vd)},
      {KEY("unified", "e"), "garbage", 7}, /* new and bad: ignored */
  };
  assert_int_equal(registry_reset(&reg, relist, 3), 0);
  assert_int_equal(registry_count(&reg), 2);
  assert_non_null(registry_find(&reg, "a"));
  assert_non_null(registry_find(&reg, "d"));
  assert_null(registry_find(&reg, "b"));
  assert_null(registry_find(&reg, "c"));
  assert_null(registry_find(&reg, "e"));
  assert_int_equal(registry_find(&reg, "a")->health, REGISTRY_DRAINING); /* live state survives */
  assert_int_equal(registry_find(&reg, "d")->health, REGISTRY_READY);

  /* A known worker whose new value is bad stays as it was. */
  registry_entry_t relist2[] = {{KEY("unified", "a"), "{bad", 4}, {KEY("unified", "d"), vd, strlen(vd)}};
  assert_int_equal(registry_reset(&reg, relist2, 2), 0);
  assert_int_equal(registry_count(&reg), 2);
  assert_string_equal(registry_find(&reg, "a")->info.model, "m");

  /* An empty re-list empties the table. */
  assert_int_equal(registry_reset(&reg, NULL, 0), 0);
  assert_int_equal(registry_count(&reg), 0);
  registry_deinit(&reg);
}

/* After an etcd outage every worker puts its unchanged registration again (under a new lease), and a
 * coordinator whose watch had to re-list gets the same table back: neither may cost the worker its
 * load, health or prefix-cache index, or the blip would show up as cold caches and misrouting. */
static void test_reregister_after_outage(void **state) {
  (void)state;
  registry_t reg;
  assert_int_equal(registry_init(&reg, "c1", NULL), 0);
  assert_int_equal(put(&reg, KEY("unified", "a"), "a", "unified", "m", 16, 100), 0);
  assert_int_equal(put(&reg, KEY("unified", "b"), "b", "unified", "m", 16, 100), 0);
  registry_load_t load = {.running = 3, .waiting = 1, .active_decode_blocks = 7, .kv_used_blocks = 20,
                          .kv_total_blocks = 100};
  assert_int_equal(registry_set_load(&reg, "a", &load, 1000), 0);
  const uint64_t stored[] = {11, 22, 33};
  assert_int_equal(registry_kv_event(&reg, "a", 1, stored, 3, NULL, 0), 0);
  assert_int_equal(registry_set_health(&reg, "b", REGISTRY_DRAINING, "operator", 5), 0);

  /* the re-put, as the watch delivers it once etcd is back */
  assert_int_equal(put(&reg, KEY("unified", "a"), "a", "unified", "m", 16, 100), 0);
  assert_int_equal(put(&reg, KEY("unified", "b"), "b", "unified", "m", 16, 100), 0);
  /* a re-list with the same content */
  char va[1024], vb[1024];
  worker_json(va, sizeof va, "a", "unified", "m", 16, 100);
  worker_json(vb, sizeof vb, "b", "unified", "m", 16, 100);
  registry_entry_t relist[] = {{KEY("unified", "a"), va, strlen(va)}, {KEY("unified", "b"), vb, strlen(vb)}};
  assert_int_equal(registry_reset(&reg, relist, 2), 0);

  assert_int_equal(registry_count(&reg), 2);
  registry_worker_t *a = registry_find(&reg, "a");
  assert_non_null(a);
  assert_int_equal(a->health, REGISTRY_READY);
  assert_int_equal(a->load.running, 3);
  assert_int_equal(a->load.kv_used_blocks, 20);
  assert_int_equal(a->load_updated_ms, 1000);
  assert_int_equal(a->kv_seq, 1);
  assert_int_equal(registry_cached_count(a), 3);
  assert_int_equal(registry_prefix_hits(a, stored, 3), 3);
  assert_int_equal(registry_find(&reg, "b")->health, REGISTRY_DRAINING);
  /* the next KV batch continues the sequence: nothing was wiped */
  const uint64_t more[] = {44};
  assert_int_equal(registry_kv_event(&reg, "a", 2, more, 1, NULL, 0), 0);
  assert_int_equal(a->n_kv_resyncs, 0);
  assert_int_equal(registry_cached_count(a), 4);
  registry_deinit(&reg);
}

static void test_health(void **state) {
  (void)state;
  registry_t reg;
  assert_int_equal(registry_init(&reg, "c1", NULL), 0);
  assert_int_equal(put(&reg, KEY("unified", "a"), "a", "unified", "m", 16, 100), 0);
  registry_worker_t *a = registry_find(&reg, "a");
  assert_int_equal(registry_set_health(&reg, "a", REGISTRY_SUSPECT, "no stats for 3 s", 100), 0);
  assert_int_equal(a->health, REGISTRY_SUSPECT);
  assert_string_equal(a->health_reason, "no stats for 3 s");
  assert_int_equal(a->health_since_ms, 100);
  assert_int_equal(registry_set_health(&reg, "a", REGISTRY_UNHEALTHY, "stream reset", 200), 0);
  assert_string_equal(registry_health_name(a->health), "unhealthy");
  assert_int_equal(a->health_since_ms, 200);
  assert_int_equal(registry_set_health(&reg, "a", REGISTRY_READY, NULL, 300), 0);
  assert_string_equal(a->health_reason, "");
  assert_int_equal(registry_set_health(&reg, "nope", REGISTRY_READY, NULL, 300), STRATA_ENOTFOUND);
  assert_int_equal(registry_set_health(&reg, "a", (registry_health_t)9, NULL, 300), STRATA_EINVAL);
  assert_int_equal(a->health, REGISTRY_READY);

  /* A stats update replaces the optimistic accounting; bad stats are refused. */
  a->pending_blocks = 7;
  a->pending_requests = 2;
  registry_load_t l = {.running = 1, .waiting = 2, .active_decode_blocks = 3, .kv_used_blocks = 4,
                       .kv_total_blocks = 100};
  assert_int_equal(registry_set_load(&reg, "a", &l, 400), 0);
  assert_int_equal(a->pending_blocks, 0);
  assert_int_equal(a->pending_requests, 0);
  assert_int_equal(a->load.kv_total_blocks, 100);
  assert_int_equal(a->load_updated_ms, 400);
  l.waiting = -1;
  assert_int_equal(registry_set_load(&reg, "a", &l, 500), STRATA_EINVAL);
  assert_int_equal(a->load.waiting, 2);
  registry_deinit(&reg);
}

static void test_kv_events_and_gaps(void **state) {
  (void)state;
  registry_t reg;
  assert_int_equal(registry_init(&reg, "c1", NULL), 0);
  assert_int_equal(put(&reg, KEY("unified", "a"), "a", "unified", "m", 16, 100), 0);
  registry_worker_t *a = registry_find(&reg, "a");
  uint64_t chain[4] = {101, 102, 103, 104};

  assert_int_equal(registry_kv_event(&reg, "a", 1, chain, 3, NULL, 0), 0);
  assert_int_equal(registry_prefix_hits(a, chain, 4), 3);
  /* Only a contiguous run from the first block counts: removing block 2 leaves a run of 1. */
  assert_int_equal(registry_kv_event(&reg, "a", 2, NULL, 0, &chain[1], 1), 0);
  assert_int_equal(registry_prefix_hits(a, chain, 4), 1);
  assert_int_equal(registry_cached_count(a), 2);
  assert_int_equal(registry_prefix_hits(a, chain + 2, 2), 1); /* 103 is still known */

  /* A lost batch (seq 3 never arrives) wipes the set; the batch that revealed the gap still applies. */
  uint64_t later = 555;
  assert_int_equal(registry_kv_event(&reg, "a", 4, &later, 1, NULL, 0), 0);
  assert_int_equal(registry_cached_count(a), 1);
  assert_int_equal(registry_prefix_hits(a, chain, 4), 0);
  assert_int_equal(registry_prefix_hits(a, &later, 1), 1);
  assert_int_equal(a->n_kv_resyncs, 1);

  /* A worker restart (numbering starts again at 1) wipes it too. */
  assert_int_equal(registry_kv_event(&reg, "a", 5, chain, 2, NULL, 0), 0);
  assert_int_equal(registry_kv_event(&reg, "a", 1, &chain[3], 1, NULL, 0), 0);
  assert_int_equal(registry_cached_count(a), 1);
  assert_int_equal(registry_prefix_hits(a, chain, 4), 0);
  assert_int_equal(a->n_kv_resyncs, 2);

  /* Within a batch, stores apply before removals: a hash both stored and evicted is not kept. */
  assert_int_equal(registry_kv_event(&reg, "a", 2, chain, 1, chain, 1), 0);
  assert_int_equal(registry_prefix_hits(a, chain, 4), 0);

  /* Malformed batches and unknown workers. */
  assert_int_equal(registry_kv_event(&reg, "a", 0, chain, 1, NULL, 0), STRATA_EINVAL);
  assert_int_equal(registry_kv_event(&reg, "a", 3, NULL, 2, NULL, 0), STRATA_EINVAL);
  assert_int_equal(registry_kv_event(&reg, "a", 3, chain, -1, NULL, 0), STRATA_EINVAL);
  assert_int_equal(registry_kv_event(&reg, "zz", 1, chain, 1, NULL, 0), STRATA_ENOTFOUND);
  assert_int_equal(registry_kv_clear(&reg, "a"), 0);
  assert_int_equal(registry_cached_count(a), 0);
  assert_int_equal(a->kv_seq, 0);
  registry_deinit(&reg);
}

static void test_memory_cap(void **state) {
  (void)state;
  registry_t reg;
  registry_config_t cfg = {.max_hashes_per_worker = 4};
  assert_int_equal(registry_init(&reg, "c1", &cfg), 0);
  assert_int_equal(put(&reg, KEY("unified", "a"), "a", "unified", "m", 16, 100), 0);
  assert_int_equal(put(&reg, KEY("unified", "b"), "b", "unified", "m", 16, 3), 0); /* kv_blocks 3 < 4 */
  registry_worker_t *a = registry_find(&reg, "a"), *b = registry_find(&reg, "b");
  uint64_t h[6] = {1, 2, 3, 4, 5, 6};
  assert_int_equal(registry_kv_event(&reg, "a", 1, h, 3, NULL, 0), 0);
  assert_int_equal(registry_kv_event(&reg, "a", 2, h + 3, 3, NULL, 0), 0);
  assert_int_equal(registry_cached_count(a), 4);
  assert_int_equal(registry_prefix_hits(a, h, 6), 0);     /* 1 and 2, the oldest, are gone */
  assert_int_equal(registry_prefix_hits(a, h + 2, 4), 4); /* 3..6 remain */
  assert_int_equal(registry_kv_event(&reg, "b", 1, h, 6, NULL, 0), 0);
  assert_int_equal(registry_cached_count(b), 3);
  assert_int_equal(registry_prefix_hits(b, h + 3, 3), 3);
  registry_deinit(&reg);
}

/* The hash set against a naive array kept in insertion order (the reference), over random inserts
 * and removals that exercise growth, eviction and deletion from probe chains. */
static void test_hset_vs_naive(void **state) {
  (void)state;
  enum { CAP = 300, OPS = 20000, KEYSPACE = 700 };
  registry_hset_t s;
  registry_hset_init(&s, CAP);
  uint64_t ref[CAP];
  int n_ref = 0;
  uint64_t x = 42;
  for (int op = 0; op < OPS; op++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t key = (x >> 33) % KEYSPACE + 1;
    int is_insert = ((x >> 20) & 3) != 0;
    int at = -1;
    for (int i = 0; i < n_ref; i++)
      if (ref[i] == key) at = i;
    if (is_insert) {
      assert_int_equal(registry_hset_insert(&s, key), 0);
      if (at < 0) {
        if (n_ref == CAP) {
          memmove(ref, ref + 1, (CAP - 1) * sizeof *ref);
          n_ref--;
        }
        ref[n_ref++] = key;
      }
    } else {
      assert_int_equal(registry_hset_remove(&s, key), at >= 0);
      if (at >= 0) {
        memmove(ref + at, ref + at + 1, (size_t)(n_ref - at - 1) * sizeof *ref);
        n_ref--;
      }
    }
    assert_int_equal(s.n, n_ref);
    if (op % 97 == 0)
      for (uint64_t k = 1; k <= KEYSPACE; k++) {
        int in_ref = 0;
        for (int i = 0; i < n_ref; i++) in_ref |= ref[i] == k;
        assert_int_equal(registry_hset_contains(&s, k), in_ref);
      }
  }
  registry_hset_set_cap(&s, 10);
  assert_int_equal(s.n, n_ref < 10 ? n_ref : 10);
  for (int i = 0; i < n_ref; i++) assert_int_equal(registry_hset_contains(&s, ref[i]), i >= n_ref - 10);
  registry_hset_deinit(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_good),
      cmocka_unit_test(test_parse_missing_and_wrong_fields),
      cmocka_unit_test(test_parse_garbage),
      cmocka_unit_test(test_put_update_delete),
      cmocka_unit_test(test_reset),
      cmocka_unit_test(test_reregister_after_outage),
      cmocka_unit_test(test_health),
      cmocka_unit_test(test_kv_events_and_gaps),
      cmocka_unit_test(test_memory_cap),
      cmocka_unit_test(test_hset_vs_naive),
  };
  return cmocka_run_group_tests(tests, quiet_setup, NULL);
}
