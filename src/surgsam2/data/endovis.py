"""Convert the raw EndoVis 2017 / 2018 instrument data into the VOS layout (`surgsam2 convert-endovis`).

What is read (``SRC`` is the folder given to ``--src``; ``[<group>/]`` means the video folders may
sit directly in SRC or one folder below it, e.g. the challenge's ``instrument_1_4_training/`` or
ISINet's ``miccai_challenge_2018_release_1/``)::

    EndoVis 2017 (Robotic Instrument Segmentation, training release):
      SRC/[<group>/]instrument_dataset_<k>/left_frames/frame<NNN>.png          1920x1080 RGB
      SRC/[<group>/]instrument_dataset_<k>/ground_truth/<Instrument>_labels/frame<NNN>.png
          one folder per instrument instance (Left_Prograsp_Forceps_labels, Right_..., Maryland_
          Bipolar_Forceps_labels, Other_labels, ...); a pixel > 0 is that instrument (the raw
          files hold part values 10/20/30 or 255; RGB files count any channel > 0).

    EndoVis 2018 (Robotic Scene Segmentation) with ISINet's instrument-type labels, either
      (a) per sequence:
      SRC/[<group>/]seq_<k>/left_frames/frame<NNN>.png                          1280x1024 RGB
      SRC/[<group>/]seq_<k>/<labels>/frame<NNN>.png     <labels> = instruments_masks or
          annotations (or --labels-dir NAME): single-channel PNG, pixel value = class id 1-7
      (b) ISINet's organised output (data/organize2018.py), in any number of groups (train/, val/):
      SRC/<group>/images/seq<k>_frame<NNN>.png
      SRC/<group>/annotations/seq<k>_frame<NNN>.png     pixel value = class id 1-7
    The challenge's own ``seq_<k>/labels/`` (RGB scene-part colours) are not instrument types.

What is written, for each split ``<split>`` of ``--split`` (``all`` = ``train`` and ``val``)::

    DST/<split>/JPEGImages/<video>/<frame>.jpg|png      2017: cropped to 1280x1024 from (320, 28)
    DST/<split>/Annotations/<video>/<frame>.png         palette PNG, pixel = object id
    DST/<split>/VOS/Annotations_vos_instrument/<video>/<frame>.png   first-appearance masks
    DST/<split>/meta.json                               object id -> class id, classes, source

``<video>`` is ``instrument_dataset_<k>`` / ``seq_<k>``; ``<frame>`` is the raw frame number on
five digits (``frame042.png`` -> ``00042``), so converted frames trace back to the raw files.

Objects: 2017 (default ``instance``) one object per ground-truth folder, ids 1..n in natural
folder order, class from the folder name; ``class`` mode merges them to object id = class id.
2018: object id = class id, one object per instrument class per sequence (as SurgSAM2's
VOS-EndoVis18): a class map cannot tell two instruments of one class apart, and per-frame connected
components have no identity over time. Class ids come from ``surgsam2.data.classes`` (one table).

Splits: 2017 follows the TernausNet / ISINet / SurgicalSAM 4-fold cross-validation of datasets 1-8
(fold 0: 1, 3; fold 1: 2, 5; fold 2: 4, 8; fold 3: 6, 7): ``val`` = the fold's datasets, ``train``
= the other six. 2018: ``val`` = seq 2, 5, 9, 15 (ISINet, SurgicalSAM, SurgSAM2), ``train`` = the
other sequences found. Each split folder is written atomically (``staged_output_dir``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import cv2
import numpy as np

from surgsam2.data.classes import class_table
from surgsam2.data.masks import object_ids, read_mask
from surgsam2.data.vos import (
    DatasetMeta,
    VOSWriter,
    image_size,
    natural_key,
    new_object_prompt,
    read_image,
    staged_output_dir,
)

YEARS = (2017, 2018)
SPLITS = ("train", "val", "all")
OBJECT_MODES = ("instance", "class")
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
ENDOVIS17_LABELLED_DATASETS = tuple(range(1, 9))  # instrument_dataset_1..8 have training labels
ENDOVIS17_FOLDS: Mapping[int, tuple[int, ...]] = MappingProxyType(
    {0: (1, 3), 1: (2, 5), 2: (4, 8), 3: (6, 7)}  # TernausNet / ISINet / SurgicalSAM folds
)
ENDOVIS18_VAL_SEQUENCES = (2, 5, 9, 15)
ENDOVIS18_LABEL_DIRS = ("instruments_masks", "annotations")
# The 2017 folder "Other_labels" holds the drop-in ultrasound probe (ISINet's "UP" column, class 7
# in ISINet/TernausNet, "Others" in SurgicalSAM); it takes whichever of these names the table has.
ENDOVIS17_OTHER_NAMES = ("Other", "Others", "Ultrasound Probe")

_FRAME_FILE = re.compile(r"^frame(\d+)$", re.IGNORECASE)
_FLAT_FILE = re.compile(r"^seq_?(\d+)_frame(\d+)$", re.IGNORECASE)
_VIDEO_DIR = {2017: re.compile(r"^instrument_dataset_(\d+)$"), 2018: re.compile(r"^seq_(\d+)$")}
_VIDEO_NAME = {2017: "instrument_dataset_{}", 2018: "seq_{}"}

T = TypeVar("T")
R = TypeVar("R")


def _video_name(year: int, number: int) -> str:
    """The output name of raw video `number` (instrument_dataset_<k> / seq_<k>)."""
    return _VIDEO_NAME[year].format(number)


def _relative_text(path: Path, root: Path) -> str:
    """`path` relative to `root` as text ('.' for the root itself), else the path as given."""
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        return str(path)


def _size_text(shape: Sequence[int]) -> str:
    """'WxH' from a (height, width, ...) shape, for messages."""
    return f"{shape[1]}x{shape[0]}"


def _numbers_text(numbers: Iterable[int], limit: int = 5) -> str:
    """A short list of frame numbers for messages ('0, 1, 2, ... (40 in all)')."""
    values = sorted(numbers)
    shown = ", ".join(str(value) for value in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


# ---------------------------------------------------------------------------------------------
# listing raw folders


def list_raw_frames(folder: Path, pattern: re.Pattern[str] = _FRAME_FILE) -> dict[int, Path]:
    """{frame number: file} of the ``frame<NNN>.<png|jpg|bmp>`` files of one raw folder.

    Hidden and non-image files are skipped; an image file with another name, or two files with
    one frame number, is a ValueError naming the file, so a wrong folder is not half-converted.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"missing folder {folder}")
    frames: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in RAW_IMAGE_EXTENSIONS or not path.is_file():
            continue
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
            f" (labels for frames {_numbers_text(labels)}; frames {_numbers_text(frames)})"
        )
    parts = []
    if missing:
        parts.append(f"no label for frame(s) {_numbers_text(missing)}")
    if extra:
        parts.append(f"label(s) without a frame: {_numbers_text(extra)}")
    raise ValueError(f"label folder {label_dir} does not match {frame_dir}: " + "; ".join(parts))


def _check_size(path: Path, expected: tuple[int, int], frame: Path, what: str = "label") -> None:
    """ValueError naming both files if the image at `path` is not `expected` (height, width)."""
    size = image_size(path)
    if size != expected:
        raise ValueError(
            f"{what} {path} is {_size_text(size)} but its frame {frame} is {_size_text(expected)}"
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

    def _check_frame_shape(self, path: Path, shape: Sequence[int]) -> None:
        """ValueError unless a raw frame has the 2017 size the crop is defined for."""
        width, height = ENDOVIS17_RAW_SIZE
        if tuple(shape[:2]) != (height, width):
            raise ValueError(
                f"frame {path} is {_size_text(shape)}, expected the EndoVis 2017 size {width}x{height}"
                f" (cropped to {self.crop.width}x{self.crop.height} at x={self.crop.x}, y={self.crop.y})"
            )

    def read_frame(self, number: int) -> np.ndarray:
        """The raw frame cropped to 1280x1024 from (x=320, y=28)."""
        path = self.frames[number]
        rgb = read_image(path)
        self._check_frame_shape(path, rgb.shape)
        return self.crop.apply(rgb)

    def read_id_map(self, number: int) -> np.ndarray:
        """Merge the instrument masks of frame `number` (later folders win on overlap), cropped."""
        width, height = ENDOVIS17_RAW_SIZE
        id_map = np.zeros((self.crop.height, self.crop.width), dtype=np.uint8)
        for instrument in self.instruments:
            path = instrument.files[number]
            mask = read_foreground(path)
            if mask.shape != (height, width):
                raise ValueError(
                    f"label {path} is {_size_text(mask.shape)} but its frame {self.frames[number]}"
                    f" is {width}x{height}"
                )
            value = instrument.object_id if self.object_mode == "instance" else instrument.class_id
            id_map[self.crop.apply(mask)] = value
        return id_map

    def check_sizes(self) -> None:
        """Every frame must be 1920x1080 and every label the size of its frame."""
        for number, frame in self.frames.items():
            size = image_size(frame)
            self._check_frame_shape(frame, size)
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
        path = self.labels[number]
        id_map = read_mask(path)
        expected = image_size(self.frames[number])
        if id_map.shape != expected:
            raise ValueError(
                f"label {path} is {_size_text(id_map.shape)} but its frame {self.frames[number]}"
                f" is {_size_text(expected)}"
            )
        unknown = [value for value in object_ids(id_map) if value not in self.objects]
        if unknown:
            known = ", ".join(str(k) for k in sorted(self.objects))
            raise ValueError(
                f"label {path} has value(s) {', '.join(map(str, unknown))} that are not EndoVis 2018"
                f" instrument classes (expected 0 = background or {known})"
            )
        return id_map

    def check_sizes(self) -> None:
        """Every label must be the size of its frame."""
        for number, frame in self.frames.items():
            _check_size(self.labels[number], image_size(frame), frame)


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


# ---------------------------------------------------------------------------------------------
# finding videos under SRC


@dataclass
class _VideoLocation:
    """Where one raw video is: a folder, or (2018 flat layout) pre-listed frame and label files."""

    number: int
    folder: Path
    frames: dict[int, Path] | None = None
    labels: dict[int, Path] | None = None
    label_dir: Path | None = None


def _child_dirs(folder: Path) -> list[Path]:
    """Visible sub-folders of `folder`, in natural order."""
    children = (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(children, key=lambda p: natural_key(p.name))


def _find_video_dirs(src: Path, year: int) -> dict[int, Path]:
    """{k: folder} of the instrument_dataset_<k> / seq_<k> folders in SRC, SRC/* or SRC itself."""
    pattern = _VIDEO_DIR[year]
    found: dict[int, Path] = {}

    def add(path: Path) -> bool:
        match = pattern.match(path.name)
        if match is None:
            return False
        number = int(match.group(1))
        if number in found:
            raise ValueError(f"{_video_name(year, number)} appears twice: {found[number]} and {path}")
        found[number] = path
        return True

    if add(src):
        return found
    for child in _child_dirs(src):
        if not add(child):
            for grandchild in _child_dirs(child):
                add(grandchild)
    return found


def _find_flat_2018(src: Path, labels_dir: str | None) -> tuple[dict[int, _VideoLocation], list[Path]]:
    """ISINet's organised 2018 layout: <group>/images/seq<k>_frame<NNN>.png + <group>/annotations/."""
    label_name = labels_dir or "annotations"
    groups = [folder for folder in [src, *_child_dirs(src)] if (folder / "images").is_dir()]
    videos: dict[int, _VideoLocation] = {}
    for group in groups:
        image_dir, label_dir = group / "images", group / label_name
        if not label_dir.is_dir():
            raise FileNotFoundError(f"missing folder {label_dir} (instrument-type labels for {image_dir})")
        images = _list_flat(image_dir)
        labels = _list_flat(label_dir)
        for number in sorted(images):
            frames = images[number]
            seq_labels = labels.get(number, {})
            pattern = f"seq{number}_frame*"
            check_matching_frames(frames, seq_labels, image_dir / pattern, label_dir / pattern)
            if number in videos:
                raise ValueError(f"seq_{number} appears in two groups: {videos[number].folder} and {group}")
            videos[number] = _VideoLocation(
                number, group, frames=frames, labels=seq_labels, label_dir=label_dir
            )
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise ValueError(
                f"label folder {label_dir} has labels of seq{orphans[0]}"
                f" but {image_dir} has no seq{orphans[0]} frames"
            )
    return videos, groups


def _list_flat(folder: Path) -> dict[int, dict[int, Path]]:
    """{sequence: {frame number: file}} of the seq<k>_frame<NNN>.png files of one flat folder."""
    out: dict[int, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in RAW_IMAGE_EXTENSIONS or not path.is_file():
            continue
        match = _FLAT_FILE.match(path.stem)
        if match is None:
            raise ValueError(
                f"unexpected file name {path}"
                f" (expected seq<k>_frame<NNN>{path.suffix}, e.g. seq2_frame000.png)"
            )
        sequence, number = int(match.group(1)), int(match.group(2))
        frames = out.setdefault(sequence, {})
        if number in frames:
            raise ValueError(
                f"seq{sequence} frame {number} appears twice in {folder}:"
                f" {frames[number].name} and {path.name}"
            )
        frames[number] = path
    return out


def discover_videos(
    year: int, src: Path, labels_dir: str | None = None
) -> tuple[str, dict[int, _VideoLocation]]:
    """(layout name, {k: location}) of the raw videos under SRC; FileNotFoundError if none.

    Only folder names are looked at here; each selected video is listed and checked later, so a
    broken video outside the requested split does not stop the conversion.
    """
    dirs = _find_video_dirs(src, year)
    if dirs:
        layout = "endovis17-raw" if year == 2017 else "endovis18-per-sequence"
        return layout, {number: _VideoLocation(number, folder) for number, folder in dirs.items()}
    if year == 2018:
        flat, groups = _find_flat_2018(src, labels_dir)
        if flat:
            return "endovis18-isinet-organised", flat
        if groups:
            folders = ", ".join(str(group / "images") for group in groups)
            raise FileNotFoundError(f"no seq<k>_frame<NNN>.png files in {folders}")
        raise FileNotFoundError(
            f"no EndoVis 2018 sequences under {src}: expected seq_<k>/left_frames/ (+ instruments_masks/ or"
            " annotations/) in SRC or SRC/<group>/, or ISINet's <group>/images/ + <group>/annotations/"
        )
    raise FileNotFoundError(
        f"no EndoVis 2017 videos under {src}: expected instrument_dataset_<k>/left_frames/ and"
        " ground_truth/ in SRC or SRC/<group>/ (e.g. instrument_1_4_training/)"
    )


def _build_2017(location: _VideoLocation, object_mode: str, table: Mapping[int, str]) -> EndoVis17Video:
    """List and check one instrument_dataset_<k>: left_frames, ground_truth folders, class names."""
    folder = location.folder
    frame_dir, truth_dir = folder / "left_frames", folder / "ground_truth"
    if not frame_dir.is_dir():
        raise FileNotFoundError(
            f"missing folder {frame_dir} (EndoVis 2017 frames: left_frames/frame<NNN>.png)"
        )
    if not truth_dir.is_dir():
        raise FileNotFoundError(
            f"missing folder {truth_dir} (EndoVis 2017 labels: ground_truth/<Instrument>_labels/)"
        )
    frames = list_raw_frames(frame_dir)
    label_dirs = _child_dirs(truth_dir)
    if not label_dirs:
        raise ValueError(f"no instrument label folders in {truth_dir}")
    instruments: list[InstrumentLabels] = []
    for object_id, label_dir in enumerate(label_dirs, start=1):
        class_id = endovis17_class_of_folder(label_dir.name, table)
        if class_id is None:
            names = ", ".join(table.values())
            raise ValueError(
                f"label folder {label_dir} names no known EndoVis 2017 instrument ({names}, Other)"
            )
        files = list_raw_frames(label_dir)
        check_matching_frames(frames, files, frame_dir, label_dir)
        instruments.append(InstrumentLabels(label_dir, object_id, class_id, files))
    objects: dict[int, int] = {}
    sources: dict[int, str] = {}
    for inst in instruments:
        object_id = inst.object_id if object_mode == "instance" else inst.class_id
        objects[object_id] = inst.class_id
        name = inst.folder.name
        sources[object_id] = f"{sources[object_id]}+{name}" if object_id in sources else name
    return EndoVis17Video(
        name=_video_name(2017, location.number),
        number=location.number,
        folder=folder,
        frames=frames,
        objects=objects,
        object_sources=sources,
        instruments=instruments,
        object_mode=object_mode,
    )


def _build_2018(location: _VideoLocation, labels_dir: str | None, table: Mapping[int, str]) -> EndoVis18Video:
    """List and check one 2018 sequence: left_frames + an instrument-type label folder."""
    folder = location.folder
    if location.frames is not None and location.labels is not None:
        frames, labels = location.frames, location.labels
        label_name = str(location.label_dir)
    else:
        frame_dir = folder / "left_frames"
        if not frame_dir.is_dir():
            raise FileNotFoundError(
                f"missing folder {frame_dir} (EndoVis 2018 frames: left_frames/frame<NNN>.png)"
            )
        candidates = (labels_dir,) if labels_dir else ENDOVIS18_LABEL_DIRS
        label_dir = next((folder / name for name in candidates if (folder / name).is_dir()), None)
        if label_dir is None:
            hint = (
                f"; {folder / 'labels'} holds the challenge's RGB scene labels, not instrument types"
                if (folder / "labels").is_dir()
                else ""
            )
            raise FileNotFoundError(
                f"missing folder {folder / candidates[0]} (instrument-type labels, pixel = class id;"
                f" looked for {', '.join(candidates)}; use --labels-dir for another name){hint}"
            )
        frames = list_raw_frames(frame_dir)
        labels = list_raw_frames(label_dir)
        check_matching_frames(frames, labels, frame_dir, label_dir)
        label_name = label_dir.name
    return EndoVis18Video(
        name=_video_name(2018, location.number),
        number=location.number,
        folder=folder,
        frames=frames,
        objects={class_id: class_id for class_id in table},
        object_sources={class_id: f"class {class_id} of {label_name}" for class_id in table},
        labels=labels,
    )


# ---------------------------------------------------------------------------------------------
# splits


def split_videos(year: int, split: str, found: Iterable[int], fold: int = 0) -> dict[str, tuple[int, ...]]:
    """{split name: video numbers} of the standard split(s) for `split` ('all' = train and val).

    2017: val = the fold's two datasets, train = the other datasets of 1-8 (others are not in
    the protocol). 2018: val = seq 2, 5, 9, 15, train = every other sequence in `found`.
    Numbers not in `found` are left in: the caller reports them as missing.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if year == 2017:
        if fold not in ENDOVIS17_FOLDS:
            raise ValueError(f"EndoVis 2017 fold must be 0-3, got {fold}")
        val = ENDOVIS17_FOLDS[fold]
        train = tuple(k for k in ENDOVIS17_LABELLED_DATASETS if k not in val)
    elif year == 2018:
        val = ENDOVIS18_VAL_SEQUENCES
        train = tuple(k for k in sorted(set(found)) if k not in val)
    else:
        raise ValueError(f"year must be 2017 or 2018, got {year}")
    names = ("train", "val") if split == "all" else (split,)
    return {name: (train if name == "train" else val) for name in names}


# ---------------------------------------------------------------------------------------------
# conversion


@dataclass
class SplitSummary:
    """What was written for one split."""

    split: str
    root: Path
    videos: list[str]
    frames: int
    objects: int
    missing: list[str]  # videos of the standard split that were not found under SRC


@dataclass
class EndoVisConversionSummary:
    """What `convert_endovis` did: layout read, fold, object mode, the splits written, time."""

    year: int
    layout: str
    fold: int | None
    object_mode: str
    splits: list[SplitSummary]
    ignored: list[str]  # videos found under SRC that belong to no requested split
    seconds: float


@dataclass
class _VideoResult:
    """Per-video outcome: frames written and each object's first-appearance frame number."""

    name: str
    frames: int
    first_appearance: dict[int, int]


def _convert_video(video: RawVideo, writer: VOSWriter) -> _VideoResult:
    """Write one video's frames, annotations and first-appearance prompts under the writer root."""
    seen: set[int] = set()
    first: dict[int, int] = {}
    for number in sorted(video.frames):
        rgb = video.read_frame(number)
        id_map = video.read_id_map(number)
        writer.write_frame(video.name, number, rgb)
        writer.write_annotation(video.name, number, id_map)
        prompt = new_object_prompt(id_map, seen)
        if prompt is not None:
            first.update({object_id: number for object_id in object_ids(prompt)})
            writer.write_prompt(video.name, number, prompt)
    return _VideoResult(video.name, len(video.frames), first)


def _run_parallel(func: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """`func` over `items` on up to `workers` threads (OpenCV I/O releases the GIL), in order.

    The first error is raised and the tasks not yet started are cancelled.
    """
    if workers <= 1 or len(items) <= 1:
        return [func(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures = [pool.submit(func, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _check_targets(src: Path, targets: Iterable[Path], overwrite: bool) -> None:
    """Refuse, before anything is written, a non-empty target (without overwrite) or one holding SRC."""
    resolved_src = src.resolve()
    for target in targets:
        if target.exists() and not target.is_dir():
            raise NotADirectoryError(f"output path exists and is not a folder: {target}")
        resolved = target.resolve()
        if resolved == resolved_src or resolved in resolved_src.parents:
            raise ValueError(f"refusing to write {target}: it contains the source folder {src}")
        if target.is_dir() and any(target.iterdir()) and not overwrite:
            raise ValueError(
                f"output folder {target} is not empty (use --overwrite / overwrite=True to replace it)"
            )


def convert_endovis(
    src: str | Path,
    dst: str | Path,
    year: int,
    split: str = "all",
    fold: int | None = None,
    object_mode: str | None = None,
    labels_dir: str | None = None,
    image_format: str = "jpg",
    jpeg_quality: int = 95,
    overwrite: bool = False,
    workers: int = 1,
    progress: Callable[[str, str, int], None] | None = None,
) -> EndoVisConversionSummary:
    """Convert raw EndoVis `year` data under `src` to the VOS layout in `dst`/<split>/ (module docstring).

    `fold` (2017 only, default 0) picks the cross-validation fold; `object_mode` is 'instance'
    (2017 default) or 'class' (2018: the only choice); `labels_dir` names the 2018 label folder.
    The whole selected raw layout is listed and size-checked before writing; each split folder is
    built in a temp folder and renamed into place. `progress(split, video, frames)` is called
    after each video (from worker threads when `workers` > 1).
    """
    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    if year not in YEARS:
        raise ValueError(f"year must be 2017 or 2018, got {year}")
    if year == 2018 and fold is not None:
        raise ValueError("--fold applies to EndoVis 2017 only (EndoVis 2018 has one validation split)")
    if year == 2017 and labels_dir is not None:
        raise ValueError(
            "--labels-dir applies to EndoVis 2018 only (2017 labels are ground_truth/<Instrument>_labels/)"
        )
    mode = object_mode or ("instance" if year == 2017 else "class")
    if mode not in OBJECT_MODES:
        raise ValueError(f"object mode must be one of {', '.join(OBJECT_MODES)}, got {mode!r}")
    if year == 2018 and mode != "class":
        raise ValueError(
            "EndoVis 2018 instrument-type labels are class maps: objects are per class"
            " (object id = class id); 'instance' is not available"
        )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    VOSWriter(dst, image_format=image_format, jpeg_quality=jpeg_quality)  # validates the format options
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    chosen_fold = (0 if fold is None else int(fold)) if year == 2017 else None
    table = class_table(f"endovis{year % 100}")

    layout, locations = discover_videos(year, src, labels_dir)
    plan = split_videos(year, split, locations, fold=chosen_fold or 0)
    selected = sorted({number for numbers in plan.values() for number in numbers if number in locations})
    for name, numbers in plan.items():
        if not any(number in locations for number in numbers):
            wanted = ", ".join(_video_name(year, number) for number in numbers)
            wanted = wanted or "any sequence besides the validation ones"
            raise FileNotFoundError(f"no EndoVis {year} {name} videos under {src} (expected {wanted})")
    ignored = [_video_name(year, number) for number in sorted(set(locations) - set(selected))]
    targets = {name: dst / name for name in plan}
    _check_targets(src, targets.values(), overwrite)

    videos: dict[int, RawVideo] = {}
    for number in selected:
        if year == 2017:
            video: RawVideo = _build_2017(locations[number], mode, table)
        else:
            video = _build_2018(locations[number], labels_dir, table)
        video.check_sizes()
        videos[number] = video

    summaries: list[SplitSummary] = []
    for name, numbers in plan.items():
        members = [videos[number] for number in numbers if number in videos]
        missing = [_video_name(year, number) for number in numbers if number not in videos]
        meta = DatasetMeta(dataset=f"endovis{year % 100}", classes=dict(table))
        meta.extra["source"] = {
            "converter": "surgsam2 convert-endovis",
            "year": year,
            "layout": layout,
            "split": name,
            "fold": chosen_fold,
            "object_mode": mode,
            "crop": ENDOVIS17_CROP.to_json() if year == 2017 else None,
            "frame_names": "raw frame number, 5 digits (frame042.png -> 00042)",
            "videos": [video.name for video in members],
            "missing": missing,
        }
        with staged_output_dir(targets[name], overwrite=overwrite) as staging:
            writer = VOSWriter(staging, image_format=image_format, jpeg_quality=jpeg_quality)

            def convert_one(video: RawVideo, split_name: str = name, out: VOSWriter = writer) -> _VideoResult:
                result = _convert_video(video, out)
                if progress is not None:
                    progress(split_name, video.name, result.frames)
                return result

            results = _run_parallel(convert_one, members, workers)
            for video, result in zip(members, results):
                present = sorted(result.first_appearance)
                meta.objects[video.name] = {obj: video.objects[obj] for obj in present}
                extra: dict[str, Any] = {
                    "source": _relative_text(video.folder, src),
                    "frames": result.frames,
                    "object_sources": {str(obj): video.object_sources[obj] for obj in present},
                    "first_appearance": {str(obj): result.first_appearance[obj] for obj in present},
                }
                meta.video_extra[video.name] = extra
            writer.write_meta(meta)
        summaries.append(
            SplitSummary(
                split=name,
                root=targets[name],
                videos=[video.name for video in members],
                frames=sum(result.frames for result in results),
                objects=sum(len(objects) for objects in meta.objects.values()),
                missing=missing,
            )
        )
    return EndoVisConversionSummary(
        year=year,
        layout=layout,
        fold=chosen_fold,
        object_mode=mode,
        splits=summaries,
        ignored=ignored,
        seconds=time.perf_counter() - start,
    )
