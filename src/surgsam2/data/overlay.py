"""Masks drawn on frames (for the overlay video writer): coloured semi-transparent masks, contours, ids.

Colours come from the DAVIS palette (`surgsam2.data.masks.davis_palette`), the same one the palette
PNG masks use, so object 1 is red in the overlay video and in the mask files alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np

from surgsam2.data.masks import MAX_OBJECT_ID, davis_palette, masks_to_id_map

MasksLike = np.ndarray | Mapping[int, np.ndarray]


def as_id_map(masks: MasksLike, shape: tuple[int, int]) -> np.ndarray:
    """An HxW uint8 id map from an id map or {object id: bool HxW mask}; checks it matches `shape`.

    Where masks of a dict overlap, later entries win (as `masks_to_id_map`, and as the mask files).
    """
    if isinstance(masks, Mapping):
        id_map = masks_to_id_map(masks, shape=shape)
    else:
        array = np.asarray(masks)
        if array.ndim != 2:
            raise ValueError(f"expected an HxW id map or a dict of HxW masks, got an array of shape {array.shape}")
        if array.dtype == np.bool_:
            id_map = array.astype(np.uint8)
        elif np.issubdtype(array.dtype, np.integer):
            if array.size and (int(array.min()) < 0 or int(array.max()) > MAX_OBJECT_ID):
                raise ValueError(f"object ids must be in 0..{MAX_OBJECT_ID}, got {int(array.min())}..{int(array.max())}")
            id_map = array.astype(np.uint8, copy=False)
        else:
            raise ValueError(f"expected an integer id map, got dtype {array.dtype}")
    if id_map.shape != tuple(shape):
        raise ValueError(f"masks are {id_map.shape[1]}x{id_map.shape[0]} but the frame is {shape[1]}x{shape[0]}")
    return id_map


def mask_boundaries(id_map: np.ndarray, thickness: int = 2) -> np.ndarray:
    """Bool HxW: object pixels within `thickness` px of a pixel with another id (inner contours).

    Drawn inside each mask, so contours never cover pixels outside the objects.
    """
    if thickness <= 0:
        return np.zeros(id_map.shape, dtype=bool)
    kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), dtype=np.uint8)
    # Pixels beyond the frame border do not count as a different id (no contour along the border).
    lowest = cv2.erode(id_map, kernel, borderType=cv2.BORDER_REPLICATE)
    highest = cv2.dilate(id_map, kernel, borderType=cv2.BORDER_REPLICATE)
    return (id_map > 0) & ((lowest != id_map) | (highest != id_map))


def _draw_label(image: np.ndarray, text: str, center: tuple[float, float], colour: tuple[int, int, int]) -> None:
    """Draw `text` centred at `center` (x, y): white on a dark outline, with a palette-coloured underline."""
    height, width = image.shape[:2]
    scale = max(0.4, min(height, width) / 640.0)
    thickness = max(1, round(scale * 1.5))
    font = cv2.FONT_HERSHEY_SIMPLEX
    (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    x = int(round(center[0] - text_w / 2))
    y = int(round(center[1] + text_h / 2))
    x = min(max(x, 0), max(width - text_w, 0))
    y = min(max(y, text_h), max(height - baseline, text_h))
    cv2.putText(image, text, (x, y), font, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(image, text, (x, y), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    underline_y = min(y + baseline, height - 1)
    cv2.line(image, (x, underline_y), (x + text_w, underline_y), colour, thickness, cv2.LINE_AA)


def overlay_masks(
    frame: np.ndarray,
    masks: MasksLike,
    alpha: float = 0.5,
    draw_ids: bool = True,
    contour_thickness: int = 2,
) -> np.ndarray:
    """Blend palette-coloured masks onto an HxWx3 uint8 RGB frame; returns a new array.

    Mask pixels become (1 - alpha) * frame + alpha * colour, with a solid inner contour of
    `contour_thickness` px; every other pixel is left unchanged, except the id labels drawn at each
    mask's centroid when `draw_ids`. `masks` is an HxW id map (0 = background) or {id: bool HxW}.
    """
    image = np.asarray(frame)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got shape {image.shape} dtype {image.dtype}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    id_map = as_id_map(masks, image.shape[:2])
    out = image.copy()
    counts = np.bincount(id_map.ravel(), minlength=256)
    present = np.flatnonzero(counts[1:]) + 1
    if present.size == 0:
        return out
    # Work only in the masks' bounding box (grown by the contour width, so contours are the same
    # as on the full frame), with whole-array OpenCV ops: far faster than boolean indexing.
    inside_full = (id_map > 0).view(np.uint8)
    x, y, w, h = cv2.boundingRect(inside_full)
    margin = max(int(contour_thickness), 0) + 1
    y0, y1 = max(y - margin, 0), min(y + h + margin, id_map.shape[0])
    x0, x1 = max(x - margin, 0), min(x + w + margin, id_map.shape[1])
    ids = id_map[y0:y1, x0:x1]
    region = out[y0:y1, x0:x1]
    palette = davis_palette()
    colour_image = cv2.LUT(cv2.merge([ids, ids, ids]), palette.reshape(256, 1, 3))
    blended = cv2.addWeighted(region, 1.0 - float(alpha), colour_image, float(alpha), 0.0)
    cv2.copyTo(blended, inside_full[y0:y1, x0:x1], region)
    boundary = mask_boundaries(ids, contour_thickness)
    cv2.copyTo(colour_image, boundary.view(np.uint8), region)
    if draw_ids:
        for object_id in present.tolist():
            moments = cv2.moments((ids == object_id).view(np.uint8), binaryImage=True)
            centroid = (x0 + moments["m10"] / moments["m00"], y0 + moments["m01"] / moments["m00"])
            colour = tuple(int(c) for c in palette[object_id])
            _draw_label(out, str(object_id), centroid, colour)  # type: ignore[arg-type]
    return out
