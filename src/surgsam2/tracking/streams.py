"""Many independent videos tracked together: one image-encoder call per step for all of them.

`MultiStreamTracker` holds one `Tracker` per stream (its own bank, objects, frame index and frame
size; streams may differ in size and length). Each `step` takes one frame per stream (or None for
a stream with no frame this time), encodes the frames of the streams that have something to
track in one batch (batch dimension = streams), and hands each stream's tracker its row of the
features. Memory attention, the decoder and the memory encoder still run per stream: batching
them across streams (whose banks differ) is a later step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from surgsam2.model.sam2 import ImageFeatures, SAM2Model
from surgsam2.tracking.frames import check_stream_frame, preprocess_frame
from surgsam2.tracking.prompts import Prompt, validate_prompts
from surgsam2.tracking.results import FrameResult
from surgsam2.tracking.stages import NO_STAGES, StageHook
from surgsam2.tracking.tracker import Tracker

StreamPrompts = Mapping[int, Prompt] | None


class StreamError(ValueError):
    """Bad input on one stream (``stream``: its index), found before any stream advanced, so a
    caller may drop that stream and repeat the step for the others."""

    def __init__(self, stream: int, reason: str) -> None:
        super().__init__(f"stream {stream}: {reason}")
        self.stream = stream
        self.reason = reason


class MultiStreamTracker:
    """N independent streaming trackers advanced together, the image encoder batched across them.

    ``options``: `Tracker`'s keyword options (``memory``, ``num_frame_to_prune``,
    ``fill_hole_area``, ``cache_memory_keys``, ...), the same for every stream. ``streams[i]`` (or
    ``tracker[i]``) is stream i's `Tracker`: its ``object_ids``, ``remove_object``, bank and state.
    """

    def __init__(self, model: SAM2Model, num_streams: int, **options: Any) -> None:
        if isinstance(num_streams, bool) or not isinstance(num_streams, int) or num_streams < 1:
            raise ValueError(f"num_streams must be a positive integer, got {num_streams!r}")
        self.model = model
        self.streams = [Tracker(model, **options) for _ in range(num_streams)]
        hook = options.get("stage_hook")
        self.stage_hook: StageHook = NO_STAGES if hook is None else hook

    def __len__(self) -> int:
        return len(self.streams)

    def __getitem__(self, stream: int) -> Tracker:
        return self.streams[self._index(stream)]

    def _index(self, stream: int) -> int:
        if isinstance(stream, bool) or not isinstance(stream, int) or not 0 <= stream < len(self.streams):
            raise ValueError(f"stream index must be an integer in 0..{len(self.streams) - 1}, got {stream!r}")
        return stream

    def reset(self, stream: int | None = None, num_frames: int | None = None) -> None:
        """Start a new video on ``stream`` (None: on every stream): no objects, frame 0, any size.
        ``num_frames``: the new video's length when known (see `Tracker`), else None."""
        indices = range(len(self.streams)) if stream is None else [self._index(stream)]
        for index in indices:
            self.streams[index].reset()
            self.streams[index].num_frames = num_frames

    def remove_object(self, stream: int, obj_id: int) -> None:
        """Stop tracking ``obj_id`` on ``stream``."""
        try:
            self[stream].remove_object(obj_id)
        except ValueError as error:
            raise StreamError(stream, str(error)) from None

    def state_bytes(self) -> int:
        """Bytes of tensors all streams hold between frames."""
        return sum(tracker.state_bytes() for tracker in self.streams)

    @torch.inference_mode()
    def step(
        self, frames: Sequence[np.ndarray | None], prompts: Sequence[StreamPrompts] | None = None
    ) -> list[FrameResult | None]:
        """Advance every stream that has a frame (HxWx3 uint8 RGB; None: that stream has no frame
        this time, does not advance and gets None), applying its prompts first. All input is
        checked before anything runs: a `StreamError` names the first bad stream."""
        frames, prompts = self._checked(frames, prompts)
        busy = [
            index for index, frame in enumerate(frames)
            if frame is not None and (prompts[index] or self.streams[index].bank.objects)
        ]  # fmt: skip
        features = self._encode([frames[index] for index in busy])
        rows = {index: features.row(row) for row, index in enumerate(busy)} if busy else {}
        results: list[FrameResult | None] = []
        for index, (frame, tracker) in enumerate(zip(frames, self.streams)):
            if frame is None:
                results.append(None)
                continue
            frame_index = tracker.frame_index
            outputs = tracker.advance(frame, prompts[index], rows.get(index))
            results.append(tracker.result(outputs, frame_index))
        return results

    def _checked(
        self, frames: Sequence[np.ndarray | None], prompts: Sequence[StreamPrompts] | None
    ) -> tuple[list[np.ndarray | None], list[dict[int, Prompt]]]:
        """The frames and validated prompts per stream; StreamError for the first bad stream."""
        count = len(self.streams)
        if isinstance(frames, np.ndarray) or len(frames) != count:
            got = "one array" if isinstance(frames, np.ndarray) else f"{len(frames)}"
            raise ValueError(f"expected a sequence of {count} frames (one per stream, None for none), got {got}")
        if prompts is None:
            prompts = [None] * count
        elif isinstance(prompts, Mapping) or len(prompts) != count:
            got = "one mapping" if isinstance(prompts, Mapping) else f"{len(prompts)}"
            raise ValueError(
                f"expected a sequence of {count} prompt mappings (one per stream, None for none), got {got}"
            )
        checked_frames: list[np.ndarray | None] = []
        checked_prompts: list[dict[int, Prompt]] = []
        for index, (frame, tracker) in enumerate(zip(frames, self.streams)):
            if frame is None:
                if prompts[index]:
                    raise StreamError(index, "prompts given without a frame")
                checked_frames.append(None)
                checked_prompts.append({})
                continue
            try:
                frame, size = check_stream_frame(frame, tracker.frame_index, tracker.frame_size)
                checked_prompts.append(validate_prompts(prompts[index], size))
            except ValueError as error:
                raise StreamError(index, str(error)) from None
            checked_frames.append(frame)
        return checked_frames, checked_prompts

    def _encode(self, frames: list[np.ndarray]) -> ImageFeatures | None:
        """The image encoder once over the frames (one image per stream), or None for none."""
        if not frames:
            return None
        model = self.model
        images = torch.cat([preprocess_frame(frame, model.image_size, model.device, model.dtype) for frame in frames])
        with self.stage_hook.stage("encode_image"):
            return model.encode_image(images)
