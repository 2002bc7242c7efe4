/* stub_server.c: strata-stub-server, a deterministic OpenAI-compatible server on libev for testing
 * the serve harness: fixed per-token delays, rule-chosen slow, failing and cut requests, /metrics. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <ev.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench/serve/bs_int.h"

#define STUB_PREFIX_BLOCK 16
#define STUB_HASH_CAP (1u << 16)
#define STUB_KV_CAPACITY 256.0

/* The rules (X-Request-Id = n, a decimal number; other ids are "normal"):
 *   slow:  n % slow_every == 0       -> slow_ttft_ms / slow_itl_ms
 *   fail:  n % fail_every == 1 % fail_every -> HTTP 500
 *   cut:   n % cut_every  == 2 % cut_every  -> the stream stops after half the tokens */
typedef struct {
  const char *host;
  int port;
  double ttft_ms, itl_ms, slow_ttft_ms, slow_itl_ms;
  int slow_every, fail_every, cut_every, replicas;
  const char *tls_cert, *tls_key;
} stub_cfg_t;

typedef struct stub_conn {
  struct ev_loop *loop;
  int fd;
  SSL *ssl; /* NULL without --tls-cert */
  ev_io io;
  ev_timer gen;
  http_parser parser;
  bs_buf_t url, body, out, hdr_field, hdr_value;
  size_t out_off;
  long long req_id;
  int req_done, closing, last_was_value;
  /* the generation in progress */
  int active, chat, stream, n_tokens, sent, cut_at, prompt_words, include_usage;
  double t0, ttft_s, itl_s;
  char model[128];
} stub_conn_t;

static stub_cfg_t g_cfg;
static http_parser_settings g_settings;
static long long g_running, g_requests_total, g_prefix_hits, g_prefix_queries;
static uint64_t *g_hashes;
static SSL_CTX *g_ssl_ctx;
static unsigned g_n_hashes;

static void conn_free(stub_conn_t *c) {
  if (c->active) g_running--;
  ev_io_stop(c->loop, &c->io);
  ev_timer_stop(c->loop, &c->gen);
  if (c->ssl) SSL_free(c->ssl);
  close(c->fd);
  bs_buf_free(&c->url);
  bs_buf_free(&c->body);
  bs_buf_free(&c->out);
  bs_buf_free(&c->hdr_field);
  bs_buf_free(&c->hdr_value);
  free(c);
}

/* Sends what is queued; returns -1 when the connection is gone (and freed). */
static ssize_t conn_send(stub_conn_t *c) {
  if (!c->ssl) return send(c->fd, c->out.p + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
  int r = SSL_write(c->ssl, c->out.p + c->out_off, (int)(c->out.len - c->out_off));
  if (r > 0) return r;
  int e = SSL_get_error(c->ssl, r);
  errno = (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) ? EAGAIN : EPIPE;
  return -1;
}

static int conn_flush(stub_conn_t *c) {
  while (c->out_off < c->out.len) {
    ssize_t n = conn_send(c);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      ev_io_stop(c->loop, &c->io);
      ev_io_set(&c->io, c->fd, EV_READ | EV_WRITE);
      ev_io_start(c->loop, &c->io);
      return 0;
    }
    if (n < 0) {
      conn_free(c);
      return -1;
    }
    c->out_off += (size_t)n;
  }
  c->out.len = c->out_off = 0;
  if (c->closing) {
    conn_free(c);
    return -1;
  }
  ev_io_stop(c->loop, &c->io);
  ev_io_set(&c->io, c->fd, EV_READ);
  ev_io_start(c->loop, &c->io);
  return 0;
}

static void reply(stub_conn_t *c, int status, const char *ctype, const char *body) {
  const char *reason = status == 200 ? "OK" : status == 404 ? "Not Found" : status == 400 ? "Bad Request" : "Internal Server Error";
  bs_buf_printf(&c->out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n\r\n%s", status, reason, ctype,
                strlen(body), body);
}

/* Simulated prefix cache: chained hashes of 16-word blocks; hits are the leading blocks seen before. */
static void prefix_account(const char *text) {
  uint64_t h = 1469598103934665603ULL;
  int words = 0, in = 0, hit_run = 1;
  for (const char *p = text;; p++) {
    int sp = !*p || *p == ' ' || *p == '\n' || *p == '\t';
    if (!sp) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    if (sp && in && ++words % STUB_PREFIX_BLOCK == 0) {
      unsigned k = (unsigned)(h % STUB_HASH_CAP);
      while (g_hashes[k] && g_hashes[k] != h) k = (k + 1) % STUB_HASH_CAP;
      if (g_hashes[k] == h && hit_run) g_prefix_hits += STUB_PREFIX_BLOCK;
      else hit_run = 0;
      if (!g_hashes[k]) {
        g_hashes[k] = h ? h : 1;
        if (++g_n_hashes > STUB_HASH_CAP * 3 / 4) memset(g_hashes, 0, STUB_HASH_CAP * sizeof *g_hashes), g_n_hashes = 0;
      }
    }
    in = !sp;
    if (!*p) break;
  }
  g_prefix_queries += words;
}

static int count_words(const char *s) {
  int n = 0, in = 0;
  for (; *s; s++) {
    int sp = *s == ' ' || *s == '\n' || *s == '\t' || *s == '\r';
    n += !sp && !in;
    in = !sp;
  }
  return n;
}

static void metrics(stub_conn_t *c) {
  char body[1024];
  snprintf(body, sizeof body,
           "# TYPE strata:num_requests_running gauge\nstrata:num_requests_running{model=\"stub\"} %lld\n"
           "# TYPE strata:num_requests_waiting gauge\nstrata:num_requests_waiting{model=\"stub\"} 0\n"
           "strata:kv_cache_usage_perc{model=\"stub\"} %.4f\n"
           "strata:prefix_cache_hits_total{model=\"stub\"} %lld\n"
           "strata:prefix_cache_queries_total{model=\"stub\"} %lld\n"
           "strata:requests_total %lld\nstrata:desired_replicas %d\n",
           g_running, g_running / STUB_KV_CAPACITY > 1 ? 1.0 : g_running / STUB_KV_CAPACITY, g_prefix_hits,
           g_prefix_queries, g_requests_total, g_cfg.replicas);
  reply(c, 200, "text/plain; version=0.0.4", body);
}

static void sse_event(stub_conn_t *c, const char *data) {
  size_t n = strlen(data) + 8; /* "data: " + data + "\n\n" */
  bs_buf_printf(&c->out, "%zx\r\ndata: %s\n\n\r\n", n, data);
}

static void token_event(stub_conn_t *c, int k) {
  char ev[768];
  const char *word = bs_words[k % bs_n_words];
  const char *fin = k + 1 == c->n_tokens ? "\"length\"" : "null";
  if (c->chat)
    snprintf(ev, sizeof ev,
             "{\"id\":\"chatcmpl-%lld\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"%s\","
             "\"choices\":[{\"index\":0,\"delta\":{%s\"content\":\" %s\"},\"finish_reason\":%s}]}",
             c->req_id, c->model, k == 0 ? "\"role\":\"assistant\"," : "", word, fin);
  else
    snprintf(ev, sizeof ev,
             "{\"id\":\"cmpl-%lld\",\"object\":\"text_completion\",\"created\":0,\"model\":\"%s\","
             "\"choices\":[{\"index\":0,\"text\":\" %s\",\"logprobs\":null,\"finish_reason\":%s}]}",
             c->req_id, c->model, word, fin);
  sse_event(c, ev);
}

static void finish_stream(stub_conn_t *c) {
  if (c->include_usage) {
    char ev[512];
    snprintf(ev, sizeof ev,
             "{\"id\":\"cmpl-%lld\",\"object\":\"%s\",\"created\":0,\"model\":\"%s\",\"choices\":[],"
             "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d}}",
             c->req_id, c->chat ? "chat.completion.chunk" : "text_completion", c->model, c->prompt_words, c->n_tokens,
             c->prompt_words + c->n_tokens);
    sse_event(c, ev);
  }
  sse_event(c, "[DONE]");
  bs_buf_puts(&c->out, "0\r\n\r\n");
}

static void finish_whole(stub_conn_t *c) {
  bs_buf_t t = {0}, b = {0};
  for (int k = 0; k < c->n_tokens; k++) bs_buf_printf(&t, " %s", bs_words[k % bs_n_words]);
  bs_buf_printf(&b, "{\"id\":\"cmpl-%lld\",\"object\":\"%s\",\"created\":0,\"model\":\"%s\",\"choices\":[{\"index\":0,",
                c->req_id, c->chat ? "chat.completion" : "text_completion", c->model);
  bs_buf_puts(&b, c->chat ? "\"message\":{\"role\":\"assistant\",\"content\":" : "\"text\":");
  bs_buf_json_str(&b, t.p ? t.p : "");
  bs_buf_printf(&b, "%s,\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,"
                    "\"total_tokens\":%d}}", c->chat ? "}" : "", c->prompt_words, c->n_tokens,
                c->prompt_words + c->n_tokens);
  reply(c, 200, "application/json", b.p);
  bs_buf_free(&t);
  bs_buf_free(&b);
}

/* Emits every token that is due; tokens are due at t0 + ttft + k * itl, so delays never drift. */
static void gen_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  stub_conn_t *c = w->data;
  double now = ev_now(loop);
  if (!c->stream) {
    finish_whole(c);
    c->active = 0;
    g_running--;
    conn_flush(c);
    return;
  }
  while (c->sent < c->n_tokens && c->t0 + c->ttft_s + c->sent * c->itl_s <= now + 1e-4) {
    if (c->sent == c->cut_at) { /* the chosen stream dies here, mid-response */
      c->closing = 1;
      conn_flush(c);
      return;
    }
    token_event(c, c->sent++);
  }
  if (c->sent == c->n_tokens) {
    finish_stream(c);
    c->active = 0;
    g_running--;
  } else {
    ev_timer_set(w, c->t0 + c->ttft_s + c->sent * c->itl_s - now, 0.);
    ev_timer_start(loop, w);
  }
  conn_flush(c);
}

static int rule(int every, long long id, int residue) { return every > 0 && id >= 0 && id % every == residue % every; }

static void generate(stub_conn_t *c, int chat) {
  cJSON *o = cJSON_Parse(c->body.p ? c->body.p : "");
  if (!cJSON_IsObject(o)) {
    reply(c, 400, "application/json", "{\"error\":{\"message\":\"body is not JSON\",\"type\":\"invalid_request_error\"}}");
    cJSON_Delete(o);
    return;
  }
  g_requests_total++;
  cJSON *mt = cJSON_GetObjectItemCaseSensitive(o, "max_tokens"), *st = cJSON_GetObjectItemCaseSensitive(o, "stream");
  cJSON *model = cJSON_GetObjectItemCaseSensitive(o, "model"), *so = cJSON_GetObjectItemCaseSensitive(o, "stream_options");
  c->chat = chat;
  c->stream = cJSON_IsTrue(st);
  c->include_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage"));
  c->n_tokens = cJSON_IsNumber(mt) && mt->valueint > 0 ? mt->valueint : 16;
  snprintf(c->model, sizeof c->model, "%s", cJSON_IsString(model) && !strpbrk(model->valuestring, "\"\\") ? model->valuestring : "stub");
  const char *prompt = "";
  cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "prompt"), *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages");
  if (cJSON_IsString(p)) prompt = p->valuestring;
  cJSON *m;
  cJSON_ArrayForEach(m, msgs) {
    cJSON *ct = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (cJSON_IsString(ct)) prompt = ct->valuestring;
  }
  c->prompt_words = count_words(prompt);
  prefix_account(prompt);
  cJSON_Delete(o);
  if (rule(g_cfg.fail_every, c->req_id, 1)) {
    reply(c, 500, "application/json", "{\"error\":{\"message\":\"injected failure\",\"type\":\"server_error\",\"code\":500}}");
    return;
  }
  int slow = rule(g_cfg.slow_every, c->req_id, 0);
  c->ttft_s = (slow ? g_cfg.slow_ttft_ms : g_cfg.ttft_ms) / 1000.0;
  c->itl_s = (slow ? g_cfg.slow_itl_ms : g_cfg.itl_ms) / 1000.0;
  c->cut_at = rule(g_cfg.cut_every, c->req_id, 2) && c->stream ? c->n_tokens / 2 : -1;
  c->sent = 0;
  c->t0 = ev_now(c->loop);
  c->active = 1;
  g_running++;
  if (c->stream)
    bs_buf_puts(&c->out, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n");
  double first = c->stream ? c->ttft_s : c->ttft_s + (c->n_tokens - 1) * c->itl_s;
  ev_timer_set(&c->gen, first, 0.);
  ev_timer_start(c->loop, &c->gen);
}

static void route(stub_conn_t *c) {
  const char *u = c->url.p ? c->url.p : "";
  int post = c->parser.method == HTTP_POST;
  if (!post && !strcmp(u, "/metrics")) metrics(c);
  else if (!post && !strcmp(u, "/health")) reply(c, 200, "text/plain", "ok\n");
  else if (!post && !strcmp(u, "/v1/models"))
    reply(c, 200, "application/json", "{\"object\":\"list\",\"data\":[{\"id\":\"stub\",\"object\":\"model\"}]}");
  else if (post && !strcmp(u, "/v1/completions")) generate(c, 0);
  else if (post && !strcmp(u, "/v1/chat/completions")) generate(c, 1);
  else reply(c, 404, "application/json", "{\"error\":{\"message\":\"not found\",\"type\":\"invalid_request_error\"}}");
}

static int on_url(http_parser *p, const char *at, size_t n) { return bs_buf_append(&((stub_conn_t *)p->data)->url, at, n) ? 1 : 0; }
static int on_body(http_parser *p, const char *at, size_t n) { return bs_buf_append(&((stub_conn_t *)p->data)->body, at, n) ? 1 : 0; }

static void header_done(stub_conn_t *c) {
  if (c->hdr_field.p && !strcasecmp(c->hdr_field.p, "x-request-id") && c->hdr_value.p) {
    char *end;
    long long v = strtoll(c->hdr_value.p, &end, 10);
    c->req_id = (end != c->hdr_value.p && !*end) ? v : -1;
  }
  c->hdr_field.len = c->hdr_value.len = 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n) {
  stub_conn_t *c = p->data;
  if (c->last_was_value) header_done(c);
  c->last_was_value = 0;
  return bs_buf_append(&c->hdr_field, at, n) ? 1 : 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
  stub_conn_t *c = p->data;
  c->last_was_value = 1;
  return bs_buf_append(&c->hdr_value, at, n) ? 1 : 0;
}

static int on_headers_complete(http_parser *p) {
  stub_conn_t *c = p->data;
  if (c->last_was_value) header_done(c);
  c->last_was_value = 0;
  return 0;
}

static int on_message_begin(http_parser *p) {
  stub_conn_t *c = p->data;
  c->url.len = c->body.len = 0;
  if (c->url.p) c->url.p[0] = 0;
  if (c->body.p) c->body.p[0] = 0;
  c->req_id = -1;
  return 0;
}

static int on_message_complete(http_parser *p) {
  ((stub_conn_t *)p->data)->req_done = 1;
  http_parser_pause(p, 1);
  return 0;
}

/* >0 bytes, 0 closed or broken, -1 nothing more for now. */
static ssize_t conn_recv(stub_conn_t *c, char *buf, size_t cap) {
  if (c->ssl) {
    int r = SSL_read(c->ssl, buf, (int)cap);
    if (r > 0) return r;
    int e = SSL_get_error(c->ssl, r);
    return (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) ? -1 : 0;
  }
  for (;;) {
    ssize_t n = recv(c->fd, buf, cap, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return -1;
    return n < 0 ? 0 : n;
  }
}

static void conn_cb(struct ev_loop *loop, ev_io *w, int revents) {
  stub_conn_t *c = w->data;
  if (revents & EV_WRITE) {
    if (conn_flush(c) < 0) return;
  }
  if (!(revents & EV_READ)) return;
  for (;;) { /* until the socket (and, with TLS, the record buffer) is drained */
    char buf[65536];
    ssize_t n = conn_recv(c, buf, sizeof buf);
    if (n < 0) return;
    if (n == 0) return conn_free(c);
    size_t off = 0;
    while (off < (size_t)n) {
      off += http_parser_execute(&c->parser, &g_settings, buf + off, (size_t)n - off);
      if (HTTP_PARSER_ERRNO(&c->parser) == HPE_PAUSED) http_parser_pause(&c->parser, 0);
      else if (HTTP_PARSER_ERRNO(&c->parser) != HPE_OK) return conn_free(c);
      if (c->req_done) {
        c->req_done = 0;
        if (c->active) return conn_free(c); /* no pipelining while a generation runs */
        route(c);
        if (conn_flush(c) < 0) return;
      }
    }
  }
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents) {
  for (;;) {
    int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    stub_conn_t *c = calloc(1, sizeof *c);
    if (!c) {
      close(fd);
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->loop = loop;
    c->fd = fd;
    if (g_ssl_ctx && (!(c->ssl = SSL_new(g_ssl_ctx)) || !SSL_set_fd(c->ssl, fd))) {
      if (c->ssl) SSL_free(c->ssl);
      close(fd);
      free(c);
      continue;
    }
    if (c->ssl) SSL_set_accept_state(c->ssl);
    c->req_id = -1;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    ev_io_init(&c->io, conn_cb, fd, EV_READ);
    ev_init(&c->gen, gen_cb);
    c->io.data = c->gen.data = c;
    ev_io_start(loop, &c->io);
  }
}

static void stop_cb(struct ev_loop *loop, ev_signal *w, int revents) { ev_break(loop, EVBREAK_ALL); }

static int parse_args(int argc, char **argv) {
  g_cfg = (stub_cfg_t){.host = "127.0.0.1", .ttft_ms = 50, .itl_ms = 10, .replicas = 1};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help")) return 1;
    if (!v) return -1;
    i++;
    if (!strcmp(a, "--host")) g_cfg.host = v;
    else if (!strcmp(a, "--port")) g_cfg.port = atoi(v);
    else if (!strcmp(a, "--ttft-ms")) g_cfg.ttft_ms = atof(v);
    else if (!strcmp(a, "--itl-ms")) g_cfg.itl_ms = atof(v);
    else if (!strcmp(a, "--slow-every")) g_cfg.slow_every = atoi(v);
    else if (!strcmp(a, "--slow-ttft-ms")) g_cfg.slow_ttft_ms = atof(v);
    else if (!strcmp(a, "--slow-itl-ms")) g_cfg.slow_itl_ms = atof(v);
    else if (!strcmp(a, "--fail-every")) g_cfg.fail_every = atoi(v);
    else if (!strcmp(a, "--cut-every")) g_cfg.cut_every = atoi(v);
    else if (!strcmp(a, "--replicas")) g_cfg.replicas = atoi(v);
    else if (!strcmp(a, "--tls-cert")) g_cfg.tls_cert = v;
    else if (!strcmp(a, "--tls-key")) g_cfg.tls_key = v;
    else return -1;
  }
  if (!g_cfg.slow_ttft_ms) g_cfg.slow_ttft_ms = g_cfg.ttft_ms;
  if (!g_cfg.slow_itl_ms) g_cfg.slow_itl_ms = g_cfg.itl_ms;
  return 0;
}

int main(int argc, char **argv) {
  int rc = parse_args(argc, argv);
  if (rc) {
    fprintf(rc > 0 ? stdout : stderr,
            "usage: strata-stub-server [--host A] [--port N (0: any; printed as 'PORT n')] [--ttft-ms X] [--itl-ms X]\n"
            "  [--slow-every K --slow-ttft-ms X --slow-itl-ms X] [--fail-every K] [--cut-every K] [--replicas N]\n"
            "  [--tls-cert PEM --tls-key PEM (serve HTTPS)]\n"
            "Rules on X-Request-Id n: slow if n%%K==0, HTTP 500 if n%%K==1%%K, stream cut if n%%K==2%%K.\n");
    return rc > 0 ? 0 : 2;
  }
  signal(SIGPIPE, SIG_IGN);
  if (g_cfg.tls_cert && g_cfg.tls_key) {
    g_ssl_ctx = SSL_CTX_new(TLS_server_method());
    if (!g_ssl_ctx || SSL_CTX_use_certificate_chain_file(g_ssl_ctx, g_cfg.tls_cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(g_ssl_ctx, g_cfg.tls_key, SSL_FILETYPE_PEM) != 1) {
      fprintf(stderr, "strata-stub-server: cannot load the TLS certificate %s or key %s\n", g_cfg.tls_cert, g_cfg.tls_key);
      return 1;
    }
    SSL_CTX_set_mode(g_ssl_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  }
  g_hashes = calloc(STUB_HASH_CAP, sizeof *g_hashes);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_cfg.port)};
  socklen_t sl = sizeof sa;
  if (!g_hashes || fd < 0 || inet_pton(AF_INET, g_cfg.host, &sa.sin_addr) != 1) {
    fprintf(stderr, "strata-stub-server: cannot set up a socket on %s\n", g_cfg.host);
    return 1;
  }
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4096) < 0 ||
      getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) {
    fprintf(stderr, "strata-stub-server: cannot listen on %s:%d: %s\n", g_cfg.host, g_cfg.port, strerror(errno));
    return 1;
  }
  printf("PORT %d\n", ntohs(sa.sin_port));
  fflush(stdout);
  g_settings.on_message_begin = on_message_begin;
  g_settings.on_url = on_url;
  g_settings.on_header_field = on_header_field;
  g_settings.on_header_value = on_header_value;
  g_settings.on_headers_complete = on_headers_complete;
  g_settings.on_body = on_body;
  g_settings.on_message_complete = on_message_complete;
  struct ev_loop *loop = EV_DEFAULT;
  ev_io lio;
  ev_signal sterm, sint;
  ev_io_init(&lio, accept_cb, fd, EV_READ);
  ev_signal_init(&sterm, stop_cb, SIGTERM);
  ev_signal_init(&sint, stop_cb, SIGINT);
  ev_io_start(loop, &lio);
  ev_signal_start(loop, &sterm);
  ev_signal_start(loop, &sint);
  ev_run(loop, 0);
  close(fd);
  free(g_hashes);
  if (g_ssl_ctx) SSL_CTX_free(g_ssl_ctx);
  return 0;
}
