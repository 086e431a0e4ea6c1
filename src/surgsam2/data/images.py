"""Image files as frames: decoding to HxWx3 uint8 RGB and header sizes, with one EXIF rule.

The rule: an EXIF orientation tag (JPEG, or a PNG eXIf chunk) is applied, as browsers and
`PIL.ImageOps.exif_transpose` do, to the pixels and to the size alike, so a frame's size read
from its header always equals the shape of its decoded pixels.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# EXIF orientation (tag 0x0112) -> how to turn the stored pixels upright, as PIL.ImageOps.exif_transpose.
_EXIF_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened image; 1 (upright) when absent or unreadable."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # malformed EXIF: treated as absent, for sizes and pixels alike
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation (1..8) of an image file; 1 when it has none or PIL cannot parse the file."""
    try:
        with Image.open(path) as image:
            return _orientation(image)
    except (OSError, SyntaxError, ValueError):  # the pixel decoder reports the file itself
        return 1


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """HxW[xC] pixels as stored -> as displayed, for an EXIF orientation 1..8."""
    transforms = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: np.rot90(a, k=2).swapaxes(0, 1),
        8: lambda a: np.rot90(a, k=1),
    }
    if orientation not in transforms:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation}")
    return np.ascontiguousarray(transforms[orientation](pixels))


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, turned upright by its EXIF orientation (as `image_size`).

    ValueError naming the file if it cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    # OpenCV would apply the orientation of JPEGs only; it is applied here, the same for every format.
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise ValueError(f"image {path} could not be decoded (corrupt or not an image)")
    return apply_orientation(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), exif_orientation(path))


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image as `read_image` returns it (EXIF orientation applied), from its header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = _orientation(image)
    except (OSError, SyntaxError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"image {path} is not readable ({reason})") from None
    return (width, height) if orientation in _SWAPS_AXES else (height, width)
