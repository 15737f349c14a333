#!/usr/bin/env bash
# Runs on the GPU machine (binaries built here, carried in .device/bin): the score-modifying
# variants before and after their elementwise runs were written element by element
# (emit/elementwise.rs), then against FlexAttention, then the sm_90a dK/dV schedule A/B.
#   1. A/B of the example, old build (.device/bin/attention_prev) against new, interleaved:
#      ALiBi causal at the D = 64 and D = 128 shapes of the variants benchmark, the bias at
#      smaller shapes (the example builds the f32 bias table on the host);
#   2. scripts/bench_variants.py --only alibi and --only bias (the tuning table's configs);
#   3. attention_backward at 2x16x8192x128: the shipped dK/dV schedule against 64x64, 2 stages.
# Logs go to $OUT.
set -uo pipefail
bins=${BINS:-.device/bin}
out=${OUT:-/tmp/flashcore-out}
mkdir -p "$out"
SHAPES="--kernel alibi_attention --b 4 --h 16 --s 4096 --d 64 --causal;--kernel alibi_attention --b 2 --h 16 --s 8192 --d 128 --causal;--kernel bias_attention --b 1 --h 16 --s 4096 --d 128;--kernel bias_attention --b 2 --h 16 --s 2048 --d 64" \
  ITERS=${ITERS:-30} ROUNDS=${ROUNDS:-2} timeout 240 scripts/gpu-ab.sh "$bins/attention_prev" "$bins/attention" 2>&1 | tee "$out/ab.txt"
for only in alibi bias; do
  timeout 150 python3 scripts/bench_variants.py --flashcore "$bins/attention" --out "$out/variants-$only" --only "$only" --iters 20 \
    > "$out/variants-$only.log" 2>&1
  echo "variants $only: exit $?" | tee -a "$out/status.txt"
done
for dkdv in "" "tile_n=64 stages=2"; do
  timeout 60 "$bins/attention_backward" --b 2 --h 16 --s 8192 --d 128 ${dkdv:+--dkdv-config "$dkdv"} 2>&1 | tee -a "$out/backward.txt"
done
