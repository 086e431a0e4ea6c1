"""Exclusive memory masks: a pixel of a memory's mask belongs to one tracked instrument only.

The masks of a frame's objects are predicted independently, so two objects can claim the same
pixels; in surgical video that happens when instruments touch or cross, and an object whose mask
has drifted onto another instrument then writes that instrument into its own memory, which pulls
the next frames further onto it. SAM 2's non-overlap constraint for memory encoding
(``non_overlap_masks_for_mem_enc``) keeps each pixel only for the object with the highest logit;
`exclusive_masks` applies it among the objects of one video (a group), with one change: the masks
of prompted objects (conditioning frames: what the user drew) are kept whole and win wherever
they are positive. Pure tensor code, no host sync.
"""

from __future__ import annotations

import torch

# A pixel an object loses has its logit clamped to at most this value (as SAM 2 does).
LOST_PIXEL_LOGIT = -10.0


def exclusive_masks(
    logits: torch.Tensor, fixed: torch.Tensor, groups: torch.Tensor | None = None, num_groups: int = 1
) -> torch.Tensor:
    """The (B, 1, H, W) mask ``logits`` of B objects with every pixel kept only by the object(s) of
    its group with the highest logit (ties keep all of them); elsewhere clamped to <= -10.

    ``fixed``: (B,) bool, objects whose masks are kept whole and rank first where positive
    (prompted objects); ``groups``: (B,) long group of each object in 0 .. num_groups - 1
    (objects of different videos never compete), None: one group.
    """
    if logits.shape[0] <= 1:
        return logits
    fixed = fixed.to(device=logits.device, dtype=torch.bool).view(-1, *([1] * (logits.dim() - 1)))
    ranking = torch.where(fixed & (logits > 0), torch.inf, logits.float())
    if groups is None:
        best = ranking.amax(dim=0, keepdim=True)
    else:
        index = groups.to(logits.device).view(-1, *([1] * (logits.dim() - 1))).expand_as(ranking)
        best = ranking.new_full((num_groups, *ranking.shape[1:]), -torch.inf)
        best = best.scatter_reduce(0, index, ranking, reduce="amax").gather(0, index)
    keep = fixed | (ranking >= best)
    return torch.where(keep, logits, logits.clamp(max=LOST_PIXEL_LOGIT))


__all__ = ["LOST_PIXEL_LOGIT", "exclusive_masks"]
