#!/usr/bin/env bash
# Runs on the GPU machine: the softcap rows of scripts/bench_variants.py, the autotuner on
# softcap_attention (D=64, large class, 200 s), then the tuned entry against the benchmark's flags.
set -uo pipefail
OUT=${OUT:-/tmp/flashcore-out}
mkdir -p "$OUT"
B=${BINS:-.device/bin}
python3 scripts/bench_variants.py --flashcore $B/attention --out $OUT --only softcap --iters 30 > $OUT/softcap.txt 2>&1
timeout 280 $B/autotune --kernel softcap_attention --softcap 30 --d 64 --causal no --classes large --seconds 200 --out $OUT/tune.json --progress $OUT/progress.jsonl > $OUT/autotune.txt 2>&1
echo "autotune exit $?" >> $OUT/autotune.txt
for t in tuned h100; do
  if [ $t = tuned ]; then flags=""; export FLASHCORE_TUNING=$OUT/tune.json; else flags="--tile-m 128 --tile-n 128 --warps 4 --stages 1 --a-in-smem"; unset FLASHCORE_TUNING; fi
  echo "== $t" >> $OUT/compare.txt
  $B/attention --kernel softcap_attention --softcap 30 --b 4 --h 16 --s 4096 --d 64 --iters 30 --warmup 5 $flags >> $OUT/compare.txt 2>&1
done
echo done
