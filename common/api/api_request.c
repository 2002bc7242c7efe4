/* api_request.c: parsing and validating OpenAI completions and chat completions requests. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "common/api/api.h"
#include "common/api/api_int.h"
#include "common/log.h"
#include "common/status.h"

int api_error_set(api_error_t *e, int status, const char *type, const char *param, const char *fmt, ...) {
  memset(e, 0, sizeof *e);
  e->status = status;
  snprintf(e->type, sizeof e->type, "%s", type ? type : "invalid_request_error");
  snprintf(e->param, sizeof e->param, "%s", param ? param : "");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->message, sizeof e->message, fmt, ap);
  va_end(ap);
  return STRATA_EINVAL;
}

char *api_error_json(const api_error_t *e) {
  cJSON *root = cJSON_CreateObject(), *o = cJSON_AddObjectToObject(root, "error");
  if (!o) goto fail;
  char msg[sizeof e->message];
  api_utf8_sanitize(e->message, strlen(e->message), msg, sizeof msg);
  cJSON_AddStringToObject(o, "message", msg);
  cJSON_AddStringToObject(o, "type", e->type[0] ? e->type : "invalid_request_error");
  if (e->param[0]) cJSON_AddStringToObject(o, "param", e->param);
  else cJSON_AddNullToObject(o, "param");
  if (e->code[0]) cJSON_AddStringToObject(o, "code", e->code);
  else cJSON_AddNumberToObject(o, "code", e->status);
  char *s = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return s;
fail:
  cJSON_Delete(root);
  return NULL;
}

/* ---- typed field access: each returns 0 (absent: *OUT untouched), 1 (set) or STRATA_EINVAL ---- */

static const cJSON *field(const cJSON *o, const char *name) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  return v && !cJSON_IsNull(v) ? v : NULL;
}

static int get_float(const cJSON *o, const char *name, double lo, double hi, int lo_open, float *out,
                     api_error_t *err) {
  const cJSON *v = field(o, name);
  if (!v) return 0;
  if (!cJSON_IsNumber(v)) return api_error_set(err, 400, NULL, name, "'%s' must be a number", name);
  double x = v->valuedouble;
  if (!isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
    return api_error_set(err, 400, NULL, name, "'%s' must be in %c%g, %g], got %g", name, lo_open ? '(' : '[', lo,
                         hi, x);
  *out = (float)x;
  return 1;
}

static int get_int64(const cJSON *o, const char *name, double lo, double hi, int64_t *out, api_error_t *err) {
  const cJSON *v = field(o, name);
  if (!v) return 0;
  if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
    return api_error_set(err, 400, NULL, name, "'%s' must be an integer", name);
  double x = v->valuedouble;
  if (x < lo || x > hi) return api_error_set(err, 400, NULL, name, "'%s' must be in [%.0f, %.0f], got %.0f", name, lo, hi, x);
  *out = (int64_t)x;
  return 1;
}

static int get_int(const cJSON *o, const char *name, int lo, int hi, int *out, api_error_t *err) {
  int64_t x;
  int rc = get_int64(o, name, lo, hi, &x, err);
  if (rc == 1) *out = (int)x;
  return rc;
}

static int get_bool(const cJSON *o, const char *name, int *out, api_error_t *err) {
  const cJSON *v = field(o, name);
  if (!v) return 0;
  if (!cJSON_IsBool(v)) return api_error_set(err, 400, NULL, name, "'%s' must be a boolean", name);
  *out = cJSON_IsTrue(v);
  return 1;
}

/* ---- UTF-8 ---- */

int api_utf8_valid(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  for (size_t i = 0; i < n;) {
    int len = api_utf8_seq_len(p + i, n - i);
    if (len <= 0) return 0;
    i += (size_t)len;
  }
  return 1;
}

/* api_utf8_seq_len: the length of the valid UTF-8 sequence at P (at most N bytes), or 0. */
int api_utf8_seq_len(const unsigned char *p, size_t n) {
  unsigned c = p[0];
  int len;
  unsigned min;
  if (c < 0x80) return 1;
  if ((c & 0xe0) == 0xc0) len = 2, min = 0x80;
  else if ((c & 0xf0) == 0xe0) len = 3, min = 0x800;
  else if ((c & 0xf8) == 0xf0) len = 4, min = 0x10000;
  else return 0;
  if ((size_t)len > n) return 0;
  unsigned cp = c & (0x7f >> len);
  for (int k = 1; k < len; k++) {
    if ((p[k] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (p[k] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return len;
}

size_t api_utf8_sanitize(const char *s, size_t n, char *out, size_t cap) {
  size_t o = 0;
  if (!cap) return 0;
  for (size_t i = 0; i < n && s[i];) {
    int len = api_utf8_seq_len((const unsigned char *)s + i, n - i);
    const char *src = len > 0 ? s + i : "\xef\xbf\xbd"; /* U+FFFD for a bad byte */
    size_t k = len > 0 ? (size_t)len : 3;
    if (o + k + 1 > cap) break;
    memcpy(out + o, src, k);
    o += k;
    i += len > 0 ? (size_t)len : 1;
  }
  out[o] = '\0';
  return o;
}

/* ---- parameters ---- */

static uint64_t random_seed(void) {
  uint64_t s = 0;
  if (getrandom(&s, sizeof s, 0) != (ssize_t)sizeof s) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    s = ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)&ts;
  }
  return s;
}

static int parse_stops(api_request_t *r, const api_ctx_t *ctx, const cJSON *body, api_error_t *err) {
  const cJSON *v = field(body, "stop");
  if (!v) return 0;
  int max_stops = ctx->max_stops > 0 ? ctx->max_stops : 8, max_len = ctx->max_stop_len > 0 ? ctx->max_stop_len : 256;
  int n = cJSON_IsString(v) ? 1 : cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
  if (n < 0) return api_error_set(err, 400, NULL, "stop", "'stop' must be a string or a list of strings");
  if (n > max_stops) return api_error_set(err, 400, NULL, "stop", "at most %d stop strings are allowed, got %d", max_stops, n);
  if (n && !(r->stops = calloc((size_t)n, sizeof(char *)))) return STRATA_ENOMEM;
  for (int i = 0; i < n; i++) {
    const cJSON *s = cJSON_IsString(v) ? v : cJSON_GetArrayItem(v, i);
    if (!cJSON_IsString(s)) return api_error_set(err, 400, NULL, "stop", "'stop' must be a string or a list of strings");
    size_t len = strlen(s->valuestring);
    if (len == 0) return api_error_set(err, 400, NULL, "stop", "stop strings must not be empty");
    if (len > (size_t)max_len)
      return api_error_set(err, 400, NULL, "stop", "stop strings are limited to %d bytes, got %zu", max_len, len);
    if (!api_utf8_valid(s->valuestring, len)) return api_error_set(err, 400, NULL, "stop", "stop strings must be valid UTF-8");
    if (!(r->stops[i] = strdup(s->valuestring))) return STRATA_ENOMEM;
    r->n_stops++;
  }
  return 0;
}

static int parse_stop_ids(api_sampling_t *sp, const api_ctx_t *ctx, const cJSON *body, api_error_t *err) {
  const cJSON *v = field(body, "stop_token_ids");
  if (!v) return 0;
  if (!cJSON_IsArray(v)) return api_error_set(err, 400, NULL, "stop_token_ids", "'stop_token_ids' must be a list of integers");
  int n = cJSON_GetArraySize(v), vocab = tok_vocab_size(ctx->tok);
  if (n > API_MAX_STOP_IDS - 8)
    return api_error_set(err, 400, NULL, "stop_token_ids", "at most %d stop token ids are allowed", API_MAX_STOP_IDS - 8);
  for (int i = 0; i < n; i++) {
    const cJSON *x = cJSON_GetArrayItem(v, i);
    if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble < 0 || x->valuedouble >= vocab)
      return api_error_set(err, 400, NULL, "stop_token_ids", "stop_token_ids[%d] is not a token id in [0, %d)", i, vocab);
    sp->stop_ids[sp->n_stop_ids++] = (int32_t)x->valuedouble;
  }
  return 0;
}

/* parse_logprobs: completions take an integer (top alternatives), chat a boolean plus top_logprobs. */
static int parse_logprobs(api_request_t *r, api_sampling_t *sp, const cJSON *body, api_error_t *err) {
  int rc;
  r->completion_logprobs = -1;
  if (r->kind == API_COMPLETIONS) {
    int n = -1;
    if ((rc = get_int(body, "logprobs", 0, API_MAX_TOP_LOGPROBS, &n, err)) < 0) return rc;
    if (rc == 1) {
      r->completion_logprobs = n;
      sp->logprobs = 1;
      sp->top_logprobs = n;
    }
    return 0;
  }
  int on = 0, top = 0;
  if ((rc = get_bool(body, "logprobs", &on, err)) < 0) return rc;
  if ((rc = get_int(body, "top_logprobs", 0, API_MAX_TOP_LOGPROBS, &top, err)) < 0) return rc;
  if (rc == 1 && top > 0 && !on)
    return api_error_set(err, 400, NULL, "top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
  sp->logprobs = on;
  sp->top_logprobs = on ? top : 0;
  return 0;
}

/* parse_sampling: every sampling parameter into SP, and *MAX_TOKENS (-1 when the client gave none). */
static int parse_sampling(api_request_t *r, const api_ctx_t *ctx, const cJSON *body, api_sampling_t *sp,
                          int *max_tokens, api_error_t *err) {
  int rc;
  memset(sp, 0, sizeof *sp);
  sp->temperature = 1.0f;
  sp->top_p = 1.0f;
  sp->repetition_penalty = 1.0f;
  if ((rc = get_float(body, "temperature", 0, 100, 0, &sp->temperature, err)) < 0) return rc;
  if ((rc = get_float(body, "top_p", 0, 1, 1, &sp->top_p, err)) < 0) return rc;
  if ((rc = get_float(body, "min_p", 0, 1, 0, &sp->min_p, err)) < 0) return rc;
  if ((rc = get_int(body, "top_k", -1, 1 << 30, &sp->top_k, err)) < 0) return rc;
  if ((rc = get_float(body, "repetition_penalty", 0, 10, 1, &sp->repetition_penalty, err)) < 0) return rc;
  if ((rc = get_float(body, "presence_penalty", -2, 2, 0, &sp->presence_penalty, err)) < 0) return rc;
  if ((rc = get_float(body, "frequency_penalty", -2, 2, 0, &sp->frequency_penalty, err)) < 0) return rc;
  if ((rc = get_int(body, "min_tokens", 0, 1 << 30, &sp->min_tokens, err)) < 0) return rc;
  if ((rc = get_bool(body, "ignore_eos", &sp->ignore_eos, err)) < 0) return rc;
  int64_t seed;
  if ((rc = get_int64(body, "seed", -9.2e18, 1.8e19, &seed, err)) < 0) return rc;
  r->has_seed = rc == 1;
  sp->seed = r->has_seed ? (uint64_t)seed : random_seed();
  *max_tokens = -1;
  const char *mt = "max_tokens";
  if (r->kind == API_CHAT && field(body, "max_completion_tokens")) mt = "max_completion_tokens";
  if ((rc = get_int(body, mt, 1, 1 << 30, max_tokens, err)) < 0) return rc;
  if (*max_tokens > 0 && sp->min_tokens > *max_tokens)
    return api_error_set(err, 400, NULL, "min_tokens", "'min_tokens' (%d) must not exceed '%s' (%d)", sp->min_tokens,
                         mt, *max_tokens);
  if ((rc = parse_logprobs(r, sp, body, err)) < 0) return rc;
  if ((rc = parse_stop_ids(sp, ctx, body, err)) < 0) return rc;
  if (!sp->ignore_eos) { /* NOTE: eot / im_end end a turn too; the sampler masks them under min_tokens */
    int32_t eos[8];
    int n = tok_eos_ids(ctx->tok, eos, 8);
    for (int i = 0; i < n && sp->n_stop_ids < API_MAX_STOP_IDS; i++) sp->stop_ids[sp->n_stop_ids++] = eos[i];
  }
  return 0;
}

static int parse_stream(api_request_t *r, const cJSON *body, api_error_t *err) {
  int rc;
  if ((rc = get_bool(body, "stream", &r->stream, err)) < 0) return rc;
  const cJSON *so = field(body, "stream_options");
  if (!so) return 0;
  if (!cJSON_IsObject(so)) return api_error_set(err, 400, NULL, "stream_options", "'stream_options' must be an object");
  if (!r->stream)
    return api_error_set(err, 400, NULL, "stream_options", "'stream_options' is only allowed when 'stream' is true");
  if ((rc = get_bool(so, "include_usage", &r->include_usage, err)) < 0) {
    snprintf(err->param, sizeof err->param, "stream_options.include_usage");
    return rc;
  }
  return 0;
}

void api_request_free(api_request_t *r) {
  if (!r) return;
  for (int i = 0; r->prompt_texts && i < r->n_prompts; i++) free(r->prompt_texts[i]);
  free(r->prompt_texts);
  free(r->prompt_lens);
  for (int i = 0; r->stops && i < r->n_stops; i++) free(r->stops[i]);
  free(r->stops);
  for (int i = 0; r->choices && i < r->n_choices; i++) free(r->choices[i].ids);
  free(r->choices);
  memset(r, 0, sizeof *r);
}

/* build_choices: one engine request per (prompt, i < n), with the prompt's ids and its max_tokens. */
static int build_choices(api_request_t *r, const api_ctx_t *ctx, int32_t **ids, const int *n_ids,
                         const api_sampling_t *sp, int max_tokens, api_error_t *err) {
  const char *pname = r->kind == API_CHAT ? "messages" : "prompt";
  for (int p = 0; p < r->n_prompts; p++) {
    int np = n_ids[p];
    if (np >= ctx->max_model_len)
      return api_error_set(err, 400, NULL, pname,
                           "This model's maximum context length is %d tokens. However, your prompt has %d tokens. "
                           "Please reduce the length of the prompt.", ctx->max_model_len, np);
    if (max_tokens > 0 && np + max_tokens > ctx->max_model_len)
      return api_error_set(err, 400, NULL, r->kind == API_CHAT ? "max_completion_tokens" : "max_tokens",
                           "This model's maximum context length is %d tokens. However, you requested %d tokens "
                           "(%d in the %s, %d for the completion). Please reduce the length of the %s or the "
                           "completion.", ctx->max_model_len, np + max_tokens, np, pname, max_tokens, pname);
  }
  r->n_choices = r->n_prompts * r->n;
  if (!(r->choices = calloc((size_t)r->n_choices, sizeof *r->choices))) return STRATA_ENOMEM;
  for (int c = 0; c < r->n_choices; c++) {
    api_choice_req_t *ch = &r->choices[c];
    int p = c / r->n, np = n_ids[p];
    ch->prompt_index = p;
    if (!(ch->ids = malloc(sizeof(int32_t) * (size_t)(np ? np : 1)))) return STRATA_ENOMEM;
    memcpy(ch->ids, ids[p], sizeof(int32_t) * (size_t)np);
    ch->n_ids = np;
    ch->sp = *sp;
    /* NOTE: a request without max_tokens gets OpenAI's default (16 for completions, the rest of the
     * context for chat), capped to fit the context rather than refused. */
    int room = ctx->max_model_len - np;
    int mt = max_tokens > 0 ? max_tokens : r->kind == API_COMPLETIONS ? 16 : room;
    ch->sp.max_tokens = mt < room ? mt : room;
    if (ch->sp.min_tokens > ch->sp.max_tokens) ch->sp.min_tokens = ch->sp.max_tokens;
    ch->sp.seed = sp->seed + (uint64_t)(c % r->n); /* the n choices of one prompt differ */
  }
  return 0;
}

int api_request_parse(api_request_t *r, const api_ctx_t *ctx, api_kind_t kind, const char *body_text, size_t len,
                      api_error_t *err) {
  memset(r, 0, sizeof *r);
  memset(err, 0, sizeof *err);
  r->kind = kind;
  r->n = 1;
  int rc, max_tokens = -1;
  int32_t **ids = NULL;
  int *n_ids = NULL;
  api_sampling_t sp;
  cJSON *body = cJSON_ParseWithLength(body_text, len);
  if (!body) return api_error_set(err, 400, NULL, NULL, "The request body is not valid JSON.");
  if (!cJSON_IsObject(body)) {
    rc = api_error_set(err, 400, NULL, NULL, "The request body must be a JSON object.");
    goto out;
  }
  const cJSON *model = field(body, "model");
  if (model && !cJSON_IsString(model)) {
    rc = api_error_set(err, 400, NULL, "model", "'model' must be a string");
    goto out;
  }
  if (model && ctx->model_name && strcmp(model->valuestring, ctx->model_name) != 0) {
    rc = api_error_set(err, 404, NULL, "model", "The model `%.200s` does not exist.", model->valuestring);
    snprintf(err->code, sizeof err->code, "model_not_found");
    goto out;
  }
  int max_n = ctx->max_n > 0 ? ctx->max_n : 16;
  if ((rc = get_int(body, "n", 1, max_n, &r->n, err)) < 0) goto out;
  if ((rc = parse_stream(r, body, err)) < 0) goto out;
  if (kind == API_COMPLETIONS && (rc = get_bool(body, "echo", &r->echo, err)) < 0) goto out;
  if ((rc = parse_sampling(r, ctx, body, &sp, &max_tokens, err)) < 0) goto out;
  if ((rc = parse_stops(r, ctx, body, err)) < 0) goto out;
  rc = kind == API_CHAT ? api_parse_messages(r, ctx, body, &ids, &n_ids, err)
                        : api_parse_prompts(r, ctx, body, &ids, &n_ids, err);
  if (rc < 0) goto out;
  if (r->n_prompts * r->n > max_n) {
    rc = api_error_set(err, 400, NULL, "n", "at most %d choices (prompts x n) per request, got %d", max_n,
                       r->n_prompts * r->n);
    goto out;
  }
  rc = build_choices(r, ctx, ids, n_ids, &sp, max_tokens, err);
out:
  if (rc == STRATA_ENOMEM && !err->status) api_error_set(err, 500, "internal_error", NULL, "out of memory");
  for (int i = 0; ids && i < r->n_prompts; i++) free(ids[i]);
  free(ids);
  free(n_ids);
  cJSON_Delete(body);
  return rc < 0 ? rc : 0;
}
