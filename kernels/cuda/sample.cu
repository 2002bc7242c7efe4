// sample.cu: sampling on the GPU (see kernels/kernels_cuda_sample.h). Not written yet: reports
// STRATA_EUNSUPPORTED, and the engine samples on the host.
#include "common/status.h"
#include "kernels/kernels_cuda_sample.h"

extern "C" size_t cuda_sample_scratch_bytes(int n, int V) {
  (void)n, (void)V;
  return 16;
}

extern "C" int cuda_sample_rows(int32_t *out, const void *x, const be_sample_t *p, int n, int V, dtype_t act,
                                void *scratch, cudaStream_t stream) {
  (void)out, (void)x, (void)p, (void)n, (void)V, (void)act, (void)scratch, (void)stream;
  return STRATA_EUNSUPPORTED;
}
