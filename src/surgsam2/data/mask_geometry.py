"""Points and boxes derived from a binary mask: the prompts of vos-inference's point and box
settings and the clicks simulated in training come from these, so both use the same geometry."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def checked_mask(mask: np.ndarray) -> np.ndarray:
    """A non-empty 2-D mask as bool, or ValueError saying what is wrong."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D mask (HxW), got shape {array.shape}")
    array = array.astype(bool, copy=False)
    if not array.any():
        raise ValueError("cannot derive a prompt from an empty mask")
    return array


def distance_to_boundary(mask: np.ndarray) -> np.ndarray:
    """Float32 HxW: each mask pixel's Euclidean distance to the nearest pixel outside the mask
    (the frame border counts as outside); 0 outside the mask."""
    padded = np.pad(np.asarray(mask).astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel farthest from the mask boundary (the frame border counts as one).

    Among equally far pixels the one nearest their centroid wins, then the first in row-major
    order, so the choice is deterministic (the centre of a rectangle).
    """
    distance = distance_to_boundary(checked_mask(mask))
    rows, cols = np.nonzero(distance == distance.max())
    offsets = (rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2
    best = int(np.argmin(offsets))
    return int(cols[best]), int(rows[best])


def sample_mask_points(
    mask: np.ndarray, count: int, seed: int, exclude: Sequence[tuple[int, int]] = ()
) -> list[tuple[int, int]]:
    """Up to ``count`` distinct (x, y) mask pixels drawn uniformly with ``seed``, none in ``exclude``."""
    array = checked_mask(mask)
    rows, cols = np.nonzero(array)
    keep = np.ones(rows.shape, dtype=bool)
    for x, y in exclude:
        keep &= ~((cols == x) & (rows == y))
    rows, cols = rows[keep], cols[keep]
    picks = np.random.default_rng(seed).choice(rows.size, size=min(count, rows.size), replace=False)
    return [(int(cols[i]), int(rows[i])) for i in picks]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box (x0, y0, x1, y1) of a mask, inclusive pixel indices as SAM 2's ``mask_to_box``.

    A one-pixel-wide extent is widened by one pixel (a box needs x0 < x1 and y0 < y1).
    """
    array = checked_mask(mask)
    rows = np.flatnonzero(array.any(axis=1))
    cols = np.flatnonzero(array.any(axis=0))
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)
