#!/usr/bin/env bash
# Runs on the GPU machine (binaries built here, carried in .device/bin): issue 20's "tuning that
# carries across GPUs", measured in one run. The benchmark with the shipped table (this GPU's own
# entries), then with a table holding only the H100's entries (tuning/h100-2026-11-24.json, timed
# on an H100 at 793d971, before the sm_90a backend: what a GPU without entries of its own gets
# through the same-limits rule), then with an empty table (the declared config). Each
# FlashCore row says which rule picked its config. Then first-use tuning: the H100-only table
# with FLASHCORE_AUTOTUNE=1 and a fresh cache directory, so each shape's first process tunes its
# key (default budget 60 s) and the benchmark's later processes read the cache; then a second
# process at the largest shape, timed, which must find its key cached and not tune. Logs and
# JSON go to $OUT/fallback-* and $OUT/first-use*.
#   scripts/gpu-fallback.sh [bench.py --only list [first-use --only list]]
#   scripts/gpu-fallback.sh model TABLE   the occupancy model's picks for the H100's limits (TABLE, from
#       `autotune --model h100`) against the timed H100 entries, both as sm_89 PTX on this GPU, with
#       FlashAttention-2 in the same run: how good the model that chose the L4 section is.
#   scripts/gpu-fallback.sh tests         the GPU tests of tests/tuning_cache.rs (first-use tuning within its
#       budget then the cache, launch_tuned against float64): build them with
#       `cargo test --release --test tuning_cache --no-run` and copy the binary to $BINS/tuning_cache.
set -uo pipefail
bins=${BINS:-.device/bin}
out=${OUT:-/tmp/flashcore-out}
mkdir -p "$out"
if [ "${1:-}" = tests ]; then
  bin=$(realpath "$bins/tuning_cache")
  (cd /tmp && FLASHCORE_CACHE_DIR=$out/cache-tests timeout 300 "$bin" --nocapture --test-threads 1) 2>&1 | tee "$out/tests.txt"
  exit "${PIPESTATUS[0]}"
fi
if [ "${1:-}" = model ]; then
  export FLASHCORE_CACHE_DIR=$out/cache-none
  mkdir -p "$FLASHCORE_CACHE_DIR"
  cp tuning/h100-2026-11-24.json "$out/table-h100-only.json"
  status=0
  for which in model timed; do
    table=$2; [ $which = timed ] && table=$out/table-h100-only.json
    echo "== sm_89, table: $which ($table)" | tee -a "$out/model.txt"
    FLASHCORE_TUNING=$table python3 scripts/bench.py --flashcore "$bins/attention" --out "$out/model-$which" \
      --only 1x8x512x64,4x16x2048x64,2x16x8192x64,4x16x2048x128,2x16x8192x128 --impls flashcore-sm89,sdpa-flash \
      --iters 30 --no-ceilings 2>&1 | tee -a "$out/model.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
  done
  exit $status
fi
only=${1:-1x8x512x64,4x16x2048x64,2x16x8192x64,4x16x2048x128,2x16x8192x128}
first_use_only=${2:-1x8x512x64,4x16x2048x64,2x16x8192x128}
# The cache goes over every table (Table::active): an empty one keeps it out of these runs.
export FLASHCORE_CACHE_DIR=$out/cache-none
mkdir -p "$FLASHCORE_CACHE_DIR"
since() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.1f}')" "$(date +%s.%N)" "$1"; }
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
table = json.load(open("tuning/attention.json"))
h100 = json.load(open("tuning/h100-2026-11-24.json"))
json.dump(h100, open(f"{out}/table-h100-only.json", "w"), indent=2)
json.dump(dict(table, entries=[]), open(f"{out}/table-empty.json", "w"), indent=2)
print(f"tables: shipped {len(table['entries'])} entries, H100 only {len(h100['entries'])}, empty 0")
PY
status=0
for which in shipped h100-only empty; do
  case $which in
    shipped) table=tuning/attention.json ;;
    *) table=$out/table-$which.json ;;
  esac
  echo "== table: $which ($table)" | tee -a "$out/fallback.txt"
  FLASHCORE_TUNING=$table python3 scripts/bench.py --flashcore "$bins/attention" --out "$out/fallback-$which" \
    --only "$only" --impls flashcore,sdpa-flash,sdpa-cudnn --iters 30 --no-ceilings 2>&1 | tee -a "$out/fallback.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
done
echo "== first-use tuning: table H100 only, FLASHCORE_AUTOTUNE=1, cache $out/cache-first-use" | tee -a "$out/first-use.txt"
start=$(date +%s.%N)
FLASHCORE_CACHE_DIR=$out/cache-first-use FLASHCORE_AUTOTUNE=1 FLASHCORE_TUNING=$out/table-h100-only.json \
  python3 scripts/bench.py --flashcore "$bins/attention" --out "$out/first-use" --only "$first_use_only" \
  --impls flashcore,sdpa-flash,sdpa-cudnn --iters 30 --no-ceilings 2>&1 | tee -a "$out/first-use.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
echo "benchmark with first-use tuning: $(since "$start") s" | tee -a "$out/first-use.txt"
# bench.py keeps the plan processes' stderr only on failure: the tuning reports are in the cache.
python3 -c "import json,sys; [print('cached:', e['kernel'], e['gpu'], e['dtype'], e['head_dim'], e['causal'], e['size_class'], e['schedule'], e['measured']) for e in json.load(open(sys.argv[1]))['entries']]" \
  "$out"/cache-first-use/tuning-*.json 2>&1 | tee -a "$out/first-use.txt"
for run in first second; do
  # A fresh cache for the first run at a key the benchmark did not tune; the second reads it.
  [ $run = first ] && rm -rf "$out/cache-two"
  start=$(date +%s.%N)
  FLASHCORE_CACHE_DIR=$out/cache-two FLASHCORE_AUTOTUNE=1 FLASHCORE_TUNING=$out/table-h100-only.json \
    "$bins/attention" --b 2 --h 16 --s 8192 --d 64 --causal --iters 10 --warmup 3 >"$out/first-use-$run.txt" 2>&1 || status=1
  echo "$run process (2x16x8192x64 causal): $(since "$start") s wall" | tee -a "$out/first-use.txt"
  grep -E "flashcore: tuned|config source|^ +2 +16" "$out/first-use-$run.txt" | tee -a "$out/first-use.txt"
done
echo "status $status" | tee -a "$out/fallback.txt"
exit $status
