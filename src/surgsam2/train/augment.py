"""Clip augmentation as SAM 2 / SurgSAM2 train: one geometry and colour draw for the whole clip
(horizontal flip, random affine, colour jitter, grayscale) plus an independent colour jitter per
frame. NumPy and OpenCV only (no torchvision).

Frames are square uint8 RGB arrays already at the training size (the dataset resizes first, which
is cheaper than warping full-resolution surgical frames); masks are id maps (0 background) and
follow the geometry with nearest-neighbour sampling, so ids never blend. Colour operations follow
torchvision's definitions (brightness scales, contrast blends with the mean gray level, saturation
blends with the per-pixel gray level, applied in a random order; ITU-R 601 gray weights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from surgsam2.train.config import AugmentSection

GRAY_WEIGHTS = np.array([0.2989, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class ColorJitterParams:
    """One draw of colour-jitter factors and the order they are applied in."""

    brightness: float
    contrast: float
    saturation: float
    order: tuple[int, ...]  # permutation of (0 brightness, 1 contrast, 2 saturation)


def _factor(rng: np.random.Generator, strength: float) -> float:
    """A jitter factor in [1 - strength, 1 + strength] (1 when the strength is 0)."""
    if strength <= 0:
        return 1.0
    return float(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))


def draw_color_jitter(
    rng: np.random.Generator, brightness: float, contrast: float, saturation: float
) -> ColorJitterParams:
    """Draw jitter factors (torchvision ColorJitter semantics, no hue)."""
    order = tuple(int(i) for i in rng.permutation(3))
    return ColorJitterParams(_factor(rng, brightness), _factor(rng, contrast), _factor(rng, saturation), order)


def to_gray(images: np.ndarray) -> np.ndarray:
    """(..., 3) float RGB -> (...) gray level."""
    return images @ GRAY_WEIGHTS


def apply_color_jitter(images: np.ndarray, params: ColorJitterParams) -> np.ndarray:
    """Jitter float RGB images in [0, 1] of shape (..., H, W, 3); each image's own mean for contrast."""
    for operation in params.order:
        if operation == 0 and params.brightness != 1.0:
            images = np.clip(images * params.brightness, 0.0, 1.0)
        elif operation == 1 and params.contrast != 1.0:
            mean = to_gray(images).mean(axis=(-2, -1), keepdims=True)[..., None]
            images = np.clip(params.contrast * images + (1.0 - params.contrast) * mean, 0.0, 1.0)
        elif operation == 2 and params.saturation != 1.0:
            gray = to_gray(images)[..., None]
            images = np.clip(params.saturation * images + (1.0 - params.saturation) * gray, 0.0, 1.0)
    return images


def affine_matrix(
    size: int, angle_deg: float, shear_deg: float, scale: float, translate: tuple[float, float]
) -> np.ndarray:
    """2x3 forward matrix of a rotation, x-shear and zoom about the image centre, then a shift.

    Composed as torchvision's RandomAffine does: R(angle) * S(scale) * SHx(shear).
    """
    angle, shear = math.radians(angle_deg), math.radians(shear_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    shear_x = np.array([[1.0, -math.tan(shear)], [0.0, 1.0]])
    linear = rotation @ (scale * np.eye(2)) @ shear_x
    centre = np.array([(size - 1) / 2.0, (size - 1) / 2.0])
    offset = centre + np.asarray(translate, dtype=np.float64) - linear @ centre
    return np.concatenate([linear, offset[:, None]], axis=1).astype(np.float64)


def warp_frames(frames: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Warp (T, S, S, 3) frames bilinearly (zeros outside)."""
    size = frames.shape[1]
    return np.stack(
        [
            cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=(0, 0, 0))
            for frame in frames
        ]
    )  # fmt: skip


def warp_id_maps(id_maps: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Warp (T, S, S) id maps with nearest-neighbour sampling (0 outside)."""
    size = id_maps.shape[1]
    return np.stack(
        [
            cv2.warpAffine(id_map, matrix, (size, size), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0)
            for id_map in id_maps
        ]
    )  # fmt: skip


def _draw_affine(rng: np.random.Generator, config: AugmentSection, size: int) -> np.ndarray:
    angle = float(rng.uniform(-config.degrees, config.degrees)) if config.degrees > 0 else 0.0
    shear = float(rng.uniform(-config.shear, config.shear)) if config.shear > 0 else 0.0
    low, high = config.scale
    scale = float(rng.uniform(low, high)) if high > low else float(low)
    max_shift = config.translate * size
    shift = (
        (float(rng.uniform(-max_shift, max_shift)), float(rng.uniform(-max_shift, max_shift)))
        if max_shift > 0
        else (0.0, 0.0)
    )
    return affine_matrix(size, angle, shear, scale, shift)


def _has_affine(config: AugmentSection) -> bool:
    return config.degrees > 0 or config.shear > 0 or config.translate > 0 or tuple(config.scale) != (1.0, 1.0)


def augment_clip(
    frames: np.ndarray,
    id_maps: np.ndarray,
    object_ids: Sequence[int],
    config: AugmentSection,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment a clip: (T, S, S, 3) uint8 frames, (T, S, S) uint8 id maps -> float32 frames in
    [0, 1] and the transformed id maps.

    The affine is redrawn (``config.affine_tries`` times) when it would push one of
    ``object_ids`` out of the first frame, and skipped if every draw does, as SAM 2 does.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] != frames.shape[2]:
        raise ValueError(f"augment_clip expects (T, S, S, 3) frames, got {frames.shape}")
    if id_maps.shape != frames.shape[:3]:
        raise ValueError(f"id maps {id_maps.shape} do not match frames {frames.shape}")
    size = frames.shape[1]
    if rng.random() < config.hflip_prob:
        frames = frames[:, :, ::-1]
        id_maps = id_maps[:, :, ::-1]
    frames = np.ascontiguousarray(frames)
    id_maps = np.ascontiguousarray(id_maps)

    if _has_affine(config):
        for _ in range(config.affine_tries):
            matrix = _draw_affine(rng, config, size)
            warped_first = warp_id_maps(id_maps[:1], matrix)[0]
            if all(np.any(warped_first == object_id) for object_id in object_ids):
                frames = warp_frames(frames, matrix)
                id_maps = warp_id_maps(id_maps, matrix)
                break

    images = frames.astype(np.float32) / np.float32(255.0)
    clip_jitter = draw_color_jitter(rng, config.brightness, config.contrast, config.saturation)
    images = apply_color_jitter(images, clip_jitter)
    if rng.random() < config.grayscale_prob:
        images = np.repeat(to_gray(images)[..., None], 3, axis=-1)
    jittered = []
    for image in images:
        frame_jitter = draw_color_jitter(rng, config.frame_brightness, config.frame_contrast, config.frame_saturation)
        jittered.append(apply_color_jitter(image, frame_jitter))
    return np.stack(jittered).astype(np.float32, copy=False), id_maps


__all__ = [
    "ColorJitterParams",
    "affine_matrix",
    "apply_color_jitter",
    "augment_clip",
    "draw_color_jitter",
    "to_gray",
    "warp_frames",
    "warp_id_maps",
]
