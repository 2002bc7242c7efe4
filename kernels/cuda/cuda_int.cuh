// cuda_int.cuh: helpers shared by the CUDA kernel files: typed element access, dtype dispatch, launch checks.
#ifndef STRATA_KERNELS_CUDA_INT_CUH
#define STRATA_KERNELS_CUDA_INT_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

// launch_status: launched() for a launch that returned E (cudaLaunchKernelEx)
static inline int launch_status(cudaError_t e, const char *what) {
  if (e == cudaSuccess) return launched(what);
  cudaGetLastError();
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


// ---- programmatic dependent launch (sm_90). A kernel launched with pdl_launch may start while the kernel
// before it in the stream still runs, once every block of that one has called pdl_trigger (or exited). It must
// call pdl_wait, in every thread, before it reads that kernel's results or writes memory anything before it
// reads; before the wait it may only read what was ready before the previous kernel started (weights, the
// step's batch arrays). Since every kernel launched so waits, one kernel's completion implies all earlier
// ones'. pdl_trigger never changes what a kernel computes: the dependent's pdl_wait still waits for the whole
// grid and its memory. On older devices both are no-ops and launches are plain. ----

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// pdl_ok: programmatic dependent launch needs sm_90; STRATA_CUDA_PDL=0 turns it off (read once per file).
static inline int pdl_ok(void) {
  static int ok = -1;
  if (ok < 0) {
    int dev = 0, major = 0;
    const char *e = getenv("STRATA_CUDA_PDL");
    ok = cudaGetDevice(&dev) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9 &&
         !(e && strcmp(e, "0") == 0);
    cudaGetLastError();
  }
  return ok;
}

// The preferred shared-memory carveout (percent) of the launches this thread makes through pdl_launch; -1: the
// driver's choice (see cuda_set_launch_carveout in kernels_cuda.h).
extern thread_local int cuda_launch_carveout;

// pdl_launch: KERNEL<<<GRID, BLOCK, SMEM, S>>>(ARGS...), with programmatic dependent launch when PDL and
// pdl_ok() (the kernel must then follow the rules above), and this thread's carveout.
template <typename... KArgs, typename... Args>
static cudaError_t pdl_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, int pdl,
                              Args... args) {
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute at[2];
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cfg.attrs = at;
  if (pdl && pdl_ok()) {
    at[cfg.numAttrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[cfg.numAttrs++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cuda_launch_carveout >= 0) {
    at[cfg.numAttrs].id = cudaLaunchAttributePreferredSharedMemoryCarveout;
    at[cfg.numAttrs++].val.sharedMemCarveout = (unsigned)cuda_launch_carveout;
  }
  return cudaLaunchKernelEx(&cfg, kernel, ((KArgs)args)...);
}

#endif
