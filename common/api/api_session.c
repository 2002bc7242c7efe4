/* api_session.c: one request's generation session: engine token events -> detokenized text with
 * stop strings -> OpenAI JSON (non-streamed) or Server-Sent Events chunks (streamed). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/api/api_int.h"
#include "common/status.h"

typedef struct {
  detok_t dt;
  stop_matcher_t sm;
  int done;
  api_finish_t finish;
  int n_generated;
  int n_cached;        /* the most prompt tokens an event said came from the prefix cache */
  char *text;          /* everything emitted (non-streamed responses) */
  size_t text_len, text_cap;
  size_t offset;       /* bytes of text emitted so far, echo included (completions text_offset) */
  cJSON *logprobs;     /* accumulated (non-streamed): chat {"content":[]}, completions the 4 arrays */
} choice_t;

struct api_session {
  const api_request_t *r;
  const api_ctx_t *ctx;
  char id[64];
  int64_t created;
  choice_t *ch;   /* (r->n_choices) */
  int n_done;
  char *tmp, *tmp2;
  size_t tmp_cap, tmp2_cap;
};

const char *api_finish_name(api_finish_t f) {
  static const char *names[] = {NULL, "stop", "length", "abort", "error"};
  return f >= API_FINISH_STOP && f <= API_FINISH_ERROR ? names[f] : NULL;
}

static int want_logprobs(const api_session_t *s, int c) { return s->r->choices[c].sp.logprobs; }

static cJSON *new_logprobs(api_kind_t kind) {
  cJSON *lp = cJSON_CreateObject();
  if (!lp) return NULL;
  if (kind == API_CHAT) {
    cJSON_AddArrayToObject(lp, "content");
  } else {
    cJSON_AddArrayToObject(lp, "tokens");
    cJSON_AddArrayToObject(lp, "token_logprobs");
    cJSON_AddArrayToObject(lp, "top_logprobs");
    cJSON_AddArrayToObject(lp, "text_offset");
  }
  return lp;
}

int api_session_new(api_session_t **out, const api_request_t *r, const api_ctx_t *ctx, const char *id,
                    int64_t created) {
  if (!r || !ctx || !id || r->n_choices <= 0) return STRATA_EINVAL;
  api_session_t *s = calloc(1, sizeof *s);
  if (!s) return STRATA_ENOMEM;
  s->r = r;
  s->ctx = ctx;
  snprintf(s->id, sizeof s->id, "%s", id);
  s->created = created;
  if (!(s->ch = calloc((size_t)r->n_choices, sizeof *s->ch))) goto fail;
  for (int c = 0; c < r->n_choices; c++) {
    choice_t *ch = &s->ch[c];
    detok_init(&ch->dt, ctx->tok, 1);
    detok_prime(&ch->dt, r->choices[c].ids, r->choices[c].n_ids);
    if (stop_init(&ch->sm, (const char *const *)r->stops, r->n_stops)) goto fail;
    if (want_logprobs(s, c) && !r->stream && !(ch->logprobs = new_logprobs(r->kind))) goto fail;
    if (r->echo) ch->offset = strlen(r->prompt_texts[r->choices[c].prompt_index]);
  }
  *out = s;
  return 0;
fail:
  api_session_free(s);
  return STRATA_ENOMEM;
}

void api_session_free(api_session_t *s) {
  if (!s) return;
  for (int c = 0; s->ch && c < s->r->n_choices; c++) {
    stop_deinit(&s->ch[c].sm);
    free(s->ch[c].text);
    cJSON_Delete(s->ch[c].logprobs);
  }
  free(s->ch);
  free(s->tmp);
  free(s->tmp2);
  free(s);
}

int api_session_done(const api_session_t *s) { return s->n_done == s->r->n_choices; }

void api_session_usage(const api_session_t *s, int *prompt_tokens, int *completion_tokens) {
  int p = 0, g = 0;
  for (int i = 0; i < s->r->n_prompts; i++) p += s->r->prompt_lens[i];
  for (int c = 0; c < s->r->n_choices; c++) g += s->ch[c].n_generated;
  *prompt_tokens = p;
  *completion_tokens = g;
}

int api_session_cached(const api_session_t *s) {
  int sum = 0;
  for (int i = 0; i < s->r->n_prompts; i++) {
    int most = 0;
    for (int c = 0; c < s->r->n_choices; c++)
      if (s->r->choices[c].prompt_index == i && s->ch[c].n_cached > most) most = s->ch[c].n_cached;
    sum += most < s->r->prompt_lens[i] ? most : s->r->prompt_lens[i];
  }
  return sum;
}

/* ---- output helpers ---- */

static int put(char **out, size_t *len, size_t *cap, const char *s, size_t n) {
  if (*len + n + 1 > *cap) {
    size_t c = *cap ? *cap : 256;
    while (c < *len + n + 1) c *= 2;
    char *p = realloc(*out, c);
    if (!p) return STRATA_ENOMEM;
    *out = p;
    *cap = c;
  }
  memcpy(*out + *len, s, n);
  *len += n;
  (*out)[*len] = '\0';
  return 0;
}

/* put_sse: "data: " + JSON of ROOT + "\n\n"; ROOT is consumed. */
static int put_sse(cJSON *root, char **out, size_t *len, size_t *cap) {
  char *js = root ? cJSON_PrintUnformatted(root) : NULL;
  cJSON_Delete(root);
  if (!js) return STRATA_ENOMEM;
  int rc = put(out, len, cap, "data: ", 6);
  if (!rc) rc = put(out, len, cap, js, strlen(js));
  if (!rc) rc = put(out, len, cap, "\n\n", 2);
  free(js);
  return rc;
}

/* token_text: the token's bytes as valid UTF-8 (invalid bytes of a partial character as U+FFFD). */
static void token_text(const api_session_t *s, int32_t id, char *buf, size_t cap, const char **raw, size_t *raw_len) {
  *raw = "";
  *raw_len = 0;
  tok_piece(s->ctx->tok, id, raw, raw_len);
  api_utf8_sanitize(*raw, *raw_len, buf, cap);
}

static cJSON *bytes_array(const char *raw, size_t n) {
  cJSON *a = cJSON_CreateArray();
  for (size_t i = 0; a && i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((unsigned char)raw[i]));
  return a;
}

/* add_logprob: appends EV's token (and alternatives) to LP in the request kind's layout. */
static void add_logprob(const api_session_t *s, cJSON *lp, const api_event_t *ev, size_t offset) {
  char buf[256];
  const char *raw;
  size_t raw_len;
  token_text(s, ev->token, buf, sizeof buf, &raw, &raw_len);
  if (s->r->kind == API_CHAT) {
    cJSON *e = cJSON_CreateObject(), *tops;
    cJSON_AddStringToObject(e, "token", buf);
    cJSON_AddNumberToObject(e, "logprob", ev->logprob);
    cJSON_AddItemToObject(e, "bytes", bytes_array(raw, raw_len));
    tops = cJSON_AddArrayToObject(e, "top_logprobs");
    for (int k = 0; k < ev->n_top; k++) {
      cJSON *t = cJSON_CreateObject();
      token_text(s, ev->top[k].id, buf, sizeof buf, &raw, &raw_len);
      cJSON_AddStringToObject(t, "token", buf);
      cJSON_AddNumberToObject(t, "logprob", ev->top[k].logprob);
      cJSON_AddItemToObject(t, "bytes", bytes_array(raw, raw_len));
      cJSON_AddItemToArray(tops, t);
    }
    cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "content"), e);
    return;
  }
  cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "tokens"), cJSON_CreateString(buf));
  cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "token_logprobs"), cJSON_CreateNumber(ev->logprob));
  cJSON *tops = cJSON_CreateObject();
  for (int k = 0; k < ev->n_top; k++) {
    token_text(s, ev->top[k].id, buf, sizeof buf, &raw, &raw_len);
    if (!cJSON_GetObjectItemCaseSensitive(tops, buf)) cJSON_AddNumberToObject(tops, buf, ev->top[k].logprob);
  }
  cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "top_logprobs"), s->r->completion_logprobs > 0 ? tops : cJSON_CreateNull());
  if (s->r->completion_logprobs <= 0) cJSON_Delete(tops);
  cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "text_offset"), cJSON_CreateNumber((double)offset));
}

/* chunk_new: a streamed chunk's envelope; *CHOICES receives its choices array. */
static cJSON *chunk_new(const api_session_t *s, cJSON **choices) {
  cJSON *root = cJSON_CreateObject();
  if (!root) return NULL;
  cJSON_AddStringToObject(root, "id", s->id);
  cJSON_AddStringToObject(root, "object", s->r->kind == API_CHAT ? "chat.completion.chunk" : "text_completion");
  cJSON_AddNumberToObject(root, "created", (double)s->created);
  cJSON_AddStringToObject(root, "model", s->ctx->model_name ? s->ctx->model_name : "");
  *choices = cJSON_AddArrayToObject(root, "choices");
  return root;
}

static void add_usage(const api_session_t *s, cJSON *root) {
  int p, g;
  api_session_usage(s, &p, &g);
  cJSON *u = cJSON_AddObjectToObject(root, "usage");
  cJSON_AddNumberToObject(u, "prompt_tokens", p);
  cJSON_AddNumberToObject(u, "completion_tokens", g);
  cJSON_AddNumberToObject(u, "total_tokens", p + g);
  cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
  cJSON_AddNumberToObject(d, "cached_tokens", api_session_cached(s));
}

/* stream_chunk: one choice's chunk: TEXT (may be empty), LP (consumed, may be NULL), FINISH. */
static int stream_chunk(api_session_t *s, int c, const char *text, size_t n, cJSON *lp, api_finish_t finish,
                        char **out, size_t *len, size_t *cap) {
  cJSON *choices, *root = chunk_new(s, &choices), *ch = cJSON_CreateObject();
  char *t = strndup(text, n);
  if (!root || !ch || !t) {
    cJSON_Delete(root);
    cJSON_Delete(ch);
    cJSON_Delete(lp);
    free(t);
    return STRATA_ENOMEM;
  }
  cJSON_AddItemToArray(choices, ch);
  cJSON_AddNumberToObject(ch, "index", c);
  if (s->r->kind == API_CHAT) {
    cJSON *delta = cJSON_AddObjectToObject(ch, "delta");
    if (n || !finish) cJSON_AddStringToObject(delta, "content", t);
  } else {
    cJSON_AddStringToObject(ch, "text", t);
  }
  free(t);
  if (lp) cJSON_AddItemToObject(ch, "logprobs", lp);
  else cJSON_AddNullToObject(ch, "logprobs");
  if (finish) cJSON_AddStringToObject(ch, "finish_reason", api_finish_name(finish));
  else cJSON_AddNullToObject(ch, "finish_reason");
  if (s->r->include_usage) cJSON_AddNullToObject(root, "usage");
  return put_sse(root, out, len, cap);
}

int api_session_stream_head(api_session_t *s, char **out, size_t *len, size_t *cap) {
  for (int c = 0; c < s->r->n_choices; c++) {
    cJSON *choices, *root = chunk_new(s, &choices), *ch = cJSON_CreateObject();
    if (!root || !ch) {
      cJSON_Delete(root);
      cJSON_Delete(ch);
      return STRATA_ENOMEM;
    }
    cJSON_AddItemToArray(choices, ch);
    cJSON_AddNumberToObject(ch, "index", c);
    if (s->r->kind == API_CHAT) {
      cJSON *delta = cJSON_AddObjectToObject(ch, "delta");
      cJSON_AddStringToObject(delta, "role", "assistant");
      cJSON_AddStringToObject(delta, "content", "");
    } else if (s->r->echo) {
      cJSON_AddStringToObject(ch, "text", s->r->prompt_texts[s->r->choices[c].prompt_index]);
    } else {
      cJSON_Delete(root);
      continue; /* completions without echo have no head */
    }
    cJSON_AddNullToObject(ch, "logprobs");
    cJSON_AddNullToObject(ch, "finish_reason");
    if (s->r->include_usage) cJSON_AddNullToObject(root, "usage");
    int rc = put_sse(root, out, len, cap);
    if (rc) return rc;
  }
  return 0;
}

int api_session_stream_tail(api_session_t *s, char **out, size_t *len, size_t *cap) {
  if (s->r->include_usage) {
    cJSON *choices, *root = chunk_new(s, &choices);
    if (!root) return STRATA_ENOMEM;
    add_usage(s, root);
    int rc = put_sse(root, out, len, cap);
    if (rc) return rc;
  }
  return put(out, len, cap, "data: [DONE]\n\n", 14);
}

/* emit: new text of choice C, plus the token's logprobs and the finish, to the stream or the buffer. */
static int emit(api_session_t *s, int c, const char *text, size_t n, const api_event_t *tok_ev, api_finish_t finish,
                char **out, size_t *len, size_t *cap) {
  choice_t *ch = &s->ch[c];
  size_t offset = ch->offset;
  ch->offset += n;
  if (!s->r->stream) {
    if (tok_ev && ch->logprobs) add_logprob(s, ch->logprobs, tok_ev, offset);
    return put(&ch->text, &ch->text_len, &ch->text_cap, text, n);
  }
  cJSON *lp = NULL;
  if (tok_ev && want_logprobs(s, c)) {
    if (!(lp = new_logprobs(s->r->kind))) return STRATA_ENOMEM;
    add_logprob(s, lp, tok_ev, offset);
  }
  if (!n && !lp && !finish) return 0;
  return stream_chunk(s, c, text, n, lp, finish, out, len, cap);
}

static api_finish_t finish_of(const api_event_t *ev) { return ev->finish ? ev->finish : API_FINISH_STOP; }

/* advance: runs EV through choice C's detokenizer and stop matcher. The text released for the client
 * is left in s->tmp2 (*N bytes); *FINISH is set when this event ends the choice; *FLAGS gets
 * API_EV_ABORT when a stop string matched. */
static int advance(api_session_t *s, int c, const api_event_t *ev, size_t *n, api_finish_t *finish, int *flags) {
  choice_t *ch = &s->ch[c];
  int rc;
  size_t n1 = 0, n2 = 0;
  *finish = API_FINISH_NONE;
  if (ev->n_cached > ch->n_cached) ch->n_cached = ev->n_cached;
  if (ev->has_token) {
    ch->n_generated = ev->n_generated > ch->n_generated ? ev->n_generated : ch->n_generated + 1;
    if ((rc = detok_push(&ch->dt, ev->token, &s->tmp, &n1, &s->tmp_cap))) return rc;
    int stopped = stop_push(&ch->sm, s->tmp ? s->tmp : "", n1, &s->tmp2, &n2, &s->tmp2_cap);
    if (stopped < 0) return stopped;
    if (stopped) {
      *finish = API_FINISH_STOP;
      *flags |= API_EV_ABORT;
    }
  }
  if (!*finish && ev->finished) {
    /* the end: release what the detokenizer and the stop matcher still hold */
    *finish = finish_of(ev);
    n1 = 0;
    if ((rc = detok_flush(&ch->dt, &s->tmp, &n1, &s->tmp_cap))) return rc;
    int stopped = stop_push(&ch->sm, s->tmp ? s->tmp : "", n1, &s->tmp2, &n2, &s->tmp2_cap);
    if (stopped < 0) return stopped;
    if (!stopped && (rc = stop_flush(&ch->sm, &s->tmp2, &n2, &s->tmp2_cap))) return rc;
    if (stopped) *finish = API_FINISH_STOP;
  }
  *n = n2;
  return 0;
}

/* mark_done: choice C ended with FINISH (when set); returns FLAGS plus API_EV_CHOICE_DONE then. */
static int mark_done(api_session_t *s, int c, api_finish_t finish, int flags) {
  if (!finish) return flags;
  s->ch[c].done = 1;
  s->ch[c].finish = finish;
  s->n_done++;
  return flags | API_EV_CHOICE_DONE;
}

int api_session_on_event(api_session_t *s, int c, const api_event_t *ev, char **out, size_t *len, size_t *cap) {
  if (c < 0 || c >= s->r->n_choices) return STRATA_EINVAL;
  if (s->ch[c].done) return API_EV_CHOICE_DONE;
  int rc, flags = 0;
  size_t n2 = 0;
  api_finish_t finish;
  if ((rc = advance(s, c, ev, &n2, &finish, &flags))) return rc;
  if ((rc = emit(s, c, s->tmp2 ? s->tmp2 : "", n2, ev->has_token ? ev : NULL, finish, out, len, cap))) return rc;
  return mark_done(s, c, finish, flags);
}

int api_session_on_event_text(api_session_t *s, int c, const api_event_t *ev, const char **text, size_t *n,
                              api_finish_t *finish) {
  *text = "";
  *n = 0;
  *finish = API_FINISH_NONE;
  if (c < 0 || c >= s->r->n_choices) return STRATA_EINVAL;
  if (s->ch[c].done) return API_EV_CHOICE_DONE;
  int rc, flags = 0;
  size_t n2 = 0;
  if ((rc = advance(s, c, ev, &n2, finish, &flags))) return rc;
  *text = n2 && s->tmp2 ? s->tmp2 : "";
  *n = n2;
  s->ch[c].offset += n2;
  return mark_done(s, c, *finish, flags);
}

size_t api_session_token_text(const api_session_t *s, int32_t id, char *buf, size_t cap) {
  const char *raw;
  size_t raw_len;
  if (!cap) return 0;
  if (id < 0 || id >= tok_vocab_size(s->ctx->tok)) {
    buf[0] = '\0';
    return 0;
  }
  token_text(s, id, buf, cap, &raw, &raw_len);
  return strlen(buf);
}

char *api_session_final_json(api_session_t *s) {
  const api_request_t *r = s->r;
  cJSON *root = cJSON_CreateObject();
  if (!root) return NULL;
  cJSON_AddStringToObject(root, "id", s->id);
  cJSON_AddStringToObject(root, "object", r->kind == API_CHAT ? "chat.completion" : "text_completion");
  cJSON_AddNumberToObject(root, "created", (double)s->created);
  cJSON_AddStringToObject(root, "model", s->ctx->model_name ? s->ctx->model_name : "");
  cJSON *choices = cJSON_AddArrayToObject(root, "choices");
  for (int c = 0; c < r->n_choices; c++) {
    choice_t *ch = &s->ch[c];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, o);
    cJSON_AddNumberToObject(o, "index", c);
    const char *echo = r->echo ? r->prompt_texts[r->choices[c].prompt_index] : "";
    size_t elen = strlen(echo);
    char *text = malloc(elen + ch->text_len + 1);
    if (!text) goto fail;
    memcpy(text, echo, elen);
    memcpy(text + elen, ch->text ? ch->text : "", ch->text_len);
    text[elen + ch->text_len] = '\0';
    if (r->kind == API_CHAT) {
      cJSON *m = cJSON_AddObjectToObject(o, "message");
      cJSON_AddStringToObject(m, "role", "assistant");
      cJSON_AddStringToObject(m, "content", text);
    } else {
      cJSON_AddStringToObject(o, "text", text);
    }
    free(text);
    if (ch->logprobs) {
      cJSON_AddItemToObject(o, "logprobs", ch->logprobs);
      ch->logprobs = NULL;
    } else {
      cJSON_AddNullToObject(o, "logprobs");
    }
    const char *fin = api_finish_name(ch->finish);
    if (fin) cJSON_AddStringToObject(o, "finish_reason", fin);
    else cJSON_AddNullToObject(o, "finish_reason");
  }
  add_usage(s, root);
  char *js = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return js;
fail:
  cJSON_Delete(root);
  return NULL;
}

char *api_models_json(const char *model_name, int max_model_len, int64_t created) {
  cJSON *root = cJSON_CreateObject();
  if (!root) return NULL;
  cJSON_AddStringToObject(root, "object", "list");
  cJSON *data = cJSON_AddArrayToObject(root, "data"), *m = cJSON_CreateObject();
  cJSON_AddItemToArray(data, m);
  cJSON_AddStringToObject(m, "id", model_name);
  cJSON_AddStringToObject(m, "object", "model");
  cJSON_AddNumberToObject(m, "created", (double)created);
  cJSON_AddStringToObject(m, "owned_by", "strata");
  cJSON_AddStringToObject(m, "root", model_name);
  cJSON_AddNumberToObject(m, "max_model_len", max_model_len);
  char *js = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return js;
}
