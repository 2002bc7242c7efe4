/* request.c: creating and growing a request's token array. */
#include "worker/sched/request.h"

#include <stdlib.h>
#include <string.h>

#include "common/status.h"

int req_init(req_t *r, uint64_t id, const int32_t *prompt, int n_prompt, const sampling_params_t *sp,
             int model_max_len) {
  memset(r, 0, sizeof *r);
  if (n_prompt <= 0 || !sp || sp->max_tokens < 0) return STRATA_EINVAL;
  r->id = id;
  r->sp = *sp;
  long max_len = (long)n_prompt + sp->max_tokens;
  if (model_max_len > 0 && max_len > model_max_len) max_len = model_max_len;
  if (max_len < n_prompt) max_len = n_prompt;
  r->max_len = (int)max_len;
  r->cap_tokens = r->max_len + 1;
  r->tokens = malloc(sizeof(int32_t) * (size_t)r->cap_tokens);
  if (!r->tokens) return STRATA_ENOMEM;
  memcpy(r->tokens, prompt, sizeof(int32_t) * (size_t)n_prompt);
  r->n_tokens = r->n_prompt = n_prompt;
  r->state = REQ_WAITING;
  return 0;
}

void req_append(req_t *r, int32_t token) {
  if (r->n_tokens < r->cap_tokens) r->tokens[r->n_tokens++] = token;
}

void req_deinit(req_t *r) {
  free(r->tokens);
  r->tokens = NULL;
  kv_table_free(&r->kv);
}
