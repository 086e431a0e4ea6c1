"""Evaluate a folder of predicted masks against a ground-truth folder (VOS layout).

Both folders hold ``<dir>/<video>/<frame>.png`` palette PNGs (pixel value = object id, 0 is
background), read through `surgsam2.data` (integer frame names, numeric order; videos are the
non-hidden sub-folders); a prediction frame is matched to the ground-truth frame of the same
number. A prediction video in the `vos-inference` layout (``<video>/<id:03d>/`` and
``<video>/all/``) is recognised and scored as `surgsam2.eval.vos_output` does. Two protocols:

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

Missing prediction frames count as empty predictions, with a warning per video, and are counted
in the result (``missing_predictions``, per video and in total). A missing prediction video, or a
video folder with no prediction for any scored frame (wrong folder or numbering), is an error that
names it, unless ``allow_missing_videos`` (then the whole video counts as empty). A prediction
frame whose size differs from its ground truth, or a corrupt PNG, is an error naming the file.

With a meta.json (format and validation: `surgsam2.data.vos.read_meta`; checked before any video) the
EndoVis class-based metrics (Challenge IoU, IoU, mc IoU) are computed too, on class maps built
from the object maps, over the same frames as the protocol scores (all but the first and last of
each video). Prediction ids without a class in the meta count as background; a ground-truth object
without a class is an error.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from surgsam2.data.vos import DatasetMeta, list_videos
from surgsam2.eval.metrics import DEFAULT_BOUND_TH, ENDOVIS_CLASS_IDS
from surgsam2.eval.results import (
    OBJECT_FIELDS,
    EvaluationResult,
    ObjectResult,
    Summary,
    VideoEvaluation,
    combine_evaluations,
    csv_path_for,
    describe_missing,
    format_table,
    write_results,
)
from surgsam2.eval.scoring import PROTOCOLS, ClassMeta, evaluate_video, load_class_meta, run_jobs
from surgsam2.eval.vos_output import VOSOutputJob, evaluate_output_video, is_vos_output_video

VideoJob = tuple[Any, ...] | VOSOutputJob


def _score_job(job: VideoJob) -> VideoEvaluation:
    """Score one video job (process-pool friendly): a frame folder or a vos-inference output."""
    if isinstance(job, VOSOutputJob):
        return evaluate_output_video(job)
    return evaluate_video(*job)


def _warn_default(message: str) -> None:
    """Default warning sink: a RuntimeWarning (printed on stderr)."""
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def evaluate(
    gt_dir: str | os.PathLike[str],
    pred_dir: str | os.PathLike[str],
    protocol: str = "surgsam2",
    meta: str | os.PathLike[str] | Mapping[str, Any] | DatasetMeta | None = None,
    workers: int = 1,
    allow_missing_videos: bool = False,
    bound_th: float = DEFAULT_BOUND_TH,
    warn: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Evaluate every ground-truth video of ``gt_dir`` against ``pred_dir`` under ``protocol``.

    ``meta`` (a meta.json path, its dict or a `DatasetMeta`) adds the class-based metrics;
    ``workers`` > 1 scores videos in a process pool; ``warn`` receives one line per video with
    missing prediction frames (default: a RuntimeWarning). See the module docstring.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    warn = _warn_default if warn is None else warn
    gt_root, pred_root = Path(gt_dir), Path(pred_dir)
    for name, root in (("ground-truth", gt_root), ("prediction", pred_root)):
        if not root.exists():
            raise FileNotFoundError(f"{name} folder not found: {root}")
        if not root.is_dir():
            raise NotADirectoryError(f"{name} path is not a folder: {root}")
    class_meta = load_class_meta(meta)
    videos = list_videos(gt_root)
    if not videos:
        raise ValueError(f"no video folders in the ground-truth folder {gt_root}")
    missing = [video for video in videos if not (pred_root / video).is_dir()]
    if missing and not allow_missing_videos:
        raise FileNotFoundError(
            f"prediction folder {pred_root} has no video(s) {', '.join(missing)}"
            " (allow_missing_videos / --allow-missing-videos scores them as empty)"
        )
    jobs = [
        _video_job(video, gt_root, None if video in missing else pred_root / video, protocol, class_meta,
                   bound_th, allow_missing_videos)
        for video in videos
    ]  # fmt: skip
    evaluations = run_jobs(_score_job, jobs, workers)
    for evaluation in evaluations:
        if evaluation.video in missing:
            warn(f"video {evaluation.video!r} has no folder in {pred_root}: scored as empty predictions")
        elif (message := describe_missing(evaluation)) is not None:
            warn(message)
    class_names = class_meta.class_names if class_meta is not None else None
    return combine_evaluations(evaluations, protocol, class_names, where=f" in {gt_root}")


def _video_job(
    video: str,
    gt_root: Path,
    pred_video_dir: Path | None,
    protocol: str,
    class_meta: ClassMeta | None,
    bound_th: float,
    allow_no_predictions: bool,
) -> VideoJob:
    """The scoring job of one video, by the layout of its prediction folder."""
    object_classes = None
    class_ids = ENDOVIS_CLASS_IDS
    if class_meta is not None:
        class_ids = class_meta.class_ids
        object_classes = class_meta.object_classes.get(video)
        if object_classes is None:
            raise ValueError(f"meta gives no object classes for video {video!r}")
    if pred_video_dir is not None and is_vos_output_video(pred_video_dir):
        return VOSOutputJob(
            video, gt_root / video, pred_video_dir, protocol, object_classes, class_ids, bound_th, allow_no_predictions
        )
    return (video, gt_root / video, pred_video_dir, protocol, object_classes, class_ids, bound_th, allow_no_predictions)


__all__ = [
    "ClassMeta",
    "EvaluationResult",
    "OBJECT_FIELDS",
    "ObjectResult",
    "PROTOCOLS",
    "Summary",
    "VideoEvaluation",
    "combine_evaluations",
    "csv_path_for",
    "evaluate",
    "evaluate_video",
    "format_table",
    "load_class_meta",
    "write_results",
]
