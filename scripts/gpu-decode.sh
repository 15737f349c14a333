#!/usr/bin/env bash
# Runs on the GPU machine (binaries built here, carried in .device/bin): the decode example
# (`examples/decode.rs`, paged KV cache) against float64 at several page sizes, new-token counts,
# causal and bf16, then timed at the issue's shapes next to PyTorch SDPA (cuDNN, FA2) on a
# contiguous cache and the read-rate ceiling, all in one run. Logs go to $OUT/decode.txt.
#   scripts/gpu-decode.sh [check|time|all]   (default all)
#   scripts/gpu-decode.sh table              packed GQA at the issue's shapes with the default split, next to SDPA
#   scripts/gpu-decode.sh gather             the paged gather's cost after a change: plain at the probe's schedules, packed at four shapes
#   scripts/gpu-decode.sh spec               1, 4, 16 causal new tokens with the default schedule; sanitizer on the packed kernel
#   scripts/gpu-decode.sh step               whole decode steps (append kernel + decode_step), direct and from a CUDA graph; sanitizer
#   scripts/gpu-decode.sh npy                a step's inputs written by numpy (shuffled pages, ragged lengths), read with --npy
#   scripts/gpu-decode.sh floor              fixed latency: tiny and short caches under several splits, SDPA's kernels, ncu durations
#   scripts/gpu-decode.sh ab                 two builds (decode_base, decode) interleaved at the issue's shapes, then SDPA there
#   scripts/gpu-decode.sh probe              dense forward kernel against paged decode at the same
#                                            schedules, pages of 16 and 256, Nsight Compute of one launch
#   CONFIGS="settings;settings": the schedules timed at page 16 (default: in-CTA and across-CTA splits).
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
  run --batch 3 --cache-len 3001 --page 16 --new-tokens 4 --causal --iters 3 --config "kv_ctas=8;warps=4,kv_splits=4,kv_ctas=5;sm_90a,tile_m=64,warps=4,kv_ctas=3"
  # Per-sequence new-token counts (q_len) on the GPU: the test binary (built with
  # `cargo test --release --test decode --no-run`, copied to $bins/decode_tests) runs its launch.
  if [ -x "$bins/decode_tests" ]; then
    echo "+ decode_tests per_sequence_query_lengths_match_float64" | tee -a "$log"
    "$bins/decode_tests" per_sequence_query_lengths_match_float64 --nocapture 2>&1 | tail -6 | tee -a "$log"
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "EXIT decode_tests" | tee -a "$log"; status=1; }
  fi
  for tool in memcheck racecheck synccheck; do
    echo "+ compute-sanitizer --tool $tool decode (pages of 16, 2 sequences of 300, 4 new tokens, causal)" | tee -a "$log"
    /usr/local/cuda/bin/compute-sanitizer --tool "$tool" --error-exitcode 9 "$bins/decode" --batch 2 --cache-len 300 \
      --page 16 --new-tokens 4 --causal --iters 1 --config ";warps=4,kv_splits=4;kv_ctas=4;warps=4,kv_splits=4,kv_ctas=3" 2>&1 | tail -3 | tee -a "$log"
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "SANITIZER $tool FAILED" | tee -a "$log"; status=1; }
  done
fi
if [ "$mode" = time ] || [ "$mode" = all ]; then
  configs=${CONFIGS:-"warps=4,kv_splits=4;kv_ctas=8;kv_ctas=16;kv_ctas=32;warps=4,kv_splits=4,kv_ctas=4;warps=4,kv_splits=4,kv_ctas=8;warps=4,kv_splits=4,kv_ctas=16;tile_n=32,stages=4,kv_ctas=16;tile_n=32,stages=4,kv_ctas=32"}
  shapes=("1 4096 1" "1 32768 1" "8 8192 1" "64 4096 1" "1 32768 4" "1 32768 16")
  for shape in "${shapes[@]}"; do
    set -- $shape
    run --batch "$1" --cache-len "$2" --new-tokens "$3" --page 16 --config "$configs"
    run --batch "$1" --cache-len "$2" --new-tokens "$3" --page 256
  done
  python3 scripts/bench_decode.py 1:4096:1 1:32768:1 8:8192:1 64:4096:1 1:32768:4 1:32768:16 2>&1 | tee -a "$log"
fi
if [ "$mode" = table ]; then
  # Packed GQA with the default split (split_ctas) at the issue's shapes (H=32, HKV=8, D=128),
  # pages of 16 and 256, f16 (bf16 at two shapes), then schedules around it at B=1, 32k,
  # speculative steps (4 and 16 new tokens, causal), and SDPA on the same shapes.
  for shape in "1 1024" "1 8192" "1 32768" "1 131072" "8 1024" "8 8192" "8 32768" "64 1024" "64 8192"; do
    set -- $shape
    run --packed --batch "$1" --cache-len "$2" --page 16 --iters 30
    # (64 x 8192 at pages of 256 runs in bf16 below: each run builds its cache on the host.)
    [ "$1 $2" = "64 8192" ] || run --packed --batch "$1" --cache-len "$2" --page 256 --iters 30
  done
  run --packed --bf16 --batch 1 --cache-len 32768 --page 16 --iters 30
  run --packed --bf16 --batch 64 --cache-len 8192 --page 256 --iters 30
  run --packed --batch 1 --cache-len 32768 --page 16 --config ";kv_ctas=8;kv_ctas=16;kv_ctas=32;kv_ctas=64;tile_n=128,kv_ctas=32;warps=1,kv_splits=1,kv_ctas=32;stages=3,kv_ctas=32"
  run --packed --batch 64 --cache-len 8192 --page 16 --config ";stages=3;tile_n=128;warps=1,kv_splits=1;warps=2,kv_splits=2,tile_m=32"
  for s in 4 16; do
    run --packed --causal --batch 1 --cache-len 32768 --new-tokens "$s" --page 16 --iters 30
  done
  python3 scripts/bench_decode.py 1:1024:1 1:8192:1 1:32768:1 1:131072:1 8:1024:1 8:8192:1 8:32768:1 64:1024:1 64:8192:1 1:32768:4 1:32768:16 2>&1 | tee -a "$log"
fi
if [ "$mode" = gather ]; then
  # The paged gather's cost: the plain kernel at the probe's schedules (the dense forward kernel
  # took 353.6 and 78.5 us at B=1 32k, 483.6 at B=64 4096: decode-probe.txt), then packed GQA.
  run --batch 1 --cache-len 32768 --page 16 --config "warps=4,kv_splits=4;warps=4,kv_splits=4,kv_ctas=8"
  run --batch 64 --cache-len 4096 --page 16 --config "warps=4,kv_splits=4"
  for shape in "1 32768" "1 131072" "8 32768" "64 8192"; do
    set -- $shape
    run --packed --batch "$1" --cache-len "$2" --page 16 --iters 30
  done
  run --packed --causal --batch 1 --cache-len 32768 --new-tokens 16 --page 16 --config ";kv_ctas=33;tile_m=64,warps=4,kv_splits=1,kv_ctas=33;tile_m=64,warps=4,kv_splits=1,kv_ctas=16"
fi
if [ "$mode" = spec ]; then
  # Speculative steps with the example's default schedule (packed_schedule, split_ctas), and the
  # packed kernel split across CTAs under compute-sanitizer.
  for s in 1 4 16; do
    run --packed --causal --batch 1 --cache-len 32768 --new-tokens "$s" --page 16 --iters 30
  done
  for tool in memcheck racecheck synccheck; do
    echo "+ compute-sanitizer --tool $tool decode --packed (2 sequences of 700, 16 new tokens, causal)" | tee -a "$log"
    /usr/local/cuda/bin/compute-sanitizer --tool "$tool" --error-exitcode 9 "$bins/decode" --packed --batch 2 \
      --cache-len 700 --page 16 --new-tokens 16 --causal --iters 1 --config ";kv_ctas=4;tile_m=64,warps=4,kv_splits=1,kv_ctas=3" 2>&1 | tail -4 | tee -a "$log"
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "SANITIZER $tool FAILED" | tee -a "$log"; status=1; }
  done
fi
if [ "$mode" = step ]; then
  # A whole decode step through the typed API: append kernel + decode_step, checked (pools bit
  # for bit, output against float64), captured in a CUDA graph, replayed, checked, timed.
  run --step --batch 1 --cache-len 32768 --page 16 --iters 30
  run --step --batch 8 --cache-len 8192 --page 16 --new-tokens 4 --causal --iters 30
  run --step --batch 64 --cache-len 1024 --page 256 --bf16 --iters 30
  run --step --batch 3 --cache-len 1000 --page 48 --new-tokens 16 --causal --iters 5
  for tool in memcheck racecheck; do
    echo "+ compute-sanitizer --tool $tool decode --step (3 sequences of 700, pages of 48, 5 new tokens, causal)" | tee -a "$log"
    /usr/local/cuda/bin/compute-sanitizer --tool "$tool" --error-exitcode 9 "$bins/decode" --step --batch 3 \
      --cache-len 700 --page 48 --new-tokens 5 --causal --iters 1 2>&1 | tail -4 | tee -a "$log"
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "SANITIZER $tool FAILED" | tee -a "$log"; status=1; }
  done
fi
if [ "$mode" = npy ]; then
  # A step's inputs as an inference server would dump them (vLLM's pool layout, pages shuffled,
  # ragged lengths, unused rows NaN), written by numpy, read by `decode --npy`, checked and timed.
  dir="$out/npy"
  mkdir -p "$dir"
  python3 - "$dir" <<'PY'
import sys, numpy as np
d = sys.argv[1]
rng = np.random.default_rng(7)
b, h, hkv, s, dh, page = 3, 8, 2, 4, 128, 16
lens = np.array([1000, 17, 2049], dtype=np.int32)
pages_needed = [(int(n) + page - 1) // page for n in lens]
max_pages = max(pages_needed)
pool = sum(pages_needed) + 5
perm = rng.permutation(pool)
table = np.zeros((b, max_pages), dtype=np.int32)
k = np.full((pool, page, hkv, dh), np.nan, dtype=np.float16)
v = np.full((pool, page, hkv, dh), np.nan, dtype=np.float16)
at = 0
for i, n in enumerate(lens):
    for j in range(pages_needed[i]):
        p = perm[at]; at += 1
        table[i, j] = p
        rows = min(page, int(n) - j * page)
        k[p, :rows] = rng.standard_normal((rows, hkv, dh))
        v[p, :rows] = rng.standard_normal((rows, hkv, dh))
q = rng.standard_normal((b, h, s, dh)).astype(np.float16)
for name, x in [("q", q), ("k_cache", k), ("v_cache", v), ("block_table", table), ("cache_len", lens)]:
    np.save(f"{d}/{name}.npy", x)
print("wrote", d, "lens", lens.tolist(), "pool", pool, "pages")
PY
  run --npy "$dir" --causal --iters 10
  run --npy "$dir" --packed --causal --iters 10
  run --npy "$dir" --step --causal --iters 10
fi
if [ "$mode" = floor ]; then
  # The fixed latency of a decode launch: packed GQA at tiny and short caches under several
  # splits (kv_ctas=1 has no combine across CTAs), SDPA at the same shapes, the kernels cuDNN
  # launches for one call (torch profiler, their GPU time), and Nsight Compute on ours.
  for len in 64 1024 8192; do
    run --packed --batch 1 --cache-len "$len" --page 16 --iters 50 \
      --config "${FLOOR_CONFIGS:-;kv_ctas=1;kv_ctas=2;kv_ctas=8;warps=1,kv_splits=1;warps=1,kv_splits=1,kv_ctas=4}"
  done
  run --packed --batch 8 --cache-len 8192 --page 16 --iters 50
  run --packed --batch 64 --cache-len 1024 --page 16 --iters 50
  python3 scripts/bench_decode.py 1:64:1 1:1024:1 1:8192:1 8:8192:1 64:1024:1 2>&1 | tee -a "$log"
  python3 - <<'PY' 2>&1 | tee -a "$log"
import torch, torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import profile, ProfilerActivity
for b, L in [(1, 1024), (8, 8192), (64, 1024)]:
    q = torch.randn(b, 32, 1, 128, dtype=torch.float16, device="cuda")
    k = torch.randn(b, 8, L, 128, dtype=torch.float16, device="cuda")
    v = torch.randn_like(k)
    for name, be in [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)]:
        with sdpa_kernel([be]):
            for _ in range(5):
                F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(20):
                    F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                torch.cuda.synchronize()
        for e in prof.key_averages():
            if e.device_type.name == "CUDA" or getattr(e, "device_time_total", 0) > 0:
                print(f"B={b} L={L} {name}: {e.count} x {e.key[:90]} avg {e.device_time_total / max(e.count, 1):.2f} us")
PY
  ncu=/usr/local/cuda/bin/ncu
  $ncu --clock-control none -k regex:attention -c 3 --section SpeedOfLight --section LaunchStats --section WarpStateStats \
    "$bins/decode" --packed --batch 1 --cache-len 1024 --page 16 --iters 1 2>&1 | tee -a "$out/decode-floor-ncu.txt" | grep -E "Duration|Registers|Grid Size|Block Size|Shared Memory|Stall|Warp Cycles" | tee -a "$log"
fi
if [ "$mode" = ab ]; then
  # Two builds of the decode example side by side (BASE_BIN, default $bins/decode_base, against
  # $bins/decode), interleaved in rounds so that drift hits both alike; packed GQA with the
  # default schedule at the issue's shapes, pages of 16.
  base=${BASE_BIN:-$bins/decode_base}
  shapes=${AB_SHAPES:-1:1024 1:8192 1:32768 1:131072 8:8192 64:1024}
  for round in $(seq "${ROUNDS:-3}"); do
    for shape in $shapes; do
      for which in old new; do
        bin=$bins/decode
        [ "$which" = old ] && bin=$base
        row=$("$bin" --packed --batch "${shape%%:*}" --cache-len "${shape##*:}" --page 16 --iters 50 2>&1 | tail -1)
        printf 'round %s %-3s B:L=%-8s :: %s\n' "$round" "$which" "$shape" "$row" | tee -a "$log"
      done
    done
  done
  python3 scripts/bench_decode.py $(for s in $shapes; do echo "$s:1"; done) 2>&1 | tee -a "$log"
fi
if [ "$mode" = probe ]; then
  # Where the time goes: the dense forward kernel (no page table) against the paged decode at
  # the same shapes and schedules, pages of 16 against 256, and Nsight Compute of one launch.
  for shape in "1 32768" "64 4096"; do
    set -- $shape
    for c in "warps=4,kv_splits=4" "warps=4,kv_splits=4,kv_ctas=8"; do
      echo "+ attention (dense) B=$1 SK=$2 $c" | tee -a "$log"
      flags=$(echo "$c" | sed -E 's/warps=([0-9]+)/--warps \1/; s/,kv_splits=([0-9]+)/ --kv-splits \1/; s/,kv_ctas=([0-9]+)/ --kv-ctas \1/')
      "$bins/attention" --b "$1" --h 32 --hkv 8 --s 1 --sk "$2" --d 128 --tile-m 16 $flags --iters 50 2>&1 | tail -2 | tee -a "$log"
      run --batch "$1" --cache-len "$2" --page 16 --config "$c"
      run --batch "$1" --cache-len "$2" --page 256 --config "$c"
    done
  done
  /usr/local/cuda/bin/ncu --clock-control none -c 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
    "$bins/decode" --batch 64 --cache-len 4096 --page 16 --iters 1 --config "warps=4,kv_splits=4" 2>&1 | tee -a "$out/decode-ncu.txt" | tail -80
fi
exit $status
