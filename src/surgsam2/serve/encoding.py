"""The image encoding of a session's last clicked frame, reused by the next clicks on that frame:
a click costs the prompt decoder only, not the image encoder (the click-to-mask latency)."""

from __future__ import annotations

from surgsam2.model.sam2 import ImageFeatures
from surgsam2.tracking.tracker import Tracker


class EncodingCache:
    """The `ImageFeatures` of one frame of the session's clip, by frame index (a clip's frames do
    not change while it is open; `clear` when another clip is opened)."""

    def __init__(self) -> None:
        self.frame: int | None = None
        self.features: ImageFeatures | None = None
        self.hits = 0

    def clear(self) -> None:
        self.frame, self.features = None, None

    def features_of(self, tracker: Tracker, frame_index: int, frame) -> ImageFeatures:
        """Frame ``frame_index``'s features: cached, or encoded by ``tracker`` (and kept)."""
        if self.frame == frame_index and self.features is not None:
            self.hits += 1
            return self.features
        self.frame, self.features = frame_index, tracker.encode_frame(frame)
        return self.features
