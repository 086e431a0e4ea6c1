"""A clip's frames as a lazily read, bounded-cache sequence, opened only from safe places: a
frame folder or video under the data directory, or an upload kept in the session's temp dir."""

from __future__ import annotations

import threading
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from surgsam2.data.images import read_image
from surgsam2.data.video import FrameFolderSource, open_video
from surgsam2.data.vos import IMAGE_EXTENSIONS

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
DEFAULT_CACHE_BYTES = 256 * 2**20
ZIP_EXPANSION_LIMIT = 20  # a zip may unpack to at most this many times the upload limit


class LazyFrames(Sequence[np.ndarray]):
    """The frames of a frame folder, read on demand; decoded frames are kept in an LRU cache of at
    most ``cache_bytes`` so that a long video is never held in memory whole."""

    def __init__(self, folder: Path, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.source = FrameFolderSource(folder)
        self.name = self.source.name
        self.frame_size = self.source.frame_size
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.source.frame_paths)

    def frame_name(self, index: int) -> str:
        return self.source.frame_name(index)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError("LazyFrames does not support slices")
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range: the clip has {len(self)} frames")
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        frame = read_image(self.source.frame_paths[index])
        if frame.shape[:2] != self.frame_size:
            raise ValueError(f"frame {self.source.frame_paths[index].name} has another size than the first frame")
        with self._lock:
            self._cache[index] = frame
            while len(self._cache) > 1 and sum(f.nbytes for f in self._cache.values()) > self.cache_bytes:
                self._cache.popitem(last=False)
        return frame


def resolve_in_data_dir(data_dir: Path | None, relative: str) -> Path:
    """The path ``relative`` names inside ``data_dir``; refuses absolute paths, ``..`` and symlinks
    that lead outside it (ValueError), and missing paths (FileNotFoundError)."""
    if data_dir is None:
        raise ValueError("the server was started without --data-dir: upload a video or a zip of frames instead")
    if not relative or "\x00" in relative:
        raise ValueError("empty path")
    candidate = Path(relative)
    if candidate.is_absolute() or relative.startswith(("/", "\\")) or ":" in candidate.parts[0]:
        raise ValueError(f"path {relative!r} must be relative to the data directory")
    if ".." in candidate.parts or ".." in relative.replace("\\", "/").split("/"):
        raise ValueError(f"path {relative!r} may not contain '..'")
    root = data_dir.resolve()
    resolved = (root / candidate).resolve()
    if resolved != root and root not in resolved.parents:
        raise ValueError(f"path {relative!r} leads outside the data directory")
    if not resolved.exists():
        raise FileNotFoundError(f"no such file or folder in the data directory: {relative}")
    return resolved


def list_data_dir(data_dir: Path | None, limit: int = 500) -> list[dict[str, str]]:
    """Frame folders and video files under ``data_dir`` (two levels), as relative paths."""
    if data_dir is None:
        return []
    root = data_dir.resolve()
    entries: list[dict[str, str]] = []
    for path in sorted(root.glob("*")) + sorted(root.glob("*/*")):
        if len(entries) >= limit:
            break
        resolved = path.resolve()
        if resolved != root and root not in resolved.parents:
            continue  # a symlink out of the data directory is not offered
        if path.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir()):
            entries.append({"path": path.relative_to(root).as_posix(), "kind": "frames"})
        elif path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
            entries.append({"path": path.relative_to(root).as_posix(), "kind": "video"})
    return entries


def decode_video_to_folder(video: Path, folder: Path) -> Path:
    """Decode every frame of a video file (the library's reader) into lossless PNGs in ``folder``
    (the session's private temp dir), so frames can be revisited in any order."""
    folder.mkdir(parents=True, exist_ok=True)
    with open_video(video) as source:
        count = 0
        for index, frame in enumerate(source):
            cv2.imwrite(str(folder / f"{index:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_PNG_COMPRESSION, 1])  # fmt: skip
            count += 1
    if count == 0:
        raise ValueError(f"video {video.name} has no frames")
    return folder


def extract_frame_zip(archive: Path, folder: Path, max_bytes: int) -> Path:
    """Unpack the image files of a zip of frames flat into ``folder``; refuses member names with
    folders or '..', duplicate names, and archives that unpack to more than ``max_bytes``."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise ValueError("the upload is not a readable zip file") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir() and Path(m.filename).suffix.lower() in IMAGE_EXTENSIONS]
        if not members:
            raise ValueError(f"the zip holds no frames ({'/'.join(IMAGE_EXTENSIONS)} files)")
        if sum(m.file_size for m in members) > max_bytes:
            raise ValueError(f"the zip unpacks to more than {max_bytes // 2**20} MB")
        folder.mkdir(parents=True, exist_ok=True)
        names: set[str] = set()
        for member in members:
            name = member.filename.replace("\\", "/")
            if name.startswith("/") or ".." in name.split("/"):
                raise ValueError(f"zip member {member.filename!r} has an unsafe name")
            base = name.rsplit("/", 1)[-1]
            if base.startswith(".") or base in names:
                raise ValueError(f"zip member {member.filename!r} is hidden or a duplicate frame name")
            names.add(base)
            (folder / base).write_bytes(zf.read(member))
    return folder


def open_frames(path: Path, work_dir: Path, cache_bytes: int = DEFAULT_CACHE_BYTES) -> LazyFrames:
    """Frames of a frame folder, or of a video file decoded into ``work_dir`` first."""
    if path.is_dir():
        return LazyFrames(path, cache_bytes)
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise ValueError(f"unsupported file {path.name}: open a frame folder or a video ({', '.join(VIDEO_EXTENSIONS)})")
    return LazyFrames(decode_video_to_folder(path, work_dir / "frames"), cache_bytes)
