#!/usr/bin/env bash
# Runs on the GPU machine: variable-length batches (packed [TOTAL, H, D] with sequence offsets)
# checked against float64 per sequence and timed, over lengths with tails (1, 17, 77, 4097),
# key lengths of their own (0 included), causal, grouped heads, bf16, head dims 64/128/256 and
# the warp-specialized persistent schedule; then varlen against the dense kernel on equal
# lengths (the offsets cost one load per work item, so the times should match).
set -uo pipefail
bin=${1:-.device/bin/attention}
run() {
  local label=$1; shift
  local row
  row=$(timeout 120 "$bin" "$@" --iters 30 --warmup 5 2>&1 | tail -1)
  printf '%-58s :: %s\n' "$label" "$row"
}
for d in 64 128; do
  for causal in "" "--causal"; do
    run "q 1,17,77,4097 D=$d ${causal:-full}" --h 4 --d $d --varlen 1,17,77,4097 $causal
    run "q 1,17,77,4097 k 100,4097,0,17 D=$d ${causal:-full}" --h 4 --d $d --varlen 1,17,77,4097 --varlen-k 100,4097,0,17 $causal
    run "q 4097,1000,3,2048 H=16 HKV=2 D=$d ${causal:-full}" --h 16 --hkv 2 --d $d --varlen 4097,1000,3,2048 $causal
  done
done
run "bf16 q 1,17,77,4097 k 300,17,77,5000 D=128" --dtype bf16 --h 4 --d 128 --varlen 1,17,77,4097 --varlen-k 300,17,77,5000
run "bf16 q 77,4097 D=64 causal" --dtype bf16 --h 8 --d 64 --varlen 77,4097 --causal
run "load1 stages3 persistent q 1,17,77,4097 D=128 causal" --h 4 --d 128 --load-warps 1 --stages 3 --persistent --varlen 1,17,77,4097 --causal
run "D=256 q 17,77,4097 k 4097,77,17" --h 4 --d 256 --varlen 17,77,4097 --varlen-k 4097,77,17
run "D=256 q 17,77,4097 causal" --h 4 --d 256 --varlen 17,77,4097 --causal
# Equal lengths: varlen against dense at the same shape (4 sequences of 4096, H=16).
for d in 64 128; do
  for causal in "" "--causal"; do
    run "dense  4x16x4096 D=$d ${causal:-full}" --b 4 --h 16 --s 4096 --d $d $causal
    run "varlen 4x16x4096 D=$d ${causal:-full}" --h 16 --d $d --varlen 4096,4096,4096,4096 $causal
  done
done
