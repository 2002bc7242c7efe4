/* api_prompt.c: the prompt of a request: completions prompts (text, texts, token ids) and chat
 * messages rendered through the model's chat template, tokenized. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/api/api_int.h"
#include "common/status.h"

/* alloc_prompts: room for N prompts in R and the id arrays. */
static int alloc_prompts(api_request_t *r, int n, int32_t ***ids, int **n_ids) {
  r->prompt_texts = calloc((size_t)n, sizeof(char *));
  r->prompt_lens = calloc((size_t)n, sizeof(int));
  *ids = calloc((size_t)n, sizeof(int32_t *));
  *n_ids = calloc((size_t)n, sizeof(int));
  if (!r->prompt_texts || !r->prompt_lens || !*ids || !*n_ids) return STRATA_ENOMEM;
  r->n_prompts = n;
  return 0;
}

/* encode_text: TEXT as ids, with BOS unless the text already starts with the BOS token's text
 * (chat templates usually render it themselves). */
static int encode_text(const tok_t *tok, const char *text, int32_t **ids, int *n, api_error_t *err, const char *param) {
  size_t len = strlen(text);
  if (!api_utf8_valid(text, len)) return api_error_set(err, 400, NULL, param, "'%s' must be valid UTF-8", param);
  int flags = TOK_PARSE_SPECIAL;
  const char *bos_text = NULL;
  size_t bos_len = 0;
  int bos = tok_bos(tok);
  if (bos >= 0) tok_piece(tok, bos, &bos_text, &bos_len);
  if (tok_add_bos_default(tok) && !(bos_len && len >= bos_len && memcmp(text, bos_text, bos_len) == 0))
    flags |= TOK_ADD_BOS;
  int rc = tok_encode(tok, text, len, flags, ids, n);
  if (rc == STRATA_ENOMEM) return rc;
  if (rc) return api_error_set(err, 400, NULL, param, "'%s' could not be tokenized", param);
  if (*n == 0) return api_error_set(err, 400, NULL, param, "'%s' must not be empty", param);
  return 0;
}

/* ids_from_array: a JSON list of token ids, checked against the vocabulary. */
static int ids_from_array(const tok_t *tok, const cJSON *a, int32_t **ids, int *n, char **text, api_error_t *err) {
  int len = cJSON_GetArraySize(a), vocab = tok_vocab_size(tok);
  if (len == 0) return api_error_set(err, 400, NULL, "prompt", "'prompt' must not be empty");
  if (!(*ids = malloc(sizeof(int32_t) * (size_t)len))) return STRATA_ENOMEM;
  for (int i = 0; i < len; i++) {
    const cJSON *x = cJSON_GetArrayItem(a, i);
    if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble < 0 || x->valuedouble >= vocab)
      return api_error_set(err, 400, NULL, "prompt", "prompt token %d is not a token id in [0, %d)", i, vocab);
    (*ids)[i] = (int32_t)x->valuedouble;
  }
  *n = len;
  size_t tl;
  char *raw = NULL;
  int rc = tok_decode(tok, *ids, len, 0, &raw, &tl);
  if (rc) return rc == STRATA_ENOMEM ? rc : api_error_set(err, 400, NULL, "prompt", "prompt token ids cannot be decoded");
  *text = malloc(tl * 3 + 1);
  if (*text) api_utf8_sanitize(raw, tl, *text, tl * 3 + 1);
  free(raw);
  return *text ? 0 : STRATA_ENOMEM;
}

int api_parse_prompts(api_request_t *r, const api_ctx_t *ctx, const cJSON *body, int32_t ***ids, int **n_ids,
                      api_error_t *err) {
  const cJSON *p = cJSON_GetObjectItemCaseSensitive(body, "prompt");
  const char *shape = "'prompt' must be a string, a list of strings, a list of token ids or a list of lists of token ids";
  if (!p || cJSON_IsNull(p)) return api_error_set(err, 400, NULL, "prompt", "'prompt' is required");
  /* one prompt: a string or a flat list of ids; several: a list of strings or of id lists */
  int many = cJSON_IsArray(p) && cJSON_GetArraySize(p) > 0 && !cJSON_IsNumber(cJSON_GetArrayItem(p, 0));
  int n = many ? cJSON_GetArraySize(p) : 1;
  int max_prompts = ctx->max_prompts > 0 ? ctx->max_prompts : 64;
  if (!cJSON_IsString(p) && !cJSON_IsArray(p)) return api_error_set(err, 400, NULL, "prompt", "%s", shape);
  if (n > max_prompts) return api_error_set(err, 400, NULL, "prompt", "at most %d prompts per request, got %d", max_prompts, n);
  int rc = alloc_prompts(r, n, ids, n_ids);
  if (rc) return rc;
  for (int i = 0; i < n; i++) {
    const cJSON *item = many ? cJSON_GetArrayItem(p, i) : p;
    if (cJSON_IsString(item)) {
      if (!(r->prompt_texts[i] = strdup(item->valuestring))) return STRATA_ENOMEM;
      rc = encode_text(ctx->tok, item->valuestring, &(*ids)[i], &(*n_ids)[i], err, "prompt");
    } else if (cJSON_IsArray(item)) {
      rc = ids_from_array(ctx->tok, item, &(*ids)[i], &(*n_ids)[i], &r->prompt_texts[i], err);
    } else {
      rc = api_error_set(err, 400, NULL, "prompt", "%s", shape);
    }
    if (rc) return rc;
    r->prompt_lens[i] = (*n_ids)[i];
  }
  return 0;
}

/* message_content: a message's content as one string (a string, null, or a list of text parts). */
static int message_content(const cJSON *m, int i, char **out, api_error_t *err) {
  const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
  *out = NULL;
  if (!c || cJSON_IsNull(c)) return 0;
  if (cJSON_IsString(c)) return (*out = strdup(c->valuestring)) ? 0 : STRATA_ENOMEM;
  if (!cJSON_IsArray(c))
    return api_error_set(err, 400, NULL, "messages", "messages[%d].content must be a string or a list of parts", i);
  size_t len = 0;
  const cJSON *part;
  cJSON_ArrayForEach(part, c) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 || !cJSON_IsString(text))
      return api_error_set(err, 400, NULL, "messages", "messages[%d].content: only text parts are supported", i);
    len += strlen(text->valuestring);
  }
  if (!(*out = malloc(len + 1))) return STRATA_ENOMEM;
  (*out)[0] = '\0';
  cJSON_ArrayForEach(part, c) strcat(*out, cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring);
  return 0;
}

/* render_chat: MSGS through the model's template (or the ChatML fallback) into *TEXT. */
static int render_chat(const api_ctx_t *ctx, const chat_message_t *msgs, int n, char **text, api_error_t *err) {
  if (!ctx->chat) {
    int rc = chat_render_fallback(msgs, (size_t)n, true, text, NULL);
    return rc == STRATA_ENOMEM ? rc : rc ? api_error_set(err, 400, NULL, "messages", "cannot render the messages") : 0;
  }
  chat_render_opts_t opts = {.add_generation_prompt = true};
  char bos[64] = "", eos[64] = "";
  const char *piece;
  size_t plen;
  if (tok_bos(ctx->tok) >= 0 && tok_piece(ctx->tok, tok_bos(ctx->tok), &piece, &plen) == 0 && plen < sizeof bos)
    memcpy(bos, piece, plen), bos[plen] = '\0';
  if (tok_eos(ctx->tok) >= 0 && tok_piece(ctx->tok, tok_eos(ctx->tok), &piece, &plen) == 0 && plen < sizeof eos)
    memcpy(eos, piece, plen), eos[plen] = '\0';
  opts.bos_token = bos;
  opts.eos_token = eos;
  char msg[CHAT_ERR_MAX] = "";
  int rc = chat_template_render(ctx->chat, msgs, (size_t)n, &opts, text, NULL, msg, sizeof msg);
  if (rc == STRATA_ENOMEM) return rc;
  if (rc == STRATA_EINVAL) return api_error_set(err, 400, NULL, "messages", "%s", msg);
  if (rc) return api_error_set(err, 400, NULL, "messages", "the chat template failed on these messages: %s", msg);
  return 0;
}

int api_parse_messages(api_request_t *r, const api_ctx_t *ctx, const cJSON *body, int32_t ***ids, int **n_ids,
                       api_error_t *err) {
  static const char *roles[] = {"system", "developer", "user", "assistant", "tool", NULL};
  const cJSON *ms = cJSON_GetObjectItemCaseSensitive(body, "messages");
  if (!cJSON_IsArray(ms) || cJSON_GetArraySize(ms) == 0)
    return api_error_set(err, 400, NULL, "messages", "'messages' must be a non-empty list of messages");
  int n = cJSON_GetArraySize(ms), rc = alloc_prompts(r, 1, ids, n_ids);
  if (rc) return rc;
  chat_message_t *msgs = calloc((size_t)n, sizeof *msgs);
  char **contents = calloc((size_t)n, sizeof(char *));
  char *text = NULL;
  rc = STRATA_ENOMEM;
  if (!msgs || !contents) goto out;
  for (int i = 0; i < n; i++) {
    const cJSON *m = cJSON_GetArrayItem(ms, i);
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
    int known = 0;
    for (int k = 0; cJSON_IsString(role) && roles[k]; k++) known |= strcmp(role->valuestring, roles[k]) == 0;
    if (!cJSON_IsObject(m) || !known) {
      rc = api_error_set(err, 400, NULL, "messages",
                         "messages[%d].role must be one of system, developer, user, assistant, tool", i);
      goto out;
    }
    if ((rc = message_content(m, i, &contents[i], err))) goto out;
    msgs[i].role = strcmp(role->valuestring, "developer") == 0 ? "system" : role->valuestring;
    msgs[i].content = contents[i];
  }
  if ((rc = render_chat(ctx, msgs, n, &text, err))) goto out;
  if ((rc = encode_text(ctx->tok, text, &(*ids)[0], &(*n_ids)[0], err, "messages"))) goto out;
  r->prompt_lens[0] = (*n_ids)[0];
  r->prompt_texts[0] = text;
  text = NULL;
out:
  for (int i = 0; contents && i < n; i++) free(contents[i]);
  free(contents);
  free(msgs);
  free(text);
  return rc;
}
