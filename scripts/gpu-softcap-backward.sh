#!/usr/bin/env bash
# Runs on the GPU machine: softcap's causal backward next to the plain causal backward (the example
# attention_backward, binaries in .device/bin): checks against float64, 5-run hashes, times.
set -uo pipefail
b=.device/bin/attention_backward
for args in "--b 2 --h 16 --s 8192 --d 128 --causal" "--b 4 --h 16 --s 2048 --d 64 --causal"; do
  echo "== plain $args"; $b $args --repeat 5 2>&1 | tail -12
  echo "== softcap 30 $args"; $b $args --softcap 30 --repeat 5 2>&1 | tail -12
done
echo "== softcap 2 bf16 GQA tail"; $b --b 1 --h 4 --hkv 2 --s 1000 --sk 1537 --d 64 --causal --softcap 2 --dtype bf16 --repeat 5 2>&1 | tail -12
