#!/usr/bin/env bash
# Runs on the GPU machine: BSHD against BHSD and bf16 against f16, side by side at the headline
# shape and a large shape (D 64 and 128, causal and GQA included), every cell checked against
# float64. (The .npy path in BSHD and bf16 is in gpu-features.sh.)
# usage: scripts/gpu-layout-dtype.sh .device/bin/attention  (writes $OUT/layout-dtype.txt)
set -uo pipefail
bin=${1:-.device/bin/attention}
out=${OUT:-.}
{
for shape in "--b 1 --h 8 --s 512" "--b 2 --h 16 --s 8192"; do
  for d in 64 128; do
    for extra in "" "--causal" "--hkv 2"; do
      for dtype in f16 bf16; do
        for layout in bhsd bshd; do
          iters="--iters 50 --warmup 10"
          row=$(timeout 200 "$bin" $shape --d $d $extra --dtype $dtype --layout $layout $iters 2>&1 | tail -1)
          printf '%-22s D=%-3s %-8s %-4s %-4s :: %s\n' "$shape" "$d" "${extra:-full}" "$dtype" "$layout" "$row"
        done
      done
    done
  done
done
} 2>&1 | tee "$out/layout-dtype.txt"
