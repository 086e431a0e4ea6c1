"""Scoring one video folder of predicted masks against its ground truth, under a VOS protocol.

Frames are read through `surgsam2.data` (one listing, one mask reader) and matched by frame
number; see `surgsam2.eval.evaluate` for the protocols and conventions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from surgsam2.data.masks import read_mask
from surgsam2.data.vos import MASK_EXTENSIONS, DatasetMeta, list_frame_files, read_meta
from surgsam2.eval.metrics import (
    DEFAULT_BOUND_TH,
    ENDOVIS_CLASS_IDS,
    FrameScores,
    class_image_stats,
    count_uint8_values,
    frame_scores,
    sequence_statistics,
)
from surgsam2.eval.results import ClassImageStats, ObjectResult, VideoEvaluation

PROTOCOLS: tuple[str, ...] = ("davis", "surgsam2")


# --------------------------------------------------------------------------------------------
# Classes of the objects, from meta.json
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassMeta:
    """Instrument class of each (video, object) and the class names: the part of meta.json
    (read and validated by `surgsam2.data.vos.read_meta`) that the class-based metrics use."""

    object_classes: dict[str, dict[int, int]]
    class_names: dict[int, str]

    @property
    def class_ids(self) -> tuple[int, ...]:
        """Classes to evaluate: those named in the meta, else EndoVis 1..7."""
        return tuple(sorted(self.class_names)) if self.class_names else ENDOVIS_CLASS_IDS


def load_class_meta(
    source: str | os.PathLike[str] | Mapping[str, Any] | DatasetMeta | None,
) -> ClassMeta | None:
    """The class mapping of a meta.json (path, loaded dict or `DatasetMeta`); None when it assigns
    no object a class. A malformed meta.json is a one-line ValueError naming it."""
    if source is None:
        return None
    if isinstance(source, DatasetMeta):
        meta = source
    elif isinstance(source, Mapping):
        meta = DatasetMeta.from_json(source, source="meta")
    else:
        meta = read_meta(source)
    object_classes = {video: dict(objects) for video, objects in meta.objects.items() if objects}
    if not object_classes:
        return None
    return ClassMeta(object_classes=object_classes, class_names=dict(meta.classes))


# --------------------------------------------------------------------------------------------
# One video
# --------------------------------------------------------------------------------------------


@dataclass
class _ScoreSeries:
    """Per-object J, F and Dice values of the scored frames of one video."""

    j: dict[int, list[float]] = field(default_factory=dict)
    f: dict[int, list[float]] = field(default_factory=dict)
    dice: dict[int, list[float]] = field(default_factory=dict)

    def add(self, object_id: int, scores: FrameScores) -> None:
        self.j.setdefault(object_id, []).append(scores.J)
        self.f.setdefault(object_id, []).append(scores.F)
        self.dice.setdefault(object_id, []).append(scores.Dice)

    def rows(self, video: str, objects: set[int]) -> list[ObjectResult]:
        """One row per object with at least one scored frame, by id."""
        rows = []
        for object_id in sorted(objects & set(self.j)):
            j_stats = sequence_statistics(self.j[object_id])
            f_stats = sequence_statistics(self.f[object_id])
            rows.append(
                ObjectResult(
                    video=video, object_id=object_id,
                    J=j_stats.mean, F=f_stats.mean, Dice=float(np.mean(self.dice[object_id])),
                    J_recall=j_stats.recall, J_decay=j_stats.decay,
                    F_recall=f_stats.recall, F_decay=f_stats.decay,
                    frames=len(self.j[object_id]),
                )
            )  # fmt: skip
        return rows


def evaluate_video(
    video: str,
    gt_video_dir: Path,
    pred_video_dir: Path | None,
    protocol: str = "surgsam2",
    object_classes: Mapping[int, int] | None = None,
    class_ids: Sequence[int] = ENDOVIS_CLASS_IDS,
    bound_th: float = DEFAULT_BOUND_TH,
    allow_no_predictions: bool = False,
) -> VideoEvaluation:
    """Score one video under ``protocol`` (``pred_video_dir`` None: every prediction is empty).

    Streams frame by frame, so memory stays at a couple of frames whatever the video length.
    ``object_classes`` (object id -> class id) turns on the class-map statistics. Scored frames
    without a prediction file count as empty and are listed in ``missing_frames``; a folder with
    no prediction for any scored frame is a ValueError unless ``allow_no_predictions``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    gt_frames = list_frame_files(gt_video_dir, MASK_EXTENSIONS)
    if not gt_frames:
        raise ValueError(f"no ground-truth PNG frames in {gt_video_dir}")
    pred_frames: dict[int, Path] = {}
    if pred_video_dir is not None:
        pred_frames = {int(p.stem): p for p in list_frame_files(pred_video_dir, MASK_EXTENSIONS)}
        if not allow_no_predictions:
            check_predictions_present(video, gt_frames, pred_frames, pred_video_dir)

    series = _ScoreSeries()
    active: set[int] = set()
    class_images: list[ClassImageStats] = []
    missing: list[str] = []
    last_index = len(gt_frames) - 1
    for index, gt_path in enumerate(gt_frames):
        gt = read_mask(gt_path)
        gt_ids = _present_ids(gt)
        prompted_here: set[int] = set()
        if protocol == "surgsam2" or index == 0:
            prompted_here = gt_ids - active
            active |= gt_ids  # davis: the first frame's objects; surgsam2: all seen so far
        if object_classes is not None:
            _check_classes(video, gt_ids, object_classes, gt_path)
        scored_objects = sorted(active - prompted_here)
        if index in (0, last_index) or not (scored_objects or object_classes is not None):
            continue
        pred_path = pred_frames.get(int(gt_path.stem))
        if pred_path is None:
            missing.append(gt_path.stem)
        pred = _read_prediction(pred_path, gt)
        pred_ids = _present_ids(pred)
        nothing = np.zeros(gt.shape, dtype=bool)
        for object_id in scored_objects:
            series.add(
                object_id,
                frame_scores(
                    pred == object_id if object_id in pred_ids else nothing,
                    gt == object_id if object_id in gt_ids else nothing,
                    bound_th,
                ),
            )
        if object_classes is not None:
            class_images.append(
                class_image_stats(_to_class_map(pred, object_classes), _to_class_map(gt, object_classes), class_ids)
            )
    return VideoEvaluation(
        video=video,
        objects=series.rows(video, active),
        unscored=sorted(active - set(series.j)),
        class_images=class_images,
        missing_frames=missing,
        prediction_dir=str(pred_video_dir) if pred_video_dir is not None else "",
    )


def check_predictions_present(
    video: str, gt_frames: Sequence[Path], pred_frames: Mapping[int, Path], pred_video_dir: Path
) -> None:
    """ValueError when no scored ground-truth frame (all but the first and last) has a prediction
    of the same frame number: a wrong folder or numbering, not a few dropped frames."""
    scored = gt_frames[1:-1]
    if not scored or any(int(path.stem) in pred_frames for path in scored):
        return
    subfolders = sorted(p.name for p in pred_video_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subfolders:
        shown = ", ".join(subfolders[:3]) + (", ..." if len(subfolders) > 3 else "")
        found = f"it holds folders ({shown}) instead of <frame>.png files"
    elif pred_frames:
        numbers = sorted(pred_frames)
        found = f"its frames are numbered {pred_frames[numbers[0]].stem}..{pred_frames[numbers[-1]].stem}"
    else:
        found = "it has no PNG frames"
    raise ValueError(
        f"{pred_video_dir}: no prediction for any scored frame of video {video!r} (ground truth"
        f" {scored[0].stem}..{scored[-1].stem}, matched by frame number); {found}"
        " (--allow-missing-videos / allow_missing_videos scores it as empty)"
    )


def _check_classes(video: str, gt_ids: set[int], object_classes: Mapping[int, int], gt_path: Path) -> None:
    """ValueError naming the ground-truth objects that the meta gives no class."""
    unknown = sorted(gt_ids - set(object_classes))
    if unknown:
        raise ValueError(f"meta gives no class for object(s) {unknown} of video {video!r} (ground truth {gt_path})")


def _present_ids(id_map: np.ndarray) -> set[int]:
    """Non-zero ids present in a uint8 id map."""
    return {int(i) for i in np.flatnonzero(count_uint8_values(id_map)) if i != 0}


def _read_prediction(path: Path | None, gt: np.ndarray) -> np.ndarray:
    """The prediction id map for a ground-truth frame: empty when missing, checked for size."""
    if path is None:
        return np.zeros_like(gt)
    pred = read_mask(path)
    if pred.shape != gt.shape:
        raise ValueError(
            f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]} (WxH) but its ground truth"
            f" is {gt.shape[1]}x{gt.shape[0]}"
        )
    return pred


def _to_class_map(id_map: np.ndarray, object_classes: Mapping[int, int]) -> np.ndarray:
    """Class map of a uint8 object-id map: each object's class, 0 for background and unclassified ids.

    Object and class ids are 1..255 (meta.json is validated so), so one 256-entry table maps them.
    """
    table = np.zeros(256, dtype=np.uint8)
    for object_id, class_id in object_classes.items():
        if 0 < object_id < 256:
            table[object_id] = class_id
    return cv2.LUT(np.ascontiguousarray(id_map), table)


# --------------------------------------------------------------------------------------------
# Many videos
# --------------------------------------------------------------------------------------------

Job = TypeVar("Job")


def run_jobs(function: Callable[[Job], VideoEvaluation], jobs: Sequence[Job], workers: int) -> list[VideoEvaluation]:
    """``function`` over ``jobs`` in order: in a process pool when ``workers`` > 1 (and > 1 job)."""
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            return list(pool.map(function, jobs))
    return [function(job) for job in jobs]
