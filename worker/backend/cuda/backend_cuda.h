/* backend_cuda.h: the CUDA backend (worker/backend/cuda): device memory, cuBLASLt and the kernels of kernels/cuda. */
#ifndef STRATA_BACKEND_CUDA_H
#define STRATA_BACKEND_CUDA_H

#include "worker/backend/backend.h"

/* backend_cuda_available: 1 when at least one CUDA device can be used, else 0 (no GPU, no driver). */
int backend_cuda_available(void);

/* backend_cuda_create: a backend on CUDA device DEVICE with activations and KV cache in ACT_DTYPE (f32, bf16,
 * f16; -1 = bf16). Weights are converted to ACT_DTYPE when prepared (vectors stay f32). Returns 0,
 * STRATA_EUNSUPPORTED (no CUDA device, or dtype), STRATA_EINVAL (no such device) or
 * STRATA_EIO (the CUDA runtime failed); logged. Free with backend_destroy. */
int backend_cuda_create(backend_t **out, int device, int act_dtype);
void backend_cuda_destroy(backend_t *be);

#endif
