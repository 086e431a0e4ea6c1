"""Segmentation metrics: DAVIS J / F / J&F, Dice, sequence statistics, EndoVis class-based IoUs.

All functions take boolean (or 0/1) masks of shape HxW, or HxW integer class maps for the
class-based metrics. They are vectorised with numpy/OpenCV and work on the bounding box of the
two masks: on a 1280x1024 pair, J takes ~0.2 ms and J&F ~1 ms for an instrument-sized object,
~6 ms for a half-frame one, ~20 ms for worst-case noise (2-core CPU). Conventions follow the
DAVIS 2017 evaluation code (exactly, on every test case) unless stated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

DEFAULT_BOUND_TH = 0.008
"""DAVIS boundary tolerance: a fraction of the image diagonal (< 1) or a pixel count (>= 1)."""

ENDOVIS_CLASS_IDS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)
"""Instrument class ids of the ISINet / EndoVis class-based metrics (0 is background)."""


# --------------------------------------------------------------------------------------------
# Per-frame metrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundaryScore:
    """Boundary precision, recall and F-measure of one predicted mask against its ground truth."""

    precision: float
    recall: float
    f: float


class WithJF:
    """J&F for a result with ``J`` and ``F`` fields: their mean (DAVIS)."""

    J: float
    F: float

    @property
    def JF(self) -> float:
        return (self.J + self.F) / 2.0


@dataclass(frozen=True)
class FrameScores(WithJF):
    """J (IoU), F (boundary F-measure) and Dice of one object in one frame."""

    J: float
    F: float
    Dice: float


def _as_bool_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """View a 2-D mask as bool; a clear error for anything that is not 2-D."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D HxW mask, got shape {array.shape}")
    return array if array.dtype == np.bool_ else array != 0


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool, with equal shapes (a clear error otherwise)."""
    pred_mask = _as_bool_mask(pred, "prediction")
    gt_mask = _as_bool_mask(gt, "ground truth")
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(
            f"prediction shape {pred_mask.shape} differs from ground-truth shape {gt_mask.shape}"
        )
    return pred_mask, gt_mask


def boundary_tolerance(shape: Sequence[int], bound_th: float = DEFAULT_BOUND_TH) -> int:
    """Tolerance radius in pixels: ``bound_th`` itself if >= 1, else ceil(bound_th * diagonal).

    The float expression is the one DAVIS evaluates, so ties at integer values round alike.
    """
    if bound_th >= 1:
        return int(bound_th)
    height, width = int(shape[0]), int(shape[1])
    return int(np.ceil(bound_th * np.linalg.norm((height, width))))


def disk_kernel(radius: int) -> np.ndarray:
    """Disk structuring element: offsets (dy, dx) with dy^2 + dx^2 <= radius^2 (as skimage's disk)."""
    offsets_y, offsets_x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return (offsets_y * offsets_y + offsets_x * offsets_x <= radius * radius).astype(np.uint8)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary map as DAVIS ``seg2bmap`` computes it (same-size output).

    A pixel is on the boundary when it differs from its east, south or south-east neighbour;
    on the last row only the east neighbour counts, on the last column only the south one,
    and the bottom-right pixel is never a boundary. So the image border itself adds no boundary
    and a full mask has none.
    """
    seg = _as_bool_mask(mask, "mask")
    bmap = np.zeros(seg.shape, dtype=bool)
    if seg.size == 0:
        return bmap
    here = seg[:-1, :-1]
    bmap[:-1, :-1] = (here != seg[:-1, 1:]) | (here != seg[1:, :-1]) | (here != seg[1:, 1:])
    bmap[-1, :-1] = seg[-1, :-1] != seg[-1, 1:]
    bmap[:-1, -1] = seg[:-1, -1] != seg[1:, -1]
    return bmap


def _union_crop(pred: np.ndarray, gt: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """Slices of the bounding box of pred | gt grown by ``margin`` (clipped); None if both empty."""
    rows = np.flatnonzero(pred.any(axis=1) | gt.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(pred.any(axis=0) | gt.any(axis=0))
    height, width = pred.shape
    return (
        slice(max(0, rows[0] - margin), min(height, rows[-1] + margin + 1)),
        slice(max(0, cols[0] - margin), min(width, cols[-1] + margin + 1)),
    )


def _disk_half_widths(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows dy = -r..r of the disk and their half-widths floor(sqrt(r^2 - dy^2)) (exact integers)."""
    offsets = np.arange(-radius, radius + 1)
    half_widths = np.array([math.isqrt(radius * radius - int(dy) * int(dy)) for dy in offsets])
    return offsets, half_widths


_POINT_CHUNK = 1 << 15


def _count_matched(source: np.ndarray, target: np.ndarray, n_source: int, radius: int) -> int:
    """How many ``source`` pixels have a ``target`` pixel within the tolerance disk.

    Equals count(source & dilate(target, disk(radius))). Boundaries are sparse, so instead of
    dilating the whole crop we test each source pixel against row prefix sums of the target, one
    disk row at a time: O(n_source * (2r + 1)) lookups. Dense boundaries (noise-like masks) fall
    back to the OpenCV dilation, which is cheaper there. Both are exact.
    """
    height, width = target.shape
    lookups = n_source * (2 * radius + 1)
    if lookups >= height * width:
        reach = cv2.dilate(target.view(np.uint8), disk_kernel(radius)).view(bool)
        return int(np.count_nonzero(source & reach))
    # prefix[y, x] = number of target pixels in padded row y left of padded column x.
    prefix = np.zeros((height + 2 * radius, width + 2 * radius + 1), dtype=np.int32)
    np.cumsum(target, axis=1, dtype=np.int32, out=prefix[radius : radius + height, radius + 1 : radius + 1 + width])
    prefix[radius : radius + height, radius + 1 + width :] = prefix[
        radius : radius + height, radius + width : radius + width + 1
    ]
    offsets, half_widths = _disk_half_widths(radius)
    ys, xs = np.divmod(np.flatnonzero(source), width)  # much faster than np.nonzero here
    matched = 0
    for start in range(0, ys.size, _POINT_CHUNK):
        rows = (ys[start : start + _POINT_CHUNK] + radius)[:, None] + offsets[None, :]
        centre = (xs[start : start + _POINT_CHUNK] + radius)[:, None]
        inside = prefix[rows, centre + half_widths + 1] - prefix[rows, centre - half_widths]
        matched += int(np.count_nonzero(inside.any(axis=1)))
    return matched


def _boundary_score_cropped(pred: np.ndarray, gt: np.ndarray, radius: int) -> BoundaryScore:
    """Boundary P/R/F of two bool masks already cropped so that every boundary is inside.

    Empty-boundary conventions are DAVIS's: both empty -> P=R=1; only the prediction empty ->
    P=1, R=0; only the ground truth empty -> P=0, R=1; F = 0 when P + R = 0.
    """
    pred_boundary = boundary_map(pred)
    gt_boundary = boundary_map(gt)
    n_pred = int(np.count_nonzero(pred_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))
    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = _count_matched(pred_boundary, gt_boundary, n_pred, radius) / n_pred
        recall = _count_matched(gt_boundary, pred_boundary, n_gt, radius) / n_gt
    total = precision + recall
    f_measure = 0.0 if total == 0 else 2.0 * precision * recall / total
    return BoundaryScore(float(precision), float(recall), float(f_measure))


def boundary_score(
    pred: np.ndarray, gt: np.ndarray, bound_th: float = DEFAULT_BOUND_TH
) -> BoundaryScore:
    """DAVIS boundary precision / recall / F of ``pred`` against ``gt`` (disk-dilated tolerance)."""
    pred_mask, gt_mask = _check_pair(pred, gt)
    radius = boundary_tolerance(pred_mask.shape, bound_th)
    # The boundary map looks one pixel ahead and the dilation `radius` pixels around, so a crop
    # grown by radius + 1 (all background outside the masks) gives exactly the full-frame result.
    crop = _union_crop(pred_mask, gt_mask, radius + 1)
    if crop is None:
        return BoundaryScore(1.0, 1.0, 1.0)
    return _boundary_score_cropped(pred_mask[crop], gt_mask[crop], radius)


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = DEFAULT_BOUND_TH) -> float:
    """DAVIS F (boundary F-measure) of one frame."""
    return boundary_score(pred, gt, bound_th).f


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """DAVIS J: |P & G| / |P | G|, and 1 when both masks are empty."""
    pred_mask, gt_mask = _check_pair(pred, gt)
    union = int(np.count_nonzero(pred_mask | gt_mask))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(pred_mask & gt_mask)) / union


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice: 2 |P & G| / (|P| + |G|), and 1 when both masks are empty."""
    pred_mask, gt_mask = _check_pair(pred, gt)
    total = int(np.count_nonzero(pred_mask)) + int(np.count_nonzero(gt_mask))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred_mask & gt_mask)) / total


def jf(pred: np.ndarray, gt: np.ndarray, bound_th: float = DEFAULT_BOUND_TH) -> float:
    """J&F of one frame: (J + F) / 2."""
    return frame_scores(pred, gt, bound_th).JF


def frame_scores(pred: np.ndarray, gt: np.ndarray, bound_th: float = DEFAULT_BOUND_TH) -> FrameScores:
    """J, F and Dice of one object in one frame, sharing one crop of the two masks."""
    pred_mask, gt_mask = _check_pair(pred, gt)
    radius = boundary_tolerance(pred_mask.shape, bound_th)
    crop = _union_crop(pred_mask, gt_mask, radius + 1)
    if crop is None:
        return FrameScores(J=1.0, F=1.0, Dice=1.0)
    pred_crop, gt_crop = pred_mask[crop], gt_mask[crop]
    intersection = int(np.count_nonzero(pred_crop & gt_crop))
    n_pred = int(np.count_nonzero(pred_crop))
    n_gt = int(np.count_nonzero(gt_crop))
    union = n_pred + n_gt - intersection  # > 0: the crop exists only if a mask is non-empty
    return FrameScores(
        J=intersection / union,
        F=_boundary_score_cropped(pred_crop, gt_crop, radius).f,
        Dice=2.0 * intersection / (n_pred + n_gt),
    )


# --------------------------------------------------------------------------------------------
# Statistics over a sequence
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceStatistics:
    """DAVIS statistics of one per-frame score series: mean, recall (> 0.5) and decay."""

    mean: float
    recall: float
    decay: float


DECAY_BINS = 4


def decay_bin_bounds(length: int, n_bins: int = DECAY_BINS) -> list[tuple[int, int]]:
    """Inclusive (first, last) frame indices of the decay bins of a series of ``length`` frames.

    DAVIS's rule with integer (not uint8) indices: edges = round(linspace(1, n, bins+1)) - 1 and
    bin i spans edges[i]..edges[i+1] inclusive, so neighbouring bins share their edge frame.
    Identical to DAVIS for n <= 256; correct beyond. Short series reuse frames: n=1 gives four
    bins of frame 0, n=2 gives (0,0),(0,1),(1,1),(1,1), n=3 gives (0,1),(1,1),(1,2),(2,2).
    """
    if length < 1:
        raise ValueError(f"decay needs at least one frame, got {length}")
    edges = np.rint(np.linspace(1, length, n_bins + 1) + 1e-10).astype(np.int64) - 1
    return [(int(edges[i]), int(edges[i + 1])) for i in range(n_bins)]


def decay(values: Sequence[float] | np.ndarray) -> float:
    """DAVIS decay: mean of the first quartile bin minus mean of the last (0 for one frame)."""
    series = np.asarray(values, dtype=np.float64)
    bins = decay_bin_bounds(series.size)
    first_start, first_stop = bins[0]
    last_start, last_stop = bins[-1]
    first = series[first_start : first_stop + 1].mean()
    last = series[last_start : last_stop + 1].mean()
    return float(first - last)


def sequence_statistics(values: Sequence[float] | np.ndarray) -> SequenceStatistics:
    """Mean, recall (fraction of frames scoring strictly above 0.5) and decay of a score series."""
    series = np.asarray(values, dtype=np.float64)
    if series.ndim != 1 or series.size == 0:
        raise ValueError(f"need a non-empty 1-D series of per-frame scores, got shape {series.shape}")
    return SequenceStatistics(
        mean=float(series.mean()),
        recall=float(np.count_nonzero(series > 0.5) / series.size),
        decay=decay(series),
    )


# --------------------------------------------------------------------------------------------
# EndoVis class-based metrics (ISINet / SurgicalSAM convention)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassImageStats:
    """Per-class pixel counts of one image, enough to compute every class-based metric later.

    Arrays are indexed like ``class_ids``; small, so they travel cheaply between processes.
    """

    class_ids: tuple[int, ...]
    intersection: np.ndarray  # int64 [C]
    union: np.ndarray  # int64 [C]
    in_pred: np.ndarray  # bool [C]: class present in the prediction
    in_gt: np.ndarray  # bool [C]: class present in the ground truth

    @property
    def pred_empty(self) -> bool:
        """No pixel of any evaluated class in the prediction."""
        return not bool(self.in_pred.any())

    @property
    def gt_empty(self) -> bool:
        """No pixel of any evaluated class in the ground truth."""
        return not bool(self.in_gt.any())


def count_uint8_values(values: np.ndarray, bins: int = 256) -> np.ndarray:
    """Counts (int64) of the values 0..bins-1 in a uint8 array; OpenCV's histogram when exact."""
    if values.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got {values.dtype}")
    if 0 < values.size < (1 << 24) and values.ndim == 2 and values.flags.c_contiguous:
        # calcHist counts in float32, exact below 2**24 pixels per image.
        counts = cv2.calcHist([values], [0], None, [bins], [0, bins]).ravel()
        return np.rint(counts).astype(np.int64)
    return np.bincount(values.ravel(), minlength=bins)[:bins].astype(np.int64)


def _compact_classes(class_map: np.ndarray, ids: tuple[int, ...]) -> np.ndarray:
    """uint8 map of each pixel's 1-based position in ``ids``; 0 for background and other values."""
    if class_map.dtype == np.uint8:
        table = np.zeros(256, dtype=np.uint8)
        for position, class_id in enumerate(ids, start=1):
            if class_id < 256:
                table[class_id] = position
        return cv2.LUT(np.ascontiguousarray(class_map), table)
    values = class_map.astype(np.int64, copy=False)
    compact = np.zeros(values.shape, dtype=np.uint8)
    for position, class_id in enumerate(ids, start=1):
        compact[values == class_id] = position
    return compact


def class_image_stats(
    pred: np.ndarray, gt: np.ndarray, class_ids: Sequence[int] = ENDOVIS_CLASS_IDS
) -> ClassImageStats:
    """Intersection, union and presence of each class in one pair of HxW class maps.

    Values that are not in ``class_ids`` (0, or an unknown id) count as background.
    """
    pred_map = np.asarray(pred)
    gt_map = np.asarray(gt)
    if pred_map.ndim != 2 or pred_map.shape != gt_map.shape:
        raise ValueError(
            f"class maps must be 2-D and of equal shape, got {pred_map.shape} and {gt_map.shape}"
        )
    ids = tuple(int(c) for c in class_ids)
    if any(c <= 0 for c in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"class ids must be distinct positive integers, got {ids}")
    if len(ids) > 15:
        raise ValueError(f"at most 15 classes are supported, got {len(ids)}")
    # Each pixel -> its class's position in ids (1-based; 0 = background), then one joint
    # histogram of (pred position, gt position) pairs: uint8 throughout, so it stays cheap.
    n = len(ids) + 1
    joint = _compact_classes(pred_map, ids) * np.uint8(n) + _compact_classes(gt_map, ids)
    joint_counts = count_uint8_values(joint, n * n).reshape(n, n)
    pred_count = joint_counts.sum(axis=1)[1:]
    gt_count = joint_counts.sum(axis=0)[1:]
    intersection = np.diagonal(joint_counts)[1:].astype(np.int64)
    return ClassImageStats(
        class_ids=ids,
        intersection=intersection,
        union=(pred_count + gt_count - intersection).astype(np.int64),
        in_pred=pred_count > 0,
        in_gt=gt_count > 0,
    )


@dataclass(frozen=True)
class ClassBasedResult:
    """EndoVis class-based IoUs in [0, 1]; None where nothing was there to average."""

    challenge_iou: float | None
    iou: float | None
    mc_iou: float | None
    per_class_iou: dict[int, float | None] = field(default_factory=dict)
    per_class_images: dict[int, int] = field(default_factory=dict)
    images: int = 0  # images that entered the IoU average (not both empty)


def _mean_or_none(values: Sequence[float]) -> float | None:
    """Mean of a list, or None for an empty one."""
    return float(np.mean(values)) if len(values) else None


def class_based_metrics(images: Iterable[ClassImageStats]) -> ClassBasedResult:
    """Challenge IoU, IoU and mc IoU over images (ISINet's evaluation, as SurgicalSAM uses it).

    Per image, over the evaluated classes:
      * both prediction and ground truth empty: the image is skipped entirely;
      * prediction empty, ground truth not: the image scores 0 for Challenge IoU and IoU, and
        every ground-truth class of it gets a 0 in its per-class list;
      * otherwise each class present in the prediction or the ground truth gets its IoU; the
        image's IoU is the mean over those classes and its Challenge IoU the mean over the ones
        present in the ground truth (an image with an empty ground truth adds nothing to it).
    Challenge IoU and IoU are means over images. mc IoU is the mean over classes of each class's
    mean per-image IoU, taken over the images where that class is in the prediction or the
    ground truth; classes never seen are left out (their per-class value is None).
    """
    challenge_per_image: list[float] = []
    iou_per_image: list[float] = []
    per_class: dict[int, list[float]] = {}
    class_ids: tuple[int, ...] | None = None
    for stats in images:
        if class_ids is None:
            class_ids = stats.class_ids
            per_class = {c: [] for c in class_ids}
        elif stats.class_ids != class_ids:
            raise ValueError(f"images were scored over different classes: {class_ids} vs {stats.class_ids}")
        if stats.pred_empty:
            if not stats.gt_empty:
                challenge_per_image.append(0.0)
                iou_per_image.append(0.0)
                for index in np.flatnonzero(stats.in_gt):
                    per_class[class_ids[index]].append(0.0)
            continue
        scored = stats.in_pred | stats.in_gt
        ious = stats.intersection[scored] / stats.union[scored]
        for class_index, value in zip(np.flatnonzero(scored), ious):
            per_class[class_ids[class_index]].append(float(value))
        iou_per_image.append(float(ious.mean()))
        in_gt_of_scored = stats.in_gt[scored]
        if in_gt_of_scored.any():
            challenge_per_image.append(float(ious[in_gt_of_scored].mean()))
    per_class_iou = {c: _mean_or_none(values) for c, values in per_class.items()}
    seen = [value for value in per_class_iou.values() if value is not None]
    return ClassBasedResult(
        challenge_iou=_mean_or_none(challenge_per_image),
        iou=_mean_or_none(iou_per_image),
        mc_iou=_mean_or_none(seen),
        per_class_iou=per_class_iou,
        per_class_images={c: len(values) for c, values in per_class.items()},
        images=len(iou_per_image),
    )


def class_based_metrics_from_maps(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]], class_ids: Sequence[int] = ENDOVIS_CLASS_IDS
) -> ClassBasedResult:
    """Class-based metrics of (prediction, ground truth) class-map pairs, one pair per image."""
    return class_based_metrics(class_image_stats(pred, gt, class_ids) for pred, gt in pairs)


__all__ = [
    "BoundaryScore",
    "ClassBasedResult",
    "ClassImageStats",
    "DEFAULT_BOUND_TH",
    "ENDOVIS_CLASS_IDS",
    "FrameScores",
    "SequenceStatistics",
    "boundary_f",
    "boundary_map",
    "boundary_score",
    "boundary_tolerance",
    "class_based_metrics",
    "class_based_metrics_from_maps",
    "class_image_stats",
    "count_uint8_values",
    "decay",
    "decay_bin_bounds",
    "dice",
    "disk_kernel",
    "frame_scores",
    "jaccard",
    "jf",
    "sequence_statistics",
]
