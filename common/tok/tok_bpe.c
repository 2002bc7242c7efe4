/* tok_bpe.c: BPE merging over one pre-token with a binary heap of candidate pairs (O(n log n)). */
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "common/tok/tok_int.h"

typedef struct {
  uint32_t start, len; /* span of the word; len 0 once merged into its left neighbour */
  int32_t prev, next;  /* -1 at the ends */
  int32_t id;          /* token id when known (table mode), else -1 */
} bpe_sym_t;

typedef struct {
  double pri;     /* lower merges first */
  int32_t left;   /* symbol indices */
  int32_t right;
  uint32_t len;   /* combined length when queued: stale entries no longer match */
  int32_t merged; /* resulting id (table mode) */
} bpe_cand_t;

struct tok_scratch {
  bpe_sym_t *syms;
  size_t cap_syms;
  bpe_cand_t *heap;
  size_t n_heap, cap_heap;
};

tok_scratch_t *tok_scratch_new(void) { return calloc(1, sizeof(tok_scratch_t)); }

void tok_scratch_free(tok_scratch_t *s) {
  if (!s) return;
  free(s->syms);
  free(s->heap);
  free(s);
}

int tok_ids_push(tok_ids_t *ids, int32_t id) {
  if (ids->n == ids->cap) {
    int cap = ids->cap ? ids->cap * 2 : 64;
    int32_t *v = realloc(ids->v, (size_t)cap * sizeof *v);
    if (!v) return STRATA_ENOMEM;
    ids->v = v;
    ids->cap = cap;
  }
  ids->v[ids->n++] = id;
  return 0;
}

/* Ties go to the leftmost pair, as SentencePiece, tiktoken and HF tokenizers do. */
static int cand_less(const bpe_cand_t *a, const bpe_cand_t *b) {
  if (a->pri != b->pri) return a->pri < b->pri;
  return a->left < b->left;
}

static int heap_push(tok_scratch_t *sc, bpe_cand_t c) {
  if (sc->n_heap == sc->cap_heap) {
    size_t cap = sc->cap_heap ? sc->cap_heap * 2 : 256;
    bpe_cand_t *h = realloc(sc->heap, cap * sizeof *h);
    if (!h) return STRATA_ENOMEM;
    sc->heap = h;
    sc->cap_heap = cap;
  }
  size_t i = sc->n_heap++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!cand_less(&c, &sc->heap[p])) break;
    sc->heap[i] = sc->heap[p];
    i = p;
  }
  sc->heap[i] = c;
  return 0;
}

static bpe_cand_t heap_pop(tok_scratch_t *sc) {
  bpe_cand_t top = sc->heap[0], last = sc->heap[--sc->n_heap];
  size_t i = 0, n = sc->n_heap;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    const bpe_cand_t *best = &last;
    if (l < n && cand_less(&sc->heap[l], best)) best = &sc->heap[m = l];
    if (r < n && cand_less(&sc->heap[r], best)) best = &sc->heap[m = r];
    if (m == i) break;
    sc->heap[i] = sc->heap[m];
    i = m;
  }
  if (n) sc->heap[i] = last;
  return top;
}

/* try_pair: queues the merge of symbols L and R if the vocabulary allows it. */
static int try_pair(const tok_t *t, tok_scratch_t *sc, const char *s, int32_t l, int32_t r) {
  if (l < 0 || r < 0) return 0;
  const bpe_sym_t *a = &sc->syms[l], *b = &sc->syms[r];
  bpe_cand_t c = {0, l, r, a->len + b->len, -1};
  if (t->merge_mode == TOK_MERGE_TABLE) {
    if (a->id < 0 || b->id < 0) return 0;
    const tok_pairmap_t *m = &t->merges;
    uint64_t key = (((uint64_t)(uint32_t)a->id << 32) | (uint32_t)b->id) + 1;
    uint64_t h = tok_pair_hash(key);
    for (;; h++) {
      uint64_t k = m->keys[h & m->mask];
      if (k == 0) return 0;
      if (k == key) break;
    }
    c.pri = m->rank[h & m->mask];
    c.merged = m->merged[h & m->mask];
  } else {
    int32_t id = tok_map_find(t, s + a->start, c.len);
    if (id < 0) return 0;
    int ty = t->vocab[id].type;
    if (ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_UNKNOWN) return 0;
    c.pri = -(double)t->vocab[id].score;
    c.merged = id;
  }
  return heap_push(sc, c);
}

/* emit_sym: a final symbol's id, or byte fallback (<0xNN> / byte tokens), or unk. */
static int emit_sym(const tok_t *t, const char *p, uint32_t len, int32_t id, tok_ids_t *out) {
  if (id < 0) id = tok_map_find(t, p, len);
  if (id >= 0) return tok_ids_push(out, id);
  int all_bytes = 1;
  for (uint32_t i = 0; i < len; i++)
    if (t->byte_ids[(uint8_t)p[i]] < 0) all_bytes = 0;
  if (all_bytes) {
    for (uint32_t i = 0; i < len; i++) {
      int rc = tok_ids_push(out, t->byte_ids[(uint8_t)p[i]]);
      if (rc) return rc;
    }
    return 0;
  }
  return t->unk >= 0 ? tok_ids_push(out, t->unk) : 0;
}

static int init_syms(const tok_t *t, tok_scratch_t *sc, const char *s, size_t n, int32_t *n_syms) {
  if (n > sc->cap_syms) {
    size_t cap = n < 64 ? 64 : n;
    bpe_sym_t *v = realloc(sc->syms, cap * sizeof *v);
    if (!v) return STRATA_ENOMEM;
    sc->syms = v;
    sc->cap_syms = cap;
  }
  int32_t k = 0;
  for (size_t i = 0; i < n;) {
    /* Byte-level BPE starts from bytes, SentencePiece from characters. */
    size_t cl = t->kind == TOK_KIND_BYTE_BPE ? 1 : tok_utf8_len(s + i, n - i);
    bpe_sym_t *y = &sc->syms[k];
    y->start = (uint32_t)i;
    y->len = (uint32_t)cl;
    y->prev = k - 1;
    y->next = i + cl < n ? k + 1 : -1;
    y->id = t->merge_mode == TOK_MERGE_TABLE
                ? (t->kind == TOK_KIND_BYTE_BPE ? t->byte_ids[(uint8_t)s[i]] : tok_map_find(t, s + i, cl))
                : -1;
    k++;
    i += cl;
  }
  *n_syms = k;
  return 0;
}

int tok_bpe_word(const tok_t *t, tok_scratch_t *sc, const char *s, size_t n, tok_ids_t *out) {
  int rc;
  int32_t n_syms;
  if (n == 0) return 0;
  if (n > UINT32_MAX / 2) return STRATA_ERANGE;
  if ((rc = init_syms(t, sc, s, n, &n_syms))) return rc;
  sc->n_heap = 0;
  for (int32_t i = 0; i + 1 < n_syms; i++)
    if ((rc = try_pair(t, sc, s, i, i + 1))) return rc;
  while (sc->n_heap) {
    bpe_cand_t c = heap_pop(sc);
    bpe_sym_t *a = &sc->syms[c.left], *b = &sc->syms[c.right];
    if (a->len == 0 || b->len == 0 || a->len + b->len != c.len) continue; /* stale */
    a->len += b->len;
    a->id = c.merged;
    a->next = b->next;
    if (b->next >= 0) sc->syms[b->next].prev = c.left;
    b->len = 0;
    if ((rc = try_pair(t, sc, s, a->prev, c.left)) || (rc = try_pair(t, sc, s, c.left, a->next))) return rc;
  }
  for (int32_t i = 0; i >= 0 && i < n_syms; i = sc->syms[i].next) {
    const bpe_sym_t *y = &sc->syms[i];
    if ((rc = emit_sym(t, s + y->start, y->len, t->merge_mode == TOK_MERGE_TABLE ? y->id : -1, out))) return rc;
  }
  return 0;
}
