"""Video input and output: lazy frame sources (files, frame folders, cameras, streams) and writers.

Sources yield HxWx3 uint8 RGB numpy frames one at a time, so a video is never held in memory:

    with open_video("clip.mp4") as video:          # or a folder of 00000.jpg..., 0 (camera), rtsp://...
        print(video.name, video.frame_size, video.fps, video.num_frames)
        for frame in video:
            ...

Writers publish their output atomically: they write under a hidden temporary name in the output
folder and rename it on `close()` (or on a clean exit of their `with` block); on an exception the
temporary output is removed, so a half-written result never looks complete.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import cv2
import numpy as np

from surgsam2.data.masks import masks_to_id_map, write_mask
from surgsam2.data.vos import IMAGE_EXTENSIONS, frame_name, image_size, list_frame_files, read_image, staged_output_dir
from surgsam2.data.overlay import MasksLike, as_id_map, overlay_masks

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mts")
DEFAULT_WRITER_FPS = 30.0
_URL_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
# Containers whose frame count OpenCV reads from an index (exact); others may report an estimate.
_EXACT_COUNT_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi")
_MAX_PLAUSIBLE_FPS = 1000.0  # some containers report a time base (e.g. 90000) instead of a frame rate


# ---------------------------------------------------------------------------------------------
# helpers


def _capture_api() -> int:
    """OpenCV backend for files and URLs: FFmpeg when this build has it, else whatever OpenCV picks.

    Naming FFmpeg also keeps OpenCV from reading a file name with '%' as an image-sequence pattern.
    """
    try:
        if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
            return cv2.CAP_FFMPEG
    except AttributeError:  # very old OpenCV without the registry
        pass
    return cv2.CAP_ANY


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    """OpenCV's BGR (or gray / BGRA) uint8 frame -> HxWx3 uint8 RGB."""
    if frame.dtype != np.uint8:
        frame = cv2.convertScaleAbs(frame)
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def _plausible_fps(value: float) -> float | None:
    """A frame rate reported by OpenCV, or None when it is missing or implausible."""
    if not math.isfinite(value) or value <= 0 or value > _MAX_PLAUSIBLE_FPS:
        return None
    return float(value)


def _url_name(url: str) -> str:
    """A short file-system-safe name for a stream URL (last path part without extension, or host)."""
    rest = _URL_PATTERN.sub("", url).split("?")[0].split("#")[0]
    host, _, path = rest.partition("/")
    parts = [part for part in path.split("/") if part]
    candidate = Path(parts[-1]).stem if parts else host.rpartition("@")[2]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", candidate).strip("._")
    return name or "stream"


def _redact(url: str) -> str:
    """The URL without user:password, for messages."""
    return re.sub(r"(://)[^/@]*@", r"\1***@", url)


# ---------------------------------------------------------------------------------------------
# sources


class VideoSource:
    """A lazy sequence of HxWx3 uint8 RGB frames with its metadata; iterate it, then close it.

    `frame_size` is (H, W), known once opened; `fps` and `num_frames` are None when unknown (folders
    have no frame rate; cameras and streams have no length). `name` is a short id for output folders.
    """

    name: str
    fps: float | None
    frame_size: tuple[int, int]
    num_frames: int | None

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def frame_name(self, index: int) -> str:
        """The name of frame `index` for output files: its position, five digits ("00042").

        A frame folder overrides this with the input file's own stem, so outputs match inputs.
        """
        return frame_name(index)

    def close(self) -> None:
        """Release the underlying file or device (idempotent)."""

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        height, width = self.frame_size
        return (
            f"{type(self).__name__}(name={self.name!r}, frame_size=({height}, {width}),"
            f" fps={self.fps}, num_frames={self.num_frames})"
        )


class VideoFileSource(VideoSource):
    """Frames of a video file decoded by OpenCV (FFmpeg); each iteration reads from the start.

    `num_frames` comes from the container header (exact for mp4/mov/avi, an estimate for some
    other formats). A partial input is an error, never a short result: a frame that cannot be
    decoded, or a video that ends before its declared length, raises ValueError naming the file and
    the frame number. Only for containers whose count may be an estimate is ending exactly one frame
    short a RuntimeWarning instead.
    """

    def __init__(self, path: str | Path, fps: float | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video file not found: {self.path}")
        self.name = self.path.stem
        self._active: set[Any] = set()
        self._closed = False
        capture = self._open_capture()
        try:
            ok, first = capture.read()
            if not ok or first is None:
                raise ValueError(f"video {self.path} has no readable frames (empty or corrupt)")
            first_rgb = _to_rgb(first)
            self.backend = capture.getBackendName()
            self.fps = float(fps) if fps is not None else _plausible_fps(capture.get(cv2.CAP_PROP_FPS))
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        except BaseException:
            capture.release()
            raise
        self.num_frames: int | None = count if count > 0 else None
        self.frame_size = (int(first_rgb.shape[0]), int(first_rgb.shape[1]))
        self._pending: tuple[Any, np.ndarray] | None = (capture, first_rgb)

    def _open_capture(self) -> Any:
        """A fresh cv2.VideoCapture on the file; ValueError naming the file if it cannot be opened."""
        capture = cv2.VideoCapture(str(self.path), _capture_api())
        if not capture.isOpened():
            capture.release()
            raise ValueError(f"video {self.path} could not be opened (corrupt, or a format OpenCV/FFmpeg cannot read)")
        return capture

    def _check(self, frame: np.ndarray, index: int) -> np.ndarray:
        """The frame, after checking its size matches the video's."""
        if frame.shape[:2] != self.frame_size:
            raise ValueError(
                f"frame {index} of video {self.path} is {frame.shape[1]}x{frame.shape[0]},"
                f" expected {self.frame_size[1]}x{self.frame_size[0]}"
            )
        return frame

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._closed:
            raise ValueError(f"video {self.path} is closed")
        if self._pending is not None:
            capture, first = self._pending
            self._pending = None
        else:
            capture = self._open_capture()
            ok, raw = capture.read()
            if not ok or raw is None:
                capture.release()
                raise ValueError(f"frame 0 of video {self.path} could not be decoded")
            first = _to_rgb(raw)
        return self._frames(capture, first)

    def _frames(self, capture: Any, first: np.ndarray) -> Iterator[np.ndarray]:
        """Generator over one capture: yields the already decoded first frame, then the rest."""
        self._active.add(capture)
        try:
            yield self._check(first, 0)
            index = 1
            while True:
                if not capture.grab():
                    # End of file, or an undecodable frame: if a later frame decodes, it was the latter.
                    if capture.grab():
                        raise ValueError(f"frame {index} of video {self.path} could not be decoded (file corrupt)")
                    self._check_complete(index)
                    return
                ok, raw = capture.retrieve()
                if not ok or raw is None:
                    raise ValueError(f"frame {index} of video {self.path} could not be decoded")
                yield self._check(_to_rgb(raw), index)
                index += 1
        finally:
            capture.release()
            self._active.discard(capture)

    def _check_complete(self, frames_read: int) -> None:
        """At the end of the file: ValueError when fewer frames were read than the header declares."""
        if self.num_frames is None or frames_read >= self.num_frames:
            return
        message = (
            f"frame {frames_read} of video {self.path} could not be decoded (file corrupt or truncated:"
            f" it declares {self.num_frames} frames, {frames_read} were read)"
        )
        if frames_read == self.num_frames - 1 and self.path.suffix.lower() not in _EXACT_COUNT_EXTENSIONS:
            warnings.warn(message + "; the declared count may be an estimate", RuntimeWarning, stacklevel=4)
            return
        raise ValueError(message)

    def close(self) -> None:
        """Release every open capture of this file (idempotent)."""
        self._closed = True
        if self._pending is not None:
            self._pending[0].release()
            self._pending = None
        for capture in list(self._active):
            capture.release()
        self._active.clear()


class FrameFolderSource(VideoSource):
    """Frames from a folder of jpg/png files with integer names (00000.jpg ...), in numeric order.

    All frame headers are checked at open, so a frame of another size fails before any work starts;
    an unreadable frame file is a ValueError naming it. `frame_name(i)` is the stem of frame i's
    file ("00001" for 00001.jpg) and `frame_paths` / `frame_numbers` give each file and number.
    """

    def __init__(self, folder: str | Path, fps: float | None = None) -> None:
        self.folder = Path(folder)
        self.frame_paths = list_frame_files(self.folder, IMAGE_EXTENSIONS)
        if not self.frame_paths:
            raise ValueError(f"frame folder {self.folder} has no frames ({'/'.join(IMAGE_EXTENSIONS)} files)")
        self.frame_numbers = [int(path.stem) for path in self.frame_paths]
        self.name = self.folder.resolve().name
        self.fps = None if fps is None else float(fps)
        self.num_frames = len(self.frame_paths)
        self.frame_size = image_size(self.frame_paths[0])
        for path in self.frame_paths[1:]:
            size = image_size(path)
            if size != self.frame_size:
                raise ValueError(self._size_message(path, size))

    def _size_message(self, path: Path, size: tuple[int, int]) -> str:
        return (
            f"frame {path} is {size[1]}x{size[0]} but the first frame {self.frame_paths[0].name}"
            f" is {self.frame_size[1]}x{self.frame_size[0]}: all frames of a video must have one size"
        )

    def frame_name(self, index: int) -> str:
        """The stem of frame `index`'s file, so that outputs carry the input's own frame names."""
        if not 0 <= index < len(self.frame_paths):
            raise IndexError(f"frame {index} out of range: {self.folder} has {len(self.frame_paths)} frames")
        return self.frame_paths[index].stem

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.frame_paths:
            frame = read_image(path)
            if frame.shape[:2] != self.frame_size:
                raise ValueError(self._size_message(path, frame.shape[:2]))
            yield frame


class CaptureStreamSource(VideoSource):
    """Frames from a camera (by index) or a network stream URL via OpenCV, until the stream ends.

    Live: iterating again continues from the current frame; `num_frames` is None. The first frame is
    read at open to learn the frame size (and to fail early on a dead device or URL).
    """

    def __init__(self, source: int | str, fps: float | None = None) -> None:
        if isinstance(source, int):
            self.description = f"camera {source}"
            self.name = f"camera{source}"
            capture = cv2.VideoCapture(source)
        else:
            self.description = f"stream {_redact(source)}"
            self.name = _url_name(source)
            capture = cv2.VideoCapture(source, _capture_api())
        if not capture.isOpened():
            capture.release()
            hint = " (no such device, or it is in use)" if isinstance(source, int) else " (unreachable or unsupported)"
            raise ValueError(f"{self.description} could not be opened{hint}")
        ok, first = capture.read()
        if not ok or first is None:
            capture.release()
            raise ValueError(f"{self.description} opened but delivered no frame")
        self._capture: Any = capture
        self._first: np.ndarray | None = _to_rgb(first)
        self._index = 0
        self.fps = float(fps) if fps is not None else _plausible_fps(capture.get(cv2.CAP_PROP_FPS))
        self.num_frames = None
        self.frame_size = (int(self._first.shape[0]), int(self._first.shape[1]))

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._capture is None:
            raise ValueError(f"{self.description} is closed")
        while self._capture is not None:
            if self._first is not None:
                frame, self._first = self._first, None
            else:
                ok, raw = self._capture.read()
                if not ok or raw is None:
                    return  # the stream ended or the device went away
                frame = _to_rgb(raw)
            if frame.shape[:2] != self.frame_size:
                raise ValueError(
                    f"frame {self._index} of {self.description} is {frame.shape[1]}x{frame.shape[0]},"
                    f" expected {self.frame_size[1]}x{self.frame_size[0]}"
                )
            self._index += 1
            yield frame

    def close(self) -> None:
        """Release the device or connection (idempotent)."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None
        self._first = None


def open_video(source: str | Path | int, fps: float | None = None) -> VideoSource:
    """Open a frame source: a video file, a folder of numbered frames, a camera index or a stream URL.

    An int or a string of digits is a camera (unless a file or folder of that name exists); a string
    with a scheme (rtsp://, http://, ...) is a stream. `fps` overrides the source's frame rate (a
    folder has none otherwise). FileNotFoundError / ValueError name the source when it cannot be read.
    """
    if isinstance(source, bool):
        raise ValueError(f"video source must be a path, URL or camera index, got {source!r}")
    if isinstance(source, int):
        if source < 0:
            raise ValueError(f"camera index must be >= 0, got {source}")
        return CaptureStreamSource(source, fps=fps)
    if isinstance(source, str):
        text = source.strip()
        if not text:
            raise ValueError("video source is empty")
        if _URL_PATTERN.match(text) and not text.lower().startswith("file://"):
            return CaptureStreamSource(text, fps=fps)
        if text.lower().startswith("file://"):
            source = text[len("file://") :]
        elif text.isdigit() and not Path(text).exists():
            return CaptureStreamSource(int(text), fps=fps)
    path = Path(source).expanduser()
    if path.is_dir():
        return FrameFolderSource(path, fps=fps)
    if not path.exists():
        raise FileNotFoundError(f"video source not found: {path}")
    if not path.is_file():
        raise ValueError(f"video source {path} is neither a file nor a folder")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise ValueError(f"{path} is a single image, not a video: pass the folder of its frames instead")
    return VideoFileSource(path, fps=fps)


# ---------------------------------------------------------------------------------------------
# writers


class _AbortWrite(Exception):
    """Thrown into a staging context to discard its output without a caller's exception."""


WriterT = TypeVar("WriterT", bound="_Writer")


class _Writer:
    """A writer used as a context manager: `close()` publishes on success, `abort(error)` discards."""

    def close(self) -> Any:
        raise NotImplementedError

    def abort(self, error: BaseException | None = None) -> None:
        raise NotImplementedError

    def __enter__(self: WriterT) -> WriterT:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


class MaskWriter(_Writer):
    """Writes one video's id maps as palette PNGs in the VOS layout: `<root>/<video>/<frame>.png`.

    A frame is named by the caller (`VideoSource.frame_name(i)`, so masks carry the input frame's
    own name) or by its index (five digits). Files go to a hidden staging folder in `root`, which
    becomes `<root>/<video>` on `close()`; an existing non-empty `<root>/<video>` is refused unless
    `overwrite` (then replaced on close).
    """

    def __init__(self, root: str | Path, video: str, overwrite: bool = False, digits: int = 5) -> None:
        if not video or video in (".", "..") or "/" in video or "\\" in video:
            raise ValueError(f"video name must be a plain folder name, got {video!r}")
        self.root = Path(root)
        self.video = video
        self.path = self.root / video
        self.digits = int(digits)
        self.frames_written = 0
        self._next_index = 0
        self._shape: tuple[int, int] | None = None
        self._staging_context = staged_output_dir(self.path, overwrite=overwrite)
        self._staging: Path | None = self._staging_context.__enter__()

    def _file_stem(self, frame: int | str | None) -> str:
        """The file stem of a frame given by index (None: the next one) or by name."""
        if isinstance(frame, str):
            if not frame or frame.startswith(".") or any(c in frame for c in "/\\\0"):
                raise ValueError(f"frame name must be a plain file name without extension, got {frame!r}")
            return frame
        index = self._next_index if frame is None else int(frame)
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        return frame_name(index, self.digits)

    def write(
        self, masks: MasksLike, frame_index: int | str | None = None, shape: tuple[int, int] | None = None
    ) -> Path:
        """Write one frame's masks (HxW id map or {id: bool HxW}) as `<frame>.png`.

        `frame_index` is the frame's index (default: the one after the last written) or its name
        (a str such as "00001", used as the file stem). `shape` (H, W) is needed only for an empty
        dict before any frame fixed the size.
        """
        if self._staging is None:
            raise ValueError(f"mask writer for {self.path} is closed")
        stem = self._file_stem(frame_index)
        expected = shape or self._shape
        if isinstance(masks, Mapping):
            if not masks and expected is None:
                raise ValueError(f"frame {stem}: no masks and no known frame size; pass shape=(H, W)")
            id_map = masks_to_id_map(masks, shape=expected)
        else:
            id_map = as_id_map(masks, np.asarray(masks).shape[:2] if expected is None else expected)
        if self._shape is None:
            self._shape = (int(id_map.shape[0]), int(id_map.shape[1]))
        elif id_map.shape != self._shape:
            raise ValueError(
                f"frame {stem}: mask is {id_map.shape}, earlier frames of {self.video!r} are {self._shape}"
            )
        target = self._staging / f"{stem}.png"
        if target.exists():
            raise ValueError(f"frame {stem} of {self.video!r} was already written")
        write_mask(target, id_map)
        if stem.isdigit():
            self._next_index = int(stem) + 1
        self.frames_written += 1
        return self.path / target.name

    def close(self) -> Path:
        """Publish the folder under its final name and return it (idempotent)."""
        if self._staging is not None:
            self._staging = None
            self._staging_context.__exit__(None, None, None)
        return self.path

    def abort(self, error: BaseException | None = None) -> None:
        """Discard everything written so far; the final folder is left as it was."""
        if self._staging is None:
            return
        self._staging = None
        error = error if error is not None else _AbortWrite()
        with contextlib.suppress(_AbortWrite):
            self._staging_context.__exit__(type(error), error, error.__traceback__)


class OverlayVideoWriter(_Writer):
    """Writes frames with their masks drawn on them (`data.overlay.overlay_masks`) to a video file.

    mp4/mov/m4v/mkv use the `mp4v` codec, .avi uses MJPG; if mp4v cannot be opened the writer falls
    back to MJPG in `<path>.avi` with a warning (`self.path` is then the .avi). The file is written
    under a hidden temporary name and renamed on close; nothing is created if no frame was written.
    mp4v needs even sizes, so odd frames are padded by one edge row/column.
    """

    _CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}

    @classmethod
    def check_extension(cls, path: str | Path) -> None:
        """ValueError naming `path` unless it ends in an extension this writer encodes."""
        if Path(path).suffix.lower() not in cls._CODECS:
            raise ValueError(f"overlay video {path}: extension must be one of {', '.join(cls._CODECS)}")

    def __init__(
        self,
        path: str | Path,
        fps: float | None = None,
        alpha: float = 0.5,
        draw_ids: bool = True,
        overwrite: bool = False,
        fallback: bool = True,
    ) -> None:
        self.path = Path(path)
        # False: a missing encoder is an error instead of MJPG in another file (writers whose path
        # is a staging file that must be the one published).
        self.fallback = fallback
        suffix = self.path.suffix.lower()
        self.check_extension(self.path)
        self.fps = DEFAULT_WRITER_FPS if fps is None else float(fps)
        if not math.isfinite(self.fps) or self.fps <= 0:
            raise ValueError(f"overlay video {self.path}: fps must be > 0, got {fps}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.draw_ids = draw_ids
        self.overwrite = overwrite
        self.frames_written = 0
        self.codec: str | None = None
        self._check_target(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer: Any = None
        self._temp: Path | None = None
        self._frame_size: tuple[int, int] | None = None
        self._padded_size: tuple[int, int] | None = None
        self._finished = False

    def _check_target(self, path: Path) -> None:
        if path.exists() and (path.is_dir() or not self.overwrite):
            what = "is a folder" if path.is_dir() else "exists (use overwrite=True / --overwrite to replace it)"
            raise ValueError(f"overlay video {path} {what}")

    def _try_open(self, suffix: str, codec: str, size: tuple[int, int]) -> bool:
        """Open a cv2.VideoWriter on a new temp file with this container/codec; False if it fails."""
        handle, name = tempfile.mkstemp(prefix=f".{self.path.stem}.tmp-", suffix=suffix, dir=self.path.parent)
        os.close(handle)
        temp = Path(name)
        height, width = size
        writer = cv2.VideoWriter(str(temp), _capture_api(), cv2.VideoWriter.fourcc(*codec), self.fps, (width, height))
        if not writer.isOpened():
            writer.release()
            temp.unlink(missing_ok=True)
            return False
        self._writer, self._temp, self.codec = writer, temp, codec
        return True

    def _open(self, frame_size: tuple[int, int]) -> None:
        """Open the codec for the first frame's size, falling back from mp4v to MJPG/avi."""
        suffix = self.path.suffix.lower()
        codec = self._CODECS[suffix]
        height, width = frame_size
        padded = (height + height % 2, width + width % 2) if codec == "mp4v" else frame_size
        if self._try_open(suffix, codec, padded):
            self._padded_size = padded
            return
        if codec != "MJPG" and self.fallback:
            fallback = self.path.with_suffix(".avi")
            self._check_target(fallback)
            if self._try_open(".avi", "MJPG", frame_size):
                warnings.warn(
                    f"could not open an {suffix} writer with the {codec} codec; writing MJPG to {fallback} instead",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.path = fallback
                self._padded_size = frame_size
                return
        advice = "; an .avi overlay uses MJPG" if codec != "MJPG" else ""
        raise OSError(f"could not open a video writer for {self.path}: OpenCV has no {codec} encoder{advice}")

    def write(self, frame: np.ndarray, masks: MasksLike | None = None) -> None:
        """Append one HxWx3 uint8 RGB frame, with `masks` (id map or {id: mask}) drawn on it."""
        if self._finished:
            raise ValueError(f"overlay video writer for {self.path} is closed")
        image = np.asarray(frame)
        index = self.frames_written
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"frame {index}: expected HxWx3 uint8 RGB, got shape {image.shape} dtype {image.dtype}")
        size = (int(image.shape[0]), int(image.shape[1]))
        if self._frame_size is None:
            self._open(size)
            self._frame_size = size
        elif size != self._frame_size:
            raise ValueError(
                f"frame {index} is {size[1]}x{size[0]} but the video {self.path} is"
                f" {self._frame_size[1]}x{self._frame_size[0]}"
            )
        if masks is not None:
            image = overlay_masks(image, masks, alpha=self.alpha, draw_ids=self.draw_ids)
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        assert self._padded_size is not None
        pad_h, pad_w = self._padded_size[0] - size[0], self._padded_size[1] - size[1]
        if pad_h or pad_w:
            bgr = cv2.copyMakeBorder(bgr, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
        if self._writer.write(np.ascontiguousarray(bgr)) is False:  # OpenCV >= 5 reports failures
            raise OSError(f"could not write frame {index} to {self.path}")
        self.frames_written += 1

    def close(self) -> Path | None:
        """Finish the file and move it to its final name; returns that path (None if no frames)."""
        if self._finished:
            return self.path if self.frames_written else None
        self._finished = True
        if self._writer is None or self._temp is None:
            return None
        self._writer.release()
        self._writer = None
        temp, self._temp = self._temp, None
        if not temp.is_file() or temp.stat().st_size == 0:
            temp.unlink(missing_ok=True)
            raise OSError(f"the video writer produced no data for {self.path}")
        os.chmod(temp, 0o644)  # mkstemp makes it private; a video is normally readable
        os.replace(temp, self.path)
        return self.path

    def abort(self, error: BaseException | None = None) -> None:
        """Stop writing and delete the temporary file; the final path is left as it was."""
        self._finished = True
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)
            self._temp = None

    def __del__(self) -> None:
        # A writer dropped without close() leaves no stray temp file behind.
        with contextlib.suppress(Exception):
            if not self._finished:
                self.abort()
