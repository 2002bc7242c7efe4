/* cmd_serve.c: `strata serve`: the OpenAI-compatible HTTP API on one node (worker/api). Built only
 * with STRATA_NET (the table entry in strata.c is guarded by STRATA_HAVE_SERVE). */
#ifdef STRATA_HAVE_SERVE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/api/serve.h"

static void usage(FILE *f, const cfg_option_t *opts) {
  fprintf(f,
          "usage: strata serve --model PATH|dummy:NAME [options]\n"
          "\n"
          "Serves the OpenAI-compatible API (/v1/completions, /v1/chat/completions, /v1/models, /health,\n"
          "/metrics) over HTTP until SIGINT or SIGTERM. Every option can also be set in the environment as\n"
          "STRATA_<NAME> (dashes as underscores, e.g. STRATA_PORT=8080); the command line wins.\n"
          "\noptions:\n");
  cfg_help(opts, f);
}

int cmd_serve(int argc, char **argv) {
  const cfg_option_t *opts = serve_options();
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout, opts);
      return 0;
    }
  serve_conf_t conf = {0};
  char err[256] = "";
  int rc = cfg_load(opts, &conf, argc - 1, argv + 1, NULL, NULL, err, sizeof err);
  if (rc) {
    fprintf(stderr, "strata serve: %s\n", err[0] ? err : strata_strerror(rc));
    cfg_free(opts, &conf);
    return 2;
  }
  if (!conf.model) {
    fprintf(stderr, "strata serve: --model is required (see --help)\n");
    cfg_free(opts, &conf);
    return 2;
  }
  rc = serve_run(&conf);
  cfg_free(opts, &conf);
  if (rc) fprintf(stderr, "strata serve: %s\n", strata_strerror(rc));
  return rc ? 1 : 0;
}
#endif
