#!/usr/bin/env bash
# Runs on the GPU machine: the attention backward (kernels::backward) checked against float64
# at the training shapes and tails (examples/attention_backward.rs, which also times
# FlashCore's forward, dQ and dK/dV kernels), then timed next to SDPA's flash and cuDNN backward
# in one process (scripts/bench_backward.py), the varlen backward (--varlen), and the training
# check (--train). Logs under $OUT. `scripts/gpu-backward.sh varlen` runs the varlen part alone.
set -uo pipefail
OUT=${OUT:-/tmp/flashcore-out}
mkdir -p "$OUT"
B=${BINS:-.device/bin}/attention_backward
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1
mode=${1:-all}
[ "$mode" = varlen ] || for shape in "--b 2 --h 16 --s 8192 --d 128" "--b 2 --h 16 --s 8192 --d 128 --causal" \
             "--b 2 --h 16 --s 8192 --d 64" "--b 4 --h 16 --s 2048 --d 128" \
             "--b 1 --h 4 --hkv 2 --s 1000 --sk 1537 --d 64 --causal" "--b 2 --h 2 --s 777 --d 128 --dtype bf16 --causal" \
             "--b 2 --h 16 --s 8192 --d 128 --softcap 30" "--b 4 --h 16 --s 2048 --d 64 --softcap 2" \
             "--b 1 --h 4 --hkv 2 --s 1000 --sk 1537 --d 128 --softcap 2 --dtype bf16" \
             "--b 2 --h 16 --s 8192 --d 128 --window 1024,0" "--b 1 --h 4 --hkv 2 --s 1000 --sk 1537 --d 64 --window 100,20"; do
  echo "== attention_backward $shape"
  timeout 300 $B $shape --iters 30 --warmup 5 --repeat 20 2>&1
  echo "exit $?"
done > "$OUT/check.txt" 2>&1
# The varlen backward (launch_varlen_backward_async, packed sequences) against float64, and
# under compute-sanitizer once.
for shape in "--varlen 700,1,300,2048 --h 16 --d 128" "--varlen 700,1,300,2048 --h 16 --hkv 4 --d 128 --causal" \
             "--varlen 513,64,1000 --h 8 --d 64 --dtype bf16 --causal"; do
  echo "== attention_backward $shape"
  timeout 300 $B $shape --iters 30 --warmup 5 2>&1
  echo "exit $?"
done > "$OUT/varlen.txt" 2>&1
/usr/local/cuda/bin/compute-sanitizer --tool memcheck --error-exitcode 9 $B --varlen 70,1,130 --h 4 --hkv 2 --causal \
  --iters 1 --warmup 0 >> "$OUT/varlen.txt" 2>&1
echo "sanitizer exit $?" >> "$OUT/varlen.txt"
[ "$mode" = varlen ] && { cat "$OUT/varlen.txt"; exit 0; }
# The training check: gradient descent on an attention layer's Q, K, V through the one-call
# backward (launch_backward_async); the loss must fall at every step.
for shape in "--b 1 --h 4 --s 512 --d 64" "--b 1 --h 4 --s 500 --d 128 --causal" "--b 1 --h 2 --s 300 --d 64 --dtype bf16"; do
  echo "== attention_backward $shape --train 8"
  timeout 120 $B $shape --train 8 2>&1
  echo "exit $?"
done > "$OUT/train.txt" 2>&1
timeout 400 python3 scripts/bench_backward.py --flashcore "$B" --out "$OUT/bench" --iters 30 > "$OUT/bench.txt" 2>&1
echo "bench exit $?" >> "$OUT/bench.txt"
echo done
