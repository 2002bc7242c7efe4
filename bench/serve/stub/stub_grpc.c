/* stub_grpc.c: strata-stub-grpc, a deterministic strata.v1.Inference/Generate server for testing the
 * harness's gRPC target: token k of every stream is sent at ttft + k * itl after the call arrived. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/rpc/rpc.h"
#include "strata/v1/inference.pb-c.h"

/* Rules on the numeric request_id n (other ids are normal):
 *   fail:  n % fail_every == 1 % fail_every -> RESOURCE_EXHAUSTED before any message
 *   slow:  n % slow_every == 0               -> slow_ttft_ms */
typedef struct {
  double ttft_ms, itl_ms, slow_ttft_ms;
  long fail_every, slow_every;
} stub_cfg_t;

typedef struct stub_call {
  rpc_server_call_t *call;
  double t0;          /* arrival, CLOCK_MONOTONIC seconds */
  double ttft_s;
  int n_tokens, sent;
  int prompt_words;
  struct stub_call *next;
} stub_call_t;

/* The sender thread owns the list; the server thread adds to it under mu. */
typedef struct {
  stub_cfg_t cfg;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  stub_call_t *calls;
  int stop;
} stub_t;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int count_words(const char *s) {
  int n = 0, in = 0;
  for (; s && *s; s++) {
    int sp = *s == ' ' || *s == '\n' || *s == '\t';
    if (!sp && !in) n++;
    in = !sp;
  }
  return n;
}

static void on_generate(void *arg, const ProtobufCMessage *msg, rpc_server_call_t *call) {
  stub_t *st = arg;
  const Strata__V1__GenerateRequest *req = (const Strata__V1__GenerateRequest *)msg;
  char *end = NULL;
  long n = req->request_id ? strtol(req->request_id, &end, 10) : -1;
  int numeric = req->request_id && end != req->request_id && !*end;
  if (numeric && st->cfg.fail_every > 0 && n % st->cfg.fail_every == 1 % st->cfg.fail_every) {
    rpc_server_call_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "stub: fail rule");
    return;
  }
  stub_call_t *c = calloc(1, sizeof *c);
  if (!c) {
    rpc_server_call_finish(call, GRPC_STATUS_INTERNAL, "stub: out of memory");
    return;
  }
  c->call = call;
  c->t0 = now_s();
  int slow = numeric && st->cfg.slow_every > 0 && n % st->cfg.slow_every == 0;
  c->ttft_s = (slow ? st->cfg.slow_ttft_ms : st->cfg.ttft_ms) / 1000.0;
  c->n_tokens = req->params && req->params->has_max_tokens ? (int)req->params->max_tokens : 16;
  if (c->n_tokens < 1) c->n_tokens = 1;
  c->prompt_words = req->input_case == STRATA__V1__GENERATE_REQUEST__INPUT_PROMPT ? count_words(req->prompt) : 0;
  pthread_mutex_lock(&st->mu);
  c->next = st->calls;
  st->calls = c;
  pthread_cond_signal(&st->cv);
  pthread_mutex_unlock(&st->mu);
}

/* Sends token k of C (the last one carries finish_reason and usage); 1 when C is finished. */
static int send_token(stub_call_t *c) {
  Strata__V1__GenerateResponse r = STRATA__V1__GENERATE_RESPONSE__INIT;
  Strata__V1__Usage u = STRATA__V1__USAGE__INIT;
  r.text = " tok";
  int last = c->sent + 1 == c->n_tokens;
  if (last) {
    r.finish_reason = "length";
    u.has_prompt_tokens = u.has_completion_tokens = 1;
    u.prompt_tokens = (uint32_t)c->prompt_words;
    u.completion_tokens = (uint32_t)c->n_tokens;
    r.usage = &u;
  }
  int rc = rpc_server_call_send(c->call, &r.base);
  c->sent++;
  if (rc) {
    rpc_server_call_finish(c->call, GRPC_STATUS_CANCELLED, "stub: the client went away");
    return 1;
  }
  if (last) rpc_server_call_finish(c->call, GRPC_STATUS_OK, "");
  return last;
}

static double due_s(const stub_t *st, const stub_call_t *c) {
  return c->t0 + c->ttft_s + c->sent * st->cfg.itl_ms / 1000.0;
}

static void *sender_main(void *arg) {
  stub_t *st = arg;
  pthread_mutex_lock(&st->mu);
  while (!st->stop) {
    double now = now_s(), next = now + 1.0;
    for (stub_call_t **pp = &st->calls; *pp;) {
      stub_call_t *c = *pp;
      while (due_s(st, c) <= now && c->sent < c->n_tokens) {
        if (send_token(c)) break;
      }
      if (c->sent >= c->n_tokens) {
        *pp = c->next;
        free(c);
        continue;
      }
      if (due_s(st, c) < next) next = due_s(st, c);
      pp = &c->next;
    }
    struct timespec ts = {.tv_sec = (time_t)next, .tv_nsec = (long)((next - (double)(time_t)next) * 1e9)};
    pthread_cond_timedwait(&st->cv, &st->mu, &ts);
  }
  while (st->calls) {
    stub_call_t *c = st->calls;
    st->calls = c->next;
    rpc_server_call_finish(c->call, GRPC_STATUS_UNAVAILABLE, "stub: shutting down");
    free(c);
  }
  pthread_mutex_unlock(&st->mu);
  return NULL;
}

int main(int argc, char **argv) {
  stub_t st = {.cfg = {.ttft_ms = 100, .itl_ms = 10, .slow_ttft_ms = 300}};
  const char *port = "0", *cert = NULL, *key = NULL;
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *k = argv[i], *v = argv[i + 1];
    if (!strcmp(k, "--port")) port = v;
    else if (!strcmp(k, "--ttft-ms")) st.cfg.ttft_ms = atof(v);
    else if (!strcmp(k, "--itl-ms")) st.cfg.itl_ms = atof(v);
    else if (!strcmp(k, "--slow-ttft-ms")) st.cfg.slow_ttft_ms = atof(v);
    else if (!strcmp(k, "--fail-every")) st.cfg.fail_every = atol(v);
    else if (!strcmp(k, "--slow-every")) st.cfg.slow_every = atol(v);
    else if (!strcmp(k, "--tls-cert")) cert = v;
    else if (!strcmp(k, "--tls-key")) key = v;
    else {
      fprintf(stderr, "usage: strata-stub-grpc [--port N (0: any; printed as 'PORT n')] [--ttft-ms X] [--itl-ms X]\n"
                      "       [--slow-every K --slow-ttft-ms X] [--fail-every K] [--tls-cert PEM --tls-key PEM];\n"
                      "       stop it with SIGTERM\n");
      return 2;
    }
  }
  /* SIGTERM/SIGINT are waited for below; block them before any thread starts so none takes them. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&st.cv, &ca);
  pthread_mutex_init(&st.mu, NULL);
  rpc_init();
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%s", port);
  rpc_method_t methods[] = {{.path = "/strata.v1.Inference/Generate",
                             .request = &strata__v1__generate_request__descriptor,
                             .stream = on_generate,
                             .arg = &st}};
  rpc_server_opts_t so = {.addr = addr, .cert_file = cert, .key_file = key};
  rpc_server_t *srv = NULL;
  pthread_t sender;
  if (pthread_create(&sender, NULL, sender_main, &st)) return 1;
  if (rpc_server_new(&so, methods, 1, &srv)) {
    fprintf(stderr, "strata-stub-grpc: cannot listen on %s\n", addr);
    return 1;
  }
  printf("PORT %d\n", rpc_server_port(srv));
  fflush(stdout);
  int sig = 0;
  sigwait(&sigs, &sig);
  pthread_mutex_lock(&st.mu);
  st.stop = 1;
  pthread_cond_signal(&st.cv);
  pthread_mutex_unlock(&st.mu);
  pthread_join(sender, NULL);
  rpc_server_free(srv);
  rpc_shutdown();
  return 0;
}
