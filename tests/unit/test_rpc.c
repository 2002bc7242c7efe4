/* test_rpc.c: the gRPC glue (common/rpc): message buffers, a loopback echo server with unary and
 * server-streaming methods, deadlines, cancellation and clean shutdown. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>

#include "common/rpc/rpc.h"
#include "common/status.h"
#include "test/echo.pb-c.h"

#define SAY "/strata.test.Echo/Say"
#define COUNT "/strata.test.Echo/Count"
#define SLOW "/strata.test.Echo/Slow"

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

static const rpc_method_t g_methods[] = {
    {.path = SAY, .request = &strata__test__echo_request__descriptor, .unary = echo_say},
    {.path = SLOW, .request = &strata__test__echo_request__descriptor, .unary = echo_slow},
    {.path = COUNT, .request = &strata__test__echo_request__descriptor, .stream = echo_count, .done = echo_done},
};

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

typedef struct {
  rpc_server_t *srv;
  rpc_loop_t *loop;
  grpc_channel *ch;
} fixture_t;

static int setup(void **state) {
  rpc_init();
  fixture_t *f = calloc(1, sizeof(*f));
  rpc_server_opts_t so = {.addr = "127.0.0.1:0"};
  if (rpc_server_new(&so, g_methods, 3, &f->srv) < 0) return -1;
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
  assert_int_equal(rpc_server_new(&so, g_methods, 3, &f->srv), 0); /* for teardown */
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
  assert_int_equal(rpc_server_new(&so, g_methods, 3, &srv), 0);
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
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
