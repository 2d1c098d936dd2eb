#!/usr/bin/env bash
# Runs bench sd variants on the lent GPU in one device call (docs/PERFORMANCE.md, "SD on WebGPU"):
#   bash scripts/gpu-sd-perf.sh <variant>...   where each variant is "<label>|<bench sd arguments>".
# Logs to $OUT/perf.log; GPU memory sampled every second into $OUT/mem.log. Each variant gets its own
# node process (a fresh WebGPU device) and at most PERF_TIMEOUT seconds (default 150).
set -u
OUT=${OUT:-/tmp/perf-out}
mkdir -p "$OUT"
(while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> "$OUT/mem.log" 2>/dev/null; sleep 1; done) &
sampler=$!
for v in "$@"; do
  label=${v%%|*}
  args=${v#*|}
  echo "=== $label: bench sd $args ($(date -u +%T))" | tee -a "$OUT/perf.log"
  # shellcheck disable=SC2086
  timeout "${PERF_TIMEOUT:-150}" node dist-gpu/cli.mjs bench sd --device webgpu $args 2>&1 | grep -v '^{"level"' | tee -a "$OUT/perf.log"
  echo "--- peak GPU memory so far: $(sort -n "$OUT/mem.log" | tail -1) MiB" | tee -a "$OUT/perf.log"
done
kill "$sampler"
