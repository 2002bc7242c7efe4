/* cmd_tokenize.c: `strata tokenize`: print a text's token ids, space-separated, on one line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/log.h"
#include "common/status.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: strata tokenize [--model PATH|dummy:NAME] [--no-special] TEXT\n"
          "\n"
          "Prints the token ids of TEXT on one line. PATH may be a model directory, a .gguf file (a\n"
          "vocab-only GGUF works), a tokenizer.json, tokenizer.model or tiktoken file.\n"
          "  --no-special   no BOS, and special-token text is encoded as plain text\n");
}

int cmd_tokenize(int argc, char **argv) {
  if (!getenv("STRATA_LOG_LEVEL")) log_set_level(LOG_LEVEL_WARN);
  const char *model = cli_default_model(), *text = NULL;
  int no_special = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(argv[i], "--no-special") == 0) {
      no_special = 1;
    } else if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
      model = argv[++i];
    } else if (strncmp(argv[i], "--model=", 8) == 0) {
      model = argv[i] + 8;
    } else if (strcmp(argv[i], "--") == 0 && i + 1 < argc && !text) {
      text = argv[++i];
    } else if (argv[i][0] == '-' && argv[i][1] == '-') {
      fprintf(stderr, "strata tokenize: unknown option '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    } else if (!text) {
      text = argv[i];
    } else {
      fprintf(stderr, "strata tokenize: give the text as one argument (quote it)\n");
      return 2;
    }
  }
  if (!text) {
    usage(stderr);
    return 2;
  }
  tok_t *tok = NULL;
  int rc = cli_load_tokenizer(model, 0, &tok);
  if (rc) {
    fprintf(stderr, "strata tokenize: cannot load a tokenizer from '%s': %s\n", model, strata_strerror(rc));
    return 1;
  }
  int32_t *ids = NULL;
  int n = 0;
  int flags = no_special ? 0 : TOK_PARSE_SPECIAL | (tok_add_bos_default(tok) ? TOK_ADD_BOS : 0);
  rc = tok_encode(tok, text, strlen(text), flags, &ids, &n);
  if (rc) {
    fprintf(stderr, "strata tokenize: %s\n", strata_strerror(rc));
    tok_free(tok);
    return 1;
  }
  for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
  printf("\n");
  free(ids);
  tok_free(tok);
  return 0;
}
