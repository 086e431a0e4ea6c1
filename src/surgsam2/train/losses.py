"""SAM 2's training losses (its MultiStepMultiMasksAndIous), written afresh.

Per prediction step (a frame's first decode and each corrective-click decode) and per object:
- focal loss (alpha 0.25, gamma 2; mean over pixels) and dice loss on the mask logits, for
  multimask outputs taken on the candidate with the lowest ``focal_weight * focal + dice_weight *
  dice`` (the candidate that best explains the ground truth; the others are free to differ);
- IoU loss: L1 between each candidate's predicted IoU and its actual IoU with the ground truth
  (all candidates with ``supervise_all_iou``, else the chosen one); or, with ``iou_loss: bce``,
  binary cross-entropy of the predicted IoU against the actual IoU as a soft label. Both are
  minimal at predicted = actual, but L1 through a saturated sigmoid has almost no gradient: a
  model trained from scratch whose IoU head first learns "IoU ~ 0" stays there, and then picks
  its multimask candidate at random at inference. BCE's gradient on the logit is
  (predicted - actual), whatever the saturation;
- object-score loss: binary cross-entropy of the object-score logit against "the object is visible".
Mask, dice and IoU losses count only where the object is present (an absent object has no mask to
learn). Losses are summed over objects, prediction steps and frames; the caller divides by the
number of objects (SAM 2 normalises by the objects of the batch, averaged over processes).
Weighted total: 20 focal + 1 dice + 1 IoU + 1 object score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from surgsam2.train.config import LossSection

LOSS_NAMES = ("focal", "dice", "iou", "object")


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Focal loss per mask, averaged over pixels: (N, M, H, W) logits, (N, 1|M, H, W) targets -> (N, M)."""
    targets = targets.to(logits.dtype).expand_as(logits)
    probabilities = logits.sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probabilities * targets + (1 - probabilities) * (1 - targets)
    loss = cross_entropy * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(2).mean(dim=-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft dice loss per mask with +1 smoothing: (N, M, H, W), (N, 1|M, H, W) -> (N, M)."""
    probabilities = logits.sigmoid().flatten(2)
    targets = targets.to(logits.dtype).expand_as(logits).flatten(2)
    numerator = 2 * (probabilities * targets).sum(dim=-1)
    denominator = probabilities.sum(dim=-1) + targets.sum(dim=-1)
    return 1 - (numerator + 1) / (denominator + 1)


def actual_ious(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of each thresholded mask (logit > 0) with the ground truth: (N, M); 0 when both are empty."""
    predicted = logits.flatten(2) > 0
    truth = targets.expand_as(logits).flatten(2) > 0
    intersection = (predicted & truth).sum(dim=-1).float()
    union = (predicted | truth).sum(dim=-1).float()
    return intersection / union.clamp(min=1.0)


def iou_l1_loss(logits: torch.Tensor, targets: torch.Tensor, predicted_ious: torch.Tensor) -> torch.Tensor:
    """|predicted IoU - actual IoU| per mask: (N, M)."""
    return F.l1_loss(predicted_ious.float(), actual_ious(logits, targets), reduction="none")


def iou_bce_loss(logits: torch.Tensor, targets: torch.Tensor, predicted_ious: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the predicted IoU (a probability) against the actual IoU per mask: (N, M).

    Written out (not F.binary_cross_entropy, which autocast refuses) with the logs clamped at
    -100 as PyTorch's BCE does.
    """
    predicted = predicted_ious.float()
    actual = actual_ious(logits, targets)
    log_p = torch.log(predicted).clamp(min=-100.0)
    log_not_p = torch.log1p(-predicted).clamp(min=-100.0)
    return -(actual * log_p + (1.0 - actual) * log_not_p)


def object_score_loss(object_score_logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of (N, 1) object-score logits against presence (N, 1) -> (N,)."""
    return F.binary_cross_entropy_with_logits(
        object_score_logits.float(), present.to(torch.float32), reduction="none"
    ).flatten()


@dataclass
class StepLosses:
    """One prediction step's losses, summed over objects (not yet normalised)."""

    focal: torch.Tensor
    dice: torch.Tensor
    iou: torch.Tensor
    object: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"focal": self.focal, "dice": self.dice, "iou": self.iou, "object": self.object}


def prediction_losses(
    mask_logits: torch.Tensor,
    predicted_ious: torch.Tensor,
    object_score_logits: torch.Tensor,
    targets: torch.Tensor,
    config: LossSection,
) -> StepLosses:
    """Losses of one prediction step for N objects.

    mask_logits (N, M, H, W) at the ground truth's resolution (M = 1 or the multimask
    candidates); predicted_ious (N, M); object_score_logits (N, 1); targets (N, H, W) bool.
    """
    mask_logits = mask_logits.float()
    target_masks = targets[:, None].to(torch.float32)
    focal = sigmoid_focal_loss(mask_logits, target_masks, config.focal_alpha, config.focal_gamma)
    dice = dice_loss(mask_logits, target_masks)
    iou_loss = iou_bce_loss if config.iou_loss == "bce" else iou_l1_loss
    iou = iou_loss(mask_logits, target_masks, predicted_ious)
    present = targets.flatten(1).any(dim=1, keepdim=True)
    if mask_logits.shape[1] > 1:
        combined = focal * config.focal_weight + dice * config.dice_weight
        best = combined.argmin(dim=1, keepdim=True)
        focal_best = focal.gather(1, best)
        dice_best = dice.gather(1, best)
        iou_used = iou.mean(dim=1, keepdim=True) if config.supervise_all_iou else iou.gather(1, best)
    else:
        focal_best, dice_best, iou_used = focal, dice, iou
    weight = present.to(torch.float32)
    return StepLosses(
        focal=(focal_best * weight).sum(),
        dice=(dice_best * weight).sum(),
        iou=(iou_used * weight).sum(),
        object=object_score_loss(object_score_logits, present).sum(),
    )


def weighted_total(losses: dict[str, torch.Tensor], config: LossSection) -> torch.Tensor:
    """focal_weight * focal + dice_weight * dice + iou_weight * iou + class_weight * object."""
    return (
        config.focal_weight * losses["focal"]
        + config.dice_weight * losses["dice"]
        + config.iou_weight * losses["iou"]
        + config.class_weight * losses["object"]
    )


__all__ = [
    "LOSS_NAMES",
    "StepLosses",
    "actual_ious",
    "dice_loss",
    "iou_bce_loss",
    "iou_l1_loss",
    "object_score_loss",
    "prediction_losses",
    "sigmoid_focal_loss",
    "weighted_total",
]
