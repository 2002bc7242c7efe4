/* kernels_cuda_ids.h: asynchronous steps on the GPU (kernels/cuda/ids.cu): a step's decode inputs taken from
 * the token ids the previous step drew, on the device, so the host never waits for them. */
#ifndef STRATA_KERNELS_CUDA_IDS_H
#define STRATA_KERNELS_CUDA_IDS_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cuda_patch_tokens: tokens[t] = ids[prev_rows[t]] for every t < T with prev_rows[t] >= 0 (others unchanged).
 * Device memory; IDS may be NULL when no row is >= 0. Launches asynchronously; 0 or STRATA_EIO (logged). */
int cuda_patch_tokens(int32_t *tokens, const int32_t *prev_rows, const int32_t *ids, int T, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
