"""Running a bench: every side on the same clip and weights, frame by frame in turn; a long stream."""

from __future__ import annotations

import contextlib
import copy
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from surgsam2.bench.config import BenchConfig
from surgsam2.bench.machine import (
    FlopCount,
    MachineInfo,
    MatmulPeak,
    count_flops,
    current_rss_bytes,
    load_average,
    measure_matmul_peak,
    peak_rss_bytes,
    sdpa_counted_by_torch,
    start_run,
    synchronize,
)
from surgsam2.bench.profile import StageTimer, median_stages, stage_gflop
from surgsam2.bench.report import BenchResult, SideResult, StreamPoint, StreamResult
from surgsam2.bench.runners import (
    BenchClip,
    OfficialRunner,
    OursRunner,
    Runner,
    build_official_predictor,
    build_our_model,
    make_clip,
    mask_iou,
    ours_tracker_options,
)
from surgsam2.model.cuda_graphs import GraphStats

# Ours before one optimisation, run as its own side: side name -> (the BenchConfig flag asking
# for it, the Tracker options that undo the optimisation).
BASELINES: dict[str, tuple[str, dict[str, Any]]] = {
    "ours-nocache": ("key_cache_baseline", {"cache_memory_keys": False}),
}
# Frames of a long stream after which the state is read, unless told: powers of ten.
STREAM_CHECKPOINT_BASE = 10


def _log(config: BenchConfig, message: str) -> None:
    if config.progress:
        print(message, file=sys.stderr, flush=True)


class GraphedStep(Protocol):
    """What the bench reads and switches of a graphed part (`CudaGraphed`) or of the steady
    frames (`SteadyFrames`): eager when not ``enabled`` (the FLOP count), and their ``stats``."""

    enabled: bool

    @property
    def stats(self) -> GraphStats: ...


@dataclass
class _Sides:
    """What a run drives: the clip, the sides in their first order, their stage timers
    (--profile) and our model's CUDA-graphed parts (--cuda-graphs) and steady frames (--steady-frames:
    `SteadyFrames`, with the same ``enabled`` and ``stats``)."""

    clip: BenchClip
    runners: list[Runner]
    timers: dict[str, StageTimer]
    graphed: dict[str, GraphedStep]

    def close(self) -> None:
        for runner in self.runners:
            runner.close()
        for timer in self.timers.values():
            timer.unwrap()


@dataclass
class _Measurements:
    """What the frames measured, per side name."""

    seconds: dict[str, list[float]]
    stages: dict[str, list[dict[str, float]]]
    working: dict[str, int]  # GPU: most any frame allocated above what it started with
    flops: dict[str, FlopCount] = field(default_factory=dict)
    stage_flops: dict[str, dict[str, float]] = field(default_factory=dict)  # --profile: the counted frame's
    states: dict[str, tuple[int, int]] = field(default_factory=dict)
    ious: list[float] = field(default_factory=list)
    peak_device: int = 0  # GPU: the per-frame peak resets clear the run's peak, kept here

    @classmethod
    def of(cls, runners: list[Runner]) -> _Measurements:
        names = [runner.name for runner in runners]
        return cls({n: [] for n in names}, {n: [] for n in names}, {n: 0 for n in names})


def _build_sides(config: BenchConfig, scratch: Path, total_frames: int, device: torch.device) -> _Sides:
    """The clip, our model (with the official predictor's weights when it runs) and every side."""
    jpeg_dir = scratch / "frames" if config.against_official else None
    clip = make_clip(config.image_size, total_frames, config.objects, config.seed, jpeg_dir)
    official_predictor, checkpoint = None, None
    if config.against_official:
        _log(config, "building the official predictor with random weights")
        official_predictor = build_official_predictor(
            config.model, config.image_size, config.seed, device, vos_optimized=config.official_vos_optimized
        )
        checkpoint = scratch / "shared.pt"
        torch.save({"model": {k: v.cpu() for k, v in official_predictor.state_dict().items()}}, checkpoint)
    model = build_our_model(config, checkpoint)
    wanted = [name for name, (flag, _) in BASELINES.items() if getattr(config, flag)]
    names = ["ours", *wanted] + (["official"] if official_predictor is not None else [])
    timers = {name: StageTimer(device) for name in names} if config.profile else {}
    # Each baseline runs its own copy of the model, eager, copied before CUDA graphs wrap the
    # model's parts: graph statistics and compile caches stay per side.
    baseline_models = {name: copy.deepcopy(model) for name in wanted}
    graphed = model.use_cuda_graphs() if config.cuda_graphs else {}
    like_official = config.against_official
    options = ours_tracker_options(config)
    ours = OursRunner("ours", model, clip, config.memory, timers.get("ours"), like_official, **options)
    if ours.tracker.steady is not None:  # reported, and eager for the FLOP count, as the parts' graphs
        graphed = {**graphed, "steady_frame": ours.tracker.steady}
    runners: list[Runner] = [ours]
    for name, baseline_model in baseline_models.items():
        options = BASELINES[name][1]
        runner = OursRunner(name, baseline_model, clip, config.memory, timers.get(name), like_official, **options)
        runners.append(runner)
    if config.compile:
        for runner in runners:  # after the baselines' copies: compiled modules do not deep-copy
            runner.tracker.model.compile_parts()  # type: ignore[attr-defined]
    if official_predictor is not None:
        runners.append(OfficialRunner(official_predictor, clip, config.official_dtype, timers.get("official")))
    return _Sides(clip, runners, timers, graphed)


def _counted_step(
    sides: _Sides, runner: Runner, index: int, device: torch.device, measured: _Measurements
) -> dict[int, np.ndarray]:
    """The untimed last frame, its FLOPs counted; graph replays are invisible to the counter, so
    it runs eagerly."""
    for part in sides.graphed.values():
        part.enabled = False
    timer = sides.timers.get(runner.name)
    with count_flops(device) as counted:
        with timer.counting_flops(counted.running) if timer is not None else contextlib.nullcontext():
            masks = runner.step(index)
    measured.flops[runner.name] = counted
    if timer is not None:
        measured.stage_flops[runner.name] = timer.take_flops()
    for part in sides.graphed.values():
        part.enabled = True
    return masks


def _timed_step(
    config: BenchConfig, sides: _Sides, runner: Runner, index: int, device: torch.device, measured: _Measurements
) -> dict[int, np.ndarray]:
    """One frame of one side between two device synchronisations; kept after the warm-up."""
    on_gpu = device.type == "cuda"
    if on_gpu:
        allocated_before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    masks = runner.step(index)
    synchronize(device)
    elapsed = time.perf_counter() - start
    if on_gpu:
        frame_peak = torch.cuda.max_memory_allocated(device)
        measured.working[runner.name] = max(measured.working[runner.name], frame_peak - allocated_before)
        measured.peak_device = max(measured.peak_device, frame_peak)
    timer = sides.timers.get(runner.name)
    if index >= config.warmup:
        measured.seconds[runner.name].append(elapsed)
        if timer is not None:
            measured.stages[runner.name].append(timer.take())
    return masks


def _drive(config: BenchConfig, sides: _Sides, total_frames: int, device: torch.device) -> _Measurements:
    """Advance every side frame by frame, another side first on each frame (alternation)."""
    runners = sides.runners
    measured = _Measurements.of(runners)
    if device.type == "cuda":
        measured.peak_device = torch.cuda.max_memory_allocated(device)
    for index in range(total_frames):
        shift = index % len(runners)
        masks: dict[str, dict[int, np.ndarray]] = {}
        for runner in runners[shift:] + runners[:shift]:
            timer = sides.timers.get(runner.name)
            if timer is not None:
                timer.take()  # drop what other code (e.g. the previous frame's tail) left
            if index == total_frames - 1:
                masks[runner.name] = _counted_step(sides, runner, index, device, measured)
            else:
                masks[runner.name] = _timed_step(config, sides, runner, index, device, measured)
        if "official" in masks and index >= config.warmup:
            measured.ious.extend(mask_iou(masks["ours"][i], masks["official"][i]) for i in sides.clip.masks)
        if index % 10 == 0 or index == total_frames - 1:
            _log(config, f"frame {index + 1}/{total_frames}")
    measured.states = {runner.name: runner.state_bytes() for runner in runners}
    return measured


def _side_result(
    config: BenchConfig, name: str, measured: _Measurements, peak: MatmulPeak, device: torch.device
) -> SideResult:
    """One side's numbers from the frames it ran."""
    seconds, flops, state = measured.seconds[name], measured.flops[name], measured.states[name]
    median = statistics.median(seconds)
    achieved = flops.total / median / 1e9
    return SideResult(
        name=name,
        dtype=config.official_dtype if name == "official" else config.dtype,
        memory="fifo" if name == "official" else config.memory,
        frame_seconds=[round(s, 6) for s in seconds],
        median_s=median,
        p90_s=float(np.percentile(seconds, 90)),
        mean_s=statistics.fmean(seconds),
        frames_per_second=1.0 / median,
        flops_per_frame=flops.total,
        sdpa_flops_added=flops.sdpa_added,
        achieved_gflops=achieved,
        fraction_of_fp32_peak=achieved / peak.fp32_gflops,
        fraction_of_bf16_peak=achieved / peak.bf16_gflops,
        state_bytes=state[0],
        frame_buffer_bytes=state[1],
        stage_ms=median_stages(measured.stages[name], seconds) if config.profile else None,
        stage_gflop=stage_gflop(measured.stage_flops.get(name, {}), flops.total) if config.profile else None,
        device_working_bytes=measured.working[name] if device.type == "cuda" else None,
    )


def _notes(config: BenchConfig, machine: MachineInfo, sides: _Sides, native: bool) -> list[str]:
    """What a reader of the numbers must know about how they were taken."""
    notes = []
    if config.device != "cpu":
        notes.append(
            f"on {config.device} ({machine.accelerator}): each frame timed between torch.cuda.synchronize()"
            f" calls; fp32 matmuls {'with' if torch.backends.cuda.matmul.allow_tf32 else 'without'} TF32,"
            f" fp32 convolutions {'with' if torch.backends.cudnn.allow_tf32 else 'without'} TF32 (torch's"
            " defaults, all sides and the matmul peak alike)"
        )
    if config.compile:
        notes.append("ours: torch.compile on the image encoder, memory attention, decoder and memory encoder")
    if not native:
        notes.append(
            f"FlopCounterMode does not count {config.device} scaled_dot_product_attention on torch "
            f"{torch.__version__}: 4*Lq*Lk*d per call added by hand"
        )
    # Only the load before the run tells of other work: the run's own threads raise it afterwards.
    if machine.load_before[0] >= max(1.5, 0.25 * machine.logical_cpus):
        notes.append(
            f"load average {machine.load_before[0]:.2f} on {machine.logical_cpus} CPUs before the run: the"
            " machine was shared, absolute numbers are pessimistic (the alternation keeps the ratio fair)"
        )
    if config.against_official:
        notes.append("official: SAM 2 memory (fifo, 7 memories), each object through memory attention alone")
        if config.official_vos_optimized:
            notes.append("official: VOS mode (vos_optimized=True: its parts under torch.compile; compile time"
                         " falls in the warm-up)")
        notes.append("ours as the official runs without its CUDA extension: no hole filling (fill_hole_area=0)")
    if config.memory in ("efp", "qefp", "refp", "xefp"):
        notes.append(f"ours {config.memory}: at most 5 memories attended (num_frame_to_prune=2) of the 7 SAM 2 keeps")
    for name, part in sides.graphed.items():
        stats = part.stats
        notes.append(
            f"ours: CUDA graphs of {name}: {stats.captured} captured, {stats.failed} failed to capture;"
            f" calls replayed {stats.replayed}, eager {stats.eager} (the FLOP-count frame included)"
        )
    return notes


def _bench_result(
    config: BenchConfig, machine: MachineInfo, peak: MatmulPeak, sides: _Sides, measured: _Measurements,
    device: torch.device,
) -> BenchResult:  # fmt: skip
    """The result of a run from what it measured."""
    results = {runner.name: _side_result(config, runner.name, measured, peak, device) for runner in sides.runners}
    ours = results["ours"]
    native = sdpa_counted_by_torch(device)
    on_gpu = device.type == "cuda"
    return BenchResult(
        config=config,
        machine=machine,
        peak=peak,
        sides=results,
        speedup_over={
            name: ours.frames_per_second / side.frames_per_second for name, side in results.items() if name != "ours"
        },
        mask_agreement_iou=statistics.fmean(measured.ious) if measured.ious else None,
        peak_rss_bytes=peak_rss_bytes(),
        peak_rss_note="process peak RSS (getrusage), all sides in one process",
        sdpa_counted_by_torch=native,
        notes=_notes(config, machine, sides, native),
        peak_device_bytes=max(measured.peak_device, torch.cuda.max_memory_allocated(device)) if on_gpu else None,
        cuda_graphs={name: part.stats for name, part in sides.graphed.items()} or None,
    )


def run_bench(config: BenchConfig) -> BenchResult:
    """Run ours (its baselines, and the official predictor) on the same clip and weights; see
    the package doc. ValueError (one line) for a bad config, before anything runs."""
    device, machine = start_run(config)
    _log(config, f"load average {machine.load_before}; measuring the matmul peak on {device}")
    peak = measure_matmul_peak(device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    total_frames = config.warmup + config.frames + 1  # + 1 steady-state frame for the FLOP count
    with tempfile.TemporaryDirectory(prefix="surgsam2-bench-") as scratch:
        sides = _build_sides(config, Path(scratch), total_frames, device)
        try:
            measured = _drive(config, sides, total_frames, device)
        finally:
            sides.close()
    machine.load_after = load_average()
    return _bench_result(config, machine, peak, sides, measured, device)


def _stream_checkpoints(num_frames: int) -> list[int]:
    """Frames after which the state is read: 1, 10, 100, 1000, ... and the last one."""
    points, value = [], 1
    while value < num_frames:
        points.append(value)
        value *= STREAM_CHECKPOINT_BASE
    return points + [num_frames]


def _ping_pong(frames: list[np.ndarray], index: int) -> np.ndarray:
    """Frame ``index`` of the clip looped forth and back (continuous motion, no cut)."""
    period = max(2 * len(frames) - 2, 1)
    phase = index % period
    return frames[phase if phase < len(frames) else period - phase]


def run_stream(
    config: BenchConfig, clip_frames: int = 100, checkpoints: tuple[int, ...] | None = None
) -> StreamResult:
    """Run our tracker ``config.stream_frames`` frames over a ping-pong looped synthetic clip
    and read the state bytes and RSS after the ``checkpoints`` frames (default 1, 10, 100, ...
    and the last). ``flat``: the state after the last frame equals the state after frame 100
    (or after the first checkpoint on shorter streams)."""
    from surgsam2.tracking.prompts import Prompt
    from surgsam2.tracking.tracker import Tracker

    if config.stream_frames is None:
        raise ValueError("run_stream needs stream_frames")
    device, machine = start_run(config)
    clip = make_clip(config.image_size, min(clip_frames, config.stream_frames), config.objects, config.seed, None)
    model = build_our_model(config, None)
    if config.compile:
        model.compile_parts()
    if config.cuda_graphs:
        model.use_cuda_graphs()
    tracker = Tracker(model, memory=config.memory)
    prompts = {obj_id: Prompt(mask=mask) for obj_id, mask in clip.masks.items()}
    wanted = set(checkpoints or _stream_checkpoints(config.stream_frames)) | {config.stream_frames}
    wanted = {frame for frame in wanted if 1 <= frame <= config.stream_frames}
    points: list[StreamPoint] = []
    seconds: list[float] = []
    for index in range(config.stream_frames):
        synchronize(device)
        start = time.perf_counter()
        tracker.step(_ping_pong(clip.frames, index), prompts if index == 0 else None)
        synchronize(device)
        if index >= config.warmup:
            seconds.append(time.perf_counter() - start)
        if index + 1 in wanted:
            allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
            points.append(StreamPoint(index + 1, tracker.state_bytes(), current_rss_bytes(), allocated))
            _log(config, f"frame {index + 1}: state {points[-1].state_bytes / 2**20:.3f} MB")
    machine.load_after = load_average()
    reference = next((p for p in points if p.frame == 100), points[0])
    return StreamResult(
        config=config,
        machine=machine,
        frames=config.stream_frames,
        points=points,
        frames_per_second=len(seconds) / sum(seconds) if seconds else float("nan"),
        median_s=statistics.median(seconds) if seconds else float("nan"),
        flat=points[-1].state_bytes == reference.state_bytes,
    )
