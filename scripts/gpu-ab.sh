#!/usr/bin/env bash
# Runs on the GPU machine: two builds of the example side by side (A/B), interleaved in rounds
# so that clock and thermal drift hit both alike; one line per run, the build named first.
# usage: scripts/gpu-ab.sh path/to/old-binary path/to/new-binary
#   SHAPES="flags;flags;..." replaces the default shapes; ITERS (200) and ROUNDS (3) likewise.
set -uo pipefail
old=$1
new=$2
IFS=';' read -r -a shapes <<< "${SHAPES:---b 1 --h 8 --s 512 --d 64;--b 4 --h 16 --s 4096 --d 64;--b 4 --h 16 --s 4096 --d 128}"
for round in $(seq "${ROUNDS:-3}"); do
  for shape in "${shapes[@]}"; do
    for which in old new; do
      bin=$old
      [ "$which" = new ] && bin=$new
      row=$(timeout 120 "$bin" $shape --iters "${ITERS:-200}" --warmup 20 2>&1 | tail -1)
      printf 'round %s %-3s %-30s :: %s\n' "$round" "$which" "$shape" "$row"
    done
  done
done
