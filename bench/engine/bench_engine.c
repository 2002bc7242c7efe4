/* bench_engine.c: `strata-bench engine`: B synthetic requests of P prompt tokens and G generated
 * tokens through the engine in-process; prints prefill and decode throughput and step latency as one
 * JSON line on stdout (numbers only; nothing is asserted). */
#include "bench/engine/bench_engine.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/status.h"
#include "worker/engine/engine.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: strata-bench engine --model PATH|dummy:NAME [--batch B] [--prompt-len P] [--gen-len G]\n"
          "                           [--device DEV] [--dtype T] [--threads N] [--max-batched-tokens N]\n"
          "                           [--repeat R]\n"
          "\n"
          "Submits B requests of P random prompt tokens at once, each generating G tokens (greedy,\n"
          "ignore EOS), and prints one JSON line: prefill tokens/s (all prompts until every first\n"
          "token), decode tokens/s and step latency (steps where only decodes run), time to first token.\n");
}

typedef struct {
  const char *model;
  int batch, prompt_len, gen_len, repeat;
  engine_cfg_t ec;
} bench_args_t;

static int parse(int argc, char **argv, bench_args_t *a) {
  static const struct option opts[] = {
      {"model", 1, 0, 'm'}, {"batch", 1, 0, 'b'},   {"prompt-len", 1, 0, 'p'},         {"gen-len", 1, 0, 'g'},
      {"device", 1, 0, 'd'}, {"threads", 1, 0, 't'}, {"max-batched-tokens", 1, 0, 'T'}, {"repeat", 1, 0, 'r'},
      {"dtype", 1, 0, 'D'}, {"help", 0, 0, 'h'},  {0, 0, 0, 0}};
  memset(a, 0, sizeof *a);
  a->model = "dummy:tiny";
  a->batch = 1;
  a->prompt_len = 128;
  a->gen_len = 128;
  a->repeat = 1;
  engine_cfg_default(&a->ec);
  a->ec.max_batched_tokens = 0;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
      case 'm': a->model = optarg; break;
      case 'b': a->batch = atoi(optarg); break;
      case 'p': a->prompt_len = atoi(optarg); break;
      case 'g': a->gen_len = atoi(optarg); break;
      case 'r': a->repeat = atoi(optarg); break;
      case 'd': snprintf(a->ec.device, sizeof a->ec.device, "%s", optarg); break;
      case 't': a->ec.n_threads = atoi(optarg); break;
      case 'T': a->ec.max_batched_tokens = atoi(optarg); break;
      case 'D':
        a->ec.act_dtype = strcmp(optarg, "auto") == 0 ? -1 : dtype_parse(optarg);
        if (strcmp(optarg, "auto") != 0 && a->ec.act_dtype < 0) {
          fprintf(stderr, "strata-bench engine: --dtype: '%s' is not one of auto, f32, bf16, f16\n", optarg);
          return 2;
        }
        break;
      case 'h': usage(stdout); return 1;
      default: usage(stderr); return 2;
    }
  }
  if (a->batch < 1 || a->prompt_len < 1 || a->gen_len < 1 || a->repeat < 1) {
    fprintf(stderr, "strata-bench engine: --batch, --prompt-len, --gen-len and --repeat must be >= 1\n");
    return 2;
  }
  a->ec.max_num_seqs = a->batch;
  if (a->ec.max_batched_tokens <= 0) a->ec.max_batched_tokens = 2048 > a->batch ? 2048 : a->batch;
  a->ec.max_model_len = a->prompt_len + a->gen_len + 1;
  a->ec.prefix_caching = 0; /* random prompts: nothing to hit; keep the measurement plain */
  return 0;
}

typedef struct {
  double t_prefill_s, t_decode_s, ttft_mean_s;
  int n_decode_steps;
  long n_decode_tokens; /* tokens produced in the measured decode steps */
  double *step_s;
} run_result_t;

/* run_once: submits the batch and steps the engine until every request finished. */
static int run_once(engine_t *e, const bench_args_t *a, uint64_t id0, run_result_t *res) {
  const int V = engine_model(e)->cfg.vocab_size;
  int32_t *prompt = malloc(sizeof(int32_t) * (size_t)a->prompt_len);
  double *first = calloc((size_t)a->batch, sizeof(double));
  if (!prompt || !first) {
    free(prompt);
    free(first);
    return STRATA_ENOMEM;
  }
  sampling_params_t sp;
  sampling_params_default(&sp);
  sp.max_tokens = a->gen_len;
  sp.ignore_eos = 1;
  char err[256];
  uint64_t x = 0x9e3779b97f4a7c15ull ^ id0;
  double t0 = now_s();
  int rc = 0;
  for (int r = 0; r < a->batch && !rc; r++) {
    for (int i = 0; i < a->prompt_len; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      prompt[i] = (int32_t)(x % (uint64_t)(V > 258 ? 256 : V)); /* byte-ish ids: valid for every vocab */
    }
    rc = engine_add(e, id0 + (uint64_t)r, prompt, a->prompt_len, &sp, err, sizeof err);
    if (rc) fprintf(stderr, "strata-bench engine: %s\n", err);
  }
  int n_first = 0;
  double t_prefill_end = t0;
  res->n_decode_steps = 0;
  res->n_decode_tokens = 0;
  res->t_decode_s = 0;
  while (!rc && engine_has_work(e)) {
    const engine_out_t *outs;
    int n_outs;
    int all_first_before = n_first == a->batch;
    double ts = now_s();
    rc = engine_step(e, &outs, &n_outs);
    double te = now_s();
    for (int i = 0; i < n_outs; i++)
      if (outs[i].has_token && outs[i].n_generated == 1) {
        first[outs[i].id - id0] = te - t0;
        if (++n_first == a->batch) t_prefill_end = te;
      }
    if (all_first_before && n_outs > 0) {
      res->step_s[res->n_decode_steps++] = te - ts;
      res->t_decode_s += te - ts;
      for (int i = 0; i < n_outs; i++) res->n_decode_tokens += outs[i].has_token;
    }
  }
  res->t_prefill_s = t_prefill_end - t0;
  res->ttft_mean_s = 0;
  for (int r = 0; r < a->batch; r++) res->ttft_mean_s += first[r] / a->batch;
  free(prompt);
  free(first);
  return rc;
}

int bench_engine_main(int argc, char **argv) {
  if (!getenv("STRATA_LOG_LEVEL")) log_set_level(LOG_LEVEL_WARN);
  bench_args_t a;
  int rc = parse(argc, argv, &a);
  if (rc) return rc == 1 ? 0 : rc;
  model_t *m = NULL;
  engine_t *e = NULL;
  double t_load = now_s();
  rc = model_load(&m, a.model, NULL);
  if (rc) {
    fprintf(stderr, "strata-bench engine: cannot load '%s': %s\n", a.model, strata_strerror(rc));
    return 1;
  }
  rc = engine_create(&e, m, &a.ec);
  t_load = now_s() - t_load;
  run_result_t res = {0};
  res.step_s = malloc(sizeof(double) * (size_t)(a.gen_len + 1) * (size_t)a.repeat);
  if (!rc && !res.step_s) rc = STRATA_ENOMEM;
  /* warm-up: one short request, so that first-touch page faults and thread start stay out */
  if (!rc) {
    bench_args_t w = a;
    w.batch = 1;
    w.gen_len = 2;
    w.prompt_len = a.prompt_len < 16 ? a.prompt_len : 16;
    rc = run_once(e, &w, 1u << 30, &res);
  }
  double pre = 0, dec = 0, ttft = 0, n_dec_tokens = 0;
  int n_steps = 0;
  for (int r = 0; r < a.repeat && !rc; r++) {
    res.step_s += n_steps;
    rc = run_once(e, &a, (uint64_t)(r + 1) << 32, &res);
    res.step_s -= n_steps;
    pre += res.t_prefill_s;
    dec += res.t_decode_s;
    ttft += res.ttft_mean_s / a.repeat;
    n_steps += res.n_decode_steps;
    n_dec_tokens += (double)res.n_decode_tokens;
  }
  if (!rc) {
    qsort(res.step_s, (size_t)n_steps, sizeof(double), cmp_double);
    double p50 = n_steps ? res.step_s[n_steps / 2] * 1e3 : 0;
    double p99 = n_steps ? res.step_s[(int)(n_steps * 0.99)] * 1e3 : 0;
    const engine_cfg_t *ec = engine_cfg(e);
    printf("{\"bench\":\"engine\",\"model\":\"%s\",\"device\":\"%s\",\"threads\":%d,\"params\":%lld,"
           "\"dtype\":\"%s\",\"batch\":%d,\"prompt_len\":%d,\"gen_len\":%d,\"repeat\":%d,"
           "\"max_batched_tokens\":%d,\"prefill_tok_s\":%.1f,\"decode_tok_s\":%.1f,\"step_ms_mean\":%.3f,"
           "\"step_ms_p50\":%.3f,\"step_ms_p99\":%.3f,\"ttft_ms_mean\":%.2f,\"load_s\":%.3f}\n",
           m->name, engine_device(e), ec->n_threads, (long long)model_n_params(m), dtype_name(m->cfg.dtype), a.batch,
           a.prompt_len, a.gen_len, a.repeat, ec->max_batched_tokens,
           pre > 0 ? (double)a.batch * a.prompt_len * a.repeat / pre : 0, dec > 0 ? n_dec_tokens / dec : 0,
           n_steps ? dec / n_steps * 1e3 : 0, p50, p99, ttft * 1e3, t_load);
  }
  free(res.step_s);
  engine_free(e);
  model_free(m);
  if (rc) fprintf(stderr, "strata-bench engine: %s\n", strata_strerror(rc));
  return rc ? 1 : 0;
}
