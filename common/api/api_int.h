/* api_int.h: internals shared by the files of common/api. */
#ifndef STRATA_API_INT_H
#define STRATA_API_INT_H

#include <cjson/cJSON.h>

#include "common/api/api.h"

/* api_parse_prompts / api_parse_messages: the prompt(s) of BODY, tokenized: R->n_prompts,
 * R->prompt_texts and R->prompt_lens are set; *IDS / *N_IDS get n_prompts malloc'd arrays (the
 * caller frees them, also on failure). Return 0, STRATA_EINVAL (ERR filled) or STRATA_ENOMEM. */
int api_parse_prompts(api_request_t *r, const api_ctx_t *ctx, const cJSON *body, int32_t ***ids, int **n_ids,
                      api_error_t *err);
int api_parse_messages(api_request_t *r, const api_ctx_t *ctx, const cJSON *body, int32_t ***ids, int **n_ids,
                       api_error_t *err);

/* UTF-8 helpers: the length of the valid sequence at P (0 if invalid); whether S is valid; S copied
 * into OUT (CAP bytes, NUL-terminated) with each invalid byte as U+FFFD, returning the length. */
int api_utf8_seq_len(const unsigned char *p, size_t n);
int api_utf8_valid(const char *s, size_t n);
size_t api_utf8_sanitize(const char *s, size_t n, char *out, size_t cap);

#endif
