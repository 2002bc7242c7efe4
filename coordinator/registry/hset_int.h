/* hset_int.h: a capped set of 64-bit block hashes that forgets its oldest insertion first (registry). */
#ifndef STRATA_REGISTRY_HSET_INT_H
#define STRATA_REGISTRY_HSET_INT_H

#include <stdint.h>

/* Open addressing (linear probing, backward-shift deletion) over node indices, plus a doubly linked
 * list of nodes in insertion order for eviction. Arrays grow by doubling up to CAP, so an idle
 * worker costs nothing. Owner: whoever owns the registry. Not thread-safe. */
typedef struct registry_hset {
  uint64_t *keys;        /* (node_cap) */
  int32_t *prev, *next;  /* (node_cap) insertion order, oldest = head; free list through next */
  int32_t *slots;        /* (slot_cap) node index or -1; slot_cap a power of two >= 2 x node_cap */
  int node_cap, slot_cap;
  int n, cap;            /* members; most members kept */
  int32_t head, tail, free_head;
  uint64_t n_evicted;    /* members forgotten because the set was full (monotonic) */
} registry_hset_t;

/* registry_hset_init: an empty set that keeps at most CAP (>= 1) hashes; allocates nothing. */
void registry_hset_init(registry_hset_t *s, int cap);
/* registry_hset_deinit / registry_hset_clear: free everything (the set stays usable after clear). */
void registry_hset_deinit(registry_hset_t *s);
void registry_hset_clear(registry_hset_t *s);
/* registry_hset_set_cap: change the cap, forgetting the oldest members above it. */
void registry_hset_set_cap(registry_hset_t *s, int cap);
int registry_hset_contains(const registry_hset_t *s, uint64_t key);
/* registry_hset_insert: adds KEY (no-op if present), evicting the oldest member when full. Returns 0 or
 * STRATA_ENOMEM (the set is unchanged). */
int registry_hset_insert(registry_hset_t *s, uint64_t key);
/* registry_hset_remove: removes KEY if present; returns 1 if it was there, else 0. */
int registry_hset_remove(registry_hset_t *s, uint64_t key);

#endif
