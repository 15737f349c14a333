#!/usr/bin/env bash
# Runs on the GPU machine: the sm_90a producer warpgroup (load_warps = 4, setmaxnreg) against the
# uniform layout (every warp copies and computes), same binary, same run: float64 checks at tails,
# then timings of each schedule at the large shapes. Logs go to $OUT/producer.txt.
#   scripts/gpu-producer.sh [check|time|all]   (default all)
#   scripts/gpu-producer.sh tune | bench       the sm_90a tuning of the large shapes; the benchmark
#   scripts/gpu-producer.sh next               sanitizer on the producer configs, tuning, benchmark
set -uo pipefail
bins=${BINS:-.device/bin}
out=${OUT:-/tmp/flashcore-out}
mkdir -p "$out"
mode=${1:-all}
status=0
run() {
  echo "+ attention $*" | tee -a "$out/producer.txt"
  "$bins/attention" "$@" 2>&1 | tee -a "$out/producer.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { echo "EXIT $rc" | tee -a "$out/producer.txt"; status=1; }
}
P128="--tile-m 128 --warps 8 --tile-n 128 --load-warps 4"
P64="--tile-m 128 --warps 8 --tile-n 128 --load-warps 4"
if [ "$mode" = check ] || [ "$mode" = all ]; then
  t="--target sm_90a --iters 3 --warmup 1"
  run $t --b 2 --h 4 --s 1000 --d 128 $P128 --stages 2
  run $t --b 2 --h 4 --s 777 --d 128 $P128 --stages 3 --causal --dtype bf16
  run $t --b 1 --h 8 --hkv 2 --s 333 --sk 1501 --d 128 $P128 --stages 2
  run $t --b 2 --h 4 --s 1000 --d 64 $P64 --stages 3 --causal
  run $t --b 2 --h 4 --s 517 --d 64 $P64 --stages 2 --layout bshd --persistent
  run $t --h 4 --d 128 --varlen 1,17,300,1000 $P128 --stages 2
fi
if [ "$mode" = time ] || [ "$mode" = all ]; then
  for shape in "--b 2 --h 16 --s 8192 --d 128" "--b 2 --h 16 --s 8192 --d 128 --causal"; do
    for cfg in "--tile-m 128 --warps 8 --tile-n 128 --stages 2" "$P128 --stages 2" "$P128 --stages 3" "$P128 --stages 2 --persistent" "$P128 --stages 3 --persistent"; do
      run $shape $cfg --target sm_90a --iters 30 --warmup 5
    done
  done
  for shape in "--b 2 --h 16 --s 8192 --d 64" "--b 4 --h 16 --s 2048 --d 64"; do
    for cfg in "--tile-m 64 --warps 4 --tile-n 128 --stages 1 --persistent" "$P64 --stages 2" "$P64 --stages 3" "--tile-m 128 --warps 8 --tile-n 128 --load-warps 4 --stages 4" "--tile-m 192 --warps 12 --tile-n 128 --load-warps 4 --stages 2"; do
      run $shape $cfg --target sm_90a --iters 30 --warmup 5
    done
  done
fi
if [ "$mode" = bench ]; then
  # The benchmark against SDPA's FlashAttention-2 and cuDNN, with the table in $FLASHCORE_TUNING
  # (default: the committed one).
  python3 scripts/bench.py --flashcore "$bins/attention" --out "$out/bench" \
    --only 2x16x8192x128,2x16x8192x64,4x16x2048x64,1x8x512x64 \
    --impls flashcore,flashcore-sm89,flashcore-sm90a,sdpa-flash,sdpa-cudnn --iters 40 --no-ceilings 2>&1 | tee -a "$out/producer.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if [ "$mode" = tune ]; then
  # The sm_90a tuning of the large shapes (D 128 first), written over a copy of the table.
  cp tuning/attention.json "$out/attention.json"
  "$bins/autotune" --target sm_90a --out "$out/attention.json" --progress "$out/autotune-progress.jsonl" \
    --d 128,64 --causal no,yes --classes large --seconds ${TUNE_SECONDS:-240} 2>&1 | tee "$out/autotune.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if [ "$mode" = next ]; then
  # What this session left for the GPU, in one call (about 8 minutes): compute-sanitizer over the
  # two producer reference configs, the sm_90a tuning of the large and medium shapes with the
  # producer in the space (into $OUT/attention.json), and the benchmark with that table, both
  # targets as columns.
  mapfile -t producer < <("$bins/validate" list | awk '{print NR-1, $1}' | grep ' sm90a.*load4' | cut -d' ' -f1)
  BIN=$bins scripts/gpu-validate.sh sanitize "${producer[0]}" "${producer[-1]}" || status=1
  cp tuning/attention.json "$out/attention.json"
  "$bins/autotune" --target sm_90a --out "$out/attention.json" --progress "$out/autotune-progress.jsonl" \
    --d 128,64 --causal no,yes --classes large,medium --seconds ${TUNE_SECONDS:-300} 2>&1 | tee "$out/autotune.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  FLASHCORE_TUNING="$out/attention.json" python3 scripts/bench.py --flashcore "$bins/attention" --out "$out/bench-next" \
    --only 2x16x8192x128,2x16x8192x64,4x16x2048x64,1x8x512x64 \
    --impls flashcore,flashcore-sm89,flashcore-sm90a,sdpa-flash,sdpa-cudnn --iters 40 --no-ceilings 2>&1 | tee -a "$out/producer.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
echo "status $status" | tee -a "$out/producer.txt"
exit $status
