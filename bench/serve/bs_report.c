/* bs_report.c: the self-contained HTML report of a run, with inline SVG plots (no scripts, no
 * external files, so a browser opens it offline). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench/serve/bs_int.h"
#include "common/status.h"

#define PW 560
#define PH 300
#define ML 64
#define MR 16
#define MT 28
#define MB 44
#define MAX_POINTS 600

typedef struct {
  char name[256];
  double *x, *y;
  int n;
} bs_series_t;

static const char *const colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};

static void html_escape(FILE *fp, const char *s) {
  for (; *s; s++) {
    switch (*s) {
    case '<': fputs("&lt;", fp); break;
    case '>': fputs("&gt;", fp); break;
    case '&': fputs("&amp;", fp); break;
    case '"': fputs("&quot;", fp); break;
    default: fputc(*s, fp);
    }
  }
}

/* A step between axis ticks of 1, 2 or 5 times a power of ten, about SPAN/5. */
static double nice_step(double span) {
  if (!(span > 0)) return 1;
  double raw = span / 5, mag = pow(10, floor(log10(raw))), f = raw / mag;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

static void svg_plot(FILE *fp, const char *title, const char *xlabel, const char *ylabel, const bs_series_t *s, int ns) {
  double x0 = INFINITY, x1 = -INFINITY, y0 = 0, y1 = -INFINITY;
  for (int k = 0; k < ns; k++)
    for (int i = 0; i < s[k].n; i++) {
      if (!isfinite(s[k].x[i]) || !isfinite(s[k].y[i])) continue;
      x0 = fmin(x0, s[k].x[i]);
      x1 = fmax(x1, s[k].x[i]);
      y0 = fmin(y0, s[k].y[i]);
      y1 = fmax(y1, s[k].y[i]);
    }
  fprintf(fp, "<figure><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\">\n", PW, PH, PW, PH);
  fprintf(fp, "<rect width=\"%d\" height=\"%d\" fill=\"#fff\"/>\n<text x=\"%d\" y=\"18\" font-size=\"14\" "
              "font-weight=\"bold\">", PW, PH, ML);
  html_escape(fp, title);
  fputs("</text>\n", fp);
  if (!(x1 >= x0)) {
    fprintf(fp, "<text x=\"%d\" y=\"%d\" font-size=\"12\">no data</text></svg></figure>\n", PW / 2 - 20, PH / 2);
    return;
  }
  if (x1 == x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  double sx = (PW - ML - MR) / (x1 - x0), sy = (PH - MT - MB) / (y1 - y0);
  fprintf(fp, "<g font-size=\"10\" stroke=\"#ccc\">\n");
  double xs = nice_step(x1 - x0), ys = nice_step(y1 - y0);
  for (double t = ceil(x0 / xs) * xs; t <= x1 + 1e-9 * xs; t += xs) {
    double px = ML + (t - x0) * sx;
    fprintf(fp, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\"/><text x=\"%.1f\" y=\"%d\" stroke=\"none\" "
                "text-anchor=\"middle\">%g</text>\n", px, MT, px, PH - MB, px, PH - MB + 14, t);
  }
  for (double t = ceil(y0 / ys) * ys; t <= y1 + 1e-9 * ys; t += ys) {
    double py = PH - MB - (t - y0) * sy;
    fprintf(fp, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/><text x=\"%d\" y=\"%.1f\" stroke=\"none\" "
                "text-anchor=\"end\">%g</text>\n", ML, py, PW - MR, py, ML - 4, py + 3, t);
  }
  fprintf(fp, "</g>\n<text x=\"%d\" y=\"%d\" font-size=\"11\" text-anchor=\"middle\">", ML + (PW - ML - MR) / 2, PH - 8);
  html_escape(fp, xlabel);
  fprintf(fp, "</text>\n<text x=\"12\" y=\"%d\" font-size=\"11\" text-anchor=\"middle\" transform=\"rotate(-90 12 %d)\">",
          PH / 2, PH / 2);
  html_escape(fp, ylabel);
  fputs("</text>\n", fp);
  for (int k = 0; k < ns; k++) {
    const char *col = colors[k % 8];
    int step = s[k].n > MAX_POINTS ? s[k].n / MAX_POINTS : 1;
    fprintf(fp, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", col);
    for (int i = 0; i < s[k].n; i += step) {
      int j = i + step >= s[k].n ? s[k].n - 1 : i; /* keep the last point */
      if (isfinite(s[k].x[j]) && isfinite(s[k].y[j]))
        fprintf(fp, "%.1f,%.1f ", ML + (s[k].x[j] - x0) * sx, PH - MB - (s[k].y[j] - y0) * sy);
    }
    fprintf(fp, "\"/>\n<text x=\"%d\" y=\"%d\" font-size=\"10\" fill=\"%s\">", ML + 8, MT + 12 + 12 * k, col);
    html_escape(fp, s[k].name);
    fputs("</text>\n", fp);
  }
  fputs("</svg></figure>\n", fp);
}

static int metric_ok(const bs_req_t *q) { return q && !q->fail; }

/* The empirical CDF of one latency metric over the successful requests. */
static int cdf_series(const bs_run_t *run, int which, bs_series_t *s) {
  int64_t n = 0;
  for (int64_t i = 0; i < run->n_reqs; i++)
    if (metric_ok(run->reqs[i])) n += which == 2 ? run->reqs[i]->n_itl : 1;
  s->x = malloc((size_t)(n ? n : 1) * sizeof *s->x);
  s->y = malloc((size_t)(n ? n : 1) * sizeof *s->y);
  if (!s->x || !s->y) return STRATA_ENOMEM;
  int m = 0;
  for (int64_t i = 0; i < run->n_reqs; i++) {
    const bs_req_t *q = run->reqs[i];
    if (!metric_ok(q)) continue;
    int64_t out = q->usage_completion >= 0 ? q->usage_completion : q->n_chunks;
    if (which == 0) s->x[m++] = (q->t_first - q->t_start) * 1000;
    else if (which == 1 && out > 1 && q->n_chunks > 1) s->x[m++] = (q->t_end - q->t_first) * 1000 / (double)(out - 1);
    else if (which == 2) for (int k = 0; k < q->n_itl; k++) s->x[m++] = q->itl_ms[k];
    else if (which == 3) s->x[m++] = (q->t_end - q->t_start) * 1000;
  }
  bs_dist_t d;
  bs_dist_of(s->x, m, &d); /* sorts */
  for (int i = 0; i < m; i++) s->y[i] = (double)(i + 1) / m;
  s->n = m;
  return 0;
}

static void series_free(bs_series_t *s, int n) {
  for (int i = 0; i < n; i++) {
    free(s[i].x);
    free(s[i].y);
    s[i].x = s[i].y = NULL;
  }
}

static int plot_cdfs(FILE *fp, const bs_run_t *run) {
  static const char *const names[4] = {"TTFT", "TPOT", "ITL (per chunk)", "End-to-end latency"};
  for (int k = 0; k < 4; k++) {
    bs_series_t s = {0};
    snprintf(s.name, sizeof s.name, "%s", names[k]);
    int rc = cdf_series(run, k, &s);
    if (!rc) {
      char title[64];
      snprintf(title, sizeof title, "%s CDF", names[k]);
      svg_plot(fp, title, "milliseconds", "fraction of requests", &s, 1);
    }
    series_free(&s, 1);
    if (rc) return rc;
  }
  return 0;
}

static int plot_time(FILE *fp, const bs_run_t *run) {
  int n = run->n_samples;
  bs_series_t s[3] = {0};
  int rc = STRATA_ENOMEM;
  for (int k = 0; k < 3; k++) {
    s[k].x = calloc((size_t)(n ? n : 1), sizeof(double));
    s[k].y = calloc((size_t)(n ? n : 1), sizeof(double));
    if (!s[k].x || !s[k].y) goto done;
  }
  snprintf(s[0].name, sizeof s[0].name, "output chunks/s");
  snprintf(s[1].name, sizeof s[1].name, "completed requests/s");
  snprintf(s[2].name, sizeof s[2].name, "requests in flight");
  for (int i = 1; i < n; i++) {
    const bs_sample_t *a = &run->samples[i - 1], *b = &run->samples[i];
    double dt = b->t_s - a->t_s > 1e-6 ? b->t_s - a->t_s : 1e-6;
    s[0].x[i - 1] = s[1].x[i - 1] = b->t_s;
    s[0].y[i - 1] = (double)(b->chunks - a->chunks) / dt;
    s[1].y[i - 1] = (double)(b->done - a->done) / dt;
  }
  s[0].n = s[1].n = n > 1 ? n - 1 : 0;
  for (int i = 0; i < n; i++) {
    s[2].x[i] = run->samples[i].t_s;
    s[2].y[i] = run->samples[i].in_flight;
  }
  s[2].n = n;
  svg_plot(fp, "Output throughput over time", "seconds", "chunks/s", &s[0], 1);
  svg_plot(fp, "Request completions over time", "seconds", "requests/s", &s[1], 1);
  svg_plot(fp, "Concurrency over time", "seconds", "requests in flight", &s[2], 1);
  rc = 0;
done:
  series_free(s, 3);
  return rc;
}

/* One plot per scraped metric name; each label set is its own line. */
static int plot_scraped(FILE *fp, const bs_cfg_t *cfg, const bs_run_t *run) {
  for (int m = 0; m < cfg->n_scrape; m++) {
    const char *name = cfg->scrape_names[m];
    size_t nl = strlen(name);
    bs_series_t s[8] = {0};
    int ns = 0, rc = 0;
    for (int i = 0; i < run->n_points && !rc; i++) {
      const bs_scrape_point_t *p = &run->points[i];
      if (strncmp(p->metric, name, nl) || (p->metric[nl] && p->metric[nl] != '{')) continue;
      int k = 0;
      while (k < ns && strcmp(s[k].name, p->metric)) k++;
      if (k == ns) {
        if (ns == 8) continue;
        snprintf(s[k].name, sizeof s[k].name, "%s", p->metric);
        s[k].x = malloc((size_t)run->n_points * sizeof(double));
        s[k].y = malloc((size_t)run->n_points * sizeof(double));
        ns++;
        if (!s[k].x || !s[k].y) rc = STRATA_ENOMEM;
      }
      if (!rc) {
        s[k].x[s[k].n] = p->t_s;
        s[k].y[s[k].n++] = p->value;
      }
    }
    if (!rc && ns > 0) {
      int replicas = strstr(name, "replicas") != NULL;
      svg_plot(fp, replicas ? "Replicas over time" : name, "seconds", name, s, ns);
    }
    series_free(s, ns);
    if (rc) return rc;
  }
  return 0;
}

static void row(FILE *fp, const char *k, const char *fmt, double v) {
  fprintf(fp, "<tr><th>%s</th><td>", k);
  fprintf(fp, fmt, v);
  fputs("</td></tr>\n", fp);
}

static void dist_row(FILE *fp, const char *name, const bs_dist_t *d) {
  fprintf(fp, "<tr><th>%s</th><td>%d</td><td>%.2f</td><td>%.2f</td><td>%.2f</td><td>%.2f</td><td>%.2f</td><td>%.2f</td></tr>\n",
          name, d->n, d->mean, d->p50, d->p90, d->p95, d->p99, d->max);
}

int bs_report_html(FILE *fp, const bs_cfg_t *cfg, const bs_run_t *run, const bs_summary_t *s) {
  fputs("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>strata-bench serve report</title>\n"
        "<style>body{font-family:sans-serif;margin:24px;max-width:1200px}table{border-collapse:collapse;margin:8px 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}figure{display:inline-block;"
        "margin:6px}pre{background:#f8f8f8;padding:8px;white-space:pre-wrap}</style></head><body>\n"
        "<h1>strata-bench serve</h1>\n<p>Target: <code>", fp);
  html_escape(fp, cfg->url);
  fputs("</code></p>\n", fp);
  if (cfg->argv_echo) {
    fputs("<pre>", fp);
    html_escape(fp, cfg->argv_echo);
    fputs("</pre>\n", fp);
  }
  if (s->harness_behind)
    fputs("<p style=\"color:#b00\"><b>Warning:</b> the harness could not keep the offered rate.</p>\n", fp);
  fputs("<h2>Summary</h2><table>\n", fp);
  row(fp, "requests", "%.0f", (double)s->n_total);
  row(fp, "succeeded", "%.0f", (double)s->n_ok);
  for (int f = 1; f < BS_FAIL_COUNT; f++) {
    char k[64];
    snprintf(k, sizeof k, "failed: %s", bs_fail_name(f));
    row(fp, k, "%.0f", (double)s->fail_by_class[f]);
  }
  row(fp, "duration (s)", "%.3f", s->duration_s);
  row(fp, "offered rate (req/s)", "%.2f", s->offered_rate);
  row(fp, "achieved send rate (req/s)", "%.2f", s->achieved_rate);
  row(fp, "request throughput (req/s)", "%.2f", s->req_per_s);
  row(fp, "output tokens/s", "%.1f", s->out_tok_per_s);
  row(fp, "peak output chunks/s", "%.1f", s->peak_out_tok_per_s);
  row(fp, "total tokens/s", "%.1f", s->total_tok_per_s);
  row(fp, "peak concurrency", "%.0f", (double)run->max_in_flight);
  row(fp, "SLO attainment (%)", "%.2f", s->slo_attainment * 100);
  row(fp, "goodput (req/s)", "%.2f", s->goodput);
  fputs("</table>\n<h2>Latency (ms)</h2><table><tr><th></th><th>n</th><th>mean</th><th>p50</th><th>p90</th>"
        "<th>p95</th><th>p99</th><th>max</th></tr>\n", fp);
  dist_row(fp, "TTFT", &s->ttft);
  dist_row(fp, "TPOT", &s->tpot);
  dist_row(fp, "ITL", &s->itl);
  dist_row(fp, "E2E", &s->e2e);
  fputs("</table>\n<h2>Latency distributions</h2>\n", fp);
  int rc = plot_cdfs(fp, run);
  if (!rc) {
    fputs("<h2>Over time</h2>\n", fp);
    rc = plot_time(fp, run);
  }
  if (!rc) {
    fputs("<h2>Server metrics (scraped)</h2>\n", fp);
    if (run->n_points == 0) fputs("<p>No samples were scraped.</p>\n", fp);
    rc = plot_scraped(fp, cfg, run);
  }
  fputs("</body></html>\n", fp);
  return rc ? rc : (ferror(fp) ? STRATA_EIO : 0);
}
