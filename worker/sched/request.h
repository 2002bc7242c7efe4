/* request.h: one generation request as the engine sees it (token ids only; text stays with the API).
 *
 * There is no prefill or decode phase: n_computed (tokens whose KV is in the cache) catches up with
 * n_tokens (prompt + generated). Each step the scheduler gives a request some tokens to compute: a
 * chunk of its prompt, or the one token it generated last. Owner: the engine thread. */
#ifndef STRATA_REQUEST_H
#define STRATA_REQUEST_H

#include <stdint.h>

#include "worker/kvcache/kvcache.h"
#include "worker/sample/sample.h"

typedef enum { REQ_WAITING = 0, REQ_RUNNING, REQ_FINISHED } req_state_t;

typedef enum {
  FINISH_NONE = 0,
  FINISH_STOP,   /* EOS, a stop token id (or, at the API, a stop string) */
  FINISH_LENGTH, /* max_tokens or the model's context length */
  FINISH_ABORT,  /* canceled by the client */
  FINISH_ERROR,  /* could never run (e.g. prompt longer than the KV cache) */
} finish_reason_t;

#define REQ_MAX_EOS 8

typedef struct req {
  uint64_t id;
  int32_t *tokens;      /* (cap_tokens) prompt then generated ids; owned */
  int n_tokens;         /* prompt + generated (placeholders included) */
  int n_placeholders;   /* 0 or 1: the last token is drawn by a step still in flight (asynchronous
                           scheduling), its value unknown until sched_fill; ph_row is its logit row there */
  int ph_row;
  int cap_tokens;
  int n_prompt;
  int n_computed;       /* tokens whose KV is in the cache */
  int n_cached_prompt;  /* prompt tokens that came from the prefix cache on the last admission */
  int max_len;          /* n_tokens never exceeds this (prompt + max_tokens, capped by the model) */
  req_state_t state;
  finish_reason_t finish;
  kv_table_t kv;        /* block table */
  sampling_params_t sp;
  int32_t eos_ids[REQ_MAX_EOS];
  int n_eos;
  int n_preemptions;
  double t_arrival_s;   /* monotonic seconds */
  double t_first_token_s;
  struct req *prev, *next; /* links of the scheduler queue the request is in */
  void *data;           /* the owner's (engine/API) */
} req_t;

/* req_init: a request for PROMPT (N_PROMPT > 0 ids, copied) with SP; max_len = n_prompt +
 * sp->max_tokens capped at MODEL_MAX_LEN. Returns 0, STRATA_EINVAL or STRATA_ENOMEM. */
int req_init(req_t *r, uint64_t id, const int32_t *prompt, int n_prompt, const sampling_params_t *sp,
             int model_max_len);
/* req_append: appends one generated token (capacity is reserved by req_init). */
void req_append(req_t *r, int32_t token);
/* req_deinit: frees the token array and the block table arrays (blocks must be released first). */
void req_deinit(req_t *r);

static inline int req_n_generated(const req_t *r) { return r->n_tokens - r->n_prompt; }
/* req_n_known: tokens whose value is known (placeholders excluded). */
static inline int req_n_known(const req_t *r) { return r->n_tokens - r->n_placeholders; }

#endif
