#!/usr/bin/env bash
# Runs on the GPU machine (no Rust there; the binaries built here are carried in .device/bin).
#   scripts/gpu-bench.sh tune [SECONDS] [autotune flags]  the autotuner, resumable: progress and table
#       in .device/tune (carried back and forth), copied to $OUT/tune; stops cleanly after SECONDS.
#   scripts/gpu-bench.sh bench [bench.py flags]  the side-by-side benchmark, with the table the
#       tuner wrote (.device/tune/attention.json) when there is one, else the builtin table.
#   scripts/gpu-bench.sh variants [bench_variants.py flags]  every attention variant checked against
#       float64 on the GPU (the example, at tails, causal and not, f16 and bf16), then timed next to
#       FlexAttention and SDPA (scripts/bench_variants.py).
#   scripts/gpu-bench.sh profile [SHAPE]  Nsight Compute on one shape (default 2x16x8192x128):
#       FlashCore's kernel and SDPA's flash backend (FlashAttention-2, the mma.sync competitor).
set -uo pipefail
bins=${BINS:-.device/bin}
out=${OUT:-/tmp/flashcore-out}
tune=.device/tune
mkdir -p "$out" "$tune"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$out/device.txt"
mode=${1:-bench}
shift || true
case "$mode" in
  tune)
    seconds=${1:-500}
    shift || true
    [ -f "$tune/attention.json" ] || cp tuning/attention.json "$tune/attention.json"
    "$bins/autotune" --out "$tune/attention.json" --progress "$tune/progress.jsonl" --seconds "$seconds" "$@" 2>&1 \
      | tee "$out/autotune.txt"
    status=${PIPESTATUS[0]}
    mkdir -p "$out/tune" && cp "$tune"/* "$out/tune/"
    exit "$status"
    ;;
  bench)
    if [ -f "$tune/attention.json" ]; then export FLASHCORE_TUNING="$tune/attention.json"; fi
    echo "tuning table: ${FLASHCORE_TUNING:-builtin (tuning/attention.json compiled in)}"
    python3 scripts/bench.py --flashcore "$bins/attention" --out "$out" "$@" 2>&1 | tee "$out/bench-log.txt"
    ;;
  variants)
    fails=0
    while read -r kernel flags; do
      for shape in "--b 2 --h 4 --s 1000 --sk 1300 --d 128" "--b 1 --h 8 --hkv 2 --s 4097 --d 64 --causal" "--b 2 --h 4 --s 777 --d 64 --dtype bf16 --causal"; do
        # shellcheck disable=SC2086
        line=$("$bins/attention" --kernel "$kernel" $flags $shape --iters 3 --warmup 1 2>&1 | tail -1)
        echo "$kernel $flags $shape: $line" | tee -a "$out/variants-check.txt"
        case "$line" in *" ok") ;; *) fails=$((fails + 1)) ;; esac
      done
    done <<'LIST'
attention
softcap_attention --softcap 30
sliding_window_attention --window 256,0
sliding_window_attention --window 100,37
alibi_attention
prefix_lm_attention --prefix 300
sliding_window_softcap_attention --window 256,0 --softcap 20
document_attention --doc-len 300
document_bounds_attention --doc-len 300
bias_attention
LIST
    echo "variant checks: $fails failed" | tee -a "$out/variants-check.txt"
    python3 scripts/bench_variants.py --flashcore "$bins/attention" --out "$out" "$@" 2>&1 | tee "$out/variants-log.txt"
    # Packed documents as a variable-length batch (cu_seqlens, one sequence per document): the
    # plain kernel then skips every tile across documents. 1000-token documents, causal.
    docs() { local rows=$1 len=$2 list=""; for _ in $(seq "$rows"); do
      for _ in $(seq $((len / 1000))); do list="$list,1000"; done
      [ $((len % 1000)) -gt 0 ] && list="$list,$((len % 1000))"; done; echo "${list#,}"; }
    # The tuning table's schedule, as bench_variants.py's default (what a user gets).
    for shape in "2 8192 128" "4 4096 64"; do
      read -r rows len d <<< "$shape"
      echo "documents as varlen: $rows x $len tokens, h 16, d $d, causal" | tee -a "$out/variants-check.txt"
      "$bins/attention" --varlen "$(docs "$rows" "$len")" --h 16 --d "$d" --causal --iters 30 --warmup 5 2>&1 \
        | tail -2 | tee -a "$out/variants-check.txt"
    done
    exit "$fails"
    ;;
  profile)
    shape=${1:-2x16x8192x128}
    if [ -f "$tune/attention.json" ]; then export FLASHCORE_TUNING="$tune/attention.json"; fi
    for impl in flashcore sdpa-flash; do
      /usr/local/cuda/bin/ncu --launch-skip 2 --launch-count 1 -k 'regex:^attention$|flash_fwd_kernel' \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section InstructionStats \
        python3 scripts/bench.py --flashcore "$bins/attention" --out "$out/ncu-$impl" --only "$shape" \
        --impls "$impl" --iters 5 --no-graph --no-ceilings > "$out/ncu-$impl.txt" 2>&1
      echo "ncu $impl: exit $?, $(wc -l < "$out/ncu-$impl.txt") lines in $out/ncu-$impl.txt"
    done
    ;;
  *)
    echo "usage: scripts/gpu-bench.sh tune [SECONDS] | bench [flags] | variants [flags] | profile [SHAPE]" >&2
    exit 2
    ;;
esac
