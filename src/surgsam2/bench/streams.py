"""`surgsam2 bench --streams N`: N copies of the bench clip tracked together by one
`MultiStreamTracker` against one `Tracker` on the clip, step by step in alternation, in one run.

The N streams share each network call (image encoder, memory attention, decoder, memory encoder;
`tracking.streams`). Ours only: the official predictor has no multi-stream mode. Reported per side over the steps after
``warmup``: the median step, frames/s in all (N frames a step: N / median) and per stream
(1 / median), and the N-stream side's frames/s in all over the single tracker's, beside this
machine's matmul peak.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from surgsam2.bench.config import BenchConfig
from surgsam2.bench.machine import (
    MachineInfo,
    MatmulPeak,
    load_average,
    measure_matmul_peak,
    peak_rss_bytes,
    start_run,
    synchronize,
)
from surgsam2.bench.runners import build_our_model, make_clip


@dataclass
class StreamsSide:
    """One side: ``streams`` copies of the clip advanced per step."""

    name: str
    streams: int
    step_seconds: list[float]
    median_s: float
    frames_per_second: float  # all streams together: streams / median step
    frames_per_second_per_stream: float  # 1 / median step


@dataclass
class StreamsBenchResult:
    """`--streams N`: the single tracker and the N-stream tracker, side by side."""

    config: BenchConfig
    machine: MachineInfo
    peak: MatmulPeak
    sides: list[StreamsSide]
    ratio: float  # frames/s in all, N streams over one tracker
    peak_rss_bytes: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def format_table(self) -> str:
        config, machine, peak = self.config, self.machine, self.peak
        lines = [
            f"surgsam2 bench --streams {config.streams}: {config.model} @ {config.image_size}px, "
            f"{config.objects} object(s) per stream, {config.memory}, {config.dtype}, {config.device}, "
            f"{config.frames} timed steps after {config.warmup} warm-up",
            f"machine: {machine.cpu_model}, {machine.logical_cpus} CPUs, {machine.torch_threads} torch threads, "
            f"torch {machine.torch_version}, {machine.date_utc}; load before {machine.load_before}, "
            f"after {machine.load_after}",
            f"matmul peak ({peak.size}^3): fp32 {peak.fp32_gflops:.0f} GFLOP/s, bf16 {peak.bf16_gflops:.0f} GFLOP/s",
            f"{'side':<22}{'median step':>14}{'frames/s in all':>18}{'frames/s per stream':>22}",
        ]
        lines += [
            f"{side.name:<22}{1e3 * side.median_s:>11.1f} ms{side.frames_per_second:>18.2f}"
            f"{side.frames_per_second_per_stream:>22.2f}"
            for side in self.sides
        ]
        lines.append(f"{self.sides[-1].name} / {self.sides[0].name}, frames/s in all: {self.ratio:.2f}x")
        lines.append(f"peak memory: {self.peak_rss_bytes / 2**20:.2f} MB (process peak RSS, both sides)")
        lines.append("note: ours only; the official predictor has no multi-stream mode")
        if machine.load_before[0] >= max(1.5, 0.25 * machine.logical_cpus):
            lines.append(
                f"note: load average {machine.load_before[0]:.2f} on {machine.logical_cpus} CPUs before the run:"
                " the machine was shared, absolute numbers are pessimistic (the alternation keeps the ratio fair)"
            )
        return "\n".join(lines)


def _side(name: str, streams: int, seconds: list[float]) -> StreamsSide:
    median = statistics.median(seconds)
    return StreamsSide(name, streams, [round(s, 6) for s in seconds], median, streams / median, 1.0 / median)


def run_streams(config: BenchConfig) -> StreamsBenchResult:
    """Track the clip with one `Tracker` and ``config.streams`` copies of it with one
    `MultiStreamTracker` (same model), a step of each in turn, the first side alternating."""
    from surgsam2.tracking.prompts import Prompt
    from surgsam2.tracking.streams import MultiStreamTracker
    from surgsam2.tracking.tracker import Tracker

    if config.streams is None:
        raise ValueError("run_streams needs streams")
    device, machine = start_run(config)
    peak = measure_matmul_peak(device=device)
    total = config.warmup + config.frames
    clip = make_clip(config.image_size, total, config.objects, config.seed, None)
    model = build_our_model(config, None)
    if config.cuda_graphs:
        model.use_cuda_graphs()
    prompts = {obj_id: Prompt(mask=mask) for obj_id, mask in clip.masks.items()}
    single = Tracker(model, memory=config.memory)
    multi = MultiStreamTracker(model, config.streams, memory=config.memory)
    steps = {
        "one tracker": lambda i: single.step(clip.frames[i], prompts if i == 0 else None),
        f"{config.streams} stream{'s' if config.streams != 1 else ''}": lambda i: multi.step(
            [clip.frames[i]] * config.streams, [prompts if i == 0 else None] * config.streams
        ),
    }
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for index in range(total):
        for name in names[index % 2 :] + names[: index % 2]:
            synchronize(device)
            start = time.perf_counter()
            steps[name](index)
            synchronize(device)
            if index >= config.warmup:
                seconds[name].append(time.perf_counter() - start)
    machine.load_after = load_average()
    sides = [_side(names[0], 1, seconds[names[0]]), _side(names[1], config.streams, seconds[names[1]])]
    return StreamsBenchResult(
        config, machine, peak, sides, sides[1].frames_per_second / sides[0].frames_per_second, peak_rss_bytes()
    )
