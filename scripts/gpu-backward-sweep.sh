#!/usr/bin/env bash
# Runs on the GPU machine: the backward kernels under several schedules at 2x16x8192x{128,64} (the
# tile flags apply to both kernels; the example prints each kernel's time). Binaries in .device/bin.
set -uo pipefail
B=.device/bin/attention_backward
for flags in "" "--tile-n 32 --stages 1 --a-in-smem" "--tile-n 32 --a-in-smem" "--tile-n 64 --a-in-smem" "--tile-n 32" "--tile-m 128 --warps 8 --tile-n 32 --a-in-smem" "--tile-m 128 --warps 8 --tile-n 16 --a-in-smem" "--tile-n 64 --stages 1 --a-in-smem"; do
  echo "== d128 $flags"; timeout 120 $B --b 2 --h 16 --s 8192 --d 128 --iters 15 --warmup 3 $flags 2>&1 | grep -E "FAIL|^dq  |^dkdv|^backward|error"
done
for flags in "" "--a-in-smem" "--tile-m 128 --warps 8" "--tile-m 128 --warps 8 --a-in-smem" "--tile-n 32" "--stages 3" "--tile-n 32 --a-in-smem"; do
  echo "== d64 $flags"; timeout 120 $B --b 2 --h 16 --s 8192 --d 64 --iters 15 --warmup 3 $flags 2>&1 | grep -E "FAIL|^dq  |^dkdv|^backward|error"
done
