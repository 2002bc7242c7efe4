/* tok_int.h: the tokenizer's internal representation, shared by the loaders, the encoder and tests. */
#ifndef STRATA_TOK_INT_H
#define STRATA_TOK_INT_H

#include <stddef.h>
#include <stdint.h>

#include "common/tok/tok.h"

typedef enum {
  TOK_KIND_SPM = 0,  /* SentencePiece-style: U+2581 for spaces, byte fallback <0xNN> */
  TOK_KIND_BYTE_BPE, /* byte-level BPE (GPT-2 / Llama 3 / Qwen2): pieces are raw bytes */
  TOK_KIND_BYTES,    /* dummy byte tokenizer */
} tok_kind_t;

/* How BPE picks the next pair to merge. */
typedef enum {
  TOK_MERGE_SCORE = 0, /* any pair whose concatenation is a token; highest token score first (SentencePiece,
                          tiktoken with score = -rank) */
  TOK_MERGE_TABLE,     /* only pairs listed in a merges table, lowest rank first (HF / GPT-2 merges) */
} tok_merge_mode_t;

/* Token types (GGUF / SentencePiece numbering). */
enum {
  TOK_TYPE_NORMAL = 1,
  TOK_TYPE_UNKNOWN = 2,
  TOK_TYPE_CONTROL = 3,
  TOK_TYPE_USER_DEFINED = 4,
  TOK_TYPE_UNUSED = 5,
  TOK_TYPE_BYTE = 6,
};

/* Pre-tokenizer split patterns. */
typedef enum {
  TOK_PRE_NONE = 0,
  TOK_PRE_GPT2,
  TOK_PRE_LLAMA3,
  TOK_PRE_QWEN2,
  TOK_PRE_CUSTOM, /* a pattern from tokenizer.json */
} tok_pre_t;

typedef struct {
  char *text;     /* as matched against input: raw bytes for byte-level, U+2581-escaped for SPM (owned) */
  uint32_t len;
  float score;
  uint8_t type;   /* TOK_TYPE_* */
  uint8_t special; /* matched by TOK_PARSE_SPECIAL (control, user-defined, added tokens) */
  char *piece;    /* decoded bytes (owned; may alias text when equal) */
  uint32_t piece_len;
} tok_entry_t;

/* String -> id map (open addressing, xxHash). */
typedef struct {
  int32_t *slots; /* id + 1, 0 = empty */
  uint64_t mask;
} tok_strmap_t;

/* (left id, right id) -> (rank, merged id). */
typedef struct {
  uint64_t *keys; /* (a << 32 | b) + 1, 0 = empty */
  int32_t *rank;
  int32_t *merged;
  uint64_t mask;
  int32_t n;
} tok_pairmap_t;

static inline uint64_t tok_pair_hash(uint64_t key) { return (key * 0x9E3779B97F4A7C15ull) >> 17; }

struct pcre2_real_code_8;

struct tok {
  tok_kind_t kind;
  tok_merge_mode_t merge_mode;
  int n_vocab;
  tok_entry_t *vocab;
  tok_strmap_t map;
  tok_pairmap_t merges;
  int32_t byte_ids[256]; /* SPM: <0xNN> tokens; byte-level: the one-byte tokens; -1 when absent */
  int32_t *specials;     /* ids matched under TOK_PARSE_SPECIAL, longest text first */
  int n_specials;
  uint8_t special_first[256]; /* whether some special token starts with this byte */
  uint32_t special_lens[32];  /* distinct special-token lengths, longest first */
  int n_special_lens;         /* 0 when there are too many distinct lengths: scan the list instead */
  int32_t bos, eos, unk;
  int add_bos;
  int add_space_prefix;  /* SPM dummy prefix */
  int whole_word_first;  /* a pre-token that is itself a token is emitted whole (tiktoken, Llama 3) */
  int32_t eos_ids[16];
  int n_eos_ids;
  char *chat_template;
  tok_pre_t pre;
  struct pcre2_real_code_8 *re;
};

/* ---- building (tok.c) ---- */
/* tok_alloc: an empty tokenizer of N_VOCAB entries, all -1 ids. */
int tok_alloc(tok_t **out, tok_kind_t kind, int n_vocab);
/* tok_set_entry: entry ID gets TEXT (copied); the decoded piece is derived at tok_finish. */
int tok_set_entry(tok_t *t, int32_t id, const char *text, size_t len, float score, int type);
/* tok_finish: builds the maps, pieces and special list, compiles the pre-tokenizer. PATH for errors. */
int tok_finish(tok_t *t, const char *path, const char *custom_regex);
/* tok_add_merge: registers (a, b) with RANK; the merged token is looked up by concatenating texts. Returns 0,
 * or 1 when a piece is missing from the vocab (the merge is skipped). */
int tok_add_merge(tok_t *t, int32_t a, int32_t b, int32_t rank);
int tok_pairmap_init(tok_pairmap_t *m, size_t n);
int32_t tok_map_find(const tok_t *t, const char *s, size_t len);
void tok_add_eos_id(tok_t *t, int32_t id);

/* ---- encoding helpers (tok_bpe.c) ---- */
typedef struct {
  int32_t *v;
  int n, cap;
} tok_ids_t;
int tok_ids_push(tok_ids_t *ids, int32_t id);
/* Reusable working memory of tok_bpe_word (one per encode call, not shared between threads). */
typedef struct tok_scratch tok_scratch_t;
tok_scratch_t *tok_scratch_new(void);
void tok_scratch_free(tok_scratch_t *s);
/* tok_bpe_word: BPE over S[0..N) (one pre-token, or a whole SPM text), appending ids. */
int tok_bpe_word(const tok_t *t, tok_scratch_t *sc, const char *s, size_t n, tok_ids_t *out);

/* ---- pre-tokenizer (tok_pretok.c) ---- */
const char *tok_pre_pattern(tok_pre_t pre);
int tok_pre_compile(tok_t *t, const char *pattern, const char *path);
void tok_pre_free(tok_t *t);
/* tok_pre_split: calls FN for each pre-token of S[0..N) in order (gaps between matches included). */
int tok_pre_split(const tok_t *t, const char *s, size_t n,
                  int (*fn)(void *ctx, const char *p, size_t len), void *ctx);
/* Byte-level BPE's printable mapping: byte -> code point, and its inverse (-1 when not in the map). */
uint32_t tok_byte_to_cp(uint8_t b);
int tok_cp_to_byte(uint32_t cp);
/* tok_utf8_len: the length of the (possibly invalid) UTF-8 character at S (1 for a bad byte). */
size_t tok_utf8_len(const char *s, size_t n);

/* ---- loaders (tok_load.c, tok_spm.c) ---- */
int tok_load_hf_json(tok_t **out, const char *path);
int tok_load_spm_model(tok_t **out, const char *path);
int tok_load_tiktoken(tok_t **out, const char *path);
int tok_load_gpt2_files(tok_t **out, const char *vocab_path, const char *merges_path);
/* tok_apply_config: reads tokenizer_config.json / generation_config.json in DIR (absent files are fine). */
int tok_apply_config(tok_t *t, const char *dir);

#endif
