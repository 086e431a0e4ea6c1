"""The phases of a tracked frame that take a batch of objects: memory attention with the mask
decoder, and the memory encoder.

`Tracker` runs them over the objects of its stream; `MultiStreamTracker` over the objects of
several streams at once (the features then hold one row per object, each its own stream's frame).
Choosing memories and storing them stay per stream (`Tracker.memory_batches`,
`Tracker.store_memories`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from surgsam2.memory.exclusive import exclusive_masks
from surgsam2.model.sam2 import DecoderOutput, ImageFeatures, SAM2Model
from surgsam2.tracking.postprocess import fill_holes_for_device
from surgsam2.tracking.results import ObjectOutput
from surgsam2.tracking.stages import StageHook


@dataclass
class MemoryBatch:
    """Memory attention's inputs for objects of one stream whose memories share one shape."""

    obj_ids: list[int]
    memory: torch.Tensor  # (L, B, C) memory tokens, the pointer tokens last
    memory_pos: torch.Tensor  # (L, B, C) their encodings
    num_pointer_tokens: int
    keys: torch.Tensor | None  # (num_layers, B, L, d) cached keys, or None without the key cache

    @property
    def shape_key(self) -> tuple[int, int, bool]:
        """Batches with equal keys go through memory attention together (exactly, no padding)."""
        return (self.memory.shape[0], self.num_pointer_tokens, self.keys is None)


@dataclass
class TrackedObject:
    """One object tracked with its memories: the decoder's output, its hole-filled low-res mask
    and its memory-conditioned features (reused by corrective clicks)."""

    decoded: DecoderOutput
    filled: torch.Tensor  # (1, 1, h, w)
    pix_feat: torch.Tensor  # (1, C, h, w)


@dataclass
class EncodedMemories:
    """The memory encoder's output for B objects, as the banks store it."""

    tokens: torch.Tensor  # (B, T, C)
    keys: torch.Tensor | None  # (B, num_layers, T, d) rotated keys, or None without the key cache
    spatial_pos: torch.Tensor  # (T, C) the memory tokens' spatial encoding


def decoder_row(output: DecoderOutput, index: int) -> DecoderOutput:
    """Row ``index`` of a batched decoder output, keeping the batch dimension."""
    pick = slice(index, index + 1)
    return DecoderOutput(
        output.low_res_masks[pick],
        output.low_res_multimasks[pick],
        output.ious[pick],
        output.obj_ptr[pick],
        output.object_score_logits[pick],
    )


@lru_cache(maxsize=64)
def flags_on(flags: tuple[bool, ...], device: torch.device) -> torch.Tensor:
    """A bool tensor of ``flags`` on ``device``, made once per pattern (read-only): a copy from the
    host each frame would make the host wait for the GPU in the middle of the frame."""
    return torch.tensor(flags, dtype=torch.bool).to(device)


@lru_cache(maxsize=64)
def groups_on(groups: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A long tensor of ``groups`` on ``device``, made once per pattern (read-only), as `flags_on`."""
    return torch.tensor(groups, dtype=torch.long).to(device)


def _joined(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)


def attend_and_decode(
    model: SAM2Model,
    hook: StageHook,
    features: ImageFeatures,
    batches: Sequence[MemoryBatch],
    fill_hole_area: int,
) -> list[TrackedObject]:
    """Memory attention and the decoder, once, for the objects of ``batches`` (one `shape_key`),
    in their order. ``features``: batch 1 (one frame shared by every object) or one row per object."""
    memory = _joined([batch.memory for batch in batches], 1)
    memory_pos = _joined([batch.memory_pos for batch in batches], 1)
    keys = None if batches[0].keys is None else _joined([batch.keys for batch in batches], 1)
    with hook.stage("memory_attention"):
        pix_feat = model.attend_to_memory(features, memory, memory_pos, batches[0].num_pointer_tokens, keys)
    with hook.stage("decoder"):
        decoded = model.decode(pix_feat, features.high_res, multimask_output=model.use_multimask(False, 0))
    filled = fill_holes_for_device(decoded.low_res_masks, fill_hole_area)  # on a GPU: no host trip
    return [
        TrackedObject(decoder_row(decoded, row), filled[row : row + 1], pix_feat[row : row + 1])
        for row in range(memory.shape[1])
    ]


def encode_memories(
    model: SAM2Model,
    hook: StageHook,
    features: ImageFeatures,
    masks: torch.Tensor,
    object_scores: torch.Tensor,
    conditioning: tuple[bool, ...],
    key_storage_dtype: torch.dtype | None,
    spatial_pos: torch.Tensor | None = None,
    exclusive_groups: tuple[int, ...] | None = None,
) -> EncodedMemories:
    """The memories of B objects from their (B, 1, h, w) low-res mask logits, (B, 1) object scores
    and conditioning flags (prompted frames: masks binarised). ``features``: batch 1 or one row per
    object. ``key_storage_dtype``: compute the cached keys from the features rounded to the bank's
    storage dtype (so they equal keys computed from the stored memory); None: no keys.
    ``spatial_pos``: the (T, C) spatial encoding when already known (it depends only on the model).
    ``exclusive_groups``: the video (0, 1, ...) of each object when the masks are made exclusive
    among each video's objects first (`memory.exclusive`, a policy's ``exclusive_memories``), at
    the decoder's resolution before upscaling (as the ONNX runtime and training apply it);
    None: encoded as they are."""
    binarize = flags_on(conditioning, model.device)
    if exclusive_groups is not None and len(exclusive_groups) > 1:
        num_groups = max(exclusive_groups) + 1
        groups = None if num_groups == 1 else groups_on(exclusive_groups, model.device)
        masks = exclusive_masks(masks, binarize, groups, num_groups)
    high_res_masks = model.upscale_masks(masks).to(model.dtype)
    with hook.stage("memory_encoder"):
        memory_features, memory_pos = model.encode_memory(features, high_res_masks, object_scores, binarize)
    if spatial_pos is None:
        spatial_pos = memory_pos.flatten(2)[0].T.contiguous()  # (T, C)
    tokens = memory_features.flatten(2).transpose(1, 2)  # (B, T, C)
    keys = None
    if key_storage_dtype is not None:
        stored_tokens = tokens.to(key_storage_dtype).to(model.dtype)
        keys = model.memory_attention.rotated_spatial_keys(stored_tokens, spatial_pos)
    return EncodedMemories(tokens, keys, spatial_pos)


def tracked_output(tracked: TrackedObject) -> ObjectOutput:
    """A tracked (unprompted) object's output: its memory is encoded from the raw decoder mask."""
    decoded = tracked.decoded
    return ObjectOutput(
        tracked.filled, decoded.low_res_masks, decoded.ious, decoded.obj_ptr, decoded.object_score_logits,
        conditioning=False,
    )  # fmt: skip


def memory_encoder_inputs(outputs: Sequence[ObjectOutput]) -> tuple[torch.Tensor, torch.Tensor, tuple[bool, ...]]:
    """The (B, 1, h, w) masks, (B, 1) object scores and conditioning flags of ``outputs``."""
    masks = torch.cat([output.memory_masks for output in outputs])
    object_scores = torch.cat([output.object_score_logits for output in outputs])
    return masks, object_scores, tuple(output.conditioning for output in outputs)


def own_row(tensor: torch.Tensor, row: int) -> torch.Tensor:
    """Row ``row`` of ``tensor``, copied unless it is the tensor's whole storage: what a bank keeps
    must not hold the rest of a batch (other objects, other streams) alive."""
    whole = tensor.shape[0] == 1 and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    return tensor[row] if whole else tensor[row].clone()


def per_object_features(rows: Sequence[tuple[ImageFeatures, int]]) -> ImageFeatures:
    """One feature row per object from (a stream's batch-1 features, its object count) pairs; one
    stream's features as they are (batch 1, shared by its objects, as `Tracker` runs them)."""
    if len(rows) == 1:
        return rows[0][0]

    def stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensor.expand(count, -1, -1, -1) for tensor, (_, count) in zip(tensors, rows)])

    levels = len(rows[0][0].high_res)
    return ImageFeatures(
        embedding=stacked([features.embedding for features, _ in rows]),
        position=stacked([features.position for features, _ in rows]),
        high_res=[stacked([features.high_res[level] for features, _ in rows]) for level in range(levels)],
    )


__all__ = [
    "MemoryBatch",
    "TrackedObject",
    "EncodedMemories",
    "decoder_row",
    "flags_on",
    "groups_on",
    "attend_and_decode",
    "encode_memories",
    "tracked_output",
    "memory_encoder_inputs",
    "own_row",
    "per_object_features",
]
