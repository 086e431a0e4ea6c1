#!/bin/bash
# before/after interleaved per N, one sitting
cd /work/wt/streams2
for n in 1 4 8; do
  for side in before after; do
    if [ $side = before ]; then src=/tmp/s2_before/src; else src=/work/wt/streams2/src; fi
    echo "=== $side N=$n $(date -u +%T) ==="
    PYTHONPATH=$src /work/main/.venv/bin/python -m surgsam2.cli bench --streams $n --model nano --image-size 256 \
      --objects 1 --frames 30 --warmup 5 --threads 1 --json /tmp/s2_bench/${side}_$n.json 2>&1
  done
done
