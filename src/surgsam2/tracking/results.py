"""Per-frame tracking results: each object's network output on the device, then the host result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from surgsam2.data.masks import MAX_OBJECT_ID

if TYPE_CHECKING:  # torch-free at run time: the ONNX runtime reuses FrameResult
    import torch


@dataclass
class ObjectOutput:
    """One object's output on a frame, on the model's device, before upsampling (`Tracker.advance`)."""

    low_res_masks: torch.Tensor  # (1, 1, h, w), holes filled (what the user sees)
    memory_masks: torch.Tensor  # (1, 1, h, w) logits the memory is encoded from
    ious: torch.Tensor  # (1, M)
    obj_ptr: torch.Tensor  # (1, D)
    object_score_logits: torch.Tensor  # (1, 1)
    conditioning: bool  # a prompted frame: remembered for good, mask binarised for memory


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
        """One HxW uint8 map, pixel = object id (0 background), highest logit wins. Object ids are
        1..MAX_OBJECT_ID (255, what a palette PNG mask stores), as the tracker accepts them."""
        if not self.masks:
            raise ValueError("no objects on this frame")
        outside = [i for i in self.object_ids if not 1 <= i <= MAX_OBJECT_ID]
        if outside:
            raise ValueError(f"object id {outside[0]} is outside 1..{MAX_OBJECT_ID}: it has no place in an id map")
        ids = np.array(self.object_ids)
        stacked = np.stack([np.where(self.masks[i], self.logits[i], -np.inf) for i in ids])
        winner = np.argmax(stacked, axis=0)
        any_mask = np.isfinite(np.max(stacked, axis=0))
        return np.where(any_mask, ids[winner], 0).astype(np.uint8)
