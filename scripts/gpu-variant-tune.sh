#!/usr/bin/env bash
# Runs on the GPU machine (binaries built here, carried in .device/bin). Steps (STEPS, in order;
# default all), logs to $OUT:
#   backward  attention_backward at 2x16x8192x128: the shipped dK/dV schedule, then 64x64, 2 stages;
#   hoist     the bias at a non-overlapped sm_90a schedule, .device/bin/attention_ew (elementwise
#             runs, no gather hoisting) against .device/bin/attention (both);
#   fallback  issue 20: scripts/bench.py per table (the shipped one; the H100's entries of
#             2026-11-24 only; none), FlashCore next to SDPA flash and cuDNN;
#   reorder   three variants whose PTX the elementwise runs reordered, .device/bin/attention_prev
#             (before them) against .device/bin/attention;
#   tune      the autotuner on ALiBi causal D = 64 and the bias D = 128 (sm_90a, large), into a
#             copy of the shipped table, then scripts/bench_variants.py on both with it;
#   dq        (not in the default list) the dQ kernel on sm_90a (passes/split_a_loads.rs; untimed
#             when it landed) against its shipped sm_89 schedule, at 2x16x8192x128, causal and not;
#             DQ_CONFIGS (space-separated `Config` settings, default `sm_90a`) lists the forms tried,
#             DQ_D (default 128) the head dim;
#   dkdvc     (not in the default list) the causal dK/dV kernel on sm_90a at 2x16x8192x128: its shipped
#             schedule (32-query tiles, one stage) against 64-query tiles two stages deep;
#   bwdprod   (not in the default list) the backward's dK/dV and dQ kernels on sm_90a with a TMA producer
#             warpgroup (64-row tiles with one compute warpgroup, 128-row tiles with two) against their
#             shipped schedules, at 2x16x8192x128, causal and not;
#   doc       (not in the default list) the document mask with table summaries (.device/bin/attention)
#             against the build before them (.device/bin/attention_prev), A/B, then
#             scripts/bench_variants.py's document rows next to FlexAttention, then compute-sanitizer
#             memcheck on a small document-mask launch (the summary kernel, then the kernel).
set -uo pipefail
bins=${BINS:-.device/bin}
out=${OUT:-/tmp/flashcore-out}
mkdir -p "$out"
steps=${STEPS:-backward hoist fallback reorder tune}
export FLASHCORE_CACHE_DIR=$out/cache-none
mkdir -p "$FLASHCORE_CACHE_DIR"
for step in $steps; do
  echo "== step $step ($(date +%T))" | tee -a "$out/steps.txt"
  case $step in
    backward)
      for dkdv in "" "tile_n=64 stages=2"; do
        timeout 90 "$bins/attention_backward" --b 2 --h 16 --s 8192 --d 128 --repeat 10 ${dkdv:+--dkdv-config "$dkdv"} 2>&1 \
          | tee -a "$out/backward.txt"
      done ;;
    hoist)
      SHAPES="--kernel bias_attention --b 1 --h 16 --s 4096 --d 128 --tile-m 64 --tile-n 128 --warps 4 --load-warps 4 --stages 2 --persistent --target sm_90a;--kernel bias_attention --b 2 --h 16 --s 2048 --d 64 --tile-m 64 --tile-n 128 --warps 4 --stages 2 --causal --target sm_90a" \
        ITERS=20 ROUNDS=2 timeout 150 scripts/gpu-ab.sh "$bins/attention_ew" "$bins/attention" 2>&1 | tee "$out/ab-hoist.txt" ;;
    fallback)
      python3 -c "import json; t = json.load(open('tuning/attention.json')); json.dump(dict(t, entries=[]), open('$out/table-empty.json', 'w'))"
      for table in tuning/attention.json tuning/h100-2026-11-24.json "$out/table-empty.json"; do
        echo "== table: $table" | tee -a "$out/fallback.txt"
        FLASHCORE_TUNING=$table timeout 100 python3 scripts/bench.py --flashcore "$bins/attention" \
          --out "$out/fallback-$(basename "$table" .json)" \
          --only "${FALLBACK_SHAPES:-1x8x512x64,4x16x2048x64,2x16x8192x64,4x16x2048x128,2x16x8192x128,2x16x8192x128 causal}" \
          --impls flashcore,sdpa-flash,sdpa-cudnn --iters 20 --no-ceilings 2>&1 | tee -a "$out/fallback.txt"
      done ;;
    reorder)
      SHAPES="--kernel sliding_window_attention --window 1024,0 --b 2 --h 16 --s 8192 --d 128 --causal;--kernel softcap_attention --softcap 30 --b 2 --h 16 --s 8192 --d 128;--kernel document_bounds_attention --doc-len 1000 --b 2 --h 16 --s 8192 --d 128 --causal" \
        ITERS=20 ROUNDS=1 timeout 150 scripts/gpu-ab.sh "$bins/attention_prev" "$bins/attention" 2>&1 | tee "$out/ab-reorder.txt" ;;
    tune)
      cp tuning/attention.json "$out/tuned.json"
      tune() { timeout $(($1 + 40)) "$bins/autotune" --out "$out/tuned.json" --progress "$out/progress.jsonl" --seconds "$1" \
        --target sm_90a --classes large --iters 10 --warmup 3 "${@:2}" 2>&1 | tail -30 | tee -a "$out/autotune.txt"; }
      tune "${ALIBI_SECONDS:-80}" --kernel alibi_attention --d 64 --causal yes
      tune "${BIAS_SECONDS:-80}" --kernel bias_attention --d 128 --causal no
      for only in alibi bias; do
        FLASHCORE_TUNING="$out/tuned.json" timeout 120 python3 scripts/bench_variants.py --flashcore "$bins/attention" \
          --out "$out/variants-$only" --only "$only" --iters 20 > "$out/variants-$only.log" 2>&1
        echo "variants $only: exit $?" | tee -a "$out/steps.txt"
      done ;;
    dq)
      for causal in "" "--causal"; do
        for dq in "" ${DQ_CONFIGS:-sm_90a}; do
          # shellcheck disable=SC2086
          timeout 90 "$bins/attention_backward" --b 2 --h 16 --s 8192 --d "${DQ_D:-128}" $causal --repeat 10 \
            ${dq:+--dq-config "$dq"} 2>&1 | tee -a "$out/dq.txt"
        done
      done ;;
    bwdprod)
      for causal in "" "--causal"; do
        for cfg in "" "load_warps=4 tma" "tile_m=128 warps=8 load_warps=4 tma"; do
          # shellcheck disable=SC2086
          timeout 90 "$bins/attention_backward" --b 2 --h 16 --s 8192 --d 128 $causal --repeat 10 \
            ${cfg:+--dkdv-config "$cfg" --dq-config "stages=2 $cfg"} 2>&1 | tee -a "$out/backward-producer.txt"
        done
      done ;;
    dkdvc)
      for dkdv in "" "tile_n=64 stages=2"; do
        timeout 90 "$bins/attention_backward" --b 2 --h 16 --s 8192 --d 128 --causal --repeat 10 \
          ${dkdv:+--dkdv-config "$dkdv"} 2>&1 | tee -a "$out/dkdv-causal.txt"
      done ;;
    doc)
      SHAPES="--kernel document_attention --doc-len 1000 --causal --b 2 --h 16 --s 8192 --d 128;--kernel document_attention --doc-len 1000 --causal --b 4 --h 16 --s 4096 --d 64;--kernel document_attention --doc-len 1000 --causal --b 1 --h 8 --s 512 --d 64;--kernel document_bounds_attention --doc-len 1000 --causal --b 4 --h 16 --s 4096 --d 64" \
        ITERS=20 ROUNDS=2 timeout 240 scripts/gpu-ab.sh "$bins/attention_prev" "$bins/attention" 2>&1 | tee "$out/ab-doc.txt"
      timeout 200 python3 scripts/bench_variants.py --flashcore "$bins/attention" --out "$out/variants-doc" \
        --only document --iters 20 > "$out/variants-doc.log" 2>&1
      echo "variants document: exit $?" | tee -a "$out/steps.txt"
      timeout 120 /usr/local/cuda/bin/compute-sanitizer --tool memcheck "$bins/attention" --kernel document_attention \
        --doc-len 100 --causal --b 2 --h 2 --s 1000 --d 64 --iters 2 --warmup 1 2>&1 | tail -4 | tee "$out/memcheck-doc.txt" ;;
  esac
done
