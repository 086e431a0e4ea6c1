"""Per-frame tracking results."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FrameResult:
    """Masks of every tracked object on one frame, at the frame's resolution.

    ``masks[id]``: bool HxW; ``logits[id]``: float32 HxW mask logits (mask = logits > 0);
    ``scores[id]``: probability that the object is visible (sigmoid of the object-score logit);
    ``ious[id]``: the decoder's predicted IoU of the chosen mask.
    """

    frame_index: int
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    logits: dict[int, np.ndarray] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    ious: dict[int, float] = field(default_factory=dict)

    @property
    def object_ids(self) -> list[int]:
        return list(self.masks)

    def id_map(self) -> np.ndarray:
        """One HxW uint8/uint16 map, pixel = object id (0 background), highest logit wins."""
        if not self.masks:
            raise ValueError("no objects on this frame")
        ids = np.array(self.object_ids)
        stacked = np.stack([np.where(self.masks[i], self.logits[i], -np.inf) for i in ids])
        winner = np.argmax(stacked, axis=0)
        any_mask = np.isfinite(np.max(stacked, axis=0))
        dtype = np.uint8 if ids.max() < 256 else np.uint16
        return np.where(any_mask, ids[winner], 0).astype(dtype)
