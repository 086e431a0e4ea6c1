"""Memory policies: which of the candidate memories a frame attends to.

The bank proposes candidates following SAM 2's rules (conditioning frames first, then the recent
frames oldest to newest, the last being the newest); a policy keeps some of them. Policies see
tensors only, work on the device and never synchronise with the host.

- ``fifo``: SAM 2 — keep every candidate.
- ``efp``: Surgical SAM 2's Efficient Frame Pruning — drop the recent memories most similar to the
  newest one, so attention looks at fewer frames.
- ``qefp``: quality-first EFP — drop the memories of frames where the object was absent or poorly
  segmented first, then the most redundant ones, within EFP's budget.
- ``refp``: reliable-memory EFP — the bank also retains the newest reliable memories that left the
  recent window; poor recent memories are replaced by them, then EFP prunes as usual.
- ``xefp``: exclusive-memory EFP — each memory is encoded from a mask that shares no pixel with
  another tracked instrument of the video (`memory.exclusive`), then EFP prunes.

Policies are looked up by name in one registry (the command line, the Python API and the training
switch all read it): a new policy is one class decorated with ``@register_policy("name")``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, TypeVar

import torch
import torch.nn.functional as F

from surgsam2.memory.policy_table import (
    DEFAULT_MIN_IOU,
    DEFAULT_NUM_FRAME_TO_PRUNE,
    DEFAULT_POLICY,
    DEFAULT_RETAINED_MEMORIES,
    POLICY_SUMMARIES,
)


@dataclass(frozen=True)
class MemoryQuality:
    """How good each candidate memory's frame was, as the tracker predicted it (on the device)."""

    object_scores: torch.Tensor  # (N, B) object-score logit of the frame (> 0: object present)
    ious: torch.Tensor  # (N, B) predicted IoU of the mask the memory was encoded from
    # (N, B) frame index of each memory (a retained memory's is only known on the device), or None
    frames: torch.Tensor | None = None
    # N host flags: retained memories (kept by the bank after they left the recent window); () none
    retained: tuple[bool, ...] = ()


@dataclass(frozen=True)
class PolicyOptions:
    """The knobs a policy may read when it is made from its name."""

    num_frame_to_prune: int = DEFAULT_NUM_FRAME_TO_PRUNE


class MemoryPolicy(ABC):
    """Chooses, per object, which candidate memories to attend to."""

    name: str = "policy"
    # Whether `select` reads the candidates' quality (passed as ``quality=``); others never see it.
    uses_quality: ClassVar[bool] = False
    # Whether memories are encoded from exclusive masks (`memory.exclusive.exclusive_masks` over the
    # objects of a video: the tracker and the training forward apply it when the policy asks).
    exclusive_memories: ClassVar[bool] = False

    @classmethod
    def from_options(cls, options: PolicyOptions) -> MemoryPolicy:
        """The policy made from its name and the shared options (policies without knobs ignore them)."""
        return cls()

    @abstractmethod
    def num_kept(self, protected: Sequence[bool], capacity: int) -> int:
        """How many of the candidates (one flag each) survive: a host-side count, no sync."""

    @abstractmethod
    def select(self, features: torch.Tensor, protected: Sequence[bool], capacity: int) -> torch.Tensor:
        """Indices (K, B) of the kept candidates, ascending per object.

        features: (N, B, T, C) candidate memories of B objects (T tokens of C channels), in bank
        order; protected: N host-side flags, entries that must be kept (conditioning frames);
        capacity: the model's number of memory slots (``num_maskmem``).
        """


@lru_cache(maxsize=64)
def never_dropped(flags: tuple[bool, ...], device: torch.device) -> torch.Tensor:
    """(N,) bool on ``device`` of the candidates a policy never drops, made once per pattern
    (read-only): no host-to-device copy per frame, so a frame can be captured as a CUDA graph.
    Made outside inference mode, so that training (autograd saves it) can use a tensor first made
    while tracking."""
    with torch.inference_mode(False):
        return torch.tensor(flags, dtype=torch.bool).to(device)


_REGISTRY: dict[str, type[MemoryPolicy]] = {}
PolicyClass = TypeVar("PolicyClass", bound=type[MemoryPolicy])


def register_policy(name: str) -> Callable[[PolicyClass], PolicyClass]:
    """Class decorator: make a policy available under ``name`` to the API (`make_policy`, the Tracker,
    the training switch). The command line's ``--memory`` offers the policies listed in the torch-free
    `surgsam2.memory.policy_table`; a built-in policy is listed there too (tests check the two agree),
    a policy registered by the user's own code is available through the API only."""

    def register(cls: PolicyClass) -> PolicyClass:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"memory policy {name!r} is already registered by {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        return cls

    return register


def policy_names() -> tuple[str, ...]:
    """The registered policy names, in registration order (``fifo``, ``efp``, ...)."""
    return tuple(_REGISTRY)


def policy_summaries() -> list[str]:
    """``"name: first line of its docstring"`` for every registered policy (for help texts)."""
    return [f"{name}: {(cls.__doc__ or '').strip().splitlines()[0].rstrip('.')}" for name, cls in _REGISTRY.items()]


@register_policy("fifo")
class FifoPolicy(MemoryPolicy):
    """SAM 2: attend to every candidate (conditioning frames plus the last num_maskmem-1 frames)."""

    name = "fifo"

    def num_kept(self, protected: Sequence[bool], capacity: int) -> int:
        return len(protected)

    def select(self, features: torch.Tensor, protected: Sequence[bool], capacity: int) -> torch.Tensor:
        num_candidates, batch_size = features.shape[:2]
        indices = torch.arange(num_candidates, device=features.device)
        return indices[:, None].expand(num_candidates, batch_size)


@register_policy("efp")
@dataclass
class EfpPolicy(MemoryPolicy):
    """Surgical SAM 2's Efficient Frame Pruning.

    With N memories and P = ``num_frame_to_prune``, when N + P > capacity the
    k = N + P - capacity memories most redundant with the newest one are dropped. Redundancy of a
    memory is the sum over its spatial tokens of the cosine similarity (over channels) with the
    same token of the newest memory. The newest memory and every protected (conditioning) memory
    are never dropped. Ties drop the older memory first. Selection is per object.
    """

    num_frame_to_prune: int = DEFAULT_NUM_FRAME_TO_PRUNE
    name: str = "efp"

    def __post_init__(self) -> None:
        if self.num_frame_to_prune < 0:
            raise ValueError(f"num_frame_to_prune must be >= 0, got {self.num_frame_to_prune}")

    @classmethod
    def from_options(cls, options: PolicyOptions) -> EfpPolicy:
        return cls(num_frame_to_prune=options.num_frame_to_prune)

    def num_dropped(self, protected: Sequence[bool], capacity: int) -> int:
        """k: how many memories are dropped (never more than there are prunable ones)."""
        num_candidates = len(protected)
        prunable = sum(1 for flag in protected[:-1] if not flag)  # the newest is never pruned
        return min(max(num_candidates + self.num_frame_to_prune - capacity, 0), prunable)

    def num_kept(self, protected: Sequence[bool], capacity: int) -> int:
        return len(protected) - self.num_dropped(protected, capacity)

    def redundancy(self, features: torch.Tensor) -> torch.Tensor:
        """(N, B): summed per-token cosine similarity of every candidate with the newest one."""
        features = features.float()
        newest = features[-1:]
        return F.cosine_similarity(features, newest, dim=-1).sum(dim=-1)

    def select(self, features: torch.Tensor, protected: Sequence[bool], capacity: int) -> torch.Tensor:
        num_candidates, batch_size = features.shape[:2]
        dropped = self.num_dropped(protected, capacity)
        indices = torch.arange(num_candidates, device=features.device)
        if dropped == 0:
            return indices[:, None].expand(num_candidates, batch_size)
        scores = self.redundancy(features)
        # Protected entries and the newest one can never be dropped.
        never_flags = list(protected)
        never_flags[-1] = True
        never = never_dropped(tuple(never_flags), features.device)
        scores = scores.masked_fill(never[:, None], float("-inf"))
        # Stable descending sort: among equal scores, the older (lower index) memory goes first.
        order = torch.sort(scores, dim=0, descending=True, stable=True).indices
        drop = order[:dropped]  # (k, B)
        keep = torch.ones(num_candidates, batch_size, dtype=torch.bool, device=features.device)
        keep.scatter_(0, drop, False)
        # Ascending indices of the kept entries per object, without a host sync.
        kept_count = num_candidates - dropped
        ranked = torch.where(keep, indices[:, None], num_candidates)
        return torch.sort(ranked, dim=0).values[:kept_count]


@register_policy("qefp")
@dataclass
class QualityEfpPolicy(EfpPolicy):
    """Quality-first EFP: drop memories of absent or poorly segmented frames first, then redundant ones.

    The budget is EFP's: k = min(max(N + P - capacity, 0), prunable) memories are dropped, so the
    kept count is a host-side number. A memory is poor when its frame's object-score logit is <= 0
    or its predicted IoU is below ``min_iou``. Drop order per object: poor memories before good
    ones, within each group the most redundant with the newest memory first (EFP's score), ties the
    older first. The newest memory and every conditioning memory are never dropped (as in efp),
    whatever their quality. Without quality it is efp.
    """

    min_iou: float = DEFAULT_MIN_IOU
    name: str = "qefp"
    uses_quality: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.min_iou <= 1.0:
            raise ValueError(f"min_iou must be in [0, 1], got {self.min_iou}")

    @classmethod
    def from_options(cls, options: PolicyOptions) -> QualityEfpPolicy:
        return cls(num_frame_to_prune=options.num_frame_to_prune)

    def poor(self, quality: MemoryQuality) -> torch.Tensor:
        """(N, B) bool: memories of frames where the object was absent or poorly segmented."""
        return (quality.object_scores <= 0) | (quality.ious < self.min_iou)

    def drop_order(self, features: torch.Tensor, protected: Sequence[bool], quality: MemoryQuality) -> torch.Tensor:
        """(N, B) candidate indices per object, the first to drop first (never-dropped ones last)."""
        never_flags = list(protected)
        never_flags[-1] = True
        never = never_dropped(tuple(never_flags), features.device)
        scores = self.redundancy(features).masked_fill(never[:, None], float("-inf"))
        poor = (self.poor(quality) & ~never[:, None]).to(torch.int8)
        # Two stable sorts: by redundancy (descending), then poor before good keeping that order.
        by_redundancy = torch.sort(scores, dim=0, descending=True, stable=True).indices
        by_quality = torch.sort(poor.gather(0, by_redundancy), dim=0, descending=True, stable=True).indices
        return by_redundancy.gather(0, by_quality)

    def select(
        self,
        features: torch.Tensor,
        protected: Sequence[bool],
        capacity: int,
        quality: MemoryQuality | None = None,
    ) -> torch.Tensor:
        if quality is None:
            return super().select(features, protected, capacity)
        num_candidates, batch_size = features.shape[:2]
        dropped = self.num_dropped(protected, capacity)
        indices = torch.arange(num_candidates, device=features.device)
        if dropped == 0:
            return indices[:, None].expand(num_candidates, batch_size)
        order = self.drop_order(features, protected, quality)
        keep = torch.ones(num_candidates, batch_size, dtype=torch.bool, device=features.device)
        keep.scatter_(0, order[:dropped], False)
        ranked = torch.where(keep, indices[:, None], num_candidates)
        return torch.sort(ranked, dim=0).values[: num_candidates - dropped]


@register_policy("refp")
@dataclass
class ReliableEfpPolicy(QualityEfpPolicy):
    """Reliable-memory EFP: poor recent memories are replaced by retained reliable ones, then EFP prunes.

    The bank retains, per object, the newest ``retained_memories`` = R reliable memories (object-score
    logit > 0 and predicted IoU >= ``min_iou``) that left the recent window, and proposes them (slot:
    the farthest recent one) after the conditioning frames. The count dropped is EFP's formula over
    all candidates (with R retained candidates: efp's k plus R), a host-side number. Drop order per
    object: empty or poor retained slots, then poor recent memories (most redundant first), then
    reliable retained ones (oldest first), then reliable recent ones (EFP: most redundant first);
    ties the older first. Conditioning memories and the newest one are never dropped. When every
    memory is reliable it keeps exactly efp's memories; without quality it is efp.
    """

    retained_memories: int = DEFAULT_RETAINED_MEMORIES
    # Temporal slot of retained memories (index into maskmem_tpos_enc); None: the farthest recent one.
    retained_slot: int | None = None
    name: str = "refp"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.retained_memories <= 16:
            raise ValueError(f"retained_memories must be in 0..16, got {self.retained_memories}")

    def drop_order(self, features: torch.Tensor, protected: Sequence[bool], quality: MemoryQuality) -> torch.Tensor:
        """(N, B) candidate indices per object, the first to drop first (never-dropped ones last)."""
        num_candidates = features.shape[0]
        never_flags = list(protected)
        never_flags[-1] = True
        retained_flags = list(quality.retained) or [False] * num_candidates
        flags = torch.tensor([never_flags, retained_flags], dtype=torch.bool).to(features.device, non_blocking=True)
        never, retained = flags[0][:, None], flags[1][:, None]
        poor = self.poor(quality)
        # Tier (dropped from the highest): 3 poor retained, 2 poor recent, 1 retained, 0 recent, -1 never.
        tier = torch.where(retained, torch.where(poor, 3, 1), torch.where(poor, 2, 0)).masked_fill(never, -1)
        # Within a tier: recent memories the most redundant first; retained ones the oldest first.
        frames = quality.frames if quality.frames is not None else torch.zeros_like(quality.ious)
        secondary = torch.where(retained, -frames.float(), self.redundancy(features))
        by_secondary = torch.sort(secondary, dim=0, descending=True, stable=True).indices
        by_tier = torch.sort(tier.gather(0, by_secondary), dim=0, descending=True, stable=True).indices
        return by_secondary.gather(0, by_tier)


@register_policy("xefp")
@dataclass
class ExclusiveEfpPolicy(EfpPolicy):
    """Exclusive-memory EFP: memories encoded from masks that share no pixel with another tracked instrument.

    Before a frame's memories are encoded, each pixel of the objects' masks is kept only by the
    object of the same video with the highest logit (prompted objects keep their whole mask and
    win where it is positive); the others' logits there are clamped to <= -10
    (`memory.exclusive.exclusive_masks`, SAM 2's non-overlap constraint for memory encoding). An
    object whose mask spilled onto a crossing instrument so remembers only its own pixels. The
    memories a frame attends to are then chosen as by efp. With one object it is efp.
    """

    name: str = "xefp"
    exclusive_memories: ClassVar[bool] = True


def make_policy(policy: str | MemoryPolicy, num_frame_to_prune: int = DEFAULT_NUM_FRAME_TO_PRUNE) -> MemoryPolicy:
    """A policy from its registered name (``fifo``, ``efp``, ...) or a policy object, passed through."""
    if isinstance(policy, MemoryPolicy):
        return policy
    cls = _REGISTRY.get(policy) if isinstance(policy, str) else None
    if cls is None:
        raise ValueError(f"unknown memory policy {policy!r}; choose one of {', '.join(policy_names())}")
    return cls.from_options(PolicyOptions(num_frame_to_prune=num_frame_to_prune))
