/* chat_builtin.c: the filters, tests, string/dict methods and global functions chat templates use. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/chat/chat_int.h"
#include "common/status.h"

#define RANGE_MAX_ITEMS ((int64_t)1 << 20)

/* ---- helpers ---- */

static int full(chat_render_t *r, const chat_node_t *at, int rc) {
  if (rc == STRATA_ENOMEM) return chat_rerr(r, at, rc, "out of memory");
  return chat_rerr(r, at, STRATA_EFULL, "render limit exceeded (output size or memory)");
}

static int mkstr(chat_render_t *r, const chat_node_t *at, const char *p, size_t n, chat_value_t *out) {
  char *s = chat_arena_strndup(&r->arena, p ? p : "", n);
  if (!s) return full(r, at, STRATA_EFULL);
  *out = cv_str(s, n);
  return 0;
}

/* Finishes a string built in a malloc'd buffer: copies it into the arena and frees the buffer. */
static int take_buf(chat_render_t *r, const chat_node_t *at, chat_buf_t *b, int rc, chat_value_t *out) {
  if (rc == 0) rc = mkstr(r, at, b->p, b->n, out);
  else rc = full(r, at, rc);
  free(b->p);
  return rc;
}

int chat_to_string(chat_render_t *r, chat_value_t v, chat_value_t *out) {
  if (v.type == CV_STR) {
    *out = v;
    return 0;
  }
  chat_buf_t b = {0};
  int rc = chat_value_str(&b, v);
  return take_buf(r, NULL, &b, rc, out);
}

/* The argument at position IDX or named NAME, or NULL. */
static const chat_value_t *arg(const chat_value_t *args, size_t n_args, const char **kwnames, const chat_value_t *kw,
                               size_t n_kw, size_t idx, const char *name) {
  if (idx < n_args) return &args[idx];
  for (size_t i = 0; i < n_kw && name; i++)
    if (strcmp(kwnames[i], name) == 0) return &kw[i];
  return NULL;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

static bool in_set(char c, const chat_value_t *chars) {
  if (!chars || chars->type != CV_STR) return is_space(c);
  return memchr(chars->u.s.p, c, chars->u.s.n) != NULL;
}

static chat_value_t strip(chat_value_t s, const chat_value_t *chars, bool left, bool right) {
  const char *p = s.u.s.p;
  size_t b = 0, e = s.u.s.n;
  while (left && b < e && in_set(p[b], chars)) b++;
  while (right && e > b && in_set(p[e - 1], chars)) e--;
  return cv_str(p + b, e - b);
}

static size_t utf8_count(const char *p, size_t n) {
  size_t c = 0;
  for (size_t i = 0; i < n; i++) c += ((unsigned char)p[i] & 0xc0) != 0x80;
  return c;
}

/* Case mapping: MODE 'u' upper, 'l' lower, 'c' capitalize, 't' title (ASCII letters only). */
static int map_case(chat_render_t *r, const chat_node_t *at, chat_value_t s, char mode, chat_value_t *out) {
  char *d = chat_arena_alloc(&r->arena, s.u.s.n + 1);
  if (!d) return full(r, at, STRATA_EFULL);
  bool prev_alpha = false;
  for (size_t i = 0; i < s.u.s.n; i++) {
    unsigned char c = (unsigned char)s.u.s.p[i];
    bool up = mode == 'u' || (mode == 'c' && i == 0) || (mode == 't' && !prev_alpha);
    d[i] = (char)(up ? toupper(c) : tolower(c));
    prev_alpha = isalpha(c) != 0;
  }
  *out = cv_str(d, s.u.s.n);
  return 0;
}

static int replace(chat_render_t *r, const chat_node_t *at, chat_value_t s, chat_value_t from, chat_value_t to,
                   int64_t count, chat_value_t *out) {
  if (from.type != CV_STR || to.type != CV_STR)
    return chat_rerr(r, at, STRATA_EFORMAT, "replace() needs string arguments");
  chat_buf_t b = {0};
  int rc = 0;
  size_t i = 0;
  int64_t done = 0;
  while (i <= s.u.s.n && rc == 0) {
    bool hit = (count < 0 || done < count) && i + from.u.s.n <= s.u.s.n &&
               memcmp(s.u.s.p + i, from.u.s.p, from.u.s.n) == 0;
    if (hit) {
      rc = chat_buf_put(&b, to.u.s.p, to.u.s.n);
      done++;
      if (from.u.s.n == 0) {
        if (i < s.u.s.n && rc == 0) rc = chat_buf_putc(&b, s.u.s.p[i]);
        i++;
      } else {
        i += from.u.s.n;
      }
    } else {
      if (i < s.u.s.n) rc = chat_buf_putc(&b, s.u.s.p[i]);
      i++;
    }
  }
  return take_buf(r, at, &b, rc, out);
}

static int split(chat_render_t *r, const chat_node_t *at, chat_value_t s, const chat_value_t *sep, int64_t maxsplit,
                 chat_value_t *out) {
  chat_list_t *l = chat_list_new(&r->arena, 0);
  if (!l) return full(r, at, STRATA_EFULL);
  const char *p = s.u.s.p;
  size_t n = s.u.s.n, i = 0;
  int rc = 0;
  if (!sep || sep->type == CV_NONE) { /* runs of whitespace, ends ignored */
    while (rc == 0) {
      while (i < n && is_space(p[i])) i++;
      if (i >= n) break;
      size_t b = i;
      if (maxsplit >= 0 && (int64_t)l->n >= maxsplit) {
        size_t e = n;
        while (e > b && is_space(p[e - 1])) e--;
        rc = chat_list_push(&r->arena, l, cv_str(p + b, e - b));
        break;
      }
      while (i < n && !is_space(p[i])) i++;
      rc = chat_list_push(&r->arena, l, cv_str(p + b, i - b));
    }
  } else {
    if (sep->type != CV_STR || sep->u.s.n == 0) return chat_rerr(r, at, STRATA_EFORMAT, "split() needs a non-empty separator");
    size_t b = 0;
    for (i = 0; i + sep->u.s.n <= n && rc == 0;) {
      if ((maxsplit < 0 || (int64_t)l->n < maxsplit) && memcmp(p + i, sep->u.s.p, sep->u.s.n) == 0) {
        rc = chat_list_push(&r->arena, l, cv_str(p + b, i - b));
        i += sep->u.s.n;
        b = i;
      } else {
        i++;
      }
    }
    if (rc == 0) rc = chat_list_push(&r->arena, l, cv_str(p + b, n - b));
  }
  if (rc) return full(r, at, rc);
  out->type = CV_LIST;
  out->u.list = l;
  return 0;
}

static bool affix(chat_value_t s, chat_value_t x, bool start) {
  if (x.type == CV_LIST) {
    for (size_t i = 0; i < x.u.list->n; i++)
      if (affix(s, x.u.list->items[i], start)) return true;
    return false;
  }
  if (x.type != CV_STR || x.u.s.n > s.u.s.n) return false;
  return memcmp(start ? s.u.s.p : s.u.s.p + s.u.s.n - x.u.s.n, x.u.s.p, x.u.s.n) == 0;
}

static int to_list(chat_render_t *r, const chat_node_t *at, chat_value_t v, chat_list_t **out) {
  chat_list_t *l;
  if (v.type == CV_LIST) {
    *out = v.u.list;
    return 0;
  }
  if (!(l = chat_list_new(&r->arena, 0))) return full(r, at, STRATA_EFULL);
  if (v.type == CV_DICT) {
    for (size_t i = 0; i < v.u.dict->n; i++)
      if (chat_list_push(&r->arena, l, v.u.dict->keys[i])) return full(r, at, STRATA_EFULL);
  } else if (v.type == CV_STR) {
    for (size_t i = 0; i < v.u.s.n;) {
      size_t e = i + 1;
      while (e < v.u.s.n && ((unsigned char)v.u.s.p[e] & 0xc0) == 0x80) e++;
      if (chat_list_push(&r->arena, l, cv_str(v.u.s.p + i, e - i))) return full(r, at, STRATA_EFULL);
      i = e;
    }
  } else if (v.type != CV_UNDEF && v.type != CV_NONE) {
    return chat_rerr(r, at, STRATA_EFORMAT, "a %s is not iterable", chat_type_name(v));
  }
  *out = l;
  return 0;
}

/* Looks up a dotted attribute path ("function.name") in V. */
static chat_value_t attr_path(chat_value_t v, chat_value_t path) {
  if (path.type != CV_STR) return cv_undef();
  const char *p = path.u.s.p, *end = p + path.u.s.n;
  while (p < end) {
    const char *dot = memchr(p, '.', (size_t)(end - p));
    size_t n = dot ? (size_t)(dot - p) : (size_t)(end - p);
    if (v.type != CV_DICT) return cv_undef();
    chat_value_t *x = chat_dict_get(v.u.dict, p, n);
    if (!x) return cv_undef();
    v = *x;
    p += n + (dot ? 1 : 0);
  }
  return v;
}

static int items_of(chat_render_t *r, const chat_node_t *at, chat_value_t v, chat_value_t *out) {
  chat_list_t *l = chat_list_new(&r->arena, v.type == CV_DICT ? v.u.dict->n : 0);
  if (!l) return full(r, at, STRATA_EFULL);
  if (v.type == CV_DICT) {
    for (size_t i = 0; i < v.u.dict->n; i++) {
      chat_list_t *pair = chat_list_new(&r->arena, 2);
      if (!pair) return full(r, at, STRATA_EFULL);
      pair->items[0] = v.u.dict->keys[i];
      pair->items[1] = v.u.dict->vals[i];
      pair->n = 2;
      l->items[l->n++] = (chat_value_t){.type = CV_LIST, .u.list = pair};
    }
  } else if (v.type != CV_UNDEF) {
    return chat_rerr(r, at, STRATA_EFORMAT, "items() needs a dict, not %s", chat_type_name(v));
  }
  out->type = CV_LIST;
  out->u.list = l;
  return 0;
}

/* ---- tests ---- */

int chat_call_test(chat_render_t *r, const chat_node_t *at, chat_value_t v, const chat_value_t *args, size_t n_args,
                   bool *out) {
  const char *t = at->str;
  const chat_value_t *a = n_args ? &args[0] : NULL;
  int cmp;
  if (!strcmp(t, "defined")) *out = v.type != CV_UNDEF;
  else if (!strcmp(t, "undefined")) *out = v.type == CV_UNDEF;
  else if (!strcmp(t, "none")) *out = v.type == CV_NONE;
  else if (!strcmp(t, "string")) *out = v.type == CV_STR;
  else if (!strcmp(t, "number")) *out = v.type == CV_INT || v.type == CV_FLOAT || v.type == CV_BOOL;
  else if (!strcmp(t, "integer")) *out = v.type == CV_INT;
  else if (!strcmp(t, "float")) *out = v.type == CV_FLOAT;
  else if (!strcmp(t, "boolean")) *out = v.type == CV_BOOL;
  else if (!strcmp(t, "true")) *out = v.type == CV_BOOL && v.u.b;
  else if (!strcmp(t, "false")) *out = v.type == CV_BOOL && !v.u.b;
  else if (!strcmp(t, "mapping")) *out = v.type == CV_DICT;
  else if (!strcmp(t, "iterable") || !strcmp(t, "sequence"))
    *out = v.type == CV_LIST || v.type == CV_STR || (v.type == CV_DICT && !v.u.dict->is_ns);
  else if (!strcmp(t, "callable")) *out = v.type == CV_FUNC || v.type == CV_MACRO;
  else if (!strcmp(t, "lower") || !strcmp(t, "upper")) {
    *out = v.type == CV_STR;
    for (size_t i = 0; *out && i < v.u.s.n; i++)
      if (t[0] == 'l' ? isupper((unsigned char)v.u.s.p[i]) : islower((unsigned char)v.u.s.p[i])) *out = false;
  } else if (!strcmp(t, "even") || !strcmp(t, "odd")) {
    if (v.type != CV_INT) return chat_rerr(r, at, STRATA_EFORMAT, "'%s' test needs an integer", t);
    *out = ((v.u.i % 2) == 0) == (t[0] == 'e');
  } else if (!a) {
    return chat_rerr(r, at, STRATA_EFORMAT, "unknown test '%s' (or it needs an argument)", t);
  } else if (!strcmp(t, "divisibleby")) {
    if (v.type != CV_INT || a->type != CV_INT || a->u.i == 0)
      return chat_rerr(r, at, STRATA_EFORMAT, "'divisibleby' needs non-zero integers");
    *out = v.u.i % a->u.i == 0;
  } else if (!strcmp(t, "eq") || !strcmp(t, "equalto") || !strcmp(t, "==") || !strcmp(t, "sameas")) {
    *out = chat_value_equal(v, *a) && (strcmp(t, "sameas") || v.type == a->type);
  } else if (!strcmp(t, "ne")) {
    *out = !chat_value_equal(v, *a);
  } else if (!strcmp(t, "in")) {
    chat_list_t *l = NULL;
    *out = false;
    if (a->type == CV_STR && v.type == CV_STR) {
      for (size_t i = 0; i + v.u.s.n <= a->u.s.n && !*out; i++) *out = !memcmp(a->u.s.p + i, v.u.s.p, v.u.s.n);
    } else {
      int rc = to_list(r, at, *a, &l);
      if (rc) return rc;
      for (size_t i = 0; i < l->n && !*out; i++) *out = chat_value_equal(v, l->items[i]);
    }
  } else if (!strcmp(t, "lt") || !strcmp(t, "le") || !strcmp(t, "gt") || !strcmp(t, "ge") ||
             !strcmp(t, "lessthan") || !strcmp(t, "greaterthan")) {
    bool nums = (v.type == CV_INT || v.type == CV_FLOAT) && (a->type == CV_INT || a->type == CV_FLOAT);
    if (nums) {
      double x = v.type == CV_INT ? (double)v.u.i : v.u.f, y = a->type == CV_INT ? (double)a->u.i : a->u.f;
      cmp = x < y ? -1 : x > y;
    } else if (v.type == CV_STR && a->type == CV_STR) {
      size_t m = v.u.s.n < a->u.s.n ? v.u.s.n : a->u.s.n;
      cmp = memcmp(v.u.s.p, a->u.s.p, m);
      if (!cmp) cmp = v.u.s.n < a->u.s.n ? -1 : v.u.s.n > a->u.s.n;
    } else {
      return chat_rerr(r, at, STRATA_EFORMAT, "cannot compare %s with %s", chat_type_name(v), chat_type_name(*a));
    }
    if (t[0] == 'l') *out = t[1] == 'e' && t[2] == 0 ? cmp <= 0 : cmp < 0;
    else *out = t[1] == 'e' && t[2] == 0 ? cmp >= 0 : cmp > 0;
  } else {
    return chat_rerr(r, at, STRATA_EFORMAT, "unknown test '%s'", t);
  }
  return 0;
}

/* Runs test NAME (a string value) on V, for select/reject/selectattr/rejectattr. */
static int named_test(chat_render_t *r, const chat_node_t *at, chat_value_t v, chat_value_t name,
                      const chat_value_t *targs, size_t n_targs, bool *out) {
  if (name.type != CV_STR) return chat_rerr(r, at, STRATA_EFORMAT, "test name must be a string");
  chat_node_t fake = *at;
  char buf[32];
  snprintf(buf, sizeof(buf), "%.*s", (int)name.u.s.n, name.u.s.p);
  fake.str = buf;
  return chat_call_test(r, &fake, v, targs, n_targs, out);
}

static int select_filter(chat_render_t *r, const chat_node_t *at, chat_value_t in, const chat_value_t *args,
                         size_t n_args, bool by_attr, bool keep, chat_value_t *out) {
  chat_list_t *src, *dst = chat_list_new(&r->arena, 0);
  int rc = to_list(r, at, in, &src);
  if (rc) return rc;
  if (!dst) return full(r, at, STRATA_EFULL);
  if (by_attr && n_args < 1) return chat_rerr(r, at, STRATA_EFORMAT, "'%s' needs an attribute name", at->str);
  size_t ti = by_attr ? 1 : 0;
  for (size_t i = 0; i < src->n; i++) {
    chat_value_t v = by_attr ? attr_path(src->items[i], args[0]) : src->items[i];
    bool ok;
    if (n_args > ti) {
      if ((rc = named_test(r, at, v, args[ti], args + ti + 1, n_args - ti - 1, &ok))) return rc;
    } else {
      ok = chat_value_truthy(v);
    }
    if (ok == keep && chat_list_push(&r->arena, dst, src->items[i])) return full(r, at, STRATA_EFULL);
  }
  out->type = CV_LIST;
  out->u.list = dst;
  return 0;
}

/* ---- filters ---- */

static int join(chat_render_t *r, const chat_node_t *at, chat_value_t in, const chat_value_t *sep,
                const chat_value_t *attr, chat_value_t *out) {
  chat_list_t *l;
  int rc = to_list(r, at, in, &l);
  if (rc) return rc;
  chat_buf_t b = {0};
  for (size_t i = 0; i < l->n && rc == 0; i++) {
    if (i && sep) rc = chat_value_str(&b, *sep);
    if (rc == 0) rc = chat_value_str(&b, attr ? attr_path(l->items[i], *attr) : l->items[i]);
  }
  return take_buf(r, at, &b, rc, out);
}

static int indent(chat_render_t *r, const chat_node_t *at, chat_value_t s, int64_t width, bool first, bool blank,
                  chat_value_t *out) {
  chat_buf_t b = {0};
  int rc = 0;
  if (width < 0 || width > 256) width = 4;
  bool line_start = first;
  for (size_t i = 0; i < s.u.s.n && rc == 0; i++) {
    char c = s.u.s.p[i];
    if (line_start && (blank || c != '\n'))
      for (int64_t k = 0; k < width && rc == 0; k++) rc = chat_buf_putc(&b, ' ');
    if (rc == 0) rc = chat_buf_putc(&b, c);
    line_start = c == '\n';
  }
  return take_buf(r, at, &b, rc, out);
}

static int to_int(chat_value_t v, const chat_value_t *def, chat_value_t *out) {
  *out = def ? *def : cv_int(0);
  if (v.type == CV_INT) *out = v;
  else if (v.type == CV_BOOL) *out = cv_int(v.u.b);
  else if (v.type == CV_FLOAT && isfinite(v.u.f)) *out = cv_int((int64_t)v.u.f);
  else if (v.type == CV_STR) {
    char tmp[64];
    snprintf(tmp, sizeof(tmp), "%.*s", (int)(v.u.s.n < 63 ? v.u.s.n : 63), v.u.s.p);
    char *end;
    long long x = strtoll(tmp, &end, 10);
    if (end != tmp && *end == 0) *out = cv_int(x);
    else {
      double f = strtod(tmp, &end);
      if (end != tmp && *end == 0 && isfinite(f)) *out = cv_int((int64_t)f);
    }
  }
  return 0;
}

static int filter_map(chat_render_t *r, const chat_node_t *at, chat_value_t in, const chat_value_t *args,
                      size_t n_args, const char **kwnames, const chat_value_t *kw, size_t n_kw, chat_value_t *out) {
  chat_list_t *src, *dst;
  int rc = to_list(r, at, in, &src);
  if (rc) return rc;
  if (!(dst = chat_list_new(&r->arena, src->n))) return full(r, at, STRATA_EFULL);
  const chat_value_t *attr = arg(NULL, 0, kwnames, kw, n_kw, 0, "attribute");
  const chat_value_t *def = arg(NULL, 0, kwnames, kw, n_kw, 0, "default");
  if (!attr && (n_args < 1 || args[0].type != CV_STR))
    return chat_rerr(r, at, STRATA_EFORMAT, "map() needs a filter name or attribute=");
  chat_node_t fake = *at;
  char name[32] = "";
  if (!attr) snprintf(name, sizeof(name), "%.*s", (int)args[0].u.s.n, args[0].u.s.p);
  fake.str = name;
  for (size_t i = 0; i < src->n; i++) {
    chat_value_t v;
    if (attr) {
      v = attr_path(src->items[i], *attr);
      if (v.type == CV_UNDEF && def) v = *def;
    } else if ((rc = chat_call_filter(r, &fake, src->items[i], args + 1, n_args - 1, NULL, NULL, 0, &v))) {
      return rc;
    }
    dst->items[dst->n++] = v;
  }
  out->type = CV_LIST;
  out->u.list = dst;
  return 0;
}

static int filter_tojson(chat_render_t *r, const chat_node_t *at, chat_value_t in, const chat_value_t *ind,
                         chat_value_t *out) {
  int width = -1;
  if (ind && ind->type == CV_INT) width = ind->u.i < 0 ? 0 : ind->u.i > 32 ? 32 : (int)ind->u.i;
  chat_buf_t b = {0};
  int rc = chat_value_json(&b, in, width, 0);
  return take_buf(r, at, &b, rc, out);
}


/* The filters over lists and dicts; STRATA_ENOTFOUND (no error recorded) for any other name. */
static int filter_sequence(chat_render_t *r, const chat_node_t *at, chat_value_t in, const chat_value_t *args,
                           size_t n_args, const char **kwnames, const chat_value_t *kw, size_t n_kw, chat_value_t *out) {
  const char *f = at->str;
  chat_list_t *l;
  int rc;
  if (!strcmp(f, "items")) return items_of(r, at, in, out);
  if (!strcmp(f, "list")) {
    if ((rc = to_list(r, at, in, &l))) return rc;
    out->type = CV_LIST;
    out->u.list = l;
    return 0;
  }
  if (!strcmp(f, "first") || !strcmp(f, "last")) {
    if ((rc = to_list(r, at, in, &l))) return rc;
    *out = l->n == 0 ? cv_undef() : l->items[f[0] == 'f' ? 0 : l->n - 1];
    return 0;
  }
  if (!strcmp(f, "reverse")) {
    if ((rc = to_list(r, at, in, &l))) return rc;
    chat_list_t *rev = chat_list_new(&r->arena, l->n);
    if (!rev) return full(r, at, STRATA_EFULL);
    for (size_t i = l->n; i-- > 0;) rev->items[rev->n++] = l->items[i];
    if (in.type != CV_STR) {
      out->type = CV_LIST;
      out->u.list = rev;
      return 0;
    }
    return join(r, at, (chat_value_t){.type = CV_LIST, .u.list = rev}, NULL, NULL, out);
  }
  if (!strcmp(f, "unique")) {
    if ((rc = to_list(r, at, in, &l))) return rc;
    chat_list_t *u = chat_list_new(&r->arena, l->n);
    if (!u) return full(r, at, STRATA_EFULL);
    for (size_t i = 0; i < l->n; i++) {
      bool seen = false;
      for (size_t k = 0; k < u->n && !seen; k++) seen = chat_value_equal(u->items[k], l->items[i]);
      if (!seen) u->items[u->n++] = l->items[i];
    }
    out->type = CV_LIST;
    out->u.list = u;
    return 0;
  }
  if (!strcmp(f, "join"))
    return join(r, at, in, arg(args, n_args, kwnames, kw, n_kw, 0, "d"), arg(NULL, 0, kwnames, kw, n_kw, 0, "attribute"), out);
  if (!strcmp(f, "map")) return filter_map(r, at, in, args, n_args, kwnames, kw, n_kw, out);
  if (!strcmp(f, "select") || !strcmp(f, "reject"))
    return select_filter(r, at, in, args, n_args, false, f[0] == 's', out);
  if (!strcmp(f, "selectattr") || !strcmp(f, "rejectattr"))
    return select_filter(r, at, in, args, n_args, true, f[0] == 's', out);
  return STRATA_ENOTFOUND;
}

int chat_call_filter(chat_render_t *r, const chat_node_t *at, chat_value_t in, const chat_value_t *args,
                     size_t n_args, const char **kwnames, const chat_value_t *kw, size_t n_kw, chat_value_t *out) {
  const char *f = at->str;
  const chat_value_t *a0 = arg(args, n_args, kwnames, kw, n_kw, 0, NULL);
  int rc;
  if (!strcmp(f, "default") || !strcmp(f, "d")) {
    const chat_value_t *boolean = arg(args, n_args, kwnames, kw, n_kw, 1, "boolean");
    bool use_default = boolean && chat_value_truthy(*boolean) ? !chat_value_truthy(in) : in.type == CV_UNDEF;
    a0 = arg(args, n_args, kwnames, kw, n_kw, 0, "default_value");
    *out = use_default ? (a0 ? *a0 : cv_str("", 0)) : in;
    return 0;
  }
  if (!strcmp(f, "safe")) {
    *out = in;
    return 0;
  }
  if (!strcmp(f, "string")) return chat_to_string(r, in, out);
  if (!strcmp(f, "tojson")) return filter_tojson(r, at, in, arg(args, n_args, kwnames, kw, n_kw, 0, "indent"), out);
  if (!strcmp(f, "length") || !strcmp(f, "count")) {
    if (in.type == CV_STR) *out = cv_int((int64_t)utf8_count(in.u.s.p, in.u.s.n));
    else if (in.type == CV_LIST) *out = cv_int((int64_t)in.u.list->n);
    else if (in.type == CV_DICT) *out = cv_int((int64_t)in.u.dict->n);
    else if (in.type == CV_UNDEF) *out = cv_int(0);
    else return chat_rerr(r, at, STRATA_EFORMAT, "a %s has no length", chat_type_name(in));
    return 0;
  }
  if (!strcmp(f, "int")) return to_int(in, arg(args, n_args, kwnames, kw, n_kw, 0, "default"), out);
  if (!strcmp(f, "float")) {
    chat_value_t i;
    if (in.type == CV_FLOAT) *out = in;
    else if (in.type == CV_STR) {
      char tmp[64], *end;
      snprintf(tmp, sizeof(tmp), "%.*s", (int)(in.u.s.n < 63 ? in.u.s.n : 63), in.u.s.p);
      double x = strtod(tmp, &end);
      *out = cv_float(end != tmp && *end == 0 ? x : 0.0);
    } else {
      to_int(in, NULL, &i);
      *out = cv_float((double)i.u.i);
    }
    return 0;
  }
  if (!strcmp(f, "abs")) {
    if (in.type == CV_INT) *out = cv_int(in.u.i < 0 ? (int64_t)(0 - (uint64_t)in.u.i) : in.u.i);
    else if (in.type == CV_FLOAT) *out = cv_float(fabs(in.u.f));
    else return chat_rerr(r, at, STRATA_EFORMAT, "abs needs a number");
    return 0;
  }
  rc = filter_sequence(r, at, in, args, n_args, kwnames, kw, n_kw, out);
  if (rc != STRATA_ENOTFOUND) return rc;
  /* string filters */
  /* NOTE: like Jinja, the string filters work on str(value): `none | trim` is "None" */
  if (in.type == CV_UNDEF) in = cv_str("", 0);
  else if (in.type != CV_STR && (rc = chat_to_string(r, in, &in))) return rc;
  if (!strcmp(f, "trim")) {
    *out = strip(in, a0, true, true);
    return 0;
  }
  if (!strcmp(f, "upper") || !strcmp(f, "lower") || !strcmp(f, "capitalize") || !strcmp(f, "title")) {
    return map_case(r, at, in, f[0] == 'l' ? 'l' : f[0] == 'u' ? 'u' : f[0] == 'c' ? 'c' : 't', out);
  }
  if (!strcmp(f, "replace")) {
    const chat_value_t *to = arg(args, n_args, kwnames, kw, n_kw, 1, "new"), *cnt = arg(args, n_args, kwnames, kw, n_kw, 2, "count");
    if (!a0 || !to) return chat_rerr(r, at, STRATA_EFORMAT, "replace needs two arguments");
    return replace(r, at, in, *a0, *to, cnt && cnt->type == CV_INT ? cnt->u.i : -1, out);
  }
  if (!strcmp(f, "indent")) {
    const chat_value_t *w = arg(args, n_args, kwnames, kw, n_kw, 0, "width"),
                       *first = arg(args, n_args, kwnames, kw, n_kw, 1, "first"),
                       *blank = arg(args, n_args, kwnames, kw, n_kw, 2, "blank");
    return indent(r, at, in, w && w->type == CV_INT ? w->u.i : 4, first && chat_value_truthy(*first),
                  blank && chat_value_truthy(*blank), out);
  }
  return chat_rerr(r, at, STRATA_EFORMAT, "unknown filter '%s'", f);
}

/* ---- methods ---- */

int chat_call_method(chat_render_t *r, const chat_node_t *at, chat_value_t obj, const char *name,
                     const chat_value_t *args, size_t n_args, chat_value_t *out) {
  const chat_value_t *a0 = n_args > 0 ? &args[0] : NULL, *a1 = n_args > 1 ? &args[1] : NULL;
  if (obj.type == CV_STR) {
    if (!strcmp(name, "strip")) *out = strip(obj, a0, true, true);
    else if (!strcmp(name, "lstrip")) *out = strip(obj, a0, true, false);
    else if (!strcmp(name, "rstrip")) *out = strip(obj, a0, false, true);
    else if (!strcmp(name, "startswith") || !strcmp(name, "endswith")) {
      if (!a0) return chat_rerr(r, at, STRATA_EFORMAT, "%s() needs an argument", name);
      *out = cv_bool(affix(obj, *a0, name[0] == 's'));
    } else if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "title") ||
               !strcmp(name, "capitalize")) {
      return map_case(r, at, obj, name[0] == 't' ? 't' : name[0], out);
    } else if (!strcmp(name, "split")) {
      return split(r, at, obj, a0, a1 && a1->type == CV_INT ? a1->u.i : -1, out);
    } else if (!strcmp(name, "replace")) {
      if (!a0 || !a1) return chat_rerr(r, at, STRATA_EFORMAT, "replace() needs two arguments");
      return replace(r, at, obj, *a0, *a1, n_args > 2 && args[2].type == CV_INT ? args[2].u.i : -1, out);
    } else if (!strcmp(name, "find")) {
      if (!a0 || a0->type != CV_STR) return chat_rerr(r, at, STRATA_EFORMAT, "find() needs a string");
      *out = cv_int(-1);
      for (size_t i = 0; i + a0->u.s.n <= obj.u.s.n; i++) {
        if (!memcmp(obj.u.s.p + i, a0->u.s.p, a0->u.s.n)) {
          *out = cv_int((int64_t)utf8_count(obj.u.s.p, i));
          break;
        }
      }
    } else if (!strcmp(name, "join")) {
      if (!a0) return chat_rerr(r, at, STRATA_EFORMAT, "join() needs a list");
      return join(r, at, *a0, &obj, NULL, out);
    } else {
      return STRATA_ENOTFOUND;
    }
    return 0;
  }
  if (obj.type == CV_LOOP && !strcmp(name, "cycle")) {
    *out = n_args ? args[obj.u.loop->index0 % n_args] : cv_undef();
    return 0;
  }
  if (obj.type == CV_DICT && !obj.u.dict->is_ns) {
    if (!strcmp(name, "items")) return items_of(r, at, obj, out);
    if (!strcmp(name, "keys") || !strcmp(name, "values")) {
      chat_list_t *l = chat_list_new(&r->arena, obj.u.dict->n);
      if (!l) return full(r, at, STRATA_EFULL);
      for (size_t i = 0; i < obj.u.dict->n; i++)
        l->items[l->n++] = name[0] == 'k' ? obj.u.dict->keys[i] : obj.u.dict->vals[i];
      out->type = CV_LIST;
      out->u.list = l;
      return 0;
    }
    if (!strcmp(name, "get")) {
      if (!a0) return chat_rerr(r, at, STRATA_EFORMAT, "get() needs a key");
      *out = a1 ? *a1 : cv_none();
      for (size_t i = 0; i < obj.u.dict->n; i++)
        if (chat_value_equal(obj.u.dict->keys[i], *a0)) *out = obj.u.dict->vals[i];
      return 0;
    }
  }
  return STRATA_ENOTFOUND;
}

/* ---- global functions ---- */

int chat_global_func(const char *name) {
  if (!strcmp(name, "range")) return CHAT_FN_RANGE;
  if (!strcmp(name, "namespace")) return CHAT_FN_NAMESPACE;
  if (!strcmp(name, "raise_exception")) return CHAT_FN_RAISE;
  if (!strcmp(name, "strftime_now")) return CHAT_FN_STRFTIME;
  if (!strcmp(name, "dict")) return CHAT_FN_DICT;
  return 0;
}

static int fn_range(chat_render_t *r, const chat_node_t *at, const chat_value_t *args, size_t n_args, chat_value_t *out) {
  int64_t v[3] = {0, 0, 1};
  if (n_args < 1 || n_args > 3) return chat_rerr(r, at, STRATA_EFORMAT, "range() takes 1 to 3 arguments");
  for (size_t i = 0; i < n_args; i++)
    if (args[i].type != CV_INT) return chat_rerr(r, at, STRATA_EFORMAT, "range() needs integers");
  if (n_args == 1) v[1] = args[0].u.i;
  else for (size_t i = 0; i < n_args; i++) v[i] = args[i].u.i;
  if (v[2] == 0) return chat_rerr(r, at, STRATA_EFORMAT, "range() step must not be zero");
  chat_list_t *l = chat_list_new(&r->arena, 0);
  if (!l) return full(r, at, STRATA_EFULL);
  for (int64_t x = v[0]; v[2] > 0 ? x < v[1] : x > v[1]; x += v[2]) {
    if ((int64_t)l->n >= RANGE_MAX_ITEMS || (size_t)l->n >= r->max_iterations)
      return chat_rerr(r, at, STRATA_EFULL, "range() too large");
    if (chat_list_push(&r->arena, l, cv_int(x))) return full(r, at, STRATA_EFULL);
  }
  out->type = CV_LIST;
  out->u.list = l;
  return 0;
}

int chat_call_func(chat_render_t *r, const chat_node_t *at, int func, const chat_value_t *args, size_t n_args,
                   const char **kwnames, const chat_value_t *kw, size_t n_kw, chat_value_t *out) {
  switch (func) {
    case CHAT_FN_RANGE: return fn_range(r, at, args, n_args, out);
    case CHAT_FN_NAMESPACE:
    case CHAT_FN_DICT: {
      chat_dict_t *d = chat_dict_new(&r->arena, n_kw);
      if (!d) return full(r, at, STRATA_EFULL);
      d->is_ns = func == CHAT_FN_NAMESPACE;
      if (n_args == 1 && args[0].type == CV_DICT) /* namespace(some_dict) copies it */
        for (size_t i = 0; i < args[0].u.dict->n; i++)
          if (chat_dict_set(&r->arena, d, args[0].u.dict->keys[i], args[0].u.dict->vals[i])) return full(r, at, STRATA_EFULL);
      for (size_t i = 0; i < n_kw; i++)
        if (chat_dict_set(&r->arena, d, cv_str(kwnames[i], strlen(kwnames[i])), kw[i])) return full(r, at, STRATA_EFULL);
      out->type = CV_DICT;
      out->u.dict = d;
      return 0;
    }
    case CHAT_FN_RAISE: {
      chat_value_t msg = cv_str("template raised an exception", 28);
      if (n_args > 0 && chat_to_string(r, args[0], &msg)) return r->code;
      /* NOTE: the message is the template's own words, passed on to the client unchanged. */
      return chat_rerr(r, NULL, STRATA_EINVAL, "%.*s", (int)msg.u.s.n, msg.u.s.p);
    }
    case CHAT_FN_STRFTIME: {
      if (n_args < 1 || args[0].type != CV_STR) return chat_rerr(r, at, STRATA_EFORMAT, "strftime_now() needs a format");
      char fmt[64], buf[128];
      snprintf(fmt, sizeof(fmt), "%.*s", (int)args[0].u.s.n, args[0].u.s.p);
      time_t now = time(NULL);
      struct tm tm;
      gmtime_r(&now, &tm);
      size_t n = strftime(buf, sizeof(buf), fmt, &tm);
      return mkstr(r, at, buf, n, out);
    }
    default: return chat_rerr(r, at, STRATA_EINTERNAL, "unknown function");
  }
}
