// ids.cu: asynchronous steps: decode inputs read from the previous step's drawn ids (kernels_cuda_ids.h).
#include "kernels/cuda/cuda_int.cuh"
#include "kernels/kernels_cuda_ids.h"

__global__ void patch_tokens_kernel(int32_t *tokens, const int32_t *prev_rows, const int32_t *ids, int T) {
  int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= T) return;
  int j = prev_rows[t];
  if (j >= 0) tokens[t] = ids[j];
}

extern "C" int cuda_patch_tokens(int32_t *tokens, const int32_t *prev_rows, const int32_t *ids, int T,
                                 cudaStream_t stream) {
  if (T <= 0) return 0;
  patch_tokens_kernel<<<grid_for(T, 256), 256, 0, stream>>>(tokens, prev_rows, ids, T);
  return launched("patch_tokens");
}
