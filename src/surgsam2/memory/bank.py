"""The memory bank: per-object memories of past frames as torch tensors, bounded in size.

The rules (what is kept, what a frame attends to) are `memory.rules.BankRules`, shared with the
ONNX runtime; this bank adds the storage dtype, memory accounting and the device-side store of retained reliable
memories (`RetainedStore`). Pure tensor code: it knows
nothing of the network beyond tensor shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgsam2.memory.rules import BankRules, MemoryLayout, MemoryRules, ObjectMemory, StoredMemory


@dataclass(frozen=True)
class BankConfig(MemoryRules):
    """SAM 2's memory rules (values from the model config) and the dtype memories are stored in."""

    storage_dtype: torch.dtype = torch.bfloat16  # as the official predictor stores memories


@dataclass
class RetainedStore:
    """One object's retained memories on the device: R slots plus one scratch slot (index R) that
    absorbs the write of a memory that is not reliable, so the choice needs no host sync.

    An empty slot has frame -inf and object score -inf (it reads as poor and is never attended:
    a policy drops poor retained memories first).
    """

    features: torch.Tensor  # (R + 1, T, C)
    keys: torch.Tensor | None  # (R + 1, num_layers, T, d) or None without the key cache
    obj_ptr: torch.Tensor  # (R + 1, D)
    object_score: torch.Tensor  # (R + 1,) float32
    iou: torch.Tensor  # (R + 1,) float32
    frame: torch.Tensor  # (R + 1,) float32 frame index, -inf when empty

    @classmethod
    def empty_like(cls, stored: StoredMemory, count: int) -> RetainedStore:
        device = stored.features.device

        def slots(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.new_zeros((count + 1, *tensor.shape))

        def filled(value: float) -> torch.Tensor:
            return torch.full((count + 1,), value, dtype=torch.float32, device=device)

        keys = None if stored.keys is None else slots(stored.keys)
        return cls(slots(stored.features), keys, slots(stored.obj_ptr), filled(float("-inf")), filled(0.0),
                   filled(float("-inf")))  # fmt: skip

    def views(self) -> list[StoredMemory]:
        """The R slots as stored memories (views: later writes show through)."""
        count = self.features.shape[0] - 1
        return [
            StoredMemory(-1, self.features[i], self.obj_ptr[i], None if self.keys is None else self.keys[i],
                         self.object_score[i], self.iou[i], frame_stamp=self.frame[i])
            for i in range(count)
        ]  # fmt: skip

    def offer(self, stored: StoredMemory, min_iou: float) -> None:
        """Keep ``stored`` in place of the oldest (or an empty) slot if it is reliable: object-score
        logit > 0 and predicted IoU >= ``min_iou``; otherwise it goes to the scratch slot."""
        count = self.frame.shape[0] - 1
        score = stored.object_score.reshape(()).float()
        reliable = (score > 0) & (stored.iou.reshape(()).float() >= min_iou)
        target = torch.where(reliable, torch.argmin(self.frame[:count]), count).reshape(1)
        self.features.index_copy_(0, target, stored.features[None].to(self.features.dtype))
        if self.keys is not None:
            self.keys.index_copy_(0, target, stored.keys[None].to(self.keys.dtype))
        self.obj_ptr.index_copy_(0, target, stored.obj_ptr[None].to(self.obj_ptr.dtype))
        self.object_score.index_copy_(0, target, score.reshape(1))
        self.iou.index_copy_(0, target, stored.iou.reshape(1).float())
        self.frame.index_copy_(0, target, self.frame.new_full((1,), float(stored.frame_index)))


class MemoryBank(BankRules):
    """Per-object memories for streaming or offline tracking, forward in time."""

    config: BankConfig

    def _stored_features(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.config.storage_dtype)

    def _retire(self, memory: ObjectMemory, stored: StoredMemory) -> None:
        """With ``retained_memories`` = R > 0, keep the newest R reliable memories that left the
        recent window, chosen on the device. Memories without quality, or of a batch of objects
        (training), are not retained."""
        count = self.config.retained_memories
        if count == 0 or stored.object_score is None or stored.iou is None or stored.object_score.numel() != 1:
            return
        if memory.retained_store is None:
            memory.retained_store = RetainedStore.empty_like(stored, count)
            memory.retained = memory.retained_store.views()
        memory.retained_store.offer(stored, self.config.retained_min_iou)

    # --- accounting -------------------------------------------------------------------------
    def stored_tensors(self) -> list[torch.Tensor]:
        """Every tensor the bank holds (for memory accounting and tests)."""
        tensors: list[torch.Tensor] = []
        for memory in self.objects.values():
            for stored in list(memory.conditioning.values()) + list(memory.recent.values()):
                if stored.features is not None:
                    tensors.append(stored.features)
                if stored.keys is not None:
                    tensors.append(stored.keys)
                tensors.append(stored.obj_ptr)
            store = memory.retained_store
            if store is not None:
                tensors += [store.features, store.obj_ptr, store.object_score, store.iou, store.frame]
                tensors += [] if store.keys is None else [store.keys]
        return tensors

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stored_tensors())


__all__ = ["BankConfig", "MemoryBank", "MemoryLayout", "ObjectMemory", "RetainedStore", "StoredMemory"]
