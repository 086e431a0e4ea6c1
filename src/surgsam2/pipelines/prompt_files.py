"""The prompts of an interactive session as a JSON file, and back: what `surgsam2 serve` exports
and `surgsam2 segment --prompts FILE` (or Python) replays to the same masks.

Format: ``{"format": "surgsam2-prompts", "version": 1, "video": name, "num_frames": N,
"objects": {"1": {"name": ..., "class_id": ...}}, "prompts": [{"frame": 0, "object": 1,
"points": [[x, y], ...], "labels": [1, 0, ...], "box": [x0, y0, x1, y1] | null}, ...]}``,
coordinates in frame pixels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from surgsam2.tracking.prompts import Prompt, validate_object_id

PROMPTS_FORMAT = "surgsam2-prompts"
PROMPTS_VERSION = 1


def prompts_to_json(
    prompts: Mapping[int, Mapping[int, Prompt]],
    video: str = "",
    num_frames: int | None = None,
    objects: Mapping[int, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON document of ``{frame: {object: Prompt}}`` (click and box prompts only)."""
    entries = []
    for frame in sorted(prompts):
        for obj_id in sorted(prompts[frame]):
            prompt = prompts[frame][obj_id]
            if prompt.mask is not None:
                raise ValueError(f"object {obj_id} on frame {frame}: mask prompts are not stored in a prompts file")
            points = [[float(x), float(y)] for x, y in prompt.points] if prompt.points is not None else []
            labels = [int(v) for v in prompt.labels] if prompt.labels is not None else [1] * len(points)
            box = [float(v) for v in prompt.box] if prompt.box is not None else None
            entries.append({"frame": int(frame), "object": int(obj_id), "points": points, "labels": labels, "box": box})
    return {
        "format": PROMPTS_FORMAT,
        "version": PROMPTS_VERSION,
        "video": video,
        "num_frames": num_frames,
        "objects": {str(k): dict(v) for k, v in sorted((objects or {}).items())},
        "prompts": entries,
    }


def _entry_prompt(entry: Any, where: str) -> tuple[int, int, Prompt]:
    """(frame, object id, Prompt) of one entry of the "prompts" list."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with frame, object, points, labels, box")
    frame, obj_id = entry.get("frame"), entry.get("object")
    if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
        raise ValueError(f"{where}: frame must be a non-negative integer, got {frame!r}")
    validate_object_id(obj_id)
    points, labels, box = entry.get("points") or [], entry.get("labels") or [], entry.get("box")
    if not isinstance(points, list) or not isinstance(labels, list) or len(points) != len(labels):
        raise ValueError(f"{where}: points and labels must be lists of the same length")
    try:
        point_list = [(float(x), float(y)) for x, y in points]
        box_tuple = None if box is None else tuple(float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: points must be [x, y] pairs and box [x0, y0, x1, y1] numbers") from None
    if box_tuple is not None and len(box_tuple) != 4:
        raise ValueError(f"{where}: box must have 4 numbers, got {len(box_tuple)}")
    if not point_list and box_tuple is None:
        raise ValueError(f"{where}: no points and no box")
    prompt = Prompt(
        points=point_list or None, labels=[int(v) for v in labels] or None, box=box_tuple
    )  # fmt: skip
    return frame, int(obj_id), prompt


def prompts_from_json(document: Any, source: str = "prompts") -> dict[int, dict[int, Prompt]]:
    """``{frame: {object: Prompt}}`` from a prompts document; ValueError names the bad entry."""
    if not isinstance(document, dict) or document.get("format") != PROMPTS_FORMAT:
        raise ValueError(f"{source} is not a surgsam2 prompts file (format {PROMPTS_FORMAT!r})")
    if document.get("version") != PROMPTS_VERSION:
        raise ValueError(f"{source}: unsupported prompts file version {document.get('version')!r}")
    entries = document.get("prompts")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source} has no prompts")
    prompts: dict[int, dict[int, Prompt]] = {}
    for number, entry in enumerate(entries):
        frame, obj_id, prompt = _entry_prompt(entry, f"{source}: prompt {number}")
        if obj_id in prompts.get(frame, {}):
            raise ValueError(f"{source}: object {obj_id} has two prompts on frame {frame}")
        prompts.setdefault(frame, {})[obj_id] = prompt
    return prompts


def read_prompts_file(path: str | Path) -> dict[int, dict[int, Prompt]]:
    """``{frame: {object: Prompt}}`` of a prompts JSON file (as `surgsam2 serve` exports it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"prompts file {path} is not valid JSON: {str(error).splitlines()[0]}") from None
    return prompts_from_json(document, str(path))
