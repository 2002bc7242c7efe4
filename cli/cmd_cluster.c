/* cmd_cluster.c: `strata cluster up|down`: a whole cluster on this host for development and tests:
 * etcd, one coordinator and N workers on free loopback ports, their PIDs and ports under a directory,
 * stopped again by PID. */
#ifdef STRATA_HAVE_SERVE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/log.h"
#include "common/status.h"
#include "strata/v1/admin.pb-c.h"

#define CLUSTER_MAX_WORKERS 64
#define CLUSTER_START_TIMEOUT_S 60
#define CLUSTER_STOP_TIMEOUT_MS 10000

typedef struct {
  const char *dir, *model, *etcd_bin, *worker_args;
  int n_workers;
  int autoscale; /* coordinator runs the local actuator with a worker command template */
} cluster_opts_t;

static void usage(FILE *f) {
  fprintf(f,
          "usage: strata cluster up   [--workers N] [--model M] [--dir D] [--etcd-bin PATH] [--worker-args \"...\"]\n"
          "                           [--autoscale]\n"
          "       strata cluster down [--dir D]\n"
          "\n"
          "up starts etcd (%s, --logger=zap), one strata-coordinator and N strata-worker processes\n"
          "(default 2) on free loopback ports, writes their PIDs, ports and logs under D (default\n"
          "$STRATA_CLUSTER_DIR or .strata/cluster), waits until every worker is registered and /health\n"
          "answers, and prints where everything listens. --autoscale lets the coordinator's local\n"
          "actuator start more workers (see `strata policy`). down stops them by PID (SIGTERM, then SIGKILL\n"
          "after 10 s). The binaries are looked up next to this one in the build tree, then in PATH.\n",
          "/usr/bin/etcd");
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  int port = -1;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

/* http_ok: 1 when GET PATH on 127.0.0.1:PORT answers 200 (a tiny client for /health). */
static int http_ok(int port, const char *path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int ok = 0;
  char buf[64] = "";
  if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(fd, req, (size_t)n) == n && read(fd, buf, sizeof buf - 1) > 12) ok = strncmp(buf + 9, "200", 3) == 0;
  }
  close(fd);
  return ok;
}

/* find_bin: NAME next to this executable in the build tree (REL from cli/), else NAME (PATH). */
static void find_bin(const char *rel, const char *name, char *out, size_t len) {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = 0;
    char cand[PATH_MAX + 64];
    snprintf(cand, sizeof cand, "%s/%s", dirname(self), rel);
    size_t n_cand = strlen(cand);
    if (n_cand < len && access(cand, X_OK) == 0) {
      memcpy(out, cand, n_cand + 1);
      return;
    }
  }
  snprintf(out, len, "%s", name);
}

/* spawn: starts ARGV in its own session with stdout and stderr to LOG. Returns the PID or -1. */
static pid_t spawn(char *const argv[], const char *log) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    setsid();
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    int nul = open("/dev/null", O_RDONLY);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    if (nul >= 0) dup2(nul, 0);
    execvp(argv[0], argv);
    fprintf(stderr, "strata cluster: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  return pid;
}

static int write_file(const char *dir, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int write_file(const char *dir, const char *name, const char *fmt, ...) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "strata cluster: cannot write %s: %s\n", path, strerror(errno));
    return STRATA_EIO;
  }
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fclose(f);
  return 0;
}

static int mkdirs(const char *dir) {
  char tmp[PATH_MAX];
  snprintf(tmp, sizeof tmp, "%s", dir);
  for (char *p = tmp + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      mkdir(tmp, 0755);
      *p = '/';
    }
  if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return STRATA_EIO;
  return 0;
}

static int child_alive(pid_t pid) {
  int st;
  if (waitpid(pid, &st, WNOHANG) == pid) return 0; /* our child exited */
  return kill(pid, 0) == 0;
}

/* n_ready_workers: workers the coordinator lists as ready, or -1 when it does not answer. */
static int n_ready_workers(const char *addr) {
  Strata__V1__ListWorkersRequest req = STRATA__V1__LIST_WORKERS_REQUEST__INIT;
  ProtobufCMessage *msg = NULL;
  int saved = dup(2), nul = open("/dev/null", O_WRONLY); /* the first tries fail while it starts */
  if (nul >= 0) dup2(nul, 2);
  int rc = cli_admin_call(addr, "/strata.v1.Admin/ListWorkers", &req.base, &strata__v1__list_workers_response__descriptor,
                          &msg);
  if (saved >= 0) {
    dup2(saved, 2);
    close(saved);
  }
  if (nul >= 0) close(nul);
  if (rc) return -1;
  const Strata__V1__ListWorkersResponse *r = (const Strata__V1__ListWorkersResponse *)msg;
  int n = 0;
  for (size_t i = 0; i < r->n_workers; i++) n += strcmp(r->workers[i]->state, "ready") == 0;
  protobuf_c_message_free_unpacked(msg, NULL);
  return n;
}

static void split_args(char *s, char **out, int *n, int max) {
  for (char *t = strtok(s, " "); t && *n < max; t = strtok(NULL, " ")) out[(*n)++] = t;
}

static void stop_all(const char *dir);

static int start_etcd(const cluster_opts_t *o, const char *dir, int *cport, pid_t *pid) {
  *cport = free_port();
  int pport = free_port();
  char name[] = "strata", data[PATH_MAX], curl[64], purl[64], initial[96], log[PATH_MAX], out[PATH_MAX];
  snprintf(data, sizeof data, "%s/etcd-data", dir);
  snprintf(curl, sizeof curl, "http://127.0.0.1:%d", *cport);
  snprintf(purl, sizeof purl, "http://127.0.0.1:%d", pport);
  snprintf(initial, sizeof initial, "strata=%s", purl);
  snprintf(log, sizeof log, "%s/etcd.log", dir);
  snprintf(out, sizeof out, "%s/etcd.out", dir);
  char *argv[] = {(char *)o->etcd_bin, "--name", name, "--data-dir", data, "--listen-client-urls", curl,
                  "--advertise-client-urls", curl, "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
                  "--initial-cluster", initial, "--logger=zap", "--log-outputs", log, NULL};
  if ((*pid = spawn(argv, out)) < 0) return STRATA_EIO;
  write_file(dir, "etcd.pid", "%d\n", (int)*pid);
  write_file(dir, "etcd.addr", "127.0.0.1:%d\n", *cport);
  for (double t0 = now_s(); now_s() - t0 < 20; usleep(100000)) {
    if (http_ok(*cport, "/health")) return 0;
    if (!child_alive(*pid)) break;
  }
  fprintf(stderr, "strata cluster: etcd did not come up; see %s\n", log);
  return STRATA_EUNAVAILABLE;
}

static int start_coordinator(const cluster_opts_t *o, const char *dir, int etcd_port, int *http_port, int *grpc_port,
                             int *inference_port, const char *worker_bin) {
  char bin[PATH_MAX], model[PATH_MAX + 8], etcd[32], hp[16], gp[16], ip[16], log[PATH_MAX], cmd[2 * PATH_MAX + 256];
  find_bin("../coordinator/strata-coordinator", "strata-coordinator", bin, sizeof bin);
  *http_port = free_port();
  *grpc_port = free_port();
  *inference_port = free_port();
  snprintf(model, sizeof model, "%s", o->model);
  snprintf(etcd, sizeof etcd, "127.0.0.1:%d", etcd_port);
  snprintf(hp, sizeof hp, "%d", *http_port);
  snprintf(gp, sizeof gp, "%d", *grpc_port);
  snprintf(ip, sizeof ip, "%d", *inference_port);
  snprintf(log, sizeof log, "%s/coordinator.log", dir);
  snprintf(cmd, sizeof cmd, "%s --model %s --etcd %s --pool {pool} --grpc-port {port} --id {id} %s", worker_bin, o->model,
           etcd, o->worker_args ? o->worker_args : "");
  char *argv[] = {bin, "--model", model, "--etcd", etcd, "--port", hp, "--grpc-port", gp, "--inference-grpc-port", ip,
                  "--actuator", o->autoscale ? "local" : "none", "--worker-command", cmd, NULL};
  if (!o->autoscale) argv[11] = NULL;
  pid_t pid = spawn(argv, log);
  if (pid < 0) return STRATA_EIO;
  write_file(dir, "coordinator.pid", "%d\n", (int)pid);
  write_file(dir, "coordinator.http", "127.0.0.1:%d\n", *http_port);
  write_file(dir, "coordinator.grpc", "127.0.0.1:%d\n", *grpc_port);
  write_file(dir, "coordinator.inference", "127.0.0.1:%d\n", *inference_port);
  return 0;
}

static int start_workers(const cluster_opts_t *o, const char *dir, int etcd_port, const char *worker_bin) {
  for (int i = 0; i < o->n_workers; i++) {
    char etcd[32], id[32], log[PATH_MAX], name[64], extra[1024] = "";
    snprintf(etcd, sizeof etcd, "127.0.0.1:%d", etcd_port);
    snprintf(id, sizeof id, "worker-%d", i);
    snprintf(log, sizeof log, "%s/%s.log", dir, id);
    char *argv[32] = {(char *)worker_bin, "--model", (char *)o->model, "--etcd", etcd, "--id", id, "--grpc-port", "0"};
    int n = 9;
    if (o->worker_args) {
      snprintf(extra, sizeof extra, "%s", o->worker_args);
      split_args(extra, argv, &n, 31);
    }
    argv[n] = NULL;
    pid_t pid = spawn(argv, log);
    if (pid < 0) return STRATA_EIO;
    snprintf(name, sizeof name, "%s.pid", id);
    write_file(dir, name, "%d\n", (int)pid);
  }
  return 0;
}

static int cluster_up(const cluster_opts_t *o) {
  const char *dir = o->dir;
  char path[PATH_MAX], worker_bin[PATH_MAX];
  snprintf(path, sizeof path, "%s/coordinator.pid", dir);
  if (access(path, F_OK) == 0) {
    fprintf(stderr, "strata cluster: %s exists: a cluster is up there already (`strata cluster down --dir %s`)\n",
            path, dir);
    return 1;
  }
  if (mkdirs(dir) != 0) {
    fprintf(stderr, "strata cluster: cannot create %s: %s\n", dir, strerror(errno));
    return 1;
  }
  find_bin("../worker/node/strata-worker", "strata-worker", worker_bin, sizeof worker_bin);
  int etcd_port, http_port, grpc_port, inference_port;
  pid_t etcd_pid;
  if (start_etcd(o, dir, &etcd_port, &etcd_pid) != 0) goto fail;
  if (start_coordinator(o, dir, etcd_port, &http_port, &grpc_port, &inference_port, worker_bin) != 0) goto fail;
  if (start_workers(o, dir, etcd_port, worker_bin) != 0) goto fail;
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", grpc_port);
  int ready = -1;
  for (double t0 = now_s(); now_s() - t0 < CLUSTER_START_TIMEOUT_S; usleep(200000)) {
    if (http_ok(http_port, "/health") && (ready = n_ready_workers(addr)) >= o->n_workers) break;
  }
  if (ready < o->n_workers) {
    fprintf(stderr, "strata cluster: %d of %d workers ready after %d s; see the logs in %s\n", ready < 0 ? 0 : ready,
            o->n_workers, CLUSTER_START_TIMEOUT_S, dir);
    goto fail;
  }
  printf("etcd         127.0.0.1:%d\n", etcd_port);
  printf("coordinator  http://127.0.0.1:%d (OpenAI API)  grpc 127.0.0.1:%d (Inference)  grpc 127.0.0.1:%d (Admin)\n",
         http_port, inference_port, grpc_port);
  printf("workers      %d ready (`strata workers`)\n", ready);
  printf("state, logs  %s (`strata cluster down --dir %s` stops everything)\n", dir, dir);
  return 0;
fail:
  stop_all(dir);
  return 1;
}

/* stop_pid: SIGTERM PID, SIGKILL after the deadline; waits for it to be gone. */
static void stop_pid(pid_t pid, const char *what) {
  if (pid <= 0 || kill(pid, SIGTERM) != 0) return;
  for (double t0 = now_s(); now_s() - t0 < CLUSTER_STOP_TIMEOUT_MS / 1000.0; usleep(50000))
    if (!child_alive(pid)) return;
  fprintf(stderr, "strata cluster: %s (pid %d) did not stop in %d s; killing it\n", what, (int)pid,
          CLUSTER_STOP_TIMEOUT_MS / 1000);
  kill(pid, SIGKILL);
  for (int i = 0; i < 100 && child_alive(pid); i++) usleep(20000);
}

static void stop_file(const char *dir, const char *name) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "r");
  if (!f) return;
  int pid = 0;
  if (fscanf(f, "%d", &pid) != 1) pid = 0;
  fclose(f);
  stop_pid((pid_t)pid, name);
  unlink(path);
}

static void stop_all(const char *dir) {
  /* the coordinator first: its local actuator stops the workers it started */
  stop_file(dir, "coordinator.pid");
  for (int i = 0; i < CLUSTER_MAX_WORKERS; i++) {
    char name[64];
    snprintf(name, sizeof name, "worker-%d.pid", i);
    stop_file(dir, name);
  }
  stop_file(dir, "etcd.pid");
}

int cmd_cluster(int argc, char **argv) {
  if (!getenv("STRATA_LOG_LEVEL")) log_set_level(LOG_LEVEL_WARN);
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  cluster_opts_t o = {.dir = cli_cluster_dir(NULL), .model = cli_default_model(), .etcd_bin = "/usr/bin/etcd",
                      .n_workers = 2};
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) o.dir = argv[++i];
    else if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) o.model = argv[++i];
    else if (strcmp(argv[i], "--etcd-bin") == 0 && i + 1 < argc) o.etcd_bin = argv[++i];
    else if (strcmp(argv[i], "--worker-args") == 0 && i + 1 < argc) o.worker_args = argv[++i];
    else if (strcmp(argv[i], "--autoscale") == 0) o.autoscale = 1;
    else if (strcmp(argv[i], "--workers") == 0 && i + 1 < argc) o.n_workers = atoi(argv[++i]);
    else {
      fprintf(stderr, "strata cluster: unknown argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  if (o.n_workers < 0 || o.n_workers > CLUSTER_MAX_WORKERS) {
    fprintf(stderr, "strata cluster: --workers must be 0..%d\n", CLUSTER_MAX_WORKERS);
    return 2;
  }
  char model[PATH_MAX];
  if (strncmp(o.model, "dummy:", 6) != 0 && realpath(o.model, model)) o.model = model; /* children may run elsewhere */
  if (strcmp(argv[1], "up") == 0) return cluster_up(&o);
  if (strcmp(argv[1], "down") == 0) {
    stop_all(o.dir);
    return 0;
  }
  fprintf(stderr, "strata cluster: unknown subcommand '%s' (up, down)\n", argv[1]);
  return 2;
}
#endif
