/* dummy_hash.h: the value generator of "dummy:" models, shared by the host loader and the GPU's fill
 * kernel so that both make the same weights: a counter-based hash of (seed, tensor, element). */
#ifndef STRATA_DUMMY_HASH_H
#define STRATA_DUMMY_HASH_H

#include <stdint.h>

#ifdef __CUDACC__
#define DUMMY_HD __host__ __device__ __forceinline__
#else
#define DUMMY_HD static inline
#endif

DUMMY_HD uint64_t dummy_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* dummy_tensor_key: the per-tensor key of dummy_value. */
DUMMY_HD uint64_t dummy_tensor_key(uint64_t seed, uint64_t tensor) {
  return dummy_mix64(dummy_mix64(seed) + tensor * 0x9e3779b97f4a7c15ull);
}

/* dummy_value: element ELEM of the tensor with key KEY: a uniform value in [-1, 1) on a 2^-23 grid. */
DUMMY_HD float dummy_value(uint64_t key, uint64_t elem) {
  uint64_t u = dummy_mix64(key + (elem + 1) * 0x9e3779b97f4a7c15ull);
  return (float)(int64_t)(u >> 40) * (1.0f / 8388608.0f) - 1.0f; /* 24 bits -> [-1, 1) */
}

#endif
