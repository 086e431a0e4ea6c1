"""What a bench run reports: results by side, their tables, and the JSON file."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from surgsam2.bench.config import BenchConfig
from surgsam2.bench.machine import MachineInfo, MatmulPeak
from surgsam2.data.outputs import atomic_write
from surgsam2.model.cuda_graphs import GraphStats
from surgsam2.tracking.stages import STAGES

# What each side other than "ours" is, for the table's footer.
SIDE_DESCRIPTIONS = {
    "official": "the official SAM 2 video predictor",
    "ours-nocache": "memory keys recomputed every frame",
}
# Keys every bench result JSON has at its top level: a file without them was not written by us.
RESULT_KEYS = ("config", "machine")


@dataclass
class SideResult:
    """One implementation's numbers over the timed frames."""

    name: str  # "ours", "ours-nocache" (no key cache), "official"
    dtype: str
    memory: str
    frame_seconds: list[float]
    median_s: float
    p90_s: float
    mean_s: float
    frames_per_second: float  # 1 / median
    flops_per_frame: float
    sdpa_flops_added: float  # part of flops_per_frame added by hand for attention kernels
    achieved_gflops: float
    fraction_of_fp32_peak: float
    fraction_of_bf16_peak: float
    state_bytes: int  # tensors held between frames (official: without its preloaded frames)
    frame_buffer_bytes: int = 0  # official: the whole video it loads up front
    device_working_bytes: int | None = None  # GPU: most any frame (warm-up too) allocated above its start
    stage_ms: dict[str, float] | None = None  # median per-frame milliseconds per stage (--profile)
    stage_gflop: dict[str, float] | None = None  # GFLOP per stage of the counted frame (--profile)

    def stage_rate(self, stage: str) -> float | None:
        """GFLOP/s of one stage (its FLOPs over its median time), None without a profile or time."""
        if not self.stage_ms or not self.stage_gflop or self.stage_ms.get(stage, 0.0) <= 0.05:
            return None
        return self.stage_gflop[stage] / (self.stage_ms[stage] / 1e3)


@dataclass
class BenchResult:
    """Everything one `surgsam2 bench` run measured, side by side.

    ``sides``: by side name, "ours" first; ``speedup_over``: ours frames/s over each other side's.
    """

    config: BenchConfig
    machine: MachineInfo
    peak: MatmulPeak
    sides: dict[str, SideResult]
    speedup_over: dict[str, float]
    mask_agreement_iou: float | None  # mean IoU ours vs official masks (sanity: same task)
    peak_rss_bytes: int
    peak_rss_note: str
    sdpa_counted_by_torch: bool
    notes: list[str] = field(default_factory=list)
    peak_device_bytes: int | None = None  # GPU: torch.cuda.max_memory_allocated over the run
    cuda_graphs: dict[str, GraphStats] | None = None  # --cuda-graphs: what each part of ours did

    @property
    def ours(self) -> SideResult:
        return self.sides["ours"]

    @property
    def official(self) -> SideResult | None:
        return self.sides.get("official")

    @property
    def speedup(self) -> float | None:
        """Ours frames/s over the official predictor's (None without it)."""
        return self.speedup_over.get("official")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def format_table(self) -> str:
        return format_bench_table(self)


@dataclass
class StreamPoint:
    """State of the tracker after ``frame`` frames of a stream."""

    frame: int
    state_bytes: int
    rss_bytes: int
    device_bytes: int | None = None  # GPU: torch.cuda.memory_allocated after the frame


@dataclass
class StreamResult:
    """`--stream-frames`: our tracker over a long stream, state measured along the way."""

    config: BenchConfig
    machine: MachineInfo
    frames: int
    points: list[StreamPoint]
    frames_per_second: float  # over the whole stream after warm-up
    median_s: float
    flat: bool  # state at the last frame equals the state at frame 100 (or the first point)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def format_table(self) -> str:
        return format_stream_table(self)


def _mb(value: int) -> str:
    return f"{value / 2**20:.2f} MB"


def _bench_header(result: BenchResult) -> str:
    config, machine, peak = result.config, result.machine, result.peak
    return (
        f"surgsam2 bench: {config.model} @ {config.image_size}px, {config.objects} object(s), "
        f"{config.frames} timed frames after {config.warmup} warm-up\n"
        f"machine: {machine.cpu_model}, {machine.logical_cpus} CPUs, {machine.torch_threads} torch threads, "
        f"flags {' '.join(machine.cpu_flags) or '-'}, torch {machine.torch_version}, {machine.date_utc}\n"
        + (f"device: {config.device} ({machine.accelerator})\n" if machine.accelerator else "")
        + f"load average before {machine.load_before}, after {machine.load_after}\n"
        f"matmul peak ({peak.size}^3): fp32 {peak.fp32_gflops:.0f} GFLOP/s, bf16 {peak.bf16_gflops:.0f} GFLOP/s\n"
    )


def _side_rows(result: BenchResult) -> list[tuple[str, list[str]]]:
    sides = list(result.sides.values())
    rows: list[tuple[str, list[str]]] = [
        ("latency median", [f"{1e3 * s.median_s:.1f} ms" for s in sides]),
        ("latency p90", [f"{1e3 * s.p90_s:.1f} ms" for s in sides]),
        ("frames/s", [f"{s.frames_per_second:.2f}" for s in sides]),
        ("GFLOP per frame", [f"{s.flops_per_frame / 1e9:.1f}" for s in sides]),
        ("  of which attention (added)", [f"{s.sdpa_flops_added / 1e9:.1f}" for s in sides]),
        ("achieved GFLOP/s", [f"{s.achieved_gflops:.0f}" for s in sides]),
        ("fraction of fp32 peak", [f"{s.fraction_of_fp32_peak:.2f}" for s in sides]),
        ("fraction of bf16 peak", [f"{s.fraction_of_bf16_peak:.2f}" for s in sides]),
        ("state held", [_mb(s.state_bytes) for s in sides]),
        ("preloaded frames", [_mb(s.frame_buffer_bytes) if s.frame_buffer_bytes else "-" for s in sides]),
    ]
    if result.peak_device_bytes is not None:
        rows.append(("GPU working memory per frame", [_mb(s.device_working_bytes or 0) for s in sides]))
    if all(s.stage_ms for s in sides):
        for stage in (*STAGES, "other"):
            rows.append((f"  {stage} (median ms)", [f"{s.stage_ms[stage]:.1f}" for s in sides]))  # type: ignore[index]
    if all(s.stage_gflop for s in sides):
        for stage in (*STAGES, "other"):
            rows.append((f"  {stage} (GFLOP/s, of peak)", [_stage_rate(s, stage, result.peak) for s in sides]))
    return rows


def _stage_rate(side: SideResult, stage: str, peak: MatmulPeak) -> str:
    """A stage's GFLOP/s and its fraction of the matmul peak of the side's precision (bf16 for
    bf16 and mixed, fp32 for fp32); '-' for a stage without time or FLOPs."""
    rate = side.stage_rate(stage)
    if rate is None or not side.stage_gflop or side.stage_gflop[stage] == 0.0:
        return "-"
    reference = peak.fp32_gflops if side.dtype == "fp32" else peak.bf16_gflops
    return f"{rate:.0f} ({rate / reference:.2f})"


def _bench_footer(result: BenchResult) -> list[str]:
    footer = [
        f"ours / {name} ({SIDE_DESCRIPTIONS.get(name, name)}) frames/s: {ratio:.2f}x"
        for name, ratio in result.speedup_over.items()
    ]
    if result.mask_agreement_iou is not None:
        footer.append(f"mask agreement ours vs official (mean IoU): {result.mask_agreement_iou:.3f}")
    footer.append(f"peak memory: {_mb(result.peak_rss_bytes)} ({result.peak_rss_note})")
    if result.peak_device_bytes is not None:
        footer.append(f"peak GPU memory: {_mb(result.peak_device_bytes)} (torch.cuda.max_memory_allocated, all sides)")
    return footer + [f"note: {note}" for note in result.notes]


def format_bench_table(result: BenchResult) -> str:
    """The run as a table: one column per side, then the ratios and notes."""
    names = [f"{s.name} ({s.memory}, {s.dtype})" for s in result.sides.values()]
    rows = _side_rows(result)
    width = max(len(label) for label, _ in rows) + 2
    column = max(24, *(len(n) + 2 for n in names))
    lines = [" " * width + "".join(n.ljust(column) for n in names)]
    lines += [label.ljust(width) + "".join(v.ljust(column) for v in values) for label, values in rows]
    return _bench_header(result) + "\n".join(lines) + "\n" + "\n".join(_bench_footer(result))


def format_stream_table(result: StreamResult) -> str:
    """The stream as a table: state, RSS (and GPU memory) at each checkpoint frame."""
    config, machine = result.config, result.machine
    lines = [
        f"surgsam2 bench --stream-frames {result.frames}: {config.model} @ {config.image_size}px, "
        f"{config.objects} object(s), {config.memory}, {config.dtype}, {config.device}"
        + (f" ({machine.accelerator})" if machine.accelerator else ""),
        f"machine: {machine.cpu_model}, {machine.logical_cpus} CPUs, torch {machine.torch_version}, "
        f"{machine.date_utc}; load before {machine.load_before}, after {machine.load_after}",
        f"{'frame':>8}  {'state':>12}  {'RSS':>12}" + (f"  {'GPU allocated':>14}" if machine.accelerator else ""),
    ]
    lines += [
        f"{p.frame:>8}  {_mb(p.state_bytes):>12}  {_mb(p.rss_bytes):>12}"
        + (f"  {_mb(p.device_bytes):>14}" if p.device_bytes is not None else "")
        for p in result.points
    ]
    lines.append(
        f"frames/s {result.frames_per_second:.2f} (median {1e3 * result.median_s:.1f} ms/frame); "
        f"state flat: {'yes' if result.flat else 'NO'}"
    )
    return "\n".join(lines)


def _is_bench_result(path: Path) -> bool:
    """Whether the file at ``path`` is a JSON object with the keys every bench result has."""
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(content, dict) and all(key in content for key in RESULT_KEYS)


def check_json_path(path: str | Path) -> Path:
    """The file a result may be written to, or ValueError (one line) before the run: a folder
    (existing, or a name ending in a separator), a parent that is a file, or an existing file
    that is not a bench result (only our own results are rewritten)."""
    text = os.fspath(path)
    target = Path(text)
    if not text or text.endswith((os.sep, "/")) or target.is_dir():
        raise ValueError(f"--json {text!r} is a folder; give a file name, e.g. {os.path.join(text, 'bench.json')!r}")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--json {text!r}: {str(parent)!r} is a file, not a folder")
            break
    if target.exists() and not _is_bench_result(target):
        raise ValueError(f"--json {text!r} exists and is not a surgsam2 bench result; not overwriting it")
    return target


def write_json(result: Any, path: str | Path) -> Path:
    """Write a result (anything with ``to_json``: `BenchResult`, `StreamResult`, `StreamsBenchResult`)
    as JSON, atomically (a previous result there is rewritten, never appended). ValueError for a
    path `check_json_path` refuses."""
    path = check_json_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, json.dumps(result.to_json(), indent=2, default=str) + "\n")
