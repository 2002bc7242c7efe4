/* chat.c: the public chat-template API: compile, render (plain or JSON messages), fallback, family. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/chat/chat.h"
#include "common/chat/chat_int.h"
#include "common/log.h"
#include "common/status.h"

#define DEFAULT_MAX_OUTPUT ((size_t)4 << 20)
#define DEFAULT_MAX_ITERATIONS ((size_t)1000000)
#define DEFAULT_MAX_MEMORY ((size_t)64 << 20)

static void set_err(char *err, size_t err_len, const char *msg) {
  if (err && err_len) snprintf(err, err_len, "%s", msg);
}

int chat_template_compile(const char *src, size_t len, chat_template_t **out, char *err, size_t err_len) {
  if (out) *out = NULL;
  if (!src || !out) {
    set_err(err, err_len, "no template source");
    return STRATA_EINVAL;
  }
  if (len == (size_t)-1) len = strlen(src);
  chat_template_t *t = calloc(1, sizeof(*t));
  if (!t) return STRATA_ENOMEM;
  chat_arena_init(&t->arena, 0);
  char local[CHAT_ERR_MAX] = "";
  int rc = chat_parse(t, src, len, local, sizeof(local));
  if (rc) {
    if (rc == STRATA_ENOMEM) snprintf(local, sizeof(local), "out of memory");
    log_error("chat template does not compile: %s", local);
    set_err(err, err_len, local);
    chat_template_free(t);
    return rc;
  }
  *out = t;
  return 0;
}

void chat_template_free(chat_template_t *t) {
  if (!t) return;
  chat_arena_deinit(&t->arena);
  free(t);
}

/* ---- JSON to values ---- */

static int from_json(chat_arena_t *a, const cJSON *j, chat_value_t *out, int depth) {
  if (depth > 64) return STRATA_EINVAL;
  if (cJSON_IsNull(j)) *out = cv_none();
  else if (cJSON_IsBool(j)) *out = cv_bool(cJSON_IsTrue(j));
  else if (cJSON_IsNumber(j)) {
    double d = j->valuedouble;
    *out = (d == (double)(int64_t)d && d > -9e15 && d < 9e15) ? cv_int((int64_t)d) : cv_float(d);
  } else if (cJSON_IsString(j)) {
    size_t n = strlen(j->valuestring);
    char *s = chat_arena_strndup(a, j->valuestring, n);
    if (!s) return STRATA_ENOMEM;
    *out = cv_str(s, n);
  } else if (cJSON_IsArray(j)) {
    chat_list_t *l = chat_list_new(a, (size_t)cJSON_GetArraySize(j));
    if (!l) return STRATA_ENOMEM;
    const cJSON *e;
    cJSON_ArrayForEach(e, j) {
      int rc = from_json(a, e, &l->items[l->n++], depth + 1);
      if (rc) return rc;
    }
    out->type = CV_LIST;
    out->u.list = l;
  } else if (cJSON_IsObject(j)) {
    chat_dict_t *d = chat_dict_new(a, (size_t)cJSON_GetArraySize(j));
    if (!d) return STRATA_ENOMEM;
    const cJSON *e;
    cJSON_ArrayForEach(e, j) {
      chat_value_t v;
      size_t kn = strlen(e->string);
      char *k = chat_arena_strndup(a, e->string, kn);
      int rc = k ? from_json(a, e, &v, depth + 1) : STRATA_ENOMEM;
      if (rc == 0) rc = chat_dict_append(a, d, cv_str(k, kn), v);
      if (rc) return rc;
    }
    out->type = CV_DICT;
    out->u.dict = d;
  } else {
    return STRATA_EINVAL;
  }
  return 0;
}

static int parse_json_value(chat_arena_t *a, const char *json, const char *what, chat_value_t *out, char *err,
                            size_t err_len) {
  cJSON *j = cJSON_Parse(json);
  if (!j || !cJSON_IsArray(j)) {
    if (err && err_len) snprintf(err, err_len, "%s is not a JSON array", what);
    cJSON_Delete(j);
    return STRATA_EINVAL;
  }
  int rc = from_json(a, j, out, 0);
  cJSON_Delete(j);
  if (rc == STRATA_EINVAL && err && err_len) snprintf(err, err_len, "%s is nested too deeply", what);
  if (rc && rc != STRATA_EINVAL && err && err_len) snprintf(err, err_len, "render memory limit exceeded");
  return rc == STRATA_ENOMEM ? STRATA_EFULL : rc;
}

/* ---- render ---- */

static int set_str(chat_render_t *r, chat_scope_t *s, const char *name, const char *val) {
  size_t n = val ? strlen(val) : 0;
  char *copy = chat_arena_strndup(&r->arena, val ? val : "", n);
  if (!copy) return STRATA_EFULL;
  return chat_scope_set(r, s, name, cv_str(copy, n));
}

/* Renders with `messages` = MESSAGES (already built in R's arena). */
static int render_with(const chat_template_t *t, chat_render_t *r, chat_value_t messages,
                       const chat_render_opts_t *o, char **out, size_t *out_len) {
  chat_buf_t buf = {.limit = o->max_output_bytes ? o->max_output_bytes : DEFAULT_MAX_OUTPUT};
  chat_scope_t *globals = chat_arena_alloc(&r->arena, sizeof(*globals));
  chat_scope_t *top = chat_arena_alloc(&r->arena, sizeof(*top));
  int rc = globals && top ? 0 : STRATA_EFULL;
  if (rc == 0) {
    top->parent = globals;
    r->root = top;
    r->out = &buf;
    rc = chat_scope_set(r, globals, "messages", messages);
  }
  if (rc == 0) rc = chat_scope_set(r, globals, "add_generation_prompt", cv_bool(o->add_generation_prompt));
  if (rc == 0) rc = set_str(r, globals, "bos_token", o->bos_token);
  if (rc == 0) rc = set_str(r, globals, "eos_token", o->eos_token);
  for (size_t i = 0; rc == 0 && i < o->n_vars; i++) {
    if (!o->vars[i].name) continue;
    char *name = chat_arena_strndup(&r->arena, o->vars[i].name, strlen(o->vars[i].name));
    rc = name ? set_str(r, globals, name, o->vars[i].value) : STRATA_EFULL;
  }
  if (rc == 0 && o->tools_json) {
    chat_value_t tools;
    rc = parse_json_value(&r->arena, o->tools_json, "tools", &tools, r->err, r->err_len);
    if (rc) {
      free(buf.p);
      return rc;
    }
    rc = chat_scope_set(r, globals, "tools", tools);
  }
  if (rc) {
    set_err(r->err, r->err_len, "render memory limit exceeded");
    free(buf.p);
    return rc;
  }
  rc = chat_exec(r, top, t->body, t->n_body);
  if (rc == 0 && !buf.p) {
    buf.p = calloc(1, 1);
    if (!buf.p) rc = STRATA_ENOMEM;
  }
  if (rc) {
    free(buf.p);
    if (rc == STRATA_EINVAL) log_debug("chat template rejected the conversation: %s", r->err ? r->err : "");
    else log_warn("chat template failed to render: %s", r->err ? r->err : strata_strerror(rc));
    return rc;
  }
  *out = buf.p;
  if (out_len) *out_len = buf.n;
  return 0;
}

static void render_init(chat_render_t *r, const chat_render_opts_t *o, char *err, size_t err_len) {
  memset(r, 0, sizeof(*r));
  chat_arena_init(&r->arena, o->max_memory_bytes ? o->max_memory_bytes : DEFAULT_MAX_MEMORY);
  r->max_iterations = o->max_iterations ? o->max_iterations : DEFAULT_MAX_ITERATIONS;
  r->err = err;
  r->err_len = err_len;
}

int chat_template_render(const chat_template_t *t, const chat_message_t *msgs, size_t n_msgs,
                         const chat_render_opts_t *opts, char **out, size_t *out_len, char *err, size_t err_len) {
  static const chat_render_opts_t defaults = {0};
  if (out) *out = NULL;
  if (err && err_len) err[0] = 0;
  if (!t || !out || (!msgs && n_msgs)) {
    set_err(err, err_len, "invalid arguments");
    return STRATA_EINVAL;
  }
  const chat_render_opts_t *o = opts ? opts : &defaults;
  chat_render_t r;
  render_init(&r, o, err, err_len);
  int rc = 0;
  chat_list_t *l = chat_list_new(&r.arena, n_msgs);
  if (!l) rc = STRATA_EFULL;
  for (size_t i = 0; rc == 0 && i < n_msgs; i++) {
    chat_dict_t *d = chat_dict_new(&r.arena, 2);
    const char *role = msgs[i].role ? msgs[i].role : "";
    char *rs = chat_arena_strndup(&r.arena, role, strlen(role));
    char *cs = msgs[i].content ? chat_arena_strndup(&r.arena, msgs[i].content, strlen(msgs[i].content)) : NULL;
    if (!d || !rs || (msgs[i].content && !cs)) {
      rc = STRATA_EFULL;
      break;
    }
    chat_value_t content = cs ? cv_str(cs, strlen(cs)) : cv_none();
    rc = chat_dict_set(&r.arena, d, cv_str("role", 4), cv_str(rs, strlen(rs)));
    if (rc == 0) rc = chat_dict_set(&r.arena, d, cv_str("content", 7), content);
    l->items[l->n++] = (chat_value_t){.type = CV_DICT, .u.dict = d};
  }
  if (rc) set_err(err, err_len, "render memory limit exceeded");
  else rc = render_with(t, &r, (chat_value_t){.type = CV_LIST, .u.list = l}, o, out, out_len);
  chat_arena_deinit(&r.arena);
  return rc;
}

int chat_template_render_json(const chat_template_t *t, const char *messages_json, const chat_render_opts_t *opts,
                              char **out, size_t *out_len, char *err, size_t err_len) {
  static const chat_render_opts_t defaults = {0};
  if (out) *out = NULL;
  if (err && err_len) err[0] = 0;
  if (!t || !out || !messages_json) {
    set_err(err, err_len, "invalid arguments");
    return STRATA_EINVAL;
  }
  const chat_render_opts_t *o = opts ? opts : &defaults;
  chat_render_t r;
  render_init(&r, o, err, err_len);
  chat_value_t messages;
  int rc = parse_json_value(&r.arena, messages_json, "messages", &messages, err, err_len);
  if (rc == 0) rc = render_with(t, &r, messages, o, out, out_len);
  chat_arena_deinit(&r.arena);
  return rc;
}

/* ---- fallback and family ---- */

int chat_render_fallback(const chat_message_t *msgs, size_t n_msgs, bool add_generation_prompt, char **out,
                         size_t *out_len) {
  if (out) *out = NULL;
  if (!out || (!msgs && n_msgs)) return STRATA_EINVAL;
  chat_buf_t b = {0};
  int rc = chat_buf_put(&b, "", 0);
  for (size_t i = 0; rc == 0 && i < n_msgs; i++) {
    if (!msgs[i].role) {
      rc = STRATA_EINVAL;
      break;
    }
    const char *c = msgs[i].content ? msgs[i].content : "";
    rc = chat_buf_put(&b, "<|im_start|>", 12);
    if (rc == 0) rc = chat_buf_put(&b, msgs[i].role, strlen(msgs[i].role));
    if (rc == 0) rc = chat_buf_putc(&b, '\n');
    if (rc == 0) rc = chat_buf_put(&b, c, strlen(c));
    if (rc == 0) rc = chat_buf_put(&b, "<|im_end|>\n", 11);
  }
  if (rc == 0 && add_generation_prompt) rc = chat_buf_put(&b, "<|im_start|>assistant\n", 22);
  if (rc == 0 && !b.p) rc = (b.p = calloc(1, 1)) ? 0 : STRATA_ENOMEM;
  if (rc) {
    free(b.p);
    return rc;
  }
  *out = b.p;
  if (out_len) *out_len = b.n;
  return 0;
}

chat_family_t chat_template_family(const char *src) {
  if (!src) return CHAT_FAMILY_UNKNOWN;
  /* NOTE: order matters: Llama 3 and ChatML templates may mention [INST] in tool prompts. */
  if (strstr(src, "<|start_header_id|>")) return CHAT_FAMILY_LLAMA3;
  if (strstr(src, "<|im_start|>")) return CHAT_FAMILY_CHATML;
  if (strstr(src, "<start_of_turn>")) return CHAT_FAMILY_GEMMA;
  if (strstr(src, "<|end|>") && strstr(src, "<|user|>")) return CHAT_FAMILY_PHI3;
  if (strstr(src, "<|user|>")) return CHAT_FAMILY_ZEPHYR;
  if (strstr(src, "[INST]")) return strstr(src, "<<SYS>>") ? CHAT_FAMILY_LLAMA2 : CHAT_FAMILY_MISTRAL;
  return CHAT_FAMILY_UNKNOWN;
}

const char *chat_family_name(chat_family_t family) {
  switch (family) {
    case CHAT_FAMILY_CHATML: return "chatml";
    case CHAT_FAMILY_LLAMA3: return "llama3";
    case CHAT_FAMILY_LLAMA2: return "llama2";
    case CHAT_FAMILY_MISTRAL: return "mistral";
    case CHAT_FAMILY_GEMMA: return "gemma";
    case CHAT_FAMILY_PHI3: return "phi3";
    case CHAT_FAMILY_ZEPHYR: return "zephyr";
    default: return "unknown";
  }
}
