#!/usr/bin/env bash
# Issue 7 on the GPU machine (no Rust there: the binaries built here are carried in .device/bin).
#
#   scripts/gpu-validate.sh sanitize [FIRST LAST]   compute-sanitizer memcheck, racecheck, synccheck
#                                                   and initcheck over reference configs FIRST..LAST
#                                                   (0-based, default all) at S = 256 and S = 77 (a tail)
#   scripts/gpu-validate.sh determinism             20 runs of every config at two shapes, hashed
#   scripts/gpu-validate.sh numerics                edge cases on the GPU and against PyTorch SDPA
#   scripts/gpu-validate.sh hostile                 misaligned pointers, shared memory over the limit,
#                                                   a hung kernel: typed errors (tests/gpu_errors.rs, hang)
#
# Tables go to stdout and to $OUT (or /tmp/flashcore-out).
set -uo pipefail
bin=${BIN:-.device/bin}/validate
out=${OUT:-/tmp/flashcore-out}
mkdir -p "$out"
sanitizer=${SANITIZER:-/usr/local/cuda/bin/compute-sanitizer}
what=${1:-sanitize}

# One sanitizer run: prints "errors" (0 when clean) or why it did not finish.
sanitize_one() {
  local tool=$1 name=$2 s=$3 log="$out/sanitizer/$2.s$3.$1.log"
  timeout 300 "$sanitizer" --tool "$tool" --print-limit 20 --error-exitcode 9 "$bin" run "$name" "$s" >"$log" 2>&1
  local rc=$?
  local errors
  errors=$(grep -oE "(ERROR SUMMARY|RACECHECK SUMMARY): [0-9]+" "$log" | grep -oE "[0-9]+$" | tail -1)
  if [ $rc -eq 124 ]; then echo "timeout"; elif [ -z "$errors" ]; then echo "rc=$rc"; elif [ $rc -ne 0 ] && [ "$errors" = 0 ]; then echo "rc=$rc"; else echo "$errors"; fi
}

case "$what" in
sanitize)
  mkdir -p "$out/sanitizer"
  mapfile -t names < <("$bin" list | awk '{print $1}')
  first=${2:-0}
  last=${3:-$((${#names[@]} - 1))}
  {
  "$sanitizer" --version | tail -1
  echo "| config | S | memcheck | racecheck | synccheck | initcheck | result vs float64 |"
  echo "|---|---|---|---|---|---|---|"
  for i in $(seq "$first" "$last"); do
    name=${names[$i]}
    for s in 256 77; do
      # The four tools of one row run side by side (16 CPU cores, one GPU).
      for tool in memcheck racecheck synccheck initcheck; do
        sanitize_one "$tool" "$name" "$s" >"$out/sanitizer/$name.s$s.$tool.result" &
      done
      wait
      result=$(grep -hoE "rel err [^ ]+, [0-9]+ non-finite (ok|FAIL)" "$out/sanitizer/$name.s$s.memcheck.log" | tail -1)
      row="| $name | $s"
      for tool in memcheck racecheck synccheck initcheck; do row="$row | $(cat "$out/sanitizer/$name.s$s.$tool.result")"; done
      echo "$row | ${result:-no result} |"
    done
  done
  } | tee -a "$out/sanitizer-table.md"
  ;;
determinism)
  "$bin" determinism --runs 20 2>&1 | tee "$out/determinism.md"
  ;;
numerics)
  "$bin" numerics "$out/numerics" 2>&1 | tee "$out/numerics.md"
  python3 scripts/sdpa_numerics.py "$out/numerics" 2>&1 | tee "$out/sdpa-numerics.md"
  rm -f "$out"/numerics/*.npy
  ;;
hostile)
  # The GPU half of the hostile-input tests (a test binary built here), then a hung kernel.
  "${BIN:-.device/bin}/gpu_errors" --nocapture 2>&1 | tee "$out/hostile.txt"
  timeout 60 "${BIN:-.device/bin}/hang" 2>&1 | tee -a "$out/hostile.txt"
  ;;
*)
  echo "usage: $0 sanitize [FIRST LAST] | determinism | numerics | hostile" >&2
  exit 2
  ;;
esac
