// cuda_int.cuh: helpers shared by the CUDA kernel files: typed element access, dtype dispatch, launch checks.
#ifndef STRATA_KERNELS_CUDA_INT_CUH
#define STRATA_KERNELS_CUDA_INT_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "common/dtype.h"
#include "common/log.h"
#include "common/status.h"
}
#include "kernels/kernels_cuda.h"

// cuda_attention_prefill (attn_prefill.cu): as cuda_attention (same arguments, same result, a zero row for a
// query whose context needs a block outside the cache) for prefill chunks, flash-attention-2 style on tensor
// cores; ACT must be the cache's dtype. Returns STRATA_EUNSUPPORTED, without logging, unless ACT is bf16/f16,
// D is 64 or 128 and SCALE > 0 (the caller then falls back to cuda_attention); STRATA_EINVAL for bad shapes.
// The launch configuration depends only on (T, H) and the model, so a captured step replays correctly.
extern "C" int cuda_attention_prefill(void *out, const void *q, const cuda_kv_t *kv, int layer,
                                      const int32_t *positions, const int32_t *seq_of, const int32_t *block_table,
                                      int max_blocks, int T, int S, int H, float scale, dtype_t act,
                                      cudaStream_t stream);

// ---- element access: every kernel computes in f32 whatever the stored type ----

__device__ __forceinline__ float ld(const float *p) { return *p; }
__device__ __forceinline__ float ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ float ld(const __half *p) { return __half2float(*p); }
__device__ __forceinline__ void st(float *p, float v) { *p = v; }
__device__ __forceinline__ void st(__nv_bfloat16 *p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void st(__half *p, float v) { *p = __float2half(v); }
template <typename T> __device__ __forceinline__ float rnd(float v) {  // v rounded to T, as f32
  T t;
  st(&t, v);
  return ld(&t);
}

// DISPATCH(act, KERNEL_CALL): runs the statement with `T` bound to the C++ type of ACT.
#define DISPATCH_ACT(act, ...)                                                \
  do {                                                                        \
    if ((act) == DTYPE_F32) {                                                 \
      typedef float T;                                                        \
      __VA_ARGS__;                                                            \
    } else if ((act) == DTYPE_BF16) {                                         \
      typedef __nv_bfloat16 T;                                                \
      __VA_ARGS__;                                                            \
    } else if ((act) == DTYPE_F16) {                                          \
      typedef __half T;                                                       \
      __VA_ARGS__;                                                            \
    } else {                                                                  \
      log_error("cuda kernels: activation dtype %s is not f32, bf16 or f16", dtype_name(act)); \
      return STRATA_EINVAL;                                                   \
    }                                                                         \
  } while (0)

// launched: the status of the launch just made, logged once with the kernel's name.
static inline int launched(const char *what) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return 0;
  log_error("cuda %s: launch failed: %s", what, cudaGetErrorString(e));
  return STRATA_EIO;
}

static inline unsigned grid_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return (unsigned)(b > (1 << 30) ? (1 << 30) : b);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

#endif
