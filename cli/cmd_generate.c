/* cmd_generate.c: `strata generate`: one prompt through a local engine; the generated text (only) to
 * stdout, diagnostics to stderr. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/engine/engine.h"

#define MAX_STOPS 16

static void usage(FILE *f) {
  fprintf(f,
          "usage: strata generate [--model PATH|dummy:NAME] --prompt TEXT [options]\n"
          "\n"
          "Generates a continuation of TEXT and writes only the generated text to stdout.\n"
          "\n"
          "  --model PATH          Hugging Face directory, .gguf file or dummy:<preset> (default: %s)\n"
          "  --prompt TEXT         the prompt (\"\" = just BOS)\n"
          "  --max-tokens N        tokens to generate at most (default 256)\n"
          "  --temperature T       0 = greedy (default 1.0)\n"
          "  --top-k K             keep the K most likely tokens (default off)\n"
          "  --top-p P             nucleus sampling (default 1.0 = off)\n"
          "  --min-p P             drop tokens below P x the top probability (default 0 = off)\n"
          "  --repetition-penalty R, --presence-penalty P, --frequency-penalty F\n"
          "  --seed S              random seed (default: random)\n"
          "  --stop STR            stop before this text (repeatable, up to %d)\n"
          "  --ignore-eos          keep generating past EOS\n"
          "  --no-bos              do not prepend BOS to the prompt\n"
          "  --device DEV          cpu | cuda[:N] | auto (default auto)\n"
          "  --dtype T             auto | f32 | bf16 | f16: compute dtype (auto: the backend's choice)\n"
          "  --threads N           CPU threads (default: all cores)\n"
          "  --max-model-len N     context length (default: the model's)\n"
          "  --max-batched-tokens N  tokens per engine step (default 8192 on a GPU, 2048 on the CPU)\n"
          "  --num-kv-blocks N     KV cache blocks (default: sized from memory)\n"
          "  --no-prefix-caching   disable prefix caching\n"
          "  --verbose             log at info level (default: warnings only)\n",
          cli_default_model(), MAX_STOPS);
}

enum {
  O_MODEL = 256, O_PROMPT, O_MAXTOK, O_TEMP, O_TOPK, O_TOPP, O_MINP, O_REP, O_PRES, O_FREQ, O_SEED, O_STOP,
  O_IGNEOS, O_NOBOS, O_DEVICE, O_DTYPE, O_THREADS, O_MAXLEN, O_MBT, O_NKV, O_NOPC, O_VERBOSE, O_HELP
};

static const struct option g_opts[] = {
    {"model", required_argument, 0, O_MODEL},
    {"prompt", required_argument, 0, O_PROMPT},
    {"max-tokens", required_argument, 0, O_MAXTOK},
    {"temperature", required_argument, 0, O_TEMP},
    {"top-k", required_argument, 0, O_TOPK},
    {"top-p", required_argument, 0, O_TOPP},
    {"min-p", required_argument, 0, O_MINP},
    {"repetition-penalty", required_argument, 0, O_REP},
    {"presence-penalty", required_argument, 0, O_PRES},
    {"frequency-penalty", required_argument, 0, O_FREQ},
    {"seed", required_argument, 0, O_SEED},
    {"stop", required_argument, 0, O_STOP},
    {"ignore-eos", no_argument, 0, O_IGNEOS},
    {"no-bos", no_argument, 0, O_NOBOS},
    {"device", required_argument, 0, O_DEVICE},
    {"dtype", required_argument, 0, O_DTYPE},
    {"threads", required_argument, 0, O_THREADS},
    {"max-model-len", required_argument, 0, O_MAXLEN},
    {"max-batched-tokens", required_argument, 0, O_MBT},
    {"num-kv-blocks", required_argument, 0, O_NKV},
    {"no-prefix-caching", no_argument, 0, O_NOPC},
    {"verbose", no_argument, 0, O_VERBOSE},
    {"help", no_argument, 0, O_HELP},
    {0, 0, 0, 0},
};

/* parse_num: a number option, or an error naming it. */
static int parse_num(const char *opt, const char *s, double lo, double hi, double *out) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || *end || v < lo || v > hi) {
    fprintf(stderr, "strata generate: --%s: '%s' is not a number in [%g, %g]\n", opt, s, lo, hi);
    return -1;
  }
  *out = v;
  return 0;
}

typedef struct {
  const char *model, *prompt;
  const char *stops[MAX_STOPS];
  int n_stops, no_bos, has_seed;
  sampling_params_t sp;
  engine_cfg_t ec;
} gen_args_t;

static int parse_args(int argc, char **argv, gen_args_t *a) {
  memset(a, 0, sizeof *a);
  a->model = cli_default_model();
  sampling_params_default(&a->sp);
  a->sp.max_tokens = 256;
  a->sp.temperature = 1.0f;
  engine_cfg_default(&a->ec);
  a->ec.max_num_seqs = 1;
  int c;
  double v;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", g_opts, NULL)) != -1) {
    const char *name = c >= O_MODEL && c <= O_HELP ? g_opts[c - O_MODEL].name : "?";
    switch (c) {
      case O_MODEL: a->model = optarg; break;
      case O_PROMPT: a->prompt = optarg; break;
      case O_STOP:
        if (a->n_stops == MAX_STOPS) {
          fprintf(stderr, "strata generate: at most %d --stop strings\n", MAX_STOPS);
          return 2;
        }
        a->stops[a->n_stops++] = optarg;
        break;
      case O_IGNEOS: a->sp.ignore_eos = 1; break;
      case O_NOBOS: a->no_bos = 1; break;
      case O_NOPC: a->ec.prefix_caching = 0; break;
      case O_VERBOSE: log_set_level(LOG_LEVEL_INFO); break;
      case O_DEVICE: snprintf(a->ec.device, sizeof a->ec.device, "%s", optarg); break;
      case O_DTYPE:
        if (strcmp(optarg, "auto") == 0) {
          a->ec.act_dtype = -1;
        } else if ((a->ec.act_dtype = dtype_parse(optarg)) < 0 || dtype_is_quant((dtype_t)a->ec.act_dtype)) {
          fprintf(stderr, "strata generate: --dtype: '%s' is not one of auto, f32, bf16, f16\n", optarg);
          return 2;
        }
        break;
      case O_HELP: usage(stdout); return 1;
      case O_SEED: {
        char *end;
        a->sp.seed = strtoull(optarg, &end, 0);
        if (end == optarg || *end) {
          fprintf(stderr, "strata generate: --seed: '%s' is not an integer\n", optarg);
          return 2;
        }
        a->has_seed = 1;
        break;
      }
      case '?': usage(stderr); return 2;
      default:
        if (parse_num(name, optarg, c == O_TEMP || c >= O_THREADS ? 0 : -1e9, 1e9, &v)) return 2;
        if (c == O_MAXTOK) a->sp.max_tokens = (int)v;
        if (c == O_TEMP) a->sp.temperature = (float)v;
        if (c == O_TOPK) a->sp.top_k = (int)v;
        if (c == O_TOPP) a->sp.top_p = (float)v;
        if (c == O_MINP) a->sp.min_p = (float)v;
        if (c == O_REP) a->sp.repetition_penalty = (float)v;
        if (c == O_PRES) a->sp.presence_penalty = (float)v;
        if (c == O_FREQ) a->sp.frequency_penalty = (float)v;
        if (c == O_THREADS) a->ec.n_threads = (int)v;
        if (c == O_MAXLEN) a->ec.max_model_len = (int)v;
        if (c == O_MBT) a->ec.max_batched_tokens = (int)v;
        if (c == O_NKV) a->ec.num_kv_blocks = (int)v;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "strata generate: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  if (!a->prompt) {
    fprintf(stderr, "strata generate: --prompt is required (see --help)\n");
    return 2;
  }
  if (!a->has_seed) a->sp.seed = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ (uint64_t)clock();
  return 0;
}

/* emit: writes generated text through the stop matcher; returns 1 once a stop string matched. */
static int emit(stop_matcher_t *sm, const char *text, size_t len, char **buf, size_t *cap) {
  size_t n = 0;
  int stopped = stop_push(sm, text, len, buf, &n, cap);
  if (n) {
    fwrite(*buf, 1, n, stdout);
    fflush(stdout);
  }
  return stopped > 0;
}

static int run(const gen_args_t *a, model_t *m, tok_t *tok) {
  int32_t *ids = NULL;
  int n_ids = 0, rc;
  int flags = TOK_PARSE_SPECIAL | (!a->no_bos && tok_add_bos_default(tok) ? TOK_ADD_BOS : 0);
  rc = tok_encode(tok, a->prompt, strlen(a->prompt), flags, &ids, &n_ids);
  if (rc) return rc;
  engine_t *e = NULL;
  stop_matcher_t sm;
  detok_t dt;
  char *text = NULL, *buf = NULL;
  size_t text_len = 0, text_cap = 0, buf_cap = 0;
  char err[256] = "";
  rc = stop_init(&sm, a->stops, a->n_stops);
  if (rc) goto out;
  rc = engine_create(&e, m, &a->ec);
  if (rc) goto out_stop;
  rc = engine_add(e, 1, ids, n_ids, &a->sp, err, sizeof err);
  if (rc) {
    fprintf(stderr, "strata generate: %s\n", err);
    goto out_engine;
  }
  detok_init(&dt, tok, 1);
  detok_prime(&dt, ids, n_ids);
  int done = 0;
  while (!done && engine_has_work(e)) {
    const engine_out_t *outs;
    int n_outs;
    rc = engine_step(e, &outs, &n_outs);
    if (rc) goto out_engine;
    for (int i = 0; i < n_outs && !done; i++) {
      const engine_out_t *o = &outs[i];
      if (o->has_token) {
        text_len = 0;
        rc = detok_push(&dt, o->token, &text, &text_len, &text_cap);
        if (rc) goto out_engine;
        if (emit(&sm, text, text_len, &buf, &buf_cap)) {
          engine_abort(e, o->id);
          done = 1;
        }
      }
      if (o->finished) done = 1;
    }
  }
  if (!sm.stopped) {
    text_len = 0;
    detok_flush(&dt, &text, &text_len, &text_cap);
    emit(&sm, text, text_len, &buf, &buf_cap);
    size_t n = 0;
    stop_flush(&sm, &buf, &n, &buf_cap);
    fwrite(buf, 1, n, stdout);
  }
  if (isatty(STDOUT_FILENO)) fputc('\n', stdout);
  fflush(stdout);
out_engine:
  engine_free(e);
out_stop:
  stop_deinit(&sm);
out:
  free(text);
  free(buf);
  free(ids);
  return rc;
}

int cmd_generate(int argc, char **argv) {
  if (!getenv("STRATA_LOG_LEVEL")) log_set_level(LOG_LEVEL_WARN);
  gen_args_t a;
  int rc = parse_args(argc, argv, &a);
  if (rc) return rc == 1 ? 0 : rc;
  model_t *m = NULL;
  tok_t *tok = NULL;
  /* a dummy model's matrices are made on the GPU when the engine will run there */
  model_load_opts_t lo = {.dtype = -1, .dummy_on_device = backend_device_is_gpu(a.ec.device)};
  rc = model_load(&m, a.model, &lo);
  if (rc) {
    fprintf(stderr, "strata generate: cannot load model '%s': %s\n", a.model, strata_strerror(rc));
    return 1;
  }
  rc = cli_load_tokenizer(m->tokenizer_path[0] ? m->tokenizer_path : a.model, m->cfg.vocab_size, &tok);
  if (rc) {
    fprintf(stderr, "strata generate: cannot load the tokenizer of '%s': %s\n", a.model, strata_strerror(rc));
    model_free(m);
    return 1;
  }
  rc = run(&a, m, tok);
  tok_free(tok);
  model_free(m);
  if (rc) fprintf(stderr, "strata generate: %s\n", strata_strerror(rc));
  return rc ? 1 : 0;
}
