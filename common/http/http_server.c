/* http_server.c: the listener and connections of the HTTP server: non-blocking sockets (optionally
 * TLS), buffered output, pipelining, timeouts and the request lifetime. */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/http/http_int.h"
#include "common/log.h"
#include "common/status.h"

enum {
  HTTP_READ_CHUNK = 16 * 1024,
  /* An empty output buffer larger than this is freed. */
  HTTP_OUT_KEEP_MAX = 256 * 1024,
  /* Pipelined bytes held while a request is in flight; past it reading pauses. */
  HTTP_IN_HOLD_MAX = 64 * 1024,
  HTTP_READS_PER_EVENT = 16,
  HTTP_ACCEPTS_PER_EVENT = 64,
  /* Connections past max_connections that are being answered 503. */
  HTTP_REJECT_SLACK = 64,
};
static const double HTTP_LINGER_S = 2.0;

enum { TIMER_NONE = 0, TIMER_IDLE, TIMER_READ, TIMER_WRITE, TIMER_LINGER, TIMER_DOOM };

/* The answer when even the 503 slack is used up: sent once, without waiting for the socket. */
#define BUSY_BODY "{\"error\":{\"message\":\"too many connections\",\"type\":\"server_error\"}}"
static const char BUSY_503[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                               "Content-Length: 66\r\nConnection: close\r\n\r\n" BUSY_BODY;
_Static_assert(sizeof(BUSY_BODY) - 1 == 66, "Content-Length of BUSY_503");

static void conn_process_input(http_conn_t *c);

/* ---------------------------------------------------------------- config */

void http_server_config_default(http_server_config_t *cfg) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->host = "127.0.0.1";
  cfg->max_connections = 1024;
  cfg->max_header_bytes = 32 * 1024;
  cfg->max_body_bytes = 8 * 1024 * 1024;
  cfg->max_output_bytes = 1024 * 1024;
  cfg->read_timeout_s = 30.0;
  cfg->idle_timeout_s = 60.0;
}

/* ---------------------------------------------------------------- connection teardown and timer */

static void conn_set_timer(http_conn_t *c, int kind, double after_s) {
  ev_timer_stop(c->srv->loop, &c->timer);
  c->timer_kind = kind;
  if (kind == TIMER_NONE) return;
  ev_timer_set(&c->timer, after_s, 0.);
  ev_timer_start(c->srv->loop, &c->timer);
}

/* conn_update_timer: picks the deadline for the connection's state. A deadline of the same kind is
 * kept (so a slow trickle of bytes cannot extend a read deadline), except that write progress
 * (PROGRESS) restarts a write deadline. */
static void conn_update_timer(http_conn_t *c, bool progress) {
  if (c->dead || c->lingering) return;
  const http_server_config_t *cfg = &c->srv->cfg;
  int kind;
  double t = 0;
  if (http_conn_out_pending(c) > 0)
    kind = TIMER_WRITE, t = cfg->read_timeout_s;
  else if (c->dispatched)
    kind = TIMER_NONE;
  else if (c->req || c->in_len > c->in_off)
    kind = TIMER_READ, t = cfg->read_timeout_s;
  else
    kind = TIMER_IDLE, t = cfg->idle_timeout_s;
  if (kind != c->timer_kind || (kind == TIMER_WRITE && progress)) conn_set_timer(c, kind, t);
}

static void conn_teardown(http_conn_t *c) {
  http_server_t *srv = c->srv;
  c->dead = true;
  ev_io_stop(srv->loop, &c->rio);
  ev_io_stop(srv->loop, &c->wio);
  ev_timer_stop(srv->loop, &c->timer);
  http_request_t *req = c->req;
  if (req && c->dispatched && req->resp_state != HTTP_RESP_DONE && req->on_close) {
    req->in_close_cb = true;
    req->on_close(req, req->close_data);
  }
  http_request_free(req);
  c->req = NULL;
  if (c->ssl) SSL_free(c->ssl);
  close(c->fd);
  if (c->prev)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  srv->n_conns--;
  free(c->in);
  free(c->out);
  free(c);
}

void http_conn_doom(http_conn_t *c) {
  if (c->dead) return;
  c->dead = true;
  ev_io_stop(c->srv->loop, &c->rio);
  ev_io_stop(c->srv->loop, &c->wio);
  c->reading = c->writing = false;
  conn_set_timer(c, TIMER_DOOM, 0.);
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  http_conn_t *c = w->data;
  if (c->timer_kind == TIMER_READ || c->timer_kind == TIMER_WRITE)
    log_debug("http: client %s timed out (%s); closing", c->peer,
              c->timer_kind == TIMER_READ ? "request not received in time" : "not reading the response");
  conn_teardown(c);
}

/* ---------------------------------------------------------------- socket I/O */

enum { IO_AGAIN = -1, IO_EOF = -2, IO_ERROR = -3 };

static void conn_start_reading(http_conn_t *c) {
  if (!c->reading && !c->dead) {
    ev_io_start(c->srv->loop, &c->rio);
    c->reading = true;
  }
}

static void conn_stop_reading(http_conn_t *c) {
  if (c->reading) {
    ev_io_stop(c->srv->loop, &c->rio);
    c->reading = false;
  }
}

static void conn_start_writing(http_conn_t *c) {
  if (!c->writing && !c->dead) {
    ev_io_start(c->srv->loop, &c->wio);
    c->writing = true;
  }
}

/* ssl_result: maps an SSL_read/SSL_write failure to IO_*, noting which readiness it waits for. */
static long ssl_result(http_conn_t *c, int n, bool reading) {
  int e = SSL_get_error(c->ssl, n);
  if (e == SSL_ERROR_WANT_READ) {
    if (!reading) c->ssl_write_wants_read = true, conn_start_reading(c);
    return IO_AGAIN;
  }
  if (e == SSL_ERROR_WANT_WRITE) {
    if (reading) c->ssl_read_wants_write = true, conn_start_writing(c);
    return IO_AGAIN;
  }
  if (e == SSL_ERROR_ZERO_RETURN) return IO_EOF;
  if (e == SSL_ERROR_SSL) {
    char msg[160];
    ERR_error_string_n(ERR_peek_last_error(), msg, sizeof(msg));
    log_debug("http: TLS error with client %s: %s", c->peer, msg);
  }
  ERR_clear_error();
  return IO_ERROR;
}

static long conn_recv(http_conn_t *c, char *buf, size_t len) {
  if (c->ssl) {
    ERR_clear_error();
    int n = SSL_read(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    return n > 0 ? n : ssl_result(c, n, true);
  }
  ssize_t n = recv(c->fd, buf, len, 0);
  if (n > 0) return n;
  if (n == 0) return IO_EOF;
  return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? IO_AGAIN : IO_ERROR;
}

static long conn_send(http_conn_t *c, const char *buf, size_t len) {
  if (c->ssl) {
    ERR_clear_error();
    int n = SSL_write(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    return n > 0 ? n : ssl_result(c, n, false);
  }
  ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
  if (n >= 0) return n;
  return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? IO_AGAIN : IO_ERROR;
}

size_t http_conn_out_pending(const http_conn_t *c) { return c->out_len - c->out_off; }

int http_conn_append(http_conn_t *c, const void *data, size_t len) {
  if (c->out_off > 0 && c->out_off == c->out_len) c->out_off = c->out_len = 0;
  if (c->out_len + len > c->out_cap) {
    /* Compacting moves unsent bytes; SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER allows it under TLS. */
    if (c->out_off > 0) {
      memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
      c->out_len -= c->out_off;
      c->out_off = 0;
    }
    if (c->out_len + len > c->out_cap) {
      size_t cap = c->out_cap ? c->out_cap : 4096;
      while (cap < c->out_len + len) cap *= 2;
      char *o = realloc(c->out, cap);
      if (!o) return STRATA_ENOMEM;
      c->out = o;
      c->out_cap = cap;
    }
  }
  memcpy(c->out + c->out_len, data, len);
  c->out_len += len;
  return 0;
}

/* conn_finish_close: all output is out and no more requests will be served. For plain TCP the
 * write side is shut and input drained for a moment, so that a client still sending (e.g. the
 * body we refused with 413) reads our response instead of a reset. */
static void conn_finish_close(http_conn_t *c) {
  if (c->ssl) {
    ERR_clear_error();
    SSL_shutdown(c->ssl);
    http_conn_doom(c);
    return;
  }
  if (shutdown(c->fd, SHUT_WR) != 0) {
    http_conn_doom(c);
    return;
  }
  c->lingering = true;
  conn_start_reading(c);
  conn_set_timer(c, TIMER_LINGER, HTTP_LINGER_S);
}

int http_conn_flush(http_conn_t *c) {
  if (c->dead) return STRATA_ECLOSED;
  bool progress = false;
  while (c->out_off < c->out_len) {
    long n = conn_send(c, c->out + c->out_off, c->out_len - c->out_off);
    if (n > 0) {
      c->out_off += (size_t)n;
      progress = true;
      continue;
    }
    if (n == IO_AGAIN) {
      if (!c->ssl_write_wants_read) conn_start_writing(c);
      break;
    }
    log_debug("http: writing to client %s failed (%s); closing", c->peer, c->ssl ? "TLS" : strerror(errno));
    http_conn_doom(c);
    return STRATA_ECLOSED;
  }
  if (c->out_off == c->out_len) {
    c->out_off = c->out_len = 0;
    if (c->out_cap > HTTP_OUT_KEEP_MAX) { /* a big response is out: do not keep its buffer */
      free(c->out);
      c->out = NULL;
      c->out_cap = 0;
    }
    if (c->writing && !c->ssl_read_wants_write) {
      ev_io_stop(c->srv->loop, &c->wio);
      c->writing = false;
    }
    if (c->closing && !c->lingering) {
      conn_finish_close(c);
      return 0;
    }
  }
  conn_update_timer(c, progress);
  return 0;
}

/* ---------------------------------------------------------------- requests on a connection */

void http_conn_request_done(http_conn_t *c) {
  http_request_t *req = c->req;
  bool keep_alive = req && req->keep_alive;
  http_request_free(req);
  c->req = NULL;
  c->dispatched = false;
  if (c->dead) return;
  if (!keep_alive) {
    c->closing = true;
    conn_stop_reading(c);
    http_conn_flush(c);
    return;
  }
  conn_update_timer(c, false);
  /* Parse any pipelined request from the loop, not from inside the caller's respond call. */
  if (!c->processing) {
    conn_start_reading(c);
    ev_feed_event(c->srv->loop, &c->rio, EV_READ);
  }
}

void http_conn_send_error(http_conn_t *c, int status) {
  http_request_free(c->req);
  c->req = NULL;
  c->closing = true;
  conn_stop_reading(c);
  const char *reason = http_status_reason(status);
  char buf[512];
  char body[160];
  int bn = snprintf(body, sizeof(body), "{\"error\":{\"message\":\"%s\",\"type\":\"invalid_request_error\"}}", reason);
  int n = snprintf(buf, sizeof(buf),
                   "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                   "Connection: close\r\n\r\n%s",
                   status, reason, bn, body);
  if (http_conn_append(c, buf, (size_t)n)) {
    http_conn_doom(c);
    return;
  }
  http_conn_flush(c);
}

/* conn_process_input: parses buffered input until a request is complete and dispatches it. The
 * handler may respond inside on_request; then the loop goes on with pipelined bytes. */
static void conn_process_input(http_conn_t *c) {
  if (c->processing) return;
  c->processing = true;
  http_server_t *srv = c->srv;
  while (!c->dead && !c->closing && !c->dispatched && c->in_off < c->in_len) {
    size_t avail = c->in_len - c->in_off;
    size_t n = http_parser_execute(&c->parser, &srv->settings, c->in + c->in_off, avail);
    c->in_off += n;
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e == HPE_PAUSED) {
      /* a whole request: a fresh parser for the next one (this also clears the pause) */
      http_parser_init(&c->parser, HTTP_REQUEST);
      c->parser.data = c;
      c->dispatched = true;
      conn_update_timer(c, false);
      srv->cfg.on_request(c->req, srv->cfg.data);
      continue; /* the request may already be gone; only C is used from here */
    }
    if (e != HPE_OK || n < avail) {
      int status = c->err_status ? c->err_status : e == HPE_HEADER_OVERFLOW ? 431 : 400;
      log_debug("http: bad request from %s (%s); answering %d", c->peer, http_errno_name(e), status);
      http_conn_send_error(c, status);
      break;
    }
  }
  c->processing = false;
  if (c->in_off == c->in_len) c->in_off = c->in_len = 0;
}

/* conn_linger_read: discards input until EOF after the final response. */
static void conn_linger_read(http_conn_t *c) {
  char scratch[4096];
  for (int i = 0; i < HTTP_READS_PER_EVENT; i++) {
    long n = conn_recv(c, scratch, sizeof(scratch));
    if (n == IO_AGAIN) return;
    if (n < 0) {
      http_conn_doom(c);
      return;
    }
  }
}

static int conn_in_reserve(http_conn_t *c) {
  if (c->in_off > 0 && c->in_cap - c->in_len < HTTP_READ_CHUNK) {
    memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
    c->in_len -= c->in_off;
    c->in_off = 0;
  }
  if (c->in_cap - c->in_len >= HTTP_READ_CHUNK) return 0;
  size_t cap = c->in_cap ? c->in_cap * 2 : HTTP_READ_CHUNK;
  while (cap - c->in_len < HTTP_READ_CHUNK) cap *= 2;
  char *b = realloc(c->in, cap);
  if (!b) return STRATA_ENOMEM;
  c->in = b;
  c->in_cap = cap;
  return 0;
}

static void conn_read_cb(struct ev_loop *loop, ev_io *w, int revents) {
  http_conn_t *c = w->data;
  if (c->ssl_write_wants_read) {
    c->ssl_write_wants_read = false;
    if (http_conn_flush(c)) return;
  }
  if (c->lingering) {
    conn_linger_read(c);
    return;
  }
  conn_process_input(c); /* pipelined bytes already here */
  for (int i = 0; i < HTTP_READS_PER_EVENT && !c->dead && !c->closing; i++) {
    if (c->in_len - c->in_off >= HTTP_IN_HOLD_MAX) {
      conn_stop_reading(c); /* resumed when the request in flight ends */
      break;
    }
    if (conn_in_reserve(c)) {
      log_error("http: out of memory reading from client %s; closing", c->peer);
      http_conn_doom(c);
      return;
    }
    long n = conn_recv(c, c->in + c->in_len, c->in_cap - c->in_len);
    if (n == IO_AGAIN) break;
    if (n < 0) {
      /* EOF or error: a request in flight is canceled through its close callback */
      http_conn_doom(c);
      return;
    }
    c->in_len += (size_t)n;
    conn_process_input(c);
  }
  /* Decrypted bytes OpenSSL still holds would not wake the socket watcher. */
  if (c->ssl && c->reading && !c->dead && SSL_pending(c->ssl) > 0) ev_feed_event(loop, &c->rio, EV_READ);
  conn_update_timer(c, false);
}

static void conn_check_drain(http_conn_t *c) {
  http_request_t *req = c->req;
  if (!req || !c->dispatched || !req->want_drain || c->dead) return;
  if (http_conn_out_pending(c) > c->srv->cfg.max_output_bytes / 2) return;
  req->want_drain = false;
  if (req->on_drain) req->on_drain(req, req->drain_data); /* may end the request */
}

static void conn_write_cb(struct ev_loop *loop, ev_io *w, int revents) {
  http_conn_t *c = w->data;
  if (c->ssl_read_wants_write) {
    c->ssl_read_wants_write = false;
    conn_start_reading(c);
    ev_feed_event(loop, &c->rio, EV_READ);
  }
  if (http_conn_flush(c)) return;
  if (c->out_off == c->out_len && c->writing) {
    ev_io_stop(loop, &c->wio);
    c->writing = false;
  }
  conn_check_drain(c);
}

/* ---------------------------------------------------------------- accepting */

static http_conn_t *conn_new(http_server_t *srv, int fd, const struct sockaddr_storage *addr) {
  http_conn_t *c = calloc(1, sizeof(*c));
  if (!c) {
    log_error("http: out of memory accepting a connection");
    close(fd);
    return NULL;
  }
  c->srv = srv;
  c->fd = fd;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (addr->ss_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)addr)->sin_addr, c->peer, sizeof(c->peer));
  else if (addr->ss_family == AF_INET6)
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)addr)->sin6_addr, c->peer, sizeof(c->peer));
  if (srv->ssl_ctx) {
    c->ssl = SSL_new(srv->ssl_ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) {
      log_error("http: cannot start TLS for client %s (out of memory?)", c->peer);
      if (c->ssl) SSL_free(c->ssl);
      close(fd);
      free(c);
      return NULL;
    }
    SSL_set_accept_state(c->ssl);
  }
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  ev_io_init(&c->rio, conn_read_cb, fd, EV_READ);
  ev_io_init(&c->wio, conn_write_cb, fd, EV_WRITE);
  ev_init(&c->timer, conn_timer_cb);
  c->rio.data = c->wio.data = c->timer.data = c;
  c->next = srv->conns;
  if (srv->conns) srv->conns->prev = c;
  srv->conns = c;
  srv->n_conns++;
  conn_start_reading(c);
  conn_update_timer(c, false);
  return c;
}

static void server_accept_cb(struct ev_loop *loop, ev_io *w, int revents) {
  http_server_t *srv = w->data;
  for (int i = 0; i < HTTP_ACCEPTS_PER_EVENT; i++) {
    struct sockaddr_storage addr;
    socklen_t alen = sizeof(addr);
    int fd = accept4(srv->fd, (struct sockaddr *)&addr, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE) {
        /* NOTE: the listener is level-triggered; pause it briefly instead of spinning. */
        log_warn("http: out of file descriptors (%s); pausing accept for 100 ms", strerror(errno));
        ev_io_stop(loop, &srv->lio);
        ev_timer_set(&srv->accept_pause, 0.1, 0.);
        ev_timer_start(loop, &srv->accept_pause);
      }
      return; /* EAGAIN, or a client that went away (ECONNABORTED) */
    }
    if (srv->n_conns >= srv->cfg.max_connections + HTTP_REJECT_SLACK) {
      (void)!send(fd, BUSY_503, sizeof(BUSY_503) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      close(fd);
      continue;
    }
    http_conn_t *c = conn_new(srv, fd, &addr);
    /* NOTE: past the limit a client still gets a proper 503 (with the lingering close that keeps
     * it from being reset), up to HTTP_REJECT_SLACK such at a time; beyond that a bare one. */
    if (c && srv->n_conns > srv->cfg.max_connections) {
      log_debug("http: %d connections open; answering %s with 503", srv->n_conns - 1, c->peer);
      http_conn_send_error(c, 503);
    }
  }
}

static void server_accept_resume_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  http_server_t *srv = w->data;
  ev_io_start(loop, &srv->lio);
}

/* ---------------------------------------------------------------- the server */

static int server_tls_init(http_server_t *srv, const http_server_config_t *cfg) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) {
    log_error("http: cannot create a TLS context (OpenSSL out of memory?)");
    return STRATA_ENOMEM;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  char msg[200];
  if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert_file) != 1) {
    ERR_error_string_n(ERR_get_error(), msg, sizeof(msg));
    log_error("http: cannot load TLS certificate '%s': %s", cfg->tls_cert_file, msg);
    goto fail;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key_file, SSL_FILETYPE_PEM) != 1) {
    ERR_error_string_n(ERR_get_error(), msg, sizeof(msg));
    log_error("http: cannot load TLS key '%s': %s", cfg->tls_key_file, msg);
    goto fail;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    log_error("http: TLS key '%s' does not match certificate '%s'", cfg->tls_key_file, cfg->tls_cert_file);
    goto fail;
  }
  srv->ssl_ctx = ctx;
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
  return 0;
fail:
  ERR_clear_error();
  SSL_CTX_free(ctx);
  return STRATA_EIO;
}

static int server_listen(http_server_t *srv, const char *host, int port) {
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  char port_s[16];
  snprintf(port_s, sizeof(port_s), "%d", port);
  int gai = getaddrinfo(host, port_s, &hints, &res);
  if (gai != 0) {
    log_error("http: cannot resolve listen address '%s': %s", host, gai_strerror(gai));
    return STRATA_EIO;
  }
  int fd = -1, err = 0;
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 511) == 0) break;
    err = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) {
    log_error("http: cannot listen on %s:%d: %s", host, port, strerror(err));
    return STRATA_EIO;
  }
  struct sockaddr_storage ss;
  socklen_t sl = sizeof(ss);
  getsockname(fd, (struct sockaddr *)&ss, &sl);
  srv->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
  srv->fd = fd;
  return 0;
}

static int config_check(const http_server_config_t *cfg) {
  const char *why = NULL;
  if (!cfg || !cfg->on_request)
    why = "on_request is required";
  else if (cfg->port < 0 || cfg->port > 65535)
    why = "port must be 0..65535";
  else if (cfg->max_connections < 1 || cfg->max_header_bytes < 64 || cfg->max_output_bytes < 1)
    why = "max_connections, max_header_bytes (>= 64) and max_output_bytes must be positive";
  else if (!(cfg->read_timeout_s > 0) || !(cfg->idle_timeout_s > 0))
    why = "timeouts must be positive";
  else if (!cfg->tls_cert_file != !cfg->tls_key_file)
    why = "TLS needs both tls_cert_file and tls_key_file";
  if (why) log_error("http: bad server config: %s", why);
  return why ? STRATA_EINVAL : 0;
}

int http_server_new(struct ev_loop *loop, const http_server_config_t *cfg, http_server_t **out) {
  *out = NULL;
  int rc = config_check(cfg);
  if (rc) return rc;
  http_server_t *srv = calloc(1, sizeof(*srv));
  if (!srv) return STRATA_ENOMEM;
  srv->loop = loop;
  srv->fd = -1;
  srv->cfg = *cfg;
  srv->cfg.host = NULL;
  srv->cfg.tls_cert_file = srv->cfg.tls_key_file = NULL;
  http_parser_settings_fill(&srv->settings);
  if (cfg->tls_cert_file && (rc = server_tls_init(srv, cfg))) goto fail;
  if ((rc = server_listen(srv, cfg->host ? cfg->host : "127.0.0.1", cfg->port))) goto fail;
  ev_io_init(&srv->lio, server_accept_cb, srv->fd, EV_READ);
  srv->lio.data = srv;
  ev_init(&srv->accept_pause, server_accept_resume_cb);
  srv->accept_pause.data = srv;
  ev_io_start(loop, &srv->lio);
  *out = srv;
  return 0;
fail:
  SSL_CTX_free(srv->ssl_ctx);
  free(srv);
  return rc;
}

int http_server_port(const http_server_t *srv) { return srv->port; }
int http_server_n_connections(const http_server_t *srv) { return srv->n_conns; }

void http_server_free(http_server_t *srv) {
  if (!srv) return;
  ev_io_stop(srv->loop, &srv->lio);
  ev_timer_stop(srv->loop, &srv->accept_pause);
  close(srv->fd);
  while (srv->conns) conn_teardown(srv->conns);
  SSL_CTX_free(srv->ssl_ctx);
  free(srv);
}
