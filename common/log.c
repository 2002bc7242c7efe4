/* log.c: leveled logging to stderr, one line per message, written with a single write(2). */
#include "common/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static atomic_int g_level = -1; /* -1: not read from the environment yet */

int log_parse_level(const char *s) {
  static const char *names[] = {"debug", "info", "warn", "error", "off"};
  if (!s) return -1;
  for (int i = 0; i < 5; i++)
    if (strcasecmp(s, names[i]) == 0) return i;
  return -1;
}

int log_get_level(void) {
  int l = atomic_load(&g_level);
  if (l < 0) {
    l = log_parse_level(getenv("STRATA_LOG_LEVEL"));
    if (l < 0) l = LOG_LEVEL_INFO;
    atomic_store(&g_level, l);
  }
  return l;
}

void log_set_level(int level) { atomic_store(&g_level, level); }

void log_write(int level, const char *file, int line, const char *fmt, ...) {
  static const char tag[] = "DIWE";
  if (level < log_get_level()) return;
  char buf[2048];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  const char *base = strrchr(file, '/');
  base = base ? base + 1 : file;
  int n = snprintf(buf, sizeof buf, "%c %02d:%02d:%02d.%03ld %s:%d ", tag[level < 4 ? level : 3], tm.tm_hour,
                   tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, base, line);
  va_list ap;
  va_start(ap, fmt);
  if (n > 0 && (size_t)n < sizeof buf) n += vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof buf - 1) n = (int)sizeof buf - 2;
  buf[n++] = '\n';
  ssize_t w = write(STDERR_FILENO, buf, (size_t)n);
  (void)w;
}
