#!/usr/bin/env bash
# The GPU checks and benchmarks of issue 6, for a lent GPU machine (one call, ~4 minutes; with
# GPU_RUN_COMPILE=1 also the torch.compile bench, ~2 more): the CUDA tests, where the tracker
# waits for the GPU, then `surgsam2 bench --device cuda` against the official predictor, eager and
# with CUDA graphs. Each step has its own time limit, so one failure or hang costs only its step.
# Outputs: $OUT/log.txt (everything printed) and one JSON per bench (at most 7).
#
# Needs python3 with torch (CUDA) there, and the official sam2 1.1.0 with hydra-core, omegaconf,
# antlr4 and iopath importable: a machine without a package registry gets them as a copied
# site-packages folder, DEVSITE (default .devsite; see benchmarks/README.md, "GPU").
# BEFORE_SRC=<folder holding an older surgsam2 package>: also bench that code, eager fp32, first
# (the "before" of a change, on the same machine in the same call).
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
SITE="$PWD/${DEVSITE:-.devsite}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD/src:$SITE" PYTHONUNBUFFERED=1
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
S="--model sam2.1_hiera_s --image-size 512 --frames 100 --warmup 20 --against-official"
step 20 machine bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python3 -c "import torch, sam2; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"'
if [ -n "${BEFORE_SRC:-}" ]; then
  PYTHONPATH="$PWD/$BEFORE_SRC:$SITE" step 90 "bench BEFORE ($BEFORE_SRC) hiera_s_1obj_fp32" \
    python3 -m surgsam2.cli bench --device cuda $S --objects 1 --dtype fp32 --official-dtype fp32
fi
step 150 "CUDA tests" python3 -m pytest -q -ra -s -p no:cacheprovider tests/test_cuda.py \
  tests/test_memory_policies.py -k "cuda or synchronise or device"
step 60 "host syncs" python3 benchmarks/gpu/host_syncs.py --objects 3
bench 90 hiera_s_1obj_fp32 $S --objects 1 --dtype fp32 --official-dtype fp32
bench 90 hiera_s_1obj_fp32_graphs $S --objects 1 --dtype fp32 --official-dtype fp32 --cuda-graphs
bench 90 hiera_s_1obj_bf16_graphs $S --objects 1 --dtype bf16 --official-dtype bf16 --cuda-graphs
bench 90 hiera_s_3obj_bf16_graphs $S --objects 3 --dtype bf16 --official-dtype bf16 --cuda-graphs
bench 60 nano_256_3obj_bf16_graphs --model nano --image-size 256 --objects 3 --dtype bf16 --frames 200 \
  --warmup 20 --cuda-graphs
bench 90 hiera_s_1obj_bf16_graphs_profile $S --objects 1 --dtype bf16 --official-dtype bf16 --cuda-graphs \
  --profile --frames 40
if [ -n "${GPU_RUN_COMPILE:-}" ]; then
  bench 200 hiera_s_1obj_bf16_compile $S --objects 1 --dtype bf16 --official-dtype bf16 --compile
fi
grep -h -e '^=== .*exit' -e 'frames/s:' -e '^frames/s' -e 'CUDA graphs of' "$LOG"
