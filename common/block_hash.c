/* block_hash.c: chained XXH3 hashes of full KV blocks (prefix caching and KV-aware routing). */
#include "common/block_hash.h"

#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

uint64_t block_hash(uint64_t parent, const int32_t *tokens, int n, uint64_t seed) {
  XXH3_state_t st;
  XXH3_64bits_reset_withSeed(&st, seed);
  uint8_t pb[8];
  for (int i = 0; i < 8; i++) pb[i] = (uint8_t)(parent >> (8 * i));
  XXH3_64bits_update(&st, pb, 8);
  uint8_t buf[256];
  int off = 0;
  for (int i = 0; i < n; i++) {
    uint32_t t = (uint32_t)tokens[i];
    buf[off++] = (uint8_t)t;
    buf[off++] = (uint8_t)(t >> 8);
    buf[off++] = (uint8_t)(t >> 16);
    buf[off++] = (uint8_t)(t >> 24);
    if (off == (int)sizeof buf) {
      XXH3_64bits_update(&st, buf, (size_t)off);
      off = 0;
    }
  }
  if (off) XXH3_64bits_update(&st, buf, (size_t)off);
  uint64_t h = XXH3_64bits_digest(&st);
  return h ? h : 1;
}

int block_hash_chain(const int32_t *tokens, int n_tokens, int block_size, uint64_t seed, uint64_t *out,
                     int max_out) {
  int n = 0;
  uint64_t parent = 0;
  for (int b = 0; (b + 1) * block_size <= n_tokens && n < max_out; b++) {
    parent = block_hash(parent, tokens + b * block_size, block_size, seed);
    out[n++] = parent;
  }
  return n;
}
