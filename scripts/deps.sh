#!/usr/bin/env bash
# deps.sh: installs the Debian 12 packages strata needs to build and test (idempotent).
set -euo pipefail
PKGS="build-essential cmake pkg-config git curl ca-certificates python3
  libpcre2-dev libxxhash-dev libcjson-dev libopenblas-dev
  libev-dev libhttp-parser-dev libssl-dev openssl libgrpc-dev protobuf-c-compiler libprotobuf-c-dev
  libucx-dev ucx-utils etcd-server etcd-client libcmocka-dev libcurl4-openssl-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# Node.js (test clients only): any installed node will do; Debian's own packages otherwise.
command -v node >/dev/null 2>&1 || missing="$missing nodejs npm"
if [ -n "$missing" ]; then
  echo "deps: installing:$missing" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi
