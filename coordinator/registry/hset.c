/* hset.c: a capped set of 64-bit block hashes, oldest-first eviction (hand-written: no Debian
 * library offers a bounded insertion-ordered set of integers). */
#include "coordinator/registry/hset_int.h"

#include <stdlib.h>
#include <string.h>

#include "common/status.h"

#define HSET_MIN_NODES 16

static uint32_t hset_home(const registry_hset_t *s, uint64_t key) {
  /* Block hashes are already XXH3 outputs, but tests and tools use small integers: mix anyway. */
  key ^= key >> 31;
  key *= 0x9e3779b97f4a7c15ull;
  key ^= key >> 29;
  return (uint32_t)(key & (uint64_t)(s->slot_cap - 1));
}

/* Slot holding KEY, or -1. */
static int hset_find(const registry_hset_t *s, uint64_t key) {
  if (s->slot_cap == 0) return -1;
  uint32_t mask = (uint32_t)s->slot_cap - 1;
  for (uint32_t i = hset_home(s, key);; i = (i + 1) & mask) {
    int32_t node = s->slots[i];
    if (node < 0) return -1;
    if (s->keys[node] == key) return (int)i;
  }
}

static void hset_place(registry_hset_t *s, int32_t node) {
  uint32_t mask = (uint32_t)s->slot_cap - 1;
  uint32_t i = hset_home(s, s->keys[node]);
  while (s->slots[i] >= 0) i = (i + 1) & mask;
  s->slots[i] = node;
}

void registry_hset_init(registry_hset_t *s, int cap) {
  memset(s, 0, sizeof *s);
  s->cap = cap > 0 ? cap : 1;
  s->head = s->tail = s->free_head = -1;
}

void registry_hset_deinit(registry_hset_t *s) {
  free(s->keys);
  free(s->prev);
  free(s->next);
  free(s->slots);
  int cap = s->cap;
  uint64_t n_evicted = s->n_evicted;
  registry_hset_init(s, cap);
  s->n_evicted = n_evicted;
}

/* NOTE: clearing frees the arrays too: a wiped set (gap, restart) gives its memory back. */
void registry_hset_clear(registry_hset_t *s) { registry_hset_deinit(s); }

/* Grows the node arrays to NEW_CAP nodes and rehashes. Returns 0 or STRATA_ENOMEM (set unchanged). */
static int hset_grow(registry_hset_t *s, int new_cap) {
  int slot_cap = 1;
  while (slot_cap < 2 * new_cap) slot_cap <<= 1;
  uint64_t *keys = realloc(s->keys, (size_t)new_cap * sizeof *keys);
  if (!keys) return STRATA_ENOMEM;
  s->keys = keys;
  int32_t *prev = realloc(s->prev, (size_t)new_cap * sizeof *prev);
  if (!prev) return STRATA_ENOMEM;
  s->prev = prev;
  int32_t *next = realloc(s->next, (size_t)new_cap * sizeof *next);
  if (!next) return STRATA_ENOMEM;
  s->next = next;
  int32_t *slots = malloc((size_t)slot_cap * sizeof *slots);
  if (!slots) return STRATA_ENOMEM;
  /* The new nodes join the free list; node indices of members do not move. */
  for (int i = new_cap - 1; i >= s->node_cap; i--) {
    s->next[i] = s->free_head;
    s->free_head = i;
  }
  free(s->slots);
  s->slots = slots;
  s->slot_cap = slot_cap;
  s->node_cap = new_cap;
  memset(s->slots, 0xff, (size_t)slot_cap * sizeof *slots);
  for (int32_t n = s->head; n >= 0; n = s->next[n]) hset_place(s, n);
  return 0;
}

/* Unlinks the node in SLOT from the table (backward shift) and the order list, freeing it. */
static void hset_delete_slot(registry_hset_t *s, int slot) {
  uint32_t mask = (uint32_t)s->slot_cap - 1;
  int32_t node = s->slots[slot];
  uint32_t i = (uint32_t)slot, j = i;
  for (;;) {
    j = (j + 1) & mask;
    if (s->slots[j] < 0) break;
    uint32_t k = hset_home(s, s->keys[s->slots[j]]);
    /* Move j's entry into the hole at i unless its home lies cyclically in (i, j]. */
    int stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
    if (!stays) {
      s->slots[i] = s->slots[j];
      i = j;
    }
  }
  s->slots[i] = -1;
  if (s->prev[node] >= 0) s->next[s->prev[node]] = s->next[node];
  else s->head = s->next[node];
  if (s->next[node] >= 0) s->prev[s->next[node]] = s->prev[node];
  else s->tail = s->prev[node];
  s->next[node] = s->free_head;
  s->free_head = node;
  s->n--;
}

int registry_hset_contains(const registry_hset_t *s, uint64_t key) { return hset_find(s, key) >= 0; }

int registry_hset_remove(registry_hset_t *s, uint64_t key) {
  int slot = hset_find(s, key);
  if (slot < 0) return 0;
  hset_delete_slot(s, slot);
  return 1;
}

static void hset_evict_oldest(registry_hset_t *s) {
  int slot = hset_find(s, s->keys[s->head]);
  hset_delete_slot(s, slot);
  s->n_evicted++;
}

int registry_hset_insert(registry_hset_t *s, uint64_t key) {
  if (hset_find(s, key) >= 0) return 0;
  if (s->n >= s->cap) hset_evict_oldest(s);
  if (s->free_head < 0) {
    int want = s->node_cap ? 2 * s->node_cap : HSET_MIN_NODES;
    if (want > s->cap) want = s->cap;
    int rc = hset_grow(s, want);
    if (rc < 0) return rc;
  }
  int32_t node = s->free_head;
  s->free_head = s->next[node];
  s->keys[node] = key;
  s->prev[node] = s->tail;
  s->next[node] = -1;
  if (s->tail >= 0) s->next[s->tail] = node;
  else s->head = node;
  s->tail = node;
  hset_place(s, node);
  s->n++;
  return 0;
}

void registry_hset_set_cap(registry_hset_t *s, int cap) {
  s->cap = cap > 0 ? cap : 1;
  while (s->n > s->cap) hset_evict_oldest(s);
}
