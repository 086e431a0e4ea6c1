"""Palette PNG masks (pixel value = object id, 0 = background) and id-map <-> per-object masks.

Masks are written as 8-bit palette PNGs with the DAVIS palette (the PASCAL VOC colour map) so
they show distinct colours in any image viewer while the pixel values stay object ids.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

MAX_OBJECT_ID = 255


@functools.lru_cache(maxsize=1)
def _palette_cached() -> bytes:
    ids = np.arange(256, dtype=np.int64)
    colours = np.zeros((256, 3), dtype=np.int64)
    code = ids.copy()
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= ((code >> channel) & 1) << (7 - bit)
        code >>= 3
    return colours.astype(np.uint8).tobytes()


def davis_palette() -> np.ndarray:
    """The 256x3 uint8 DAVIS / PASCAL VOC palette: id 0 black, 1 red, 2 green, 3 olive, 4 blue, ..."""
    return np.frombuffer(_palette_cached(), dtype=np.uint8).reshape(256, 3).copy()


def _as_id_map(id_map: np.ndarray, what: str) -> np.ndarray:
    """Validate a 2-D integer/bool id map with values 0..255 and return it as uint8."""
    array = np.asarray(id_map)
    if array.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D id map (HxW), got shape {array.shape}")
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what}: expected an integer id map, got dtype {array.dtype}")
    if array.size and (int(array.min()) < 0 or int(array.max()) > MAX_OBJECT_ID):
        raise ValueError(
            f"{what}: object ids must be in 0..{MAX_OBJECT_ID}, got {int(array.min())}..{int(array.max())}"
        )
    return array.astype(np.uint8, copy=False)


def write_mask(path: str | Path, id_map: np.ndarray) -> Path:
    """Write an HxW id map (0 background, 1..255 objects) as a palette PNG; creates parent folders."""
    path = Path(path)
    data = _as_id_map(id_map, str(path))
    # Build the "P" image straight from the bytes so that values are kept as palette indices.
    image = Image.frombytes("P", (data.shape[1], data.shape[0]), np.ascontiguousarray(data).tobytes())
    image.putpalette(_palette_cached())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False, compress_level=1)
    return path


def read_mask(path: str | Path, allow_grayscale: bool = True) -> np.ndarray:
    """Read a palette PNG (or, if allowed, 8-bit grayscale / 1-bit) mask as an HxW uint8 id map.

    Raises FileNotFoundError for a missing file and a one-line ValueError naming the file for a
    corrupt image, a JPEG (lossy: its edges would become new ids), or a multi-channel or 16-bit
    image (an RGB mask would mix up ids and colours; ids above 255 cannot be stored).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        with Image.open(path) as image:
            if image.format in _LOSSY_FORMATS:
                raise _RefusedMask(f"mask {path} is a JPEG: masks must be lossless PNG (pixel = object id)")
            mode = image.mode
            accepted = ("P", "L", "1") if allow_grayscale else ("P",)
            if mode not in accepted:
                kind = "palette or single-channel 8-bit" if allow_grayscale else "palette"
                raise _RefusedMask(
                    f"mask {path} is a {mode} image, expected a {kind} PNG (pixel value = object id)"
                )
            if mode == "1":
                return (np.asarray(image) > 0).astype(np.uint8)
            return np.array(image, dtype=np.uint8)
    except _RefusedMask as refusal:
        raise ValueError(str(refusal)) from None
    except _DECODE_ERRORS as error:
        raise ValueError(f"mask {path} is not a readable PNG ({_one_line(error)})") from None


class _RefusedMask(Exception):
    """A readable image that is not an id mask (kept apart from decoding errors)."""


_LOSSY_FORMATS = ("JPEG", "MPO")
# What PIL raises on a corrupt or truncated file, besides OSError (zlib and struct errors surface too).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error, Image.DecompressionBombError)


def _one_line(error: BaseException) -> str:
    """The first line of an exception's message (its type when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def object_ids(id_map: np.ndarray) -> list[int]:
    """The sorted non-zero object ids present in an id map."""
    values = np.unique(np.asarray(id_map))
    return [int(value) for value in values if value != 0]


def id_map_to_masks(id_map: np.ndarray, ids: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """Split an id map into {object id: bool HxW mask}; `ids` fixes the keys (absent ids -> empty)."""
    array = np.asarray(id_map)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D id map (HxW), got shape {array.shape}")
    keys = object_ids(array) if ids is None else [int(i) for i in ids]
    return {key: array == key for key in keys}


def masks_to_id_map(
    masks: Mapping[int, np.ndarray], shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Combine {object id: bool HxW} into a uint8 id map; where masks overlap, later entries win.

    `shape` (H, W) is needed only when `masks` is empty.
    """
    if not masks and shape is None:
        raise ValueError("masks_to_id_map: no masks and no shape given")
    if shape is None:
        shape = np.asarray(next(iter(masks.values()))).shape  # type: ignore[assignment]
    id_map = np.zeros(shape, dtype=np.uint8)
    for object_id, mask in masks.items():
        object_id = int(object_id)
        if not 1 <= object_id <= MAX_OBJECT_ID:
            raise ValueError(f"object id {object_id} out of range 1..{MAX_OBJECT_ID}")
        mask = np.asarray(mask)
        if mask.shape != tuple(shape):
            raise ValueError(f"mask of object {object_id} has shape {mask.shape}, expected {tuple(shape)}")
        id_map[mask.astype(bool)] = object_id
    return id_map


def colorize(id_map: np.ndarray) -> np.ndarray:
    """An HxWx3 uint8 RGB rendering of an id map with the DAVIS palette (for viewing)."""
    return davis_palette()[_as_id_map(id_map, "colorize")]
