/* greedy_ids.c: greedy decoding straight through the forward pass (no tokenizer, no engine), printing token
 * ids, so that tests/gpu/hf_parity.py can compare with Hugging Face transformers on the same weights.
 * usage: greedy_ids MODEL DEVICE DTYPE N_STEPS ID... (DTYPE auto|f32|bf16|f16); prints the N_STEPS new ids. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "worker/backend/backend.h"
#include "worker/model/forward.h"
#include "worker/model/model.h"

enum { BLOCK = 16, MAX_CTX = 512 };

static int argmax(const float *x, int n) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: greedy_ids MODEL DEVICE DTYPE N_STEPS ID...\n");
    return 2;
  }
  int act = strcmp(argv[3], "auto") == 0 ? -1 : dtype_parse(argv[3]);
  int steps = atoi(argv[4]), n_prompt = argc - 5;
  if (steps < 1 || n_prompt + steps > MAX_CTX || (act < 0 && strcmp(argv[3], "auto") != 0)) {
    fprintf(stderr, "greedy_ids: bad dtype, step count or prompt length\n");
    return 2;
  }
  model_t *m = NULL;
  backend_t *be = NULL;
  fwd_t f;
  int rc = model_load(&m, argv[1], NULL);
  if (!rc) rc = backend_create(&be, argv[2], 0, act);
  if (!rc) rc = fwd_init(&f, m, be, BLOCK, MAX_CTX, 1);
  if (!rc) rc = fwd_alloc_kv(&f, MAX_CTX / BLOCK + 2);
  if (rc) {
    fprintf(stderr, "greedy_ids: %s\n", strata_strerror(rc));
    backend_destroy(be);
    model_free(m);
    return 1;
  }
  int32_t ids[MAX_CTX], pos[MAX_CTX], slot[MAX_CTX], seq[MAX_CTX], table[MAX_CTX / BLOCK + 1];
  for (int i = 0; i < MAX_CTX / BLOCK + 1; i++) table[i] = i + 1;
  for (int i = 0; i < n_prompt; i++) ids[i] = atoi(argv[5 + i]);
  int n = n_prompt, done = 0;
  while (!rc && n < n_prompt + steps) {
    int first = done, T = n - done; /* the whole prompt first, then one token per step */
    for (int j = 0; j < T; j++) {
      pos[j] = first + j;
      slot[j] = table[(first + j) / BLOCK] * BLOCK + (first + j) % BLOCK;
      seq[j] = 0;
    }
    int32_t qs[2] = {0, T}, kvl[1] = {n}, lr[1] = {T - 1};
    be_batch_t b = {.n_tokens = T, .n_seqs = 1, .tokens = ids + first, .positions = pos, .slots = slot,
                    .seq_of = seq, .q_start = qs, .kv_len = kvl, .block_table = table,
                    .max_blocks = MAX_CTX / BLOCK + 1, .max_kv_len = n, .logit_rows = lr, .n_logits = 1};
    rc = fwd_run(&f, &b);
    if (rc) break;
    done = n;
    ids[n++] = argmax(f.logits_host, m->cfg.vocab_size);
  }
  for (int i = n_prompt; i < n && !rc; i++) printf("%d%c", ids[i], i + 1 < n ? ' ' : '\n');
  fwd_deinit(&f);
  backend_destroy(be);
  model_free(m);
  return rc ? 1 : 0;
}
