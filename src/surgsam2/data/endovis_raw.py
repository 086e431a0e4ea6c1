"""Raw EndoVis 2017 / 2018 files: frame listing, the readers of one raw video, class names.

The layouts themselves (where the videos are under SRC, how they are split) are in
`surgsam2.data.endovis_layouts`; the conversion to the VOS layout in `surgsam2.data.endovis`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from surgsam2.data.classes import class_table
from surgsam2.data.masks import object_ids, read_mask
from surgsam2.data.vos import image_size, read_image

RAW_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

@dataclass(frozen=True)
class CropBox:
    """A fixed crop window in pixels: columns x..x+width, rows y..y+height."""

    x: int
    y: int
    width: int
    height: int

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The window of an HxW(xC) array, as a contiguous copy (so OpenCV can encode it)."""
        return np.ascontiguousarray(array[self.y : self.y + self.height, self.x : self.x + self.width])

    def to_json(self) -> dict[str, int]:
        """The crop as written to meta.json."""
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}


ENDOVIS17_RAW_SIZE = (1920, 1080)  # (width, height) of the 2017 left_frames
ENDOVIS17_CROP = CropBox(x=320, y=28, width=1280, height=1024)  # drops the black side bars
# The 2017 folder "Other_labels" holds the drop-in ultrasound probe (ISINet's "UP" column, class 7
# in ISINet/TernausNet, "Others" in SurgicalSAM); it takes whichever of these names the table has.
ENDOVIS17_OTHER_NAMES = ("Other", "Others", "Ultrasound Probe")

FRAME_FILE = re.compile(r"^frame(\d+)$", re.IGNORECASE)
VIDEO_NAMES = {2017: "instrument_dataset_{}", 2018: "seq_{}"}


def video_name(year: int, number: int) -> str:
    """The output name of raw video `number` (instrument_dataset_<k> / seq_<k>)."""
    return VIDEO_NAMES[year].format(number)

def size_text(shape: Sequence[int]) -> str:
    """'WxH' from a (height, width, ...) shape, for messages."""
    return f"{shape[1]}x{shape[0]}"


def numbers_text(numbers: Iterable[int], limit: int = 5) -> str:
    """A short list of frame numbers for messages ('0, 1, 2, ... (40 in all)')."""
    values = sorted(numbers)
    shown = ", ".join(str(value) for value in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")

# ---------------------------------------------------------------------------------------------
# listing raw folders


def raw_image_files(folder: Path) -> Iterator[Path]:
    """The image files of a raw folder in name order (hidden and non-image files skipped)."""
    for path in sorted(folder.iterdir()):
        if not path.name.startswith(".") and path.suffix.lower() in RAW_IMAGE_EXTENSIONS and path.is_file():
            yield path


def list_raw_frames(folder: Path, pattern: re.Pattern[str] = FRAME_FILE) -> dict[int, Path]:
    """{frame number: file} of the ``frame<NNN>.<png|jpg|bmp>`` files of one raw folder.

    Hidden and non-image files are skipped; an image file with another name, or two files with
    one frame number, is a ValueError naming the file, so a wrong folder is not half-converted.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"missing folder {folder}")
    frames: dict[int, Path] = {}
    for path in raw_image_files(folder):
        match = pattern.match(path.stem)
        if match is None:
            raise ValueError(
                f"unexpected file name {path} (expected frame<NNN>{path.suffix}, e.g. frame000.png)"
            )
        number = int(match.group(1))
        if number in frames:
            raise ValueError(
                f"frame {number} appears twice in {folder}: {frames[number].name} and {path.name}"
            )
        frames[number] = path
    if not frames:
        raise ValueError(f"no frame<NNN>.png files in {folder}")
    return frames


def check_matching_frames(
    frames: Mapping[int, Path], labels: Mapping[int, Path], frame_dir: Path, label_dir: Path
) -> None:
    """ValueError unless `labels` has exactly one file per frame of `frames` (same frame numbers)."""
    missing = set(frames) - set(labels)
    extra = set(labels) - set(frames)
    if not missing and not extra:
        return
    if not set(frames) & set(labels):
        raise ValueError(
            f"label folder {label_dir} has no frames matching {frame_dir}"
            f" (labels for frames {numbers_text(labels)}; frames {numbers_text(frames)})"
        )
    parts = []
    if missing:
        parts.append(f"no label for frame(s) {numbers_text(missing)}")
    if extra:
        parts.append(f"label(s) without a frame: {numbers_text(extra)}")
    raise ValueError(f"label folder {label_dir} does not match {frame_dir}: " + "; ".join(parts))


def _check_size(path: Path, expected: tuple[int, int], frame: Path, what: str = "label") -> None:
    """ValueError naming both files if the image at `path` is not `expected` (height, width)."""
    size = image_size(path)
    if size != expected:
        raise ValueError(
            f"{what} {path} is {size_text(size)} but its frame {frame} is {size_text(expected)}"
        )


def read_foreground(path: Path) -> np.ndarray:
    """A raw binary / part-label mask as bool HxW: True where any colour channel is > 0."""
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"label {path} could not be decoded")
    if image.ndim == 3:
        image = image[..., :3] if image.shape[2] >= 3 else image[..., :1]  # drop an alpha channel
        return (image > 0).any(axis=2)
    return image > 0


def check_endovis17_frame_shape(path: Path, shape: Sequence[int], crop: CropBox) -> None:
    """ValueError unless a raw 2017 frame has the size the crop is defined for (1920x1080)."""
    width, height = ENDOVIS17_RAW_SIZE
    if tuple(shape[:2]) != (height, width):
        raise ValueError(
            f"frame {path} is {size_text(shape)}, expected the EndoVis 2017 size {width}x{height}"
            f" (cropped to {crop.width}x{crop.height} at x={crop.x}, y={crop.y})"
        )


def read_endovis17_frame(path: Path, crop: CropBox) -> np.ndarray:
    """A raw 2017 frame as RGB, checked for its size and cropped."""
    rgb = read_image(path)
    check_endovis17_frame_shape(path, rgb.shape, crop)
    return crop.apply(rgb)


def read_class_map(
    path: Path, expected: tuple[int, int], frame: Path, classes: Mapping[int, int], year: int
) -> np.ndarray:
    """A label whose pixel value is the class id, checked against its frame's (height, width).

    A value that is neither 0 (background) nor a key of `classes` is a one-line ValueError.
    """
    id_map = read_mask(path)
    if id_map.shape != expected:
        raise ValueError(
            f"label {path} is {size_text(id_map.shape)} but its frame {frame} is {size_text(expected)}"
        )
    unknown = [value for value in object_ids(id_map) if value not in classes]
    if unknown:
        known = ", ".join(str(k) for k in sorted(classes))
        raise ValueError(
            f"label {path} has value(s) {', '.join(map(str, unknown))} that are not EndoVis {year}"
            f" instrument classes (expected 0 = background or {known})"
        )
    return id_map


# ---------------------------------------------------------------------------------------------
# raw videos


@dataclass
class RawVideo:
    """One raw EndoVis video: its frame files listed and checked, its object -> class table.

    `objects` lists every object the video may contain (object id -> class id); the converter
    keeps those that appear in some frame. `object_sources` says where each object comes from.
    """

    name: str
    number: int
    folder: Path
    frames: dict[int, Path]
    objects: dict[int, int]
    object_sources: dict[int, str]
    label_source: Path | None = None  # the label folder, where it is not inside `folder`

    def read_frame(self, number: int) -> np.ndarray:
        """Frame `number` as HxWx3 uint8 RGB, in the output geometry."""
        raise NotImplementedError

    def read_id_map(self, number: int) -> np.ndarray:
        """The HxW uint8 object-id map of frame `number`, in the output geometry."""
        raise NotImplementedError

    def check_sizes(self) -> None:
        """Read every frame's and label's header and raise a one-line error on a size mismatch."""
        raise NotImplementedError


@dataclass(frozen=True)
class InstrumentLabels:
    """One EndoVis 2017 ground-truth folder (one instrument instance) and the object it becomes."""

    folder: Path
    object_id: int
    class_id: int
    files: dict[int, Path]


@dataclass
class EndoVis17Video(RawVideo):
    """An EndoVis 2017 ``instrument_dataset_<k>``: 1920x1080 frames, one label folder per instrument."""

    instruments: list[InstrumentLabels] = field(default_factory=list)
    object_mode: str = "instance"
    crop: CropBox = ENDOVIS17_CROP

    def read_frame(self, number: int) -> np.ndarray:
        """The raw frame cropped to 1280x1024 from (x=320, y=28)."""
        return read_endovis17_frame(self.frames[number], self.crop)

    def read_id_map(self, number: int) -> np.ndarray:
        """Merge the instrument masks of frame `number` (later folders win on overlap), cropped."""
        width, height = ENDOVIS17_RAW_SIZE
        id_map = np.zeros((self.crop.height, self.crop.width), dtype=np.uint8)
        for instrument in self.instruments:
            path = instrument.files[number]
            mask = read_foreground(path)
            if mask.shape != (height, width):
                raise ValueError(
                    f"label {path} is {size_text(mask.shape)} but its frame {self.frames[number]}"
                    f" is {width}x{height}"
                )
            value = instrument.object_id if self.object_mode == "instance" else instrument.class_id
            id_map[self.crop.apply(mask)] = value
        return id_map

    def check_sizes(self) -> None:
        """Every frame must be 1920x1080 and every label the size of its frame."""
        for number, frame in self.frames.items():
            size = image_size(frame)
            check_endovis17_frame_shape(frame, size, self.crop)
            for instrument in self.instruments:
                _check_size(instrument.files[number], size, frame)


@dataclass
class EndoVis18Video(RawVideo):
    """An EndoVis 2018 sequence with instrument-type class maps (pixel value = class id)."""

    labels: dict[int, Path] = field(default_factory=dict)

    def read_frame(self, number: int) -> np.ndarray:
        """The raw frame, unchanged."""
        return read_image(self.frames[number])

    def read_id_map(self, number: int) -> np.ndarray:
        """The class map of frame `number`; object id = class id; other values are an error."""
        frame = self.frames[number]
        return read_class_map(self.labels[number], image_size(frame), frame, self.objects, 2018)

    def check_sizes(self) -> None:
        """Every label must be the size of its frame."""
        for number, frame in self.frames.items():
            _check_size(self.labels[number], image_size(frame), frame)


@dataclass
class EndoVis17TypeMapVideo(RawVideo):
    """An EndoVis 2017 test dataset: 1920x1080 frames and type maps (pixel = class id), both cropped."""

    labels: dict[int, Path] = field(default_factory=dict)
    crop: CropBox = ENDOVIS17_CROP

    def read_frame(self, number: int) -> np.ndarray:
        """The raw frame cropped to 1280x1024 from (x=320, y=28)."""
        return read_endovis17_frame(self.frames[number], self.crop)

    def read_id_map(self, number: int) -> np.ndarray:
        """The type map of frame `number`, cropped; object id = class id; other values are an error."""
        width, height = ENDOVIS17_RAW_SIZE
        id_map = read_class_map(self.labels[number], (height, width), self.frames[number], self.objects, 2017)
        return self.crop.apply(id_map)

    def check_sizes(self) -> None:
        """Every frame must be 1920x1080 and every type map the size of its frame."""
        for number, frame in self.frames.items():
            size = image_size(frame)
            check_endovis17_frame_shape(frame, size, self.crop)
            _check_size(self.labels[number], size, frame)


# ---------------------------------------------------------------------------------------------
# class names (the table itself lives in surgsam2.data.classes)


def _normalise(text: str) -> str:
    """Lower case, '_'/'-' as single spaces: 'Left_Prograsp_Forceps' -> 'left prograsp forceps'."""
    return " ".join(re.sub(r"[_\-]+", " ", text).lower().split())


def endovis17_class_of_folder(folder_name: str, table: Mapping[int, str] | None = None) -> int | None:
    """The 2017 class id of a ground-truth folder name, or None if it names no known instrument.

    The name is matched against the class names of ``class_table("endovis17")`` (longest name
    first, so 'Maryland_Bipolar_Forceps_labels' is Bipolar Forceps); ``Other_labels`` maps to the
    table's Other / Others / Ultrasound Probe entry.
    """
    table = class_table("endovis17") if table is None else table
    name = _normalise(folder_name)
    if name.endswith(" labels"):
        name = name[: -len(" labels")]
    padded = f" {name} "
    for class_id, class_name in sorted(table.items(), key=lambda item: -len(item[1])):
        if f" {_normalise(class_name)} " in padded:
            return class_id
    if " other " in padded or " others " in padded:
        by_name = {_normalise(class_name): class_id for class_id, class_name in table.items()}
        for candidate in ENDOVIS17_OTHER_NAMES:
            if _normalise(candidate) in by_name:
                return by_name[_normalise(candidate)]
    return None

