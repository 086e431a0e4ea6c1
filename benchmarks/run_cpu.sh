#!/usr/bin/env bash
# Reproduce the CPU results of benchmarks/README.md: ours vs the official SAM 2 video predictor
# (sam2==1.1.0, installed by `make install-test`), same random weights, same synthetic frames,
# alternating frame by frame in one process. Writes benchmarks/results/<name>.json and .txt.
#
#   benchmarks/run_cpu.sh            # all results (about 25 min on a 2-core CPU)
#   benchmarks/run_cpu.sh s512_bf16  # the results whose name contains s512_bf16
#
# The numbers only mean something on an otherwise idle machine: before each run the script waits
# (up to MAX_WAIT_S, default 600 s) for the 1-minute load average to fall below LOAD_MAX
# (default 1.5) and records the load in the results either way.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
LOAD_MAX=${LOAD_MAX:-1.5}
MAX_WAIT_S=${MAX_WAIT_S:-600}
FILTER=${1:-}
mkdir -p "$OUT"

wait_for_idle() {
  local waited=0
  while awk -v max="$LOAD_MAX" '{ exit !($1 >= max) }' /proc/loadavg && [ "$waited" -lt "$MAX_WAIT_S" ]; do
    sleep 10; waited=$((waited + 10))
  done
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (waited ${waited} s)"
}

run() {  # run NAME ARGS...: one bench, table to NAME.txt, numbers to NAME.json
  local name=$1; shift
  if [ -n "$FILTER" ] && [[ "$name" != *"$FILTER"* ]]; then return; fi
  wait_for_idle
  echo "== $name: surgsam2 bench $*"
  "$PY" -m surgsam2.cli bench "$@" --quiet --json "$OUT/$name.json" | tee "$OUT/$name.txt"
}

# Hiera-S (SurgSAM2's model) at 512 px, one object: ours efp bf16 vs the official predictor in fp32
# (its default), with the stage profile, and ours without the memory key cache (its before/after).
# The README's runs 1 and 6 also had --sdpa-baseline (the matmul attention path off), which exists
# up to commit b0fd6e3.
run s512_1obj_bf16_vs_official_fp32 --model sam2.1_hiera_s --image-size 512 --objects 1 \
    --dtype bf16 --against-official --official-dtype fp32 --profile --key-cache-baseline
# Equal precision: both bf16 (the official under torch.autocast, as its users do).
run s512_1obj_bf16_vs_official_bf16 --model sam2.1_hiera_s --image-size 512 --objects 1 \
    --dtype bf16 --against-official --official-dtype bf16 --profile
# Equal precision and memory: both fp32, ours with SAM 2's memory (the engine alone) and with efp.
run s512_1obj_fp32fifo_vs_official_fp32 --model sam2.1_hiera_s --image-size 512 --objects 1 \
    --dtype fp32 --memory fifo --against-official --official-dtype fp32 --profile
run s512_1obj_fp32efp_vs_official_fp32 --model sam2.1_hiera_s --image-size 512 --objects 1 \
    --dtype fp32 --memory efp --against-official --official-dtype fp32
# Three objects: ours batches them, the official runs memory attention once per object.
run s512_3obj_bf16_vs_official_fp32 --model sam2.1_hiera_s --image-size 512 --objects 3 \
    --dtype bf16 --against-official --official-dtype fp32 --frames 20 --profile --key-cache-baseline
# The small model at 256 px with three instruments (random weights: speed only).
run nano256_3obj_bf16 --model nano --image-size 256 --objects 3 --dtype bf16 --frames 100 --profile \
    --key-cache-baseline
run nano256_3obj_fp32 --model nano --image-size 256 --objects 3 --dtype fp32 --frames 100 --profile
# fp32 with bf16 memory attention: the fastest for nano on this CPU.
run nano256_3obj_mixed --model nano --image-size 256 --objects 3 --dtype mixed --frames 100 --profile
# State over a long stream (flat memory): nano at 256 px, one object, 10,000 frames.
run nano256_stream_10000 --model nano --image-size 256 --objects 1 --dtype bf16 --stream-frames 10000
