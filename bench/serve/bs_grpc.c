/* bs_grpc.c: the gRPC target of the harness: strata.v1.Inference/Generate streams on common/rpc's
 * completion-queue thread, handed over to the harness's libev loop through a queue + ev_async. */
#include <ev.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/serve/bs_int.h"
#include "common/log.h"
#include "common/rpc/rpc.h"
#include "common/status.h"
#include "strata/v1/inference.pb-c.h"

#define BS_GRPC_METHOD "/strata.v1.Inference/Generate"

/* One Generate call. The rpc thread writes the result fields until on_close; the libev thread reads
 * them only after taking the call from the closed list (the queue's mutex orders the two). */
typedef struct bs_grpc_call {
  bs_grpc_t *g;
  bs_req_t *q;
  int usage_prompt, usage_completion;
  int err_event; /* finish_reason "error" */
  int rc, code;
  double t_end;
  char details[256]; /* as rpc_status_t carries them */
  struct bs_grpc_call *next_closed;
} bs_grpc_call_t;

/* A message that carried text: only its arrival time matters. */
typedef struct {
  bs_req_t *q;
  double t;
} bs_grpc_ev_t;

struct bs_grpc {
  const bs_cfg_t *cfg;
  struct ev_loop *loop;
  bs_grpc_cbs_t cbs;
  grpc_channel *ch;
  rpc_loop_t *rl;
  int rpc_inited;
  ev_async async;
  pthread_mutex_t mu;
  /* under mu: text events in arrival order, closed calls, and whether a wake-up is pending */
  bs_grpc_ev_t *in;
  int n_in, cap_in;
  bs_grpc_call_t *closed;
  int pending;
  int64_t n_dropped;
  /* libev thread only */
  bs_grpc_ev_t *out;
  int cap_out;
  int logged_fail;
};

/* ---- the rpc thread ---- */

/* Wakes the libev loop when the queue turns non-empty. Caller holds mu; the send happens after. */
static int mark_pending(bs_grpc_t *g) {
  int wake = !g->pending;
  g->pending = 1;
  return wake;
}

static void on_message(rpc_stream_t *s, const ProtobufCMessage *msg, void *arg) {
  (void)s;
  bs_grpc_call_t *c = arg;
  bs_grpc_t *g = c->g;
  const Strata__V1__GenerateResponse *r = (const Strata__V1__GenerateResponse *)msg;
  double now = bs_now_s();
  if (r->usage) {
    if (r->usage->has_prompt_tokens) c->usage_prompt = (int)r->usage->prompt_tokens;
    if (r->usage->has_completion_tokens) c->usage_completion = (int)r->usage->completion_tokens;
  }
  if (r->finish_reason && !strcmp(r->finish_reason, "error")) c->err_event = 1;
  if (!r->text || !*r->text) return;
  int wake = 0;
  pthread_mutex_lock(&g->mu);
  if (g->n_in == g->cap_in) { /* grows to the peak backlog once; no allocation per token after that */
    int n = g->cap_in ? g->cap_in * 2 : 4096;
    bs_grpc_ev_t *ni = realloc(g->in, (size_t)n * sizeof *ni);
    if (ni) g->in = ni, g->cap_in = n;
  }
  if (g->n_in < g->cap_in) {
    g->in[g->n_in++] = (bs_grpc_ev_t){.q = c->q, .t = now};
    wake = mark_pending(g);
  } else {
    g->n_dropped++;
  }
  pthread_mutex_unlock(&g->mu);
  if (wake) ev_async_send(g->loop, &g->async);
}

static void on_close(rpc_stream_t *s, int rc, const rpc_status_t *st, void *arg) {
  (void)s;
  bs_grpc_call_t *c = arg;
  bs_grpc_t *g = c->g;
  c->t_end = bs_now_s();
  c->rc = rc;
  c->code = st ? (int)st->code : (rc ? GRPC_STATUS_UNKNOWN : GRPC_STATUS_OK);
  snprintf(c->details, sizeof c->details, "%s", st ? st->details : "");
  pthread_mutex_lock(&g->mu);
  c->next_closed = g->closed; /* intrusive: a finished call is never lost to a failed allocation */
  g->closed = c;
  int wake = mark_pending(g);
  pthread_mutex_unlock(&g->mu);
  if (wake) ev_async_send(g->loop, &g->async);
}

/* ---- the libev thread ---- */

static void apply_text(bs_grpc_t *g, bs_req_t *q, double t) {
  if (q->n_chunks == 0) {
    q->t_first = t;
  } else {
    if (q->n_itl == q->cap_itl) {
      float *ni = realloc(q->itl_ms, (size_t)(q->cap_itl ? q->cap_itl * 2 : 16) * sizeof *ni);
      if (ni) q->itl_ms = ni, q->cap_itl = q->cap_itl ? q->cap_itl * 2 : 16;
    }
    if (q->n_itl < q->cap_itl) q->itl_ms[q->n_itl++] = (float)((t - q->t_last) * 1000.0);
  }
  q->t_last = t;
  q->n_chunks++;
  g->cbs.on_chunk(g->cbs.arg, q);
}

/* The failure class of a finished call, from gRPC's status and what arrived before it. */
static int classify(const bs_grpc_call_t *c, bs_req_t *q) {
  if (c->code == GRPC_STATUS_OK) return c->err_event || bs_req_no_text(q) ? BS_FAIL_STREAM : BS_FAIL_NONE;
  if (c->code == GRPC_STATUS_DEADLINE_EXCEEDED) return BS_FAIL_TIMEOUT;
  if (c->code == GRPC_STATUS_UNAVAILABLE) return q->n_chunks ? BS_FAIL_CUT : BS_FAIL_CONNECT;
  if (c->code == GRPC_STATUS_CANCELLED) return BS_FAIL_CUT;
  return BS_FAIL_GRPC;
}

static void finish_call(bs_grpc_t *g, bs_grpc_call_t *c) {
  bs_req_t *q = c->q;
  q->t_end = c->t_end;
  q->usage_prompt = c->usage_prompt;
  q->usage_completion = c->usage_completion;
  q->grpc_status = c->code;
  q->fail = classify(c, q); /* after usage: a stream without text is judged by it */
  if (c->code != GRPC_STATUS_OK && !g->logged_fail) { /* once: the rest usually fail the same way */
    log_error("bench serve: gRPC Generate on %s failed: %s%s%s", g->cfg->grpc,
              rpc_status_name((grpc_status_code)c->code), c->details[0] ? ": " : "", c->details);
    g->logged_fail = 1;
  }
  free(c);
  g->cbs.on_done(g->cbs.arg, q);
}

static void async_cb(struct ev_loop *loop, ev_async *w, int revents) {
  (void)loop;
  (void)revents;
  bs_grpc_t *g = w->data;
  pthread_mutex_lock(&g->mu);
  bs_grpc_ev_t *evs = g->in;
  int n = g->n_in, cap = g->cap_in;
  g->in = g->out;
  g->cap_in = g->cap_out;
  g->n_in = 0;
  g->out = evs;
  g->cap_out = cap;
  bs_grpc_call_t *closed = g->closed;
  g->closed = NULL;
  g->pending = 0;
  pthread_mutex_unlock(&g->mu);
  /* Text first: a call's messages were queued before its close, so they are all in this batch. */
  for (int i = 0; i < n; i++) apply_text(g, evs[i].q, evs[i].t);
  /* The list is newest first; finish in arrival order so drivers see completions as they came. */
  bs_grpc_call_t *rev = NULL;
  while (closed) {
    bs_grpc_call_t *next = closed->next_closed;
    closed->next_closed = rev;
    rev = closed;
    closed = next;
  }
  while (rev) {
    bs_grpc_call_t *next = rev->next_closed;
    finish_call(g, rev);
    rev = next;
  }
}

int bs_grpc_new(const bs_cfg_t *cfg, struct ev_loop *loop, const bs_grpc_cbs_t *cbs, bs_grpc_t **out) {
  *out = NULL;
  bs_grpc_t *g = calloc(1, sizeof *g);
  if (!g) return STRATA_ENOMEM;
  g->cfg = cfg;
  g->loop = loop;
  g->cbs = *cbs;
  pthread_mutex_init(&g->mu, NULL);
  ev_async_init(&g->async, async_cb);
  g->async.data = g;
  ev_async_start(loop, &g->async);
  rpc_init();
  g->rpc_inited = 1;
  rpc_channel_opts_t o = {.ca_file = cfg->ca_file};
  int rc = rpc_channel_new(cfg->grpc, &o, &g->ch);
  if (rc) {
    log_error("bench serve: cannot open a gRPC channel to %s: %s", cfg->grpc, strata_strerror(rc));
    goto fail;
  }
  if ((rc = rpc_loop_new(NULL, NULL, 1000, &g->rl))) {
    log_error("bench serve: cannot start the gRPC completion-queue thread: %s", strata_strerror(rc));
    goto fail;
  }
  *out = g;
  return 0;
fail:
  bs_grpc_free(g);
  return rc;
}

int bs_grpc_send(bs_grpc_t *g, bs_req_t *q) {
  const bs_cfg_t *cfg = g->cfg;
  bs_grpc_call_t *c = calloc(1, sizeof *c);
  if (!c) return STRATA_ENOMEM;
  c->g = g;
  c->q = q;
  c->usage_prompt = c->usage_completion = -1;
  Strata__V1__SamplingParams params = STRATA__V1__SAMPLING_PARAMS__INIT;
  params.has_max_tokens = 1;
  params.max_tokens = (uint32_t)q->output_len;
  params.has_ignore_eos = params.ignore_eos = 1;
  params.has_temperature = 1;
  params.temperature = 0;
  Strata__V1__GenerateRequest req = STRATA__V1__GENERATE_REQUEST__INIT;
  Strata__V1__ChatMessage msg = STRATA__V1__CHAT_MESSAGE__INIT;
  Strata__V1__ChatMessage *msgs[1] = {&msg};
  Strata__V1__Messages messages = STRATA__V1__MESSAGES__INIT;
  char id[32];
  snprintf(id, sizeof id, "%s%lld", q->warmup ? "w" : "", (long long)q->id);
  req.model = (char *)cfg->model;
  req.request_id = id;
  req.params = &params;
  if (cfg->api == BS_API_CHAT) {
    msg.role = "user";
    msg.content = q->prompt ? q->prompt : "";
    messages.n_messages = 1;
    messages.messages = msgs;
    req.input_case = STRATA__V1__GENERATE_REQUEST__INPUT_MESSAGES;
    req.messages = &messages;
  } else {
    req.input_case = STRATA__V1__GENERATE_REQUEST__INPUT_PROMPT;
    req.prompt = q->prompt ? q->prompt : "";
  }
  static const rpc_stream_cbs_t cbs = {on_message, on_close};
  rpc_stream_t *s = NULL;
  char auth[300];
  snprintf(auth, sizeof auth, "Bearer %s", cfg->api_key ? cfg->api_key : "");
  rpc_md_t md = {"authorization", auth};
  int rc = rpc_stream_open_md(g->rl, g->ch, BS_GRPC_METHOD, &md, cfg->api_key ? 1 : 0,
                              &strata__v1__generate_response__descriptor, &req.base, 1,
                              (int64_t)(cfg->timeout_s * 1000.0), &cbs, c, &s);
  if (rc) { /* no callback will come: the call is ours to free */
    free(c);
    return rc;
  }
  rpc_stream_release(s); /* the deadline ends a stuck call; nothing here ever cancels one */
  return 0;
}

void bs_grpc_free(bs_grpc_t *g) {
  if (!g) return;
  if (g->rl) rpc_loop_free(g->rl); /* runs the last completions: their calls land on the lists */
  if (g->ch) grpc_channel_destroy(g->ch);
  if (g->rpc_inited) rpc_shutdown();
  ev_async_stop(g->loop, &g->async);
  while (g->closed) { /* calls that ended after the run stopped listening */
    bs_grpc_call_t *next = g->closed->next_closed;
    free(g->closed);
    g->closed = next;
  }
  if (g->n_dropped) log_warn("bench serve: %lld gRPC messages were not timed (out of memory)", (long long)g->n_dropped);
  pthread_mutex_destroy(&g->mu);
  free(g->in);
  free(g->out);
  free(g);
}
