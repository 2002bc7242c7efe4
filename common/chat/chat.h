/* chat.h: chat templates: a Jinja2-subset interpreter for Hugging Face / GGUF chat templates, plus a
 * documented fallback prompt format for models that ship no template. */
#ifndef STRATA_CHAT_H
#define STRATA_CHAT_H

#include <stdbool.h>
#include <stddef.h>

/* One message of a conversation. Both strings are borrowed for the duration of the call. */
typedef struct {
  const char *role;    /* "system", "user", "assistant", "tool", ... */
  const char *content; /* NULL renders as none */
} chat_message_t;

/* An extra template variable (string valued), e.g. {"date_string", "26 Jul 2024"}. */
typedef struct {
  const char *name;
  const char *value;
} chat_var_t;

/* Rendering options. Zero-initialise, then set what you need. */
typedef struct {
  bool add_generation_prompt; /* end with the opening of an assistant turn */
  const char *bos_token;      /* NULL renders as "" */
  const char *eos_token;      /* NULL renders as "" */
  const chat_var_t *vars;     /* extra string variables; n_vars of them */
  size_t n_vars;
  /* JSON text of the OpenAI "tools" array; NULL leaves `tools` undefined. */
  const char *tools_json;
  /* Limits; 0 picks the default. A render that exceeds one fails with STRATA_EFULL. */
  size_t max_output_bytes; /* default 4 MiB */
  size_t max_iterations;   /* loop iterations over the whole render; default 1,000,000 */
  size_t max_memory_bytes; /* scratch memory of one render; default 64 MiB */
} chat_render_opts_t;

/* Template families, for logs and for choosing stop strings. */
typedef enum {
  CHAT_FAMILY_UNKNOWN = 0,
  CHAT_FAMILY_CHATML,  /* <|im_start|>role\n...<|im_end|> (Qwen, OpenHermes, ...) */
  CHAT_FAMILY_LLAMA3,  /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
  CHAT_FAMILY_LLAMA2,  /* [INST] <<SYS>>...<</SYS>> [/INST] */
  CHAT_FAMILY_MISTRAL, /* [INST] ... [/INST] without <<SYS>> */
  CHAT_FAMILY_GEMMA,   /* <start_of_turn>role\n...<end_of_turn> */
  CHAT_FAMILY_PHI3,    /* <|user|>\n...<|end|> */
  CHAT_FAMILY_ZEPHYR,  /* <|user|>\n...</s> */
} chat_family_t;

typedef struct chat_template chat_template_t;

/* Error text buffer size that always holds a full message. */
#define CHAT_ERR_MAX 256

/* chat_template_compile: parses the Jinja source SRC (LEN bytes; LEN may be (size_t)-1 for a NUL
 * terminated string) into *OUT, which the caller frees with chat_template_free. The template does not
 * keep SRC. On a syntax error returns STRATA_EFORMAT and writes "line L, column C: what" to ERR
 * (ERR_LEN bytes, may be NULL); STRATA_EINVAL on NULL arguments; STRATA_ENOMEM. A compiled template is
 * immutable and may be rendered from several threads at once. */
int chat_template_compile(const char *src, size_t len, chat_template_t **out, char *err, size_t err_len);

/* chat_template_free: releases T (NULL is fine). */
void chat_template_free(chat_template_t *t);

/* chat_template_render: renders T with `messages` = MSGS (N_MSGS of {role, content}) and the variables
 * of OPTS (NULL means all defaults), the way Hugging Face does (trim_blocks, lstrip_blocks, loop
 * controls, raise_exception). On success stores a malloc'd NUL-terminated string in *OUT (length in
 * *OUT_LEN if not NULL) that the caller frees. On failure *OUT is NULL, ERR gets a message and:
 *   STRATA_EINVAL  the template called raise_exception(msg): ERR is exactly msg. The conversation is
 *                  not acceptable to this model (an HTTP 400 for the client).
 *   STRATA_EFORMAT the template failed at run time (a type error, a bad filter...): ERR says where.
 *   STRATA_EFULL   a limit of OPTS was exceeded (output size, loop iterations, memory, call depth).
 *   STRATA_ENOMEM  out of memory. */
int chat_template_render(const chat_template_t *t, const chat_message_t *msgs, size_t n_msgs,
                         const chat_render_opts_t *opts, char **out, size_t *out_len, char *err,
                         size_t err_len);

/* chat_template_render_json: as chat_template_render, but `messages` comes from MESSAGES_JSON, the JSON
 * text of an OpenAI messages array (objects may carry tool_calls, content parts, ...). Invalid JSON or
 * a non-array gives STRATA_EINVAL with a message in ERR. */
int chat_template_render_json(const chat_template_t *t, const char *messages_json,
                              const chat_render_opts_t *opts, char **out, size_t *out_len, char *err,
                              size_t err_len);

/* chat_render_fallback: the prompt format for models with no chat template. NOTE: it is ChatML, the
 * most widely trained plain format:
 *     <|im_start|>{role}\n{content}<|im_end|>\n      for every message, in order
 *     <|im_start|>assistant\n                        appended when ADD_GENERATION_PROMPT
 * No system message is added and contents are not trimmed; a NULL content renders as "". On success
 * stores a malloc'd string in *OUT (length in *OUT_LEN if not NULL). Returns 0, STRATA_EINVAL (NULL
 * OUT, or MSGS NULL with N_MSGS > 0, or a NULL role) or STRATA_ENOMEM. */
int chat_render_fallback(const chat_message_t *msgs, size_t n_msgs, bool add_generation_prompt,
                         char **out, size_t *out_len);

/* chat_template_family: guesses which family the template source SRC (NUL-terminated, may be NULL)
 * belongs to from the special markers it emits. For logs only; rendering never depends on it. */
chat_family_t chat_template_family(const char *src);

/* chat_family_name: a static lower-case name ("chatml", "llama3", ..., "unknown"). */
const char *chat_family_name(chat_family_t family);

#endif
