#!/usr/bin/env bash
# Runs on the GPU machine (binaries built here, carried in .device/bin): the decode example
# (`examples/decode.rs`, paged KV cache) against float64 at several page sizes, new-token counts,
# causal and bf16, then timed at the shapes next to PyTorch SDPA (cuDNN, FA2) on a
# contiguous cache and the read-rate ceiling, all in one run. Logs go to $OUT/decode.txt.
#   scripts/gpu-decode.sh [check|time|all]   (default all)
#   CONFIGS="settings;settings": the schedules timed at page 16 (default: the declared one and four).
set -uo pipefail
bins=${BINS:-.device/bin}
out=${OUT:-/tmp/flashcore-out}
mkdir -p "$out"
log="$out/decode.txt"
mode=${1:-all}
status=0
run() {
  echo "+ decode $*" | tee -a "$log"
  "$bins/decode" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { echo "EXIT $rc" | tee -a "$log"; status=1; }
}
if [ "$mode" = check ] || [ "$mode" = all ]; then
  run --batch 3 --cache-len 1000 --page 16 --iters 3
  run --batch 2 --cache-len 777 --page 48 --new-tokens 4 --causal --iters 3
  run --batch 2 --cache-len 300 --page 256 --new-tokens 16 --causal --bf16 --iters 3
  run --batch 2 --cache-len 513 --page 16 --head-dim 64 --heads 8 --kv-heads 1 --iters 3
  run --batch 2 --cache-len 1000 --page 32 --config "sm_90a,tile_m=64,warps=4" --iters 3
  for tool in memcheck racecheck synccheck; do
    echo "+ compute-sanitizer --tool $tool decode (pages of 16, 2 sequences of 300, 4 new tokens, causal)" | tee -a "$log"
    /usr/local/cuda/bin/compute-sanitizer --tool "$tool" --error-exitcode 9 "$bins/decode" --batch 2 --cache-len 300 \
      --page 16 --new-tokens 4 --causal --iters 1 --config ";warps=4,kv_splits=4" 2>&1 | tail -3 | tee -a "$log"
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "SANITIZER $tool FAILED" | tee -a "$log"; status=1; }
  done
fi
if [ "$mode" = time ] || [ "$mode" = all ]; then
  configs=${CONFIGS:-";tile_n=32,stages=4;warps=4,kv_splits=4;load_warps=1,stages=3;warps=2,kv_splits=2,stages=3"}
  shapes=("1 4096 1" "1 32768 1" "8 8192 1" "64 4096 1" "1 32768 4" "1 32768 16")
  for shape in "${shapes[@]}"; do
    set -- $shape
    run --batch "$1" --cache-len "$2" --new-tokens "$3" --page 16 --config "$configs"
    run --batch "$1" --cache-len "$2" --new-tokens "$3" --page 256
  done
  python3 scripts/bench_decode.py 1:4096:1 1:32768:1 8:8192:1 64:4096:1 1:32768:4 1:32768:16 2>&1 | tee -a "$log"
fi
exit $status
