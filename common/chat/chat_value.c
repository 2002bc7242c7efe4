/* chat_value.c: the arena, values (lists, ordered dicts), output buffers, str() and JSON of values. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/chat/chat_int.h"
#include "common/status.h"

struct chat_arena_block {
  chat_arena_block_t *next;
  size_t used, cap;
  _Alignas(16) unsigned char data[];
};

#define ARENA_BLOCK_BYTES ((size_t)64 * 1024)

void chat_arena_init(chat_arena_t *a, size_t limit_bytes) {
  a->head = NULL;
  a->total_bytes = 0;
  a->limit_bytes = limit_bytes;
}

void chat_arena_deinit(chat_arena_t *a) {
  chat_arena_block_t *b = a->head;
  while (b) {
    chat_arena_block_t *next = b->next;
    free(b);
    b = next;
  }
  a->head = NULL;
  a->total_bytes = 0;
}

void *chat_arena_alloc(chat_arena_t *a, size_t n) {
  if (n > SIZE_MAX / 2) return NULL;
  n = (n + 15) & ~(size_t)15;
  if (n == 0) n = 16;
  chat_arena_block_t *b = a->head;
  if (!b || b->cap - b->used < n) {
    size_t cap = n > ARENA_BLOCK_BYTES ? n : ARENA_BLOCK_BYTES;
    if (a->limit_bytes && a->total_bytes + cap > a->limit_bytes) return NULL;
    b = malloc(sizeof(*b) + cap);
    if (!b) return NULL;
    b->used = 0;
    b->cap = cap;
    /* NOTE: an oversized allocation gets its own block behind the head, so the head's free space
     * stays usable for the small allocations that follow. */
    if (a->head && n > ARENA_BLOCK_BYTES) {
      b->next = a->head->next;
      a->head->next = b;
    } else {
      b->next = a->head;
      a->head = b;
    }
    a->total_bytes += cap;
  }
  void *p = b->data + b->used;
  b->used += n;
  memset(p, 0, n);
  return p;
}

char *chat_arena_strndup(chat_arena_t *a, const char *s, size_t n) {
  char *p = chat_arena_alloc(a, n + 1);
  if (!p) return NULL;
  if (n) memcpy(p, s, n);
  p[n] = 0;
  return p;
}

/* ---- lists and dicts ---- */

chat_list_t *chat_list_new(chat_arena_t *a, size_t cap) {
  chat_list_t *l = chat_arena_alloc(a, sizeof(*l));
  if (!l) return NULL;
  if (cap) {
    l->items = chat_arena_alloc(a, cap * sizeof(chat_value_t));
    if (!l->items) return NULL;
    l->cap = cap;
  }
  return l;
}

int chat_list_push(chat_arena_t *a, chat_list_t *l, chat_value_t v) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 8;
    chat_value_t *items = chat_arena_alloc(a, cap * sizeof(*items));
    if (!items) return STRATA_EFULL;
    if (l->n) memcpy(items, l->items, l->n * sizeof(*items));
    l->items = items;
    l->cap = cap;
  }
  l->items[l->n++] = v;
  return 0;
}

chat_dict_t *chat_dict_new(chat_arena_t *a, size_t cap) {
  chat_dict_t *d = chat_arena_alloc(a, sizeof(*d));
  if (!d) return NULL;
  if (cap) {
    d->keys = chat_arena_alloc(a, cap * sizeof(chat_value_t));
    d->vals = chat_arena_alloc(a, cap * sizeof(chat_value_t));
    if (!d->keys || !d->vals) return NULL;
    d->cap = cap;
  }
  return d;
}

chat_value_t *chat_dict_get(const chat_dict_t *d, const char *key, size_t key_len) {
  for (size_t i = d->n; i-- > 0;) { /* from the end: a repeated key reads as its last value */
    const chat_value_t *k = &d->keys[i];
    if (k->type == CV_STR && k->u.s.n == key_len && memcmp(k->u.s.p, key, key_len) == 0) return &d->vals[i];
  }
  return NULL;
}

int chat_dict_set(chat_arena_t *a, chat_dict_t *d, chat_value_t key, chat_value_t val) {
  for (size_t i = 0; i < d->n; i++) {
    if (chat_value_equal(d->keys[i], key)) {
      d->vals[i] = val;
      return 0;
    }
  }
  return chat_dict_append(a, d, key, val);
}

int chat_dict_append(chat_arena_t *a, chat_dict_t *d, chat_value_t key, chat_value_t val) {
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 8;
    chat_value_t *keys = chat_arena_alloc(a, cap * sizeof(*keys));
    chat_value_t *vals = chat_arena_alloc(a, cap * sizeof(*vals));
    if (!keys || !vals) return STRATA_EFULL;
    if (d->n) {
      memcpy(keys, d->keys, d->n * sizeof(*keys));
      memcpy(vals, d->vals, d->n * sizeof(*vals));
    }
    d->keys = keys;
    d->vals = vals;
    d->cap = cap;
  }
  d->keys[d->n] = key;
  d->vals[d->n] = val;
  d->n++;
  return 0;
}

bool chat_value_truthy(chat_value_t v) {
  switch (v.type) {
    case CV_UNDEF:
    case CV_NONE: return false;
    case CV_BOOL: return v.u.b;
    case CV_INT: return v.u.i != 0;
    case CV_FLOAT: return v.u.f != 0.0;
    case CV_STR: return v.u.s.n != 0;
    case CV_LIST: return v.u.list->n != 0;
    case CV_DICT: return v.u.dict->n != 0 || v.u.dict->is_ns;
    default: return true;
  }
}

static bool is_number(chat_value_t v) { return v.type == CV_INT || v.type == CV_FLOAT || v.type == CV_BOOL; }

static double as_double(chat_value_t v) {
  return v.type == CV_FLOAT ? v.u.f : v.type == CV_INT ? (double)v.u.i : (double)v.u.b;
}

bool chat_value_equal(chat_value_t a, chat_value_t b) {
  if (is_number(a) && is_number(b)) {
    if (a.type == CV_FLOAT || b.type == CV_FLOAT) return as_double(a) == as_double(b);
    int64_t x = a.type == CV_INT ? a.u.i : a.u.b, y = b.type == CV_INT ? b.u.i : b.u.b;
    return x == y;
  }
  if (a.type != b.type) return false;
  switch (a.type) {
    case CV_UNDEF:
    case CV_NONE: return true;
    case CV_STR: return a.u.s.n == b.u.s.n && memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0;
    case CV_LIST:
      if (a.u.list->n != b.u.list->n) return false;
      for (size_t i = 0; i < a.u.list->n; i++)
        if (!chat_value_equal(a.u.list->items[i], b.u.list->items[i])) return false;
      return true;
    case CV_DICT:
      if (a.u.dict == b.u.dict) return true;
      if (a.u.dict->n != b.u.dict->n) return false;
      for (size_t i = 0; i < a.u.dict->n; i++) {
        size_t j = 0;
        while (j < b.u.dict->n && !chat_value_equal(a.u.dict->keys[i], b.u.dict->keys[j])) j++;
        if (j == b.u.dict->n || !chat_value_equal(a.u.dict->vals[i], b.u.dict->vals[j])) return false;
      }
      return true;
    case CV_LOOP: return a.u.loop == b.u.loop;
    case CV_FUNC: return a.u.func == b.u.func;
    case CV_MACRO: return a.u.macro == b.u.macro;
    default: return false;
  }
}

const char *chat_type_name(chat_value_t v) {
  static const char *names[] = {"undefined", "none", "bool", "int", "float", "string",
                                "list", "dict", "loop", "function", "macro"};
  if (v.type == CV_DICT && v.u.dict->is_ns) return "namespace";
  return v.type < sizeof(names) / sizeof(names[0]) ? names[v.type] : "?";
}

/* ---- buffers ---- */

int chat_buf_put(chat_buf_t *b, const char *s, size_t n) {
  if (n == 0) return 0;
  if (b->limit && (b->n + n > b->limit || b->n + n < b->n)) return STRATA_EFULL;
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return STRATA_ENOMEM;
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = 0;
  return 0;
}

int chat_buf_putc(chat_buf_t *b, char c) { return chat_buf_put(b, &c, 1); }

int chat_buf_printf(chat_buf_t *b, const char *fmt, ...) {
  char tmp[128];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  if (n < 0) return STRATA_EINTERNAL;
  return chat_buf_put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* Python's repr() of a float: shortest round-trip digits, always with a '.' or exponent. */
static int put_float(chat_buf_t *b, double f) {
  if (isnan(f)) return chat_buf_put(b, "nan", 3);
  if (isinf(f)) return f > 0 ? chat_buf_put(b, "inf", 3) : chat_buf_put(b, "-inf", 4);
  char tmp[40];
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(tmp, sizeof(tmp), "%.*g", prec, f);
    if (strtod(tmp, NULL) == f) break;
  }
  if (!strpbrk(tmp, ".einn")) strcat(tmp, ".0");
  return chat_buf_put(b, tmp, strlen(tmp));
}

/* Python repr of a string: single quotes unless the text holds ' and no ". */
static int put_repr_str(chat_buf_t *b, const char *p, size_t n) {
  bool has_sq = memchr(p, '\'', n) != NULL, has_dq = memchr(p, '"', n) != NULL;
  char q = has_sq && !has_dq ? '"' : '\'';
  int rc = chat_buf_putc(b, q);
  for (size_t i = 0; i < n && rc == 0; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c == (unsigned char)q || c == '\\') {
      rc = chat_buf_putc(b, '\\');
      if (rc == 0) rc = chat_buf_putc(b, (char)c);
    } else if (c == '\n') rc = chat_buf_put(b, "\\n", 2);
    else if (c == '\t') rc = chat_buf_put(b, "\\t", 2);
    else if (c == '\r') rc = chat_buf_put(b, "\\r", 2);
    else if (c < 0x20 || c == 0x7f) rc = chat_buf_printf(b, "\\x%02x", c);
    else rc = chat_buf_putc(b, (char)c);
  }
  return rc ? rc : chat_buf_putc(b, q);
}

static int put_repr(chat_buf_t *b, chat_value_t v, int depth);

static int put_str(chat_buf_t *b, chat_value_t v, int depth) {
  if (depth > 64) return STRATA_EFULL;
  switch (v.type) {
    case CV_UNDEF: return 0;
    case CV_NONE: return chat_buf_put(b, "None", 4);
    case CV_BOOL: return v.u.b ? chat_buf_put(b, "True", 4) : chat_buf_put(b, "False", 5);
    case CV_INT: return chat_buf_printf(b, "%lld", (long long)v.u.i);
    case CV_FLOAT: return put_float(b, v.u.f);
    case CV_STR: return chat_buf_put(b, v.u.s.p, v.u.s.n);
    case CV_LIST: {
      int rc = chat_buf_putc(b, '[');
      for (size_t i = 0; i < v.u.list->n && rc == 0; i++) {
        if (i) rc = chat_buf_put(b, ", ", 2);
        if (rc == 0) rc = put_repr(b, v.u.list->items[i], depth + 1);
      }
      return rc ? rc : chat_buf_putc(b, ']');
    }
    case CV_DICT: {
      if (v.u.dict->is_ns) return chat_buf_put(b, "<Namespace>", 11);
      int rc = chat_buf_putc(b, '{');
      for (size_t i = 0; i < v.u.dict->n && rc == 0; i++) {
        if (i) rc = chat_buf_put(b, ", ", 2);
        if (rc == 0) rc = put_repr(b, v.u.dict->keys[i], depth + 1);
        if (rc == 0) rc = chat_buf_put(b, ": ", 2);
        if (rc == 0) rc = put_repr(b, v.u.dict->vals[i], depth + 1);
      }
      return rc ? rc : chat_buf_putc(b, '}');
    }
    case CV_LOOP: return chat_buf_put(b, "<LoopContext>", 13);
    default: return chat_buf_put(b, "<function>", 10);
  }
}

static int put_repr(chat_buf_t *b, chat_value_t v, int depth) {
  if (v.type == CV_STR) return put_repr_str(b, v.u.s.p, v.u.s.n);
  return put_str(b, v, depth);
}

int chat_value_str(chat_buf_t *b, chat_value_t v) { return put_str(b, v, 0); }

static int put_json_str(chat_buf_t *b, const char *p, size_t n) {
  int rc = chat_buf_putc(b, '"');
  for (size_t i = 0; i < n && rc == 0; i++) {
    unsigned char c = (unsigned char)p[i];
    switch (c) {
      case '"': rc = chat_buf_put(b, "\\\"", 2); break;
      case '\\': rc = chat_buf_put(b, "\\\\", 2); break;
      case '\n': rc = chat_buf_put(b, "\\n", 2); break;
      case '\r': rc = chat_buf_put(b, "\\r", 2); break;
      case '\t': rc = chat_buf_put(b, "\\t", 2); break;
      case '\b': rc = chat_buf_put(b, "\\b", 2); break;
      case '\f': rc = chat_buf_put(b, "\\f", 2); break;
      default: rc = c < 0x20 ? chat_buf_printf(b, "\\u%04x", c) : chat_buf_putc(b, (char)c);
    }
  }
  return rc ? rc : chat_buf_putc(b, '"');
}

static int put_newline_indent(chat_buf_t *b, int indent, int depth) {
  int rc = chat_buf_putc(b, '\n');
  for (int i = 0; i < indent * depth && rc == 0; i++) rc = chat_buf_putc(b, ' ');
  return rc;
}

/* NOTE: separators follow json.dumps: ", " and ": " on one line, "," plus newlines when indenting. */
int chat_value_json(chat_buf_t *b, chat_value_t v, int indent, int depth) {
  if (depth > 64) return STRATA_EFULL;
  int rc = 0;
  switch (v.type) {
    case CV_UNDEF:
    case CV_NONE: return chat_buf_put(b, "null", 4);
    case CV_BOOL: return v.u.b ? chat_buf_put(b, "true", 4) : chat_buf_put(b, "false", 5);
    case CV_INT: return chat_buf_printf(b, "%lld", (long long)v.u.i);
    case CV_FLOAT:
      if (isnan(v.u.f)) return chat_buf_put(b, "NaN", 3);
      if (isinf(v.u.f)) return v.u.f > 0 ? chat_buf_put(b, "Infinity", 8) : chat_buf_put(b, "-Infinity", 9);
      return put_float(b, v.u.f);
    case CV_STR: return put_json_str(b, v.u.s.p, v.u.s.n);
    case CV_LIST: {
      if (v.u.list->n == 0) return chat_buf_put(b, "[]", 2);
      rc = chat_buf_putc(b, '[');
      for (size_t i = 0; i < v.u.list->n && rc == 0; i++) {
        if (i) rc = chat_buf_put(b, indent >= 0 ? "," : ", ", indent >= 0 ? 1 : 2);
        if (rc == 0 && indent >= 0) rc = put_newline_indent(b, indent, depth + 1);
        if (rc == 0) rc = chat_value_json(b, v.u.list->items[i], indent, depth + 1);
      }
      if (rc == 0 && indent >= 0) rc = put_newline_indent(b, indent, depth);
      return rc ? rc : chat_buf_putc(b, ']');
    }
    case CV_DICT: {
      if (v.u.dict->n == 0) return chat_buf_put(b, "{}", 2);
      rc = chat_buf_putc(b, '{');
      for (size_t i = 0; i < v.u.dict->n && rc == 0; i++) {
        if (i) rc = chat_buf_put(b, indent >= 0 ? "," : ", ", indent >= 0 ? 1 : 2);
        if (rc == 0 && indent >= 0) rc = put_newline_indent(b, indent, depth + 1);
        chat_value_t k = v.u.dict->keys[i];
        if (rc == 0) {
          if (k.type == CV_STR) rc = put_json_str(b, k.u.s.p, k.u.s.n);
          else {
            chat_buf_t tmp = {0};
            rc = put_str(&tmp, k, depth + 1);
            if (rc == 0) rc = put_json_str(b, tmp.p ? tmp.p : "", tmp.n);
            free(tmp.p);
          }
        }
        if (rc == 0) rc = chat_buf_put(b, ": ", 2);
        if (rc == 0) rc = chat_value_json(b, v.u.dict->vals[i], indent, depth + 1);
      }
      if (rc == 0 && indent >= 0) rc = put_newline_indent(b, indent, depth);
      return rc ? rc : chat_buf_putc(b, '}');
    }
    default: return chat_buf_put(b, "null", 4);
  }
}
