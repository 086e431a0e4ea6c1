"""Hard-benchmark parts of the synthetic generator: occluders over an instrument, difficulty labels.

An occluder is a stretch of frames where blood, dense smoke or specular glare covers one
instrument's head (it follows the tip): opaque in its core, so the covered pixels belong to no
instrument in the masks. `frame_difficulty` labels every (object, frame) with one kind of
difficulty, so that results can be broken down by kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from surgsam2.data.synthetic_instruments import Instrument

OCCLUDER_KINDS = ("blood", "smoke", "glare")
OCCLUDER_COLOURS = {"blood": (92, 6, 10), "smoke": (214, 208, 204), "glare": (255, 252, 248)}
OCCLUDER_FRAMES = (15, 40)  # shortest and longest stretch, in frames
OCCLUDER_RAMP = 2  # frames to fade in and out
MASK_ALPHA = 0.5  # pixels at least this opaque belong to no instrument
# One kind per (object, frame), the first that applies in this order.
DIFFICULTY_KINDS = ("before_prompt", "occluded", "absent", "reentry", "crossing", "normal")
REENTRY_WINDOW = 10  # frames after an object comes back that count as re-entry
CONTACT_PIXELS = 3  # an instrument this close to another counts as crossing


@dataclass(frozen=True)
class OccluderEvent:
    """Blood, smoke or glare over one instrument's head for frames start .. end-1."""

    object_id: int
    kind: str
    start: int
    end: int
    radius: float  # pixels

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _head_centre(instrument: Instrument, t: int) -> np.ndarray:
    """The middle of the instrument's head (wrist and jaws) on frame t, in pixels."""
    d = instrument.direction[t]
    return instrument.pivot + d * (instrument.length[t] - 0.5 * instrument.head_extent)


def plan_occluders(rng: np.random.Generator, count: int, instruments: Sequence[Instrument],
                   num_frames: int, width: int, height: int) -> list[OccluderEvent]:
    """`count` occluder events, each starting on a frame where its instrument's head is in view
    and lasting OCCLUDER_FRAMES frames (cut at the clip's end)."""
    events: list[OccluderEvent] = []
    for _ in range(count):
        instrument = instruments[int(rng.integers(0, len(instruments)))]
        duration = int(rng.integers(OCCLUDER_FRAMES[0], OCCLUDER_FRAMES[1] + 1))
        kind = OCCLUDER_KINDS[int(rng.integers(0, len(OCCLUDER_KINDS)))]
        radius = float(rng.uniform(0.9, 1.2) * (0.5 * instrument.head_extent + 1.5 * instrument.r0))
        centres = np.array([_head_centre(instrument, t) for t in range(num_frames)])
        in_view = np.flatnonzero(
            (centres[:, 0] > 0) & (centres[:, 0] < width) & (centres[:, 1] > 0) & (centres[:, 1] < height)
        )
        pick = float(rng.random())
        if in_view.size == 0:
            continue
        start = int(in_view[min(int(pick * in_view.size), in_view.size - 1)])
        events.append(OccluderEvent(instrument.object_id, kind, start, min(start + duration, num_frames), radius))
    return events


def occluder_alpha(event: OccluderEvent, instrument: Instrument, t: int, xs: np.ndarray, ys: np.ndarray
                   ) -> np.ndarray | None:
    """The event's opacity HxW on frame t (1 in the core, a soft rim), or None outside it."""
    if not event.start <= t < event.end:
        return None
    age, left = t - event.start, event.end - 1 - t
    envelope = min(1.0, (age + 1) / OCCLUDER_RAMP, (left + 1) / OCCLUDER_RAMP)
    cx, cy = _head_centre(instrument, t)
    distance = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
    alpha = np.clip((event.radius - distance) / (0.3 * event.radius), 0.0, 1.0)
    return (alpha * envelope).astype(np.float32)


def apply_occluders(events: Sequence[OccluderEvent], instruments: Sequence[Instrument], t: int,
                    image: np.ndarray, id_map: np.ndarray, xs: np.ndarray, ys: np.ndarray, gain: float) -> None:
    """Paint frame t's live occluders over `image` (float HxWx3, lit) and clear the id map under
    their opaque parts, in place."""
    for event in events:
        alpha = occluder_alpha(event, instruments[event.object_id - 1], t, xs, ys)
        if alpha is None:
            continue
        colour = np.array(OCCLUDER_COLOURS[event.kind], np.float32) * np.float32(gain)
        image *= 1.0 - alpha[..., None]
        image += colour * alpha[..., None]
        id_map[alpha >= MASK_ALPHA] = 0


def frame_difficulty(masks: Mapping[int, np.ndarray], occluders: Sequence[Mapping[str, object]] = ()
                     ) -> dict[int, list[str]]:
    """One kind of `DIFFICULTY_KINDS` per frame for every object, from its ground truth.

    ``masks``: object id -> (T, H, W) bool ground truth; ``occluders``: `OccluderEvent.as_dict`
    records (as meta.json stores them). before_prompt: before the object's first appearance;
    occluded: an occluder covers it; absent: not in view (after its first appearance); reentry:
    the first REENTRY_WINDOW frames after it comes back; crossing: within CONTACT_PIXELS of
    another instrument; normal: none of these.
    """
    kernel = np.ones((2 * CONTACT_PIXELS + 1, 2 * CONTACT_PIXELS + 1), np.uint8)
    present = {obj_id: m.reshape(m.shape[0], -1).any(axis=1) for obj_id, m in masks.items()}
    labels: dict[int, list[str]] = {}
    for obj_id, mask in masks.items():
        covered = set()
        for event in occluders:
            if int(event["object_id"]) == obj_id:  # type: ignore[call-overload]
                covered.update(range(int(event["start"]), int(event["end"])))  # type: ignore[call-overload]
        seen = np.flatnonzero(present[obj_id])
        first = int(seen[0]) if seen.size else mask.shape[0]
        kinds: list[str] = []
        last_absent = -1
        for t in range(mask.shape[0]):
            if not present[obj_id][t] and t >= first:
                last_absent = t
            if t < first:
                kinds.append("before_prompt")
            elif t in covered:
                kinds.append("occluded")
            elif not present[obj_id][t]:
                kinds.append("absent")
            elif last_absent >= 0 and t - last_absent <= REENTRY_WINDOW:
                kinds.append("reentry")
            elif _touches_another(masks, obj_id, t, kernel):
                kinds.append("crossing")
            else:
                kinds.append("normal")
        labels[obj_id] = kinds
    return labels


def _touches_another(masks: Mapping[int, np.ndarray], obj_id: int, t: int, kernel: np.ndarray) -> bool:
    """Whether object obj_id's mask on frame t is within CONTACT_PIXELS of another object's."""
    grown = cv2.dilate(masks[obj_id][t].astype(np.uint8), kernel) > 0
    return any(bool((grown & other[t]).any()) for other_id, other in masks.items() if other_id != obj_id)
