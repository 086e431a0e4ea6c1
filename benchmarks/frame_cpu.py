"""The whole tracker frame on the CPU, before and after a change, and how far from the matmul peak
its non-matmul work keeps it.

One tracker per side (this working tree as "ours", the package at each ``--against`` commit),
the same seeded random weights (object-score head biased as `surgsam2 bench` does) and the same
synthetic clip with ``--objects`` objects prompted by masks on frame 0; the sides are stepped
frame by frame in turn (the order rotating), so load changes fall on all alike. Frames after
``--warmup`` are timed (a stream is steady from the 16th frame after its prompt). Prints each
side's median and best frame, frames/s, GFLOP/s (one steady frame's FLOPs, counted per side)
against the bf16 matmul peak measured in the same run, and the masks' worst IoU against ours.

``--split`` then runs ``--split-frames`` more frames of ours alone, half timed, half under
torch.profiler, and splits the frame (the unprofiled median) into matmul kernels (oneDNN
linears, mm/bmm/addmm/baddbmm, convolutions; their profiled self time) and the rest (attention
softmax, normalisation, residual adds, copies, Python and dispatch): the ceiling printed is the
fraction of the peak the frame would reach if every matmul ran at the peak and the rest took the
time it takes now.

    OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python benchmarks/frame_cpu.py --model sam2.1_hiera_s \\
        --image-size 512 --objects 1 --against HEAD~1 --split
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from package_at import import_package_at
from surgsam2.bench.machine import count_flops, load_average, measure_matmul_peak
from surgsam2.bench.runners import RANDOM_OBJECT_SCORE_BIAS, make_clip, mask_iou
from surgsam2.memory.policy_table import DEFAULT_POLICY
from surgsam2.runtime.allocator import keep_freed_memory

# Profiler op names whose self time is matmul work (counted FLOPs run in them).
MATMUL_OPS = frozenset({
    "mkldnn::_linear_pointwise", "aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm",
    "aten::mkldnn_convolution", "aten::_scaled_dot_product_flash_attention_for_cpu",
})


def build_side(package: str, args: argparse.Namespace, state: dict[str, torch.Tensor] | None) -> Any:
    """A tracker of ``package`` over its model with ``state`` loaded (or seeded random weights)."""
    load_model = importlib.import_module(f"{package}.model.checkpoint").load_model
    tracker_class = importlib.import_module(f"{package}.tracking.tracker").Tracker
    torch.manual_seed(args.seed)
    model = load_model(args.model, checkpoint=None, image_size=args.image_size, dtype=args.dtype)
    with torch.no_grad():
        if state is None:
            model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(RANDOM_OBJECT_SCORE_BIAS)
        else:
            model.load_state_dict(state)
    return tracker_class(model, memory=args.memory)


def prompts_of(package: str, masks: dict[int, np.ndarray]) -> dict[int, Any]:
    """Mask prompts in ``package``'s own Prompt type."""
    prompt_class = importlib.import_module(f"{package}.tracking.prompts").Prompt
    return {obj_id: prompt_class(mask=mask) for obj_id, mask in masks.items()}


def time_sides(
    sides: dict[str, Any], prompts: dict[str, dict[int, Any]], frames: list[np.ndarray], warmup: int
) -> tuple[dict[str, list[float]], float]:
    """Seconds per timed frame of each side, stepped in turn, and the worst mask IoU of a side
    against ours over all frames."""
    names = list(sides)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    worst = 1.0
    for index, frame in enumerate(frames):
        masks: dict[str, dict[int, np.ndarray]] = {}
        for offset in range(len(names)):
            name = names[(index + offset) % len(names)]
            start = time.perf_counter()
            result = sides[name].step(frame, prompts[name] if index == 0 else None)
            if index >= warmup:
                seconds[name].append(time.perf_counter() - start)
            masks[name] = result.masks
        for name in names[1:]:
            for obj_id, mask in masks["ours"].items():
                worst = min(worst, mask_iou(mask, masks[name][obj_id]))
    return seconds, worst


def split_matmul_time(tracker: Any, frames: list[np.ndarray]) -> tuple[float, float, float]:
    """(frame, matmul-kernel, other-op) seconds per frame: the first half of ``frames`` timed
    without the profiler (median; the profiler's per-op cost would count as non-matmul time),
    the second half under torch.profiler for the ops' self times."""
    from torch.profiler import ProfilerActivity, profile

    half = len(frames) // 2
    seconds = []
    for frame in frames[:half]:
        start = time.perf_counter()
        tracker.step(frame)
        seconds.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for frame in frames[half:]:
            tracker.step(frame)
    events = prof.key_averages()
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / 1e6
    ops = sum(e.self_cpu_time_total for e in events if e.key.startswith(("aten::", "mkldnn::"))) / 1e6
    count = len(frames) - half
    return statistics.median(seconds), matmul / count, (ops - matmul) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam2.1_hiera_s")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--objects", type=int, default=1)
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--memory", default=DEFAULT_POLICY)
    parser.add_argument("--frames", type=int, default=12, help="timed frames")
    parser.add_argument("--warmup", type=int, default=16, help="untimed frames first (prompt on frame 0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--against", metavar="REF", nargs="*", default=[], help="git commits to compare against in the same process")
    parser.add_argument("--split", action="store_true", help="then profile ours: matmul kernels vs the rest, and the ceiling")
    parser.add_argument("--split-frames", type=int, default=8, help="frames of ours alone for --split: half timed, half profiled")
    args = parser.parse_args()
    keep_freed_memory()  # as every surgsam2 command does
    torch.set_num_threads(args.threads)
    clip = make_clip(args.image_size, args.warmup + args.frames + 1 + args.split_frames, args.objects, args.seed, None)
    timed = clip.frames[: args.warmup + args.frames]
    print(f"{args.model} {args.image_size} px, {args.objects} object(s), {args.dtype}, {args.memory}, "
          f"{args.threads} thread(s); load average before {load_average()}")
    # no_grad, not inference_mode: the trunk's position-embedding cache reads version counters.
    with torch.no_grad(), tempfile.TemporaryDirectory() as folder:
        sides = {"ours": build_side("surgsam2", args, None)}
        state = sides["ours"].model.state_dict()
        packages = {"ours": "surgsam2"}
        for index, commit in enumerate(args.against):
            packages[commit] = import_package_at(commit, Path(folder) / str(index), f"surgsam2_ref{index}")
            sides[commit] = build_side(packages[commit], args, state)
        prompts = {name: prompts_of(packages[name], clip.masks) for name in sides}
        seconds, worst_iou = time_sides(sides, prompts, timed, args.warmup)
        gflop = {}
        for name, tracker in sides.items():
            with count_flops() as flops:
                tracker.step(clip.frames[len(timed)])
            gflop[name] = flops.total / 1e9
        peak = measure_matmul_peak().bf16_gflops
        for name, values in seconds.items():
            best, median = min(values), statistics.median(values)
            print(f"  {name:>12}: median {1e3 * median:7.1f} ms ({1 / median:6.2f} frames/s), best {1e3 * best:7.1f} ms, "
                  f"{gflop[name]:.1f} GFLOP, {gflop[name] / median:5.0f} GFLOP/s = {gflop[name] / median / peak:.2f} of the bf16 peak")
        for commit in args.against:
            print(f"  ours / {commit}: median {statistics.median(seconds[commit]) / statistics.median(seconds['ours']):.3f}x, "
                  f"best {min(seconds[commit]) / min(seconds['ours']):.3f}x")
        if args.against:
            print(f"  worst mask IoU against ours over {len(timed)} frames: {worst_iou:.4f}")
        print(f"bf16 matmul peak {peak:.0f} GFLOP/s ({args.threads} threads); load average after {load_average()}")
        if args.split:
            wall, matmul, other_ops = split_matmul_time(sides["ours"], clip.frames[len(timed) + 1 :])
            peak = measure_matmul_peak().bf16_gflops  # again: this machine's speed drifts within minutes
            print(f"bf16 matmul peak measured again after the split: {peak:.0f} GFLOP/s")
            at_peak = gflop["ours"] / peak
            rest = wall - matmul
            print(f"split of ours alone ({args.split_frames} frames): frame {1e3 * wall:.1f} ms (unprofiled median) = matmul "
                  f"kernels {1e3 * matmul:.1f} ms ({gflop['ours'] / matmul:.0f} GFLOP/s = {at_peak / matmul:.2f} of the peak) "
                  f"+ the rest {1e3 * rest:.1f} ms (profiled: other ops {1e3 * other_ops:.1f} ms)")
            print(f"ceiling with every matmul at the peak ({1e3 * at_peak:.1f} ms) and the rest as now: "
                  f"{at_peak / (at_peak + rest):.2f} of the peak")


if __name__ == "__main__":
    main()
