#!/usr/bin/env bash
# Builds dist-gpu/cli.mjs: the whole CLI as one ESM file for the lent GPU machine, where only
# onnxruntime-node is unpacked beside it (../shared/gpu/README.md). sharp's native libvips does not fit
# the 64 MiB that may travel with the tree, so it is aliased to a module that fails loudly when used:
# the GPU benchmarks time the engine, and image decoding/grids are timed on the CPU machine instead.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"   # a worktree's .git is a file
grep -qx '/dist-gpu/' "$exclude" 2>/dev/null || echo '/dist-gpu/' >> "$exclude"
mkdir -p dist-gpu
cat > dist-gpu/no-sharp.mjs <<'JS'
const fail = () => { throw new Error("sharp is not bundled for the GPU machine (scripts/gpu-bundle.sh)"); };
export default fail;
JS
npx esbuild src/cli/index.ts --bundle --minify --platform=node --format=esm --log-level=warning \
  --external:onnxruntime-node --alias:sharp=./dist-gpu/no-sharp.mjs --outfile=dist-gpu/cli.mjs
echo "dist-gpu/cli.mjs: $(du -h dist-gpu/cli.mjs | cut -f1)"
