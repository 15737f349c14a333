#!/usr/bin/env bash
# Runs on the GPU machine (no Rust there): the example binary built here is carried in
# .device/bin. Correctness sweep, headline shape, and the .npy round trip through numpy.
set -uo pipefail
bin=${1:-.device/bin/attention}
out=${OUT:-/tmp/flashcore-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/device.txt"
echo "== sweep: D x S x (B,H), relative error vs float64 and timing"
"$bin" --sweep --iters 50 --warmup 10 2>&1 | tee "$out/sweep.txt"
echo "== headline shape B=1 H=8 S=512 D=64"
"$bin" --b 1 --h 8 --s 512 --d 64 --iters 500 --warmup 50 2>&1 | tee "$out/headline.txt"
echo "== .npy path checked by numpy"
python3 scripts/npy_check.py "$bin" 2 4 256 64 2>&1 | tee "$out/npy.txt"
python3 scripts/npy_check.py "$bin" 1 2 512 128 2>&1 | tee -a "$out/npy.txt"
echo "== the other snapshot configurations, checked against float64"
for cfg in "--tile-m 128 --warps 8" "--tile-m 128 --tile-n 32 --warps 4"; do
  for d in 64 128; do
    "$bin" $cfg --b 2 --h 4 --s 1024 --d $d --iters 20 --warmup 5 2>&1 | tee -a "$out/configs.txt"
  done
done
