#!/usr/bin/env bash
# Runs on the GPU machine (binaries built here, carried in .device/bin): the attention example
# with `--target sm_90a` (wgmma) against float64 at tails, causal, GQA, S != SK, bf16, BSHD,
# varlen and D = 64/128/256, then the same shapes' timing with `--target sm_89` and
# `--target sm_90a` side by side (same binary, same run). Logs go to $OUT.
#   scripts/gpu-sm90a.sh [check|time|all]   (default all)
#   scripts/gpu-sm90a.sh bench | tune         the benchmark (tuned table or a fresh sm_90a tuning)
#   scripts/gpu-sm90a.sh profile              Nsight Compute (--clock-control none) of the tuned sm_90a
#                                             schedules at the large shapes: pipes, issue and stall reasons
#   scripts/gpu-sm90a.sh validate             compute-sanitizer over the sm_90a reference configs, and
#                                             20-run determinism of every config (scripts/gpu-validate.sh)
#   scripts/gpu-sm90a.sh producer             the producer warpgroup (load_warps = 4, setmaxnreg): float64
#                                             checks at tails, then its schedules timed against the
#                                             uniform layout's at the large shapes (same binary, same run)
#   scripts/gpu-sm90a.sh overlap              the overlap pass (--overlap, Config::overlap): float64
#                                             checks with it at tails, then schedules timed without and
#                                             with it, alternating (the 2026-12-02 runs compared binaries
#                                             before the pass, in $BASE, instead)
#   scripts/gpu-sm90a.sh profile-producer     Nsight Compute of the producer schedule at 2x16x8192x128
#                                             without and with --overlap: sections and per-SASS stalls
#                                             (PFLAGS adds flags, e.g. --tma; OVERLAPS=--overlap only with)
#   scripts/gpu-sm90a.sh codegen-ab           float64 checks with $BINS, then schedules (producer, tuned,
#                                             sm_89) timed with $BASE and $BINS alternating
#   scripts/gpu-sm90a.sh retune               before/after ($BASE, $BINS) at four schedules, then the sm_90a
#                                             tuning (large, medium) and the benchmark with it
#   scripts/gpu-sm90a.sh tuned-ab             the tuning table's picks at three shapes, binaries in $BASE
#                                             and in $BINS alternating (what a launch without flags runs)
#   scripts/gpu-sm90a.sh tma-regs             the producer's 24 registers with TMA: float64 checks, then the
#                                             tuned TMA schedules with $BASE and $BINS alternating
#   scripts/gpu-sm90a.sh pingpong             the compute warpgroups' pingpong (--pingpong): float64 checks,
#                                             sanitizer, schedules timed without and with it (2 rounds)
#   scripts/gpu-sm90a.sh tune-bench           the sm_90a tuning of the large and medium shapes (into
#                                             $OUT/attention.json), then the benchmark with that table
#   scripts/gpu-sm90a.sh next                 sanitizer on the producer reference configs, the sm_90a
#                                             tuning of the large and medium shapes with the producer in
#                                             the space (into $OUT/attention.json), the benchmark with it
#   scripts/gpu-sm90a.sh tma                  bulk tensor copies (--tma, Config::tma): float64 checks at
#                                             tails (GQA, S != SK, causal, bf16, BSHD, persistent, overlap),
#                                             compute-sanitizer and determinism on the TMA reference
#                                             configs, then schedules timed with cp.async and with TMA,
#                                             alternating (same binary)
set -uo pipefail
bins=${BINS:-.device/bin}
out=${OUT:-/tmp/flashcore-out}
mkdir -p "$out"
mode=${1:-all}
status=0
run() {
  echo "+ attention $*" | tee -a "$out/sm90a.txt"
  "$bins/attention" "$@" 2>&1 | tee -a "$out/sm90a.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { echo "EXIT $rc" | tee -a "$out/sm90a.txt"; status=1; }
}
# The same flags with the binaries before ($BASE) and after ($BINS), one after the other.
base=${BASE:-.device/bin-base}
before_after() {
  echo "# before ($base)" | tee -a "$out/sm90a.txt"
  bins=$base run "$@" --iters 30 --warmup 5
  run "$@" --iters 30 --warmup 5
}
# The sm_90a tuning of the large and medium shapes into $OUT/attention.json, then the benchmark
# with that table into $OUT/$1.
tune_then_bench() {
  cp tuning/attention.json "$out/attention.json"
  # PROGRESS: an earlier tuning's progress file, to resume from (keys it finished are skipped).
  [ -n "${PROGRESS:-}" ] && cp "$PROGRESS" "$out/autotune-progress.jsonl"
  "$bins/autotune" --target sm_90a --out "$out/attention.json" --progress "$out/autotune-progress.jsonl" \
    --d 128,64 --causal no,yes --classes large,medium --seconds "$2" 2>&1 | tee "$out/autotune.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  FLASHCORE_TUNING="$out/attention.json" python3 scripts/bench.py --flashcore "$bins/attention" --out "$out/$1" \
    --only "${SHAPES:-2x16x8192x128,2x16x8192x64,4x16x2048x64,1x8x512x64}" \
    --impls flashcore,flashcore-sm89,flashcore-sm90a,sdpa-flash,sdpa-cudnn --iters 40 --no-ceilings 2>&1 | tee -a "$out/sm90a.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
}
if [ "$mode" = check ] || [ "$mode" = all ]; then
  t="--target sm_90a --iters 3 --warmup 1"
  run $t --b 2 --h 4 --s 1000 --d 64
  run $t --b 2 --h 4 --s 1000 --d 64 --causal
  run $t --b 1 --h 8 --hkv 2 --s 333 --sk 1501 --d 128
  run $t --b 2 --h 4 --s 777 --d 128 --causal --dtype bf16
  run $t --b 2 --h 4 --s 517 --d 128 --layout bshd
  run $t --b 1 --h 4 --s 300 --d 256
  run $t --b 1 --h 4 --s 64 --d 128 --tile-m 128 --warps 8 --tile-n 128 --stages 2
  run $t --b 1 --h 4 --s 1000 --d 128 --tile-m 128 --warps 8 --tile-n 128 --stages 2 --causal
  run $t --h 4 --d 128 --varlen 1,17,300,1000 --tile-m 128 --warps 8
  run $t --b 2 --h 4 --s 1000 --d 64 --tile-m 128 --warps 8 --persistent --causal
  run $t --b 2 --h 4 --s 1000 --d 64 --tile-n 128 --stages 3
fi
if [ "$mode" = time ] || [ "$mode" = all ]; then
  for shape in "--b 2 --h 16 --s 8192 --d 128" "--b 2 --h 16 --s 8192 --d 64" "--b 4 --h 16 --s 2048 --d 64" "--b 1 --h 8 --s 512 --d 64"; do
    for cfg in "--tile-m 64 --warps 4 --stages 2" "--tile-m 128 --warps 8 --stages 2" "--tile-m 128 --warps 8 --tile-n 128 --stages 2"; do
      for target in sm_89 sm_90a; do
        run $shape $cfg --target $target --iters 30 --warmup 5
      done
    done
  done
fi
if [ "$mode" = bench ]; then
  FLASHCORE_TARGET=sm_90a python3 scripts/bench.py --flashcore "$bins/attention" --out "$out/bench-sm90a" \
    --only 2x16x8192x128,2x16x8192x64,4x16x2048x64,1x8x512x64 --impls flashcore,sdpa-flash,sdpa-cudnn \
    --iters 40 --no-ceilings 2>&1 | tee -a "$out/sm90a.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if [ "$mode" = tune ]; then
  cp tuning/attention.json "$out/attention.json"
  "$bins/autotune" --target sm_90a --out "$out/attention.json" --progress "$out/autotune-progress.jsonl" \
    --d 64,128 --causal no --classes tiny,medium,large --seconds 150 2>&1 | tee "$out/autotune.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  FLASHCORE_TUNING="$out/attention.json" python3 scripts/bench.py --flashcore "$bins/attention" \
    --out "$out/bench-tuned" --only 2x16x8192x128,2x16x8192x64,4x16x2048x64,1x8x512x64 \
    --impls flashcore,sdpa-flash,sdpa-cudnn --iters 40 --no-ceilings 2>&1 | tee -a "$out/sm90a.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if [ "$mode" = profile ]; then
  m=sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,sm__inst_executed.sum,gpu__time_duration.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,launch__occupancy_limit_shared_mem
  for st in math_pipe_throttle mio_throttle short_scoreboard long_scoreboard barrier wait not_selected selected dispatch_stall lg_throttle no_instruction branch_resolving membar sleeping math_pipe_throttle; do m=$m,smsp__average_warps_issue_stalled_${st}_per_issue_active.ratio; done
  ncu=(/usr/local/cuda/bin/ncu --clock-control none --launch-skip 2 --launch-count 1 --metrics "$m" -k regex:'^attention$')
  "${ncu[@]}" "$bins/attention" --target sm_90a --b 2 --h 16 --s 8192 --d 128 --iters 3 --warmup 1 >"$out/p-sm90a-d128.txt" 2>&1
  "${ncu[@]}" "$bins/attention" --target sm_90a --b 2 --h 16 --s 8192 --d 64 --iters 3 --warmup 1 >"$out/p-sm90a-d64.txt" 2>&1
  "${ncu[@]}" "$bins/attention" --target sm_90a --b 2 --h 16 --s 8192 --d 128 --causal --iters 3 --warmup 1 >"$out/p-sm90a-d128-causal.txt" 2>&1
  grep -hE "attention|pct|ratio|sum|registers|occupancy|==ERR|error" "$out"/p-sm90a-*.txt | tee -a "$out/sm90a.txt"
fi
if [ "$mode" = validate ]; then
  first=$("$bins/validate" list | awk '{print NR-1, $1}' | grep -m1 sm90a | cut -d' ' -f1)
  last=$("$bins/validate" list | awk '{print NR-1, $1}' | grep sm90a | tail -1 | cut -d' ' -f1)
  BIN=$bins scripts/gpu-validate.sh sanitize "$first" "$last" || status=1
  BIN=$bins scripts/gpu-validate.sh determinism || status=1
fi
if [ "$mode" = producer ]; then
  p="--tile-m 128 --warps 8 --tile-n 128 --load-warps 4"
  t="--target sm_90a --iters 3 --warmup 1"
  run $t --b 2 --h 4 --s 1000 --d 128 $p --stages 2
  run $t --b 2 --h 4 --s 777 --d 128 $p --stages 3 --causal --dtype bf16
  run $t --b 1 --h 8 --hkv 2 --s 333 --sk 1501 --d 128 $p --stages 2
  run $t --b 2 --h 4 --s 1000 --d 64 $p --stages 3 --causal
  run $t --b 2 --h 4 --s 517 --d 64 $p --stages 2 --layout bshd --persistent
  run $t --h 4 --d 128 --varlen 1,17,300,1000 $p --stages 2
  # The first schedule of each shape is the uniform layout's (the tuned one, or the large-shape one).
  for shape in "--b 2 --h 16 --s 8192 --d 128" "--b 2 --h 16 --s 8192 --d 128 --causal"; do
    for cfg in "--tile-m 128 --warps 8 --tile-n 128 --stages 2" "$p --stages 2" "$p --stages 3" "$p --stages 2 --persistent" "$p --stages 3 --persistent"; do
      run $shape $cfg --target sm_90a --iters 30 --warmup 5
    done
  done
  for shape in "--b 2 --h 16 --s 8192 --d 64" "--b 4 --h 16 --s 2048 --d 64"; do
    for cfg in "--tile-m 64 --warps 4 --tile-n 128 --stages 1 --persistent" "$p --stages 2" "$p --stages 3" "$p --stages 4" "--tile-m 192 --warps 12 --tile-n 128 --load-warps 4 --stages 2"; do
      run $shape $cfg --target sm_90a --iters 30 --warmup 5
    done
  done
fi
if [ "$mode" = overlap ]; then
  p="--tile-m 128 --warps 8 --tile-n 128 --load-warps 4"
  t="--target sm_90a --iters 3 --warmup 1 --overlap"
  run $t --b 2 --h 4 --s 777 --d 128 $p --stages 3 --causal --dtype bf16
  run $t --b 1 --h 8 --hkv 2 --s 333 --sk 1501 --d 128 $p --stages 2
  run $t --b 2 --h 4 --s 517 --d 64 $p --stages 2 --layout bshd --persistent
  run $t --h 4 --d 128 --varlen 1,17,300,1000 $p --stages 2
  # Causal with S > SK: the first Q tiles see no key (K/V loops of no tile: nothing pending).
  run $t --b 1 --h 4 --s 1000 --sk 300 --d 128 $p --stages 2 --causal
  run $t --b 2 --h 4 --s 1000 --d 128 --tile-m 64 --warps 4 --tile-n 128 --load-warps 4 --stages 2
  # Each schedule without the overlap, then with it (same binary, alternating).
  ab() {
    run "$@" --target sm_90a --iters 30 --warmup 5
    run "$@" --overlap --target sm_90a --iters 30 --warmup 5
  }
  ab --b 2 --h 16 --s 8192 --d 128 $p --stages 2
  ab --b 2 --h 16 --s 8192 --d 128 $p --stages 3 --persistent
  ab --b 2 --h 16 --s 8192 --d 128 --tile-m 64 --warps 4 --tile-n 128 --load-warps 4 --stages 2
  ab --b 2 --h 16 --s 8192 --d 128 --causal $p --stages 3 --persistent
  ab --b 2 --h 16 --s 8192 --d 64 $p --stages 2
  ab --b 4 --h 16 --s 2048 --d 64 $p --stages 2
fi
if [ "$mode" = profile-producer ]; then
  # Nsight Compute of the producer-warpgroup schedule at 2x16x8192x128 without and with the overlap
  # pass: the sections (pipes, warp states, memory) and the per-SASS-instruction stall samples.
  p="--tile-m 128 --warps 8 --tile-n 128 --load-warps 4 --stages 2 ${PFLAGS:-}"
  ncu=/usr/local/cuda/bin/ncu
  for ov in ${OVERLAPS:-"" "--overlap"}; do
    tag=off; [ -n "$ov" ] && tag=on
    $ncu --clock-control none --launch-skip 2 --launch-count 1 -k regex:'^attention$' \
      --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats \
      --section SchedulerStats --section MemoryWorkloadAnalysis --section SourceCounters \
      --section InstructionStats --section LaunchStats --section Occupancy -f -o "$out/prof-$tag" \
      "$bins/attention" --target sm_90a --b 2 --h 16 --s 8192 --d 128 $p $ov --iters 3 --warmup 1 \
      >"$out/prof-$tag.log" 2>&1 || status=1
    $ncu -i "$out/prof-$tag.ncu-rep" --page details --csv >"$out/prof-$tag-details.csv" 2>&1 || status=1
    $ncu -i "$out/prof-$tag.ncu-rep" --page source --csv --print-source sass >"$out/prof-$tag-sass.csv" 2>&1 || status=1
  done
  ls -la "$out" | tee -a "$out/sm90a.txt"
fi
if [ "$mode" = codegen-ab ]; then
  # A code generator change: float64 checks at tails with the new binaries (sm_90a, the producer
  # with and without the overlap, sm_89), then schedules timed with the binaries before ($BASE)
  # and after ($BINS), alternating, same run.
  p="--tile-m 128 --warps 8 --tile-n 128 --load-warps 4"
  t="--target sm_90a --iters 3 --warmup 1"
  run $t --b 2 --h 4 --s 777 --d 128 $p --stages 3 --causal --dtype bf16
  run $t --b 1 --h 8 --hkv 2 --s 333 --sk 1501 --d 128 $p --stages 2 --overlap
  run $t --h 4 --d 128 --varlen 1,17,300,1000 $p --stages 2
  run $t --b 2 --h 4 --s 1000 --d 64 --tile-n 128 --stages 3
  run $t --b 1 --h 4 --s 300 --d 256
  run --target sm_89 --iters 3 --warmup 1 --b 2 --h 4 --s 1000 --d 128 --causal
  run --target sm_89 --iters 3 --warmup 1 --b 1 --h 8 --hkv 2 --s 333 --sk 1501 --d 64
  before_after --b 2 --h 16 --s 8192 --d 128 $p --stages 2 --target sm_90a
  before_after --b 2 --h 16 --s 8192 --d 128 $p --stages 2 --overlap --target sm_90a
  before_after --b 2 --h 16 --s 8192 --d 128 $p --stages 2 --persistent --target sm_90a
  before_after --b 2 --h 16 --s 8192 --d 128 --causal $p --stages 3 --persistent --target sm_90a
  before_after --b 2 --h 16 --s 8192 --d 64 --tile-m 192 --warps 12 --tile-n 128 --load-warps 4 --stages 2 --target sm_90a
  before_after --b 4 --h 16 --s 2048 --d 64 --tile-m 192 --warps 12 --tile-n 128 --load-warps 4 --stages 2 --target sm_90a
  for shape in "--b 2 --h 16 --s 8192 --d 128" "--b 2 --h 16 --s 8192 --d 64" "--b 4 --h 16 --s 2048 --d 64" "--b 1 --h 8 --s 512 --d 64"; do
    before_after $shape
    before_after $shape --target sm_89
  done
fi
if [ "$mode" = retune ]; then
  # A short before/after of a code generator change ($BASE, $BINS), then the sm_90a tuning of the
  # large and medium shapes with $BINS (into $OUT/attention.json) and the benchmark with it.
  p="--tile-m 128 --warps 8 --tile-n 128 --load-warps 4"
  before_after --b 2 --h 16 --s 8192 --d 128 $p --stages 2 --target sm_90a
  before_after --b 2 --h 16 --s 8192 --d 128 --causal $p --stages 3 --persistent --target sm_90a
  before_after --b 2 --h 16 --s 8192 --d 64 --tile-m 192 --warps 12 --tile-n 128 --load-warps 4 --stages 2 --target sm_90a
  before_after --b 4 --h 16 --s 2048 --d 64 --tile-m 192 --warps 12 --tile-n 128 --load-warps 4 --stages 2 --target sm_90a
  tune_then_bench bench-retune "${TUNE_SECONDS:-270}"
fi
if [ "$mode" = tuned-ab ]; then
  # The tuning table's picks (no schedule flags), binaries before ($BASE) and after, alternating.
  for shape in "--b 2 --h 16 --s 8192 --d 128" "--b 4 --h 16 --s 2048 --d 64" "--b 1 --h 8 --s 512 --d 64"; do
    before_after $shape
  done
fi
if [ "$mode" = tma ]; then
  p="--tile-m 128 --warps 8 --tile-n 128 --load-warps 4"
  t="--target sm_90a --iters 3 --warmup 1 --tma"
  run $t --b 2 --h 4 --s 777 --d 128 $p --stages 3 --causal --dtype bf16
  run $t --b 1 --h 8 --hkv 2 --s 333 --sk 1501 --d 128 $p --stages 2
  run $t --b 1 --h 8 --hkv 2 --s 333 --sk 1501 --d 128 $p --stages 2 --overlap
  run $t --b 2 --h 4 --s 517 --d 64 $p --stages 2 --layout bshd --persistent
  run $t --b 1 --h 4 --s 1000 --sk 300 --d 128 $p --stages 2 --causal --overlap
  run $t --b 2 --h 4 --s 1000 --d 64 --tile-m 192 --warps 12 --tile-n 128 --load-warps 4 --stages 2
  run $t --b 1 --h 4 --s 300 --d 256 --tile-m 64 --warps 4 --tile-n 32 --load-warps 4 --stages 2
  mapfile -t tma < <("$bins/validate" list | awk '{print NR-1, $1}' | grep ' sm90a.*_tma' | cut -d' ' -f1)
  BIN=$bins scripts/gpu-validate.sh sanitize "${tma[0]}" "${tma[-1]}" || status=1
  BIN=$bins scripts/gpu-validate.sh determinism || status=1
  ab() {
    run "$@" --target sm_90a --iters 30 --warmup 5
    run "$@" --tma --target sm_90a --iters 30 --warmup 5
  }
  ab --b 2 --h 16 --s 8192 --d 128 $p --stages 2
  ab --b 2 --h 16 --s 8192 --d 128 $p --stages 2 --overlap
  ab --b 2 --h 16 --s 8192 --d 128 --causal $p --stages 3 --persistent --overlap
  ab --b 2 --h 16 --s 8192 --d 64 --tile-m 192 --warps 12 --tile-n 128 --load-warps 4 --stages 2
  ab --b 4 --h 16 --s 2048 --d 64 --tile-m 192 --warps 12 --tile-n 128 --load-warps 4 --stages 2
  ab --b 4 --h 16 --s 2048 --d 64 --tile-m 64 --warps 4 --tile-n 128 --load-warps 4 --stages 2 --persistent
  for shape in "--b 2 --h 16 --s 8192 --d 128" "--b 2 --h 16 --s 8192 --d 64" "--b 4 --h 16 --s 2048 --d 64"; do
    run $shape --iters 30 --warmup 5
  done
fi
if [ "$mode" = tma-regs ]; then
  # The producer's registers with bulk tensor copies (24 instead of 40; the compute warpgroups
  # get the rest): float64 checks at tails, then the tuned TMA schedules before ($BASE) and after.
  p="--tile-m 128 --warps 8 --tile-n 128 --load-warps 4"
  t="--target sm_90a --iters 3 --warmup 1 --tma"
  run $t --b 2 --h 4 --s 777 --d 128 $p --stages 3 --causal --dtype bf16
  run $t --b 1 --h 8 --hkv 2 --s 333 --sk 1501 --d 128 $p --stages 2 --overlap --persistent
  run $t --b 2 --h 4 --s 517 --d 64 $p --stages 2 --layout bshd --persistent
  run $t --b 2 --h 4 --s 1000 --d 64 --tile-m 192 --warps 12 --tile-n 128 --load-warps 4 --stages 4
  run $t --b 1 --h 4 --s 300 --d 256 --tile-m 64 --warps 4 --tile-n 32 --load-warps 4 --stages 2
  before_after --b 2 --h 16 --s 8192 --d 128 $p --stages 2 --persistent --overlap --tma --target sm_90a
  before_after --b 2 --h 16 --s 8192 --d 128 --causal $p --stages 2 --overlap --tma --target sm_90a
  before_after --b 2 --h 16 --s 8192 --d 64 --tile-m 192 --warps 12 --tile-n 128 --load-warps 4 --stages 4 --tma --target sm_90a
  before_after --b 4 --h 16 --s 2048 --d 64 --tile-m 192 --warps 12 --tile-n 128 --load-warps 4 --stages 2 --tma --target sm_90a
  before_after --b 4 --h 16 --s 2048 --d 128 $p --stages 2 --persistent --overlap --tma --target sm_90a
fi
if [ "$mode" = pingpong ]; then
  # The pingpong of the two compute warpgroups (--pingpong, Config::pingpong): float64 checks at
  # tails, sanitizer on its reference config, then schedules timed without and with it, alternating.
  p="--tile-m 128 --warps 8 --tile-n 128 --load-warps 4 --stages 2 --overlap --tma"
  t="--target sm_90a --iters 3 --warmup 1 --pingpong"
  run $t --b 2 --h 4 --s 777 --d 128 $p --causal --dtype bf16
  run $t --b 1 --h 8 --hkv 2 --s 333 --sk 1501 --d 128 $p --persistent
  run $t --b 1 --h 4 --s 1000 --sk 300 --d 128 $p --causal --persistent
  run $t --b 2 --h 4 --s 517 --d 64 $p --layout bshd
  mapfile -t pp < <("$bins/validate" list | awk '{print NR-1, $1}' | grep ' sm90a.*pingpong' | cut -d' ' -f1)
  BIN=$bins scripts/gpu-validate.sh sanitize "${pp[0]}" "${pp[-1]}" || status=1
  ab() {
    run "$@" --target sm_90a --iters 30 --warmup 5
    run "$@" --pingpong --target sm_90a --iters 30 --warmup 5
  }
  for round in 1 2; do
    ab --b 2 --h 16 --s 8192 --d 128 $p --persistent
    ab --b 2 --h 16 --s 8192 --d 128 $p
    ab --b 2 --h 16 --s 8192 --d 128 --causal $p
    ab --b 4 --h 16 --s 2048 --d 128 $p --persistent
    ab --b 2 --h 16 --s 8192 --d 64 $p
  done
fi
if [ "$mode" = tune-bench ]; then
  # The sm_90a tuning of the large and medium shapes (TUNE_SECONDS), then the benchmark with it.
  tune_then_bench bench-tuned "${TUNE_SECONDS:-270}"
fi
if [ "$mode" = next ]; then
  mapfile -t producer < <("$bins/validate" list | awk '{print NR-1, $1}' | grep ' sm90a.*load4' | cut -d' ' -f1)
  BIN=$bins scripts/gpu-validate.sh sanitize "${producer[0]}" "${producer[-1]}" || status=1
  tune_then_bench bench-next "${TUNE_SECONDS:-300}"
fi
echo "status $status" | tee -a "$out/sm90a.txt"
exit $status
