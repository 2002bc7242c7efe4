/* test_http.c: the HTTP server (common/http) driven over loopback by raw-socket and TLS clients.
 * Responses are checked with http-parser in response mode, an independent parser of its output. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ev.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/http/http.h"
#include "common/status.h"

/* ------------------------------------------------------------------ the server under test */

typedef struct fixture fixture_t;

/* A stream the test thread paces through the fixture's kick watcher (one at a time). */
typedef struct {
  fixture_t *fx;
  http_request_t *req;
  int sent, n;
} gated_t;

/* A flood stream: writes until STRATA_EAGAIN, resumes on drain, until TOTAL bytes. */
typedef struct {
  fixture_t *fx;
  size_t sent, total;
  bool ignore_eagain; /* a misbehaving writer: keeps writing until dropped */
} flood_t;

struct fixture {
  pthread_t thread;
  struct ev_loop *loop;
  ev_async stop, kick;
  http_server_t *srv;
  http_server_config_t cfg;
  int port, rc;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool ready;
  gated_t *gated; /* loop thread only */
  atomic_int n_requests, n_closes, n_drains, saw_eagain, n_hang_closes, n_dropped, n_flood_closes;
};

static fixture_t g_fx;     /* plain server shared by most tests */
static char g_tmpdir[64];  /* TLS cert and key */

static void gated_close(http_request_t *req, void *data) {
  gated_t *g = data;
  atomic_fetch_add(&g->fx->n_closes, 1);
  if (g->fx->gated == g) g->fx->gated = NULL;
  free(g);
}

static void hang_close(http_request_t *req, void *data) {
  fixture_t *fx = data;
  atomic_fetch_add(&fx->n_hang_closes, 1);
}

static void flood_more(http_request_t *req, flood_t *f) {
  char buf[65536];
  while (f->sent < f->total) {
    size_t n = f->total - f->sent < sizeof(buf) ? f->total - f->sent : sizeof(buf);
    for (size_t i = 0; i < n; i++) buf[i] = (char)('a' + (f->sent + i) % 26);
    int rc = http_stream_write(req, buf, n);
    if (rc == STRATA_ECLOSED) {
      atomic_fetch_add(&f->fx->n_dropped, 1);
      return; /* the close callback frees F */
    }
    f->sent += n;
    if (rc == STRATA_EAGAIN && !f->ignore_eagain) {
      atomic_store(&f->fx->saw_eagain, 1);
      return; /* wait for the drain callback */
    }
  }
  free(f);
  http_stream_end(req);
}

static void flood_drain(http_request_t *req, void *data) {
  flood_t *f = data;
  atomic_fetch_add(&f->fx->n_drains, 1);
  flood_more(req, f);
}

static void flood_close(http_request_t *req, void *data) {
  flood_t *f = data;
  atomic_fetch_add(&f->fx->n_flood_closes, 1);
  free(f);
}

static size_t query_size(http_request_t *req, const char *name, size_t dflt) {
  char v[32];
  return http_request_query_param(req, name, v, sizeof(v)) > 0 ? (size_t)strtoull(v, NULL, 10) : dflt;
}

static void handle_echo(http_request_t *req) {
  char name[128] = "";
  int qrc = http_request_query_param(req, "name", name, sizeof(name));
  const char *xt = http_request_header(req, "x-test");
  char extra[512];
  snprintf(extra, sizeof(extra), "X-Method: %s\r\nX-Path: %s\r\nX-Name: %s\r\nX-Name-Rc: %d\r\nX-Test: %s\r\n",
           http_request_method(req), http_request_path(req), name, qrc, xt ? xt : "(none)");
  const char *ct = http_request_header(req, "content-type");
  size_t len;
  const char *body = http_request_body(req, &len);
  http_respond(req, 200, ct ? ct : "text/plain", extra, body, len);
}

static void on_request(http_request_t *req, void *data) {
  fixture_t *fx = data;
  atomic_fetch_add(&fx->n_requests, 1);
  const char *path = http_request_path(req);
  if (strcmp(path, "/echo") == 0) {
    handle_echo(req);
  } else if (strcmp(path, "/json") == 0) {
    http_respond_json(req, 200, "{\"ok\":true}");
  } else if (strcmp(path, "/auth") == 0) {
    if (http_secure_equal(http_request_bearer(req), "sk-test-123"))
      http_respond_json(req, 200, "{\"auth\":true}");
    else
      http_respond_json(req, 401, "{\"error\":\"bad key\"}");
  } else if (strcmp(path, "/big") == 0) {
    size_t n = query_size(req, "n", 1000);
    char *b = malloc(n);
    for (size_t i = 0; i < n; i++) b[i] = (char)('a' + i % 26);
    http_respond(req, 200, "application/octet-stream", NULL, b, n);
    free(b);
  } else if (strcmp(path, "/gated") == 0) {
    gated_t *g = calloc(1, sizeof(*g));
    g->fx = fx, g->req = req, g->n = (int)query_size(req, "n", 3);
    http_request_on_close(req, gated_close, g);
    fx->gated = g;
    http_stream_begin(req, 200, "text/event-stream", "Cache-Control: no-cache\r\n");
  } else if (strcmp(path, "/hang") == 0) {
    http_request_on_close(req, hang_close, fx);
    http_stream_begin(req, 200, "text/event-stream", NULL);
    http_stream_write(req, "data: first\n\n", 13);
  } else if (strcmp(path, "/flood") == 0) {
    flood_t *f = calloc(1, sizeof(*f));
    f->fx = fx, f->total = query_size(req, "n", 1 << 20), f->ignore_eagain = query_size(req, "ignore", 0) != 0;
    http_request_on_close(req, flood_close, f);
    http_request_on_drain(req, flood_drain, f);
    http_stream_begin(req, 200, "application/octet-stream", NULL);
    flood_more(req, f);
  } else {
    http_respond(req, 200, "text/plain", NULL, "ok", 2);
  }
}

/* kick: the test thread lets the gated stream send its next event (or end). */
static void kick_cb(struct ev_loop *loop, ev_async *w, int revents) {
  fixture_t *fx = w->data;
  gated_t *g = fx->gated;
  if (!g) return;
  if (g->sent == g->n) {
    fx->gated = NULL;
    http_request_t *req = g->req;
    free(g);
    http_stream_end(req);
    return;
  }
  char ev[64];
  int n = snprintf(ev, sizeof(ev), "data: {\"i\":%d}\n\n", g->sent++);
  http_stream_write(g->req, ev, (size_t)n);
}

static void stop_cb(struct ev_loop *loop, ev_async *w, int revents) { ev_break(loop, EVBREAK_ALL); }

static void *server_thread(void *arg) {
  fixture_t *fx = arg;
  fx->loop = ev_loop_new(EVFLAG_AUTO);
  ev_async_init(&fx->stop, stop_cb);
  ev_async_init(&fx->kick, kick_cb);
  fx->kick.data = fx;
  ev_async_start(fx->loop, &fx->stop);
  ev_async_start(fx->loop, &fx->kick);
  fx->rc = http_server_new(fx->loop, &fx->cfg, &fx->srv);
  if (fx->rc == 0) fx->port = http_server_port(fx->srv);
  pthread_mutex_lock(&fx->mu);
  fx->ready = true;
  pthread_cond_signal(&fx->cv);
  pthread_mutex_unlock(&fx->mu);
  if (fx->rc == 0) ev_run(fx->loop, 0);
  http_server_free(fx->srv);
  ev_loop_destroy(fx->loop);
  return NULL;
}

static void fixture_config(fixture_t *fx) {
  memset(fx, 0, sizeof(*fx));
  http_server_config_default(&fx->cfg);
  fx->cfg.port = 0;
  fx->cfg.max_body_bytes = 1 << 20;
  fx->cfg.max_header_bytes = 8192;
  fx->cfg.max_output_bytes = 256 * 1024;
  fx->cfg.on_request = on_request;
  fx->cfg.data = fx;
}

static int fixture_start(fixture_t *fx) {
  pthread_mutex_init(&fx->mu, NULL);
  pthread_cond_init(&fx->cv, NULL);
  if (pthread_create(&fx->thread, NULL, server_thread, fx)) return -1;
  pthread_mutex_lock(&fx->mu);
  while (!fx->ready) pthread_cond_wait(&fx->cv, &fx->mu);
  pthread_mutex_unlock(&fx->mu);
  if (fx->rc) pthread_join(fx->thread, NULL);
  return fx->rc;
}

static void fixture_stop(fixture_t *fx) {
  ev_async_send(fx->loop, &fx->stop);
  pthread_join(fx->thread, NULL);
  pthread_mutex_destroy(&fx->mu);
  pthread_cond_destroy(&fx->cv);
}

/* wait_for: polls an atomic counter until it reaches WANT (a deadline against hangs, not a timing
 * assertion). */
static int wait_for(atomic_int *v, int want) {
  for (int i = 0; i < 500 && atomic_load(v) < want; i++) usleep(10 * 1000);
  return atomic_load(v);
}

/* ------------------------------------------------------------------ clients */

typedef struct {
  int fd;
  SSL *ssl;
  char buf[1 << 16];
  size_t len;
} client_t;

static int client_connect(client_t *c, int port) {
  memset(c, 0, sizeof(*c));
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  if (c->fd < 0) return -1;
  struct timeval tv = {.tv_sec = 5};
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return connect(c->fd, (struct sockaddr *)&a, sizeof(a));
}

static int client_tls(client_t *c, SSL_CTX *ctx) {
  c->ssl = SSL_new(ctx);
  SSL_set_fd(c->ssl, c->fd);
  return SSL_connect(c->ssl) == 1 ? 0 : -1;
}

static void client_close(client_t *c) {
  if (c->ssl) SSL_free(c->ssl);
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  c->ssl = NULL;
}

static int client_send(client_t *c, const void *data, size_t len) {
  const char *p = data;
  while (len > 0) {
    ssize_t n = c->ssl ? SSL_write(c->ssl, p, (int)len) : send(c->fd, p, len, MSG_NOSIGNAL);
    if (n <= 0) return -1;
    p += n, len -= (size_t)n;
  }
  return 0;
}

static int client_sends(client_t *c, const char *s) { return client_send(c, s, strlen(s)); }

/* client_fill: reads more bytes into the buffer; returns the count, 0 at EOF, -1 on error/timeout. */
static ssize_t client_fill(client_t *c) {
  if (c->len == sizeof(c->buf)) return -1;
  ssize_t n = c->ssl ? SSL_read(c->ssl, c->buf + c->len, (int)(sizeof(c->buf) - c->len))
                     : recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
  if (n < 0 && c->ssl) n = 0;
  if (n > 0) c->len += (size_t)n;
  return n;
}

/* A response as seen by http-parser (response mode). */
typedef struct {
  http_parser p;
  int status;
  char headers[4096]; /* "name: value\n" lines, lower-cased names */
  size_t hlen;
  char *body;
  size_t body_len;
  size_t chunk_sizes[64]; /* of the first 64 chunks */
  size_t cur_chunk;
  int n_chunks;      /* non-empty chunks completed */
  int stop_chunks;   /* pause after this many chunks (0: never) */
  int last;          /* last header callback: 1 name, 2 value */
  bool head;         /* the request was HEAD */
  bool headers_done, complete;
} resp_t;

static void r_put(resp_t *r, const char *at, size_t len, bool lower) {
  for (size_t i = 0; i < len && r->hlen < sizeof(r->headers) - 1; i++)
    r->headers[r->hlen++] = lower ? (char)tolower((unsigned char)at[i]) : at[i];
  r->headers[r->hlen] = '\0';
}

/* Header callbacks may come in pieces; LAST tells a continuation from a new name or value. */
static int r_header_field(http_parser *p, const char *at, size_t len) {
  resp_t *r = p->data;
  if (r->last == 2) r_put(r, "\n", 1, false);
  r->last = 1;
  r_put(r, at, len, true);
  return 0;
}

static int r_header_value(http_parser *p, const char *at, size_t len) {
  resp_t *r = p->data;
  if (r->last != 2) r_put(r, ": ", 2, false);
  r->last = 2;
  r_put(r, at, len, false);
  return 0;
}

static int r_headers_complete(http_parser *p) {
  resp_t *r = p->data;
  r->status = (int)p->status_code;
  if (r->last == 2) r_put(r, "\n", 1, false);
  r->last = 0;
  r->headers_done = true;
  return r->head ? 1 : 0; /* 1: a response to HEAD has no body */
}

static int r_body(http_parser *p, const char *at, size_t len) {
  resp_t *r = p->data;
  r->body = realloc(r->body, r->body_len + len + 1);
  memcpy(r->body + r->body_len, at, len);
  r->body_len += len;
  r->body[r->body_len] = '\0';
  return 0;
}

static int r_chunk_header(http_parser *p) {
  resp_t *r = p->data;
  r->cur_chunk = p->content_length;
  return 0;
}

static int r_chunk_complete(http_parser *p) {
  resp_t *r = p->data;
  if (r->cur_chunk == 0) return 0; /* the last (empty) chunk */
  if (r->n_chunks < 64) r->chunk_sizes[r->n_chunks] = r->cur_chunk;
  r->n_chunks++;
  if (r->stop_chunks && r->n_chunks >= r->stop_chunks) http_parser_pause(p, 1);
  return 0;
}

static int r_message_complete(http_parser *p) {
  resp_t *r = p->data;
  r->complete = true;
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings R_SETTINGS = {
    .on_header_field = r_header_field,
    .on_header_value = r_header_value,
    .on_headers_complete = r_headers_complete,
    .on_body = r_body,
    .on_chunk_header = r_chunk_header,
    .on_chunk_complete = r_chunk_complete,
    .on_message_complete = r_message_complete,
};

static void resp_init(resp_t *r) {
  memset(r, 0, sizeof(*r));
  http_parser_init(&r->p, HTTP_RESPONSE);
  r->p.data = r;
}

static void resp_free(resp_t *r) { free(r->body); }

/* client_read: parses until the response completes (or STOP_CHUNKS chunks). Leftover bytes (a
 * pipelined next response) stay in the client buffer. Returns 0, or -1 on EOF, timeout, bad bytes. */
static int client_read(client_t *c, resp_t *r, int stop_chunks) {
  r->stop_chunks = stop_chunks;
  http_parser_pause(&r->p, 0);
  for (;;) {
    if (c->len > 0) {
      size_t n = http_parser_execute(&r->p, &R_SETTINGS, c->buf, c->len);
      memmove(c->buf, c->buf + n, c->len - n);
      c->len -= n;
      enum http_errno e = HTTP_PARSER_ERRNO(&r->p);
      if (e == HPE_PAUSED) return 0;
      if (e != HPE_OK) return -1;
    }
    if (client_fill(c) <= 0) {
      http_parser_execute(&r->p, &R_SETTINGS, NULL, 0); /* EOF ends a read-to-close body */
      return r->complete ? 0 : -1;
    }
  }
}

/* client_read_headers: parses until the status line and headers are in (body bytes stay parsed
 * into R as far as they arrived). Returns 0 or -1. */
static int client_read_headers(client_t *c, resp_t *r) {
  while (!r->headers_done) {
    if (c->len == 0 && client_fill(c) <= 0) return -1;
    size_t n = http_parser_execute(&r->p, &R_SETTINGS, c->buf, c->len);
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
    if (HTTP_PARSER_ERRNO(&r->p) != HPE_OK) return -1;
  }
  return 0;
}

/* request: one request on a fresh connection; returns the status (or -1). */
static int request(int port, const char *raw, resp_t *r) {
  client_t *c = malloc(sizeof(*c));
  resp_init(r);
  int rc = -1;
  if (client_connect(c, port) == 0 && client_sends(c, raw) == 0 && client_read(c, r, 0) == 0) rc = r->status;
  client_close(c);
  free(c);
  return rc;
}

static const char *header_of(resp_t *r, const char *name) {
  static char v[512];
  char key[64];
  snprintf(key, sizeof(key), "%s: ", name);
  const char *p = strstr(r->headers, key);
  if (!p || (p != r->headers && p[-1] != '\n')) return NULL;
  p += strlen(key);
  size_t n = strcspn(p, "\n");
  snprintf(v, sizeof(v), "%.*s", (int)n, p);
  return v;
}

/* client_eof: the server closed the connection (all buffered data consumed). */
static bool client_eof(client_t *c) {
  for (;;) {
    c->len = 0;
    ssize_t n = client_fill(c);
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;
  }
}

/* ------------------------------------------------------------------ tests */

static void test_get_and_post_echo(void **state) {
  resp_t r;
  assert_int_equal(request(g_fx.port, "GET /echo?x=1&name=a%20b+c HTTP/1.1\r\nHost: x\r\nX-Test:  hi there \r\n\r\n", &r), 200);
  assert_string_equal(header_of(&r, "x-method"), "GET");
  assert_string_equal(header_of(&r, "x-path"), "/echo");
  assert_string_equal(header_of(&r, "x-name"), "a b c");
  assert_string_equal(header_of(&r, "x-test"), "hi there"); /* case-insensitive lookup, trimmed */
  assert_int_equal(r.body_len, 0);
  resp_free(&r);

  const char *json = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
  char raw[512];
  snprintf(raw, sizeof(raw), "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
           strlen(json), json);
  assert_int_equal(request(g_fx.port, raw, &r), 200);
  assert_string_equal(header_of(&r, "content-type"), "application/json");
  assert_string_equal(header_of(&r, "x-method"), "POST");
  assert_string_equal(r.body, json);
  resp_free(&r);

  assert_int_equal(request(g_fx.port, "GET /json HTTP/1.1\r\nHost: x\r\n\r\n", &r), 200);
  assert_string_equal(header_of(&r, "content-type"), "application/json");
  assert_string_equal(r.body, "{\"ok\":true}");
  resp_free(&r);
  /* a missing query parameter is reported as not found */
  assert_int_equal(request(g_fx.port, "GET /echo?other=1 HTTP/1.1\r\n\r\n", &r), 200);
  assert_int_equal(atoi(header_of(&r, "x-name-rc")), STRATA_ENOTFOUND);
  resp_free(&r);
}

static void test_keepalive(void **state) {
  client_t *c = malloc(sizeof(*c));
  assert_int_equal(client_connect(c, g_fx.port), 0);
  for (int i = 0; i < 5; i++) {
    char raw[256], body[32];
    snprintf(body, sizeof(body), "req-%d", i);
    snprintf(raw, sizeof(raw), "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
    assert_int_equal(client_sends(c, raw), 0);
    resp_t r;
    resp_init(&r);
    assert_int_equal(client_read(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, body);
    assert_true(http_should_keep_alive(&r.p));
    resp_free(&r);
  }
  /* Connection: close ends it after the response */
  assert_int_equal(client_sends(c, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n"), 0);
  resp_t r;
  resp_init(&r);
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_string_equal(header_of(&r, "connection"), "close");
  assert_string_equal(r.body, "ok");
  resp_free(&r);
  assert_true(client_eof(c));
  client_close(c);
  free(c);
}

static void test_http10(void **state) {
  client_t *c = malloc(sizeof(*c));
  assert_int_equal(client_connect(c, g_fx.port), 0);
  assert_int_equal(client_sends(c, "GET /json HTTP/1.0\r\n\r\n"), 0);
  resp_t r;
  resp_init(&r);
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "{\"ok\":true}");
  resp_free(&r);
  assert_true(client_eof(c)); /* 1.0 without keep-alive: closed */
  client_close(c);
  /* 1.0 with keep-alive stays open */
  assert_int_equal(client_connect(c, g_fx.port), 0);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(client_sends(c, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
    resp_init(&r);
    assert_int_equal(client_read(c, &r, 0), 0);
    assert_string_equal(header_of(&r, "connection"), "keep-alive");
    assert_string_equal(r.body, "ok");
    resp_free(&r);
  }
  client_close(c);
  free(c);
}

static void test_pipelining(void **state) {
  client_t *c = malloc(sizeof(*c));
  assert_int_equal(client_connect(c, g_fx.port), 0);
  /* three requests in one write; responses must come back in order */
  assert_int_equal(client_sends(c, "POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nfirstGET /json HTTP/1.1\r\n\r\n"
                                   "POST /echo?name=third HTTP/1.1\r\nContent-Length: 5\r\n\r\nthird"),
                   0);
  resp_t r;
  resp_init(&r);
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_string_equal(r.body, "first");
  resp_free(&r);
  resp_init(&r);
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_string_equal(r.body, "{\"ok\":true}");
  resp_free(&r);
  resp_init(&r);
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_string_equal(r.body, "third");
  assert_string_equal(header_of(&r, "x-name"), "third");
  resp_free(&r);
  /* a request pipelined behind one answered later (from the loop) waits for it, then runs */
  assert_int_equal(client_sends(c, "GET /gated?n=1 HTTP/1.1\r\n\r\nGET /json HTTP/1.1\r\n\r\n"), 0);
  resp_init(&r);
  assert_int_equal(client_read_headers(c, &r), 0);
  ev_async_send(g_fx.loop, &g_fx.kick);
  assert_int_equal(client_read(c, &r, 1), 0);
  ev_async_send(g_fx.loop, &g_fx.kick);
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_string_equal(r.body, "data: {\"i\":0}\n\n");
  resp_free(&r);
  resp_init(&r);
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_string_equal(r.body, "{\"ok\":true}");
  resp_free(&r);
  client_close(c);
  free(c);
}

static void test_chunked_request_and_continue(void **state) {
  client_t *c = malloc(sizeof(*c));
  assert_int_equal(client_connect(c, g_fx.port), 0);
  assert_int_equal(client_sends(c, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"), 0);
  usleep(20 * 1000); /* let the server see a partial body (not asserted) */
  assert_int_equal(client_sends(c, "1\r\n \r\n"), 0);
  assert_int_equal(client_sends(c, "5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"), 0);
  resp_t r;
  resp_init(&r);
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "hello world");
  resp_free(&r);

  /* Expect: 100-continue: the interim response comes before the body is sent */
  assert_int_equal(client_sends(c, "POST /echo HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"), 0);
  resp_init(&r);
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_int_equal(r.status, 100);
  resp_free(&r);
  assert_int_equal(client_sends(c, "body"), 0);
  resp_init(&r);
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "body");
  resp_free(&r);
  client_close(c);
  free(c);
}

static void test_body_too_large(void **state) {
  /* declared too large: 413 arrives although no body byte was sent */
  resp_t r;
  assert_int_equal(request(g_fx.port, "POST /echo HTTP/1.1\r\nContent-Length: 100000000\r\nExpect: 100-continue\r\n\r\n", &r),
                   413);
  assert_string_equal(header_of(&r, "connection"), "close");
  resp_free(&r);
  /* chunked past the limit (1 MiB): 413 while the client is still sending */
  client_t *c = malloc(sizeof(*c));
  assert_int_equal(client_connect(c, g_fx.port), 0);
  assert_int_equal(client_sends(c, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
  static char chunk[70000];
  int n = snprintf(chunk, sizeof(chunk), "%x\r\n", 65536);
  memset(chunk + n, 'x', 65536);
  memcpy(chunk + n + 65536, "\r\n", 2);
  int sent = 0;
  for (; sent < 20; sent++)
    if (client_send(c, chunk, (size_t)n + 65538)) break; /* the server may close while we send */
  resp_init(&r);
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_int_equal(r.status, 413);
  resp_free(&r);
  client_close(c);
  free(c);
}

static void test_headers_too_large(void **state) {
  size_t big = 20000; /* > max_header_bytes (8192) */
  char *raw = malloc(big + 128);
  int n = sprintf(raw, "GET / HTTP/1.1\r\nX-Big: ");
  memset(raw + n, 'a', big);
  strcpy(raw + n + big, "\r\n\r\n");
  resp_t r;
  assert_int_equal(request(g_fx.port, raw, &r), 431);
  resp_free(&r);
  /* many small headers add up too */
  size_t off = (size_t)sprintf(raw, "GET / HTTP/1.1\r\n");
  for (int i = 0; i < 600; i++) off += (size_t)sprintf(raw + off, "X-H%d: v\r\n", i);
  strcpy(raw + off, "\r\n");
  assert_int_equal(request(g_fx.port, raw, &r), 431);
  resp_free(&r);
  free(raw);
}

static void test_garbage(void **state) {
  const char *bad[] = {
      "\x01\x02\x03 hello\r\n\r\n",
      "GET / HTTP/9.9x\r\n\r\n",
      "GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
      "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    client_t *c = malloc(sizeof(*c));
    assert_int_equal(client_connect(c, g_fx.port), 0);
    assert_int_equal(client_sends(c, bad[i]), 0);
    resp_t r;
    resp_init(&r);
    assert_int_equal(client_read(c, &r, 0), 0);
    assert_int_equal(r.status, 400);
    resp_free(&r);
    assert_true(client_eof(c)); /* and closed */
    client_close(c);
    free(c);
  }
  resp_t r;
  assert_int_equal(request(g_fx.port, "GET / HTTP/1.1\r\n\r\n", &r), 200); /* still healthy */
  resp_free(&r);
}

static void test_stream_incremental(void **state) {
  client_t *c = malloc(sizeof(*c));
  assert_int_equal(client_connect(c, g_fx.port), 0);
  assert_int_equal(client_sends(c, "GET /gated?n=3 HTTP/1.1\r\n\r\n"), 0);
  resp_t r;
  resp_init(&r);
  /* headers arrive before any event exists */
  assert_int_equal(client_read_headers(c, &r), 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(header_of(&r, "content-type"), "text/event-stream");
  assert_string_equal(header_of(&r, "transfer-encoding"), "chunked");
  assert_string_equal(header_of(&r, "cache-control"), "no-cache");
  /* each event is released by the test and read before the next exists */
  for (int i = 0; i < 3; i++) {
    ev_async_send(g_fx.loop, &g_fx.kick);
    assert_int_equal(client_read(c, &r, i + 1), 0);
    assert_int_equal(r.n_chunks, i + 1);
    assert_false(r.complete);
    char want[64];
    snprintf(want, sizeof(want), "data: {\"i\":%d}\n\n", i);
    assert_int_equal(r.chunk_sizes[i], strlen(want));
    assert_memory_equal(r.body + r.body_len - strlen(want), want, strlen(want));
  }
  ev_async_send(g_fx.loop, &g_fx.kick); /* end */
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_true(r.complete);
  assert_int_equal(r.n_chunks, 3);
  assert_string_equal(r.body, "data: {\"i\":0}\n\ndata: {\"i\":1}\n\ndata: {\"i\":2}\n\n");
  resp_free(&r);
  /* the connection is reusable after the stream */
  assert_int_equal(client_sends(c, "GET /json HTTP/1.1\r\n\r\n"), 0);
  resp_init(&r);
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_string_equal(r.body, "{\"ok\":true}");
  resp_free(&r);
  client_close(c);
  free(c);
  assert_int_equal(atomic_load(&g_fx.n_closes), 0); /* ended normally: no close callback */
}

static void test_disconnect_midstream(void **state) {
  int before = atomic_load(&g_fx.n_hang_closes);
  client_t *c = malloc(sizeof(*c));
  assert_int_equal(client_connect(c, g_fx.port), 0);
  assert_int_equal(client_sends(c, "GET /hang HTTP/1.1\r\n\r\n"), 0);
  resp_t r;
  resp_init(&r);
  assert_int_equal(client_read(c, &r, 1), 0);
  assert_string_equal(r.body, "data: first\n\n");
  resp_free(&r);
  client_close(c);
  assert_int_equal(wait_for(&g_fx.n_hang_closes, before + 1), before + 1);
  /* the server is healthy for the next client, and the callback never fires twice */
  assert_int_equal(request(g_fx.port, "GET /json HTTP/1.1\r\n\r\n", &r), 200);
  resp_free(&r);
  assert_int_equal(atomic_load(&g_fx.n_hang_closes), before + 1);

  /* a pending gated stream whose client leaves also gets exactly one close callback */
  int closes = atomic_load(&g_fx.n_closes);
  assert_int_equal(client_connect(c, g_fx.port), 0);
  assert_int_equal(client_sends(c, "GET /gated?n=5 HTTP/1.1\r\n\r\n"), 0);
  resp_init(&r);
  assert_int_equal(client_read_headers(c, &r), 0); /* the stream exists now */
  ev_async_send(g_fx.loop, &g_fx.kick);
  assert_int_equal(client_read(c, &r, 1), 0);
  resp_free(&r);
  client_close(c);
  free(c);
  assert_int_equal(wait_for(&g_fx.n_closes, closes + 1), closes + 1);
}

static void test_backpressure(void **state) {
  atomic_store(&g_fx.saw_eagain, 0);
  int drains = atomic_load(&g_fx.n_drains);
  client_t *c = malloc(sizeof(*c));
  assert_int_equal(client_connect(c, g_fx.port), 0);
  size_t total = 16u << 20;
  char raw[128];
  snprintf(raw, sizeof(raw), "GET /flood?n=%zu HTTP/1.1\r\n\r\n", total);
  assert_int_equal(client_sends(c, raw), 0);
  /* not reading: the writer must be told to pause (STRATA_EAGAIN) */
  assert_int_equal(wait_for(&g_fx.saw_eagain, 1), 1);
  resp_t r;
  resp_init(&r);
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.body_len, total);
  for (size_t i = 0; i < total; i += 4093) assert_int_equal(r.body[i], 'a' + i % 26);
  assert_true(atomic_load(&g_fx.n_drains) > drains); /* it resumed on drain callbacks */
  resp_free(&r);
  client_close(c);
  free(c);
}

static void test_slow_reader_dropped(void **state) {
  int closes = atomic_load(&g_fx.n_flood_closes), dropped = atomic_load(&g_fx.n_dropped);
  client_t *c = malloc(sizeof(*c));
  assert_int_equal(client_connect(c, g_fx.port), 0);
  assert_int_equal(client_sends(c, "GET /flood?n=100000000&ignore=1 HTTP/1.1\r\n\r\n"), 0);
  /* never reading: the writer ignoring STRATA_EAGAIN is cut off and the request canceled once */
  assert_int_equal(wait_for(&g_fx.n_dropped, dropped + 1), dropped + 1);
  assert_int_equal(wait_for(&g_fx.n_flood_closes, closes + 1), closes + 1);
  client_close(c);
  free(c);
  resp_t r;
  assert_int_equal(request(g_fx.port, "GET / HTTP/1.1\r\n\r\n", &r), 200);
  resp_free(&r);
  assert_int_equal(atomic_load(&g_fx.n_flood_closes), closes + 1);
}

/* Random bytes after a valid request line prefix: each gets 400/431 or a close, never a crash. */
static void test_random_garbage(void **state) {
  uint32_t seed = 12345;
  for (int round = 0; round < 40; round++) {
    char raw[600];
    int n = snprintf(raw, sizeof(raw), "%s", round % 2 ? "POST /echo HTTP/1.1\r\n" : "");
    int len = n + 50 + round * 10;
    for (int i = n; i < len; i++) {
      seed = seed * 1103515245u + 12345u;
      raw[i] = (char)(seed >> 16);
    }
    client_t *c = malloc(sizeof(*c));
    assert_int_equal(client_connect(c, g_fx.port), 0);
    client_send(c, raw, (size_t)len);
    shutdown(c->fd, SHUT_WR);
    resp_t r;
    resp_init(&r);
    if (client_read(c, &r, 0) == 0) assert_true(r.status == 400 || r.status == 431 || r.status == 413);
    resp_free(&r);
    client_close(c);
    free(c);
  }
  resp_t r;
  assert_int_equal(request(g_fx.port, "GET /json HTTP/1.1\r\n\r\n", &r), 200);
  resp_free(&r);
}

static void test_odd_requests(void **state) {
  client_t *c = malloc(sizeof(*c));
  assert_int_equal(client_connect(c, g_fx.port), 0);
  assert_int_equal(client_sends(c, "HEAD /json HTTP/1.1\r\n\r\nOPTIONS * HTTP/1.1\r\n\r\n"), 0);
  resp_t r;
  resp_init(&r);
  r.head = true;
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(header_of(&r, "content-length"), "11"); /* as for GET, but no body */
  assert_int_equal(r.body_len, 0);
  resp_free(&r);
  resp_init(&r);
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_string_equal(r.body, "ok");
  resp_free(&r);
  /* an Upgrade request is served as plain HTTP (no upgrade), and the connection goes on */
  assert_int_equal(client_sends(c, "GET /json HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"), 0);
  resp_init(&r);
  assert_int_equal(client_read(c, &r, 0), 0);
  assert_string_equal(r.body, "{\"ok\":true}");
  resp_free(&r);
  client_close(c);
  free(c);
  /* CONNECT reaches the handler like any method; the server stays healthy */
  assert_int_equal(request(g_fx.port, "CONNECT example.com:443 HTTP/1.1\r\n\r\n", &r), 200);
  resp_free(&r);
  assert_int_equal(request(g_fx.port, "GET /json HTTP/1.1\r\n\r\n", &r), 200);
  resp_free(&r);
}

static void test_auth_and_helpers(void **state) {
  resp_t r;
  assert_int_equal(request(g_fx.port, "GET /auth HTTP/1.1\r\nAuthorization: Bearer sk-test-123\r\n\r\n", &r), 200);
  resp_free(&r);
  assert_int_equal(request(g_fx.port, "GET /auth HTTP/1.1\r\nauthorization: bearer   sk-test-123 \r\n\r\n", &r), 200);
  resp_free(&r);
  assert_int_equal(request(g_fx.port, "GET /auth HTTP/1.1\r\nAuthorization: Bearer sk-test-124\r\n\r\n", &r), 401);
  resp_free(&r);
  assert_int_equal(request(g_fx.port, "GET /auth HTTP/1.1\r\nAuthorization: Basic sk-test-123\r\n\r\n", &r), 401);
  resp_free(&r);
  assert_int_equal(request(g_fx.port, "GET /auth HTTP/1.1\r\n\r\n", &r), 401);
  resp_free(&r);
  assert_true(http_secure_equal("abc", "abc"));
  assert_false(http_secure_equal("abc", "abd"));
  assert_false(http_secure_equal("abc", "abcd"));
  assert_false(http_secure_equal("", "a"));
  assert_true(http_secure_equal("", ""));
  assert_false(http_secure_equal(NULL, "a"));
  assert_string_equal(http_status_reason(404), "Not Found");
  assert_string_equal(http_status_reason(299), "Unknown");
}

static void test_concurrent_200(void **state) {
  enum { N = 200 };
  client_t *cs = calloc(N, sizeof(*cs));
  for (int i = 0; i < N; i++) assert_int_equal(client_connect(&cs[i], g_fx.port), 0);
  for (int i = 0; i < N; i++) {
    char raw[128];
    snprintf(raw, sizeof(raw), "GET /echo?name=c%d HTTP/1.1\r\n\r\n", i);
    assert_int_equal(client_sends(&cs[i], raw), 0);
  }
  int ok = 0;
  for (int i = 0; i < N; i++) {
    resp_t r;
    resp_init(&r);
    char want[16];
    snprintf(want, sizeof(want), "c%d", i);
    if (client_read(&cs[i], &r, 0) == 0 && r.status == 200 && strcmp(header_of(&r, "x-name"), want) == 0) ok++;
    resp_free(&r);
    client_close(&cs[i]);
  }
  free(cs);
  assert_int_equal(ok, N);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void test_throughput(void **state) {
  enum { N = 5000 };
  client_t *c = malloc(sizeof(*c));
  assert_int_equal(client_connect(c, g_fx.port), 0);
  const char *raw = "GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
  int ok = 0;
  double t0 = now_s();
  for (int i = 0; i < N; i++) {
    resp_t r;
    resp_init(&r);
    if (client_sends(c, raw) == 0 && client_read(c, &r, 0) == 0 && r.status == 200) ok++;
    resp_free(&r);
  }
  double dt = now_s() - t0;
  assert_int_equal(ok, N);
  /* pipelined batches of 16 */
  int okp = 0;
  char batch[16 * 64];
  size_t bl = 0;
  for (int i = 0; i < 16; i++) bl += (size_t)sprintf(batch + bl, "%s", raw);
  double t1 = now_s();
  for (int b = 0; b < N / 16; b++) {
    assert_int_equal(client_send(c, batch, bl), 0);
    for (int i = 0; i < 16; i++) {
      resp_t r;
      resp_init(&r);
      if (client_read(c, &r, 0) == 0 && r.status == 200) okp++;
      resp_free(&r);
    }
  }
  double dt2 = now_s() - t1;
  assert_int_equal(okp, N / 16 * 16);
  printf("[ bench    ] http keep-alive trivial handler: %.0f req/s sequential, %.0f req/s pipelined x16 "
         "(1 connection, loopback)\n",
         N / dt, okp / dt2);
  client_close(c);
  free(c);
}

/* Timeouts and the connection limit: a second server with small settings. */
static void test_timeouts_and_limit(void **state) {
  fixture_t *fx = calloc(1, sizeof(*fx));
  fixture_config(fx);
  fx->cfg.idle_timeout_s = 0.2;
  fx->cfg.read_timeout_s = 0.2;
  fx->cfg.max_connections = 3;
  assert_int_equal(fixture_start(fx), 0);
  client_t *c = calloc(4, sizeof(*c));
  /* idle keep-alive connection is closed */
  assert_int_equal(client_connect(&c[0], fx->port), 0);
  assert_true(client_eof(&c[0]));
  client_close(&c[0]);
  /* a request that never completes is closed too (slow headers) */
  assert_int_equal(client_connect(&c[0], fx->port), 0);
  assert_int_equal(client_sends(&c[0], "GET / HTTP/1.1\r\nX-Slow: "), 0);
  assert_true(client_eof(&c[0]));
  client_close(&c[0]);
  /* the 4th concurrent connection gets 503 */
  for (int i = 0; i < 3; i++) {
    assert_int_equal(client_connect(&c[i], fx->port), 0);
    assert_int_equal(client_sends(&c[i], "GET / HTTP/1.1\r\n\r\n"), 0);
    resp_t r;
    resp_init(&r);
    assert_int_equal(client_read(&c[i], &r, 0), 0); /* accepted and served */
    resp_free(&r);
  }
  resp_t r;
  assert_int_equal(request(fx->port, "GET / HTTP/1.1\r\n\r\n", &r), 503);
  resp_free(&r);
  for (int i = 0; i < 3; i++) client_close(&c[i]);
  free(c);
  fixture_stop(fx);
  free(fx);
}

static void test_bad_config(void **state) {
  fixture_t *fx = calloc(1, sizeof(*fx));
  fixture_config(fx);
  fx->cfg.port = g_fx.port; /* in use */
  assert_int_equal(fixture_start(fx), STRATA_EIO);
  fixture_config(fx);
  fx->cfg.tls_cert_file = "/nonexistent/cert.pem"; /* key missing */
  assert_int_equal(fixture_start(fx), STRATA_EINVAL);
  free(fx);
}

static void test_tls(void **state) {
  char cmd[512], cert[128], key[128];
  snprintf(cert, sizeof(cert), "%s/cert.pem", g_tmpdir);
  snprintf(key, sizeof(key), "%s/key.pem", g_tmpdir);
  snprintf(cmd, sizeof(cmd),
           "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
           "-subj /CN=localhost -keyout %s -out %s >/dev/null 2>&1",
           key, cert);
  assert_int_equal(system(cmd), 0);
  fixture_t *fx = calloc(1, sizeof(*fx));
  fixture_config(fx);
  fx->cfg.tls_cert_file = cert;
  fx->cfg.tls_key_file = key;
  assert_int_equal(fixture_start(fx), 0);

  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  assert_int_equal(SSL_CTX_load_verify_locations(ctx, cert, NULL), 1); /* trust our self-signed cert */
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  client_t *c = malloc(sizeof(*c));
  for (int round = 0; round < 2; round++) {
    assert_int_equal(client_connect(c, fx->port), 0);
    assert_int_equal(client_tls(c, ctx), 0);
    assert_true(SSL_version(c->ssl) >= TLS1_2_VERSION);
    assert_int_equal(client_sends(c, "POST /echo HTTP/1.1\r\nContent-Length: 6\r\n\r\nsecret"), 0);
    resp_t r;
    resp_init(&r);
    assert_int_equal(client_read(c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "secret");
    resp_free(&r);
    /* keep-alive with a large body (many TLS records and partial writes) */
    assert_int_equal(client_sends(c, "GET /big?n=3000000 HTTP/1.1\r\n\r\n"), 0);
    resp_init(&r);
    assert_int_equal(client_read(c, &r, 0), 0);
    assert_int_equal(r.body_len, 3000000);
    for (size_t i = 0; i < r.body_len; i += 997) assert_int_equal(r.body[i], 'a' + i % 26);
    resp_free(&r);
    client_close(c);
    if (round == 0) {
      /* a plaintext client against the TLS port gets no HTTP response, and no harm is done */
      assert_int_equal(client_connect(c, fx->port), 0);
      client_sends(c, "GET / HTTP/1.1\r\n\r\n");
      resp_init(&r);
      assert_int_not_equal(client_read(c, &r, 0), 0);
      resp_free(&r);
      client_close(c);
      /* nor does a client that connects and leaves mid-handshake */
      assert_int_equal(client_connect(c, fx->port), 0);
      client_send(c, "\x16\x03\x01\x00\x50", 5);
      client_close(c);
    }
  }
  free(c);
  SSL_CTX_free(ctx);
  fixture_stop(fx);
  free(fx);
  unlink(cert);
  unlink(key);
}

static int group_setup(void **state) {
  snprintf(g_tmpdir, sizeof(g_tmpdir), "/tmp/strata_http_XXXXXX");
  if (!mkdtemp(g_tmpdir)) return -1;
  fixture_config(&g_fx);
  return fixture_start(&g_fx);
}

static int group_teardown(void **state) {
  fixture_stop(&g_fx);
  rmdir(g_tmpdir);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_get_and_post_echo),
      cmocka_unit_test(test_keepalive),
      cmocka_unit_test(test_http10),
      cmocka_unit_test(test_pipelining),
      cmocka_unit_test(test_chunked_request_and_continue),
      cmocka_unit_test(test_body_too_large),
      cmocka_unit_test(test_headers_too_large),
      cmocka_unit_test(test_garbage),
      cmocka_unit_test(test_stream_incremental),
      cmocka_unit_test(test_disconnect_midstream),
      cmocka_unit_test(test_backpressure),
      cmocka_unit_test(test_slow_reader_dropped),
      cmocka_unit_test(test_random_garbage),
      cmocka_unit_test(test_odd_requests),
      cmocka_unit_test(test_auth_and_helpers),
      cmocka_unit_test(test_concurrent_200),
      cmocka_unit_test(test_throughput),
      cmocka_unit_test(test_timeouts_and_limit),
      cmocka_unit_test(test_bad_config),
      cmocka_unit_test(test_tls),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
