"""Training metrics: a JSONL log (one line per logged step) and a plot of the loss curves.

The log is rewritten at the start of a fresh run; a resumed run keeps the lines up to the step it
resumes from (dropping those an interrupted run wrote after its last checkpoint) and appends.
The plot uses matplotlib when it is installed, else a small chart drawn with OpenCV, so training
adds no plotting dependency.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

PLOTTED_SERIES = ("loss", "focal", "dice", "iou", "object")
_COLOURS_BGR = {
    "loss": (40, 40, 40),
    "focal": (200, 90, 30),
    "dice": (40, 160, 40),
    "iou": (30, 30, 210),
    "object": (170, 60, 170),
}


class MetricsLog:
    """Append-only JSONL metrics of one run (rank 0 writes it)."""

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the interruption
                if isinstance(record, dict) and int(record.get("step", 0)) <= resume_step:
                    kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: Mapping[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(dict(record), sort_keys=False) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """Every record in the file."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing)."""
    smoothed, running = [], 0.0
    for count, value in enumerate(values, start=1):
        running = weight * running + (1 - weight) * value
        smoothed.append(running / (1 - weight**count))
    return smoothed


def plot_loss_curves(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Draw the smoothed loss and its per-object components against the step (log scale)."""
    path = Path(path)
    series = {
        name: [(float(r["step"]), float(r[name])) for r in records if name in r and float(r[name]) > 0]
        for name in PLOTTED_SERIES
    }
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return _plot_with_opencv(series, path)
    return _plot_with_matplotlib(series, path)


def _plot_with_matplotlib(series: dict[str, list[tuple[float, float]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, points in series.items():
        if not points:
            continue
        steps, values = zip(*points)
        axis.plot(steps, values, color=tuple(c / 255 for c in _COLOURS_BGR[name][::-1]), alpha=0.2, lw=0.8)
        axis.plot(steps, smooth(values), color=tuple(c / 255 for c in _COLOURS_BGR[name][::-1]), label=name)
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("loss per object (smoothed)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def _plot_with_opencv(
    series: dict[str, list[tuple[float, float]]], path: Path, size: tuple[int, int] = (900, 500)
) -> Path:
    width, height = size
    left, right, top, bottom = 70, 110, 20, 45
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    all_points = [p for points in series.values() for p in points]
    font = cv2.FONT_HERSHEY_SIMPLEX
    if not all_points:
        cv2.putText(image, "no data yet", (width // 2 - 60, height // 2), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)
        return path
    steps = [p[0] for p in all_points]
    logs = [math.log10(p[1]) for p in all_points]
    x_min, x_max = min(steps), max(steps)
    y_min, y_max = math.floor(min(logs)), math.ceil(max(logs))
    if x_max == x_min:
        x_max = x_min + 1
    if y_max == y_min:
        y_max = y_min + 1

    def to_pixel(step: float, value: float) -> tuple[int, int]:
        x = left + (step - x_min) / (x_max - x_min) * (width - left - right)
        y = top + (y_max - math.log10(value)) / (y_max - y_min) * (height - top - bottom)
        return int(round(x)), int(round(y))

    # Axes, decade grid lines and labels.
    cv2.rectangle(image, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    for decade in range(y_min, y_max + 1):
        _, y = to_pixel(x_min, 10.0**decade)
        cv2.line(image, (left, y), (width - right, y), (220, 220, 220), 1)
        cv2.putText(image, f"1e{decade}", (8, y + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for tick in np.unique(np.round(np.linspace(x_min, x_max, 6))):
        x, _ = to_pixel(float(tick), 10.0**y_min)
        cv2.line(image, (x, height - bottom), (x, height - bottom + 4), (0, 0, 0), 1)
        cv2.putText(image, f"{int(tick)}", (x - 12, height - bottom + 18), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "step", (width // 2 - 15, height - 8), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)

    for row, (name, points) in enumerate(series.items()):
        if not points:
            continue
        colour = _COLOURS_BGR[name]
        faint = tuple(int(255 - (255 - c) * 0.25) for c in colour)
        raw = np.array([to_pixel(s, v) for s, v in points], dtype=np.int32)
        values = smooth([v for _, v in points])
        curve = np.array([to_pixel(s, v) for (s, _), v in zip(points, values)], dtype=np.int32)
        if len(raw) > 1:
            cv2.polylines(image, [raw], False, faint, 1, cv2.LINE_AA)
            cv2.polylines(image, [curve], False, colour, 2, cv2.LINE_AA)
        else:
            cv2.circle(image, tuple(int(v) for v in curve[0]), 3, colour, -1)
        legend_y = top + 18 + 20 * row
        cv2.line(image, (width - right + 10, legend_y - 4), (width - right + 30, legend_y - 4), colour, 2)
        cv2.putText(image, name, (width - right + 35, legend_y), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write the loss plot {path}")
    return path


__all__ = ["MetricsLog", "plot_loss_curves", "smooth"]
