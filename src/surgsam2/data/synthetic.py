"""Procedural synthetic surgical video with exact instrument masks (`surgsam2 synth`, the demo).

A clip is a moving endoscopic view of wet tissue (multi-scale noise in reds/pinks/yellows, vessels,
specular glints, slow camera drift/zoom) with 1-4 instruments of the seven EndoVis 2018 classes.
Each instrument pivots about a trocar point outside the image, so its shaft enters from the border;
its tip follows a smooth path, its jaws open and close, its wrist bends, and it may be retracted out
of view and re-inserted. Instruments have a fixed depth order: where they overlap, the front one is
drawn and only it owns the pixels. Nuisances (smoke/haze, motion blur, flicker, sensor noise, JPEG
artefacts) are applied after compositing; masks are the exact drawn pixels (before blur), the way
annotators label real frames.

Everything is deterministic per seed: the plan comes from one numpy Generator, and every frame's
noise from a Generator seeded by (seed, frame), so frame t does not depend on how frames are read.
The instruments' shapes and motion plan live in `synthetic_instruments`, the procedural building
blocks (tracks, noise, geometry) in `synthetic_primitives`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from surgsam2.data.classes import ENDOVIS18_CLASSES, NUM_INSTRUMENT_CLASSES
from surgsam2.data.synthetic_instruments import BAND, WRIST, Instrument, plan_instruments
from surgsam2.data.synthetic_occluders import OccluderEvent, apply_occluders, plan_occluders
from surgsam2.data.synthetic_primitives import (
    SUBPIXEL,
    SUBPIXEL_BITS,
    fixed_point,
    fractal_noise,
    periodic_noise,
    plan_stream,
    smoothstep,
    spline_track,
)
from surgsam2.data.vos import DatasetMeta, VOSWriter, staged_output_dir



MIN_SIDE, MAX_SIDE = 16, 4096  # pixels, each side of a frame
MAX_FRAMES = 100_000  # frames per clip (frame names have five digits: 00000..99999)
MAX_VIDEOS = 10_000  # clips per dataset (synth_000 .. synth_9999)
MAX_INSTRUMENTS = 8  # instruments per clip
MAX_OCCLUDERS = 64  # occluder events per clip
MAX_IN_MEMORY_BYTES = 8 << 30  # what generate_synthetic_video may hold; larger clips are streamed


def _check_count(name: str, value: object, low: int, high: int | None) -> None:
    """ValueError unless `value` is an integer in low..high (no upper bound when `high` is None)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def check_frame_size(width: object, height: object) -> None:
    """ValueError unless both sides are integers in MIN_SIDE..MAX_SIDE pixels."""
    for name, side in (("width", width), ("height", height)):
        if isinstance(side, bool) or not isinstance(side, (int, np.integer)):
            raise ValueError(f"frame {name} must be an integer number of pixels, got {side!r}")
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):  # type: ignore[operator]
        raise ValueError(
            f"frame size must be {MIN_SIDE}..{MAX_SIDE} pixels per side, got {width}x{height}"
        )


@dataclass
class SyntheticVideoConfig:
    """Everything that defines one synthetic clip; nuisance strengths are in 0..1 (0 = off)."""

    width: int = 320
    height: int = 256
    num_frames: int = 100
    min_instruments: int = 1
    max_instruments: int = 4
    class_ids: tuple[int, ...] | None = None  # fixes the instruments' classes (and their number)
    reentry_probability: float = 0.3  # per instrument: leaves the view and comes back
    late_entry_probability: float = 0.3  # per instrument but the first: enters after frame 0
    camera_motion: float = 1.0  # scale of drift / zoom / roll
    smoke: float = 0.5
    motion_blur: float = 0.5
    flicker: float = 0.5
    jpeg_artifacts: float = 0.3
    sensor_noise: float = 2.0  # standard deviation in grey levels
    specular: float = 1.0  # wet-tissue glints
    # blood / dense smoke / glare events, each hiding one instrument's head for 15-40 frames
    # (synthetic_occluders; 0 keeps the clips of every seed exactly as before)
    occluders: int = 0
    seed: int = 0

    def validate(self) -> SyntheticVideoConfig:
        """Raise a one-line ValueError naming the first bad field (before anything is allocated)."""
        check_frame_size(self.width, self.height)
        _check_count("num_frames", self.num_frames, 1, MAX_FRAMES)
        if self.class_ids is not None:
            if not self.class_ids:
                raise ValueError("class_ids must not be empty")
            bad = [c for c in self.class_ids if not 1 <= int(c) <= NUM_INSTRUMENT_CLASSES]
            if bad:
                raise ValueError(f"class_ids must be in 1..{NUM_INSTRUMENT_CLASSES}, got {bad}")
            if len(self.class_ids) > MAX_INSTRUMENTS:
                raise ValueError(f"at most {MAX_INSTRUMENTS} instruments, got {len(self.class_ids)}")
        elif not 1 <= self.min_instruments <= self.max_instruments <= MAX_INSTRUMENTS:
            raise ValueError(
                f"need 1 <= min_instruments <= max_instruments <= {MAX_INSTRUMENTS}, "
                f"got {self.min_instruments}, {self.max_instruments}"
            )
        for name in ("reentry_probability", "late_entry_probability", "smoke", "motion_blur", "flicker",
                     "jpeg_artifacts", "specular"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        for name in ("camera_motion", "sensor_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        _check_count("occluders", self.occluders, 0, MAX_OCCLUDERS)
        _check_count("seed", self.seed, 0, None)
        return self

    def without_nuisances(self) -> SyntheticVideoConfig:
        """The same clip with smoke, blur, flicker, noise and JPEG artefacts off (for checks)."""
        return replace(self, smoke=0.0, motion_blur=0.0, flicker=0.0, jpeg_artifacts=0.0, sensor_noise=0.0)


# Named generator settings, read by `surgsam2 synth --preset` and by benchmarks/memory_policies.py.
# "hard" (issue 16): 2-3 instruments that mostly leave and come back, four occluders (blood / dense
# smoke / glare) per clip, twice the camera motion and full smoke.
SYNTHETIC_PRESETS: dict[str, SyntheticVideoConfig] = {
    "default": SyntheticVideoConfig(),
    "hard": SyntheticVideoConfig(min_instruments=2, max_instruments=3, reentry_probability=0.9,
                                 late_entry_probability=0.3, camera_motion=2.0, smoke=1.0, occluders=4),
}  # fmt: skip


@dataclass
class SyntheticVideo:
    """A generated clip: frames (T,H,W,3 uint8 RGB), id maps (T,H,W uint8) and object classes."""

    frames: np.ndarray
    id_maps: np.ndarray
    object_classes: dict[int, int]  # object id -> EndoVis 2018 class id
    depth_order: list[int]  # object ids from back to front
    backgrounds: np.ndarray | None = None  # tissue only, lit, before the other nuisances
    layers: np.ndarray | None = None  # (T, N, H, W) bool: each object's mask before occlusion
    occluders: list[OccluderEvent] = field(default_factory=list)  # blood / smoke / glare events


# ---------------------------------------------------------------------------------------------
# the clip plan and renderer


class _ClipRenderer:
    """Plans one clip from its config (all randomness drawn here) and renders frames on demand.

    Each part of the plan draws from its own Generator keyed by (seed, part), and every smooth
    track draws its keys one after the other, so the scene (tissue, instruments, their classes,
    looks and paths, camera, nuisances) does not depend on the clip length; only the entry and
    exit schedule of the instruments is fitted to it.
    """

    def __init__(self, config: SyntheticVideoConfig) -> None:
        self.config = config.validate()
        self.width, self.height, self.frames = config.width, config.height, config.num_frames
        self.scale = float(min(self.width, self.height))
        self._plan_camera()
        self._plan_tissue(self._stream(2))
        self.instruments, self.depth_order = plan_instruments(
            config, config.seed, self.width, self.height, self.frames
        )
        self._plan_nuisances()
        self.occluders: list[OccluderEvent] = []
        if config.occluders > 0:  # its own stream: the rest of the plan is the same with or without
            self.occluders = plan_occluders(self._stream(9, 0), config.occluders, self.instruments,
                                            self.frames, self.width, self.height)
        ys, xs = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
        self._xs, self._ys = xs + 0.5, ys + 0.5

    def _stream(self, *key: int) -> np.random.Generator:
        """The Generator of one part of the plan (or of frame noise), keyed by (seed, *key)."""
        return plan_stream(self.config.seed, *key)

    # --- planning ---------------------------------------------------------------------------

    def _plan_camera(self) -> None:
        """Camera drift, zoom (with breathing) and roll per frame; the tissue canvas size."""
        num_frames, motion = self.frames, self.config.camera_motion
        rng = self._stream(1, 0)
        drift = spline_track(rng, num_frames, rng.uniform(25, 50), lambda k: rng.uniform(-1, 1, (k, 2)))
        self.cam_offset = drift * (0.1 * self.scale * motion)
        rng = self._stream(1, 1)
        breathing = np.sin(2 * math.pi * np.arange(num_frames) / rng.uniform(18, 40) + rng.uniform(0, 6.3))
        zoom = spline_track(rng, num_frames, rng.uniform(30, 60), lambda k: rng.uniform(-1, 1, (k, 1)))[:, 0]
        self.cam_zoom = 1.0 + motion * (0.06 * zoom + 0.012 * breathing)
        rng = self._stream(1, 2)
        roll = spline_track(rng, num_frames, rng.uniform(30, 60), lambda k: rng.uniform(-1, 1, (k, 1)))[:, 0]
        self.cam_roll = motion * 0.05 * roll
        self.canvas_w = int(math.ceil(self.width * 1.7))
        self.canvas_h = int(math.ceil(self.height * 1.7))

    def _plan_tissue(self, rng: np.random.Generator) -> None:
        """The tissue canvas (uint8 RGB, larger than the view for camera motion) and the light falloff."""
        h, w, s = self.canvas_h, self.canvas_w, self.scale
        base = fractal_noise(rng, h, w, cell=s * 0.45, octaves=4, persistence=0.55)
        mottle = fractal_noise(rng, h, w, cell=s * 0.06, octaves=3)
        fine = fractal_noise(rng, h, w, cell=max(s * 0.015, 2.0), octaves=2)
        deep = np.array([112, 22, 30], np.float32) * rng.uniform(0.85, 1.1)
        mid = np.array([176, 58, 56], np.float32) * rng.uniform(0.9, 1.08)
        light = np.array([222, 128, 118], np.float32) * rng.uniform(0.92, 1.05)
        a = smoothstep(0.2, 0.55, base)[..., None]
        b = smoothstep(0.55, 0.9, base)[..., None]
        tissue = deep * (1 - a) + mid * a
        tissue = tissue * (1 - b) + light * b
        tissue *= (0.82 + 0.3 * mottle + 0.08 * fine)[..., None]
        # fat: lobulated yellow patches
        fat_field = fractal_noise(rng, h, w, cell=s * 0.35, octaves=3)
        threshold = rng.uniform(0.55, 0.8)
        fat = smoothstep(threshold - 0.05, threshold + 0.18, fat_field + 0.12 * (mottle - 0.5))
        fat *= rng.uniform(0.55, 0.9)
        lobules = fractal_noise(rng, h, w, cell=max(s * 0.03, 3.0), octaves=2)
        fat_colour = np.array([240, 204, 118], np.float32) * (0.78 + 0.3 * lobules)[..., None]
        tissue = tissue * (1 - fat[..., None]) + fat_colour * fat[..., None]
        # vessels: wandering branching curves, dark red, slightly raised
        vessels = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(5, 12))):
            self._draw_vessel(rng, vessels, depth=0, width=rng.uniform(1.5, 4.0) * s / 256)
        vessels = cv2.GaussianBlur(vessels, (0, 0), 1.0)
        vessel_colour = np.array([92, 14, 36], np.float32)
        alpha = np.clip(vessels, 0, 1)[..., None] * rng.uniform(0.45, 0.7)
        tissue = tissue * (1 - alpha) + vessel_colour * alpha
        # relief shading from a height field
        height_field = 0.7 * base + 0.25 * mottle + 0.15 * vessels
        gx = cv2.Sobel(height_field, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(height_field, cv2.CV_32F, 0, 1, ksize=3)
        slope = gx * -0.6 + gy * -0.8
        relief = 1.0 + np.clip(0.11 * slope / max(float(slope.std()), 1e-6), -0.3, 0.3)
        tissue *= relief[..., None]
        # wet glints: small bright spots, clustered
        if self.config.specular > 0:
            # highlights sit on the small bumps whose slope faces the light, in wet clusters
            bumps = fractal_noise(rng, h, w, cell=max(s * 0.05, 3.0), octaves=2)
            cluster = fractal_noise(rng, h, w, cell=s * 0.3, octaves=2)
            facing = -0.6 * cv2.Sobel(bumps, cv2.CV_32F, 1, 0, ksize=3)
            facing -= 0.8 * cv2.Sobel(bumps, cv2.CV_32F, 0, 1, ksize=3)
            facing /= max(float(facing.std()), 1e-6)
            glint = smoothstep(2.2, 3.4, facing + 3.0 * (cluster - 0.62))
            glint = cv2.GaussianBlur(glint, (0, 0), 0.7) + 0.35 * cv2.GaussianBlur(glint, (0, 0), 2.5)
            glint = np.clip(glint, 0.0, 1.0) * self.config.specular
            tissue = tissue + glint[..., None] * (np.array([255, 250, 245], np.float32) - tissue) * 0.95
        self.tissue = np.clip(tissue + 0.5, 0, 255).astype(np.uint8)  # uint8: cheaper to warp
        # endoscope light: bright centre, dark rim, slightly off-centre per clip
        cx = self.width * (0.5 + rng.uniform(-0.08, 0.08))
        cy = self.height * (0.5 + rng.uniform(-0.08, 0.08))
        ys, xs = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
        radius2 = ((xs - cx) / (0.72 * self.width)) ** 2 + ((ys - cy) / (0.72 * self.height)) ** 2
        self.light = np.clip(1.12 - 0.75 * radius2, 0.25, 1.15).astype(np.float32)

    def _draw_vessel(self, rng: np.random.Generator, canvas: np.ndarray, depth: int, width: float,
                     start: np.ndarray | None = None, heading: float | None = None) -> None:
        """Draw one wandering vessel into `canvas` (1 = vessel) and its branches, two levels deep."""
        h, w = canvas.shape
        point = rng.uniform([0, 0], [w, h]) if start is None else start
        angle = rng.uniform(0, 2 * math.pi) if heading is None else heading
        steps = int(rng.integers(25, 70)) // (depth + 1)
        step = self.scale * 0.02
        turn = 0.0
        points = [point.copy()]
        for _ in range(steps):
            turn = 0.85 * turn + rng.normal(0, 0.045)
            angle += turn
            point = point + step * np.array([math.cos(angle), math.sin(angle)])
            points.append(point.copy())
        pts = np.round(np.array(points) * SUBPIXEL).astype(np.int32)
        cv2.polylines(canvas, [pts], False, 1.0, max(1, int(round(width))), cv2.LINE_AA, SUBPIXEL_BITS)
        if depth < 2:
            for _ in range(int(rng.integers(0, 3))):
                branch = points[int(rng.integers(0, len(points)))]
                self._draw_vessel(rng, canvas, depth + 1, max(width * 0.6, 1.0), branch,
                                  angle + rng.choice([-1, 1]) * rng.uniform(0.4, 1.2))

    def _plan_nuisances(self) -> None:
        """Per-frame flicker gain, motion blur, smoke events and haze, JPEG quality, sensor noise."""
        config, num_frames, scale = self.config, self.frames, self.scale
        # flicker: slow gain wander plus occasional one-frame spikes
        rng = self._stream(6, 0)
        wander = spline_track(rng, num_frames, rng.uniform(4, 10), lambda k: rng.uniform(-1, 1, (k, 1)))[:, 0]
        u = self._stream(6, 1).random((num_frames, 2))
        spikes = np.where(u[:, 0] < 0.04, 2.0 * u[:, 1] - 1.0, 0.0)
        self.gain = 1.0 + config.flicker * (0.06 * wander + 0.22 * spikes)
        # motion blur: camera speed plus shake events (a jolt, then two fading frames)
        speed = np.r_[0.0, np.linalg.norm(np.diff(self.cam_offset, axis=0), axis=1)]
        u = self._stream(6, 2).random((num_frames, 2))
        jolt = np.where(u[:, 0] < 1 / 40, (3.0 + 7.0 * u[:, 1]) * scale / 256, 0.0)
        shake = jolt.copy()
        shake[1:] = np.maximum(shake[1:], 0.6 * jolt[:-1])
        shake[2:] = np.maximum(shake[2:], 0.25 * jolt[:-2])
        self.blur_length = config.motion_blur * (1.5 * speed + shake)
        rng = self._stream(6, 3)
        self.blur_angle = spline_track(rng, num_frames, 8.0, lambda k: rng.uniform(0, math.pi, (k, 1)))[:, 0]
        # smoke: a base haze plus cautery puffs rising from an instrument tip
        self.smoke_events: list[tuple[int, int, int, float, np.ndarray]] = []
        u = self._stream(6, 4).random((num_frames, 5))
        for start in np.flatnonzero(u[:, 0] < (1 / 45 if config.smoke > 0 else 0.0)):
            count = len(self.instruments)
            source = self.instruments[min(int(u[start, 4] * count), count - 1)]
            tip = source.pivot + source.direction[start] * source.length[start]
            tip = np.clip(tip, [0, 0], [self.width, self.height])
            rise, decay = 2 + int(4 * u[start, 1]), 10 + int(30 * u[start, 2])
            peak = (0.35 + 0.45 * u[start, 3]) * config.smoke
            self.smoke_events.append((int(start), rise, decay, peak, tip))
        rng = self._stream(6, 5)
        self.haze = config.smoke * rng.uniform(0.0, 0.12)
        self.smoke_noise = periodic_noise(rng, self.height, self.width, cell=scale * 0.18)
        self.smoke_noise2 = periodic_noise(rng, self.height, self.width, cell=scale * 0.07)
        self.smoke_velocity = rng.uniform([-0.6, -1.6], [0.6, -0.4]) * scale / 256
        self.jpeg_quality = int(round(95 - 75 * config.jpeg_artifacts * rng.uniform(0.5, 1.0)))
        # sensor noise: crops of a small bank of Gaussian noise (cheaper than fresh noise per frame)
        self.noise_bank = None
        if config.sensor_noise > 0:
            bank = rng.standard_normal((2, self.height + 32, self.width + 32, 3), dtype=np.float32)
            self.noise_bank = bank * np.float32(config.sensor_noise)

    # --- rendering ----------------------------------------------------------------------------

    def background(self, t: int) -> np.ndarray:
        """The tissue seen by the camera at frame t (float32 HxWx3, before lighting)."""
        zoom, roll = float(self.cam_zoom[t]), float(self.cam_roll[t])
        c, s = math.cos(roll) / zoom, math.sin(roll) / zoom
        ox, oy = self.cam_offset[t]
        cx, cy = self.width / 2, self.height / 2
        kx, ky = self.canvas_w / 2 + ox, self.canvas_h / 2 + oy
        matrix = np.array([[c, -s, kx - c * cx + s * cy], [s, c, ky - s * cx - c * cy]], np.float32)
        view = cv2.warpAffine(self.tissue, matrix, (self.width, self.height),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT101)
        return view.astype(np.float32)

    def _draw_instrument(self, instrument: Instrument, t: int, image: np.ndarray, environment: np.ndarray,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
        """Paint one instrument into `image`; returns its pixel coordinates (ys, xs) or None."""
        labels = np.zeros((self.height, self.width), np.uint8)
        for label, polygon in instrument.polygons(t):
            cv2.fillPoly(labels, [fixed_point(polygon)], int(label), cv2.LINE_8, SUBPIXEL_BITS)
        x0, y0, bw, bh = cv2.boundingRect(labels)
        if bw == 0 or bh == 0:
            return None
        crop = labels[y0 : y0 + bh, x0 : x0 + bw]
        iy, ix = np.nonzero(crop)
        ys, xs = iy + y0, ix + x0
        part = crop[iy, ix]
        # shaft: analytic cylinder shading across the shaft axis
        d = instrument.direction[t]
        n = np.array([-d[1], d[0]])
        rel_x = self._xs[ys, xs] - instrument.pivot[0]
        rel_y = self._ys[ys, xs] - instrument.pivot[1]
        across = rel_x * n[0] + rel_y * n[1]
        along = rel_x * d[0] + rel_y * d[1]
        shaft_end = instrument.length[t] - instrument.head_extent
        radius = instrument.shaft_radius * (1.0 + instrument.taper * (shaft_end - along))
        u = np.clip(across / np.maximum(radius, 1e-3), -1.0, 1.0)
        shaft_shade = np.sqrt(1.0 - u * u)
        shaft_high = np.exp(-(((u - instrument.highlight_side) / 0.16) ** 2)) + 0.35 * np.exp(
            -(((u - 0.55) / 0.1) ** 2)
        )
        # head: shading from the distance to the head's outline
        head = (crop >= WRIST).astype(np.uint8)
        dist = cv2.distanceTransform(head, cv2.DIST_L2, 3)[iy, ix]
        q = np.clip(dist / instrument.radius_ref[part], 0.0, 1.0)
        head_shade = np.sqrt(1.0 - (1.0 - q) ** 2)
        is_shaft = part <= BAND
        shade = np.where(is_shaft, shaft_shade, head_shade).astype(np.float32)
        highlight = np.where(is_shaft, shaft_high, q**6).astype(np.float32)
        albedo = instrument.colours[part]
        env = environment[ys, xs]
        lit = albedo * (0.28 + 0.72 * shade)[:, None]
        lit += (instrument.reflect[part] * (0.3 + 0.7 * shade))[:, None] * env
        lit += (instrument.specular[part] * highlight * 120.0)[:, None]
        lit += rng.normal(0.0, 3.0, lit.shape[0]).astype(np.float32)[:, None]  # brushed-metal grain
        image[ys, xs] = lit
        return ys, xs

    def _smoke_alpha(self, t: int) -> np.ndarray | None:
        """The smoke opacity HxW of frame t (haze plus live cautery puffs), or None without smoke."""
        if self.config.smoke <= 0:
            return None
        shift1 = self.smoke_velocity * t
        shift2 = self.smoke_velocity * t * 1.7 + np.array([0.3, -0.2]) * t
        layer1 = np.roll(self.smoke_noise, (int(shift1[1]), int(shift1[0])), (0, 1))
        layer2 = np.roll(self.smoke_noise2, (int(shift2[1]), int(shift2[0])), (0, 1))
        texture = 0.65 * layer1 + 0.35 * layer2
        alpha = self.haze * (0.5 + texture)
        for start, rise, decay, peak, centre in self.smoke_events:
            age = t - start
            if age < 0 or age > rise + 3 * decay:
                continue
            envelope = peak * (age + 1) / rise if age < rise else peak * math.exp(-(age - rise) / decay)
            sigma = self.scale * (0.12 + 0.02 * age)
            rise_shift = self.smoke_velocity * age * 2.0
            gx = (self._xs - centre[0] - rise_shift[0]) / sigma
            gy = (self._ys - centre[1] - rise_shift[1]) / sigma
            alpha = alpha + envelope * np.exp(-0.5 * (gx * gx + gy * gy)) * (0.25 + 1.1 * texture)
        if np.isscalar(alpha):
            return None
        return np.clip(alpha, 0.0, 0.85).astype(np.float32)

    def render(self, t: int, keep_background: bool = False, keep_layers: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Frame t: (RGB uint8, id map uint8, lit background or None, (N,H,W) layers or None)."""
        cfg = self.config
        rng = self._stream(7, t)
        tissue = self.background(t)
        small_size = (max(1, self.width // 16), max(1, self.height // 16))
        small = cv2.resize(tissue, small_size, interpolation=cv2.INTER_AREA)
        environment = cv2.resize(small, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        image = tissue.copy()
        id_map = np.zeros((self.height, self.width), np.uint8)
        layers = np.zeros((len(self.instruments), self.height, self.width), bool) if keep_layers else None
        for object_id in self.depth_order:
            instrument = self.instruments[object_id - 1]
            drawn = self._draw_instrument(instrument, t, image, environment, rng)
            if drawn is None:
                continue
            id_map[drawn] = object_id
            if layers is not None:
                layers[object_id - 1][drawn] = True
        lighting = (self.light * np.float32(self.gain[t]))[..., None]
        background = None
        if keep_background:
            background = np.clip(tissue * lighting, 0, 255).astype(np.uint8)
        alpha = self._smoke_alpha(t)
        if alpha is None:
            image *= lighting
        else:  # lit image under a layer of smoke
            image *= lighting * (1.0 - alpha[..., None])
            image += np.array([214, 208, 204], np.float32) * np.float32(self.gain[t]) * alpha[..., None]
        if self.occluders:
            apply_occluders(self.occluders, self.instruments, t, image, id_map, self._xs, self._ys, float(self.gain[t]))
        blur = float(self.blur_length[t])
        if blur >= 1.5:
            size = int(math.ceil(blur)) | 1
            kernel = np.zeros((size, size), np.float32)
            half = (size - 1) / 2
            dx, dy = math.cos(self.blur_angle[t]) * blur / 2, math.sin(self.blur_angle[t]) * blur / 2
            cv2.line(kernel, (int(round((half - dx) * 16)), int(round((half - dy) * 16))),
                     (int(round((half + dx) * 16)), int(round((half + dy) * 16))), 1.0, 1, cv2.LINE_AA, 4)
            image = cv2.filter2D(image, -1, kernel / max(float(kernel.sum()), 1e-6),
                                 borderType=cv2.BORDER_REFLECT101)
        if self.noise_bank is not None:
            oy, ox = int(rng.integers(0, 33)), int(rng.integers(0, 33))
            image += self.noise_bank[int(rng.integers(0, 2)), oy : oy + self.height, ox : ox + self.width]
        frame = np.clip(image, 0, 255, out=image).astype(np.uint8)
        if cfg.jpeg_artifacts > 0 and self.jpeg_quality < 95:
            quality = int(np.clip(self.jpeg_quality + rng.integers(-5, 6), 5, 95))
            bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
            ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                frame = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return frame, id_map, background, layers


# ---------------------------------------------------------------------------------------------
# public API


def iter_synthetic_video(
    config: SyntheticVideoConfig | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (frame HxWx3 uint8 RGB, id map HxW uint8) for each frame of one synthetic clip."""
    renderer = _ClipRenderer(config or SyntheticVideoConfig())
    for t in range(renderer.frames):
        frame, id_map, _, _ = renderer.render(t)
        yield frame, id_map


def synthetic_object_classes(config: SyntheticVideoConfig) -> dict[int, int]:
    """{object id: class id} of the clip that `config` generates (cheap: plans, renders nothing)."""
    renderer = _ClipRenderer(config)
    return {inst.object_id: inst.class_id for inst in renderer.instruments}


def _check_in_memory_size(config: SyntheticVideoConfig, keep_background: bool, keep_layers: bool) -> None:
    """ValueError if the arrays of generate_synthetic_video would exceed MAX_IN_MEMORY_BYTES."""
    instruments = len(config.class_ids) if config.class_ids is not None else config.max_instruments
    bytes_per_pixel = 3 + 1 + (3 if keep_background else 0) + (instruments if keep_layers else 0)
    total = config.num_frames * config.height * config.width * bytes_per_pixel
    if total > MAX_IN_MEMORY_BYTES:
        raise ValueError(
            f"a {config.num_frames}-frame {config.width}x{config.height} clip needs {total / 2**30:.1f} GiB"
            f" in memory (limit {MAX_IN_MEMORY_BYTES / 2**30:.0f} GiB); stream it with"
            " iter_synthetic_video or write_synthetic_dataset"
        )


def generate_synthetic_video(
    config: SyntheticVideoConfig | None = None, keep_background: bool = False, keep_layers: bool = False
) -> SyntheticVideo:
    """Generate one clip as arrays; optionally also the tissue-only frames and unoccluded masks.

    The clip is held in memory, so it is refused (ValueError) above MAX_IN_MEMORY_BYTES; stream
    longer or larger clips with `iter_synthetic_video` or `write_synthetic_dataset`.
    """
    config = (config or SyntheticVideoConfig()).validate()
    _check_in_memory_size(config, keep_background, keep_layers)
    renderer = _ClipRenderer(config)
    T, H, W = renderer.frames, renderer.height, renderer.width
    frames = np.empty((T, H, W, 3), np.uint8)
    id_maps = np.empty((T, H, W), np.uint8)
    backgrounds = np.empty((T, H, W, 3), np.uint8) if keep_background else None
    layers = np.empty((T, len(renderer.instruments), H, W), bool) if keep_layers else None
    for t in range(T):
        frame, id_map, background, layer = renderer.render(t, keep_background, keep_layers)
        frames[t], id_maps[t] = frame, id_map
        if backgrounds is not None:
            backgrounds[t] = background
        if layers is not None:
            layers[t] = layer
    return SyntheticVideo(
        frames=frames,
        id_maps=id_maps,
        object_classes={inst.object_id: inst.class_id for inst in renderer.instruments},
        depth_order=list(renderer.depth_order),
        backgrounds=backgrounds,
        layers=layers,
        occluders=list(renderer.occluders),
    )


def video_seed(seed: int, index: int) -> int:
    """The seed of video `index` of a dataset generated with `seed` (stable, independent videos)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint32)[0])


@dataclass
class SyntheticDatasetSummary:
    """What write_synthetic_dataset wrote."""

    root: Path
    videos: list[str]
    frames: int
    width: int
    height: int
    objects: int
    seconds: float
    object_classes: dict[str, dict[int, int]] = field(default_factory=dict)


def write_synthetic_dataset(
    out_dir: str | Path,
    videos: int = 4,
    frames: int = 100,
    size: tuple[int, int] = (320, 256),
    seed: int = 0,
    jpeg_quality: int = 90,
    image_format: str = "jpg",
    overwrite: bool = False,
    config: SyntheticVideoConfig | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> SyntheticDatasetSummary:
    """Write `videos` clips (synth_000, ...) in the VOS layout with meta.json and prompt masks.

    `size` is (width, height); `config` supplies the other generator settings. The dataset is
    built in a hidden temp folder next to `out_dir` and renamed into place when complete; a
    non-empty `out_dir` is refused unless `overwrite`.
    """
    if len(size) != 2:
        raise ValueError(f"size must be (width, height), got {size!r}")
    check_frame_size(*size)
    width, height = int(size[0]), int(size[1])
    _check_count("videos", videos, 1, MAX_VIDEOS)
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or not 1 <= frames <= MAX_FRAMES:
        raise ValueError(f"need at least 1 frame and at most {MAX_FRAMES} frames per video, got {frames}")
    _check_count("seed", seed, 0, None)
    base = replace(config or SyntheticVideoConfig(), width=width, height=height, num_frames=int(frames))
    replace(base, seed=int(seed)).validate()
    start = time.perf_counter()
    names = [f"synth_{index:03d}" for index in range(videos)]
    meta = DatasetMeta(dataset="synthetic", classes=dict(ENDOVIS18_CLASSES))
    meta.extra["source"] = {
        "generator": "surgsam2 synth",
        "seed": int(seed),
        "videos": int(videos),
        "frames": int(frames),
        "size": [width, height],
        "image_format": image_format,
        "jpeg_quality": int(jpeg_quality),
    }
    with staged_output_dir(out_dir, overwrite=overwrite) as staging:
        writer = VOSWriter(staging, image_format=image_format, jpeg_quality=jpeg_quality)
        for index, name in enumerate(names):
            video_config = replace(base, seed=video_seed(seed, index))
            renderer = _ClipRenderer(video_config)
            stream = (renderer.render(t)[:2] for t in range(renderer.frames))
            writer.write_video(name, stream, prompts=True)
            meta.objects[name] = {inst.object_id: inst.class_id for inst in renderer.instruments}
            meta.video_extra[name] = {"seed": video_config.seed}
            if renderer.occluders:  # per-video difficulty record (synthetic_occluders.frame_difficulty)
                meta.video_extra[name]["occluders"] = [event.as_dict() for event in renderer.occluders]
            if progress is not None:
                progress(name, index + 1)
        writer.write_meta(meta)
    return SyntheticDatasetSummary(
        root=Path(out_dir),
        videos=names,
        frames=int(frames),
        width=width,
        height=height,
        objects=sum(len(v) for v in meta.objects.values()),
        seconds=time.perf_counter() - start,
        object_classes=dict(meta.objects),
    )
