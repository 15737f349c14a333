#!/usr/bin/env bash
# Runs on the GPU machine (binaries built here, carried in .device/bin): the backward at
# 2x16x8192x128 with the shipped dK/dV schedule and with 64x64, 2 stages; an A/B of three
# variants whose PTX the elementwise runs reordered (.device/bin/attention_prev: before); issue 20's
# fallback in one run of scripts/bench.py per table (the shipped one; the H100's entries of
# 2026-11-24 only; none), FlashCore next to SDPA flash and cuDNN; then the autotuner on
# the variants that borrow the plain kernel's entries and lose to FlexAttention with them (ALiBi
# causal at D = 64, the bias at D = 64 and 128), sm_90a, large shapes, into a copy of the
# shipped table; then scripts/bench_variants.py on both with that table. Logs go to $OUT.
set -uo pipefail
bins=${BINS:-.device/bin}
out=${OUT:-/tmp/flashcore-out}
mkdir -p "$out"
for dkdv in "" "tile_n=64 stages=2"; do
  timeout 90 "$bins/attention_backward" --b 2 --h 16 --s 8192 --d 128 ${dkdv:+--dkdv-config "$dkdv"} 2>&1 | tee -a "$out/backward.txt"
done
# The variants whose PTX the elementwise runs reordered, old build (attention_prev) against new.
SHAPES="--kernel sliding_window_attention --window 1024,0 --b 2 --h 16 --s 8192 --d 128 --causal;--kernel softcap_attention --softcap 30 --b 2 --h 16 --s 8192 --d 128;--kernel document_bounds_attention --doc-len 1000 --b 2 --h 16 --s 8192 --d 128 --causal" \
  ITERS=20 ROUNDS=1 timeout 150 scripts/gpu-ab.sh "$bins/attention_prev" "$bins/attention" 2>&1 | tee "$out/ab.txt"
python3 -c "import json; t = json.load(open('tuning/attention.json')); json.dump(dict(t, entries=[]), open('$out/table-empty.json', 'w'))"
export FLASHCORE_CACHE_DIR=$out/cache-none
mkdir -p "$FLASHCORE_CACHE_DIR"
for table in tuning/attention.json tuning/h100-2026-11-24.json "$out/table-empty.json"; do
  echo "== table: $table" | tee -a "$out/fallback.txt"
  FLASHCORE_TUNING=$table timeout 120 python3 scripts/bench.py --flashcore "$bins/attention" --out "$out/fallback-$(basename "$table" .json)" \
    --only "${FALLBACK_SHAPES:-1x8x512x64,4x16x2048x64,2x16x8192x64,4x16x2048x128,2x16x8192x128,2x16x8192x128 causal}" \
    --impls flashcore,sdpa-flash,sdpa-cudnn --iters 20 --no-ceilings 2>&1 | tee -a "$out/fallback.txt"
done
cp tuning/attention.json "$out/tuned.json"
tune() { timeout $(($1 + 60)) "$bins/autotune" --out "$out/tuned.json" --progress "$out/progress.jsonl" --seconds "$1" \
  --target sm_90a --classes large --iters 10 --warmup 3 "${@:2}" 2>&1 | tail -30 | tee -a "$out/autotune.txt"; }
tune "${ALIBI_SECONDS:-100}" --kernel alibi_attention --d 64 --causal yes
tune "${BIAS_SECONDS:-100}" --kernel bias_attention --d 128 --causal no
export FLASHCORE_TUNING="$out/tuned.json"
for only in alibi bias; do
  timeout 150 python3 scripts/bench_variants.py --flashcore "$bins/attention" --out "$out/variants-$only" --only "$only" --iters 20 \
    > "$out/variants-$only.log" 2>&1
  echo "variants $only: exit $?" | tee -a "$out/status.txt"
done
