#!/usr/bin/env bash
# The GPU checks and benchmarks of issue 6, for a lent GPU machine (one call, ~6 minutes):
# the CUDA tests, where the tracker waits for the GPU, then `surgsam2 bench --device cuda`
# against the official predictor. Each step has its own time limit, so one failure or hang
# costs only its step. Outputs: $OUT/log.txt (everything printed) and one JSON per bench.
#
# Needs python3 with torch (CUDA) there, and the official sam2 1.1.0 with hydra-core, omegaconf,
# antlr4 and iopath importable: a machine without a package registry gets them as a copied
# site-packages folder, DEVSITE (default .devsite; see benchmarks/README.md, "GPU").
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD/${DEVSITE:-.devsite}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUT/log.txt"
step() {  # step SECONDS LABEL COMMAND...: run with a time limit, log, never stop the script
  local limit=$1 label=$2
  shift 2
  echo "=== $label ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | grep -v '^frame [0-9]' | tee -a "$LOG"
  echo "=== $label: exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}
bench() {  # bench SECONDS NAME ARGS...
  local limit=$1 name=$2
  shift 2
  step "$limit" "bench $name" python3 -m surgsam2.cli bench --device cuda --json "$OUT/$name.json" "$@"
}
step 20 machine bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python3 -c "import torch, sam2; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"'
step 150 "CUDA tests" python3 -m pytest -q -ra -s -p no:cacheprovider tests/test_cuda.py \
  tests/test_memory_policies.py -k "cuda or synchronise or device"
step 60 "host syncs" python3 benchmarks/gpu/host_syncs.py --objects 3
S="--model sam2.1_hiera_s --image-size 512 --frames 100 --warmup 10 --against-official"
bench 90 hiera_s_1obj_fp32 $S --objects 1 --dtype fp32 --official-dtype fp32
bench 90 hiera_s_1obj_bf16 $S --objects 1 --dtype bf16 --official-dtype bf16
bench 90 hiera_s_3obj_bf16 $S --objects 3 --dtype bf16 --official-dtype bf16
bench 60 nano_256_3obj_bf16 --model nano --image-size 256 --objects 3 --dtype bf16 --frames 200 --warmup 10
bench 90 hiera_s_1obj_bf16_profile $S --objects 1 --dtype bf16 --official-dtype bf16 --profile --frames 40
bench 200 hiera_s_1obj_bf16_compile $S --objects 1 --dtype bf16 --official-dtype bf16 --compile --warmup 20
grep -h -e '^=== .*exit' -e 'frames/s:' -e '^frames/s' "$LOG"
