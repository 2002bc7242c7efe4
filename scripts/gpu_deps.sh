#!/usr/bin/env bash
# gpu_deps.sh: packs into .deps/ (ignored) what the GPU machine lacks to build and run strata without the
# network stack: PCRE2, cJSON and xxHash (headers, shared libraries, relocatable pkg-config files), the
# pkgconf binary, and the small test models tests/gpu/run.sh uses. The GPU command then sets
#   PKG_CONFIG_PATH=$PWD/.deps/lib/pkgconfig LD_LIBRARY_PATH=$PWD/.deps/lib
# and the device `run` call names .deps in `carry`. Run it from anywhere on a development machine.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${STRATA_MODELS_DIR:-$(pwd)/../shared/models}
LIBDIR=/usr/lib/x86_64-linux-gnu
D=.deps
rm -rf "$D"
mkdir -p "$D/lib/pkgconfig" "$D/include/cjson" "$D/bin" "$D/models"

cp /usr/include/pcre2.h /usr/include/xxhash.h /usr/include/xxh3.h "$D/include/"
cp /usr/include/cjson/cJSON.h "$D/include/cjson/"
for lib in libpcre2-8 libcjson libxxhash; do
  cp -P "$LIBDIR/$lib".so* "$D/lib/"         # the dev symlink, the soname link and the real file
  pc="$LIBDIR/pkgconfig/$lib.pc"
  # relocatable: every path hangs off the folder the .pc file lies in
  { echo 'prefix=${pcfiledir}/../..'; grep -v '^prefix=' "$pc"; } |
    sed -e 's|^exec_prefix=.*|exec_prefix=${prefix}|' \
      -e 's|^libdir=.*|libdir=${prefix}/lib|' -e 's|^includedir=.*|includedir=${prefix}/include|' \
      >"$D/lib/pkgconfig/$lib.pc"
done
# libcurl: only so that configuring finds it (coordinator/ asks for it even with STRATA_NET=OFF); the GPU
# targets do not link it
mkdir -p "$D/include/curl"
cp /usr/include/x86_64-linux-gnu/curl/*.h "$D/include/curl/" 2>/dev/null || cp /usr/include/curl/*.h "$D/include/curl/"
{ echo 'prefix=${pcfiledir}/../..'; grep -v '^prefix=' "$LIBDIR/pkgconfig/libcurl.pc"; } |
  sed -e 's|^exec_prefix=.*|exec_prefix=${prefix}|' -e 's|^libdir=.*|libdir=${prefix}/lib|' \
      -e 's|^includedir=.*|includedir=${prefix}/include|' -e 's|^Requires.private:.*||' >"$D/lib/pkgconfig/libcurl.pc"
# pkg-config itself (CMake's FindPkgConfig needs it); used only where the machine has none
cp /usr/bin/pkgconf "$D/bin/pkg-config"
cp -P "$LIBDIR"/libpkgconf.so* "$D/lib/"

# test models: stories260K (GGUF + HF layout) and its reference text
cp -r "$MODELS/stories260K" "$MODELS/stories260K-hf" "$D/models/"
du -sh "$D"
