"""The steady frame on the CPU (issue 17): the default bank, the ring bank, and the ring bank with
`steady_frames=True`, one tracker each over one shared model, stepped frame by frame in turn in
one process (the order rotating every frame), so load changes fall on all three alike.

Shipped nano, bf16, 256 px, 3 objects prompted with masks on frame 0 of a synthetic clip; frames/s
is 1 / the median step time over the frames after --warmup (a stream is steady from the 16th
frame after its last prompt). The bf16 matmul peak is printed beside the result.

    PYTHONPATH=src .venv/bin/python benchmarks/steady_frames_cpu.py --frames 60 --warmup 20
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from surgsam2 import Prompt, Tracker
from surgsam2.bench.machine import measure_matmul_peak
from surgsam2.data.synthetic import SyntheticVideoConfig, generate_synthetic_video
from surgsam2.model.checkpoint import load_model

KINDS = {"dict": {}, "ring": {"bank": "ring"}, "ring+steady": {"bank": "ring", "steady_frames": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="timed frames")
    parser.add_argument("--warmup", type=int, default=20, help="untimed frames first (prompt on frame 0)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip = generate_synthetic_video(SyntheticVideoConfig(num_frames=args.frames + args.warmup, class_ids=(1, 3, 6),
                                                         late_entry_probability=0.0, reentry_probability=0.0, seed=3))
    model = load_model("nano", dtype=torch.bfloat16)
    trackers = {name: Tracker(model, **options) for name, options in KINDS.items()}
    prompts = {obj: Prompt(mask=clip.id_maps[0] == obj) for obj in (1, 2, 3)}
    names, times = list(KINDS), {name: [] for name in KINDS}
    with torch.inference_mode():
        for t in range(args.frames + args.warmup):
            for offset in range(len(names)):
                name = names[(t + offset) % len(names)]
                start = time.perf_counter()
                trackers[name].step(clip.frames[t], prompts if t == 0 else None)
                if t >= args.warmup:
                    times[name].append(time.perf_counter() - start)
    peak = measure_matmul_peak()
    print(f"steady frames run: {trackers['ring+steady'].steady.count} of {args.frames + args.warmup}")
    base = float(np.median(times["dict"]))
    for name, seconds in times.items():
        median = float(np.median(seconds))
        print(f"{name}: median {1000 * median:.1f} ms, {1 / median:.2f} frames/s, {base / median:.2f}x dict")
    print(f"machine bf16 matmul peak {peak.bf16_gflops:.0f} GFLOP/s, {args.threads} threads")


if __name__ == "__main__":
    main()
