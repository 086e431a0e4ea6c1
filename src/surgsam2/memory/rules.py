"""SAM 2's memory rules without a tensor library: which memories and pointers a frame attends to.

Per object, the bank keeps the memories of its conditioning (prompted) frames and of the recent
frames a policy may still select, and proposes the candidates of a new frame following SAM 2's
rules (docs/architecture.md, "The memory rules"). Nothing older than SAM 2 could ever attend to is
kept, except, when a policy asks for it, a few *retained* memories per object (frames where the
object was present and well segmented that fell out of the recent window; the torch bank keeps
them on the device, `memory.bank`). Arrays are opaque here (torch tensors in
`memory.bank.MemoryBank`, numpy arrays in the ONNX runtime), so both trackers share one
implementation of the rules.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

Array = Any  # a torch tensor or a numpy array: the rules never look inside


@dataclass
class StoredMemory:
    """One frame's memory of one object."""

    frame_index: int
    features: Array | None  # (T, C) memory tokens; None once too old to be attended to
    obj_ptr: Array  # (D,) object pointer
    # (num_layers, T, d_model) memory-attention keys derived from the features (a cache the
    # tracker fills so they are not recomputed every frame); dropped with the features.
    keys: Array | None = None
    # The frame's object-score logit and predicted IoU (scalars, or (b,) for a batch), on the
    # device, for quality-aware policies; None when the writer did not give them.
    object_score: Array | None = None
    iou: Array | None = None
    # A retained memory's frame index as a device scalar (its slot is chosen on the device, so the
    # host does not know which frame it holds; ``frame_index`` is then -1); None otherwise.
    frame_stamp: Array | None = None


@dataclass
class ObjectMemory:
    """All stored memories of one object."""

    conditioning: dict[int, StoredMemory] = field(default_factory=dict)
    recent: OrderedDict[int, StoredMemory] = field(default_factory=OrderedDict)
    # Reliable memories kept after they left the recent window (a fixed number of slots, possibly
    # empty ones), and the storage behind them (opaque to the rules; `memory.bank.RetainedStore`).
    retained: list[StoredMemory] = field(default_factory=list)
    retained_store: Any = None


@dataclass(frozen=True)
class MemoryLayout:
    """What one object attends to on a frame, before any policy.

    ``memories``: (stored memory, slot) in bank order [conditioning..., oldest recent ... newest];
    ``slot`` indexes the temporal encoding table (num_maskmem - 1 for conditioning frames).
    ``protected``: one flag per memory, True for conditioning frames.
    ``pointers``: (stored memory, signed temporal offset) for the object pointers.
    ``retained``: one flag per memory, True for retained memories (after the conditioning ones);
    empty when the bank retains none.
    """

    memories: tuple[tuple[StoredMemory, int], ...]
    protected: tuple[bool, ...]
    pointers: tuple[tuple[StoredMemory, int], ...]
    retained: tuple[bool, ...] = ()

    @property
    def shape_key(self) -> tuple:
        """Objects with equal keys can go through memory attention as one batch."""
        key = (len(self.memories), self.protected, len(self.pointers))
        return key + (self.retained,) if any(self.retained) else key


@dataclass(frozen=True)
class MemoryRules:
    """SAM 2's memory rules (values from the model config)."""

    num_maskmem: int = 7
    max_obj_ptrs_in_encoder: int = 16
    memory_temporal_stride: int = 1
    max_cond_frames_in_attn: int = -1
    only_obj_ptrs_in_the_past: bool = True
    use_signed_tpos_enc_to_obj_ptrs: bool = True
    # Reliable memories retained per object beyond the recent window (0: none, SAM 2's rules), the
    # predicted IoU a memory needs to be reliable (with an object-score logit > 0), and the temporal
    # slot retained memories are attended with (None: the farthest recent slot, num_maskmem - 2).
    retained_memories: int = 0
    retained_min_iou: float = 0.5
    retained_slot: int | None = None

    def __post_init__(self) -> None:
        if self.retained_memories < 0:
            raise ValueError(f"retained_memories must be >= 0, got {self.retained_memories}")
        if not 0.0 <= self.retained_min_iou <= 1.0:
            raise ValueError(f"retained_min_iou must be in [0, 1], got {self.retained_min_iou}")
        if self.retained_slot is not None and not 0 <= self.retained_slot < self.num_maskmem:
            raise ValueError(f"retained_slot must be in 0..{self.num_maskmem - 1}, got {self.retained_slot}")

    @property
    def retained_temporal_slot(self) -> int:
        """The temporal slot retained memories are attended with: ``retained_slot``, else the
        farthest recent one (num_maskmem - 2)."""
        return max(self.num_maskmem - 2, 0) if self.retained_slot is None else self.retained_slot


def recent_slot_frames(config: MemoryRules, frame_index: int) -> list[tuple[int, int]]:
    """(frame, temporal slot) of each recent memory slot of ``frame_index``, oldest first: t - 1
    in slot 0, the others strided back from ((t - 2) // r) * r (SAM 2's rule)."""
    stride, slots = config.memory_temporal_stride, []
    for t_pos in range(1, config.num_maskmem):
        frames_back = config.num_maskmem - t_pos
        if frames_back == 1:
            previous = frame_index - 1
        else:
            previous = ((frame_index - 2) // stride) * stride - (frames_back - 2) * stride
        slots.append((previous, config.num_maskmem - t_pos - 1))
    return slots


class BankRules:
    """Per-object memories and SAM 2's rules for choosing them, forward in time; array-agnostic
    (`MemoryBank` stores torch tensors, the ONNX runtime numpy arrays)."""

    def __init__(self, config: MemoryRules) -> None:
        self.config = config
        self.objects: dict[int, ObjectMemory] = {}

    # --- bookkeeping ----------------------------------------------------------------------
    def add_object(self, obj_id: int) -> None:
        if obj_id in self.objects:
            raise ValueError(f"object id {obj_id} is already in the memory bank")
        self.objects[obj_id] = ObjectMemory()

    def remove_object(self, obj_id: int) -> None:
        if obj_id not in self.objects:
            raise ValueError(f"unknown object id {obj_id}")
        del self.objects[obj_id]

    def reset(self) -> None:
        self.objects.clear()

    def __contains__(self, obj_id: int) -> bool:
        return obj_id in self.objects

    # --- writing ----------------------------------------------------------------------------
    def _stored_features(self, features: Array) -> Array:
        """Features as the bank keeps them (a subclass may convert them, e.g. to a storage dtype)."""
        return features

    def write(
        self,
        obj_id: int,
        frame_index: int,
        features: Array,
        obj_ptr: Array,
        conditioning: bool,
        keys: Array | None = None,
        object_score: Array | None = None,
        iou: Array | None = None,
    ) -> None:
        """Store one object's memory of ``frame_index``: features (T, C), pointer (D,), and
        optionally the keys derived from them (kept as given) and the frame's quality (object-score
        logit and predicted IoU, read by quality-aware policies)."""
        memory = self.objects[obj_id]
        stored = StoredMemory(frame_index, self._stored_features(features), obj_ptr, keys, object_score, iou)
        if conditioning:
            memory.conditioning[frame_index] = stored
            memory.recent.pop(frame_index, None)
        else:
            memory.recent[frame_index] = stored
            # Only tracked frames move time forward: a conditioning frame may be written ahead.
            self._forget(memory, frame_index)

    def _forget(self, memory: ObjectMemory, newest_frame: int) -> None:
        """Drop what no later frame can select: features older than the oldest memory slot of the
        next frame, pointers older than the pointer window."""
        config = self.config
        next_frame = newest_frame + 1
        stride = config.memory_temporal_stride
        oldest_feature = min(
            next_frame - 1,
            ((next_frame - 2) // stride) * stride - max(config.num_maskmem - 3, 0) * stride,
        )
        oldest_pointer = next_frame - (config.max_obj_ptrs_in_encoder - 1)
        for frame_index in list(memory.recent):
            stored = memory.recent[frame_index]
            if frame_index < oldest_feature and stored.features is not None:
                self._retire(memory, stored)
            if frame_index < oldest_feature and frame_index < oldest_pointer:
                del memory.recent[frame_index]
            elif frame_index < oldest_feature:
                stored.features = None
                stored.keys = None

    def _retire(self, memory: ObjectMemory, stored: StoredMemory) -> None:
        """A memory leaves the recent window: a bank that retains reliable memories
        (``retained_memories`` > 0) may keep it in ``memory.retained``; here nothing is kept."""

    # --- reading ----------------------------------------------------------------------------
    def has_memory(self, obj_id: int) -> bool:
        """Whether the object has a conditioning frame (so it can be tracked)."""
        return bool(self.objects[obj_id].conditioning)

    def _select_conditioning(self, memory: ObjectMemory, frame_index: int) -> tuple[list[int], list[int]]:
        """Conditioning frames attended to (selected) and the others, as SAM 2 chooses them."""
        frames = list(memory.conditioning)
        limit = self.config.max_cond_frames_in_attn
        if limit == -1 or len(frames) <= limit:
            return frames, []
        selected: list[int] = []
        before = [t for t in frames if t < frame_index]
        after = [t for t in frames if t >= frame_index]
        if before:
            selected.append(max(before))
        if after:
            selected.append(min(after))
        rest = sorted((t for t in frames if t not in selected), key=lambda t: abs(t - frame_index))
        selected += rest[: limit - len(selected)]
        # Keep the bank's insertion order for the selected ones.
        selected_set = set(selected)
        return [t for t in frames if t in selected_set], [t for t in frames if t not in selected_set]

    def layout(self, obj_id: int, frame_index: int, num_frames: int | None = None) -> MemoryLayout:
        """The candidate memories and pointers of one object for tracking ``frame_index``.

        ``num_frames``: the clip length when known (offline); SAM 2 caps the pointer window by it.
        """
        config = self.config
        memory = self.objects[obj_id]
        selected, unselected = self._select_conditioning(memory, frame_index)
        unselected_set = set(unselected)

        def recent_or_unselected(t: int) -> StoredMemory | None:
            stored = memory.recent.get(t)
            if stored is None and t in unselected_set:
                stored = memory.conditioning[t]
            return stored

        cond_slot = config.num_maskmem - 1
        memories: list[tuple[StoredMemory, int]] = [(memory.conditioning[t], cond_slot) for t in selected]
        protected = [True] * len(memories)
        memories += [(stored, config.retained_temporal_slot) for stored in memory.retained]
        protected += [False] * len(memory.retained)
        retained = [False] * len(selected) + [True] * len(memory.retained)
        for previous, slot in recent_slot_frames(config, frame_index):
            stored = recent_or_unselected(previous)
            if stored is None or stored.features is None:
                continue
            memories.append((stored, slot))
            protected.append(stored.frame_index in memory.conditioning)

        max_pointers = config.max_obj_ptrs_in_encoder
        if num_frames is not None:
            max_pointers = min(num_frames, max_pointers)
        pointers: list[tuple[StoredMemory, int]] = []
        for t in selected:
            if config.only_obj_ptrs_in_the_past and t > frame_index:
                continue
            offset = frame_index - t if config.use_signed_tpos_enc_to_obj_ptrs else abs(frame_index - t)
            pointers.append((memory.conditioning[t], offset))
        for frames_back in range(1, max_pointers):
            previous = frame_index - frames_back
            if previous < 0:
                break
            stored = recent_or_unselected(previous)
            if stored is not None:
                pointers.append((stored, frames_back))
        retained += [False] * (len(memories) - len(retained))
        retained_flags = tuple(retained) if any(retained) else ()
        return MemoryLayout(tuple(memories), tuple(protected), tuple(pointers), retained_flags)


__all__ = ["Array", "BankRules", "MemoryLayout", "MemoryRules", "ObjectMemory", "StoredMemory", "recent_slot_frames"]
