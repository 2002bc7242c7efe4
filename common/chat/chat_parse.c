/* chat_parse.c: lexer and parser of the Jinja subset used by chat templates (written by hand: no C
 * Jinja library is packaged). Whitespace control follows Jinja with trim_blocks and lstrip_blocks on. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/chat/chat_int.h"
#include "common/status.h"

#define PARSE_MAX_DEPTH 64

typedef enum {
  TK_EOF = 0,
  TK_TEXT,
  TK_VAR_BEGIN,
  TK_VAR_END,
  TK_BLOCK_BEGIN,
  TK_BLOCK_END,
  TK_NAME,
  TK_STRING,
  TK_INT,
  TK_FLOAT,
  TK_OP,
} tok_kind_t;

typedef struct {
  uint8_t kind;
  int line, col;
  const char *p; /* TEXT/NAME/OP: into the source; STRING: decoded copy in the arena */
  size_t n;
  int64_t i;
  double f;
} tok_t;

typedef struct {
  const char *src;
  size_t len;
  chat_arena_t *arena;
  tok_t *toks;
  size_t n, cap;
  size_t lc_off; /* line/column cursor: tokens are made in source order */
  int lc_line, lc_col;
  size_t i; /* parser position */
  int depth, loop_depth;
  char *err;
  size_t err_len;
} parser_t;

static void position(parser_t *p, size_t off, int *line, int *col) {
  if (off < p->lc_off) { /* only happens for errors; recount */
    p->lc_off = 0;
    p->lc_line = 1;
    p->lc_col = 1;
  }
  for (; p->lc_off < off && p->lc_off < p->len; p->lc_off++) {
    if (p->src[p->lc_off] == '\n') {
      p->lc_line++;
      p->lc_col = 1;
    } else {
      p->lc_col++;
    }
  }
  *line = p->lc_line;
  *col = p->lc_col;
}

static int fail_at(parser_t *p, int line, int col, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail_at(parser_t *p, int line, int col, const char *fmt, ...) {
  if (p->err && p->err_len) {
    char msg[CHAT_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(p->err, p->err_len, "line %d, column %d: %s", line, col, msg);
  }
  return STRATA_EFORMAT;
}

static int fail_off(parser_t *p, size_t off, const char *msg) {
  int line, col;
  position(p, off, &line, &col);
  return fail_at(p, line, col, "%s", msg);
}

static int push_tok(parser_t *p, int kind, size_t off, const char *s, size_t n) {
  if (p->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 256;
    tok_t *t = realloc(p->toks, cap * sizeof(*t));
    if (!t) return STRATA_ENOMEM;
    p->toks = t;
    p->cap = cap;
  }
  tok_t *t = &p->toks[p->n++];
  memset(t, 0, sizeof(*t));
  t->kind = (uint8_t)kind;
  t->p = s;
  t->n = n;
  position(p, off, &t->line, &t->col);
  return 0;
}

/* ---- lexer ---- */

static int lex_string(parser_t *p, size_t *pos) {
  size_t start = *pos;
  char q = p->src[start];
  char *buf = chat_arena_alloc(p->arena, p->len - start + 1);
  if (!buf) return STRATA_ENOMEM;
  size_t n = 0, i = start + 1;
  for (; i < p->len && p->src[i] != q; i++) {
    char c = p->src[i];
    if (c != '\\' || i + 1 >= p->len) {
      buf[n++] = c;
      continue;
    }
    char e = p->src[++i];
    switch (e) {
      case 'n': buf[n++] = '\n'; break;
      case 't': buf[n++] = '\t'; break;
      case 'r': buf[n++] = '\r'; break;
      case '0': buf[n++] = '\0'; break;
      case '\\': case '\'': case '"': buf[n++] = e; break;
      case '\n': break; /* a line continuation */
      case 'x':
      case 'u': {
        int digits = e == 'x' ? 2 : 4;
        unsigned cp = 0;
        if (i + (size_t)digits >= p->len) return fail_off(p, i, "truncated escape in string");
        for (int k = 1; k <= digits; k++) {
          char h = p->src[i + (size_t)k];
          if (!isxdigit((unsigned char)h)) return fail_off(p, i, "bad hex escape in string");
          cp = cp * 16 + (unsigned)(isdigit((unsigned char)h) ? h - '0' : (tolower((unsigned char)h) - 'a' + 10));
        }
        i += (size_t)digits;
        if (cp < 0x80) {
          buf[n++] = (char)cp;
        } else if (cp < 0x800) {
          buf[n++] = (char)(0xc0 | (cp >> 6));
          buf[n++] = (char)(0x80 | (cp & 0x3f));
        } else {
          buf[n++] = (char)(0xe0 | (cp >> 12));
          buf[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
          buf[n++] = (char)(0x80 | (cp & 0x3f));
        }
        break;
      }
      default: /* Python keeps unknown escapes as they are */
        buf[n++] = '\\';
        buf[n++] = e;
    }
  }
  if (i >= p->len) return fail_off(p, start, "unterminated string literal");
  int rc = push_tok(p, TK_STRING, start, buf, n);
  *pos = i + 1;
  return rc;
}

static int lex_number(parser_t *p, size_t *pos) {
  size_t s = *pos, i = s;
  bool is_float = false;
  while (i < p->len && (isdigit((unsigned char)p->src[i]) || p->src[i] == '_')) i++;
  if (i + 1 < p->len && p->src[i] == '.' && isdigit((unsigned char)p->src[i + 1])) {
    is_float = true;
    i++;
    while (i < p->len && isdigit((unsigned char)p->src[i])) i++;
  }
  if (i < p->len && (p->src[i] == 'e' || p->src[i] == 'E')) {
    size_t j = i + 1;
    if (j < p->len && (p->src[j] == '+' || p->src[j] == '-')) j++;
    if (j < p->len && isdigit((unsigned char)p->src[j])) {
      is_float = true;
      i = j;
      while (i < p->len && isdigit((unsigned char)p->src[i])) i++;
    }
  }
  char tmp[64];
  size_t n = 0;
  for (size_t k = s; k < i && n + 1 < sizeof(tmp); k++)
    if (p->src[k] != '_') tmp[n++] = p->src[k];
  tmp[n] = 0;
  int rc = push_tok(p, is_float ? TK_FLOAT : TK_INT, s, p->src + s, i - s);
  if (rc) return rc;
  if (is_float) p->toks[p->n - 1].f = strtod(tmp, NULL);
  else p->toks[p->n - 1].i = strtoll(tmp, NULL, 10);
  *pos = i;
  return 0;
}

/* Lexes the inside of {{ }} or {% %} from *POS up to and including the closer. Sets *STRIP when the
 * closer is '-' (strip whitespace after) and *TRIM when a block's closer is not '+' (trim_blocks). */
static int lex_tag(parser_t *p, size_t *pos, bool is_block, size_t open_off, bool *strip, bool *trim) {
  static const char *two[] = {"**", "//", "==", "!=", "<=", ">="};
  const char close0 = is_block ? '%' : '}';
  size_t i = *pos;
  int depth = 0;
  for (;;) {
    while (i < p->len && isspace((unsigned char)p->src[i])) i++;
    if (i >= p->len) return fail_off(p, open_off, is_block ? "unclosed '{%'" : "unclosed '{{'");
    char c = p->src[i];
    if (depth == 0) {
      size_t j = i;
      char mod = 0;
      if ((c == '-' || c == '+') && j + 2 < p->len && p->src[j + 1] == close0 && p->src[j + 2] == '}') {
        mod = c;
        j++;
      }
      if (j + 1 < p->len && p->src[j] == close0 && p->src[j + 1] == '}') {
        int rc = push_tok(p, is_block ? TK_BLOCK_END : TK_VAR_END, i, p->src + i, j + 2 - i);
        *strip = mod == '-';
        *trim = is_block && mod != '+';
        *pos = j + 2;
        return rc;
      }
    }
    int rc;
    if (isalpha((unsigned char)c) || c == '_') {
      size_t s = i;
      while (i < p->len && (isalnum((unsigned char)p->src[i]) || p->src[i] == '_')) i++;
      rc = push_tok(p, TK_NAME, s, p->src + s, i - s);
    } else if (isdigit((unsigned char)c)) {
      rc = lex_number(p, &i);
    } else if (c == '\'' || c == '"') {
      rc = lex_string(p, &i);
    } else {
      size_t n = 0;
      for (size_t k = 0; k < sizeof(two) / sizeof(two[0]); k++)
        if (i + 1 < p->len && p->src[i] == two[k][0] && p->src[i + 1] == two[k][1]) n = 2;
      if (n == 0 && strchr("+-*/%~<>=()[]{},.:|", c) && c) n = 1;
      if (n == 0) {
        char msg[64];
        snprintf(msg, sizeof(msg), "unexpected character '%c'", c);
        return fail_off(p, i, msg);
      }
      if (c == '(' || c == '[' || c == '{') depth++;
      if ((c == ')' || c == ']' || c == '}') && depth > 0) depth--;
      rc = push_tok(p, TK_OP, i, p->src + i, n);
      i += n;
    }
    if (rc) return rc;
  }
}

static size_t find_tag(const char *s, size_t len, size_t from) {
  for (size_t i = from; i + 1 < len; i++)
    if (s[i] == '{' && (s[i + 1] == '{' || s[i + 1] == '%' || s[i + 1] == '#')) return i;
  return len;
}

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

static bool tok_is(const tok_t *t, int kind, const char *s);

/* {% raw %}...{% endraw %}: the three tokens of the opening tag are dropped and the body becomes
 * one text token, with the same whitespace control as any text between tags. */
static int lex_raw(parser_t *p, size_t open_off, size_t *pos, bool *strip, bool *trim) {
  const char *s = p->src;
  p->n -= 3;
  for (size_t i = *pos; i + 1 < p->len; i++) {
    if (s[i] != '{' || s[i + 1] != '%') continue;
    size_t j = i + 2;
    char mod = j < p->len && (s[j] == '-' || s[j] == '+') ? s[j++] : 0;
    while (j < p->len && is_ws(s[j])) j++;
    if (p->len - j < 6 || memcmp(s + j, "endraw", 6) != 0) continue;
    j += 6;
    while (j < p->len && is_ws(s[j])) j++;
    char end_mod = j < p->len && (s[j] == '-' || s[j] == '+') ? s[j++] : 0;
    if (j + 1 >= p->len || s[j] != '%' || s[j + 1] != '}') continue;
    size_t ts = *pos, te = i;
    if (*strip) {
      while (ts < te && is_ws(s[ts])) ts++;
    } else if (*trim && ts < te && s[ts] == '\n') {
      ts++;
    }
    if (mod == '-') {
      while (te > ts && is_ws(s[te - 1])) te--;
    } else if (mod != '+') {
      size_t q = te;
      while (q > ts && (s[q - 1] == ' ' || s[q - 1] == '\t')) q--;
      if (q == 0 || s[q - 1] == '\n') te = q;
    }
    *strip = end_mod == '-';
    *trim = end_mod != '+';
    *pos = j + 2;
    return te > ts ? push_tok(p, TK_TEXT, ts, s + ts, te - ts) : 0;
  }
  return fail_off(p, open_off, "unclosed '{% raw %}'");
}

static int lex(parser_t *p) {
  const char *s = p->src;
  size_t pos = 0;
  bool strip = false, trim = false;
  while (pos < p->len) {
    size_t t = find_tag(s, p->len, pos), ts = pos, te = t;
    if (strip) {
      while (ts < te && is_ws(s[ts])) ts++;
    } else if (trim) {
      if (ts < te && s[ts] == '\n') ts++;
      else if (ts + 1 < te && s[ts] == '\r' && s[ts + 1] == '\n') ts += 2;
    }
    strip = trim = false;
    char kind = t < p->len ? s[t + 1] : 0, mod = t + 2 < p->len ? s[t + 2] : 0;
    if (t < p->len && mod == '-') {
      while (te > ts && is_ws(s[te - 1])) te--;
    } else if (t < p->len && mod != '+' && kind != '{') {
      /* lstrip_blocks: spaces and tabs from the start of the line up to a block or comment tag */
      size_t q = te;
      while (q > ts && (s[q - 1] == ' ' || s[q - 1] == '\t')) q--;
      if (q == 0 || s[q - 1] == '\n') te = q;
    }
    int rc = 0;
    if (te > ts) rc = push_tok(p, TK_TEXT, ts, s + ts, te - ts);
    if (rc) return rc;
    if (t >= p->len) break;
    size_t body = t + 2 + (mod == '-' || mod == '+' ? 1 : 0);
    if (kind == '#') {
      size_t e = body;
      while (e + 1 < p->len && !(s[e] == '#' && s[e + 1] == '}')) e++;
      if (e + 1 >= p->len) return fail_off(p, t, "unclosed comment '{#'");
      strip = e > body && s[e - 1] == '-';
      trim = !(e > body && s[e - 1] == '+');
      pos = e + 2;
      continue;
    }
    rc = push_tok(p, kind == '%' ? TK_BLOCK_BEGIN : TK_VAR_BEGIN, t, s + t, body - t);
    if (rc) return rc;
    pos = body;
    rc = lex_tag(p, &pos, kind == '%', t, &strip, &trim);
    if (rc == 0 && p->n >= 3 && p->toks[p->n - 3].kind == TK_BLOCK_BEGIN && tok_is(&p->toks[p->n - 2], TK_NAME, "raw") &&
        p->toks[p->n - 1].kind == TK_BLOCK_END)
      rc = lex_raw(p, t, &pos, &strip, &trim);
    if (rc) return rc;
  }
  return push_tok(p, TK_EOF, p->len, s + p->len, 0);
}

/* ---- parser helpers ---- */

static tok_t *peek(parser_t *p) { return &p->toks[p->i]; }
static tok_t *peek2(parser_t *p) { return p->i + 1 < p->n ? &p->toks[p->i + 1] : &p->toks[p->n - 1]; }
static tok_t *next(parser_t *p) {
  tok_t *t = &p->toks[p->i];
  if (t->kind != TK_EOF) p->i++;
  return t;
}

static bool tok_is(const tok_t *t, int kind, const char *s) {
  return t->kind == kind && (!s || (strlen(s) == t->n && memcmp(t->p, s, t->n) == 0));
}
static bool is_op(parser_t *p, const char *s) { return tok_is(peek(p), TK_OP, s); }
static bool is_name(parser_t *p, const char *s) { return tok_is(peek(p), TK_NAME, s); }
static bool accept_op(parser_t *p, const char *s) { return is_op(p, s) ? (next(p), true) : false; }
static bool accept_name(parser_t *p, const char *s) { return is_name(p, s) ? (next(p), true) : false; }

static const char *tok_desc(const tok_t *t, char *buf, size_t n) {
  switch (t->kind) {
    case TK_EOF: return "end of template";
    case TK_VAR_END: return "'}}'";
    case TK_BLOCK_END: return "'%}'";
    case TK_STRING: return "a string";
    default: snprintf(buf, n, "'%.*s'", (int)(t->n > 32 ? 32 : t->n), t->p); return buf;
  }
}

static int fail_tok(parser_t *p, const tok_t *t, const char *what) {
  char buf[48];
  return fail_at(p, t->line, t->col, "expected %s, got %s", what, tok_desc(t, buf, sizeof(buf)));
}

static int expect_op(parser_t *p, const char *s) {
  if (accept_op(p, s)) return 0;
  char what[16];
  snprintf(what, sizeof(what), "'%s'", s);
  return fail_tok(p, peek(p), what);
}

static int expect_block_end(parser_t *p) {
  if (peek(p)->kind == TK_BLOCK_END) {
    next(p);
    return 0;
  }
  return fail_tok(p, peek(p), "'%}'");
}

static chat_node_t *new_node(parser_t *p, int kind, const tok_t *at) {
  chat_node_t *n = chat_arena_alloc(p->arena, sizeof(*n));
  if (!n) return NULL;
  n->kind = (uint8_t)kind;
  n->line = at->line;
  n->col = at->col;
  return n;
}

static const char *tok_name(parser_t *p, const tok_t *t) { return chat_arena_strndup(p->arena, t->p, t->n); }

/* A growable array of pointers in the arena (copied on growth; the waste is at most 2x). */
typedef struct {
  void **v;
  size_t n, cap;
} vec_t;

static int vec_push(parser_t *p, vec_t *v, void *x) {
  if (v->n == v->cap) {
    size_t cap = v->cap ? v->cap * 2 : 4;
    void **nv = chat_arena_alloc(p->arena, cap * sizeof(void *));
    if (!nv) return STRATA_ENOMEM;
    if (v->n) memcpy(nv, v->v, v->n * sizeof(void *));
    v->v = nv;
    v->cap = cap;
  }
  v->v[v->n++] = x;
  return 0;
}

/* ---- expressions ---- */

static int parse_expr(parser_t *p, chat_node_t **out);
static int parse_or(parser_t *p, chat_node_t **out);
static int parse_unary(parser_t *p, bool with_filter, chat_node_t **out);

#define NEW_OR_FAIL(var, kind, at)         \
  do {                                     \
    (var) = new_node(p, (kind), (at));     \
    if (!(var)) return STRATA_ENOMEM;      \
  } while (0)

/* (args, name=kw...) after the '(' has been read; fills N's args/kwargs. */
static int parse_call_args(parser_t *p, chat_node_t *n) {
  vec_t args = {0}, kws = {0}, names = {0};
  int rc = 0;
  while (!accept_op(p, ")")) {
    if (args.n + kws.n > 0 && (rc = expect_op(p, ","))) return rc;
    if (accept_op(p, ")")) break; /* a trailing comma */
    chat_node_t *e;
    if (peek(p)->kind == TK_NAME && tok_is(peek2(p), TK_OP, "=")) {
      const char *name = tok_name(p, next(p));
      next(p);
      if (!name) return STRATA_ENOMEM;
      if ((rc = parse_expr(p, &e)) || (rc = vec_push(p, &kws, e)) || (rc = vec_push(p, &names, (void *)name)))
        return rc;
    } else {
      if ((rc = parse_expr(p, &e)) || (rc = vec_push(p, &args, e))) return rc;
    }
  }
  n->args = (chat_node_t **)args.v;
  n->n_args = args.n;
  n->kwargs = (chat_node_t **)kws.v;
  n->kwnames = (const char **)names.v;
  n->n_kwargs = kws.n;
  return 0;
}

static int parse_list_or_tuple(parser_t *p, const tok_t *at, const char *close, chat_node_t **out) {
  chat_node_t *n;
  NEW_OR_FAIL(n, CN_LIST, at);
  vec_t items = {0};
  int rc;
  while (!accept_op(p, close)) {
    if (items.n && (rc = expect_op(p, ","))) return rc;
    if (accept_op(p, close)) break;
    chat_node_t *e;
    if ((rc = parse_expr(p, &e)) || (rc = vec_push(p, &items, e))) return rc;
  }
  n->args = (chat_node_t **)items.v;
  n->n_args = items.n;
  *out = n;
  return 0;
}

/* ( expr ) or a tuple, after the '(' has been read; a tuple behaves as a list. */
static int parse_paren(parser_t *p, const tok_t *t, chat_node_t **out) {
  chat_node_t *n;
  chat_node_t *e;
  int rc;
  if (accept_op(p, ")")) {
    NEW_OR_FAIL(n, CN_LIST, t);
    *out = n;
    return 0;
  }
  if ((rc = parse_expr(p, &e))) return rc;
  if (accept_op(p, ")")) {
    *out = e;
    return 0;
  }
  /* a tuple: behaves as a list */
  if ((rc = expect_op(p, ","))) return rc;
  chat_node_t *rest;
  if ((rc = parse_list_or_tuple(p, t, ")", &rest))) return rc;
  vec_t items = {0};
  if ((rc = vec_push(p, &items, e))) return rc;
  for (size_t k = 0; k < rest->n_args; k++)
    if ((rc = vec_push(p, &items, rest->args[k]))) return rc;
  rest->args = (chat_node_t **)items.v;
  rest->n_args = items.n;
  *out = rest;
  return 0;
}

/* { key: value, ... } after the '{' has been read. */
static int parse_dict(parser_t *p, const tok_t *t, chat_node_t **out) {
  chat_node_t *n;
  int rc;
  NEW_OR_FAIL(n, CN_DICT, t);
  vec_t keys = {0}, vals = {0};
  while (!accept_op(p, "}")) {
    if (keys.n && (rc = expect_op(p, ","))) return rc;
    if (accept_op(p, "}")) break;
    chat_node_t *k, *v;
    if ((rc = parse_expr(p, &k)) || (rc = expect_op(p, ":")) || (rc = parse_expr(p, &v))) return rc;
    if ((rc = vec_push(p, &keys, k)) || (rc = vec_push(p, &vals, v))) return rc;
  }
  n->args = (chat_node_t **)keys.v;
  n->n_args = keys.n;
  n->kwargs = (chat_node_t **)vals.v;
  n->n_kwargs = vals.n;
  *out = n;
  return 0;
}

static int parse_primary(parser_t *p, chat_node_t **out) {
  tok_t *t = next(p);
  chat_node_t *n;
  switch (t->kind) {
    case TK_NAME: {
      static const struct {
        const char *name;
        int type, b;
      } consts[] = {{"true", CV_BOOL, 1},  {"True", CV_BOOL, 1}, {"false", CV_BOOL, 0},
                    {"False", CV_BOOL, 0}, {"none", CV_NONE, 0}, {"None", CV_NONE, 0}};
      for (size_t k = 0; k < sizeof(consts) / sizeof(consts[0]); k++) {
        if (tok_is(t, TK_NAME, consts[k].name)) {
          NEW_OR_FAIL(n, CN_LIT, t);
          n->val = consts[k].type == CV_BOOL ? cv_bool(consts[k].b) : cv_none();
          *out = n;
          return 0;
        }
      }
      NEW_OR_FAIL(n, CN_NAME, t);
      if (!(n->str = tok_name(p, t))) return STRATA_ENOMEM;
      n->str_len = t->n;
      *out = n;
      return 0;
    }
    case TK_STRING: {
      /* adjacent literals concatenate, as in Python */
      size_t total = t->n, k = p->i;
      while (p->toks[k].kind == TK_STRING) total += p->toks[k++].n;
      char *s = chat_arena_alloc(p->arena, total + 1);
      if (!s) return STRATA_ENOMEM;
      memcpy(s, t->p, t->n);
      size_t off = t->n;
      while (peek(p)->kind == TK_STRING) {
        tok_t *u = next(p);
        memcpy(s + off, u->p, u->n);
        off += u->n;
      }
      NEW_OR_FAIL(n, CN_LIT, t);
      n->val = cv_str(s, total);
      *out = n;
      return 0;
    }
    case TK_INT:
    case TK_FLOAT:
      NEW_OR_FAIL(n, CN_LIT, t);
      n->val = t->kind == TK_INT ? cv_int(t->i) : cv_float(t->f);
      *out = n;
      return 0;
    case TK_OP:
      if (tok_is(t, TK_OP, "(")) return parse_paren(p, t, out);
      if (tok_is(t, TK_OP, "[")) return parse_list_or_tuple(p, t, "]", out);
      if (tok_is(t, TK_OP, "{")) return parse_dict(p, t, out);
      break;
    default: break;
  }
  p->i--;
  return fail_tok(p, t, "an expression");
}

static int parse_subscript(parser_t *p, const tok_t *at, chat_node_t *obj, chat_node_t **out) {
  chat_node_t *parts[3] = {0};
  int rc, k = 0;
  bool is_slice = false;
  for (;;) {
    if (!is_op(p, ":") && !is_op(p, "]") && (rc = parse_expr(p, &parts[k]))) return rc;
    if (accept_op(p, "]")) break;
    if (k == 2 || (rc = expect_op(p, ":"))) return k == 2 ? fail_tok(p, peek(p), "']'") : rc;
    is_slice = true;
    k++;
  }
  chat_node_t *n;
  if (!is_slice) {
    if (!parts[0]) return fail_tok(p, peek(p), "an index");
    NEW_OR_FAIL(n, CN_INDEX, at);
    n->a = obj;
    n->b = parts[0];
  } else {
    NEW_OR_FAIL(n, CN_SLICE, at);
    n->a = obj;
    n->args = chat_arena_alloc(p->arena, 3 * sizeof(chat_node_t *));
    if (!n->args) return STRATA_ENOMEM;
    memcpy(n->args, parts, sizeof(parts));
    n->n_args = 3;
  }
  *out = n;
  return 0;
}

static int parse_postfix(parser_t *p, chat_node_t **inout) {
  int rc;
  for (;;) {
    tok_t *t = peek(p);
    chat_node_t *n = NULL;
    if (tok_is(t, TK_OP, ".")) {
      next(p);
      tok_t *name = next(p);
      if (name->kind != TK_NAME && name->kind != TK_INT) return fail_tok(p, name, "an attribute name");
      NEW_OR_FAIL(n, CN_ATTR, t);
      n->a = *inout;
      if (!(n->str = tok_name(p, name))) return STRATA_ENOMEM;
      n->str_len = name->n;
    } else if (tok_is(t, TK_OP, "[")) {
      next(p);
      if ((rc = parse_subscript(p, t, *inout, &n))) return rc;
    } else if (tok_is(t, TK_OP, "(")) {
      next(p);
      NEW_OR_FAIL(n, CN_CALL, t);
      n->a = *inout;
      if ((rc = parse_call_args(p, n))) return rc;
    } else {
      return 0;
    }
    *inout = n;
  }
}

static int parse_filters_and_tests(parser_t *p, chat_node_t **inout) {
  int rc;
  for (;;) {
    tok_t *t = peek(p);
    chat_node_t *n;
    if (tok_is(t, TK_OP, "|")) {
      next(p);
      tok_t *name = next(p);
      if (name->kind != TK_NAME) return fail_tok(p, name, "a filter name");
      NEW_OR_FAIL(n, CN_FILTER, name);
      n->a = *inout;
      if (!(n->str = tok_name(p, name))) return STRATA_ENOMEM;
      n->str_len = name->n;
      if (accept_op(p, "(") && (rc = parse_call_args(p, n))) return rc;
    } else if (tok_is(t, TK_NAME, "is")) {
      next(p);
      NEW_OR_FAIL(n, CN_TEST, t);
      n->op = accept_name(p, "not") ? 1 : 0;
      tok_t *name = next(p);
      if (name->kind != TK_NAME) return fail_tok(p, name, "a test name");
      n->a = *inout;
      if (!(n->str = tok_name(p, name))) return STRATA_ENOMEM;
      n->str_len = name->n;
      tok_t *u = peek(p);
      if (accept_op(p, "(")) {
        if ((rc = parse_call_args(p, n))) return rc;
      } else if (u->kind == TK_STRING || u->kind == TK_INT || u->kind == TK_FLOAT ||
                 (u->kind == TK_NAME && !tok_is(u, TK_NAME, "else") && !tok_is(u, TK_NAME, "and") &&
                  !tok_is(u, TK_NAME, "or") && !tok_is(u, TK_NAME, "if") && !tok_is(u, TK_NAME, "is") &&
                  !tok_is(u, TK_NAME, "in") && !tok_is(u, TK_NAME, "not"))) {
        /* `is equalto 3`, `is sameas false`: one argument without parentheses */
        chat_node_t *arg;
        if ((rc = parse_primary(p, &arg)) || (rc = parse_postfix(p, &arg))) return rc;
        n->args = chat_arena_alloc(p->arena, sizeof(chat_node_t *));
        if (!n->args) return STRATA_ENOMEM;
        n->args[0] = arg;
        n->n_args = 1;
      }
    } else {
      return 0;
    }
    *inout = n;
  }
}

static int parse_unary(parser_t *p, bool with_filter, chat_node_t **out) {
  if (++p->depth > PARSE_MAX_DEPTH) {
    tok_t *t = peek(p);
    return fail_at(p, t->line, t->col, "expression nested too deeply (limit %d)", PARSE_MAX_DEPTH);
  }
  int rc;
  tok_t *t = peek(p);
  chat_node_t *n;
  if (tok_is(t, TK_OP, "-") || tok_is(t, TK_OP, "+")) {
    next(p);
    NEW_OR_FAIL(n, CN_UNARY, t);
    n->op = t->p[0] == '-' ? OP_SUB : OP_ADD;
    if ((rc = parse_unary(p, false, &n->a))) return rc;
  } else {
    if ((rc = parse_primary(p, &n))) return rc;
  }
  if ((rc = parse_postfix(p, &n))) return rc;
  if (with_filter && (rc = parse_filters_and_tests(p, &n))) return rc;
  p->depth--;
  *out = n;
  return 0;
}

typedef struct {
  const char *s;
  int op;
} opmap_t;

/* One left-associative level of binary operators. */
static int parse_binary(parser_t *p, const opmap_t *ops, size_t n_ops, int (*sub)(parser_t *, chat_node_t **),
                        chat_node_t **out) {
  int rc = sub(p, out);
  for (bool again = true; rc == 0 && again;) {
    again = false;
    for (size_t k = 0; k < n_ops; k++) {
      if (!is_op(p, ops[k].s)) continue;
      tok_t *t = next(p);
      chat_node_t *n;
      NEW_OR_FAIL(n, CN_BINOP, t);
      n->op = (uint8_t)ops[k].op;
      n->a = *out;
      if ((rc = sub(p, &n->b))) return rc;
      *out = n;
      again = true;
      break;
    }
  }
  return rc;
}

static int parse_unary_f(parser_t *p, chat_node_t **out) { return parse_unary(p, true, out); }
static int parse_pow(parser_t *p, chat_node_t **out) {
  static const opmap_t ops[] = {{"**", OP_POW}};
  return parse_binary(p, ops, 1, parse_unary_f, out);
}
static int parse_math2(parser_t *p, chat_node_t **out) {
  static const opmap_t ops[] = {{"*", OP_MUL}, {"//", OP_FLOORDIV}, {"/", OP_DIV}, {"%", OP_MOD}};
  return parse_binary(p, ops, 4, parse_pow, out);
}
static int parse_concat(parser_t *p, chat_node_t **out) {
  static const opmap_t ops[] = {{"~", OP_CONCAT}};
  return parse_binary(p, ops, 1, parse_math2, out);
}
static int parse_math1(parser_t *p, chat_node_t **out) {
  static const opmap_t ops[] = {{"+", OP_ADD}, {"-", OP_SUB}};
  return parse_binary(p, ops, 2, parse_concat, out);
}

static int parse_compare(parser_t *p, chat_node_t **out) {
  static const opmap_t ops[] = {{"==", OP_EQ}, {"!=", OP_NE}, {"<=", OP_LE},
                                {">=", OP_GE}, {"<", OP_LT},  {">", OP_GT}};
  int rc = parse_math1(p, out);
  while (rc == 0) {
    tok_t *t = peek(p);
    int op = 0;
    for (size_t k = 0; k < sizeof(ops) / sizeof(ops[0]) && !op; k++)
      if (tok_is(t, TK_OP, ops[k].s)) op = ops[k].op;
    if (!op && tok_is(t, TK_NAME, "in")) op = OP_IN;
    if (!op && tok_is(t, TK_NAME, "not") && tok_is(peek2(p), TK_NAME, "in")) {
      next(p);
      op = OP_NOTIN;
    }
    if (!op) break;
    next(p);
    chat_node_t *n;
    NEW_OR_FAIL(n, CN_BINOP, t);
    n->op = (uint8_t)op;
    n->a = *out;
    if ((rc = parse_math1(p, &n->b))) return rc;
    *out = n;
  }
  return rc;
}

static int parse_not(parser_t *p, chat_node_t **out) {
  tok_t *t = peek(p);
  if (tok_is(t, TK_NAME, "not")) {
    next(p);
    if (++p->depth > PARSE_MAX_DEPTH)
      return fail_at(p, t->line, t->col, "expression nested too deeply (limit %d)", PARSE_MAX_DEPTH);
    chat_node_t *n;
    NEW_OR_FAIL(n, CN_NOT, t);
    int rc = parse_not(p, &n->a);
    p->depth--;
    *out = n;
    return rc;
  }
  return parse_compare(p, out);
}

static int parse_logic(parser_t *p, const char *word, int kind, int (*sub)(parser_t *, chat_node_t **),
                       chat_node_t **out) {
  int rc = sub(p, out);
  while (rc == 0 && is_name(p, word)) {
    tok_t *t = next(p);
    chat_node_t *n;
    NEW_OR_FAIL(n, kind, t);
    n->a = *out;
    if ((rc = sub(p, &n->b))) return rc;
    *out = n;
  }
  return rc;
}

static int parse_and(parser_t *p, chat_node_t **out) { return parse_logic(p, "and", CN_AND, parse_not, out); }
static int parse_or(parser_t *p, chat_node_t **out) { return parse_logic(p, "or", CN_OR, parse_and, out); }

static int parse_expr(parser_t *p, chat_node_t **out) {
  int rc = parse_or(p, out);
  while (rc == 0 && is_name(p, "if")) {
    tok_t *t = next(p);
    chat_node_t *n;
    NEW_OR_FAIL(n, CN_COND, t);
    n->a = *out;
    if ((rc = parse_or(p, &n->b))) return rc;
    if (accept_name(p, "else") && (rc = parse_expr(p, &n->c))) return rc;
    *out = n;
  }
  return rc;
}

/* ---- statements ---- */

static int parse_body(parser_t *p, const char *const *ends, chat_node_t ***body, size_t *n_body);

static bool at_tag(parser_t *p, const char *name) {
  return peek(p)->kind == TK_BLOCK_BEGIN && tok_is(peek2(p), TK_NAME, name);
}

/* Consumes `{% NAME %}`. */
static int expect_tag(parser_t *p, const char *name) {
  if (!at_tag(p, name)) {
    char what[32];
    snprintf(what, sizeof(what), "'{%% %s %%}'", name);
    return fail_tok(p, peek(p), what);
  }
  next(p);
  next(p);
  return expect_block_end(p);
}

static int parse_if(parser_t *p, const tok_t *at, chat_node_t **out) {
  static const char *const ends[] = {"elif", "else", "endif", NULL};
  chat_node_t *n;
  NEW_OR_FAIL(n, CN_IF, at);
  int rc;
  if ((rc = parse_expr(p, &n->a)) || (rc = expect_block_end(p)) || (rc = parse_body(p, ends, &n->body, &n->n_body)))
    return rc;
  next(p); /* {% */
  tok_t *kw = next(p);
  if (tok_is(kw, TK_NAME, "elif")) {
    n->else_body = chat_arena_alloc(p->arena, sizeof(chat_node_t *));
    if (!n->else_body) return STRATA_ENOMEM;
    n->n_else = 1;
    rc = parse_if(p, kw, &n->else_body[0]);
  } else if (tok_is(kw, TK_NAME, "else")) {
    static const char *const endif[] = {"endif", NULL};
    if ((rc = expect_block_end(p)) || (rc = parse_body(p, endif, &n->else_body, &n->n_else))) return rc;
    rc = expect_tag(p, "endif");
  } else {
    rc = expect_block_end(p);
  }
  *out = n;
  return rc;
}

static int parse_for(parser_t *p, const tok_t *at, chat_node_t **out) {
  static const char *const ends[] = {"else", "endfor", NULL};
  chat_node_t *n;
  NEW_OR_FAIL(n, CN_FOR, at);
  vec_t names = {0};
  int rc;
  do {
    tok_t *t = next(p);
    const char *name;
    if (t->kind != TK_NAME) return fail_tok(p, t, "a loop variable");
    if (!(name = tok_name(p, t))) return STRATA_ENOMEM;
    if ((rc = vec_push(p, &names, (void *)name))) return rc;
  } while (accept_op(p, ","));
  n->names = (const char **)names.v;
  n->n_names = names.n;
  if (!accept_name(p, "in")) return fail_tok(p, peek(p), "'in'");
  if ((rc = parse_or(p, &n->a))) return rc;
  if (accept_name(p, "if") && (rc = parse_expr(p, &n->b))) return rc;
  if (is_name(p, "recursive")) return fail_at(p, peek(p)->line, peek(p)->col, "recursive loops are not supported");
  if ((rc = expect_block_end(p))) return rc;
  p->loop_depth++;
  rc = parse_body(p, ends, &n->body, &n->n_body);
  p->loop_depth--;
  if (rc) return rc;
  if (at_tag(p, "else")) {
    static const char *const endfor[] = {"endfor", NULL};
    next(p);
    next(p);
    if ((rc = expect_block_end(p)) || (rc = parse_body(p, endfor, &n->else_body, &n->n_else))) return rc;
  }
  *out = n;
  return expect_tag(p, "endfor");
}

static int parse_set(parser_t *p, const tok_t *at, chat_node_t **out) {
  chat_node_t *n;
  NEW_OR_FAIL(n, CN_SET, at);
  tok_t *t = next(p);
  if (t->kind != TK_NAME) return fail_tok(p, t, "a variable name");
  n->names = chat_arena_alloc(p->arena, sizeof(char *));
  if (!n->names || !(n->names[0] = tok_name(p, t))) return STRATA_ENOMEM;
  n->n_names = 1;
  if (accept_op(p, ".")) {
    tok_t *attr = next(p);
    if (attr->kind != TK_NAME) return fail_tok(p, attr, "an attribute name");
    if (!(n->str = tok_name(p, attr))) return STRATA_ENOMEM;
    n->str_len = attr->n;
  }
  int rc;
  if (accept_op(p, "=")) {
    if ((rc = parse_expr(p, &n->a))) return rc;
    if (is_op(p, ",")) return fail_at(p, peek(p)->line, peek(p)->col, "tuple assignment is not supported");
    *out = n;
    return expect_block_end(p);
  }
  static const char *const ends[] = {"endset", NULL};
  if ((rc = expect_block_end(p)) || (rc = parse_body(p, ends, &n->body, &n->n_body))) return rc;
  *out = n;
  return expect_tag(p, "endset");
}

static int parse_macro(parser_t *p, const tok_t *at, chat_node_t **out) {
  chat_node_t *n;
  NEW_OR_FAIL(n, CN_MACRO, at);
  tok_t *t = next(p);
  if (t->kind != TK_NAME) return fail_tok(p, t, "a macro name");
  if (!(n->str = tok_name(p, t))) return STRATA_ENOMEM;
  n->str_len = t->n;
  int rc;
  if ((rc = expect_op(p, "("))) return rc;
  vec_t names = {0}, defs = {0};
  while (!accept_op(p, ")")) {
    if (names.n && (rc = expect_op(p, ","))) return rc;
    tok_t *pt = next(p);
    const char *name;
    if (pt->kind != TK_NAME) return fail_tok(p, pt, "a parameter name");
    if (!(name = tok_name(p, pt))) return STRATA_ENOMEM;
    chat_node_t *def = NULL;
    if (accept_op(p, "=") && (rc = parse_expr(p, &def))) return rc;
    if ((rc = vec_push(p, &names, (void *)name)) || (rc = vec_push(p, &defs, def))) return rc;
  }
  n->names = (const char **)names.v;
  n->n_names = names.n;
  n->args = (chat_node_t **)defs.v;
  n->n_args = defs.n;
  static const char *const ends[] = {"endmacro", NULL};
  int saved_loops = p->loop_depth;
  p->loop_depth = 0;
  rc = expect_block_end(p);
  if (rc == 0) rc = parse_body(p, ends, &n->body, &n->n_body);
  p->loop_depth = saved_loops;
  if (rc) return rc;
  *out = n;
  return expect_tag(p, "endmacro");
}

static int parse_stmt(parser_t *p, chat_node_t **out) {
  next(p); /* {% */
  tok_t *kw = next(p);
  if (kw->kind != TK_NAME) return fail_tok(p, kw, "a statement name");
  if (tok_is(kw, TK_NAME, "if")) return parse_if(p, kw, out);
  if (tok_is(kw, TK_NAME, "for")) return parse_for(p, kw, out);
  if (tok_is(kw, TK_NAME, "set")) return parse_set(p, kw, out);
  if (tok_is(kw, TK_NAME, "macro")) return parse_macro(p, kw, out);
  if (tok_is(kw, TK_NAME, "break") || tok_is(kw, TK_NAME, "continue")) {
    if (p->loop_depth == 0) return fail_at(p, kw->line, kw->col, "'%.*s' outside a loop", (int)kw->n, kw->p);
    chat_node_t *n;
    NEW_OR_FAIL(n, kw->p[0] == 'b' ? CN_BREAK : CN_CONTINUE, kw);
    *out = n;
    return expect_block_end(p);
  }
  if (tok_is(kw, TK_NAME, "generation")) {
    static const char *const ends[] = {"endgeneration", NULL};
    chat_node_t *n;
    NEW_OR_FAIL(n, CN_BLOCK, kw);
    int rc;
    if ((rc = expect_block_end(p)) || (rc = parse_body(p, ends, &n->body, &n->n_body))) return rc;
    *out = n;
    return expect_tag(p, "endgeneration");
  }
  return fail_at(p, kw->line, kw->col, "unknown or unexpected tag '%.*s'", (int)(kw->n > 32 ? 32 : kw->n),
                 kw->p);
}

static int parse_body(parser_t *p, const char *const *ends, chat_node_t ***body, size_t *n_body) {
  vec_t v = {0};
  int rc = 0;
  if (++p->depth > PARSE_MAX_DEPTH) {
    tok_t *t = peek(p);
    return fail_at(p, t->line, t->col, "blocks nested too deeply (limit %d)", PARSE_MAX_DEPTH);
  }
  for (;;) {
    tok_t *t = peek(p);
    chat_node_t *n = NULL;
    if (t->kind == TK_EOF) {
      if (ends) {
        const char *const *last = ends;
        while (last[1]) last++;
        return fail_at(p, t->line, t->col, "unexpected end of template, expected '{%% %s %%}'", *last);
      }
      break;
    }
    if (t->kind == TK_BLOCK_BEGIN && ends) {
      bool stop = false;
      for (const char *const *e = ends; *e && !stop; e++) stop = tok_is(peek2(p), TK_NAME, *e);
      if (stop) break;
    }
    if (t->kind == TK_TEXT) {
      next(p);
      NEW_OR_FAIL(n, CN_TEXT, t);
      n->str = t->p;
      n->str_len = t->n;
    } else if (t->kind == TK_VAR_BEGIN) {
      next(p);
      NEW_OR_FAIL(n, CN_OUTPUT, t);
      if ((rc = parse_expr(p, &n->a))) return rc;
      if (peek(p)->kind != TK_VAR_END) return fail_tok(p, peek(p), "'}}'");
      next(p);
    } else if (t->kind == TK_BLOCK_BEGIN) {
      if ((rc = parse_stmt(p, &n))) return rc;
    } else {
      return fail_tok(p, t, "text or a tag");
    }
    if ((rc = vec_push(p, &v, n))) return rc;
  }
  p->depth--;
  *body = (chat_node_t **)v.v;
  *n_body = v.n;
  return 0;
}

int chat_parse(chat_template_t *t, const char *src, size_t len, char *err, size_t err_len) {
  parser_t p = {.src = src, .len = len, .arena = &t->arena, .lc_line = 1, .lc_col = 1, .err = err, .err_len = err_len};
  /* NOTE: text tokens point into SRC, which the template does not keep; copy it into the arena. */
  char *copy = chat_arena_strndup(&t->arena, src, len);
  if (!copy) return STRATA_ENOMEM;
  p.src = copy;
  int rc = lex(&p);
  if (rc == 0) rc = parse_body(&p, NULL, &t->body, &t->n_body);
  free(p.toks);
  return rc;
}
