#!/usr/bin/env bash
# Runs on the GPU machine: sequence lengths that are not multiples of the tiles (S = 1 included),
# several layouts, D 64 and 128, each checked against float64 (outputs poisoned with NaN first).
set -uo pipefail
bin=${1:-.device/bin/attention}
for s in 1 17 100 500 1000 4097; do
  for d in 64 128; do
    for cfg in "--stages 2" "--stages 1" "--stages 3 --load-warps 4 --persistent" \
               "--stages 2 --load-warps 1 --softmax-warps 4" "--tile-m 128 --warps 8 --tile-n 32"; do
      row=$(timeout 60 "$bin" --b 2 --h 3 --s $s --d $d $cfg --iters 5 --warmup 1 2>&1 | tail -1)
      printf 'S=%-5s D=%-4s %-45s %s\n' "$s" "$d" "$cfg" "$row"
    done
  done
done
