/* backend.c: picks a compute backend by device name ("cpu", "auto", "cuda[:N]"). */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "worker/backend/backend.h"
#ifdef STRATA_HAVE_CUDA
#include "worker/backend/cuda/backend_cuda.h"
#endif

int backend_create(backend_t **out, const char *device, int n_threads, int act_dtype) {
  *out = NULL;
  if (!device || !*device) device = "auto";
  if (strncmp(device, "cuda", 4) == 0 && (device[4] == '\0' || device[4] == ':')) {
#ifdef STRATA_HAVE_CUDA
    char *end = NULL;
    long idx = device[4] == ':' ? strtol(device + 5, &end, 10) : 0;
    if (device[4] == ':' && (end == device + 5 || *end != '\0' || idx < 0 || idx > 1024)) {
      log_error("backend '%s': bad device index; use cuda or cuda:N", device);
      return STRATA_EINVAL;
    }
    return backend_cuda_create(out, (int)idx, act_dtype);
#endif
    log_error("backend '%s': this build has no CUDA backend (rebuild with -DSTRATA_CUDA=ON), use --device cpu",
              device);
    return STRATA_EUNSUPPORTED;
  }
  if (strcmp(device, "cpu") != 0 && strcmp(device, "auto") != 0) {
    log_error("backend '%s': unknown device; use cpu, auto or cuda[:N]", device);
    return STRATA_EINVAL;
  }
#ifdef STRATA_HAVE_CUDA
  /* "auto": the first GPU when one is present */
  if (strcmp(device, "auto") == 0 && backend_cuda_available()) return backend_cuda_create(out, 0, act_dtype);
#endif
  if (act_dtype != -1 && act_dtype != DTYPE_F32) {
    log_error("backend '%s': activation dtype %s is not supported on the CPU (f32 only)", device,
              dtype_name((dtype_t)act_dtype));
    return STRATA_EUNSUPPORTED;
  }
  return backend_cpu_create(out, n_threads);
}

int backend_device_is_gpu(const char *device) {
  if (!device || !*device) device = "auto";
  if (strncmp(device, "cuda", 4) == 0 && (device[4] == '\0' || device[4] == ':')) return 1;
#ifdef STRATA_HAVE_CUDA
  if (strcmp(device, "auto") == 0) return backend_cuda_available();
#endif
  return 0;
}

void backend_destroy(backend_t *be) {
  if (!be) return;
  if (be->ops && be->ops->destroy) be->ops->destroy(be);
}
