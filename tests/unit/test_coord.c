/* test_coord.c: strata-coordinator in-process (coordinator/core): its option defaults, and its HTTP
 * front with no worker registered (etcd unreachable): health, models, 400 for bad input, and a 503
 * that says why no worker can take the request. Workers, etcd, migration and the autoscaler are
 * covered by tests/integration/cluster_*.sh with real processes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/core/coord.h"

static void test_option_defaults(void **state) {
  (void)state;
  coord_conf_t conf = {0};
  char err[256] = "";
  char *argv[] = {"--model", "dummy:tiny", "--etcd", "127.0.0.1:2379"};
  assert_int_equal(cfg_load(coord_options(), &conf, 4, argv, NULL, NULL, err, sizeof err), 0);
  /* the documented defaults (docs/cluster.md, the brief's command line) */
  assert_int_equal(conf.port, 8000);
  assert_int_equal(conf.grpc_port, 50052);
  assert_int_equal(conf.inference_grpc_port, 50051);
  assert_int_equal(conf.api_keys.n, 0);
  assert_null(conf.tls_cert);
  assert_int_equal(conf.migration_limit, 3);
  assert_string_equal(conf.cluster, "default");
  assert_string_equal(conf.actuator, "none");
  assert_int_equal(conf.pools.n, 1);
  assert_string_equal(conf.pools.items[0], "unified");
  assert_true(conf.overlap_weight == 1.0);
  cfg_free(coord_options(), &conf);
  char *bad[] = {"--migration-limit", "-1"};
  assert_int_equal(cfg_load(coord_options(), &conf, 2, bad, NULL, NULL, err, sizeof err), STRATA_EINVAL);
  assert_non_null(strstr(err, "migration-limit"));
  cfg_free(coord_options(), &conf);
}

/* --api-key: a comma list in STRATA_API_KEY (as the Helm chart passes it), replaced by the command
 * line, where it repeats; --inference-grpc-port takes -1 (off) but nothing below. */
static void test_auth_options(void **state) {
  (void)state;
  coord_conf_t conf = {0};
  char err[256] = "";
  setenv("STRATA_API_KEY", "k1,k2", 1);
  char *argv[] = {"--model", "dummy:tiny", "--etcd", "127.0.0.1:2379", "--inference-grpc-port", "-1"};
  assert_int_equal(cfg_load(coord_options(), &conf, 6, argv, NULL, NULL, err, sizeof err), 0);
  assert_int_equal(conf.api_keys.n, 2);
  assert_string_equal(conf.api_keys.items[1], "k2");
  assert_int_equal(conf.inference_grpc_port, -1);
  cfg_free(coord_options(), &conf);
  char *cli[] = {"--api-key", "k3", "--api-key", "k4", "--inference-grpc-port", "-2"};
  assert_int_equal(cfg_load(coord_options(), &conf, 4, cli, NULL, NULL, err, sizeof err), 0);
  assert_int_equal(conf.api_keys.n, 2);
  assert_string_equal(conf.api_keys.items[0], "k3");
  cfg_free(coord_options(), &conf);
  assert_int_equal(cfg_load(coord_options(), &conf, 6, cli, NULL, NULL, err, sizeof err), STRATA_EINVAL);
  assert_non_null(strstr(err, "inference-grpc-port"));
  cfg_free(coord_options(), &conf);
  unsetenv("STRATA_API_KEY");
  /* a certificate without its key is refused before anything starts */
  coord_conf_t half = {.model = "dummy:tiny", .etcd = "127.0.0.1:1", .tls_cert = "/nonexistent/cert.pem"};
  assert_int_equal(coord_run(&half), STRATA_EINVAL);
}

static void test_run_requires_etcd(void **state) {
  (void)state;
  coord_conf_t conf = {.model = "dummy:tiny"};
  assert_int_equal(coord_run(&conf), STRATA_EINVAL);
}

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  bind(fd, (struct sockaddr *)&a, sizeof a);
  getsockname(fd, (struct sockaddr *)&a, &len);
  close(fd);
  return ntohs(a.sin_port);
}

/* http: one HTTP/1.0 exchange; returns the status (0 when the server is not there) and the body. */
static int http(int port, const char *method, const char *path, const char *body, char *out, size_t cap) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return 0;
  }
  char req[2048];
  int n = snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                   method, path, body ? strlen(body) : 0, body ? body : "");
  if (write(fd, req, (size_t)n) != n) {
    close(fd);
    return 0;
  }
  size_t got = 0;
  ssize_t r;
  while (got + 1 < cap && (r = read(fd, out + got, cap - 1 - got)) > 0) got += (size_t)r;
  out[got] = 0;
  close(fd);
  int status = 0;
  sscanf(out, "HTTP/1.%*d %d", &status);
  return status;
}

typedef struct {
  coord_conf_t conf;
  int rc;
} run_arg_t;

static void *run_thread(void *p) {
  run_arg_t *a = p;
  a->rc = coord_run(&a->conf);
  return NULL;
}

static void test_http_without_workers(void **state) {
  (void)state;
  const char *models = getenv("STRATA_MODELS_DIR");
  char model[1024];
  snprintf(model, sizeof model, "%s/stories260K/stories260K.gguf", models ? models : "../shared/models");
  if (access(model, R_OK) != 0) skip();
  coord_conf_t defaults = {0};
  char err[256];
  char *argv[] = {"--model", model, "--etcd", "127.0.0.1:1", "--grpc-port", "0", "--port", "0",
                  "--inference-grpc-port", "0"};
  assert_int_equal(cfg_load(coord_options(), &defaults, 10, argv, NULL, NULL, err, sizeof err), 0);
  int port = free_port();
  defaults.port = port;
  run_arg_t a = {.conf = defaults};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, run_thread, &a), 0);
  static char buf[65536];
  int status = 0;
  for (int i = 0; i < 200 && status != 200; i++) {
    usleep(20000);
    status = http(port, "GET", "/health", NULL, buf, sizeof buf);
  }
  assert_int_equal(status, 200);
  assert_int_equal(http(port, "GET", "/v1/models", NULL, buf, sizeof buf), 200);
  assert_non_null(strstr(buf, "\"stories260K.gguf\""));
  assert_int_equal(http(port, "POST", "/v1/completions", "{\"model\":\"stories260K.gguf\",\"prompt\":", buf, sizeof buf), 400);
  assert_int_equal(http(port, "GET", "/v2/nothing", NULL, buf, sizeof buf), 404);
  assert_int_equal(http(port, "POST", "/v1/completions",
                        "{\"model\":\"stories260K.gguf\",\"prompt\":\"Once upon a time\",\"max_tokens\":4}", buf, sizeof buf),
                   503);
  assert_non_null(strstr(buf, "No worker can take this request"));
  assert_non_null(strstr(buf, "stories260K.gguf")); /* the router's reason names the model */
  assert_int_equal(http(port, "POST", "/v1/chat/completions",
                        "{\"model\":\"stories260K.gguf\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true}",
                        buf, sizeof buf),
                   503);
  kill(getpid(), SIGTERM); /* the coordinator's loop handles it (it listens, so its handler is set) */
  assert_int_equal(pthread_join(t, NULL), 0);
  assert_int_equal(a.rc, 0);
  cfg_free(coord_options(), &a.conf);
}

int main(void) {
  log_set_level(LOG_LEVEL_ERROR);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_option_defaults),
      cmocka_unit_test(test_auth_options),
      cmocka_unit_test(test_run_requires_etcd),
      cmocka_unit_test(test_http_without_workers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
