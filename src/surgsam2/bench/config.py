"""What a `surgsam2 bench` run measures: its configuration, checked before anything runs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from surgsam2.app.options import ModelOptions, check_model_options
from surgsam2.memory.policies import DEFAULT_POLICY, policy_names
from surgsam2.model.configs import check_image_size
from surgsam2.model.sam2 import PRECISIONS

# The official predictor's precisions (bf16: under torch.autocast, as its users run it).
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Ours also runs "mixed": fp32 with memory attention in bf16 (SAM2Model.to_precision).
OUR_PRECISIONS = PRECISIONS
# Objects prompted on frame 0: the synthetic clip draws at most `CLIP_INSTRUMENTS` instruments;
# further objects are prompted with the same masks again (tracked independently, same work each).
CLIP_INSTRUMENTS = 8
MAX_OBJECTS = 16


class OfficialUnavailableError(RuntimeError):
    """The official `sam2` package (needed by --against-official) cannot be imported or built."""


@dataclass
class BenchConfig:
    """What to run. ``frames`` are timed after ``warmup`` untimed ones (frame 0 is the prompt)."""

    model: str = "sam2.1_hiera_s"
    image_size: int = 512
    objects: int = 1
    frames: int = 40
    warmup: int = 5
    memory: str = DEFAULT_POLICY
    dtype: str = "fp32"
    against_official: bool = False
    official_dtype: str = "fp32"
    # The official predictor in its VOS mode (SAM2VideoPredictorVOS: its parts under
    # torch.compile, as its published frames/s figures are taken).
    official_vos_optimized: bool = False
    threads: int | None = None
    seed: int = 0
    profile: bool = False
    key_cache_baseline: bool = False  # also run ours recomputing memory keys every frame
    compile: bool = False  # torch.compile our model's parts (SAM2Model.compile_parts)
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N": where every side runs
    cuda_graphs: bool = False  # ours: parts replayed as CUDA graphs (SAM2Model.use_cuda_graphs)
    # ours: the ring bank, steady-state frames as one host-free step (Tracker(steady_frames=True);
    # on a GPU one CUDA graph per set of objects)
    steady_frames: bool = False
    stream_frames: int | None = None
    engines: tuple[str, ...] = ()  # instead: these engines side by side (`bench.engines`)
    streams: int | None = None  # instead: one tracker against N streams of the clip (`bench.streams`)
    progress: bool = True

    def validate(self) -> BenchConfig:
        """Raise ValueError naming the first bad field; returns self."""
        check_image_size(self.image_size)
        if not 1 <= self.objects <= MAX_OBJECTS:
            raise ValueError(
                f"objects must be in 1..{MAX_OBJECTS}, got {self.objects}"
            )
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.warmup < 1:
            raise ValueError(f"warmup must be >= 1 (frame 0 is the prompt frame), got {self.warmup}")
        if self.memory not in policy_names():
            raise ValueError(f"unknown memory policy {self.memory!r}; choose one of {', '.join(policy_names())}")
        if self.dtype not in OUR_PRECISIONS:
            raise ValueError(f"dtype must be one of {list(OUR_PRECISIONS)}, got {self.dtype!r}")
        if self.official_vos_optimized and not self.against_official:
            raise ValueError("official_vos_optimized needs against_official (it is a mode of the official predictor)")
        if self.official_dtype not in DTYPES:
            raise ValueError(f"official_dtype must be one of {sorted(DTYPES)}, got {self.official_dtype!r}")
        cpus = os.cpu_count() or 1  # more torch threads than CPUs only slows down (far more crash OpenMP)
        if self.threads is not None and not 1 <= self.threads <= cpus:
            raise ValueError(f"threads must be in 1..{cpus} (this machine's CPUs), got {self.threads}")
        if self.stream_frames is not None and self.stream_frames < 1:
            raise ValueError(f"stream frames must be >= 1, got {self.stream_frames}")
        if self.streams is not None:
            if self.streams < 1:
                raise ValueError(f"streams must be >= 1, got {self.streams}")
            if self.against_official:
                raise ValueError("--streams runs ours only: the official predictor has no multi-stream mode")
            if self.stream_frames is not None or self.engines:
                raise ValueError("--streams is a mode of its own: not with --stream-frames or --engine")
        if self.steady_frames and (self.streams is not None or self.engines or self.stream_frames is not None):
            raise ValueError("--steady-frames is a mode of the plain bench: not with --streams, --engine or --stream-frames")
        if self.steady_frames and self.profile:
            raise ValueError("--steady-frames runs a steady frame as one step: it has no stages to --profile")
        # Ours runs seeded random weights (or the official ones, shared): the same checks as every command.
        check_model_options(
            ModelOptions(name=self.model, device=self.device, cuda_graphs=self.cuda_graphs, random_weights=True)
        )
        return self
