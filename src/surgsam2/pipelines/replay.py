"""Replay prompts given on any frames (a prompts file of `surgsam2 serve`) over a video file or
frame folder with the library's `segment_video`, forward and backward as SAM 2 does, writing one
palette-PNG mask per frame named after the input frame (`surgsam2 segment --prompts FILE`)."""

from __future__ import annotations

import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from surgsam2.data.images import read_image
from surgsam2.data.masks import write_mask
from surgsam2.data.outputs import OutputFolder
from surgsam2.data.video import FrameFolderSource, open_video
from surgsam2.memory.policies import DEFAULT_NUM_FRAME_TO_PRUNE, DEFAULT_POLICY
from surgsam2.model.sam2 import SAM2Model
from surgsam2.pipelines.segment import SegmentSummary
from surgsam2.tracking.offline import segment_video
from surgsam2.tracking.prompts import Prompt, validate_prompts

DEFAULT_CACHE_BYTES = 256 * 2**20


class FrameSequence(Sequence[np.ndarray]):
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
            raise TypeError("FrameSequence does not support slices")
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range: the clip has {len(self)} frames")
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        path = self.source.frame_paths[index]
        frame = read_image(path)
        if frame.shape[:2] != self.frame_size:
            raise ValueError(f"frame {path} has another size than the first frame {self.source.frame_paths[0].name}")
        with self._lock:
            self._cache[index] = frame
            while len(self._cache) > 1 and sum(f.nbytes for f in self._cache.values()) > self.cache_bytes:
                self._cache.popitem(last=False)
        return frame


def decode_video_to_folder(video: Path, folder: Path) -> Path:
    """Decode every frame of a video file into lossless PNGs named by position (00000.png ...)
    in ``folder``, so that its frames can be revisited in any order."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    with open_video(video) as source:
        for index, frame in enumerate(source):
            cv2.imwrite(str(folder / f"{index:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_PNG_COMPRESSION, 1])  # fmt: skip
            count += 1
    if count == 0:
        raise ValueError(f"video {video} has no frames")
    return folder


def replay_prompts(
    model: SAM2Model,
    source: str | Path,
    prompts: Mapping[int, Mapping[int, Prompt]],
    out_dir: str | Path,
    memory: str = DEFAULT_POLICY,
    num_frame_to_prune: int = DEFAULT_NUM_FRAME_TO_PRUNE,
    overwrite: bool = False,
    progress: bool = True,
    other_inputs: Mapping[str, Path] | None = None,
    notice: Callable[[str], None] = print,
) -> SegmentSummary:
    """Track ``prompts`` ({frame: {object: Prompt}}) through a video file or frame folder with
    `segment_video`; masks go to ``<out_dir>/<video>/<frame name>.png`` (pixel = object id)."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"video source not found: {path}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="surgsam2-replay-") as scratch:
        name = path.resolve().name if path.is_dir() else path.stem
        frames = FrameSequence(path if path.is_dir() else decode_video_to_folder(path, Path(scratch) / name))
        for frame_index, frame_prompts in prompts.items():
            if frame_index >= len(frames):
                raise ValueError(f"prompts on frame {frame_index} but {path} has {len(frames)} frames")
            validate_prompts(frame_prompts, frames.frame_size)
        inputs = {"video": path, **(other_inputs or {})}
        with OutputFolder(out_dir, inputs=inputs, overwrite=overwrite, command="segment", notice=notice) as folder:
            folder.claim(name)
            with folder.stage_dir(name) as staging, tqdm(total=len(frames), desc=f"segment {name}", unit="frame",
                                                          disable=not progress) as bar:  # fmt: skip
                results = segment_video(model, frames, prompts, memory=memory, num_frame_to_prune=num_frame_to_prune)
                for result in results:
                    id_map = result.id_map() if result.masks else np.zeros(frames.frame_size, np.uint8)
                    write_mask(staging / f"{frames.frame_name(result.frame_index)}.png", id_map)
                    bar.update(1)
    objects = sorted({obj for frame_prompts in prompts.values() for obj in frame_prompts})
    return SegmentSummary(frames=len(frames), objects=objects, masks_dir=Path(out_dir) / name, overlay=None,
                          seconds=time.perf_counter() - started)  # fmt: skip
