/* rpc_loop.c: the completion-queue thread (rpc_loop_t) and the client stream wrapper (rpc_stream_t). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/support/alloc.h>

#include "common/log.h"
#include "common/rpc/rpc.h"
#include "common/rpc/rpc_int.h"
#include "common/status.h"

struct rpc_loop {
  grpc_completion_queue *cq;
  pthread_t thread;
  void (*tick)(void *arg);
  void *arg;
  int tick_ms;
  atomic_int stopping;
};

static int64_t rpc_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *rpc_loop_main(void *p) {
  rpc_loop_t *loop = p;
  int64_t next_tick = rpc_mono_ms() + loop->tick_ms;
  for (;;) {
    gpr_timespec deadline = gpr_inf_future(GPR_CLOCK_REALTIME);
    if (loop->tick) {
      int64_t wait = next_tick - rpc_mono_ms();
      deadline = rpc_deadline_ms(wait > 0 ? wait : 1);
    }
    grpc_event ev = grpc_completion_queue_next(loop->cq, deadline, NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type == GRPC_OP_COMPLETE) {
      rpc_op_t *op = ev.tag;
      op->done(op, ev.success);
    }
    if (loop->tick && !atomic_load(&loop->stopping) && rpc_mono_ms() >= next_tick) {
      loop->tick(loop->arg);
      next_tick = rpc_mono_ms() + loop->tick_ms;
    }
  }
  return NULL;
}

int rpc_loop_new(void (*tick)(void *arg), void *arg, int tick_ms, rpc_loop_t **out) {
  *out = NULL;
  rpc_loop_t *loop = calloc(1, sizeof(*loop));
  if (!loop) return STRATA_ENOMEM;
  loop->tick = tick;
  loop->arg = arg;
  loop->tick_ms = tick_ms > 0 ? tick_ms : 100;
  loop->cq = grpc_completion_queue_create_for_next(NULL);
  if (pthread_create(&loop->thread, NULL, rpc_loop_main, loop) != 0) {
    log_error("rpc: cannot start the completion-queue thread");
    grpc_completion_queue_shutdown(loop->cq);
    grpc_completion_queue_destroy(loop->cq);
    free(loop);
    return STRATA_EINTERNAL;
  }
  *out = loop;
  return 0;
}

grpc_completion_queue *rpc_loop_cq(rpc_loop_t *loop) { return loop->cq; }

int rpc_loop_on_thread(const rpc_loop_t *loop) { return pthread_equal(pthread_self(), loop->thread); }

void rpc_loop_free(rpc_loop_t *loop) {
  if (!loop) return;
  atomic_store(&loop->stopping, 1);
  grpc_completion_queue_shutdown(loop->cq);
  pthread_join(loop->thread, NULL);
  grpc_completion_queue_destroy(loop->cq);
  free(loop);
}

/* ---- client streams ---------------------------------------------------------------------------- */

typedef struct {
  rpc_op_t op;
  rpc_stream_t *s;
} rpc_stream_op_t;

struct rpc_stream {
  grpc_call *call;
  const ProtobufCMessageDescriptor *desc;
  rpc_stream_cbs_t cbs;
  void *arg;
  pthread_mutex_t mu;
  /* Guarded by mu: */
  int owner_ref;       /* the caller's reference */
  int pending_ops;     /* batches started and not yet through their done handler */
  int send_busy;       /* one SEND_MESSAGE in flight at a time (gRPC allows no more) */
  int half_closed;
  int ended;           /* status received: sends are refused */
  int closed_cb;       /* on_close delivered */
  grpc_byte_buffer **sendq;
  size_t n_sendq, cap_sendq;
  /* Loop thread only: */
  grpc_byte_buffer *send_bb;
  grpc_byte_buffer *recv_bb;
  int status_done, recv_done;
  grpc_metadata_array md_init, md_trail;
  grpc_status_code code;
  grpc_slice details;
  const char *err_string;
  grpc_metadata *md_send;  /* (n_md_send) the call's initial metadata, kept until the stream dies */
  size_t n_md_send;
  rpc_stream_op_t op_send, op_md, op_recv, op_status;
};

static void rpc_stream_destroy(rpc_stream_t *s) {
  for (size_t i = 0; i < s->n_sendq; i++) grpc_byte_buffer_destroy(s->sendq[i]);
  free(s->sendq);
  if (s->send_bb) grpc_byte_buffer_destroy(s->send_bb);
  if (s->recv_bb) grpc_byte_buffer_destroy(s->recv_bb);
  grpc_metadata_array_destroy(&s->md_init);
  grpc_metadata_array_destroy(&s->md_trail);
  grpc_slice_unref(s->details);
  if (s->err_string) gpr_free((void *)s->err_string);
  for (size_t i = 0; i < s->n_md_send; i++) {
    grpc_slice_unref(s->md_send[i].key);
    grpc_slice_unref(s->md_send[i].value);
  }
  free(s->md_send);
  if (s->call) grpc_call_unref(s->call);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* rpc_stream_op_end: the end of one done handler (or of a failed start): drop its count and free the
 * stream when nothing references it any more. */
static void rpc_stream_op_end(rpc_stream_t *s) {
  pthread_mutex_lock(&s->mu);
  s->pending_ops--;
  int dead = s->pending_ops == 0 && !s->owner_ref && s->closed_cb;
  pthread_mutex_unlock(&s->mu);
  if (dead) rpc_stream_destroy(s);
}

/* Starts a batch counted in pending_ops. Caller holds mu. */
static int rpc_stream_start(rpc_stream_t *s, const grpc_op *ops, size_t n, rpc_stream_op_t *op) {
  grpc_call_error e = grpc_call_start_batch(s->call, ops, n, &op->op, NULL);
  if (e != GRPC_CALL_OK) {
    log_error("rpc: grpc_call_start_batch failed on a stream (call error %d)", (int)e);
    return STRATA_EINTERNAL;
  }
  s->pending_ops++;
  return 0;
}

/* Sends the next queued message, if any and none is in flight. Caller holds mu. */
static void rpc_stream_pump(rpc_stream_t *s) {
  if (s->send_busy || s->n_sendq == 0 || s->ended) return;
  s->send_bb = s->sendq[0];
  memmove(s->sendq, s->sendq + 1, (s->n_sendq - 1) * sizeof(*s->sendq));
  s->n_sendq--;
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_SEND_MESSAGE;
  op.data.send_message.send_message = s->send_bb;
  if (rpc_stream_start(s, &op, 1, &s->op_send) == 0) s->send_busy = 1;
}

static void rpc_stream_maybe_close(rpc_stream_t *s) {
  if (!s->status_done || !s->recv_done) return;
  pthread_mutex_lock(&s->mu);
  int first = !s->closed_cb;
  s->closed_cb = 1;
  pthread_mutex_unlock(&s->mu);
  if (!first) return;
  rpc_status_t st;
  rpc_status_fill(&st, s->code, s->details);
  if (s->cbs.on_close) s->cbs.on_close(s, rpc_status_to_strata(s->code), &st, s->arg);
}

static void rpc_stream_send_done(rpc_op_t *op, int ok) {
  rpc_stream_t *s = ((rpc_stream_op_t *)op)->s;
  pthread_mutex_lock(&s->mu);
  if (s->send_bb) grpc_byte_buffer_destroy(s->send_bb);
  s->send_bb = NULL;
  s->send_busy = 0;
  if (ok) rpc_stream_pump(s);
  else s->ended = 1;
  pthread_mutex_unlock(&s->mu);
  rpc_stream_op_end(s);
}

static void rpc_stream_recv_next(rpc_stream_t *s) {
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &s->recv_bb;
  pthread_mutex_lock(&s->mu);
  int failed = rpc_stream_start(s, &op, 1, &s->op_recv) != 0;
  pthread_mutex_unlock(&s->mu);
  if (failed) {
    s->recv_done = 1;
    rpc_stream_maybe_close(s);
  }
}

static void rpc_stream_recv_done(rpc_op_t *op, int ok) {
  rpc_stream_t *s = ((rpc_stream_op_t *)op)->s;
  if (ok && s->recv_bb) {
    ProtobufCMessage *msg = NULL;
    int rc = rpc_unpack(s->recv_bb, s->desc, &msg);
    grpc_byte_buffer_destroy(s->recv_bb);
    s->recv_bb = NULL;
    if (rc == 0) {
      if (s->cbs.on_message) s->cbs.on_message(s, msg, s->arg);
      protobuf_c_message_free_unpacked(msg, NULL);
    } else {
      log_error("rpc: a stream response does not parse as %s; cancelling the call", s->desc->name);
      grpc_call_cancel_with_status(s->call, GRPC_STATUS_INTERNAL, "malformed response", NULL);
    }
    rpc_stream_recv_next(s);
  } else {
    s->recv_done = 1;
    rpc_stream_maybe_close(s);
  }
  rpc_stream_op_end(s);
}

static void rpc_stream_md_done(rpc_op_t *op, int ok) {
  rpc_stream_t *s = ((rpc_stream_op_t *)op)->s;
  /* NOTE: RECV_MESSAGE only completes once initial metadata was asked for, and grpc-go (etcd) sends
   * headers with its first response, so the metadata wait runs in its own batch. */
  if (ok) {
    rpc_stream_recv_next(s);
  } else {
    s->recv_done = 1;
    rpc_stream_maybe_close(s);
  }
  rpc_stream_op_end(s);
}

static void rpc_stream_status_done(rpc_op_t *op, int ok) {
  rpc_stream_t *s = ((rpc_stream_op_t *)op)->s;
  (void)ok;
  pthread_mutex_lock(&s->mu);
  s->ended = 1;
  pthread_mutex_unlock(&s->mu);
  s->status_done = 1;
  rpc_stream_maybe_close(s);
  rpc_stream_op_end(s);
}

/* Starts the opening batches. Caller holds mu. */
static int rpc_stream_begin(rpc_stream_t *s, const ProtobufCMessage *first, int half_close) {
  grpc_op ops[3];
  memset(ops, 0, sizeof(ops));
  size_t n = 0;
  ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[n].data.send_initial_metadata.count = s->n_md_send;
  ops[n++].data.send_initial_metadata.metadata = s->md_send;
  if (first) {
    s->send_bb = rpc_pack(first);
    if (!s->send_bb) return STRATA_ENOMEM;
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = s->send_bb;
  }
  if (half_close) {
    ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    s->half_closed = 1;
  }
  int rc = rpc_stream_start(s, ops, n, &s->op_send);
  if (rc < 0) return rc;
  s->send_busy = 1;
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[0].data.recv_status_on_client.trailing_metadata = &s->md_trail;
  ops[0].data.recv_status_on_client.status = &s->code;
  ops[0].data.recv_status_on_client.status_details = &s->details;
  ops[0].data.recv_status_on_client.error_string = &s->err_string;
  if ((rc = rpc_stream_start(s, ops, 1, &s->op_status)) < 0) return rc;
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[0].data.recv_initial_metadata.recv_initial_metadata = &s->md_init;
  return rpc_stream_start(s, ops, 1, &s->op_md);
}

/* rpc_stream_copy_md: copies MD into S as gRPC metadata. Returns 0, STRATA_EINVAL, STRATA_ENOMEM. */
static int rpc_stream_copy_md(rpc_stream_t *s, const char *method, const rpc_md_t *md, size_t n_md) {
  if (n_md == 0) return 0;
  if (!(s->md_send = calloc(n_md, sizeof(*s->md_send)))) return STRATA_ENOMEM;
  for (size_t i = 0; i < n_md; i++) {
    if (!md[i].key || !md[i].value) {
      log_error("rpc: %s: metadata entry %zu has no key or value", method, i);
      return STRATA_EINVAL;
    }
    grpc_metadata *e = &s->md_send[s->n_md_send++];
    e->key = grpc_slice_from_copied_string(md[i].key);
    e->value = grpc_slice_from_copied_string(md[i].value);
    /* NOTE: gRPC fails the whole call on an illegal header, after the fact and without saying why. */
    if (!grpc_header_key_is_legal(e->key) || strncmp(md[i].key, "grpc-", 5) == 0 ||
        (!grpc_is_binary_header(e->key) && !grpc_header_nonbin_value_is_legal(e->value))) {
      log_error("rpc: %s: metadata '%s' is not a legal lower-case header name with a printable value", method,
                md[i].key);
      return STRATA_EINVAL;
    }
  }
  return 0;
}

int rpc_stream_open(rpc_loop_t *loop, grpc_channel *ch, const char *method,
                    const ProtobufCMessageDescriptor *resp_desc, const ProtobufCMessage *first,
                    int half_close, int64_t timeout_ms, const rpc_stream_cbs_t *cbs, void *arg,
                    rpc_stream_t **out) {
  return rpc_stream_open_md(loop, ch, method, NULL, 0, resp_desc, first, half_close, timeout_ms, cbs, arg, out);
}

int rpc_stream_open_md(rpc_loop_t *loop, grpc_channel *ch, const char *method, const rpc_md_t *md, size_t n_md,
                       const ProtobufCMessageDescriptor *resp_desc, const ProtobufCMessage *first,
                       int half_close, int64_t timeout_ms, const rpc_stream_cbs_t *cbs, void *arg,
                       rpc_stream_t **out) {
  *out = NULL;
  rpc_stream_t *s = calloc(1, sizeof(*s));
  if (!s) return STRATA_ENOMEM;
  pthread_mutex_init(&s->mu, NULL);
  s->desc = resp_desc;
  s->cbs = *cbs;
  s->arg = arg;
  s->owner_ref = 1;
  s->details = grpc_empty_slice();
  grpc_metadata_array_init(&s->md_init);
  grpc_metadata_array_init(&s->md_trail);
  s->op_send = (rpc_stream_op_t){{rpc_stream_send_done}, s};
  s->op_md = (rpc_stream_op_t){{rpc_stream_md_done}, s};
  s->op_recv = (rpc_stream_op_t){{rpc_stream_recv_done}, s};
  s->op_status = (rpc_stream_op_t){{rpc_stream_status_done}, s};
  int rc = rpc_stream_copy_md(s, method, md, n_md);
  if (rc < 0) {
    rpc_stream_destroy(s);
    return rc;
  }
  grpc_slice path = grpc_slice_from_copied_string(method);
  s->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, rpc_loop_cq(loop), path, NULL,
                                     rpc_deadline_ms(timeout_ms), NULL);
  grpc_slice_unref(path);
  if (!s->call) {
    rpc_stream_destroy(s);
    return STRATA_ENOMEM;
  }
  pthread_mutex_lock(&s->mu);
  rc = rpc_stream_begin(s, first, half_close);
  if (rc < 0 && s->pending_ops > 0) {
    /* Some batches started: they will complete once cancelled, then the stream frees itself. */
    s->owner_ref = 0;
    s->closed_cb = 1;
    pthread_mutex_unlock(&s->mu);
    grpc_call_cancel(s->call, NULL);
    return rc;
  }
  pthread_mutex_unlock(&s->mu);
  if (rc < 0) {
    rpc_stream_destroy(s);
    return rc;
  }
  *out = s;
  return 0;
}

int rpc_stream_send(rpc_stream_t *s, const ProtobufCMessage *msg) {
  int rc = 0;
  pthread_mutex_lock(&s->mu);
  if (s->ended || s->half_closed) {
    rc = STRATA_ECLOSED;
    goto out;
  }
  if (s->n_sendq == s->cap_sendq) {
    size_t cap = s->cap_sendq ? 2 * s->cap_sendq : 8;
    grpc_byte_buffer **q = realloc(s->sendq, cap * sizeof(*q));
    if (!q) {
      rc = STRATA_ENOMEM;
      goto out;
    }
    s->sendq = q;
    s->cap_sendq = cap;
  }
  grpc_byte_buffer *bb = rpc_pack(msg);
  if (!bb) {
    rc = STRATA_ENOMEM;
    goto out;
  }
  s->sendq[s->n_sendq++] = bb;
  rpc_stream_pump(s);
out:
  pthread_mutex_unlock(&s->mu);
  return rc;
}

void rpc_stream_cancel(rpc_stream_t *s) { grpc_call_cancel(s->call, NULL); }

void rpc_stream_release(rpc_stream_t *s) {
  if (!s) return;
  pthread_mutex_lock(&s->mu);
  s->owner_ref = 0;
  int dead = s->pending_ops == 0 && s->closed_cb;
  pthread_mutex_unlock(&s->mu);
  if (dead) rpc_stream_destroy(s);
}
