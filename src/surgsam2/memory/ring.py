"""The memory bank as preallocated tensors: every memory lives at a fixed address.

`RingBank` keeps the same memories as `memory.bank.MemoryBank` and proposes the same candidates
(docs/architecture.md, "The memory rules"), but stores them in a few tensors allocated once, so a
steady-state frame reads and writes the same addresses every frame (what capturing the frame as
one CUDA graph needs). All objects of a tracker share one storage, one column per object:

- rows ``0 .. S-1`` of the features (and cached keys, quality, frame index) are a ring of the
  recent frames: frame f of an object is written to row f mod S, where
  S = (num_maskmem - 2) * stride + 1 (num_maskmem - 1 at stride 1) spans every frame SAM 2's rules
  can still select;
- with ``retained_memories`` = R > 0 (policy ``refp``), rows ``S .. S+R-1`` hold the object's
  retained reliable memories and row ``S+R`` is a scratch row: a memory leaving the recent window
  is copied on the device (`offer_retained`) over the oldest (or an empty) retained row when it is
  reliable, else to the scratch row, so the choice needs no host read (as `memory.bank.RetainedStore`);
- the rows after those hold the object's conditioning frames, in prompt order;
- the pointers have their own ring of Q = max_obj_ptrs_in_encoder - 1 rows (frame f at f mod Q),
  then the conditioning frames' pointers;
- ``frames`` / ``pointer_frames``: the frame index held by each row and column (-1: empty),
  written with the memories (validity and identity of every slot on the device).

Writing a frame is one ``index_copy_`` per tensor for all objects at once. Conditioning rows grow
by reallocation when a prompt adds a conditioning frame beyond the capacity, and a column is added
or removed when an object is: both happen on prompted frames only, off the steady state.

Which rows a frame attends to is decided on the host: the host knows the frame counter and every
write, so `memory.rules.BankRules` runs unchanged over *row numbers* instead of tensors (its
stored "features" and "pointer" are ints), and its layout is turned into small index tensors
(rows, temporal slots, pointer rows, offsets; one int64 tensor per batch of objects, copied from
pinned memory without blocking). This is exact by construction (the rules' code is the one the
default bank runs: stride, ``max_cond_frames_in_attn``, conditioning frames filling recent slots,
objects prompted on different frames) and never reads the device. The candidates are then
gathered with ``index_select`` into the (N, B, T, C) / (P, B, D) tensors
`memory.assembly.gather_candidates` builds, so the policies and `memory_tokens` run unchanged on
them; cached keys are not gathered per candidate: `kept_rotated_keys` reads the kept memories'
keys straight from the storage. The per-frame host work is the rules' layout per object (no tensor is
stacked); in a steady state the same indices follow from the frame counter alone
(row = (t - k) mod S): `memory.steady` computes them from a device-side counter, so that a whole
frame can run without the host (`tracking.steady_frame`).

Covers every policy: those that read the candidates and their quality, and ``refp``'s retained
memories (the host knows *that* an object has retained rows from the first memory that left its
window with quality, as `MemoryBank` does, never *which* frames they hold).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import torch

from surgsam2.memory.assembly import MemoryCandidates, StoredKeys
from surgsam2.memory.bank import BankConfig
from surgsam2.memory.policies import MemoryQuality
from surgsam2.memory.rules import BankRules, MemoryLayout, ObjectMemory, StoredMemory

# The memory banks a tracker can keep: per-object dicts of tensors (`memory.bank.MemoryBank`) or
# preallocated rings of slots (`RingBank`).
BANK_KINDS = ("dict", "ring")
DEFAULT_BANK = "dict"


def feature_ring_size(config: BankConfig) -> int:
    """S: rows of recent memories, enough for every frame a later frame's layout can select."""
    return max((config.num_maskmem - 2) * config.memory_temporal_stride + 1, 1)


def retained_ring_size(config: BankConfig) -> int:
    """Rows of retained memories: R plus one scratch row, none when nothing is retained."""
    return config.retained_memories + 1 if config.retained_memories else 0


def conditioning_start(config: BankConfig) -> int:
    """The first conditioning feature row: after the recent ring and the retained rows."""
    return feature_ring_size(config) + retained_ring_size(config)


def pointer_ring_size(config: BankConfig) -> int:
    """Q: rows of recent pointers (the last max_obj_ptrs_in_encoder - 1 frames)."""
    return max(config.max_obj_ptrs_in_encoder - 1, 1)


@dataclass
class RingStorage:
    """The bank's tensors: features rows (S + K), pointer rows (Q + K), K conditioning rows; one
    column per object."""

    features: torch.Tensor  # (S + K, B, T, C) in the storage dtype
    keys: torch.Tensor | None  # (S + K, B, L, T, d) cached attention keys, or None
    pointers: torch.Tensor  # (Q + K, B, D)
    object_scores: torch.Tensor  # (S + K, B) float32 object-score logit (+inf: unknown)
    ious: torch.Tensor  # (S + K, B) float32 predicted IoU (1: unknown)
    frames: torch.Tensor  # (S + K, B) int64 frame index of each feature row, -1 when empty
    pointer_frames: torch.Tensor  # (Q + K, B) int64 frame index of each pointer row, -1 when empty

    # What an empty row holds (0 for the tensors not named).
    FILL: ClassVar[dict[str, float]] = {"object_scores": float("inf"), "ious": 1.0, "frames": -1, "pointer_frames": -1}

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None]

    def _map(self, change) -> None:
        """Replace every tensor by ``change(name, tensor)`` (a reallocation)."""
        for f in fields(self):
            tensor = getattr(self, f.name)
            if tensor is not None:
                setattr(self, f.name, change(f.name, tensor))

    def add_rows(self, count: int) -> None:
        """``count`` more conditioning rows (empty) at the end of every tensor."""

        def grow(name: str, tensor: torch.Tensor) -> torch.Tensor:
            extra = tensor.new_full((count, *tensor.shape[1:]), self.FILL.get(name, 0))
            return torch.cat([tensor, extra], dim=0)

        self._map(grow)

    def add_column(self) -> None:
        """One more object (an empty column)."""

        def grow(name: str, tensor: torch.Tensor) -> torch.Tensor:
            extra = tensor.new_full((tensor.shape[0], 1, *tensor.shape[2:]), self.FILL.get(name, 0))
            return torch.cat([tensor, extra], dim=1)

        self._map(grow)

    def keep_columns(self, columns: list[int]) -> None:
        """Keep only ``columns`` (objects), in that order."""
        index = torch.tensor(columns, dtype=torch.long, device=self.features.device)
        self._map(lambda name, tensor: tensor.index_select(1, index).contiguous())


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host int64 array on ``device``: from pinned memory without blocking on an accelerator."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def _take(source: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Rows ``at`` (any shape, row * width + column) of a (rows, width, ...) storage tensor."""
    flat = source.view(-1, *source.shape[2:]).index_select(0, at.reshape(-1))
    return flat.view(*at.shape, *source.shape[2:])


@dataclass(frozen=True)
class RingIndices:
    """Where the candidates of a batch of B objects are in the storage: (N, B) feature rows
    (row * width + column) and temporal slots, (P, B) pointer rows (likewise) and signed temporal
    offsets, and the N protected flags (conditioning memories), in `MemoryBank.layout`'s order."""

    memories: torch.Tensor
    slots: torch.Tensor
    pointers: torch.Tensor
    pointer_offsets: torch.Tensor
    protected: tuple[bool, ...]
    retained: tuple[bool, ...] = ()  # N flags of retained memories (`MemoryLayout.retained`); () none


def store_rows(
    storage: RingStorage,
    feature_rows: torch.Tensor,
    pointer_rows: torch.Tensor,
    features: torch.Tensor,
    obj_ptrs: torch.Tensor,
    keys: torch.Tensor | None,
    object_scores: torch.Tensor | None,
    ious: torch.Tensor | None,
    what: str,
) -> None:
    """Write B memories at flat rows (row * width + column) of the storage: (B, T, C) features,
    (B, D) pointers, (B, L, T, d) keys when the storage caches them, and the (B,) quality (None:
    unknown, stored as +inf object score and IoU 1). The frame indices are the caller's to write.
    ``what`` names the write in errors."""

    def put(target: torch.Tensor, at: torch.Tensor, values: torch.Tensor) -> None:
        target.view(-1, *target.shape[2:]).index_copy_(0, at, values.to(target.dtype))

    count, device = feature_rows.shape[0], features.device
    put(storage.features, feature_rows, features)
    put(storage.pointers, pointer_rows, obj_ptrs)
    if storage.keys is not None:
        if keys is None:
            raise ValueError(f"{what}: the ring bank keeps cached keys, none given")
        put(storage.keys, feature_rows, keys)
    scores = torch.full((count,), float("inf"), device=device) if object_scores is None else object_scores
    put(storage.object_scores, feature_rows, scores.reshape(-1))
    put(storage.ious, feature_rows, torch.ones(count, device=device) if ious is None else ious.reshape(-1))


def offer_retained(
    storage: RingStorage, rows: torch.Tensor, columns: torch.Tensor, config: BankConfig,
    eligible: torch.Tensor | None = None,
) -> None:  # fmt: skip
    """Offer the memories at feature ``rows`` (B,) of ``columns`` (B,) to those objects' retained
    rows: each one that is reliable (a finite object-score logit > 0, predicted IoU >=
    ``retained_min_iou``) and ``eligible`` (B,) bool, when given, is copied over the object's
    retained row holding the oldest frame (empty rows, frame -1, first); the others go to the
    scratch row. Device ops only (`memory.bank.RetainedStore.offer` over rows)."""
    start, count, width = feature_ring_size(config), config.retained_memories, storage.features.shape[1]
    source = rows * width + columns
    score, iou = storage.object_scores.view(-1)[source], storage.ious.view(-1)[source]
    reliable = (score > 0) & torch.isfinite(score) & (iou >= config.retained_min_iou)
    if eligible is not None:
        reliable = reliable & eligible
    oldest = storage.frames[start : start + count].index_select(1, columns).argmin(dim=0)
    target = torch.where(reliable, start + oldest, start + count) * width + columns
    for tensor in (storage.features, storage.keys, storage.object_scores, storage.ious, storage.frames):
        if tensor is not None:
            flat = tensor.view(-1, *tensor.shape[2:])
            flat.index_copy_(0, target, flat.index_select(0, source))


class _RowRules(BankRules):
    """`BankRules` over row numbers that tells the ring bank which object is being written and
    which of its memories leave the recent window (to offer them to the retained rows)."""

    def __init__(self, config: BankConfig, retire: Callable[[int, ObjectMemory, StoredMemory], None]) -> None:
        super().__init__(config)
        self._on_retire = retire
        self._writing = -1

    def write(self, obj_id: int, frame_index: int, *args, **kwargs) -> None:
        self._writing = obj_id
        super().write(obj_id, frame_index, *args, **kwargs)

    def _retire(self, memory: ObjectMemory, stored: StoredMemory) -> None:
        self._on_retire(self._writing, memory, stored)


class RingBank:
    """Per-object memories in preallocated rings of slots (see the module docstring)."""

    def __init__(self, config: BankConfig) -> None:
        self.config = config
        # The rules over row numbers: a stored memory's ``features`` is its feature row, its
        # ``obj_ptr`` its pointer row; its ``object_score`` is True when it was written with quality.
        self.rules = _RowRules(config, self._retire)
        self.columns: dict[int, int] = {}
        self.storage: RingStorage | None = None
        self.recent_rows = feature_ring_size(config)
        self.retained_rows = retained_ring_size(config)
        self.conditioning_start = conditioning_start(config)
        self.pointer_rows = pointer_ring_size(config)
        self.conditioning_rows = 0
        self._newest: dict[int, int] = {}  # newest recent frame written per object
        self._retiring: list[tuple[int, int]] = []  # (column, feature row) to offer before a write

    # --- bookkeeping ----------------------------------------------------------------------
    @property
    def objects(self) -> dict[int, ObjectMemory]:
        return self.rules.objects

    def __contains__(self, obj_id: int) -> bool:
        return obj_id in self.rules

    def has_memory(self, obj_id: int) -> bool:
        return self.rules.has_memory(obj_id)

    def add_object(self, obj_id: int) -> None:
        self.rules.add_object(obj_id)
        self.columns[obj_id] = len(self.columns)
        if self.storage is not None:
            self.storage.add_column()
            self._empty_retained(self.storage, self.columns[obj_id])

    def remove_object(self, obj_id: int) -> None:
        self.rules.remove_object(obj_id)
        del self.columns[obj_id]
        self._newest.pop(obj_id, None)
        kept = sorted(self.columns.items(), key=lambda item: item[1])
        if self.storage is not None:
            self.storage.keep_columns([column for _, column in kept])
        self.columns = {obj_id: column for column, (obj_id, _) in enumerate(kept)}

    def reset(self) -> None:
        self.rules.reset()
        self.columns.clear()
        self._newest.clear()
        self.storage = None
        self.conditioning_rows = 0

    # --- writing ----------------------------------------------------------------------------
    def _allocate(self, features: torch.Tensor, obj_ptrs: torch.Tensor, keys: torch.Tensor | None) -> None:
        """Empty storage for the current objects, shaped after the first frame's memories."""
        rows, pointer_rows = self.recent_rows + self.conditioning_rows, self.pointer_rows + self.conditioning_rows
        width, device = len(self.columns), features.device

        def filled(shape: tuple[int, ...], value: float, dtype: torch.dtype) -> torch.Tensor:
            return torch.full(shape, value, dtype=dtype, device=device)

        rows += self.retained_rows
        self.storage = RingStorage(
            features=torch.zeros((rows, width, *features.shape[1:]), dtype=self.config.storage_dtype, device=device),
            keys=None if keys is None else keys.new_zeros((rows, width, *keys.shape[1:])),
            pointers=obj_ptrs.new_zeros((pointer_rows, width, *obj_ptrs.shape[1:])),
            object_scores=filled((rows, width), float("inf"), torch.float32),
            ious=filled((rows, width), 1.0, torch.float32),
            frames=filled((rows, width), -1, torch.long),
            pointer_frames=filled((pointer_rows, width), -1, torch.long),
        )
        self._empty_retained(self.storage, slice(None))

    def _empty_retained(self, storage: RingStorage, columns: int | slice) -> None:
        """Retained rows of ``columns`` read as empty: object-score logit -inf (poor: a policy
        drops them first) and IoU 0, as `memory.bank.RetainedStore`'s empty slots."""
        storage.object_scores[self.recent_rows : self.conditioning_start, columns] = float("-inf")
        storage.ious[self.recent_rows : self.conditioning_start, columns] = 0.0

    def _retire(self, obj_id: int, memory: ObjectMemory, stored: StoredMemory) -> None:
        """A memory with quality left the object's recent window: from the first one on, the
        object proposes its R retained rows (`MemoryBank._retire`); the device copy waits for the
        frame's write (`_offer_retiring`), before the row is overwritten."""
        count = self.config.retained_memories
        if count == 0 or stored.object_score is None:
            return
        if not memory.retained:
            memory.retained = [StoredMemory(-1, self.recent_rows + slot, -1) for slot in range(count)]
        self._retiring.append((self.columns[obj_id], stored.features))

    def _offer_retiring(self, device: torch.device) -> None:
        """Offer the memories that left the window this frame to the retained rows, in the order
        they left (an object's next one sees the previous one's copy)."""
        rounds: list[list[tuple[int, int]]] = []
        turns: dict[int, int] = {}
        for column, row in self._retiring:
            turn = turns[column] = turns.get(column, -1) + 1
            if turn == len(rounds):
                rounds.append([])
            rounds[turn].append((column, row))
        self._retiring.clear()
        for pairs in rounds:
            index = _to_device(np.array(pairs).T, device)  # (2, B): columns, rows
            offer_retained(self.storage, index[1], index[0], self.config)

    def _rows_of(self, obj_id: int, frame_index: int, conditioning: bool, with_quality: bool) -> tuple[int, int]:
        """The (feature row, pointer row) of an object's memory of ``frame_index``; records it in
        the rules (growing the conditioning rows if needed; a tracked frame may retire memories)."""
        memory = self.rules.objects[obj_id]
        quality = True if with_quality else None
        if not conditioning:
            newest = self._newest.get(obj_id, -1)
            if frame_index <= newest:
                raise ValueError(
                    f"object {obj_id}: frame {frame_index} written after frame {newest}; the ring bank"
                    " takes tracked frames in increasing order"
                )
            self._newest[obj_id] = frame_index
            rows = (frame_index % self.recent_rows, frame_index % self.pointer_rows)
            self.rules.write(obj_id, frame_index, rows[0], rows[1], conditioning=False, object_score=quality)
            return rows
        existing = memory.conditioning.get(frame_index)
        if existing is not None:
            position = existing.obj_ptr - self.pointer_rows
        else:
            position = len(memory.conditioning)
            if position >= self.conditioning_rows:
                self.conditioning_rows += 1
                if self.storage is not None:
                    self.storage.add_rows(1)
        rows = (self.conditioning_start + position, self.pointer_rows + position)
        self.rules.write(obj_id, frame_index, rows[0], rows[1], conditioning=True, object_score=quality)
        return rows

    def write_frame(
        self,
        obj_ids: Sequence[int],
        frame_index: int,
        features: torch.Tensor,
        obj_ptrs: torch.Tensor,
        conditioning: Sequence[bool],
        keys: torch.Tensor | None = None,
        object_scores: torch.Tensor | None = None,
        ious: torch.Tensor | None = None,
    ) -> None:
        """Store the memories of ``frame_index`` of the objects ``obj_ids`` (in the bank): features
        (B, T, C), pointers (B, D), one conditioning flag each, optionally cached keys
        (B, L, T, d) and the frame's quality (B,) object-score logits and predicted IoUs."""
        with_quality = object_scores is not None
        rows = [self._rows_of(obj_id, frame_index, flag, with_quality) for obj_id, flag in zip(obj_ids, conditioning)]
        if self.storage is None:
            self._allocate(features, obj_ptrs, keys)
        if self._retiring:
            self._offer_retiring(features.device)
        storage = self.storage
        width = storage.features.shape[1]
        columns = np.array([self.columns[obj_id] for obj_id in obj_ids])
        index = _to_device(np.array(rows).T * width + columns, features.device)  # (2, B)
        feature_rows, pointer_rows = index[0], index[1]
        store_rows(storage, feature_rows, pointer_rows, features, obj_ptrs, keys, object_scores, ious,
                   f"frame {frame_index}")  # fmt: skip
        storage.frames.view(-1).index_fill_(0, feature_rows, frame_index)
        storage.pointer_frames.view(-1).index_fill_(0, pointer_rows, frame_index)

    def record_tracked(self, obj_ids: Sequence[int], frame_index: int, with_quality: bool) -> None:
        """Record in the host-side rules that the memories of tracked frame ``frame_index`` of
        ``obj_ids`` are stored (with quality or not), when the device wrote them and offered the
        memories leaving the window to the retained rows (`memory.steady.write_steady`)."""
        for obj_id in obj_ids:
            self._rows_of(obj_id, frame_index, False, with_quality)
        self._retiring.clear()

    # --- reading ----------------------------------------------------------------------------
    def layout(self, obj_id: int, frame_index: int, num_frames: int | None = None) -> MemoryLayout:
        """The object's candidates for ``frame_index`` as `MemoryBank.layout` proposes them; each
        stored memory's ``features`` / ``obj_ptr`` is its feature / pointer row."""
        return self.rules.layout(obj_id, frame_index, num_frames)

    def candidates(
        self, obj_ids: Sequence[int], layouts: Sequence[MemoryLayout], with_quality: bool = False
    ) -> tuple[MemoryCandidates, StoredKeys | None]:
        """The candidates of objects whose layouts share one `shape_key`, gathered from the
        storage as `gather_candidates` stacks them, and (if the bank caches keys) the key storage
        with each candidate's row, from which `kept_rotated_keys` reads only the kept ones."""
        return self.gather(self.indices(obj_ids, layouts), with_quality)

    def indices(self, obj_ids: Sequence[int], layouts: Sequence[MemoryLayout]) -> RingIndices:
        """Where the candidates of ``layouts`` (one `shape_key`) are in the storage, from the
        host-side rules: one small int64 tensor copied to the device without blocking."""
        storage = self.storage
        if storage is None or not layouts:
            raise ValueError("the ring bank has no memories to propose yet")
        width = storage.features.shape[1]
        columns = np.array([self.columns[obj_id] for obj_id in obj_ids])[:, None]
        feature_rows = np.array([[stored.features for stored, _ in layout.memories] for layout in layouts])
        slots = np.array([[slot for _, slot in layout.memories] for layout in layouts])
        pointer_rows = np.array([[stored.obj_ptr for stored, _ in layout.pointers] for layout in layouts])
        offsets = np.array([[offset for _, offset in layout.pointers] for layout in layouts])
        num_memories, num_pointers = feature_rows.shape[1], pointer_rows.shape[1]
        packed = np.concatenate(
            [feature_rows * width + columns, slots, pointer_rows * width + columns, offsets], axis=1
        ).reshape(len(layouts), -1)
        index = _to_device(packed.T, storage.features.device)  # (2N + 2P, B)
        pointers_at = 2 * num_memories
        return RingIndices(
            memories=index[:num_memories],
            slots=index[num_memories:pointers_at],
            pointers=index[pointers_at : pointers_at + num_pointers],
            pointer_offsets=index[pointers_at + num_pointers :],
            protected=layouts[0].protected,
            retained=layouts[0].retained,
        )

    def gather(self, indices: RingIndices, with_quality: bool = False) -> tuple[MemoryCandidates, StoredKeys | None]:
        """The candidates at ``indices`` (from `indices` on the host, or computed on the device by
        `memory.steady.steady_indices`), and the key storage with each candidate's row."""
        storage = self.storage
        if storage is None:
            raise ValueError("the ring bank has no memories to propose yet")
        quality = None
        if with_quality:
            frames = None
            if any(indices.retained):  # retained memories are dropped oldest first; empty rows at -inf
                frames = _take(storage.frames, indices.memories).float()
                frames = frames.masked_fill(frames < 0, float("-inf"))
            quality = MemoryQuality(object_scores=_take(storage.object_scores, indices.memories),
                                    ious=_take(storage.ious, indices.memories), frames=frames,
                                    retained=indices.retained)  # fmt: skip
        candidates = MemoryCandidates(
            features=_take(storage.features, indices.memories),
            slots=indices.slots,
            protected=indices.protected,
            pointers=_take(storage.pointers, indices.pointers),
            pointer_offsets=indices.pointer_offsets,
            quality=quality,
        )
        keys = None
        if storage.keys is not None:
            keys = StoredKeys(rows=storage.keys.view(-1, *storage.keys.shape[2:]), index=indices.memories)
        return candidates, keys

    # --- accounting -------------------------------------------------------------------------
    def stored_tensors(self) -> list[torch.Tensor]:
        """Every tensor the bank holds (for memory accounting and tests)."""
        return [] if self.storage is None else self.storage.tensors()

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stored_tensors())


__all__ = [
    "BANK_KINDS",
    "DEFAULT_BANK",
    "RingBank",
    "RingIndices",
    "RingStorage",
    "conditioning_start",
    "feature_ring_size",
    "offer_retained",
    "pointer_ring_size",
    "retained_ring_size",
    "store_rows",
]
