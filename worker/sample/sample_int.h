/* sample_int.h: internals of the sampler exposed to its tests (not part of the module's API). */
#ifndef STRATA_SAMPLE_INT_H
#define STRATA_SAMPLE_INT_H

#include <stdint.h>

/* philox4x32_10: OUT = Philox4x32 with 10 rounds of counter CTR under key KEY (Salmon et al. 2011);
 * rng_uniform() is built on it. */
void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

#endif
