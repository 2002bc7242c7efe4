/* bs_workload.c: what the harness sends and when: random, shared-prefix, JSONL dataset and
 * Mooncake-trace workloads, open-loop arrival plans, and the HTTP bytes of each request. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench/serve/bs_int.h"
#include "common/log.h"
#include "common/status.h"

/* Mooncake traces hash blocks of 512 tokens. */
#define BS_TRACE_BLOCK 512

typedef struct {
  char *prompt; /* dataset text (owned) or NULL */
  int in_len, out_len;
  double ts_s;          /* trace: arrival */
  int64_t *hash_ids;    /* trace: block hashes (owned) */
  int n_hash;
} bs_item_t;

struct bs_workload {
  const bs_cfg_t *cfg;
  bs_item_t *items;
  int64_t n_items;
  int64_t *perm; /* dataset order under the seed */
  double *arrivals;
  int64_t n_arrivals;
  int64_t count;
  int open_loop;
};

static void item_free(bs_item_t *it) {
  free(it->prompt);
  free(it->hash_ids);
}

static int count_words(const char *s) {
  int n = 0, in = 0;
  for (; *s; s++) {
    int sp = (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r');
    if (!sp && !in) n++;
    in = !sp;
  }
  return n;
}

/* One dataset record: {"prompt", "output_len"}, ShareGPT {"conversations":[{"from","value"}]} or
 * {"messages":[{"role","content"}]}. Returns 1 if used, 0 if skipped, <0 on no memory. */
static int dataset_item(cJSON *o, bs_item_t *it) {
  const char *prompt = NULL, *answer = NULL;
  cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "prompt");
  if (cJSON_IsString(p)) prompt = p->valuestring;
  cJSON *conv = cJSON_GetObjectItemCaseSensitive(o, "conversations");
  const char *rk = "from", *vk = "value";
  if (!conv) {
    conv = cJSON_GetObjectItemCaseSensitive(o, "messages");
    rk = "role";
    vk = "content";
  }
  cJSON *m;
  cJSON_ArrayForEach(m, conv) {
    cJSON *role = cJSON_GetObjectItemCaseSensitive(m, rk), *val = cJSON_GetObjectItemCaseSensitive(m, vk);
    if (!cJSON_IsString(role) || !cJSON_IsString(val)) continue;
    int user = !strcmp(role->valuestring, "human") || !strcmp(role->valuestring, "user");
    if (user && !prompt) prompt = val->valuestring;
    else if (!user && prompt && !answer) answer = val->valuestring;
  }
  if (!prompt || !*prompt) return 0;
  it->prompt = strdup(prompt);
  if (!it->prompt) return STRATA_ENOMEM;
  it->in_len = count_words(prompt);
  cJSON *ol = cJSON_GetObjectItemCaseSensitive(o, "output_len");
  if (cJSON_IsNumber(ol)) it->out_len = ol->valueint;
  else if (answer) it->out_len = (int)(strlen(answer) + 3) / 4; /* ~4 characters per token */
  else it->out_len = 128;
  if (it->out_len < 1) it->out_len = 1;
  return 1;
}

static int trace_item(cJSON *o, bs_item_t *it) {
  cJSON *ts = cJSON_GetObjectItemCaseSensitive(o, "timestamp");
  cJSON *in = cJSON_GetObjectItemCaseSensitive(o, "input_length");
  cJSON *out = cJSON_GetObjectItemCaseSensitive(o, "output_length");
  cJSON *h = cJSON_GetObjectItemCaseSensitive(o, "hash_ids");
  if (!cJSON_IsNumber(ts) || !cJSON_IsNumber(in) || !cJSON_IsNumber(out)) return 0;
  it->ts_s = ts->valuedouble / 1000.0;
  it->in_len = in->valueint > 0 ? in->valueint : 1;
  it->out_len = out->valueint > 0 ? out->valueint : 1;
  int n = cJSON_IsArray(h) ? cJSON_GetArraySize(h) : 0;
  if (n > 0) {
    it->hash_ids = calloc((size_t)n, sizeof *it->hash_ids);
    if (!it->hash_ids) return STRATA_ENOMEM;
    cJSON *e;
    cJSON_ArrayForEach(e, h) it->hash_ids[it->n_hash++] = (int64_t)e->valuedouble;
  }
  return 1;
}

static int add_item(bs_workload_t *w, cJSON *o, int trace, int64_t *cap) {
  if (w->n_items == *cap) {
    int64_t nc = *cap ? *cap * 2 : 1024;
    bs_item_t *ni = realloc(w->items, (size_t)nc * sizeof *ni);
    if (!ni) return STRATA_ENOMEM;
    w->items = ni;
    *cap = nc;
  }
  bs_item_t *it = &w->items[w->n_items];
  memset(it, 0, sizeof *it);
  int rc = trace ? trace_item(o, it) : dataset_item(o, it);
  if (rc < 0) item_free(it);
  if (rc == 1) w->n_items++;
  return rc < 0 ? rc : 0;
}

/* Reads a JSONL file (or, for datasets, one JSON array). */
static int load_items(bs_workload_t *w, const char *path, int trace) {
  FILE *fp = fopen(path, "rb");
  if (!fp) {
    log_error("bench serve: cannot open %s file %s", trace ? "trace" : "dataset", path);
    return STRATA_EIO;
  }
  bs_buf_t all = {0};
  char chunk[65536];
  size_t n;
  int rc = 0;
  while ((n = fread(chunk, 1, sizeof chunk, fp)) > 0)
    if ((rc = bs_buf_append(&all, chunk, n))) goto done;
  if (!all.p) goto done;
  int64_t cap = 0;
  const char *s = all.p;
  while (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t') s++;
  if (*s == '[') {
    cJSON *arr = cJSON_Parse(s), *o;
    cJSON_ArrayForEach(o, arr) if ((rc = add_item(w, o, trace, &cap))) break;
    cJSON_Delete(arr);
    goto done;
  }
  int64_t lineno = 0;
  for (char *line = all.p; line && *line && !rc; lineno++) {
    char *nl = strchr(line, '\n');
    if (nl) *nl = 0;
    if (strspn(line, " \t\r") != strlen(line)) {
      cJSON *o = cJSON_Parse(line);
      if (!o) log_warn("bench serve: %s:%lld is not JSON; skipped", path, (long long)lineno + 1);
      else rc = add_item(w, o, trace, &cap);
      cJSON_Delete(o);
    }
    line = nl ? nl + 1 : NULL;
  }
done:
  fclose(fp);
  bs_buf_free(&all);
  if (!rc && w->n_items == 0) {
    log_error("bench serve: %s holds no usable records", path);
    rc = STRATA_EFORMAT;
  }
  return rc;
}

static double next_gap(const bs_cfg_t *c, bs_rng_t *r, double rate) {
  if (c->arrival == BS_ARRIVAL_CONSTANT) return 1.0 / rate;
  if (c->arrival == BS_ARRIVAL_GAMMA) return bs_rng_gamma(r, c->burstiness, 1.0 / (rate * c->burstiness));
  return bs_rng_exp(r, 1.0 / rate);
}

static int push_arrival(bs_workload_t *w, double t, int64_t *cap) {
  if (w->n_arrivals == *cap) {
    int64_t nc = *cap ? *cap * 2 : 1024;
    double *na = realloc(w->arrivals, (size_t)nc * sizeof *na);
    if (!na) return STRATA_ENOMEM;
    w->arrivals = na;
    *cap = nc;
  }
  w->arrivals[w->n_arrivals++] = t;
  return 0;
}

/* Plans the open-loop send times; the main phase has exactly n_arrivals requests. */
static int plan_arrivals(bs_workload_t *w) {
  const bs_cfg_t *c = w->cfg;
  bs_rng_t r;
  bs_rng_seed(&r, c->seed ^ 0xa5a5f00dULL);
  int64_t cap = 0, limit = c->num_requests >= 0 ? c->num_requests : INT64_MAX;
  if (c->trace) {
    double t0 = w->items[0].ts_s;
    for (int64_t i = 0; i < w->n_items && i < limit; i++)
      if (push_arrival(w, (w->items[i].ts_s - t0) / c->trace_speed, &cap)) return STRATA_ENOMEM;
    return 0;
  }
  if (c->n_stages > 0) {
    double start = 0;
    for (int s = 0; s < c->n_stages; s++) {
      double end = start + c->stages[s].duration_s, t = start;
      while (c->stages[s].rate > 0 && w->n_arrivals < limit) {
        t += next_gap(c, &r, c->stages[s].rate);
        if (t >= end) break;
        if (push_arrival(w, t, &cap)) return STRATA_ENOMEM;
      }
      start = end;
    }
    return 0;
  }
  if (c->rate <= 0) { /* infinite rate: everything at once */
    for (int64_t i = 0; i < w->count; i++)
      if (push_arrival(w, 0, &cap)) return STRATA_ENOMEM;
    return 0;
  }
  double t = 0;
  int64_t n = c->num_requests >= 0 ? c->num_requests : (c->duration_s > 0 ? INT64_MAX : 100);
  while (w->n_arrivals < n && (c->duration_s <= 0 || t < c->duration_s)) {
    if (push_arrival(w, t, &cap)) return STRATA_ENOMEM;
    t += next_gap(c, &r, c->rate);
  }
  return 0;
}

bs_workload_t *bs_workload_new(const bs_cfg_t *cfg) {
  bs_workload_t *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  w->cfg = cfg;
  if (cfg->dataset && load_items(w, cfg->dataset, 0)) goto fail;
  if (cfg->trace && load_items(w, cfg->trace, 1)) goto fail;
  if (cfg->dataset) {
    w->perm = malloc((size_t)w->n_items * sizeof *w->perm);
    if (!w->perm) goto fail;
    bs_rng_t r;
    bs_rng_seed(&r, cfg->seed ^ 0x5eedULL);
    for (int64_t i = 0; i < w->n_items; i++) w->perm[i] = i;
    for (int64_t i = w->n_items - 1; i > 0; i--) {
      int64_t j = (int64_t)(bs_rng_next(&r) % (uint64_t)(i + 1)), t = w->perm[i];
      w->perm[i] = w->perm[j];
      w->perm[j] = t;
    }
  }
  w->open_loop = cfg->concurrency <= 0 || cfg->trace;
  if (cfg->num_requests >= 0) w->count = cfg->num_requests;
  else if (cfg->dataset && cfg->duration_s <= 0) w->count = w->n_items;
  else w->count = cfg->duration_s > 0 ? -1 : 100;
  if (w->open_loop) {
    if (plan_arrivals(w)) goto fail;
    w->count = w->n_arrivals;
  }
  return w;
fail:
  log_error("bench serve: could not prepare the workload");
  bs_workload_free(w);
  return NULL;
}

void bs_workload_free(bs_workload_t *w) {
  if (!w) return;
  for (int64_t i = 0; i < w->n_items; i++) item_free(&w->items[i]);
  free(w->items);
  free(w->perm);
  free(w->arrivals);
  free(w);
}

int64_t bs_workload_count(const bs_workload_t *w) { return w->count; }

double bs_workload_arrival_s(const bs_workload_t *w, int64_t i) {
  return (w->open_loop && i < w->n_arrivals) ? w->arrivals[i] : 0.0;
}

double bs_workload_offered_rate(const bs_workload_t *w) {
  if (!w->open_loop || w->n_arrivals < 2) return 0;
  double span = w->arrivals[w->n_arrivals - 1];
  if (w->cfg->n_stages > 0) {
    span = 0;
    for (int s = 0; s < w->cfg->n_stages; s++) span += w->cfg->stages[s].duration_s;
  } else if (w->cfg->duration_s > 0 && w->cfg->num_requests < 0 && !w->cfg->trace) {
    span = w->cfg->duration_s;
  } else if (!w->cfg->trace && w->cfg->rate > 0) {
    return w->cfg->rate;
  }
  if (w->cfg->trace) return span > 0 ? (double)(w->n_arrivals - 1) / span : 0; /* first send at 0 */
  return span > 0 ? (double)w->n_arrivals / span : 0;
}

static int add_words(bs_buf_t *b, bs_rng_t *r, int n) {
  for (int i = 0; i < n; i++) {
    if (b->len && bs_buf_append(b, " ", 1)) return STRATA_ENOMEM;
    if (bs_buf_puts(b, bs_words[bs_rng_next(r) % (uint64_t)bs_n_words])) return STRATA_ENOMEM;
  }
  return 0;
}

/* The prompt text of request I; sets its lengths. */
static int make_prompt(bs_workload_t *w, bs_req_t *q, bs_rng_t *r, int64_t i, bs_buf_t *p) {
  const bs_cfg_t *c = w->cfg;
  q->output_len = bs_rng_range(r, c->out_lo, c->out_hi);
  if (c->trace) {
    bs_item_t *it = &w->items[i % w->n_items];
    int left = it->in_len;
    for (int k = 0; k < it->n_hash && left > 0; k++) {
      bs_rng_t hr; /* the same hash id gives the same words in every request */
      bs_rng_seed(&hr, c->seed * 0x9e3779b97f4a7c15ULL ^ (uint64_t)it->hash_ids[k]);
      int n = left < BS_TRACE_BLOCK ? left : BS_TRACE_BLOCK;
      if (add_words(p, &hr, n)) return STRATA_ENOMEM;
      left -= n;
    }
    if (add_words(p, r, left)) return STRATA_ENOMEM;
    q->input_len = it->in_len;
    q->output_len = it->out_len;
    return 0;
  }
  if (c->dataset) {
    bs_item_t *it = &w->items[w->perm[i % w->n_items]];
    q->input_len = it->in_len;
    if (!c->out_given) q->output_len = it->out_len;
    return bs_buf_puts(p, it->prompt);
  }
  int suffix = bs_rng_range(r, c->in_lo, c->in_hi);
  q->input_len = suffix;
  if (c->prefix_groups > 0 && c->prefix_len > 0) {
    q->group = (int)(bs_rng_next(r) % (uint64_t)c->prefix_groups);
    bs_rng_t gr;
    bs_rng_seed(&gr, c->seed ^ (0x77ULL << 32) ^ (uint64_t)q->group);
    if (add_words(p, &gr, c->prefix_len)) return STRATA_ENOMEM;
    q->input_len += c->prefix_len;
  }
  return add_words(p, r, suffix);
}

static int make_body(const bs_cfg_t *c, const bs_req_t *q, const char *prompt, bs_buf_t *b) {
  int rc = bs_buf_puts(b, "{\"model\":");
  rc = rc ? rc : bs_buf_json_str(b, c->model);
  if (c->api == BS_API_CHAT) {
    rc = rc ? rc : bs_buf_puts(b, ",\"messages\":[{\"role\":\"user\",\"content\":");
    rc = rc ? rc : bs_buf_json_str(b, prompt);
    rc = rc ? rc : bs_buf_puts(b, "}]");
  } else {
    rc = rc ? rc : bs_buf_puts(b, ",\"prompt\":");
    rc = rc ? rc : bs_buf_json_str(b, prompt);
  }
  rc = rc ? rc : bs_buf_printf(b, ",\"max_tokens\":%d,\"ignore_eos\":true,\"temperature\":0", q->output_len);
  if (c->stream) rc = rc ? rc : bs_buf_puts(b, ",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
  return rc ? rc : bs_buf_puts(b, "}");
}

bs_req_t *bs_workload_make(bs_workload_t *w, int64_t i, int warmup) {
  const bs_cfg_t *c = w->cfg;
  bs_buf_t prompt = {0}, body = {0}, http = {0};
  bs_req_t *q = calloc(1, sizeof *q);
  if (!q) return NULL;
  q->id = i;
  q->warmup = warmup;
  q->group = -1;
  q->usage_prompt = q->usage_completion = -1;
  q->grpc_status = -1;
  q->t_sched = warmup ? 0 : bs_workload_arrival_s(w, i);
  bs_rng_t r;
  bs_rng_seed(&r, c->seed * 1000003ULL + (uint64_t)i * 2 + (warmup ? 1 : 0));
  if (make_prompt(w, q, &r, warmup ? i + 7919 : i, &prompt)) goto fail;
  if (c->grpc[0]) { /* bs_grpc.c builds the protobuf request from the text */
    q->prompt = prompt.p ? prompt.p : strdup("");
    prompt.p = NULL;
    if (!q->prompt) goto fail;
    goto lens;
  }
  if (make_body(c, q, prompt.p ? prompt.p : "", &body)) goto fail;
  int rc = bs_buf_printf(&http,
                         "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                         "Accept: %s\r\nX-Request-Id: %s%lld\r\nContent-Length: %zu\r\n",
                         c->path, c->host, c->port, c->stream ? "text/event-stream" : "application/json",
                         warmup ? "w" : "", (long long)i, body.len);
  if (!rc && c->api_key) rc = bs_buf_printf(&http, "Authorization: Bearer %s\r\n", c->api_key);
  rc = rc ? rc : bs_buf_append(&http, "\r\n", 2);
  rc = rc ? rc : bs_buf_append(&http, body.p, body.len);
  if (rc) goto fail;
  q->http = http.p;
  q->http_len = http.len;
  http.p = NULL;
lens:
  q->cap_itl = q->output_len + 1;
  q->itl_ms = malloc((size_t)q->cap_itl * sizeof *q->itl_ms);
  if (!q->itl_ms) goto fail;
  bs_buf_free(&prompt);
  bs_buf_free(&body);
  return q;
fail:
  bs_buf_free(&prompt);
  bs_buf_free(&body);
  bs_buf_free(&http);
  bs_req_free(q);
  return NULL;
}

void bs_req_free(bs_req_t *r) {
  if (!r) return;
  free(r->http);
  free(r->prompt);
  free(r->itl_ms);
  free(r);
}
