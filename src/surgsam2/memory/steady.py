"""The ring bank in a steady state: a frame's candidates from a frame counter on the device.

A tracked frame t is *steady* (`steady_plan`, decided on the host from what the host already
knows) when no prompt arrives on it (the caller's part), the objects are those of the previous
frame, the clip length is unknown or at least ``max_obj_ptrs_in_encoder`` (it then does not cap
the pointer window), and for every object:

- it has conditioning frames, all older than every frame its layout can reach at t: the recent
  memory slots' frames (t - 1 and the strided ones back to ((t - 2) // r) * r - (num_maskmem - 3) * r)
  and the pointer window t - 1 ... t - (max_obj_ptrs_in_encoder - 1);
- each of those frames is stored as a tracked frame (features for the memory slots, a pointer
  for the pointer window).

Then `BankRules.layout` proposes, per object: the ``c`` latest conditioning frames (c = their
number, or ``max_cond_frames_in_attn`` when that is smaller) in the bank's order, each in slot
num_maskmem - 1; the recent slots' frames, oldest first; pointers of those conditioning frames
(offset t - frame) and of frames t - 1, t - 2, ... (offsets 1, 2, ...); an object with retained
memories (``refp``) also proposes its R retained rows after the conditioning ones. Rows follow from
t alone: recent frame f is at feature row f mod S and pointer row f mod Q (`memory.ring`); the
conditioning rows are found on the device from the storage's ``frames`` (the c largest frame
indices among the object's conditioning rows) and their pointers' offsets from ``pointer_frames``.
So `steady_indices` computes with tensor ops only (no host read, static shapes) what
`RingBank.indices` computes from the rules, and `write_steady` stores a frame at the rows t gives,
after offering the memories that leave the window at t to the retained rows (`retire_steady`).
A stream tracked frame after frame is steady at the latest `frames_to_steady` frames after its last
prompt (or added object).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgsam2.memory.bank import BankConfig
from surgsam2.memory.rules import recent_slot_frames
from surgsam2.memory.ring import (
    RingBank,
    RingIndices,
    RingStorage,
    conditioning_start,
    feature_ring_size,
    offer_retained,
    pointer_ring_size,
    store_rows,
)


@dataclass(frozen=True)
class SteadyGroup:
    """Objects that go through memory attention as one batch on a steady frame (equal layout
    shapes): their storage columns, how many conditioning memories each attends to, and how many
    retained memories each proposes (0, or R once a memory has left its window)."""

    columns: tuple[int, ...]
    conditioning: int
    retained: int = 0


@dataclass(frozen=True)
class SteadyPlan:
    """What fixes the shapes of a steady frame: the objects (in bank order, column i holds
    ``obj_ids[i]``), the conditioning rows of the storage, and the batches of memory attention in
    the order the tracker forms them (first object of each layout shape first)."""

    obj_ids: tuple[int, ...]
    conditioning_rows: int
    groups: tuple[SteadyGroup, ...]


def feature_window(config: BankConfig, frame_index: int) -> list[int]:
    """The frames of the recent memory slots of ``frame_index``, oldest first (`BankRules.layout`)."""
    return [frame for frame, _ in recent_slot_frames(config, frame_index)]


def pointer_window(config: BankConfig, frame_index: int) -> list[int]:
    """The recent frames whose pointers ``frame_index`` attends to, newest first."""
    return [frame_index - back for back in range(1, config.max_obj_ptrs_in_encoder)]


def frames_to_steady(config: BankConfig) -> int:
    """After a prompt (or a new object) on frame p, every frame from p + this on is steady while
    the stream is tracked without prompts: the windows reach back at most max(S, Q) frames."""
    return max(feature_ring_size(config), config.max_obj_ptrs_in_encoder - 1) + 1


def selected_conditioning(config: BankConfig, count: int) -> int:
    """How many of ``count`` conditioning frames (all in the past) a frame attends to."""
    limit = config.max_cond_frames_in_attn
    return count if limit == -1 else min(count, limit)


def steady_plan(bank: RingBank, frame_index: int, num_frames: int | None = None) -> SteadyPlan | None:
    """The plan of tracked frame ``frame_index`` (no prompt on it) when the bank is in a steady
    state (module docstring), else None. Host only: reads the rules, never the device."""
    config = bank.config
    if bank.storage is None or not bank.columns:
        return None
    if num_frames is not None and num_frames < config.max_obj_ptrs_in_encoder:
        return None
    features, pointers = feature_window(config, frame_index), pointer_window(config, frame_index)
    oldest = min(features + pointers, default=frame_index)
    groups: dict[tuple[int, int], list[int]] = {}
    obj_ids = sorted(bank.columns, key=bank.columns.__getitem__)
    for column, obj_id in enumerate(obj_ids):
        memory = bank.objects[obj_id]
        if not memory.conditioning or max(memory.conditioning) >= oldest:
            return None
        if any(memory.recent.get(frame) is None or memory.recent[frame].features is None for frame in features):
            return None
        if any(frame not in memory.recent for frame in pointers):
            return None
        shape = (selected_conditioning(config, len(memory.conditioning)), len(memory.retained))
        groups.setdefault(shape, []).append(column)
    return SteadyPlan(
        obj_ids=tuple(obj_ids),
        conditioning_rows=bank.conditioning_rows,
        groups=tuple(SteadyGroup(tuple(columns), *shape) for shape, columns in groups.items()),
    )


def steady_indices(
    storage: RingStorage, counter: torch.Tensor, config: BankConfig, columns: torch.Tensor, conditioning: int,
    retained: int = 0,
) -> RingIndices:  # fmt: skip
    """`RingBank.indices` of a steady frame, on the device: ``counter`` the frame index (0-d
    int64), ``columns`` (B,) int64 the objects' storage columns, ``conditioning`` and ``retained``
    the conditioning and retained memories each proposes (`SteadyGroup`). Tensor ops only: no
    host read, static shapes."""
    recent_rows, pointer_rows, first = feature_ring_size(config), pointer_ring_size(config), conditioning_start(config)
    num_maskmem, stride = config.num_maskmem, config.memory_temporal_stride
    width, batch, device = storage.features.shape[1], columns.shape[0], counter.device
    # The latest `conditioning` conditioning rows of each object, in row (= the bank's) order.
    condition_frames = storage.frames[first:].index_select(1, columns)  # (K, B), -1 when empty
    positions = torch.topk(condition_frames, conditioning, dim=0).indices.sort(dim=0).values  # (c, B)
    # Recent slots, oldest first: strided frames back from ((t - 2) // r) * r, then t - 1.
    back = torch.arange(num_maskmem - 3, -1, -1, device=device) * stride
    base = torch.div(counter - 2, stride, rounding_mode="floor") * stride
    recent = torch.cat([base - back, (counter - 1).reshape(1)])[: max(num_maskmem - 1, 0)]
    retained_rows = torch.arange(recent_rows, recent_rows + retained, device=device)[:, None].expand(-1, batch)
    recent_ring = torch.remainder(recent, recent_rows)[:, None].expand(-1, batch)
    rows = torch.cat([first + positions, retained_rows, recent_ring])
    slots = torch.cat(
        [
            torch.full((conditioning, batch), num_maskmem - 1, dtype=torch.long, device=device),
            torch.full((retained, batch), config.retained_temporal_slot, dtype=torch.long, device=device),
            torch.arange(num_maskmem - 2, -1, -1, device=device)[:, None].expand(-1, batch),
        ]
    )
    # Pointers: the conditioning frames' (offset t - frame; all are in the past), then t - 1, t - 2, ...
    condition_pointers = pointer_rows + positions
    condition_offsets = counter - storage.pointer_frames.index_select(1, columns).gather(0, condition_pointers)
    frames_back = torch.arange(1, config.max_obj_ptrs_in_encoder, device=device)
    recent_pointers = torch.remainder(counter - frames_back, pointer_rows)[:, None].expand(-1, batch)
    return RingIndices(
        memories=(rows * width + columns).contiguous(),
        slots=slots.contiguous(),
        pointers=(torch.cat([condition_pointers, recent_pointers]) * width + columns).contiguous(),
        pointer_offsets=torch.cat([condition_offsets, frames_back[:, None].expand(-1, batch)]).contiguous(),
        protected=(True,) * conditioning + (False,) * (retained + max(num_maskmem - 1, 0)),
        retained=((False,) * conditioning + (True,) * retained + (False,) * max(num_maskmem - 1, 0)) if retained else (),
    )


def oldest_kept_feature(config: BankConfig, newest: torch.Tensor) -> torch.Tensor:
    """The oldest frame whose features the bank keeps once ``newest`` (a 0-d tensor) is written
    (`BankRules._forget`, on the device)."""
    stride = config.memory_temporal_stride
    strided = torch.div(newest - 1, stride, rounding_mode="floor") * stride - max(config.num_maskmem - 3, 0) * stride
    return torch.minimum(newest, strided)


def retire_steady(storage: RingStorage, counter: torch.Tensor, config: BankConfig) -> None:
    """Offer the memories that leave the recent window when frame ``counter`` is written to the
    retained rows, oldest first, as the host's rules retire them: the frames from the oldest kept
    after frame t - 1 up to (not including) the oldest kept after frame t, each one of an object
    only where its ring row holds that frame (at most ``memory_temporal_stride`` frames a write)."""
    width, device = storage.features.shape[1], counter.device
    columns = torch.arange(width, device=device)
    before, after = oldest_kept_feature(config, counter - 1), oldest_kept_feature(config, counter)
    for back in range(config.memory_temporal_stride, 0, -1):
        frame = after - back
        rows = torch.remainder(frame, feature_ring_size(config)).reshape(1)
        eligible = (frame >= before) & (storage.frames.index_select(0, rows)[0] == frame)
        offer_retained(storage, rows.expand(width), columns, config, eligible)


def write_steady(
    storage: RingStorage,
    counter: torch.Tensor,
    config: BankConfig,
    features: torch.Tensor,
    obj_ptrs: torch.Tensor,
    keys: torch.Tensor | None = None,
    object_scores: torch.Tensor | None = None,
    ious: torch.Tensor | None = None,
) -> None:
    """`RingBank.write_frame` of a tracked frame of every object (all columns, in order) at the
    rows the device counter gives: (B, T, C) features, (B, D) pointers, optionally (B, L, T, d)
    keys and (B,) quality. With retained memories and quality, the memories leaving the window are
    offered to the retained rows first. The host records the write with `RingBank.record_tracked`."""
    if config.retained_memories and object_scores is not None:
        retire_steady(storage, counter, config)
    width = storage.features.shape[1]
    columns = torch.arange(width, device=counter.device)
    feature_rows = torch.remainder(counter, feature_ring_size(config)) * width + columns
    pointer_rows = torch.remainder(counter, pointer_ring_size(config)) * width + columns
    store_rows(storage, feature_rows, pointer_rows, features, obj_ptrs, keys, object_scores, ious, "steady frame")
    storage.frames.view(-1).index_copy_(0, feature_rows, counter.expand(width))
    storage.pointer_frames.view(-1).index_copy_(0, pointer_rows, counter.expand(width))


__all__ = [
    "SteadyGroup",
    "SteadyPlan",
    "feature_window",
    "frames_to_steady",
    "oldest_kept_feature",
    "pointer_window",
    "retire_steady",
    "selected_conditioning",
    "steady_indices",
    "steady_plan",
    "write_steady",
]
