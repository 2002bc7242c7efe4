/* main.c: strata-coordinator: the cluster's front door (coordinator/core/coord.h). */
#include <stdio.h>
#include <string.h>

#include "common/status.h"
#include "coordinator/core/coord.h"

static void usage(FILE *f, const cfg_option_t *opts) {
  fprintf(f,
          "usage: strata-coordinator --model PATH|dummy:NAME --etcd IP:PORT[,...] [options]\n"
          "\n"
          "Serves the OpenAI HTTP API (/v1/completions, /v1/chat/completions, /v1/models, /health, /metrics),\n"
          "strata.v1.Inference over gRPC (--inference-grpc-port) and strata.v1.Admin over gRPC (--grpc-port);\n"
          "--api-key and --tls-cert/--tls-key guard HTTP and Inference. Each request goes to a worker\n"
          "registered in etcd under /strata/<cluster>/workers/ and moves to another worker if its worker\n"
          "dies. The etcd-elected leader scales the pools (--actuator). Every option can also be set as\n"
          "STRATA_<NAME> (dashes as underscores); the command line wins. docs/cluster.md.\n"
          "\noptions:\n");
  cfg_help(opts, f);
}

int main(int argc, char **argv) {
  const cfg_option_t *opts = coord_options();
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout, opts);
      return 0;
    }
  coord_conf_t conf = {0};
  char err[256] = "";
  int rc = cfg_load(opts, &conf, argc - 1, argv + 1, NULL, NULL, err, sizeof err);
  if (rc) {
    fprintf(stderr, "strata-coordinator: %s\n", err[0] ? err : strata_strerror(rc));
    cfg_free(opts, &conf);
    return 2;
  }
  if (!conf.model || !conf.etcd) {
    fprintf(stderr, "strata-coordinator: --model and --etcd are required (see --help)\n");
    cfg_free(opts, &conf);
    return 2;
  }
  rc = coord_run(&conf);
  cfg_free(opts, &conf);
  if (rc) fprintf(stderr, "strata-coordinator: %s\n", strata_strerror(rc));
  return rc ? 1 : 0;
}
