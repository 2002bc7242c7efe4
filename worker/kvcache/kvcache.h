/* kvcache.h: the paged KV cache's bookkeeping: a pool of fixed-size blocks, per-request block
 * tables, and prefix caching. It deals in block ids only (the bytes live in the backend, be_kv_t),
 * so it is tested with no model at all.
 *
 * Prefix caching: a full block's hash chains its parent's hash with its token ids (block_hash.h).
 * A hash table maps hashes to cached blocks. Blocks are reference-counted; a block whose count drops
 * to 0 keeps its content and its hash on an LRU list and is reused (evicting the hash) only when no
 * free block is left. Block 0 is the null block, never handed out.
 *
 * Owner: the engine thread. Not thread-safe. */
#ifndef STRATA_KVCACHE_H
#define STRATA_KVCACHE_H

#include <stdint.h>

typedef enum { KV_EVENT_STORED = 0, KV_EVENT_REMOVED = 1 } kv_event_type_t;

/* Called when a block hash enters or leaves the prefix cache (feeds KV-aware routing). Set
 * kv_pool_t.on_event / event_data after kv_pool_init; called on the engine thread, inside kv_commit
 * (STORED) and kv_ensure (REMOVED, when a cached block is evicted for reuse). */
typedef void (*kv_event_cb)(void *data, kv_event_type_t type, uint64_t hash);

/* A request's block table. Caller-owned; zero-initialize, then use the kv_* functions. */
typedef struct {
  int32_t *ids;     /* (n) block ids, in token order */
  uint64_t *hashes; /* (n) chained content hash of each full, committed block (0 if none yet); the
                     * cache may hold that hash under another request's block (kv_commit) */
  int n, cap;
  int n_cached;     /* leading blocks that came from (or were registered in) the prefix cache */
} kv_table_t;

typedef struct kv_block kv_block_t; /* internal */

typedef struct {
  int n_blocks;       /* including the null block 0 */
  int block_size;     /* tokens per block */
  int prefix_caching; /* 0: no hashes are registered or matched */
  uint64_t hash_seed;
  kv_block_t *blocks; /* (n_blocks) */
  /* internal: free list, LRU of evictable cached blocks, hash table */
  int32_t *free_ids;
  int n_free;
  int32_t lru_head, lru_tail;
  int n_evictable;
  uint64_t *ht_keys;
  int32_t *ht_vals;
  int ht_cap;
  /* statistics (monotonic) */
  uint64_t n_queries_tokens; /* prompt tokens looked up */
  uint64_t n_hit_tokens;     /* of which found in the cache */
  uint64_t n_evictions;
  kv_event_cb on_event;
  void *event_data;
} kv_pool_t;

/* kv_pool_init: N_BLOCKS blocks (block 0 reserved) of BLOCK_SIZE tokens. Returns 0, STRATA_EINVAL or
 * STRATA_ENOMEM. */
int kv_pool_init(kv_pool_t *p, int n_blocks, int block_size, int prefix_caching, uint64_t hash_seed);
void kv_pool_deinit(kv_pool_t *p);

/* Blocks that can be handed out now (free + evictable cached). */
int kv_pool_n_available(const kv_pool_t *p);
/* Blocks in use by requests (ref count > 0). */
int kv_pool_n_used(const kv_pool_t *p);

/* kv_match_prefix: for a request with an empty table, finds the longest run of TOKENS' full blocks
 * already cached, appends those blocks to T (taking a reference on each) and returns the number of
 * tokens they cover (a multiple of block_size). At most MAX_TOKENS tokens are matched (callers pass
 * n_tokens - 1 so that at least one token is computed to produce logits). Counts query and hit
 * statistics. Returns the matched token count, or STRATA_EINVAL (T not empty) or STRATA_ENOMEM. With
 * prefix caching off it matches nothing and counts nothing. */
int kv_match_prefix(kv_pool_t *p, kv_table_t *t, const int32_t *tokens, int n_tokens, int max_tokens);

/* kv_ensure: grows T so that it has slots for N_TOKENS tokens. All or nothing: returns 0, or
 * STRATA_EFULL with T unchanged when not enough blocks are available, or STRATA_ENOMEM. */
int kv_ensure(kv_pool_t *p, kv_table_t *t, int n_tokens);

/* kv_commit: registers in the prefix cache every block of T that is full of computed tokens
 * (the first N_COMPUTED of TOKENS) and not registered yet, emitting KV_EVENT_STORED for each new hash.
 * When the cache already holds a hash (another request computed the same block first), the cache
 * keeps that block and T's block stays private (it is freed, not cached, on release). */
void kv_commit(kv_pool_t *p, kv_table_t *t, const int32_t *tokens, int n_computed);

/* kv_release: drops T's references (blocks whose count reaches 0 go to the LRU list if they have a
 * hash, else to the free list), last block first so that a prefix's tail is evicted before its head, and
 * empties T (its arrays are kept for reuse). */
void kv_release(kv_pool_t *p, kv_table_t *t);

/* kv_table_free: frees T's arrays (after kv_release). */
void kv_table_free(kv_table_t *t);

/* kv_slot: the cache slot of token POS of T: block id * block_size + offset. */
static inline int32_t kv_slot(const kv_pool_t *p, const kv_table_t *t, int pos) {
  return t->ids[pos / p->block_size] * p->block_size + pos % p->block_size;
}

/* kv_block_ref_count: how many tables hold block ID (-1 for an id out of range). For tests/metrics. */
int kv_block_ref_count(const kv_pool_t *p, int32_t id);

/* kv_pool_check: verifies internal invariants (every block is exactly one of: free, evictable, or
 * referenced; reference counts equal the number of tables holding the block when TABLES is given).
 * Returns 0 or STRATA_EINTERNAL. For tests. */
int kv_pool_check(const kv_pool_t *p, const kv_table_t *const *tables, int n_tables);

#endif
