#!/usr/bin/env bash
# Runs on the GPU machine: a small sweep of configs at the headline shape (B=1 H=8 S=512 D=64)
# and at 4x16x4096x64, each checked against float64; the median times say which default to ship.
set -uo pipefail
bin=${1:-.device/bin/attention}
for shape in "--b 1 --h 8 --s 512" "--b 4 --h 16 --s 4096"; do
  for cfg in "--tile-m 32 --warps 2 --tile-n 32" "--tile-m 32 --warps 2 --tile-n 64" \
             "--tile-m 64 --warps 4 --tile-n 32" "--tile-m 64 --warps 4 --tile-n 64" \
             "--tile-m 128 --warps 8 --tile-n 32" "--tile-m 128 --warps 8 --tile-n 64"; do
    for stages in 2 3; do
      for lw in 0 2; do
        row=$(timeout 60 "$bin" $shape --d 64 $cfg --stages $stages --load-warps $lw --iters 100 --warmup 20 2>&1 | tail -1)
        printf '%-50s stages=%s load=%s %s\n' "$shape $cfg" "$stages" "$lw" "$row"
      done
    done
  done
done
