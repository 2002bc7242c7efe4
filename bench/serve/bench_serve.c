/* bench_serve.c: the options of `strata-bench serve` (one table) and the run from parse to report. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bench/serve/bench_serve.h"
#include "bench/serve/bs_int.h"
#include "common/log.h"
#include "common/status.h"

/* Every option once: name, whether it takes a value, help. */
static const struct {
  const char *name;
  int arg;
  const char *help;
} opts[] = {
    {"url", 1, "target http[s]://host:port[/v1/completions|/v1/chat/completions]"},
    {"grpc", 1, "gRPC target host:port (strata.v1.Inference/Generate; TLS with --ca-file)"},
    {"api-key", 1, "sent as 'Authorization: Bearer KEY'"},
    {"insecure", 0, "do not verify the server's TLS certificate"},
    {"ca-file", 1, "PEM file of CA certificates to trust besides the system's"},
    {"api", 1, "completions | chat (default: from the URL path, else completions)"},
    {"model", 1, "model name in the requests (default: default)"},
    {"no-stream", 0, "ask for whole responses instead of SSE streams"},
    {"rate", 1, "open loop: requests/s (default inf: all at once)"},
    {"arrival", 1, "poisson | constant | gamma (default poisson)"},
    {"burstiness", 1, "gamma shape: 1 = Poisson, <1 burstier, >1 smoother (selects gamma)"},
    {"concurrency", 1, "closed loop: keep C requests in flight"},
    {"max-concurrency", 1, "open loop: cap on requests in flight"},
    {"stages", 1, "staged open loop, e.g. 60s@2rps,120s@10rps,60s@1rps"},
    {"num-requests", 1, "main-phase requests (default 100, or what --duration allows)"},
    {"duration", 1, "stop sending after this long (e.g. 30s)"},
    {"warmup", 1, "requests sent and awaited before the measured phase (default 0)"},
    {"timeout", 1, "per-request timeout (default 300s)"},
    {"input-len", 1, "prompt words: N or LO:HI (default 128)"},
    {"output-len", 1, "max_tokens: N or LO:HI (default 128)"},
    {"prefix-groups", 1, "shared-prefix groups (with --prefix-len)"},
    {"prefix-len", 1, "shared prefix words per group, before the random --input-len part"},
    {"dataset", 1, "JSONL (or JSON array) of ShareGPT conversations, messages, or {prompt, output_len}"},
    {"trace", 1, "Mooncake trace JSONL (timestamp ms, input_length, output_length, hash_ids)"},
    {"trace-speed", 1, "replay the trace this many times faster (default 1)"},
    {"seed", 1, "random seed (default 0)"},
    {"slo", 1, "e.g. ttft=500ms,tpot=50ms[,e2e=10s]"},
    {"scrape-metrics", 1, "comma-separated metric names to record from /metrics"},
    {"scrape-interval", 1, "scrape period (default 1s; 0 disables)"},
    {"metrics-url", 1, "where to scrape (default: the target's /metrics)"},
    {"out", 1, "directory for summary.json, requests.jsonl, timeseries.csv, report.html"},
    {"tag", 1, "key=value echoed in the summary config (model, dtype, tp, gpu...); repeatable"},
    {"no-progress", 0, "no progress bar on stderr"},
    {"help", 0, "this text"},
};

static const char *const default_scrape =
    "strata:num_requests_running,strata:num_requests_waiting,strata:kv_cache_usage_perc,"
    "strata:prefix_cache_hits_total,strata:prefix_cache_queries_total,strata:desired_replicas";

static void usage(FILE *fp) {
  fprintf(fp, "usage: strata-bench serve --url http://host:port | --grpc host:port [options]\n");
  for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++)
    fprintf(fp, "  --%-18s %s %s\n", opts[i].name, opts[i].arg ? "V" : " ", opts[i].help);
}

/* Splits scheme://host[:port][/path]; DEFPATH when the path is empty. */
static int parse_url(const char *url, char *host, char *port, char *path, int *tls, const char *defpath) {
  const char *p;
  if (!strncasecmp(url, "http://", 7)) *tls = 0, p = url + 7;
  else if (!strncasecmp(url, "https://", 8)) *tls = 1, p = url + 8;
  else return STRATA_EINVAL;
  const char *slash = strchr(p, '/'), *end = slash ? slash : p + strlen(p);
  const char *colon = NULL;
  if (*p == '[') { /* [v6]:port */
    const char *rb = memchr(p, ']', (size_t)(end - p));
    if (!rb) return STRATA_EINVAL;
    if ((size_t)(rb - p - 1) >= 256) return STRATA_EINVAL;
    snprintf(host, 256, "%.*s", (int)(rb - p - 1), p + 1);
    colon = rb + 1 < end && rb[1] == ':' ? rb + 1 : NULL;
  } else {
    colon = memchr(p, ':', (size_t)(end - p));
    size_t hl = (size_t)((colon ? colon : end) - p);
    if (hl == 0 || hl >= 256) return STRATA_EINVAL;
    snprintf(host, 256, "%.*s", (int)hl, p);
  }
  if (colon) {
    if (end - colon - 1 <= 0 || end - colon - 1 >= 16) return STRATA_EINVAL;
    snprintf(port, 16, "%.*s", (int)(end - colon - 1), colon + 1);
  } else {
    snprintf(port, 16, "%s", *tls ? "443" : "80");
  }
  if (strlen(slash && strcmp(slash, "/") ? slash : defpath) >= 512) return STRATA_EINVAL;
  snprintf(path, 512, "%s", slash && strcmp(slash, "/") ? slash : defpath);
  return 0;
}

static int parse_range(const char *s, int *lo, int *hi) {
  char *end;
  long a = strtol(s, &end, 10), b = a;
  if (end == s) return STRATA_EINVAL;
  if (*end == ':' || *end == '-') {
    const char *q = end + 1;
    b = strtol(q, &end, 10);
    if (end == q) return STRATA_EINVAL;
  }
  if (*end || a < 1 || b < a || b > 10000000) return STRATA_EINVAL;
  *lo = (int)a;
  *hi = (int)b;
  return 0;
}

static int parse_slo(bs_cfg_t *c, char *s) {
  for (char *save = NULL, *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(tok, '=');
    if (!eq) return STRATA_EINVAL;
    *eq = 0;
    double v = bs_parse_duration_s(eq + 1) * 1000.0;
    if (v <= 0) return STRATA_EINVAL;
    if (!strcmp(tok, "ttft")) c->slo_ttft_ms = v;
    else if (!strcmp(tok, "tpot") || !strcmp(tok, "itl")) c->slo_tpot_ms = v;
    else if (!strcmp(tok, "e2e") || !strcmp(tok, "e2el")) c->slo_e2e_ms = v;
    else return STRATA_EINVAL;
  }
  return 0;
}

static int parse_stages(bs_cfg_t *c, char *s) {
  for (char *save = NULL, *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    char *at = strchr(tok, '@');
    if (!at || c->n_stages == BS_MAX_STAGES) return STRATA_EINVAL;
    *at = 0;
    char *end;
    double d = bs_parse_duration_s(tok), r = strtod(at + 1, &end);
    if (d <= 0 || end == at + 1 || r < 0 || (*end && strcmp(end, "rps") && strcmp(end, "qps"))) return STRATA_EINVAL;
    c->stages[c->n_stages++] = (bs_stage_t){.duration_s = d, .rate = r};
  }
  return c->n_stages ? 0 : STRATA_EINVAL;
}

static int split_names(bs_cfg_t *c, char *s) {
  c->n_scrape = 0;
  for (char *save = NULL, *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (c->n_scrape == BS_MAX_SCRAPE) return STRATA_EINVAL;
    c->scrape_names[c->n_scrape++] = tok;
  }
  return 0;
}

static double num(const char *v, int *bad) {
  char *end;
  double x = strtod(v, &end);
  if (end == v || *end) *bad = 1;
  return x;
}

/* Applies one option; strings that must be split are copied into HOLD (kept until exit). */
static int set_opt(bs_cfg_t *c, const char *name, const char *v, char **hold, int *n_hold, const char **url,
                   const char **murl, int *api_given) {
  int bad = 0;
  char *copy = v ? strdup(v) : NULL;
  if (v && !copy) return STRATA_ENOMEM;
  if (copy) hold[(*n_hold)++] = copy;
  if (!strcmp(name, "url")) *url = v;
  else if (!strcmp(name, "grpc")) {
    bad = !*v || strlen(v) >= sizeof c->grpc || strstr(v, "://");
    if (!bad) snprintf(c->grpc, sizeof c->grpc, "%s", v);
  }
  else if (!strcmp(name, "api-key")) c->api_key = v;
  else if (!strcmp(name, "insecure")) c->insecure = 1;
  else if (!strcmp(name, "ca-file")) c->ca_file = v;
  else if (!strcmp(name, "api")) {
    *api_given = 1;
    if (!strcmp(v, "chat")) c->api = BS_API_CHAT;
    else if (!strcmp(v, "completions")) c->api = BS_API_COMPLETIONS;
    else bad = 1;
  } else if (!strcmp(name, "model")) c->model = v;
  else if (!strcmp(name, "no-stream")) c->stream = 0;
  else if (!strcmp(name, "rate")) c->rate = strcmp(v, "inf") ? num(v, &bad) : 0;
  else if (!strcmp(name, "arrival")) {
    if (!strcmp(v, "poisson")) c->arrival = BS_ARRIVAL_POISSON;
    else if (!strcmp(v, "constant")) c->arrival = BS_ARRIVAL_CONSTANT;
    else if (!strcmp(v, "gamma")) c->arrival = BS_ARRIVAL_GAMMA;
    else bad = 1;
  } else if (!strcmp(name, "burstiness")) {
    c->burstiness = num(v, &bad);
    c->arrival = BS_ARRIVAL_GAMMA;
    bad |= c->burstiness <= 0;
  } else if (!strcmp(name, "concurrency")) c->concurrency = (int)num(v, &bad), bad |= c->concurrency < 1;
  else if (!strcmp(name, "max-concurrency")) c->max_concurrency = (int)num(v, &bad), bad |= c->max_concurrency < 1;
  else if (!strcmp(name, "stages")) bad = parse_stages(c, copy) != 0;
  else if (!strcmp(name, "num-requests")) c->num_requests = (int64_t)num(v, &bad), bad |= c->num_requests < 0;
  else if (!strcmp(name, "duration")) bad = (c->duration_s = bs_parse_duration_s(v)) <= 0;
  else if (!strcmp(name, "warmup")) c->warmup = (int)num(v, &bad), bad |= c->warmup < 0;
  else if (!strcmp(name, "timeout")) bad = (c->timeout_s = bs_parse_duration_s(v)) <= 0;
  else if (!strcmp(name, "input-len")) bad = parse_range(v, &c->in_lo, &c->in_hi) != 0;
  else if (!strcmp(name, "output-len")) bad = parse_range(v, &c->out_lo, &c->out_hi) != 0, c->out_given = 1;
  else if (!strcmp(name, "prefix-groups")) c->prefix_groups = (int)num(v, &bad), bad |= c->prefix_groups < 0;
  else if (!strcmp(name, "prefix-len")) c->prefix_len = (int)num(v, &bad), bad |= c->prefix_len < 0;
  else if (!strcmp(name, "dataset")) c->dataset = v;
  else if (!strcmp(name, "trace")) c->trace = v;
  else if (!strcmp(name, "trace-speed")) c->trace_speed = num(v, &bad), bad |= c->trace_speed <= 0;
  else if (!strcmp(name, "seed")) c->seed = strtoull(v, NULL, 10);
  else if (!strcmp(name, "slo")) bad = parse_slo(c, copy) != 0;
  else if (!strcmp(name, "scrape-metrics")) bad = split_names(c, copy) != 0;
  else if (!strcmp(name, "scrape-interval")) bad = (c->scrape_interval_s = bs_parse_duration_s(v)) < 0;
  else if (!strcmp(name, "metrics-url")) *murl = v;
  else if (!strcmp(name, "out")) c->out_dir = v;
  else if (!strcmp(name, "tag")) {
    if (c->n_tags < 32) c->tags[c->n_tags++] = v;
  } else if (!strcmp(name, "no-progress")) c->progress = 0;
  if (bad) {
    fprintf(stderr, "strata-bench serve: bad value '%s' for --%s\n", v ? v : "", name);
    return STRATA_EINVAL;
  }
  return 0;
}

static void cfg_defaults(bs_cfg_t *c) {
  memset(c, 0, sizeof *c);
  c->model = "default";
  c->stream = 1;
  c->burstiness = 1.0;
  c->num_requests = -1;
  c->timeout_s = 300;
  c->in_lo = c->in_hi = c->out_lo = c->out_hi = 128;
  c->trace_speed = 1.0;
  c->scrape_interval_s = 1.0;
  c->progress = 1;
}

/* The rest of parse_args for --grpc: what HTTP-only options mean there, and the metrics URL. */
static int check_grpc(bs_cfg_t *c, const char *url, const char *murl) {
  const char *why = url ? "--url and --grpc are two targets: choose one"
                  : c->insecure ? "--insecure is not supported with --grpc: pass the server's CA with --ca-file"
                  : !c->stream ? "--no-stream does not apply to --grpc (Generate always streams)"
                  : (c->dataset && c->trace) || (c->n_stages && c->concurrency) || (c->rate > 0 && c->concurrency)
                      ? "conflicting options: choose one of --dataset/--trace, and one of --concurrency or "
                        "--rate/--stages"
                      : NULL;
  if (why) {
    fprintf(stderr, "strata-bench serve: %s\n", why);
    return STRATA_EINVAL;
  }
  snprintf(c->url, sizeof c->url, "grpc://%s", c->grpc);
  /* /metrics is served over HTTP on another port: scrape only when told where. */
  if (murl && parse_url(murl, c->metrics_host, c->metrics_port, c->metrics_path, &c->metrics_tls, "/metrics")) {
    fprintf(stderr, "strata-bench serve: bad --metrics-url\n");
    return STRATA_EINVAL;
  }
  return 0;
}

/* Parses ARGV into C; returns 0, 1 for --help, or <0 on a usage error (reported). */
static int parse_args(bs_cfg_t *c, int argc, char **argv, char **hold, int *n_hold) {
  const char *url = NULL, *murl = NULL;
  int api_given = 0;
  char *names = strdup(default_scrape);
  if (!names) return STRATA_ENOMEM;
  hold[(*n_hold)++] = names;
  split_names(c, names);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *val = NULL;
    if (strncmp(a, "--", 2)) {
      fprintf(stderr, "strata-bench serve: unexpected argument '%s' (see --help)\n", a);
      return STRATA_EINVAL;
    }
    a += 2;
    const char *eq = strchr(a, '=');
    size_t nl = eq ? (size_t)(eq - a) : strlen(a);
    size_t k = 0, n = sizeof opts / sizeof opts[0];
    while (k < n && (strlen(opts[k].name) != nl || strncmp(opts[k].name, a, nl))) k++;
    if (k == n) {
      fprintf(stderr, "strata-bench serve: unknown option --%.*s (see --help)\n", (int)nl, a);
      return STRATA_EINVAL;
    }
    if (!strcmp(opts[k].name, "help")) return 1;
    if (opts[k].arg) {
      val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
      if (!val) {
        fprintf(stderr, "strata-bench serve: --%s needs a value\n", opts[k].name);
        return STRATA_EINVAL;
      }
    }
    if (*n_hold >= 96) return STRATA_EINVAL;
    int rc = set_opt(c, opts[k].name, val, hold, n_hold, &url, &murl, &api_given);
    if (rc) return rc;
  }
  if (c->grpc[0]) return check_grpc(c, url, murl);
  if (!url) {
    fprintf(stderr, "strata-bench serve: --url or --grpc is required (see --help)\n");
    return STRATA_EINVAL;
  }
  snprintf(c->url, sizeof c->url, "%s", url);
  if (!api_given && strstr(url + 8, "/chat/")) c->api = BS_API_CHAT;
  const char *defpath = c->api == BS_API_CHAT ? "/v1/chat/completions" : "/v1/completions";
  if (parse_url(url, c->host, c->port, c->path, &c->tls, defpath)) {
    fprintf(stderr, "strata-bench serve: bad --url '%s' (want http[s]://host:port[/path])\n", url);
    return STRATA_EINVAL;
  }
  int bad = murl ? parse_url(murl, c->metrics_host, c->metrics_port, c->metrics_path, &c->metrics_tls, "/metrics")
                 : 0;
  if (!murl) {
    snprintf(c->metrics_host, sizeof c->metrics_host, "%s", c->host);
    snprintf(c->metrics_port, sizeof c->metrics_port, "%s", c->port);
    snprintf(c->metrics_path, sizeof c->metrics_path, "/metrics");
    c->metrics_tls = c->tls;
  }
  if (bad || (c->dataset && c->trace) || (c->n_stages && c->concurrency) || (c->rate > 0 && c->concurrency)) {
    fprintf(stderr, "strata-bench serve: %s\n", bad ? "bad --metrics-url"
                                                    : "conflicting options: choose one of --dataset/--trace, and one "
                                                      "of --concurrency or --rate/--stages");
    return STRATA_EINVAL;
  }
  return 0;
}

static char *join_args(int argc, char **argv) {
  bs_buf_t b = {0};
  if (bs_buf_puts(&b, "strata-bench")) return NULL;
  for (int i = 0; i < argc; i++) {
    if (i > 0 && (!strcmp(argv[i - 1], "--api-key"))) {
      if (bs_buf_puts(&b, " ***")) break; /* secrets never reach logs or reports */
      continue;
    }
    if (bs_buf_printf(&b, " %s", !strncmp(argv[i], "--api-key=", 10) ? "--api-key=***" : argv[i])) break;
  }
  return b.p;
}

int bench_serve_main(int argc, char **argv) {
  bs_cfg_t cfg;
  char *hold[100];
  int n_hold = 0, status = 1;
  bs_workload_t *w = NULL;
  bs_run_t run = {0};
  bs_summary_t *sum = NULL;
  char *echo = NULL;
  cfg_defaults(&cfg);
  int rc = parse_args(&cfg, argc, argv, hold, &n_hold);
  if (rc == 1) usage(stdout);
  if (rc) {
    status = rc == 1 ? 0 : 2;
    goto done;
  }
  signal(SIGPIPE, SIG_IGN);
  cfg.argv_echo = echo = join_args(argc, argv);
  if (!(w = bs_workload_new(&cfg))) goto done;
  if (bs_workload_count(w) == 0) {
    log_error("bench serve: the workload has no requests (check --num-requests, --duration, --stages)");
    goto done;
  }
  if (bs_run_execute(&cfg, w, &run)) goto done;
  run.offered_rate = bs_workload_offered_rate(w);
  sum = malloc(sizeof *sum);
  if (!sum || bs_summary_compute(&cfg, &run, sum)) goto done;
  bs_summary_print(&cfg, &run, sum);
  if (cfg.out_dir && bs_outputs_write(&cfg, &run, sum)) goto done;
  status = 0;
done:
  free(sum);
  bs_run_free(&run);
  bs_workload_free(w);
  free(echo);
  for (int i = 0; i < n_hold; i++) free(hold[i]);
  return status;
}
