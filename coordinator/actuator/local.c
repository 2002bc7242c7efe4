/* local.c: the `local` actuator: starts worker processes on this host from a command-line template,
 * tracks them by PID, and stops only the ones it started (SIGTERM, SIGKILL after a deadline, reaped). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/actuator/actuator_int.h"

extern char **environ;

#define ARG_MAX_BYTES 1024
#define MAX_ARGS 64

typedef struct {
  char pool[48];
  char id[96];
  pid_t pid;
  int port;
  int index;
  actuator_worker_state_t state;
  bool stop, reaped; /* being stopped by stop_marked() */
} child_t;

typedef struct {
  char pool[48];
  int next_index;
} pool_counter_t;

typedef struct {
  char *args[MAX_ARGS]; /* the template, split (n_args) */
  int n_args;
  int stop_timeout_ms;
  child_t *kids; /* (n_kids) live children we started, oldest first */
  int n_kids, cap_kids;
  pool_counter_t *counters; /* (n_counters) */
  int n_counters;
} local_t;

/* split_template: CMD into S->args on spaces; quotes group and are removed. */
static int split_template(local_t *s, const char *cmd) {
  const char *c = cmd;
  while (*c) {
    while (*c == ' ' || *c == '\t') c++;
    if (!*c) break;
    if (s->n_args == MAX_ARGS - 1) {
      log_error("actuator local: the worker command has more than %d arguments", MAX_ARGS - 1);
      return STRATA_EINVAL;
    }
    char buf[ARG_MAX_BYTES];
    size_t n = 0;
    char quote = 0;
    for (; *c && (quote || (*c != ' ' && *c != '\t')); c++) {
      if (!quote && (*c == '\'' || *c == '"')) {
        quote = *c;
      } else if (quote && *c == quote) {
        quote = 0;
      } else {
        if (n + 1 >= sizeof(buf)) {
          log_error("actuator local: a worker command argument is longer than %d bytes", ARG_MAX_BYTES - 1);
          return STRATA_EINVAL;
        }
        buf[n++] = *c;
      }
    }
    if (quote) {
      log_error("actuator local: unterminated %c quote in the worker command \"%s\"", quote, cmd);
      return STRATA_EINVAL;
    }
    buf[n] = '\0';
    s->args[s->n_args] = strdup(buf);
    if (!s->args[s->n_args]) return STRATA_ENOMEM;
    s->n_args++;
  }
  if (s->n_args == 0) {
    log_error("actuator local: the worker command is empty");
    return STRATA_EINVAL;
  }
  return 0;
}

typedef struct {
  const char *pool, *id;
  int port, index;
} subst_t;

/* expand: TOK with {pool} {port} {id} {index} replaced, into OUT. Returns 0, or STRATA_EINVAL for an
 * unknown placeholder or an overlong result (OUT then holds a partial string). */
static int expand(const char *tok, const subst_t *v, char *out, size_t len) {
  size_t n = 0;
  out[0] = '\0';
  for (const char *c = tok; *c;) {
    char piece[64];
    const char *add = piece;
    size_t step = 1;
    if (*c == '{') {
      const char *close = strchr(c, '}');
      size_t name_len = close ? (size_t)(close - c + 1) : 0;
      if (name_len == 6 && !strncmp(c, "{pool}", 6)) add = v->pool;
      else if (name_len == 6 && !strncmp(c, "{port}", 6)) snprintf(piece, sizeof(piece), "%d", v->port);
      else if (name_len == 4 && !strncmp(c, "{id}", 4)) add = v->id;
      else if (name_len == 7 && !strncmp(c, "{index}", 7)) snprintf(piece, sizeof(piece), "%d", v->index);
      else return STRATA_EINVAL;
      step = name_len;
    } else {
      piece[0] = *c;
      piece[1] = '\0';
    }
    size_t add_len = strlen(add);
    if (n + add_len + 1 > len) return STRATA_EINVAL;
    memcpy(out + n, add, add_len + 1);
    n += add_len;
    c += step;
  }
  return 0;
}

static void local_destroy(void *impl);

int actuator_local_create(const actuator_config_t *cfg, void **impl) {
  if (!cfg->local_command || !*cfg->local_command) {
    log_error("actuator local: no worker command given (set the local actuator's command template)");
    return STRATA_EINVAL;
  }
  local_t *s = calloc(1, sizeof(*s));
  if (!s) return STRATA_ENOMEM;
  s->stop_timeout_ms = cfg->local_stop_timeout_ms > 0 ? cfg->local_stop_timeout_ms : 10000;
  int rc = split_template(s, cfg->local_command);
  if (rc) goto fail;
  /* Reject unknown placeholders now rather than at the first scale-up. */
  char buf[ARG_MAX_BYTES];
  subst_t probe = {"pool", "pool-0", 1, 0};
  for (int i = 0; i < s->n_args; i++) {
    if (expand(s->args[i], &probe, buf, sizeof(buf))) {
      log_error("actuator local: argument \"%s\" of the worker command has an unknown placeholder (known: "
                "{pool} {port} {id} {index}) or is too long", s->args[i]);
      rc = STRATA_EINVAL;
      goto fail;
    }
  }
  *impl = s;
  return 0;
fail:
  local_destroy(s);
  return rc;
}

/* reap: forgets children that exited on their own (a crash shows up here, and the pool shrinks). */
static void reap(local_t *s) {
  for (int i = 0; i < s->n_kids;) {
    int status = 0;
    pid_t r = waitpid(s->kids[i].pid, &status, WNOHANG);
    if (r == s->kids[i].pid || (r < 0 && errno == ECHILD)) {
      if (r == s->kids[i].pid)
        log_warn("actuator local: worker %s (pid %d) exited on its own (%s %d)", s->kids[i].id, (int)s->kids[i].pid,
                 WIFSIGNALED(status) ? "signal" : "status",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
      memmove(&s->kids[i], &s->kids[i + 1], (size_t)(s->n_kids - i - 1) * sizeof(child_t));
      s->n_kids--;
    } else {
      i++;
    }
  }
}

static int count_pool(const local_t *s, const char *pool) {
  int n = 0;
  for (int i = 0; i < s->n_kids; i++) n += strcmp(s->kids[i].pool, pool) == 0;
  return n;
}

/* free_port: a TCP port nothing listens on now and no child of ours was given. The kernel picks it. */
static int free_port(const local_t *s) {
  for (int attempt = 0; attempt < 16; attempt++) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_ANY)};
    socklen_t sl = sizeof(sa);
    int port = -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
      port = ntohs(sa.sin_port);
    close(fd);
    if (port < 0) return -1;
    int taken = 0;
    for (int i = 0; i < s->n_kids; i++) taken |= s->kids[i].port == port;
    if (!taken) return port;
  }
  return -1;
}

static int next_index(local_t *s, const char *pool) {
  for (int i = 0; i < s->n_counters; i++)
    if (strcmp(s->counters[i].pool, pool) == 0) return s->counters[i].next_index++;
  pool_counter_t *grown = realloc(s->counters, (size_t)(s->n_counters + 1) * sizeof(*grown));
  if (!grown) return -1;
  s->counters = grown;
  pool_counter_t *c = &s->counters[s->n_counters++];
  snprintf(c->pool, sizeof(c->pool), "%s", pool);
  c->next_index = 1;
  return 0;
}

/* spawn_one: starts one worker of POOL and records it. */
static int spawn_one(local_t *s, const char *pool) {
  if (s->n_kids == s->cap_kids) {
    int cap = s->cap_kids ? 2 * s->cap_kids : 8;
    child_t *grown = realloc(s->kids, (size_t)cap * sizeof(*grown));
    if (!grown) return STRATA_ENOMEM;
    s->kids = grown;
    s->cap_kids = cap;
  }
  child_t *k = &s->kids[s->n_kids];
  memset(k, 0, sizeof(*k));
  snprintf(k->pool, sizeof(k->pool), "%s", pool);
  k->index = next_index(s, pool);
  k->port = free_port(s);
  if (k->index < 0) return STRATA_ENOMEM;
  if (k->port < 0) {
    log_error("actuator local: no free TCP port for a new worker of pool %s: %s", pool, strerror(errno));
    return STRATA_EUNAVAILABLE;
  }
  snprintf(k->id, sizeof(k->id), "%s-%d", pool, k->index);
  subst_t v = {pool, k->id, k->port, k->index};
  char *bufs = malloc((size_t)s->n_args * ARG_MAX_BYTES), *argv[MAX_ARGS + 1];
  if (!bufs) return STRATA_ENOMEM;
  for (int i = 0; i < s->n_args; i++) {
    argv[i] = bufs + (size_t)i * ARG_MAX_BYTES;
    if (expand(s->args[i], &v, argv[i], ARG_MAX_BYTES)) {
      log_error("actuator local: argument \"%s\" of the worker command is longer than %d bytes for worker %s",
                s->args[i], ARG_MAX_BYTES - 1, k->id);
      free(bufs);
      return STRATA_EINVAL;
    }
  }
  argv[s->n_args] = NULL;

  posix_spawnattr_t attr;
  posix_spawn_file_actions_t fa;
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_init(&fa);
  /* NOTE: the coordinator may ignore SIGPIPE or block signals; a worker must start with defaults so
   * that our SIGTERM reaches its drain handler. */
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  int sigs[] = {SIGTERM, SIGINT, SIGPIPE, SIGHUP, SIGCHLD, SIGUSR1, SIGUSR2};
  for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) sigaddset(&defaults, sigs[i]);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  int err = posix_spawnp(&k->pid, argv[0], &fa, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (err) log_error("actuator local: cannot start worker %s: %s: %s", k->id, argv[0], strerror(err));
  free(bufs);
  if (err) return err == ENOENT || err == EACCES ? STRATA_ENOTFOUND : STRATA_EIO;
  k->state = ACTUATOR_WORKER_RUNNING;
  s->n_kids++;
  log_info("actuator local: started worker %s (pid %d, port %d)", k->id, (int)k->pid, k->port);
  return 0;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* stop_marked: stops every child marked STOP: SIGTERM to all, then SIGKILL to those still alive at the
 * deadline; each is reaped and removed. Only our own unreaped children are signalled, so a recycled PID
 * is never hit. */
static void stop_marked(local_t *s) {
  for (int i = 0; i < s->n_kids; i++)
    if (s->kids[i].stop) kill(s->kids[i].pid, SIGTERM);
  double deadline = now_ms() + s->stop_timeout_ms;
  bool killed = false;
  for (;;) {
    int left = 0;
    for (int i = 0; i < s->n_kids; i++) {
      child_t *k = &s->kids[i];
      if (!k->stop || k->reaped) continue;
      pid_t r = waitpid(k->pid, NULL, killed ? 0 : WNOHANG);
      if (r == k->pid || (r < 0 && errno != EINTR))
        k->reaped = true;
      else
        left++;
    }
    if (!left) break;
    if (!killed && now_ms() >= deadline) {
      for (int i = 0; i < s->n_kids; i++) {
        child_t *k = &s->kids[i];
        if (!k->stop || k->reaped) continue;
        log_warn("actuator local: worker %s (pid %d) ignored SIGTERM for %d ms; sending SIGKILL", k->id, (int)k->pid,
                 s->stop_timeout_ms);
        kill(k->pid, SIGKILL);
      }
      killed = true;
    } else if (!killed) {
      usleep(10000);
    }
  }
  int j = 0;
  for (int i = 0; i < s->n_kids; i++) {
    if (s->kids[i].stop) {
      log_info("actuator local: stopped worker %s (pid %d)", s->kids[i].id, (int)s->kids[i].pid);
      continue;
    }
    s->kids[j++] = s->kids[i];
  }
  s->n_kids = j;
}

static int local_get(void *impl, const char *pool, int *n) {
  local_t *s = impl;
  reap(s);
  *n = count_pool(s, pool);
  return 0;
}

static int local_set(void *impl, const char *pool, int n) {
  local_t *s = impl;
  reap(s);
  int have = count_pool(s, pool);
  for (; have < n; have++) {
    int rc = spawn_one(s, pool);
    if (rc) return rc;
  }
  if (have == n) return 0;
  int k = have - n, drained = 0;
  for (int i = 0; i < s->n_kids; i++)
    drained += strcmp(s->kids[i].pool, pool) == 0 && s->kids[i].state == ACTUATOR_WORKER_DRAINED;
  if (drained < k) {
    log_error("actuator local: scaling pool %s from %d to %d needs %d workers confirmed drained, %d are "
              "(pick victims, drain them, confirm, then retry)", pool, have, n, k, drained);
    return STRATA_EAGAIN;
  }
  for (int i = s->n_kids - 1; i >= 0 && k > 0; i--) {
    if (strcmp(s->kids[i].pool, pool) == 0 && s->kids[i].state == ACTUATOR_WORKER_DRAINED) {
      s->kids[i].stop = true;
      k--;
    }
  }
  stop_marked(s);
  return 0;
}

static child_t *find_kid(local_t *s, const char *pool, const char *id) {
  for (int i = 0; i < s->n_kids; i++)
    if (strcmp(s->kids[i].pool, pool) == 0 && strcmp(s->kids[i].id, id) == 0) return &s->kids[i];
  return NULL;
}

static int local_pick(void *impl, const char *pool, char *id, size_t len) {
  local_t *s = impl;
  reap(s);
  for (int i = s->n_kids - 1; i >= 0; i--) {
    child_t *k = &s->kids[i];
    if (strcmp(k->pool, pool) == 0 && k->state == ACTUATOR_WORKER_RUNNING) {
      k->state = ACTUATOR_WORKER_DRAINING;
      snprintf(id, len, "%s", k->id);
      return 0;
    }
  }
  return STRATA_ENOTFOUND;
}

static int local_mark(void *impl, const char *pool, const char *id, actuator_worker_state_t st) {
  child_t *k = find_kid(impl, pool, id);
  if (!k || k->state == ACTUATOR_WORKER_RUNNING) return STRATA_ENOTFOUND;
  k->state = st;
  return 0;
}

static int local_list(void *impl, const char *pool, actuator_worker_t *out, int max) {
  local_t *s = impl;
  reap(s);
  int n = 0;
  for (int i = 0; i < s->n_kids; i++) {
    if (strcmp(s->kids[i].pool, pool) != 0) continue;
    if (n < max) {
      actuator_worker_t *w = &out[n];
      snprintf(w->id, sizeof(w->id), "%s", s->kids[i].id);
      w->pid = s->kids[i].pid;
      w->port = s->kids[i].port;
      w->state = s->kids[i].state;
    }
    n++;
  }
  return n;
}

static void local_destroy(void *impl) {
  local_t *s = impl;
  if (!s) return;
  for (int i = 0; i < s->n_kids; i++) s->kids[i].stop = true;
  stop_marked(s);
  for (int i = 0; i < s->n_args; i++) free(s->args[i]);
  free(s->kids);
  free(s->counters);
  free(s);
}

const actuator_ops_t actuator_local_ops = {local_get, local_set, local_pick, local_mark, local_list, local_destroy};
