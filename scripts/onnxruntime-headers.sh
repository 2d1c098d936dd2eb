#!/usr/bin/env bash
# Puts onnxruntime's C API header (onnxruntime_c_api.h, from Debian's libonnxruntime-dev 1.21) under
# .cache/onnxruntime-headers, for the test that checks the CUDA options add-on's OrtApi positions
# (test/engine/runtime/cuda-options.test.ts). The package is fetched from Debian's archive and checked
# against its SHA-256; nothing is installed. Set ORT_HEADERS_DEB to a copy of the .deb to skip the download.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/onnxruntime-headers
[ -s "$dest/onnxruntime_c_api.h" ] && exit 0
deb_name=libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb
sha256=14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${ORT_HEADERS_DEB:-}" ]; then
  cp "$ORT_HEADERS_DEB" "$work/$deb_name"
else
  # The pool path of Debian 13 (trixie); snapshot.debian.org keeps it after the archive moves on.
  curl -fsSL --retry 3 -o "$work/$deb_name" "http://deb.debian.org/debian/pool/main/o/onnxruntime/$deb_name" \
    || curl -fsSL --retry 3 -o "$work/$deb_name" \
      "http://snapshot.debian.org/archive/debian/20250601T000000Z/pool/main/o/onnxruntime/$deb_name"
fi
echo "$sha256  $work/$deb_name" | sha256sum -c --quiet -
dpkg-deb -x "$work/$deb_name" "$work/x"
mkdir -p "$dest"
cp "$work/x/usr/include/onnxruntime/onnxruntime_c_api.h" "$dest/"
echo "onnxruntime-headers: $dest/onnxruntime_c_api.h (onnxruntime 1.21)"
