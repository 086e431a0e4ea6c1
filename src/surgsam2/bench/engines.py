"""`surgsam2 bench --engine`: the engines that can run our tracker, on the same frames, in one run.

The bench exports the model it runs (seeded random weights, object-score head biased, as every
bench) to a scratch folder, then steps each engine in its fastest precision on this CPU (torch
bf16, ONNX Runtime fp32, OpenVINO bf16 compiled from the fp32 files) frame by frame, the order
rotating each frame, so that drift of the machine hits all engines alike. Every engine runs the
same number of threads. Our fp32 torch tracker steps the same frames untimed as the reference:
each engine's masks are compared with it per object and frame (IoU min and mean over the frames
after the prompt frame). Reported beside the frames/s: the machine's fp32 and bf16 matmul peaks.
A benchmark, never a test: nothing here asserts on time.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from surgsam2.app.options import ENGINES
from surgsam2.bench.config import BenchConfig
from surgsam2.bench.machine import MachineInfo, MatmulPeak, load_average, machine_info, measure_matmul_peak
from surgsam2.bench.runners import BenchClip, build_our_model, make_clip, mask_iou
from surgsam2.export.engines import engine_version
from surgsam2.export.runtime import RUNTIME_POLICIES

# Each engine's fastest precision on a CPU with bf16 instructions (ONNX Runtime's CPU provider runs fp32).
FASTEST_PRECISION: dict[str, str] = {"torch": "bf16", "onnx": "fp32", "openvino": "bf16"}
REFERENCE = "torch fp32"


def parse_engines(values: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``--engine`` values (repeated and/or comma lists) as engine names in order, each once;
    ValueError naming an unknown one."""
    names: list[str] = []
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if name not in ENGINES:
                raise ValueError(f"--engine {name!r}: unknown engine; choose from {', '.join(ENGINES)}")
            if name not in names:
                names.append(name)
    return tuple(names)


def check_engine_config(config: BenchConfig) -> None:
    """One-line errors for options that do not go with --engine (before anything runs)."""
    parse_engines(config.engines)
    others = {
        "--against-official": config.against_official, "--key-cache-baseline": config.key_cache_baseline,
        "--stream-frames": config.stream_frames is not None, "--profile": config.profile,
        "--compile": config.compile, "--cuda-graphs": config.cuda_graphs,
    }  # fmt: skip
    given = [flag for flag, on in others.items() if on]
    if given:
        raise ValueError(f"--engine compares engines on their own: drop {', '.join(given)}")
    if config.device != "cpu":
        raise ValueError(f"--engine runs on the CPU (the exported engines' device), not --device {config.device}")
    if config.dtype != "fp32":
        precisions = ", ".join(f"{name} {FASTEST_PRECISION[name]}" for name in config.engines)
        raise ValueError(f"--engine runs each engine in its fastest precision ({precisions}): drop --dtype")
    if any(name != "torch" for name in config.engines) and config.memory not in RUNTIME_POLICIES:
        raise ValueError(f"--memory {config.memory}: the exported engines run {', '.join(RUNTIME_POLICIES)}")


@dataclass
class EngineSide:
    """One engine's numbers: timed frames, and its masks against the fp32 torch reference."""

    name: str
    precision: str  # what it ran (OpenVINO's is read back from the compiled graphs)
    runtime: str  # e.g. "openvino 2026.4.1"
    frame_seconds: list[float]
    median_s: float
    p90_s: float
    frames_per_second: float  # 1 / median
    iou_min: float
    iou_mean: float
    speed_over_torch: float | None = None  # frames/s over the torch engine's, when it ran


@dataclass
class EngineBenchResult:
    """A `bench --engine` run: the engines side by side, the reference they were compared with."""

    config: BenchConfig
    machine: MachineInfo
    peak: MatmulPeak
    threads: int
    sides: dict[str, EngineSide]
    reference: str = REFERENCE
    export_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format_table(self) -> str:
        return format_engine_table(self)


class _TrackerRunner:
    """A tracker with the `Tracker` API driven over the clip (mask prompts on frame 0)."""

    def __init__(self, name: str, tracker: Any, clip: BenchClip) -> None:
        from surgsam2.tracking.prompts import Prompt

        self.name, self.tracker, self.clip = name, tracker, clip
        self.prompts = {obj_id: Prompt(mask=mask) for obj_id, mask in clip.masks.items()}

    def step(self, index: int) -> dict[int, np.ndarray]:
        return self.tracker.step(self.clip.frames[index], self.prompts if index == 0 else None).masks


def _log(config: BenchConfig, message: str) -> None:
    if config.progress:
        print(message, file=sys.stderr, flush=True)


def _build(
    config: BenchConfig, folder: Path, threads: int
) -> tuple[_TrackerRunner, list[_TrackerRunner], float, dict[str, tuple[str, str]]]:
    """The reference, each engine's runner, the export's seconds, and each engine's (runtime, precision)."""
    from surgsam2.export.onnx_export import ExportOptions, export_onnx
    from surgsam2.export.runtime import OnnxTracker
    from surgsam2.tracking.tracker import Tracker

    clip = make_clip(config.image_size, config.warmup + config.frames, config.objects, config.seed, None)
    reference_model = build_our_model(dataclasses.replace(config, dtype="fp32"), None)
    exported = 0.0
    if any(name != "torch" for name in config.engines):
        _log(config, f"exporting {config.model} to {folder}")
        started = time.perf_counter()
        export_onnx(reference_model, folder, ExportOptions(memory=config.memory))
        exported = time.perf_counter() - started
    runners, runtimes = [], {}  # runtimes: engine -> (runtime and version, precision it ran)
    for name in config.engines:
        if name == "torch":
            model = build_our_model(dataclasses.replace(config, dtype=FASTEST_PRECISION["torch"]), None)
            tracker: Any = Tracker(model, memory=config.memory)
            runtimes[name] = (f"torch {torch.__version__.split('+')[0]}", FASTEST_PRECISION["torch"])
        else:
            tracker = OnnxTracker(folder, memory=config.memory, engine=name, precision=FASTEST_PRECISION[name], threads=threads)
            runtimes[name] = (engine_version(name), tracker.precision)
        runners.append(_TrackerRunner(name, tracker, clip))
    return _TrackerRunner(REFERENCE, Tracker(reference_model, memory=config.memory), clip), runners, exported, runtimes


def _drive(
    config: BenchConfig, reference: _TrackerRunner, runners: list[_TrackerRunner]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Every engine frame by frame, another first on each frame; the reference after them,
    untimed. Returns seconds and IoUs by engine."""
    seconds: dict[str, list[float]] = {runner.name: [] for runner in runners}
    ious: dict[str, list[float]] = {runner.name: [] for runner in runners}
    total = config.warmup + config.frames
    for index in range(total):
        shift = index % len(runners)
        masks = {}
        for runner in runners[shift:] + runners[:shift]:
            start = time.perf_counter()
            masks[runner.name] = runner.step(index)
            if index >= config.warmup:
                seconds[runner.name].append(time.perf_counter() - start)
        expected = reference.step(index)
        if index > 0:  # frame 0 shows the prompt masks
            for name, got in masks.items():
                ious[name].extend(mask_iou(got[obj_id], expected[obj_id]) for obj_id in expected)
        if index % 10 == 0 or index == total - 1:
            _log(config, f"frame {index + 1}/{total}")
    return seconds, ious


def run_engines(config: BenchConfig) -> EngineBenchResult:
    """Export, then step every engine of ``config.engines`` on the same frames (see the module doc)."""
    config.validate()
    check_engine_config(config)
    threads = config.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    machine = machine_info("cpu")
    _log(config, f"load average {machine.load_before}; measuring the matmul peak")
    peak = measure_matmul_peak(device="cpu")
    with tempfile.TemporaryDirectory(prefix="surgsam2-bench-engines-") as scratch:
        reference, runners, exported, runtimes = _build(config, Path(scratch), threads)
        seconds, ious = _drive(config, reference, runners)
    machine.load_after = load_average()
    sides = {}
    for name, timed in seconds.items():
        runtime, precision = runtimes[name]
        median = statistics.median(timed)
        sides[name] = EngineSide(
            name=name, precision=precision, runtime=runtime, frame_seconds=[round(s, 6) for s in timed],
            median_s=median, p90_s=float(np.percentile(timed, 90)), frames_per_second=1.0 / median,
            iou_min=min(ious[name]) if ious[name] else 1.0, iou_mean=statistics.fmean(ious[name]) if ious[name] else 1.0,
        )  # fmt: skip
    if "torch" in sides:
        for side in sides.values():
            side.speed_over_torch = side.frames_per_second / sides["torch"].frames_per_second
    return EngineBenchResult(config, machine, peak, threads, sides, export_seconds=exported, notes=_notes(config, machine))


def _notes(config: BenchConfig, machine: MachineInfo) -> list[str]:
    notes = [
        f"IoU: per object and frame against our {REFERENCE} tracker (same weights, frames 1..{config.warmup + config.frames - 1})",
        "random weights (object-score head biased to 'visible'): bf16 rounding moves their masks more than trained ones'",
    ]
    if machine.load_before[0] >= max(1.5, 0.25 * machine.logical_cpus):
        notes.append(
            f"load average {machine.load_before[0]:.2f} on {machine.logical_cpus} CPUs before the run: the machine"
            " was shared; with more threads than idle CPUs torch's OpenMP threads wait on each other and its"
            " times scatter more than the other runtimes' (compare engines with --threads 1 there)"
        )
    return notes


def format_engine_table(result: EngineBenchResult) -> str:
    """The run as a table: one row per engine, then the notes."""
    config, machine, peak = result.config, result.machine, result.peak
    lines = [
        f"surgsam2 bench --engine {','.join(config.engines)}: {config.model} @ {config.image_size}px, "
        f"{config.objects} object(s), {config.memory}, {config.frames} timed frames after {config.warmup} warm-up, "
        f"{result.threads} thread(s) per engine",
        f"machine: {machine.cpu_model}, {machine.logical_cpus} CPUs, flags {' '.join(machine.cpu_flags) or '-'}, "
        f"{machine.date_utc}; load average before {machine.load_before}, after {machine.load_after}",
        f"matmul peak ({peak.size}^3): fp32 {peak.fp32_gflops:.0f} GFLOP/s, bf16 {peak.bf16_gflops:.0f} GFLOP/s",
        f"{'engine':<10}{'precision':<11}{'runtime':<20}{'median ms':>10}{'p90 ms':>9}{'frames/s':>10}"
        f"{'vs torch':>10}{'IoU min':>9}{'IoU mean':>10}",
    ]
    for side in result.sides.values():
        ratio = f"{side.speed_over_torch:.2f}x" if side.speed_over_torch is not None else "-"
        lines.append(
            f"{side.name:<10}{side.precision:<11}{side.runtime:<20}{1e3 * side.median_s:>10.1f}{1e3 * side.p90_s:>9.1f}"
            f"{side.frames_per_second:>10.2f}{ratio:>10}{side.iou_min:>9.4f}{side.iou_mean:>10.4f}"
        )
    if result.export_seconds:
        lines.append(f"export (fp32 ONNX files, once): {result.export_seconds:.1f} s")
    return "\n".join(lines + [f"note: {note}" for note in result.notes])


__all__ = ["FASTEST_PRECISION", "EngineBenchResult", "EngineSide", "check_engine_config", "parse_engines", "run_engines"]
