#!/usr/bin/env bash
# Every GPU check and benchmark of issue 17, for a lent GPU machine, in ONE call of at most
# 8 minutes (a deadline: a step starts only with enough time left, and never runs past it):
# the CUDA tests, where the tracker waits for the GPU, then `surgsam2 bench --device cuda`:
# Hiera-S at 512 px with 1 / 3 / 16 objects against the official predictor (bf16, ours with CUDA
# graphs; 1 and 3 objects also with --steady-frames: the ring bank, each steady frame one CUDA
# graph), 1 / 4 / 16 streams x 1 object, Hiera-S at 1024 px against the official predictor in its
# VOS mode (vos_optimized=True, full torch.compile, the mode of its published 84.8 frames/s), and
# nano at 256 px. Steps run in priority order, each with its own limit, so one failure or hang
# costs only its step. Outputs: $OUT/log.txt (everything printed), one JSON per bench, and
# $OUT/summary.json (every measured frames/s beside the target; benchmarks/gpu/summary.py).
#
# Needs python3 with torch (CUDA) there, and the official sam2 1.1.0 with hydra-core, omegaconf,
# antlr4 and iopath importable: a machine without a package registry gets them as a copied
# site-packages folder, DEVSITE (default .devsite; see benchmarks/README.md, "GPU").
# BEFORE_SRC=<folder holding an older surgsam2 package>: also bench that code first (the "before"
# of a change, on the same machine in the same call). BUDGET_S: the deadline (default 480 s).
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
SITE="$PWD/${DEVSITE:-.devsite}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD/src:$SITE" PYTHONUNBUFFERED=1
LOG="$OUT/log.txt"
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-480} ))
step() {  # step SECONDS LABEL COMMAND...: run within min(SECONDS, time left), log, never stop the script
  local limit=$1 label=$2 left
  shift 2
  left=$(( DEADLINE - $(date +%s) - 5 ))
  if [ "$left" -lt 20 ]; then
    echo "=== $label: skipped, ${left}s left before the deadline" | tee -a "$LOG"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $label ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | grep -v '^frame [0-9]' | tee -a "$LOG"
  echo "=== $label: exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}
bench() {  # bench SECONDS NAME ARGS...
  local limit=$1 name=$2
  shift 2
  step "$limit" "bench $name" python3 -m surgsam2.cli bench --device cuda --quiet --json "$OUT/$name.json" "$@"
}
S512="--model sam2.1_hiera_s --image-size 512 --dtype bf16 --cuda-graphs"
VS_OFFICIAL="--against-official --official-dtype bf16"
step 20 machine bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python3 -c "import torch, sam2; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"'
if [ -n "${BEFORE_SRC:-}" ]; then
  PYTHONPATH="$PWD/$BEFORE_SRC:$SITE" step 60 "bench BEFORE ($BEFORE_SRC) hiera_s_512_1obj" \
    python3 -m surgsam2.cli bench --device cuda --quiet $S512 --objects 1 --frames 100 --warmup 20
fi
step 100 "CUDA tests" python3 -m pytest -q -ra -s -p no:cacheprovider tests/test_cuda.py \
  tests/test_memory_policies.py tests/test_postprocess.py tests/test_streams.py tests/test_memory_ring.py \
  tests/test_steady_frame.py -k "cuda or synchronise or device"
step 30 "host syncs" python3 benchmarks/gpu/host_syncs.py --objects 3 --json "$OUT/host_syncs.json"
step 30 "host syncs, ring bank" python3 benchmarks/gpu/host_syncs.py --objects 3 --bank ring \
  --json "$OUT/host_syncs_ring.json"
step 30 "host syncs, steady frames" python3 benchmarks/gpu/host_syncs.py --objects 3 --steady-frames \
  --json "$OUT/host_syncs_steady.json"
bench 45 hiera_s_512_1obj $S512 --objects 1 --frames 200 --warmup 20 $VS_OFFICIAL
bench 45 hiera_s_512_1obj_steady $S512 --steady-frames --objects 1 --frames 200 --warmup 20 $VS_OFFICIAL
bench 45 hiera_s_512_3obj $S512 --objects 3 --frames 150 --warmup 20 $VS_OFFICIAL
bench 45 hiera_s_512_3obj_steady $S512 --steady-frames --objects 3 --frames 150 --warmup 20 $VS_OFFICIAL
bench 60 hiera_s_512_16obj $S512 --objects 16 --frames 40 --warmup 10 $VS_OFFICIAL
bench 30 streams_4x1obj $S512 --objects 1 --streams 4 --frames 100 --warmup 20
bench 40 streams_16x1obj $S512 --objects 1 --streams 16 --frames 50 --warmup 10
bench 25 nano_256_3obj --model nano --image-size 256 --dtype bf16 --cuda-graphs --objects 3 --frames 300 --warmup 20
bench 150 hiera_s_1024_1obj_vos --model sam2.1_hiera_s --image-size 1024 --dtype bf16 --cuda-graphs --objects 1 \
  --frames 60 --warmup 25 $VS_OFFICIAL --official-vos-optimized
step 15 summary python3 benchmarks/gpu/summary.py "$OUT"
grep -h -e '^=== .*exit' -e '^=== .*skipped' "$LOG"
