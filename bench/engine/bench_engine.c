/* bench_engine.c: `strata-bench engine`: synthetic requests through the engine in-process, one JSON
 * line on stdout per run (numbers only; nothing is asserted). Cases: batch (B requests at once:
 * prefill and decode throughput, step latency), offline (N requests queued at once, continuous
 * batching: output and total tokens/s) and cold-start (process start to the first token of a 1-token
 * request, with the loading split). */
#include "bench/engine/bench_engine.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"
#include "worker/engine/engine.h"

enum { CASE_BATCH = 0, CASE_OFFLINE, CASE_COLD };

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
          "usage: strata-bench engine --model PATH|dummy:NAME [--case batch|offline|cold-start]\n"
          "         [--batch B] [--requests N] [--prompt-len P] [--gen-len G] [--max-num-seqs S]\n"
          "         [--device DEV] [--dtype T] [--threads N] [--max-batched-tokens N] [--repeat R]\n"
          "         [--temperature T] [--top-k K] [--top-p P] [--min-p P]\n"
          "\n"
          "Prints one JSON line. Requests have random prompt tokens, ignore EOS and are greedy unless\n"
          "--temperature (and top-k/top-p/min-p) say otherwise.\n"
          "  batch       (default) B requests of P tokens at once, each generating G (max-num-seqs = B):\n"
          "              prefill tokens/s (until every first token), decode tokens/s and step latency\n"
          "              (steps where only decodes run), time to first token.\n"
          "  offline     N requests (default 1024) of P (default 128) tokens generating G (default 128),\n"
          "              all queued at once; the engine batches them continuously with max-num-seqs\n"
          "              running (default: the engine's, 256): wall s, output and total tokens/s.\n"
          "  cold-start  from process start (and from main) to the first token of one 1-token request,\n"
          "              with the split: model opened, weights read into memory, engine created\n"
          "              (device, weights placed, KV cache), first step.\n");
}

typedef struct {
  const char *model;
  int bench_case, batch, requests, prompt_len, gen_len, repeat;
  int max_num_seqs; /* 0: the case's default */
  float temperature, top_p, min_p;
  int top_k;
  engine_cfg_t ec;
} bench_args_t;

/* case_name: the --case spelling of C. */
static const char *case_name(int c) { return c == CASE_OFFLINE ? "offline" : c == CASE_COLD ? "cold-start" : "batch"; }

/* parse_float: OPTARG as a float into *OUT; 0, or 2 (usage error, printed). */
static int parse_float(const char *name, const char *arg, float *out) {
  char *end;
  double v = strtod(arg, &end);
  if (end == arg || *end || !isfinite(v)) {
    fprintf(stderr, "strata-bench engine: --%s: '%s' is not a number\n", name, arg);
    return 2;
  }
  *out = (float)v;
  return 0;
}

static int parse(int argc, char **argv, bench_args_t *a) {
  static const struct option opts[] = {
      {"model", 1, 0, 'm'},       {"batch", 1, 0, 'b'},        {"prompt-len", 1, 0, 'p'},
      {"gen-len", 1, 0, 'g'},     {"device", 1, 0, 'd'},       {"threads", 1, 0, 't'},
      {"max-batched-tokens", 1, 0, 'T'}, {"repeat", 1, 0, 'r'}, {"dtype", 1, 0, 'D'},
      {"case", 1, 0, 'c'},        {"requests", 1, 0, 'n'},     {"max-num-seqs", 1, 0, 'S'},
      {"temperature", 1, 0, 'x'}, {"top-k", 1, 0, 'k'},        {"top-p", 1, 0, 'P'},
      {"min-p", 1, 0, 'M'},       {"help", 0, 0, 'h'},         {0, 0, 0, 0}};
  memset(a, 0, sizeof *a);
  a->model = "dummy:tiny";
  a->batch = 1;
  a->requests = 1024;
  a->prompt_len = 128;
  a->gen_len = 128;
  a->repeat = 1;
  a->top_p = 1.0f;
  engine_cfg_default(&a->ec);
  a->ec.max_batched_tokens = 0;
  int c, rc = 0;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1 && !rc) {
    switch (c) {
      case 'm': a->model = optarg; break;
      case 'b': a->batch = atoi(optarg); break;
      case 'n': a->requests = atoi(optarg); break;
      case 'p': a->prompt_len = atoi(optarg); break;
      case 'g': a->gen_len = atoi(optarg); break;
      case 'r': a->repeat = atoi(optarg); break;
      case 'S': a->max_num_seqs = atoi(optarg); break;
      case 'd': snprintf(a->ec.device, sizeof a->ec.device, "%s", optarg); break;
      case 't': a->ec.n_threads = atoi(optarg); break;
      case 'T': a->ec.max_batched_tokens = atoi(optarg); break;
      case 'x': rc = parse_float("temperature", optarg, &a->temperature); break;
      case 'P': rc = parse_float("top-p", optarg, &a->top_p); break;
      case 'M': rc = parse_float("min-p", optarg, &a->min_p); break;
      case 'k': a->top_k = atoi(optarg); break;
      case 'c':
        if (strcmp(optarg, "batch") == 0) a->bench_case = CASE_BATCH;
        else if (strcmp(optarg, "offline") == 0) a->bench_case = CASE_OFFLINE;
        else if (strcmp(optarg, "cold-start") == 0) a->bench_case = CASE_COLD;
        else {
          fprintf(stderr, "strata-bench engine: --case: '%s' is not one of batch, offline, cold-start\n", optarg);
          return 2;
        }
        break;
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
  if (rc) return rc;
  if (a->batch < 1 || a->requests < 1 || a->prompt_len < 1 || a->gen_len < 1 || a->repeat < 1 ||
      a->max_num_seqs < 0) {
    fprintf(stderr, "strata-bench engine: --batch, --requests, --prompt-len, --gen-len and --repeat must be >= 1"
                    " (and --max-num-seqs >= 0)\n");
    return 2;
  }
  if (a->bench_case == CASE_COLD) a->prompt_len = 1, a->gen_len = 1, a->repeat = 1;
  /* batch: exactly B running; offline: the engine's default (256, a GPU's batch) unless given */
  if (a->max_num_seqs > 0) a->ec.max_num_seqs = a->max_num_seqs;
  else if (a->bench_case == CASE_BATCH) a->ec.max_num_seqs = a->batch;
  /* batch: prompts prefilled 2,048 tokens a step (as before); offline: the engine's default budget */
  if (a->ec.max_batched_tokens <= 0 && a->bench_case == CASE_BATCH)
    a->ec.max_batched_tokens = 2048 > a->ec.max_num_seqs ? 2048 : a->ec.max_num_seqs;
  /* cold start: the context a server would configure (the model's); else just what the requests need */
  a->ec.max_model_len = a->bench_case == CASE_COLD ? 0 : a->prompt_len + a->gen_len + 1;
  a->ec.prefix_caching = 0; /* random prompts: nothing to hit; keep the measurement plain */
  return 0;
}

typedef struct {
  double t_prefill_s, t_decode_s, ttft_mean_s;
  int n_decode_steps;
  long n_decode_tokens; /* tokens produced in the measured decode steps */
  double *step_s;
} run_result_t;

/* bench_params: the sampling parameters of every request: --temperature etc., max_tokens G, no EOS. */
static void bench_params(const bench_args_t *a, sampling_params_t *sp) {
  sampling_params_default(sp);
  sp->max_tokens = a->gen_len;
  sp->ignore_eos = 1;
  sp->temperature = a->temperature;
  sp->top_k = a->top_k;
  sp->top_p = a->top_p;
  sp->min_p = a->min_p;
}

/* add_requests: N requests with ids ID0.. of a->prompt_len random tokens; PROMPT is scratch of that
 * size, V the vocabulary. */
static int add_requests(engine_t *e, const bench_args_t *a, int n, uint64_t id0, int32_t *prompt, int V) {
  sampling_params_t sp;
  bench_params(a, &sp);
  char err[256];
  uint64_t x = 0x9e3779b97f4a7c15ull ^ id0;
  for (int r = 0; r < n; r++) {
    for (int i = 0; i < a->prompt_len; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      prompt[i] = (int32_t)(x % (uint64_t)(V > 258 ? 256 : V)); /* byte-ish ids: valid for every vocab */
    }
    sp.seed = id0 + (uint64_t)r;
    int rc = engine_add(e, id0 + (uint64_t)r, prompt, a->prompt_len, &sp, err, sizeof err);
    if (rc) {
      fprintf(stderr, "strata-bench engine: %s\n", err);
      return rc;
    }
  }
  return 0;
}

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
  double t0 = now_s();
  int rc = add_requests(e, a, a->batch, id0, prompt, V);
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

/* run_batch_case: the batch case on engine E (model M): a warm-up, then R runs of B requests. */
static int run_batch_case(engine_t *e, const model_t *m, const bench_args_t *a, double t_load) {
  run_result_t res = {0};
  res.step_s = malloc(sizeof(double) * (size_t)(a->gen_len + 1) * (size_t)a->repeat);
  if (!res.step_s) return STRATA_ENOMEM;
  /* warm-up: the same batch with 8 new tokens, so that first-touch page faults, thread start and the
   * capture of the decode step's CUDA graphs (one per padded batch size and block-table width, as a
   * server captures them on its first requests) stay out of the measured run */
  bench_args_t w = *a;
  w.gen_len = 8;
  int rc = run_once(e, &w, 1u << 30, &res);
  double pre = 0, dec = 0, ttft = 0, n_dec_tokens = 0;
  int n_steps = 0;
  for (int r = 0; r < a->repeat && !rc; r++) {
    res.step_s += n_steps;
    rc = run_once(e, a, (uint64_t)(r + 1) << 32, &res);
    res.step_s -= n_steps;
    pre += res.t_prefill_s;
    dec += res.t_decode_s;
    ttft += res.ttft_mean_s / a->repeat;
    n_steps += res.n_decode_steps;
    n_dec_tokens += (double)res.n_decode_tokens;
  }
  if (!rc) {
    qsort(res.step_s, (size_t)n_steps, sizeof(double), cmp_double);
    double p50 = n_steps ? res.step_s[n_steps / 2] * 1e3 : 0;
    double p99 = n_steps ? res.step_s[(int)(n_steps * 0.99)] * 1e3 : 0;
    const engine_cfg_t *ec = engine_cfg(e);
    printf("{\"bench\":\"engine\",\"case\":\"batch\",\"model\":\"%s\",\"device\":\"%s\",\"threads\":%d,\"params\":%lld,"
           "\"dtype\":\"%s\",\"batch\":%d,\"prompt_len\":%d,\"gen_len\":%d,\"repeat\":%d,"
           "\"max_batched_tokens\":%d,\"temperature\":%g,\"prefill_tok_s\":%.1f,\"decode_tok_s\":%.1f,"
           "\"step_ms_mean\":%.3f,\"step_ms_p50\":%.3f,\"step_ms_p99\":%.3f,\"ttft_ms_mean\":%.2f,\"load_s\":%.3f}\n",
           m->name, engine_device(e), ec->n_threads, (long long)model_n_params(m), dtype_name(m->cfg.dtype), a->batch,
           a->prompt_len, a->gen_len, a->repeat, ec->max_batched_tokens, (double)a->temperature,
           pre > 0 ? (double)a->batch * a->prompt_len * a->repeat / pre : 0, dec > 0 ? n_dec_tokens / dec : 0,
           n_steps ? dec / n_steps * 1e3 : 0, p50, p99, ttft * 1e3, t_load);
  }
  free(res.step_s);
  return rc;
}

/* run_offline_case: a warm-up batch, then N requests queued at once and stepped until all finish;
 * the engine keeps at most max_num_seqs of them running (continuous batching). */
static int run_offline_case(engine_t *e, const model_t *m, const bench_args_t *a, double t_load) {
  const int V = m->cfg.vocab_size;
  int32_t *prompt = malloc(sizeof(int32_t) * (size_t)a->prompt_len);
  if (!prompt) return STRATA_ENOMEM;
  /* warm-up: a full batch of 8 new tokens each (first-touch page faults, the decode step's CUDA graphs) */
  bench_args_t w = *a;
  w.gen_len = 8;
  const int n_warm = a->requests < engine_cfg(e)->max_num_seqs ? a->requests : engine_cfg(e)->max_num_seqs;
  int rc = add_requests(e, &w, n_warm, 1u << 30, prompt, V);
  while (!rc && engine_has_work(e)) {
    const engine_out_t *outs;
    int n_outs;
    rc = engine_step(e, &outs, &n_outs);
  }
  engine_stats_t st0, st1;
  engine_stats(e, &st0);
  double t0 = now_s(), t_first = -1;
  long n_out = 0;
  if (!rc) rc = add_requests(e, a, a->requests, 1ull << 32, prompt, V);
  while (!rc && engine_has_work(e)) {
    const engine_out_t *outs;
    int n_outs;
    rc = engine_step(e, &outs, &n_outs);
    for (int i = 0; i < n_outs && !rc; i++) n_out += outs[i].has_token;
    if (t_first < 0 && n_out > 0) t_first = now_s() - t0;
  }
  double wall = now_s() - t0;
  engine_stats(e, &st1);
  if (!rc) {
    const engine_cfg_t *ec = engine_cfg(e);
    double n_in = (double)a->requests * a->prompt_len;
    printf("{\"bench\":\"engine\",\"case\":\"offline\",\"model\":\"%s\",\"device\":\"%s\",\"threads\":%d,"
           "\"params\":%lld,\"dtype\":\"%s\",\"requests\":%d,\"prompt_len\":%d,\"gen_len\":%d,\"max_num_seqs\":%d,"
           "\"max_batched_tokens\":%d,\"temperature\":%g,\"top_k\":%d,\"top_p\":%g,\"min_p\":%g,\"wall_s\":%.3f,"
           "\"output_tok_s\":%.1f,\"total_tok_s\":%.1f,\"output_tokens\":%ld,\"steps\":%llu,\"preemptions\":%llu,"
           "\"kv_blocks\":%d,\"first_token_s\":%.3f,\"load_s\":%.3f}\n",
           m->name, engine_device(e), ec->n_threads, (long long)model_n_params(m), dtype_name(m->cfg.dtype),
           a->requests, a->prompt_len, a->gen_len, ec->max_num_seqs, ec->max_batched_tokens, (double)a->temperature,
           a->top_k, (double)a->top_p, (double)a->min_p, wall, wall > 0 ? n_out / wall : 0,
           wall > 0 ? (n_in + n_out) / wall : 0, n_out, (unsigned long long)(st1.n_steps - st0.n_steps),
           (unsigned long long)(st1.n_preemptions - st0.n_preemptions), st1.kv_blocks_total, t_first, t_load);
  }
  free(prompt);
  return rc;
}

/* process_age_s: seconds since the kernel started this process (/proc/self/stat field 22, in clock
 * ticks since boot: 10 ms resolution), or -1 where that cannot be read. */
static double process_age_s(void) {
  char buf[1024];
  FILE *f = fopen("/proc/self/stat", "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *p = strrchr(buf, ')'); /* the command name may hold spaces; the fields after it do not */
  if (!p) return -1;
  unsigned long long start = 0;
  for (int field = 2; field < 22 && p; field++) p = strchr(p + 1, ' ');
  if (!p || sscanf(p + 1, "%llu", &start) != 1) return -1;
  long hz = sysconf(_SC_CLK_TCK);
  struct timespec ts;
  if (hz <= 0 || clock_gettime(CLOCK_BOOTTIME, &ts) != 0) return -1;
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9 - (double)start / (double)hz;
}

/* touch_weights: reads one byte of every page of M's host weights, so that the file's pages are in
 * memory before placement (the "weights read" part of a cold start). Returns the bytes spanned. */
static double touch_weights(const model_t *m) {
  unsigned char acc = 0;
  double bytes = 0;
  const model_weights_t *w = &m->w;
  for (int l = -2; l < m->cfg.n_layers; l++) {
    const weight_t *ws[9];
    int n = 0;
    if (l == -2) {
      ws[n++] = &w->tok_embd, ws[n++] = &w->out_norm;
      if (w->output.data != w->tok_embd.data) ws[n++] = &w->output;
    } else if (l >= 0) {
      const layer_weights_t *L = &w->layers[l];
      const weight_t *all[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->wo, &L->ffn_norm, &L->w_gate, &L->w_up,
                               &L->w_down};
      for (int i = 0; i < 9; i++) ws[n++] = all[i];
    }
    for (int i = 0; i < n; i++) {
      const unsigned char *d = ws[i]->data;
      size_t sz = dtype_row_bytes(ws[i]->dtype, ws[i]->cols) * (size_t)(ws[i]->rows > 0 ? ws[i]->rows : 0);
      if (!d) continue;
      for (size_t o = 0; o < sz; o += 4096) acc ^= d[o];
      bytes += (double)sz;
    }
  }
  volatile unsigned char sink = acc; /* the reads must happen */
  (void)sink;
  return bytes;
}

/* run_cold_case: the process's first model load and first token. T_MAIN: when bench_engine_main began. */
static int run_cold_case(const bench_args_t *a, double t_main) {
  double age0 = process_age_s() - (now_s() - t_main); /* the process's age when main began */
  model_t *m = NULL;
  engine_t *e = NULL;
  double t0 = now_s();
  model_load_opts_t lo = {.dtype = -1, .dummy_on_device = backend_device_is_gpu(a->ec.device)};
  int rc = model_load(&m, a->model, &lo);
  if (rc) {
    fprintf(stderr, "strata-bench engine: cannot load '%s': %s\n", a->model, strata_strerror(rc));
    return rc;
  }
  double t1 = now_s();
  double bytes = touch_weights(m);
  double t2 = now_s();
  rc = engine_create(&e, m, &a->ec);
  double t3 = now_s();
  int32_t *prompt = malloc(sizeof(int32_t));
  if (!rc && !prompt) rc = STRATA_ENOMEM;
  if (!rc) rc = add_requests(e, a, 1, 1, prompt, m->cfg.vocab_size);
  int got = 0;
  while (!rc && !got && engine_has_work(e)) {
    const engine_out_t *outs;
    int n_outs;
    rc = engine_step(e, &outs, &n_outs);
    for (int i = 0; i < n_outs; i++) got |= outs[i].has_token;
  }
  double t4 = now_s();
  if (!rc && got) {
    engine_stats_t st;
    engine_stats(e, &st);
    /* a dummy model made on the GPU has next to nothing on the host: its read rate means nothing (0) */
    const int on_device = lo.dummy_on_device && strncmp(a->model, "dummy:", 6) == 0;
    printf("{\"bench\":\"engine\",\"case\":\"cold-start\",\"model\":\"%s\",\"device\":\"%s\",\"params\":%lld,"
           "\"dtype\":\"%s\",\"weight_bytes\":%.0f,\"first_token_since_process_start_s\":%.3f,"
           "\"first_token_since_main_s\":%.3f,\"process_start_to_main_s\":%.3f,\"model_open_s\":%.3f,"
           "\"weights_read_s\":%.3f,\"weights_read_gb_s\":%.2f,\"engine_create_s\":%.3f,\"first_step_s\":%.3f,"
           "\"kv_blocks\":%d,\"max_num_seqs\":%d}\n",
           m->name, engine_device(e), (long long)model_n_params(m), dtype_name(m->cfg.dtype), bytes,
           age0 >= 0 ? age0 + (t4 - t_main) : -1.0, t4 - t_main, age0, t1 - t0, t2 - t1,
           t2 > t1 && !on_device ? bytes / (t2 - t1) / 1e9 : 0.0, t3 - t2, t4 - t3, st.kv_blocks_total,
           engine_cfg(e)->max_num_seqs);
  } else if (!rc) {
    fprintf(stderr, "strata-bench engine: the request ended without a token\n");
    rc = STRATA_EINVAL;
  }
  free(prompt);
  engine_free(e);
  model_free(m);
  return rc;
}

int bench_engine_main(int argc, char **argv) {
  double t_main = now_s(); /* the cold-start case counts from here (main() only dispatched to us) */
  if (!getenv("STRATA_LOG_LEVEL")) log_set_level(LOG_LEVEL_WARN);
  bench_args_t a;
  int rc = parse(argc, argv, &a);
  if (rc) return rc == 1 ? 0 : rc;
  if (a.bench_case == CASE_COLD) {
    rc = run_cold_case(&a, t_main);
    if (rc) fprintf(stderr, "strata-bench engine: %s\n", strata_strerror(rc));
    return rc ? 1 : 0;
  }
  model_t *m = NULL;
  engine_t *e = NULL;
  double t_load = now_s();
  model_load_opts_t lo = {.dtype = -1, .dummy_on_device = backend_device_is_gpu(a.ec.device)};
  rc = model_load(&m, a.model, &lo);
  if (rc) {
    fprintf(stderr, "strata-bench engine: cannot load '%s': %s\n", a.model, strata_strerror(rc));
    return 1;
  }
  rc = engine_create(&e, m, &a.ec);
  t_load = now_s() - t_load;
  if (!rc) rc = a.bench_case == CASE_OFFLINE ? run_offline_case(e, m, &a, t_load) : run_batch_case(e, m, &a, t_load);
  engine_free(e);
  model_free(m);
  if (rc) fprintf(stderr, "strata-bench engine: %s (case %s)\n", strata_strerror(rc), case_name(a.bench_case));
  return rc ? 1 : 0;
}
