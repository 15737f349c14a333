#!/usr/bin/env bash
# Runs on the GPU machine: stages {1,2,3} x layouts {uniform, 1 load + 4 compute, 4 load + 4 compute warps} x
# {one CTA per tile, persistent} at D in {64,128}, S in {512,4096}, (B,H) in {(1,8),(4,16)};
# every cell checked against float64 and timed. LAYOUTS overrides the layouts.
set -uo pipefail
bin=${1:-.device/bin/attention}
out=${OUT:-/tmp/flashcore-out}
mkdir -p "$out"
for d in 64 128; do
  for bh in "1 8" "4 16"; do
    set -- $bh
    for s in 512 4096; do
      for stages in 1 2 3; do
        for layout in ${LAYOUTS:-0 1 4}; do
          for p in "" "--persistent"; do
            line=$("$bin" --b $1 --h $2 --s $s --d $d --stages $stages --load-warps $layout $p --iters 30 --warmup 5 2>&1 | tail -1)
            printf '%-3s %-3s %-5s %-4s stages=%s load_warps=%s %-14s %s\n' "$1" "$2" "$s" "$d" "$stages" "$layout" "${p:---one-per-cta}" "$line" | tee -a "$out/pipeline.txt"
          done
        done
      done
    done
  done
done
