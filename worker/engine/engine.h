/* engine.h: the worker engine. One engine owns a model on a backend, the paged KV cache, the
 * scheduler and the request table; engine_step() is exactly sched_schedule() -> execute ->
 * sched_update() (with asynchronous scheduling: sched_schedule() -> enqueue -> sched_fill() of the
 * step in flight -> sched_advance(), see sched.h). Not thread-safe: one thread (the engine thread) drives it; the API hands requests
 * over through engine_loop's queue (engine_loop.h) rather than calling in here from other threads. */
#ifndef STRATA_ENGINE_H
#define STRATA_ENGINE_H

#define ENGINE_CPU_BATCHED_TOKENS 2048 /* the default token budget per step on the CPU */
#define ENGINE_GPU_BATCHED_TOKENS 8192 /* and on a GPU (vLLM's default for H100-class GPUs too) */

#include <stdint.h>

#include "worker/kvcache/kvcache.h"
#include "worker/model/model.h"
#include "worker/sample/sample.h"
#include "worker/sched/request.h"

typedef struct {
  char device[32];         /* "cpu", "cuda:0", "auto" */
  int n_threads;           /* CPU threads (0 = all cores) */
  int act_dtype;           /* -1 = backend default */
  int max_num_seqs;        /* running requests at most */
  int max_batched_tokens;  /* token budget per step (0: ENGINE_GPU_BATCHED_TOKENS on a GPU, else ENGINE_CPU_...) */
  int max_model_len;       /* 0 = the model's context length */
  int block_size;          /* tokens per KV block */
  int num_kv_blocks;       /* 0 = size from memory with kv_cache_fraction */
  float kv_cache_fraction; /* of free backend memory after weights */
  int prefix_caching;      /* 1 = on */
  uint64_t hash_seed;      /* block hashes: the same seed in coordinator and workers */
  int async_sched;         /* schedule and enqueue step N+1 before step N's ids are back: -1 auto (on where the
                              backend has draw_rows), 0 off, 1 on; env STRATA_ASYNC_SCHED=0|1 overrides */
} engine_cfg_t;

/* engine_cfg_default: 256 seqs, 2048 tokens, block 16, prefix caching on, KV fraction 0.9 (GPU) and
 * at most what max_num_seqs full-length requests need (CPU). */
void engine_cfg_default(engine_cfg_t *c);

/* One event of a step: a generated token, and/or the end of a request. */
typedef struct {
  uint64_t id;
  int has_token;
  int32_t token;
  sample_result_t sample;  /* logprobs when asked for */
  int finished;
  finish_reason_t finish;
  int n_prompt;            /* prompt tokens */
  int n_cached;            /* prompt tokens served from the prefix cache */
  int n_generated;         /* generated so far, this token included */
} engine_out_t;

typedef struct {
  int n_running, n_waiting;
  int kv_blocks_total, kv_blocks_used;
  uint64_t prefix_queries_tokens, prefix_hit_tokens;
  uint64_t n_preemptions;
  uint64_t n_prompt_tokens, n_generated_tokens; /* computed prompt tokens, sampled tokens */
  uint64_t n_steps;
} engine_stats_t;

typedef struct engine engine_t;

/* engine_create: places M (borrowed; must outlive the engine) on the configured backend and sizes
 * the KV cache. Returns 0 or a STRATA_E* code (logged). */
int engine_create(engine_t **out, const model_t *m, const engine_cfg_t *cfg);
void engine_free(engine_t *e);

/* engine_add: queues a request for PROMPT (copied). ID must be unique among live requests.
 * STRATA_EINVAL (logged at debug level; ERR gets a user-facing message) when the request can never
 * run: empty prompt, prompt longer than max_model_len or the whole KV cache, bad parameters. */
int engine_add(engine_t *e, uint64_t id, const int32_t *prompt, int n_prompt, const sampling_params_t *sp,
               char *err, int err_len);

/* engine_add_ex: engine_add for a migrated request: TOKENS (N_TOKENS) is the prompt followed by N_PRIOR
 * tokens generated elsewhere, and SP's max_tokens and min_tokens are what is LEFT of the budgets. The
 * N_PRIOR tokens are recomputed like a prompt but count as output for penalties and budgets, and the
 * seeded draws continue identically (the generator is keyed by absolute position). */
int engine_add_ex(engine_t *e, uint64_t id, const int32_t *tokens, int n_tokens, int n_prior,
                  const sampling_params_t *sp, char *err, int err_len);

/* engine_abort: cancels request ID (its blocks are freed now); an engine_out_t with finished and
 * FINISH_ABORT is reported by the next engine_step. A token of ID still in flight (asynchronous
 * scheduling) is dropped: the events end with what engine_step returned so far. Returns
 * STRATA_ENOTFOUND if unknown. */
int engine_abort(engine_t *e, uint64_t id);

/* engine_step: runs one step. *OUTS points to an engine-owned array of *N_OUTS events, valid until
 * the next call. Returns 0, or a STRATA_E* code when the backend failed (fatal for the engine).
 * With asynchronous scheduling a step whose tokens are drawn on the device stays in flight: the call
 * that enqueues step N+1 returns the events of step N (engine_has_work stays 1 until it is drained). A
 * step that needs the host sampler (penalties, logprobs, pending min_tokens) first drains the one in
 * flight and runs synchronously. The events are the same as without: a request that ends at step N
 * (EOS, stop id) was computed once more by step N+1, and that result is dropped. */
int engine_step(engine_t *e, const engine_out_t **outs, int *n_outs);

int engine_has_work(const engine_t *e);
void engine_stats(const engine_t *e, engine_stats_t *st);
const engine_cfg_t *engine_cfg(const engine_t *e);
const model_t *engine_model(const engine_t *e);
/* engine_device: the backend's device name ("cpu", "cuda:0"). */
const char *engine_device(const engine_t *e);
/* engine_set_kv_event_cb: CB(DATA, type, hash) is called on the engine thread whenever a block hash
 * enters (KV_EVENT_STORED) or leaves (KV_EVENT_REMOVED) the prefix cache: the feed of KV-aware
 * routing. Set it before the engine runs (before engine_loop_start). */
void engine_set_kv_event_cb(engine_t *e, kv_event_cb cb, void *data);
/* engine_max_model_len: the effective context length (tokens per request at most). */
int engine_max_model_len(const engine_t *e);

#endif
