#!/usr/bin/env bash
# Runs on the GPU machine (binaries built here, carried in .device/bin): issue 20's "tuning that
# carries across GPUs", measured in one run. The benchmark with the shipped table (this GPU's own
# entries), then with a table holding only the H100's entries (what a GPU without entries of its
# own gets: the same-limits rule), then with an empty table (the declared config). Each
# FlashCore row says which rule picked its config. Logs and JSON go to $OUT/fallback-*.
#   scripts/gpu-fallback.sh [bench.py --only list]
set -uo pipefail
bins=${BINS:-.device/bin}
out=${OUT:-/tmp/flashcore-out}
mkdir -p "$out"
only=${1:-1x8x512x64,4x16x2048x64,2x16x8192x64,4x16x2048x128,2x16x8192x128}
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
table = json.load(open("tuning/attention.json"))
h100 = dict(table, entries=[e for e in table["entries"] if e["gpu"] == "NVIDIA H100 80GB HBM3"])
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
    --only "$only" --impls flashcore,sdpa-flash,sdpa-cudnn --iters 40 --no-ceilings 2>&1 | tee -a "$out/fallback.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
done
echo "status $status" | tee -a "$out/fallback.txt"
exit $status
