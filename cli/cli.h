/* cli.h: the `strata` command's subcommands and what they share (default model, model + tokenizer
 * loading). */
#ifndef STRATA_CLI_H
#define STRATA_CLI_H

#include "common/tok/tok.h"
#include "worker/model/model.h"

int cmd_generate(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_serve(int argc, char **argv); /* only with STRATA_HAVE_SERVE (STRATA_NET builds) */
#ifdef STRATA_HAVE_SERVE
#include <protobuf-c/protobuf-c.h>
int cmd_cluster(int argc, char **argv);
int cmd_policy(int argc, char **argv);
int cmd_workers(int argc, char **argv);
/* cli_cluster_dir: OPT, else $STRATA_CLUSTER_DIR, else ".strata/cluster". */
const char *cli_cluster_dir(const char *opt);
/* cli_coordinator_addr: the coordinator's Admin address into OUT: OPT, $STRATA_COORDINATOR, the
 * coordinator.grpc file under cli_cluster_dir(NULL), or 127.0.0.1:50052. Returns 0. */
int cli_coordinator_addr(const char *opt, char *out, size_t len);
/* cli_admin_call: one unary Admin call to ADDR (10 s deadline). On 0 *RESP holds a DESC message (free
 * with protobuf_c_message_free_unpacked); otherwise the error was printed on stderr. */
int cli_admin_call(const char *addr, const char *method, const ProtobufCMessage *req,
                   const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp);
#endif

/* cli_default_model: ../shared/models/stories260K (the GGUF) when present, else "dummy:tiny". */
const char *cli_default_model(void);

/* cli_load_tokenizer: the tokenizer for model PATH: dummy models get the byte tokenizer of their
 * vocab size (VOCAB_SIZE, or 512 when 0); anything else is loaded from the path. */
int cli_load_tokenizer(const char *path, int vocab_size, tok_t **out);

#endif
