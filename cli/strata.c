/* strata.c: the `strata` command: dispatch to subcommands. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/fileio.h"

static const struct {
  const char *name;
  int (*fn)(int, char **);
  const char *help;
} g_cmds[] = {
    {"generate", cmd_generate, "generate text from a prompt with a local engine"},
    {"tokenize", cmd_tokenize, "print the token ids of a text"},
#ifdef STRATA_HAVE_SERVE
    {"serve", cmd_serve, "serve the OpenAI-compatible HTTP API with a local engine"},
    {"cluster", cmd_cluster, "start or stop a local cluster (etcd, coordinator, workers)"},
    {"workers", cmd_workers, "list the cluster's workers (from the coordinator)"},
    {"policy", cmd_policy, "get or set a pool's autoscaling policy; cluster status"},
#endif
};

static void usage(FILE *f) {
  fprintf(f, "usage: strata <command> [options]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++)
    fprintf(f, "  %-10s %s\n", g_cmds[i].name, g_cmds[i].help);
  fprintf(f, "\n`strata <command> --help` describes a command's options.\n");
}

const char *cli_default_model(void) {
  static const char *candidates[] = {"../shared/models/stories260K/stories260K.gguf",
                                     "../../shared/models/stories260K/stories260K.gguf"};
  for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++)
    if (access(candidates[i], R_OK) == 0) return candidates[i];
  return "dummy:tiny";
}

int cli_load_tokenizer(const char *path, int vocab_size, tok_t **out) {
  if (strncmp(path, "dummy:", 6) == 0) return tok_new_bytes(out, vocab_size > 0 ? vocab_size : 512);
  return tok_load(out, path);
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++)
    if (strcmp(argv[1], g_cmds[i].name) == 0) return g_cmds[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "strata: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
