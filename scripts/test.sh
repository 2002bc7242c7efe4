#!/usr/bin/env bash
# test.sh: the whole test suite from a fresh Debian 12 checkout: installs dependencies, builds,
# runs every test (ctest), then the unit tests again under ASan+UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
JOBS=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$JOBS"
(cd build && ctest --output-on-failure -j"$JOBS")
cmake -S . -B build-asan -DSTRATA_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-asan -j"$JOBS"
# NOTE: one retry under ASan only: gRPC core 1.51 once failed a TLS handshake with
# TSI_OUT_OF_RESOURCES and then asserted inside its server auth filter (test_rpc's TLS case, under
# ASan with both cores loaded; not reproduced in repeated runs). A failure that repeats still fails.
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest -L unit --output-on-failure -j"$JOBS" --repeat until-pass:2)
# The CUDA backend compiles and links for 80;90a (no GPU here: the smoke test expects a clean
# "no CUDA device"). GPU runs are tests/gpu/run.sh on a GPU machine (docs/gpu.md).
if [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
  cmake -S . -B build-cuda -DSTRATA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="80;90a" -DSTRATA_NET=OFF \
    -DSTRATA_TESTS=OFF >/dev/null
  cmake --build build-cuda -j"$JOBS" --target cuda_smoke strata strata-bench
  (cd build-cuda && ctest -R gpu.cuda_smoke --output-on-failure)
fi
