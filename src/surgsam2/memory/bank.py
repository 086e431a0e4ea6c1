"""The memory bank: per-object memories of past frames as torch tensors, bounded in size.

The rules (what is kept, what a frame attends to) are `memory.rules.BankRules`, shared with the
ONNX runtime; this bank adds the storage dtype and memory accounting. Pure tensor code: it knows
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


class MemoryBank(BankRules):
    """Per-object memories for streaming or offline tracking, forward in time."""

    config: BankConfig

    def _stored_features(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.config.storage_dtype)

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
        return tensors

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stored_tensors())


__all__ = ["BankConfig", "MemoryBank", "MemoryLayout", "ObjectMemory", "StoredMemory"]
