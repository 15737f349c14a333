#!/usr/bin/env bash
# Runs on the GPU machine (no Rust there): the example binary built here is carried in
# .device/bin. Correctness sweep, headline shape, the .npy round trip through numpy, the other
# snapshot configurations, and the hang example (its binary next to the attention one).
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
echo "== a kernel that would hang: rejected by the protocol check, and with the check bypassed a timeout, not a stuck process"
hang_bin="$(dirname "$bin")/hang"
if [ -x "$hang_bin" ]; then
  timeout 60 "$hang_bin" 2>&1 | tee "$out/hang.txt"
else
  echo "no $hang_bin: build it with cargo build --release --examples and copy it next to $bin"
fi
