"""What every tracker of one stream keeps and answers alike, whatever runs its network (torch here,
ONNX Runtime in `surgsam2.export.runtime`): the bank of objects, the next frame's index and the
stream's frame size. Torch-free."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class StreamTracker:
    """The stream bookkeeping shared by `Tracker` and the ONNX runtime's tracker."""

    bank: Any  # a memory bank: ``objects``, ``reset()``, ``remove_object(id)``, ``id in bank``
    frame_index: int
    frame_size: tuple[int, int] | None

    @property
    def object_ids(self) -> list[int]:
        return list(self.bank.objects)

    def reset(self) -> None:
        """Forget every object and start a new stream at frame 0."""
        self.bank.reset()
        self.frame_index = 0
        self.frame_size = None
        self._forget_stream()

    def _forget_stream(self) -> None:
        """Drop what a subclass caches per stream (nothing here)."""

    def remove_object(self, obj_id: int) -> None:
        """Stop tracking ``obj_id`` and free its memory."""
        if obj_id not in self.bank:
            raise ValueError(f"unknown object id {obj_id}; tracked: {self.object_ids}")
        self.bank.remove_object(obj_id)

    def _bank_objects_of(self, outputs: Mapping[int, Any]) -> list[int]:
        """The ids of this frame's outputs, in order; objects new to the bank are added to it."""
        obj_ids = list(outputs)
        for obj_id in obj_ids:
            if obj_id not in self.bank:
                self.bank.add_object(obj_id)
        return obj_ids
