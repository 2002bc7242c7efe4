/* http_request.c: http-parser callbacks that build a request, its accessors, responses and helpers. */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/http/http_int.h"
#include "common/log.h"
#include "common/status.h"

enum { HTTP_MAX_HEADERS = 256, HTTP_BODY_PREALLOC = 64 * 1024 };

static const char *const CONTINUE_100 = "HTTP/1.1 100 Continue\r\n\r\n";

/* ---------------------------------------------------------------- building a request (parser) */

static http_conn_t *parser_conn(http_parser *p) { return (http_conn_t *)p->data; }

/* head_put: appends to the head buffer, which holds url\0 name\0 value\0 ... */
static int head_put(http_request_t *r, const char *data, size_t len) {
  if (r->head_len + len + 1 > r->head_cap) {
    size_t cap = r->head_cap ? r->head_cap : 512;
    while (cap < r->head_len + len + 1) cap *= 2;
    char *h = realloc(r->head, cap);
    if (!h) return -1;
    r->head = h;
    r->head_cap = cap;
  }
  memcpy(r->head + r->head_len, data, len);
  r->head_len += len;
  return 0;
}

static int head_end_string(http_request_t *r) { return head_put(r, "", 1); }

/* head_count: charges LEN raw bytes against max_header_bytes; 431 past it. */
static int head_count(http_conn_t *c, size_t len) {
  c->req->head_bytes += len;
  if (c->req->head_bytes > c->srv->cfg.max_header_bytes) {
    c->err_status = 431;
    return -1;
  }
  return 0;
}

static int on_message_begin(http_parser *p) {
  http_conn_t *c = parser_conn(p);
  if (c->req) http_request_free(c->req); /* cannot happen: one message at a time */
  c->req = calloc(1, sizeof(*c->req));
  if (!c->req) {
    c->err_status = 503;
    return -1;
  }
  c->req->conn = c;
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  http_conn_t *c = parser_conn(p);
  if (head_count(c, len)) return -1;
  c->req->parse_state = HTTP_PARSE_URL;
  return head_put(c->req, at, len);
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
  http_conn_t *c = parser_conn(p);
  http_request_t *r = c->req;
  if (head_count(c, len)) return -1;
  if (r->parse_state == HTTP_PARSE_BODY) return 0; /* chunked trailers: counted, not kept */
  if (r->parse_state != HTTP_PARSE_FIELD) {
    if (r->n_hdrs == HTTP_MAX_HEADERS) {
      c->err_status = 431;
      return -1;
    }
    if (head_end_string(r)) return -1; /* ends the url or the previous value */
    if (r->n_hdrs == r->hdrs_cap) {
      size_t cap = r->hdrs_cap ? r->hdrs_cap * 2 : 16;
      http_header_t *h = realloc(r->hdrs, cap * sizeof(*h));
      if (!h) return -1;
      r->hdrs = h;
      r->hdrs_cap = cap;
    }
    r->hdrs[r->n_hdrs].name_off = (uint32_t)r->head_len;
    r->hdrs[r->n_hdrs].value_off = 0;
    r->n_hdrs++;
    r->parse_state = HTTP_PARSE_FIELD;
  }
  return head_put(r, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  http_conn_t *c = parser_conn(p);
  http_request_t *r = c->req;
  if (head_count(c, len)) return -1;
  if (r->parse_state == HTTP_PARSE_BODY) return 0;
  if (r->parse_state != HTTP_PARSE_VALUE) {
    if (r->parse_state != HTTP_PARSE_FIELD || head_end_string(r)) return -1;
    r->hdrs[r->n_hdrs - 1].value_off = (uint32_t)r->head_len;
    r->parse_state = HTTP_PARSE_VALUE;
  }
  return head_put(r, at, len);
}

/* finish_head: NUL-terminates the last string, trims values and splits the target. */
static int finish_head(http_conn_t *c, http_parser *p) {
  http_request_t *r = c->req;
  if (r->parse_state == HTTP_PARSE_FIELD) return -1; /* a name without a value */
  if (head_end_string(r)) return -1;
  for (size_t i = 0; i < r->n_hdrs; i++) {
    if (r->hdrs[i].value_off == 0) r->hdrs[i].value_off = (uint32_t)r->head_len - 1; /* "" */
    char *v = r->head + r->hdrs[i].value_off;
    size_t n = strlen(v);
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t')) v[--n] = '\0';
  }
  const char *url = r->head + r->url_off;
  size_t url_len = strlen(url);
  const char *path = "*", *query = "";
  size_t path_len = 1, query_len = 0;
  if (strcmp(url, "*") != 0) {
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, url_len, p->method == HTTP_CONNECT, &u)) return -1;
    path = "/";
    if (u.field_set & (1 << UF_PATH)) {
      path = url + u.field_data[UF_PATH].off;
      path_len = u.field_data[UF_PATH].len;
    }
    if (u.field_set & (1 << UF_QUERY)) {
      query = url + u.field_data[UF_QUERY].off;
      query_len = u.field_data[UF_QUERY].len;
    }
  }
  r->path = malloc(path_len + query_len + 2);
  if (!r->path) return -1;
  memcpy(r->path, path, path_len);
  r->path[path_len] = '\0';
  r->query = r->path + path_len + 1;
  memcpy(r->query, query, query_len);
  r->query[query_len] = '\0';
  return 0;
}

static int on_headers_complete(http_parser *p) {
  http_conn_t *c = parser_conn(p);
  http_request_t *r = c->req;
  if (finish_head(c, p)) return -1;
  r->parse_state = HTTP_PARSE_BODY;
  r->method = p->method;
  r->version = p->http_major * 10 + p->http_minor;
  r->head_only = p->method == HTTP_HEAD;
  bool has_len = (p->flags & F_CONTENTLENGTH) != 0;
  bool chunked = (p->flags & F_CHUNKED) != 0;
  /* NOTE: 413 goes out now, before the body is read (and before any 100 Continue). */
  if (has_len && p->content_length > c->srv->cfg.max_body_bytes) {
    c->err_status = 413;
    return -1;
  }
  if (has_len && p->content_length > 0) {
    /* NOTE: capped, so that a declared length alone cannot make us allocate max_body_bytes. */
    size_t cap = p->content_length < HTTP_BODY_PREALLOC ? (size_t)p->content_length + 1 : HTTP_BODY_PREALLOC;
    r->body = malloc(cap);
    if (!r->body) {
      c->err_status = 503;
      return -1;
    }
    r->body_cap = cap;
  }
  const char *expect = http_request_header(r, "expect");
  if (expect && strcasecmp(expect, "100-continue") == 0 && r->version >= 11 &&
      (chunked || (has_len && p->content_length > 0))) {
    if (http_conn_append(c, CONTINUE_100, strlen(CONTINUE_100))) return -1;
    http_conn_flush(c); /* a dead connection is torn down by the loop */
  }
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  http_conn_t *c = parser_conn(p);
  http_request_t *r = c->req;
  if (len > c->srv->cfg.max_body_bytes - r->body_len) {
    c->err_status = 413;
    return -1;
  }
  if (r->body_len + len + 1 > r->body_cap) {
    size_t cap = r->body_cap ? r->body_cap : 1024;
    while (cap < r->body_len + len + 1) cap *= 2;
    char *b = realloc(r->body, cap);
    if (!b) {
      c->err_status = 503;
      return -1;
    }
    r->body = b;
    r->body_cap = cap;
  }
  memcpy(r->body + r->body_len, at, len);
  r->body_len += len;
  r->body[r->body_len] = '\0';
  return 0;
}

static int on_message_complete(http_parser *p) {
  http_conn_t *c = parser_conn(p);
  c->req->keep_alive = http_should_keep_alive(p) != 0;
  /* NOTE: pausing leaves any pipelined bytes unparsed until this request's response has ended. */
  http_parser_pause(p, 1);
  return 0;
}

void http_parser_settings_fill(http_parser_settings *s) {
  http_parser_settings_init(s);
  s->on_message_begin = on_message_begin;
  s->on_url = on_url;
  s->on_header_field = on_header_field;
  s->on_header_value = on_header_value;
  s->on_headers_complete = on_headers_complete;
  s->on_body = on_body;
  s->on_message_complete = on_message_complete;
}

void http_request_free(http_request_t *req) {
  if (!req) return;
  free(req->head);
  free(req->hdrs);
  free(req->path);
  free(req->body);
  free(req);
}

/* ---------------------------------------------------------------- accessors */

const char *http_request_method(const http_request_t *req) {
  return http_method_str((enum http_method)req->method);
}
const char *http_request_path(const http_request_t *req) { return req->path ? req->path : "/"; }
const char *http_request_query(const http_request_t *req) { return req->query ? req->query : ""; }
const char *http_request_target(const http_request_t *req) { return req->head + req->url_off; }
int http_request_version(const http_request_t *req) { return req->version; }
size_t http_request_n_headers(const http_request_t *req) { return req->n_hdrs; }
const char *http_request_peer(const http_request_t *req) { return req->conn->peer; }
void http_request_set_data(http_request_t *req, void *data) { req->data = data; }
void *http_request_data(const http_request_t *req) { return req->data; }

const char *http_request_header(const http_request_t *req, const char *name) {
  for (size_t i = 0; i < req->n_hdrs; i++)
    if (strcasecmp(req->head + req->hdrs[i].name_off, name) == 0) return req->head + req->hdrs[i].value_off;
  return NULL;
}

int http_request_header_at(const http_request_t *req, size_t i, const char **name, const char **value) {
  if (i >= req->n_hdrs) return STRATA_ERANGE;
  *name = req->head + req->hdrs[i].name_off;
  *value = req->head + req->hdrs[i].value_off;
  return 0;
}

const char *http_request_body(const http_request_t *req, size_t *len) {
  if (len) *len = req->body_len;
  return req->body ? req->body : "";
}

void http_request_on_close(http_request_t *req, http_close_cb cb, void *data) {
  req->on_close = cb;
  req->close_data = data;
}

void http_request_on_drain(http_request_t *req, http_drain_cb cb, void *data) {
  req->on_drain = cb;
  req->drain_data = data;
}

static int hex_value(int ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* pct_decode: percent-decodes S[0..N) ('+' is a space) into OUT (CAP bytes, NUL-terminated).
 * Returns the length, STRATA_ERANGE or STRATA_EFORMAT. */
static int pct_decode(const char *s, size_t n, char *out, size_t cap) {
  if (cap == 0) return STRATA_ERANGE;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    int ch = (unsigned char)s[i];
    if (ch == '+') {
      ch = ' ';
    } else if (ch == '%') {
      if (i + 2 >= n) return STRATA_EFORMAT;
      int hi = hex_value((unsigned char)s[i + 1]), lo = hex_value((unsigned char)s[i + 2]);
      if (hi < 0 || lo < 0) return STRATA_EFORMAT;
      ch = hi * 16 + lo;
      i += 2;
    }
    if (o + 1 >= cap) return STRATA_ERANGE;
    out[o++] = (char)ch;
  }
  out[o] = '\0';
  return (int)o;
}

int http_request_query_param(const http_request_t *req, const char *name, char *out, size_t cap) {
  const char *q = http_request_query(req);
  size_t want = strlen(name);
  while (*q) {
    size_t part = strcspn(q, "&");
    size_t key_len = strcspn(q, "=");
    if (key_len > part) key_len = part;
    /* decode the key into a scratch buffer (keys may be escaped too) */
    char *key = malloc(key_len + 1);
    if (!key) return STRATA_ENOMEM;
    int kn = pct_decode(q, key_len, key, key_len + 1);
    bool match = kn >= 0 && (size_t)kn == want && memcmp(key, name, want) == 0;
    free(key);
    if (match) {
      const char *v = key_len < part ? q + key_len + 1 : q + part;
      size_t v_len = key_len < part ? part - key_len - 1 : 0;
      return pct_decode(v, v_len, out, cap);
    }
    q += part;
    if (*q == '&') q++;
  }
  return STRATA_ENOTFOUND;
}

const char *http_request_bearer(const http_request_t *req) {
  const char *v = http_request_header(req, "authorization");
  if (!v || strncasecmp(v, "bearer", 6) != 0 || (v[6] != ' ' && v[6] != '\t')) return NULL;
  v += 6;
  while (*v == ' ' || *v == '\t') v++;
  return *v ? v : NULL;
}

/* ---------------------------------------------------------------- responses */

const char *http_status_reason(int status) {
  const char *s = http_status_str((enum http_status)status);
  return (!s || s[0] == '<') ? "Unknown" : s;
}

/* header_text_ok: CR and LF only as "\r\n" line ends, no empty line, ends with "\r\n". */
static bool header_text_ok(const char *h) {
  if (!h || !*h) return true;
  size_t n = strlen(h);
  if (n < 2 || h[n - 2] != '\r' || h[n - 1] != '\n' || h[0] == '\r') return false;
  for (size_t i = 0; i < n; i++) {
    if (h[i] == '\r' && (h[i + 1] != '\n' || h[i + 2] == '\r')) return false;
    if (h[i] == '\n' && (i == 0 || h[i - 1] != '\r')) return false;
  }
  return true;
}

static bool value_ok(const char *v) { return !v || strpbrk(v, "\r\n") == NULL; }

static bool status_has_body(int status) { return !(status == 204 || status == 304); }

/* queue_head: the status line and headers. BODY_LEN < 0 means a streamed body. */
static int queue_head(http_request_t *r, int status, const char *ctype, const char *extra, long long body_len) {
  http_conn_t *c = r->conn;
  char line[384];
  int n = snprintf(line, sizeof(line), "HTTP/1.1 %d %s\r\n", status, http_status_reason(status));
  int rc = http_conn_append(c, line, (size_t)n);
  if (!rc && ctype) {
    n = snprintf(line, sizeof(line), "Content-Type: ");
    rc = http_conn_append(c, line, (size_t)n);
    if (!rc) rc = http_conn_append(c, ctype, strlen(ctype));
    if (!rc) rc = http_conn_append(c, "\r\n", 2);
  }
  n = 0;
  if (!status_has_body(status))
    n = 0;
  else if (body_len >= 0)
    n = snprintf(line, sizeof(line), "Content-Length: %lld\r\n", body_len);
  else if (r->chunked)
    n = snprintf(line, sizeof(line), "Transfer-Encoding: chunked\r\n");
  if (!rc && n) rc = http_conn_append(c, line, (size_t)n);
  const char *conn_hdr = !r->keep_alive ? "Connection: close\r\n" : r->version < 11 ? "Connection: keep-alive\r\n" : "";
  if (!rc && *conn_hdr) rc = http_conn_append(c, conn_hdr, strlen(conn_hdr));
  if (!rc && extra && *extra) rc = http_conn_append(c, extra, strlen(extra));
  if (!rc) rc = http_conn_append(c, "\r\n", 2);
  return rc;
}

/* end_response: the response is over; the request is freed here (or by the teardown that is due). */
static int end_response(http_request_t *r, int rc) {
  http_conn_t *c = r->conn;
  r->resp_state = HTTP_RESP_DONE;
  http_conn_request_done(c);
  return rc;
}

static bool args_ok(int status, const char *ctype, const char *extra) {
  return status >= 200 && status <= 999 && value_ok(ctype) && header_text_ok(extra);
}

int http_respond(http_request_t *req, int status, const char *content_type, const char *extra_headers,
                 const void *body, size_t len) {
  if (!req) return STRATA_EINVAL;
  if (req->in_close_cb) return STRATA_ECLOSED;
  http_conn_t *c = req->conn;
  if (c->dead) return end_response(req, STRATA_ECLOSED);
  if (req->resp_state != HTTP_RESP_NONE) {
    log_error("http: respond on %s %s after the stream began; closing the connection",
              http_request_method(req), req->path);
    req->keep_alive = false;
    return end_response(req, STRATA_EINVAL);
  }
  int rc = 0;
  if (!args_ok(status, content_type, extra_headers) || (len > 0 && !body)) {
    log_error("http: bad response to %s %s (status %d or header text with stray CR/LF); sending 500",
              http_request_method(req), req->path, status);
    static const char msg[] = "{\"error\":{\"message\":\"internal error\",\"type\":\"server_error\"}}";
    status = 500, content_type = "application/json", extra_headers = NULL, body = msg, len = strlen(msg);
    rc = STRATA_EINVAL;
  }
  bool with_body = status_has_body(status) && !req->head_only;
  int qrc = queue_head(req, status, content_type, extra_headers, status_has_body(status) ? (long long)len : -1);
  if (!qrc && with_body && len) qrc = http_conn_append(c, body, len);
  if (qrc) {
    log_error("http: out of memory queueing a %zu-byte response; closing the connection", len);
    req->keep_alive = false;
    rc = qrc;
  }
  if (http_conn_flush(c) && !rc) rc = STRATA_ECLOSED;
  return end_response(req, rc);
}

int http_respond_json(http_request_t *req, int status, const char *json_text) {
  const char *t = json_text ? json_text : "";
  return http_respond(req, status, "application/json", NULL, t, strlen(t));
}

int http_stream_begin(http_request_t *req, int status, const char *content_type, const char *extra_headers) {
  if (!req) return STRATA_EINVAL;
  if (req->in_close_cb || req->conn->dead) return STRATA_ECLOSED;
  if (req->resp_state != HTTP_RESP_NONE || !args_ok(status, content_type, extra_headers) ||
      !status_has_body(status)) {
    log_error("http: bad stream start for %s %s (status %d, state %d)", http_request_method(req), req->path,
              status, req->resp_state);
    return STRATA_EINVAL;
  }
  /* NOTE: HTTP/1.0 has no chunked encoding: the body there runs to the connection's close. */
  req->chunked = req->version >= 11;
  if (!req->chunked) req->keep_alive = false;
  req->resp_state = HTTP_RESP_STREAMING;
  if (queue_head(req, status, content_type, extra_headers, -1)) {
    log_error("http: out of memory starting a stream; closing the connection");
    http_conn_doom(req->conn);
    return STRATA_ECLOSED;
  }
  return http_conn_flush(req->conn) ? STRATA_ECLOSED : 0;
}

int http_stream_write(http_request_t *req, const void *data, size_t len) {
  if (!req) return STRATA_EINVAL;
  http_conn_t *c = req->conn;
  if (req->in_close_cb || c->dead) return STRATA_ECLOSED;
  if (req->resp_state != HTTP_RESP_STREAMING) return STRATA_EINVAL;
  if (len == 0 || req->head_only) return 0;
  if (!data) return STRATA_EINVAL;
  char size_line[32];
  int rc = 0;
  if (req->chunked) {
    int n = snprintf(size_line, sizeof(size_line), "%zx\r\n", len);
    rc = http_conn_append(c, size_line, (size_t)n);
  }
  if (!rc) rc = http_conn_append(c, data, len);
  if (!rc && req->chunked) rc = http_conn_append(c, "\r\n", 2);
  if (rc) {
    log_error("http: out of memory queueing %zu stream bytes; dropping the connection", len);
    http_conn_doom(c);
    return STRATA_ECLOSED;
  }
  if (http_conn_flush(c)) return STRATA_ECLOSED;
  size_t pending = http_conn_out_pending(c), limit = c->srv->cfg.max_output_bytes;
  if (pending > 4 * limit) {
    log_warn("http: client %s reads too slowly (%zu bytes queued for %s); dropping it", c->peer, pending,
             req->path);
    http_conn_doom(c);
    return STRATA_ECLOSED;
  }
  if (pending > limit) {
    req->want_drain = true;
    return STRATA_EAGAIN;
  }
  return 0;
}

int http_stream_end(http_request_t *req) {
  if (!req) return STRATA_EINVAL;
  if (req->in_close_cb) return STRATA_ECLOSED;
  http_conn_t *c = req->conn;
  if (c->dead) return end_response(req, STRATA_ECLOSED);
  if (req->resp_state != HTTP_RESP_STREAMING) {
    log_error("http: stream end for %s %s without a stream begun; closing the connection",
              http_request_method(req), req->path);
    req->keep_alive = false;
    return end_response(req, STRATA_EINVAL);
  }
  int rc = 0;
  if (req->chunked && !req->head_only) rc = http_conn_append(c, "0\r\n\r\n", 5);
  if (rc) req->keep_alive = false;
  if (http_conn_flush(c) && !rc) rc = STRATA_ECLOSED;
  return end_response(req, rc);
}

/* ---------------------------------------------------------------- helpers */

int http_secure_equal(const char *a, const char *b) {
  if (!a || !b) return 0;
  unsigned char da[32], db[32];
  unsigned int na = 0, nb = 0;
  if (!EVP_Digest(a, strlen(a), da, &na, EVP_sha256(), NULL) ||
      !EVP_Digest(b, strlen(b), db, &nb, EVP_sha256(), NULL) || na != 32 || nb != 32)
    return 0;
  return CRYPTO_memcmp(da, db, 32) == 0;
}
