/* bs_util.c: random numbers, clocks, byte buffers and the prompt word list of the serve harness. */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/serve/bs_int.h"
#include "common/status.h"

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void bs_rng_seed(bs_rng_t *r, uint64_t seed) {
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t bs_rng_next(bs_rng_t *r) {
  uint64_t *s = r->s;
  uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return out;
}

double bs_rng_uniform(bs_rng_t *r) { return (double)(bs_rng_next(r) >> 11) * 0x1.0p-53; }

double bs_rng_exp(bs_rng_t *r, double mean) { return -mean * log(1.0 - bs_rng_uniform(r)); }

static double rng_normal(bs_rng_t *r) {
  double u1 = 1.0 - bs_rng_uniform(r), u2 = bs_rng_uniform(r);
  return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* Marsaglia and Tsang; shape < 1 uses the boost x * U^(1/shape). */
double bs_rng_gamma(bs_rng_t *r, double shape, double scale) {
  if (shape < 1.0) {
    double u = bs_rng_uniform(r);
    return bs_rng_gamma(r, shape + 1.0, scale) * pow(1.0 - u, 1.0 / shape);
  }
  double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
  for (;;) {
    double x = rng_normal(r), v = 1.0 + c * x;
    if (v <= 0) continue;
    v = v * v * v;
    double u = bs_rng_uniform(r);
    if (log(1.0 - u) < 0.5 * x * x + d - d * v + d * log(v)) return d * v * scale;
  }
}

int bs_rng_range(bs_rng_t *r, int lo, int hi) {
  if (hi <= lo) return lo;
  return lo + (int)(bs_rng_next(r) % (uint64_t)(hi - lo + 1));
}

double bs_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int bs_buf_reserve(bs_buf_t *b, size_t extra) {
  if (b->len + extra + 1 <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra + 1) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) return STRATA_ENOMEM;
  b->p = p;
  b->cap = cap;
  return 0;
}

int bs_buf_append(bs_buf_t *b, const void *data, size_t n) {
  if (bs_buf_reserve(b, n)) return STRATA_ENOMEM;
  memcpy(b->p + b->len, data, n);
  b->len += n;
  b->p[b->len] = 0;
  return 0;
}

int bs_buf_puts(bs_buf_t *b, const char *s) { return bs_buf_append(b, s, strlen(s)); }

int bs_buf_printf(bs_buf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0 || bs_buf_reserve(b, (size_t)n)) return STRATA_ENOMEM;
  va_start(ap, fmt);
  vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return 0;
}

int bs_buf_json_str(bs_buf_t *b, const char *s) {
  if (bs_buf_reserve(b, strlen(s) + 2)) return STRATA_ENOMEM;
  int rc = bs_buf_append(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p && !rc; p++) {
    char esc[8];
    switch (*p) {
    case '"': rc = bs_buf_append(b, "\\\"", 2); break;
    case '\\': rc = bs_buf_append(b, "\\\\", 2); break;
    case '\n': rc = bs_buf_append(b, "\\n", 2); break;
    case '\r': rc = bs_buf_append(b, "\\r", 2); break;
    case '\t': rc = bs_buf_append(b, "\\t", 2); break;
    default:
      if (*p < 0x20) {
        snprintf(esc, sizeof esc, "\\u%04x", *p);
        rc = bs_buf_append(b, esc, 6);
      } else {
        rc = bs_buf_append(b, p, 1);
      }
    }
  }
  return rc ? rc : bs_buf_append(b, "\"", 1);
}

void bs_buf_free(bs_buf_t *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

double bs_parse_duration_s(const char *s) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || v < 0 || !isfinite(v)) return -1;
  if (!strcmp(end, "") || !strcmp(end, "s")) return v;
  if (!strcmp(end, "ms")) return v / 1000.0;
  if (!strcmp(end, "us")) return v / 1e6;
  if (!strcmp(end, "m")) return v * 60.0;
  if (!strcmp(end, "h")) return v * 3600.0;
  return -1;
}

/* NOTE: lowercase, common and short, so that " word" is a single token in GPT-2, Llama and
 * similar vocabularies; the stub server counts whitespace-separated words as tokens. */
const char *const bs_words[] = {
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at",
    "from", "his", "it", "an", "were", "are", "which", "this", "be", "or", "has", "had", "first",
    "one", "their", "its", "new", "after", "but", "who", "not", "they", "have", "her", "she",
    "two", "been", "other", "when", "there", "all", "during", "into", "school", "time", "may",
    "years", "more", "most", "only", "over", "city", "some", "world", "would", "where", "later",
    "up", "such", "used", "many", "can", "state", "about", "national", "out", "known", "university",
    "united", "then", "made", "also", "between", "both", "these", "under", "team", "him", "while",
    "three", "season", "since", "name", "series", "through", "year", "being", "very", "off",
    "house", "film", "game", "book", "music", "water", "light", "day", "long", "small", "great",
    "high", "old", "same", "good", "last", "part", "place", "work", "life", "end", "back", "line",
    "home", "war", "side", "four", "five", "well", "best", "found", "left", "near", "began", "early",
    "north", "south", "west", "east", "river", "road", "church", "group", "party", "power", "form",
    "army", "town", "area", "body", "land", "art", "role", "court", "club", "league", "family",
    "king", "small", "age", "public", "line", "media", "police", "force", "history", "center",
    "court", "band", "song", "album", "record", "radio", "show", "story", "field", "point", "head",
    "hand", "eye", "word", "way", "man", "men", "women", "people", "child", "girl", "boy", "wife",
    "son", "father", "mother", "friend", "love", "death", "war", "peace", "sea", "island", "lake",
    "hill", "tree", "rock", "stone", "fire", "air", "sun", "moon", "star", "sky", "rain", "snow",
    "wind", "cold", "hot", "red", "blue", "green", "black", "white", "gold", "iron", "wood", "glass",
    "paper", "card", "bank", "money", "price", "trade", "market", "plan", "idea", "fact", "case",
};
const int bs_n_words = (int)(sizeof bs_words / sizeof bs_words[0]);
