/* rpc_server.c: a gRPC core server on one completion-queue thread: generic request_call, dispatch
 * by method path, unary handlers and server-streaming calls fed from any thread. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fileio.h"
#include "common/log.h"
#include "common/rpc/rpc.h"
#include "common/rpc/rpc_int.h"
#include "common/status.h"

struct rpc_server {
  grpc_server *server;
  rpc_loop_t *loop;
  const rpc_method_t *methods;
  size_t n_methods;
  int port;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int n_calls;          /* live call objects, including the one waiting in request_call */
  int shutdown_done;
  atomic_int shutting_down;
  rpc_op_t op_shutdown;
};

typedef struct {
  rpc_op_t op;
  rpc_server_call_t *c;
} rpc_call_op_t;

struct rpc_server_call {
  rpc_server_t *srv;
  const rpc_method_t *m;
  grpc_call *call;
  grpc_call_details details;
  grpc_metadata_array md;
  grpc_byte_buffer *recv_bb;
  int cancelled_wire;   /* written by RECV_CLOSE_ON_SERVER */
  atomic_int cancelled;
  pthread_mutex_t mu;
  /* Guarded by mu: */
  int pending_ops;
  int handler_hold;     /* a stream handler has not called finish yet */
  int send_busy, status_started, finish_requested;
  grpc_byte_buffer **sendq;
  size_t n_sendq, cap_sendq;
  grpc_byte_buffer *send_bb;
  grpc_status_code fin_code;
  grpc_slice fin_details;
  rpc_call_op_t op_new, op_recv, op_send, op_close, op_status;
};

struct rpc_reply {
  grpc_byte_buffer *bb;
  grpc_status_code code;
  char details[256];
};

int rpc_reply_message(rpc_reply_t *r, const ProtobufCMessage *msg) {
  if (r->bb) grpc_byte_buffer_destroy(r->bb);
  r->bb = rpc_pack(msg);
  return r->bb ? 0 : STRATA_ENOMEM;
}

void rpc_reply_status(rpc_reply_t *r, grpc_status_code code, const char *details) {
  r->code = code;
  snprintf(r->details, sizeof(r->details), "%s", details ? details : "");
}

static void rpc_call_destroy(rpc_server_call_t *c) {
  rpc_server_t *srv = c->srv;
  for (size_t i = 0; i < c->n_sendq; i++) grpc_byte_buffer_destroy(c->sendq[i]);
  free(c->sendq);
  if (c->send_bb) grpc_byte_buffer_destroy(c->send_bb);
  if (c->recv_bb) grpc_byte_buffer_destroy(c->recv_bb);
  grpc_slice_unref(c->fin_details);
  grpc_call_details_destroy(&c->details);
  grpc_metadata_array_destroy(&c->md);
  if (c->call) grpc_call_unref(c->call);
  pthread_mutex_destroy(&c->mu);
  free(c);
  pthread_mutex_lock(&srv->mu);
  srv->n_calls--;
  pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
}

static void rpc_call_op_end(rpc_server_call_t *c) {
  pthread_mutex_lock(&c->mu);
  c->pending_ops--;
  int dead = c->pending_ops == 0 && !c->handler_hold;
  pthread_mutex_unlock(&c->mu);
  if (dead) rpc_call_destroy(c);
}

/* Caller holds c->mu. A failed start is logged and leaves the call to be cancelled. */
static int rpc_call_start(rpc_server_call_t *c, const grpc_op *ops, size_t n, rpc_call_op_t *op) {
  grpc_call_error e = grpc_call_start_batch(c->call, ops, n, &op->op, NULL);
  if (e != GRPC_CALL_OK) {
    log_error("rpc server: grpc_call_start_batch failed (call error %d)", (int)e);
    grpc_call_cancel(c->call, NULL);
    return STRATA_EINTERNAL;
  }
  c->pending_ops++;
  return 0;
}

/* Sends the next message, or the final status once the queue is drained. Caller holds c->mu. */
static void rpc_call_pump(rpc_server_call_t *c) {
  if (c->send_busy || c->status_started) return;
  grpc_op op;
  memset(&op, 0, sizeof(op));
  if (c->n_sendq > 0 && !atomic_load(&c->cancelled)) {
    c->send_bb = c->sendq[0];
    memmove(c->sendq, c->sendq + 1, (c->n_sendq - 1) * sizeof(*c->sendq));
    c->n_sendq--;
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = c->send_bb;
    if (rpc_call_start(c, &op, 1, &c->op_send) == 0) c->send_busy = 1;
    return;
  }
  if (!c->finish_requested) return;
  op.op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  op.data.send_status_from_server.status = c->fin_code;
  op.data.send_status_from_server.status_details = &c->fin_details;
  if (rpc_call_start(c, &op, 1, &c->op_status) == 0) c->status_started = 1;
}

static void rpc_call_send_done(rpc_op_t *op, int ok) {
  rpc_server_call_t *c = ((rpc_call_op_t *)op)->c;
  pthread_mutex_lock(&c->mu);
  grpc_byte_buffer_destroy(c->send_bb);
  c->send_bb = NULL;
  c->send_busy = 0;
  if (!ok) atomic_store(&c->cancelled, 1);
  rpc_call_pump(c);
  pthread_mutex_unlock(&c->mu);
  rpc_call_op_end(c);
}

static void rpc_call_plain_done(rpc_op_t *op, int ok) {
  (void)ok;
  rpc_call_op_end(((rpc_call_op_t *)op)->c);
}

static void rpc_call_close_done(rpc_op_t *op, int ok) {
  rpc_server_call_t *c = ((rpc_call_op_t *)op)->c;
  int cancelled = !ok || c->cancelled_wire;
  if (cancelled) atomic_store(&c->cancelled, 1);
  pthread_mutex_lock(&c->mu);
  int notify = c->handler_hold && c->m && c->m->stream && c->m->done;
  pthread_mutex_unlock(&c->mu);
  /* handler_hold keeps C alive through done(), even if done() calls finish. */
  if (notify) c->m->done(c->m->arg, c, cancelled);
  rpc_call_op_end(c);
}

/* Unary: run the handler and send its reply with the status in one batch. Caller holds c->mu. */
static void rpc_call_unary(rpc_server_call_t *c, const ProtobufCMessage *req) {
  rpc_reply_t reply = {.bb = NULL, .code = GRPC_STATUS_OK};
  c->m->unary(c->m->arg, req, &reply);
  if (reply.code == GRPC_STATUS_OK && !reply.bb) {
    /* An empty message is valid protobuf for any message type. */
    grpc_slice empty = grpc_empty_slice();
    reply.bb = grpc_raw_byte_buffer_create(&empty, 0);
  }
  grpc_op ops[2];
  memset(ops, 0, sizeof(ops));
  size_t n = 0;
  if (reply.code == GRPC_STATUS_OK) {
    c->send_bb = reply.bb;
    reply.bb = NULL;
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = c->send_bb;
  }
  c->fin_details = grpc_slice_from_copied_string(reply.details);
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.status = reply.code;
  ops[n++].data.send_status_from_server.status_details = &c->fin_details;
  if (reply.bb) grpc_byte_buffer_destroy(reply.bb);
  if (rpc_call_start(c, ops, n, &c->op_status) == 0) c->status_started = 1;
}

static void rpc_call_recv_done(rpc_op_t *op, int ok) {
  rpc_server_call_t *c = ((rpc_call_op_t *)op)->c;
  ProtobufCMessage *req = NULL;
  grpc_status_code fail = GRPC_STATUS_OK;
  const char *why = "";
  if (!ok || !c->recv_bb) {
    fail = GRPC_STATUS_CANCELLED;
    why = "no request message";
  } else if (rpc_unpack(c->recv_bb, c->m->request, &req) < 0) {
    fail = GRPC_STATUS_INVALID_ARGUMENT;
    why = "request does not parse";
  }
  pthread_mutex_lock(&c->mu);
  if (fail != GRPC_STATUS_OK) {
    c->finish_requested = 1;
    c->fin_code = fail;
    c->fin_details = grpc_slice_from_static_string(why);
    rpc_call_pump(c);
    pthread_mutex_unlock(&c->mu);
  } else if (c->m->unary) {
    rpc_call_unary(c, req);
    pthread_mutex_unlock(&c->mu);
  } else {
    c->handler_hold = 1;
    pthread_mutex_unlock(&c->mu);
    c->m->stream(c->m->arg, req, c);
  }
  if (req) protobuf_c_message_free_unpacked(req, NULL);
  rpc_call_op_end(c);
}

static void rpc_server_arm(rpc_server_t *srv);

static void rpc_call_new_done(rpc_op_t *op, int ok) {
  rpc_server_call_t *c = ((rpc_call_op_t *)op)->c;
  rpc_server_t *srv = c->srv;
  if (!ok) { /* the server is shutting down */
    rpc_call_op_end(c);
    return;
  }
  if (!atomic_load(&srv->shutting_down)) rpc_server_arm(srv);
  for (size_t i = 0; i < srv->n_methods; i++)
    if (grpc_slice_str_cmp(c->details.method, srv->methods[i].path) == 0) c->m = &srv->methods[i];
  grpc_op ops[2];
  memset(ops, 0, sizeof(ops));
  pthread_mutex_lock(&c->mu);
  ops[0].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  ops[0].data.recv_close_on_server.cancelled = &c->cancelled_wire;
  rpc_call_start(c, ops, 1, &c->op_close);
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  if (!c->m) {
    c->fin_details = grpc_slice_from_static_string("unknown method");
    ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[1].data.send_status_from_server.status = GRPC_STATUS_UNIMPLEMENTED;
    ops[1].data.send_status_from_server.status_details = &c->fin_details;
    if (rpc_call_start(c, ops, 2, &c->op_status) == 0) c->status_started = 1;
  } else {
    ops[1].op = GRPC_OP_RECV_MESSAGE;
    ops[1].data.recv_message.recv_message = &c->recv_bb;
    rpc_call_start(c, ops, 2, &c->op_recv);
  }
  pthread_mutex_unlock(&c->mu);
  rpc_call_op_end(c);
}

/* Keeps one request_call outstanding so that new calls are always accepted. */
static void rpc_server_arm(rpc_server_t *srv) {
  rpc_server_call_t *c = calloc(1, sizeof(*c));
  if (!c) {
    log_error("rpc server: out of memory accepting calls; the server stops accepting");
    return;
  }
  c->srv = srv;
  pthread_mutex_init(&c->mu, NULL);
  grpc_call_details_init(&c->details);
  grpc_metadata_array_init(&c->md);
  c->fin_details = grpc_empty_slice();
  c->op_new = (rpc_call_op_t){{rpc_call_new_done}, c};
  c->op_recv = (rpc_call_op_t){{rpc_call_recv_done}, c};
  c->op_send = (rpc_call_op_t){{rpc_call_send_done}, c};
  c->op_close = (rpc_call_op_t){{rpc_call_close_done}, c};
  c->op_status = (rpc_call_op_t){{rpc_call_plain_done}, c};
  c->pending_ops = 1;
  pthread_mutex_lock(&srv->mu);
  srv->n_calls++;
  pthread_mutex_unlock(&srv->mu);
  grpc_completion_queue *cq = rpc_loop_cq(srv->loop);
  grpc_call_error e = grpc_server_request_call(srv->server, &c->call, &c->details, &c->md, cq, cq, &c->op_new.op);
  if (e != GRPC_CALL_OK) {
    log_error("rpc server: grpc_server_request_call failed (call error %d)", (int)e);
    c->pending_ops = 0;
    rpc_call_destroy(c);
  }
}

int rpc_server_call_send(rpc_server_call_t *c, const ProtobufCMessage *msg) {
  int rc = 0;
  pthread_mutex_lock(&c->mu);
  if (atomic_load(&c->cancelled) || c->finish_requested) {
    rc = STRATA_ECLOSED;
    goto out;
  }
  if (c->n_sendq == c->cap_sendq) {
    size_t cap = c->cap_sendq ? 2 * c->cap_sendq : 8;
    grpc_byte_buffer **q = realloc(c->sendq, cap * sizeof(*q));
    if (!q) {
      rc = STRATA_ENOMEM;
      goto out;
    }
    c->sendq = q;
    c->cap_sendq = cap;
  }
  if (!(c->sendq[c->n_sendq] = rpc_pack(msg))) {
    rc = STRATA_ENOMEM;
    goto out;
  }
  c->n_sendq++;
  rpc_call_pump(c);
out:
  pthread_mutex_unlock(&c->mu);
  return rc;
}

int rpc_server_call_cancelled(rpc_server_call_t *c) { return atomic_load(&c->cancelled); }

void rpc_server_call_finish(rpc_server_call_t *c, grpc_status_code code, const char *details) {
  pthread_mutex_lock(&c->mu);
  if (!c->finish_requested) {
    c->finish_requested = 1;
    c->fin_code = code;
    grpc_slice_unref(c->fin_details);
    c->fin_details = grpc_slice_from_copied_string(details ? details : "");
  }
  rpc_call_pump(c);
  c->handler_hold = 0;
  int dead = c->pending_ops == 0;
  pthread_mutex_unlock(&c->mu);
  if (dead) rpc_call_destroy(c);
}

static void rpc_server_shutdown_done(rpc_op_t *op, int ok) {
  (void)ok;
  rpc_server_t *srv = (rpc_server_t *)((char *)op - offsetof(rpc_server_t, op_shutdown));
  pthread_mutex_lock(&srv->mu);
  srv->shutdown_done = 1;
  pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
}

static grpc_server_credentials *rpc_server_creds(const rpc_server_opts_t *o) {
  if (!o->cert_file || !o->key_file) return grpc_insecure_server_credentials_create();
  char *cert = NULL, *key = NULL;
  size_t n = 0;
  grpc_server_credentials *creds = NULL;
  int rc = file_read_all(o->cert_file, 1 << 20, &cert, &n);
  if (rc == 0) rc = file_read_all(o->key_file, 1 << 20, &key, &n);
  if (rc < 0) {
    log_error("rpc server: cannot read TLS certificate %s or key %s: %s", o->cert_file, o->key_file,
              strata_strerror(rc));
  } else {
    grpc_ssl_pem_key_cert_pair pair = {key, cert};
    creds = grpc_ssl_server_credentials_create(NULL, &pair, 1, 0, NULL);
  }
  free(cert);
  free(key);
  return creds;
}

int rpc_server_new(const rpc_server_opts_t *opts, const rpc_method_t *methods, size_t n_methods,
                   rpc_server_t **out) {
  *out = NULL;
  if (!opts || !opts->addr) return STRATA_EINVAL;
  for (size_t i = 0; i < n_methods; i++) {
    if (!methods[i].path || !methods[i].request || !methods[i].unary == !methods[i].stream) {
      log_error("rpc server: method %zu needs a path, a request type and one handler", i);
      return STRATA_EINVAL;
    }
  }
  rpc_server_t *srv = calloc(1, sizeof(*srv));
  if (!srv) return STRATA_ENOMEM;
  int rc = STRATA_EIO;
  pthread_mutex_init(&srv->mu, NULL);
  pthread_cond_init(&srv->cv, NULL);
  srv->methods = methods;
  srv->n_methods = n_methods;
  srv->op_shutdown.done = rpc_server_shutdown_done;
  grpc_server_credentials *creds = rpc_server_creds(opts);
  if (!creds) goto fail;
  /* NOTE: SO_REUSEPORT off: two servers on one port would silently split the connections. */
  char k_recv[] = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, k_reuse[] = GRPC_ARG_ALLOW_REUSEPORT;
  char k_ping[] = GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, k_strikes[] = GRPC_ARG_HTTP2_MAX_PING_STRIKES;
  char k_idle[] = GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS;
  /* NOTE: gRPC servers answer a client pinging more often than every 5 min (without data) with
   * GOAWAY "too_many_pings"; our clients ping every few seconds to find hung peers (rpc.h). */
  grpc_arg argv[5] = {{.type = GRPC_ARG_INTEGER, .key = k_reuse, .value.integer = 0},
                      {.type = GRPC_ARG_INTEGER, .key = k_ping, .value.integer = RPC_SERVER_MIN_PING_MS},
                      {.type = GRPC_ARG_INTEGER, .key = k_strikes, .value.integer = 0},
                      {.type = GRPC_ARG_INTEGER, .key = k_idle, .value.integer = 1},
                      {.type = GRPC_ARG_INTEGER, .key = k_recv, .value.integer = opts->max_recv_bytes}};
  grpc_channel_args args = {.num_args = opts->max_recv_bytes > 0 ? 5 : 4, .args = argv};
  srv->server = grpc_server_create(&args, NULL);
  if ((rc = rpc_loop_new(NULL, NULL, 0, &srv->loop)) < 0) goto fail_creds;
  grpc_server_register_completion_queue(srv->server, rpc_loop_cq(srv->loop), NULL);
  srv->port = grpc_server_add_http2_port(srv->server, opts->addr, creds);
  grpc_server_credentials_release(creds);
  if (srv->port == 0) {
    log_error("rpc server: cannot listen on %s (address in use or invalid)", opts->addr);
    rc = STRATA_EIO;
    goto fail_loop;
  }
  grpc_server_start(srv->server);
  rpc_server_arm(srv);
  *out = srv;
  return 0;

fail_creds:
  grpc_server_credentials_release(creds);
  grpc_server_destroy(srv->server);
  srv->server = NULL;
fail:
  pthread_cond_destroy(&srv->cv);
  pthread_mutex_destroy(&srv->mu);
  free(srv);
  return rc;
fail_loop:
  /* A server that never started may be destroyed without the shutdown handshake. */
  grpc_server_destroy(srv->server);
  rpc_loop_free(srv->loop);
  pthread_cond_destroy(&srv->cv);
  pthread_mutex_destroy(&srv->mu);
  free(srv);
  return rc;
}

int rpc_server_port(const rpc_server_t *s) { return s->port; }

void rpc_server_free(rpc_server_t *srv) {
  if (!srv) return;
  atomic_store(&srv->shutting_down, 1);
  /* Order from stack.md §2: shutdown+notify, cancel all, drain, destroy, then the queue. */
  grpc_server_shutdown_and_notify(srv->server, rpc_loop_cq(srv->loop), &srv->op_shutdown);
  grpc_server_cancel_all_calls(srv->server);
  pthread_mutex_lock(&srv->mu);
  while (!srv->shutdown_done || srv->n_calls > 0) pthread_cond_wait(&srv->cv, &srv->mu);
  pthread_mutex_unlock(&srv->mu);
  grpc_server_destroy(srv->server);
  rpc_loop_free(srv->loop);
  pthread_cond_destroy(&srv->cv);
  pthread_mutex_destroy(&srv->mu);
  free(srv);
}

int rpc_server_call_metadata(rpc_server_call_t *c, const char *key, char *buf, size_t cap) {
  for (size_t i = 0; i < c->md.count; i++) {
    if (grpc_slice_str_cmp(c->md.metadata[i].key, key) != 0) continue;
    size_t n = GRPC_SLICE_LENGTH(c->md.metadata[i].value);
    if (n + 1 > cap) return STRATA_ERANGE;
    memcpy(buf, GRPC_SLICE_START_PTR(c->md.metadata[i].value), n);
    buf[n] = '\0';
    return (int)n;
  }
  return STRATA_ENOTFOUND;
}
