"""Prompts (mask, points with labels, box) in frame pixel coordinates, validated up front."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from surgsam2.data.masks import MAX_OBJECT_ID

if TYPE_CHECKING:  # torch is imported where a tensor is made: validation stays torch-free
    import torch

# SAM 2's point labels for the two box corners.
BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL = 2, 3


@dataclass(frozen=True)
class Prompt:
    """What the user tells the tracker about one object on one frame.

    ``mask``: HxW bool (or 0/1) array at frame resolution; ``points``: [(x, y), ...] pixel
    coordinates with ``labels`` 1 (object) / 0 (background), all positive when omitted;
    ``box``: (x0, y0, x1, y1). A mask cannot be combined with points or a box.
    """

    mask: np.ndarray | torch.Tensor | None = None
    points: Sequence[Sequence[float]] | None = None
    labels: Sequence[int] | None = None
    box: Sequence[float] | None = None

    @property
    def has_clicks(self) -> bool:
        return self.points is not None or self.box is not None


@dataclass
class ModelPrompt:
    """A validated prompt converted to the model's input frame (square, ``image_size``)."""

    mask: torch.Tensor | None  # (1, 1, S, S) float 0/1
    point_coords: torch.Tensor | None  # (1, P, 2) float, model pixels
    point_labels: torch.Tensor | None  # (1, P) int32

    @property
    def num_points(self) -> int:
        return 0 if self.point_labels is None else int(self.point_labels.shape[1])


def _as_mask_array(mask: np.ndarray | torch.Tensor, obj_id: int) -> np.ndarray:
    torch_module = sys.modules.get("torch")  # a tensor exists only if torch was imported
    is_tensor = torch_module is not None and isinstance(mask, torch_module.Tensor)
    array = mask.detach().cpu().numpy() if is_tensor else np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"object {obj_id}: mask prompt must be 2-D (HxW), got shape {array.shape}")
    if array.dtype != np.bool_:
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise ValueError(f"object {obj_id}: mask prompt has unsupported dtype {array.dtype}")
        values = np.unique(array)
        if not np.all(np.isin(values, (0, 1))):
            raise ValueError(
                f"object {obj_id}: mask prompt must be boolean or 0/1, found values {values[:5].tolist()}"
            )
        array = array.astype(bool)
    return array


def validate_object_id(obj_id: object) -> None:
    """Raise ValueError unless ``obj_id`` is an integer in 1..MAX_OBJECT_ID: 0 is the background
    and 255 is the largest id a palette PNG mask (what results are written as) can store."""
    if not isinstance(obj_id, (int, np.integer)) or isinstance(obj_id, bool) or not 1 <= obj_id <= MAX_OBJECT_ID:
        raise ValueError(
            f"object id {obj_id!r} is not an integer in 1..{MAX_OBJECT_ID} "
            f"(0 is the background, {MAX_OBJECT_ID} the most a palette PNG mask stores)"
        )


def validate_prompt(prompt: Prompt, obj_id: int, frame_size: tuple[int, int]) -> None:
    """Raise ValueError naming the problem if ``prompt`` is unusable on a frame of (H, W), or
    ``obj_id`` is not in 1..MAX_OBJECT_ID (see `validate_object_id`)."""
    validate_object_id(obj_id)
    if not isinstance(prompt, Prompt):
        raise ValueError(f"object {obj_id}: expected a surgsam2.Prompt, got {type(prompt).__name__}")
    height, width = frame_size
    if prompt.mask is None and prompt.points is None and prompt.box is None:
        raise ValueError(f"object {obj_id}: empty prompt (give a mask, points or a box)")
    if prompt.mask is not None:
        if prompt.has_clicks:
            raise ValueError(f"object {obj_id}: a mask prompt cannot be combined with points or a box")
        mask = _as_mask_array(prompt.mask, obj_id)
        if mask.shape != (height, width):
            raise ValueError(
                f"object {obj_id}: mask prompt is {mask.shape[1]}x{mask.shape[0]} (WxH) "
                f"but the frame is {width}x{height}"
            )
        if not mask.any():
            raise ValueError(f"object {obj_id}: mask prompt is empty")
    if prompt.points is not None:
        points = np.asarray(prompt.points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
            raise ValueError(f"object {obj_id}: points must be a non-empty list of (x, y), got shape {points.shape}")
        if not np.all(np.isfinite(points)):
            raise ValueError(f"object {obj_id}: points must be finite numbers")
        outside = (points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0) | (points[:, 1] > height)
        if outside.any():
            x, y = points[np.argmax(outside)]
            raise ValueError(f"object {obj_id}: point ({x:g}, {y:g}) is outside the {width}x{height} frame")
        if prompt.labels is not None:
            labels = list(prompt.labels)
            if len(labels) != len(points):
                raise ValueError(f"object {obj_id}: {len(points)} points but {len(labels)} labels")
            if any(label not in (0, 1) for label in labels):
                raise ValueError(f"object {obj_id}: point labels must be 1 (object) or 0 (background), got {labels}")
    elif prompt.labels is not None:
        raise ValueError(f"object {obj_id}: labels given without points")
    if prompt.box is not None:
        box = np.asarray(prompt.box, dtype=np.float64)
        if box.shape != (4,) or not np.all(np.isfinite(box)):
            raise ValueError(f"object {obj_id}: box must be (x0, y0, x1, y1), got {prompt.box!r}")
        x0, y0, x1, y1 = box
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"object {obj_id}: box {tuple(box.tolist())} needs x0 < x1 and y0 < y1")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise ValueError(f"object {obj_id}: box {tuple(box.tolist())} is outside the {width}x{height} frame")


def validate_prompts(prompts: Mapping[int, Prompt] | None, frame_size: tuple[int, int]) -> dict[int, Prompt]:
    """Validate every prompt of a frame before any is applied (nothing is half-applied)."""
    if prompts is None:
        return {}
    if not isinstance(prompts, Mapping):
        raise ValueError(f"prompts must be a dict {{object_id: Prompt}}, got {type(prompts).__name__}")
    for obj_id, prompt in prompts.items():
        validate_prompt(prompt, obj_id, frame_size)
    return {int(obj_id): prompt for obj_id, prompt in prompts.items()}


def to_model_prompt(
    prompt: Prompt, frame_size: tuple[int, int], image_size: int, device: torch.device
) -> ModelPrompt:
    """Convert a validated prompt to model inputs, as the official video predictor does."""
    import torch
    import torch.nn.functional as F

    height, width = frame_size
    if prompt.mask is not None:
        mask = torch.from_numpy(_as_mask_array(prompt.mask, -1).astype(np.float32))[None, None].to(device)
        if (height, width) != (image_size, image_size):
            mask = F.interpolate(
                mask, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
            )
            mask = (mask >= 0.5).float()
        return ModelPrompt(mask=mask, point_coords=None, point_labels=None)

    coords, labels = prompt_point_arrays(prompt, frame_size, image_size)
    point_coords = torch.from_numpy(coords)[None].to(device)
    point_labels = torch.from_numpy(labels)[None].to(device)
    return ModelPrompt(mask=None, point_coords=point_coords, point_labels=point_labels)


def prompt_point_arrays(
    prompt: Prompt, frame_size: tuple[int, int], image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A validated prompt's points as the model reads them: (N, 2) float32 coordinates on the
    S x S input (box corners first, labelled 2 and 3, then the clicks) and (N,) int32 labels.
    Shared by the torch tracker and the torch-free ONNX runtime."""
    height, width = frame_size
    coords: list[list[float]] = []
    labels: list[int] = []
    if prompt.box is not None:
        x0, y0, x1, y1 = (float(v) for v in prompt.box)
        coords += [[x0, y0], [x1, y1]]
        labels += [BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL]
    if prompt.points is not None:
        coords += [[float(x), float(y)] for x, y in prompt.points]
        labels += [int(v) for v in prompt.labels] if prompt.labels is not None else [1] * len(prompt.points)
    scale = np.array([width, height], dtype=np.float32)
    point_coords = np.asarray(coords, dtype=np.float32) / scale * np.float32(image_size)
    return point_coords.astype(np.float32), np.asarray(labels, dtype=np.int32)


