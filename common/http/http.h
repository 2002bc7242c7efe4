/* http.h: an HTTP/1.1 server on a libev loop (http-parser, optional TLS through OpenSSL). */
#ifndef STRATA_HTTP_H
#define STRATA_HTTP_H

#include <stddef.h>

struct ev_loop;

/* Threads: a server belongs to the thread that runs its loop. Every function below, and every
 * callback, runs on that thread; the only way in from another thread is the caller's own ev_async.
 *
 * Request lifetime (the contract the API layer relies on):
 *  1. The server allocates an http_request_t when a complete request (headers and body) has been
 *     read, and passes it to on_request. The handler may respond at once or keep the pointer and
 *     respond later from the loop thread.
 *  2. The response ends with http_respond*() or http_stream_end(). On return from that call the
 *     request has been freed: the pointer must not be used again, and its close callback never runs
 *     (even if the client then disconnects before every byte reached it).
 *  3. If the connection dies first (client disconnect, write error, stalled reader, timeout while
 *     streaming, http_server_free), the close callback set with http_request_on_close runs exactly
 *     once, from the loop and never from inside an http_* call the handler made on that request,
 *     and the request is freed right after it returns. Inside the close callback the request's
 *     accessors still work, but responding is not allowed (it returns STRATA_ECLOSED).
 *  4. Between a write returning STRATA_ECLOSED and the close callback, the request stays valid;
 *     further writes return STRATA_ECLOSED.
 *  5. A client that half-closes (EOF) while its request is in flight counts as gone (3.).
 *  6. No timeout runs while a request is with the handler and no output is queued: the handler must
 *     end every request it was given (or the connection stays open until the client leaves).
 *  One request is in flight per connection; pipelined requests wait, already read, until the
 *  previous response has ended. */

typedef struct http_server http_server_t;
typedef struct http_request http_request_t;

/* on_request: a complete request arrived. DATA is http_server_config_t.data. */
typedef void (*http_request_cb)(http_request_t *req, void *data);
/* on_close: the connection died before the response ended (see the contract above). */
typedef void (*http_close_cb)(http_request_t *req, void *data);
/* on_drain: the output buffer fell below half of max_output_bytes after a write had returned
 * STRATA_EAGAIN; the writer may resume. */
typedef void (*http_drain_cb)(http_request_t *req, void *data);

typedef struct {
  const char *host;         /* address to bind; default "127.0.0.1"; "0.0.0.0" or "::" for all */
  int port;                 /* 0 picks a free port (see http_server_port) */
  int max_connections;      /* past it new clients get 503 and are closed; default 1024 */
  size_t max_header_bytes;  /* request line + headers; past it 431; default 32 KiB */
  size_t max_body_bytes;    /* past it 413, sent before the body is read; default 8 MiB */
  size_t max_output_bytes;  /* buffered response bytes before writes return STRATA_EAGAIN;
                               at 4x the connection is dropped; default 1 MiB */
  double read_timeout_s;    /* a started request must arrive, and a stalled reader must make
                               progress, within this; default 30 s */
  double idle_timeout_s;    /* keep-alive connections with nothing in flight; default 60 s */
  const char *tls_cert_file; /* PEM certificate chain; with tls_key_file enables TLS (1.2+) */
  const char *tls_key_file;  /* PEM private key */
  http_request_cb on_request; /* required */
  void *data;                 /* passed to on_request */
} http_server_config_t;

/* http_server_config_default: fills CFG with the defaults above (on_request left NULL). */
void http_server_config_default(http_server_config_t *cfg);

/* http_server_new: binds and listens on CFG->host:CFG->port (SO_REUSEADDR) and serves on LOOP,
 * which the caller runs and owns. CFG's strings are used only during the call. On success *OUT is a
 * server the caller frees with http_server_free. Returns 0, STRATA_EINVAL (bad config),
 * STRATA_EIO (bind/listen failed, e.g. port in use; TLS files unreadable or not matching),
 * STRATA_ENOMEM; logs why. When TLS is on, SIGPIPE is set to SIG_IGN process-wide if it still has
 * its default action (OpenSSL writes to sockets with write(2)). */
int http_server_new(struct ev_loop *loop, const http_server_config_t *cfg, http_server_t **out);

/* http_server_port: the bound TCP port (useful with port 0). */
int http_server_port(const http_server_t *srv);
/* http_server_n_connections: open client connections right now. */
int http_server_n_connections(const http_server_t *srv);

/* http_server_free: stops listening and closes every connection; close callbacks of requests in
 * flight run inside this call. Call it on the loop thread (or after the loop stopped), but not from
 * inside one of this server's callbacks. NULL is ok. */
void http_server_free(http_server_t *srv);

/* --- the request (valid as described in the contract above) --- */

const char *http_request_method(const http_request_t *req); /* "GET", "POST", ... */
const char *http_request_path(const http_request_t *req);   /* raw path ("/v1/models"), never NULL */
const char *http_request_query(const http_request_t *req);  /* raw query without '?', or "" */
const char *http_request_target(const http_request_t *req); /* the request target as received */
/* http_request_version: 10 for HTTP/1.0, 11 for HTTP/1.1. */
int http_request_version(const http_request_t *req);
/* http_request_header: the first header named NAME (case-insensitive), trimmed, or NULL. */
const char *http_request_header(const http_request_t *req, const char *name);
/* http_request_n_headers / http_request_header_at: iterate headers in arrival order. */
size_t http_request_n_headers(const http_request_t *req);
int http_request_header_at(const http_request_t *req, size_t i, const char **name, const char **value);
/* http_request_body: the body (NUL-terminated for convenience; LEN may be NULL); "" when none. */
const char *http_request_body(const http_request_t *req, size_t *len);
/* http_request_peer: the client's address as text ("127.0.0.1"). */
const char *http_request_peer(const http_request_t *req);

/* http_request_query_param: the percent-decoded value of query parameter NAME ('+' is a space)
 * copied NUL-terminated into OUT (CAP bytes). Returns its length, STRATA_ENOTFOUND, STRATA_ERANGE
 * (does not fit) or STRATA_EFORMAT (bad escape). A parameter without '=' has the value "". */
int http_request_query_param(const http_request_t *req, const char *name, char *out, size_t cap);
/* http_request_bearer: the token of "Authorization: Bearer <token>" (scheme case-insensitive), or
 * NULL. The string lives as long as the request. */
const char *http_request_bearer(const http_request_t *req);

/* User data and callbacks for one request. */
void http_request_set_data(http_request_t *req, void *data);
void *http_request_data(const http_request_t *req);
void http_request_on_close(http_request_t *req, http_close_cb cb, void *data);
void http_request_on_drain(http_request_t *req, http_drain_cb cb, void *data);

/* --- responses ---
 * EXTRA_HEADERS is NULL or whole header lines, each ending in "\r\n" ("Cache-Control: no-cache\r\n");
 * the server adds Content-Length / Transfer-Encoding and Connection itself. Status codes are 100..999
 * (1xx codes are not allowed here; Expect: 100-continue is answered by the server). */

/* http_respond: a complete response (BODY is copied; no output limit applies). CONTENT_TYPE may be
 * NULL (no Content-Type header). Ends the response: REQ is freed on return whatever the result.
 * Returns 0, STRATA_EINVAL (bad arguments: the client gets a 500 instead; or a stream had begun: the
 * connection is closed), STRATA_ECLOSED (the connection had died), STRATA_ENOMEM. */
int http_respond(http_request_t *req, int status, const char *content_type, const char *extra_headers,
                 const void *body, size_t len);
/* http_respond_json: http_respond with "application/json" and a NUL-terminated JSON_TEXT. */
int http_respond_json(http_request_t *req, int status, const char *json_text);

/* http_stream_begin: starts a streamed response (chunked for HTTP/1.1; for HTTP/1.0 the body runs to
 * the connection's close). For Server-Sent Events pass "text/event-stream". Returns 0,
 * STRATA_EINVAL (already begun, or bad arguments; REQ unchanged), STRATA_ECLOSED. */
int http_stream_begin(http_request_t *req, int status, const char *content_type, const char *extra_headers);
/* http_stream_write: queues LEN bytes as one chunk (LEN 0 writes nothing). Returns 0;
 * STRATA_EAGAIN when the bytes were queued but the buffer is past max_output_bytes: pause until the
 * drain callback; STRATA_ECLOSED when the connection died or was dropped for growing past 4x the
 * limit (the close callback follows from the loop); STRATA_EINVAL when the stream was not begun. */
int http_stream_write(http_request_t *req, const void *data, size_t len);
/* http_stream_end: ends the stream (the terminating chunk) and frees REQ, whatever the result.
 * Returns 0, STRATA_ECLOSED or STRATA_EINVAL (not begun; the client gets nothing more and the
 * connection is closed). */
int http_stream_end(http_request_t *req);

/* --- helpers --- */

/* http_secure_equal: 1 if the NUL-terminated strings A and B are equal, else 0, in time that depends
 * on neither content nor where they differ (both are hashed with SHA-256 and the digests compared
 * with CRYPTO_memcmp), so API keys can be checked without a timing oracle. NULL equals nothing. */
int http_secure_equal(const char *a, const char *b);

/* http_status_reason: the reason phrase for STATUS ("Not Found"), "Unknown" if none. */
const char *http_status_reason(int status);

#endif
