"""Memory assembly: from the bank's candidate memories to the tokens memory attention reads.

Shared by the streaming tracker (inference) and the training clip forward, so both build the
memory of a frame the same way (docs/architecture.md, "The memory rules"):

1. `gather_candidates` stacks what `MemoryBank.layout` proposes into batched tensors. A stored
   memory is either one object's (T, C) features and (D,) pointer (the tracker: one layout per
   object) or a batch of objects' (b, T, C) / (b, D) (training: every object of a clip batch shares
   one layout, since prompts and corrections are planned per batch as SAM 2's training does).
2. `select_memories` lets the policy choose the memories each object keeps.
3. `memory_tokens` gathers them (the gather keeps gradients), adds the spatial and temporal-slot
   encodings, and appends the object pointers split into tokens with their temporal encodings.
4. `cached_rotated_keys` (inference) assembles the kept memories' precomputed attention keys, so
   that stored memories are not projected and rotated again every frame.

Pure tensor code plus the few learned encodings it reads from the model (`maskmem_tpos_enc`,
`pointer_position_encoding`, `pointer_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from surgsam2.memory.bank import MemoryLayout
from surgsam2.memory.policies import MemoryPolicy, MemoryQuality

if TYPE_CHECKING:  # pragma: no cover
    from surgsam2.model.sam2 import SAM2Model


@dataclass
class MemoryCandidates:
    """Candidate memories of B objects that share a layout shape, in bank order."""

    features: torch.Tensor  # (N, B, T, C) memory-encoder tokens
    slots: torch.Tensor  # (N, B) long: index into maskmem_tpos_enc
    protected: tuple[bool, ...]  # N flags: conditioning memories a policy must keep
    pointers: torch.Tensor  # (P, B, D) object pointers
    pointer_offsets: torch.Tensor  # (P, B) long: signed temporal offsets of the pointers
    quality: MemoryQuality | None = None  # (N, B) per memory, when gathered for a policy that reads it


def _as_batch(tensor: torch.Tensor, unbatched_dim: int) -> torch.Tensor:
    """One object's tensor gets a batch dimension of 1; a batch of objects is returned as is."""
    return tensor.unsqueeze(0) if tensor.dim() == unbatched_dim else tensor


def _gather_quality(layouts: Sequence[MemoryLayout], widths: Sequence[int], device: torch.device) -> MemoryQuality:
    """(N, B) object-score logits, IoUs and frame indices of the candidates; a memory written
    without quality counts as present and well segmented (logit +inf, IoU 1)."""

    def column(layout: MemoryLayout, width: int, name: str, unknown: float | None) -> torch.Tensor:
        values = []
        for stored, _ in layout.memories:
            value = getattr(stored, name)
            if value is None:
                fill = float(stored.frame_index) if unknown is None else unknown
                value = torch.full((width,), fill, device=device)
            values.append(value.to(device=device, dtype=torch.float32).reshape(-1).expand(width))
        return torch.stack(values, dim=0)  # (N, width)

    def gather(name: str, unknown: float | None) -> torch.Tensor:
        return torch.cat([column(layout, width, name, unknown) for layout, width in zip(layouts, widths)], dim=1)

    retained = layouts[0].retained
    # Frame indices matter only to order retained memories (whose frame only the device knows).
    frames = gather("frame_stamp", None) if any(retained) else None
    return MemoryQuality(object_scores=gather("object_score", float("inf")), ious=gather("iou", 1.0),
                         frames=frames, retained=retained)  # fmt: skip


def gather_candidates(layouts: Sequence[MemoryLayout], with_quality: bool = False) -> MemoryCandidates:
    """Stack the candidates of layouts with one `shape_key` into batched tensors.

    Stored features are (T, C) for one object or (b, T, C) for a batch sharing the layout;
    pointers (D,) or (b, D). The objects of all layouts are concatenated in order.
    ``with_quality``: also gather each memory's quality (for policies with ``uses_quality``).
    """
    if not layouts:
        raise ValueError("gather_candidates needs at least one layout")
    first = layouts[0]
    features = torch.cat(
        [torch.stack([_as_batch(stored.features, 2) for stored, _ in layout.memories], dim=0) for layout in layouts],
        dim=1,
    )  # (N, B, T, C)
    pointers = torch.cat(
        [torch.stack([_as_batch(stored.obj_ptr, 1) for stored, _ in layout.pointers], dim=0) for layout in layouts],
        dim=1,
    )  # (P, B, D)
    widths = [
        (_as_batch(layout.memories[0][0].features, 2).shape[0] if layout.memories else 0) for layout in layouts
    ]
    slots = torch.tensor(
        [[slot for _, slot in layout.memories] for layout, width in zip(layouts, widths) for _ in range(width)],
        dtype=torch.long,
    )
    offsets = torch.tensor(
        [[offset for _, offset in layout.pointers] for layout, width in zip(layouts, widths) for _ in range(width)],
        dtype=torch.long,
    )
    device = features.device
    return MemoryCandidates(
        features=features,
        slots=slots.T.to(device, non_blocking=True),
        protected=first.protected,
        pointers=pointers,
        pointer_offsets=offsets.T.to(device, non_blocking=True),
        quality=_gather_quality(layouts, widths, device) if with_quality else None,
    )


def select_memories(candidates: MemoryCandidates, policy: MemoryPolicy, capacity: int) -> torch.Tensor | None:
    """Indices (K, B) of the candidates each object keeps, or None when the policy keeps all."""
    if policy.num_kept(candidates.protected, capacity) < candidates.features.shape[0]:
        if getattr(policy, "uses_quality", False):  # duck-typed policies without the flag read none
            return policy.select(candidates.features, candidates.protected, capacity, quality=candidates.quality)
        return policy.select(candidates.features, candidates.protected, capacity)
    return None


def memory_tokens(
    model: SAM2Model,
    candidates: MemoryCandidates,
    keep: torch.Tensor | None,
    spatial_pos: torch.Tensor,
    max_pointers: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Memory tokens (L, B, C), their encodings (L, B, C) and the number of pointer tokens.

    ``keep``: `select_memories`' choice (None: every candidate); ``spatial_pos`` (T, C): the memory
    encoder's position encoding of one frame's tokens; ``max_pointers``: the pointer window that
    scales pointer temporal encodings (SAM 2 uses min(clip length, max_obj_ptrs_in_encoder)).
    """
    dtype = model.dtype
    features, slots = candidates.features, candidates.slots
    num_candidates, batch_size, num_tokens, channels = features.shape
    capacity = model.num_maskmem
    if keep is not None:
        features = torch.gather(features, 0, keep[:, :, None, None].expand(-1, -1, num_tokens, channels))
        slots = torch.gather(slots, 0, keep)
    num_kept = features.shape[0]
    memory = features.to(dtype).permute(0, 2, 1, 3).reshape(num_kept * num_tokens, batch_size, channels)
    temporal = model.maskmem_tpos_enc.view(capacity, channels)[slots]  # (K, B, C)
    memory_pos = (spatial_pos[None, :, None, :] + temporal[:, None, :, :]).reshape(
        num_kept * num_tokens, batch_size, channels
    )

    offsets = candidates.pointer_offsets
    pointer_pos = model.pointer_position_encoding(offsets.flatten(), max_pointers)
    pointer_pos = pointer_pos.view(offsets.shape[0], batch_size, -1)
    pointer_tokens, pointer_token_pos = model.pointer_tokens(candidates.pointers.to(dtype), pointer_pos)
    memory = torch.cat([memory, pointer_tokens], dim=0)
    memory_pos = torch.cat([memory_pos, pointer_token_pos], dim=0)
    return memory, memory_pos, pointer_tokens.shape[0]


def cached_rotated_keys(
    layouts: Sequence[MemoryLayout],
    keep: torch.Tensor | None,
    temporal_keys: torch.Tensor,
    num_pointer_tokens: int,
    host_indices: bool | None = None,
) -> torch.Tensor:
    """The memory attention keys of the kept memories, from the keys cached in the bank.

    One layout per object (each stored memory holding ``keys`` (num_layers, T, d)); ``keep``
    (K, B) as from `select_memories`; ``temporal_keys`` (num_layers, S, T, d) the rotated key term
    of each temporal slot. Returns (num_layers, B, K*T + num_pointer_tokens, d): every kept
    memory's cached keys plus its slot's term, in the order `memory_tokens` lays the memories
    out; the pointer rows are left for memory attention to fill.

    ``host_indices`` (default: on CPU) reads the kept indices on the host and adds each kept
    memory once, straight into the output; otherwise (GPUs) the candidates are stacked and
    gathered on the device, so that the frame loop never waits for the device.
    """
    for layout in layouts:
        for stored, _ in layout.memories:
            if stored.keys is None:
                raise ValueError(f"stored memory of frame {stored.frame_index} has no cached keys")
    if host_indices is None:
        host_indices = keep is None or keep.device.type == "cpu"
    if host_indices:
        num_layers, _, num_tokens, channels = temporal_keys.shape
        num_kept = len(layouts[0].memories) if keep is None else keep.shape[0]
        out = temporal_keys.new_empty(num_layers, len(layouts), num_kept * num_tokens + num_pointer_tokens, channels)
        kept = keep.T.tolist() if keep is not None else [list(range(num_kept))] * len(layouts)
        for row, (layout, indices) in enumerate(zip(layouts, kept)):
            for position, index in enumerate(indices):
                stored, slot = layout.memories[index]
                rows = slice(position * num_tokens, (position + 1) * num_tokens)
                torch.add(stored.keys, temporal_keys[:, slot], out=out[:, row, rows])
        return out
    # (N, B, L, T, d) candidates and their slots, then the kept ones gathered on the device.
    stacked = torch.stack([torch.stack([stored.keys for stored, _ in layout.memories]) for layout in layouts], dim=1)
    slots = torch.tensor(
        [[slot for _, slot in layout.memories] for layout in layouts], dtype=torch.long
    ).T.to(stacked.device, non_blocking=True)
    return kept_rotated_keys(StoredKeys.stacked(stacked), slots, keep, temporal_keys, num_pointer_tokens, False)


@dataclass(frozen=True)
class StoredKeys:
    """Cached attention keys addressed by row, and the row of each candidate memory.

    ``rows`` (R, L, T, d) is the bank's key storage seen as rows (the ring bank's every slot of
    every object), ``index`` (N, B) the row holding candidate n of object b: the kept keys are
    read straight from the storage, never copied out as a whole candidate stack first.
    """

    rows: torch.Tensor
    index: torch.Tensor

    @classmethod
    def stacked(cls, candidate_keys: torch.Tensor) -> StoredKeys:
        """The keys of candidates already stacked as (N, B, L, T, d)."""
        num_candidates, batch_size = candidate_keys.shape[:2]
        index = torch.arange(num_candidates * batch_size, device=candidate_keys.device).view(num_candidates, batch_size)
        return cls(rows=candidate_keys.reshape(-1, *candidate_keys.shape[2:]), index=index)


def kept_rotated_keys(
    candidate_keys: StoredKeys,
    slots: torch.Tensor,
    keep: torch.Tensor | None,
    temporal_keys: torch.Tensor,
    num_pointer_tokens: int,
    host_indices: bool | None = None,
) -> torch.Tensor:
    """`cached_rotated_keys` from keys stored by row (the ring bank, `memory.ring`): the kept
    candidates' keys plus their temporal slots' terms, laid out as `memory_tokens` orders them.

    ``host_indices`` (default: on CPU) reads the kept rows on the host and adds each kept memory
    once, straight into the output; otherwise (GPUs) the kept rows are gathered on the device
    without a host sync.
    """
    num_layers, _, num_tokens, channels = temporal_keys.shape
    rows = candidate_keys.index if keep is None else torch.gather(candidate_keys.index, 0, keep)  # (K, B)
    kept_slots = slots if keep is None else torch.gather(slots, 0, keep)
    num_kept, batch_size = rows.shape
    out = temporal_keys.new_empty(num_layers, batch_size, num_kept * num_tokens + num_pointer_tokens, channels)
    spatial_rows = out[:, :, : num_kept * num_tokens].view(num_layers, batch_size, num_kept, num_tokens, channels)
    if host_indices is None:
        host_indices = rows.device.type == "cpu"
    if host_indices:
        for column, (row_list, slot_list) in enumerate(zip(rows.T.tolist(), kept_slots.T.tolist())):
            for position, (row, slot) in enumerate(zip(row_list, slot_list)):
                torch.add(candidate_keys.rows[row], temporal_keys[:, slot], out=spatial_rows[:, column, position])
        return out
    kept = candidate_keys.rows.index_select(0, rows.T.reshape(-1))  # (B*K, L, T, d)
    kept = kept.view(batch_size, num_kept, *kept.shape[1:]).permute(2, 0, 1, 3, 4)  # (L, B, K, T, d)
    terms = temporal_keys[:, kept_slots.T]  # (L, B, K, T, d)
    torch.add(kept, terms, out=spatial_rows)
    return out


__all__ = [
    "MemoryCandidates",
    "gather_candidates",
    "select_memories",
    "memory_tokens",
    "cached_rotated_keys",
    "kept_rotated_keys",
    "StoredKeys",
]
