/* api.h: the OpenAI protocol layer, shared by `strata serve` and the coordinator. It parses and
 * validates /v1/completions and /v1/chat/completions requests into an api_request_t (prompts
 * tokenized, chat templates rendered), and turns the engine's token events of one request into
 * OpenAI JSON or Server-Sent Events (incremental detokenization, stop strings, logprobs, usage).
 *
 * There is no engine in here: the caller submits one engine request per choice (api_request_t.choices,
 * with the prompt ids and api_sampling_t given here) through whatever it has (a local engine loop, a
 * router), feeds the events back with api_session_on_event, and aborts an engine request when told.
 * Nothing here is thread-safe; a session belongs to one thread. */
#ifndef STRATA_API_H
#define STRATA_API_H

#include <stddef.h>
#include <stdint.h>

#include "common/chat/chat.h"
#include "common/tok/tok.h"

#define API_MAX_TOP_LOGPROBS 20
#define API_MAX_STOP_IDS 32

/* Sampling parameters as the API accepts them; the engine side converts them to its own struct. */
typedef struct api_sampling {
  float temperature, top_p, min_p;
  int top_k;
  float repetition_penalty, presence_penalty, frequency_penalty;
  uint64_t seed;     /* always set: drawn at random when the request has none */
  int logprobs;      /* 1: report the sampled token's logprob */
  int top_logprobs;  /* 0..API_MAX_TOP_LOGPROBS */
  int max_tokens;
  int min_tokens;
  int ignore_eos;
  int n_stop_ids;
  int32_t stop_ids[API_MAX_STOP_IDS]; /* the user's stop_token_ids plus the tokenizer's EOS extras */
} api_sampling_t;

/* The engine-facing side, so that the same protocol code can drive a local engine loop
 * (`strata serve`) or a router to remote workers (the coordinator). Calls come from the thread that
 * owns the sessions. SUBMIT queues one engine request (IDS copied) whose events the caller later
 * feeds to api_session_on_event; it returns 0 or a negative STRATA_E* code (nothing was queued).
 * ABORT cancels a request (unknown ids are ignored); its blocks are freed by the engine. */
typedef struct {
  void *self;
  int (*submit)(void *self, uint64_t id, const int32_t *ids, int n_ids, const api_sampling_t *sp);
  void (*abort)(void *self, uint64_t id);
} api_backend_t;

typedef enum { API_COMPLETIONS = 0, API_CHAT } api_kind_t;

/* An error for the client, in OpenAI's shape: {"error":{"message","type","param","code"}}. */
typedef struct {
  int status;        /* HTTP status: 400, 401, 404, 413, 429, 500, 503 */
  char type[40];     /* "invalid_request_error", "authentication_error", ... */
  char param[48];    /* the offending parameter, or "" (rendered as null) */
  char code[40];     /* a short code, or "" (rendered as null) */
  char message[512];
} api_error_t;

/* api_error_set: fills E (returns STRATA_EINVAL, so a parser can `return api_error_set(...)`). */
int api_error_set(api_error_t *e, int status, const char *type, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* api_error_json: E as OpenAI's error JSON (malloc'd, NUL-terminated), or NULL when out of memory. */
char *api_error_json(const api_error_t *e);

/* What the parser needs to know about the model and the server's limits. All borrowed. */
typedef struct {
  const tok_t *tok;
  const chat_template_t *chat; /* the model's template, or NULL: the ChatML fallback (chat.h) */
  const char *model_name;      /* the served name; requests naming another model get 404 */
  int max_model_len;           /* prompt + max_tokens must fit */
  int max_n;                   /* most choices per request (n x prompts); default 16 when 0 */
  int max_stops;               /* most stop strings; default 8 when 0 */
  int max_stop_len;            /* longest stop string in bytes; default 256 when 0 */
  int max_prompts;             /* most prompts in one completions request; default 64 when 0 */
} api_ctx_t;

/* One choice: the engine request to submit for it. */
typedef struct {
  int prompt_index;  /* which prompt (completions with a list of prompts) */
  int32_t *ids;      /* (n_ids) the prompt; owned by the request */
  int n_ids;
  api_sampling_t sp; /* per choice: the seed differs between the n choices of one prompt */
} api_choice_req_t;

typedef struct {
  api_kind_t kind;
  int stream, include_usage, echo;
  int n;                    /* choices per prompt */
  int n_prompts;
  char **prompt_texts;      /* (n_prompts) the prompt as text (for echo) */
  int *prompt_lens;         /* (n_prompts) tokens */
  char **stops;             /* (n_stops) */
  int n_stops;
  int n_choices;            /* n_prompts * n; choice i belongs to prompt i / n */
  api_choice_req_t *choices;
  int has_seed;
  int completion_logprobs;  /* completions: the "logprobs" integer (or -1 when absent) */
} api_request_t;

/* api_request_parse: parses BODY (LEN bytes of JSON) of a KIND request into *R (zeroed first; free
 * it with api_request_free even on failure). Validates every parameter (types, ranges, lengths,
 * token ids against the vocabulary, context length) and tokenizes the prompt(s). Returns 0, or
 * STRATA_EINVAL with ERR filled (status 400, or 404 for an unknown model), or STRATA_ENOMEM. */
int api_request_parse(api_request_t *r, const api_ctx_t *ctx, api_kind_t kind, const char *body, size_t len,
                      api_error_t *err);
void api_request_free(api_request_t *r);

/* ---- sessions: engine events -> OpenAI output ---- */

typedef enum { API_FINISH_NONE = 0, API_FINISH_STOP, API_FINISH_LENGTH, API_FINISH_ABORT, API_FINISH_ERROR } api_finish_t;

/* One engine event for one choice. */
typedef struct {
  int has_token;
  int32_t token;
  float logprob;       /* of TOKEN, when logprobs were asked for */
  int n_top;
  struct {
    int32_t id;
    float logprob;
  } top[API_MAX_TOP_LOGPROBS];
  int finished;
  api_finish_t finish;
  int n_prompt;        /* prompt tokens as the engine counted them */
  int n_generated;     /* generated so far, this token included */
  int n_cached;        /* prompt tokens the engine served from its prefix cache (0: none, or not known yet) */
} api_event_t;

typedef struct api_session api_session_t;

/* api_session_new: a session for R (borrowed: it must outlive the session) answering with ID (e.g.
 * "cmpl-42"; copied), CREATED (unix seconds) and the model name from CTX (borrowed, as CTX->tok).
 * Returns 0, STRATA_ENOMEM or STRATA_EINVAL. */
int api_session_new(api_session_t **out, const api_request_t *r, const api_ctx_t *ctx, const char *id,
                    int64_t created);
void api_session_free(api_session_t *s);

/* Flags api_session_on_event returns (or a negative error). */
enum {
  API_EV_CHOICE_DONE = 1 << 0, /* this choice needs no more events */
  API_EV_ABORT = 1 << 1,       /* a stop string matched: abort the choice's engine request */
};

/* api_session_on_event: feeds EV for choice CHOICE. When streaming, SSE text for the client is
 * appended to *OUT (grown with realloc; *OUT_LEN used bytes, *OUT_CAP capacity); otherwise the
 * text is accumulated for api_session_final_json. Events for a choice already done are ignored. */
int api_session_on_event(api_session_t *s, int choice, const api_event_t *ev, char **out, size_t *out_len,
                         size_t *out_cap);
/* api_session_on_event_text: like api_session_on_event, for protocols that frame text themselves
 * (gRPC): no SSE and no accumulation. *TEXT / *N get choice C's new text (UTF-8 complete, stop
 * strings applied; valid until the next call on S, "" when none), *FINISH the finish reason when
 * this event ended the choice (else API_FINISH_NONE). Returns the same flags, or a negative error. */
int api_session_on_event_text(api_session_t *s, int c, const api_event_t *ev, const char **text, size_t *n,
                              api_finish_t *finish);
/* api_session_token_text: token ID's text as valid UTF-8 (a partial character's bytes as U+FFFD) in
 * BUF (CAP bytes, NUL-terminated, cut to fit); returns its length. Unknown ids give "". */
size_t api_session_token_text(const api_session_t *s, int32_t id, char *buf, size_t cap);
/* api_session_done: 1 when every choice is done. */
int api_session_done(const api_session_t *s);
/* api_session_stream_head: SSE text to send before any token (chat: each choice's role delta;
 * completions with echo: the prompt text). */
int api_session_stream_head(api_session_t *s, char **out, size_t *out_len, size_t *out_cap);
/* api_session_stream_tail: the closing SSE text: the usage chunk when asked for, then "data: [DONE]". */
int api_session_stream_tail(api_session_t *s, char **out, size_t *out_len, size_t *out_cap);
/* api_session_final_json: the complete non-streamed response (malloc'd), or NULL when out of memory. */
char *api_session_final_json(api_session_t *s);
/* api_session_usage: prompt and completion token counts so far. */
void api_session_usage(const api_session_t *s, int *prompt_tokens, int *completion_tokens);
/* api_session_cached: prompt tokens served from the prefix cache (OpenAI's usage.prompt_tokens_details.
 * cached_tokens): for each prompt, the most any of its choices' events reported. */
int api_session_cached(const api_session_t *s);

/* api_finish_name: "stop", "length", "abort", "error" (NULL for API_FINISH_NONE). */
const char *api_finish_name(api_finish_t f);

/* api_models_json: the /v1/models response for one model (malloc'd), or NULL when out of memory. */
char *api_models_json(const char *model_name, int max_model_len, int64_t created);

#endif
