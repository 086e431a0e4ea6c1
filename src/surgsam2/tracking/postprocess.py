"""Post-processing of low-resolution mask logits (as the official predictor's, on any device)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # torch is imported by the tensor version only: the ONNX runtime shares the rule
    import torch

HOLE_FILL_SCORE = 0.1
# Labels are flat pixel indices held in float32 (max_pool2d works on floats): exact below 2**24.
MAX_EXACT_FLOAT32_INDEX = 2**24


def small_holes(background: np.ndarray, max_area: int) -> np.ndarray:
    """(B, h, w) bool: the 8-connected regions of ``background`` (B, h, w) uint8 of at most
    ``max_area`` pixels, as SAM 2 fills them (OpenCV connected components)."""
    hole = np.zeros_like(background, dtype=bool)
    for index, plane in enumerate(background):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(plane, connectivity=8)
        if count <= 1:
            continue
        small = stats[:, cv2.CC_STAT_AREA] <= max_area
        small[0] = False  # label 0 is the foreground here
        hole[index] = small[labels]
    return hole


def fill_holes_array(low_res_logits: np.ndarray, max_area: int) -> np.ndarray:
    """`fill_holes` on a numpy (B, 1, h, w) float array (the torch-free runtime's)."""
    if max_area <= 0:
        return low_res_logits
    hole = small_holes((low_res_logits <= 0)[:, 0].astype(np.uint8), max_area)
    if not hole.any():
        return low_res_logits
    return np.where(hole[:, None], np.float32(HOLE_FILL_SCORE), low_res_logits).astype(low_res_logits.dtype)


def fill_holes(low_res_logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """Turn background regions (logit <= 0) of at most ``max_area`` pixels into foreground.

    Regions are 8-connected, as in SAM 2; filled pixels get a small positive score. Runs OpenCV
    connected components on the host: (B, 1, h, w) in, same shape and device out.
    """
    import torch

    if max_area <= 0:
        return low_res_logits
    hole = small_holes((low_res_logits <= 0).squeeze(1).cpu().numpy().astype(np.uint8), max_area)
    if not hole.any():
        return low_res_logits
    hole_tensor = torch.from_numpy(hole)[:, None].to(low_res_logits.device)
    return torch.where(hole_tensor, torch.full_like(low_res_logits, HOLE_FILL_SCORE), low_res_logits)


def fill_holes_on_device(low_res_logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """`fill_holes` without the host: no sync, no data-dependent shapes, the same result exactly.

    Each background pixel starts labelled with its flat index; ``max_area - 1`` rounds of 3x3
    min-propagation through the background give every pixel the least label within that 8-neighbour
    graph distance. A class (pixels with one label) is a hole iff it has at most ``max_area`` pixels
    and is closed (no pixel of it has a background neighbour with another label). Exact: a
    component of n <= max_area pixels has diameter <= n - 1, so it becomes one closed class of its
    size; a larger one is either one class of more than max_area pixels or several classes, each
    touching another (the component is connected), so none is closed.
    """
    import torch

    if max_area <= 0:
        return low_res_logits
    batch, _, height, width = low_res_logits.shape
    if height * width >= MAX_EXACT_FLOAT32_INDEX:
        raise ValueError(f"fill_holes_on_device: {height}x{width} masks exceed float32's exact pixel indices")
    background = low_res_logits <= 0
    labels = _component_labels(background, min(max_area, height * width) - 1)
    closed = ~_touches_other_label(background, labels)
    # one bin per (image, label) plus a last, ignored bin for the foreground
    bins = batch * height * width
    offsets = torch.arange(batch, device=labels.device).view(batch, 1, 1, 1) * (height * width)
    index = torch.where(background, labels.clamp(max=height * width - 1).long() + offsets, bins).reshape(-1)
    sizes = torch.zeros(bins + 1, dtype=torch.int32, device=labels.device)
    sizes.scatter_add_(0, index, torch.ones_like(index, dtype=torch.int32))
    openings = torch.zeros(bins + 1, dtype=torch.int32, device=labels.device)
    openings.scatter_add_(0, index, (~closed).reshape(-1).int())
    small_hole = (sizes <= max_area) & (openings == 0)
    hole = background & small_hole.gather(0, index).reshape(background.shape)
    return torch.where(hole, torch.full_like(low_res_logits, HOLE_FILL_SCORE), low_res_logits)


def fill_holes_for_device(low_res_logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """`fill_holes_on_device` on a CUDA GPU (no host sync per frame), OpenCV's `fill_holes`
    elsewhere: on the CPU, where there is no sync to save, OpenCV's is the faster of the two."""
    if low_res_logits.device.type == "cuda":
        return fill_holes_on_device(low_res_logits, max_area)
    return fill_holes(low_res_logits, max_area)


def _component_labels(background: torch.Tensor, rounds: int) -> torch.Tensor:
    """(B, 1, h, w) float32: per background pixel the least flat index within ``rounds`` steps of
    8-neighbour paths through the background; +inf on the foreground."""
    import torch
    import torch.nn.functional as F

    _, _, height, width = background.shape
    flat = torch.arange(height * width, dtype=torch.float32, device=background.device).view(1, 1, height, width)
    labels = torch.where(background, flat, float("inf"))
    for _ in range(rounds):
        labels = torch.where(background, -F.max_pool2d(-labels, 3, stride=1, padding=1), float("inf"))
    return labels


def _touches_other_label(background: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w) bool: background pixels with a background 8-neighbour of another label."""
    import torch
    import torch.nn.functional as F

    least = -F.max_pool2d(-labels, 3, stride=1, padding=1)
    greatest = F.max_pool2d(torch.where(background, labels, float("-inf")), 3, stride=1, padding=1)
    return background & ((least != labels) | (greatest != labels))
