/* status.c: messages and names for the status table in status.h. */
#include "common/status.h"

const char *strata_strerror(int code) {
  switch (code) {
#define STRATA_STATUS_MSG(name, value, msg) \
  case value:                               \
    return msg;
    STRATA_STATUS_MAP(STRATA_STATUS_MSG)
#undef STRATA_STATUS_MSG
  }
  return "unknown error";
}

const char *strata_errname(int code) {
  switch (code) {
#define STRATA_STATUS_NAME(name, value, msg) \
  case value:                                \
    return #name;
    STRATA_STATUS_MAP(STRATA_STATUS_NAME)
#undef STRATA_STATUS_NAME
  }
  return "EUNKNOWN";
}
