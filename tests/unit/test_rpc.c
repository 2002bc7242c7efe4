/* test_rpc.c: the gRPC glue (common/rpc): message buffers, a loopback echo server with unary and
 * server-streaming methods, deadlines, cancellation, clean shutdown, client metadata, and keepalive
 * finding a peer behind a blackholed connection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>

#include "common/rpc/rpc.h"
#include "common/status.h"
#include "test/echo.pb-c.h"

#define SAY "/strata.test.Echo/Say"
#define COUNT "/strata.test.Echo/Count"
#define SLOW "/strata.test.Echo/Slow"
/* Served by the test server only (not in echo.proto): EchoRequest in, EchoReply out. */
#define META "/strata.test.Echo/Meta" /* one reply: the x-api-key header, or "(none)" */
#define HOLD "/strata.test.Echo/Hold" /* one reply, then the call stays open until the client leaves */

/* ---- server side ---- */

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done_calls, done_cancelled, producer_closed;
  pthread_t producer;
  int have_producer;
} server_state_t;

static server_state_t g_srv = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0};

static void echo_say(void *arg, const ProtobufCMessage *m, rpc_reply_t *reply) {
  const Strata__Test__EchoRequest *req = (const Strata__Test__EchoRequest *)m;
  if (strcmp(req->text, "fail") == 0) {
    rpc_reply_status(reply, GRPC_STATUS_FAILED_PRECONDITION, "asked to fail");
    return;
  }
  char buf[300];
  snprintf(buf, sizeof(buf), "echo: %s", req->text);
  Strata__Test__EchoReply r = STRATA__TEST__ECHO_REPLY__INIT;
  r.text = buf;
  rpc_reply_message(reply, &r.base);
}

static void echo_slow(void *arg, const ProtobufCMessage *m, rpc_reply_t *reply) {
  const Strata__Test__EchoRequest *req = (const Strata__Test__EchoRequest *)m;
  usleep((useconds_t)req->delay_ms * 1000);
  Strata__Test__EchoReply r = STRATA__TEST__ECHO_REPLY__INIT;
  r.text = "late";
  rpc_reply_message(reply, &r.base);
}

typedef struct {
  rpc_server_call_t *call;
  int count;
} producer_arg_t;

/* Produces messages from another thread until the client goes away, like an engine would. */
static void *producer_main(void *p) {
  producer_arg_t *pa = p;
  int rc = 0;
  for (int i = 0; i < pa->count && rc == 0; i++) {
    Strata__Test__EchoReply r = STRATA__TEST__ECHO_REPLY__INIT;
    r.text = "tick";
    r.index = i;
    rc = rpc_server_call_send(pa->call, &r.base);
    if (i % 16 == 0) usleep(1000);
  }
  pthread_mutex_lock(&g_srv.mu);
  g_srv.producer_closed = rc == STRATA_ECLOSED;
  pthread_mutex_unlock(&g_srv.mu);
  rpc_server_call_finish(pa->call, GRPC_STATUS_OK, NULL);
  free(pa);
  return NULL;
}

static void echo_count(void *arg, const ProtobufCMessage *m, rpc_server_call_t *call) {
  const Strata__Test__EchoRequest *req = (const Strata__Test__EchoRequest *)m;
  if (req->count <= 1000) {
    for (int i = 0; i < req->count; i++) {
      Strata__Test__EchoReply r = STRATA__TEST__ECHO_REPLY__INIT;
      r.text = req->text;
      r.index = i;
      rpc_server_call_send(call, &r.base);
    }
    rpc_server_call_finish(call, GRPC_STATUS_OK, NULL);
    return;
  }
  producer_arg_t *pa = malloc(sizeof(*pa));
  pa->call = call;
  pa->count = req->count;
  pthread_mutex_lock(&g_srv.mu);
  g_srv.have_producer = 1;
  pthread_create(&g_srv.producer, NULL, producer_main, pa);
  pthread_mutex_unlock(&g_srv.mu);
}

static void echo_done(void *arg, rpc_server_call_t *call, int cancelled) {
  pthread_mutex_lock(&g_srv.mu);
  g_srv.done_calls++;
  g_srv.done_cancelled += cancelled != 0;
  pthread_cond_broadcast(&g_srv.cv);
  pthread_mutex_unlock(&g_srv.mu);
}

static void echo_meta(void *arg, const ProtobufCMessage *m, rpc_server_call_t *call) {
  char key[128];
  Strata__Test__EchoReply r = STRATA__TEST__ECHO_REPLY__INIT;
  r.text = rpc_server_call_metadata(call, "x-api-key", key, sizeof(key)) >= 0 ? key : "(none)";
  rpc_server_call_send(call, &r.base);
  rpc_server_call_finish(call, GRPC_STATUS_OK, NULL);
}

static void echo_hold(void *arg, const ProtobufCMessage *m, rpc_server_call_t *call) {
  Strata__Test__EchoReply r = STRATA__TEST__ECHO_REPLY__INIT;
  r.text = "held";
  rpc_server_call_send(call, &r.base);
}

static void echo_hold_done(void *arg, rpc_server_call_t *call, int cancelled) {
  rpc_server_call_finish(call, GRPC_STATUS_CANCELLED, "client left");
}

static const rpc_method_t g_methods[] = {
    {.path = SAY, .request = &strata__test__echo_request__descriptor, .unary = echo_say},
    {.path = SLOW, .request = &strata__test__echo_request__descriptor, .unary = echo_slow},
    {.path = COUNT, .request = &strata__test__echo_request__descriptor, .stream = echo_count, .done = echo_done},
    {.path = META, .request = &strata__test__echo_request__descriptor, .stream = echo_meta},
    {.path = HOLD, .request = &strata__test__echo_request__descriptor, .stream = echo_hold, .done = echo_hold_done},
};
#define N_METHODS (sizeof(g_methods) / sizeof(g_methods[0]))

/* ---- client side ---- */

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int n_msgs, in_order, closed, rc;
  int cancel_after;
  rpc_stream_t *s;
  char first_text[64];
} client_state_t;

static void cl_message(rpc_stream_t *s, const ProtobufCMessage *m, void *arg) {
  client_state_t *c = arg;
  const Strata__Test__EchoReply *r = (const Strata__Test__EchoReply *)m;
  pthread_mutex_lock(&c->mu);
  if (r->index != c->n_msgs) c->in_order = 0;
  if (c->n_msgs == 0) snprintf(c->first_text, sizeof(c->first_text), "%s", r->text);
  c->n_msgs++;
  if (c->cancel_after && c->n_msgs == c->cancel_after) rpc_stream_cancel(s);
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

static void cl_close(rpc_stream_t *s, int rc, const rpc_status_t *st, void *arg) {
  client_state_t *c = arg;
  pthread_mutex_lock(&c->mu);
  c->closed = 1;
  c->rc = rc;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

static void wait_closed(client_state_t *c) {
  pthread_mutex_lock(&c->mu);
  while (!c->closed) pthread_cond_wait(&c->cv, &c->mu);
  pthread_mutex_unlock(&c->mu);
}

/* wait_until: waits at most MS for *FIELD (under c->mu) to reach at least WANT; returns its value. */
static int wait_until(client_state_t *c, const int *field, int want, int ms) {
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += ms / 1000;
  dl.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (dl.tv_nsec >= 1000000000L) {
    dl.tv_sec++;
    dl.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&c->mu);
  while (*field < want && pthread_cond_timedwait(&c->cv, &c->mu, &dl) == 0) {
  }
  int v = *field;
  pthread_mutex_unlock(&c->mu);
  return v;
}

typedef struct {
  rpc_server_t *srv;
  rpc_loop_t *loop;
  grpc_channel *ch;
} fixture_t;

static int setup(void **state) {
  rpc_init();
  fixture_t *f = calloc(1, sizeof(*f));
  rpc_server_opts_t so = {.addr = "127.0.0.1:0"};
  if (rpc_server_new(&so, g_methods, N_METHODS, &f->srv) < 0) return -1;
  char target[64];
  snprintf(target, sizeof(target), "127.0.0.1:%d", rpc_server_port(f->srv));
  if (rpc_channel_new(target, NULL, &f->ch) < 0) return -1;
  if (rpc_loop_new(NULL, NULL, 0, &f->loop) < 0) return -1;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  rpc_server_free(f->srv);
  pthread_mutex_lock(&g_srv.mu);
  int join = g_srv.have_producer;
  g_srv.have_producer = 0;
  pthread_mutex_unlock(&g_srv.mu);
  if (join) pthread_join(g_srv.producer, NULL);
  grpc_channel_destroy(f->ch);
  rpc_loop_free(f->loop);
  free(f);
  rpc_shutdown();
  return 0;
}

/* ---- tests ---- */

static void test_buffers(void **state) {
  rpc_init();
  Strata__Test__EchoRequest req = STRATA__TEST__ECHO_REQUEST__INIT;
  req.text = "hello, world";
  req.count = 300;
  /* Hand-encoded per the protobuf wire format: field 1 (len 12) "hello, world", field 2 varint 300. */
  static const uint8_t want[] = {0x0a, 12, 'h', 'e', 'l', 'l', 'o', ',', ' ', 'w', 'o', 'r', 'l', 'd', 0x10, 0xac, 0x02};
  grpc_byte_buffer *bb = rpc_pack(&req.base);
  assert_int_equal(grpc_byte_buffer_length(bb), sizeof(want));
  grpc_byte_buffer_destroy(bb);
  /* The same bytes split over three slices must parse (messages arrive in pieces). */
  grpc_slice parts[3] = {grpc_slice_from_copied_buffer((const char *)want, 3),
                         grpc_slice_from_copied_buffer((const char *)want + 3, 9),
                         grpc_slice_from_copied_buffer((const char *)want + 12, sizeof(want) - 12)};
  bb = grpc_raw_byte_buffer_create(parts, 3);
  for (int i = 0; i < 3; i++) grpc_slice_unref(parts[i]);
  ProtobufCMessage *m = NULL;
  assert_int_equal(rpc_unpack(bb, &strata__test__echo_request__descriptor, &m), 0);
  Strata__Test__EchoRequest *got = (Strata__Test__EchoRequest *)m;
  assert_string_equal(got->text, "hello, world");
  assert_int_equal(got->count, 300);
  protobuf_c_message_free_unpacked(m, NULL);
  grpc_byte_buffer_destroy(bb);
  /* A truncated message is rejected, not half-parsed. */
  grpc_slice cut = grpc_slice_from_copied_buffer((const char *)want, 5);
  bb = grpc_raw_byte_buffer_create(&cut, 1);
  grpc_slice_unref(cut);
  assert_int_equal(rpc_unpack(bb, &strata__test__echo_request__descriptor, &m), STRATA_EFORMAT);
  assert_null(m);
  grpc_byte_buffer_destroy(bb);
  assert_int_equal(rpc_status_to_strata(GRPC_STATUS_UNAVAILABLE), STRATA_EUNAVAILABLE);
  assert_int_equal(rpc_status_to_strata(GRPC_STATUS_OK), 0);
  rpc_shutdown();
}

static void test_unary(void **state) {
  fixture_t *f = *state;
  Strata__Test__EchoRequest req = STRATA__TEST__ECHO_REQUEST__INIT;
  req.text = "ping";
  ProtobufCMessage *resp = NULL;
  rpc_status_t st;
  for (int i = 0; i < 20; i++) {
    assert_int_equal(rpc_unary_call(f->ch, SAY, &req.base, &strata__test__echo_reply__descriptor, &resp, 5000, &st), 0);
    assert_string_equal(((Strata__Test__EchoReply *)resp)->text, "echo: ping");
    protobuf_c_message_free_unpacked(resp, NULL);
  }
  req.text = "fail";
  assert_int_equal(rpc_unary_call(f->ch, SAY, &req.base, &strata__test__echo_reply__descriptor, &resp, 5000, &st),
                   STRATA_EAGAIN);
  assert_null(resp);
  assert_int_equal(st.code, GRPC_STATUS_FAILED_PRECONDITION);
  assert_string_equal(st.details, "asked to fail");
  assert_int_equal(rpc_unary_call(f->ch, "/strata.test.Echo/Nope", &req.base, &strata__test__echo_reply__descriptor,
                                  &resp, 5000, &st),
                   STRATA_EUNSUPPORTED);
  assert_int_equal(st.code, GRPC_STATUS_UNIMPLEMENTED);
  /* A stream handler that sends one message answers a unary call (the async unary pattern). */
  req.text = "one";
  req.count = 1;
  assert_int_equal(rpc_unary_call(f->ch, COUNT, &req.base, &strata__test__echo_reply__descriptor, &resp, 5000, &st), 0);
  assert_string_equal(((Strata__Test__EchoReply *)resp)->text, "one");
  protobuf_c_message_free_unpacked(resp, NULL);
}

static void test_deadline(void **state) {
  fixture_t *f = *state;
  Strata__Test__EchoRequest req = STRATA__TEST__ECHO_REQUEST__INIT;
  req.delay_ms = 600;
  ProtobufCMessage *resp = NULL;
  rpc_status_t st;
  assert_int_equal(rpc_unary_call(f->ch, SLOW, &req.base, &strata__test__echo_reply__descriptor, &resp, 100, &st),
                   STRATA_ETIMEDOUT);
  assert_int_equal(st.code, GRPC_STATUS_DEADLINE_EXCEEDED);
  assert_null(resp);
  /* The server survives an abandoned call. */
  req.delay_ms = 0;
  assert_int_equal(rpc_unary_call(f->ch, SLOW, &req.base, &strata__test__echo_reply__descriptor, &resp, 5000, &st), 0);
  assert_string_equal(((Strata__Test__EchoReply *)resp)->text, "late");
  protobuf_c_message_free_unpacked(resp, NULL);
}

static void test_unreachable(void **state) {
  rpc_init();
  grpc_channel *ch = NULL;
  /* Port 1 on loopback: nothing listens there. */
  assert_int_equal(rpc_channel_new("127.0.0.1:1", NULL, &ch), 0);
  Strata__Test__EchoRequest req = STRATA__TEST__ECHO_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  rpc_status_t st;
  assert_int_equal(rpc_unary_call(ch, SAY, &req.base, &strata__test__echo_reply__descriptor, &resp, 2000, &st),
                   STRATA_EUNAVAILABLE);
  grpc_channel_destroy(ch);
  rpc_shutdown();
}

static void test_server_stream(void **state) {
  fixture_t *f = *state;
  client_state_t c = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 1, 0, 0, 0, NULL, ""};
  Strata__Test__EchoRequest req = STRATA__TEST__ECHO_REQUEST__INIT;
  req.text = "tok";
  req.count = 200;
  rpc_stream_cbs_t cbs = {cl_message, cl_close};
  rpc_stream_t *s = NULL;
  assert_int_equal(rpc_stream_open(f->loop, f->ch, COUNT, &strata__test__echo_reply__descriptor, &req.base, 1,
                                   5000, &cbs, &c, &s),
                   0);
  wait_closed(&c);
  assert_int_equal(c.rc, 0);
  assert_int_equal(c.n_msgs, 200);
  assert_true(c.in_order);
  assert_string_equal(c.first_text, "tok");
  assert_int_equal(rpc_stream_send(s, &req.base), STRATA_ECLOSED);
  rpc_stream_release(s);
}

static void test_cancelled_stream(void **state) {
  fixture_t *f = *state;
  pthread_mutex_lock(&g_srv.mu);
  g_srv.done_calls = g_srv.done_cancelled = g_srv.producer_closed = 0;
  pthread_mutex_unlock(&g_srv.mu);
  client_state_t c = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 1, 0, 0, 10, NULL, ""};
  Strata__Test__EchoRequest req = STRATA__TEST__ECHO_REQUEST__INIT;
  req.text = "endless";
  req.count = 100000000;
  rpc_stream_cbs_t cbs = {cl_message, cl_close};
  rpc_stream_t *s = NULL;
  assert_int_equal(rpc_stream_open(f->loop, f->ch, COUNT, &strata__test__echo_reply__descriptor, &req.base, 1, 0,
                                   &cbs, &c, &s),
                   0);
  wait_closed(&c);
  assert_int_equal(c.rc, STRATA_ECANCELED);
  assert_true(c.n_msgs >= 10);
  rpc_stream_release(s);
  /* The server learns about it and the producer thread stops. */
  pthread_mutex_lock(&g_srv.mu);
  while (g_srv.done_calls == 0) pthread_cond_wait(&g_srv.cv, &g_srv.mu);
  assert_int_equal(g_srv.done_cancelled, 1);
  int join = g_srv.have_producer;
  g_srv.have_producer = 0;
  pthread_mutex_unlock(&g_srv.mu);
  assert_true(join);
  pthread_join(g_srv.producer, NULL);
  assert_true(g_srv.producer_closed);
}

/* The server goes away while a stream is being produced: the client sees the call end and shutdown
 * completes (teardown frees the server with the producer still running). */
static void test_shutdown_mid_stream(void **state) {
  fixture_t *f = *state;
  client_state_t c = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 1, 0, 0, 0, NULL, ""};
  Strata__Test__EchoRequest req = STRATA__TEST__ECHO_REQUEST__INIT;
  req.text = "endless";
  req.count = 100000000;
  rpc_stream_cbs_t cbs = {cl_message, cl_close};
  rpc_stream_t *s = NULL;
  assert_int_equal(rpc_stream_open(f->loop, f->ch, COUNT, &strata__test__echo_reply__descriptor, &req.base, 1, 0,
                                   &cbs, &c, &s),
                   0);
  for (int i = 0; i < 500; i++) {
    pthread_mutex_lock(&c.mu);
    int n = c.n_msgs;
    pthread_mutex_unlock(&c.mu);
    if (n >= 5) break;
    usleep(10000);
  }
  rpc_server_free(f->srv);
  f->srv = NULL;
  wait_closed(&c);
  assert_int_not_equal(c.rc, 0);
  rpc_stream_release(s);
  rpc_server_opts_t so = {.addr = "127.0.0.1:0"};
  assert_int_equal(rpc_server_new(&so, g_methods, N_METHODS, &f->srv), 0); /* for teardown */
}

/* TLS: a self-signed certificate for 127.0.0.1 made with the openssl tool; the right CA connects,
 * a plaintext client to the TLS port does not. */
static void test_tls(void **state) {
  char dir[] = "/tmp/strata_rpc_tls_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char cmd[512], cert[64], key[64];
  snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
  snprintf(key, sizeof(key), "%s/key.pem", dir);
  snprintf(cmd, sizeof(cmd),
           "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
           "-addext subjectAltName=IP:127.0.0.1 -keyout %s -out %s >/dev/null 2>&1", key, cert);
  if (system(cmd) != 0) {
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    skip();
  }
  rpc_init();
  rpc_server_t *srv = NULL;
  rpc_server_opts_t so = {.addr = "127.0.0.1:0", .cert_file = cert, .key_file = key};
  assert_int_equal(rpc_server_new(&so, g_methods, N_METHODS, &srv), 0);
  char target[64];
  snprintf(target, sizeof(target), "127.0.0.1:%d", rpc_server_port(srv));
  grpc_channel *ch = NULL, *plain = NULL;
  rpc_channel_opts_t co = {.ca_file = cert};
  assert_int_equal(rpc_channel_new(target, &co, &ch), 0);
  assert_int_equal(rpc_channel_new(target, NULL, &plain), 0);
  Strata__Test__EchoRequest req = STRATA__TEST__ECHO_REQUEST__INIT;
  req.text = "secret";
  ProtobufCMessage *resp = NULL;
  rpc_status_t st;
  assert_int_equal(rpc_unary_call(ch, SAY, &req.base, &strata__test__echo_reply__descriptor, &resp, 5000, &st), 0);
  assert_string_equal(((Strata__Test__EchoReply *)resp)->text, "echo: secret");
  protobuf_c_message_free_unpacked(resp, NULL);
  assert_int_equal(rpc_unary_call(plain, SAY, &req.base, &strata__test__echo_reply__descriptor, &resp, 2000, &st),
                   STRATA_EUNAVAILABLE);
  rpc_channel_opts_t missing = {.ca_file = "/nonexistent/ca.pem"};
  grpc_channel *none = NULL;
  assert_int_equal(rpc_channel_new(target, &missing, &none), STRATA_EIO);
  grpc_channel_destroy(ch);
  grpc_channel_destroy(plain);
  rpc_server_free(srv);
  rpc_shutdown();
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
}

/* Client metadata reaches the server's handler; a header gRPC cannot send is refused up front. */
static void test_stream_metadata(void **state) {
  fixture_t *f = *state;
  Strata__Test__EchoRequest req = STRATA__TEST__ECHO_REQUEST__INIT;
  rpc_stream_cbs_t cbs = {cl_message, cl_close};
  const rpc_md_t md[] = {{"authorization", "Bearer abc"}, {"x-api-key", "sk-test-123"}};
  client_state_t c = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 1, 0, 0, 0, NULL, ""};
  rpc_stream_t *s = NULL;
  assert_int_equal(rpc_stream_open_md(f->loop, f->ch, META, md, 2, &strata__test__echo_reply__descriptor, &req.base,
                                      1, 5000, &cbs, &c, &s),
                   0);
  wait_closed(&c);
  assert_int_equal(c.rc, 0);
  assert_string_equal(c.first_text, "sk-test-123");
  rpc_stream_release(s);
  /* Without metadata (the plain call) the server sees none. */
  client_state_t c2 = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 1, 0, 0, 0, NULL, ""};
  assert_int_equal(rpc_stream_open(f->loop, f->ch, META, &strata__test__echo_reply__descriptor, &req.base, 1, 5000,
                                   &cbs, &c2, &s),
                   0);
  wait_closed(&c2);
  assert_string_equal(c2.first_text, "(none)");
  rpc_stream_release(s);
  /* Upper case and reserved names, and a newline in a value, would be refused by gRPC on the wire. */
  const rpc_md_t bad[][1] = {{{"X-Api-Key", "v"}}, {{"grpc-timeout", "1S"}}, {{"x-api-key", "a\nb"}}};
  for (int i = 0; i < 3; i++) {
    s = (rpc_stream_t *)&c; /* must be reset */
    assert_int_equal(rpc_stream_open_md(f->loop, f->ch, META, bad[i], 1, &strata__test__echo_reply__descriptor,
                                        &req.base, 1, 5000, &cbs, &c2, &s),
                     STRATA_EINVAL);
    assert_null(s);
  }
}

/* ---- a TCP relay that can turn into a blackhole (a hung peer: the connection stays open, nothing
 * comes back), for keepalive ---- */

typedef struct {
  int lfd, target_port, port;
  int fds[8][2]; /* (client, server) pairs */
  int n;
  atomic_int blackhole, stop;
  pthread_t th;
} relay_t;

static int relay_pump(int from, int to) {
  char buf[16384];
  ssize_t n = read(from, buf, sizeof(buf));
  if (n <= 0) return -1;
  for (ssize_t off = 0; off < n;) {
    ssize_t w = write(to, buf + off, (size_t)(n - off));
    if (w <= 0) return -1;
    off += w;
  }
  return 0;
}

static void *relay_main(void *p) {
  relay_t *r = p;
  while (!atomic_load(&r->stop)) {
    if (atomic_load(&r->blackhole)) { /* read nothing, answer nothing, close nothing */
      usleep(20000);
      continue;
    }
    struct pollfd pf[17];
    int n = 0;
    pf[n++] = (struct pollfd){.fd = r->lfd, .events = POLLIN};
    for (int i = 0; i < r->n; i++) {
      pf[n++] = (struct pollfd){.fd = r->fds[i][0], .events = POLLIN};
      pf[n++] = (struct pollfd){.fd = r->fds[i][1], .events = POLLIN};
    }
    if (poll(pf, (nfds_t)n, 20) <= 0) continue;
    if ((pf[0].revents & POLLIN) && r->n < 8) {
      int cfd = accept(r->lfd, NULL, NULL);
      int sfd = socket(AF_INET, SOCK_STREAM, 0);
      struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->target_port)};
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (cfd >= 0 && sfd >= 0 && connect(sfd, (struct sockaddr *)&a, sizeof(a)) == 0) {
        r->fds[r->n][0] = cfd;
        r->fds[r->n++][1] = sfd;
      } else {
        if (cfd >= 0) close(cfd);
        if (sfd >= 0) close(sfd);
      }
    }
    for (int i = 0; i < r->n && !atomic_load(&r->blackhole); i++) {
      short ce = pf[1 + 2 * i].revents, se = pf[2 + 2 * i].revents;
      if ((ce & (POLLIN | POLLHUP) && relay_pump(r->fds[i][0], r->fds[i][1]) < 0) ||
          (se & (POLLIN | POLLHUP) && relay_pump(r->fds[i][1], r->fds[i][0]) < 0)) {
        close(r->fds[i][0]); /* one side closed: pass it on (poll skips negative descriptors) */
        close(r->fds[i][1]);
        r->fds[i][0] = r->fds[i][1] = -1;
      }
    }
  }
  return NULL;
}

static void relay_start(relay_t *r, int target_port) {
  memset(r, 0, sizeof(*r));
  r->target_port = target_port;
  r->lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  assert_int_equal(bind(r->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
  assert_int_equal(listen(r->lfd, 8), 0);
  assert_int_equal(getsockname(r->lfd, (struct sockaddr *)&a, &len), 0);
  r->port = ntohs(a.sin_port);
  assert_int_equal(pthread_create(&r->th, NULL, relay_main, r), 0);
}

static void relay_stop(relay_t *r) {
  atomic_store(&r->stop, 1);
  pthread_join(r->th, NULL);
  for (int i = 0; i < r->n; i++) {
    if (r->fds[i][0] >= 0) close(r->fds[i][0]);
    if (r->fds[i][1] >= 0) close(r->fds[i][1]);
  }
  close(r->lfd);
}

/* A stream to a peer that stops answering (the relay swallows everything, like a SIGSTOPped
 * process or a dropped route) ends with UNAVAILABLE once a keepalive ping goes unanswered, instead
 * of hanging forever; while the peer answers, the pings keep an idle stream alive (the server
 * permits them). */
static void test_keepalive_blackhole(void **state) {
  fixture_t *f = *state;
  relay_t r;
  relay_start(&r, rpc_server_port(f->srv));
  char target[64];
  snprintf(target, sizeof(target), "127.0.0.1:%d", r.port);
  grpc_channel *ch = NULL;
  rpc_channel_opts_t co = {.keepalive_ms = 100, .keepalive_timeout_ms = 500};
  assert_int_equal(rpc_channel_new(target, &co, &ch), 0);
  client_state_t c = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 1, 0, 0, 0, NULL, ""};
  Strata__Test__EchoRequest req = STRATA__TEST__ECHO_REQUEST__INIT;
  rpc_stream_cbs_t cbs = {cl_message, cl_close};
  rpc_stream_t *s = NULL;
  assert_int_equal(rpc_stream_open(f->loop, ch, HOLD, &strata__test__echo_reply__descriptor, &req.base, 1, 0, &cbs,
                                   &c, &s),
                   0);
  assert_int_equal(wait_until(&c, &c.n_msgs, 1, 10000), 1);
  assert_string_equal(c.first_text, "held");
  /* Three or more pings on an idle stream (gRPC sends at most one a second): a server that refused
   * them would send GOAWAY "too_many_pings" after the third (its default allows one per 5 minutes)
   * and the call would end. */
  assert_int_equal(wait_until(&c, &c.closed, 1, 4000), 0);
  atomic_store(&r.blackhole, 1);
  assert_int_equal(wait_until(&c, &c.closed, 1, 15000), 1);
  assert_int_equal(c.rc, STRATA_EUNAVAILABLE);
  rpc_stream_release(s);
  grpc_channel_destroy(ch);
  relay_stop(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_buffers),
      cmocka_unit_test(test_unreachable),
      cmocka_unit_test_setup_teardown(test_unary, setup, teardown),
      cmocka_unit_test_setup_teardown(test_deadline, setup, teardown),
      cmocka_unit_test_setup_teardown(test_server_stream, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancelled_stream, setup, teardown),
      cmocka_unit_test_setup_teardown(test_shutdown_mid_stream, setup, teardown),
      cmocka_unit_test(test_tls),
      cmocka_unit_test_setup_teardown(test_stream_metadata, setup, teardown),
      cmocka_unit_test_setup_teardown(test_keepalive_blackhole, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
