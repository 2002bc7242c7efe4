/* serve_http.c: `strata serve`'s side of the shared HTTP front (common/apihttp): generation
 * requests as engine requests (one per choice), their metrics, and routing of engine events. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "worker/api/serve_int.h"

/* ---- request lifetime ---- */

static void req_free(api_http_req_t *h, int in_map) {
  serve_req_t *r = (serve_req_t *)h;
  if (in_map) serve_map_del(r->srv, h->seq);
  free(r->done);
  free(r->t_last_s);
  free(r);
}

void serve_req_abort_live(serve_req_t *r, const char *reason) {
  for (int c = 0; r->done && c < r->h.areq.n_choices; c++) {
    if (r->done[c]) continue;
    r->done[c] = 1;
    r->srv->backend.abort(r->srv->backend.self, (r->h.seq << SERVE_CHOICE_BITS) | (uint64_t)c);
    metrics_counter_add(r->srv->m.success, &reason, 1);
  }
  r->srv->n_live -= r->n_live;
  r->n_live = 0;
}

api_event_t serve_to_api_event(const engine_out_t *o) {
  api_event_t a = {.has_token = o->has_token, .token = o->token, .logprob = o->sample.logprob,
                   .finished = o->finished, .n_prompt = o->n_prompt, .n_generated = o->n_generated,
                   .n_cached = o->n_cached};
  a.n_top = o->sample.n_top < API_MAX_TOP_LOGPROBS ? o->sample.n_top : API_MAX_TOP_LOGPROBS;
  for (int k = 0; k < a.n_top; k++) {
    a.top[k].id = o->sample.top[k].id;
    a.top[k].logprob = o->sample.top[k].logprob;
  }
  static const api_finish_t map[] = {API_FINISH_NONE, API_FINISH_STOP, API_FINISH_LENGTH, API_FINISH_ABORT,
                                     API_FINISH_ERROR};
  a.finish = o->finish >= FINISH_NONE && o->finish <= FINISH_ERROR ? map[o->finish] : API_FINISH_ERROR;
  return a;
}

/* on_event: one engine event for request R, choice C. */
static void on_event(serve_req_t *r, int c, const engine_event_t *ev, double now) {
  serve_t *s = r->srv;
  if (r->done[c]) return;
  if (ev->rejected) { /* the engine refused choice C: the whole request fails */
    api_error_t e;
    api_error_set(&e, 400, NULL, NULL, "%s", ev->error[0] ? ev->error : "the request cannot be served");
    api_http_fail(&r->h, &e);
    return;
  }
  if (r->h.areq.stream && api_http_stream_begin(&r->h) != 0) return; /* closed: on_close frees it */
  if (ev->out.has_token) {
    if (r->t_last_s[c] == 0) metrics_histogram_observe(s->m.ttft, NULL, now - r->t_start_s);
    else metrics_histogram_observe(s->m.itl, NULL, now - r->t_last_s[c]);
    r->t_last_s[c] = now;
  }
  api_event_t a = serve_to_api_event(&ev->out);
  api_http_on_event(&r->h, c, &a);
}

void serve_on_wake(struct ev_loop *loop, ev_async *w, int revents) {
  serve_t *s = w->data;
  engine_event_t evs[128];
  int n;
  while ((n = engine_loop_poll(s->engine, evs, 128)) > 0) {
    double now = serve_now_s();
    for (int i = 0; i < n; i++) {
      uint64_t seq = evs[i].out.id >> SERVE_CHOICE_BITS;
      int c = (int)(evs[i].out.id & (SERVE_MAX_CHOICES - 1));
      serve_req_t *r = serve_map_get(s, seq);
      if (r && c < r->h.areq.n_choices) { /* else: aborted earlier */
        if (r->grpc) serve_grpc_on_event(r, c, &evs[i], now);
        else on_event(r, c, &evs[i], now);
      }
    }
  }
}

/* ---- generation requests ---- */

static void to_sampling(const api_sampling_t *a, sampling_params_t *sp) {
  sampling_params_default(sp);
  sp->temperature = a->temperature;
  sp->top_k = a->top_k;
  sp->top_p = a->top_p;
  sp->min_p = a->min_p;
  sp->repetition_penalty = a->repetition_penalty;
  sp->presence_penalty = a->presence_penalty;
  sp->frequency_penalty = a->frequency_penalty;
  sp->seed = a->seed;
  sp->logprobs = a->logprobs;
  sp->top_logprobs = a->top_logprobs;
  sp->max_tokens = a->max_tokens;
  sp->min_tokens = a->min_tokens;
  sp->ignore_eos = a->ignore_eos;
  sp->n_stop_ids = a->n_stop_ids < SAMPLE_MAX_STOP_IDS ? a->n_stop_ids : SAMPLE_MAX_STOP_IDS;
  memcpy(sp->stop_ids, a->stop_ids, sizeof(int32_t) * (size_t)sp->n_stop_ids);
}

static int backend_submit(void *self, uint64_t id, const int32_t *ids, int n_ids, const api_sampling_t *a) {
  serve_t *s = self;
  sampling_params_t sp;
  to_sampling(a, &sp);
  return engine_loop_submit(s->engine, id, ids, n_ids, &sp);
}

static void backend_abort(void *self, uint64_t id) {
  serve_t *s = self;
  engine_loop_abort(s->engine, id);
}

/* submit: one engine request per choice. The parameters were validated by the API layer; the
 * sampler's own check runs too so that the two never disagree silently. */
static int submit(serve_req_t *r, api_error_t *err) {
  serve_t *s = r->srv;
  api_request_t *areq = &r->h.areq;
  for (int c = 0; c < areq->n_choices; c++) {
    sampling_params_t sp;
    char msg[256];
    to_sampling(&areq->choices[c].sp, &sp);
    if (sampling_params_validate(&sp, tok_vocab_size(s->tok), msg, sizeof msg))
      return api_error_set(err, 400, NULL, NULL, "%s", msg);
  }
  for (int c = 0; c < areq->n_choices; c++) {
    const api_choice_req_t *ch = &areq->choices[c];
    uint64_t id = (r->h.seq << SERVE_CHOICE_BITS) | (uint64_t)c;
    if (s->backend.submit(s->backend.self, id, ch->ids, ch->n_ids, &ch->sp) != 0) {
      serve_req_abort_live(r, "error");
      return api_error_set(err, 500, "internal_error", NULL, "out of memory");
    }
    r->n_live++;
    s->n_live++;
  }
  return 0;
}

/* ---- the front's hooks ---- */

static api_http_req_t *front_new_req(void *self) {
  serve_req_t *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->srv = self;
  r->t_start_s = serve_now_s();
  return &r->h;
}

static int front_admit(void *self, api_http_req_t *h, api_error_t *err) {
  serve_t *s = self;
  if (s->n_live + h->areq.n_choices <= s->capacity) return 0;
  return api_error_set(err, 429, "rate_limit_error", NULL,
                       "The server is at capacity (%d sequences running or queued, --max-queue %d). Retry later.",
                       s->n_live, s->conf->max_queue);
}

static int front_start(void *self, api_http_req_t *h, api_error_t *err) {
  serve_t *s = self;
  serve_req_t *r = (serve_req_t *)h;
  r->done = calloc((size_t)h->areq.n_choices, 1);
  r->t_last_s = calloc((size_t)h->areq.n_choices, sizeof(double));
  if (!r->done || !r->t_last_s) return api_error_set(err, 500, "internal_error", NULL, "out of memory");
  int rc = submit(r, err);
  if (rc) return rc;
  serve_map_put(s, r);
  return 0;
}

static void front_abort_live(void *self, api_http_req_t *h, const char *outcome) {
  serve_req_abort_live((serve_req_t *)h, outcome);
}

static void front_on_flags(void *self, api_http_req_t *h, int c, const api_event_t *a, int flags) {
  serve_t *s = self;
  serve_req_t *r = (serve_req_t *)h;
  if (flags & API_EV_ABORT) s->backend.abort(s->backend.self, (h->seq << SERVE_CHOICE_BITS) | (uint64_t)c);
  if (flags & API_EV_CHOICE_DONE) {
    const char *reason = (flags & API_EV_ABORT) || a->finish == API_FINISH_NONE ? "stop" : api_finish_name(a->finish);
    metrics_counter_add(s->m.success, &reason, 1);
    r->done[c] = 1;
    r->n_live--;
    s->n_live--;
  }
}

static void front_on_finish(void *self, api_http_req_t *h) {
  serve_t *s = self;
  metrics_histogram_observe(s->m.e2e, NULL, serve_now_s() - ((serve_req_t *)h)->t_start_s);
}

/* front_free_req: a started request is in the map; one refused before never was. */
static void front_free_req(void *self, api_http_req_t *h) { req_free(h, h->started); }

static const char *front_health(void *self) {
  serve_t *s = self;
  return engine_loop_failed(s->engine) ? "the engine stopped after a fatal error" : NULL;
}

static char *front_metrics(void *self, size_t *len) { return serve_metrics_render(self, len); }

static const api_http_ops_t front_ops = {
    .new_req = front_new_req,
    .admit = front_admit,
    .start = front_start,
    .abort_live = front_abort_live,
    .on_flags = front_on_flags,
    .on_finish = front_on_finish,
    .free_req = front_free_req,
    .health = front_health,
    .metrics = front_metrics,
};

void serve_backend_init(serve_t *s) {
  s->backend = (api_backend_t){.self = s, .submit = backend_submit, .abort = backend_abort};
  s->front = (api_http_t){.ops = &front_ops, .self = s, .name = "serve", .ctx = &s->ctx, .model_name = s->model_name,
                          .started = &s->started, .next_seq = &s->next_seq, .api_keys = &s->conf->api_keys};
}
