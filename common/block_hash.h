/* block_hash.h: chained hashes of full KV blocks, the same function in coordinator and worker. */
#ifndef STRATA_BLOCK_HASH_H
#define STRATA_BLOCK_HASH_H

#include <stdint.h>

#define BLOCK_HASH_DEFAULT_SEED 0x5354524154413031ull /* "STRATA01" */

/* block_hash: hash of one full block of N token ids chained to its parent block's hash (PARENT is 0
 * for the first block of a sequence). XXH3-64 over (parent, tokens) as little-endian bytes, seeded.
 * Never returns 0, so 0 can mean "no hash". */
uint64_t block_hash(uint64_t parent, const int32_t *tokens, int n, uint64_t seed);

/* block_hash_chain: hashes of the N_TOKENS / BLOCK_SIZE full blocks of TOKENS into OUT; returns how
 * many were written (at most MAX_OUT). */
int block_hash_chain(const int32_t *tokens, int n_tokens, int block_size, uint64_t seed, uint64_t *out,
                     int max_out);

#endif
