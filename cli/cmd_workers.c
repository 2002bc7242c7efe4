/* cmd_workers.c: `strata workers` (Admin.ListWorkers) and what the cluster commands share: finding
 * the coordinator's Admin address and calling it. */
#ifdef STRATA_HAVE_SERVE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/log.h"
#include "common/rpc/rpc.h"
#include "common/status.h"
#include "strata/v1/admin.pb-c.h"

#define CLI_ADMIN_TIMEOUT_MS 10000

const char *cli_cluster_dir(const char *opt) {
  if (opt && opt[0]) return opt;
  const char *env = getenv("STRATA_CLUSTER_DIR");
  return env && env[0] ? env : ".strata/cluster";
}

int cli_coordinator_addr(const char *opt, char *out, size_t len) {
  if (opt && opt[0]) {
    snprintf(out, len, "%s", opt);
    return 0;
  }
  const char *env = getenv("STRATA_COORDINATOR");
  if (env && env[0]) {
    snprintf(out, len, "%s", env);
    return 0;
  }
  /* the address `strata cluster up` wrote */
  char path[1024];
  snprintf(path, sizeof path, "%s/coordinator.grpc", cli_cluster_dir(NULL));
  FILE *f = fopen(path, "r");
  if (f) {
    int ok = fgets(out, (int)len, f) != NULL;
    fclose(f);
    if (ok) {
      out[strcspn(out, "\r\n")] = 0;
      if (out[0]) return 0;
    }
  }
  snprintf(out, len, "127.0.0.1:50052");
  return 0;
}

int cli_admin_call(const char *addr, const char *method, const ProtobufCMessage *req,
                   const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp) {
  grpc_channel *ch = NULL;
  rpc_init();
  int rc = rpc_channel_new(addr, NULL, &ch);
  if (rc) {
    fprintf(stderr, "strata: cannot open a channel to the coordinator at %s (%s)\n", addr, strata_strerror(rc));
    rpc_shutdown();
    return rc;
  }
  rpc_status_t st = {0};
  rc = rpc_unary_call(ch, method, req, desc, resp, CLI_ADMIN_TIMEOUT_MS, &st);
  if (rc) {
    if (rc == STRATA_EUNAVAILABLE && st.code == GRPC_STATUS_UNAVAILABLE)
      fprintf(stderr, "strata: the coordinator at %s does not answer (%s); is it running? (--coordinator ADDR)\n",
              addr, st.details);
    else
      fprintf(stderr, "strata: %s: %s\n", rpc_status_name(st.code), st.details[0] ? st.details : strata_strerror(rc));
  }
  grpc_channel_destroy(ch);
  rpc_shutdown();
  return rc;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: strata workers [--coordinator HOST:PORT] [--pool P]\n"
          "\n"
          "Lists the workers the coordinator knows (Admin.ListWorkers): id, pool, state, load, address.\n"
          "The coordinator's Admin address comes from --coordinator, STRATA_COORDINATOR, the file\n"
          "coordinator.grpc that `strata cluster up` wrote (under STRATA_CLUSTER_DIR or .strata/cluster),\n"
          "or 127.0.0.1:50052.\n");
}

int cmd_workers(int argc, char **argv) {
  if (!getenv("STRATA_LOG_LEVEL")) log_set_level(LOG_LEVEL_WARN);
  const char *coord = NULL, *pool = "";
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(argv[i], "--coordinator") == 0 && i + 1 < argc) {
      coord = argv[++i];
    } else if (strcmp(argv[i], "--pool") == 0 && i + 1 < argc) {
      pool = argv[++i];
    } else {
      fprintf(stderr, "strata workers: unknown argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  char addr[256];
  cli_coordinator_addr(coord, addr, sizeof addr);
  Strata__V1__ListWorkersRequest req = STRATA__V1__LIST_WORKERS_REQUEST__INIT;
  req.pool = (char *)pool;
  ProtobufCMessage *msg = NULL;
  if (cli_admin_call(addr, "/strata.v1.Admin/ListWorkers", &req.base, &strata__v1__list_workers_response__descriptor,
                     &msg))
    return 1;
  const Strata__V1__ListWorkersResponse *r = (const Strata__V1__ListWorkersResponse *)msg;
  printf("%-24s %-8s %-10s %7s %7s %6s  %-22s %s\n", "ID", "POOL", "STATE", "RUNNING", "WAITING", "KV", "ADDRESS",
         "MODEL");
  for (size_t i = 0; i < r->n_workers; i++) {
    const Strata__V1__WorkerInfo *w = r->workers[i];
    printf("%-24s %-8s %-10s %7u %7u %5.1f%%  %-22s %s\n", w->id, w->pool, w->state, w->running, w->waiting,
           100.0 * w->kv_usage, w->address, w->model);
  }
  protobuf_c_message_free_unpacked(msg, NULL);
  return 0;
}
#endif
