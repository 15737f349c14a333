#!/usr/bin/env bash
# Runs on the GPU machine (no Rust there; the binaries built here are carried in .device/bin).
#   scripts/gpu-bench.sh tune [SECONDS] [autotune flags]  the autotuner, resumable: progress and table
#       in .device/tune (carried back and forth), copied to $OUT/tune; stops cleanly after SECONDS.
#   scripts/gpu-bench.sh bench [bench.py flags]  the side-by-side benchmark, with the table the
#       tuner wrote (.device/tune/attention.json) when there is one, else the builtin table.
#   scripts/gpu-bench.sh profile [SHAPE]  Nsight Compute on one shape (default 2x16x8192x128):
#       FlashCore's kernel and SDPA's flash backend (FlashAttention-2, the mma.sync competitor).
set -uo pipefail
bins=${BINS:-.device/bin}
out=${OUT:-/tmp/flashcore-out}
tune=.device/tune
mkdir -p "$out" "$tune"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$out/device.txt"
mode=${1:-bench}
shift || true
case "$mode" in
  tune)
    seconds=${1:-500}
    shift || true
    [ -f "$tune/attention.json" ] || cp tuning/attention.json "$tune/attention.json"
    "$bins/autotune" --out "$tune/attention.json" --progress "$tune/progress.jsonl" --seconds "$seconds" "$@" 2>&1 \
      | tee "$out/autotune.txt"
    status=${PIPESTATUS[0]}
    mkdir -p "$out/tune" && cp "$tune"/* "$out/tune/"
    exit "$status"
    ;;
  bench)
    if [ -f "$tune/attention.json" ]; then export FLASHCORE_TUNING="$tune/attention.json"; fi
    echo "tuning table: ${FLASHCORE_TUNING:-builtin (tuning/attention.json compiled in)}"
    python3 scripts/bench.py --flashcore "$bins/attention" --out "$out" "$@" 2>&1 | tee "$out/bench-log.txt"
    ;;
  profile)
    shape=${1:-2x16x8192x128}
    if [ -f "$tune/attention.json" ]; then export FLASHCORE_TUNING="$tune/attention.json"; fi
    for impl in flashcore sdpa-flash; do
      /usr/local/cuda/bin/ncu --launch-skip 2 --launch-count 1 -k 'regex:^attention$|flash_fwd_kernel' \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section InstructionStats \
        python3 scripts/bench.py --flashcore "$bins/attention" --out "$out/ncu-$impl" --only "$shape" \
        --impls "$impl" --iters 5 --no-graph --no-ceilings > "$out/ncu-$impl.txt" 2>&1
      echo "ncu $impl: exit $?, $(wc -l < "$out/ncu-$impl.txt") lines in $out/ncu-$impl.txt"
    done
    ;;
  *)
    echo "usage: scripts/gpu-bench.sh tune [SECONDS] | bench [flags] | profile [SHAPE]" >&2
    exit 2
    ;;
esac
