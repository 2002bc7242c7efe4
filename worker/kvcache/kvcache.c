/* kvcache.c: the KV block pool: free list, LRU of cached blocks, and an open-addressing hash table
 * from chained block hashes to block ids (written by hand: a few dozen lines, no library needed). */
#include "worker/kvcache/kvcache.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "common/block_hash.h"
#include "common/log.h"
#include "common/status.h"

/* A block is in exactly one of three states: referenced (ref > 0; on no list), evictable (ref == 0,
 * hash != 0; on the LRU list) or free (ref == 0, hash == 0; on the free stack). HASH != 0 means the
 * hash table maps HASH to this block. */
struct kv_block {
  int32_t ref;
  int32_t lru_prev, lru_next; /* -1 at the ends */
  uint64_t hash;
};

/* ---- hash table: linear probing, keys are never 0 (block_hash never returns 0), so 0 = empty ---- */

static uint32_t ht_index(const kv_pool_t *p, uint64_t key) {
  /* xxh3 output is already well mixed; fold the high bits in anyway for small tables */
  return (uint32_t)((key ^ (key >> 32)) & (uint64_t)(p->ht_cap - 1));
}

static int32_t ht_get(const kv_pool_t *p, uint64_t key) {
  for (uint32_t i = ht_index(p, key);; i = (i + 1) & (uint32_t)(p->ht_cap - 1)) {
    if (p->ht_keys[i] == key) return p->ht_vals[i];
    if (p->ht_keys[i] == 0) return -1;
  }
}

/* The table never fills: it has at least twice as many slots as there are blocks. */
static void ht_put(kv_pool_t *p, uint64_t key, int32_t val) {
  uint32_t i = ht_index(p, key);
  while (p->ht_keys[i] != 0 && p->ht_keys[i] != key) i = (i + 1) & (uint32_t)(p->ht_cap - 1);
  p->ht_keys[i] = key;
  p->ht_vals[i] = val;
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
static void ht_del(kv_pool_t *p, uint64_t key) {
  uint32_t mask = (uint32_t)(p->ht_cap - 1);
  uint32_t i = ht_index(p, key);
  while (p->ht_keys[i] != key) {
    if (p->ht_keys[i] == 0) return;
    i = (i + 1) & mask;
  }
  uint32_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    if (p->ht_keys[j] == 0) break;
    uint32_t home = ht_index(p, p->ht_keys[j]);
    /* move j back into the hole at i unless its home lies cyclically in (i, j] */
    int stays = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
    if (stays) continue;
    p->ht_keys[i] = p->ht_keys[j];
    p->ht_vals[i] = p->ht_vals[j];
    i = j;
  }
  p->ht_keys[i] = 0;
  p->ht_vals[i] = -1;
}

/* ---- LRU list of evictable blocks: head is the least recently released ---- */

static void lru_push_tail(kv_pool_t *p, int32_t id) {
  kv_block_t *b = &p->blocks[id];
  b->lru_prev = p->lru_tail;
  b->lru_next = -1;
  if (p->lru_tail >= 0) p->blocks[p->lru_tail].lru_next = id;
  else p->lru_head = id;
  p->lru_tail = id;
  p->n_evictable++;
}

static void lru_remove(kv_pool_t *p, int32_t id) {
  kv_block_t *b = &p->blocks[id];
  if (b->lru_prev >= 0) p->blocks[b->lru_prev].lru_next = b->lru_next;
  else p->lru_head = b->lru_next;
  if (b->lru_next >= 0) p->blocks[b->lru_next].lru_prev = b->lru_prev;
  else p->lru_tail = b->lru_prev;
  b->lru_prev = b->lru_next = -1;
  p->n_evictable--;
}

static void emit(kv_pool_t *p, kv_event_type_t type, uint64_t hash) {
  if (p->on_event) p->on_event(p->event_data, type, hash);
}

int kv_pool_init(kv_pool_t *p, int n_blocks, int block_size, int prefix_caching, uint64_t hash_seed) {
  memset(p, 0, sizeof *p);
  p->lru_head = p->lru_tail = -1;
  if (n_blocks < 2 || block_size < 1 || n_blocks > (INT_MAX / 4) / (block_size > 4 ? block_size : 4)) {
    log_error("kv pool: %d blocks of %d tokens is not a usable cache (need >= 2 blocks, >= 1 token each, "
              "and slot ids that fit in 32 bits)", n_blocks, block_size);
    return STRATA_EINVAL;
  }
  p->n_blocks = n_blocks;
  p->block_size = block_size;
  p->prefix_caching = prefix_caching != 0;
  p->hash_seed = hash_seed;
  p->ht_cap = 16;
  while (p->ht_cap < 2 * n_blocks) p->ht_cap *= 2;
  p->blocks = calloc((size_t)n_blocks, sizeof *p->blocks);
  p->free_ids = malloc(sizeof(int32_t) * (size_t)n_blocks);
  p->ht_keys = calloc((size_t)p->ht_cap, sizeof *p->ht_keys);
  p->ht_vals = malloc(sizeof(int32_t) * (size_t)p->ht_cap);
  if (!p->blocks || !p->free_ids || !p->ht_keys || !p->ht_vals) {
    log_error("kv pool: out of memory for the bookkeeping of %d blocks", n_blocks);
    kv_pool_deinit(p);
    return STRATA_ENOMEM;
  }
  for (int i = 0; i < p->ht_cap; i++) p->ht_vals[i] = -1;
  for (int i = 0; i < n_blocks; i++) p->blocks[i].lru_prev = p->blocks[i].lru_next = -1;
  /* stack with the lowest id on top, so a fresh pool hands out 1, 2, 3, ... */
  for (int id = n_blocks - 1; id >= 1; id--) p->free_ids[p->n_free++] = id;
  return 0;
}

void kv_pool_deinit(kv_pool_t *p) {
  free(p->blocks);
  free(p->free_ids);
  free(p->ht_keys);
  free(p->ht_vals);
  memset(p, 0, sizeof *p);
  p->lru_head = p->lru_tail = -1;
}

int kv_pool_n_available(const kv_pool_t *p) { return p->n_free + p->n_evictable; }

int kv_pool_n_used(const kv_pool_t *p) {
  return p->n_blocks > 0 ? p->n_blocks - 1 - p->n_free - p->n_evictable : 0;
}

int kv_block_ref_count(const kv_pool_t *p, int32_t id) {
  return (id >= 0 && id < p->n_blocks) ? p->blocks[id].ref : -1;
}

/* Makes room for CAP entries in T's arrays. */
static int table_reserve(kv_table_t *t, int cap) {
  if (cap <= t->cap) return 0;
  int new_cap = t->cap > 0 ? t->cap : 8;
  while (new_cap < cap) new_cap *= 2;
  int32_t *ids = realloc(t->ids, sizeof(int32_t) * (size_t)new_cap);
  if (!ids) goto fail;
  t->ids = ids;
  uint64_t *hashes = realloc(t->hashes, sizeof(uint64_t) * (size_t)new_cap);
  if (!hashes) goto fail;
  t->hashes = hashes;
  t->cap = new_cap;
  return 0;
fail:
  log_error("kv table: out of memory growing a block table to %d blocks", new_cap);
  return STRATA_ENOMEM;
}

int kv_match_prefix(kv_pool_t *p, kv_table_t *t, const int32_t *tokens, int n_tokens, int max_tokens) {
  if (t->n != 0 || n_tokens < 0) return STRATA_EINVAL;
  if (!p->prefix_caching) return 0;
  p->n_queries_tokens += (uint64_t)n_tokens;
  if (max_tokens > n_tokens) max_tokens = n_tokens;
  int bs = p->block_size;
  int n_full = max_tokens > 0 ? max_tokens / bs : 0;
  if (n_full == 0) return 0;
  int rc = table_reserve(t, n_full);
  if (rc) return rc;
  uint64_t parent = 0;
  for (int i = 0; i < n_full; i++) {
    uint64_t h = block_hash(parent, tokens + (size_t)i * bs, bs, p->hash_seed);
    int32_t id = ht_get(p, h);
    if (id < 0) break; /* chained hashes: nothing after a miss can match */
    kv_block_t *b = &p->blocks[id];
    if (b->ref == 0) lru_remove(p, id);
    b->ref++;
    t->ids[t->n] = id;
    t->hashes[t->n] = h;
    t->n++;
    parent = h;
  }
  t->n_cached = t->n;
  p->n_hit_tokens += (uint64_t)t->n * (uint64_t)bs;
  return t->n * bs;
}

/* Takes one block: a free one if any, else the least recently used cached one (evicting its hash). */
static int32_t pool_take(kv_pool_t *p) {
  int32_t id;
  if (p->n_free > 0) {
    id = p->free_ids[--p->n_free];
  } else {
    id = p->lru_head;
    lru_remove(p, id);
    kv_block_t *b = &p->blocks[id];
    ht_del(p, b->hash);
    emit(p, KV_EVENT_REMOVED, b->hash);
    b->hash = 0;
    p->n_evictions++;
  }
  p->blocks[id].ref = 1;
  return id;
}

int kv_ensure(kv_pool_t *p, kv_table_t *t, int n_tokens) {
  int need = (n_tokens + p->block_size - 1) / p->block_size - t->n;
  if (need <= 0) return 0;
  if (need > kv_pool_n_available(p)) return STRATA_EFULL; /* normal under load: the scheduler preempts */
  int rc = table_reserve(t, t->n + need);
  if (rc) return rc;
  for (int i = 0; i < need; i++) {
    t->ids[t->n] = pool_take(p);
    t->hashes[t->n] = 0;
    t->n++;
  }
  return 0;
}

void kv_commit(kv_pool_t *p, kv_table_t *t, const int32_t *tokens, int n_computed) {
  if (!p->prefix_caching) return;
  int bs = p->block_size;
  int n_full = n_computed / bs;
  if (n_full > t->n) n_full = t->n;
  for (int i = t->n_cached; i < n_full; i++) {
    uint64_t parent = i > 0 ? t->hashes[i - 1] : 0;
    uint64_t h = block_hash(parent, tokens + (size_t)i * bs, bs, p->hash_seed);
    t->hashes[i] = h;
    /* NOTE: when another request registered the same content first, its block stays in the table and
     * ours is freed (not cached) on release: no duplicate hashes, and nothing is copied. */
    if (ht_get(p, h) < 0) {
      kv_block_t *b = &p->blocks[t->ids[i]];
      b->hash = h;
      ht_put(p, h, t->ids[i]);
      emit(p, KV_EVENT_STORED, h);
    }
  }
  if (n_full > t->n_cached) t->n_cached = n_full;
}

void kv_release(kv_pool_t *p, kv_table_t *t) {
  for (int i = t->n - 1; i >= 0; i--) {
    int32_t id = t->ids[i];
    kv_block_t *b = &p->blocks[id];
    if (--b->ref > 0) continue;
    if (b->hash != 0) lru_push_tail(p, id);
    else p->free_ids[p->n_free++] = id;
  }
  t->n = 0;
  t->n_cached = 0;
}

void kv_table_free(kv_table_t *t) {
  free(t->ids);
  free(t->hashes);
  memset(t, 0, sizeof *t);
}

/* Checks the free stack and the LRU list; marks what it sees in SEEN (1 free, 2 evictable). */
static int check_lists(const kv_pool_t *p, uint8_t *seen) {
  for (int i = 0; i < p->n_free; i++) {
    int32_t id = p->free_ids[i];
    if (id <= 0 || id >= p->n_blocks || seen[id]) return STRATA_EINTERNAL;
    if (p->blocks[id].ref != 0 || p->blocks[id].hash != 0) return STRATA_EINTERNAL;
    seen[id] = 1;
  }
  int n = 0;
  int32_t prev = -1;
  for (int32_t id = p->lru_head; id >= 0; id = p->blocks[id].lru_next) {
    if (id == 0 || id >= p->n_blocks || seen[id] || n >= p->n_blocks) return STRATA_EINTERNAL;
    const kv_block_t *b = &p->blocks[id];
    if (b->lru_prev != prev || b->ref != 0 || b->hash == 0) return STRATA_EINTERNAL;
    seen[id] = 2;
    prev = id;
    n++;
  }
  if (prev != p->lru_tail || n != p->n_evictable) return STRATA_EINTERNAL;
  return 0;
}

/* Every hashed block is in the table under its hash, and the table holds nothing else. */
static int check_hashes(const kv_pool_t *p) {
  int n_hashed = 0, n_entries = 0;
  for (int id = 1; id < p->n_blocks; id++) {
    if (p->blocks[id].hash == 0) continue;
    n_hashed++;
    if (ht_get(p, p->blocks[id].hash) != id) return STRATA_EINTERNAL;
  }
  for (int i = 0; i < p->ht_cap; i++) {
    if (p->ht_keys[i] == 0) continue;
    n_entries++;
    int32_t id = p->ht_vals[i];
    if (id <= 0 || id >= p->n_blocks || p->blocks[id].hash != p->ht_keys[i]) return STRATA_EINTERNAL;
  }
  return n_hashed == n_entries ? 0 : STRATA_EINTERNAL;
}

int kv_pool_check(const kv_pool_t *p, const kv_table_t *const *tables, int n_tables) {
  if (!p->blocks || p->n_free < 0 || p->n_evictable < 0) return STRATA_EINTERNAL;
  int rc = STRATA_EINTERNAL;
  uint8_t *seen = calloc((size_t)p->n_blocks, 1);
  int32_t *refs = calloc((size_t)p->n_blocks, sizeof(int32_t));
  if (!seen || !refs) {
    rc = STRATA_ENOMEM;
    goto out;
  }
  const kv_block_t *null_block = &p->blocks[0];
  if (null_block->ref != 0 || null_block->hash != 0 || check_lists(p, seen) || check_hashes(p)) goto out;
  for (int id = 1; id < p->n_blocks; id++)
    if ((seen[id] == 0) != (p->blocks[id].ref > 0)) goto out; /* referenced, or on exactly one list */
  if (tables) {
    for (int k = 0; k < n_tables; k++) {
      const kv_table_t *t = tables[k];
      if (t->n < 0 || t->n > t->cap || t->n_cached < 0 || t->n_cached > t->n) goto out;
      for (int i = 0; i < t->n; i++) {
        int32_t id = t->ids[i];
        if (id <= 0 || id >= p->n_blocks) goto out;
        /* a block the cache holds under a hash must be that hash's block in every table */
        if (p->blocks[id].hash != 0 && t->hashes[i] != p->blocks[id].hash) goto out;
        refs[id]++;
      }
    }
    for (int id = 1; id < p->n_blocks; id++)
      if (refs[id] != p->blocks[id].ref) goto out;
  }
  rc = 0;
out:
  free(seen);
  free(refs);
  return rc;
}
