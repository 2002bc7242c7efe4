/* sample.h: turning one sequence's logits into the next token.
 *
 * Order of processing (as vLLM): penalties (repetition over prompt and output; presence and
 * frequency over output) -> temperature -> top-k -> top-p -> min-p -> draw. Temperature 0 is greedy
 * (argmax, ties to the lowest id). Randomness comes from a counter-based generator (Philox4x32-10)
 * keyed by (seed, position of the token being sampled), so a seeded request gives the same tokens
 * alone or in any batch, on any backend path, after preemption and after migration.
 * Logprobs are those of the raw model distribution (log-softmax of the logits before penalties and
 * temperature), as vLLM reports them by default. */
#ifndef STRATA_SAMPLE_H
#define STRATA_SAMPLE_H

#include <stdint.h>

#define SAMPLE_MAX_LOGPROBS 20
#define SAMPLE_MAX_STOP_IDS 32

typedef struct {
  float temperature;        /* 0 = greedy */
  int top_k;                /* 0 or <0 = off */
  float top_p;              /* 1 = off */
  float min_p;              /* 0 = off */
  float repetition_penalty; /* 1 = off */
  float presence_penalty;   /* 0 = off */
  float frequency_penalty;  /* 0 = off */
  uint64_t seed;            /* always meaningful: the engine draws one when the user gave none */
  int logprobs;             /* 1: report the sampled token's logprob */
  int top_logprobs;         /* 0..SAMPLE_MAX_LOGPROBS alternatives per token */
  int max_tokens;           /* generated tokens at most */
  int min_tokens;           /* EOS and stop ids are masked until this many are generated */
  int ignore_eos;
  int n_stop_ids;
  int32_t stop_ids[SAMPLE_MAX_STOP_IDS]; /* extra stop token ids */
} sampling_params_t;

/* sampling_params_default: greedy, max_tokens 16, everything else off. */
void sampling_params_default(sampling_params_t *sp);
/* sampling_params_validate: 0, or STRATA_EINVAL with a message in ERR (for the API's 400s). */
int sampling_params_validate(const sampling_params_t *sp, int vocab_size, char *err, int err_len);

typedef struct {
  int32_t id;
  float logprob;
} tok_logprob_t;

typedef struct {
  int32_t token;
  float logprob;                        /* of TOKEN, when asked for */
  int n_top;
  tok_logprob_t top[SAMPLE_MAX_LOGPROBS]; /* most likely first */
} sample_result_t;

/* Scratch for one vocabulary size; one per engine thread. */
typedef struct {
  int vocab_size;
  float *buf;      /* (V) */
  int32_t *idx;    /* (V) */
  int32_t *counts; /* (V) output-token counts, cleared after each use */
} sampler_t;

int sampler_init(sampler_t *s, int vocab_size);
void sampler_deinit(sampler_t *s);

/* sampler_sample: picks the next token of one sequence.
 *   LOGITS (V) raw logits, modified in place (left holding the penalised, masked, scaled values);
 *   HISTORY (N_HISTORY) every token so far, the first N_PROMPT of them the prompt;
 *   EOS_IDS (N_EOS) and sp->stop_ids are masked while fewer than sp->min_tokens were generated
 *   (N_HISTORY - N_PROMPT), and EOS_IDS never count as stops when sp->ignore_eos.
 * The draw is Gumbel-max over the surviving tokens: argmax(logit/T - log(-log(u))) with
 * u = rng_uniform(sp->seed, N_HISTORY, token id), which equals sampling from the softmax and needs no
 * sort, so a GPU can compute the same draw token-parallel. Returns 0 or STRATA_EINVAL. */
int sampler_sample(sampler_t *s, const sampling_params_t *sp, float *logits, const int32_t *history, int n_history,
                   int n_prompt, const int32_t *eos_ids, int n_eos, sample_result_t *out);

/* sampler_draw: the draw of sampler_sample alone (no penalties, no masking, no logprobs): temperature,
 * top-k, top-p and min-p of SP, then the Gumbel-max draw at POSITION (the N_HISTORY of sampler_sample).
 * LOGITS (V) are modified in place. Returns the token, or -1 when every logit is -inf or NaN (or an
 * argument is NULL). For backends that implement the device draw on the host. */
int32_t sampler_draw(sampler_t *s, const sampling_params_t *sp, float *logits, uint64_t position);

/* rng_uniform: the counter-based generator: a uniform float in [0, 1) for (SEED, POSITION, INDEX).
 * Exactly: w = Philox4x32-10(counter {INDEX / 4, POSITION lo32, POSITION hi32, 0}, key {SEED lo32,
 * SEED hi32}); u = (w[INDEX % 4] >> 8) * 2^-24. Four consecutive ids share one Philox call; a GPU
 * kernel must compute the same words to give the same tokens. */
float rng_uniform(uint64_t seed, uint64_t position, uint32_t index);

#endif
