/* chat_eval.c: the tree-walking evaluator of chat templates: scopes, expressions and statements. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/chat/chat_int.h"
#include "common/status.h"

#define MACRO_MAX_DEPTH 32 /* nested macro calls */
/* NOTE: nested evaluations over the whole render (macros included) bound the C stack: ~256 frames of a
 * few hundred bytes, safe on small thread stacks. The parser already caps one expression at 64 levels. */
#define EVAL_MAX_DEPTH 256

int chat_rerr(chat_render_t *r, const chat_node_t *at, int code, const char *fmt, ...) {
  if (r->code) return r->code;
  r->code = code;
  if (r->err && r->err_len) {
    char msg[CHAT_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (at) snprintf(r->err, r->err_len, "line %d, column %d: %s", at->line, at->col, msg);
    else snprintf(r->err, r->err_len, "%s", msg);
  }
  return code;
}

/* An error code that came from a helper without a message (arena or buffer full, no memory). */
static int resource_err(chat_render_t *r, const chat_node_t *at, int rc) {
  if (rc == STRATA_EFULL) return chat_rerr(r, at, rc, "render limit exceeded (output size or memory)");
  if (rc == STRATA_ENOMEM) return chat_rerr(r, at, rc, "out of memory");
  return r->code ? r->code : chat_rerr(r, at, rc, "%s", strata_strerror(rc));
}

/* ---- scopes ---- */

static chat_scope_t *scope_new(chat_render_t *r, chat_scope_t *parent) {
  chat_scope_t *s = chat_arena_alloc(&r->arena, sizeof(*s));
  if (s) s->parent = parent;
  return s;
}

static chat_value_t *scope_find(chat_scope_t *s, const char *name) {
  for (; s; s = s->parent)
    for (size_t i = s->n; i-- > 0;)
      if (strcmp(s->names[i], name) == 0) return &s->vals[i];
  return NULL;
}

int chat_scope_set(chat_render_t *r, chat_scope_t *s, const char *name, chat_value_t v) {
  for (size_t i = 0; i < s->n; i++) {
    if (strcmp(s->names[i], name) == 0) {
      s->vals[i] = v;
      return 0;
    }
  }
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 8;
    const char **names = chat_arena_alloc(&r->arena, cap * sizeof(*names));
    chat_value_t *vals = chat_arena_alloc(&r->arena, cap * sizeof(*vals));
    if (!names || !vals) return STRATA_EFULL;
    if (s->n) {
      memcpy(names, s->names, s->n * sizeof(*names));
      memcpy(vals, s->vals, s->n * sizeof(*vals));
    }
    s->names = names;
    s->vals = vals;
    s->cap = cap;
  }
  s->names[s->n] = name;
  s->vals[s->n] = v;
  s->n++;
  return 0;
}

/* ---- attribute, index, slice ---- */

static chat_value_t loop_attr(const chat_loop_t *l, const char *name) {
  size_t n = l->items->n, i = l->index0;
  if (!strcmp(name, "index")) return cv_int((int64_t)i + 1);
  if (!strcmp(name, "index0")) return cv_int((int64_t)i);
  if (!strcmp(name, "first")) return cv_bool(i == 0);
  if (!strcmp(name, "last")) return cv_bool(i + 1 == n);
  if (!strcmp(name, "length")) return cv_int((int64_t)n);
  if (!strcmp(name, "revindex")) return cv_int((int64_t)(n - i));
  if (!strcmp(name, "revindex0")) return cv_int((int64_t)(n - i - 1));
  if (!strcmp(name, "previtem")) return i > 0 ? l->items->items[i - 1] : cv_undef();
  if (!strcmp(name, "nextitem")) return i + 1 < n ? l->items->items[i + 1] : cv_undef();
  return cv_undef();
}

static chat_value_t get_attr(chat_value_t obj, const char *name, size_t len) {
  if (obj.type == CV_DICT) {
    chat_value_t *v = chat_dict_get(obj.u.dict, name, len);
    return v ? *v : cv_undef();
  }
  if (obj.type == CV_LOOP) return loop_attr(obj.u.loop, name);
  return cv_undef();
}

/* Number of UTF-8 code points, and byte offset of code point K (clamped to the end). */
static size_t utf8_len(const char *p, size_t n) {
  size_t c = 0;
  for (size_t i = 0; i < n; i++) c += ((unsigned char)p[i] & 0xc0) != 0x80;
  return c;
}
static size_t utf8_off(const char *p, size_t n, size_t k) {
  size_t i = 0;
  while (i < n && k > 0) {
    i++;
    while (i < n && ((unsigned char)p[i] & 0xc0) == 0x80) i++;
    k--;
  }
  return i;
}

static int get_index(chat_render_t *r, const chat_node_t *at, chat_value_t obj, chat_value_t key, chat_value_t *out) {
  *out = cv_undef();
  if (obj.type == CV_DICT) {
    for (size_t i = 0; i < obj.u.dict->n; i++)
      if (chat_value_equal(obj.u.dict->keys[i], key)) *out = obj.u.dict->vals[i];
    return 0;
  }
  if (obj.type == CV_LOOP && key.type == CV_STR) {
    char name[32];
    snprintf(name, sizeof(name), "%.*s", (int)key.u.s.n, key.u.s.p);
    *out = loop_attr(obj.u.loop, name);
    return 0;
  }
  if ((obj.type == CV_LIST || obj.type == CV_STR) && (key.type == CV_INT || key.type == CV_BOOL)) {
    int64_t i = key.type == CV_INT ? key.u.i : key.u.b;
    size_t n = obj.type == CV_LIST ? obj.u.list->n : utf8_len(obj.u.s.p, obj.u.s.n);
    if (i < 0) i += (int64_t)n;
    if (i < 0 || (size_t)i >= n) return 0; /* Jinja: undefined, not an error */
    if (obj.type == CV_LIST) {
      *out = obj.u.list->items[i];
    } else {
      size_t b = utf8_off(obj.u.s.p, obj.u.s.n, (size_t)i), e = utf8_off(obj.u.s.p, obj.u.s.n, (size_t)i + 1);
      *out = cv_str(obj.u.s.p + b, e - b);
    }
    return 0;
  }
  if (obj.type == CV_UNDEF || obj.type == CV_NONE) return 0;
  if (obj.type == CV_LIST || obj.type == CV_STR) {
    if (key.type == CV_STR) return 0; /* an attribute-style lookup of a missing key */
    return chat_rerr(r, at, STRATA_EFORMAT, "%s indices must be integers, not %s", chat_type_name(obj),
                     chat_type_name(key));
  }
  return 0;
}

/* Python slice semantics for a sequence of length N. */
static void slice_range(int64_t n, const chat_value_t *sv, int64_t *start, int64_t *stop, int64_t *step) {
  *step = sv[2].type == CV_INT ? sv[2].u.i : 1;
  bool neg = *step < 0;
  int64_t lo = neg ? -1 : 0, hi = neg ? n - 1 : n;
  int64_t *dst[2] = {start, stop};
  for (int k = 0; k < 2; k++) {
    if (sv[k].type != CV_INT) {
      *dst[k] = (k == 0) != neg ? lo : hi;
      continue;
    }
    int64_t v = sv[k].u.i;
    if (v < 0) v += n;
    *dst[k] = v < lo ? lo : v > hi ? hi : v;
  }
}

static int eval_slice(chat_render_t *r, chat_scope_t *sc, const chat_node_t *n, chat_value_t *out) {
  chat_value_t obj, sv[3] = {cv_none(), cv_none(), cv_none()};
  int rc = chat_eval(r, sc, n->a, &obj);
  for (int k = 0; k < 3 && rc == 0; k++) {
    if (!n->args[k]) continue;
    rc = chat_eval(r, sc, n->args[k], &sv[k]);
    if (rc == 0 && sv[k].type != CV_INT && sv[k].type != CV_NONE)
      rc = chat_rerr(r, n, STRATA_EFORMAT, "slice indices must be integers or none");
  }
  if (rc) return rc;
  if (sv[2].type == CV_INT && sv[2].u.i == 0) return chat_rerr(r, n, STRATA_EFORMAT, "slice step cannot be zero");
  if (obj.type != CV_LIST && obj.type != CV_STR) {
    if (obj.type == CV_UNDEF) {
      *out = cv_undef();
      return 0;
    }
    return chat_rerr(r, n, STRATA_EFORMAT, "cannot slice a %s", chat_type_name(obj));
  }
  bool is_str = obj.type == CV_STR;
  int64_t len = is_str ? (int64_t)utf8_len(obj.u.s.p, obj.u.s.n) : (int64_t)obj.u.list->n;
  int64_t start, stop, step;
  slice_range(len, sv, &start, &stop, &step);
  chat_list_t *l = chat_list_new(&r->arena, 0);
  chat_buf_t sb = {0};
  if (!l) return resource_err(r, n, STRATA_EFULL);
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (is_str) {
      size_t b = utf8_off(obj.u.s.p, obj.u.s.n, (size_t)i), e = utf8_off(obj.u.s.p, obj.u.s.n, (size_t)i + 1);
      rc = chat_buf_put(&sb, obj.u.s.p + b, e - b);
    } else {
      rc = chat_list_push(&r->arena, l, obj.u.list->items[i]);
    }
    if (rc) break;
  }
  if (rc == 0 && is_str) {
    char *s = chat_arena_strndup(&r->arena, sb.p ? sb.p : "", sb.n);
    if (!s) rc = STRATA_EFULL;
    else *out = cv_str(s, sb.n);
  } else if (rc == 0) {
    out->type = CV_LIST;
    out->u.list = l;
  }
  free(sb.p);
  return rc ? resource_err(r, n, rc) : 0;
}

/* ---- operators ---- */

static bool num(chat_value_t v) { return v.type == CV_INT || v.type == CV_FLOAT || v.type == CV_BOOL; }
static double dbl(chat_value_t v) { return v.type == CV_FLOAT ? v.u.f : v.type == CV_INT ? (double)v.u.i : v.u.b; }
static int64_t i64(chat_value_t v) { return v.type == CV_INT ? v.u.i : v.type == CV_BOOL ? v.u.b : 0; }

static int concat_values(chat_render_t *r, const chat_node_t *n, chat_value_t a, chat_value_t b, chat_value_t *out) {
  chat_buf_t sb = {0};
  int rc = chat_value_str(&sb, a);
  if (rc == 0) rc = chat_value_str(&sb, b);
  if (rc == 0) {
    char *s = chat_arena_strndup(&r->arena, sb.p ? sb.p : "", sb.n);
    if (!s) rc = STRATA_EFULL;
    else *out = cv_str(s, sb.n);
  }
  free(sb.p);
  return rc ? resource_err(r, n, rc) : 0;
}

static int compare(chat_render_t *r, const chat_node_t *n, chat_value_t a, chat_value_t b, int *cmp) {
  if (num(a) && num(b)) {
    double x = dbl(a), y = dbl(b);
    if (a.type != CV_FLOAT && b.type != CV_FLOAT) {
      int64_t p = i64(a), q = i64(b);
      *cmp = p < q ? -1 : p > q;
    } else {
      *cmp = x < y ? -1 : x > y;
    }
    return 0;
  }
  if (a.type == CV_STR && b.type == CV_STR) {
    size_t m = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
    int c = memcmp(a.u.s.p, b.u.s.p, m);
    *cmp = c ? (c < 0 ? -1 : 1) : (a.u.s.n < b.u.s.n ? -1 : a.u.s.n > b.u.s.n);
    return 0;
  }
  return chat_rerr(r, n, STRATA_EFORMAT, "cannot compare %s with %s", chat_type_name(a), chat_type_name(b));
}

static int contains(chat_render_t *r, const chat_node_t *n, chat_value_t needle, chat_value_t hay, bool *out) {
  *out = false;
  if (hay.type == CV_LIST) {
    for (size_t i = 0; i < hay.u.list->n && !*out; i++) *out = chat_value_equal(needle, hay.u.list->items[i]);
  } else if (hay.type == CV_DICT) {
    for (size_t i = 0; i < hay.u.dict->n && !*out; i++) *out = chat_value_equal(needle, hay.u.dict->keys[i]);
  } else if (hay.type == CV_STR) {
    if (needle.type != CV_STR)
      return chat_rerr(r, n, STRATA_EFORMAT, "'in <string>' requires a string, not %s", chat_type_name(needle));
    if (needle.u.s.n == 0) *out = true;
    for (size_t i = 0; i + needle.u.s.n <= hay.u.s.n && !*out; i++)
      *out = memcmp(hay.u.s.p + i, needle.u.s.p, needle.u.s.n) == 0;
  } else if (hay.type != CV_UNDEF) {
    return chat_rerr(r, n, STRATA_EFORMAT, "'in' needs a list, dict or string, not %s", chat_type_name(hay));
  }
  return 0;
}

static int repeat(chat_render_t *r, const chat_node_t *n, chat_value_t seq, int64_t times, chat_value_t *out) {
  if (times < 0) times = 0;
  if (seq.type == CV_STR) {
    if (seq.u.s.n && (uint64_t)times > (uint64_t)(r->out->limit ? r->out->limit : SIZE_MAX) / seq.u.s.n)
      return chat_rerr(r, n, STRATA_EFULL, "string repetition too large");
    size_t total = seq.u.s.n * (size_t)times;
    char *s = chat_arena_alloc(&r->arena, total + 1);
    if (!s) return resource_err(r, n, STRATA_EFULL);
    for (int64_t k = 0; k < times; k++) memcpy(s + (size_t)k * seq.u.s.n, seq.u.s.p, seq.u.s.n);
    *out = cv_str(s, total);
    return 0;
  }
  chat_list_t *l = chat_list_new(&r->arena, 0);
  if (!l) return resource_err(r, n, STRATA_EFULL);
  for (int64_t k = 0; k < times; k++)
    for (size_t i = 0; i < seq.u.list->n; i++)
      if (chat_list_push(&r->arena, l, seq.u.list->items[i])) return resource_err(r, n, STRATA_EFULL);
  out->type = CV_LIST;
  out->u.list = l;
  return 0;
}

static int arith(chat_render_t *r, const chat_node_t *n, int op, chat_value_t a, chat_value_t b, chat_value_t *out) {
  static const char *sym[] = {"", "+", "-", "*", "/", "//", "%", "**"};
  if (op == OP_ADD && a.type == CV_STR && b.type == CV_STR) return concat_values(r, n, a, b, out);
  if (op == OP_ADD && a.type == CV_LIST && b.type == CV_LIST) {
    chat_list_t *l = chat_list_new(&r->arena, a.u.list->n + b.u.list->n);
    if (!l) return resource_err(r, n, STRATA_EFULL);
    for (size_t i = 0; i < a.u.list->n; i++) l->items[l->n++] = a.u.list->items[i];
    for (size_t i = 0; i < b.u.list->n; i++) l->items[l->n++] = b.u.list->items[i];
    out->type = CV_LIST;
    out->u.list = l;
    return 0;
  }
  if (op == OP_MUL && (a.type == CV_STR || a.type == CV_LIST) && (b.type == CV_INT || b.type == CV_BOOL))
    return repeat(r, n, a, i64(b), out);
  if (op == OP_MUL && (b.type == CV_STR || b.type == CV_LIST) && (a.type == CV_INT || a.type == CV_BOOL))
    return repeat(r, n, b, i64(a), out);
  if (!num(a) || !num(b))
    return chat_rerr(r, n, STRATA_EFORMAT, "unsupported operand types for %s: %s and %s", sym[op], chat_type_name(a),
                     chat_type_name(b));
  bool ints = a.type != CV_FLOAT && b.type != CV_FLOAT;
  int64_t x = i64(a), y = i64(b);
  double f = dbl(a), g = dbl(b);
  if ((op == OP_DIV || op == OP_FLOORDIV || op == OP_MOD) && (ints ? y == 0 : g == 0.0))
    return chat_rerr(r, n, STRATA_EFORMAT, "division by zero");
  switch (op) {
    case OP_ADD: *out = ints ? cv_int((int64_t)((uint64_t)x + (uint64_t)y)) : cv_float(f + g); return 0;
    case OP_SUB: *out = ints ? cv_int((int64_t)((uint64_t)x - (uint64_t)y)) : cv_float(f - g); return 0;
    case OP_MUL: *out = ints ? cv_int((int64_t)((uint64_t)x * (uint64_t)y)) : cv_float(f * g); return 0;
    case OP_DIV: *out = cv_float(f / g); return 0;
    case OP_FLOORDIV:
      if (ints) {
        if (x == INT64_MIN && y == -1) return chat_rerr(r, n, STRATA_EFORMAT, "integer overflow");
        int64_t q = x / y;
        if ((x % y != 0) && ((x < 0) != (y < 0))) q--;
        *out = cv_int(q);
      } else {
        *out = cv_float(floor(f / g));
      }
      return 0;
    case OP_MOD:
      if (ints) {
        if (y == -1) {
          *out = cv_int(0);
          return 0;
        }
        int64_t m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) m += y;
        *out = cv_int(m);
      } else {
        double m = fmod(f, g);
        if (m != 0 && ((m < 0) != (g < 0))) m += g;
        *out = cv_float(m);
      }
      return 0;
    case OP_POW:
      if (ints && y >= 0) {
        int64_t acc = 1;
        for (int64_t k = 0; k < y && k < 64; k++) acc = (int64_t)((uint64_t)acc * (uint64_t)x);
        *out = cv_int(acc);
      } else {
        *out = cv_float(pow(f, g));
      }
      return 0;
    default: return chat_rerr(r, n, STRATA_EINTERNAL, "bad operator");
  }
}

static int eval_binop(chat_render_t *r, chat_scope_t *sc, const chat_node_t *n, chat_value_t *out) {
  chat_value_t a, b;
  int rc = chat_eval(r, sc, n->a, &a);
  if (rc == 0) rc = chat_eval(r, sc, n->b, &b);
  if (rc) return rc;
  int cmp = 0;
  bool in;
  switch (n->op) {
    case OP_EQ: *out = cv_bool(chat_value_equal(a, b)); return 0;
    case OP_NE: *out = cv_bool(!chat_value_equal(a, b)); return 0;
    case OP_LT:
    case OP_LE:
    case OP_GT:
    case OP_GE:
      if ((rc = compare(r, n, a, b, &cmp))) return rc;
      *out = cv_bool(n->op == OP_LT ? cmp < 0 : n->op == OP_LE ? cmp <= 0 : n->op == OP_GT ? cmp > 0 : cmp >= 0);
      return 0;
    case OP_IN:
    case OP_NOTIN:
      if ((rc = contains(r, n, a, b, &in))) return rc;
      *out = cv_bool(n->op == OP_IN ? in : !in);
      return 0;
    case OP_CONCAT: return concat_values(r, n, a, b, out);
    default: return arith(r, n, n->op, a, b, out);
  }
}

/* ---- calls ---- */

typedef struct {
  chat_value_t *args, *kw;
  size_t n_args, n_kw;
} argv_t;

static int eval_args(chat_render_t *r, chat_scope_t *sc, const chat_node_t *n, argv_t *av) {
  av->n_args = n->n_args;
  av->n_kw = n->n_kwargs;
  av->args = chat_arena_alloc(&r->arena, (n->n_args + 1) * sizeof(chat_value_t));
  av->kw = chat_arena_alloc(&r->arena, (n->n_kwargs + 1) * sizeof(chat_value_t));
  if (!av->args || !av->kw) return resource_err(r, n, STRATA_EFULL);
  for (size_t i = 0; i < n->n_args; i++) {
    int rc = chat_eval(r, sc, n->args[i], &av->args[i]);
    if (rc) return rc;
  }
  for (size_t i = 0; i < n->n_kwargs; i++) {
    int rc = chat_eval(r, sc, n->kwargs[i], &av->kw[i]);
    if (rc) return rc;
  }
  return 0;
}

/* Runs BODY with output captured into a fresh arena string stored in *OUT. */
static int capture(chat_render_t *r, chat_scope_t *sc, const chat_node_t *at, chat_node_t *const *body, size_t n,
                   chat_value_t *out) {
  chat_buf_t cap = {.limit = r->out->limit};
  chat_buf_t *saved = r->out;
  r->out = &cap;
  int rc = chat_exec(r, sc, body, n);
  r->out = saved;
  if (rc == 0) {
    char *s = chat_arena_strndup(&r->arena, cap.p ? cap.p : "", cap.n);
    if (!s) rc = resource_err(r, at, STRATA_EFULL);
    else *out = cv_str(s, cap.n);
  }
  free(cap.p);
  return rc;
}

static int call_macro(chat_render_t *r, const chat_node_t *at, const chat_node_t *m, const argv_t *av, chat_value_t *out) {
  if (av->n_args > m->n_names)
    return chat_rerr(r, at, STRATA_EFORMAT, "macro '%s' takes %zu arguments, got %zu", m->str, m->n_names, av->n_args);
  chat_scope_t *sc = scope_new(r, r->root);
  if (!sc) return resource_err(r, at, STRATA_EFULL);
  int rc = 0;
  for (size_t i = 0; i < m->n_names && rc == 0; i++) {
    chat_value_t v = cv_undef();
    bool have = false;
    if (i < av->n_args) {
      v = av->args[i];
      have = true;
    }
    for (size_t k = 0; k < av->n_kw && !have; k++) {
      if (strcmp(at->kwnames[k], m->names[i]) == 0) {
        v = av->kw[k];
        have = true;
      }
    }
    if (!have && m->args[i]) rc = chat_eval(r, sc, m->args[i], &v);
    if (rc == 0 && (rc = chat_scope_set(r, sc, m->names[i], v))) rc = resource_err(r, at, rc);
  }
  if (rc) return rc;
  if (++r->macro_depth > MACRO_MAX_DEPTH) return chat_rerr(r, at, STRATA_EFULL, "macro calls nested too deeply");
  int saved_ctl = r->loop_ctl;
  rc = capture(r, sc, at, m->body, m->n_body, out);
  r->loop_ctl = saved_ctl;
  r->macro_depth--;
  return rc;
}

static int eval_call(chat_render_t *r, chat_scope_t *sc, const chat_node_t *n, chat_value_t *out) {
  argv_t av;
  chat_value_t callee;
  int rc;
  if (n->a->kind == CN_ATTR) {
    chat_value_t obj;
    if ((rc = chat_eval(r, sc, n->a->a, &obj)) || (rc = eval_args(r, sc, n, &av))) return rc;
    rc = chat_call_method(r, n, obj, n->a->str, av.args, av.n_args, out);
    if (rc != STRATA_ENOTFOUND) return rc;
    callee = get_attr(obj, n->a->str, n->a->str_len);
    if (callee.type == CV_UNDEF)
      return chat_rerr(r, n, STRATA_EFORMAT, "%s has no method '%s'", chat_type_name(obj), n->a->str);
  } else {
    if ((rc = chat_eval(r, sc, n->a, &callee)) || (rc = eval_args(r, sc, n, &av))) return rc;
  }
  if (callee.type == CV_FUNC)
    return chat_call_func(r, n, callee.u.func, av.args, av.n_args, n->kwnames, av.kw, av.n_kw, out);
  if (callee.type == CV_MACRO) return call_macro(r, n, callee.u.macro, &av, out);
  if (n->a->kind == CN_NAME && callee.type == CV_UNDEF)
    return chat_rerr(r, n, STRATA_EFORMAT, "'%s' is undefined", n->a->str);
  return chat_rerr(r, n, STRATA_EFORMAT, "a %s is not callable", chat_type_name(callee));
}

/* ---- expressions ---- */

/* A list or dict display: [a, b] or {k: v}. */
static int eval_literal(chat_render_t *r, chat_scope_t *sc, const chat_node_t *n, chat_value_t *out) {
  int rc;
  if (n->kind == CN_LIST) {
    chat_list_t *l = chat_list_new(&r->arena, n->n_args);
    if (!l) return resource_err(r, n, STRATA_EFULL);
    for (size_t i = 0; i < n->n_args; i++)
      if ((rc = chat_eval(r, sc, n->args[i], &l->items[l->n++]))) return rc;
    out->type = CV_LIST;
    out->u.list = l;
    return 0;
  }
  chat_dict_t *d = chat_dict_new(&r->arena, n->n_args);
  if (!d) return resource_err(r, n, STRATA_EFULL);
  for (size_t i = 0; i < n->n_args; i++) {
    chat_value_t k, v;
    if ((rc = chat_eval(r, sc, n->args[i], &k)) || (rc = chat_eval(r, sc, n->kwargs[i], &v))) return rc;
    if ((rc = chat_dict_set(&r->arena, d, k, v))) return resource_err(r, n, rc);
  }
  out->type = CV_DICT;
  out->u.dict = d;
  return 0;
}

static int eval_inner(chat_render_t *r, chat_scope_t *sc, const chat_node_t *n, chat_value_t *out) {
  int rc;
  chat_value_t a;
  switch (n->kind) {
    case CN_LIT: *out = n->val; return 0;
    case CN_NAME: {
      chat_value_t *v = scope_find(sc, n->str);
      if (v) *out = *v;
      else if ((rc = chat_global_func(n->str))) *out = (chat_value_t){.type = CV_FUNC, .u.func = rc};
      else *out = cv_undef();
      return 0;
    }
    case CN_ATTR:
      if ((rc = chat_eval(r, sc, n->a, &a))) return rc;
      *out = get_attr(a, n->str, n->str_len);
      return 0;
    case CN_INDEX: {
      chat_value_t k;
      if ((rc = chat_eval(r, sc, n->a, &a)) || (rc = chat_eval(r, sc, n->b, &k))) return rc;
      return get_index(r, n, a, k, out);
    }
    case CN_SLICE: return eval_slice(r, sc, n, out);
    case CN_CALL: return eval_call(r, sc, n, out);
    case CN_FILTER: {
      argv_t av;
      if ((rc = chat_eval(r, sc, n->a, &a)) || (rc = eval_args(r, sc, n, &av))) return rc;
      return chat_call_filter(r, n, a, av.args, av.n_args, n->kwnames, av.kw, av.n_kw, out);
    }
    case CN_TEST: {
      argv_t av;
      bool res;
      if ((rc = chat_eval(r, sc, n->a, &a)) || (rc = eval_args(r, sc, n, &av))) return rc;
      if ((rc = chat_call_test(r, n, a, av.args, av.n_args, &res))) return rc;
      *out = cv_bool(n->op ? !res : res);
      return 0;
    }
    case CN_BINOP: return eval_binop(r, sc, n, out);
    case CN_UNARY:
      if ((rc = chat_eval(r, sc, n->a, &a))) return rc;
      if (!num(a)) return chat_rerr(r, n, STRATA_EFORMAT, "bad operand type for unary %c: %s", n->op == OP_SUB ? '-' : '+', chat_type_name(a));
      if (n->op == OP_ADD) *out = a.type == CV_BOOL ? cv_int(a.u.b) : a;
      else *out = a.type == CV_FLOAT ? cv_float(-a.u.f) : cv_int((int64_t)(0 - (uint64_t)i64(a)));
      return 0;
    case CN_NOT:
      if ((rc = chat_eval(r, sc, n->a, &a))) return rc;
      *out = cv_bool(!chat_value_truthy(a));
      return 0;
    case CN_AND:
    case CN_OR:
      if ((rc = chat_eval(r, sc, n->a, &a))) return rc;
      if (chat_value_truthy(a) == (n->kind == CN_OR)) {
        *out = a;
        return 0;
      }
      return chat_eval(r, sc, n->b, out);
    case CN_COND:
      if ((rc = chat_eval(r, sc, n->b, &a))) return rc;
      if (chat_value_truthy(a)) return chat_eval(r, sc, n->a, out);
      if (n->c) return chat_eval(r, sc, n->c, out);
      *out = cv_undef();
      return 0;
    case CN_LIST:
    case CN_DICT: return eval_literal(r, sc, n, out);
    default: return chat_rerr(r, n, STRATA_EINTERNAL, "not an expression");
  }
}

int chat_eval(chat_render_t *r, chat_scope_t *sc, const chat_node_t *n, chat_value_t *out) {
  if (r->code) return r->code;
  if (++r->depth > EVAL_MAX_DEPTH) return chat_rerr(r, n, STRATA_EFULL, "evaluation nested too deeply");
  int rc = eval_inner(r, sc, n, out);
  r->depth--;
  return rc;
}

/* ---- statements ---- */

static int iterable_items(chat_render_t *r, const chat_node_t *at, chat_value_t v, chat_list_t **out) {
  chat_list_t *l;
  switch (v.type) {
    case CV_LIST: *out = v.u.list; return 0;
    case CV_UNDEF: *out = chat_list_new(&r->arena, 0); break;
    case CV_DICT:
      if (v.u.dict->is_ns) break;
      if (!(l = chat_list_new(&r->arena, v.u.dict->n))) return resource_err(r, at, STRATA_EFULL);
      for (size_t i = 0; i < v.u.dict->n; i++) l->items[l->n++] = v.u.dict->keys[i];
      *out = l;
      return 0;
    case CV_STR: {
      if (!(l = chat_list_new(&r->arena, 0))) return resource_err(r, at, STRATA_EFULL);
      size_t cnt = utf8_len(v.u.s.p, v.u.s.n);
      for (size_t i = 0; i < cnt; i++) {
        size_t b = utf8_off(v.u.s.p, v.u.s.n, i), e = utf8_off(v.u.s.p, v.u.s.n, i + 1);
        if (chat_list_push(&r->arena, l, cv_str(v.u.s.p + b, e - b))) return resource_err(r, at, STRATA_EFULL);
      }
      *out = l;
      return 0;
    }
    default: break;
  }
  if (v.type == CV_UNDEF) return *out ? 0 : resource_err(r, at, STRATA_EFULL);
  return chat_rerr(r, at, STRATA_EFORMAT, "a %s is not iterable", chat_type_name(v));
}

static int bind_targets(chat_render_t *r, const chat_node_t *n, chat_scope_t *sc, chat_value_t item) {
  int rc;
  if (n->n_names == 1) {
    if ((rc = chat_scope_set(r, sc, n->names[0], item))) return resource_err(r, n, rc);
    return 0;
  }
  if (item.type != CV_LIST || item.u.list->n != n->n_names)
    return chat_rerr(r, n, STRATA_EFORMAT, "cannot unpack a %s into %zu loop variables", chat_type_name(item), n->n_names);
  for (size_t k = 0; k < n->n_names; k++)
    if ((rc = chat_scope_set(r, sc, n->names[k], item.u.list->items[k]))) return resource_err(r, n, rc);
  return 0;
}

static int tick(chat_render_t *r, const chat_node_t *n) {
  if (++r->iterations > r->max_iterations)
    return chat_rerr(r, n, STRATA_EFULL, "loop iteration limit (%zu) exceeded", r->max_iterations);
  return 0;
}

static int exec_for(chat_render_t *r, chat_scope_t *sc, const chat_node_t *n) {
  chat_value_t it;
  chat_list_t *items = NULL;
  int rc = chat_eval(r, sc, n->a, &it);
  if (rc || (rc = iterable_items(r, n, it, &items))) return rc;
  chat_scope_t *ls = scope_new(r, sc);
  chat_loop_t *loop = chat_arena_alloc(&r->arena, sizeof(*loop));
  if (!ls || !loop) return resource_err(r, n, STRATA_EFULL);
  if (n->b) { /* `for x in y if cond`: filter first, so loop.length and loop.last see the filtered list */
    chat_list_t *kept = chat_list_new(&r->arena, 0);
    if (!kept) return resource_err(r, n, STRATA_EFULL);
    for (size_t i = 0; i < items->n; i++) {
      chat_value_t c;
      ls->n = 0;
      if ((rc = tick(r, n)) || (rc = bind_targets(r, n, ls, items->items[i])) || (rc = chat_eval(r, ls, n->b, &c)))
        return rc;
      if (chat_value_truthy(c) && (rc = chat_list_push(&r->arena, kept, items->items[i]))) return resource_err(r, n, rc);
    }
    items = kept;
  }
  loop->items = items;
  chat_value_t loopv = {.type = CV_LOOP, .u.loop = loop};
  for (size_t i = 0; i < items->n; i++) {
    loop->index0 = i;
    ls->n = 0; /* a fresh scope per iteration, reusing its storage */
    if ((rc = tick(r, n)) || (rc = bind_targets(r, n, ls, items->items[i]))) return rc;
    if ((rc = chat_scope_set(r, ls, "loop", loopv))) return resource_err(r, n, rc);
    if ((rc = chat_exec(r, ls, n->body, n->n_body))) return rc;
    if (r->loop_ctl == 1) {
      r->loop_ctl = 0;
      break;
    }
    r->loop_ctl = 0;
  }
  if (items->n == 0 && n->n_else) return chat_exec(r, sc, n->else_body, n->n_else);
  return 0;
}

static int exec_set(chat_render_t *r, chat_scope_t *sc, const chat_node_t *n) {
  chat_value_t v;
  int rc = n->a ? chat_eval(r, sc, n->a, &v) : capture(r, sc, n, n->body, n->n_body, &v);
  if (rc) return rc;
  if (!n->str) {
    if ((rc = chat_scope_set(r, sc, n->names[0], v))) return resource_err(r, n, rc);
    return 0;
  }
  chat_value_t *target = scope_find(sc, n->names[0]);
  if (!target || target->type != CV_DICT || !target->u.dict->is_ns)
    return chat_rerr(r, n, STRATA_EFORMAT, "cannot assign attribute '%s': '%s' is not a namespace", n->str, n->names[0]);
  if ((rc = chat_dict_set(&r->arena, target->u.dict, cv_str(n->str, n->str_len), v))) return resource_err(r, n, rc);
  return 0;
}

static int exec_one(chat_render_t *r, chat_scope_t *sc, const chat_node_t *n) {
  chat_value_t v;
  int rc;
  switch (n->kind) {
    case CN_TEXT:
      if ((rc = chat_buf_put(r->out, n->str, n->str_len))) return resource_err(r, n, rc);
      return 0;
    case CN_OUTPUT:
      if ((rc = chat_eval(r, sc, n->a, &v))) return rc;
      if ((rc = chat_value_str(r->out, v))) return resource_err(r, n, rc);
      return 0;
    case CN_IF:
      if ((rc = chat_eval(r, sc, n->a, &v))) return rc;
      return chat_value_truthy(v) ? chat_exec(r, sc, n->body, n->n_body) : chat_exec(r, sc, n->else_body, n->n_else);
    case CN_FOR: return exec_for(r, sc, n);
    case CN_SET: return exec_set(r, sc, n);
    case CN_MACRO:
      if ((rc = chat_scope_set(r, sc, n->str, (chat_value_t){.type = CV_MACRO, .u.macro = n})))
        return resource_err(r, n, rc);
      return 0;
    case CN_BREAK: r->loop_ctl = 1; return 0;
    case CN_CONTINUE: r->loop_ctl = 2; return 0;
    case CN_BLOCK: return chat_exec(r, sc, n->body, n->n_body);
    default: return chat_rerr(r, n, STRATA_EINTERNAL, "not a statement");
  }
}

int chat_exec(chat_render_t *r, chat_scope_t *sc, chat_node_t *const *body, size_t n) {
  for (size_t i = 0; i < n && r->loop_ctl == 0; i++) {
    int rc = exec_one(r, sc, body[i]);
    if (rc) return rc;
  }
  return r->code;
}
