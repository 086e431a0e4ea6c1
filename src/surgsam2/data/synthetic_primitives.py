"""Procedural building blocks of the synthetic generator: smooth tracks, noise fields, 2-D geometry.

Pure functions of their inputs and the Generator they are given, so the generator's output is
fixed by its seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

# Polygons are filled with sub-pixel precision: cv2.fillPoly / polylines with shift=SUBPIXEL_BITS
# take int32 points in units of 1/SUBPIXEL pixel.
SUBPIXEL_BITS = 4
SUBPIXEL = float(1 << SUBPIXEL_BITS)


def plan_stream(seed: int, *key: int) -> np.random.Generator:
    """The Generator of one part of a clip's plan (or of one frame's noise), keyed by (seed, *key)."""
    return np.random.default_rng([seed, *key])


def spline_track(
    rng: np.random.Generator, num_frames: int, spacing: float, sample: Callable[[int], np.ndarray]
) -> np.ndarray:
    """A smooth (T, D) track: Catmull-Rom through keys drawn every `spacing` frames."""
    spacing = max(float(spacing), 1.0)
    count = int(math.ceil(num_frames / spacing)) + 4
    keys = np.asarray(sample(count), dtype=np.float64).reshape(count, -1)
    position = np.arange(num_frames) / spacing + 1.0
    index = np.floor(position).astype(np.int64)
    u = (position - index)[:, None]
    p0, p1, p2, p3 = keys[index - 1], keys[index], keys[index + 1], keys[index + 2]
    return 0.5 * (
        2 * p1 + (p2 - p0) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2 + (3 * p1 - p0 - 3 * p2 + p3) * u**3
    )


def fractal_noise(
    rng: np.random.Generator, height: int, width: int, cell: float, octaves: int, persistence: float = 0.5
) -> np.ndarray:
    """Smooth multi-octave value noise in [0, 1], float32 HxW; `cell` is the coarsest feature size."""
    total = np.zeros((height, width), np.float32)
    amplitude, norm = 1.0, 0.0
    for _ in range(octaves):
        grid_h = max(2, int(round(height / cell)) + 2)
        grid_w = max(2, int(round(width / cell)) + 2)
        grid = rng.random((grid_h, grid_w), dtype=np.float32)
        total += amplitude * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        norm += amplitude
        amplitude *= persistence
        cell = max(cell / 2.0, 1.5)
    total /= norm
    low, high = float(total.min()), float(total.max())
    return (total - low) / max(high - low, 1e-6)


def periodic_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Tileable smooth noise in [0, 1] (white noise low-passed in Fourier space)."""
    white = rng.standard_normal((height, width)).astype(np.float32)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fx**2 + fy**2) * cell
    spectrum = np.fft.rfft2(white) * (1.0 / (1.0 + radius**2) ** 1.6)
    noise = np.fft.irfft2(spectrum, s=(height, width)).astype(np.float32)
    low, high = float(noise.min()), float(noise.max())
    return (noise - low) / max(high - low, 1e-6)


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step of `x` from 0 at `edge0` to 1 at `edge1` (smooth at both ends)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def distance_to_rect(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Euclidean distance of (..., 2) points to the image rectangle [0, W] x [0, H] (0 inside)."""
    dx = np.maximum(np.maximum(-points[..., 0], points[..., 0] - width), 0.0)
    dy = np.maximum(np.maximum(-points[..., 1], points[..., 1] - height), 0.0)
    return np.hypot(dx, dy)


def rotate(vector: np.ndarray, angle: float) -> np.ndarray:
    """A 2-vector rotated by `angle` radians (counter-clockwise in x-right, y-up axes)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * vector[0] - s * vector[1], s * vector[0] + c * vector[1]])


def fixed_point(points: np.ndarray) -> np.ndarray:
    """Float polygon -> int32 fixed-point points for cv2.fillPoly(shift=SUBPIXEL_BITS)."""
    return np.round(np.asarray(points) * SUBPIXEL).astype(np.int32).reshape(-1, 1, 2)

