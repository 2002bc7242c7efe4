/* chat_int.h: internals of the chat-template interpreter: arena, values, syntax tree, render context. */
#ifndef STRATA_CHAT_INT_H
#define STRATA_CHAT_INT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/chat/chat.h"

/* ---- arena: every node of a template, and every value of one render, lives in one ---- */

typedef struct chat_arena_block chat_arena_block_t;
typedef struct {
  chat_arena_block_t *head;
  size_t total_bytes; /* bytes reserved from malloc so far */
  size_t limit_bytes; /* 0: unlimited */
} chat_arena_t;

void chat_arena_init(chat_arena_t *a, size_t limit_bytes);
void chat_arena_deinit(chat_arena_t *a);
/* chat_arena_alloc: N zeroed bytes aligned to 16, or NULL when out of memory or over the limit. */
void *chat_arena_alloc(chat_arena_t *a, size_t n);
/* chat_arena_strdup: a NUL-terminated copy of S[0..N), or NULL. */
char *chat_arena_strndup(chat_arena_t *a, const char *s, size_t n);

/* ---- values ---- */

typedef enum {
  CV_UNDEF = 0, /* Jinja's Undefined: renders empty, falsy */
  CV_NONE,
  CV_BOOL,
  CV_INT,
  CV_FLOAT,
  CV_STR,
  CV_LIST,
  CV_DICT,  /* ordered; a namespace() is a dict with is_ns set */
  CV_LOOP,  /* the `loop` variable of a for loop */
  CV_FUNC,  /* a global builtin: range, namespace, raise_exception, ... */
  CV_MACRO, /* a {% macro %} */
} chat_vtype_t;

typedef struct chat_list chat_list_t;
typedef struct chat_dict chat_dict_t;
typedef struct chat_loop chat_loop_t;
typedef struct chat_node chat_node_t;

typedef struct {
  uint8_t type; /* chat_vtype_t */
  union {
    bool b;
    int64_t i;
    double f;
    struct {
      const char *p; /* not NUL-terminated in general */
      size_t n;
    } s;
    chat_list_t *list;
    chat_dict_t *dict;
    chat_loop_t *loop;
    int func; /* chat_func_t */
    const chat_node_t *macro;
  } u;
} chat_value_t;

struct chat_list {
  chat_value_t *items;
  size_t n, cap;
};

struct chat_dict {
  chat_value_t *keys, *vals;
  size_t n, cap;
  bool is_ns;
};

struct chat_loop {
  const chat_list_t *items;
  size_t index0;
};

typedef enum { CHAT_FN_RANGE = 1, CHAT_FN_NAMESPACE, CHAT_FN_RAISE, CHAT_FN_STRFTIME, CHAT_FN_DICT } chat_func_t;

static inline chat_value_t cv_undef(void) { return (chat_value_t){.type = CV_UNDEF}; }
static inline chat_value_t cv_none(void) { return (chat_value_t){.type = CV_NONE}; }
static inline chat_value_t cv_bool(bool b) { return (chat_value_t){.type = CV_BOOL, .u.b = b}; }
static inline chat_value_t cv_int(int64_t i) { return (chat_value_t){.type = CV_INT, .u.i = i}; }
static inline chat_value_t cv_float(double f) { return (chat_value_t){.type = CV_FLOAT, .u.f = f}; }
static inline chat_value_t cv_str(const char *p, size_t n) {
  return (chat_value_t){.type = CV_STR, .u.s = {p, n}};
}

/* chat_dict_get: the value stored under string KEY, or NULL. */
chat_value_t *chat_dict_get(const chat_dict_t *d, const char *key, size_t key_len);
/* chat_dict_set / chat_list_push: add or replace; 0 or STRATA_ENOMEM/EFULL (arena). */
int chat_dict_set(chat_arena_t *a, chat_dict_t *d, chat_value_t key, chat_value_t val);
int chat_list_push(chat_arena_t *a, chat_list_t *l, chat_value_t v);
/* chat_dict_append: adds without looking for KEY first (O(1)); for JSON objects, whose keys are
 * unique in practice. chat_dict_get then finds the last of repeated keys, as Python's json does. */
int chat_dict_append(chat_arena_t *a, chat_dict_t *d, chat_value_t key, chat_value_t val);
chat_list_t *chat_list_new(chat_arena_t *a, size_t cap);
chat_dict_t *chat_dict_new(chat_arena_t *a, size_t cap);

bool chat_value_truthy(chat_value_t v);
bool chat_value_equal(chat_value_t a, chat_value_t b);
const char *chat_type_name(chat_value_t v);

/* ---- growable byte buffer (malloc'd), with a size limit ---- */
typedef struct {
  char *p;
  size_t n, cap, limit;
} chat_buf_t;

/* chat_buf_put: appends; STRATA_EFULL past the limit, STRATA_ENOMEM. */
int chat_buf_put(chat_buf_t *b, const char *s, size_t n);
int chat_buf_putc(chat_buf_t *b, char c);
int chat_buf_printf(chat_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* chat_value_str: Python str() of V appended to B (None, True, 1.0, ['a', 1], {'k': 'v'}). */
int chat_value_str(chat_buf_t *b, chat_value_t v);
/* chat_value_json: JSON of V like Python's json.dumps(ensure_ascii=False); INDENT < 0: one line. */
int chat_value_json(chat_buf_t *b, chat_value_t v, int indent, int depth);

/* ---- syntax tree ---- */

typedef enum {
  /* statements */
  CN_TEXT = 1, /* str */
  CN_OUTPUT,   /* a */
  CN_IF,       /* a: condition, body, else_body (an elif is a nested CN_IF there) */
  CN_FOR,      /* names: targets, a: iterable, b: filter or NULL, body, else_body */
  CN_SET,      /* names[0] (+ attr in str), a: value, or body for a block set */
  CN_MACRO,    /* str: name, names: params, args: defaults (NULL entries), body */
  CN_BREAK,
  CN_CONTINUE,
  CN_BLOCK, /* a transparent block: generation */
  /* expressions */
  CN_LIT,    /* val */
  CN_NAME,   /* str */
  CN_ATTR,   /* a.str */
  CN_INDEX,  /* a[b] */
  CN_SLICE,  /* a[args[0]:args[1]:args[2]], entries may be NULL */
  CN_CALL,   /* a(args, kwnames=kwargs) */
  CN_FILTER, /* a | str(args, kwnames=kwargs) */
  CN_TEST,   /* a is [not] str(args); op = 1 when negated */
  CN_BINOP,  /* a op b */
  CN_UNARY,  /* op a: '-', '+' */
  CN_NOT,
  CN_AND,
  CN_OR,
  CN_COND, /* a if b else c */
  CN_LIST, /* args */
  CN_DICT, /* args: keys, kwargs: values */
} chat_kind_t;

typedef enum {
  OP_ADD = 1,
  OP_SUB,
  OP_MUL,
  OP_DIV,
  OP_FLOORDIV,
  OP_MOD,
  OP_POW,
  OP_CONCAT,
  OP_EQ,
  OP_NE,
  OP_LT,
  OP_LE,
  OP_GT,
  OP_GE,
  OP_IN,
  OP_NOTIN,
} chat_op_t;

struct chat_node {
  uint8_t kind;
  uint8_t op;
  int line, col;
  const char *str;
  size_t str_len;
  chat_node_t *a, *b, *c;
  chat_node_t **args;
  size_t n_args;
  chat_node_t **kwargs;
  const char **kwnames;
  size_t n_kwargs;
  const char **names;
  size_t n_names;
  chat_node_t **body;
  size_t n_body;
  chat_node_t **else_body;
  size_t n_else;
  chat_value_t val;
};

struct chat_template {
  chat_arena_t arena;
  chat_node_t **body;
  size_t n_body;
};

/* chat_parse: builds the tree of SRC into T's arena. 0 or STRATA_EFORMAT/ENOMEM with ERR set. */
int chat_parse(chat_template_t *t, const char *src, size_t len, char *err, size_t err_len);

/* ---- render context ---- */

typedef struct chat_scope chat_scope_t;
struct chat_scope {
  chat_scope_t *parent;
  const char **names;
  chat_value_t *vals;
  size_t n, cap;
};

typedef struct {
  chat_arena_t arena;
  chat_buf_t *out;
  chat_scope_t *root; /* globals and top-level sets */
  size_t iterations, max_iterations;
  int depth;       /* nested chat_eval calls */
  int macro_depth; /* nested macro calls */
  int loop_ctl; /* 0, 1: break, 2: continue */
  int code;     /* first error */
  char *err;
  size_t err_len;
} chat_render_t;

/* chat_rerr: records the first error (code + "line L: message") and returns CODE. */
int chat_rerr(chat_render_t *r, const chat_node_t *at, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* chat_exec: renders BODY into r->out. 0 or an error code (r->err set). */
int chat_exec(chat_render_t *r, chat_scope_t *scope, chat_node_t *const *body, size_t n);
int chat_eval(chat_render_t *r, chat_scope_t *scope, const chat_node_t *n, chat_value_t *out);
int chat_scope_set(chat_render_t *r, chat_scope_t *s, const char *name, chat_value_t v);

/* builtins (chat_builtin.c). ARGS/KW are evaluated; KWNAMES parallel to KW. */
int chat_call_filter(chat_render_t *r, const chat_node_t *at, chat_value_t in, const chat_value_t *args,
                     size_t n_args, const char **kwnames, const chat_value_t *kw, size_t n_kw,
                     chat_value_t *out);
int chat_call_test(chat_render_t *r, const chat_node_t *at, chat_value_t in, const chat_value_t *args,
                   size_t n_args, bool *out);
/* chat_call_method: OBJ.NAME(args); STRATA_ENOTFOUND (no error recorded) when OBJ has no such method. */
int chat_call_method(chat_render_t *r, const chat_node_t *at, chat_value_t obj, const char *name,
                     const chat_value_t *args, size_t n_args, chat_value_t *out);
int chat_call_func(chat_render_t *r, const chat_node_t *at, int func, const chat_value_t *args,
                   size_t n_args, const char **kwnames, const chat_value_t *kw, size_t n_kw,
                   chat_value_t *out);
/* chat_global_func: the builtin named NAME, or 0. */
int chat_global_func(const char *name);
/* chat_to_string: str(V) as an arena string. */
int chat_to_string(chat_render_t *r, chat_value_t v, chat_value_t *out);

#endif
