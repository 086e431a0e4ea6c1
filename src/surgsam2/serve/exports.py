"""A session's exports, built in memory (never a half-written file): VOS palette PNG masks as a
zip laid out as `surgsam2 vos-inference` writes them, and the prompts as JSON."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np
from PIL import Image

from surgsam2.data.masks import davis_palette
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
