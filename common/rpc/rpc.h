/* rpc.h: gRPC core + protobuf-c glue shared by servers and clients (buffers, status, channels, unary
 * calls, client streams, a completion-queue thread and a method-dispatching server).
 *
 * Threading model: an rpc_loop_t owns one grpc "next" completion queue and one thread. Every tag
 * posted to that queue is an rpc_op_t whose done() runs on the loop thread. Client streams and the
 * server run their callbacks there; callbacks must be cheap and must not block on the loop itself.
 * rpc_unary_call() is synchronous, uses its own private queue and is safe from any thread.
 *
 * Call rpc_init() (which calls grpc_init()) before anything else here and rpc_shutdown() once per
 * rpc_init() at the end. */
#ifndef STRATA_RPC_H
#define STRATA_RPC_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <protobuf-c/protobuf-c.h>

/* rpc_init / rpc_shutdown: reference-counted grpc_init()/grpc_shutdown(). */
void rpc_init(void);
void rpc_shutdown(void);

/* ---- messages and status ---------------------------------------------------------------------- */

/* rpc_pack: serialize MSG into a new byte buffer (caller owns it: grpc_byte_buffer_destroy, or hand
 * it to a SEND_MESSAGE op and destroy after completion). NULL on allocation failure. */
grpc_byte_buffer *rpc_pack(const ProtobufCMessage *msg);
/* rpc_unpack: parse BB (any number of slices) as DESC into *OUT (free with
 * protobuf_c_message_free_unpacked(*OUT, NULL)). BB stays owned by the caller. Returns 0,
 * STRATA_EFORMAT for bytes that do not parse, STRATA_ENOMEM. */
int rpc_unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out);

/* The outcome of one RPC as gRPC reported it. details is always NUL-terminated (possibly cut). */
typedef struct {
  grpc_status_code code;
  char details[256];
} rpc_status_t;

/* rpc_status_to_strata: map a gRPC status code to a STRATA_E* code (OK -> 0, UNAVAILABLE ->
 * STRATA_EUNAVAILABLE, DEADLINE_EXCEEDED -> STRATA_ETIMEDOUT, NOT_FOUND -> STRATA_ENOTFOUND, ...). */
int rpc_status_to_strata(grpc_status_code code);
/* rpc_status_name: "UNAVAILABLE" etc. for logs. */
const char *rpc_status_name(grpc_status_code code);

/* ---- channels --------------------------------------------------------------------------------- */

typedef struct {
  const char *ca_file;        /* PEM roots: TLS when set, plaintext when NULL */
  int max_recv_bytes;         /* 0: gRPC default (4 MiB) */
  int reconnect_min_ms;       /* 0: 100 ms. Small so a restarted peer is found again quickly */
  int reconnect_max_ms;       /* 0: 1000 ms */
  /* keepalive_ms > 0: send an HTTP/2 ping after this long without news from the peer (streams
   * open or not, and with no limit on pings while we send no data), and close the connection,
   * failing every call on it with UNAVAILABLE, when the ack takes longer than keepalive_timeout_ms
   * (0: 5000). This is how a hung (SIGSTOPped) or blackholed peer is found: TCP alone keeps such a
   * connection open for many minutes. The peer must permit the pings: rpc_server_new() servers do;
   * etcd (grpc-go) allows one per 5 s by default, so leave this 0 for etcd channels. gRPC 1.51
   * sends at most one ping a second, whatever keepalive_ms says. */
  int keepalive_ms;
  int keepalive_timeout_ms;
} rpc_channel_opts_t;

/* rpc_channel_new: a channel to TARGET ("127.0.0.1:50051"; prefer IP literals, see stack.md §8).
 * OPTS may be NULL. The channel connects lazily. Returns 0 and sets *OUT (free with
 * grpc_channel_destroy), STRATA_EIO when the CA file cannot be read, STRATA_EINVAL, STRATA_ENOMEM. */
int rpc_channel_new(const char *target, const rpc_channel_opts_t *opts, grpc_channel **out);

/* ---- synchronous unary calls ------------------------------------------------------------------ */

/* rpc_unary_call: call METHOD ("/pkg.Service/Method") on CH with REQ and wait at most TIMEOUT_MS
 * (values below 1 count as 1: a unary call always has a deadline). The call does not wait for the
 * channel to connect: an unreachable peer fails at once with STRATA_EUNAVAILABLE.
 * On success returns 0 and *RESP holds a message of RESP_DESC (caller frees it with
 * protobuf_c_message_free_unpacked). On failure returns the mapped STRATA_E* code, *RESP is NULL,
 * and ST (optional) holds gRPC's code and details. Logs nothing: the caller knows the context.
 * Thread-safe. */
int rpc_unary_call(grpc_channel *ch, const char *method, const ProtobufCMessage *req,
                   const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                   int64_t timeout_ms, rpc_status_t *st);

/* ---- the completion-queue thread -------------------------------------------------------------- */

/* Every tag on a loop's queue is one of these; embed it in your own struct. OK is grpc's success. */
typedef struct rpc_op {
  void (*done)(struct rpc_op *op, int ok);
} rpc_op_t;

typedef struct rpc_loop rpc_loop_t;

/* rpc_loop_new: start a thread draining a new completion queue. TICK (optional) is called on that
 * thread at least every TICK_MS (>0), so owners can run timers and pick up work queued by other
 * threads. Returns 0 and sets *OUT, or STRATA_ENOMEM / STRATA_EINTERNAL. */
int rpc_loop_new(void (*tick)(void *arg), void *arg, int tick_ms, rpc_loop_t **out);
grpc_completion_queue *rpc_loop_cq(rpc_loop_t *loop);
/* rpc_loop_on_thread: nonzero when called from the loop's own thread. */
int rpc_loop_on_thread(const rpc_loop_t *loop);
/* rpc_loop_free: shut the queue down, run the remaining completions, join the thread and free.
 * Every call on the queue must have been cancelled or finished first. Not from the loop thread. */
void rpc_loop_free(rpc_loop_t *loop);

/* ---- client streams (server-streaming and bidi) ----------------------------------------------- */

typedef struct rpc_stream rpc_stream_t;

typedef struct {
  /* on_message: one response, in order. MSG is freed after the callback returns: copy what you keep. */
  void (*on_message)(rpc_stream_t *s, const ProtobufCMessage *msg, void *arg);
  /* on_close: exactly once, after the last on_message. RC is 0 for gRPC OK, else the mapped code. */
  void (*on_close)(rpc_stream_t *s, int rc, const rpc_status_t *st, void *arg);
} rpc_stream_cbs_t;

/* rpc_stream_open: start METHOD on CH, with callbacks on LOOP's thread. FIRST (optional) is sent
 * right away; HALF_CLOSE nonzero closes the sending side after it (server-streaming calls).
 * TIMEOUT_MS 0 means no deadline. On success *OUT holds one reference for the caller, released with
 * rpc_stream_release(); the stream's memory lives until both that release and on_close happened.
 * Returns 0 (callbacks will come), or a STRATA_E* code (no callback will ever come). Any thread. */
int rpc_stream_open(rpc_loop_t *loop, grpc_channel *ch, const char *method,
                    const ProtobufCMessageDescriptor *resp_desc, const ProtobufCMessage *first,
                    int half_close, int64_t timeout_ms, const rpc_stream_cbs_t *cbs, void *arg,
                    rpc_stream_t **out);
/* One client metadata entry (a request header) for rpc_stream_open_md. */
typedef struct {
  const char *key;   /* lower case, legal as an HTTP/2 header name; not a "grpc-" reserved name */
  const char *value; /* printable ASCII unless KEY ends in "-bin" */
} rpc_md_t;

/* rpc_stream_open_md: rpc_stream_open with N_MD metadata entries MD (for example
 * {"authorization", "Bearer KEY"}) sent as the call's initial metadata. MD is copied: it need not
 * outlive the call. Returns what rpc_stream_open returns, and STRATA_EINVAL (no callback will come)
 * for a key or value gRPC would refuse to send. */
int rpc_stream_open_md(rpc_loop_t *loop, grpc_channel *ch, const char *method, const rpc_md_t *md, size_t n_md,
                       const ProtobufCMessageDescriptor *resp_desc, const ProtobufCMessage *first,
                       int half_close, int64_t timeout_ms, const rpc_stream_cbs_t *cbs, void *arg,
                       rpc_stream_t **out);
#define RPC_HAVE_STREAM_METADATA 1

/* rpc_stream_send: queue MSG (packed now, sent in order, one in flight). Returns 0, STRATA_ECLOSED
 * after the stream ended or was half-closed, STRATA_ENOMEM. Any thread, while holding a reference. */
int rpc_stream_send(rpc_stream_t *s, const ProtobufCMessage *msg);
/* rpc_stream_cancel: end the call now; on_close follows with STRATA_ECANCELED (unless it already
 * ended). Any thread, while holding a reference; idempotent. */
void rpc_stream_cancel(rpc_stream_t *s);
/* rpc_stream_release: drop the caller's reference (does not cancel). */
void rpc_stream_release(rpc_stream_t *s);

/* ---- server ----------------------------------------------------------------------------------- */

typedef struct rpc_server rpc_server_t;
typedef struct rpc_server_call rpc_server_call_t;

/* The result of a unary handler. Default: OK with an empty reply. */
typedef struct rpc_reply rpc_reply_t;
/* rpc_reply_message: the reply to send (packed at once; MSG stays the caller's). */
int rpc_reply_message(rpc_reply_t *r, const ProtobufCMessage *msg);
/* rpc_reply_status: fail the call with CODE and DETAILS (copied) instead of a message. */
void rpc_reply_status(rpc_reply_t *r, grpc_status_code code, const char *details);

typedef struct {
  const char *path;                         /* "/pkg.Service/Method" */
  const ProtobufCMessageDescriptor *request;
  /* unary: run on the loop thread; fill REPLY before returning. It holds up every other call of
   * this server, so it must be quick. For a unary method answered later or from another thread,
   * register a stream handler instead: one rpc_server_call_send() then rpc_server_call_finish()
   * is exactly a unary response on the wire. */
  void (*unary)(void *arg, const ProtobufCMessage *req, rpc_reply_t *reply);
  /* stream: a server-streaming call started. The handler (or anyone it hands CALL to) sends with
   * rpc_server_call_send() and must end with rpc_server_call_finish() exactly once, from any thread,
   * even after the client went away. REQ is only valid during this callback. */
  void (*stream)(void *arg, const ProtobufCMessage *req, rpc_server_call_t *call);
  /* done (optional, streams): the call ended on the wire; CANCELLED nonzero when the client cancelled
   * or the server is shutting down. CALL stays valid until rpc_server_call_finish(). */
  void (*done)(void *arg, rpc_server_call_t *call, int cancelled);
  void *arg;
} rpc_method_t;

/* rpc_server_call_metadata: the client's metadata KEY (lower case) on CALL, copied NUL-terminated
 * into BUF (CAP bytes). Returns its length, STRATA_ENOTFOUND, or STRATA_ERANGE. Valid from the stream
 * handler until rpc_server_call_finish(). */
int rpc_server_call_metadata(rpc_server_call_t *call, const char *key, char *buf, size_t cap);
#define RPC_HAVE_CALL_METADATA 1

/* rpc_server_call_send: queue one message on a server stream. Returns 0, STRATA_ECLOSED when the
 * call has ended (stop producing), STRATA_ENOMEM. Thread-safe. */
int rpc_server_call_send(rpc_server_call_t *call, const ProtobufCMessage *msg);
/* rpc_server_call_cancelled: nonzero once the client cancelled or the call failed. Thread-safe. */
int rpc_server_call_cancelled(rpc_server_call_t *call);
/* rpc_server_call_finish: send the final status after the queued messages and drop the handler's
 * hold on CALL; CALL must not be used afterwards. Thread-safe. */
void rpc_server_call_finish(rpc_server_call_t *call, grpc_status_code code, const char *details);

#define RPC_SERVER_MIN_PING_MS 500

typedef struct {
  const char *addr;       /* "127.0.0.1:0" picks a free port */
  const char *cert_file;  /* PEM certificate chain and key: TLS when both set */
  const char *key_file;
  int max_recv_bytes;     /* 0: default */
} rpc_server_opts_t;

/* rpc_server_new: bind, start, and serve METHODS (the array must outlive the server) on a new
 * completion-queue thread. Unknown methods get UNIMPLEMENTED. The server accepts keepalive pings
 * from clients as often as every RPC_SERVER_MIN_PING_MS, with or without calls open, and never
 * closes a connection for pinging too often (rpc_channel_new's keepalive_ms relies on it).
 * Returns 0 and *OUT, STRATA_EIO when the address cannot be bound or the TLS files cannot be read,
 * STRATA_ENOMEM, STRATA_EINVAL. */
int rpc_server_new(const rpc_server_opts_t *opts, const rpc_method_t *methods, size_t n_methods,
                   rpc_server_t **out);
/* rpc_server_port: the bound port. */
int rpc_server_port(const rpc_server_t *s);
/* rpc_server_free: stop accepting, cancel running calls (stream handlers get done(cancelled=1) and
 * must call rpc_server_call_finish(), possibly from done itself), wait for them, and free. */
void rpc_server_free(rpc_server_t *s);

#endif
