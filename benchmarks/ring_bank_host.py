"""Host time per frame of the two memory banks (`Tracker(bank="dict")` vs `bank="ring"`) on the CPU.

Nano at 256 px with seeded random weights, 3 objects (mask prompts on frame 0), 60 synthetic
frames; the banks are run alternately, ``--rounds`` times each, in one process. Per frame: the
``memory_assembly`` stage (stage hook), the time outside every stage (layouts, bank writes,
prompts, hole filling: the same for both banks except the bank's part) and the whole frame;
medians over the frames after the memory window filled (frames 10..59) of every round; the
same as the main thread's CPU time (``cpu``: the host's own work, robust on a shared machine). The
machine's matmul peak is printed beside them. Masks of the two banks are checked equal.

    OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python benchmarks/ring_bank_host.py --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import defaultdict

import numpy as np
import torch

from surgsam2 import Prompt, Tracker
from surgsam2.bench.machine import measure_matmul_peak
from surgsam2.model.configs import get_config
from surgsam2.model.sam2 import SAM2Model

WARM_FRAMES = 10


class StageTimer:
    """A stage hook summing each stage's wall time and the calling thread's CPU time (the host's
    work, insensitive to a shared machine descheduling it) within the current frame."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def stage(self, name: str):
        start, cpu_start = time.perf_counter(), time.thread_time()
        yield
        self.seconds[name] += time.perf_counter() - start
        self.cpu_seconds[name] += time.thread_time() - cpu_start


def random_nano(image_size: int) -> SAM2Model:
    """Nano with seeded random weights; objects count as visible (object-score bias raised)."""
    torch.manual_seed(0)
    model = SAM2Model(get_config("nano", image_size)).eval()
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return model


def moving_discs(num_frames: int, size: int) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
    """Frames with three discs moving over noise, and the discs' first-frame masks."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    frames, masks = [], {}
    for index in range(num_frames):
        image = rng.integers(60, 120, size=(size, size, 3), dtype=np.uint8)
        for obj_id, (cx, cy, radius) in enumerate([(60 + index, 80, 28), (180 - index, 120, 24), (120, 40 + index, 18)], 1):
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
            image[disc] = (40 * obj_id + 100) % 256
            if index == 0:
                masks[obj_id] = disc
        frames.append(image)
    return frames, masks


def run_once(model: SAM2Model, bank: str, frames, masks, samples: dict[str, list[float]]) -> list[np.ndarray]:
    """One pass over the frames; appends per-frame times (ms) to ``samples``; returns the masks."""
    timer = StageTimer()
    tracker = Tracker(model, memory="efp", bank=bank, stage_hook=timer)
    results = []
    for index, frame in enumerate(frames):
        timer.seconds.clear()
        timer.cpu_seconds.clear()
        start, cpu_start = time.perf_counter(), time.thread_time()
        result = tracker.step(frame, {i: Prompt(mask=m) for i, m in masks.items()} if index == 0 else None)
        total, cpu_total = time.perf_counter() - start, time.thread_time() - cpu_start
        results.append(np.stack([result.masks[i] for i in sorted(result.masks)]))
        if index >= WARM_FRAMES:
            samples["memory_assembly"].append(1e3 * timer.seconds["memory_assembly"])
            samples["outside_stages"].append(1e3 * (total - sum(timer.seconds.values())))
            samples["frame"].append(1e3 * total)
            samples["memory_assembly cpu"].append(1e3 * timer.cpu_seconds["memory_assembly"])
            samples["outside_stages cpu"].append(1e3 * (cpu_total - sum(timer.cpu_seconds.values())))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = measure_matmul_peak()
    model = random_nano(256)
    frames, masks = moving_discs(args.frames, 256)
    samples: dict[str, dict[str, list[float]]] = {bank: defaultdict(list) for bank in ("dict", "ring")}
    with torch.inference_mode():
        for _ in range(args.rounds):
            reference = run_once(model, "dict", frames, masks, samples["dict"])
            seen = run_once(model, "ring", frames, masks, samples["ring"])
            assert all(np.array_equal(a, b) for a, b in zip(reference, seen)), "the banks' masks differ"
    print(f"matmul peak fp32 {peak.fp32_gflops:.0f} / bf16 {peak.bf16_gflops:.0f} GFLOP/s; "
          f"nano 256 fp32, 3 objects, efp, {args.threads} threads, {args.rounds} alternating rounds, "
          f"medians of frames {WARM_FRAMES}..{args.frames - 1} (ms)")  # fmt: skip
    for name in ("memory_assembly", "outside_stages", "frame", "memory_assembly cpu", "outside_stages cpu"):
        dict_ms, ring_ms = (statistics.median(samples[bank][name]) for bank in ("dict", "ring"))
        print(f"  {name:19s} dict {dict_ms:7.3f}  ring {ring_ms:7.3f}  ring/dict {ring_ms / dict_ms:.2f}")


if __name__ == "__main__":
    main()
