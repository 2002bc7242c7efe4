/* rpc_int.h: helpers shared by the files of common/rpc (not part of the public API). */
#ifndef STRATA_RPC_INT_H
#define STRATA_RPC_INT_H

#include <grpc/grpc.h>
#include <grpc/support/time.h>

#include "common/rpc/rpc.h"

/* rpc_status_fill: copy CODE and DETAILS (not consumed) into ST (may be NULL). */
void rpc_status_fill(rpc_status_t *st, grpc_status_code code, grpc_slice details);
/* rpc_deadline_ms: now + TIMEOUT_MS on the realtime clock; infinite for TIMEOUT_MS <= 0. */
gpr_timespec rpc_deadline_ms(int64_t timeout_ms);

#endif
