/* cuda_smoke.c: starts the CUDA backend where there may be no GPU: without one it must report "no CUDA
 * device" cleanly (and "auto" must fall back to the CPU); with one it runs one op and checks the result.
 * Exit 0 on either path, 1 on a wrong behaviour. Runs in CI (no GPU) as ctest gpu.cuda_smoke. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/status.h"
#include "worker/backend/backend.h"
#include "worker/backend/cuda/backend_cuda.h"

/* silu_mul of a few values on the device against the formula on the host */
static int one_op(backend_t *be) {
  float gate[4] = {-2.0f, -0.5f, 0.25f, 3.0f}, up[4] = {1.5f, -1.0f, 2.0f, 0.5f}, got[4];
  void *g = be->ops->alloc(be, sizeof gate), *u = be->ops->alloc(be, sizeof up);
  int bad = !g || !u;
  if (!bad) bad = be->ops->upload(be, g, gate, sizeof gate) || be->ops->upload(be, u, up, sizeof up);
  if (!bad) {
    be->ops->silu_mul(be, g, g, u, 1, 4);
    bad = be->ops->to_host_f32(be, got, g, 4);
  }
  for (int i = 0; i < 4 && !bad; i++) {
    float want = gate[i] / (1.0f + expf(-gate[i])) * up[i];
    if (fabsf(got[i] - want) > 1e-5f * (1.0f + fabsf(want))) {
      fprintf(stderr, "cuda_smoke: silu_mul[%d] = %g, want %g\n", i, got[i], want);
      bad = 1;
    }
  }
  be->ops->free(be, g);
  be->ops->free(be, u);
  return bad;
}

int main(void) {
  backend_t *be = NULL;
  int rc = backend_create(&be, "cuda", 0, DTYPE_F32);
  if (!backend_cuda_available()) {
    if (rc != STRATA_EUNSUPPORTED || be) {
      fprintf(stderr, "cuda_smoke: without a GPU, backend_create(cuda) gave %d, want STRATA_EUNSUPPORTED\n", rc);
      return 1;
    }
    if (backend_create(&be, "auto", 1, -1) != 0 || strcmp(be->device, "cpu") != 0) {
      fprintf(stderr, "cuda_smoke: without a GPU, auto did not fall back to the CPU\n");
      backend_destroy(be);
      return 1;
    }
    backend_destroy(be);
    printf("cuda_smoke: no CUDA device: the CUDA backend declines cleanly and auto picks the CPU\n");
    return 0;
  }
  if (rc != 0) {
    fprintf(stderr, "cuda_smoke: a GPU is present but backend_create(cuda) failed: %s\n", strata_strerror(rc));
    return 1;
  }
  int bad = one_op(be);
  printf("cuda_smoke: %s: silu_mul %s\n", be->device, bad ? "WRONG" : "ok");
  backend_destroy(be);
  return bad;
}
