/* api_http.c: the OpenAI HTTP front shared by `strata serve` and the coordinator (see api_http.h). */
#include "common/apihttp/api_http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/status.h"

#define SSE_HEADERS "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"

/* respond_error: E as OpenAI's error JSON with its status; ends REQ. */
static void respond_error(http_request_t *req, const api_error_t *e) {
  char *js = api_error_json(e);
  if (e->status == 401)
    http_respond(req, 401, "application/json", "WWW-Authenticate: Bearer\r\n", js ? js : "{}", js ? strlen(js) : 2);
  else
    http_respond_json(req, e->status, js ? js : "{\"error\":{\"message\":\"out of memory\"}}");
  free(js);
}

static void respond_simple_error(http_request_t *req, int status, const char *type, const char *msg) {
  api_error_t e;
  api_error_set(&e, status, type, NULL, "%s", msg);
  respond_error(req, &e);
}

/* ---- request lifetime ---- */

static void req_free(api_http_req_t *r) {
  api_http_t *d = r->drv;
  api_session_free(r->sess);
  api_request_free(&r->areq);
  free(r->out);
  r->sess = NULL;
  r->out = NULL;
  d->ops->free_req(d->self, r);
}

static void on_close(http_request_t *req, void *data) {
  api_http_req_t *r = data;
  log_debug("%s: client of request %llu left; aborting it", r->drv->name, (unsigned long long)r->seq);
  r->http = NULL;
  r->drv->ops->abort_live(r->drv->self, r, "abort");
  req_free(r);
}

/* flush: hands buffered SSE bytes to the connection unless it asked us to pause. */
static void flush(api_http_req_t *r) {
  if (r->paused || !r->out_len || !r->http) return;
  int rc = http_stream_write(r->http, r->out, r->out_len);
  r->out_len = 0;
  if (rc == STRATA_EAGAIN) r->paused = 1; /* queued; hold further output until on_drain */
  /* STRATA_ECLOSED: the close callback follows and frees R */
}

/* end_stream: the last SSE bytes went out: the response ends and R goes. */
static void end_stream(api_http_req_t *r) {
  http_stream_end(r->http);
  r->http = NULL;
  req_free(r);
}

/* finish: the session is complete: send the whole response or end the stream. */
static void finish(api_http_req_t *r) {
  api_http_t *d = r->drv;
  if (d->ops->on_finish) d->ops->on_finish(d->self, r);
  if (!r->areq.stream) {
    char *js = api_session_final_json(r->sess);
    if (js) http_respond_json(r->http, 200, js);
    else respond_simple_error(r->http, 500, "internal_error", "out of memory");
    free(js);
    r->http = NULL;
    req_free(r);
    return;
  }
  if (api_session_stream_tail(r->sess, &r->out, &r->out_len, &r->out_cap) == 0) flush(r);
  r->finished = 1;
  if (r->paused) return; /* on_drain ends it */
  end_stream(r);
}

static void on_drain(http_request_t *req, void *data) {
  api_http_req_t *r = data;
  r->paused = 0;
  flush(r);
  if (r->finished && !r->paused) end_stream(r);
}

int api_http_stream_begin(api_http_req_t *r) {
  if (r->stream_begun) return 0;
  r->stream_begun = 1;
  int rc = http_stream_begin(r->http, 200, "text/event-stream", SSE_HEADERS);
  if (rc) return rc;
  return api_session_stream_head(r->sess, &r->out, &r->out_len, &r->out_cap);
}

void api_http_fail(api_http_req_t *r, const api_error_t *e) {
  r->drv->ops->abort_live(r->drv->self, r, "error");
  if (!r->stream_begun) {
    respond_error(r->http, e);
  } else {
    char *js = api_error_json(e);
    if (js) {
      http_stream_write(r->http, "data: ", 6);
      http_stream_write(r->http, js, strlen(js));
      http_stream_write(r->http, "\n\ndata: [DONE]\n\n", 16);
    }
    free(js);
    http_stream_end(r->http);
  }
  r->http = NULL;
  req_free(r);
}

int api_http_on_event(api_http_req_t *r, int choice, const api_event_t *ev) {
  api_http_t *d = r->drv;
  if (r->finished || !r->http) return 0;
  if (r->areq.stream && api_http_stream_begin(r) != 0) return 0; /* closed: on_close frees it */
  int flags = api_session_on_event(r->sess, choice, ev, &r->out, &r->out_len, &r->out_cap);
  if (flags < 0) {
    log_error("%s: request %llu: cannot format its output (%s)", d->name, (unsigned long long)r->seq,
              strata_strerror(flags));
    flags = API_EV_CHOICE_DONE | API_EV_ABORT;
  }
  if (flags) d->ops->on_flags(d->self, r, choice, ev, flags);
  if (r->areq.stream) flush(r);
  if (api_session_done(r->sess)) {
    finish(r);
    return 1;
  }
  return 0;
}

/* ---- generation requests ---- */

static void handle_generate(api_http_t *d, http_request_t *req, api_kind_t kind) {
  size_t len;
  const char *body = http_request_body(req, &len);
  api_error_t err;
  api_http_req_t *r = d->ops->new_req(d->self);
  if (!r) {
    respond_simple_error(req, 500, "internal_error", "out of memory");
    return;
  }
  r->drv = d;
  r->http = req;
  if (api_request_parse(&r->areq, d->ctx, kind, body, len, &err) != 0) goto fail;
  if (d->ops->admit && d->ops->admit(d->self, r, &err) != 0) goto fail;
  r->seq = (*d->next_seq)++;
  char id[64];
  snprintf(id, sizeof id, "%s-%llu%06llx", kind == API_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)r->seq,
           (unsigned long long)(*d->started & 0xffffff));
  if (api_session_new(&r->sess, &r->areq, d->ctx, id, (int64_t)time(NULL)) != 0) {
    api_error_set(&err, 500, "internal_error", NULL, "out of memory");
    goto fail;
  }
  if (d->ops->start(d->self, r, &err) != 0) goto fail;
  r->started = 1;
  http_request_on_close(req, on_close, r);
  http_request_on_drain(req, on_drain, r);
  return;
fail:
  respond_error(req, &err);
  r->http = NULL;
  req_free(r);
}

/* ---- routing ---- */

/* authorized: when keys are configured, the request must carry one as a Bearer token. Each key is
 * compared in constant time (http_secure_equal), and all of them are always compared. */
static int authorized(const api_http_t *d, http_request_t *req) {
  const cfg_strlist_t *keys = d->api_keys;
  if (!keys || keys->n == 0) return 1;
  const char *token = http_request_bearer(req);
  int ok = 0;
  for (int i = 0; i < keys->n; i++) ok |= http_secure_equal(token ? token : "", keys->items[i]);
  return ok;
}

static void respond_models(api_http_t *d, http_request_t *req, int is_get) {
  if (!is_get) {
    respond_simple_error(req, 405, "invalid_request_error", "Use GET on /v1/models.");
    return;
  }
  char *js = api_models_json(d->model_name, d->ctx->max_model_len, *d->started);
  if (js) http_respond_json(req, 200, js);
  else respond_simple_error(req, 500, "internal_error", "out of memory");
  free(js);
}

void api_http_on_request(http_request_t *req, void *data) {
  api_http_t *d = data;
  const char *path = http_request_path(req), *method = http_request_method(req);
  int is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0, is_post = strcmp(method, "POST") == 0;
  if (strcmp(path, "/health") == 0 && is_get) {
    const char *why = d->ops->health ? d->ops->health(d->self) : NULL;
    if (why) respond_simple_error(req, 503, "service_unavailable", why);
    else http_respond(req, 200, "text/plain", NULL, "", 0);
    return;
  }
  if (strcmp(path, "/metrics") == 0 && is_get) {
    size_t len = 0;
    char *text = d->ops->metrics(d->self, &len);
    if (text) http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, text, len);
    else respond_simple_error(req, 500, "internal_error", "out of memory");
    free(text);
    return;
  }
  int is_models = strcmp(path, "/v1/models") == 0, is_cmpl = strcmp(path, "/v1/completions") == 0,
      is_chat = strcmp(path, "/v1/chat/completions") == 0;
  if (!is_models && !is_cmpl && !is_chat) {
    char msg[300];
    snprintf(msg, sizeof msg, "No route for %s %.200s", method, path);
    respond_simple_error(req, 404, "not_found_error", msg);
    return;
  }
  if (!authorized(d, req)) {
    respond_simple_error(req, 401, "authentication_error",
                         "Incorrect or missing API key: send it as 'Authorization: Bearer <key>'.");
    return;
  }
  if (is_models) {
    respond_models(d, req, is_get);
    return;
  }
  if (!is_post) {
    respond_simple_error(req, 405, "invalid_request_error", "Use POST on this endpoint.");
    return;
  }
  handle_generate(d, req, is_cmpl ? API_COMPLETIONS : API_CHAT);
}
