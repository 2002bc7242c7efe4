/* tok_load.c: tokenizer loaders: GGUF vocab, HF tokenizer.json, tiktoken, GPT-2 vocab + merges files, and
 * the tokenizer_config.json / generation_config.json settings beside them. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"
#include "common/tok/tok_int.h"

#define TOK_MAX_FILE_BYTES ((size_t)256 << 20)

/* ---- helpers ---- */

/* bytelevel_decode: GPT-2's printable spelling back to raw bytes. Returns the byte count, or -1 when a
 * character is outside the mapping (added tokens are spelled literally). OUT holds at least N bytes. */
static long bytelevel_decode(const char *s, size_t n, char *out) {
  size_t k = 0;
  for (size_t i = 0; i < n;) {
    const uint8_t *p = (const uint8_t *)s + i;
    uint32_t cp;
    size_t cl = tok_utf8_len(s + i, n - i);
    if (cl == 1 && p[0] >= 0x80) return -1;
    if (cl == 1) cp = p[0];
    else if (cl == 2) cp = ((p[0] & 0x1fu) << 6) | (p[1] & 0x3fu);
    else return -1; /* the mapping only uses code points below U+0800 */
    int b = tok_cp_to_byte(cp);
    if (b < 0) return -1;
    out[k++] = (char)b;
    i += cl;
  }
  return (long)k;
}

/* set_bytelevel: entry ID from its byte-level spelling (or literally, when it is not byte-level text). */
static int set_bytelevel(tok_t *t, int32_t id, const char *s, size_t n, float score, int type) {
  char small[512], *buf = n <= sizeof small ? small : malloc(n);
  if (!buf) return STRATA_ENOMEM;
  long k = type == TOK_TYPE_NORMAL ? bytelevel_decode(s, n, buf) : -1;
  int rc = k >= 0 ? tok_set_entry(t, id, buf, (size_t)k, score, type) : tok_set_entry(t, id, s, n, score, type);
  if (buf != small) free(buf);
  return rc;
}

/* add_merge_text: "A B" (byte-level spelling when BYTELEVEL) -> tok_add_merge. */
static int add_merge_text(tok_t *t, const char *a, size_t na, const char *b, size_t nb, int bytelevel, int32_t rank) {
  char sa[512], sb[512];
  long ka = (long)na, kb = (long)nb;
  if (bytelevel) {
    if (na > sizeof sa || nb > sizeof sb) return 1;
    ka = bytelevel_decode(a, na, sa);
    kb = bytelevel_decode(b, nb, sb);
    if (ka < 0 || kb < 0) return 1;
    a = sa;
    b = sb;
  }
  return tok_add_merge(t, tok_map_find(t, a, (size_t)ka), tok_map_find(t, b, (size_t)kb), rank);
}

static int add_merge_line(tok_t *t, const char *line, size_t n, int bytelevel, int32_t rank) {
  const char *sp = memchr(line, ' ', n);
  if (!sp || sp == line) return 1;
  return add_merge_text(t, line, (size_t)(sp - line), sp + 1, n - (size_t)(sp - line) - 1, bytelevel, rank);
}

static void str_set(char **dst, const char *s) {
  free(*dst);
  *dst = s ? strdup(s) : NULL;
}

/* Special tokens that end a turn in common chat formats: generation stops on them too. */
static void add_default_eos_ids(tok_t *t) {
  static const char *const k_eot[] = {"<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>"};
  for (size_t i = 0; i < sizeof k_eot / sizeof k_eot[0]; i++) {
    int32_t id = tok_map_find(t, k_eot[i], strlen(k_eot[i]));
    if (id >= 0 && t->vocab[id].special) tok_add_eos_id(t, id);
  }
}

/* Special tokens that tiktoken files leave out; they follow the last rank. */
static int tiktoken_specials(tok_t *t, int first, int is_qwen) {
  char name[64];
  int rc = 0;
  for (int i = 0; first + i < t->n_vocab && !rc; i++) {
    if (is_qwen) {
      static const char *const q[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
      if (i < 3) snprintf(name, sizeof name, "%s", q[i]);
      else snprintf(name, sizeof name, "<|extra_%d|>", i - 3);
    } else {
      /* Llama 3.1 names (Llama 3 called 128002-5, 128008 and 128010 reserved tokens). */
      static const char *const l[] = {"<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                                      "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                                      "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
                                      "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"};
      if (i < 11) snprintf(name, sizeof name, "%s", l[i]);
      else snprintf(name, sizeof name, "<|reserved_special_token_%d|>", i - 11 + 3);
    }
    rc = tok_set_entry(t, first + i, name, strlen(name), 0, TOK_TYPE_CONTROL);
  }
  if (is_qwen) {
    t->bos = -1;
    t->eos = first;
    t->add_bos = 0;
  } else {
    t->bos = first;
    t->eos = first + 1;
    t->add_bos = 1;
  }
  return rc;
}

/* ---- GGUF ---- */

static int gguf_entries(tok_t *t, const gguf_file_t *g, const gguf_str_t *toks) {
  const void *scores = NULL, *types = NULL;
  uint64_t ns = 0, nt = 0;
  if (gguf_get_arr(g, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, &scores, &ns) || ns != (uint64_t)t->n_vocab)
    scores = NULL;
  if (gguf_get_arr(g, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, &types, &nt) || nt != (uint64_t)t->n_vocab)
    types = NULL;
  int rc = 0;
  for (int32_t i = 0; i < t->n_vocab && !rc; i++) {
    float sc = 0;
    int32_t ty = TOK_TYPE_NORMAL;
    if (scores) memcpy(&sc, (const char *)scores + 4 * (size_t)i, 4);
    if (types) memcpy(&ty, (const char *)types + 4 * (size_t)i, 4);
    if (ty < 1 || ty > 6) ty = TOK_TYPE_NORMAL;
    rc = t->kind == TOK_KIND_BYTE_BPE ? set_bytelevel(t, i, toks[i].ptr, toks[i].len, sc, ty)
                                      : tok_set_entry(t, i, toks[i].ptr, toks[i].len, sc, ty);
  }
  return rc;
}

static int32_t gguf_id(const gguf_file_t *g, const char *key, int n_vocab) {
  uint32_t v;
  return gguf_get_u32(g, key, &v) == 0 && v < (uint32_t)n_vocab ? (int32_t)v : -1;
}

static void gguf_settings(tok_t *t, const gguf_file_t *g) {
  int b;
  gguf_str_t s;
  t->bos = gguf_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab);
  t->eos = gguf_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab);
  t->unk = gguf_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab);
  if (gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b) == 0) t->add_bos = b;
  if (gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b) == 0 && t->kind == TOK_KIND_SPM)
    t->add_space_prefix = b;
  tok_add_eos_id(t, gguf_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab));
  tok_add_eos_id(t, gguf_id(g, "tokenizer.ggml.eom_token_id", t->n_vocab));
  if (gguf_get_str(g, "tokenizer.chat_template", &s) == 0 && (t->chat_template = malloc(s.len + 1))) {
    memcpy(t->chat_template, s.ptr, s.len);
    t->chat_template[s.len] = 0;
  }
}

static tok_pre_t gguf_pre(const gguf_file_t *g, int *whole_word) {
  gguf_str_t s;
  *whole_word = 0;
  if (gguf_get_str(g, "tokenizer.ggml.pre", &s)) return TOK_PRE_GPT2;
  if (gguf_str_eq(s, "llama3") || gguf_str_eq(s, "llama-bpe") || gguf_str_eq(s, "llama-v3") ||
      gguf_str_eq(s, "smaug-bpe")) {
    *whole_word = 1; /* Llama 3's tokenizer.json sets ignore_merges */
    return TOK_PRE_LLAMA3;
  }
  if (gguf_str_eq(s, "qwen2")) return TOK_PRE_QWEN2;
  if (!gguf_str_eq(s, "gpt-2") && !gguf_str_eq(s, "default"))
    log_warn("GGUF tokenizer.ggml.pre '%.*s' is not known; using the GPT-2 split pattern", (int)s.len, s.ptr);
  return TOK_PRE_GPT2;
}

int tok_load_gguf(tok_t **out, const gguf_file_t *g) {
  *out = NULL;
  gguf_str_t model, *toks = NULL;
  uint64_t n = 0;
  tok_t *t = NULL;
  int rc;
  if (gguf_get_str(g, "tokenizer.ggml.model", &model) || gguf_get_str_array(g, "tokenizer.ggml.tokens", &toks, &n)) {
    log_error("%s: no tokenizer inside (tokenizer.ggml.model / tokenizer.ggml.tokens missing)", g->path);
    return STRATA_ENOTFOUND;
  }
  tok_kind_t kind;
  if (gguf_str_eq(model, "llama")) kind = TOK_KIND_SPM;
  else if (gguf_str_eq(model, "gpt2")) kind = TOK_KIND_BYTE_BPE;
  else {
    log_error("%s: tokenizer model '%.*s' is not supported (llama and gpt2 are)", g->path, (int)model.len, model.ptr);
    rc = STRATA_EUNSUPPORTED;
    goto fail;
  }
  if ((rc = tok_alloc(&t, kind, (int)(n > (1 << 24) ? 0 : n)))) {
    log_error("%s: tokenizer has %llu tokens", g->path, (unsigned long long)n);
    goto fail;
  }
  if ((rc = gguf_entries(t, g, toks))) goto fail;
  t->add_bos = kind == TOK_KIND_SPM;
  gguf_settings(t, g);
  if (kind == TOK_KIND_BYTE_BPE) {
    t->merge_mode = TOK_MERGE_TABLE;
    t->pre = gguf_pre(g, &t->whole_word_first);
  }
  if ((rc = tok_finish(t, g->path, NULL))) goto fail;
  if (kind == TOK_KIND_BYTE_BPE) {
    gguf_str_t *merges = NULL;
    uint64_t nm = 0;
    if ((rc = gguf_get_str_array(g, "tokenizer.ggml.merges", &merges, &nm))) {
      log_error("%s: byte-level BPE vocab without tokenizer.ggml.merges", g->path);
      goto fail;
    }
    rc = tok_pairmap_init(&t->merges, nm);
    for (uint64_t i = 0; i < nm && rc >= 0; i++) rc = add_merge_line(t, merges[i].ptr, merges[i].len, 1, (int32_t)i);
    free(merges);
    if (rc < 0) goto fail;
  }
  add_default_eos_ids(t);
  free(toks);
  *out = t;
  return 0;
fail:
  free(toks);
  tok_free(t);
  return rc;
}

/* ---- tokenizer.json ---- */

static const cJSON *find_type(const cJSON *node, const char *type) {
  if (!cJSON_IsObject(node)) return NULL;
  const cJSON *ty = cJSON_GetObjectItemCaseSensitive(node, "type");
  if (cJSON_IsString(ty) && strcmp(ty->valuestring, type) == 0) return node;
  const char *lists[] = {"pretokenizers", "normalizers", "decoders"};
  for (int i = 0; i < 3; i++) {
    const cJSON *it, *arr = cJSON_GetObjectItemCaseSensitive(node, lists[i]);
    cJSON_ArrayForEach(it, arr) {
      const cJSON *r = find_type(it, type);
      if (r) return r;
    }
  }
  return NULL;
}

static int json_bool(const cJSON *o, const char *key, int dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static const char *json_str(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content"); /* {"content": "<s>", ...} */
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* hf_size: vocabulary size = 1 + the largest id in model.vocab and added_tokens. */
static int hf_size(const cJSON *model, const cJSON *added, int unigram) {
  int n = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(model, "vocab")) {
    if (unigram) n++;
    else if (cJSON_IsNumber(it) && it->valueint + 1 > n) n = it->valueint + 1;
  }
  cJSON_ArrayForEach(it, added) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
    if (cJSON_IsNumber(id) && id->valueint + 1 > n) n = id->valueint + 1;
  }
  return n;
}

static int hf_vocab(tok_t *t, const cJSON *model, int unigram, int byte_fallback) {
  const cJSON *it;
  int rc = 0, i = 0;
  const char *unk = json_str(model, "unk_token");
  cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(model, "vocab")) {
    const char *s;
    float score = 0;
    int id;
    if (unigram) {
      const cJSON *p = cJSON_GetArrayItem(it, 0), *sc = cJSON_GetArrayItem(it, 1);
      if (!cJSON_IsString(p)) return STRATA_EFORMAT;
      s = p->valuestring;
      score = cJSON_IsNumber(sc) ? (float)sc->valuedouble : 0;
      id = i++;
    } else {
      if (!cJSON_IsNumber(it) || it->valueint < 0) return STRATA_EFORMAT;
      s = it->string;
      id = it->valueint;
      score = -(float)id;
    }
    int ty = TOK_TYPE_NORMAL;
    if (unk && strcmp(s, unk) == 0) ty = TOK_TYPE_UNKNOWN;
    else if (byte_fallback && strlen(s) == 6 && strncmp(s, "<0x", 3) == 0) ty = TOK_TYPE_BYTE;
    rc = t->kind == TOK_KIND_BYTE_BPE ? set_bytelevel(t, id, s, strlen(s), score, ty)
                                      : tok_set_entry(t, id, s, strlen(s), score, ty);
    if (rc) return rc;
  }
  if (unigram) {
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(model, "unk_id");
    if (cJSON_IsNumber(u) && u->valueint >= 0 && u->valueint < t->n_vocab) {
      t->unk = u->valueint;
      t->vocab[t->unk].type = TOK_TYPE_UNKNOWN;
    }
  } else if (unk) {
    t->unk = -2; /* resolved after the map is built */
  }
  return 0;
}

static int hf_added(tok_t *t, const cJSON *added) {
  const cJSON *it;
  cJSON_ArrayForEach(it, added) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
    const char *s = json_str(it, "content");
    if (!cJSON_IsNumber(id) || id->valueint < 0 || id->valueint >= t->n_vocab || !s) return STRATA_EFORMAT;
    int ty = json_bool(it, "special", 0) ? TOK_TYPE_CONTROL : TOK_TYPE_USER_DEFINED;
    int rc = tok_set_entry(t, id->valueint, s, strlen(s), 0, ty);
    if (rc) return rc;
  }
  return 0;
}

static int hf_merges(tok_t *t, const cJSON *model, int bytelevel) {
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(model, "merges"), *it;
  int rc = tok_pairmap_init(&t->merges, (size_t)cJSON_GetArraySize(arr));
  int32_t rank = 0;
  cJSON_ArrayForEach(it, arr) {
    if (rc < 0) break;
    if (cJSON_IsString(it)) {
      rc = add_merge_line(t, it->valuestring, strlen(it->valuestring), bytelevel, rank++);
    } else { /* newer files: ["a", "b"] */
      const cJSON *a = cJSON_GetArrayItem(it, 0), *b = cJSON_GetArrayItem(it, 1);
      if (!cJSON_IsString(a) || !cJSON_IsString(b)) return STRATA_EFORMAT;
      rc = add_merge_text(t, a->valuestring, strlen(a->valuestring), b->valuestring, strlen(b->valuestring),
                          bytelevel, rank++);
    }
  }
  return rc < 0 ? rc : 0;
}

/* hf_pretok: the split pattern (a Split regex, or ByteLevel's GPT-2 pattern). */
static const char *hf_pretok(tok_t *t, const cJSON *root) {
  const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
  const cJSON *split = find_type(pre, "Split");
  if (split) {
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(split, "pattern");
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
    if (cJSON_IsString(re)) {
      t->pre = TOK_PRE_CUSTOM;
      return re->valuestring;
    }
  }
  t->pre = TOK_PRE_GPT2;
  return NULL;
}

static void hf_bos(tok_t *t, const cJSON *root) {
  const cJSON *pp = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
  const cJSON *tp = find_type(pp, "TemplateProcessing");
  const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(tp, "single"), 0);
  const cJSON *st = cJSON_GetObjectItemCaseSensitive(first, "SpecialToken");
  const char *name = json_str(st, "id");
  if (name) {
    t->bos = tok_map_find(t, name, strlen(name));
    t->add_bos = t->bos >= 0;
  } else {
    t->add_bos = 0;
  }
}

static int hf_build(tok_t **out, const char *path, const cJSON *root) {
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
  const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
  const char *mtype = json_str(model, "type");
  tok_t *t = NULL;
  int rc;
  int unigram = mtype && strcmp(mtype, "Unigram") == 0;
  if (!mtype || (!unigram && strcmp(mtype, "BPE") != 0)) {
    log_error("%s: tokenizer model type '%s' is not supported (BPE and Unigram are)", path, mtype ? mtype : "?");
    return STRATA_EUNSUPPORTED;
  }
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
  if (unigram ? !cJSON_IsArray(vocab) : !cJSON_IsObject(vocab)) {
    log_error("%s: model.vocab must be %s", path, unigram ? "a list of [piece, score]" : "an object of token -> id");
    return STRATA_EFORMAT;
  }
  int bytelevel = find_type(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), "ByteLevel") ||
                  find_type(cJSON_GetObjectItemCaseSensitive(root, "decoder"), "ByteLevel");
  if ((rc = tok_alloc(&t, bytelevel ? TOK_KIND_BYTE_BPE : TOK_KIND_SPM, hf_size(model, added, unigram)))) goto bad;
  int byte_fallback = json_bool(model, "byte_fallback", unigram);
  if ((rc = hf_vocab(t, model, unigram, byte_fallback)) || (rc = hf_added(t, added))) goto bad;
  t->merge_mode = unigram ? TOK_MERGE_SCORE : TOK_MERGE_TABLE;
  const char *regex = NULL;
  if (bytelevel) {
    regex = hf_pretok(t, root);
    t->whole_word_first = json_bool(model, "ignore_merges", 0);
  } else {
    const cJSON *ms = find_type(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), "Metaspace");
    const char *scheme = json_str(ms, "prepend_scheme");
    t->add_space_prefix = find_type(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), "Prepend") != NULL ||
                          (ms && (scheme ? strcmp(scheme, "never") != 0 : json_bool(ms, "add_prefix_space", 1)));
  }
  if ((rc = tok_finish(t, path, regex))) goto fail;
  if (t->unk == -2) {
    const char *unk = json_str(model, "unk_token");
    t->unk = tok_map_find(t, unk, strlen(unk));
  }
  hf_bos(t, root);
  if (!unigram && (rc = hf_merges(t, model, bytelevel))) goto bad;
  *out = t;
  return 0;
bad:
  if (rc == STRATA_EFORMAT) log_error("%s: malformed tokenizer.json (vocab, added_tokens or merges)", path);
fail:
  tok_free(t);
  return rc;
}

int tok_load_hf_json(tok_t **out, const char *path) {
  *out = NULL;
  char *buf;
  size_t len;
  int rc = file_read_all(path, TOK_MAX_FILE_BYTES, &buf, &len);
  if (rc == STRATA_ENOTFOUND) log_error("%s: not found", path);
  if (rc) return rc;
  cJSON *root = cJSON_ParseWithLength(buf, len);
  free(buf);
  if (!root) {
    log_error("%s: not valid JSON", path);
    return STRATA_EFORMAT;
  }
  rc = hf_build(out, path, root);
  cJSON_Delete(root);
  return rc;
}

/* ---- tiktoken ---- */

static int b64_val(int c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/* b64_decode: standard base64 (padding optional) into OUT (at least 3 * n / 4 bytes); -1 when invalid. */
static long b64_decode(const char *s, size_t n, char *out) {
  uint32_t acc = 0;
  int bits = 0;
  long k = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '=') break;
    int v = b64_val((uint8_t)s[i]);
    if (v < 0) return -1;
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[k++] = (char)((acc >> bits) & 0xff);
    }
  }
  return k;
}

static int tiktoken_parse(tok_t *t, const char *path, const char *buf, size_t len) {
  char tmp[1024];
  int line = 0;
  for (size_t i = 0; i < len; line++) {
    const char *nl = memchr(buf + i, '\n', len - i), *e = nl ? nl : buf + len;
    const char *sp = memchr(buf + i, ' ', (size_t)(e - (buf + i)));
    if (e == buf + i) {
      i++;
      continue;
    }
    long rank = sp ? strtol(sp + 1, NULL, 10) : -1;
    long k = sp && (size_t)(sp - (buf + i)) <= sizeof tmp ? b64_decode(buf + i, (size_t)(sp - (buf + i)), tmp) : -1;
    if (k <= 0 || rank < 0 || rank >= t->n_vocab) {
      log_error("%s:%d: expected 'base64 rank'", path, line + 1);
      return STRATA_EFORMAT;
    }
    int rc = tok_set_entry(t, (int32_t)rank, tmp, (size_t)k, -(float)rank, TOK_TYPE_NORMAL);
    if (rc) return rc;
    i = (size_t)(e - buf) + 1;
  }
  return 0;
}

int tok_load_tiktoken(tok_t **out, const char *path) {
  *out = NULL;
  char *buf;
  size_t len;
  tok_t *t = NULL;
  int rc = file_read_all(path, TOK_MAX_FILE_BYTES, &buf, &len);
  if (rc) return rc;
  int n_ranks = 0;
  for (size_t i = 0; i < len; i++) n_ranks += buf[i] == '\n';
  if (len && buf[len - 1] != '\n') n_ranks++;
  /* NOTE: the file has no specials and no split pattern; both come from which model it is. Qwen's file is
   * named qwen*.tiktoken; otherwise it is Llama 3 (cl100k-style pattern, 256 specials after the ranks). */
  const char *base = strrchr(path, '/');
  int is_qwen = strstr(base ? base : path, "qwen") != NULL;
  int n_special = is_qwen ? 208 : n_ranks >= 128000 ? 256 : 0;
  if ((rc = tok_alloc(&t, TOK_KIND_BYTE_BPE, n_ranks + n_special))) goto fail;
  if ((rc = tiktoken_parse(t, path, buf, len))) goto fail;
  if (n_special && (rc = tiktoken_specials(t, n_ranks, is_qwen))) goto fail;
  t->merge_mode = TOK_MERGE_SCORE;
  t->whole_word_first = 1;
  t->pre = is_qwen ? TOK_PRE_QWEN2 : TOK_PRE_LLAMA3;
  if ((rc = tok_finish(t, path, NULL))) goto fail;
  add_default_eos_ids(t);
  free(buf);
  *out = t;
  return 0;
fail:
  free(buf);
  tok_free(t);
  return rc;
}

/* ---- encoder.json + vocab.bpe / vocab.json + merges.txt ---- */

static int gpt2_vocab(tok_t **out, const char *path, const cJSON *enc) {
  int n = 0, rc;
  const cJSON *it;
  cJSON_ArrayForEach(it, enc) {
    if (!cJSON_IsNumber(it) || it->valueint < 0 || it->valueint >= (1 << 24)) {
      log_error("%s: expected an object of token -> id", path);
      return STRATA_EFORMAT;
    }
    if (it->valueint + 1 > n) n = it->valueint + 1;
  }
  /* A Llama 3 vocab written this way lacks its 256 specials. */
  int llama3 = n == 128000 && !cJSON_GetObjectItemCaseSensitive(enc, "<|begin_of_text|>");
  tok_t *t;
  if ((rc = tok_alloc(&t, TOK_KIND_BYTE_BPE, n + (llama3 ? 256 : 0)))) return rc;
  cJSON_ArrayForEach(it, enc) {
    size_t l = strlen(it->string);
    int ctl = l >= 4 && strncmp(it->string, "<|", 2) == 0 && strcmp(it->string + l - 2, "|>") == 0;
    if ((rc = set_bytelevel(t, it->valueint, it->string, l, 0, ctl ? TOK_TYPE_CONTROL : TOK_TYPE_NORMAL))) break;
  }
  if (!rc && llama3) rc = tiktoken_specials(t, n, 0);
  t->merge_mode = TOK_MERGE_TABLE;
  t->pre = llama3 ? TOK_PRE_LLAMA3 : TOK_PRE_GPT2;
  t->whole_word_first = llama3;
  if (!llama3) {
    t->add_bos = 0;
    t->bos = t->eos = tok_map_find(t, "<|endoftext|>", 13);
  }
  if (rc) {
    tok_free(t);
    return rc;
  }
  *out = t;
  return 0;
}

static int gpt2_merges(tok_t *t, const char *path, const char *buf, size_t len) {
  int n = 1, rc;
  for (size_t i = 0; i < len; i++) n += buf[i] == '\n';
  if ((rc = tok_pairmap_init(&t->merges, (size_t)n))) return rc;
  int32_t rank = 0;
  size_t i = 0;
  /* Only a "#version" first line is a header: Llama 3.2's file has real merges that start with '#'. */
  if (len >= 8 && strncmp(buf, "#version", 8) == 0) {
    const char *nl = memchr(buf, '\n', len);
    i = nl ? (size_t)(nl - buf) + 1 : len;
  }
  while (i < len) {
    const char *nl = memchr(buf + i, '\n', len - i), *e = nl ? nl : buf + len;
    size_t l = (size_t)(e - (buf + i));
    if (l && buf[i + l - 1] == '\r') l--;
    if (l && (rc = add_merge_line(t, buf + i, l, 1, rank++)) < 0) return rc;
    i = (size_t)(e - buf) + 1;
  }
  (void)path;
  return 0;
}

int tok_load_gpt2_files(tok_t **out, const char *vocab_path, const char *merges_path) {
  *out = NULL;
  char *vbuf = NULL, *mbuf = NULL;
  size_t vlen, mlen;
  cJSON *enc = NULL;
  tok_t *t = NULL;
  int rc = file_read_all(vocab_path, TOK_MAX_FILE_BYTES, &vbuf, &vlen);
  if (!rc) rc = file_read_all(merges_path, TOK_MAX_FILE_BYTES, &mbuf, &mlen);
  if (rc == STRATA_ENOTFOUND) log_error("%s / %s: not found", vocab_path, merges_path);
  if (rc) goto fail;
  if (!(enc = cJSON_ParseWithLength(vbuf, vlen)) || !cJSON_IsObject(enc)) {
    log_error("%s: not a JSON object of token -> id", vocab_path);
    rc = STRATA_EFORMAT;
    goto fail;
  }
  if ((rc = gpt2_vocab(&t, vocab_path, enc))) goto fail;
  if ((rc = tok_finish(t, vocab_path, NULL)) || (rc = gpt2_merges(t, merges_path, mbuf, mlen))) goto fail;
  add_default_eos_ids(t);
  *out = t;
  t = NULL;
fail:
  tok_free(t);
  cJSON_Delete(enc);
  free(vbuf);
  free(mbuf);
  return rc;
}

/* ---- configs ---- */

static cJSON *read_json(const char *dir, const char *name) {
  char path[4096], *buf;
  size_t len;
  if (!path_join(path, sizeof path, dir, name) || file_read_all(path, TOK_MAX_FILE_BYTES, &buf, &len)) return NULL;
  cJSON *j = cJSON_ParseWithLength(buf, len);
  free(buf);
  if (!j) log_warn("%s: not valid JSON; ignored", path);
  return j;
}

static void add_eos_json(tok_t *t, const cJSON *v) {
  const cJSON *it;
  if (cJSON_IsNumber(v)) tok_add_eos_id(t, v->valueint);
  else cJSON_ArrayForEach(it, v) if (cJSON_IsNumber(it)) tok_add_eos_id(t, it->valueint);
}

int tok_apply_config(tok_t *t, const char *dir) {
  cJSON *cfg = read_json(dir, "tokenizer_config.json");
  if (cfg) {
    const char *s;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
    if ((s = json_str(cfg, "bos_token"))) {
      int32_t id = tok_map_find(t, s, strlen(s));
      if (id >= 0) t->bos = id;
    }
    if (cJSON_IsBool(v)) t->add_bos = cJSON_IsTrue(v);
    if ((s = json_str(cfg, "eos_token"))) {
      int32_t id = tok_map_find(t, s, strlen(s));
      if (id >= 0) {
        t->eos = id;
        tok_add_eos_id(t, id);
      }
    }
    v = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    if (cJSON_IsString(v)) {
      str_set(&t->chat_template, v->valuestring);
    } else if (cJSON_IsArray(v)) { /* [{"name": "default", "template": ...}, ...] */
      const cJSON *it;
      cJSON_ArrayForEach(it, v) {
        const char *nm = json_str(it, "name"), *tpl = json_str(it, "template");
        if (tpl && (!t->chat_template || (nm && strcmp(nm, "default") == 0))) str_set(&t->chat_template, tpl);
      }
    }
    cJSON_Delete(cfg);
  }
  cJSON *gen = read_json(dir, "generation_config.json");
  if (gen) {
    add_eos_json(t, cJSON_GetObjectItemCaseSensitive(gen, "eos_token_id"));
    cJSON_Delete(gen);
  }
  return 0;
}

/* ---- dispatch ---- */

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* is_tiktoken: whether a tokenizer.model is tiktoken text ("base64 rank" lines) rather than protobuf. */
static int is_tiktoken(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  char line[256];
  int ok = fgets(line, sizeof line, f) != NULL;
  fclose(f);
  if (!ok) return 0;
  char *sp = strchr(line, ' ');
  if (!sp || sp == line) return 0;
  for (char *p = line; p < sp; p++)
    if (b64_val((uint8_t)*p) < 0 && *p != '=') return 0;
  return sp[1] >= '0' && sp[1] <= '9';
}

static int load_file(tok_t **out, const char *path) {
  FILE *f = fopen(path, "rb");
  char magic[4] = {0};
  if (f) {
    size_t r = fread(magic, 1, 4, f);
    (void)r;
    fclose(f);
  }
  if (memcmp(magic, "GGUF", 4) == 0) {
    gguf_file_t g;
    int rc = gguf_open(&g, path);
    if (rc) return rc;
    rc = tok_load_gguf(out, &g);
    gguf_close(&g);
    return rc;
  }
  /* GPT-2-style pairs are named by their vocab half; the merges file sits beside it. */
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  if (strcmp(base, "vocab.json") == 0 || strcmp(base, "encoder.json") == 0) {
    char merges[4096];
    int w = snprintf(merges, sizeof merges, "%.*s%s", (int)(base - path), path,
                     strcmp(base, "vocab.json") == 0 ? "merges.txt" : "vocab.bpe");
    if (w > 0 && (size_t)w < sizeof merges) return tok_load_gpt2_files(out, path, merges);
  }
  if (ends_with(path, ".json")) return tok_load_hf_json(out, path);
  if (ends_with(path, ".tiktoken") || is_tiktoken(path)) return tok_load_tiktoken(out, path);
  return tok_load_spm_model(out, path);
}

/* find_tiktoken: the first *.tiktoken file in DIR. */
static int find_tiktoken(const char *dir, char *buf, size_t n) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  struct dirent *e;
  int found = 0;
  while (!found && (e = readdir(d)))
    if (ends_with(e->d_name, ".tiktoken")) found = path_join(buf, n, dir, e->d_name) != NULL;
  closedir(d);
  return found;
}

static int load_dir(tok_t **out, const char *dir) {
  char a[4096], b[4096];
  if (path_join(a, sizeof a, dir, "tokenizer.json") && path_exists(a)) return tok_load_hf_json(out, a);
  if (path_join(a, sizeof a, dir, "tokenizer.model") && path_exists(a)) return load_file(out, a);
  if (path_join(a, sizeof a, dir, "encoder.json") && path_join(b, sizeof b, dir, "vocab.bpe") && path_exists(a))
    return tok_load_gpt2_files(out, a, b);
  if (path_join(a, sizeof a, dir, "vocab.json") && path_join(b, sizeof b, dir, "merges.txt") && path_exists(a))
    return tok_load_gpt2_files(out, a, b);
  if (find_tiktoken(dir, a, sizeof a)) return tok_load_tiktoken(out, a);
  log_error("%s: no tokenizer found (tokenizer.json, tokenizer.model, *.tiktoken, encoder.json + vocab.bpe or "
            "vocab.json + merges.txt)",
            dir);
  return STRATA_ENOTFOUND;
}

int tok_load(tok_t **out, const char *path) {
  *out = NULL;
  if (!path_exists(path)) {
    log_error("%s: no such tokenizer file or directory", path);
    return STRATA_ENOTFOUND;
  }
  int is_dir = path_is_dir(path);
  int rc = is_dir ? load_dir(out, path) : load_file(out, path);
  if (rc) return rc;
  /* Settings live beside the tokenizer files (a GGUF carries its own). */
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  if (!is_dir) {
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
  }
  int gguf = !is_dir && ends_with(path, ".gguf");
  if (!gguf) tok_apply_config(*out, dir);
  add_default_eos_ids(*out);
  return 0;
}
