/* log.h: leveled logging to stderr. Log once, where an error is born, with context a user can act on. */
#ifndef STRATA_LOG_H
#define STRATA_LOG_H

enum { LOG_LEVEL_DEBUG = 0, LOG_LEVEL_INFO = 1, LOG_LEVEL_WARN = 2, LOG_LEVEL_ERROR = 3, LOG_LEVEL_OFF = 4 };

/* log_set_level: messages below LEVEL are dropped. The initial level comes from STRATA_LOG_LEVEL
 * (debug|info|warn|error|off), default info. Thread-safe. */
void log_set_level(int level);
int log_get_level(void);
/* log_parse_level: "debug".."off" -> level, or -1. */
int log_parse_level(const char *s);

void log_write(int level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define log_debug(...) log_write(LOG_LEVEL_DEBUG, __FILE__, __LINE__, __VA_ARGS__)
#define log_info(...) log_write(LOG_LEVEL_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define log_warn(...) log_write(LOG_LEVEL_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define log_error(...) log_write(LOG_LEVEL_ERROR, __FILE__, __LINE__, __VA_ARGS__)

#endif
