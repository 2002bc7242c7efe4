/* tok_pretok.c: pre-tokenizer split patterns on PCRE2 (UTF + UCP, JIT when available) and the byte-level
 * BPE byte <-> printable code point mapping. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "common/log.h"
#include "common/status.h"
#include "common/tok/tok_int.h"

/* NOTE: these split patterns are data published with the GPT-2 encoder, Llama 3's tokenizer and Qwen2's
 * tokenizer. Llama 3 and Qwen2 differ only in digit grouping (\p{N}{1,3} vs \p{N}). */
static const char k_gpt2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char k_llama3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char k_qwen2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

const char *tok_pre_pattern(tok_pre_t pre) {
  switch (pre) {
    case TOK_PRE_GPT2: return k_gpt2;
    case TOK_PRE_LLAMA3: return k_llama3;
    case TOK_PRE_QWEN2: return k_qwen2;
    default: return NULL;
  }
}

int tok_pre_compile(tok_t *t, const char *pattern, const char *path) {
  int err;
  PCRE2_SIZE off;
  /* MATCH_INVALID_UTF: any bytes may come in; invalid sequences are never matched and end up in gaps. */
  pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                                 PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, NULL);
  if (!re) {
    PCRE2_UCHAR msg[160];
    pcre2_get_error_message(err, msg, sizeof msg);
    log_error("%s: pre-tokenizer pattern does not compile at offset %zu: %s", path, (size_t)off, (char *)msg);
    return STRATA_EFORMAT;
  }
  (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional: the interpreter is the fallback */
  t->re = (struct pcre2_real_code_8 *)re;
  return 0;
}

void tok_pre_free(tok_t *t) {
  if (t->re) pcre2_code_free((pcre2_code *)t->re);
  t->re = NULL;
}

int tok_pre_split(const tok_t *t, const char *s, size_t n, int (*fn)(void *ctx, const char *p, size_t len),
                  void *ctx) {
  if (!t->re) return n ? fn(ctx, s, n) : 0;
  const pcre2_code *re = (const pcre2_code *)t->re;
  pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
  if (!md) return STRATA_ENOMEM;
  int rc = 0;
  size_t pos = 0, emitted = 0;
  while (pos < n) {
    int m = pcre2_match(re, (PCRE2_SPTR)s, n, pos, 0, md, NULL);
    if (m == PCRE2_ERROR_JIT_STACKLIMIT) m = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_JIT, md, NULL);
    if (m == PCRE2_ERROR_NOMATCH) break;
    if (m < 0) {
      log_error("pre-tokenizer: PCRE2 match failed with code %d", m);
      rc = STRATA_EINTERNAL;
      break;
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    size_t a = ov[0], b = ov[1];
    if (a > emitted && (rc = fn(ctx, s + emitted, a - emitted))) break; /* unmatched gap */
    if (b > a && (rc = fn(ctx, s + a, b - a))) break;
    emitted = b > a ? b : a;
    /* An empty match must still make progress: step over one character. */
    pos = b > a ? b : a + tok_utf8_len(s + a, n - a);
  }
  if (!rc && emitted < n) rc = fn(ctx, s + emitted, n - emitted);
  pcre2_match_data_free(md);
  return rc;
}

/* GPT-2's mapping: printable Latin-1 bytes stand for themselves, the other 68 bytes take code points from
 * U+0100 upwards in byte order, so every byte has a visible, non-space character. */
static int byte_is_printable(int b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174); }

/* The 68 unprintable bytes are 0..32, 127..160 and 173, numbered k = 0..67 in that order. */
uint32_t tok_byte_to_cp(uint8_t b) {
  if (byte_is_printable(b)) return b;
  if (b <= 32) return 256u + b;
  if (b <= 160) return 256u + 33 + (b - 127u);
  return 256u + 67; /* 173 */
}

int tok_cp_to_byte(uint32_t cp) {
  if (cp < 256) return byte_is_printable((int)cp) ? (int)cp : -1;
  uint32_t k = cp - 256;
  if (k <= 32) return (int)k;
  if (k <= 66) return (int)(127 + k - 33);
  return k == 67 ? 173 : -1;
}

size_t tok_utf8_len(const char *s, size_t n) {
  const uint8_t *p = (const uint8_t *)s;
  size_t need;
  if (p[0] < 0x80) return 1;
  if (p[0] >= 0xC2 && p[0] <= 0xDF) need = 2;
  else if (p[0] >= 0xE0 && p[0] <= 0xEF) need = 3;
  else if (p[0] >= 0xF0 && p[0] <= 0xF4) need = 4;
  else return 1;
  if (need > n) return 1;
  for (size_t i = 1; i < need; i++)
    if ((p[i] & 0xC0) != 0x80) return 1;
  /* Overlongs and surrogates are invalid: treat the lead byte alone. */
  if (need == 3 && ((p[0] == 0xE0 && p[1] < 0xA0) || (p[0] == 0xED && p[1] >= 0xA0))) return 1;
  if (need == 4 && ((p[0] == 0xF0 && p[1] < 0x90) || (p[0] == 0xF4 && p[1] >= 0x90))) return 1;
  return need;
}
