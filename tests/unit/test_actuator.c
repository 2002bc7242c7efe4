/* test_actuator.c: the actuators (coordinator/actuator): `local` with real child processes, `kubernetes`
 * against tests/integration/k8s_stub/ (HTTPS with a CA made at test time), and `none`. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/status.h"
#include "coordinator/actuator/actuator.h"

extern char **environ;

/* ---- helpers ------------------------------------------------------------------------------------ */

static char tmpdir[PATH_MAX];

static int setup_dir(void **state) {
  (void)state;
  snprintf(tmpdir, sizeof(tmpdir), "/tmp/strata-actuator-XXXXXX");
  return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_dir(void **state) {
  (void)state;
  char cmd[PATH_MAX + 16];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* gone: PID is neither running nor a zombie of ours (it was reaped). */
static bool gone(pid_t pid) {
  errno = 0;
  bool not_child = waitpid(pid, NULL, WNOHANG) < 0 && errno == ECHILD;
  return not_child && kill(pid, 0) < 0 && errno == ESRCH;
}

static bool wait_file(const char *path, int ms) {
  for (int i = 0; i < ms / 10; i++) {
    if (access(path, F_OK) == 0) return true;
    sleep_ms(10);
  }
  return false;
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

/* ---- local -------------------------------------------------------------------------------------- */

static actuator_t *local_new(const char *cmd, int stop_ms) {
  actuator_config_t cfg = {.kind = ACTUATOR_LOCAL, .local_command = cmd, .local_stop_timeout_ms = stop_ms};
  actuator_t *a = NULL;
  assert_int_equal(actuator_new(&cfg, &a), 0);
  return a;
}

/* 0 -> 3 -> 1: the two newest die (after being picked and confirmed drained) and are reaped. */
static void test_local_scale(void **state) {
  (void)state;
  char cmd[PATH_MAX * 4];
  /* Each child records its substituted arguments, then becomes `sleep 30`. */
  snprintf(cmd, sizeof(cmd), "sh -c 'echo \"$0 $1\" > %s/{id}.tmp && mv %s/{id}.tmp %s/{id}.args; exec sleep 30' "
           "{pool} {port}", tmpdir, tmpdir, tmpdir);
  actuator_t *a = local_new(cmd, 5000);
  int n = -1;
  assert_int_equal(actuator_get_replicas(a, "decode", &n), 0);
  assert_int_equal(n, 0);
  assert_int_equal(actuator_set_replicas(a, "decode", 3), 0);
  assert_int_equal(actuator_get_replicas(a, "decode", &n), 0);
  assert_int_equal(n, 3);
  actuator_worker_t w[4];
  assert_int_equal(actuator_list(a, "decode", w, 4), 3);
  for (int i = 0; i < 3; i++) {
    char want_id[32], path[PATH_MAX + 64], line[128] = "", want[64];
    snprintf(want_id, sizeof(want_id), "decode-%d", i);
    assert_string_equal(w[i].id, want_id);
    assert_true(w[i].pid > 0 && kill(w[i].pid, 0) == 0);
    assert_true(w[i].port > 0 && w[i].port < 65536);
    for (int j = 0; j < i; j++) assert_int_not_equal(w[i].port, w[j].port);
    snprintf(path, sizeof(path), "%s/%s.args", tmpdir, want_id);
    assert_true(wait_file(path, 5000)); /* renamed into place once written */
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    assert_non_null(fgets(line, sizeof(line), f));
    fclose(f);
    snprintf(want, sizeof(want), "decode %d\n", w[i].port);
    assert_string_equal(line, want);
  }
  /* Shrinking without drained victims is refused and kills nothing. */
  assert_int_equal(actuator_set_replicas(a, "decode", 1), STRATA_EAGAIN);
  char v1[96], v2[96];
  assert_int_equal(actuator_pick_victim(a, "decode", v1, sizeof(v1)), 0);
  assert_int_equal(actuator_pick_victim(a, "decode", v2, sizeof(v2)), 0);
  assert_string_equal(v1, "decode-2");
  assert_string_equal(v2, "decode-1");
  assert_int_equal(actuator_set_replicas(a, "decode", 1), STRATA_EAGAIN); /* picked, not drained */
  assert_int_equal(actuator_confirm_drained(a, "decode", v1), 0);
  assert_int_equal(actuator_set_replicas(a, "decode", 1), STRATA_EAGAIN); /* one of two drained */
  for (int i = 0; i < 3; i++) assert_int_equal(kill(w[i].pid, 0), 0);
  assert_int_equal(actuator_confirm_drained(a, "decode", v2), 0);
  assert_int_equal(actuator_confirm_drained(a, "decode", "decode-0"), STRATA_ENOTFOUND); /* never picked */
  assert_int_equal(actuator_set_replicas(a, "decode", 1), 0);
  assert_true(gone(w[1].pid));
  assert_true(gone(w[2].pid));
  assert_int_equal(kill(w[0].pid, 0), 0);
  actuator_worker_t left[4];
  assert_int_equal(actuator_list(a, "decode", left, 4), 1);
  assert_int_equal(left[0].pid, w[0].pid);
  assert_int_equal(left[0].state, ACTUATOR_WORKER_RUNNING);

  /* A worker that dies on its own stops counting. */
  assert_int_equal(actuator_set_replicas(a, "decode", 2), 0);
  assert_int_equal(actuator_list(a, "decode", left, 4), 2);
  assert_string_equal(left[1].id, "decode-3"); /* ids are not reused */
  kill(left[1].pid, SIGKILL);
  for (int i = 0; i < 500 && n != 1; i++) {
    sleep_ms(10);
    assert_int_equal(actuator_get_replicas(a, "decode", &n), 0);
  }
  assert_int_equal(n, 1);
  assert_true(gone(left[1].pid));

  /* A pick called off: the victim serves again and cannot be removed. */
  assert_int_equal(actuator_pick_victim(a, "decode", v1, sizeof(v1)), 0);
  assert_int_equal(actuator_release_victim(a, "decode", v1), 0);
  assert_int_equal(actuator_set_replicas(a, "decode", 0), STRATA_EAGAIN);

  /* Another pool, then free: every child is stopped and reaped. */
  assert_int_equal(actuator_set_replicas(a, "prefill", 2), 0);
  actuator_worker_t pf[2];
  assert_int_equal(actuator_list(a, "prefill", pf, 2), 2);
  actuator_free(a);
  assert_true(gone(w[0].pid));
  assert_true(gone(pf[0].pid));
  assert_true(gone(pf[1].pid));
}

/* A worker that ignores SIGTERM is killed at the deadline and reaped. */
static void test_local_sigkill(void **state) {
  (void)state;
  char cmd[PATH_MAX * 2], ready[PATH_MAX + 16];
  snprintf(ready, sizeof(ready), "%s/stubborn.ready", tmpdir);
  snprintf(cmd, sizeof(cmd), "sh -c 'trap \"\" TERM; touch %s; exec sleep 30'", ready);
  actuator_t *a = local_new(cmd, 200);
  assert_int_equal(actuator_set_replicas(a, "unified", 1), 0);
  actuator_worker_t w;
  assert_int_equal(actuator_list(a, "unified", &w, 1), 1);
  assert_true(wait_file(ready, 5000));
  char id[96];
  assert_int_equal(actuator_pick_victim(a, "unified", id, sizeof(id)), 0);
  assert_int_equal(actuator_confirm_drained(a, "unified", id), 0);
  assert_int_equal(actuator_set_replicas(a, "unified", 0), 0);
  assert_true(gone(w.pid));
  actuator_free(a);
}

static void test_local_errors(void **state) {
  (void)state;
  actuator_config_t cfg = {.kind = ACTUATOR_LOCAL, .local_command = "strata-worker --x {nope}"};
  actuator_t *a = NULL;
  assert_int_equal(actuator_new(&cfg, &a), STRATA_EINVAL);
  cfg.local_command = "sh -c 'unterminated";
  assert_int_equal(actuator_new(&cfg, &a), STRATA_EINVAL);
  cfg.local_command = "   ";
  assert_int_equal(actuator_new(&cfg, &a), STRATA_EINVAL);
  a = local_new("/nonexistent/strata-worker-xyz --port {port}", 100);
  assert_int_equal(actuator_set_replicas(a, "decode", 1), STRATA_ENOTFOUND);
  int n = -1;
  assert_int_equal(actuator_get_replicas(a, "decode", &n), 0);
  assert_int_equal(n, 0);
  assert_int_equal(actuator_set_replicas(a, "Bad/Pool", 1), STRATA_EINVAL);
  assert_int_equal(actuator_set_replicas(a, "decode", -1), STRATA_EINVAL);
  char id[16];
  assert_int_equal(actuator_pick_victim(a, "decode", id, sizeof(id)), STRATA_ENOTFOUND);
  actuator_free(a);
}

/* ---- none --------------------------------------------------------------------------------------- */

static void test_none(void **state) {
  (void)state;
  actuator_config_t cfg = {.kind = ACTUATOR_NONE};
  actuator_t *a = NULL;
  assert_int_equal(actuator_new(&cfg, &a), 0);
  int n = -1;
  assert_int_equal(actuator_get_replicas(a, "decode", &n), STRATA_ENOTFOUND);
  assert_int_equal(actuator_set_replicas(a, "decode", 5), 0);
  assert_int_equal(actuator_set_replicas(a, "prefill", 2), 0);
  assert_int_equal(actuator_set_replicas(a, "decode", 3), 0); /* down needs no drain: HPA's pods drain on SIGTERM */
  assert_int_equal(actuator_get_replicas(a, "decode", &n), 0);
  assert_int_equal(n, 3);
  assert_int_equal(actuator_get_replicas(a, "prefill", &n), 0);
  assert_int_equal(n, 2);
  char id[32];
  assert_int_equal(actuator_pick_victim(a, "decode", id, sizeof(id)), STRATA_EUNSUPPORTED);
  assert_int_equal(actuator_kind_parse("kubernetes"), ACTUATOR_KUBERNETES);
  assert_int_equal(actuator_kind_parse("kube"), -1);
  actuator_free(a);
}

/* ---- kubernetes --------------------------------------------------------------------------------- */

typedef struct {
  pid_t pid;
  int port;
  char log[PATH_MAX + 16];
} stub_t;

static bool have_program(const char *name) {
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", name);
  return system(cmd) == 0;
}

static void stub_source(const char *file, char *out, size_t len) {
  const char *src = getenv("STRATA_SOURCE_DIR");
  if (src && *src) {
    snprintf(out, len, "%s/tests/integration/k8s_stub/%s", src, file);
  } else { /* run by hand: this file is tests/unit/test_actuator.c */
    snprintf(out, len, "%s", __FILE__);
    char *slash = strrchr(out, '/');
    if (slash) snprintf(slash, len - (size_t)(slash - out), "/../integration/k8s_stub/%s", file);
  }
}

static void stub_start(stub_t *s, const char *token) {
  char script[PATH_MAX], certs[2 * PATH_MAX + 16], cert[PATH_MAX + 16], key[PATH_MAX + 16], portf[PATH_MAX + 16];
  stub_source("make_certs.sh", script, sizeof(script));
  snprintf(certs, sizeof(certs), "sh '%s' '%s'", script, tmpdir);
  assert_int_equal(system(certs), 0);
  stub_source("k8s_stub.py", script, sizeof(script));
  snprintf(cert, sizeof(cert), "%s/server.crt", tmpdir);
  snprintf(key, sizeof(key), "%s/server.key", tmpdir);
  snprintf(portf, sizeof(portf), "%s/stub.port", tmpdir);
  snprintf(s->log, sizeof(s->log), "%s/stub.log", tmpdir);
  char *argv[] = {"python3", script, "--cert", cert, "--key", key, "--token", (char *)token, "--namespace", "ml",
                  "--name", "strata-decode", "--replicas", "1", "--port-file", portf, "--log", s->log,
                  "--readonly-token", "viewer-token", "--conflict-at", "7", NULL};
  assert_int_equal(posix_spawnp(&s->pid, "python3", NULL, NULL, argv, environ), 0);
  assert_true(wait_file(portf, 10000));
  FILE *f = fopen(portf, "r");
  assert_non_null(f);
  assert_int_equal(fscanf(f, "%d", &s->port), 1);
  fclose(f);
}

static void stub_stop(stub_t *s) {
  if (s->pid <= 0) return;
  kill(s->pid, SIGTERM);
  waitpid(s->pid, NULL, 0);
  s->pid = 0;
}

static actuator_t *k8s_new(const stub_t *s, const char *ca, const char *sts, int timeout_ms) {
  char api[64], token[PATH_MAX + 16], nsf[PATH_MAX + 16], caf[PATH_MAX + 16];
  snprintf(api, sizeof(api), "https://127.0.0.1:%d/", s->port);
  snprintf(token, sizeof(token), "%s/token", tmpdir);
  snprintf(nsf, sizeof(nsf), "%s/namespace", tmpdir);
  snprintf(caf, sizeof(caf), "%s/%s", tmpdir, ca);
  actuator_config_t cfg = {.kind = ACTUATOR_KUBERNETES, .k8s_api_server = api, .k8s_token_file = token,
                           .k8s_ca_file = caf, .k8s_namespace_file = nsf, .k8s_statefulset = sts,
                           .k8s_timeout_ms = timeout_ms};
  actuator_t *a = NULL;
  assert_int_equal(actuator_new(&cfg, &a), 0);
  return a;
}

typedef struct {
  const char *method, *path_tail, *body; /* body NULL: GET */
  bool auth_ok;
} seen_t;

/* check_log: the stub saw exactly WANT, in order. */
static void check_log(const char *log, const seen_t *want, int n) {
  FILE *f = fopen(log, "r");
  assert_non_null(f);
  char line[4096];
  int i = 0;
  for (; fgets(line, sizeof(line), f); i++) {
    assert_true(i < n);
    cJSON *j = cJSON_Parse(line);
    assert_non_null(j);
    const char *method = cJSON_GetObjectItem(j, "method")->valuestring;
    const char *path = cJSON_GetObjectItem(j, "path")->valuestring;
    if (strcmp(method, want[i].method) != 0) print_error("request %d: %s %s\n", i, method, path);
    assert_string_equal(method, want[i].method);
    char full[256];
    snprintf(full, sizeof(full), "/apis/apps/v1/namespaces/ml/statefulsets/%s/scale", want[i].path_tail);
    assert_string_equal(path, full);
    assert_int_equal(cJSON_IsTrue(cJSON_GetObjectItem(j, "auth_ok")), want[i].auth_ok);
    if (want[i].body) {
      assert_string_equal(cJSON_GetObjectItem(j, "content_type")->valuestring, "application/merge-patch+json");
      assert_string_equal(cJSON_GetObjectItem(j, "body")->valuestring, want[i].body);
    } else {
      assert_string_equal(cJSON_GetObjectItem(j, "body")->valuestring, "");
    }
    cJSON_Delete(j);
  }
  fclose(f);
  assert_int_equal(i, n);
}

static void test_kubernetes(void **state) {
  (void)state;
  if (!have_program("python3") || !have_program("openssl")) skip();
  stub_t s = {0};
  stub_start(&s, "s3cret-token");
  char path[PATH_MAX + 16];
  snprintf(path, sizeof(path), "%s/token", tmpdir);
  write_file(path, "s3cret-token\n");
  snprintf(path, sizeof(path), "%s/namespace", tmpdir);
  write_file(path, "ml\n");
  actuator_t *a = k8s_new(&s, "ca.crt", "strata-{pool}", 3000);

  int n = -1;
  assert_int_equal(actuator_get_replicas(a, "decode", &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(actuator_set_replicas(a, "decode", 3), 0);
  assert_int_equal(actuator_get_replicas(a, "decode", &n), 0);
  assert_int_equal(n, 3);
  char v[96];
  assert_int_equal(actuator_pick_victim(a, "decode", v, sizeof(v)), 0);
  assert_string_equal(v, "strata-decode-2"); /* a StatefulSet removes its highest ordinal */
  assert_int_equal(actuator_set_replicas(a, "decode", 2), STRATA_EAGAIN); /* not drained: no PATCH */
  assert_int_equal(actuator_confirm_drained(a, "decode", v), 0);
  assert_int_equal(actuator_set_replicas(a, "decode", 2), 0);
  assert_int_equal(actuator_set_replicas(a, "decode", 0), STRATA_EAGAIN);
  actuator_t *wrong_name = k8s_new(&s, "ca.crt", "other-{pool}", 3000);
  assert_int_equal(actuator_get_replicas(wrong_name, "decode", &n), STRATA_ENOTFOUND);
  actuator_free(wrong_name);

  /* A rotated-away token: 401 surfaces as EAUTH; the file is read again on the next request. */
  snprintf(path, sizeof(path), "%s/token", tmpdir);
  write_file(path, "stale-token\n");
  assert_int_equal(actuator_get_replicas(a, "decode", &n), STRATA_EAUTH);
  write_file(path, "s3cret-token");
  assert_int_equal(actuator_get_replicas(a, "decode", &n), 0);
  assert_int_equal(n, 2);
  /* 409 (someone else changed the object) asks for a retry; 403 (RBAC allows only get) is EAUTH. */
  assert_int_equal(actuator_set_replicas(a, "decode", 7), STRATA_EAGAIN);
  write_file(path, "viewer-token");
  assert_int_equal(actuator_set_replicas(a, "decode", 4), STRATA_EAUTH);
  write_file(path, "s3cret-token");
  assert_int_equal(actuator_get_replicas(a, "decode", &n), 0);
  assert_int_equal(n, 2);

  const seen_t want[] = {
      {"GET", "strata-decode", NULL, true},
      {"GET", "strata-decode", NULL, true},  {"PATCH", "strata-decode", "{\"spec\":{\"replicas\":3}}", true},
      {"GET", "strata-decode", NULL, true},
      {"GET", "strata-decode", NULL, true},  /* pick */
      {"GET", "strata-decode", NULL, true},  /* refused scale-down reads, never patches */
      {"GET", "strata-decode", NULL, true},  {"PATCH", "strata-decode", "{\"spec\":{\"replicas\":2}}", true},
      {"GET", "strata-decode", NULL, true},  /* to 0: ordinals 0 and 1 not drained */
      {"GET", "other-decode", NULL, true},
      {"GET", "strata-decode", NULL, false},
      {"GET", "strata-decode", NULL, true},
      {"GET", "strata-decode", NULL, true},  {"PATCH", "strata-decode", "{\"spec\":{\"replicas\":7}}", true},
      {"GET", "strata-decode", NULL, true},  {"PATCH", "strata-decode", "{\"spec\":{\"replicas\":4}}", true},
      {"GET", "strata-decode", NULL, true},
  };
  check_log(s.log, want, sizeof(want) / sizeof(want[0]));

  /* A CA that did not sign the server's certificate: refused before any request. */
  actuator_t *wrong_ca = k8s_new(&s, "other-ca.crt", "strata-{pool}", 3000);
  assert_int_equal(actuator_get_replicas(wrong_ca, "decode", &n), STRATA_EAUTH);
  actuator_free(wrong_ca);
  check_log(s.log, want, sizeof(want) / sizeof(want[0]));

  /* The API server is down: a clean error, not a hang or a crash. */
  stub_stop(&s);
  assert_int_equal(actuator_get_replicas(a, "decode", &n), STRATA_EUNAVAILABLE);
  assert_int_equal(actuator_set_replicas(a, "decode", 4), STRATA_EUNAVAILABLE);
  actuator_free(a);

  /* An API server that accepts the connection and never answers: a timeout, within the deadline. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof(sa);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  assert_int_equal(listen(fd, 4), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
  stub_t silent = {.port = ntohs(sa.sin_port)};
  actuator_t *slow = k8s_new(&silent, "ca.crt", "strata-{pool}", 300);
  assert_int_equal(actuator_get_replicas(slow, "decode", &n), STRATA_ETIMEDOUT);
  actuator_free(slow);
  close(fd);
}

static void test_kubernetes_config(void **state) {
  (void)state;
  actuator_config_t cfg = {.kind = ACTUATOR_KUBERNETES, .k8s_api_server = "https://127.0.0.1:1",
                           .k8s_namespace_file = "/nonexistent/namespace"};
  actuator_t *a = NULL;
  assert_int_equal(actuator_new(&cfg, &a), STRATA_EIO);
  cfg.k8s_namespace = "Not_Valid";
  assert_int_equal(actuator_new(&cfg, &a), STRATA_EINVAL);
  cfg.k8s_namespace = "ml";
  cfg.k8s_token_file = "/nonexistent/token";
  assert_int_equal(actuator_new(&cfg, &a), 0);
  int n;
  assert_int_equal(actuator_get_replicas(a, "decode", &n), STRATA_EAUTH); /* no token, nothing sent */
  actuator_free(a);
  unsetenv("KUBERNETES_SERVICE_HOST");
  cfg.k8s_api_server = NULL;
  assert_int_equal(actuator_new(&cfg, &a), STRATA_EINVAL);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_local_scale),  cmocka_unit_test(test_local_sigkill),
      cmocka_unit_test(test_local_errors), cmocka_unit_test(test_none),
      cmocka_unit_test(test_kubernetes),   cmocka_unit_test(test_kubernetes_config),
  };
  return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
