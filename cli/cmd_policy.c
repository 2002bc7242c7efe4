/* cmd_policy.c: `strata policy get|set|status`: a pool's autoscaling policy through the
 * coordinator's Admin service (stored in etcd; the leader acts on it within one interval). */
#ifdef STRATA_HAVE_SERVE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"
#include "strata/v1/admin.pb-c.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: strata policy get    [--pool P] [--coordinator HOST:PORT]\n"
          "       strata policy set    [--pool P] [--file policy.json] [name=value ...] [--coordinator HOST:PORT]\n"
          "       strata policy status [--coordinator HOST:PORT]\n"
          "\n"
          "get prints the pool's policy as JSON (defaults for fields never set). set merges a JSON file and/or\n"
          "name=value pairs (e.g. min_replicas=2 mode=active) into it; the leader coordinator acts on it\n"
          "within one interval. status prints the leader and each pool's last decision. The pool defaults\n"
          "to unified. docs/autoscaling.md lists the fields.\n");
}

static int policy_status(const char *addr) {
  Strata__V1__ClusterStatusRequest req = STRATA__V1__CLUSTER_STATUS_REQUEST__INIT;
  ProtobufCMessage *msg = NULL;
  if (cli_admin_call(addr, "/strata.v1.Admin/ClusterStatus", &req.base,
                     &strata__v1__cluster_status_response__descriptor, &msg))
    return 1;
  const Strata__V1__ClusterStatusResponse *r = (const Strata__V1__ClusterStatusResponse *)msg;
  printf("cluster %s, leader %s\n", r->cluster, r->leader[0] ? r->leader : "(none yet)");
  for (size_t i = 0; i < r->n_pools; i++) {
    const Strata__V1__PoolStatus *p = r->pools[i];
    printf("pool %-8s replicas %u desired %u  %s: %s\n", p->pool, p->replicas, p->desired_replicas, p->last_decision,
           p->last_reason);
  }
  protobuf_c_message_free_unpacked(msg, NULL);
  return 0;
}

static int print_policy(ProtobufCMessage *msg) {
  const Strata__V1__Policy *p = (const Strata__V1__Policy *)msg;
  printf("%s\n", p->json);
  protobuf_c_message_free_unpacked(msg, NULL);
  return 0;
}

int cmd_policy(int argc, char **argv) {
  if (!getenv("STRATA_LOG_LEVEL")) log_set_level(LOG_LEVEL_WARN);
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const char *sub = argv[1], *coord = NULL, *pool = "unified", *file = NULL;
  char **pairs = calloc((size_t)argc, sizeof *pairs);
  int n_pairs = 0, rc = 2;
  if (!pairs) return 1;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--coordinator") == 0 && i + 1 < argc) coord = argv[++i];
    else if (strcmp(argv[i], "--pool") == 0 && i + 1 < argc) pool = argv[++i];
    else if (strcmp(argv[i], "--file") == 0 && i + 1 < argc) file = argv[++i];
    else if (argv[i][0] != '-' && strchr(argv[i], '=')) pairs[n_pairs++] = argv[i];
    else {
      fprintf(stderr, "strata policy: unknown argument '%s'\n", argv[i]);
      usage(stderr);
      goto out;
    }
  }
  char addr[256];
  cli_coordinator_addr(coord, addr, sizeof addr);
  ProtobufCMessage *msg = NULL;
  if (strcmp(sub, "status") == 0) {
    rc = policy_status(addr);
  } else if (strcmp(sub, "get") == 0) {
    Strata__V1__GetPolicyRequest req = STRATA__V1__GET_POLICY_REQUEST__INIT;
    req.pool = (char *)pool;
    rc = cli_admin_call(addr, "/strata.v1.Admin/GetPolicy", &req.base, &strata__v1__policy__descriptor, &msg)
             ? 1 : print_policy(msg);
  } else if (strcmp(sub, "set") == 0) {
    char *json = NULL;
    size_t len = 0;
    if (file && file_read_all(file, 1 << 20, &json, &len) != 0) {
      fprintf(stderr, "strata policy set: cannot read %s\n", file);
      rc = 1;
      goto out;
    }
    if (!file && n_pairs == 0) {
      fprintf(stderr, "strata policy set: nothing to set (give name=value pairs or --file)\n");
      goto out;
    }
    Strata__V1__SetPolicyRequest req = STRATA__V1__SET_POLICY_REQUEST__INIT;
    req.pool = (char *)pool;
    req.json = json ? json : (char *)"";
    req.n_set = (size_t)n_pairs;
    req.set = pairs;
    rc = cli_admin_call(addr, "/strata.v1.Admin/SetPolicy", &req.base, &strata__v1__policy__descriptor, &msg)
             ? 1 : print_policy(msg);
    free(json);
  } else {
    fprintf(stderr, "strata policy: unknown subcommand '%s' (get, set, status)\n", sub);
    usage(stderr);
  }
out:
  free(pairs);
  return rc;
}
#endif
