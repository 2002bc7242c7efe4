/* cli.h: the `strata` command's subcommands and what they share (default model, model + tokenizer
 * loading). */
#ifndef STRATA_CLI_H
#define STRATA_CLI_H

#include "common/tok/tok.h"
#include "worker/model/model.h"

int cmd_generate(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_serve(int argc, char **argv); /* only with STRATA_HAVE_SERVE (STRATA_NET builds) */

/* cli_default_model: ../shared/models/stories260K (the GGUF) when present, else "dummy:tiny". */
const char *cli_default_model(void);

/* cli_load_tokenizer: the tokenizer for model PATH: dummy models get the byte tokenizer of their
 * vocab size (VOCAB_SIZE, or 512 when 0); anything else is loaded from the path. */
int cli_load_tokenizer(const char *path, int vocab_size, tok_t **out);

#endif
