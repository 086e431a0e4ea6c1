"""Many independent videos tracked together: the network's calls batched across them.

`MultiStreamTracker` holds one `Tracker` per stream (its own bank, objects, policy, frame index and
frame size; streams may differ in size and length). Each `step` takes one frame per stream (or None
for a stream with no frame this time) and encodes the frames of the streams that have something to
track in one image-encoder call (batch = streams). Streams without prompts on this frame (the
steady state) then go through memory attention and the decoder together, their objects
concatenated along the batch axis, one call per memory shape (memories of equal token counts; no
padding), and through one memory-encoder call; a stream with prompts takes `Tracker.advance` that
frame. Choosing and storing memories, and each stream's outputs, stay per stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from surgsam2.model.sam2 import ImageFeatures, SAM2Model
from surgsam2.tracking.frames import check_stream_frame, preprocess_frame
from surgsam2.tracking.phases import (
    EncodedMemories,
    MemoryBatch,
    TrackedObject,
    attend_and_decode,
    encode_memories,
    memory_encoder_inputs,
    per_object_features,
    tracked_output,
)
from surgsam2.tracking.prompts import Prompt, validate_prompts
from surgsam2.tracking.results import FrameResult, ObjectOutput
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
        steady = [index for index in busy if not prompts[index]]
        outputs = self._track_steady(steady, rows) if steady else {}
        results: list[FrameResult | None] = []
        for index, (frame, tracker) in enumerate(zip(frames, self.streams)):
            if frame is None:
                results.append(None)
                continue
            if index in outputs:
                tracker.frame_index += 1
                results.append(tracker.result(outputs[index], tracker.frame_index - 1))
                continue
            frame_index = tracker.frame_index
            stream_outputs = tracker.advance(frame, prompts[index], rows.get(index))
            results.append(tracker.result(stream_outputs, frame_index))
        return results

    def _track_steady(
        self, indices: list[int], rows: dict[int, ImageFeatures]
    ) -> dict[int, dict[int, ObjectOutput]]:
        """Track the objects of the streams ``indices`` (no prompts this frame) and store their
        memories: memory attention and the decoder once per memory shape across the streams, the
        memory encoder once. Their frame indices are left to the caller to advance."""
        groups: dict[tuple, list[tuple[int, MemoryBatch]]] = {}
        for index in indices:
            tracker = self.streams[index]
            for batch in tracker.memory_batches(tracker.object_ids):
                groups.setdefault((*batch.shape_key, tracker.fill_hole_area), []).append((index, batch))
        tracked: dict[int, dict[int, TrackedObject]] = {index: {} for index in indices}
        for (*_, fill_hole_area), group in groups.items():
            features = per_object_features([(rows[index], len(batch.obj_ids)) for index, batch in group])
            batches = [batch for _, batch in group]
            objects = iter(attend_and_decode(self.model, self.stage_hook, features, batches, fill_hole_area))
            for index, batch in group:
                tracked[index].update((obj_id, next(objects)) for obj_id in batch.obj_ids)
        outputs = {
            index: {obj_id: tracked_output(tracked[index][obj_id]) for obj_id in self.streams[index].object_ids}
            for index in indices
        }
        self._remember_steady(outputs, rows)
        return outputs

    def _remember_steady(
        self, outputs: dict[int, dict[int, ObjectOutput]], rows: dict[int, ImageFeatures]
    ) -> None:
        """Encode the memories of every object of the streams in ``outputs`` in one call (per kind
        of cached key and of mask: exclusive among a stream's objects or not) and store each
        stream's rows in its bank."""
        kinds: dict[tuple[torch.dtype | None, bool], list[int]] = {}
        for index in outputs:
            tracker = self.streams[index]
            key_dtype = tracker.bank.config.storage_dtype if tracker.cache_memory_keys else None
            kinds.setdefault((key_dtype, getattr(tracker.policy, "exclusive_memories", False)), []).append(index)
        for (key_dtype, exclusive), indices in kinds.items():
            obj_ids = {index: list(outputs[index]) for index in indices}
            masks, object_scores, conditioning = memory_encoder_inputs(
                [outputs[index][obj_id] for index in indices for obj_id in obj_ids[index]]
            )
            features = per_object_features([(rows[index], len(obj_ids[index])) for index in indices])
            # Each stream's objects compete for pixels among themselves only.
            groups = tuple(group for group, index in enumerate(indices) for _ in obj_ids[index]) if exclusive else None
            encoded = encode_memories(
                self.model, self.stage_hook, features, masks, object_scores, conditioning, key_dtype,
                exclusive_groups=groups,
            )  # fmt: skip
            start = 0
            for index in indices:
                rows_of = slice(start, start + len(obj_ids[index]))
                start = rows_of.stop
                keys = None if encoded.keys is None else encoded.keys[rows_of]
                part = EncodedMemories(encoded.tokens[rows_of], keys, encoded.spatial_pos)
                self.streams[index].store_memories(obj_ids[index], outputs[index], part, object_scores[rows_of])

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
