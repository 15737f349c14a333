#!/usr/bin/env bash
# Runs on the GPU machine: the seed kernel's layout, 4 load + 11 compute + 1 softmax warps
# (tile_m = 176, the single softmax warp streaming the rows), over issue 3's table.
set -uo pipefail
bin=${1:-.device/bin/attention}
for shape in "--b 1 --h 8 --s 512" "--b 4 --h 16 --s 512" "--b 1 --h 8 --s 4096" "--b 4 --h 16 --s 4096"; do
  for d in 64 128; do
    for st in 1 2 3; do
      for p in "" "--persistent"; do
        row=$(timeout 60 "$bin" $shape --d $d --tile-m 176 --warps 11 --load-warps 4 --softmax-warps 1 --stages $st $p --iters 3 --warmup 1 2>&1 | tail -1)
        echo "$shape --d $d 4load+11compute+1softmax stages=$st ${p:---one-per-cta} :: $row"
      done
    done
  done
done
