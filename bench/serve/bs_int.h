/* bs_int.h: internal types shared by the files of the strata-bench serve load harness. */
#ifndef STRATA_BENCH_SERVE_BS_INT_H
#define STRATA_BENCH_SERVE_BS_INT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- small utilities (bs_util.c) ---- */

/* xoshiro256** state; seeded through splitmix64 so that any 64-bit seed is fine. */
typedef struct {
  uint64_t s[4];
} bs_rng_t;

void bs_rng_seed(bs_rng_t *r, uint64_t seed);
uint64_t bs_rng_next(bs_rng_t *r);
double bs_rng_uniform(bs_rng_t *r);            /* [0, 1) */
double bs_rng_exp(bs_rng_t *r, double mean);   /* exponential with MEAN */
double bs_rng_gamma(bs_rng_t *r, double shape, double scale);
int bs_rng_range(bs_rng_t *r, int lo, int hi); /* uniform integer in [lo, hi] */

/* bs_now_s: CLOCK_MONOTONIC in seconds. */
double bs_now_s(void);

/* Growable byte buffer; NUL-terminated after every append. */
typedef struct {
  char *p;
  size_t len, cap;
} bs_buf_t;

int bs_buf_reserve(bs_buf_t *b, size_t extra);
int bs_buf_append(bs_buf_t *b, const void *data, size_t n);
int bs_buf_puts(bs_buf_t *b, const char *s);
int bs_buf_printf(bs_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* bs_buf_json_str: append S as a quoted JSON string. */
int bs_buf_json_str(bs_buf_t *b, const char *s);
void bs_buf_free(bs_buf_t *b);

/* The fixed word list used to build prompts: each is one token with a leading space in common
 * BPE vocabularies, so N words are about N prompt tokens without a tokenizer. */
extern const char *const bs_words[];
extern const int bs_n_words;

/* bs_parse_duration_s: "500ms", "2s", "1.5m", "1h" or a bare number of seconds. <0 if bad. */
double bs_parse_duration_s(const char *s);

/* ---- configuration (bench_serve.c) ---- */

enum { BS_API_COMPLETIONS = 0, BS_API_CHAT = 1 };
enum { BS_ARRIVAL_POISSON = 0, BS_ARRIVAL_CONSTANT = 1, BS_ARRIVAL_GAMMA = 2 };

typedef struct {
  double duration_s, rate;
} bs_stage_t;

#define BS_MAX_STAGES 64
#define BS_MAX_SCRAPE 32

typedef struct {
  /* target */
  char url[1024];
  char grpc[256]; /* gRPC target host:port; "" for the HTTP target */
  char host[256], port[16], path[512];
  int tls, insecure;
  const char *ca_file; /* extra trusted CAs (PEM) */
  char metrics_host[256], metrics_port[16], metrics_path[512];
  int metrics_tls;
  const char *api_key;
  int api;
  const char *model;
  int stream;
  /* load */
  double rate; /* requests/s; 0 = infinite */
  int arrival;
  double burstiness;
  int concurrency;     /* >0: closed loop */
  int max_concurrency; /* cap for open loop; 0 = none */
  bs_stage_t stages[BS_MAX_STAGES];
  int n_stages;
  int64_t num_requests; /* -1 = not given */
  double duration_s;    /* 0 = not given */
  int warmup;
  double timeout_s;
  /* workload */
  int in_lo, in_hi, out_lo, out_hi;
  int out_given; /* --output-len given: overrides dataset lengths */
  int prefix_groups, prefix_len;
  const char *dataset, *trace;
  double trace_speed;
  uint64_t seed;
  /* measurement */
  double slo_ttft_ms, slo_tpot_ms, slo_e2e_ms; /* 0 = no constraint */
  const char *scrape_names[BS_MAX_SCRAPE];
  int n_scrape;
  double scrape_interval_s;
  const char *out_dir;
  int progress;
  const char *tags[32]; /* --tag key=value, echoed in the summary */
  int n_tags;
  const char *argv_echo;
} bs_cfg_t;

/* ---- one request (bs_workload.c builds it, bs_client.c runs it, bs_stats.c reads it) ---- */

enum {
  BS_FAIL_NONE = 0,
  BS_FAIL_HTTP,    /* non-2xx status */
  BS_FAIL_TIMEOUT, /* no complete response within --timeout */
  BS_FAIL_CUT,     /* connection closed mid-response */
  BS_FAIL_CONNECT, /* could not connect or the connection broke before any reply */
  BS_FAIL_STREAM,  /* an error event in the stream, or a response without tokens */
  BS_FAIL_GRPC,    /* a gRPC status other than OK, DEADLINE_EXCEEDED, UNAVAILABLE, CANCELLED */
  BS_FAIL_COUNT
};

typedef struct {
  int64_t id;
  int warmup;
  int group; /* shared-prefix group or -1 */
  int input_len, output_len;
  double t_sched; /* planned send time, seconds from the run start (open loop) */
  char *http;     /* the whole HTTP request (owned; NULL for gRPC) */
  size_t http_len;
  char *prompt;   /* the prompt text (owned; gRPC requests only) */
  /* results; times are CLOCK_MONOTONIC seconds */
  double t_start, t_first, t_last, t_end;
  float *itl_ms; /* gaps between content chunks after the first, capacity cap_itl */
  int n_itl, cap_itl;
  int n_chunks;
  int usage_prompt, usage_completion; /* -1 when the server sent no usage */
  int http_status;
  int grpc_status; /* gRPC status code, -1 for HTTP */
  int fail;
  int retried;
  int done;
} bs_req_t;

/* ---- workload (bs_workload.c) ---- */

typedef struct bs_workload bs_workload_t;

/* bs_workload_new: load the dataset or trace named by CFG (if any) and prepare the generators.
 * Returns NULL on error (logged). */
bs_workload_t *bs_workload_new(const bs_cfg_t *cfg);
void bs_workload_free(bs_workload_t *w);
/* bs_workload_count: how many main-phase requests the workload implies (-1: unbounded, decided by
 * the duration in closed loop). */
int64_t bs_workload_count(const bs_workload_t *w);
/* bs_workload_arrival_s: planned send time of main request I (open loop), seconds from the start. */
double bs_workload_arrival_s(const bs_workload_t *w, int64_t i);
/* bs_workload_make: a new request (ID I; WARMUP marks warm-up ones) with its HTTP bytes. NULL on
 * out of memory. Deterministic in (seed, I, warmup). Caller frees with bs_req_free. */
bs_req_t *bs_workload_make(bs_workload_t *w, int64_t i, int warmup);
void bs_req_free(bs_req_t *r);
/* bs_workload_offered_rate: mean planned rate of the main phase (req/s; 0 when not open loop). */
double bs_workload_offered_rate(const bs_workload_t *w);

/* ---- the event-loop client (bs_client.c) ---- */

typedef struct {
  double t_s;       /* seconds since the main phase started */
  int in_flight;    /* requests in flight at the sample */
  int64_t done;     /* main-phase requests finished so far */
  int64_t chunks;   /* main-phase content chunks received so far */
} bs_sample_t;

typedef struct {
  char *metric; /* name{labels} as scraped (owned) */
  double t_s, value;
} bs_scrape_point_t;

typedef struct {
  bs_req_t **reqs; /* main-phase requests, by id */
  int64_t n_reqs;
  double t0, t_end; /* main phase start and end (monotonic s) */
  bs_sample_t *samples;
  int n_samples, cap_samples;
  bs_scrape_point_t *points;
  int n_points, cap_points;
  int64_t n_late;      /* open-loop sends more than 10 ms behind plan */
  double max_lag_s;    /* worst lag behind the planned send time */
  int max_in_flight;
  int64_t n_conn_opened;
  double offered_rate; /* planned main-phase rate (req/s), 0 when closed loop or unbounded */
  int scrape_failures;
} bs_run_t;

/* bs_run_execute: run warm-up and main phase against CFG's target; fills RUN (caller frees with
 * bs_run_free). Returns 0, or a negative STRATA_E* code when the run could not start. */
int bs_run_execute(const bs_cfg_t *cfg, bs_workload_t *w, bs_run_t *run);
void bs_run_free(bs_run_t *run);

/* ---- the gRPC target (bs_grpc.c) ---- */

struct ev_loop;
typedef struct bs_grpc bs_grpc_t;

/* Both run on the libev thread. on_chunk: Q received a message with text (timestamps already set).
 * on_done: Q finished (t_end, usage, fail and grpc_status set); the harness owns Q again. */
typedef struct {
  void (*on_chunk)(void *arg, bs_req_t *q);
  void (*on_done)(void *arg, bs_req_t *q);
  void *arg;
} bs_grpc_cbs_t;

/* bs_grpc_new: a channel to cfg->grpc (TLS with cfg->ca_file as roots) and a completion-queue thread
 * whose events reach LOOP (the caller's libev loop, run on the caller's thread) through an ev_async.
 * CFG and LOOP must outlive the handle. Returns 0 and *OUT, or a negative STRATA_E* code (logged). */
int bs_grpc_new(const bs_cfg_t *cfg, struct ev_loop *loop, const bs_grpc_cbs_t *cbs, bs_grpc_t **out);
/* bs_grpc_send: start Generate for Q (q->prompt, q->output_len; ignore_eos, temperature 0). Returns 0
 * (exactly one on_done will follow) or a STRATA_E* code (no callback will come). Libev thread. */
int bs_grpc_send(bs_grpc_t *g, bs_req_t *q);
/* bs_grpc_free: stop the thread and close the channel. Every sent request must have finished. */
void bs_grpc_free(bs_grpc_t *g);

/* ---- results (bs_stats.c, bs_report.c) ---- */

typedef struct {
  int n;
  double mean, std, min, p50, p90, p95, p99, max;
} bs_dist_t;

typedef struct {
  int64_t n_total, n_ok, n_fail;
  int64_t fail_by_class[BS_FAIL_COUNT];
  int64_t http_status_count[600];
  int64_t grpc_status_count[17];
  double duration_s;
  double offered_rate, achieved_rate; /* req/s sent vs completed */
  double req_per_s, out_tok_per_s, total_tok_per_s, peak_out_tok_per_s;
  int64_t in_tokens, out_tokens, chunks;
  bs_dist_t ttft, tpot, itl, e2e; /* milliseconds */
  int64_t slo_met;
  double slo_attainment, goodput;
  int harness_behind;
} bs_summary_t;

/* bs_summary_compute: aggregate RUN into S. Returns 0 or STRATA_ENOMEM. */
int bs_summary_compute(const bs_cfg_t *cfg, const bs_run_t *run, bs_summary_t *s);
/* bs_dist_of: distribution of V[0..n) (sorted in place). */
void bs_dist_of(double *v, int n, bs_dist_t *d);
/* bs_summary_print: the table and the one-line JSON summary on stdout. */
void bs_summary_print(const bs_cfg_t *cfg, const bs_run_t *run, const bs_summary_t *s);
/* bs_outputs_write: summary.json, requests.jsonl, timeseries.csv and report.html under cfg->out_dir. */
int bs_outputs_write(const bs_cfg_t *cfg, const bs_run_t *run, const bs_summary_t *s);
/* bs_summary_json: the summary as compact JSON (malloc'd string) or NULL. */
char *bs_summary_json(const bs_cfg_t *cfg, const bs_run_t *run, const bs_summary_t *s);
/* bs_report_html: the self-contained HTML report into FP. */
int bs_report_html(FILE *fp, const bs_cfg_t *cfg, const bs_run_t *run, const bs_summary_t *s);

const char *bs_fail_name(int fail);
/* bs_req_no_text: judge a finished stream that carried no text. Nonzero when it carried no tokens
 * either (a failure). When the server's usage counts tokens whose text was empty (a byte-level
 * tokenizer that emitted control or partial UTF-8 bytes, as dummy models do), the request counts as
 * good and its first visible output is its end: t_first = t_last = t_end, as for --no-stream. */
int bs_req_no_text(bs_req_t *q);
/* bs_grpc_status_name: "UNAVAILABLE" etc. for a gRPC status code (0..16). */
const char *bs_grpc_status_name(int code);

#endif
