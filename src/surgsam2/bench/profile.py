"""`--profile`: exclusive wall time per named stage of each frame (`surgsam2.tracking.stages`)."""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch

from surgsam2.bench.machine import synchronize
from surgsam2.tracking.stages import STAGES


class StageTimer:
    """Exclusive wall time per named stage: our tracker's stage hook, and a wrapper of the
    official predictor's methods (not our code, so wrapped from outside, per instance).

    Nested stages (e.g. memory attention inside the official memory preparation) count only in
    the innermost stage. On a GPU each stage is bracketed by synchronisations (``device``), which
    costs some overlap: the per-stage split is a profile, the frame times without --profile are
    the measurement.

    While `counting_flops` gives it a running FLOP count (`machine.count_flops`), each stage's
    exclusive FLOPs are attributed the same way, for `take_flops`.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self._device = torch.device(device)
        self._stack: list[float] = []
        self._current: dict[str, float] = defaultdict(float)
        self._wrapped: list[tuple[Any, str]] = []
        self._flop_source: Callable[[], float] | None = None
        self._flop_stack: list[float] = []
        self._flops: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def counting_flops(self, running: Callable[[], float]) -> Iterator[None]:
        """Attribute the FLOPs ``running()`` counts to the stages entered in the block."""
        self._flop_source = running
        try:
            yield
        finally:
            self._flop_source = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed code as stage ``name``, less the stages nested in it."""
        self._stack.append(0.0)
        source = self._flop_source
        if source is not None:
            self._flop_stack.append(0.0)
            flops_before = source()
        synchronize(self._device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self._device)
            elapsed = time.perf_counter() - start
            children = self._stack.pop()
            self._current[name] += elapsed - children
            if self._stack:
                self._stack[-1] += elapsed
            if source is not None:
                flops = source() - flops_before
                self._flops[name] += flops - self._flop_stack.pop()
                if self._flop_stack:
                    self._flop_stack[-1] += flops

    def wrap(self, owner: Any, attribute: str, stage: str) -> None:
        """Time every call of ``owner.attribute`` as ``stage`` (an instance attribute, until `unwrap`)."""
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.stage(stage):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)
        self._wrapped.append((owner, attribute))

    def take(self) -> dict[str, float]:
        """Seconds per stage since the last call."""
        taken = dict(self._current)
        self._current.clear()
        return taken

    def take_flops(self) -> dict[str, float]:
        """FLOPs per stage counted since the last call (see `counting_flops`)."""
        taken = dict(self._flops)
        self._flops.clear()
        return taken

    def unwrap(self) -> None:
        """Remove the wrappers: the objects' own methods are visible again."""
        for owner, attribute in reversed(self._wrapped):
            if attribute in vars(owner):
                delattr(owner, attribute)
        self._wrapped.clear()


def median_stages(per_frame: list[dict[str, float]], totals: list[float]) -> dict[str, float]:
    """Median milliseconds per stage over frames, plus 'other' = frame time - stages, and 'total'."""
    stages: dict[str, float] = {}
    for stage in STAGES:
        stages[stage] = 1e3 * statistics.median(frame.get(stage, 0.0) for frame in per_frame)
    others = [total - sum(frame.values()) for frame, total in zip(per_frame, totals)]
    stages["other"] = 1e3 * statistics.median(others)
    stages["total"] = 1e3 * statistics.median(totals)
    return stages


def stage_gflop(per_stage: dict[str, float], total: float) -> dict[str, float]:
    """GFLOP per stage of one frame, plus 'other' = the frame's total - the stages', and 'total'."""
    gflop = {stage: per_stage.get(stage, 0.0) / 1e9 for stage in STAGES}
    gflop["other"] = max(0.0, total - sum(per_stage.values())) / 1e9
    gflop["total"] = total / 1e9
    return gflop
