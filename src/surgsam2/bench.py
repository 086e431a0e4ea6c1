"""`surgsam2 bench`: our tracker against the official SAM 2 video predictor, in one process.

What is compared, and why it is fair:
- the same random weights on both sides (the official model is built with seeded random weights,
  its state dict saved in the official layout and loaded by ours; without the official package
  ours keeps a seeded random initialisation);
- the same frames: a synthetic surgical clip at ``image_size`` (so no resize enters), written as
  JPEG for the official loader and decoded back with PIL for ours, the decoded pixels being what
  both see; objects prompted with their masks on frame 0;
- the same driving: ours `Tracker.step` frame by frame; the official predictor with
  ``init_state`` + ``add_new_mask`` + ``propagate_in_video``, advanced one frame at a time;
- alternation: the two sides advance in lockstep, frame by frame, and the order flips each frame
  (ours first on even frames, official first on odd ones), so drift of the machine (other load,
  clocks) hits both alike.

Reported per side, over the steady-state frames after ``warmup``: per-frame latency (median,
p90), frames/s (1 / median), FLOPs per frame counted once with FlopCounterMode on one extra
steady-state frame (plus 4*Lq*Lk*d per scaled-dot-product attention when the counter misses
them, as it does on CPU), achieved GFLOP/s and its fraction of this machine's fp32 / bf16 matmul
peaks (a big square matmul timed in the same run), state held between frames, and the ratio
ours/official. Peak memory is the process's peak RSS (getrusage): both sides live in one
process, so it is not split per side; the state bytes are.

``device="cuda"``: models, frames and state on the GPU; each frame is timed between two
``torch.cuda.synchronize()`` calls (the masks come back to the host anyway, as users need them),
the matmul peak is the GPU's, bf16 of the official predictor is ``torch.autocast("cuda")``, and
memory is ``torch.cuda.max_memory_allocated`` (process peak) plus each side's working memory:
the most any frame of that side, warm-up included (CUDA graphs are captured there, their memory
pools stay), allocated above what was allocated when the frame started.

A benchmark, never a test: nothing here asserts on time. Absolute numbers mean little on a shared
machine: the load average before and after is recorded with the results.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from surgsam2.model.cuda_graphs import GraphStats
from surgsam2.model.sam2 import PRECISIONS

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Ours also runs "mixed": fp32 with memory attention in bf16 (SAM2Model.to_precision).
OUR_PRECISIONS = PRECISIONS
OFFICIAL_INSTALL_HINT = (
    "SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation sam2==1.1.0 hydra-core iopath"
)
# The object-score head's last bias on random weights: objects count as visible (random weights
# would call every object absent and track constant "no object" logits).
RANDOM_OBJECT_SCORE_BIAS = 10.0
# Stage names of the per-frame profile, in pipeline order; "other" is the rest of the frame.
STAGES = ("encode_image", "memory_assembly", "memory_attention", "decoder", "memory_encoder", "output")


class OfficialUnavailableError(RuntimeError):
    """The official `sam2` package (needed by --against-official) cannot be imported or built."""


# ------------------------------------------------------------------------------------------
# Configuration and results
# ------------------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    """What to run. ``frames`` are timed after ``warmup`` untimed ones (frame 0 is the prompt)."""

    model: str = "sam2.1_hiera_s"
    image_size: int = 512
    objects: int = 1
    frames: int = 40
    warmup: int = 5
    memory: str = "efp"
    dtype: str = "fp32"
    against_official: bool = False
    official_dtype: str = "fp32"
    threads: int | None = None
    seed: int = 0
    profile: bool = False
    sdpa_baseline: bool = False  # also run ours with the bf16 matmul attention path off
    key_cache_baseline: bool = False  # also run ours recomputing memory keys every frame
    compile: bool = False  # torch.compile our model's parts (SAM2Model.compile_parts)
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N": where both sides run
    cuda_graphs: bool = False  # ours: parts replayed as CUDA graphs (SAM2Model.use_cuda_graphs)
    stream_frames: int | None = None
    progress: bool = True

    def validate(self) -> BenchConfig:
        """Raise ValueError naming the first bad field; returns self."""
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image size must be a positive multiple of 32, got {self.image_size}")
        if not 1 <= self.objects <= 8:
            raise ValueError(f"objects must be in 1..8 (instruments of the synthetic clip), got {self.objects}")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.warmup < 1:
            raise ValueError(f"warmup must be >= 1 (frame 0 is the prompt frame), got {self.warmup}")
        if self.memory not in ("efp", "fifo"):
            raise ValueError(f"memory must be efp or fifo, got {self.memory!r}")
        if self.dtype not in OUR_PRECISIONS:
            raise ValueError(f"dtype must be one of {list(OUR_PRECISIONS)}, got {self.dtype!r}")
        if self.official_dtype not in DTYPES:
            raise ValueError(f"official_dtype must be one of {sorted(DTYPES)}, got {self.official_dtype!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.stream_frames is not None and self.stream_frames < 1:
            raise ValueError(f"stream frames must be >= 1, got {self.stream_frames}")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}") from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r}: CUDA is not available to this torch ({torch.__version__})")
        if self.cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda graphs need a CUDA device, got device {self.device!r}")
        return self


@dataclass
class MachineInfo:
    """Where and when the numbers were taken."""

    cpu_model: str
    logical_cpus: int
    cpu_flags: list[str]  # the matrix-unit flags present (avx512_bf16, amx_*)
    torch_version: str
    torch_threads: int
    python_version: str
    accelerator: str | None  # the GPU's name when the run is on one
    date_utc: str
    load_before: tuple[float, float, float]  # other work on the machine when the run started
    load_after: tuple[float, float, float] | None = None  # includes the run's own threads


@dataclass
class MatmulPeak:
    """Best-of-N rate of an n x n @ n x n matmul, in GFLOP/s, per dtype."""

    size: int
    fp32_gflops: float
    bf16_gflops: float


@dataclass
class SideResult:
    """One implementation's numbers over the timed frames."""

    name: str  # "ours", "ours-sdpa" (bf16 matmul attention off), "ours-nocache" (no key cache), "official"
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


@dataclass
class BenchResult:
    """Everything one `surgsam2 bench` run measured."""

    config: BenchConfig
    machine: MachineInfo
    peak: MatmulPeak
    ours: SideResult
    official: SideResult | None
    ours_sdpa: SideResult | None  # --sdpa-baseline: ours before the bf16 matmul attention path
    speedup: float | None  # ours frames/s / official frames/s
    speedup_over_sdpa: float | None  # ours frames/s / ours-sdpa frames/s
    ours_nocache: SideResult | None  # --key-cache-baseline: ours without the memory key cache
    speedup_over_nocache: float | None  # ours frames/s / ours-nocache frames/s
    mask_agreement_iou: float | None  # mean IoU ours vs official masks (sanity: same task)
    peak_rss_bytes: int
    peak_rss_note: str
    sdpa_counted_by_torch: bool
    notes: list[str] = field(default_factory=list)
    peak_device_bytes: int | None = None  # GPU: torch.cuda.max_memory_allocated over the run
    cuda_graphs: dict[str, GraphStats] | None = None  # --cuda-graphs: what each part of ours did

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def format_table(self) -> str:
        return _format_bench_table(self)


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
        return _format_stream_table(self)


# ------------------------------------------------------------------------------------------
# Machine
# ------------------------------------------------------------------------------------------
def _cpu_model_and_flags() -> tuple[str, list[str]]:
    """CPU model name and its bf16/AMX flags from /proc/cpuinfo (platform fallback elsewhere)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key == "flags" and not flags:
            flags = sorted(f for f in value.split() if f == "avx512_bf16" or f.startswith("amx"))
    return model, flags


def load_average() -> tuple[float, float, float]:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return (float("nan"),) * 3
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def machine_info(device: torch.device | str = "cpu") -> MachineInfo:
    cpu_model, flags = _cpu_model_and_flags()
    device = torch.device(device)
    return MachineInfo(
        cpu_model=cpu_model,
        logical_cpus=os.cpu_count() or 0,
        cpu_flags=flags,
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
        python_version=platform.python_version(),
        accelerator=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        date_utc=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        load_before=load_average(),
    )


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so that a host clock reads its end."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(size: int | None = None, repeats: int = 8, device: torch.device | str = "cpu") -> MatmulPeak:
    """The machine's matmul rate per dtype: best of ``repeats`` timed size^3 products (after a
    warm-up one) on random data. The best, not the median, since the peak is what a kernel could
    reach. Default size 2048 on CPU, 8192 on a GPU (smaller products do not fill one)."""
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 2048)
    rates: dict[str, float] = {}
    generator = torch.Generator().manual_seed(0)
    for name, dtype in DTYPES.items():
        a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        torch.mm(a, b)
        best = math.inf
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            best = min(best, time.perf_counter() - start)
        rates[name] = 2.0 * size**3 / best / 1e9
        del a, b
    return MatmulPeak(size=size, fp32_gflops=rates["fp32"], bf16_gflops=rates["bf16"])


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (getrusage; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int:
    """Resident set size now (/proc/self/statm), or the peak where /proc is missing."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss_bytes()
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------------------
# FLOP counting
# ------------------------------------------------------------------------------------------
# Attention kernels whose FLOPs FlopCounterMode may not know (CPU flash attention).
_SDPA_OPS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable")


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """4 * Lq * Lk * d per head (Q K^T and P V, one multiply-add = 2 FLOPs), any batch dims."""
    *batch, query_length, head_dim = query_shape
    key_length = key_shape[-2]
    value_dim = value_shape[-1]
    return 2 * math.prod(batch) * query_length * key_length * (head_dim + value_dim)


def sdpa_counted_by_torch(device: torch.device | str = "cpu") -> bool:
    """Whether FlopCounterMode alone counts a scaled_dot_product_attention on ``device`` (torch-
    version and kernel dependent; on CPU it does not on 2.13)."""
    from torch.utils.flop_counter import FlopCounterMode

    q = torch.zeros(1, 1, 8, 4, device=device)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    return counter.get_total_flops() > 0


@dataclass
class FlopCount:
    total: float
    sdpa_added: float


@contextlib.contextmanager
def count_flops(device: torch.device | str = "cpu") -> Iterator[FlopCount]:
    """Count FLOPs of the enclosed code: FlopCounterMode plus the CPU attention kernels it misses."""
    from torch.utils.flop_counter import FlopCounterMode

    native = sdpa_counted_by_torch(device)
    custom: dict[Any, Callable[..., int]] = {}
    if not native:
        for name in _SDPA_OPS:
            packet = getattr(torch.ops.aten, name, None)
            if packet is not None:
                custom[packet] = _sdpa_flops
    result = FlopCount(0.0, 0.0)
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        yield result
    result.total = float(counter.get_total_flops())
    counts = counter.get_flop_counts().get("Global", {})
    result.sdpa_added = float(sum(v for op, v in counts.items() if any(n in str(op) for n in _SDPA_OPS)))


# ------------------------------------------------------------------------------------------
# Per-stage timing (--profile)
# ------------------------------------------------------------------------------------------
class StageTimer:
    """Exclusive wall time per named stage, collected by wrapping methods of live objects.

    Nested stages (e.g. memory attention inside the official memory preparation) count only in
    the innermost stage. Only the objects of this benchmark are wrapped (instance attributes).
    On a GPU each stage is bracketed by synchronisations (``device``), which costs some overlap:
    the per-stage split is a profile, the frame times without --profile are the measurement.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self._device = torch.device(device)
        self._stack: list[float] = []
        self._current: dict[str, float] = defaultdict(float)
        self._wrapped: list[tuple[Any, str]] = []

    def wrap(self, owner: Any, attribute: str, stage: str) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append(0.0)
            synchronize(self._device)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                synchronize(self._device)
                elapsed = time.perf_counter() - start
                children = self._stack.pop()
                self._current[stage] += elapsed - children
                if self._stack:
                    self._stack[-1] += elapsed

        setattr(owner, attribute, timed)
        self._wrapped.append((owner, attribute))

    def take(self) -> dict[str, float]:
        """Seconds per stage since the last call."""
        taken = dict(self._current)
        self._current.clear()
        return taken

    def unwrap(self) -> None:
        """Remove the wrappers: the objects' own methods are visible again."""
        for owner, attribute in reversed(self._wrapped):
            if attribute in vars(owner):
                delattr(owner, attribute)
        self._wrapped.clear()


def _median_stages(per_frame: list[dict[str, float]], totals: list[float]) -> dict[str, float]:
    """Median milliseconds per stage over frames, plus 'other' = frame time - stages."""
    stages: dict[str, float] = {}
    for stage in STAGES:
        stages[stage] = 1e3 * statistics.median(frame.get(stage, 0.0) for frame in per_frame)
    others = [total - sum(frame.values()) for frame, total in zip(per_frame, totals)]
    stages["other"] = 1e3 * statistics.median(others)
    stages["total"] = 1e3 * statistics.median(totals)
    return stages


# ------------------------------------------------------------------------------------------
# Inputs: clip and weights
# ------------------------------------------------------------------------------------------
@dataclass
class BenchClip:
    """Decoded frames (what both sides see), the frame-0 prompt masks, and the JPEG folder."""

    frames: list[np.ndarray]
    masks: dict[int, np.ndarray]
    jpeg_dir: Path | None


def make_clip(image_size: int, num_frames: int, objects: int, seed: int, jpeg_dir: Path | None) -> BenchClip:
    """A synthetic clip with ``objects`` instruments all visible on frame 0, at image_size^2.

    With ``jpeg_dir`` the frames are written as JPEG (quality 95) and decoded back with PIL,
    exactly as the official loader reads them; the decoded frames are what ours gets too.
    """
    from PIL import Image

    from surgsam2.data.synthetic import SyntheticVideoConfig, generate_synthetic_video

    for attempt in range(32):
        config = SyntheticVideoConfig(
            width=image_size,
            height=image_size,
            num_frames=num_frames,
            min_instruments=objects,
            max_instruments=objects,
            reentry_probability=0.0,
            late_entry_probability=0.0,
            seed=seed + attempt,
        )
        video = generate_synthetic_video(config)
        masks = {obj_id: video.id_maps[0] == obj_id for obj_id in sorted(video.object_classes)}
        # Every object needs a usable prompt: at least 0.1% of the frame on frame 0.
        if len(masks) == objects and all(mask.mean() >= 1e-3 for mask in masks.values()):
            break
    else:
        raise ValueError(f"could not draw a clip with {objects} instruments all visible on frame 0")
    frames = list(video.frames)
    if jpeg_dir is not None:
        jpeg_dir.mkdir(parents=True, exist_ok=True)
        decoded = []
        for index, frame in enumerate(frames):
            path = jpeg_dir / f"{index:05d}.jpg"
            Image.fromarray(frame).save(path, quality=95)
            with Image.open(path) as image:
                decoded.append(np.array(image.convert("RGB")))
        frames = decoded
    return BenchClip(frames=frames, masks=masks, jpeg_dir=jpeg_dir)


def _official_config_file(name: str) -> str:
    from surgsam2.model.configs import MODEL_CONFIGS

    if name not in MODEL_CONFIGS or not name.startswith(("sam2_", "sam2.1_")):
        raise ValueError(f"--against-official needs an official config (sam2[.1]_hiera_*), got {name!r}")
    family = "sam2.1" if name.startswith("sam2.1") else "sam2"
    return f"configs/{family}/{name}.yaml"


def build_official_predictor(name: str, image_size: int, seed: int, device: torch.device | str = "cpu"):
    """The official SAM2VideoPredictor with seeded random weights (perturbed so no part is
    trivially zero), in fp32 on ``device``, holes not filled (the official code needs its CUDA
    extension for that). The weights are drawn on CPU, so they are the same on every device.
    Raises OfficialUnavailableError with the install command when sam2 is missing."""
    config_file = _official_config_file(name)
    try:
        from sam2.build_sam import build_sam2_video_predictor
    except ImportError as error:
        raise OfficialUnavailableError(
            f"--against-official needs the official sam2 package ({error}); install it with: {OFFICIAL_INSTALL_HINT}"
        ) from None
    torch.manual_seed(seed)
    predictor = build_sam2_video_predictor(
        config_file,
        ckpt_path=None,
        device="cpu",
        hydra_overrides_extra=[f"++model.image_size={image_size}", "++model.fill_hole_area=0"],
    )
    predictor.fill_hole_area = 0
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in predictor.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
        predictor.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(RANDOM_OBJECT_SCORE_BIAS)
    return predictor.to(device).eval()


def build_our_model(config: BenchConfig, checkpoint: Path | None):
    """Ours with the shared weights (``checkpoint``) or a seeded random initialisation."""
    from surgsam2.model.checkpoint import load_model

    torch.manual_seed(config.seed)
    model = load_model(
        config.model, checkpoint=checkpoint, image_size=config.image_size, dtype=config.dtype, device=config.device
    )
    if checkpoint is None:
        with torch.no_grad():
            model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(RANDOM_OBJECT_SCORE_BIAS)
    return model


# ------------------------------------------------------------------------------------------
# The two sides, driven one frame at a time
# ------------------------------------------------------------------------------------------
class _OursRunner:
    """Our streaming tracker; `step(i)` tracks frame i (prompts on frame 0).

    ``sdpa_only``: run with the bf16 CPU matmul attention path off (the "before" of that path);
    ``cache_memory_keys`` False: recompute the memory attention keys every frame (the "before" of
    the key cache).
    """

    def __init__(
        self,
        model,
        clip: BenchClip,
        memory: str,
        timer: StageTimer | None,
        like_official: bool = False,
        sdpa_only: bool = False,
        cache_memory_keys: bool = True,
    ) -> None:
        from surgsam2.tracking.prompts import Prompt
        from surgsam2.tracking.tracker import Tracker

        self.name = "ours-sdpa" if sdpa_only else "ours" if cache_memory_keys else "ours-nocache"
        self.sdpa_only = sdpa_only
        self.clip = clip
        # Next to the official predictor: its post-processing on CPU (no hole filling) and its
        # pointer encodings (scaled by the clip length on clips under 16 frames), so the masks
        # of the two sides can be compared as a sanity check.
        self.tracker = Tracker(
            model,
            memory=memory,
            fill_hole_area=0 if like_official else None,
            num_frames=len(clip.frames) if like_official else None,
            cache_memory_keys=cache_memory_keys,
        )
        self.prompts = {obj_id: Prompt(mask=mask) for obj_id, mask in clip.masks.items()}
        if timer is not None:
            timer.wrap(model, "encode_image", "encode_image")
            timer.wrap(self.tracker, "_memory_inputs", "memory_assembly")
            timer.wrap(model.memory_attention, "forward", "memory_attention")
            timer.wrap(model, "decode", "decoder")
            timer.wrap(model, "encode_memory", "memory_encoder")
            timer.wrap(self.tracker, "_result", "output")

    def step(self, index: int) -> dict[int, np.ndarray]:
        from surgsam2.model.attention import sdpa_only

        with sdpa_only() if self.sdpa_only else contextlib.nullcontext():
            result = self.tracker.step(self.clip.frames[index], self.prompts if index == 0 else None)
        return result.masks

    def state_bytes(self) -> tuple[int, int]:
        return self.tracker.state_bytes(), 0


def _tensor_bytes(container: Any, seen: set[int]) -> int:
    """Bytes of the distinct tensor storages reachable through dicts, lists and tuples."""
    if isinstance(container, torch.Tensor):
        storage = container.untyped_storage()
        key = storage.data_ptr()
        if key in seen or storage.nbytes() == 0:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(container, dict):
        return sum(_tensor_bytes(value, seen) for value in container.values())
    if isinstance(container, (list, tuple)):
        return sum(_tensor_bytes(value, seen) for value in container)
    return 0


class _OfficialRunner:
    """The official video predictor, as its users drive it: init_state on the JPEG folder,
    add_new_mask per object on frame 0, then propagate_in_video advanced one frame per step.
    bf16 runs under ``torch.autocast(<device type>, dtype=torch.bfloat16)``, as users do."""

    name = "official"

    def __init__(self, predictor, clip: BenchClip, dtype: str, timer: StageTimer | None) -> None:
        import sam2.sam2_video_predictor as video_module
        import sam2.utils.misc as loader_module

        self.predictor = predictor
        self.dtype = dtype
        self.device_type = predictor.device.type
        # Its tqdm bars (frame loading, propagation) would interleave with our output: silenced
        # for this run only, restored by close().
        self._saved_tqdm = [(module, module.tqdm) for module in (video_module, loader_module)]
        for module, _ in self._saved_tqdm:
            module.tqdm = lambda iterable, *args, **kwargs: iterable
        with self._context():
            self.state = predictor.init_state(str(clip.jpeg_dir))
            for obj_id, mask in clip.masks.items():
                predictor.add_new_mask(self.state, frame_idx=0, obj_id=obj_id, mask=mask)
        self._frames = predictor.propagate_in_video(self.state)
        if timer is not None:
            timer.wrap(predictor, "forward_image", "encode_image")
            timer.wrap(predictor, "_prepare_memory_conditioned_features", "memory_assembly")
            timer.wrap(predictor.memory_attention, "forward", "memory_attention")
            timer.wrap(predictor, "_forward_sam_heads", "decoder")
            timer.wrap(predictor, "_encode_new_memory", "memory_encoder")
            timer.wrap(predictor, "_get_orig_video_res_output", "output")

    def _context(self) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.dtype == "bf16":
            stack.enter_context(torch.autocast(self.device_type, dtype=torch.bfloat16))
        return stack

    def step(self, index: int) -> dict[int, np.ndarray]:
        with self._context():
            frame_index, obj_ids, video_logits = next(self._frames)
            masks = (video_logits[:, 0] > 0).cpu().numpy()
        if frame_index != index:
            raise RuntimeError(f"official predictor yielded frame {frame_index}, expected {index}")
        return {obj_id: masks[row] for row, obj_id in enumerate(obj_ids)}

    def state_bytes(self) -> tuple[int, int]:
        """(state without the preloaded frames, the preloaded frames)."""
        seen: set[int] = set()
        frames = _tensor_bytes(self.state["images"], seen)
        rest = {key: value for key, value in self.state.items() if key != "images"}
        return _tensor_bytes(rest, seen), frames

    def close(self) -> None:
        self._frames.close()
        for module, saved in self._saved_tqdm:
            module.tqdm = saved


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# ------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------
def _log(config: BenchConfig, message: str) -> None:
    if config.progress:
        print(message, file=sys.stderr, flush=True)


def _side_result(
    name: str,
    dtype: str,
    memory: str,
    seconds: list[float],
    flops: FlopCount,
    peak: MatmulPeak,
    state: tuple[int, int],
    stage_frames: list[dict[str, float]] | None,
    device_working_bytes: int | None = None,
) -> SideResult:
    median = statistics.median(seconds)
    achieved = flops.total / median / 1e9
    return SideResult(
        name=name,
        dtype=dtype,
        memory=memory,
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
        stage_ms=_median_stages(stage_frames, seconds) if stage_frames is not None else None,
        device_working_bytes=device_working_bytes,
    )


def run_bench(config: BenchConfig) -> BenchResult:
    """Run ours (and the official predictor) on the same clip and weights; see the module doc."""
    config.validate()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    on_gpu = device.type == "cuda"
    machine = machine_info(device)
    _log(config, f"load average {machine.load_before}; measuring the matmul peak on {device}")
    peak = measure_matmul_peak(device=device)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    total_frames = config.warmup + config.frames + 1  # + 1 steady-state frame for the FLOP count

    with tempfile.TemporaryDirectory(prefix="surgsam2-bench-") as scratch:
        scratch_dir = Path(scratch)
        clip = make_clip(
            config.image_size,
            total_frames,
            config.objects,
            config.seed,
            scratch_dir / "frames" if config.against_official else None,
        )
        official_predictor = None
        checkpoint = None
        if config.against_official:
            _log(config, "building the official predictor with random weights")
            official_predictor = build_official_predictor(config.model, config.image_size, config.seed, device)
            checkpoint = scratch_dir / "shared.pt"
            torch.save({"model": {k: v.cpu() for k, v in official_predictor.state_dict().items()}}, checkpoint)
        model = build_our_model(config, checkpoint)

        names = (
            ["ours"]
            + (["ours-sdpa"] if config.sdpa_baseline else [])
            + (["ours-nocache"] if config.key_cache_baseline else [])
            + (["official"] if official_predictor else [])
        )
        timers = {name: StageTimer(device) for name in names} if config.profile else {}
        baselines = {  # ours before one optimisation: wanted?, runner options
            "ours-sdpa": (config.sdpa_baseline, {"sdpa_only": True}),
            "ours-nocache": (config.key_cache_baseline, {"cache_memory_keys": False}),
        }
        # Each baseline runs its own copy of the model, copied before anything wraps the model's
        # methods (stage timers, CUDA graphs), so that the sides' stage timers do not mix.
        baseline_models = {name: copy.deepcopy(model) for name, (wanted, _) in baselines.items() if wanted}
        graphed = model.use_cuda_graphs() if config.cuda_graphs else {}
        runners: list[Any] = [
            _OursRunner(model, clip, config.memory, timers.get("ours"), like_official=config.against_official)
        ]
        for name, baseline_model in baseline_models.items():
            runner = _OursRunner(
                baseline_model, clip, config.memory, timers.get(name),
                like_official=config.against_official, **baselines[name][1],
            )  # fmt: skip
            runners.append(runner)
        if config.compile:
            for runner in runners:  # after the baselines' copies: compiled modules do not deep-copy
                runner.tracker.model.compile_parts()
        if official_predictor is not None:
            runners.append(_OfficialRunner(official_predictor, clip, config.official_dtype, timers.get("official")))
        try:
            seconds: dict[str, list[float]] = {runner.name: [] for runner in runners}
            stages: dict[str, list[dict[str, float]]] = {runner.name: [] for runner in runners}
            # The per-frame peak resets clear the run's peak: kept here as the max of all peaks.
            peak_device = torch.cuda.max_memory_allocated(device) if on_gpu else 0
            ious: list[float] = []
            flops: dict[str, FlopCount] = {}
            working: dict[str, int] = {runner.name: 0 for runner in runners}
            for index in range(total_frames):
                # Each frame another side goes first (two sides: the order flips every frame).
                shift = index % len(runners)
                order = runners[shift:] + runners[:shift]
                masks: dict[str, dict[int, np.ndarray]] = {}
                for runner in order:
                    timer = timers.get(runner.name)
                    if timer is not None:
                        timer.take()
                    if index == total_frames - 1:
                        # Graph replays are invisible to the counter: this untimed frame runs eagerly.
                        for part in graphed.values():
                            part.enabled = False
                        with count_flops(device) as counted:
                            masks[runner.name] = runner.step(index)
                        flops[runner.name] = counted
                        for part in graphed.values():
                            part.enabled = True
                        continue
                    if on_gpu:
                        allocated_before = torch.cuda.memory_allocated(device)
                        torch.cuda.reset_peak_memory_stats(device)
                    synchronize(device)
                    start = time.perf_counter()
                    masks[runner.name] = runner.step(index)
                    synchronize(device)
                    elapsed = time.perf_counter() - start
                    if on_gpu:
                        above = torch.cuda.max_memory_allocated(device) - allocated_before
                        working[runner.name] = max(working[runner.name], above)
                        peak_device = max(peak_device, torch.cuda.max_memory_allocated(device))
                    if index >= config.warmup:
                        seconds[runner.name].append(elapsed)
                        if timer is not None:
                            stages[runner.name].append(timer.take())
                if "official" in masks and index >= config.warmup:
                    ious.extend(_mask_iou(masks["ours"][i], masks["official"][i]) for i in clip.masks)
                if index % 10 == 0 or index == total_frames - 1:
                    _log(config, f"frame {index + 1}/{total_frames}")
            states = {runner.name: runner.state_bytes() for runner in runners}
        finally:
            for runner in runners:
                if hasattr(runner, "close"):
                    runner.close()
            for timer in timers.values():
                timer.unwrap()

    machine.load_after = load_average()
    sides = {
        runner.name: _side_result(
            runner.name,
            config.official_dtype if runner.name == "official" else config.dtype,
            "fifo" if runner.name == "official" else config.memory,
            seconds[runner.name],
            flops[runner.name],
            peak,
            states[runner.name],
            stages[runner.name] if config.profile else None,
            working[runner.name] if on_gpu else None,
        )
        for runner in runners
    }
    ours, official, ours_sdpa = sides["ours"], sides.get("official"), sides.get("ours-sdpa")
    ours_nocache = sides.get("ours-nocache")
    native = sdpa_counted_by_torch(device)
    notes = _notes(config, machine, ours, official, native)
    for name, part in graphed.items():
        stats = part.stats
        notes.append(
            f"ours: CUDA graphs of {name}: {stats.captured} captured, {stats.failed} failed to capture;"
            f" calls replayed {stats.replayed}, eager {stats.eager} (the FLOP-count frame included)"
        )
    return BenchResult(
        config=config,
        machine=machine,
        peak=peak,
        ours=ours,
        official=official,
        ours_sdpa=ours_sdpa,
        speedup=ours.frames_per_second / official.frames_per_second if official else None,
        speedup_over_sdpa=ours.frames_per_second / ours_sdpa.frames_per_second if ours_sdpa else None,
        ours_nocache=ours_nocache,
        speedup_over_nocache=ours.frames_per_second / ours_nocache.frames_per_second if ours_nocache else None,
        mask_agreement_iou=statistics.fmean(ious) if ious else None,
        peak_rss_bytes=peak_rss_bytes(),
        peak_rss_note="process peak RSS (getrusage), both implementations in one process",
        sdpa_counted_by_torch=native,
        notes=notes,
        peak_device_bytes=max(peak_device, torch.cuda.max_memory_allocated(device)) if on_gpu else None,
        cuda_graphs={name: part.stats for name, part in graphed.items()} if graphed else None,
    )


def _notes(
    config: BenchConfig, machine: MachineInfo, ours: SideResult, official: SideResult | None, native: bool
) -> list[str]:
    notes = []
    if config.device != "cpu":
        notes.append(
            f"on {config.device} ({machine.accelerator}): each frame timed between torch.cuda.synchronize()"
            f" calls; fp32 matmuls {'with' if torch.backends.cuda.matmul.allow_tf32 else 'without'} TF32,"
            f" fp32 convolutions {'with' if torch.backends.cudnn.allow_tf32 else 'without'} TF32 (torch's"
            " defaults, both sides and the matmul peak alike)"
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
    if official is not None:
        notes.append("official: SAM 2 memory (fifo, 7 memories), each object through memory attention alone")
        notes.append("ours as the official runs without its CUDA extension: no hole filling (fill_hole_area=0)")
    if config.memory == "efp":
        notes.append("ours efp: at most 5 memories attended (num_frame_to_prune=2) of the 7 SAM 2 keeps")
    return notes


# ------------------------------------------------------------------------------------------
# Long stream: is the state flat?
# ------------------------------------------------------------------------------------------
def _stream_checkpoints(num_frames: int) -> list[int]:
    """Frames after which the state is read: 1, 10, 100, 1000, ... and the last one."""
    points, value = [], 1
    while value < num_frames:
        points.append(value)
        value *= 10
    return points + [num_frames]


def run_stream(
    config: BenchConfig, clip_frames: int = 100, checkpoints: tuple[int, ...] | None = None
) -> StreamResult:
    """Run our tracker ``config.stream_frames`` frames over a ping-pong looped synthetic clip
    (continuous motion, no cut) and read the state bytes and RSS after the ``checkpoints`` frames
    (default 1, 10, 100, ... and the last). ``flat``: the state after the last frame equals the
    state after frame 100 (or after the first checkpoint on shorter streams)."""
    from surgsam2.tracking.prompts import Prompt
    from surgsam2.tracking.tracker import Tracker

    config.validate()
    if config.stream_frames is None:
        raise ValueError("run_stream needs stream_frames")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    machine = machine_info(device)
    clip = make_clip(config.image_size, min(clip_frames, config.stream_frames), config.objects, config.seed, None)
    model = build_our_model(config, None)
    if config.compile:
        model.compile_parts()
    if config.cuda_graphs:
        model.use_cuda_graphs()
    tracker = Tracker(model, memory=config.memory)
    prompts = {obj_id: Prompt(mask=mask) for obj_id, mask in clip.masks.items()}
    period = max(2 * len(clip.frames) - 2, 1)
    wanted = set(checkpoints or _stream_checkpoints(config.stream_frames)) | {config.stream_frames}
    wanted = {frame for frame in wanted if 1 <= frame <= config.stream_frames}
    points: list[StreamPoint] = []
    seconds: list[float] = []
    for index in range(config.stream_frames):
        phase = index % period
        frame = clip.frames[phase if phase < len(clip.frames) else period - phase]
        synchronize(device)
        start = time.perf_counter()
        tracker.step(frame, prompts if index == 0 else None)
        synchronize(device)
        if index >= config.warmup:
            seconds.append(time.perf_counter() - start)
        if index + 1 in wanted:
            allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
            points.append(StreamPoint(index + 1, tracker.state_bytes(), current_rss_bytes(), allocated))
            _log(config, f"frame {index + 1}: state {points[-1].state_bytes / 2**20:.3f} MB")
    machine.load_after = load_average()
    reference = next((p for p in points if p.frame == 100), points[0])
    median = statistics.median(seconds) if seconds else float("nan")
    return StreamResult(
        config=config,
        machine=machine,
        frames=config.stream_frames,
        points=points,
        frames_per_second=len(seconds) / sum(seconds) if seconds else float("nan"),
        median_s=median,
        flat=points[-1].state_bytes == reference.state_bytes,
    )


# ------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------
def _mb(value: int) -> str:
    return f"{value / 2**20:.2f} MB"


def _format_bench_table(result: BenchResult) -> str:
    config, machine, peak = result.config, result.machine, result.peak
    sides = [s for s in (result.ours, result.ours_sdpa, result.ours_nocache, result.official) if s is not None]
    header = (
        f"surgsam2 bench: {config.model} @ {config.image_size}px, {config.objects} object(s), "
        f"{config.frames} timed frames after {config.warmup} warm-up\n"
        f"machine: {machine.cpu_model}, {machine.logical_cpus} CPUs, {machine.torch_threads} torch threads, "
        f"flags {' '.join(machine.cpu_flags) or '-'}, torch {machine.torch_version}, {machine.date_utc}\n"
        + (f"device: {config.device} ({machine.accelerator})\n" if machine.accelerator else "")
        + f"load average before {machine.load_before}, after {machine.load_after}\n"
        f"matmul peak ({peak.size}^3): fp32 {peak.fp32_gflops:.0f} GFLOP/s, bf16 {peak.bf16_gflops:.0f} GFLOP/s\n"
    )
    names = [f"{s.name} ({s.memory}, {s.dtype})" for s in sides]
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
        ("preloaded frames", [_mb(s.frame_buffer_bytes) if s.name == "official" else "-" for s in sides]),
    ]
    if result.peak_device_bytes is not None:
        rows.append(("GPU working memory per frame", [_mb(s.device_working_bytes or 0) for s in sides]))
    if all(s.stage_ms for s in sides):
        for stage in (*STAGES, "other"):
            rows.append((f"  {stage} (median ms)", [f"{s.stage_ms[stage]:.1f}" for s in sides]))  # type: ignore[index]
    width = max(len(label) for label, _ in rows) + 2
    column = max(24, *(len(n) + 2 for n in names))
    lines = [" " * width + "".join(n.ljust(column) for n in names)]
    lines += [label.ljust(width) + "".join(v.ljust(column) for v in values) for label, values in rows]
    footer = []
    if result.speedup is not None:
        footer.append(f"ours / official frames/s: {result.speedup:.2f}x")
    if result.speedup_over_sdpa is not None:
        footer.append(f"ours / ours-sdpa (bf16 matmul attention path off) frames/s: {result.speedup_over_sdpa:.2f}x")
    if result.speedup_over_nocache is not None:
        footer.append(f"ours / ours-nocache (memory keys recomputed every frame) frames/s: {result.speedup_over_nocache:.2f}x")
    if result.mask_agreement_iou is not None:
        footer.append(f"mask agreement ours vs official (mean IoU): {result.mask_agreement_iou:.3f}")
    footer.append(f"peak memory: {_mb(result.peak_rss_bytes)} ({result.peak_rss_note})")
    if result.peak_device_bytes is not None:
        footer.append(f"peak GPU memory: {_mb(result.peak_device_bytes)} (torch.cuda.max_memory_allocated, both sides)")
    footer += [f"note: {note}" for note in result.notes]
    return header + "\n".join(lines) + "\n" + "\n".join(footer)


def _format_stream_table(result: StreamResult) -> str:
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


def write_json(result: BenchResult | StreamResult, path: str | Path) -> Path:
    """Write the result as JSON (rewritten, never appended), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
    os.replace(temporary, path)
    return path
