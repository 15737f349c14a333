#!/usr/bin/env bash
# Runs on the GPU machine: bias_attention's float64 checks, then the additive-bias row and full
# attention of scripts/bench_variants.py at 4x16x4096x64.
set -uo pipefail
OUT=${OUT:-/tmp/flashcore-out}
mkdir -p "$OUT"
B=${BINS:-.device/bin}/attention
for shape in "--b 2 --h 4 --s 1000 --sk 1300 --d 128" "--b 1 --h 8 --hkv 2 --s 4097 --d 64 --causal" "--b 2 --h 4 --s 777 --d 64 --dtype bf16 --causal"; do
  echo "bias_attention $shape: $($B --kernel bias_attention $shape --iters 3 --warmup 1 2>&1 | tail -1)"
done > $OUT/bias-check.txt
python3 scripts/bench_variants.py --flashcore $B --out $OUT/bias --only "bias" --shapes 4x16x4096x64 --iters 30 > $OUT/bias.txt 2>&1
python3 scripts/bench_variants.py --flashcore $B --out $OUT/full --only "full" --shapes 4x16x4096x64 --iters 30 > $OUT/full.txt 2>&1
echo done
