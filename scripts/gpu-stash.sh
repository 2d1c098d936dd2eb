#!/usr/bin/env bash
# Everything a CUDA run on the lent GPU needs beside the tracked tree — .gpu/ (Node, onnxruntime-node),
# the CUDA provider (from .gpu-cuda/cache) and the bundle (dist-gpu/, scripts/gpu-cuda.sh) — as one tar
# stream cut into parts that each fit one device call beside the tree (64 MiB per call, the tree counted:
# with today's ≈ 31 MiB of fixtures `.gpu` + `dist-gpu` no longer fit one call). Run from the project root
# after `bash scripts/gpu-bundle.sh && bash ../shared/gpu/pack.sh && bash ../shared/gpu/pack-cuda.sh`;
# it prints the device calls to make back to back (an idle machine goes back after 30 s), the last one
# running `gpu-cuda.sh [step…]` with the steps given here (e.g. `gpu-stash.sh ab`; none: its defaults).
# A base bundle (gpu-bundle.sh --base <rev>, for the `ab` step) travels too.
# `gpu-stash.sh --webgpu [step…]` leaves the CUDA provider out (no pack-cuda.sh needed): fewer calls, for
# steps that run on WebGPU only (gpu-cuda.sh's `webgpu`).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
cuda=1
[ "${1:-}" = --webgpu ] && { cuda=; shift; }
[ -f dist-gpu/cli.mjs ] && [ -f .gpu/prelude.sh ] \
  || { echo "gpu-stash.sh: run scripts/gpu-bundle.sh and ../shared/gpu/pack.sh first" >&2; exit 1; }
[ -z "$cuda" ] || { [ -s .gpu-cuda/cache/cuda.so.xz ] && [ -f .gpu/prelude-cuda.sh ]; } \
  || { echo "gpu-stash.sh: run ../shared/gpu/pack-cuda.sh first (or --webgpu)" >&2; exit 1; }
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.gpu-stash/' "$exclude" 2>/dev/null || echo '/.gpu-stash/' >> "$exclude"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/x/ort-cuda" "$work/x/dist-gpu"
cp -r .gpu "$work/x/gpu"
if [ -n "$cuda" ]; then
  cp .gpu-cuda/cache/cuda.so.xz "$work/x/ort-cuda/part0"   # prelude-cuda.sh reads /root/ort-cuda/part*
  cp .gpu-cuda/cache/libonnxruntime_providers_shared.so "$work/x/ort-cuda/"
fi
for f in dist-gpu/cli.mjs dist-gpu/cli-base.mjs dist-gpu/ballast.mjs dist-gpu/fp16-precision.mjs; do
  [ -f "$f" ] && xz -9 -T0 -c "$f" > "$work/x/$f.xz"
done
cp dist-gpu/no-sharp.mjs dist-gpu/photo_edit_cuda_options.node scripts/gpu-cuda.sh "$work/x/dist-gpu/"
[ -f dist-gpu/cli-base.rev ] && cp dist-gpu/cli-base.rev "$work/x/dist-gpu/"
tar cf "$work/stream.tar" -C "$work/x" .
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
room=$((64 * 1048576 - tree - 3 * 1048576))   # 3 MiB of margin: main may grow before the calls
size=$(stat -c %s "$work/stream.tar")
n=$(( (size + room - 1) / room ))
rm -rf .gpu-stash
mkdir -p .gpu-stash
split -n "$n" -d -a 2 "$work/stream.tar" "$work/chunk"
i=0
for c in "$work"/chunk*; do i=$((i + 1)); mkdir -p ".gpu-stash/$i"; mv "$c" ".gpu-stash/$i/"; done
echo "$n parts in .gpu-stash/1 … .gpu-stash/$n. Device calls, back to back:"
for k in $(seq 1 $((n - 1))); do
  echo "  carry [\".gpu-stash/$k\"]   command: mkdir -p /root/s && cp .gpu-stash/$k/* /root/s/"
done
echo "  carry [\".gpu-stash/$n\"]   command: mkdir -p /root/s && cp .gpu-stash/$n/* /root/s/ && mkdir -p /root/x && cat /root/s/chunk* | tar x -C /root/x ${cuda:+&& mkdir -p /root/ort-cuda && cp /root/x/ort-cuda/* /root/ort-cuda/ }&& rm -rf .gpu && cp -r /root/x/gpu .gpu && mkdir -p dist-gpu && for f in /root/x/dist-gpu/*.xz; do xz -dc \$f > dist-gpu/\$(basename \$f .xz); done && cp /root/x/dist-gpu/no-sharp.mjs /root/x/dist-gpu/photo_edit_cuda_options.node /root/x/dist-gpu/gpu-cuda.sh dist-gpu/ && { cp /root/x/dist-gpu/cli-base.rev dist-gpu/ 2>/dev/null || true; } && source .gpu/prelude.sh ${cuda:+&& source .gpu/prelude-cuda.sh }&& bash dist-gpu/gpu-cuda.sh $* > \$OUT/stdout.log 2>&1; tail -c 11000 \$OUT/run.log"
