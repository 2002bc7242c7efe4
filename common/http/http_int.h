/* http_int.h: the server's internal structures, shared by http_server.c (sockets, TLS, timers)
 * and http_request.c (parsing, responses, helpers). */
#ifndef STRATA_HTTP_INT_H
#define STRATA_HTTP_INT_H

#include <ev.h>
#include <http_parser.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/http/http.h"

typedef struct http_conn http_conn_t;

/* One header: offsets into the request's head buffer (offsets, since the buffer grows). */
typedef struct {
  uint32_t name_off, value_off;
} http_header_t;

enum { HTTP_PARSE_NONE = 0, HTTP_PARSE_URL, HTTP_PARSE_FIELD, HTTP_PARSE_VALUE, HTTP_PARSE_BODY };
enum { HTTP_RESP_NONE = 0, HTTP_RESP_STREAMING, HTTP_RESP_DONE };

/* Owner: the loop thread. Allocated when a request starts arriving, handed to on_request once
 * complete, freed when its response ends or its connection dies. */
struct http_request {
  http_conn_t *conn;      /* its connection (valid as long as the request) */
  int method;             /* enum http_method */
  int version;            /* 10 or 11 */
  bool keep_alive;        /* http_should_keep_alive at message end */
  bool head_only;         /* HEAD: send headers, no body */
  char *head;             /* url\0 name\0 value\0 ... */
  size_t head_len, head_cap;
  size_t head_bytes;      /* raw bytes counted against max_header_bytes */
  uint32_t url_off;
  int parse_state;        /* HTTP_PARSE_* (last callback seen) */
  http_header_t *hdrs;
  size_t n_hdrs, hdrs_cap;
  char *path, *query;     /* one allocation: path\0query\0 */
  char *body;             /* NUL-terminated */
  size_t body_len, body_cap;
  int resp_state;         /* HTTP_RESP_* */
  bool chunked;           /* streaming with chunked encoding (HTTP/1.1) */
  bool want_drain;        /* a write returned STRATA_EAGAIN */
  bool in_close_cb;       /* inside on_close: responding is refused */
  http_close_cb on_close;
  void *close_data;
  http_drain_cb on_drain;
  void *drain_data;
  void *data;
};

struct http_server {
  struct ev_loop *loop;
  int fd;
  ev_io lio;
  ev_timer accept_pause;    /* re-arms the listener after running out of file descriptors */
  int port;
  http_server_config_t cfg; /* strings not kept (host, tls files) */
  SSL_CTX *ssl_ctx;
  http_conn_t *conns;       /* doubly linked list of open connections */
  int n_conns;
  http_parser_settings settings;
};

/* Owner: the loop thread. */
struct http_conn {
  http_server_t *srv;
  http_conn_t *prev, *next;
  int fd;
  SSL *ssl;
  ev_io rio, wio;
  ev_timer timer;           /* the one deadline of the connection's state (see conn_update_timer) */
  int timer_kind;
  http_parser parser;
  char peer[64];
  char *in;                 /* received, not yet parsed bytes in [in_off, in_len) */
  size_t in_off, in_len, in_cap;
  char *out;                /* queued bytes in [out_off, out_len) */
  size_t out_off, out_len, out_cap;
  http_request_t *req;      /* being parsed, or in flight when dispatched */
  bool dispatched;          /* req is with the handler */
  bool processing;          /* inside conn_process_input (no re-entry) */
  bool reading;             /* rio started */
  bool writing;             /* wio started */
  bool closing;             /* no more requests: close once the output is flushed */
  bool lingering;           /* output flushed after an error; draining input before close */
  bool dead;                /* torn down at the next loop iteration */
  bool ssl_read_wants_write, ssl_write_wants_read;
  int err_status;           /* status a parser callback chose for its error (413, 431) */
};

/* http_server.c */
/* conn_append: appends LEN bytes to the output buffer (not sent yet). Returns 0 or STRATA_ENOMEM. */
int http_conn_append(http_conn_t *c, const void *data, size_t len);
/* conn_flush: sends what it can now and waits for the socket for the rest. Never calls user code.
 * Returns 0, or STRATA_ECLOSED when the connection died (torn down at the next iteration). */
int http_conn_flush(http_conn_t *c);
/* conn_doom: tears the connection down at the next loop iteration (never re-enters the caller). */
void http_conn_doom(http_conn_t *c);
/* conn_request_done: the in-flight request's response has ended; moves on to the next request. */
void http_conn_request_done(http_conn_t *c);
/* conn_send_error: answers a parse error with STATUS and "Connection: close", then closes. */
void http_conn_send_error(http_conn_t *c, int status);
/* conn_out_pending: bytes queued but not yet sent. */
size_t http_conn_out_pending(const http_conn_t *c);

/* http_request.c */
void http_parser_settings_fill(http_parser_settings *s);
void http_request_free(http_request_t *req);

#endif
