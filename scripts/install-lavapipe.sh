#!/usr/bin/env bash
# Mesa's lavapipe, a software Vulkan driver, so that the tests can run onnxruntime's WebGPU provider on a
# machine without a GPU (test/engine/runtime/webgpu.test.ts): it builds and runs the same WGSL pipelines,
# within a device's limits. Debian 12's mesa (22.3) lacks a feature Dawn requires
# (shaderUniform*ArrayDynamicIndexing: "No supported adapters"); bookworm-backports' 25.0 has it.
# The engine's `auto` never picks such an adapter (no GPU device node: src/engine/runtime/device.ts).
set -euo pipefail
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
target=()
# shellcheck disable=SC1091 # the running system's release file
. /etc/os-release
if [ "${VERSION_CODENAME:-}" = bookworm ]; then
  echo "deb http://deb.debian.org/debian bookworm-backports main" |
    "${as_root[@]}" tee /etc/apt/sources.list.d/bookworm-backports.list > /dev/null
  target=(-t bookworm-backports)
fi
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${target[@]}" mesa-vulkan-drivers libvulkan1 > /dev/null
echo "lavapipe: mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)"
