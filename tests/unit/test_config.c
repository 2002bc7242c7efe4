/* test_config.c: the config table (common/config.c): defaults, environment, command line, live SET,
 * help and dump, as a user of `strata serve` would see them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/status.h"

typedef struct {
  int max_num_seqs;
  int64_t kv_cache_bytes;
  double gpu_util;
  bool prefix_caching;
  bool trust_remote_code;
  char *model;
  char *api_key;
  cfg_strlist_t peers;
  int dtype;
} conf_t;

static const char *const dtype_names[] = {"auto", "f32", "f16", "bf16", NULL};

static const cfg_option_t opts[] = {
    CFG_INT("max-num-seqs", conf_t, max_num_seqs, "256", 1, 4096, CFG_MUTABLE, "Most sequences running at once"),
    CFG_INT64("kv-cache-bytes", conf_t, kv_cache_bytes, "0", 0, INT64_MAX, 0, "KV cache size; 0 = measure"),
    CFG_FLOAT("gpu-memory-utilization", conf_t, gpu_util, "0.9", 0.05, 1.0, CFG_MUTABLE,
              "Fraction of GPU memory to use"),
    CFG_BOOL("prefix-caching", conf_t, prefix_caching, "true", 0, "Reuse cached prompt blocks"),
    CFG_BOOL("trust-remote-code", conf_t, trust_remote_code, "false", 0, "Allow custom model code"),
    CFG_STRING("model", conf_t, model, NULL, 0, "Model directory or GGUF file"),
    CFG_STRING("api-key", conf_t, api_key, "hunter2-default", CFG_SECRET | CFG_MUTABLE, "Bearer token for clients"),
    CFG_LIST("peer", conf_t, peers, "a:1,b:2", CFG_MUTABLE, "Peer address (repeat or comma-separate)"),
    CFG_ENUM("dtype", conf_t, dtype, dtype_names, "auto", 0, "Weight and activation type"),
    CFG_END,
};

static const char *const env_vars[] = {"STRATA_MAX_NUM_SEQS", "STRATA_KV_CACHE_BYTES", "STRATA_GPU_MEMORY_UTILIZATION",
                                       "STRATA_PREFIX_CACHING", "STRATA_TRUST_REMOTE_CODE", "STRATA_MODEL",
                                       "STRATA_API_KEY", "STRATA_PEER", "STRATA_DTYPE"};

static int clear_env(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(env_vars) / sizeof(env_vars[0]); i++) unsetenv(env_vars[i]);
  return 0;
}

/* load: cfg_load of the NULL-terminated argument list into a fresh C; returns its status. */
static int load_args(conf_t *c, char *err, const char **pos, int *n_pos, const char **args) {
  int argc = 0;
  while (args[argc]) argc++;
  memset(c, 0, sizeof(*c));
  return cfg_load(opts, c, argc, (char *const *)args, pos, n_pos, err, 256);
}
#define LOAD(c, err, ...) load_args((c), (err), NULL, NULL, (const char *[]){__VA_ARGS__, NULL})

static void assert_list(const cfg_strlist_t *l, int n, const char *const *items) {
  assert_int_equal(l->n, n);
  for (int i = 0; i < n; i++) assert_string_equal(l->items[i], items[i]);
}

static void test_defaults(void **state) {
  (void)state;
  conf_t c;
  char err[256];
  assert_int_equal(load_args(&c, err, NULL, NULL, (const char *[]){NULL}), 0);
  assert_int_equal(c.max_num_seqs, 256);
  assert_true(c.kv_cache_bytes == 0);
  assert_float_equal(c.gpu_util, 0.9, 1e-12);
  assert_true(c.prefix_caching);
  assert_false(c.trust_remote_code);
  assert_null(c.model);
  assert_string_equal(c.api_key, "hunter2-default");
  assert_list(&c.peers, 2, (const char *[]){"a:1", "b:2"});
  assert_int_equal(c.dtype, 0);
  cfg_free(opts, &c);
  assert_null(c.api_key);
  assert_int_equal(c.peers.n, 0);
}

static void test_env(void **state) {
  (void)state;
  conf_t c;
  char err[256];
  setenv("STRATA_MAX_NUM_SEQS", "8", 1);
  setenv("STRATA_KV_CACHE_BYTES", "17179869184", 1); /* 16 GiB: needs 64 bits */
  setenv("STRATA_GPU_MEMORY_UTILIZATION", "0.5", 1);
  setenv("STRATA_PREFIX_CACHING", "off", 1);
  setenv("STRATA_MODEL", "/models/llama", 1);
  setenv("STRATA_PEER", "x:1, y:2,,z:3", 1);
  setenv("STRATA_DTYPE", "bf16", 1);
  assert_int_equal(LOAD(&c, err, "--trust-remote-code"), 0);
  assert_int_equal(c.max_num_seqs, 8);
  assert_true(c.kv_cache_bytes == 17179869184LL);
  assert_float_equal(c.gpu_util, 0.5, 1e-12);
  assert_false(c.prefix_caching);
  assert_true(c.trust_remote_code);
  assert_string_equal(c.model, "/models/llama");
  assert_list(&c.peers, 3, (const char *[]){"x:1", "y:2", "z:3"});
  assert_int_equal(c.dtype, 3);
  cfg_free(opts, &c);
  /* a bad environment value names the variable and the bound */
  setenv("STRATA_MAX_NUM_SEQS", "0", 1);
  assert_int_equal(LOAD(&c, err, "--model", "m"), STRATA_EINVAL);
  assert_string_equal(err, "STRATA_MAX_NUM_SEQS: 0 is below the minimum 1");
  cfg_free(opts, &c);
}

static void test_cli_overrides_env(void **state) {
  (void)state;
  conf_t c;
  char err[256];
  setenv("STRATA_MAX_NUM_SEQS", "8", 1);
  setenv("STRATA_PEER", "x:1,y:2", 1);
  setenv("STRATA_MODEL", "/from/env", 1);
  assert_int_equal(LOAD(&c, err, "--max-num-seqs=16", "--peer", "c:3", "--peer=d:4,e:5", "--model", "/from/cli"), 0);
  assert_int_equal(c.max_num_seqs, 16);
  assert_list(&c.peers, 3, (const char *[]){"c:3", "d:4", "e:5"}); /* the CLI list replaces env's */
  assert_string_equal(c.model, "/from/cli");
  cfg_free(opts, &c);
  /* space form, and the last of a repeated scalar wins */
  assert_int_equal(LOAD(&c, err, "--max-num-seqs", "32", "--max-num-seqs", "64"), 0);
  assert_int_equal(c.max_num_seqs, 64);
  assert_list(&c.peers, 2, (const char *[]){"x:1", "y:2"}); /* untouched by the CLI: env's */
  assert_string_equal(c.model, "/from/env");
  cfg_free(opts, &c);
}

static void test_bounds(void **state) {
  (void)state;
  conf_t c;
  char err[256];
  assert_int_equal(LOAD(&c, err, "--max-num-seqs", "0"), STRATA_EINVAL);
  assert_string_equal(err, "--max-num-seqs: 0 is below the minimum 1");
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "--max-num-seqs=5000"), STRATA_EINVAL);
  assert_string_equal(err, "--max-num-seqs: 5000 is above the maximum 4096");
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "--max-num-seqs", "12x"), STRATA_EINVAL);
  assert_string_equal(err, "--max-num-seqs: '12x' is not an integer");
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "--max-num-seqs", "99999999999999999999"), STRATA_EINVAL);
  assert_non_null(strstr(err, "--max-num-seqs"));
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "--gpu-memory-utilization", "1.5"), STRATA_EINVAL);
  assert_string_equal(err, "--gpu-memory-utilization: 1.5 is above the maximum 1");
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "--gpu-memory-utilization", "nan"), STRATA_EINVAL);
  assert_non_null(strstr(err, "--gpu-memory-utilization"));
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "--kv-cache-bytes", "-1"), STRATA_EINVAL);
  assert_string_equal(err, "--kv-cache-bytes: -1 is below the minimum 0");
  cfg_free(opts, &c);
  /* the bounds themselves are accepted */
  assert_int_equal(LOAD(&c, err, "--max-num-seqs", "4096", "--gpu-memory-utilization=0.05"), 0);
  assert_int_equal(c.max_num_seqs, 4096);
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "--model"), STRATA_EINVAL);
  assert_string_equal(err, "--model: missing value");
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "--model", "--dtype", "f16"), STRATA_EINVAL);
  assert_non_null(strstr(err, "--model: missing value"));
  cfg_free(opts, &c);
}

static void test_bools(void **state) {
  (void)state;
  conf_t c;
  char err[256];
  assert_int_equal(LOAD(&c, err, "--no-prefix-caching", "--trust-remote-code"), 0);
  assert_false(c.prefix_caching);
  assert_true(c.trust_remote_code);
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "--prefix-caching=no", "--trust-remote-code=YES"), 0);
  assert_false(c.prefix_caching);
  assert_true(c.trust_remote_code);
  cfg_free(opts, &c);
  /* a bool never swallows the next argument: it is positional */
  const char *pos[4];
  int n_pos = -1;
  assert_int_equal(load_args(&c, err, pos, &n_pos, (const char *[]){"--trust-remote-code", "false", NULL}), 0);
  assert_true(c.trust_remote_code);
  assert_int_equal(n_pos, 1);
  assert_string_equal(pos[0], "false");
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "--prefix-caching=maybe"), STRATA_EINVAL);
  assert_non_null(strstr(err, "--prefix-caching: 'maybe' is not a boolean"));
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "--no-prefix-caching=true"), STRATA_EINVAL);
  assert_non_null(strstr(err, "--no-prefix-caching"));
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "--no-model"), STRATA_EINVAL); /* --no- only for bools */
  cfg_free(opts, &c);
}

static void test_enum(void **state) {
  (void)state;
  conf_t c;
  char err[256];
  assert_int_equal(LOAD(&c, err, "--dtype", "f16"), 0);
  assert_int_equal(c.dtype, 2);
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "--dtype=BF16"), 0);
  assert_int_equal(c.dtype, 3);
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "--dtype", "fp8"), STRATA_EINVAL);
  assert_string_equal(err, "--dtype: 'fp8' is not one of auto, f32, f16, bf16");
  cfg_free(opts, &c);
}

static void test_unknown_and_positional(void **state) {
  (void)state;
  conf_t c;
  char err[256];
  assert_int_equal(LOAD(&c, err, "--max-num-seq", "8"), STRATA_EINVAL);
  assert_string_equal(err, "unknown option --max-num-seq (did you mean --max-num-seqs?)");
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "--prefix-cahcing"), STRATA_EINVAL);
  assert_string_equal(err, "unknown option --prefix-cahcing (did you mean --prefix-caching?)");
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "--completely-different"), STRATA_EINVAL);
  assert_string_equal(err, "unknown option --completely-different");
  cfg_free(opts, &c);
  assert_int_equal(LOAD(&c, err, "-model", "x"), STRATA_EINVAL);
  assert_string_equal(err, "unknown option -model (did you mean --model?)");
  cfg_free(opts, &c);
  /* positional arguments come back in order; "--" ends the options; "-" is positional */
  const char *pos[8];
  int n_pos = 0;
  assert_int_equal(load_args(&c, err, pos, &n_pos,
                             (const char *[]){"dir1", "--model", "m", "-", "--", "--dtype", "x", NULL}),
                   0);
  assert_int_equal(n_pos, 4);
  assert_string_equal(pos[0], "dir1");
  assert_string_equal(pos[1], "-");
  assert_string_equal(pos[2], "--dtype");
  assert_string_equal(pos[3], "x");
  assert_string_equal(c.model, "m");
  assert_int_equal(c.dtype, 0);
  cfg_free(opts, &c);
  /* a caller that takes none says so */
  assert_int_equal(LOAD(&c, err, "stray"), STRATA_EINVAL);
  assert_string_equal(err, "unexpected argument 'stray'");
  cfg_free(opts, &c);
}

static void test_set(void **state) {
  (void)state;
  conf_t c;
  char err[256];
  assert_int_equal(LOAD(&c, err, "--model", "m"), 0);
  assert_int_equal(cfg_set(opts, &c, "max-num-seqs", "12", err, sizeof(err)), 0);
  assert_int_equal(c.max_num_seqs, 12);
  /* a bad value is refused and the old one stays */
  assert_int_equal(cfg_set(opts, &c, "max-num-seqs", "0", err, sizeof(err)), STRATA_EINVAL);
  assert_string_equal(err, "max-num-seqs: 0 is below the minimum 1");
  assert_int_equal(c.max_num_seqs, 12);
  assert_int_equal(cfg_set(opts, &c, "peer", "p:1,q:2,r:3", err, sizeof(err)), 0);
  assert_list(&c.peers, 3, (const char *[]){"p:1", "q:2", "r:3"});
  assert_int_equal(cfg_set(opts, &c, "api-key", "new-secret", err, sizeof(err)), 0);
  assert_string_equal(c.api_key, "new-secret");
  /* immutable options need a restart */
  assert_int_equal(cfg_set(opts, &c, "model", "other", err, sizeof(err)), STRATA_EUNSUPPORTED);
  assert_string_equal(err, "model cannot be changed at run time; restart with --model");
  assert_string_equal(c.model, "m");
  assert_int_equal(cfg_set(opts, &c, "max-num-sqes", "3", err, sizeof(err)), STRATA_ENOTFOUND);
  assert_string_equal(err, "unknown option max-num-sqes (did you mean max-num-seqs?)");
  cfg_free(opts, &c);
}

/* slurp: F's whole content (F is rewound first) as a malloc'd string; closes F. */
static char *slurp(FILE *f) {
  long len = ftell(f);
  assert_true(len >= 0);
  rewind(f);
  char *buf = malloc((size_t)len + 1);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
  buf[len] = '\0';
  fclose(f);
  return buf;
}

static char *capture_help(void) {
  FILE *f = tmpfile();
  assert_non_null(f);
  cfg_help(opts, f);
  return slurp(f);
}

static char *capture_dump(const conf_t *c) {
  FILE *f = tmpfile();
  assert_non_null(f);
  cfg_dump(opts, c, f);
  return slurp(f);
}

/* line_with: the start of the line of TEXT that contains NEEDLE. */
static const char *line_with(const char *text, const char *needle) {
  const char *p = strstr(text, needle);
  assert_non_null(p);
  while (p > text && p[-1] != '\n') p--;
  return p;
}

static void test_help_and_dump(void **state) {
  (void)state;
  char *help = capture_help();
  assert_non_null(strstr(help, "STRATA_"));
  const char *l1 = line_with(help, "--max-num-seqs"), *l2 = line_with(help, "--[no-]prefix-caching");
  const char *l3 = line_with(help, "--api-key");
  assert_non_null(strstr(l1, "int"));
  assert_non_null(strstr(l1, "256"));
  assert_non_null(strstr(l1, "Most sequences running at once"));
  assert_non_null(strstr(l1, "4096"));
  assert_non_null(strstr(line_with(help, "--dtype"), "auto|f32|f16|bf16"));
  /* aligned: the descriptions start in the same column */
  long c1 = strstr(l1, "Most sequences") - l1, c2 = strstr(l2, "Reuse cached") - l2, c3 = strstr(l3, "Bearer") - l3;
  assert_int_equal(c1, c2);
  assert_int_equal(c1, c3);
  assert_null(strstr(help, "hunter2")); /* a secret's default is never shown */
  free(help);

  conf_t c;
  char err[256];
  assert_int_equal(LOAD(&c, err, "--api-key", "sk-live-123", "--model", "/m", "--dtype", "f16"), 0);
  char *dump = capture_dump(&c);
  assert_non_null(strstr(dump, "max-num-seqs = 256\n"));
  assert_non_null(strstr(dump, "gpu-memory-utilization = 0.9\n"));
  assert_non_null(strstr(dump, "prefix-caching = true\n"));
  assert_non_null(strstr(dump, "model = /m\n"));
  assert_non_null(strstr(dump, "peer = a:1,b:2\n"));
  assert_non_null(strstr(dump, "dtype = f16\n"));
  assert_non_null(strstr(dump, "api-key = ***\n"));
  assert_null(strstr(dump, "sk-live"));
  free(dump);
  cfg_free(opts, &c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_defaults, clear_env, clear_env),
      cmocka_unit_test_setup_teardown(test_env, clear_env, clear_env),
      cmocka_unit_test_setup_teardown(test_cli_overrides_env, clear_env, clear_env),
      cmocka_unit_test_setup_teardown(test_bounds, clear_env, clear_env),
      cmocka_unit_test_setup_teardown(test_bools, clear_env, clear_env),
      cmocka_unit_test_setup_teardown(test_enum, clear_env, clear_env),
      cmocka_unit_test_setup_teardown(test_unknown_and_positional, clear_env, clear_env),
      cmocka_unit_test_setup_teardown(test_set, clear_env, clear_env),
      cmocka_unit_test_setup_teardown(test_help_and_dump, clear_env, clear_env),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
