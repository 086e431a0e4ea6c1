"""Live mode: a camera or stream the server was started with, tracked as it arrives. A reader
thread keeps only the newest frame (older ones are dropped when tracking is slower than the
source, never queued); a tracker thread steps one streaming `Tracker` on it and publishes the
latest frame with its masks. Clicks wait for the next processed frame and are applied there."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from surgsam2.data.video import CaptureStreamSource, VideoSource, open_video
from surgsam2.pipelines.vos_inference import combine_object_logits
from surgsam2.serve.session import ApiError, PromptActions, SharedModel
from surgsam2.tracking.prompts import Prompt, validate_prompts
from surgsam2.tracking.tracker import Tracker

REPLAY_FPS = 25.0  # a file or frame folder without a frame rate is replayed at this rate
FPS_WINDOW = 30  # achieved frames/s over the last this many processed frames


def resolve_live_source(allowed: tuple[str, ...], requested: int | str) -> str:
    """The allow-listed source a request names, by its index in the list or its exact text; any
    other source is refused (403), so a browser cannot make the server open arbitrary URLs."""
    if not allowed:
        raise ApiError(403, "live mode is off: start the server with --camera INDEX or --stream URL")
    if isinstance(requested, int) and not isinstance(requested, bool):
        if 0 <= requested < len(allowed):
            return allowed[requested]
        raise ApiError(403, f"live source {requested} is not one the server was started with (0..{len(allowed) - 1})")
    if isinstance(requested, str) and requested in allowed:
        return requested
    raise ApiError(403, "that live source is not one the server was started with (--camera / --stream)")


def live_source_names(allowed: tuple[str, ...]) -> list[dict[str, Any]]:
    """The allow-listed sources as the page offers them: index and a label without credentials."""
    return [{"id": index, "label": _label(source)} for index, source in enumerate(allowed)]


def _label(source: str) -> str:
    if source.isdigit():
        return f"camera {source}"
    scheme, sep, rest = source.partition("://")
    if sep:
        return f"{scheme}://{rest.rsplit('@', 1)[-1]}"  # user:password@ is not shown
    return Path(source).name or source  # a file or folder replayed as a stream: its name only


@dataclass
class LiveSnapshot:
    """The newest processed frame and its masks (combined id map), with its sequence number."""

    seq: int
    frame: np.ndarray
    combined: np.ndarray


class LiveStream:
    """One live session's source, reader thread and tracker thread; `stop` frees all three."""

    def __init__(self, source: str, shared: SharedModel) -> None:
        self.source_text = source
        self.shared = shared
        self.video: VideoSource = open_video(int(source) if source.isdigit() else source)
        self.label = _label(source)
        self.paced = not isinstance(self.video, CaptureStreamSource)  # a file replays at its rate
        self.tracker = Tracker(shared.model, **shared.tracker_options)
        self.stop_event = threading.Event()
        self.frame_ready = threading.Condition()
        self.newest: np.ndarray | None = None  # the reader's newest frame not yet processed
        self.frames_read = 0
        self.frames_dropped = 0
        self.ended = False
        self.error: str | None = None
        self.snapshot: LiveSnapshot | None = None
        self.pending: dict[int, PromptActions] = {}  # clicks waiting for the next processed frame
        self.removed: set[int] = set()
        self.pending_lock = threading.Lock()
        self.times: deque[float] = deque(maxlen=FPS_WINDOW)
        self.reader = threading.Thread(target=self._read, name=f"live-read-{self.label}", daemon=True)
        self.worker = threading.Thread(target=self._track, name=f"live-track-{self.label}", daemon=True)
        self.reader.start()
        self.worker.start()

    # --- threads -------------------------------------------------------------------------------

    def _read(self) -> None:
        """Read frames as the source delivers them; an unprocessed older frame is replaced."""
        interval = 1.0 / (self.video.fps or REPLAY_FPS) if self.paced else 0.0
        next_time = time.monotonic()
        try:
            for frame in self.video:
                if self.stop_event.is_set():
                    break
                with self.frame_ready:
                    if self.newest is not None:
                        self.frames_dropped += 1
                    self.newest = frame
                    self.frames_read += 1
                    self.frame_ready.notify()
                if interval:
                    next_time += interval
                    self.stop_event.wait(max(0.0, next_time - time.monotonic()))
        except Exception as error:  # a broken stream is reported to the page
            self.error = _one_line(error)
        finally:
            with self.frame_ready:
                self.ended = True
                self.frame_ready.notify()

    def _next_frame(self) -> np.ndarray | None:
        with self.frame_ready:
            while self.newest is None and not self.ended and not self.stop_event.is_set():
                self.frame_ready.wait(timeout=0.5)
            frame, self.newest = self.newest, None
            return frame

    def _take_prompts(self) -> tuple[dict[int, Prompt], set[int]]:
        with self.pending_lock:
            prompts = {obj: p for obj, actions in self.pending.items() if (p := actions.prompt()) is not None}
            removed = self.removed
            self.pending, self.removed = {}, set()
        return prompts, removed

    def _track(self) -> None:
        """Step the tracker on the newest frame until stopped or the source ends."""
        try:
            while not self.stop_event.is_set():
                frame = self._next_frame()
                if frame is None:
                    if self.ended:
                        return
                    continue
                prompts, removed = self._take_prompts()
                with self.shared.lock:
                    for obj in removed & set(self.tracker.object_ids):
                        self.tracker.remove_object(obj)
                    result = self.tracker.step(frame, prompts)
                combined = combine_object_logits(result.logits, frame.shape[:2])
                seq = 0 if self.snapshot is None else self.snapshot.seq + 1
                self.snapshot = LiveSnapshot(seq, frame, combined)
                self.times.append(time.monotonic())
        except Exception as error:
            self.error = _one_line(error)
        finally:
            self.ended = True

    # --- requests ------------------------------------------------------------------------------

    def add_prompt(self, obj_id: int, kind: str, values: tuple[float, ...]) -> None:
        """Queue a click or box on the shown frame for ``obj_id``: applied on the next frame."""
        if self.snapshot is None:
            raise ApiError(409, "no live frame yet: wait for the first frame before clicking")
        height, width = self.snapshot.frame.shape[:2]
        with self.pending_lock:
            actions = self.pending.setdefault(obj_id, PromptActions())
            actions.actions.append((kind, values))
            try:
                validate_prompts({obj_id: actions.prompt()}, (height, width))
            except ValueError as error:
                actions.actions.pop()
                if not actions.actions:
                    del self.pending[obj_id]
                raise ApiError(400, f"live frame: {error}") from None
            self.removed.discard(obj_id)

    def remove_object(self, obj_id: int) -> None:
        with self.pending_lock:
            self.pending.pop(obj_id, None)
            self.removed.add(obj_id)

    def frames_per_second(self) -> float | None:
        """Processed frames per second over the last `FPS_WINDOW` frames (None before two)."""
        times = list(self.times)
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        return (len(times) - 1) / (times[-1] - times[0])

    @property
    def running(self) -> bool:
        return self.worker.is_alive()

    def to_json(self) -> dict[str, Any]:
        snapshot = self.snapshot
        fps = self.frames_per_second()
        height, width = self.video.frame_size
        return {"source": self.label, "running": self.running, "ended": self.ended, "error": self.error,
                "width": width, "height": height, "source_fps": self.video.fps,
                "frames_read": self.frames_read, "frames_dropped": self.frames_dropped,
                "processed": 0 if snapshot is None else snapshot.seq + 1, "seq": None if snapshot is None else snapshot.seq,
                "frames_per_second": None if fps is None else round(fps, 2),
                "objects": sorted(self.tracker.object_ids)}  # fmt: skip

    def stop(self, timeout: float = 30.0) -> None:
        """Stop both threads and release the camera or stream (idempotent)."""
        self.stop_event.set()
        with self.frame_ready:
            self.frame_ready.notify_all()
        for thread in (self.worker, self.reader):
            if thread is not threading.current_thread():
                thread.join(timeout=timeout)
        self.video.close()


def _one_line(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return text or type(error).__name__
