"""Evaluate a folder of predicted masks against a ground-truth folder (VOS layout).

Both folders hold ``<dir>/<video>/<frame>.png`` palette PNGs (pixel value = object id, 0 is
background); frames are sorted numerically and a prediction frame is matched to the ground-truth
frame of the same number. Two protocols:

* ``davis``: the objects of a video are the ids present in its first ground-truth frame; every
  frame except the first and the last is scored (DAVIS 2017 semi-supervised).
* ``surgsam2`` (Surgical SAM 2's reported numbers): every object of the ground truth is scored
  on the frames after its first appearance (the frame it is prompted on is not scored, as in
  Surgical SAM 2's benchmark, which reads each object's masks from the frame after its prompt);
  the first and last frames of a video are never scored.

Per (video, object): mean J, F, Dice over its scored frames, J&F = (J + F) / 2, and the DAVIS
recall / decay of J and F. The summary is the mean over all (video, object) pairs, for both
protocols (so summary JF = (summary J + summary F) / 2, as DAVIS's J&F-Mean). Values are fractions
in [0, 1] everywhere in the library and the JSON/CSV (decay lies in [-1, 1]); only the printed
table shows them x100. Objects with no scored frame (e.g. one that first appears in the last
frame) are left out of the results and listed in ``EvaluationResult.unscored``.

Missing prediction frames count as empty predictions. A missing prediction video is an error
that names it, unless ``allow_missing_videos`` (then the whole video counts as empty). A
prediction frame whose size differs from its ground truth is an error naming the file.

With a meta (``{"videos": {v: {"objects": {id: {"class_id": c}}}}, "classes": {c: name}}``) the
EndoVis class-based metrics (Challenge IoU, IoU, mc IoU) are computed too, on class maps built
from the object maps, over the same frames as the protocol scores (all but the first and last of
each video). Prediction ids without a class in the meta count as background; a ground-truth object
without a class is an error.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from surgsam2.eval.metrics import (
    DEFAULT_BOUND_TH,
    ENDOVIS_CLASS_IDS,
    ClassBasedResult,
    ClassImageStats,
    class_based_metrics,
    class_image_stats,
    count_uint8_values,
    frame_scores,
    sequence_statistics,
)

PROTOCOLS: tuple[str, ...] = ("davis", "surgsam2")

OBJECT_FIELDS: tuple[str, ...] = (
    "video", "object", "J", "F", "JF", "Dice",
    "J_recall", "J_decay", "F_recall", "F_decay", "frames",
)  # fmt: skip
"""Keys of one per-object row, in the JSON and as the CSV header."""


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectResult:
    """Scores of one (video, object) pair over its scored frames, as fractions."""

    video: str
    object_id: int
    J: float
    F: float
    Dice: float
    J_recall: float
    J_decay: float
    F_recall: float
    F_decay: float
    frames: int

    @property
    def JF(self) -> float:
        """J&F of this object: (mean J + mean F) / 2."""
        return (self.J + self.F) / 2.0

    def to_dict(self) -> dict[str, Any]:
        """One row with the keys of ``OBJECT_FIELDS``."""
        return {
            "video": self.video, "object": self.object_id,
            "J": self.J, "F": self.F, "JF": self.JF, "Dice": self.Dice,
            "J_recall": self.J_recall, "J_decay": self.J_decay,
            "F_recall": self.F_recall, "F_decay": self.F_decay,
            "frames": self.frames,
        }  # fmt: skip


@dataclass(frozen=True)
class Summary:
    """Mean over all scored (video, object) pairs, as fractions."""

    J: float
    F: float
    JF: float
    Dice: float

    def to_dict(self) -> dict[str, float]:
        """The JSON ``summary`` object."""
        return {"J": self.J, "F": self.F, "JF": self.JF, "Dice": self.Dice}


@dataclass(frozen=True)
class VideoEvaluation:
    """What one video contributes: its object rows, unscored objects and class-map statistics."""

    video: str
    objects: list[ObjectResult]
    unscored: list[int]
    class_images: list[ClassImageStats]


@dataclass(frozen=True)
class EvaluationResult:
    """Everything one evaluation run produced; ``to_json_dict`` is the file format."""

    protocol: str
    per_object: list[ObjectResult]
    summary: Summary
    class_based: ClassBasedResult | None = None
    class_names: dict[int, str] = field(default_factory=dict)
    unscored: list[tuple[str, int]] = field(default_factory=list)
    videos: int = 0

    def to_json_dict(self) -> dict[str, Any]:
        """``{"protocol", "per_object", "summary"}`` plus ``"class_based"`` when classes were given."""
        document: dict[str, Any] = {
            "protocol": self.protocol,
            "per_object": [row.to_dict() for row in self.per_object],
            "summary": self.summary.to_dict(),
        }
        if self.class_based is not None:
            document["class_based"] = _class_based_to_dict(self.class_based, self.class_names)
        return document

    def format_table(self) -> str:
        """A readable table of the per-object rows and the summary, scores x100."""
        return format_table(self)


def _class_based_to_dict(result: ClassBasedResult, names: Mapping[int, str]) -> dict[str, Any]:
    """The JSON ``class_based`` object (fractions; null where nothing was there to average)."""
    return {
        "challenge_IoU": result.challenge_iou,
        "IoU": result.iou,
        "mc_IoU": result.mc_iou,
        "images": result.images,
        "per_class": [
            {
                "class_id": class_id,
                "name": names.get(class_id, str(class_id)),
                "IoU": value,
                "images": result.per_class_images.get(class_id, 0),
            }
            for class_id, value in result.per_class_iou.items()
        ],
    }


# --------------------------------------------------------------------------------------------
# Meta (object id -> instrument class)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassMeta:
    """Instrument class of each (video, object) and the class names, from a dataset's meta.json."""

    object_classes: dict[str, dict[int, int]]
    class_names: dict[int, str]

    @property
    def class_ids(self) -> tuple[int, ...]:
        """Classes to evaluate: those named in the meta, else EndoVis 1..7."""
        return tuple(sorted(self.class_names)) if self.class_names else ENDOVIS_CLASS_IDS


def load_class_meta(source: str | os.PathLike[str] | Mapping[str, Any] | None) -> ClassMeta | None:
    """Parse a meta.json (path or already-loaded dict); None when it assigns no object a class.

    Accepts ``{"objects": {"<id>": {"class_id": c}}}`` per video, or a bare ``{"<id>": c}``.
    """
    if source is None:
        return None
    if isinstance(source, Mapping):
        document: Any = source
        origin = "meta"
    else:
        origin = str(source)
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"meta file not found: {path}")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{origin}: not valid JSON ({error})") from None
    if not isinstance(document, Mapping):
        raise ValueError(f"{origin}: expected a JSON object at the top level")

    class_names: dict[int, str] = {}
    for key, name in (document.get("classes") or {}).items():
        class_names[_parse_int(key, f"{origin}: class id")] = str(name)

    object_classes: dict[str, dict[int, int]] = {}
    videos = document.get("videos") or {}
    if not isinstance(videos, Mapping):
        raise ValueError(f"{origin}: 'videos' must be an object")
    for video, entry in videos.items():
        objects = entry.get("objects", {}) if isinstance(entry, Mapping) else None
        if not isinstance(objects, Mapping):
            raise ValueError(f"{origin}: video {video!r} must have an 'objects' object")
        classes: dict[int, int] = {}
        for object_key, value in objects.items():
            object_id = _parse_int(object_key, f"{origin}: video {video!r} object id")
            raw = value.get("class_id") if isinstance(value, Mapping) else value
            if raw is None:
                continue
            class_id = _parse_int(raw, f"{origin}: video {video!r} object {object_id} class_id")
            if class_id <= 0:
                raise ValueError(f"{origin}: video {video!r} object {object_id}: class_id must be > 0")
            if class_names and class_id not in class_names:
                raise ValueError(
                    f"{origin}: video {video!r} object {object_id} has class_id {class_id},"
                    f" which is not among the classes {sorted(class_names)}"
                )
            classes[object_id] = class_id
        if classes:
            object_classes[str(video)] = classes
    if not object_classes:
        return None
    return ClassMeta(object_classes=object_classes, class_names=class_names)


def _parse_int(value: Any, what: str) -> int:
    """An integer from a JSON key or value, or a clear error saying what it was."""
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def read_id_mask(path: Path) -> np.ndarray:
    """Object-id map (HxW integers) of a palette or grayscale PNG."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L", "1", "I", "I;16"):
            raise ValueError(f"{path}: expected a palette (mode P) or grayscale id mask, got mode {image.mode}")
        array = np.array(image)
    return array.astype(np.uint8) if array.dtype == np.bool_ else array


def _frame_key(path: Path) -> tuple[int, int | str]:
    """Sort key and identity of a frame file: its number when the stem is numeric."""
    stem = path.stem
    return (0, int(stem)) if stem.isdigit() else (1, stem)


def list_frames(video_dir: Path) -> list[Path]:
    """The PNG frames of one video folder, sorted numerically."""
    return sorted((p for p in video_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file()), key=_frame_key)


def list_videos(root: Path) -> list[str]:
    """Names of the video folders under ``root``, sorted (numerically where they are numbers)."""
    return sorted((p.name for p in root.iterdir() if p.is_dir()), key=lambda name: _frame_key(Path(name)))


def _present_ids(id_map: np.ndarray) -> set[int]:
    """Non-zero ids present in an id map."""
    if id_map.dtype == np.uint8:
        ids = np.flatnonzero(count_uint8_values(id_map))
    else:
        ids = np.unique(id_map)
    return {int(i) for i in ids if i != 0}


# --------------------------------------------------------------------------------------------
# One video
# --------------------------------------------------------------------------------------------


def evaluate_video(
    video: str,
    gt_video_dir: Path,
    pred_video_dir: Path | None,
    protocol: str = "surgsam2",
    object_classes: Mapping[int, int] | None = None,
    class_ids: Sequence[int] = ENDOVIS_CLASS_IDS,
    bound_th: float = DEFAULT_BOUND_TH,
) -> VideoEvaluation:
    """Score one video under ``protocol`` (``pred_video_dir`` None: every prediction is empty).

    Streams frame by frame, so memory stays at a couple of frames whatever the video length.
    ``object_classes`` (object id -> class id) turns on the class-map statistics.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    gt_frames = list_frames(gt_video_dir)
    if not gt_frames:
        raise ValueError(f"no ground-truth PNG frames in {gt_video_dir}")
    pred_frames: dict[tuple[int, int | str], Path] = {}
    if pred_video_dir is not None:
        pred_frames = {_frame_key(p): p for p in list_frames(pred_video_dir)}

    active: set[int] = set()
    j_values: dict[int, list[float]] = {}
    f_values: dict[int, list[float]] = {}
    dice_values: dict[int, list[float]] = {}
    class_images: list[ClassImageStats] = []
    last_index = len(gt_frames) - 1

    for index, gt_path in enumerate(gt_frames):
        gt = read_id_mask(gt_path)
        gt_ids = _present_ids(gt)
        prompted_here: set[int] = set()
        if protocol == "surgsam2" or index == 0:
            prompted_here = gt_ids - active
            active |= gt_ids  # davis: the first frame's objects; surgsam2: all seen so far
        if object_classes is not None:
            unknown = sorted(gt_ids - set(object_classes))
            if unknown:
                raise ValueError(
                    f"meta gives no class for object(s) {unknown} of video {video!r}"
                    f" (ground truth {gt_path})"
                )
        if index == 0 or index == last_index:
            continue
        pred = _read_prediction(pred_frames.get(_frame_key(gt_path)), gt)
        pred_ids = _present_ids(pred)
        nothing = np.zeros(gt.shape, dtype=bool)
        for object_id in sorted(active - prompted_here):
            scores = frame_scores(
                pred == object_id if object_id in pred_ids else nothing,
                gt == object_id if object_id in gt_ids else nothing,
                bound_th,
            )
            j_values.setdefault(object_id, []).append(scores.J)
            f_values.setdefault(object_id, []).append(scores.F)
            dice_values.setdefault(object_id, []).append(scores.Dice)
        if object_classes is not None:
            max_id = max(pred_ids | gt_ids, default=0)
            class_images.append(
                class_image_stats(
                    _to_class_map(pred, object_classes, max_id),
                    _to_class_map(gt, object_classes, max_id),
                    class_ids,
                )
            )

    objects: list[ObjectResult] = []
    for object_id in sorted(active):
        if object_id not in j_values:
            continue
        j_stats = sequence_statistics(j_values[object_id])
        f_stats = sequence_statistics(f_values[object_id])
        objects.append(
            ObjectResult(
                video=video, object_id=object_id,
                J=j_stats.mean, F=f_stats.mean, Dice=float(np.mean(dice_values[object_id])),
                J_recall=j_stats.recall, J_decay=j_stats.decay,
                F_recall=f_stats.recall, F_decay=f_stats.decay,
                frames=len(j_values[object_id]),
            )
        )  # fmt: skip
    unscored = sorted(active - set(j_values))
    return VideoEvaluation(video=video, objects=objects, unscored=unscored, class_images=class_images)


def _read_prediction(path: Path | None, gt: np.ndarray) -> np.ndarray:
    """The prediction id map for a ground-truth frame: empty when missing, checked for size."""
    if path is None:
        return np.zeros_like(gt)
    pred = read_id_mask(path)
    if pred.shape != gt.shape:
        raise ValueError(
            f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]} (WxH) but its ground truth"
            f" is {gt.shape[1]}x{gt.shape[0]}"
        )
    return pred


def _to_class_map(id_map: np.ndarray, object_classes: Mapping[int, int], max_id: int) -> np.ndarray:
    """Class map of an object-id map: each object's class, 0 for background and unclassified ids."""
    if id_map.dtype == np.uint8 and all(0 < c < 256 for c in object_classes.values()):
        table = np.zeros(256, dtype=np.uint8)
        for object_id, class_id in object_classes.items():
            if 0 < object_id < 256:
                table[object_id] = class_id
        return cv2.LUT(np.ascontiguousarray(id_map), table)
    table = np.zeros(max(max_id, max(object_classes, default=0)) + 1, dtype=np.int64)
    for object_id, class_id in object_classes.items():
        if object_id > 0:
            table[object_id] = class_id
    return table[np.clip(id_map, 0, table.size - 1)]


def _evaluate_video_job(job: tuple[Any, ...]) -> VideoEvaluation:
    """Unpack one video job for the process pool."""
    return evaluate_video(*job)


# --------------------------------------------------------------------------------------------
# A whole folder
# --------------------------------------------------------------------------------------------


def evaluate(
    gt_dir: str | os.PathLike[str],
    pred_dir: str | os.PathLike[str],
    protocol: str = "surgsam2",
    meta: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    workers: int = 1,
    allow_missing_videos: bool = False,
    bound_th: float = DEFAULT_BOUND_TH,
) -> EvaluationResult:
    """Evaluate every ground-truth video of ``gt_dir`` against ``pred_dir`` under ``protocol``.

    ``meta`` (a meta.json path or its dict) adds the class-based metrics; ``workers`` > 1 scores
    videos in a process pool. See the module docstring for the conventions.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    gt_root, pred_root = Path(gt_dir), Path(pred_dir)
    for name, root in (("ground-truth", gt_root), ("prediction", pred_root)):
        if not root.exists():
            raise FileNotFoundError(f"{name} folder not found: {root}")
        if not root.is_dir():
            raise NotADirectoryError(f"{name} path is not a folder: {root}")
    videos = list_videos(gt_root)
    if not videos:
        raise ValueError(f"no video folders in the ground-truth folder {gt_root}")
    missing = [video for video in videos if not (pred_root / video).is_dir()]
    if missing and not allow_missing_videos:
        raise FileNotFoundError(
            f"prediction folder {pred_root} has no video(s) {', '.join(missing)}"
            " (allow_missing_videos / --allow-missing-videos scores them as empty)"
        )

    class_meta = load_class_meta(meta)
    jobs = []
    for video in videos:
        object_classes = None
        if class_meta is not None:
            object_classes = class_meta.object_classes.get(video)
            if object_classes is None:
                raise ValueError(f"meta gives no object classes for video {video!r}")
        pred_video = pred_root / video if video not in missing else None
        class_ids = class_meta.class_ids if class_meta is not None else ENDOVIS_CLASS_IDS
        jobs.append((video, gt_root / video, pred_video, protocol, object_classes, class_ids, bound_th))

    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            evaluations = list(pool.map(_evaluate_video_job, jobs))
    else:
        evaluations = [_evaluate_video_job(job) for job in jobs]

    return combine_evaluations(evaluations, protocol, class_meta, where=f" in {gt_root}")


def combine_evaluations(
    evaluations: Sequence[VideoEvaluation], protocol: str, class_meta: ClassMeta | None, where: str = ""
) -> EvaluationResult:
    """The result over videos: per-object rows, the mean over (video, object) pairs, class IoUs."""
    per_object = [row for evaluation in evaluations for row in evaluation.objects]
    if not per_object:
        raise ValueError(f"nothing to score{where}: no object has a scored frame under the {protocol} protocol")
    summary = Summary(
        J=float(np.mean([row.J for row in per_object])),
        F=float(np.mean([row.F for row in per_object])),
        JF=float(np.mean([row.JF for row in per_object])),
        Dice=float(np.mean([row.Dice for row in per_object])),
    )
    class_based = None
    if class_meta is not None:
        class_based = class_based_metrics(stats for e in evaluations for stats in e.class_images)
    return EvaluationResult(
        protocol=protocol,
        per_object=per_object,
        summary=summary,
        class_based=class_based,
        class_names=dict(class_meta.class_names) if class_meta is not None else {},
        unscored=[(e.video, object_id) for e in evaluations for object_id in e.unscored],
        videos=len(evaluations),
    )


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", newline="", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def csv_path_for(json_path: str | os.PathLike[str]) -> Path:
    """The CSV written next to a results JSON: same name, ``.csv`` suffix."""
    path = Path(json_path)
    return path.with_suffix(".csv")


def write_results(result: EvaluationResult, json_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write (replace, never append) the results JSON and the per-object CSV next to it."""
    json_file = Path(json_path)
    csv_file = csv_path_for(json_file)
    if csv_file == json_file:
        raise ValueError(f"output {json_file} must not end in .csv (the CSV goes next to the JSON)")
    _atomic_write_text(json_file, json.dumps(result.to_json_dict(), indent=2, allow_nan=False) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(OBJECT_FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in result.per_object:
        writer.writerow(row.to_dict())
    _atomic_write_text(csv_file, buffer.getvalue())
    return json_file, csv_file


def _pct(value: float | None) -> str:
    """A fraction as a x100 table cell."""
    return "-" if value is None else f"{100.0 * value:.2f}"


def format_table(result: EvaluationResult) -> str:
    """Per-object rows, the summary and the class-based metrics as aligned text, scores x100."""
    headers = ["video", "object", "frames", "J", "F", "J&F", "Dice", "J-rec", "J-decay", "F-rec", "F-decay"]
    rows = [
        [
            row.video, str(row.object_id), str(row.frames),
            _pct(row.J), _pct(row.F), _pct(row.JF), _pct(row.Dice),
            _pct(row.J_recall), _pct(row.J_decay), _pct(row.F_recall), _pct(row.F_decay),
        ]
        for row in result.per_object
    ]  # fmt: skip

    def mean(name: str) -> float:
        return float(np.mean([getattr(row, name) for row in result.per_object]))

    summary = result.summary
    rows.append(
        [
            "mean", f"{len(result.per_object)} obj", str(sum(row.frames for row in result.per_object)),
            _pct(summary.J), _pct(summary.F), _pct(summary.JF), _pct(summary.Dice),
            _pct(mean("J_recall")), _pct(mean("J_decay")), _pct(mean("F_recall")), _pct(mean("F_decay")),
        ]
    )  # fmt: skip
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [
        f"protocol: {result.protocol}  ({result.videos} videos, {len(result.per_object)} objects; scores x100)",
        line(headers),
        line(["-" * w for w in widths]),
        *(line(r) for r in rows[:-1]),
        line(["-" * w for w in widths]),
        line(rows[-1]),
    ]
    if result.unscored:
        listed = ", ".join(f"{video}/{object_id}" for video, object_id in result.unscored)
        out.append(f"not scored (no scored frame): {listed}")
    if result.class_based is not None:
        cb = result.class_based
        out.append(
            f"class-based ({cb.images} images): Challenge IoU {_pct(cb.challenge_iou)}"
            f"  IoU {_pct(cb.iou)}  mc IoU {_pct(cb.mc_iou)}"
        )
        for class_id, value in cb.per_class_iou.items():
            name = result.class_names.get(class_id, f"class {class_id}")
            out.append(f"  {class_id}  {name:<28} {_pct(value):>6}  ({cb.per_class_images.get(class_id, 0)} images)")
    return "\n".join(out)


__all__ = [
    "ClassMeta",
    "EvaluationResult",
    "OBJECT_FIELDS",
    "ObjectResult",
    "PROTOCOLS",
    "Summary",
    "VideoEvaluation",
    "csv_path_for",
    "evaluate",
    "evaluate_video",
    "format_table",
    "list_frames",
    "list_videos",
    "load_class_meta",
    "read_id_mask",
    "write_results",
]
