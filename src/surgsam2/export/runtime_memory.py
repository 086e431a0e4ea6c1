"""The ONNX runtime's memory policies in numpy: which candidate memories a frame attends to under
efp and refp, and the bank that retains refp's reliable memories.

Each is the torch original rewritten without torch, and tested against it: `efp_select` is
`memory.policies.EfpPolicy.select`, `refp_select` is `ReliableEfpPolicy.select` with quality, and
`RetainingBankRules` keeps the retained memories `memory.bank.MemoryBank` keeps (on the host here,
where the torch bank chooses its slot on the device). Nothing on this module's import path
imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from surgsam2.memory.rules import BankRules, MemoryLayout, ObjectMemory, StoredMemory

EFP_EPS = 1e-8  # cosine similarity's norm floor, as torch's


@dataclass(frozen=True)
class CandidateQuality:
    """(N, B) quality of the candidate memories, as `memory.policies.MemoryQuality` holds it."""

    object_scores: np.ndarray  # object-score logit of each memory's frame (> 0: object present)
    ious: np.ndarray  # predicted IoU of the mask each memory was encoded from
    frames: np.ndarray  # frame index of each memory (a retained one's stamp, -inf for an empty slot)
    retained: tuple[bool, ...] = ()  # N flags: retained memories; () none


def efp_num_dropped(protected: Sequence[bool], capacity: int, num_frame_to_prune: int) -> int:
    """`EfpPolicy.num_dropped`: how many memories EFP drops (never the newest or a protected one)."""
    prunable = sum(1 for flag in protected[:-1] if not flag)
    return min(max(len(protected) + num_frame_to_prune - capacity, 0), prunable)


def efp_redundancy(features: np.ndarray) -> np.ndarray:
    """(N, B) float32 `EfpPolicy.redundancy`: each candidate's per-token cosine similarity with the
    newest (last) one, summed over its tokens; ``features`` (N, B, T, C)."""
    features = features.astype(np.float32)
    newest = features[-1:]
    norms = np.maximum(np.linalg.norm(features, axis=-1), EFP_EPS) * np.maximum(np.linalg.norm(newest, axis=-1), EFP_EPS)
    return ((features * newest).sum(axis=-1) / norms).sum(axis=-1)


def never_dropped(protected: Sequence[bool]) -> np.ndarray:
    """(N, 1) bool: the candidates no policy drops, the protected (conditioning) ones and the newest."""
    return np.array(list(protected[:-1]) + [True])[:, None]


def kept_after_dropping(order: np.ndarray, dropped: int) -> np.ndarray:
    """(N - dropped, B) indices of the candidates kept, ascending per object, when the first
    ``dropped`` of each object's drop ``order`` (N, B) are dropped."""
    num_candidates, batch = order.shape
    keep = np.ones((num_candidates, batch), dtype=bool)
    np.put_along_axis(keep, order[:dropped], False, axis=0)
    indices = np.arange(num_candidates)
    return np.stack([indices[keep[:, column]] for column in range(batch)], axis=1)


def descending_order(values: np.ndarray) -> np.ndarray:
    """(N, B) indices that sort each column of ``values`` from the highest, equal values in index
    order (torch's stable descending sort)."""
    return np.argsort(-values, axis=0, kind="stable")


def efp_select(features: np.ndarray, protected: Sequence[bool], capacity: int, num_frame_to_prune: int) -> np.ndarray:
    """`EfpPolicy.select` in numpy: indices (K, B) of the kept candidates, ascending per object.
    ``features`` (N, B, T, C); drops the memories with the largest summed per-token cosine
    similarity to the newest, older first among equal scores."""
    num_candidates, batch = features.shape[:2]
    dropped = efp_num_dropped(protected, capacity, num_frame_to_prune)
    if dropped == 0:
        return np.repeat(np.arange(num_candidates)[:, None], batch, axis=1)
    scores = np.where(never_dropped(protected), -np.inf, efp_redundancy(features))
    return kept_after_dropping(descending_order(scores), dropped)


def refp_drop_order(
    features: np.ndarray, protected: Sequence[bool], quality: CandidateQuality, min_iou: float
) -> np.ndarray:
    """`ReliableEfpPolicy.drop_order`: (N, B) candidate indices per object, the first to drop first.
    Tiers: poor retained (or empty) 3, poor recent 2, reliable retained 1, reliable recent 0, never
    dropped -1; within a tier recent ones the most redundant first, retained ones the oldest first."""
    num_candidates = features.shape[0]
    never = never_dropped(protected)
    retained = np.array(list(quality.retained) or [False] * num_candidates)[:, None]
    poor = (quality.object_scores <= 0) | (quality.ious < np.float32(min_iou))
    tier = np.where(never, -1, np.where(retained, np.where(poor, 3, 1), np.where(poor, 2, 0)))
    oldest_first = -quality.frames.astype(np.float32)
    secondary = np.where(retained, oldest_first, efp_redundancy(features))
    by_secondary = descending_order(secondary)
    by_tier = descending_order(np.take_along_axis(tier, by_secondary, axis=0))
    return np.take_along_axis(by_secondary, by_tier, axis=0)


def refp_select(
    features: np.ndarray,
    protected: Sequence[bool],
    capacity: int,
    num_frame_to_prune: int,
    quality: CandidateQuality,
    min_iou: float,
) -> np.ndarray:
    """`ReliableEfpPolicy.select` with quality, in numpy: indices (K, B) of the kept candidates,
    ascending per object. EFP's count over all candidates is dropped, in `refp_drop_order`."""
    num_candidates, batch = features.shape[:2]
    dropped = efp_num_dropped(protected, capacity, num_frame_to_prune)
    if dropped == 0:
        return np.repeat(np.arange(num_candidates)[:, None], batch, axis=1)
    return kept_after_dropping(refp_drop_order(features, protected, quality, min_iou), dropped)


def layout_quality(layout: MemoryLayout) -> CandidateQuality:
    """(N, 1) quality of one object's candidates, as `memory.assembly` gathers it: a memory written
    without quality counts as present and well segmented (logit +inf, IoU 1); frames are a retained
    memory's stamp, the others' frame index."""
    memories = [stored for stored, _ in layout.memories]

    def column(values: list[float]) -> np.ndarray:
        return np.array(values, dtype=np.float32)[:, None]

    return CandidateQuality(
        object_scores=column([np.inf if stored.object_score is None else stored.object_score for stored in memories]),
        ious=column([1.0 if stored.iou is None else stored.iou for stored in memories]),
        frames=column([stored.frame_index if stored.frame_stamp is None else stored.frame_stamp for stored in memories]),
        retained=layout.retained,
    )


def is_reliable(object_score: float, iou: float, min_iou: float) -> bool:
    """Whether a memory may be retained: its frame's object-score logit > 0 and predicted IoU >=
    ``min_iou``, compared in float32 as the torch bank does."""
    return bool(np.float32(object_score) > 0 and np.float32(iou) >= np.float32(min_iou))


def empty_retained_slot(like: StoredMemory) -> StoredMemory:
    """A retained slot holding nothing yet, as `memory.bank.RetainedStore` makes it: zero features,
    keys and pointer, logit -inf (so it reads as poor), IoU 0 and frame -inf (filled first)."""
    keys = None if like.keys is None else np.zeros_like(like.keys)
    return StoredMemory(-1, np.zeros_like(like.features), np.zeros_like(like.obj_ptr), keys,
                        object_score=-np.inf, iou=0.0, frame_stamp=-np.inf)  # fmt: skip


class RetainingBankRules(BankRules):
    """`BankRules` over numpy arrays that, with ``retained_memories`` = R > 0, keeps per object the
    newest R reliable memories that left the recent window, in the slots `memory.bank.MemoryBank`
    would use: a reliable memory replaces the slot with the lowest frame (the first empty one
    first). ``memory.retained`` holds the R slots in slot order."""

    def _retire(self, memory: ObjectMemory, stored: StoredMemory) -> None:
        """Offer a memory that leaves the recent window to the object's retained slots; the slots are
        made at the first memory with quality that leaves it (one without is never retained)."""
        count = self.config.retained_memories
        if count == 0 or stored.object_score is None or stored.iou is None:
            return
        if not memory.retained:
            memory.retained = [empty_retained_slot(stored) for _ in range(count)]
        if not is_reliable(stored.object_score, stored.iou, self.config.retained_min_iou):
            return
        oldest = min(range(count), key=lambda slot: memory.retained[slot].frame_stamp)
        memory.retained[oldest] = StoredMemory(
            stored.frame_index, stored.features, stored.obj_ptr, stored.keys,
            stored.object_score, stored.iou, frame_stamp=float(stored.frame_index),
        )  # fmt: skip


__all__ = [
    "CandidateQuality",
    "RetainingBankRules",
    "efp_num_dropped",
    "efp_redundancy",
    "efp_select",
    "layout_quality",
    "refp_drop_order",
    "refp_select",
]
