#!/usr/bin/env bash
# Runs on the GPU machine: split-KV (`--kv-splits`) checked against float64 over tails, causal,
# cross-attention, grouped-query heads, D in {64, 128}, bf16, load warps and persistent CTAs;
# then the headline shape timed with and without split-KV, interleaved, in one process each.
set -uo pipefail
bin=${1:-.device/bin/attention}
fails=0
run() {
  local label=$1; shift
  local row
  row=$(timeout 120 "$bin" "$@" --iters 30 --warmup 5 2>&1 | tail -1)
  printf '%-62s :: %s\n' "$label" "$row"
  case "$row" in *" ok"*|*"ok "*) ;; *) fails=$((fails + 1)) ;; esac
}
splits=(
  "--tile-m 32 --tile-n 128 --warps 4 --kv-splits 2 --stages 2 --load-warps 2"
  "--tile-m 16 --tile-n 64 --warps 4 --kv-splits 4 --stages 2"
  "--tile-m 64 --tile-n 64 --warps 8 --kv-splits 2 --stages 1 --a-in-smem"
  "--tile-m 32 --tile-n 128 --warps 4 --kv-splits 2 --stages 3 --load-warps 1 --persistent"
)
for cfg in "${splits[@]}"; do
  for d in 64 128; do
    for shape in "--b 1 --h 8 --s 512" "--b 2 --h 4 --s 77 --sk 200" "--b 2 --h 4 --s 1000 --sk 4097" \
                 "--b 1 --h 3 --s 4097" "--b 2 --h 16 --hkv 2 --s 1024" "--b 1 --h 2 --s 150 --sk 40"; do
      for causal in "" "--causal"; do
        run "D=$d $shape $causal" --d $d $shape $causal $cfg
      done
    done
    run "D=$d bf16 --b 1 --h 8 --s 1024" --d $d --b 1 --h 8 --s 1024 --dtype bf16 $cfg
  done
  echo "-- $cfg"
done
echo "split-KV rows failing: $fails"
# The headline shape: the tuned default, then split-KV schedules, interleaved three times.
for round in 1 2 3; do
  for cfg in "" "--tile-m 32 --tile-n 128 --warps 4 --kv-splits 2 --stages 2 --load-warps 2" \
             "--tile-m 32 --tile-n 256 --warps 4 --kv-splits 2 --stages 2 --load-warps 2" \
             "--tile-m 16 --tile-n 128 --warps 4 --kv-splits 4 --stages 2 --load-warps 1"; do
    row=$(timeout 60 "$bin" --b 1 --h 8 --s 512 --d 64 --iters 200 --warmup 50 $cfg 2>&1 | tail -1)
    printf 'headline round %s %-70s :: %s\n' "$round" "${cfg:-(tuned default)}" "$row"
  done
done
[ "$fails" -eq 0 ]
