#!/usr/bin/env bash
# The CUDA measurements of docs/PERFORMANCE.md in one device call, on the lent GPU machine after
# `source .gpu/prelude.sh && source .gpu/prelude-cuda.sh` (../shared/gpu/README.md, "CUDA"), from the
# bundle (scripts/gpu-bundle.sh). Most important first: a run cut short by the call's time limit keeps
# what it measured in $OUT (run.log, the JSON files, nvidia-smi's memory samples).
#   bash scripts/gpu-cuda.sh [step…]    steps: setup options imagic parity sd loss16 imagic16 (default: all),
#                                       photoswap, shape, ab, full, full16, shape-full, profile, card<GiB>-fp16|fp32,
#                                       cuda-options, fp32-smoke, graphs, parity-graph, full16-graph-opts,
#                                       full16-large, sdpa, ab-unet, card<GiB>-large, webgpu, webgpu-full
#                                       (only when named); STEP-graph: the step's bench with CUDA graphs
#                                       (--cuda-option enable_cuda_graph=1), e.g. full16-graph, card16-fp16-graph
# ab: the gradient steps (loss + d/d context, loss + d/d LoRA, 512², fp32, 10 runs) from the bundle of
# another commit (dist-gpu/cli-base.mjs, `gpu-bundle.sh --base <rev>`) and then from this one, ≈ 2–3 min;
# AB_DEVICE and AB_ARGS (extra bench sd options) let it run elsewhere, e.g. AB_DEVICE=cpu AB_ARGS=--tiny.
# ab-unet: the UNet step (fp16) that way, with README's large-card options.
set -u
OUT=${OUT:-/tmp/gpu-cuda-out}
mkdir -p "$OUT"
cli=${GPU_CLI:-node dist-gpu/cli.mjs}   # GPU_CLI="node dist-gpu/cli-base.mjs": a step with the base bundle
steps=${*:-setup options imagic parity sd loss16 imagic16}
step() { # label, seconds, command…
  local label=$1 limit=$2
  shift 2
  echo "=== $label: $* ($(date -u +%T))" | tee -a "$OUT/run.log"
  # pino's JSON lines below warnings (trace, debug, info) stay out; warnings and errors are kept.
  timeout "$limit" "$@" 2>&1 | grep -v '^{"level":[123]0,' | tee -a "$OUT/run.log"
  echo "--- $label exit ${PIPESTATUS[0]} ($(date -u +%T))" | tee -a "$OUT/run.log"
}
# The CUDA options add-on (built by gpu-bundle.sh) where `setup cuda` puts it: beside the binding.
cp dist-gpu/photo_edit_cuda_options.node node_modules/onnxruntime-node/bin/napi-v6/linux/x64/
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv | tee -a "$OUT/run.log"
# README's CUDA options for a large card (graphs, NHWC, heuristic cuDNN search, bias-fused convolutions).
large_card=(--cuda-option enable_cuda_graph=1 --cuda-option prefer_nhwc=1 --cuda-option cudnn_conv_algo_search=HEURISTIC
  --cuda-option fuse_conv_bias=1)
large_card_sd=("${large_card[@]/--cuda-option/--ep-option}")   # the same for bench sd, whose flag is --ep-option
large_setup=("${large_card[@]}" --training-sessions per-stage)   # README's large-card setup for Imagic
# ab: `bench sd --only <components> [options…]` from the base bundle, then from this one.
ab() {
  [ -f dist-gpu/cli-base.mjs ] || { echo "gpu-cuda.sh: ab needs dist-gpu/cli-base.mjs (gpu-bundle.sh --base <rev>)" >&2; return; }
  echo "ab: base $(cat dist-gpu/cli-base.rev 2>/dev/null || echo '?') against this bundle" | tee -a "$OUT/run.log"
  local only=$1 b bin
  shift
  for b in base fix; do
    bin=dist-gpu/cli.mjs
    [ "$b" = base ] && bin=dist-gpu/cli-base.mjs
    step "ab-$b" 110 node "$bin" bench sd --device "${AB_DEVICE:-cuda}" --only "$only" --runs 10 "$@" \
      --json "$OUT/ab-$b.json"
  done
}
for s in $steps; do
  graph=()
  case $s in *-graph) graph=(--cuda-option enable_cuda_graph=1) ;; esac
  case ${s%-graph} in
    # The provider's checks (versions, CUDA 13, cuDNN 9, driver, GPU) on a machine that has them.
    setup) step setup 60 $cli setup cuda --check ;;
    # Whether the CUDA provider reads options from session config entries (onnxruntime-node passes it
    # only deviceId): with a 1 MiB memory limit honoured, the tiny UNet cannot run.
    options)
      step options-default 60 $cli bench sd --tiny --device cuda --only unet --runs 2
      for key in ep.cuda.gpu_mem_limit ep.cudaexecutionprovider.gpu_mem_limit; do
        step "options-$key" 60 $cli bench sd --tiny --device cuda --only unet --runs 2 --session-config "$key=1048576"
      done ;;
    # The CUDA provider's options through the add-on: the UNet step (fp16) and the LoRA step (fp16
    # training) under each set, spelled out whole (the first is onnxruntime's defaults, the last ours).
    cuda-options)
      for set in "prefer_nhwc=0 cudnn_conv_algo_search=EXHAUSTIVE fuse_conv_bias=0" \
        "prefer_nhwc=1 cudnn_conv_algo_search=EXHAUSTIVE fuse_conv_bias=0" \
        "prefer_nhwc=0 cudnn_conv_algo_search=HEURISTIC fuse_conv_bias=0" \
        "prefer_nhwc=1 cudnn_conv_algo_search=HEURISTIC fuse_conv_bias=0" \
        "prefer_nhwc=0 cudnn_conv_algo_search=DEFAULT fuse_conv_bias=0" \
        "prefer_nhwc=0 cudnn_conv_algo_search=EXHAUSTIVE fuse_conv_bias=1" \
        "prefer_nhwc=1 cudnn_conv_algo_search=EXHAUSTIVE fuse_conv_bias=1" \
        "prefer_nhwc=1 cudnn_conv_algo_search=HEURISTIC fuse_conv_bias=1"; do
        args=()
        for o in $set; do args+=(--ep-option "$o"); done
        step "cuda-options ${set// /,}" 200 $cli bench sd --device cuda --only unet,loss-lora --loss-dtype fp16 \
          --runs 10 "${args[@]}" --json "$OUT/sd-cuda-options-${set// /+}.json"
      done ;;
    # CUDA graphs (enable_cuda_graph=1: the add-on binds the sessions' inputs and outputs, native/bound-runs.c):
    # the UNet step (fp16) and both gradient steps (fp16 training) without, with, and with the option set above.
    graphs)
      for set in "" "enable_cuda_graph=1" \
        "enable_cuda_graph=1 prefer_nhwc=1 cudnn_conv_algo_search=HEURISTIC fuse_conv_bias=1"; do
        args=()
        for o in $set; do args+=(--ep-option "$o"); done
        step "graphs ${set// /,}" 240 $cli bench sd --device cuda --only unet,loss-context,loss-lora --loss-dtype fp16 \
          --runs 10 "${args[@]}" --json "$OUT/sd-graphs-${set// /+}.json"
      done ;;
    parity-graph) step parity-graph 150 $cli bench parity --device cuda --cuda-option enable_cuda_graph=1 \
      --json "$OUT/parity-cuda-graph.json" ;;
    # Imagic `balanced` in full with CUDA graphs and the option set above; then the same job again in the
    # worker, timed end to end (its encode and decode sessions warm too).
    full16-graph-opts) step full16-graph-opts 580 $cli bench imagic --device cuda --preset balanced --batches none \
      --second-job --train-dtype fp16 "${large_card[@]}" --json "$OUT/imagic-balanced-full-fp16-graph-opts.json" ;;
    # The UNet step under the attention kernels the provider may pick (sdpa_kernel, a bit set of
    # onnxruntime's AttentionBackend: 0 lets it choose, 1 flash, 2 memory-efficient, 8 cuDNN flash), with
    # graphs and the option set.
    sdpa)
      for k in 0 1 2 8; do
        step "sdpa $k" 120 $cli bench sd --device cuda --only unet --runs 10 "${large_card_sd[@]}" \
          --ep-option sdpa_kernel=$k --json "$OUT/sd-sdpa-$k.json"
      done ;;
    # The large-card setup of README: the same with Imagic's training sessions per stage.
    full16-large) step full16-large 580 $cli bench imagic --device cuda --preset balanced --batches none \
      --second-job --train-dtype fp16 "${large_setup[@]}" --json "$OUT/imagic-balanced-full-fp16-large.json" ;;
    # The defaults (CUDA_OPTION_DEFAULTS) in fp32 too, a few runs: every session builds and runs.
    fp32-smoke) step fp32-smoke 170 $cli bench sd --device cuda --dtype fp32 --only unet,loss-context,loss-lora --runs 3 ;;
    imagic) step imagic 260 $cli bench imagic --device cuda --preset balanced --steps-scale 0.02 --batches none \
      --json "$OUT/imagic-balanced.json" ;;
    sd) step sd 170 $cli bench sd --device cuda --only unet,loss-context,loss-lora --runs 10 --json "$OUT/sd-cuda.json" ;;
    parity) step parity 100 $cli bench parity --device cuda --json "$OUT/parity-cuda.json" ;;
    loss16) step loss16 100 $cli bench sd --device cuda --only loss-context,loss-lora --loss-dtype fp16 --runs 10 \
      --json "$OUT/sd-cuda-loss16.json" ;;
    imagic16) step imagic16 200 $cli bench imagic --device cuda --preset balanced --steps-scale 0.02 --batches none \
      --train-dtype fp16 --json "$OUT/imagic-balanced-fp16.json" ;;
    # Concept learning (fast preset) and both inversions at 50 steps, 10 % of each stage run; the swap of 4
    # variants and a cached-concept swap end to end at the full 50 steps (bench photoswap).
    photoswap) step "$s" 450 $cli bench photoswap --device cuda --steps-scale 0.1 "${graph[@]}" --json "$OUT/$s-cuda.json" ;;
    # shellcheck disable=SC2086 # AB_ARGS holds several options
    ab) ab loss-context,loss-lora ${AB_ARGS:-} ;;
    ab-unet) ab unet "${large_card_sd[@]}" ;;
    # Issue 11: a 512×768 photo (64×96 latents) next to 512², UNet step and gradient steps, then Imagic
    # `balanced` at both sizes in one process (each size's sessions built, and released, on their own).
    shape)
      step shape-sd 150 $cli bench sd --device cuda --only unet,loss-lora --size 512,512x768 --runs 10 \
        --json "$OUT/sd-shape-cuda.json"
      step shape-imagic 360 $cli bench imagic --device cuda --preset balanced --steps-scale 0.02 --batches none \
        --size 512,512x768 --json "$OUT/imagic-shape-cuda.json" ;;
    # Imagic `balanced` run in full (every step of every stage, no extrapolation): the headline numbers.
    full) step full 580 $cli bench imagic --device cuda --preset balanced --batches none \
      --json "$OUT/imagic-balanced-full.json" ;;
    full16) step "$s" 580 $cli bench imagic --device cuda --preset balanced --batches none --train-dtype fp16 \
      --second-job "${graph[@]}" --json "$OUT/imagic-balanced-$s.json" ;;
    shape-full) step shape-full 580 $cli bench imagic --device cuda --preset balanced --batches none --size 512x768 \
      --json "$OUT/imagic-balanced-full-512x768.json" ;;
    # Where the UNet step and the LoRA step spend their time: onnxruntime's profiler, one file per session.
    profile) step profile 200 $cli bench sd --device cuda --only unet,loss-lora --runs 5 --profile /tmp/prof \
      --json "$OUT/sd-profile.json" ;;
    # Imagic `balanced` in full on a smaller card, e.g. card16-fp16 (16 GiB, fp16 training) or card24-fp32:
    # dist-gpu/ballast.mjs (scripts/gpu-ballast.ts) holds the rest of the H200 in arenas of its own, so a
    # run that completes needed at most that much (the goal of issue 14: 16 GB). Each times the second job too.
    card*-fp16 | card*-fp32 | card*-large)
      gib=${s#card}
      gib=${gib%%-*}
      node dist-gpu/ballast.mjs "$gib" > "$OUT/ballast-$s.log" 2>&1 &
      ballast=$!
      until grep -q "^ballast: holding" "$OUT/ballast-$s.log" 2>/dev/null; do
        kill -0 "$ballast" 2>/dev/null || break
        sleep 1
      done
      tee -a "$OUT/run.log" < "$OUT/ballast-$s.log"
      if kill -0 "$ballast" 2>/dev/null; then
        dtype=${s%-graph}
        dtype=${dtype##*-}
        setup=("${graph[@]}" --second-job)
        # -large: README's large-card setup (the option set, training sessions per stage), fp16 training,
        # and the second job timed end to end.
        [ "$dtype" = large ] && dtype=fp16 && setup=("${large_setup[@]}" --second-job)
        step "$s" 420 $cli bench imagic --device cuda --preset balanced --batches none --train-dtype "$dtype" \
          "${setup[@]}" --json "$OUT/imagic-balanced-$s.json"
        kill "$ballast"
        wait "$ballast" 2>/dev/null
      fi ;;
    # WebGPU on the same card (no CUDA provider needed: `gpu-stash.sh --webgpu webgpu`): the VAE and UNet
    # steps, a short Imagic job from photo to grid, and the fixture goldens (docs/ENGINE.md, "GPU parity").
    webgpu)
      step webgpu-sd 150 $cli bench sd --device webgpu --only vae-encode,vae-decode,unet --runs 5 \
        --json "$OUT/sd-webgpu.json"
      step webgpu-imagic 240 $cli bench imagic --device webgpu --preset fast --steps-scale 0.02 --batches none \
        --json "$OUT/imagic-fast-webgpu.json"
      step webgpu-parity 150 $cli bench parity --device webgpu --json "$OUT/parity-webgpu.json"
      step webgpu-fp16 200 node dist-gpu/fp16-precision.mjs --device webgpu --latents 64 --cpu-reference ;;
    # Imagic `fast` on WebGPU run in full (every step, no extrapolation): its headline number.
    webgpu-full) step webgpu-full 580 $cli bench imagic --device webgpu --preset fast --batches none \
      --json "$OUT/imagic-fast-full-webgpu.json" ;;
    *) echo "gpu-cuda.sh: unknown step $s" >&2 ;;
  esac
done
