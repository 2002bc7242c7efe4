/* bs_stats.c: turns a finished run into the summary (latency distributions, rates, goodput,
 * failures) and writes the table, the JSON line and the files of --out. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bench/serve/bs_int.h"
#include "common/log.h"
#include "common/status.h"

const char *bs_fail_name(int fail) {
  static const char *const names[BS_FAIL_COUNT] = {"ok",      "http",         "timeout",
                                                            "stream_cut", "connect", "stream_error",
                                                            "grpc_status"};
  return fail >= 0 && fail < BS_FAIL_COUNT ? names[fail] : "unknown";
}

/* gRPC's names for its status codes; spelled here so that the pure parts need no gRPC headers. */
const char *bs_grpc_status_name(int code) {
  static const char *const names[17] = {"OK",      "CANCELLED",           "UNKNOWN",       "INVALID_ARGUMENT",
                                        "DEADLINE_EXCEEDED",   "NOT_FOUND",     "ALREADY_EXISTS",
                                        "PERMISSION_DENIED",   "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE",
                                        "DATA_LOSS", "UNAUTHENTICATED"};
  return code >= 0 && code < 17 ? names[code] : "UNKNOWN";
}

int bs_req_no_text(bs_req_t *q) {
  if (q->n_chunks > 0) return 0;
  if (q->usage_completion <= 0) return 1;
  q->t_first = q->t_last = q->t_end;
  return 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Linear interpolation between closest ranks (numpy's default), so the reference is easy to
 * reproduce by hand. */
static double pct(const double *v, int n, double p) {
  double pos = p / 100.0 * (n - 1);
  int lo = (int)floor(pos), hi = lo + 1 < n ? lo + 1 : lo;
  return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

void bs_dist_of(double *v, int n, bs_dist_t *d) {
  memset(d, 0, sizeof *d);
  d->n = n;
  if (n <= 0) return;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  double sum = 0, sq = 0;
  for (int i = 0; i < n; i++) sum += v[i];
  d->mean = sum / n;
  for (int i = 0; i < n; i++) sq += (v[i] - d->mean) * (v[i] - d->mean);
  d->std = sqrt(sq / n);
  d->min = v[0];
  d->max = v[n - 1];
  d->p50 = pct(v, n, 50);
  d->p90 = pct(v, n, 90);
  d->p95 = pct(v, n, 95);
  d->p99 = pct(v, n, 99);
}

static int64_t req_out_tokens(const bs_req_t *q) { return q->usage_completion >= 0 ? q->usage_completion : q->n_chunks; }
static int64_t req_in_tokens(const bs_req_t *q) { return q->usage_prompt >= 0 ? q->usage_prompt : q->input_len; }
static double req_ttft_ms(const bs_req_t *q) { return (q->t_first - q->t_start) * 1000.0; }
static double req_e2e_ms(const bs_req_t *q) { return (q->t_end - q->t_start) * 1000.0; }
/* TPOT excludes the first token; NAN for one-token answers and for answers that came in one piece
 * (--no-stream), where there is nothing between the first and the last token to time. */
static double req_tpot_ms(const bs_req_t *q) {
  int64_t n = req_out_tokens(q);
  return n > 1 && q->n_chunks > 1 ? (q->t_end - q->t_first) * 1000.0 / (double)(n - 1) : NAN;
}

static int req_slo_met(const bs_cfg_t *c, const bs_req_t *q) {
  if (q->fail) return 0;
  if (c->slo_ttft_ms > 0 && req_ttft_ms(q) > c->slo_ttft_ms) return 0;
  double tpot = req_tpot_ms(q);
  if (c->slo_tpot_ms > 0 && !isnan(tpot) && tpot > c->slo_tpot_ms) return 0;
  return !(c->slo_e2e_ms > 0 && req_e2e_ms(q) > c->slo_e2e_ms);
}

int bs_summary_compute(const bs_cfg_t *cfg, const bs_run_t *run, bs_summary_t *s) {
  memset(s, 0, sizeof *s);
  int64_t n_itl = 0;
  for (int64_t i = 0; i < run->n_reqs; i++)
    if (run->reqs[i] && !run->reqs[i]->fail) n_itl += run->reqs[i]->n_itl;
  size_t n = (size_t)(run->n_reqs > 0 ? run->n_reqs : 1);
  double *ttft = malloc(n * sizeof *ttft), *tpot = malloc(n * sizeof *tpot), *e2e = malloc(n * sizeof *e2e);
  double *itl = malloc((size_t)(n_itl > 0 ? n_itl : 1) * sizeof *itl);
  int rc = STRATA_ENOMEM;
  if (!ttft || !tpot || !e2e || !itl) goto done;
  int nt = 0, np = 0, ne = 0;
  int64_t ni = 0;
  double first_start = INFINITY, last_start = -INFINITY;
  for (int64_t i = 0; i < run->n_reqs; i++) {
    const bs_req_t *q = run->reqs[i];
    if (!q) continue;
    s->n_total++;
    if (q->t_start < first_start) first_start = q->t_start;
    if (q->t_start > last_start) last_start = q->t_start;
    s->fail_by_class[q->fail]++;
    if (q->http_status > 0 && q->http_status < 600) s->http_status_count[q->http_status]++;
    if (q->grpc_status > 0 && q->grpc_status < 17) s->grpc_status_count[q->grpc_status]++;
    if (q->fail) {
      s->n_fail++;
      continue;
    }
    s->n_ok++;
    s->in_tokens += req_in_tokens(q);
    s->out_tokens += req_out_tokens(q);
    s->chunks += q->n_chunks;
    ttft[nt++] = req_ttft_ms(q);
    e2e[ne++] = req_e2e_ms(q);
    double tp = req_tpot_ms(q);
    if (!isnan(tp)) tpot[np++] = tp;
    for (int k = 0; k < q->n_itl; k++) itl[ni++] = q->itl_ms[k];
    s->slo_met += req_slo_met(cfg, q);
  }
  bs_dist_of(ttft, nt, &s->ttft);
  bs_dist_of(tpot, np, &s->tpot);
  bs_dist_of(itl, (int)ni, &s->itl);
  bs_dist_of(e2e, ne, &s->e2e);
  s->duration_s = run->t_end - run->t0;
  double d = s->duration_s > 0 ? s->duration_s : 1e-9;
  s->offered_rate = run->offered_rate;
  s->achieved_rate = s->n_total > 1 && last_start > first_start ? (double)(s->n_total - 1) / (last_start - first_start) : 0;
  s->req_per_s = (double)s->n_ok / d;
  s->out_tok_per_s = (double)s->out_tokens / d;
  s->total_tok_per_s = (double)(s->out_tokens + s->in_tokens) / d;
  s->slo_attainment = s->n_total ? (double)s->slo_met / (double)s->n_total : 0;
  s->goodput = (double)s->slo_met / d;
  /* Peak over windows of at least one second of the 0.5 s samples. */
  for (int i = 0; i < run->n_samples; i++)
    for (int j = i - 1; j >= 0; j--)
      if (run->samples[i].t_s - run->samples[j].t_s >= 0.999) {
        double r = (double)(run->samples[i].chunks - run->samples[j].chunks) / (run->samples[i].t_s - run->samples[j].t_s);
        if (r > s->peak_out_tok_per_s) s->peak_out_tok_per_s = r;
        break;
      }
  int open = cfg->concurrency <= 0 || cfg->trace;
  s->harness_behind = open && s->n_total > 0 &&
                      ((double)run->n_late > 0.05 * (double)s->n_total ||
                       (s->offered_rate > 0 && s->achieved_rate > 0 && s->achieved_rate < 0.95 * s->offered_rate));
  rc = 0;
done:
  free(ttft);
  free(tpot);
  free(e2e);
  free(itl);
  if (rc) log_error("bench serve: out of memory summarizing %lld requests", (long long)run->n_reqs);
  return rc;
}

static void print_dist(const char *name, const bs_dist_t *d) {
  printf("%-6s %7d %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f\n", name, d->n, d->mean, d->p50, d->p90, d->p95,
         d->p99, d->max);
}

void bs_summary_print(const bs_cfg_t *cfg, const bs_run_t *run, const bs_summary_t *s) {
  printf("============ strata-bench serve ============\n");
  printf("%-34s %s\n", "Target:", cfg->url);
  printf("%-34s %lld / %lld / %lld\n", "Requests total / ok / failed:", (long long)s->n_total, (long long)s->n_ok,
         (long long)s->n_fail);
  for (int f = 1; f < BS_FAIL_COUNT; f++)
    if (s->fail_by_class[f]) printf("  failed, %-24s %lld\n", bs_fail_name(f), (long long)s->fail_by_class[f]);
  for (int c = 300; c < 600; c++)
    if (s->http_status_count[c]) printf("  HTTP %-28d %lld\n", c, (long long)s->http_status_count[c]);
  for (int c = 1; c < 17; c++)
    if (s->grpc_status_count[c]) printf("  gRPC %-28s %lld\n", bs_grpc_status_name(c), (long long)s->grpc_status_count[c]);
  printf("%-34s %.3f\n", "Duration (s):", s->duration_s);
  if (s->offered_rate > 0) printf("%-34s %.2f\n", "Offered rate (req/s):", s->offered_rate);
  printf("%-34s %.2f\n", "Achieved send rate (req/s):", s->achieved_rate);
  printf("%-34s %.2f\n", "Request throughput (req/s):", s->req_per_s);
  printf("%-34s %.1f\n", "Output token throughput (tok/s):", s->out_tok_per_s);
  printf("%-34s %.1f\n", "Peak output chunks/s (1 s window):", s->peak_out_tok_per_s);
  printf("%-34s %.1f\n", "Total token throughput (tok/s):", s->total_tok_per_s);
  printf("%-34s %d\n", "Peak concurrency:", run->max_in_flight);
  char slo[128] = "";
  if (cfg->slo_ttft_ms > 0) snprintf(slo + strlen(slo), sizeof slo - strlen(slo), " ttft<=%gms", cfg->slo_ttft_ms);
  if (cfg->slo_tpot_ms > 0) snprintf(slo + strlen(slo), sizeof slo - strlen(slo), " tpot<=%gms", cfg->slo_tpot_ms);
  if (cfg->slo_e2e_ms > 0) snprintf(slo + strlen(slo), sizeof slo - strlen(slo), " e2e<=%gms", cfg->slo_e2e_ms);
  printf("%-34s%s\n", "SLO:", slo[0] ? slo : " none (every successful request counts)");
  printf("%-34s %lld / %lld (%.2f%%)\n", "SLO met:", (long long)s->slo_met, (long long)s->n_total,
         s->slo_attainment * 100);
  printf("%-34s %.2f\n", "Goodput (req/s):", s->goodput);
  printf("%-6s %7s %10s %10s %10s %10s %10s %10s  (ms)\n", "metric", "n", "mean", "p50", "p90", "p95", "p99", "max");
  print_dist("TTFT", &s->ttft);
  print_dist("TPOT", &s->tpot);
  print_dist("ITL", &s->itl);
  print_dist("E2E", &s->e2e);
  if (s->harness_behind)
    printf("WARNING: the offered rate was not kept: %lld sends were >10 ms late (max lag %.1f ms)%s\n",
           (long long)run->n_late, run->max_lag_s * 1000,
           cfg->max_concurrency > 0 ? "; --max-concurrency held requests back" : "; the harness is the bottleneck");
  char *js = bs_summary_json(cfg, run, s);
  if (js) printf("%s\n", js);
  free(js);
  fflush(stdout);
}

static cJSON *dist_json(const bs_dist_t *d) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "n", d->n);
  cJSON_AddNumberToObject(o, "mean", d->mean);
  cJSON_AddNumberToObject(o, "std", d->std);
  cJSON_AddNumberToObject(o, "min", d->min);
  cJSON_AddNumberToObject(o, "p50", d->p50);
  cJSON_AddNumberToObject(o, "p90", d->p90);
  cJSON_AddNumberToObject(o, "p95", d->p95);
  cJSON_AddNumberToObject(o, "p99", d->p99);
  cJSON_AddNumberToObject(o, "max", d->max);
  return o;
}

static cJSON *config_json(const bs_cfg_t *c) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "url", c->url);
  cJSON_AddStringToObject(o, "api", c->api == BS_API_CHAT ? "chat" : "completions");
  cJSON_AddStringToObject(o, "model", c->model);
  cJSON_AddBoolToObject(o, "stream", c->stream);
  cJSON_AddNumberToObject(o, "seed", (double)c->seed);
  cJSON_AddNumberToObject(o, "rate", c->rate);
  cJSON_AddStringToObject(o, "arrival", c->arrival == BS_ARRIVAL_GAMMA ? "gamma" : c->arrival == BS_ARRIVAL_CONSTANT ? "constant" : "poisson");
  cJSON_AddNumberToObject(o, "burstiness", c->burstiness);
  cJSON_AddNumberToObject(o, "concurrency", c->concurrency);
  cJSON_AddNumberToObject(o, "max_concurrency", c->max_concurrency);
  cJSON_AddNumberToObject(o, "num_requests", (double)c->num_requests);
  cJSON_AddNumberToObject(o, "duration_s", c->duration_s);
  cJSON_AddNumberToObject(o, "warmup", c->warmup);
  cJSON *st = cJSON_AddArrayToObject(o, "stages");
  for (int i = 0; i < c->n_stages; i++) {
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "duration_s", c->stages[i].duration_s);
    cJSON_AddNumberToObject(e, "rate", c->stages[i].rate);
    cJSON_AddItemToArray(st, e);
  }
  cJSON_AddNumberToObject(o, "input_len_min", c->in_lo);
  cJSON_AddNumberToObject(o, "input_len_max", c->in_hi);
  cJSON_AddNumberToObject(o, "output_len_min", c->out_lo);
  cJSON_AddNumberToObject(o, "output_len_max", c->out_hi);
  cJSON_AddNumberToObject(o, "prefix_groups", c->prefix_groups);
  cJSON_AddNumberToObject(o, "prefix_len", c->prefix_len);
  if (c->dataset) cJSON_AddStringToObject(o, "dataset", c->dataset);
  if (c->trace) cJSON_AddStringToObject(o, "trace", c->trace);
  const char *commit = getenv("STRATA_COMMIT");
  if (commit) cJSON_AddStringToObject(o, "commit", commit);
  cJSON *tags = cJSON_AddObjectToObject(o, "tags");
  for (int i = 0; i < c->n_tags; i++) {
    const char *eq = strchr(c->tags[i], '=');
    char key[128];
    snprintf(key, sizeof key, "%.*s", eq ? (int)(eq - c->tags[i]) : (int)strlen(c->tags[i]), c->tags[i]);
    cJSON_AddStringToObject(tags, key, eq ? eq + 1 : "");
  }
  if (c->argv_echo) cJSON_AddStringToObject(o, "command", c->argv_echo);
  return o;
}

char *bs_summary_json(const bs_cfg_t *cfg, const bs_run_t *run, const bs_summary_t *s) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  cJSON_AddStringToObject(o, "bench", "serve");
  cJSON_AddItemToObject(o, "config", config_json(cfg));
  cJSON_AddNumberToObject(o, "requests", (double)s->n_total);
  cJSON_AddNumberToObject(o, "ok", (double)s->n_ok);
  cJSON_AddNumberToObject(o, "failed", (double)s->n_fail);
  cJSON *f = cJSON_AddObjectToObject(o, "failures");
  for (int k = 1; k < BS_FAIL_COUNT; k++) cJSON_AddNumberToObject(f, bs_fail_name(k), (double)s->fail_by_class[k]);
  cJSON *hs = cJSON_AddObjectToObject(o, "http_status");
  for (int c = 100; c < 600; c++)
    if (s->http_status_count[c]) {
      char k[8];
      snprintf(k, sizeof k, "%d", c);
      cJSON_AddNumberToObject(hs, k, (double)s->http_status_count[c]);
    }
  if (cfg->grpc[0]) {
    cJSON *gs = cJSON_AddObjectToObject(o, "grpc_status");
    for (int c = 1; c < 17; c++)
      if (s->grpc_status_count[c]) cJSON_AddNumberToObject(gs, bs_grpc_status_name(c), (double)s->grpc_status_count[c]);
  }
  cJSON_AddNumberToObject(o, "duration_s", s->duration_s);
  cJSON_AddNumberToObject(o, "offered_rate", s->offered_rate);
  cJSON_AddNumberToObject(o, "achieved_rate", s->achieved_rate);
  cJSON_AddNumberToObject(o, "req_per_s", s->req_per_s);
  cJSON_AddNumberToObject(o, "output_tok_per_s", s->out_tok_per_s);
  cJSON_AddNumberToObject(o, "peak_output_chunks_per_s", s->peak_out_tok_per_s);
  cJSON_AddNumberToObject(o, "total_tok_per_s", s->total_tok_per_s);
  cJSON_AddNumberToObject(o, "input_tokens", (double)s->in_tokens);
  cJSON_AddNumberToObject(o, "output_tokens", (double)s->out_tokens);
  cJSON_AddNumberToObject(o, "chunks", (double)s->chunks);
  cJSON_AddNumberToObject(o, "chunks_per_s", s->duration_s > 0 ? (double)s->chunks / s->duration_s : 0);
  cJSON_AddNumberToObject(o, "peak_concurrency", run->max_in_flight);
  cJSON_AddNumberToObject(o, "connections_opened", (double)run->n_conn_opened);
  cJSON_AddItemToObject(o, "ttft_ms", dist_json(&s->ttft));
  cJSON_AddItemToObject(o, "tpot_ms", dist_json(&s->tpot));
  cJSON_AddItemToObject(o, "itl_ms", dist_json(&s->itl));
  cJSON_AddItemToObject(o, "e2e_ms", dist_json(&s->e2e));
  cJSON *slo = cJSON_AddObjectToObject(o, "slo");
  cJSON_AddNumberToObject(slo, "ttft_ms", cfg->slo_ttft_ms);
  cJSON_AddNumberToObject(slo, "tpot_ms", cfg->slo_tpot_ms);
  cJSON_AddNumberToObject(slo, "e2e_ms", cfg->slo_e2e_ms);
  cJSON_AddNumberToObject(slo, "met", (double)s->slo_met);
  cJSON_AddNumberToObject(slo, "attainment", s->slo_attainment);
  cJSON_AddNumberToObject(o, "goodput_req_per_s", s->goodput);
  cJSON_AddNumberToObject(o, "late_sends", (double)run->n_late);
  cJSON_AddNumberToObject(o, "max_send_lag_ms", run->max_lag_s * 1000);
  cJSON_AddBoolToObject(o, "harness_behind", s->harness_behind);
  cJSON_AddNumberToObject(o, "scrape_points", run->n_points);
  cJSON_AddNumberToObject(o, "scrape_failures", run->scrape_failures);
  char *out = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return out;
}

static int write_requests(FILE *fp, const bs_cfg_t *cfg, const bs_run_t *run) {
  bs_buf_t b = {0};
  for (int64_t i = 0; i < run->n_reqs; i++) {
    const bs_req_t *q = run->reqs[i];
    if (!q) continue;
    b.len = 0;
    int ok = !q->fail;
    double tpot = req_tpot_ms(q);
    int rc = bs_buf_printf(&b,
                           "{\"id\":%lld,\"group\":%d,\"input_len\":%d,\"output_len\":%d,\"prompt_tokens\":%lld,"
                           "\"output_tokens\":%lld,\"chunks\":%d,\"t_sched_s\":%.6f,\"t_start_s\":%.6f,"
                           "\"http_status\":%d,\"grpc_status\":%d,\"status\":\"%s\",\"retried\":%s,",
                           (long long)q->id, q->group, q->input_len, q->output_len, (long long)req_in_tokens(q),
                           (long long)req_out_tokens(q), q->n_chunks, q->t_sched, q->t_start - run->t0,
                           q->http_status, q->grpc_status, bs_fail_name(q->fail), q->retried ? "true" : "false");
    if (ok && !isnan(tpot))
      rc = rc ? rc : bs_buf_printf(&b, "\"ttft_ms\":%.4f,\"tpot_ms\":%.4f,", req_ttft_ms(q), tpot);
    else if (ok)
      rc = rc ? rc : bs_buf_printf(&b, "\"ttft_ms\":%.4f,\"tpot_ms\":null,", req_ttft_ms(q));
    rc = rc ? rc : bs_buf_printf(&b, "\"e2e_ms\":%.4f,\"slo_met\":%s,\"itl_ms\":[", req_e2e_ms(q),
                                  req_slo_met(cfg, q) ? "true" : "false");
    for (int k = 0; k < q->n_itl && !rc; k++) rc = bs_buf_printf(&b, k ? ",%.3f" : "%.3f", q->itl_ms[k]);
    rc = rc ? rc : bs_buf_puts(&b, "]}\n");
    if (rc || fwrite(b.p, 1, b.len, fp) != b.len) {
      bs_buf_free(&b);
      return STRATA_EIO;
    }
  }
  bs_buf_free(&b);
  return 0;
}

/* Long format: one row per (time, metric) so any scraped metric fits without a schema. */
static int write_timeseries(FILE *fp, const bs_run_t *run) {
  fprintf(fp, "time_s,metric,value\n");
  for (int i = 0; i < run->n_samples; i++) {
    const bs_sample_t *s = &run->samples[i];
    fprintf(fp, "%.3f,bench:in_flight,%d\n", s->t_s, s->in_flight);
    fprintf(fp, "%.3f,bench:requests_done,%lld\n", s->t_s, (long long)s->done);
    fprintf(fp, "%.3f,bench:chunks_total,%lld\n", s->t_s, (long long)s->chunks);
  }
  for (int i = 0; i < run->n_points; i++) {
    fprintf(fp, "%.3f,\"", run->points[i].t_s);
    for (const char *p = run->points[i].metric; *p; p++) {
      if (*p == '"') fputc('"', fp);
      fputc(*p, fp);
    }
    fprintf(fp, "\",%.17g\n", run->points[i].value);
  }
  return ferror(fp) ? STRATA_EIO : 0;
}

static FILE *open_out(const char *dir, const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *fp = fopen(path, "w");
  if (!fp) log_error("bench serve: cannot write %s: %s", path, strerror(errno));
  return fp;
}

int bs_outputs_write(const bs_cfg_t *cfg, const bs_run_t *run, const bs_summary_t *s) {
  if (mkdir(cfg->out_dir, 0755) < 0 && errno != EEXIST) {
    log_error("bench serve: cannot create the output directory %s: %s", cfg->out_dir, strerror(errno));
    return STRATA_EIO;
  }
  static const char *const names[4] = {"summary.json", "requests.jsonl", "timeseries.csv", "report.html"};
  for (int k = 0; k < 4; k++) {
    FILE *fp = open_out(cfg->out_dir, names[k]);
    if (!fp) return STRATA_EIO;
    int rc = 0;
    if (k == 0) {
      char *js = bs_summary_json(cfg, run, s);
      rc = js && fprintf(fp, "%s\n", js) > 0 ? 0 : STRATA_EIO;
      free(js);
    } else if (k == 1) {
      rc = write_requests(fp, cfg, run);
    } else if (k == 2) {
      rc = write_timeseries(fp, run);
    } else {
      rc = bs_report_html(fp, cfg, run, s);
    }
    if (fclose(fp) != 0 && !rc) rc = STRATA_EIO;
    if (rc) {
      log_error("bench serve: writing %s/%s failed", cfg->out_dir, names[k]);
      return rc;
    }
  }
  return 0;
}
