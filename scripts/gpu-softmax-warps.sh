#!/usr/bin/env bash
# Runs on the GPU machine: softmax on its own warps (one per compute warp, and one streaming warp
# for all rows) against softmax fused into the compute warps; every cell checked against float64.
set -uo pipefail
bin=${1:-.device/bin/attention}
for shape in "--b 1 --h 8 --s 512" "--b 4 --h 16 --s 4096"; do
  for d in 64 128; do
    for cfg in "--stages 1 --load-warps 1 --softmax-warps 4" "--stages 2 --load-warps 1 --softmax-warps 4" \
               "--stages 3 --load-warps 4 --softmax-warps 4 --persistent" "--stages 2 --load-warps 1 --softmax-warps 1" \
               "--stages 2 --load-warps 1"; do
      row=$(timeout 60 "$bin" $shape --d $d $cfg --iters 20 --warmup 5 2>&1 | tail -1)
      echo "$shape --d $d $cfg :: $row"
    done
  done
done
