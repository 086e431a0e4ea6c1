"""Offline propagation over a whole clip (the streaming tracker driven over a frame sequence)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sized

import numpy as np

from surgsam2.memory.policies import MemoryPolicy
from surgsam2.model.sam2 import SAM2Model
from surgsam2.tracking.prompts import Prompt
from surgsam2.tracking.results import FrameResult
from surgsam2.tracking.tracker import Tracker


def segment_video(
    model: SAM2Model,
    frames: Iterable[np.ndarray],
    prompts: Mapping[int, Mapping[int, Prompt]],
    memory: str | MemoryPolicy = "efp",
    num_frame_to_prune: int = 2,
    fill_hole_area: int | None = None,
    num_frames: int | None = None,
) -> Iterator[FrameResult]:
    """Track objects through ``frames``, prompting them on the frames ``prompts`` names.

    ``prompts``: {frame_index: {object_id: Prompt}}. Frames are read lazily, one at a time, and
    each result is yielded as soon as its frame is processed (frames before the first prompt give
    empty results and cost no network time). Objects are tracked from their first prompt onwards. ``num_frames`` defaults to ``len(frames)`` when the sequence has a length.
    """
    if not prompts:
        raise ValueError("segment_video needs at least one prompt: {frame_index: {object_id: Prompt}}")
    bad = [index for index in prompts if not isinstance(index, (int, np.integer)) or index < 0]
    if bad:
        raise ValueError(f"prompt frame indices must be non-negative integers, got {bad}")
    if num_frames is None and isinstance(frames, Sized):
        num_frames = len(frames)
    if num_frames is not None:
        late = [index for index in prompts if index >= num_frames]
        if late:
            raise ValueError(f"prompts on frames {sorted(late)} but the video has {num_frames} frames")
    tracker = Tracker(
        model,
        memory=memory,
        num_frame_to_prune=num_frame_to_prune,
        fill_hole_area=fill_hole_area,
        num_frames=num_frames,
    )
    for frame_index, frame in enumerate(frames):
        yield tracker.step(frame, prompts.get(frame_index))
