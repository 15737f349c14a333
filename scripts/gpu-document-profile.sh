#!/usr/bin/env bash
# Runs on the GPU machine: the document variants in scripts/bench_variants.py, both tile_n at
# 4x16x4096x64, and Nsight Compute (SourceCounters, warp states) of document ids against causal.
set -uo pipefail
OUT=${OUT:-/tmp/flashcore-out}
mkdir -p "$OUT"
B=${BINS:-.device/bin}/attention
F128="--tile-m 128 --tile-n 64 --warps 4 --stages 1 --a-in-smem"
python3 scripts/bench_variants.py --flashcore $B --out $OUT --only document --iters 30 > $OUT/doc.txt 2>&1
for tn in 64 128; do echo "doc 4x16x4096x64 tile_n $tn:"; $B --kernel document_attention --b 4 --h 16 --s 4096 --d 64 --causal --doc-len 1000 --tile-m 128 --tile-n $tn --warps 4 --stages 1 --a-in-smem --iters 30 --warmup 5 2>&1 | tail -1; done >> $OUT/doc.txt
NCU="/usr/local/cuda/bin/ncu --launch-skip 2 --launch-count 1 --section SpeedOfLight --section WarpStateStats --section InstructionStats --section Occupancy --section SourceCounters"
$NCU -k regex:document_attention $B --kernel document_attention --b 2 --h 16 --s 8192 --d 128 --causal --doc-len 1000 $F128 --iters 3 --warmup 1 > $OUT/ncu-doc.txt 2>&1
$NCU -k regex:'^attention$' $B --b 2 --h 16 --s 8192 --d 128 --causal $F128 --iters 3 --warmup 1 > $OUT/ncu-causal.txt 2>&1
echo done
