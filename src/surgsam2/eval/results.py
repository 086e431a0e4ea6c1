"""Evaluation results: per-object rows, the summary over (video, object) pairs, JSON/CSV and table.

Values are fractions in [0, 1] everywhere (decay in [-1, 1]); only the printed table shows them x100.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from surgsam2.data.outputs import InputPaths, OutputFolder, check_output_location
from surgsam2.eval.metrics import ClassBasedResult, ClassImageStats, WithJF, class_based_metrics

OBJECT_FIELDS: tuple[str, ...] = (
    "video", "object", "J", "F", "JF", "Dice",
    "J_recall", "J_decay", "F_recall", "F_decay", "frames",
)  # fmt: skip
"""Keys of one per-object row, in the JSON and as the CSV header."""


@dataclass(frozen=True)
class ObjectResult(WithJF):
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
    missing_frames: list[str] = field(default_factory=list)  # scored frames without a prediction file
    prediction_dir: str = ""  # where the predictions were looked for (for messages)


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
    missing_predictions: dict[str, int] = field(default_factory=dict)  # video -> scored frames without a file

    def to_json_dict(self) -> dict[str, Any]:
        """``{"protocol", "per_object", "summary", "missing_predictions"}``, plus ``"class_based"``
        when classes were given. ``missing_predictions``: ``{"total": n, "per_video": {video: n}}``
        (videos with none left out); those frames were scored as empty predictions."""
        document: dict[str, Any] = {
            "protocol": self.protocol,
            "per_object": [row.to_dict() for row in self.per_object],
            "summary": self.summary.to_dict(),
            "missing_predictions": {
                "total": sum(self.missing_predictions.values()),
                "per_video": dict(self.missing_predictions),
            },
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



def combine_evaluations(
    evaluations: Sequence[VideoEvaluation], protocol: str, class_names: Mapping[int, str] | None, where: str = ""
) -> EvaluationResult:
    """The result over videos: per-object rows, the mean over (video, object) pairs, class IoUs.

    ``class_names`` is the class table when class-based metrics were scored (may be empty), else None.
    """
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
    if class_names is not None:
        class_based = class_based_metrics(stats for e in evaluations for stats in e.class_images)
    return EvaluationResult(
        protocol=protocol,
        per_object=per_object,
        summary=summary,
        class_based=class_based,
        class_names=dict(class_names or {}),
        unscored=[(e.video, object_id) for e in evaluations for object_id in e.unscored],
        videos=len(evaluations),
        missing_predictions={e.video: len(e.missing_frames) for e in evaluations if e.missing_frames},
    )


def describe_missing(evaluation: VideoEvaluation) -> str | None:
    """One warning line for a video with scored frames that have no prediction file, else None."""
    missing = evaluation.missing_frames
    if not missing:
        return None
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    return (
        f"video {evaluation.video!r}: {len(missing)} scored frame(s) have no prediction file in"
        f" {evaluation.prediction_dir or 'the prediction folder'} ({shown}): scored as empty predictions"
    )


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def csv_path_for(json_path: str | os.PathLike[str]) -> Path:
    """The CSV written next to a results JSON: same name, ``.csv`` suffix."""
    path = Path(json_path)
    return path.with_suffix(".csv")


def check_results_path(json_path: str | os.PathLike[str], inputs: InputPaths | None = None) -> tuple[Path, Path]:
    """The results JSON and CSV paths, or ValueError (before any work): a folder, a .csv name, or a
    path that is or lies inside one of ``inputs``."""
    json_file = Path(json_path)
    csv_file = csv_path_for(json_file)
    if csv_file == json_file:
        raise ValueError(f"output {json_file} must not end in .csv (the CSV goes next to the JSON)")
    if json_file.is_dir():
        raise ValueError(f"results path {json_file} is a folder: give the path of the results JSON file")
    for path in (json_file, csv_file):
        check_output_location(path, inputs, files_only=True)
    return json_file, csv_file


def write_results(
    result: EvaluationResult,
    json_path: str | os.PathLike[str],
    inputs: InputPaths | None = None,
    command: str = "evaluate",
) -> tuple[Path, Path]:
    """Write (replace, never append) the results JSON and the per-object CSV next to it.

    Both are published atomically through `OutputFolder` (locked folder, files readable like any
    other): our own earlier results are rewritten, any other file of that name is refused, and so is
    a results path that is, or lies inside, one of ``inputs`` (e.g. the ground truth), or that names
    a folder (also one published meanwhile). ``command``: which command wrote them (the marker).
    """
    json_file, csv_file = check_results_path(json_path, inputs)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(OBJECT_FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in result.per_object:
        writer.writerow(row.to_dict())
    document = json.dumps(result.to_json_dict(), indent=2, allow_nan=False) + "\n"
    with OutputFolder(json_file.parent, command=command, files_only=True) as folder:
        for path in (json_file, csv_file):
            if path.is_dir():
                raise ValueError(f"results path {path} is a folder: give the path of the results JSON file")
            folder.claim(path.name, replace_own=True)
        folder.write_file(json_file.name, document, replace_own=True)
        folder.write_file(csv_file.name, buffer.getvalue(), replace_own=True)
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
    missing = sum(result.missing_predictions.values())
    if missing:
        listed = ", ".join(f"{video} {count}" for video, count in result.missing_predictions.items())
        out.append(f"MISSING prediction frames (scored as empty): {missing} ({listed})")
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
