"""The VOS dataset layout (as SurgSAM2's VOS-EndoVis17/18): reader, writer and meta.json.

Layout under a dataset root::

    JPEGImages/<video>/<frame>.jpg|.png        RGB frames; <frame> is an integer (00000, 00001, ...)
    Annotations/<video>/<frame>.png            palette PNG, pixel value = object id, 0 background
    VOS/Annotations_vos_instrument/<video>/<frame>.png   optional prompt masks only: each object's
                                               mask on its first-appearance frame, combined per frame
    meta.json                                  optional: instrument class of each (video, object id)

Frames are sorted numerically (2 before 10); "position" below means the index in that order.

meta.json (all keys are strings, as JSON requires; unknown keys are kept on a round trip; class and
object ids are integers in 1..255; `read_meta` validates it all and names the file and key)::

    {
      "dataset": "synthetic",                       # free-form name of the dataset family
      "classes": {"1": "Bipolar Forceps", ...},     # class id -> class name
      "videos": {
        "synth_000": {"objects": {"1": {"class_id": 3}, "2": {"class_id": 6}}, ...},
        ...
      },
      ...                                           # other keys (e.g. "source") are preserved
    }
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from surgsam2.data.images import image_size, read_image
from surgsam2.data.masks import object_ids as _object_ids
from surgsam2.data.masks import read_mask, write_mask
from surgsam2.data.outputs import staged_folder

IMAGES_DIR = "JPEGImages"
ANNOTATIONS_DIR = "Annotations"
PROMPTS_DIR = "VOS/Annotations_vos_instrument"
META_FILE = "meta.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MASK_EXTENSIONS = (".png",)
FRAME_NAME_DIGITS = 5


# ---------------------------------------------------------------------------------------------
# meta.json


@dataclass
class DatasetMeta:
    """Contents of meta.json: dataset name, class table, and the class of each (video, object)."""

    dataset: str = "unknown"
    classes: dict[int, str] = field(default_factory=dict)
    objects: dict[str, dict[int, int]] = field(default_factory=dict)  # video -> object id -> class id
    video_extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # other per-video keys
    extra: dict[str, Any] = field(default_factory=dict)  # other top-level keys

    def class_id(self, video: str, object_id: int) -> int | None:
        """The class id of one object, or None if meta.json does not list it."""
        return self.objects.get(video, {}).get(int(object_id))

    def class_name(self, video: str, object_id: int) -> str | None:
        """The class name of one object, or None if unknown."""
        class_id = self.class_id(video, object_id)
        return None if class_id is None else self.classes.get(class_id)

    def to_json(self) -> dict[str, Any]:
        """The JSON-friendly dict written to meta.json."""
        videos: dict[str, Any] = {}
        for video in sorted(set(self.objects) | set(self.video_extra), key=natural_key):
            entry = dict(self.video_extra.get(video, {}))
            entry["objects"] = {
                str(obj): {"class_id": int(cls)} for obj, cls in sorted(self.objects.get(video, {}).items())
            }
            videos[video] = entry
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "classes": {str(k): v for k, v in sorted(self.classes.items())},
            "videos": videos,
        }
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "meta.json") -> DatasetMeta:
        """Parse and validate the dict read from meta.json; one-line ValueError naming `source`.

        Class ids and object ids are integers in 1..255 (what a uint8 map can hold); an object's
        class must be one of `classes` when that table is given.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a JSON object at the top level")
        classes = _parse_classes(data.get("classes"), source)
        objects: dict[str, dict[int, int]] = {}
        video_extra: dict[str, dict[str, Any]] = {}
        for video, entry in _mapping(data.get("videos"), f"{source}: 'videos'").items():
            where = f"{source}: videos.{video}"
            entry = _mapping(entry, where)
            objects[str(video)] = {
                _meta_id(obj, f"{where}.objects: object id"): _object_class(info, classes, f"{where}.objects.{obj}")
                for obj, info in _mapping(entry.get("objects"), f"{where}.objects").items()
            }
            rest = {k: v for k, v in entry.items() if k != "objects"}
            if rest:
                video_extra[str(video)] = rest
        extra = {k: v for k, v in data.items() if k not in ("dataset", "classes", "videos")}
        return cls(
            dataset=str(data.get("dataset", "unknown")),
            classes=classes,
            objects=objects,
            video_extra=video_extra,
            extra=extra,
        )

    def check_videos(self, videos: Iterable[str], source: str = META_FILE) -> None:
        """ValueError naming the videos that meta.json does not list, or lists without objects
        (before any of them is run)."""
        absent = [video for video in videos if not self.objects.get(video)]
        if absent:
            raise ValueError(f"{source} lists no objects for video(s) {', '.join(absent)}")


MAX_META_ID = 255  # class and object ids go into uint8 maps


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    """A JSON object (null counts as empty), or ValueError saying `what` must be one."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _meta_id(value: Any, what: str) -> int:
    """An id in 1..255 from a JSON key ("3") or value (3); bools and fractions are refused."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if number is None or not 1 <= number <= MAX_META_ID:
        raise ValueError(f"{what} must be an integer in 1..{MAX_META_ID}, got {value!r}")
    return number


def _parse_classes(value: Any, source: str) -> dict[int, str]:
    """The class table {id: name} of meta.json."""
    classes: dict[int, str] = {}
    for key, name in _mapping(value, f"{source}: 'classes'").items():
        class_id = _meta_id(key, f"{source}: classes: class id")
        if not isinstance(name, str):
            raise ValueError(f"{source}: classes.{key} must be a name (string), got {name!r}")
        classes[class_id] = name
    return classes


def _object_class(info: Any, classes: Mapping[int, str], where: str) -> int:
    """The class id of one object entry ({"class_id": c}, or a bare c), checked against `classes`."""
    if isinstance(info, Mapping):
        if "class_id" not in info:
            raise ValueError(f'{where} must be {{"class_id": <int>}}, got {json.dumps(info)[:80]}')
        info = info["class_id"]
    class_id = _meta_id(info, f"{where}: class_id")
    if classes and class_id not in classes:
        raise ValueError(f"{where} has class_id {class_id}, which is not among the classes {sorted(classes)}")
    return class_id


def read_meta(path: str | Path) -> DatasetMeta:
    """Read and validate a meta.json file (format in the module docstring): cheap, run it first.

    FileNotFoundError for a missing file; a one-line ValueError naming the file and the bad key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"meta file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror or error})") from None
    return DatasetMeta.from_json(data, source=str(path))


def write_meta(path: str | Path, meta: DatasetMeta) -> Path:
    """Write meta.json (indented, keys sorted numerically where they are ids)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta.to_json(), indent=2) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# frame names


def natural_key(name: str) -> list[Any]:
    """Sort key that orders embedded numbers numerically ("seq_2" < "seq_10")."""
    parts = [part for part in re.split(r"(\d+)", name) if part]
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts]


def frame_name(index: int, digits: int = FRAME_NAME_DIGITS) -> str:
    """The file stem of frame number `index` ("00042")."""
    if index < 0:
        raise ValueError(f"frame index must be >= 0, got {index}")
    return f"{index:0{digits}d}"


def list_frame_files(folder: str | Path, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """The frame files of one folder, sorted by their integer stems.

    Hidden files and files of other extensions are ignored. ValueError for a non-numeric stem or
    two files with the same frame number; FileNotFoundError for a missing folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    extensions = tuple(ext.lower() for ext in extensions)
    numbered: dict[int, Path] = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix.lower() not in extensions or not path.is_file():
            continue
        if not path.stem.isdigit():
            raise ValueError(f"frame file {path} has a non-numeric name (expected e.g. 00000{path.suffix})")
        number = int(path.stem)
        if number in numbered:
            raise ValueError(
                f"frame number {number} appears twice in {folder}: {numbered[number].name}, {path.name}"
            )
        numbered[number] = path
    return [numbered[number] for number in sorted(numbered)]


def list_videos(root: str | Path, list_file: str | Path | None = None) -> list[str]:
    """Video names: those of `list_file` if given, else every non-hidden sub-folder of `root`.

    The list file has one name per line; blank lines and # comments are skipped, duplicates
    dropped, order kept. Folders are sorted naturally (seq_2 before seq_10).
    """
    if list_file is None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"folder not found: {root}")
        return sorted((p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"video list file not found: {list_file}")
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{list_file}: not a UTF-8 text file of video names") from None
    names: list[str] = []
    for line in lines:
        name = line.strip()
        if name and not name.startswith("#") and name not in names:
            if "/" in name or "\\" in name or name in (".", ".."):
                raise ValueError(f"{list_file}: {name!r} is not a video folder name")
            names.append(name)
    return names


def _describe_frames(numbers: Iterable[int], limit: int = 5) -> str:
    values = sorted(numbers)
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


# ---------------------------------------------------------------------------------------------
# first appearance / prompts


def first_appearance(id_maps: Iterable[np.ndarray]) -> dict[int, int]:
    """{object id: position of the first id map where it is present}, from a sequence of id maps."""
    first: dict[int, int] = {}
    for position, id_map in enumerate(id_maps):
        for object_id in _object_ids(id_map):
            first.setdefault(object_id, position)
    return first


def new_object_prompt(id_map: np.ndarray, seen: set[int]) -> np.ndarray | None:
    """The id map restricted to objects not in `seen` (first appearances), or None; updates `seen`."""
    present = [i for i in _object_ids(id_map) if i not in seen]
    if not present:
        return None
    seen.update(present)
    return np.where(np.isin(id_map, present), id_map, 0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# reader


class VOSVideo:
    """One video of a VOS dataset: numerically sorted frames, lazily loaded images and masks."""

    def __init__(
        self,
        name: str,
        image_dir: Path,
        annotation_dir: Path | None = None,
        prompt_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.image_paths = list_frame_files(image_dir, IMAGE_EXTENSIONS)
        if not self.image_paths:
            raise ValueError(f"video {name!r}: no frames in {image_dir}")
        self.frame_numbers = [int(p.stem) for p in self.image_paths]
        self.frame_names = [p.stem for p in self.image_paths]
        self._position = {number: i for i, number in enumerate(self.frame_numbers)}
        self.annotation_paths: list[Path] | None = None
        if annotation_dir is not None and annotation_dir.is_dir():
            paths = list_frame_files(annotation_dir, MASK_EXTENSIONS)
            numbers = [int(p.stem) for p in paths]
            if numbers != self.frame_numbers:
                missing = set(self.frame_numbers) - set(numbers)
                extra = set(numbers) - set(self.frame_numbers)
                parts = []
                if missing:
                    parts.append(f"no annotation for frame(s) {_describe_frames(missing)}")
                if extra:
                    parts.append(f"annotation(s) without a frame: {_describe_frames(extra)}")
                raise ValueError(
                    f"video {name!r}: frames of {image_dir} and {annotation_dir} differ: " + "; ".join(parts)
                )
            self.annotation_paths = paths
        self.prompt_paths: dict[int, Path] = {}
        if prompt_dir is not None and prompt_dir.is_dir():
            for path in list_frame_files(prompt_dir, MASK_EXTENSIONS):
                number = int(path.stem)
                if number not in self._position:
                    raise ValueError(
                        f"video {name!r}: prompt mask {path} has no matching frame in {image_dir}"
                    )
                self.prompt_paths[self._position[number]] = path
        self._size: tuple[int, int] | None = None
        self._first_appearance: dict[int, int] | None = None

    def __len__(self) -> int:
        return len(self.image_paths)

    def __repr__(self) -> str:
        return f"VOSVideo({self.name!r}, frames={len(self)}, annotated={self.has_annotations})"

    @property
    def has_annotations(self) -> bool:
        """Whether this video has a full Annotations folder."""
        return self.annotation_paths is not None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the video, from the first frame's header."""
        if self._size is None:
            self._size = image_size(self.image_paths[0])
        return self._size

    def position_of(self, frame_number: int) -> int:
        """The position of a frame given its number (file stem as an integer)."""
        if frame_number not in self._position:
            raise ValueError(f"video {self.name!r} has no frame number {frame_number}")
        return self._position[frame_number]

    def _check_position(self, position: int) -> int:
        if not -len(self) <= position < len(self):
            raise IndexError(
                f"video {self.name!r}: frame position {position} out of range 0..{len(self) - 1}"
            )
        return position % len(self)

    def read_frame(self, position: int) -> np.ndarray:
        """Frame at `position` as HxWx3 uint8 RGB."""
        return read_image(self.image_paths[self._check_position(position)])

    def iter_frames(self) -> Iterator[np.ndarray]:
        """All frames in order, loaded one at a time."""
        for position in range(len(self)):
            yield self.read_frame(position)

    def _read_checked_mask(self, path: Path, position: int) -> np.ndarray:
        mask = read_mask(path)
        expected = image_size(self.image_paths[position])
        if mask.shape != expected:
            raise ValueError(
                f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but frame "
                f"{self.image_paths[position].name} of video {self.name!r} is {expected[1]}x{expected[0]}"
            )
        return mask

    def read_annotation(self, position: int) -> np.ndarray:
        """Ground-truth id map (HxW uint8) at `position`; checks that its size matches the frame."""
        position = self._check_position(position)
        if self.annotation_paths is None:
            raise FileNotFoundError(f"video {self.name!r} has no annotations")
        return self._read_checked_mask(self.annotation_paths[position], position)

    def iter_annotations(self) -> Iterator[np.ndarray]:
        """All ground-truth id maps in order."""
        for position in range(len(self)):
            yield self.read_annotation(position)

    @property
    def prompt_positions(self) -> list[int]:
        """Positions of the frames that have a prompt mask in VOS/Annotations_vos_instrument."""
        return sorted(self.prompt_paths)

    def read_prompt(self, position: int) -> np.ndarray | None:
        """The prompt id map at `position`, or None if that frame has no prompt mask."""
        position = self._check_position(position)
        path = self.prompt_paths.get(position)
        return None if path is None else self._read_checked_mask(path, position)

    def first_appearance(self) -> dict[int, int]:
        """{object id: position of its first annotated appearance} (reads all annotations once)."""
        if self._first_appearance is None:
            self._first_appearance = dict(sorted(first_appearance(self.iter_annotations()).items()))
        return dict(self._first_appearance)

    def object_ids(self) -> list[int]:
        """Sorted ids of every object annotated anywhere in the video."""
        return sorted(self.first_appearance())


class VOSDataset:
    """A dataset root in the VOS layout: lists videos and opens them (see module docstring)."""

    def __init__(
        self,
        root: str | Path,
        annotations: str = ANNOTATIONS_DIR,
        prompts: str = PROMPTS_DIR,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        self.image_root = self.root / IMAGES_DIR
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"{self.root} is not a VOS dataset: missing folder {self.image_root}")
        annotation_root = self.root / annotations
        prompt_root = self.root / prompts
        self.annotation_root: Path | None = annotation_root if annotation_root.is_dir() else None
        self.prompt_root: Path | None = prompt_root if prompt_root.is_dir() else None
        self.videos = list_videos(self.image_root)
        self._meta: DatasetMeta | None = None
        self._opened: dict[str, VOSVideo] = {}

    def __len__(self) -> int:
        return len(self.videos)

    def __repr__(self) -> str:
        return f"VOSDataset({str(self.root)!r}, videos={len(self)})"

    def __iter__(self) -> Iterator[VOSVideo]:
        for name in self.videos:
            yield self.video(name)

    def __getitem__(self, key: str | int) -> VOSVideo:
        return self.video(self.videos[key] if isinstance(key, int) else key)

    @property
    def meta(self) -> DatasetMeta | None:
        """The parsed meta.json, or None if the dataset has none."""
        path = self.root / META_FILE
        if self._meta is None and path.is_file():
            self._meta = read_meta(path)
        return self._meta

    def video(self, name: str) -> VOSVideo:
        """Open one video by name (frame lists are read once and cached)."""
        if name not in self._opened:
            image_dir = self.image_root / name
            if not image_dir.is_dir():
                raise FileNotFoundError(f"video {name!r} not found: missing folder {image_dir}")
            self._opened[name] = VOSVideo(
                name,
                image_dir,
                None if self.annotation_root is None else self.annotation_root / name,
                None if self.prompt_root is None else self.prompt_root / name,
            )
        return self._opened[name]


# ---------------------------------------------------------------------------------------------
# writer


@dataclass
class VOSWriter:
    """Writes frames, annotations, prompt masks and meta.json in the VOS layout under `root`."""

    root: Path
    image_format: str = "jpg"  # "jpg" or "png"
    jpeg_quality: int = 95
    digits: int = FRAME_NAME_DIGITS

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        fmt = self.image_format.lower().lstrip(".")
        fmt = "jpg" if fmt == "jpeg" else fmt
        if fmt not in ("jpg", "png"):
            raise ValueError(f"image format must be 'jpg' or 'png', got {self.image_format!r}")
        self.image_format = fmt
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {self.jpeg_quality}")

    def frame_path(self, video: str, index: int) -> Path:
        """Where frame `index` of `video` is written."""
        return self.root / IMAGES_DIR / video / f"{frame_name(index, self.digits)}.{self.image_format}"

    def write_frame(self, video: str, index: int, rgb: np.ndarray) -> Path:
        """Write an HxWx3 uint8 RGB frame as JPEG (with the writer's quality) or PNG."""
        frame = np.asarray(rgb)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(
                f"frame {index} of {video!r}: expected HxWx3 uint8 RGB, got {frame.shape} {frame.dtype}"
            )
        path = self.frame_path(video, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        if self.image_format == "jpg":
            ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(self.jpeg_quality)])
        else:
            ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise ValueError(f"could not encode frame {path}")
        data.tofile(str(path))
        return path

    def write_annotation(self, video: str, index: int, id_map: np.ndarray) -> Path:
        """Write a ground-truth id map to Annotations/<video>/<frame>.png."""
        name = f"{frame_name(index, self.digits)}.png"
        return write_mask(self.root / ANNOTATIONS_DIR / video / name, id_map)

    def write_prompt(self, video: str, index: int, id_map: np.ndarray) -> Path:
        """Write a prompt id map to VOS/Annotations_vos_instrument/<video>/<frame>.png."""
        name = f"{frame_name(index, self.digits)}.png"
        return write_mask(self.root / PROMPTS_DIR / video / name, id_map)

    def write_meta(self, meta: DatasetMeta) -> Path:
        """Write meta.json at the dataset root."""
        return write_meta(self.root / META_FILE, meta)

    def write_video(
        self,
        video: str,
        frames: Iterable[tuple[np.ndarray, np.ndarray | None]],
        prompts: bool = True,
    ) -> dict[int, int]:
        """Write a stream of (frame, id map or None) with annotations and first-appearance prompts.

        Returns {object id: frame index of first appearance}.
        """
        seen: set[int] = set()
        first: dict[int, int] = {}
        for index, (frame, id_map) in enumerate(frames):
            self.write_frame(video, index, frame)
            if id_map is None:
                continue
            id_map = np.asarray(id_map)
            if id_map.shape != frame.shape[:2]:
                raise ValueError(
                    f"video {video!r} frame {index}: mask shape {id_map.shape} does not match"
                    f" the frame's {frame.shape[:2]}"
                )
            self.write_annotation(video, index, id_map)
            prompt = new_object_prompt(id_map, seen)
            if prompt is not None:
                first.update({obj: index for obj in _object_ids(prompt)})
                if prompts:
                    self.write_prompt(video, index, prompt)
        return first


# ---------------------------------------------------------------------------------------------
# safe output folders


def staged_output_dir(out_dir: str | Path, overwrite: bool = False) -> contextlib.AbstractContextManager[Path]:
    """Yield a hidden staging folder beside `out_dir`; on success it replaces `out_dir` atomically.

    A non-empty `out_dir` is refused unless `overwrite`, and even then unless an earlier surgsam2
    run wrote it (its marker, see `surgsam2.data.outputs`); root, home and current folders are
    refused. On error the staging folder is removed, so a half-written dataset never appears.
    """
    return staged_folder(out_dir, overwrite=overwrite)
