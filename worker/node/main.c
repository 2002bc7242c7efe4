/* main.c: strata-worker: a cluster worker process (worker/node/node.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "worker/node/node.h"

static void usage(FILE *f, const cfg_option_t *opts) {
  fprintf(f,
          "usage: strata-worker --model PATH|dummy:NAME [--etcd IP:PORT[,...]] [options]\n"
          "\n"
          "Serves strata.v1.Worker (Generate, Events, Drain) over gRPC and registers itself in etcd under\n"
          "/strata/<cluster>/workers/<pool>/<id> with a lease. SIGTERM, SIGINT or a Drain call stop admitting,\n"
          "let in-flight requests finish (up to --drain-timeout), deregister and exit 0. Every option can\n"
          "also be set as STRATA_<NAME> (dashes as underscores); the command line wins.\n"
          "\noptions:\n");
  cfg_help(opts, f);
}

int main(int argc, char **argv) {
  const cfg_option_t *opts = worker_node_options();
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout, opts);
      return 0;
    }
  worker_node_conf_t conf = {0};
  char err[256] = "";
  int rc = cfg_load(opts, &conf, argc - 1, argv + 1, NULL, NULL, err, sizeof err);
  if (rc) {
    fprintf(stderr, "strata-worker: %s\n", err[0] ? err : strata_strerror(rc));
    cfg_free(opts, &conf);
    return 2;
  }
  if (!conf.model) {
    fprintf(stderr, "strata-worker: --model is required (see --help)\n");
    cfg_free(opts, &conf);
    return 2;
  }
  rc = worker_node_run(&conf);
  cfg_free(opts, &conf);
  if (rc) fprintf(stderr, "strata-worker: %s\n", strata_strerror(rc));
  return rc ? 1 : 0;
}
