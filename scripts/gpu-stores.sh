#!/usr/bin/env bash
# Runs on the GPU machine (no Rust there; binaries built here are carried in .device/bin):
#   1. the element-store and column-reduction kernels of tests/stores.rs on the GPU
#      (.device/bin/stores, the test binary: `element_stores_run_on_the_gpu`), against float64;
#   2. every attention variant checked and timed next to FlexAttention and SDPA
#      (scripts/gpu-bench.sh variants, with the flags given here);
#   3. sliding window's backward at 2x16x8192x128 (attention_backward --window 1024,0), against
#      float64 on sampled rows, timed;
#   4. the grouped dK/dV kernel (range loops; .device/bin/backward, tests/backward.rs's test
#      binary: `grouped_dkdv_runs_on_the_gpu`), against float64, 5 runs hashed, timed.
# `scripts/gpu-stores.sh grouped` runs step 4 only. Logs go to $OUT.
set -uo pipefail
bins=${BINS:-.device/bin}
out=${OUT:-/tmp/flashcore-out}
mkdir -p "$out"
if [ "${1:-}" = grouped ]; then
  "$bins/backward" grouped_dkdv_runs_on_the_gpu --nocapture 2>&1 | tee "$out/grouped.txt"
  exit "${PIPESTATUS[0]}"
fi
"$bins/stores" element_stores_run_on_the_gpu --nocapture 2>&1 | tee "$out/stores.txt"
stores=${PIPESTATUS[0]}
"$bins/attention_backward" --b 2 --h 16 --s 8192 --d 128 --window 1024,0 --repeat 5 2>&1 | tee "$out/backward-window.txt"
backward=${PIPESTATUS[0]}
scripts/gpu-bench.sh variants "$@"
variants=$?
"$bins/backward" grouped_dkdv_runs_on_the_gpu --nocapture 2>&1 | tee "$out/grouped.txt"
grouped=${PIPESTATUS[0]}
echo "stores: exit $stores; backward window: exit $backward; variants: exit $variants; grouped: exit $grouped" | tee "$out/status.txt"
