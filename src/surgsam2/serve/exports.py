"""A session's exports, never a half-written file: VOS palette PNG masks as a zip laid out as
`surgsam2 vos-inference` writes them, COCO RLE JSON and the prompts (built in memory), and the
overlay video (finished in a private temporary file before it is sent)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from surgsam2.data.classes import ENDOVIS18_CLASSES
from surgsam2.data.masks import davis_palette
from surgsam2.data.video import OverlayVideoWriter
from surgsam2.eval.vos_output import ALL_OBJECTS_DIR, object_dir_name
from surgsam2.pipelines.prompt_files import prompts_to_json
from surgsam2.serve.session import Session

_PALETTE = davis_palette().tobytes()


def palette_png(id_map: np.ndarray) -> bytes:
    """An HxW uint8 id map as a palette PNG (pixel = object id, DAVIS colours), in memory."""
    data = np.ascontiguousarray(id_map, dtype=np.uint8)
    image = Image.frombytes("P", (data.shape[1], data.shape[0]), data.tobytes())
    image.putpalette(_PALETTE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def masks_zip(session: Session) -> bytes:
    """``<video>/<id:03d>/<frame>.png`` (each object alone) and ``<video>/all/<frame>.png`` for
    every frame, named after the input frames; frames without masks are empty."""
    frames = session.require_frames()
    shape = frames.frame_size
    objects = sorted(session.objects)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for index in range(len(frames)):
            name = frames.frame_name(index)
            masks = session.masks.get(index)
            combined = masks.combined if masks is not None else np.zeros(shape, np.uint8)
            archive.writestr(f"{frames.name}/{ALL_OBJECTS_DIR}/{name}.png", palette_png(combined))
            for obj in objects:
                mask = masks.object_mask(obj, shape) if masks is not None else np.zeros(shape, bool)
                archive.writestr(f"{frames.name}/{object_dir_name(obj)}/{name}.png",
                                 palette_png(np.where(mask, obj, 0).astype(np.uint8)))  # fmt: skip
    return buffer.getvalue()


def prompts_document(session: Session) -> dict[str, Any]:
    """The session's prompts as a prompts file (`surgsam2.pipelines.prompt_files`)."""
    frames = session.require_frames()
    objects = {obj.obj_id: {"name": obj.name, "class_id": obj.class_id} for obj in session.objects.values()}
    return prompts_to_json(session.all_prompts(), video=frames.name, num_frames=len(frames), objects=objects)


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """A HxW boolean mask as COCO compressed RLE: runs over the column-major pixels starting with
    a run of zeros, each run written as 5-bit groups (the delta to the run two before from the
    third run on), 48 added to each group to make it a printable character."""
    flat = np.asarray(mask, bool).ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    chars: list[str] = []
    for index, run in enumerate(runs):
        value = run - runs[index - 2] if index > 2 else run
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = not ((value == 0 and not group & 0x10) or (value == -1 and group & 0x10))
            chars.append(chr(group + (0x20 if more else 0) + 48))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": "".join(chars)}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """The HxW boolean mask of a COCO compressed RLE (`rle_encode`'s inverse)."""
    height, width = rle["size"]
    counts: list[int] = []
    text, position = rle["counts"], 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            group = ord(text[position]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    values = np.zeros(sum(counts), bool)
    start = 0
    for index, run in enumerate(counts):
        values[start : start + run] = bool(index % 2)
        start += run
    return values.reshape((width, height)).T


def coco_document(session: Session) -> dict[str, Any]:
    """The masks as a COCO instance-segmentation document: an image per frame (named after the
    input frame), an annotation per frame and object with a mask (compressed RLE, its area and
    box), category = the object's EndoVis class id (0 "instrument" when it has none)."""
    frames = session.require_frames()
    height, width = frames.frame_size
    objects = dict(sorted(session.objects.items()))
    classes = sorted({obj.class_id or 0 for obj in objects.values()})
    categories = [{"id": c, "name": ENDOVIS18_CLASSES.get(c, "instrument") if c else "instrument"} for c in classes]
    images, annotations = [], []
    for index in range(len(frames)):
        images.append({"id": index, "file_name": frames.frame_name(index), "frame_index": index,
                       "width": width, "height": height})  # fmt: skip
        masks = session.masks.get(index)
        for obj_id, obj in objects.items():
            mask = masks.object_mask(obj_id, (height, width)) if masks is not None else None
            if mask is None or not mask.any():
                continue
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            box = [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
            annotations.append({"id": len(annotations) + 1, "image_id": index, "category_id": obj.class_id or 0,
                                "object_id": obj_id, "object_name": obj.name, "segmentation": rle_encode(mask),
                                "area": int(mask.sum()), "bbox": box, "iscrowd": 0})  # fmt: skip
    return {"info": {"video": frames.name, "num_frames": len(frames)}, "images": images,
            "annotations": annotations, "categories": categories}  # fmt: skip


def overlay_video(session: Session, target: Path, fps: float = 10.0) -> Path:
    """Every frame with its masks drawn on it as an mp4 at ``target`` (mp4v; no silent fallback to
    another format). The writer finishes a hidden temporary file and renames it on success only."""
    frames = session.require_frames()
    with OverlayVideoWriter(target, fps=fps, fallback=False) as writer:
        for index in range(len(frames)):
            masks = session.masks.get(index)
            writer.write(frames[index], masks.combined if masks is not None else None)
    return target
