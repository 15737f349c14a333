#!/usr/bin/env bash
# Runs on the GPU machine: Nsight Compute pipe and stall metrics of the plain kernel, softcap, ALiBi,
# document ids and document bounds at the benchmark's shapes and schedules (the binaries built here are
# carried in .device/bin). Writes $OUT/p-*.txt.
set -uo pipefail
OUT=${OUT:-/tmp/flashcore-out}
mkdir -p "$OUT"
B=${BINS:-.device/bin}/attention
F64="--tile-m 128 --tile-n 128 --warps 4 --stages 1 --a-in-smem"
F128="--tile-m 128 --tile-n 64 --warps 4 --stages 1 --a-in-smem"
M=sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,sm__inst_executed.sum,gpu__time_duration.sum,smsp__issue_active.avg.pct_of_peak_sustained_active
for st in math_pipe_throttle mio_throttle short_scoreboard long_scoreboard barrier wait not_selected selected dispatch_stall lg_throttle no_instruction branch_resolving math_pipe_throttle membar sleeping tex_throttle drain imc_miss; do M=$M,smsp__average_warps_issue_stalled_${st}_per_issue_active.ratio; done
NCU="/usr/local/cuda/bin/ncu --launch-skip 2 --launch-count 1 --metrics $M"
$NCU -k regex:'^attention$' $B --b 4 --h 16 --s 4096 --d 64 $F64 --iters 3 --warmup 1 > $OUT/p-plain64.txt 2>&1
$NCU -k regex:softcap_attention $B --kernel softcap_attention --softcap 30 --b 4 --h 16 --s 4096 --d 64 $F64 --iters 3 --warmup 1 > $OUT/p-softcap64.txt 2>&1
$NCU -k regex:alibi_attention $B --kernel alibi_attention --causal --b 4 --h 16 --s 4096 --d 64 $F64 --iters 3 --warmup 1 > $OUT/p-alibi64.txt 2>&1
$NCU -k regex:'^attention$' $B --b 4 --h 16 --s 4096 --d 64 --causal $F64 --iters 3 --warmup 1 > $OUT/p-causal64.txt 2>&1
$NCU -k regex:'^attention$' $B --b 2 --h 16 --s 8192 --d 128 $F128 --iters 3 --warmup 1 > $OUT/p-plain128.txt 2>&1
$NCU -k regex:softcap_attention $B --kernel softcap_attention --softcap 30 --b 2 --h 16 --s 8192 --d 128 $F128 --iters 3 --warmup 1 > $OUT/p-softcap128.txt 2>&1
$NCU -k regex:document_attention $B --kernel document_attention --causal --doc-len 1000 --b 2 --h 16 --s 8192 --d 128 $F128 --iters 3 --warmup 1 > $OUT/p-doc128.txt 2>&1
$NCU -k regex:document_bounds $B --kernel document_bounds_attention --causal --doc-len 1000 --b 2 --h 16 --s 8192 --d 128 $F128 --iters 3 --warmup 1 > $OUT/p-bounds128.txt 2>&1
echo done
