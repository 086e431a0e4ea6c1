"""Post-processing of low-resolution mask logits (as the official predictor's, on any device)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # torch is imported by the tensor version only: the ONNX runtime shares the rule
    import torch

HOLE_FILL_SCORE = 0.1


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
