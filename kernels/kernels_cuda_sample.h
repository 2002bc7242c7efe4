/* kernels_cuda_sample.h: sampling on the GPU (kernels/cuda/sample.cu): the host sampler's draw
 * (worker/sample/sample.h) computed token-parallel, so only token ids cross to the host. */
#ifndef STRATA_KERNELS_CUDA_SAMPLE_H
#define STRATA_KERNELS_CUDA_SAMPLE_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "worker/backend/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cuda_sample_scratch_bytes: device scratch cuda_sample_rows needs for N rows of V logits. */
size_t cuda_sample_scratch_bytes(int n, int V);

/* cuda_sample_rows: out(n) int32 (device) = the token drawn from each row of x(n, V) (ACT dtype, device)
 * under P[i] (device array of n be_sample_t): temperature, top-k, top-p, min-p, then Gumbel-max with
 * u = rng_uniform(seed, position, id) exactly as sampler_sample does on the host. SCRATCH: device
 * memory of cuda_sample_scratch_bytes(n, V). Asynchronous on STREAM; returns 0 or a STRATA_E* code. */
int cuda_sample_rows(int32_t *out, const void *x, const be_sample_t *p, int n, int V, dtype_t act, void *scratch,
                     cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
