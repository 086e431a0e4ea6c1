"""Prompts of a VOS dataset's objects: each object's first-appearance mask, and the prompt of the
paper's settings derived from it (`mask`, `1-point`, `5-point`, `box`)."""

from __future__ import annotations

import hashlib

import numpy as np

from surgsam2.data.mask_geometry import checked_mask, interior_point, mask_box, sample_mask_points
from surgsam2.data.vos import VOSVideo, new_object_prompt
from surgsam2.tracking.prompts import Prompt

PROMPT_TYPES: tuple[str, ...] = ("mask", "1-point", "5-point", "box")
FIVE_POINT_EXTRA = 4  # points sampled inside the mask besides the interior point


def prompt_seed(video: str, object_id: int, base_seed: int = 0) -> int:
    """A stable 63-bit seed for (video, object id, base seed): same on every machine and run."""
    digest = hashlib.sha256(f"{base_seed}/{video}/{int(object_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def prompt_from_mask(mask: np.ndarray, prompt_type: str, seed: int = 0) -> Prompt:
    """The tracker prompt of one object from its first-appearance mask: ``mask`` (Full mask),
    ``1-point`` (the interior point farthest from the boundary), ``5-point`` (that point plus 4
    seeded samples inside the mask), ``box`` (tight bounding box)."""
    if prompt_type not in PROMPT_TYPES:
        raise ValueError(f"unknown prompt type {prompt_type!r}; choose one of {', '.join(PROMPT_TYPES)}")
    array = checked_mask(mask)
    if prompt_type == "mask":
        return Prompt(mask=array)
    if prompt_type == "box":
        return Prompt(box=mask_box(array))
    points = [interior_point(array)]
    if prompt_type == "5-point":
        points += sample_mask_points(array, FIVE_POINT_EXTRA, seed, exclude=points)
    return Prompt(points=points, labels=[1] * len(points))


def first_appearance_prompts(video: VOSVideo) -> dict[int, dict[int, np.ndarray]]:
    """{frame position: {object id: bool mask}} of each object's first prompt mask (later masks of
    a known object are ignored, so a full Annotations folder also works as prompt folder)."""
    seen: set[int] = set()
    prompts: dict[int, dict[int, np.ndarray]] = {}
    for position in video.prompt_positions:
        id_map = video.read_prompt(position)
        new_objects = None if id_map is None else new_object_prompt(id_map, seen)
        if new_objects is not None:
            prompts[position] = {int(i): new_objects == i for i in np.unique(new_objects) if i != 0}
    return prompts
