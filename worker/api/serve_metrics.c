/* serve_metrics.c: the Prometheus metrics of `strata serve` (named like vLLM's, `strata:<name>`). */
#include <stdlib.h>

#include "common/status.h"
#include "worker/api/serve_int.h"

static int family(serve_t *s, metrics_type_t type, const char *name, const char *help, const char *label,
                  const double *bounds, int n_bounds, metrics_family_t **out) {
  const char *labels[] = {label};
  return metrics_family_new(s->reg, type, name, help, label ? labels : NULL, label ? 1 : 0, bounds, n_bounds, out);
}

int serve_metrics_init(serve_t *s) {
  static const double ttft[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
  static const double itl[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5};
  static const double e2e[] = {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0};
  serve_metrics_t *m = &s->m;
  int rc = 0;
  rc = rc ? rc : family(s, METRICS_HISTOGRAM, "strata:time_to_first_token_seconds", "Time to first token in seconds.",
                        NULL, ttft, (int)(sizeof ttft / sizeof *ttft), &m->ttft);
  rc = rc ? rc : family(s, METRICS_HISTOGRAM, "strata:inter_token_latency_seconds", "Time between two tokens of a "
                        "sequence in seconds.", NULL, itl, (int)(sizeof itl / sizeof *itl), &m->itl);
  rc = rc ? rc : family(s, METRICS_HISTOGRAM, "strata:e2e_request_latency_seconds", "End-to-end request latency "
                        "in seconds.", NULL, e2e, (int)(sizeof e2e / sizeof *e2e), &m->e2e);
  rc = rc ? rc : family(s, METRICS_GAUGE, "strata:num_requests_running", "Sequences running in the engine.", NULL,
                        NULL, 0, &m->running);
  rc = rc ? rc : family(s, METRICS_GAUGE, "strata:num_requests_waiting", "Sequences waiting for the engine.", NULL,
                        NULL, 0, &m->waiting);
  rc = rc ? rc : family(s, METRICS_GAUGE, "strata:kv_cache_usage_perc", "KV cache usage (1 = full).", NULL, NULL, 0,
                        &m->kv_usage);
  rc = rc ? rc : family(s, METRICS_GAUGE, "strata:kv_cache_blocks_used", "KV cache blocks held by requests.", NULL,
                        NULL, 0, &m->kv_used);
  rc = rc ? rc : family(s, METRICS_COUNTER, "strata:prefix_cache_queries_total", "Prompt tokens looked up in the "
                        "prefix cache.", NULL, NULL, 0, &m->prefix_queries);
  rc = rc ? rc : family(s, METRICS_COUNTER, "strata:prefix_cache_hits_total", "Prompt tokens found in the prefix "
                        "cache.", NULL, NULL, 0, &m->prefix_hits);
  rc = rc ? rc : family(s, METRICS_COUNTER, "strata:prompt_tokens_total", "Prompt tokens computed.", NULL, NULL, 0,
                        &m->prompt_tokens);
  rc = rc ? rc : family(s, METRICS_COUNTER, "strata:generation_tokens_total", "Tokens generated.", NULL, NULL, 0,
                        &m->gen_tokens);
  rc = rc ? rc : family(s, METRICS_COUNTER, "strata:num_preemptions_total", "Preemptions of running sequences.",
                        NULL, NULL, 0, &m->preemptions);
  rc = rc ? rc : family(s, METRICS_COUNTER, "strata:request_success_total", "Finished sequences by finish reason.",
                        "finished_reason", NULL, 0, &m->success);
  if (rc) return rc;
  /* zero samples so that every series exists from the start */
  const char *reasons[] = {"stop", "length", "abort", "error"};
  for (int i = 0; i < 4; i++) metrics_counter_add(m->success, &reasons[i], 0);
  metrics_counter_add(m->prefix_queries, NULL, 0);
  metrics_counter_add(m->prefix_hits, NULL, 0);
  metrics_counter_add(m->prompt_tokens, NULL, 0);
  metrics_counter_add(m->gen_tokens, NULL, 0);
  metrics_counter_add(m->preemptions, NULL, 0);
  return 0;
}

/* mirror: adds the growth of an engine counter since the last scrape. */
static void mirror(metrics_family_t *f, uint64_t now, uint64_t *last) {
  if (now > *last) metrics_counter_add(f, NULL, (double)(now - *last));
  *last = now;
}

char *serve_metrics_render(serve_t *s, size_t *len) {
  engine_stats_t st;
  serve_metrics_t *m = &s->m;
  engine_loop_stats(s->engine, &st);
  metrics_gauge_set(m->running, NULL, st.n_running);
  metrics_gauge_set(m->waiting, NULL, engine_loop_n_pending(s->engine));
  metrics_gauge_set(m->kv_used, NULL, st.kv_blocks_used);
  metrics_gauge_set(m->kv_usage, NULL, st.kv_blocks_total > 0 ? (double)st.kv_blocks_used / st.kv_blocks_total : 0);
  mirror(m->prefix_queries, st.prefix_queries_tokens, &m->last.prefix_queries_tokens);
  mirror(m->prefix_hits, st.prefix_hit_tokens, &m->last.prefix_hit_tokens);
  mirror(m->prompt_tokens, st.n_prompt_tokens, &m->last.n_prompt_tokens);
  mirror(m->gen_tokens, st.n_generated_tokens, &m->last.n_generated_tokens);
  mirror(m->preemptions, st.n_preemptions, &m->last.n_preemptions);
  char *text = NULL;
  return metrics_render(s->reg, &text, len) == 0 ? text : NULL;
}
