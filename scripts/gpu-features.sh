#!/usr/bin/env bash
# Runs on the GPU machine: cross-attention (S != SK) and causal attention over lengths with
# tails, D in {64, 128}, checked against float64 and timed; then causal against non-causal at
# 2x16x8192x{64,128} (issue 5 asks causal to be at least 1.7x faster).
set -uo pipefail
bin=${1:-.device/bin/attention}
for d in 64 128; do
  for causal in "" "--causal"; do
    for lens in "1 1" "17 17" "77 77" "4097 4097" "77 200" "1000 4097" "200 77" "77 0" "0 77"; do
      set -- $lens
      row=$(timeout 120 "$bin" --b 2 --h 4 --s $1 --sk $2 --d $d $causal --iters 30 --warmup 5 2>&1 | tail -1)
      printf 'S=%-5s SK=%-5s D=%-3s %-8s :: %s\n' "$1" "$2" "$d" "${causal:-full}" "$row"
    done
  done
done
for d in 64 128; do
  for causal in "" "--causal"; do
    row=$(timeout 300 "$bin" --b 2 --h 16 --s 8192 --d $d $causal --iters 50 --warmup 10 2>&1 | tail -1)
    printf '2x16x8192 D=%-3s %-8s :: %s\n' "$d" "${causal:-full}" "$row"
  done
done
# Grouped-query (8 query heads per K/V head) and multi-query attention, plain and causal.
for d in 64 128; do
  for hk in 2 1; do
    for causal in "" "--causal"; do
      row=$(timeout 120 "$bin" --b 2 --h 16 --hkv $hk --s 2048 --sk 2048 --d $d $causal --iters 30 --warmup 5 2>&1 | tail -1)
      printf 'GQA H=16 HKV=%-2s S=2048 D=%-3s %-8s :: %s\n' "$hk" "$d" "${causal:-full}" "$row"
    done
  done
done
# Head dims 32 and 96 (swizzle in groups of 4 chunks; 12-chunk rows copied 2 rows per warp pass)
# and 256 (32-row K/V tiles, from Config::with_head_dim).
for d in 32 96 256; do
  for cfg in "--s 77 --sk 77" "--s 4097 --sk 4097" "--s 4097 --sk 4097 --causal" "--s 1000 --sk 4097" "--s 4097 --sk 4097 --load-warps 1 --stages 3" "--s 4097 --sk 4097 --tile-m 128 --warps 8"; do
    row=$(timeout 120 "$bin" --b 2 --h 4 --d $d $cfg --iters 30 --warmup 5 2>&1 | tail -1)
    printf 'D=%-3s %-45s :: %s\n' "$d" "$cfg" "$row"
  done
done
# The .npy path in BSHD and bf16, written and checked by numpy.
for args in "2 4 256 64 bshd f16" "1 2 512 128 bshd bf16" "2 4 77 64 bhsd bf16"; do
  printf 'npy %-22s :: %s\n' "$args" "$(python3 scripts/npy_check.py "$bin" $args 2>&1 | tail -1)"
done
