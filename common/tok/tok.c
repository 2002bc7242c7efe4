/* tok.c: the tokenizer core: vocabulary maps, special-token splitting, encode/decode and accessors. */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/log.h"
#include "common/status.h"
#include "common/tok/tok_int.h"

/* ---- building ---- */

int tok_alloc(tok_t **out, tok_kind_t kind, int n_vocab) {
  *out = NULL;
  if (n_vocab <= 0 || n_vocab > (1 << 24)) return STRATA_ERANGE;
  tok_t *t = calloc(1, sizeof *t);
  if (!t) return STRATA_ENOMEM;
  t->vocab = calloc((size_t)n_vocab, sizeof *t->vocab);
  if (!t->vocab) {
    free(t);
    return STRATA_ENOMEM;
  }
  t->kind = kind;
  t->n_vocab = n_vocab;
  t->bos = t->eos = t->unk = -1;
  t->add_space_prefix = kind == TOK_KIND_SPM;
  t->add_bos = kind == TOK_KIND_SPM;
  for (int i = 0; i < 256; i++) t->byte_ids[i] = -1;
  *out = t;
  return 0;
}

int tok_set_entry(tok_t *t, int32_t id, const char *text, size_t len, float score, int type) {
  if (id < 0 || id >= t->n_vocab || len > UINT32_MAX / 2) return STRATA_ERANGE;
  tok_entry_t *e = &t->vocab[id];
  char *p = malloc(len + 1);
  if (!p) return STRATA_ENOMEM;
  memcpy(p, text, len);
  p[len] = 0;
  if (e->piece != e->text) free(e->piece);
  free(e->text);
  e->text = p;
  e->len = (uint32_t)len;
  e->piece = NULL;
  e->score = score;
  e->type = (uint8_t)type;
  e->special = type == TOK_TYPE_CONTROL || type == TOK_TYPE_USER_DEFINED || type == TOK_TYPE_UNKNOWN;
  return 0;
}

static uint64_t str_hash(const char *s, size_t n) { return XXH3_64bits(s, n); }

int32_t tok_map_find(const tok_t *t, const char *s, size_t len) {
  const tok_strmap_t *m = &t->map;
  if (!m->slots) return -1;
  for (uint64_t h = str_hash(s, len);; h++) {
    int32_t v = m->slots[h & m->mask];
    if (!v) return -1;
    const tok_entry_t *e = &t->vocab[v - 1];
    if (e->len == len && memcmp(e->text, s, len) == 0) return v - 1;
  }
}

/* build_map: text -> id. On duplicate texts the lower id wins (matches every reference loader). */
static int build_map(tok_t *t) {
  uint64_t cap = 64;
  while (cap < (uint64_t)t->n_vocab * 2) cap *= 2;
  t->map.slots = calloc(cap, sizeof *t->map.slots);
  if (!t->map.slots) return STRATA_ENOMEM;
  t->map.mask = cap - 1;
  for (int32_t id = 0; id < t->n_vocab; id++) {
    const tok_entry_t *e = &t->vocab[id];
    if (!e->text || e->len == 0 || tok_map_find(t, e->text, e->len) >= 0) continue;
    for (uint64_t h = str_hash(e->text, e->len);; h++)
      if (!t->map.slots[h & t->map.mask]) {
        t->map.slots[h & t->map.mask] = id + 1;
        break;
      }
  }
  return 0;
}

int tok_pairmap_init(tok_pairmap_t *m, size_t n) {
  uint64_t cap = 64;
  while (cap < (uint64_t)n * 2) cap *= 2;
  m->keys = calloc(cap, sizeof *m->keys);
  m->rank = malloc(cap * sizeof *m->rank);
  m->merged = malloc(cap * sizeof *m->merged);
  if (!m->keys || !m->rank || !m->merged) return STRATA_ENOMEM;
  m->mask = cap - 1;
  m->n = 0;
  return 0;
}

int tok_add_merge(tok_t *t, int32_t a, int32_t b, int32_t rank) {
  tok_pairmap_t *m = &t->merges;
  if (a < 0 || b < 0 || !t->vocab[a].text || !t->vocab[b].text) return 1;
  const tok_entry_t *ea = &t->vocab[a], *eb = &t->vocab[b];
  size_t n = (size_t)ea->len + eb->len;
  char small[256], *buf = n <= sizeof small ? small : malloc(n);
  if (!buf) return STRATA_ENOMEM;
  memcpy(buf, ea->text, ea->len);
  memcpy(buf + ea->len, eb->text, eb->len);
  int32_t merged = tok_map_find(t, buf, n);
  if (buf != small) free(buf);
  if (merged < 0) return 1;
  if ((uint64_t)m->n * 2 >= m->mask) return STRATA_EFULL;
  uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
  for (uint64_t h = tok_pair_hash(key);; h++) {
    uint64_t *k = &m->keys[h & m->mask];
    if (*k == key) return 0; /* a repeated merge keeps its first (higher-priority) rank */
    if (*k == 0) {
      *k = key;
      m->rank[h & m->mask] = rank;
      m->merged[h & m->mask] = merged;
      m->n++;
      return 0;
    }
  }
}

void tok_add_eos_id(tok_t *t, int32_t id) {
  if (id < 0 || id >= t->n_vocab) return;
  for (int i = 0; i < t->n_eos_ids; i++)
    if (t->eos_ids[i] == id) return;
  if (t->n_eos_ids < (int)(sizeof t->eos_ids / sizeof t->eos_ids[0])) t->eos_ids[t->n_eos_ids++] = id;
}

/* parse_byte_token: "<0xNN>" -> NN, or -1. */
static int parse_byte_token(const char *s, size_t n) {
  if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; i++) {
    char c = s[i];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

/* make_piece: the bytes a token decodes to. SentencePiece pieces turn U+2581 into spaces and <0xNN> into
 * the byte; byte-level texts are already raw bytes. */
static int make_piece(tok_t *t, int32_t id) {
  tok_entry_t *e = &t->vocab[id];
  if (!e->text) {
    e->text = calloc(1, 1);
    if (!e->text) return STRATA_ENOMEM;
  }
  e->piece = e->text;
  e->piece_len = e->len;
  if (t->kind != TOK_KIND_SPM) return 0;
  int b = e->type == TOK_TYPE_BYTE ? parse_byte_token(e->text, e->len) : -1;
  if (b >= 0) {
    if (!(e->piece = malloc(1))) return STRATA_ENOMEM;
    e->piece[0] = (char)b;
    e->piece_len = 1;
    if (t->byte_ids[b] < 0) t->byte_ids[b] = id;
    return 0;
  }
  if (e->type == TOK_TYPE_CONTROL || e->type == TOK_TYPE_UNKNOWN || !strstr(e->text, "\xe2\x96\x81")) return 0;
  if (!(e->piece = malloc(e->len + 1))) return STRATA_ENOMEM;
  uint32_t k = 0;
  for (uint32_t i = 0; i < e->len;) {
    if (i + 3 <= e->len && memcmp(e->text + i, "\xe2\x96\x81", 3) == 0) {
      e->piece[k++] = ' ';
      i += 3;
    } else {
      e->piece[k++] = e->text[i++];
    }
  }
  e->piece[k] = 0;
  e->piece_len = k;
  return 0;
}

typedef struct {
  uint32_t len;
  int32_t id;
} special_key_t;

/* Longest first, so that "<|im_end|>" wins over a hypothetical "<|im"; then by id for determinism. */
static int cmp_special(const void *a, const void *b) {
  const special_key_t *x = a, *y = b;
  if (x->len != y->len) return x->len > y->len ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

static int build_specials(tok_t *t) {
  t->n_specials = 0;
  t->specials = malloc((size_t)t->n_vocab * sizeof *t->specials);
  special_key_t *keys = malloc((size_t)t->n_vocab * sizeof *keys);
  if (!t->specials || !keys) {
    free(keys);
    return STRATA_ENOMEM;
  }
  for (int32_t id = 0; id < t->n_vocab; id++) {
    const tok_entry_t *e = &t->vocab[id];
    if (!e->special || e->len == 0) continue;
    keys[t->n_specials++] = (special_key_t){e->len, id};
    t->special_first[(uint8_t)e->text[0]] = 1;
  }
  qsort(keys, (size_t)t->n_specials, sizeof *keys, cmp_special);
  t->n_special_lens = 0;
  for (int i = 0; i < t->n_specials; i++) {
    t->specials[i] = keys[i].id;
    if (t->n_special_lens >= 0 && (i == 0 || keys[i].len != keys[i - 1].len)) {
      int k = t->n_special_lens;
      t->n_special_lens = k < (int)(sizeof t->special_lens / sizeof t->special_lens[0]) ? k + 1 : -1;
      if (k < (int)(sizeof t->special_lens / sizeof t->special_lens[0])) t->special_lens[k] = keys[i].len;
    }
  }
  if (t->n_special_lens < 0) t->n_special_lens = 0;
  free(keys);
  return 0;
}

int tok_finish(tok_t *t, const char *path, const char *custom_regex) {
  int rc;
  if ((rc = build_map(t))) return rc;
  for (int32_t id = 0; id < t->n_vocab; id++)
    if ((rc = make_piece(t, id))) return rc;
  if (t->kind == TOK_KIND_BYTE_BPE)
    for (int b = 0; b < 256; b++) {
      char c = (char)b;
      t->byte_ids[b] = tok_map_find(t, &c, 1);
    }
  if ((rc = build_specials(t))) return rc;
  if (t->kind == TOK_KIND_BYTE_BPE && t->pre == TOK_PRE_NONE) t->pre = TOK_PRE_GPT2;
  const char *pat = t->pre == TOK_PRE_CUSTOM ? custom_regex : tok_pre_pattern(t->pre);
  if (pat && (rc = tok_pre_compile(t, pat, path))) return rc;
  if (t->eos >= 0) tok_add_eos_id(t, t->eos);
  return 0;
}

void tok_free(tok_t *t) {
  if (!t) return;
  for (int i = 0; i < t->n_vocab; i++) {
    if (t->vocab[i].piece != t->vocab[i].text) free(t->vocab[i].piece);
    free(t->vocab[i].text);
  }
  free(t->vocab);
  free(t->map.slots);
  free(t->merges.keys);
  free(t->merges.rank);
  free(t->merges.merged);
  free(t->specials);
  free(t->chat_template);
  tok_pre_free(t);
  free(t);
}

int tok_new_bytes(tok_t **out, int vocab_size) {
  *out = NULL;
  if (vocab_size < 258) {
    log_error("dummy byte tokenizer: vocab size %d is below 258 (256 bytes + BOS + EOS)", vocab_size);
    return STRATA_EINVAL;
  }
  tok_t *t;
  int rc = tok_alloc(&t, TOK_KIND_BYTES, vocab_size);
  if (rc) return rc;
  for (int b = 0; b < 256 && !rc; b++) {
    char c = (char)b;
    rc = tok_set_entry(t, b, &c, 1, 0, TOK_TYPE_BYTE);
  }
  if (!rc) rc = tok_set_entry(t, 256, "<s>", 3, 0, TOK_TYPE_CONTROL);
  if (!rc) rc = tok_set_entry(t, 257, "</s>", 4, 0, TOK_TYPE_CONTROL);
  for (int id = 258; id < vocab_size && !rc; id++) rc = tok_set_entry(t, id, "", 0, 0, TOK_TYPE_UNUSED);
  t->bos = 256;
  t->eos = 257;
  t->add_bos = 1;
  t->add_space_prefix = 0;
  if (!rc) rc = tok_finish(t, "dummy", NULL);
  for (int b = 0; b < 256; b++) t->byte_ids[b] = b;
  if (rc) {
    tok_free(t);
    return rc;
  }
  *out = t;
  return 0;
}

/* ---- encoding ---- */

typedef struct {
  const tok_t *t;
  tok_scratch_t *sc;
  tok_ids_t *out;
} word_ctx_t;

static int encode_word(void *vctx, const char *p, size_t n) {
  word_ctx_t *c = vctx;
  if (c->t->whole_word_first) {
    int32_t id = tok_map_find(c->t, p, n);
    if (id >= 0 && !c->t->vocab[id].special) return tok_ids_push(c->out, id);
  }
  return tok_bpe_word(c->t, c->sc, p, n, c->out);
}

/* encode_spm: escapes spaces as U+2581 (with the dummy prefix when asked) and merges the whole fragment. */
static int encode_spm(const tok_t *t, tok_scratch_t *sc, const char *s, size_t n, int prefix, tok_ids_t *out) {
  size_t spaces = prefix ? 1 : 0;
  for (size_t i = 0; i < n; i++) spaces += s[i] == ' ';
  if (n > SIZE_MAX / 4) return STRATA_ERANGE;
  char *buf = malloc(n + 2 * spaces + 1);
  if (!buf) return STRATA_ENOMEM;
  size_t k = 0;
  if (prefix) {
    memcpy(buf, "\xe2\x96\x81", 3);
    k = 3;
  }
  for (size_t i = 0; i < n; i++) {
    if (s[i] == ' ') {
      memcpy(buf + k, "\xe2\x96\x81", 3);
      k += 3;
    } else {
      buf[k++] = s[i];
    }
  }
  int rc = tok_bpe_word(t, sc, buf, k, out);
  free(buf);
  return rc;
}

static int encode_fragment(const tok_t *t, tok_scratch_t *sc, const char *s, size_t n, int after_special,
                           tok_ids_t *out) {
  if (n == 0) return 0;
  if (t->kind == TOK_KIND_SPM) return encode_spm(t, sc, s, n, t->add_space_prefix && after_special, out);
  if (t->kind == TOK_KIND_BYTES) {
    for (size_t i = 0; i < n; i++) {
      int rc = tok_ids_push(out, (uint8_t)s[i]);
      if (rc) return rc;
    }
    return 0;
  }
  word_ctx_t c = {t, sc, out};
  return tok_pre_split(t, s, n, encode_word, &c);
}

/* match_special: the longest special token starting at S (N bytes left), or -1. */
static int32_t match_special(const tok_t *t, const char *s, size_t n) {
  /* One hash lookup per distinct length (a handful) instead of a compare per special (hundreds). */
  for (int i = 0; i < t->n_special_lens; i++) {
    if (t->special_lens[i] > n) continue;
    int32_t id = tok_map_find(t, s, t->special_lens[i]);
    if (id >= 0 && t->vocab[id].special) return id;
  }
  if (t->n_special_lens) return -1;
  for (int i = 0; i < t->n_specials; i++) {
    const tok_entry_t *e = &t->vocab[t->specials[i]];
    if (e->len <= n && memcmp(e->text, s, e->len) == 0) return t->specials[i];
  }
  return -1;
}

int tok_encode(const tok_t *t, const char *text, size_t len, int flags, int32_t **ids, int *n) {
  *ids = NULL;
  *n = 0;
  if (!t || (!text && len)) return STRATA_EINVAL;
  if (len > (size_t)INT32_MAX / 4) {
    log_error("tok_encode: input of %zu bytes is too long", len);
    return STRATA_ERANGE;
  }
  tok_ids_t out = {0};
  tok_scratch_t *sc = tok_scratch_new();
  int rc = sc ? 0 : STRATA_ENOMEM;
  if (!rc && (flags & TOK_ADD_BOS) && t->add_bos && t->bos >= 0) rc = tok_ids_push(&out, t->bos);
  int after_special = 1; /* SentencePiece: the dummy prefix goes before the first fragment */
  size_t frag = 0;
  if (!rc && (flags & TOK_PARSE_SPECIAL) && t->n_specials) {
    for (size_t i = 0; i < len && !rc; i++) {
      if (!t->special_first[(uint8_t)text[i]]) continue;
      int32_t id = match_special(t, text + i, len - i);
      if (id < 0) continue;
      rc = encode_fragment(t, sc, text + frag, i - frag, after_special, &out);
      if (!rc) rc = tok_ids_push(&out, id);
      after_special = 1;
      i += t->vocab[id].len - 1;
      frag = i + 1;
    }
  }
  if (!rc) rc = encode_fragment(t, sc, text + frag, len - frag, after_special, &out);
  tok_scratch_free(sc);
  if (rc) {
    free(out.v);
    return rc;
  }
  if (!out.v && !(out.v = malloc(sizeof *out.v))) return STRATA_ENOMEM;
  *ids = out.v;
  *n = out.n;
  return 0;
}

/* ---- decoding and accessors ---- */

int tok_piece(const tok_t *t, int32_t id, const char **bytes, size_t *len) {
  if (!t || id < 0 || id >= t->n_vocab) return STRATA_ERANGE;
  *bytes = t->vocab[id].piece;
  *len = t->vocab[id].piece_len;
  return 0;
}

int tok_is_special(const tok_t *t, int32_t id) {
  if (!t || id < 0 || id >= t->n_vocab) return 0;
  int ty = t->vocab[id].type;
  return ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_UNKNOWN;
}

int tok_decode(const tok_t *t, const int32_t *ids, int n, int skip_special, char **text, size_t *len) {
  *text = NULL;
  if (len) *len = 0;
  size_t cap = 1, k = 0;
  for (int i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= t->n_vocab) {
      log_error("tok_decode: token id %d is outside the vocabulary (size %d)", ids[i], t->n_vocab);
      return STRATA_ERANGE;
    }
    cap += t->vocab[ids[i]].piece_len;
  }
  char *buf = malloc(cap);
  if (!buf) return STRATA_ENOMEM;
  int seen_text = 0;
  for (int i = 0; i < n; i++) {
    const tok_entry_t *e = &t->vocab[ids[i]];
    int special = tok_is_special(t, ids[i]);
    if (special && skip_special) continue;
    const char *p = e->piece;
    size_t pl = e->piece_len;
    /* The dummy-prefix space belongs to the first text token after any leading specials (BOS). */
    if (!special && !seen_text && t->kind == TOK_KIND_SPM && t->add_space_prefix && pl && p[0] == ' ') {
      p++;
      pl--;
    }
    if (!special) seen_text = 1;
    memcpy(buf + k, p, pl);
    k += pl;
  }
  buf[k] = 0;
  *text = buf;
  if (len) *len = k;
  return 0;
}

int tok_vocab_size(const tok_t *t) { return t->n_vocab; }
int tok_bos(const tok_t *t) { return t->bos; }
int tok_eos(const tok_t *t) { return t->eos; }
int tok_add_bos_default(const tok_t *t) { return t->add_bos && t->bos >= 0; }
const char *tok_chat_template(const tok_t *t) { return t->chat_template; }

int32_t tok_find(const tok_t *t, const char *text) {
  size_t n = strlen(text);
  int32_t id = tok_map_find(t, text, n);
  if (id >= 0 || t->kind != TOK_KIND_SPM) return id;
  /* SentencePiece stores spaces as U+2581: try the escaped spelling too. */
  size_t sp = 0;
  for (size_t i = 0; i < n; i++) sp += text[i] == ' ';
  if (!sp) return -1;
  char *buf = malloc(n + 2 * sp + 1);
  if (!buf) return -1;
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (text[i] == ' ') {
      memcpy(buf + k, "\xe2\x96\x81", 3);
      k += 3;
    } else {
      buf[k++] = text[i];
    }
  }
  id = tok_map_find(t, buf, k);
  free(buf);
  return id;
}

int tok_eos_ids(const tok_t *t, int32_t *out, int max) {
  int k = 0;
  for (int i = 0; i < t->n_eos_ids && k < max; i++) out[k++] = t->eos_ids[i];
  return k;
}
