/* status.h: the one table of error codes. Functions return 0 or a negative STRATA_E* code. */
#ifndef STRATA_STATUS_H
#define STRATA_STATUS_H

/* X(name, value, message) */
#define STRATA_STATUS_MAP(X)                                  \
  X(OK, 0, "success")                                         \
  X(EINVAL, -1, "invalid argument")                           \
  X(ENOMEM, -2, "out of memory")                              \
  X(EIO, -3, "input/output error")                            \
  X(EFORMAT, -4, "malformed data")                            \
  X(EUNSUPPORTED, -5, "not supported")                        \
  X(ENOTFOUND, -6, "not found")                               \
  X(ERANGE, -7, "value out of range")                         \
  X(EFULL, -8, "resource exhausted")                          \
  X(ECANCELED, -9, "canceled")                                \
  X(ETIMEDOUT, -10, "timed out")                              \
  X(EAGAIN, -11, "try again")                                 \
  X(ECLOSED, -12, "closed")                                   \
  X(EAUTH, -13, "not authorized")                             \
  X(EUNAVAILABLE, -14, "unavailable")                         \
  X(EINTERNAL, -15, "internal error")

enum {
#define STRATA_STATUS_ENUM(name, value, msg) STRATA_##name = (value),
  STRATA_STATUS_MAP(STRATA_STATUS_ENUM)
#undef STRATA_STATUS_ENUM
};

/* strata_strerror: a static message for a status code ("unknown error" when unknown). */
const char *strata_strerror(int code);
/* strata_errname: the code's name without prefix ("EINVAL"). */
const char *strata_errname(int code);

#endif
