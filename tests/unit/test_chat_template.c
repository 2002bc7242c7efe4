/* test_chat_template.c: the Jinja-subset interpreter (common/chat) on published chat templates and on
 * the language itself. Expected prompts are written by hand from each model's documented format. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/chat/chat.h"
#include "common/status.h"

/* ---- helpers ---- */

static char *read_template(const char *name) {
  char dir[1024], path[1200];
  const char *src = getenv("STRATA_SOURCE_DIR");
  if (src) {
    snprintf(dir, sizeof(dir), "%s/tests/data/chat_templates", src);
  } else { /* run by hand: find the data next to this source file */
    snprintf(dir, sizeof(dir), "%s", __FILE__);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    strncat(dir, "/../data/chat_templates", sizeof(dir) - strlen(dir) - 1);
  }
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  if (!f) fail_msg("cannot open %s (set STRATA_SOURCE_DIR)", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)n + 1);
  assert_non_null(s);
  assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
  s[n] = 0;
  fclose(f);
  return s;
}

/* Compiles SRC, renders, checks the status, returns the output (or NULL) and the error in ERR. */
static char *render_src(const char *src, const chat_message_t *m, size_t n, const chat_render_opts_t *o, int want_rc,
                        char *err) {
  chat_template_t *t = NULL;
  char local[CHAT_ERR_MAX];
  if (!err) err = local;
  int rc = chat_template_compile(src, (size_t)-1, &t, err, CHAT_ERR_MAX);
  if (rc) fail_msg("compile failed: %s", err);
  char *out = NULL;
  rc = chat_template_render(t, m, n, o, &out, NULL, err, CHAT_ERR_MAX);
  if (rc != want_rc) fail_msg("render returned %d (%s), wanted %d", rc, err, want_rc);
  if (rc) assert_null(out);
  chat_template_free(t);
  return out;
}

static void expect_render(const char *src, const chat_message_t *m, size_t n, const chat_render_opts_t *o,
                          const char *want) {
  char *out = render_src(src, m, n, o, 0, NULL);
  assert_string_equal(out, want);
  free(out);
}

static void expect_file(const char *file, const chat_message_t *m, size_t n, const chat_render_opts_t *o,
                        const char *want) {
  char *src = read_template(file);
  expect_render(src, m, n, o, want);
  free(src);
}

/* Renders a template with no messages and compares. */
static void expect_text(const char *src, const char *want) { expect_render(src, NULL, 0, NULL, want); }

static void expect_compile_error(const char *src, const char *want_err) {
  chat_template_t *t = NULL;
  char err[CHAT_ERR_MAX] = "";
  assert_int_equal(chat_template_compile(src, (size_t)-1, &t, err, sizeof(err)), STRATA_EFORMAT);
  assert_null(t);
  assert_string_equal(err, want_err);
}

static const chat_message_t k_conv[] = {
    {"system", "You are a pirate."},
    {"user", "Hello!"},
    {"assistant", "Ahoy, matey!"},
    {"user", "What is 2+2?"},
};
static const chat_message_t *k_nosys = k_conv + 1; /* the same conversation without the system message */

/* ---- published templates ---- */

/* Llama 3 format (Meta's model card): <|begin_of_text|> then, per message,
 * <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>; the generation prompt is an open
 * assistant header. The published template trims each content. */
static void test_llama3(void **state) {
  (void)state;
  chat_render_opts_t o = {.add_generation_prompt = true, .bos_token = "<|begin_of_text|>", .eos_token = "<|eot_id|>"};
  const char *turns = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a pirate.<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\nAhoy, matey!<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>";
  char want[1024];
  snprintf(want, sizeof(want), "%s<|start_header_id|>assistant<|end_header_id|>\n\n", turns);
  expect_file("meta-llama-3-8b-instruct.jinja", k_conv, 4, &o, want);
  o.add_generation_prompt = false;
  expect_file("meta-llama-3-8b-instruct.jinja", k_conv, 4, &o, turns);
  /* contents are trimmed */
  const chat_message_t padded[] = {{"user", "  Hi there \n"}};
  o.add_generation_prompt = true;
  expect_file("meta-llama-3-8b-instruct.jinja", padded, 1, &o,
              "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* Llama 3.1 (Meta's prompt-format page): the system header always carries "Cutting Knowledge Date:
 * December 2023\nToday Date: {date}\n\n" before the system text; date defaults to 26 Jul 2024. */
static void test_llama31(void **state) {
  (void)state;
  chat_render_opts_t o = {.add_generation_prompt = true, .bos_token = "<|begin_of_text|>", .eos_token = "<|eot_id|>"};
  expect_file("meta-llama-3.1-8b-instruct.jinja", k_conv, 4, &o,
              "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
              "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are a pirate.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nAhoy, matey!<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n");
  const chat_var_t vars[] = {{"date_string", "01 Jan 2025"}};
  o.vars = vars;
  o.n_vars = 1;
  o.add_generation_prompt = false;
  expect_file("meta-llama-3.1-8b-instruct.jinja", k_nosys, 1, &o,
              "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
              "Cutting Knowledge Date: December 2023\nToday Date: 01 Jan 2025\n\n<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>");
}

/* ChatML (Qwen and OpenHermes model cards): <|im_start|>{role}\n{content}<|im_end|>\n per message and
 * <|im_start|>assistant\n as the generation prompt. Qwen2 adds "You are a helpful assistant." and
 * Qwen2.5 "You are Qwen, created by Alibaba Cloud. You are a helpful assistant." when there is no
 * system message; OpenHermes adds nothing. */
#define CHATML_TURNS                                                                                      \
  "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\nAhoy, matey!<|im_end|>\n"                   \
  "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
#define CHATML_PIRATE "<|im_start|>system\nYou are a pirate.<|im_end|>\n"

static void test_chatml_family(void **state) {
  (void)state;
  chat_render_opts_t gen = {.add_generation_prompt = true, .eos_token = "<|im_end|>"};
  chat_render_opts_t nogen = {.eos_token = "<|im_end|>"};
  const char *qwen2_sys = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n";
  const char *qwen25_sys = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                           "assistant.<|im_end|>\n";
  char want[1024];
  const char *files[] = {"qwen2-7b-instruct.jinja", "qwen2.5-7b-instruct.jinja", "openhermes-2.5-chatml.jinja"};
  const char *defaults[] = {qwen2_sys, qwen25_sys, ""};
  for (int i = 0; i < 3; i++) {
    expect_file(files[i], k_conv, 4, &gen, CHATML_PIRATE CHATML_TURNS "<|im_start|>assistant\n");
    expect_file(files[i], k_conv, 4, &nogen, CHATML_PIRATE CHATML_TURNS);
    snprintf(want, sizeof(want), "%s%s<|im_start|>assistant\n", defaults[i], CHATML_TURNS);
    expect_file(files[i], k_nosys, 3, &gen, want);
  }
}

/* Qwen2.5 tool calls (Qwen's function-calling docs, Hermes style): the assistant turn carries
 * <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>, and tool results go back in a user turn
 * wrapped in <tool_response>. */
static void test_qwen25_tool_calls_json(void **state) {
  (void)state;
  char *src = read_template("qwen2.5-7b-instruct.jinja");
  chat_template_t *t;
  char err[CHAT_ERR_MAX];
  assert_int_equal(chat_template_compile(src, (size_t)-1, &t, err, sizeof(err)), 0);
  const char *msgs =
      "[{\"role\":\"user\",\"content\":\"Weather in Paris?\"},"
      "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"type\":\"function\",\"function\":"
      "{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\",\"days\":2}}}]},"
      "{\"role\":\"tool\",\"content\":\"22C\"},{\"role\":\"tool\",\"content\":\"sunny\"}]";
  chat_render_opts_t o = {.add_generation_prompt = true};
  char *out = NULL;
  size_t n = 0;
  assert_int_equal(chat_template_render_json(t, msgs, &o, &out, &n, err, sizeof(err)), 0);
  const char *want = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                     "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
                     "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
                     "{\"city\": \"Paris\", \"days\": 2}}\n</tool_call><|im_end|>\n"
                     "<|im_start|>user\n<tool_response>\n22C\n</tool_response>\n<tool_response>\nsunny\n"
                     "</tool_response><|im_end|>\n<|im_start|>assistant\n";
  assert_string_equal(out, want);
  assert_int_equal(n, strlen(want));
  free(out);
  assert_int_equal(chat_template_render_json(t, "{\"role\":1}", &o, &out, NULL, err, sizeof(err)), STRATA_EINVAL);
  assert_null(out);
  chat_template_free(t);
  free(src);
}

/* Llama 3.1 JSON tool calling (Meta's prompt-format page): with tools and no system message, the system
 * header gains "Environment: ipython\n"; the tool definitions go, as JSON indented by 4, into the first
 * user turn after fixed guidance; a call is {"name": ..., "parameters": ...}; a tool result comes back
 * under the ipython role (the template JSON-encodes it, strings included). */
static void test_llama31_tools_json(void **state) {
  (void)state;
  char *src = read_template("meta-llama-3.1-8b-instruct.jinja");
  chat_template_t *t;
  char err[CHAT_ERR_MAX];
  assert_int_equal(chat_template_compile(src, (size_t)-1, &t, err, sizeof(err)), 0);
  const char *msgs = "[{\"role\":\"user\",\"content\":\"Weather in Paris?\"},"
                     "{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"get_weather\","
                     "\"arguments\":{\"city\":\"Paris\"}}}]},{\"role\":\"tool\",\"content\":\"22C\"}]";
  chat_render_opts_t o = {.add_generation_prompt = true,
                          .bos_token = "<|begin_of_text|>",
                          .tools_json = "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
                                        "\"parameters\":{\"type\":\"object\"}}}]"};
  char *out = NULL;
  assert_int_equal(chat_template_render_json(t, msgs, &o, &out, NULL, err, sizeof(err)), 0);
  assert_string_equal(out,
                      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
                      "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond "
                      "with a JSON for a function call with its proper arguments that best answers the given "
                      "prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": dictionary of "
                      "argument name and its value}.Do not use variables.\n\n{\n    \"type\": \"function\",\n"
                      "    \"function\": {\n        \"name\": \"get_weather\",\n        \"parameters\": {\n"
                      "            \"type\": \"object\"\n        }\n    }\n}\n\nWeather in Paris?<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", "
                      "\"parameters\": {\"city\": \"Paris\"}}<|eot_id|>"
                      "<|start_header_id|>ipython<|end_header_id|>\n\n\"22C\"<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n");
  free(out);
  chat_template_free(t);
  free(src);
}

/* Mistral (model card): <s>[INST] {user} [/INST] {assistant}</s>[INST] ... The revised v0.1 template
 * puts a space before each [INST] and the answer, and folds a system message into the first user turn
 * as "{system}\n\n{user}". Roles must alternate user/assistant after the optional system message. */
static void test_mistral(void **state) {
  (void)state;
  chat_render_opts_t o = {.add_generation_prompt = true, .bos_token = "<s>", .eos_token = "</s>"};
  const char *f = "mistral-7b-instruct-v0.1.jinja";
  expect_file(f, k_conv, 4, &o, "<s> [INST] You are a pirate.\n\nHello! [/INST] Ahoy, matey!</s> [INST] What is 2+2? [/INST]");
  expect_file(f, k_nosys, 3, &o, "<s> [INST] Hello! [/INST] Ahoy, matey!</s> [INST] What is 2+2? [/INST]");
  char *src = read_template(f), err[CHAT_ERR_MAX];
  const chat_message_t twice[] = {{"user", "a"}, {"user", "b"}};
  assert_null(render_src(src, twice, 2, &o, STRATA_EINVAL, err));
  assert_string_equal(err, "After the optional system message, conversation roles must alternate "
                           "user/assistant/user/assistant/...");
  const chat_message_t tool[] = {{"user", "a"}, {"tool", "b"}};
  assert_null(render_src(src, tool, 2, &o, STRATA_EINVAL, err));
  assert_string_equal(err, "Only user and assistant roles are supported, with the exception of an initial "
                           "optional system message!");
  free(src);

  /* the original v0.2 template: no spaces around turns, and no system role at all */
  f = "mistral-7b-instruct-v0.2-legacy.jinja";
  expect_file(f, k_nosys, 3, &o, "<s>[INST] Hello! [/INST]Ahoy, matey!</s>[INST] What is 2+2? [/INST]");
  src = read_template(f);
  assert_null(render_src(src, k_conv, 4, &o, STRATA_EINVAL, err));
  assert_string_equal(err, "Conversation roles must alternate user/assistant/user/assistant/...");
  free(src);
}

static void test_family_and_fallback(void **state) {
  (void)state;
  const struct {
    const char *file;
    chat_family_t fam;
  } cases[] = {{"meta-llama-3-8b-instruct.jinja", CHAT_FAMILY_LLAMA3},
               {"meta-llama-3.1-8b-instruct.jinja", CHAT_FAMILY_LLAMA3},
               {"qwen2.5-7b-instruct.jinja", CHAT_FAMILY_CHATML},
               {"openhermes-2.5-chatml.jinja", CHAT_FAMILY_CHATML},
               {"mistral-7b-instruct-v0.1.jinja", CHAT_FAMILY_MISTRAL}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char *src = read_template(cases[i].file);
    assert_int_equal(chat_template_family(src), cases[i].fam);
    free(src);
  }
  assert_int_equal(chat_template_family("{{ '[INST] <<SYS>>' }}"), CHAT_FAMILY_LLAMA2);
  assert_int_equal(chat_template_family("{{ messages }}"), CHAT_FAMILY_UNKNOWN);
  assert_string_equal(chat_family_name(CHAT_FAMILY_LLAMA3), "llama3");
  assert_string_equal(chat_family_name(CHAT_FAMILY_UNKNOWN), "unknown");

  char *out = NULL;
  size_t n = 0;
  assert_int_equal(chat_render_fallback(k_conv, 2, true, &out, &n), 0);
  const char *want = "<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n"
                     "<|im_start|>assistant\n";
  assert_string_equal(out, want);
  assert_int_equal(n, strlen(want));
  free(out);
  assert_int_equal(chat_render_fallback(NULL, 0, false, &out, NULL), 0);
  assert_string_equal(out, "");
  free(out);
  const chat_message_t bad[] = {{NULL, "x"}};
  assert_int_equal(chat_render_fallback(bad, 1, false, &out, NULL), STRATA_EINVAL);
  assert_null(out);
}

/* ---- the language (expected values follow Jinja2/Python semantics, derived by hand) ---- */

static void test_whitespace_control(void **state) {
  (void)state;
  expect_text("a  {{- 'b' -}}  \n c", "abc");
  expect_text("a {%- if true -%} \n b \n {%- endif -%} c", "abc");
  expect_text("x {#- note -#} y", "xy");
  /* trim_blocks: the newline after a block tag goes; lstrip_blocks: indentation before it goes */
  expect_text("{% if true %}\n    yes\n{% endif %}\nend", "    yes\nend");
  expect_text("<\n    {% if true %}\n    in\n    {% endif %}\n>", "<\n    in\n>");
  expect_text("a {% if true %}x{% endif %}", "a x"); /* not at the start of a line: kept */
  expect_text("  {{ 'v' }}\n", "  v\n");              /* expressions are not stripped */
  expect_text("  {%+ if true %}x{% endif +%}\n", "  x\n");
  expect_text("  {# c #}\nz", "z");
  expect_text("{% if true %}\r\nw{% endif %}", "w");
  expect_text("{% raw %}\n{{ not evaluated }}{% if %}\n{% endraw %}\nafter", "{{ not evaluated }}{% if %}\nafter");
  expect_compile_error("{% raw %}{{ x }}", "line 1, column 1: unclosed '{% raw %}'");
}

static void test_loops(void **state) {
  (void)state;
  expect_text("{% for x in ['a','b','c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}"
              "{{ loop.length }}{{ loop.revindex }};{% endfor %}",
              "10TrueFalse33;21FalseFalse32;32FalseTrue31;");
  expect_text("{% for x in range(10) if x is odd %}{{ x }}{% if not loop.last %},{% endif %}{% endfor %}", "1,3,5,7,9");
  expect_text("{% for x in [] %}a{% else %}empty{% endfor %}", "empty");
  expect_text("{% for x in range(1, 10, 3) %}{{ x }}{% endfor %}|{% for x in range(3, 0, -1) %}{{ x }}{% endfor %}",
              "147|321");
  expect_text("{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}"
              "{{ x }}{% endfor %}",
              "0134");
  expect_text("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }} {% endfor %}", "a=1 b=2 ");
  expect_text("{% for k in {'z': 1, 'y': 2} %}{{ k }}{% endfor %}", "zy");
  expect_text("{% for c in 'héllo' %}[{{ c }}]{% endfor %}", "[h][é][l][l][o]");
  expect_text("{% for row in [[1, 2], [3]] %}{% for x in row %}{{ loop.index }}{% endfor %}{{ loop.index }};"
              "{% endfor %}",
              "121;12;");
  expect_text("{% for x in undefined_thing %}never{% endfor %}ok", "ok");
  expect_text("{% for x in range(5) %}{{ loop.cycle('a', 'b') }}{% endfor %}", "ababa");
  expect_text("{{ strftime_now is defined }} {{ strftime_now('%Y') | length }}", "True 4");
}

static void test_scoping_and_namespace(void **state) {
  (void)state;
  /* Jinja: assignments inside a loop do not leak out; a namespace carries state across iterations */
  expect_text("{% set x = 1 %}{% for i in [1, 2] %}{% set x = x + i %}{% endfor %}{{ x }}", "1");
  expect_text("{% set ns = namespace(total=0, seen=false) %}{% for i in [1, 2, 3] %}"
              "{% set ns.total = ns.total + i %}{% set ns.seen = true %}{% endfor %}{{ ns.total }} {{ ns.seen }}",
              "6 True");
  expect_text("{% if true %}{% set y = 'in-if' %}{% endif %}{{ y }}", "in-if");
  expect_text("{% set block %}a{{ 1 + 1 }}b{% endset %}[{{ block }}]", "[a2b]");
  expect_text("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
              "{{ greet('Bob') }} {{ greet('Al', punct='?') }} {{ greet() }}",
              "Hi Bob! Hi Al? Hi !");
  expect_text("{% set messages = [1, 2, 3][1:] %}{{ messages }}", "[2, 3]");
  expect_text("{% macro c(n) %}{% if n > 0 %}{{ n }}{{ c(n - 1) }}{% endif %}{% endmacro %}{{ c(5) }}", "54321");
}

static void test_expressions(void **state) {
  (void)state;
  expect_text("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7 / 2 }} {{ 1 + 2 * 3 }} "
              "{{ (1 + 2) * 3 }} {{ 0.1 + 0.2 }} {{ 2.0 }}",
              "3 -4 1 2 1024 3.5 7 9 0.30000000000000004 2.0");
  expect_text("{{ 1 ~ 'a' ~ none ~ true }}|{{ 'ab' * 3 }}|{{ [1] + [2] }}", "1aNoneTrue|ababab|[1, 2]");
  expect_text("{{ 'y' if 1 > 2 else 'n' }}{{ 'z' if false }}|{{ 0 or 'x' }}|{{ 1 and 'q' }}|{{ not 0 }}", "n|x|q|True");
  expect_text("{{ 'b' in 'abc' }}{{ 2 in [1, 2] }}{{ 'k' in {'k': 1} }}{{ 3 not in [3] }}", "TrueTrueTrueFalse");
  expect_text("{{ 1 == 1.0 }}{{ 'a' < 'b' }}{{ [1, 'x'] == [1, 'x'] }}{{ none == none }}{{ 2 != 2 }}",
              "TrueTrueTrueTrueFalse");
  expect_text("{{ 'tab\\there\\n' }}{{ \"it's\" }}{{ 'caf\\u00e9' }}", "tab\there\nit'scafé");
  expect_text("{{ none }} {{ True }} {{ {'a': [1, 'b', none]} }}", "None True {'a': [1, 'b', None]}");
  expect_text("{{ [10, 20, 30][-1] }} {{ [10, 20][5] }} {{ 'abcdef'[1:4] }} {{ [1, 2, 3, 4][::-1] }} "
              "{{ 'abc'[-2:] }} {{ [1, 2, 3, 4, 5][1::2] }}",
              "30  bcd [4, 3, 2, 1] bc [2, 4]");
  expect_text("{{ {'a': {'b': 5}}['a'].b }}{{ {'a': 1}.get('z', 9) }}{{ {'a': 1}.keys() }}", "59['a']");
}

static void test_undefined(void **state) {
  (void)state;
  expect_text("[{{ foo }}|{{ foo.bar }}|{{ foo['x'] }}|{% if foo %}t{% else %}f{% endif %}|{{ foo is defined }}|"
              "{{ foo is undefined }}|{{ foo | default('d') }}|{{ '' | default('e', true) }}|{{ foo | length }}]",
              "[|||f|False|True|d|e|0]");
  expect_text("{% set m = {'role': 'user'} %}{{ m.content is defined }}{{ m.role is defined }}", "FalseTrue");
}

static void test_filters_and_methods(void **state) {
  (void)state;
  expect_text("[{{ '  x y \\n' | trim }}][{{ 'Ab' | upper }}{{ 'Ab' | lower }}][{{ 'héllo' | length }}]"
              "[{{ [1, 2, 3] | first }}{{ [1, 2, 3] | last }}][{{ ['a', 'b'] | join(', ') }}]",
              "[x y][ABab][5][13][a, b]");
  expect_text("{{ 42 | string ~ '!' }} {{ '17' | int + 1 }} {{ 'x' | int }} {{ 3.9 | int }} {{ '2.5' | float }}",
              "42! 18 0 3 2.5");
  expect_text("{{ none | trim }} {{ 5 | upper }} {{ 12345 | replace('3', '-') }}", "None 5 12-45");
  expect_text("{{ 'aXbXc' | replace('X', '-') }} {{ 'hello world' | title }} {{ 'hello' | capitalize }}",
              "a-b-c Hello World Hello");
  expect_text("{% for k, v in {'x': 1} | items %}{{ k }}{{ v }}{% endfor %}", "x1");
  expect_text("{{ [{'r': 'a', 'n': 1}, {'r': 'b', 'n': 2}, {'r': 'a', 'n': 3}] | selectattr('r', 'equalto', 'a') "
              "| map(attribute='n') | list }} {{ [{'t': 1}, {}] | selectattr('t', 'defined') | list | length }}"
              " {{ [1, 2, 3, 4] | select('even') | list }} {{ ['a', 'code', 'b'] | reject('equalto', 'code') | "
              "join(',') }}",
              "[1, 3] 1 [2, 4] a,b");
  expect_text("{{ ['x', 'y'] | map('upper') | join }} {{ [3, 1, 3] | unique | list }} {{ [1, 2] | reverse | list }}",
              "XY [3, 1] [2, 1]");
  expect_text("[{{ '  a b  '.strip() }}][{{ 'xxaxx'.lstrip('x') }}][{{ 'xxaxx'.rstrip('x') }}]"
              "[{{ 'a,b,,c'.split(',') }}][{{ ' a  b '.split() }}][{{ 'abc'.startswith('ab') }}"
              "{{ 'abc'.endswith(('x', 'bc')) }}][{{ 'Hi'.upper() }}{{ 'Hi'.lower() }}][{{ '-'.join(['a', 'b']) }}]",
              "[a b][axx][xxa][['a', 'b', '', 'c']][['a', 'b']][TrueTrue][HIhi][a-b]");
  /* tojson like json.dumps(ensure_ascii=False): ", " and ": " separators, or indented */
  expect_text("{{ {'a': [1, 2.5, none, true], 'b': 'q\"x\\n', 'c': 'é'} | tojson }}",
              "{\"a\": [1, 2.5, null, true], \"b\": \"q\\\"x\\n\", \"c\": \"é\"}");
  expect_text("{{ {'a': 1, 'b': [1, 2], 'c': {}} | tojson(indent=2) }}",
              "{\n  \"a\": 1,\n  \"b\": [\n    1,\n    2\n  ],\n  \"c\": {}\n}");
  expect_text("{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'x' | indent(2, true) }}", "a\n  b\n\n  c|  x");
  expect_text("{{ 5 is divisibleby 5 }}{{ 'a' is string }}{{ {} is mapping }}{{ [] is iterable }}{{ 1 is number }}"
              "{{ none is none }}{{ 'x' is not none }}{{ 3 is odd }}{{ 'ab' is lower }}",
              "TrueTrueTrueTrueTrueTrueTrueTrueTrue");
}

static void test_errors_with_positions(void **state) {
  (void)state;
  expect_compile_error("ok\n{{ 1 + }}", "line 2, column 8: expected an expression, got '}}'");
  expect_compile_error("{% foo %}", "line 1, column 4: unknown or unexpected tag 'foo'");
  expect_compile_error("a\n\n  {% if x %}b", "line 3, column 14: unexpected end of template, expected '{% endif %}'");
  expect_compile_error("{{ 'abc }}", "line 1, column 4: unterminated string literal");
  expect_compile_error("{% for x in y %}{% endif %}", "line 1, column 20: unknown or unexpected tag 'endif'");
  expect_compile_error("{{ x", "line 1, column 1: unclosed '{{'");
  expect_compile_error("{# x", "line 1, column 1: unclosed comment '{#'");
  expect_compile_error("{% break %}", "line 1, column 4: 'break' outside a loop");
  expect_compile_error("{{ a ? b }}", "line 1, column 6: unexpected character '?'");

  char err[CHAT_ERR_MAX];
  assert_null(render_src("\n{{ 'a' + 1 }}", NULL, 0, NULL, STRATA_EFORMAT, err));
  assert_string_equal(err, "line 2, column 8: unsupported operand types for +: string and int");
  assert_null(render_src("{{ nope(1) }}", NULL, 0, NULL, STRATA_EFORMAT, err));
  assert_string_equal(err, "line 1, column 8: 'nope' is undefined");
  assert_null(render_src("{{ 1 | frobnicate }}", NULL, 0, NULL, STRATA_EFORMAT, err));
  assert_string_equal(err, "line 1, column 8: unknown filter 'frobnicate'");
  assert_null(render_src("{{ 1 // 0 }}", NULL, 0, NULL, STRATA_EFORMAT, err));
  assert_null(render_src("{% for x in 5 %}{% endfor %}", NULL, 0, NULL, STRATA_EFORMAT, err));
  assert_null(render_src("{{ raise_exception('bad ' ~ 'input') }}after", NULL, 0, NULL, STRATA_EINVAL, err));
  assert_string_equal(err, "bad input");

  chat_template_t *t = NULL;
  assert_int_equal(chat_template_compile(NULL, 0, &t, err, sizeof(err)), STRATA_EINVAL);
  assert_int_equal(chat_template_compile("x", 1, NULL, NULL, 0), STRATA_EINVAL);
}

static void test_limits(void **state) {
  (void)state;
  char src[4096], err[CHAT_ERR_MAX];
  /* parser depth: 500 nested parentheses, 200 nested ifs */
  strcpy(src, "{{ ");
  for (int i = 0; i < 500; i++) strcat(src, "(");
  strcat(src, "1");
  for (int i = 0; i < 500; i++) strcat(src, ")");
  strcat(src, " }}");
  chat_template_t *t = NULL;
  assert_int_equal(chat_template_compile(src, (size_t)-1, &t, err, sizeof(err)), STRATA_EFORMAT);
  assert_non_null(strstr(err, "nested too deeply"));
  src[0] = 0;
  for (int i = 0; i < 200; i++) strcat(src, "{% if 1 %}");
  assert_int_equal(chat_template_compile(src, (size_t)-1, &t, err, sizeof(err)), STRATA_EFORMAT);
  assert_non_null(strstr(err, "nested too deeply"));
  /* 32 levels is fine */
  src[0] = 0;
  for (int i = 0; i < 32; i++) strcat(src, "{% if 1 %}");
  strcat(src, "deep");
  for (int i = 0; i < 32; i++) strcat(src, "{% endif %}");
  expect_text(src, "deep");

  chat_render_opts_t o = {.max_output_bytes = 1000, .max_iterations = 10000, .max_memory_bytes = 1 << 20};
  assert_null(render_src("{% for i in range(100000) %}xxxxxxxxxx{% endfor %}", NULL, 0, &o, STRATA_EFULL, err));
  assert_null(render_src("{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}", NULL, 0, &o,
                         STRATA_EFULL, err));
  assert_non_null(strstr(err, "iteration limit"));
  assert_null(render_src("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", NULL, 0, &o, STRATA_EFULL, err));
  assert_null(render_src("{{ 'x' * 100000000000 }}", NULL, 0, &o, STRATA_EFULL, err));
  assert_null(render_src("{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
                         "{% endfor %}{{ ns.s | length }}",
                         NULL, 0, &o, STRATA_EFULL, err));
  /* the limits are per render: the same template renders again fine */
  expect_render("{% for i in range(3) %}{{ i }}{% endfor %}", NULL, 0, &o, "012");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_llama3),
      cmocka_unit_test(test_llama31),
      cmocka_unit_test(test_chatml_family),
      cmocka_unit_test(test_qwen25_tool_calls_json),
      cmocka_unit_test(test_llama31_tools_json),
      cmocka_unit_test(test_mistral),
      cmocka_unit_test(test_family_and_fallback),
      cmocka_unit_test(test_whitespace_control),
      cmocka_unit_test(test_loops),
      cmocka_unit_test(test_scoping_and_namespace),
      cmocka_unit_test(test_expressions),
      cmocka_unit_test(test_undefined),
      cmocka_unit_test(test_filters_and_methods),
      cmocka_unit_test(test_errors_with_positions),
      cmocka_unit_test(test_limits),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
