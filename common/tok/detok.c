/* detok.c: incremental, UTF-8-safe detokenization and stop-string matching across token boundaries. */
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "common/tok/tok_int.h"

static int buf_append(char **out, size_t *len, size_t *cap, const char *p, size_t n) {
  if (*len + n + 1 > *cap) {
    size_t c = *cap ? *cap : 64;
    while (c < *len + n + 1) c *= 2;
    char *nb = realloc(*out, c);
    if (!nb) return STRATA_ENOMEM;
    *out = nb;
    *cap = c;
  }
  if (n) memcpy(*out + *len, p, n);
  *len += n;
  (*out)[*len] = 0;
  return 0;
}

static const char k_replacement[] = "\xef\xbf\xbd"; /* U+FFFD */

void detok_init(detok_t *d, const tok_t *t, int skip_special) {
  memset(d, 0, sizeof *d);
  d->tok = t;
  d->skip_special = skip_special;
}

/* utf8_need: the total length of a sequence starting with lead byte C, or 0 when C cannot start one. */
static int utf8_need(uint8_t c) {
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return 2;
  if (c >= 0xE0 && c <= 0xEF) return 3;
  if (c >= 0xF0 && c <= 0xF4) return 4;
  return 0;
}

/* is_prefix_ok: whether P[0..N) (N < need) can still become a valid character. */
static int is_prefix_ok(const uint8_t *p, int n) {
  for (int i = 1; i < n; i++)
    if ((p[i] & 0xC0) != 0x80) return 0;
  if (n >= 2 && ((p[0] == 0xE0 && p[1] < 0xA0) || (p[0] == 0xED && p[1] >= 0xA0) ||
                 (p[0] == 0xF0 && p[1] < 0x90) || (p[0] == 0xF4 && p[1] >= 0x90)))
    return 0;
  return 1;
}

/* emit_bytes: runs BYTES through the pending buffer, emitting complete characters and replacing
 * sequences that can no longer become valid with U+FFFD. */
static int emit_bytes(detok_t *d, const char *bytes, size_t n, char **out, size_t *len, size_t *cap) {
  int rc = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    uint8_t c = (uint8_t)bytes[i];
    if (d->n_pending == 0) {
      int need = utf8_need(c);
      if (need == 1) {
        /* Copy the ASCII run at once. */
        size_t j = i;
        while (j < n && (uint8_t)bytes[j] < 0x80) j++;
        rc = buf_append(out, len, cap, bytes + i, j - i);
        i = j - 1;
      } else if (need == 0) {
        rc = buf_append(out, len, cap, k_replacement, 3);
      } else {
        d->pending[d->n_pending++] = (char)c;
      }
      continue;
    }
    d->pending[d->n_pending++] = (char)c;
    int need = utf8_need((uint8_t)d->pending[0]);
    if (!is_prefix_ok((const uint8_t *)d->pending, d->n_pending)) {
      /* The lead byte is bad; re-scan the rest from scratch. */
      int k = d->n_pending;
      char tmp[8];
      memcpy(tmp, d->pending + 1, (size_t)k - 1);
      d->n_pending = 0;
      rc = buf_append(out, len, cap, k_replacement, 3);
      if (!rc) rc = emit_bytes(d, tmp, (size_t)k - 1, out, len, cap);
    } else if (d->n_pending == need) {
      rc = buf_append(out, len, cap, d->pending, (size_t)need);
      d->n_pending = 0;
    }
  }
  return rc;
}

int detok_push(detok_t *d, int32_t id, char **out, size_t *len, size_t *cap) {
  const tok_t *t = d->tok;
  const char *p;
  size_t n;
  int rc = tok_piece(t, id, &p, &n);
  if (rc) return rc;
  d->n_seen++;
  int special = tok_is_special(t, id);
  if (special && d->skip_special) return buf_append(out, len, cap, "", 0);
  /* The same leading-space rule as tok_decode: the first text token after leading specials. */
  if (!special && !d->seen_text && t->kind == TOK_KIND_SPM && t->add_space_prefix && n && p[0] == ' ') {
    p++;
    n--;
  }
  if (!special) d->seen_text = 1;
  if (!n) return buf_append(out, len, cap, "", 0);
  return emit_bytes(d, p, n, out, len, cap);
}

void detok_prime(detok_t *d, const int32_t *ids, int n) {
  for (int i = 0; i < n; i++)
    if (!tok_is_special(d->tok, ids[i])) d->seen_text = 1;
}

int detok_flush(detok_t *d, char **out, size_t *len, size_t *cap) {
  int rc = buf_append(out, len, cap, "", 0);
  if (!rc && d->n_pending) rc = buf_append(out, len, cap, k_replacement, 3);
  d->n_pending = 0;
  return rc;
}

/* ---- stop strings ---- */

int stop_init(stop_matcher_t *m, const char *const *stops, int n_stops) {
  memset(m, 0, sizeof *m);
  if (n_stops < 0 || (n_stops && !stops)) return STRATA_EINVAL;
  m->stops = calloc(n_stops ? (size_t)n_stops : 1, sizeof *m->stops);
  if (!m->stops) return STRATA_ENOMEM;
  for (int i = 0; i < n_stops; i++) {
    if (!stops[i] || !stops[i][0]) continue; /* an empty stop string never matches */
    if (!(m->stops[m->n_stops] = strdup(stops[i]))) {
      stop_deinit(m);
      return STRATA_ENOMEM;
    }
    size_t l = strlen(stops[i]);
    if (l > m->max_len) m->max_len = l;
    m->n_stops++;
  }
  return 0;
}

void stop_deinit(stop_matcher_t *m) {
  for (int i = 0; i < m->n_stops; i++) free(m->stops[i]);
  free(m->stops);
  free(m->held);
  memset(m, 0, sizeof *m);
}

/* earliest_match: the first position in H where a whole stop string occurs (ties: the shorter stop, which
 * completed first), or -1; *WHICH gets its index. */
static long earliest_match(const stop_matcher_t *m, const char *h, size_t n, int *which) {
  long best = -1;
  size_t best_len = 0;
  for (int i = 0; i < m->n_stops; i++) {
    size_t l = strlen(m->stops[i]);
    for (size_t p = 0; p + l <= n; p++) {
      if (best >= 0 && (long)p > best) break;
      if (memcmp(h + p, m->stops[i], l) == 0) {
        if (best < 0 || (long)p < best || l < best_len) {
          best = (long)p;
          best_len = l;
          *which = i;
        }
        break;
      }
    }
  }
  return best;
}

/* held_suffix: the length of the longest suffix of H that is a proper prefix of some stop string. */
static size_t held_suffix(const stop_matcher_t *m, const char *h, size_t n) {
  size_t start = n > m->max_len ? n - m->max_len + 1 : 0;
  for (size_t p = start; p < n; p++)
    for (int i = 0; i < m->n_stops; i++) {
      size_t l = strlen(m->stops[i]);
      if (n - p < l && memcmp(h + p, m->stops[i], n - p) == 0) return n - p;
    }
  return 0;
}

int stop_push(stop_matcher_t *m, const char *text, size_t len, char **out, size_t *out_len, size_t *out_cap) {
  if (m->stopped) return 1;
  int rc = buf_append(&m->held, &m->n_held, &m->cap_held, text, len);
  if (!rc) rc = buf_append(out, out_len, out_cap, "", 0);
  if (rc) return rc;
  int which = 0;
  long pos = earliest_match(m, m->held, m->n_held, &which);
  if (pos >= 0) {
    m->stopped = which + 1;
    rc = buf_append(out, out_len, out_cap, m->held, (size_t)pos);
    m->n_held = 0;
    return rc ? rc : 1;
  }
  size_t keep = held_suffix(m, m->held, m->n_held);
  size_t emit = m->n_held - keep;
  if ((rc = buf_append(out, out_len, out_cap, m->held, emit))) return rc;
  memmove(m->held, m->held + emit, keep);
  m->n_held = keep;
  return 0;
}

int stop_flush(stop_matcher_t *m, char **out, size_t *out_len, size_t *out_cap) {
  int rc = buf_append(out, out_len, out_cap, m->stopped ? "" : m->held ? m->held : "", m->stopped ? 0 : m->n_held);
  m->n_held = 0;
  return rc;
}
