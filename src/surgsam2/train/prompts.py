"""Prompt simulation for training, as SAM 2's SAM2Train does it.

Per batch (all clips and objects of a step share the plan, so they go through the network as
one batch): with probability ``prob_points`` the initial conditioning frames get clicks (a box
with probability ``prob_box``, else 1..n positive clicks inside the object), otherwise the
ground-truth mask. With clicks, ``num_frames_to_correct`` frames (the initial ones, then random
later ones) get ``num_correction_points`` iterative corrective clicks: each is drawn from the
error between the current prediction and the ground truth (a false-negative pixel gives a
positive click, a false-positive pixel a negative one), uniformly over the error region
(``uniform``, SAM 2's training choice) or at the error pixel farthest from the error boundary
(``center``, SAM 2's evaluation choice); with probability ``prob_sample_from_gt`` a click is drawn
from the ground truth alone.

Coordinates are (x, y) pixel indices of the square model input; box corners carry SAM 2's labels
2 and 3. Batch-level choices use a NumPy generator, pixel sampling a torch generator, both seeded
by the caller: the same seed gives the same prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from surgsam2.data.mask_geometry import distance_to_boundary
from surgsam2.tracking.prompts import BOX_BOTTOM_RIGHT_LABEL, BOX_TOP_LEFT_LABEL
from surgsam2.train.config import PromptSection

POSITIVE, NEGATIVE = 1, 0


@dataclass(frozen=True)
class PromptPlan:
    """What one training step's clips are prompted with."""

    init_cond_frames: tuple[int, ...]  # frames prompted without memory (always frame 0 first)
    use_points: bool  # clicks or a box on those frames; else their ground-truth masks
    use_box: bool  # a box rather than clicks
    num_initial_points: int  # positive clicks on each initial frame (when not a box)
    correction_frames: tuple[int, ...]  # frames that get iterative corrective clicks
    num_correction_points: int
    sample_from_gt: tuple[tuple[bool, ...], ...]  # per correction frame, per click

    @property
    def conditioning_frames(self) -> frozenset[int]:
        """Frames whose output becomes a conditioning memory (prompted or corrected)."""
        return frozenset(self.init_cond_frames) | frozenset(self.correction_frames)


def plan_prompts(config: PromptSection, num_frames: int, rng: np.random.Generator) -> PromptPlan:
    """Draw a step's prompt plan (SAM2Train.prepare_prompt_inputs)."""
    use_points = bool(rng.random() < config.prob_points)
    num_init = min(config.num_init_cond_frames, num_frames)
    if config.rand_init_cond_frames and num_init > 1:
        num_init = int(rng.integers(1, num_init + 1))
    num_correct = min(config.num_frames_to_correct, num_frames)
    if use_points and config.rand_frames_to_correct and num_correct > num_init:
        num_correct = int(rng.integers(num_init, num_correct + 1))
    init_frames = [0]
    if num_init > 1:
        init_frames += sorted(int(t) for t in rng.choice(np.arange(1, num_frames), num_init - 1, replace=False))
    use_box = bool(use_points and rng.random() < config.prob_box)
    num_points = int(rng.integers(1, config.max_initial_points + 1)) if config.max_initial_points > 1 else 1

    correction: list[int] = []
    if use_points and config.num_correction_points > 0 and num_correct > 0:
        correction = init_frames[:num_correct]
        extra = num_correct - len(correction)
        others = [t for t in range(num_frames) if t not in init_frames]
        if extra > 0 and others:
            correction += sorted(int(t) for t in rng.choice(others, min(extra, len(others)), replace=False))
    from_gt = tuple(
        tuple(bool(rng.random() < config.prob_sample_from_gt) for _ in range(config.num_correction_points))
        for _ in correction
    )
    return PromptPlan(
        init_cond_frames=tuple(init_frames),
        use_points=use_points,
        use_box=use_box,
        num_initial_points=num_points,
        correction_frames=tuple(correction),
        num_correction_points=config.num_correction_points if correction else 0,
        sample_from_gt=from_gt,
    )


# ------------------------------------------------------------------------------------------
# Sampling clicks and boxes from masks
# ------------------------------------------------------------------------------------------
def _pixel_xy(flat_index: torch.Tensor, width: int) -> torch.Tensor:
    """Flat pixel indices (...) -> float (x, y) coordinates (..., 2)."""
    return torch.stack([flat_index % width, flat_index // width], dim=-1).to(torch.float32)


def sample_points_in_masks(
    masks: torch.Tensor, num_points: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_points`` distinct positive clicks uniformly inside each (N, H, W) bool mask.

    An empty mask gets negative clicks on the background instead (SAM 2's behaviour).
    Returns coords (N, P, 2) float (x, y) and labels (N, P) int32.
    """
    batch, height, width = masks.shape
    flat = masks.flatten(1)
    empty = ~flat.any(dim=1, keepdim=True)
    region = torch.where(empty, ~flat, flat)
    noise = torch.rand(flat.shape, generator=generator, device=masks.device)
    noise = noise * region + region.to(noise.dtype)  # region pixels rank above the rest
    index = noise.topk(num_points, dim=1).indices
    labels = torch.where(empty, NEGATIVE, POSITIVE).to(torch.int32).expand(batch, num_points)
    return _pixel_xy(index, width), labels.contiguous()


def mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes (N, 4) float (x0, y0, x1, y1) of (N, H, W) bool masks; empty -> whole image."""
    batch, height, width = masks.shape
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    xs = torch.arange(width, device=masks.device)
    ys = torch.arange(height, device=masks.device)
    x0 = torch.where(cols, xs, width).min(dim=1).values
    x1 = torch.where(cols, xs, -1).max(dim=1).values
    y0 = torch.where(rows, ys, height).min(dim=1).values
    y1 = torch.where(rows, ys, -1).max(dim=1).values
    box = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    whole = torch.tensor([0.0, 0.0, width - 1.0, height - 1.0], device=masks.device)
    empty = ~cols.any(dim=1, keepdim=True)
    return torch.where(empty, whole, box)


def sample_boxes(
    masks: torch.Tensor,
    noise: float = 0.1,
    noise_bound: float = 20.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy boxes of (N, H, W) bool masks as two corner clicks (SAM 2's sample_box_points).

    Each corner moves by up to min(noise * box side, noise_bound) pixels, then is clamped to the
    image. Returns coords (N, 2, 2) and labels (N, 2) = (2, 3).
    """
    batch, height, width = masks.shape
    box = mask_to_box(masks)
    if noise > 0:
        box_w = box[:, 2] - box[:, 0]
        box_h = box[:, 3] - box[:, 1]
        max_dx = torch.clamp(box_w * noise, max=noise_bound)
        max_dy = torch.clamp(box_h * noise, max=noise_bound)
        jitter = 2 * torch.rand(batch, 4, generator=generator, device=masks.device) - 1
        box = box + jitter * torch.stack([max_dx, max_dy, max_dx, max_dy], dim=1)
        bounds = torch.tensor([width - 1.0, height - 1.0, width - 1.0, height - 1.0], device=masks.device)
        box = torch.minimum(box.clamp(min=0.0), bounds)
    labels = torch.tensor([BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL], dtype=torch.int32, device=masks.device)
    return box.view(batch, 2, 2), labels.expand(batch, 2).contiguous()


def sample_error_clicks_uniform(
    gt: torch.Tensor, pred: torch.Tensor | None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per object drawn uniformly from the error region (SAM 2's
    sample_random_points_from_errors): a false-negative pixel gives a positive click, a false
    positive a negative one. Where the prediction is exactly right, a negative click on the
    background. ``pred`` None counts as an empty prediction (a click drawn from the ground truth).

    gt, pred: (N, H, W) bool. Returns coords (N, 1, 2), labels (N, 1) int32.
    """
    batch, height, width = gt.shape
    if pred is None:
        pred = torch.zeros_like(gt)
    false_pos = ~gt & pred
    false_neg = gt & ~pred
    all_correct = ~(false_pos | false_neg).flatten(1).any(dim=1)[:, None, None]
    noise = torch.rand(batch, height, width, 2, generator=generator, device=gt.device)
    noise[..., 0] *= false_pos | (all_correct & ~gt)
    noise[..., 1] *= false_neg
    index = noise.flatten(1).argmax(dim=1)
    labels = (index % 2).to(torch.int32)  # channel 1 (false negative) -> positive
    pixel = index // 2
    return _pixel_xy(pixel, width)[:, None], labels[:, None]


def _farthest_from_boundary(region: np.ndarray) -> tuple[float, tuple[int, int]]:
    """Largest distance to the region's boundary (image border included) and its (x, y)."""
    if not region.any():
        return 0.0, (0, 0)
    distance = distance_to_boundary(region)
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(distance[y, x]), (int(x), int(y))


def sample_error_clicks_center(gt: torch.Tensor, pred: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per object at the error pixel farthest from the error region's boundary (SAM 2's
    sample_one_point_from_error_center): positive in the false-negative region when its largest
    distance beats the false-positive region's, else negative. Where the prediction is exactly
    right, a negative click on the background pixel farthest from the object.

    Runs on the host (OpenCV distance transform). Returns coords (N, 1, 2), labels (N, 1) int32.
    """
    gt_host = gt.detach().cpu().numpy()
    pred_host = np.zeros_like(gt_host) if pred is None else pred.detach().cpu().numpy()
    coords, labels = [], []
    for gt_mask, pred_mask in zip(gt_host, pred_host):
        fn_distance, fn_xy = _farthest_from_boundary(gt_mask & ~pred_mask)
        fp_distance, fp_xy = _farthest_from_boundary(~gt_mask & pred_mask)
        if fn_distance == 0.0 and fp_distance == 0.0:
            _, xy = _farthest_from_boundary(~gt_mask)
            coords.append(xy)
            labels.append(NEGATIVE)
        elif fn_distance > fp_distance:
            coords.append(fn_xy)
            labels.append(POSITIVE)
        else:
            coords.append(fp_xy)
            labels.append(NEGATIVE)
    coords_tensor = torch.tensor(coords, dtype=torch.float32, device=gt.device).view(-1, 1, 2)
    labels_tensor = torch.tensor(labels, dtype=torch.int32, device=gt.device).view(-1, 1)
    return coords_tensor, labels_tensor


def sample_correction_click(
    gt: torch.Tensor,
    pred: torch.Tensor | None,
    method: str = "uniform",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per object from the error between ``pred`` and ``gt`` ((N, H, W) bool)."""
    if method == "uniform":
        return sample_error_clicks_uniform(gt, pred, generator)
    if method == "center":
        return sample_error_clicks_center(gt, pred)
    raise ValueError(f"unknown click method {method!r}; expected 'uniform' or 'center'")


def initial_prompt(
    plan: PromptPlan,
    gt: torch.Tensor,
    config: PromptSection,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clicks or box of an initial conditioning frame (plan.use_points): coords (N, P, 2),
    labels (N, P)."""
    if plan.use_box:
        return sample_boxes(gt, config.box_noise, config.box_noise_bound, generator)
    return sample_points_in_masks(gt, plan.num_initial_points, generator)


__all__ = [
    "NEGATIVE",
    "POSITIVE",
    "PromptPlan",
    "initial_prompt",
    "mask_to_box",
    "plan_prompts",
    "sample_boxes",
    "sample_correction_click",
    "sample_error_clicks_center",
    "sample_error_clicks_uniform",
    "sample_points_in_masks",
]
