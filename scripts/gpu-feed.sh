#!/usr/bin/env bash
# Runs on the GPU machine: the producer-fed Q (`passes::feed_loads`, sm_90a persistent TMA
# kernels). First the fed kernels under compute-sanitizer (memcheck, racecheck, synccheck) at a
# tail shape, then an A/B of the example built before the pass (BASE) against the one after
# (NEW): the tuned H200 configs at D = 128, and at D = 64 the large config made persistent
# (the tuned D = 64 configs are not persistent, which the pass needs) and with 128-row tiles and
# the pingpong, plus one control row
# (a config the pass leaves alone: both builds run the same kernel).
# usage: OUT=dir BASE=.device/bin/attention_base NEW=.device/bin/attention scripts/gpu-feed.sh
#        OUT=dir scripts/gpu-feed.sh entries   the D = 64 non-causal tuning entries made persistent:
#            the new entry (the binary's table) against the old one (and with S4P=1 the 192-row tiles
#            four stages deep without the overlap, persistent), and at D = 128 causal the shipped
#            (non-persistent) entry against the persistent pingpong schedule, fed (with CAUSAL=1;
#            LONG=1 adds 1x32x16384x64; BENCH_ONLY limits the benchmark's shapes), in
#            rounds, at the keys' shapes and the sweep's; then the side-by-side benchmark.
set -uo pipefail
out=${OUT:-/tmp/flashcore-out}
base=${BASE:-.device/bin/attention_base}
new=${NEW:-.device/bin/attention}
mkdir -p "$out"
d128p="--tile-m 128 --tile-n 128 --warps 8 --load-warps 4 --stages 2 --persistent --overlap --tma --pingpong --target sm_90a"
if [ "${1:-}" = entries ]; then
  log=$out/entries.txt
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$log"
  old_large="--tile-m 192 --tile-n 128 --warps 12 --load-warps 4 --stages 4 --tma --target sm_90a"
  old_medium="--tile-m 192 --tile-n 128 --warps 12 --load-warps 4 --stages 2 --overlap --tma --target sm_90a"
  s4p="--tile-m 192 --tile-n 128 --warps 12 --load-warps 4 --stages 4 --tma --persistent --target sm_90a"
  for round in 1 2; do
    for shape in "--b 2 --h 16 --s 8192 --d 64:$old_large" "--b 8 --h 32 --s 2048 --d 64:$old_large" \
      ${LONG:+"--b 1 --h 32 --s 16384 --d 64:$old_large"} "--b 4 --h 16 --s 2048 --d 64:$old_medium" \
      "--b 32 --h 32 --s 512 --d 64:$old_medium" ${CAUSAL:+"--b 2 --h 16 --s 8192 --d 128 --causal:$d128p"} \
      ${CAUSAL:+"--b 4 --h 16 --s 2048 --d 128 --causal:$d128p"}; do
      for flags in "${shape#*:}" "" ${S4P:+"$s4p"}; do
        # shellcheck disable=SC2086
        row=$(timeout 120 "$new" ${shape%%:*} $flags --iters 30 --warmup 10 2>&1 | tail -1)
        printf 'round %s %-30s %-100s :: %s\n' "$round" "${shape%%:*}" "${flags:-(the table entry)}" "$row" | tee -a "$log"
      done
    done
  done
  OUT=$out/bench bash scripts/gpu-bench.sh bench --impls "${IMPLS:-flashcore,sdpa-flash,sdpa-cudnn,triton}" --iters 20 \
    ${BENCH_ONLY:+--only "$BENCH_ONLY"}
  exit 0
fi
log=$out/feed.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$log"
d64p="--tile-m 192 --tile-n 128 --warps 12 --load-warps 4 --stages 2 --persistent --overlap --tma --target sm_90a"
d64pp="--tile-m 128 --tile-n 128 --warps 8 --load-warps 4 --stages 2 --persistent --overlap --tma --pingpong --target sm_90a"
d128p="--tile-m 128 --tile-n 128 --warps 8 --load-warps 4 --stages 2 --persistent --overlap --tma --pingpong --target sm_90a"
for tool in memcheck racecheck synccheck; do
  for shape in "--b 2 --h 4 --s 1000 --sk 1300 --d 128 --causal $d128p" "--b 1 --h 4 --hkv 2 --s 777 --d 64 --dtype bf16 $d64p"; do
    echo "+ compute-sanitizer --tool $tool attention $shape" | tee -a "$log"
    # shellcheck disable=SC2086
    /usr/local/cuda/bin/compute-sanitizer --tool "$tool" --error-exitcode 9 "$new" $shape --iters 2 --warmup 1 2>&1 \
      | tail -4 | tee -a "$log"
    echo "sanitizer exit ${PIPESTATUS[0]}" | tee -a "$log"
  done
done
SHAPES=${SHAPES:-"--b 32 --h 16 --s 512 --d 128;--b 16 --h 16 --s 1024 --d 128;--b 4 --h 16 --s 2048 --d 128;--b 2 --h 16 --s 8192 --d 128;--b 32 --h 32 --s 512 --d 64 $d64p;--b 4 --h 16 --s 2048 --d 64 $d64p;--b 2 --h 16 --s 8192 --d 64 $d64p;--b 32 --h 32 --s 512 --d 64 $d64pp;--b 4 --h 16 --s 2048 --d 64 $d64pp;--b 32 --h 32 --s 512 --d 64"} \
  ITERS=${ITERS:-50} ROUNDS=${ROUNDS:-2} bash scripts/gpu-ab.sh "$base" "$new" 2>&1 | tee -a "$log"
