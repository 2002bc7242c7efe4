/* tok.h: tokenizers, shared by the coordinator and `strata serve` (text never reaches workers).
 *
 * Two families: SentencePiece-style BPE with byte fallback (Llama 2, Mistral: from a GGUF vocab,
 * tokenizer.json or tokenizer.model) and byte-level BPE (GPT-2, Llama 3, Qwen2: from tokenizer.json,
 * GGUF, tiktoken files, or encoder.json + vocab.bpe), with special and added tokens. Pre-tokenizer
 * split patterns run on PCRE2. Plus a byte tokenizer for dummy models.
 *
 * A tok_t is immutable after loading and safe to use from several threads. */
#ifndef STRATA_TOK_H
#define STRATA_TOK_H

#include <stddef.h>
#include <stdint.h>

#include "common/gguf.h"

typedef struct tok tok_t;

enum {
  TOK_ADD_BOS = 1 << 0,       /* prepend BOS (when the tokenizer has one and is configured to) */
  TOK_PARSE_SPECIAL = 1 << 1, /* text like "<|eot_id|>" becomes the special token, not its characters */
};

/* tok_load: a tokenizer from PATH: a GGUF file (its embedded vocab), a Hugging Face model directory
 * (tokenizer.json, else tokenizer.model; plus tokenizer_config.json), a tokenizer.json, a
 * SentencePiece .model, a tiktoken file, or a directory with encoder.json + vocab.bpe / vocab.json +
 * merges.txt. Returns 0 or a STRATA_E* code with one logged error naming the file. */
int tok_load(tok_t **out, const char *path);
/* tok_load_gguf: from an already open GGUF file. */
int tok_load_gguf(tok_t **out, const gguf_file_t *g);
/* tok_new_bytes: a byte-level tokenizer for dummy models: ids 0..255 are bytes, then BOS and EOS;
 * VOCAB_SIZE >= 258 (ids past 257 decode to nothing). */
int tok_new_bytes(tok_t **out, int vocab_size);
void tok_free(tok_t *t);

/* tok_encode: TEXT (LEN bytes, any bytes) to ids (malloc'd in *IDS, count in *N). FLAGS: TOK_*. */
int tok_encode(const tok_t *t, const char *text, size_t len, int flags, int32_t **ids, int *n);

/* tok_piece: the bytes token ID stands for (byte-fallback and byte-level tokens decoded to raw bytes;
 * SentencePiece's U+2581 turned into a space). Specials give their text ("<s>"). */
int tok_piece(const tok_t *t, int32_t id, const char **bytes, size_t *len);

/* tok_decode: IDS to text (malloc'd, NUL-terminated). SKIP_SPECIAL drops special/control tokens.
 * SentencePiece's dummy-prefix space on the first token is removed, as the reference decoders do. */
int tok_decode(const tok_t *t, const int32_t *ids, int n, int skip_special, char **text, size_t *len);

int tok_vocab_size(const tok_t *t);
int tok_bos(const tok_t *t); /* -1 if none */
int tok_eos(const tok_t *t); /* -1 if none */
/* tok_add_bos_default: whether the model's config asks for BOS by default (tokenizer_config.json
 * add_bos_token, GGUF tokenizer.ggml.add_bos_token, family default otherwise). */
int tok_add_bos_default(const tok_t *t);
int tok_is_special(const tok_t *t, int32_t id);
/* tok_find: the id of a token with exactly this text (specials included), or -1. */
int32_t tok_find(const tok_t *t, const char *text);
/* tok_eos_ids: every id that ends generation per the tokenizer config (eos, eot, im_end...). */
int tok_eos_ids(const tok_t *t, int32_t *out, int max);
/* tok_chat_template: the chat template from tokenizer_config.json or GGUF tokenizer.chat_template,
 * or NULL. */
const char *tok_chat_template(const tok_t *t);

/* ---- incremental detokenization ----
 * Feeds ids one at a time and emits only complete UTF-8 text: a partial multi-byte character is held
 * back until its last byte arrives. Handles the SentencePiece leading-space rule like tok_decode, so
 * the concatenation of everything emitted equals tok_decode of all ids. */
typedef struct {
  const tok_t *tok;
  int skip_special;
  int n_seen;      /* ids fed so far */
  char pending[8]; /* bytes of an incomplete UTF-8 sequence */
  int n_pending;
  int seen_text;   /* a non-special token was seen (the SentencePiece leading space is dropped only once) */
} detok_t;

void detok_init(detok_t *d, const tok_t *t, int skip_special);
/* detok_push: appends the text that ID completes to OUT (growing *OUT and *CAP with realloc; *LEN is the
 * used length). */
int detok_push(detok_t *d, int32_t id, char **out, size_t *len, size_t *cap);
/* detok_prime: tells the detokenizer about the prompt (IDS, not emitted), so that generated text
 * continuing a prompt keeps its leading space (the SentencePiece rule applies only at the start). */
void detok_prime(detok_t *d, const int32_t *ids, int n);
/* detok_flush: emits what is held back (invalid bytes as U+FFFD) at the end of a stream. */
int detok_flush(detok_t *d, char **out, size_t *len, size_t *cap);

/* ---- stop strings ----
 * Streams text through a set of stop strings that may span tokens. Text that could be the start of
 * a stop string is held back until it is known not to be; on a match, the text before the stop
 * string is released and the matcher reports the stop. */
typedef struct {
  char **stops;
  int n_stops;
  size_t max_len;
  char *held;
  size_t n_held, cap_held;
  int stopped; /* index of the matched stop string + 1, or 0 */
} stop_matcher_t;

int stop_init(stop_matcher_t *m, const char *const *stops, int n_stops);
void stop_deinit(stop_matcher_t *m);
/* stop_push: feeds TEXT; appends what is safe to emit to OUT (as detok_push). Returns 1 when a stop
 * string matched (nothing after it is emitted, now or later), else 0; or a negative error. */
int stop_push(stop_matcher_t *m, const char *text, size_t len, char **out, size_t *out_len, size_t *out_cap);
/* stop_flush: at the end of generation (no stop matched), releases the held text. */
int stop_flush(stop_matcher_t *m, char **out, size_t *out_len, size_t *out_cap);

#endif
