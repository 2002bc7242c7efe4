/* bs_client.c: the harness's event loop: a small HTTP/1.1 client on libev (keep-alive pool, TLS,
 * SSE), the open- and closed-loop drivers, the /metrics scraper and the progress bar. Written by
 * hand because no kept library offers a non-blocking streaming client that fits one libev loop. */
#define _GNU_SOURCE
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <http_parser.h>
#include <math.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench/serve/bs_int.h"
#include "common/log.h"
#include "common/status.h"

#define BS_LINE_MAX 16384
#define BS_BODY_MAX (4u << 20)
#define BS_LATE_S 0.010
#define BS_SAMPLE_S 0.5

enum { CONN_CONNECTING, CONN_TLS, CONN_READY };

typedef struct bs_client bs_client_t;

typedef struct bs_conn {
  bs_client_t *cl;
  int fd;
  SSL *ssl;
  int state;
  int for_metrics;
  int events; /* what io watches */
  ev_io io;
  ev_timer timer;
  http_parser parser;
  bs_req_t *req; /* generation request in flight, or NULL */
  int scraping;  /* a /metrics GET in flight */
  const char *wr;
  size_t wr_len, wr_off;
  int reused;
  size_t rx_bytes;
  int msg_done, err_event;
  char *line;
  size_t line_len;
  bs_buf_t body;
  struct bs_conn *next_idle;
} bs_conn_t;

struct bs_client {
  struct ev_loop *loop;
  const bs_cfg_t *cfg;
  bs_workload_t *w;
  bs_run_t *run;
  struct addrinfo *ai, *mai;
  SSL_CTX *ssl_ctx;
  bs_grpc_t *grpc; /* the gRPC target, or NULL for HTTP */
  bs_conn_t *idle, *metrics_conn;
  http_parser_settings settings;
  int in_flight, phase; /* phase 0: warm-up, 1: main */
  int64_t next, count;  /* next main request to send; count (-1: until the duration ends) */
  int64_t warm_next, warm_done, main_done, chunks;
  int driving, redrive, stop_sending, finished, logged_connect, logged_tls;
  char scrape_req[1024];
  size_t scrape_req_len;
  int scrape_disabled;
  ev_timer arrival_timer, sample_timer, scrape_timer, progress_timer;
  char rbuf[65536];
};

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void conn_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void drive(bs_client_t *cl);
static int dispatch(bs_client_t *cl, bs_req_t *q);

static void conn_watch(bs_conn_t *c, int events) {
  if (c->events == events) return;
  ev_io_stop(c->cl->loop, &c->io);
  c->events = events;
  if (events) {
    ev_io_set(&c->io, c->fd, events);
    ev_io_start(c->cl->loop, &c->io);
  }
}

static void conn_close(bs_conn_t *c) {
  bs_client_t *cl = c->cl;
  ev_io_stop(cl->loop, &c->io);
  ev_timer_stop(cl->loop, &c->timer);
  if (cl->metrics_conn == c) cl->metrics_conn = NULL;
  if (c->ssl) SSL_free(c->ssl);
  if (c->fd >= 0) close(c->fd);
  bs_buf_free(&c->body);
  free(c->line);
  free(c);
}

static bs_conn_t *conn_open(bs_client_t *cl, int for_metrics) {
  struct addrinfo *ai = for_metrics ? cl->mai : cl->ai;
  int tls = for_metrics ? cl->cfg->metrics_tls : cl->cfg->tls;
  bs_conn_t *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->cl = cl;
  c->for_metrics = for_metrics;
  c->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
  c->line = malloc(BS_LINE_MAX);
  if (c->fd < 0 || !c->line) goto fail;
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ev_io_init(&c->io, conn_io_cb, c->fd, 0);
  ev_init(&c->timer, conn_timeout_cb);
  c->io.data = c->timer.data = c;
  if (tls) {
    c->ssl = SSL_new(cl->ssl_ctx);
    const char *host = for_metrics ? cl->cfg->metrics_host : cl->cfg->host;
    unsigned char ip[16];
    int is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    if (!c->ssl || !SSL_set_fd(c->ssl, c->fd) || (!is_ip && !SSL_set_tlsext_host_name(c->ssl, host))) goto fail;
    /* The certificate must name what the URL names: an IP address or a host name. */
    if (!cl->cfg->insecure && !(is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), host)
                                      : SSL_set1_host(c->ssl, host)))
      goto fail;
  }
  if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) goto fail;
  c->state = CONN_CONNECTING;
  conn_watch(c, EV_WRITE);
  cl->run->n_conn_opened++;
  return c;
fail:
  conn_close(c);
  return NULL;
}

/* ---- request completion ---- */

static void record_nonstream(bs_req_t *q, bs_conn_t *c) {
  q->t_first = q->t_last = q->t_end;
  cJSON *o = cJSON_Parse(c->body.p ? c->body.p : "");
  cJSON *u = cJSON_GetObjectItemCaseSensitive(o, "usage");
  cJSON *ct = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens");
  cJSON *pt = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens");
  if (cJSON_IsNumber(ct)) q->usage_completion = ct->valueint;
  if (cJSON_IsNumber(pt)) q->usage_prompt = pt->valueint;
  q->n_chunks = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "choices")) > 0 ? 1 : 0;
  if (!o) q->fail = BS_FAIL_STREAM;
  cJSON_Delete(o);
}

static void scrape_parse(bs_client_t *cl, const char *text, double t_s);
static void req_done(bs_client_t *cl, bs_req_t *q);

/* Ends what C has in flight with FAIL (BS_FAIL_NONE: judge from the response) and keeps C for reuse
 * when the server allows it, closing it otherwise. */
static void conn_finish(bs_conn_t *c, int fail) {
  bs_client_t *cl = c->cl;
  double now = bs_now_s();
  ev_timer_stop(cl->loop, &c->timer);
  int keep = !fail && c->msg_done && http_should_keep_alive(&c->parser);
  if (c->scraping) {
    c->scraping = 0;
    if (!fail && c->parser.status_code == 200 && c->body.p) {
      scrape_parse(cl, c->body.p, now - cl->run->t0);
    } else if (!cl->scrape_disabled) {
      cl->run->scrape_failures++;
      if (c->parser.status_code == 404) {
        log_warn("bench serve: the metrics endpoint answered 404; scraping stops");
        cl->scrape_disabled = 1;
      }
    }
    if (!keep) conn_close(c);
    else conn_watch(c, 0);
    return;
  }
  bs_req_t *q = c->req;
  c->req = NULL;
  /* A kept-alive connection the server had already closed: resend once on a fresh one. */
  if ((fail == BS_FAIL_CUT || fail == BS_FAIL_CONNECT) && c->reused && c->rx_bytes == 0 && !q->retried) {
    q->retried = 1;
    conn_close(c);
    cl->in_flight--;
    if (dispatch(cl, q) == 0) return;
    cl->in_flight++;
    c = NULL;
  }
  q->t_end = now;
  q->http_status = c ? c->parser.status_code : 0;
  q->fail = fail;
  if (!fail && (q->http_status < 200 || q->http_status > 299)) q->fail = BS_FAIL_HTTP;
  if (!q->fail) {
    if (!cl->cfg->stream) record_nonstream(q, c);
    else if (c->err_event || bs_req_no_text(q)) q->fail = BS_FAIL_STREAM;
  }
  if (c) {
    if (keep) {
      conn_watch(c, 0);
      c->next_idle = cl->idle;
      cl->idle = c;
    } else {
      conn_close(c);
    }
  }
  req_done(cl, q);
}

/* Q is finished (results filled in): account for it and send what may follow. */
static void req_done(bs_client_t *cl, bs_req_t *q) {
  q->done = 1;
  cl->in_flight--;
  if (q->warmup) {
    cl->warm_done++;
    bs_req_free(q);
  } else {
    cl->main_done++;
  }
  drive(cl);
}

/* ---- SSE ---- */

static int parse_int_after(const char *s, size_t n, const char *key) {
  const char *p = memmem(s, n, key, strlen(key));
  if (!p) return -1;
  p += strlen(key);
  while (p < s + n && *p == ' ') p++;
  return (int)strtol(p, NULL, 10);
}

static int has_content(const char *s, size_t n, const char *key) {
  const char *p = memmem(s, n, key, strlen(key));
  return p && p + strlen(key) < s + n && p[strlen(key)] != '"';
}

/* One "data:" line of the stream. No allocation here: this runs once per token. */
static void sse_line(bs_conn_t *c, char *s, size_t n) {
  bs_req_t *q = c->req;
  if (n && s[n - 1] == '\r') n--;
  if (n < 5 || memcmp(s, "data:", 5)) return;
  s += 5;
  n -= 5;
  if (n && *s == ' ') s++, n--;
  if (n == 6 && !memcmp(s, "[DONE]", 6)) return;
  if (has_content(s, n, "\"text\":\"") || has_content(s, n, "\"content\":\"")) {
    double now = bs_now_s();
    if (q->n_chunks == 0) {
      q->t_first = now;
    } else {
      if (q->n_itl == q->cap_itl) {
        float *ni = realloc(q->itl_ms, (size_t)q->cap_itl * 2 * sizeof *ni);
        if (ni) q->itl_ms = ni, q->cap_itl *= 2;
      }
      if (q->n_itl < q->cap_itl) q->itl_ms[q->n_itl++] = (float)((now - q->t_last) * 1000.0);
    }
    q->t_last = now;
    q->n_chunks++;
    if (!q->warmup) c->cl->chunks++;
  } else if (memmem(s, n, "\"error\"", 7)) {
    c->err_event = 1;
  }
  if (memmem(s, n, "\"usage\":{", 9)) {
    q->usage_prompt = parse_int_after(s, n, "\"prompt_tokens\":");
    q->usage_completion = parse_int_after(s, n, "\"completion_tokens\":");
  }
}

static void sse_feed(bs_conn_t *c, const char *p, size_t n) {
  while (n) {
    const char *nl = memchr(p, '\n', n);
    size_t take = nl ? (size_t)(nl - p) : n;
    size_t room = BS_LINE_MAX - 1 - c->line_len; /* an over-long line keeps its head, enough to judge it */
    memcpy(c->line + c->line_len, p, take < room ? take : room);
    c->line_len += take < room ? take : room;
    if (!nl) return;
    sse_line(c, c->line, c->line_len);
    c->line_len = 0;
    p = nl + 1;
    n -= take + 1;
  }
}

/* ---- http-parser callbacks ---- */

static int on_body(http_parser *p, const char *at, size_t n) {
  bs_conn_t *c = p->data;
  if (c->req && c->cl->cfg->stream && p->status_code / 100 == 2) {
    sse_feed(c, at, n);
  } else if (c->body.len + n <= BS_BODY_MAX && bs_buf_append(&c->body, at, n)) {
    return 1;
  }
  return 0;
}

static int on_message_complete(http_parser *p) {
  bs_conn_t *c = p->data;
  c->msg_done = 1;
  return 0;
}

/* ---- socket I/O ---- */

static int conn_start_tls(bs_conn_t *c) {
  int r = SSL_connect(c->ssl);
  if (r == 1) {
    c->state = CONN_READY;
    return 0;
  }
  int e = SSL_get_error(c->ssl, r);
  if (e == SSL_ERROR_WANT_READ) return conn_watch(c, EV_READ), 1;
  if (e == SSL_ERROR_WANT_WRITE) return conn_watch(c, EV_WRITE), 1;
  char buf[256];
  ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
  ERR_clear_error();
  if (!c->cl->logged_tls) /* once: every later connection would fail the same way */
    log_error("bench serve: TLS handshake with %s failed: %s (use --insecure for self-signed servers)",
              c->for_metrics ? c->cl->cfg->metrics_host : c->cl->cfg->host, buf);
  c->cl->logged_tls = 1;
  return -1;
}

/* Writes what is pending; returns <0 on a broken connection. */
static int conn_flush(bs_conn_t *c) {
  while (c->wr_off < c->wr_len) {
    ssize_t n;
    if (c->ssl) {
      int r = SSL_write(c->ssl, c->wr + c->wr_off, (int)(c->wr_len - c->wr_off));
      if (r <= 0) {
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_WRITE) return conn_watch(c, EV_READ | EV_WRITE), 0;
        if (e == SSL_ERROR_WANT_READ) return conn_watch(c, EV_READ), 0;
        return -1;
      }
      n = r;
    } else {
      n = send(c->fd, c->wr + c->wr_off, c->wr_len - c->wr_off, MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return conn_watch(c, EV_READ | EV_WRITE), 0;
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return -1;
    }
    c->wr_off += (size_t)n;
  }
  conn_watch(c, EV_READ);
  return 0;
}

/* Reads and parses what arrived; returns 1 when the response is complete, 0 to wait, or a
 * BS_FAIL_* code (negated) on a broken connection. */
static int conn_read(bs_conn_t *c) {
  bs_client_t *cl = c->cl;
  for (;;) {
    ssize_t n;
    if (c->ssl) {
      int r = SSL_read(c->ssl, cl->rbuf, sizeof cl->rbuf);
      if (r <= 0) {
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
        n = 0; /* closed or broken: both end the response */
      } else {
        n = r;
      }
    } else {
      n = recv(c->fd, cl->rbuf, sizeof cl->rbuf, 0);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) n = 0;
    }
    if (n == 0) { /* EOF: complete only for a response delimited by close */
      http_parser_execute(&c->parser, &cl->settings, NULL, 0);
      if (c->msg_done) return 1;
      return -(c->rx_bytes ? BS_FAIL_CUT : BS_FAIL_CONNECT);
    }
    c->rx_bytes += (size_t)n;
    size_t used = http_parser_execute(&c->parser, &cl->settings, cl->rbuf, (size_t)n);
    if (HTTP_PARSER_ERRNO(&c->parser) != HPE_OK || used != (size_t)n) {
      if (c->msg_done) return 1;
      log_warn("bench serve: malformed HTTP response: %s", http_errno_description(HTTP_PARSER_ERRNO(&c->parser)));
      return -BS_FAIL_STREAM;
    }
    if (c->msg_done) return 1;
  }
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents) {
  bs_conn_t *c = w->data;
  if (c->state == CONN_CONNECTING) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
      if (!c->cl->logged_connect) {
        const bs_cfg_t *cf = c->cl->cfg;
        log_error("bench serve: cannot connect to %s:%s: %s", c->for_metrics ? cf->metrics_host : cf->host,
                  c->for_metrics ? cf->metrics_port : cf->port, strerror(err));
        c->cl->logged_connect = 1;
      }
      return conn_finish(c, BS_FAIL_CONNECT);
    }
    c->state = c->ssl ? CONN_TLS : CONN_READY;
  }
  if (c->state == CONN_TLS) {
    int r = conn_start_tls(c);
    if (r < 0) return conn_finish(c, BS_FAIL_CONNECT);
    if (r > 0) return;
  }
  if (c->wr_off < c->wr_len) {
    if (conn_flush(c) < 0) return conn_finish(c, BS_FAIL_CONNECT);
    if (c->wr_off < c->wr_len) return;
  }
  if (!(revents & EV_READ) && !(c->ssl && SSL_pending(c->ssl))) return;
  int r = conn_read(c);
  if (r == 1) conn_finish(c, BS_FAIL_NONE);
  else if (r < 0) conn_finish(c, -r);
}

static void conn_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  bs_conn_t *c = w->data;
  conn_finish(c, BS_FAIL_TIMEOUT);
}

/* Puts bytes on C for a new exchange (request Q, or a scrape when Q is NULL). */
static void conn_begin(bs_conn_t *c, bs_req_t *q, const char *bytes, size_t len, double timeout_s) {
  c->req = q;
  c->scraping = q == NULL;
  c->wr = bytes;
  c->wr_len = len;
  c->wr_off = 0;
  c->rx_bytes = 0;
  c->msg_done = c->err_event = 0;
  c->line_len = 0;
  c->body.len = 0;
  http_parser_init(&c->parser, HTTP_RESPONSE);
  c->parser.data = c;
  ev_timer_set(&c->timer, timeout_s, 0.);
  ev_timer_start(c->cl->loop, &c->timer);
  if (c->state == CONN_READY) {
    if (conn_flush(c) < 0) conn_watch(c, EV_READ | EV_WRITE); /* the read side reports the failure */
  }
}

static void grpc_chunk_cb(void *arg, bs_req_t *q) {
  bs_client_t *cl = arg;
  if (!q->warmup) cl->chunks++;
}

static void grpc_done_cb(void *arg, bs_req_t *q) { req_done(arg, q); }

static int dispatch(bs_client_t *cl, bs_req_t *q) {
  if (cl->grpc) {
    q->t_start = bs_now_s();
    int rc = bs_grpc_send(cl->grpc, q);
    if (rc) return rc;
    cl->in_flight++;
    if (cl->in_flight > cl->run->max_in_flight && !q->warmup) cl->run->max_in_flight = cl->in_flight;
    return 0;
  }
  bs_conn_t *c = cl->idle;
  if (c) {
    cl->idle = c->next_idle;
    c->reused = 1;
  } else if (!(c = conn_open(cl, 0))) {
    return STRATA_EIO;
  }
  if (!q->retried) q->t_start = bs_now_s();
  cl->in_flight++;
  if (cl->in_flight > cl->run->max_in_flight && !q->warmup) cl->run->max_in_flight = cl->in_flight;
  conn_begin(c, q, q->http, q->http_len, cl->cfg->timeout_s);
  return 0;
}

/* ---- drivers ---- */

static int run_push(bs_run_t *run, bs_req_t *q) {
  if (q->id >= run->n_reqs) {
    int64_t n = run->n_reqs ? run->n_reqs * 2 : 1024;
    while (n <= q->id) n *= 2;
    bs_req_t **nr = realloc(run->reqs, (size_t)n * sizeof *nr);
    if (!nr) return STRATA_ENOMEM;
    memset(nr + run->n_reqs, 0, (size_t)(n - run->n_reqs) * sizeof *nr);
    run->reqs = nr;
    run->n_reqs = n;
  }
  run->reqs[q->id] = q;
  return 0;
}

/* Sends request I now; a request that cannot even get a socket fails at once. */
static void send_one(bs_client_t *cl, int64_t i, int warmup) {
  bs_req_t *q = bs_workload_make(cl->w, i, warmup);
  if (!q || (!warmup && run_push(cl->run, q))) {
    log_error("bench serve: out of memory building request %lld", (long long)i);
    bs_req_free(q);
    cl->stop_sending = 1;
    return;
  }
  if (dispatch(cl, q)) {
    q->t_start = q->t_end = bs_now_s();
    q->fail = BS_FAIL_CONNECT;
    q->done = 1;
    if (warmup) cl->warm_done++, bs_req_free(q);
    else cl->main_done++;
  }
}

static void start_main(bs_client_t *cl);

static int more_to_send(bs_client_t *cl, double now) {
  if (cl->stop_sending) return 0;
  if (cl->count >= 0) return cl->next < cl->count;
  return now - cl->run->t0 < cl->cfg->duration_s;
}

static void drive_once(bs_client_t *cl) {
  const bs_cfg_t *c = cl->cfg;
  double now = bs_now_s();
  if (cl->phase == 0) {
    int conc = c->concurrency > 0 ? c->concurrency : c->warmup;
    while (cl->warm_next < c->warmup && cl->in_flight < conc) send_one(cl, cl->warm_next++, 1);
    if (cl->warm_done >= c->warmup) start_main(cl);
    return;
  }
  int open = c->concurrency <= 0 || c->trace;
  int cap = open ? c->max_concurrency : c->concurrency;
  while (more_to_send(cl, now) && (cap <= 0 || cl->in_flight < cap)) {
    if (open) {
      double due = cl->run->t0 + bs_workload_arrival_s(cl->w, cl->next);
      if (due > now) {
        ev_timer_stop(cl->loop, &cl->arrival_timer);
        ev_timer_set(&cl->arrival_timer, due - now, 0.);
        ev_timer_start(cl->loop, &cl->arrival_timer);
        break;
      }
      double lag = now - due;
      if (lag > cl->run->max_lag_s) cl->run->max_lag_s = lag;
      if (lag > BS_LATE_S) cl->run->n_late++;
    }
    send_one(cl, cl->next++, 0);
  }
  if (!more_to_send(cl, now) && cl->in_flight == 0 && cl->main_done >= cl->next) {
    cl->run->t_end = now;
    cl->finished = 1;
    ev_break(cl->loop, EVBREAK_ALL);
  }
}

/* Re-entrant: a request that fails inside dispatch asks for another pass instead of recursing. */
static void drive(bs_client_t *cl) {
  if (cl->driving) {
    cl->redrive = 1;
    return;
  }
  cl->driving = 1;
  do {
    cl->redrive = 0;
    drive_once(cl);
  } while (cl->redrive);
  cl->driving = 0;
}

static void arrival_cb(struct ev_loop *loop, ev_timer *w, int revents) { drive(w->data); }

static void take_sample(bs_client_t *cl) {
  bs_run_t *run = cl->run;
  if (run->n_samples == run->cap_samples) {
    int n = run->cap_samples ? run->cap_samples * 2 : 256;
    bs_sample_t *ns = realloc(run->samples, (size_t)n * sizeof *ns);
    if (!ns) return;
    run->samples = ns;
    run->cap_samples = n;
  }
  bs_sample_t *s = &run->samples[run->n_samples++];
  s->t_s = bs_now_s() - run->t0;
  s->in_flight = cl->in_flight;
  s->done = cl->main_done;
  s->chunks = cl->chunks;
}

static void sample_cb(struct ev_loop *loop, ev_timer *w, int revents) { take_sample(w->data); }

static void progress_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  bs_client_t *cl = w->data;
  double el = bs_now_s() - cl->run->t0;
  int64_t total = cl->count;
  double frac = total > 0 ? (double)cl->main_done / (double)total : (cl->cfg->duration_s > 0 ? el / cl->cfg->duration_s : 0);
  if (frac > 1) frac = 1;
  char bar[31];
  int filled = (int)(frac * 30);
  for (int i = 0; i < 30; i++) bar[i] = i < filled ? '#' : '.';
  bar[30] = 0;
  fprintf(stderr, "\r[%s] %3.0f%% %lld done, %d in flight, %.1f req/s, %.0f chunks/s   ", bar, frac * 100,
          (long long)cl->main_done, cl->in_flight, el > 0 ? (double)cl->main_done / el : 0,
          el > 0 ? (double)cl->chunks / el : 0);
}

/* ---- /metrics scraping ---- */

static int scrape_wanted(const bs_cfg_t *c, const char *name, size_t n) {
  for (int i = 0; i < c->n_scrape; i++)
    if (strlen(c->scrape_names[i]) == n && !memcmp(c->scrape_names[i], name, n)) return 1;
  return 0;
}

static void scrape_point(bs_run_t *run, const char *metric, size_t n, double t_s, double v) {
  if (run->n_points == run->cap_points) {
    int nc = run->cap_points ? run->cap_points * 2 : 256;
    bs_scrape_point_t *np = realloc(run->points, (size_t)nc * sizeof *np);
    if (!np) return;
    run->points = np;
    run->cap_points = nc;
  }
  char *m = strndup(metric, n);
  if (!m) return;
  run->points[run->n_points++] = (bs_scrape_point_t){.metric = m, .t_s = t_s, .value = v};
}

/* Prometheus text format: "name{labels} value [timestamp]" lines; '#' lines are comments. */
static void scrape_parse(bs_client_t *cl, const char *text, double t_s) {
  for (const char *line = text; line && *line;) {
    const char *nl = strchr(line, '\n');
    const char *end = nl ? nl : line + strlen(line);
    if (*line != '#') {
      const char *p = line;
      while (p < end && *p != '{' && *p != ' ' && *p != '\t') p++;
      size_t name_len = (size_t)(p - line);
      if (p < end && *p == '{') {
        int quoted = 0;
        for (; p < end && (quoted || *p != '}'); p++) {
          if (*p == '\\' && p + 1 < end) p++;
          else if (*p == '"') quoted = !quoted;
        }
        if (p < end) p++;
      }
      size_t metric_len = (size_t)(p - line);
      if (name_len && p < end && scrape_wanted(cl->cfg, line, name_len)) {
        char *vend;
        double v = strtod(p, &vend);
        if (vend != p) scrape_point(cl->run, line, metric_len, t_s, v);
      }
    }
    line = nl ? nl + 1 : NULL;
  }
}

static void scrape_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  bs_client_t *cl = w->data;
  if (cl->scrape_disabled) return ev_timer_stop(loop, w);
  bs_conn_t *c = cl->metrics_conn;
  if (c && c->scraping) return; /* the previous scrape is still running */
  if (c) {
    c->reused = 1;
  } else if (!(c = cl->metrics_conn = conn_open(cl, 1))) {
    cl->run->scrape_failures++;
    return;
  }
  conn_begin(c, NULL, cl->scrape_req, cl->scrape_req_len, cl->cfg->scrape_interval_s * 5 + 1);
}

static void start_main(bs_client_t *cl) {
  const bs_cfg_t *c = cl->cfg;
  cl->phase = 1;
  cl->run->t0 = bs_now_s();
  cl->count = bs_workload_count(cl->w);
  take_sample(cl);
  ev_timer_set(&cl->sample_timer, BS_SAMPLE_S, BS_SAMPLE_S);
  ev_timer_start(cl->loop, &cl->sample_timer);
  if (c->progress) {
    ev_timer_set(&cl->progress_timer, 0.5, 0.5);
    ev_timer_start(cl->loop, &cl->progress_timer);
  }
  if (c->scrape_interval_s > 0 && c->n_scrape > 0) {
    ev_timer_set(&cl->scrape_timer, 0., c->scrape_interval_s);
    ev_timer_start(cl->loop, &cl->scrape_timer);
  }
  cl->redrive = 1;
}

static int resolve(const char *host, const char *port, struct addrinfo **out) {
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
  int e = getaddrinfo(host, port, &hints, out);
  if (e) {
    log_error("bench serve: cannot resolve %s:%s: %s", host, port, gai_strerror(e));
    return STRATA_ENOTFOUND;
  }
  return 0;
}

static int client_init(bs_client_t *cl, const bs_cfg_t *c) {
  /* With --grpc the HTTP side is only the optional --metrics-url. */
  if ((!c->grpc[0] && resolve(c->host, c->port, &cl->ai)) ||
      (c->metrics_host[0] && resolve(c->metrics_host, c->metrics_port, &cl->mai)))
    return STRATA_ENOTFOUND;
  cl->scrape_disabled = !c->metrics_host[0];
  if (c->tls || c->metrics_tls) {
    cl->ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (!cl->ssl_ctx) {
      log_error("bench serve: cannot create the TLS context");
      return STRATA_EINTERNAL;
    }
    SSL_CTX_set_mode(cl->ssl_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (!c->insecure) {
      SSL_CTX_set_default_verify_paths(cl->ssl_ctx);
      if (c->ca_file && SSL_CTX_load_verify_locations(cl->ssl_ctx, c->ca_file, NULL) != 1) {
        log_error("bench serve: cannot load the CA certificates in %s", c->ca_file);
        return STRATA_EINVAL;
      }
      SSL_CTX_set_verify(cl->ssl_ctx, SSL_VERIFY_PEER, NULL);
    }
  }
  int n = snprintf(cl->scrape_req, sizeof cl->scrape_req, "GET %s HTTP/1.1\r\nHost: %s:%s\r\n%s%s%s\r\n",
                   c->metrics_path, c->metrics_host, c->metrics_port, c->api_key ? "Authorization: Bearer " : "",
                   c->api_key ? c->api_key : "", c->api_key ? "\r\n" : "");
  if (n < 0 || (size_t)n >= sizeof cl->scrape_req) {
    log_error("bench serve: the metrics URL is too long");
    return STRATA_EINVAL;
  }
  cl->scrape_req_len = (size_t)n;
  cl->settings.on_body = on_body;
  cl->settings.on_message_complete = on_message_complete;
  return 0;
}

int bs_run_execute(const bs_cfg_t *cfg, bs_workload_t *w, bs_run_t *run) {
  bs_client_t *cl = calloc(1, sizeof *cl);
  if (!cl) return STRATA_ENOMEM;
  memset(run, 0, sizeof *run);
  cl->cfg = cfg;
  cl->w = w;
  cl->run = run;
  int rc = client_init(cl, cfg);
  if (rc) goto done;
  cl->loop = ev_loop_new(EVFLAG_AUTO);
  if (!cl->loop) {
    log_error("bench serve: cannot create the event loop");
    rc = STRATA_EINTERNAL;
    goto done;
  }
  ev_init(&cl->arrival_timer, arrival_cb);
  ev_init(&cl->sample_timer, sample_cb);
  ev_init(&cl->scrape_timer, scrape_cb);
  ev_init(&cl->progress_timer, progress_cb);
  cl->arrival_timer.data = cl->sample_timer.data = cl->scrape_timer.data = cl->progress_timer.data = cl;
  if (cfg->grpc[0]) {
    bs_grpc_cbs_t gcbs = {.on_chunk = grpc_chunk_cb, .on_done = grpc_done_cb, .arg = cl};
    if ((rc = bs_grpc_new(cfg, cl->loop, &gcbs, &cl->grpc))) goto done;
  }
  drive(cl);
  if (!cl->finished) ev_run(cl->loop, 0);
  if (!run->t_end) run->t_end = bs_now_s();
  take_sample(cl);
  if (cfg->progress) {
    progress_cb(cl->loop, &cl->progress_timer, 0);
    fputc('\n', stderr);
  }
  /* Only the idle pool and the scraper hold connections once every request is done. */
  while (cl->idle) {
    bs_conn_t *c = cl->idle;
    cl->idle = c->next_idle;
    conn_close(c);
  }
  if (cl->metrics_conn) conn_close(cl->metrics_conn);
  run->n_reqs = cl->next;
done:
  bs_grpc_free(cl->grpc); /* every request has finished: the loop ends only then */
  if (cl->loop) ev_loop_destroy(cl->loop);
  if (cl->ssl_ctx) SSL_CTX_free(cl->ssl_ctx);
  if (cl->ai) freeaddrinfo(cl->ai);
  if (cl->mai) freeaddrinfo(cl->mai);
  free(cl);
  return rc;
}

void bs_run_free(bs_run_t *run) {
  for (int64_t i = 0; i < run->n_reqs; i++) bs_req_free(run->reqs[i]);
  free(run->reqs);
  free(run->samples);
  for (int i = 0; i < run->n_points; i++) free(run->points[i].metric);
  free(run->points);
  memset(run, 0, sizeof *run);
}
