"""Evaluation of a `vos-inference` output folder: per-object folders plus a combined ``all/`` folder.

Layout, per video: ``<out>/<video>/<id:03d>/<frame>.png`` (that object alone; objects may overlap)
and ``<out>/<video>/all/<frame>.png`` (one id per pixel). J, F and Dice are scored on the
per-object folders, as Surgical SAM 2's evaluation reads them; the class-based EndoVis IoUs on
``all/``, which gives each pixel one class.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surgsam2.data.vos import ANNOTATIONS_DIR, DatasetMeta
from surgsam2.eval.metrics import DEFAULT_BOUND_TH, ENDOVIS_CLASS_IDS
from surgsam2.eval.results import EvaluationResult, VideoEvaluation, combine_evaluations
from surgsam2.eval.scoring import evaluate_video, load_class_meta, run_jobs

ALL_OBJECTS_DIR = "all"


def object_dir_name(object_id: int) -> str:
    """The folder of one object's masks in a video's output ("003")."""
    return f"{int(object_id):03d}"


def is_vos_output_video(video_dir: Path) -> bool:
    """Whether a prediction video folder has the vos-inference layout (an ``all/`` sub-folder)."""
    return (Path(video_dir) / ALL_OBJECTS_DIR).is_dir()


def gt_video_dir(gt_root: Path, video: str) -> Path | None:
    """The ground-truth folder of a video: ``<gt_root>/<video>``, or ``<gt_root>/Annotations/<video>``
    when given a dataset root."""
    for candidate in (gt_root / video, gt_root / ANNOTATIONS_DIR / video):
        if candidate.is_dir():
            return candidate
    return None


@dataclass(frozen=True)
class VOSOutputJob:
    """One video of a vos-inference output to score (picklable, for the process pool)."""

    video: str
    gt_dir: Path
    video_out_dir: Path
    protocol: str = "surgsam2"
    object_classes: Mapping[int, int] | None = None
    class_ids: tuple[int, ...] = ENDOVIS_CLASS_IDS
    bound_th: float = DEFAULT_BOUND_TH
    allow_no_predictions: bool = False


def evaluate_output_video(job: VOSOutputJob) -> VideoEvaluation:
    """Score one video: class statistics, missing frames and fallback rows from ``all/``, then each
    object from its own folder."""
    combined = evaluate_video(
        job.video, job.gt_dir, job.video_out_dir / ALL_OBJECTS_DIR, job.protocol,
        job.object_classes, job.class_ids, job.bound_th, job.allow_no_predictions,
    )  # fmt: skip
    rows = []
    for row in combined.objects:
        object_dir = job.video_out_dir / object_dir_name(row.object_id)
        if object_dir.is_dir():  # an object that was not prompted keeps its (empty) all/ row
            alone = evaluate_video(
                job.video, job.gt_dir, object_dir, job.protocol, bound_th=job.bound_th, allow_no_predictions=True
            )
            row = next(r for r in alone.objects if r.object_id == row.object_id)
        rows.append(row)
    return dataclasses.replace(combined, objects=rows)


def evaluate_vos_output(
    gt_root: str | os.PathLike[str],
    output_mask_dir: str | os.PathLike[str],
    videos: Sequence[str],
    meta: str | os.PathLike[str] | Mapping[str, Any] | DatasetMeta | None = None,
    workers: int = 1,
    protocol: str = "surgsam2",
) -> EvaluationResult:
    """Evaluate a vos-inference output folder on ``videos``: J, F, Dice on the per-object folders,
    class-based IoUs (with ``meta``) on the ``all/`` folders. See the module docstring."""
    gt, out = Path(gt_root), Path(output_mask_dir)
    class_meta = load_class_meta(meta)
    class_ids = class_meta.class_ids if class_meta is not None else ENDOVIS_CLASS_IDS
    jobs = []
    for video in videos:
        gt_dir = gt_video_dir(gt, video)
        if gt_dir is None:
            raise FileNotFoundError(f"ground-truth folder {gt} has no video {video!r}")
        if not is_vos_output_video(out / video):
            raise FileNotFoundError(f"no output for video {video!r} in {out}")
        object_classes = None
        if class_meta is not None:
            object_classes = class_meta.object_classes.get(video)
            if object_classes is None:
                raise ValueError(f"meta gives no object classes for video {video!r}")
        jobs.append(VOSOutputJob(video, gt_dir, out / video, protocol, object_classes, class_ids))
    if not jobs:
        raise ValueError("no video to evaluate")
    evaluations = run_jobs(evaluate_output_video, jobs, workers)
    return combine_evaluations(evaluations, protocol, class_meta.class_names if class_meta is not None else None)
