/* test_api.c: the OpenAI protocol layer (common/api) without a server: request parsing and
 * validation, SSE and JSON formatting (checked field by field against hand-written expectations),
 * stop strings across tokens, usage counts. The byte tokenizer makes token ids = bytes, so expected
 * texts are written by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/api/api.h"
#include "common/status.h"

#define BOS 256
#define EOS 257

typedef struct {
  tok_t *tok;
  api_ctx_t ctx;
} fixture_t;

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof *f);
  if (!f || tok_new_bytes(&f->tok, 512)) return -1;
  f->ctx = (api_ctx_t){.tok = f->tok, .model_name = "tiny", .max_model_len = 64, .max_n = 8, .max_stops = 4,
                       .max_stop_len = 16};
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  tok_free(f->tok);
  free(f);
  return 0;
}

static int parse(fixture_t *f, api_kind_t kind, const char *body, api_request_t *r, api_error_t *e) {
  return api_request_parse(r, &f->ctx, kind, body, strlen(body), e);
}

/* expect_error: BODY is refused with STATUS, naming PARAM ("" for none), its message containing WORDS. */
static void expect_error(fixture_t *f, api_kind_t kind, const char *body, int status, const char *param,
                         const char *words) {
  api_request_t r;
  api_error_t e;
  int rc = parse(f, kind, body, &r, &e);
  if (rc != STRATA_EINVAL || e.status != status || strcmp(e.param, param) != 0 || !strstr(e.message, words))
    fail_msg("body %s: rc %d status %d param '%s' message '%s'", body, rc, e.status, e.param, e.message);
  api_request_free(&r);
}

static void test_parse_every_parameter(void **state) {
  fixture_t *f = *state;
  api_request_t r;
  api_error_t e;
  const char *body =
      "{\"model\":\"tiny\",\"prompt\":\"hi\",\"max_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,\"top_k\":40,"
      "\"min_p\":0.05,\"seed\":1234,\"stop\":[\"xy\",\"z\"],\"stop_token_ids\":[10,11],\"presence_penalty\":0.5,"
      "\"frequency_penalty\":-0.5,\"repetition_penalty\":1.1,\"n\":2,\"logprobs\":3,\"echo\":true,"
      "\"ignore_eos\":false,\"stream\":true,\"stream_options\":{\"include_usage\":true},\"min_tokens\":2}";
  assert_int_equal(parse(f, API_COMPLETIONS, body, &r, &e), 0);
  assert_int_equal(r.n_prompts, 1);
  assert_int_equal(r.n_choices, 2);
  assert_true(r.stream && r.include_usage && r.echo);
  assert_string_equal(r.prompt_texts[0], "hi");
  assert_int_equal(r.n_stops, 2);
  assert_string_equal(r.stops[1], "z");
  const api_choice_req_t *c = &r.choices[1];
  assert_int_equal(c->n_ids, 3); /* the byte tokenizer adds BOS: 256 'h' 'i' */
  assert_int_equal(c->ids[0], BOS);
  assert_int_equal(c->ids[1], 'h');
  assert_int_equal(c->ids[2], 'i');
  assert_true(c->sp.temperature == 0.5f && c->sp.top_p == 0.9f && c->sp.min_p == 0.05f && c->sp.top_k == 40);
  assert_true(c->sp.presence_penalty == 0.5f && c->sp.frequency_penalty == -0.5f && c->sp.repetition_penalty == 1.1f);
  assert_int_equal(c->sp.max_tokens, 7);
  assert_int_equal(c->sp.min_tokens, 2);
  assert_true(c->sp.logprobs == 1 && c->sp.top_logprobs == 3);
  /* the user's stop ids, then the tokenizer's EOS */
  assert_int_equal(c->sp.n_stop_ids, 3);
  assert_int_equal(c->sp.stop_ids[0], 10);
  assert_int_equal(c->sp.stop_ids[2], EOS);
  /* seeded: choice i gets seed + i, so the n choices differ but are reproducible */
  assert_true(r.choices[0].sp.seed == 1234 && r.choices[1].sp.seed == 1235);
  api_request_free(&r);
}

static void test_defaults(void **state) {
  fixture_t *f = *state;
  api_request_t r, r2;
  api_error_t e;
  assert_int_equal(parse(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"ignore_eos\":true}", &r, &e), 0);
  assert_int_equal(r.choices[0].sp.max_tokens, 16); /* OpenAI's default for completions */
  assert_true(r.choices[0].sp.temperature == 1.0f && r.choices[0].sp.top_p == 1.0f);
  assert_int_equal(r.choices[0].sp.n_stop_ids, 0); /* ignore_eos: EOS is not a stop */
  assert_int_equal(r.stream, 0);
  assert_int_equal(parse(f, API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}", &r2, &e), 0);
  /* chat without max_tokens: the rest of the context (64 - prompt) */
  assert_int_equal(r2.choices[0].sp.max_tokens, 64 - r2.choices[0].n_ids);
  /* no seed: one is drawn per request (two requests almost surely differ) */
  assert_false(r.has_seed);
  assert_true(r.choices[0].sp.seed != r2.choices[0].sp.seed);
  api_request_free(&r);
  api_request_free(&r2);
}

static void test_prompt_forms(void **state) {
  fixture_t *f = *state;
  api_request_t r;
  api_error_t e;
  assert_int_equal(parse(f, API_COMPLETIONS, "{\"prompt\":[\"ab\",\"c\"],\"n\":2}", &r, &e), 0);
  assert_int_equal(r.n_prompts, 2);
  assert_int_equal(r.n_choices, 4);
  assert_int_equal(r.choices[2].prompt_index, 1);
  assert_int_equal(r.choices[3].n_ids, 2); /* BOS 'c' */
  assert_int_equal(r.prompt_lens[0], 3);
  api_request_free(&r);
  assert_int_equal(parse(f, API_COMPLETIONS, "{\"prompt\":[104,105]}", &r, &e), 0);
  assert_int_equal(r.n_prompts, 1);
  assert_int_equal(r.choices[0].n_ids, 2); /* ids are used as given: no BOS added */
  assert_string_equal(r.prompt_texts[0], "hi");
  api_request_free(&r);
  assert_int_equal(parse(f, API_COMPLETIONS, "{\"prompt\":[[104],[105,106]]}", &r, &e), 0);
  assert_int_equal(r.n_prompts, 2);
  assert_int_equal(r.choices[1].n_ids, 2);
  api_request_free(&r);
}

static void test_errors(void **state) {
  fixture_t *f = *state;
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\"", 400, "", "not valid JSON");
  expect_error(f, API_COMPLETIONS, "[1,2]", 400, "", "JSON object");
  expect_error(f, API_COMPLETIONS, "{}", 400, "prompt", "required");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":5}", 400, "prompt", "must be a string");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"temperature\":\"hot\"}", 400, "temperature", "number");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"temperature\":-1}", 400, "temperature", "[0, 100]");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"top_p\":0}", 400, "top_p", "(0, 1]");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"min_p\":1.5}", 400, "min_p", "[0, 1]");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"top_k\":-2}", 400, "top_k", "must be in");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"presence_penalty\":3}", 400, "presence_penalty", "[-2, 2]");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"frequency_penalty\":-3}", 400, "frequency_penalty", "[-2, 2]");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"repetition_penalty\":0}", 400, "repetition_penalty", "(0, 10]");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"max_tokens\":0}", 400, "max_tokens", "must be in");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"max_tokens\":2.5}", 400, "max_tokens", "integer");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"n\":9}", 400, "n", "[1, 8]");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":[\"a\",\"b\",\"c\"],\"n\":3}", 400, "n", "at most 8 choices");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"seed\":\"x\"}", 400, "seed", "integer");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"logprobs\":21}", 400, "logprobs", "[0, 20]");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"echo\":1}", 400, "echo", "boolean");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"stream\":\"yes\"}", 400, "stream", "boolean");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"stream_options\":{\"include_usage\":true}}", 400,
               "stream_options", "only allowed when 'stream' is true");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400, "stop", "at most 4");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"stop\":[\"\"]}", 400, "stop", "empty");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"stop\":\"01234567890123456\"}", 400, "stop", "16 bytes");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"stop\":3}", 400, "stop", "string");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"stop_token_ids\":[512]}", 400, "stop_token_ids", "[0, 512)");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":[1,600]}", 400, "prompt", "[0, 512)");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":[]}", 400, "prompt", "empty");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"min_tokens\":5,\"max_tokens\":2}", 400, "min_tokens", "exceed");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"model\":\"gpt-4\"}", 404, "model", "does not exist");
  /* context: 64 tokens; a 70-byte prompt is too long, and so is 3 + 62 */
  expect_error(f, API_COMPLETIONS,
               "{\"prompt\":\"0123456789012345678901234567890123456789012345678901234567890123456789\"}", 400, "prompt",
               "maximum context length is 64");
  expect_error(f, API_COMPLETIONS, "{\"prompt\":\"hi\",\"max_tokens\":62}", 400, "max_tokens", "you requested 65 tokens");
  expect_error(f, API_CHAT, "{\"messages\":[]}", 400, "messages", "non-empty");
  expect_error(f, API_CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", 400, "messages", "role");
  expect_error(f, API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":7}]}", 400, "messages", "content");
  expect_error(f, API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}", 400,
               "top_logprobs", "requires 'logprobs'");
  expect_error(f, API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":3}", 400, "logprobs",
               "boolean");
  expect_error(f, API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_completion_tokens\":-1}", 400,
               "max_completion_tokens", "must be in");
}

static void test_error_json(void **state) {
  (void)state;
  api_error_t e;
  api_error_set(&e, 400, NULL, "temperature", "bad \"value\"");
  char *js = api_error_json(&e);
  cJSON *root = cJSON_Parse(js), *o = cJSON_GetObjectItem(root, "error");
  assert_non_null(o);
  assert_string_equal(cJSON_GetObjectItem(o, "message")->valuestring, "bad \"value\"");
  assert_string_equal(cJSON_GetObjectItem(o, "type")->valuestring, "invalid_request_error");
  assert_string_equal(cJSON_GetObjectItem(o, "param")->valuestring, "temperature");
  assert_non_null(cJSON_GetObjectItem(o, "code"));
  cJSON_Delete(root);
  free(js);
  api_error_set(&e, 401, "authentication_error", NULL, "no key");
  js = api_error_json(&e);
  root = cJSON_Parse(js);
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetObjectItem(root, "error"), "param")));
  cJSON_Delete(root);
  free(js);
}

static void test_chat_fallback_prompt(void **state) {
  fixture_t *f = *state;
  api_request_t r;
  api_error_t e;
  const char *body = "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                     "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi \"},{\"type\":\"text\",\"text\":\"there\"}]}]}";
  api_ctx_t ctx = f->ctx;
  ctx.max_model_len = 256; /* the ChatML markers take room */
  if (api_request_parse(&r, &ctx, API_CHAT, body, strlen(body), &e) != 0) fail_msg("%s", e.message);
  /* the documented ChatML fallback, written out by hand */
  assert_string_equal(r.prompt_texts[0],
                      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n");
  assert_int_equal(r.choices[0].n_ids, 1 + (int)strlen(r.prompt_texts[0])); /* BOS + bytes */
  api_request_free(&r);
}

static void test_chat_template(void **state) {
  fixture_t *f = *state;
  chat_template_t *t;
  const char *src = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
                    "{% if add_generation_prompt %}[assistant]{% endif %}";
  assert_int_equal(chat_template_compile(src, (size_t)-1, &t, NULL, 0), 0);
  api_ctx_t ctx = f->ctx;
  ctx.chat = t;
  api_request_t r;
  api_error_t e;
  const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"yo\"}]}";
  assert_int_equal(api_request_parse(&r, &ctx, API_CHAT, body, strlen(body), &e), 0);
  assert_string_equal(r.prompt_texts[0], "[user]yo[assistant]");
  api_request_free(&r);
  chat_template_free(t);
}

/* ---- sessions ---- */

typedef struct {
  char *out;
  size_t len, cap;
} buf_t;

static api_event_t tok_ev(int32_t id, int n_generated) {
  return (api_event_t){.has_token = 1, .token = id, .logprob = -0.5f, .n_generated = n_generated};
}

/* sse_chunks: splits SSE text into its JSON payloads (the "[DONE]" marker as NULL at the end). */
static int sse_chunks(const char *text, cJSON **out, int max, int *saw_done) {
  int n = 0;
  *saw_done = 0;
  const char *p = text;
  while ((p = strstr(p, "data: ")) != NULL) {
    p += 6;
    const char *end = strstr(p, "\n\n");
    assert_non_null(end);
    if (strncmp(p, "[DONE]", 6) == 0) *saw_done = 1;
    else if (n < max) out[n++] = cJSON_ParseWithLength(p, (size_t)(end - p));
    p = end + 2;
  }
  return n;
}

static void test_stream_chat_chunks(void **state) {
  fixture_t *f = *state;
  api_request_t r;
  api_error_t e;
  api_session_t *s;
  buf_t b = {0};
  const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":true,"
                     "\"stream_options\":{\"include_usage\":true},\"max_tokens\":5}";
  assert_int_equal(parse(f, API_CHAT, body, &r, &e), 0);
  assert_int_equal(api_session_new(&s, &r, &f->ctx, "chatcmpl-1", 1700000000), 0);
  assert_int_equal(api_session_stream_head(s, &b.out, &b.len, &b.cap), 0);
  api_event_t ev = tok_ev('O', 1);
  assert_int_equal(api_session_on_event(s, 0, &ev, &b.out, &b.len, &b.cap), 0);
  ev = tok_ev('K', 2);
  ev.finished = 1;
  ev.finish = API_FINISH_LENGTH;
  assert_int_equal(api_session_on_event(s, 0, &ev, &b.out, &b.len, &b.cap), API_EV_CHOICE_DONE);
  assert_true(api_session_done(s));
  assert_int_equal(api_session_stream_tail(s, &b.out, &b.len, &b.cap), 0);
  cJSON *ch[8];
  int done, n = sse_chunks(b.out, ch, 8, &done);
  assert_int_equal(n, 4);
  assert_true(done);
  /* every chunk: id, object, created, model */
  for (int i = 0; i < n; i++) {
    assert_string_equal(cJSON_GetObjectItem(ch[i], "id")->valuestring, "chatcmpl-1");
    assert_string_equal(cJSON_GetObjectItem(ch[i], "object")->valuestring, "chat.completion.chunk");
    assert_true(cJSON_GetObjectItem(ch[i], "created")->valuedouble == 1700000000);
    assert_string_equal(cJSON_GetObjectItem(ch[i], "model")->valuestring, "tiny");
  }
  cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(ch[0], "choices"), 0);
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "delta"), "role")->valuestring, "assistant");
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(c0, "finish_reason")));
  cJSON *c1 = cJSON_GetArrayItem(cJSON_GetObjectItem(ch[1], "choices"), 0);
  assert_int_equal(cJSON_GetObjectItem(c1, "index")->valueint, 0);
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(c1, "delta"), "content")->valuestring, "O");
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(ch[1], "usage"))); /* include_usage: null until the end */
  cJSON *c2 = cJSON_GetArrayItem(cJSON_GetObjectItem(ch[2], "choices"), 0);
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(c2, "delta"), "content")->valuestring, "K");
  assert_string_equal(cJSON_GetObjectItem(c2, "finish_reason")->valuestring, "length");
  /* the usage chunk: no choices */
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(ch[3], "choices")), 0);
  cJSON *u = cJSON_GetObjectItem(ch[3], "usage");
  int np = r.prompt_lens[0];
  assert_int_equal(cJSON_GetObjectItem(u, "prompt_tokens")->valueint, np);
  assert_int_equal(cJSON_GetObjectItem(u, "completion_tokens")->valueint, 2);
  assert_int_equal(cJSON_GetObjectItem(u, "total_tokens")->valueint, np + 2);
  for (int i = 0; i < n; i++) cJSON_Delete(ch[i]);
  free(b.out);
  api_session_free(s);
  api_request_free(&r);
}

/* feed: the bytes of TEXT as tokens of choice C; returns the flags of the last event. */
static int feed(api_session_t *s, int c, const char *text, int *n_gen, buf_t *b) {
  int flags = 0;
  for (const char *p = text; *p && !(flags & API_EV_CHOICE_DONE); p++) {
    api_event_t ev = tok_ev((unsigned char)*p, ++*n_gen);
    flags = api_session_on_event(s, c, &ev, &b->out, &b->len, &b->cap);
    assert_true(flags >= 0);
  }
  return flags;
}

static void test_stop_string_across_tokens(void **state) {
  fixture_t *f = *state;
  api_request_t r;
  api_error_t e;
  api_session_t *s;
  buf_t b = {0};
  assert_int_equal(parse(f, API_COMPLETIONS, "{\"prompt\":\"a\",\"stop\":[\"lo w\",\"zz\"],\"max_tokens\":30}", &r, &e), 0);
  assert_int_equal(api_session_new(&s, &r, &f->ctx, "cmpl-2", 1), 0);
  int n_gen = 0;
  /* "hel" + "lo w" spans four tokens; the stop is found at the 'w' (token 7) */
  int flags = feed(s, 0, "hello world", &n_gen, &b);
  assert_int_equal(flags, API_EV_CHOICE_DONE | API_EV_ABORT);
  assert_int_equal(n_gen, 7);
  /* the engine's abort event afterwards is ignored */
  api_event_t ab = {.finished = 1, .finish = API_FINISH_ABORT, .n_generated = 7};
  assert_int_equal(api_session_on_event(s, 0, &ab, &b.out, &b.len, &b.cap), API_EV_CHOICE_DONE);
  char *js = api_session_final_json(s);
  cJSON *root = cJSON_Parse(js), *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "choices"), 0);
  assert_string_equal(cJSON_GetObjectItem(root, "object")->valuestring, "text_completion");
  assert_string_equal(cJSON_GetObjectItem(c0, "text")->valuestring, "hel");
  assert_string_equal(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "stop");
  cJSON *u = cJSON_GetObjectItem(root, "usage");
  assert_int_equal(cJSON_GetObjectItem(u, "prompt_tokens")->valueint, 2);
  assert_int_equal(cJSON_GetObjectItem(u, "completion_tokens")->valueint, 7);
  assert_int_equal(cJSON_GetObjectItem(u, "total_tokens")->valueint, 9);
  assert_int_equal(b.len, 0); /* not streamed: nothing written */
  cJSON_Delete(root);
  free(js);
  api_session_free(s);
  api_request_free(&r);
}

static void test_held_text_released_at_end(void **state) {
  fixture_t *f = *state;
  api_request_t r;
  api_error_t e;
  api_session_t *s;
  buf_t b = {0};
  /* "ab" might begin the stop "abc": held back, then released when generation ends without it;
   * EOS is not shown in the text (a special token) */
  assert_int_equal(parse(f, API_COMPLETIONS, "{\"prompt\":\"a\",\"stop\":\"abc\",\"n\":2,\"echo\":true}", &r, &e), 0);
  assert_int_equal(api_session_new(&s, &r, &f->ctx, "cmpl-3", 1), 0);
  int n_gen = 0;
  feed(s, 1, "xab", &n_gen, &b);
  api_event_t end = tok_ev(EOS, ++n_gen);
  end.finished = 1;
  end.finish = API_FINISH_STOP;
  assert_int_equal(api_session_on_event(s, 1, &end, &b.out, &b.len, &b.cap), API_EV_CHOICE_DONE);
  assert_false(api_session_done(s)); /* choice 0 still runs */
  int n0 = 0;
  feed(s, 0, "q", &n0, &b);
  api_event_t len_end = {.finished = 1, .finish = API_FINISH_LENGTH, .n_generated = 1};
  api_session_on_event(s, 0, &len_end, &b.out, &b.len, &b.cap);
  assert_true(api_session_done(s));
  char *js = api_session_final_json(s);
  cJSON *root = cJSON_Parse(js), *cs = cJSON_GetObjectItem(root, "choices");
  /* echo prepends the prompt text */
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(cs, 0), "text")->valuestring, "aq");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(cs, 1), "text")->valuestring, "axab");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(cs, 0), "finish_reason")->valuestring, "length");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(cs, 1), "finish_reason")->valuestring, "stop");
  assert_int_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(cs, 1), "index")->valueint, 1);
  /* usage: the prompt once (2 tokens), completions 1 + 4 */
  assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(root, "usage"), "prompt_tokens")->valueint, 2);
  assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(root, "usage"), "completion_tokens")->valueint, 5);
  cJSON_Delete(root);
  free(js);
  api_session_free(s);
  api_request_free(&r);
}

static void test_utf8_hold_back_stream(void **state) {
  fixture_t *f = *state;
  api_request_t r;
  api_error_t e;
  api_session_t *s;
  buf_t b = {0};
  assert_int_equal(parse(f, API_COMPLETIONS, "{\"prompt\":\"a\",\"stream\":true}", &r, &e), 0);
  assert_int_equal(api_session_new(&s, &r, &f->ctx, "cmpl-4", 1), 0);
  /* U+00E9 is C3 A9: the first byte alone yields no chunk, the second yields "é" */
  api_event_t ev = tok_ev(0xC3, 1);
  api_session_on_event(s, 0, &ev, &b.out, &b.len, &b.cap);
  assert_int_equal(b.len, 0);
  ev = tok_ev(0xA9, 2);
  api_session_on_event(s, 0, &ev, &b.out, &b.len, &b.cap);
  cJSON *ch[2];
  int done, n = sse_chunks(b.out, ch, 2, &done);
  assert_int_equal(n, 1);
  cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(ch[0], "choices"), 0);
  assert_string_equal(cJSON_GetObjectItem(c0, "text")->valuestring, "\xc3\xa9");
  assert_string_equal(cJSON_GetObjectItem(ch[0], "object")->valuestring, "text_completion");
  assert_null(cJSON_GetObjectItem(ch[0], "usage")); /* no include_usage: no usage field */
  cJSON_Delete(ch[0]);
  free(b.out);
  api_session_free(s);
  api_request_free(&r);
}

static void test_logprobs_format(void **state) {
  fixture_t *f = *state;
  api_request_t r;
  api_error_t e;
  api_session_t *s;
  buf_t b = {0};
  assert_int_equal(parse(f, API_COMPLETIONS, "{\"prompt\":\"a\",\"logprobs\":2}", &r, &e), 0);
  assert_int_equal(api_session_new(&s, &r, &f->ctx, "cmpl-5", 1), 0);
  api_event_t ev = tok_ev('h', 1);
  ev.n_top = 2;
  ev.top[0].id = 'h';
  ev.top[0].logprob = -0.5f;
  ev.top[1].id = 'j';
  ev.top[1].logprob = -1.25f;
  ev.finished = 1;
  ev.finish = API_FINISH_LENGTH;
  api_session_on_event(s, 0, &ev, &b.out, &b.len, &b.cap);
  char *js = api_session_final_json(s);
  cJSON *root = cJSON_Parse(js);
  cJSON *lp = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(root, "choices"), 0), "logprobs");
  assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "tokens"), 0)->valuestring, "h");
  assert_true(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "token_logprobs"), 0)->valuedouble == -0.5);
  cJSON *top = cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "top_logprobs"), 0);
  assert_true(cJSON_GetObjectItem(top, "j")->valuedouble == -1.25);
  assert_int_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "text_offset"), 0)->valueint, 0);
  cJSON_Delete(root);
  free(js);
  api_session_free(s);
  api_request_free(&r);
}

/* usage.prompt_tokens_details.cached_tokens (OpenAI's field): per prompt the most any of its choices' events
 * said came from the prefix cache (the n choices of one prompt share it, so they do not add up), never more
 * than the prompt; prompts add up. */
static void test_cached_tokens_usage(void **state) {
  fixture_t *f = *state;
  api_request_t r;
  api_error_t e;
  api_session_t *s;
  buf_t b = {0};
  assert_int_equal(parse(f, API_COMPLETIONS, "{\"prompt\":[\"hello there\",\"a\"],\"n\":2,\"max_tokens\":4}", &r, &e),
                   0);
  assert_int_equal(r.n_prompts, 2);
  assert_int_equal(r.n_choices, 4);
  assert_int_equal(api_session_new(&s, &r, &f->ctx, "cmpl-6", 1), 0);
  const int cached[4] = {3, 5, 0, 1000}; /* by choice; choices 0, 1 are prompt 0's, 2, 3 prompt 1's */
  int want[2] = {0, 0};
  for (int c = 0; c < 4; c++) {
    int pi = r.choices[c].prompt_index, m = cached[c] < r.prompt_lens[pi] ? cached[c] : r.prompt_lens[pi];
    if (m > want[pi]) want[pi] = m;
    api_event_t ev = tok_ev('x', 1);
    ev.n_cached = cached[c];
    api_session_on_event(s, c, &ev, &b.out, &b.len, &b.cap);
    api_event_t fin = {.finished = 1, .finish = API_FINISH_LENGTH, .n_generated = 1, .n_cached = cached[c]};
    api_session_on_event(s, c, &fin, &b.out, &b.len, &b.cap);
  }
  assert_true(api_session_done(s));
  assert_int_equal(want[0], 5 < r.prompt_lens[0] ? 5 : r.prompt_lens[0]);
  assert_int_equal(want[1], r.prompt_lens[1]); /* capped: 1000 is more than the prompt */
  char *js = api_session_final_json(s);
  cJSON *root = cJSON_Parse(js), *u = cJSON_GetObjectItem(root, "usage");
  cJSON *d = cJSON_GetObjectItem(u, "prompt_tokens_details");
  assert_non_null(d);
  assert_int_equal(cJSON_GetObjectItem(d, "cached_tokens")->valueint, want[0] + want[1]);
  assert_int_equal(cJSON_GetObjectItem(u, "prompt_tokens")->valueint, r.prompt_lens[0] + r.prompt_lens[1]);
  cJSON_Delete(root);
  free(js);
  free(b.out);
  api_session_free(s);
  api_request_free(&r);
}

static void test_models_json(void **state) {
  (void)state;
  char *js = api_models_json("tiny", 64, 5);
  cJSON *root = cJSON_Parse(js), *m = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "data"), 0);
  assert_string_equal(cJSON_GetObjectItem(root, "object")->valuestring, "list");
  assert_string_equal(cJSON_GetObjectItem(m, "id")->valuestring, "tiny");
  assert_string_equal(cJSON_GetObjectItem(m, "object")->valuestring, "model");
  cJSON_Delete(root);
  free(js);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_every_parameter),
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_prompt_forms),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_error_json),
      cmocka_unit_test(test_chat_fallback_prompt),
      cmocka_unit_test(test_chat_template),
      cmocka_unit_test(test_stream_chat_chunks),
      cmocka_unit_test(test_stop_string_across_tokens),
      cmocka_unit_test(test_cached_tokens_usage),
      cmocka_unit_test(test_held_text_released_at_end),
      cmocka_unit_test(test_utf8_hold_back_stream),
      cmocka_unit_test(test_logprobs_format),
      cmocka_unit_test(test_models_json),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
