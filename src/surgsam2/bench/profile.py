"""`--profile`: exclusive wall time per named stage of each frame (`surgsam2.tracking.stages`)."""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
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
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self._device = torch.device(device)
        self._stack: list[float] = []
        self._current: dict[str, float] = defaultdict(float)
        self._wrapped: list[tuple[Any, str]] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed code as stage ``name``, less the stages nested in it."""
        self._stack.append(0.0)
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
