"""Offline propagation over a whole clip (the streaming tracker driven over a frame sequence)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized

import numpy as np

from surgsam2.memory.policies import DEFAULT_NUM_FRAME_TO_PRUNE, DEFAULT_POLICY, MemoryPolicy
from surgsam2.model.sam2 import SAM2Model
from surgsam2.tracking.prompts import Prompt, validate_object_id
from surgsam2.tracking.results import FrameResult, ObjectOutput
from surgsam2.tracking.tracker import Tracker


def segment_video(
    model: SAM2Model,
    frames: Iterable[np.ndarray],
    prompts: Mapping[int, Mapping[int, Prompt]],
    memory: str | MemoryPolicy = DEFAULT_POLICY,
    num_frame_to_prune: int = DEFAULT_NUM_FRAME_TO_PRUNE,
    fill_hole_area: int | None = None,
    num_frames: int | None = None,
    backward: bool = True,
) -> Iterator[FrameResult]:
    """Track objects through ``frames``, prompting them on the frames ``prompts`` names.

    ``prompts``: {frame_index: {object_id: Prompt}}. Objects are tracked forward from their first
    prompt. With ``backward`` (and ``frames`` a sequence, so frames can be revisited), an object
    first prompted on a later frame is also tracked backward from there to frame 0, as SAM 2 does;
    that pass runs first and keeps only low-resolution masks. Otherwise frames are read lazily and
    each result is yielded as soon as its frame is processed. Frames where no object exists yet
    give empty results and cost no network time. ``num_frames`` defaults to ``len(frames)``.
    """
    if not prompts:
        raise ValueError("segment_video needs at least one prompt: {frame_index: {object_id: Prompt}}")
    bad = [index for index in prompts if not isinstance(index, (int, np.integer)) or index < 0]
    if bad:
        raise ValueError(f"prompt frame indices must be non-negative integers, got {bad}")
    for frame_prompts in prompts.values():
        for obj_id in frame_prompts:
            validate_object_id(obj_id)  # before any frame runs, not when its frame comes
    if num_frames is None and isinstance(frames, Sized):
        num_frames = len(frames)
    if num_frames is not None:
        late = [index for index in prompts if index >= num_frames]
        if late:
            raise ValueError(f"prompts on frames {sorted(late)} but the video has {num_frames} frames")

    def new_tracker() -> Tracker:
        return Tracker(
            model,
            memory=memory,
            num_frame_to_prune=num_frame_to_prune,
            fill_hole_area=fill_hole_area,
            num_frames=num_frames,
        )

    earlier: dict[int, dict[int, ObjectOutput]] = {}
    if backward and isinstance(frames, Sequence):
        earlier = _track_backward(new_tracker(), frames, prompts)
    tracker = new_tracker()
    for frame_index, frame in enumerate(frames):
        outputs = tracker.advance(frame, prompts.get(frame_index))
        merged = dict(sorted({**earlier.pop(frame_index, {}), **outputs}.items()))
        yield tracker.result(merged, frame_index)


def _track_backward(
    tracker: Tracker, frames: Sequence[np.ndarray], prompts: Mapping[int, Mapping[int, Prompt]]
) -> dict[int, dict[int, ObjectOutput]]:
    """Outputs of objects first prompted after frame 0 on the frames before their first prompt,
    from a pass over the frames in reverse order (SAM 2's reverse propagation)."""
    first_prompt: dict[int, int] = {}
    for frame_index in sorted(prompts):
        for obj_id in prompts[frame_index]:
            first_prompt.setdefault(obj_id, frame_index)
    late = {obj_id: frame for obj_id, frame in first_prompt.items() if frame > 0}
    if not late:
        return {}
    earlier: dict[int, dict[int, ObjectOutput]] = {}
    for frame_index in range(max(late.values()), -1, -1):
        frame_prompts = {
            obj_id: prompt for obj_id, prompt in prompts.get(frame_index, {}).items() if obj_id in late
        }
        outputs = tracker.advance(frames[frame_index], frame_prompts)
        before_first = {obj_id: out for obj_id, out in outputs.items() if frame_index < late[obj_id]}
        if before_first:
            earlier[frame_index] = before_first
    return earlier
