"""Surgical instruments of the synthetic generator: shapes per class, materials, and their motion plan.

An instrument pivots about a trocar point outside the image, so its shaft enters from the border;
its tip follows a smooth path, its jaws open and close, its wrist bends, and it may be retracted
out of view and re-inserted. `plan_instruments` draws all of it from the clip's seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from surgsam2.data.classes import NUM_INSTRUMENT_CLASSES
from surgsam2.data.synthetic_primitives import distance_to_rect, plan_stream, rotate, spline_track

# Part labels of an instrument's label canvas (0 = not drawn; in a polygon list, 0 carves a hole).
SHAFT, BAND, WRIST, JAW, ACCENT, DARK = 1, 2, 3, 4, 5, 6
NUM_PARTS = 7

# Units: `scale` is the clip's shorter image side in pixels; times are in frames.
TIP_HALF_WIDTH_RANGE = (0.05, 0.07)  # r0, the shaft's half-width at its tip end, in scales
TAPER_RANGE = (0.25, 0.5)  # perspective widening of the shaft towards the trocar, per scale of length
HIGHLIGHT_SIDE_RANGE = (-0.45, -0.15)  # the shaft's highlight stripe, across the shaft (-1..1)
ENTRY_ANGLE_JITTER = 0.22  # shift of each entry direction from even spacing, in spacings (either way)
MAX_SHAFT_LENGTH = 4.0  # the shaft inside the trocar margin is never longer than this, in scales
TROCAR_MARGIN_RANGE = (0.05, 0.4)  # trocar distance beyond the instrument's clearance, in scales
TROCAR_STEP = 2.0  # pixels the trocar moves outwards until it is clear of the image
TIP_MARGIN = 0.16  # tip-path keys keep this fraction of the width / height from the borders
TIP_SPAN = 0.68  # and lie in this fraction of the width / height
TIP_BORDER_PULL = 0.35  # largest pull of a tip key towards the entry point (1 = onto it)
TIP_KEY_SPACING_RANGE = (14, 30)  # frames between tip-path keys
TREMOR_STD = 0.004  # hand tremor: standard deviation of the tremor keys, in scales
TREMOR_KEY_SPACING = 3.0  # frames between tremor keys
RETRACTION_SAMPLES = 128  # points tested along the trocar -> tip segment for the retraction length
ENTRY_MIN_INSERTION = 0.35  # an entering instrument shows at least this fraction of its path
JAW_CLOSED_PROBABILITY = 0.35  # chance that a jaw key is "closed"
JAW_CLOSED_KEY = -0.2  # a closed key, below 0 so the clipped opening stays shut around it
JAW_OPEN_MIN = 0.25  # an open key is uniform in [JAW_OPEN_MIN, 1] of the class's largest opening
JAW_KEY_SPACING_RANGE = (6, 16)  # frames between jaw keys
WRIST_KEY_SPACING_RANGE = (10, 25)  # frames between wrist keys
WRIST_BEND_MAX = 0.5  # radians, either way
RAMP_FRAMES_RANGE = (3, 7)  # frames an insertion or retraction takes (upper bound excluded)
LATE_ENTRY_MIN_CLIP = 20  # frames; shorter clips have every instrument in view from frame 0
LATE_ENTRY_DIVISORS = (20, 3)  # a late entry starts between frame T // 20 and T // 3
OUT_OF_VIEW_MIN = 4  # frames an instrument at least stays out of view when it leaves
OUT_OF_VIEW_MAX_FRACTION = 0.2  # and at most this fraction of the clip
REENTRY_MARGIN = 6  # frames in view kept before a retraction and after the re-insertion


@dataclass
class ClassShape:
    """Head geometry of one instrument class, in units of the shaft's tip half-width r0."""

    shaft_scale: float = 1.0  # shaft half-width relative to r0
    wrist_length: float = 1.4
    wrist_radius: float = 0.85
    jaw_length: float = 3.0
    jaw_base: float = 0.45  # half-width of one jaw at its base
    jaw_tip: float = 0.15
    jaw_curve: float = 0.0  # sideways bend of the jaws at their tip, in jaw lengths
    max_open: float = math.radians(35)
    fenestrated: bool = False
    clip: bool = False
    head: str = "jaws"  # "jaws" | "probe" | "suction"
    head_length: float = 0.0  # for probe / suction heads
    head_radius: float = 0.0
    dark_shaft: bool = False


CLASS_SHAPES: dict[int, ClassShape] = {
    1: ClassShape(wrist_length=1.5, jaw_length=3.3, jaw_base=0.42, jaw_tip=0.12, jaw_curve=0.18,
                  max_open=math.radians(40)),  # Bipolar Forceps: slender, curved (Maryland-like)
    2: ClassShape(wrist_length=1.4, wrist_radius=0.9, jaw_length=3.0, jaw_base=0.58, jaw_tip=0.36,
                  max_open=math.radians(45), fenestrated=True),  # Prograsp: broad, fenestrated
    3: ClassShape(wrist_length=1.2, wrist_radius=0.9, jaw_length=2.1, jaw_base=0.62, jaw_tip=0.4,
                  max_open=math.radians(28), dark_shaft=True),  # Large Needle Driver: stubby
    4: ClassShape(wrist_length=1.5, jaw_length=2.7, jaw_base=0.46, jaw_tip=0.05, jaw_curve=0.3,
                  max_open=math.radians(35)),  # Monopolar Curved Scissors: curved sharp blades
    5: ClassShape(shaft_scale=0.45, head="probe", head_length=4.4, head_radius=1.45, dark_shaft=True),
    6: ClassShape(shaft_scale=0.6, head="suction", head_length=1.4, head_radius=0.62),
    7: ClassShape(wrist_length=1.3, wrist_radius=0.9, jaw_length=2.7, jaw_base=0.5, jaw_tip=0.42,
                  max_open=math.radians(24), clip=True),  # Clip Applier: parallel jaws and a clip
}


@dataclass
class Instrument:
    """The plan of one instrument over the whole clip (geometry per frame, materials)."""

    object_id: int
    class_id: int
    shape: ClassShape
    pivot: np.ndarray  # (2,) trocar point outside the image
    direction: np.ndarray  # (T, 2) unit shaft direction per frame
    length: np.ndarray  # (T,) distance pivot -> nominal tip per frame
    jaw_open: np.ndarray  # (T,) opening angle (radians)
    wrist_bend: np.ndarray  # (T,) wrist articulation (radians)
    r0: float  # shaft half-width at the tip end (pixels)
    taper: float  # perspective widening of the shaft towards the pivot, per pixel of length
    colours: np.ndarray  # (NUM_PARTS, 3) float32 albedo per part label
    reflect: np.ndarray  # (NUM_PARTS,) environment reflection per part
    specular: np.ndarray  # (NUM_PARTS,) highlight strength per part
    radius_ref: np.ndarray  # (NUM_PARTS,) half-width used for shading heads
    highlight_side: float = -0.3  # where the shaft's highlight stripe sits across the shaft (-1..1)

    @property
    def shaft_radius(self) -> float:
        return self.r0 * self.shape.shaft_scale

    @property
    def head_extent(self) -> float:
        """Length of the head beyond the shaft's end (wrist + jaws, or probe / suction head)."""
        s = self.shape
        return self.r0 * (s.head_length if s.head != "jaws" else s.wrist_length + s.jaw_length)

    @property
    def clearance(self) -> float:
        """Radius around the pivot->tip segment that contains the whole instrument."""
        s = self.shape
        lateral = self.r0 * max(s.wrist_radius, s.jaw_base + s.jaw_curve * s.jaw_length, s.head_radius)
        return self.head_extent + lateral + 2.0

    def polygons(self, t: int) -> list[tuple[int, np.ndarray]]:
        """(part label, float polygon) pairs of frame t, back to front; label 0 carves holes."""
        s = self.shape
        d = self.direction[t]
        n = np.array([-d[1], d[0]])
        tip = self.pivot + d * self.length[t]
        base = tip - d * self.head_extent  # where the shaft ends
        r_shaft = self.shaft_radius
        r_pivot = r_shaft * (1.0 + self.taper * (self.length[t] - self.head_extent))
        parts: list[tuple[int, np.ndarray]] = []
        p = self.pivot
        shaft = [p + n * r_pivot, base + n * r_shaft, base - n * r_shaft, p - n * r_pivot]
        parts.append((SHAFT, np.array(shaft)))
        band0, band1 = base - d * (1.6 * r_shaft), base - d * (1.1 * r_shaft)
        parts.append((BAND, np.array([band0 + n * r_shaft, band1 + n * r_shaft, band1 - n * r_shaft,
                                       band0 - n * r_shaft])))
        if s.head == "probe":
            parts.append((JAW, _capsule(base, tip, d, n, s.head_radius * self.r0)))
            face0 = base + d * (0.25 * self.head_extent)
            face1 = base + d * (0.8 * self.head_extent)
            w0, w1 = 0.15 * s.head_radius * self.r0, 0.8 * s.head_radius * self.r0
            face = [face0 + n * w0, face1 + n * w0, face1 + n * w1, face0 + n * w1]
            parts.append((ACCENT, np.array(face)))
            return parts
        if s.head == "suction":
            radius = s.head_radius * self.r0
            parts.append((JAW, _capsule(base, tip, d, n, radius)))
            groove = base + d * (0.35 * self.head_extent)
            parts.append((DARK, np.array([groove + n * radius, groove + d * 1.5 + n * radius,
                                           groove + d * 1.5 - n * radius, groove - n * radius])))
            return parts
        # jawed instruments: wrist (clevis) then two jaws about the wrist joint
        r = self.r0
        joint = base + d * (s.wrist_length * r)
        wrist_label = ACCENT if self.class_id == 4 else WRIST  # scissors: beige tip cover
        parts.append((wrist_label, _capsule(base, joint, d, n, s.wrist_radius * r)))
        jaw_dir = rotate(d, float(self.wrist_bend[t]))
        half_open = 0.5 * float(self.jaw_open[t])
        if s.clip and half_open < 0.5 * s.max_open * 0.55:
            parts.append((ACCENT, _clip_polygon(joint, jaw_dir, s, r)))
        for side in (1.0, -1.0):
            axis = rotate(jaw_dir, side * half_open)
            parts.append((JAW, _jaw_polygon(joint, axis, s, r, side)))
            if s.fenestrated:
                parts.append((0, _jaw_polygon(joint, axis, s, r, side, hole=True)))
        parts.append((DARK, _disc(joint, 0.28 * r)))  # the joint pin
        return parts


def _capsule(p0: np.ndarray, p1: np.ndarray, d: np.ndarray, n: np.ndarray, radius: float) -> np.ndarray:
    """Rectangle from p0 to p1 of half-width `radius`, rounded at p1."""
    angles = np.linspace(-math.pi / 2, math.pi / 2, 9)
    arc = p1 + radius * (np.cos(angles)[:, None] * d + np.sin(angles)[:, None] * n)
    return np.vstack([p0 - n * radius, arc, p0 + n * radius])


def _disc(centre: np.ndarray, radius: float) -> np.ndarray:
    angles = np.linspace(0, 2 * math.pi, 10, endpoint=False)
    return centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _jaw_polygon(
    joint: np.ndarray, axis: np.ndarray, s: ClassShape, r: float, side: float, hole: bool = False
) -> np.ndarray:
    """One jaw (side +1 / -1 of the closed jaw line), optionally its fenestration hole."""
    normal = np.array([-axis[1], axis[0]])
    length = s.jaw_length * r
    x = np.linspace(0.0, 1.0, 9)
    centre = s.jaw_curve * length * x**2
    half = (s.jaw_base + (s.jaw_tip - s.jaw_base) * x) * r
    if hole:
        x = np.linspace(0.3, 0.78, 5)
        centre = s.jaw_curve * length * x**2
        half = (s.jaw_base + (s.jaw_tip - s.jaw_base) * x) * r
        inner, outer = centre + side * 0.3 * half, centre + side * 0.72 * half
    else:
        inner, outer = centre, centre + side * half
    along = (x * length)[:, None] * axis
    outer_pts = joint + along + outer[:, None] * normal
    inner_pts = joint + along + inner[:, None] * normal
    return np.vstack([outer_pts, inner_pts[::-1]])


def _clip_polygon(joint: np.ndarray, axis: np.ndarray, s: ClassShape, r: float) -> np.ndarray:
    """The clip held between the jaws of a clip applier."""
    normal = np.array([-axis[1], axis[0]])
    x0, x1 = 0.45 * s.jaw_length * r, 1.12 * s.jaw_length * r
    w = 0.34 * r
    return np.array([joint + axis * x0 + normal * w, joint + axis * x1 + normal * w,
                     joint + axis * x1 - normal * w, joint + axis * x0 - normal * w])


def _materials(class_id: int, shape: ClassShape, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Albedo, reflection, highlight strength per part label for one instrument instance."""
    colours = np.zeros((NUM_PARTS, 3), np.float32)
    reflect = np.zeros(NUM_PARTS, np.float32)
    specular = np.zeros(NUM_PARTS, np.float32)
    tone = rng.uniform(0.88, 1.1)
    metal = np.array([150, 152, 158]) * tone
    dark = np.array([46, 46, 50]) * rng.uniform(0.85, 1.2)
    colours[SHAFT] = dark if shape.dark_shaft else metal
    colours[BAND] = np.array([35, 35, 38]) if not shape.dark_shaft else np.array([95, 95, 100])
    colours[WRIST] = np.array([58, 58, 62]) * rng.uniform(0.9, 1.15)
    colours[JAW] = np.array([172, 172, 176]) * tone
    colours[ACCENT] = np.array([205, 182, 135])  # scissors' tip cover
    colours[DARK] = np.array([28, 24, 24])
    if class_id == 3:
        colours[JAW] = np.array([128, 128, 134]) * tone
    if class_id == 5:  # ultrasound probe: dark body, lighter transducer face, dark cable
        colours[SHAFT] = np.array([62, 64, 70])
        colours[JAW] = np.array([78, 82, 92]) * tone
        colours[ACCENT] = np.array([150, 156, 165])
    if class_id == 6:  # suction: bright thin metal tube
        colours[SHAFT] = np.array([182, 184, 190]) * tone
        colours[JAW] = np.array([196, 196, 200]) * tone
    if class_id == 7:  # clip applier: golden clip
        colours[ACCENT] = np.array([222, 190, 92])
    reflect[[SHAFT, JAW]] = 0.35
    reflect[[BAND, WRIST, DARK]] = 0.12
    reflect[ACCENT] = 0.15
    specular[[SHAFT, JAW]] = 0.85
    specular[[BAND, WRIST, DARK]] = 0.35
    specular[ACCENT] = 0.5
    if shape.dark_shaft:
        reflect[SHAFT], specular[SHAFT] = 0.15, 0.55
    return colours, reflect, specular


# ---------------------------------------------------------------------------------------------
# planning


class InstrumentPlanSettings(Protocol):
    """The clip settings the instrument plan reads (`SyntheticVideoConfig` has them)."""

    min_instruments: int
    max_instruments: int
    class_ids: tuple[int, ...] | None
    reentry_probability: float
    late_entry_probability: float


def plan_instruments(
    settings: InstrumentPlanSettings, seed: int, width: int, height: int, num_frames: int
) -> tuple[list[Instrument], list[int]]:
    """The clip's instruments (object ids 1..n) and their depth order (object ids, back to front).

    Classes, entry directions, depth order and each instrument's size, looks and trocar come from
    one Generator, one instrument after the other; each instrument's paths from Generators of its own.
    """
    rng = plan_stream(seed, 3)
    classes = _choose_classes(settings, rng)
    angles = _entry_angles(len(classes), rng)
    depth_order = [int(i) + 1 for i in rng.permutation(len(classes))]
    scale = float(min(width, height))
    instruments: list[Instrument] = []
    for index, class_id in enumerate(classes):
        instrument = _new_instrument(index + 1, class_id, scale, num_frames, rng)
        clearance = _trocar_clearance(instrument, scale)
        border = _place_trocar(instrument, angles[index], clearance, width, height, scale, rng)
        tips = _tip_path(seed, index, border, width, height, scale, num_frames)
        reach = _reach_along_path(instrument, tips, clearance, width, height)
        schedule = plan_stream(seed, 5, index)
        insertion = plan_insertion(schedule, settings, index, num_frames, reach.entry_start)
        instrument.direction = reach.direction
        instrument.length = np.where(insertion > 0, reach.edge + insertion * reach.span, reach.retracted)
        _plan_jaws_and_wrist(instrument, seed, index, num_frames)
        instruments.append(instrument)
    return instruments, depth_order


def _choose_classes(settings: InstrumentPlanSettings, rng: np.random.Generator) -> list[int]:
    """The configured classes, or a random count of distinct classes (repeating past seven)."""
    if settings.class_ids is not None:
        return [int(c) for c in settings.class_ids]
    count = int(rng.integers(settings.min_instruments, settings.max_instruments + 1))
    pool = rng.permutation(np.arange(1, NUM_INSTRUMENT_CLASSES + 1))
    return [int(pool[i % NUM_INSTRUMENT_CLASSES]) for i in range(count)]


def _entry_angles(count: int, rng: np.random.Generator) -> np.ndarray:
    """Entry directions (radians) spread around the image, so shafts come from distinct places."""
    base_angle = rng.uniform(0, 2 * math.pi)
    jitter = rng.uniform(-ENTRY_ANGLE_JITTER, ENTRY_ANGLE_JITTER, count)
    angles = base_angle + 2 * math.pi * (np.arange(count) + jitter) / count
    return angles[rng.permutation(count)]


def _new_instrument(
    object_id: int, class_id: int, scale: float, num_frames: int, rng: np.random.Generator
) -> Instrument:
    """An instrument of `class_id` with its size and looks drawn; trocar and paths still empty."""
    shape = CLASS_SHAPES[class_id]
    r0 = scale * rng.uniform(*TIP_HALF_WIDTH_RANGE)
    colours, reflect, specular = _materials(class_id, shape, rng)
    radius_ref = np.full(NUM_PARTS, r0 * 0.5, np.float32)
    radius_ref[WRIST] = r0 * shape.wrist_radius
    radius_ref[JAW] = r0 * (shape.head_radius if shape.head != "jaws" else shape.jaw_base * 1.1)
    radius_ref[ACCENT] = r0 * 0.6
    taper = rng.uniform(*TAPER_RANGE) / scale
    highlight_side = rng.uniform(*HIGHLIGHT_SIDE_RANGE)
    empty = np.zeros(num_frames)
    return Instrument(
        object_id=object_id, class_id=class_id, shape=shape, pivot=np.zeros(2),
        direction=np.zeros((num_frames, 2)), length=empty.copy(), jaw_open=empty.copy(),
        wrist_bend=empty.copy(), r0=r0, taper=taper, colours=colours, reflect=reflect,
        specular=specular, radius_ref=radius_ref, highlight_side=highlight_side,
    )  # fmt: skip


def _trocar_clearance(instrument: Instrument, scale: float) -> float:
    """Distance from the image that keeps a retracted instrument out of view (pixels).

    Conservative: the shaft's width is taken at MAX_SHAFT_LENGTH scales from the tip.
    """
    widest_shaft = instrument.shaft_radius * (1 + instrument.taper * MAX_SHAFT_LENGTH * scale)
    return instrument.clearance + widest_shaft


def _place_trocar(
    instrument: Instrument,
    angle: float,
    clearance: float,
    width: int,
    height: int,
    scale: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Put the trocar (pivot) outside the image along `angle`; returns where that ray leaves the image."""
    centre = np.array([width / 2, height / 2])
    ray = np.array([math.cos(angle), math.sin(angle)])
    border_t = min(
        (width / 2) / abs(ray[0]) if abs(ray[0]) > 1e-6 else np.inf,
        (height / 2) / abs(ray[1]) if abs(ray[1]) > 1e-6 else np.inf,
    )
    border = centre + ray * border_t
    pivot = border + ray * (clearance + rng.uniform(*TROCAR_MARGIN_RANGE) * scale)
    while distance_to_rect(pivot, width, height) < clearance + 1:
        pivot = pivot + ray * TROCAR_STEP
    instrument.pivot = pivot
    return border


def _tip_path(
    seed: int, index: int, border: np.ndarray, width: int, height: int, scale: float, num_frames: int
) -> np.ndarray:
    """(T, 2) nominal tip positions: a smooth wander inside the view, biased towards the entry side."""
    track = plan_stream(seed, 4, index, 0)
    low = np.array([TIP_MARGIN * width, TIP_MARGIN * height])
    span = np.array([TIP_SPAN * width, TIP_SPAN * height])

    def sample_tip(count: int) -> np.ndarray:
        u = track.random((count, 3))
        free = low + u[:, :2] * span
        pull = TIP_BORDER_PULL * u[:, 2:]
        return free * (1 - pull) + border * pull

    tips = spline_track(track, num_frames, track.uniform(*TIP_KEY_SPACING_RANGE), sample_tip)
    tremor = plan_stream(seed, 4, index, 1)

    def sample_tremor(count: int) -> np.ndarray:
        return tremor.normal(0, TREMOR_STD * scale, (count, 2))

    return tips + spline_track(tremor, num_frames, TREMOR_KEY_SPACING, sample_tremor)


@dataclass
class _Reach:
    """Per-frame geometry of an instrument's path, from which its insertion length is set (pixels)."""

    direction: np.ndarray  # (T, 2) unit trocar -> tip direction
    retracted: np.ndarray  # (T,) length at which the whole instrument is out of view
    edge: np.ndarray  # (T,) length at which the nominal tip crosses the image border
    span: np.ndarray  # (T,) length from the border to the tip path
    entry_start: np.ndarray  # (T,) smallest insertion (0..1 of span) shown on an entry frame


def _reach_along_path(
    instrument: Instrument, tips: np.ndarray, clearance: float, width: int, height: int
) -> _Reach:
    """Where along each frame's trocar -> tip segment the instrument leaves view and meets the border."""
    frames = np.arange(len(tips))
    offset = tips - instrument.pivot
    inserted = np.linalg.norm(offset, axis=1)
    direction = offset / np.maximum(inserted, 1e-6)[:, None]
    last = RETRACTION_SAMPLES - 1
    samples = np.linspace(0.0, 1.0, RETRACTION_SAMPLES)[None, :, None] * inserted[:, None, None]
    along = instrument.pivot + direction[:, None, :] * samples
    # fully retracted: the trocar -> tip segment stays `clearance` away from the image
    inside = distance_to_rect(along, width, height) < clearance
    first_inside = np.where(inside.any(axis=1), inside.argmax(axis=1), last)
    retracted = samples[frames, np.maximum(first_inside - 1, 0), 0]
    crossing = distance_to_rect(along, width, height) <= 0.0
    edge = samples[frames, np.where(crossing.any(axis=1), crossing.argmax(axis=1), last), 0]
    span = np.maximum(inserted - edge, 1e-6)
    # an entering instrument shows at least its head (or ENTRY_MIN_INSERTION of its path) at once
    entry_start = np.clip(np.maximum(ENTRY_MIN_INSERTION, instrument.head_extent / span), 0.0, 1.0)
    return _Reach(direction, retracted, edge, span, entry_start)


def _plan_jaws_and_wrist(instrument: Instrument, seed: int, index: int, num_frames: int) -> None:
    """Set the jaw opening (radians; 0 for heads without jaws) and the wrist bend of every frame."""
    shape = instrument.shape
    max_open = shape.max_open if shape.head == "jaws" else 0.0
    jaws = plan_stream(seed, 4, index, 2)

    def sample_opening(count: int) -> np.ndarray:
        u = jaws.random((count, 2))
        opened = JAW_OPEN_MIN + (1 - JAW_OPEN_MIN) * u[:, 1]
        return np.where(u[:, 0] < JAW_CLOSED_PROBABILITY, JAW_CLOSED_KEY, opened)

    opening = spline_track(jaws, num_frames, jaws.uniform(*JAW_KEY_SPACING_RANGE), sample_opening)[:, 0]
    instrument.jaw_open = np.clip(opening, 0.0, 1.0) * max_open
    if shape.head == "jaws":
        wrist = plan_stream(seed, 4, index, 3)

        def sample_bend(count: int) -> np.ndarray:
            return wrist.uniform(-WRIST_BEND_MAX, WRIST_BEND_MAX, count)

        spacing = wrist.uniform(*WRIST_KEY_SPACING_RANGE)
        instrument.wrist_bend = spline_track(wrist, num_frames, spacing, sample_bend)[:, 0]


def plan_insertion(
    rng: np.random.Generator,
    settings: InstrumentPlanSettings,
    index: int,
    num_frames: int,
    entry_start: np.ndarray,
) -> np.ndarray:
    """Per-frame insertion: 0 = retracted out of view, (0, 1] = tip between the border and its path.

    Insertions ramp in from `entry_start` (so a new instrument's first frame shows a usable
    part of it); retractions ramp out to the border, then jump out of view.
    """
    visibility = np.ones(num_frames)
    ramp = int(rng.integers(*RAMP_FRAMES_RANGE))

    def ramp_in(start: int) -> None:
        stop = min(num_frames, start + ramp)
        w0 = entry_start[start:stop]
        visibility[start:stop] = w0 + (1.0 - w0) * np.arange(stop - start) / ramp

    enter = 0
    late = rng.random() < settings.late_entry_probability
    if index > 0 and late and num_frames >= LATE_ENTRY_MIN_CLIP:
        earliest, latest = (num_frames // divisor for divisor in LATE_ENTRY_DIVISORS)
        enter = int(rng.integers(max(1, earliest), max(2, latest)))
        visibility[:enter] = 0.0
        ramp_in(enter)
    if rng.random() < settings.reentry_probability:
        longest_out = max(OUT_OF_VIEW_MIN + 1, int(OUT_OF_VIEW_MAX_FRACTION * num_frames))
        out = int(rng.integers(OUT_OF_VIEW_MIN, longest_out))
        first, last = enter + ramp + REENTRY_MARGIN, num_frames - (2 * ramp + out + REENTRY_MARGIN)
        if last < first:
            out = OUT_OF_VIEW_MIN
            last = num_frames - (2 * ramp + out + REENTRY_MARGIN)
        if last >= first:
            leave = int(rng.integers(first, last + 1))
            visibility[leave : leave + ramp] = 1.0 - np.arange(ramp) / ramp
            back = leave + ramp + out
            visibility[leave + ramp : back] = 0.0
            ramp_in(back)
    return visibility
