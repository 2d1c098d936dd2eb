#!/usr/bin/env bash
# Builds dist-gpu/cli.mjs: the whole CLI as one ESM file for the lent GPU machine, where only
# onnxruntime-node is unpacked beside it (../shared/gpu/README.md). sharp's native libvips does not fit
# the 64 MiB that may travel with the tree, so it is aliased to a module that fails loudly when used:
# the GPU benchmarks time the engine, and image decoding/grids are timed on the CPU machine instead.
#   bash scripts/gpu-bundle.sh [--base <rev>]   --base: also dist-gpu/cli-base.mjs, the CLI of commit <rev>
#                                               (with this tree's node_modules), for gpu-cuda.sh's `ab` step
set -euo pipefail
cd "$(dirname "$0")/.."
base=
case ${1:-} in
  --base) base=${2:?"gpu-bundle.sh: --base needs a commit"} ;;
  "") ;;
  *) echo "gpu-bundle.sh: unknown argument $1 (usage: gpu-bundle.sh [--base <rev>])" >&2; exit 2 ;;
esac
exclude="$(git rev-parse --git-path info/exclude)"   # a worktree's .git is a file
grep -qx '/dist-gpu/' "$exclude" 2>/dev/null || echo '/dist-gpu/' >> "$exclude"
mkdir -p dist-gpu
cat > dist-gpu/no-sharp.mjs <<'JS'
const fail = () => { throw new Error("sharp is not bundled for the GPU machine (scripts/gpu-bundle.sh)"); };
export default fail;
JS
bundle() { # entry, outfile
  npx esbuild "$1" --bundle --minify --platform=node --format=esm --log-level=warning \
    --external:onnxruntime-node --alias:sharp=./dist-gpu/no-sharp.mjs --outfile="$2"
  echo "$2: $(du -h "$2" | cut -f1)"
}
bundle src/cli/index.ts dist-gpu/cli.mjs
bundle scripts/gpu-ballast.ts dist-gpu/ballast.mjs   # gpu-cuda.sh's card16: a 16 GiB card on the H200
bundle scripts/fp16-precision.ts dist-gpu/fp16-precision.mjs   # gpu-cuda.sh's webgpu
# The CUDA options add-on, built here (the GPU machine may have no compiler); gpu-cuda.sh installs it.
npx tsx -e 'import("./src/engine/runtime/cuda-options.ts").then((m) => m.buildCudaOptionsAddon("dist-gpu")).then((f) => console.log(f))'
rm -f dist-gpu/cli-base.mjs dist-gpu/cli-base.rev
if [ -n "$base" ]; then
  # The commit's sources inside the project, so that its imports resolve to this tree's node_modules.
  rev=$(git rev-parse --verify "$base^{commit}")
  rm -rf dist-gpu/base && mkdir -p dist-gpu/base
  git archive "$rev" src package.json | tar x -C dist-gpu/base
  bundle dist-gpu/base/src/cli/index.ts dist-gpu/cli-base.mjs
  echo "$rev" > dist-gpu/cli-base.rev
  rm -rf dist-gpu/base
fi
