"""One browser tab's work: its clip, objects, prompts, masks and propagation, isolated from every
other session. Masks equal the library's `segment_video` with the session's prompts."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from surgsam2.data.classes import ENDOVIS18_CLASSES
from surgsam2.data.masks import davis_palette
from surgsam2.model.sam2 import SAM2Model
from surgsam2.pipelines.vos_inference import combine_object_logits
from surgsam2.serve.encoding import EncodingCache
from surgsam2.serve.frames import LazyFrames
from surgsam2.tracking.offline import segment_video
from surgsam2.tracking.prompts import Prompt, validate_prompts
from surgsam2.tracking.results import FrameResult
from surgsam2.tracking.tracker import Tracker

if TYPE_CHECKING:
    from surgsam2.serve.live import LiveStream

MAX_OBJECTS = 255
DIRECTIONS = ("forward", "backward", "both")


class ApiError(Exception):
    """An error the API answers with ``status`` and the one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class TrackedObject:
    """An object of the session: id (its mask value and palette colour), name, EndoVis class."""

    obj_id: int
    name: str
    class_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        red, green, blue = (int(v) for v in davis_palette()[self.obj_id])
        class_name = ENDOVIS18_CLASSES.get(self.class_id) if self.class_id else None
        return {"id": self.obj_id, "name": self.name, "class_id": self.class_id, "class_name": class_name,
                "color": f"#{red:02x}{green:02x}{blue:02x}"}  # fmt: skip


@dataclass
class PromptActions:
    """The clicks and box of one object on one frame, in the order given (for undo)."""

    actions: list[tuple[str, tuple[float, ...]]] = field(default_factory=list)

    def prompt(self) -> Prompt | None:
        points = [(a[0], a[1]) for kind, a in self.actions if kind == "point"]
        labels = [int(a[2]) for kind, a in self.actions if kind == "point"]
        boxes = [a for kind, a in self.actions if kind == "box"]
        if not points and not boxes:
            return None
        return Prompt(points=points or None, labels=labels or None, box=boxes[-1] if boxes else None)


@dataclass
class FrameMasks:
    """One frame's masks: the combined id map and each object's own mask (bit-packed)."""

    combined: np.ndarray  # HxW uint8, pixel = object id
    objects: dict[int, np.ndarray]  # object id -> packed bits of its HxW bool mask

    @classmethod
    def from_result(cls, result: FrameResult, shape: tuple[int, int]) -> FrameMasks:
        combined = combine_object_logits(result.logits, shape)
        objects = {obj: np.packbits(result.logits[obj] > 0) for obj in result.logits}
        return cls(combined, objects)

    def object_mask(self, obj_id: int, shape: tuple[int, int]) -> np.ndarray:
        packed = self.objects.get(obj_id)
        if packed is None:
            return np.zeros(shape, bool)
        return np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)


@dataclass
class Propagation:
    """The state of a session's background propagation."""

    direction: str = ""
    running: bool = False
    done: int = 0
    total: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    error: str | None = None
    start: int | None = None  # re-propagation: frames before it (after it, backward) keep their masks
    cancel_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def keeps(self, frame: int) -> bool:
        """Whether a re-propagation leaves ``frame``'s masks as they are (before its start)."""
        assert self.start is not None
        return frame < self.start if self.direction == "forward" else frame > self.start

    def to_json(self) -> dict[str, Any]:
        fps = self.done / self.seconds if self.seconds > 0 and self.done else None
        return {"direction": self.direction, "running": self.running, "done": self.done, "total": self.total,
                "seconds": round(self.seconds, 3), "frames_per_second": fps, "cancelled": self.cancelled,
                "error": self.error, "start": self.start}  # fmt: skip


@dataclass(frozen=True)
class SharedModel:
    """The server's one model, shared by every session one step at a time, and its memory policy."""

    model: SAM2Model
    lock: threading.Lock
    memory: str
    num_frame_to_prune: int

    @property
    def tracker_options(self) -> dict[str, Any]:
        return {"memory": self.memory, "num_frame_to_prune": self.num_frame_to_prune}


class Session:
    """A session: created empty, given a clip (`open`), then prompted, propagated and exported."""

    def __init__(self, session_id: str, shared: SharedModel, work_dir: Path) -> None:
        self.session_id = session_id
        self.shared = shared
        self.work_dir = work_dir
        self.frames: LazyFrames | None = None
        self.objects: dict[int, TrackedObject] = {}
        self.prompts: dict[int, dict[int, PromptActions]] = {}  # frame -> object -> actions
        self.masks: dict[int, FrameMasks] = {}
        self.version = 0  # bumped whenever a frame's masks change
        self.propagation = Propagation()
        self.encodings = EncodingCache()  # the last clicked frame's image features
        self.live: LiveStream | None = None  # the camera or stream tracked live, if any
        self.last_used = time.monotonic()
        self.lock = threading.RLock()

    # --- clip and objects ----------------------------------------------------------------------

    def open(self, frames: LazyFrames) -> None:
        with self.lock:
            self.check_idle()
            self.frames = frames
            self.encodings.clear()
            self.prompts.clear()
            self.masks.clear()
            self.version += 1

    def require_frames(self) -> LazyFrames:
        if self.frames is None:
            raise ApiError(409, "no video is open in this session: open a folder or upload a video first")
        return self.frames

    def check_frame(self, index: int) -> int:
        frames = self.require_frames()
        if not 0 <= index < len(frames):
            raise ApiError(404, f"frame {index} does not exist: the clip has {len(frames)} frames (0..{len(frames) - 1})")
        return index

    def require_object(self, obj_id: int) -> TrackedObject:
        if obj_id not in self.objects:
            raise ApiError(404, f"object {obj_id} does not exist in this session")
        return self.objects[obj_id]

    def add_object(self, name: str | None = None, class_id: int | None = None) -> TrackedObject:
        with self.lock:
            free = [i for i in range(1, MAX_OBJECTS + 1) if i not in self.objects]
            if not free:
                raise ApiError(400, f"a session holds at most {MAX_OBJECTS} objects")
            obj = TrackedObject(free[0], name or f"object {free[0]}")
            self.objects[obj.obj_id] = obj
            self.update_object(obj.obj_id, None, class_id)
            return obj

    def update_object(self, obj_id: int, name: str | None, class_id: int | None) -> TrackedObject:
        obj = self.require_object(obj_id)
        if class_id is not None and class_id not in ENDOVIS18_CLASSES and class_id != 0:
            raise ApiError(400, f"class id {class_id} is not an EndoVis instrument class (1..{len(ENDOVIS18_CLASSES)})")
        if name is not None:
            if len(name) > 100 or not name.strip():
                raise ApiError(400, "an object name must have 1 to 100 characters")
            obj.name = name.strip()
        if class_id is not None:
            obj.class_id = class_id or None
        return obj

    def remove_object(self, obj_id: int) -> None:
        with self.lock:
            self.check_idle()
            self.require_object(obj_id)
            del self.objects[obj_id]
            if self.live is not None:
                self.live.remove_object(obj_id)
            for frame in list(self.prompts):
                self.prompts[frame].pop(obj_id, None)
                if not self.prompts[frame]:
                    del self.prompts[frame]
            for masks in self.masks.values():
                masks.objects.pop(obj_id, None)
                masks.combined[masks.combined == obj_id] = 0
            self.version += 1

    # --- prompts -------------------------------------------------------------------------------

    def check_idle(self) -> None:
        if self.propagation.running:
            raise ApiError(409, "a propagation is running in this session: wait for it or cancel it")

    def add_prompt(self, frame: int, obj_id: int, kind: str, values: tuple[float, ...]) -> None:
        """Add a click (x, y, label) or a box (x0, y0, x1, y1) and decode the frame."""
        with self.lock:
            self.check_idle()
            frames = self.require_frames()
            self.check_frame(frame)
            self.require_object(obj_id)
            actions = self.prompts.setdefault(frame, {}).setdefault(obj_id, PromptActions())
            actions.actions.append((kind, values))
            try:
                validate_prompts({obj_id: actions.prompt()}, frames.frame_size)
            except ValueError as error:
                actions.actions.pop()
                self._drop_empty(frame, obj_id)
                raise ApiError(400, f"frame {frame}: {error}") from None
            self.decode_frame(frame)

    def undo_prompt(self, frame: int, obj_id: int, clear: bool = False) -> None:
        """Remove the last prompt (or, with ``clear``, all) of an object on a frame; decode again."""
        with self.lock:
            self.check_idle()
            self.check_frame(frame)
            self.require_object(obj_id)
            actions = self.prompts.get(frame, {}).get(obj_id)
            if actions is None or not actions.actions:
                raise ApiError(404, f"object {obj_id} has no prompt on frame {frame}")
            if clear:
                actions.actions.clear()
            else:
                actions.actions.pop()
            self._drop_empty(frame, obj_id)
            self.decode_frame(frame, removed=obj_id)

    def _drop_empty(self, frame: int, obj_id: int) -> None:
        if not self.prompts.get(frame, {}).get(obj_id, PromptActions([("", ())])).actions:
            self.prompts[frame].pop(obj_id, None)
        if frame in self.prompts and not self.prompts[frame]:
            del self.prompts[frame]

    def frame_prompts(self, frame: int) -> dict[int, Prompt]:
        return {obj: a.prompt() for obj, a in self.prompts.get(frame, {}).items() if a.prompt() is not None}

    def all_prompts(self) -> dict[int, dict[int, Prompt]]:
        """``{frame: {object: Prompt}}`` of the whole session (what propagation and export use)."""
        return {frame: p for frame in sorted(self.prompts) if (p := self.frame_prompts(frame))}

    def decode_frame(self, frame: int, removed: int | None = None) -> None:
        """One model step on ``frame`` with its prompts (SAM 2's add_new_points): the prompted
        objects' masks replace theirs on that frame; other objects keep their propagated masks."""
        frames = self.require_frames()
        prompts = self.frame_prompts(frame)
        shape = frames.frame_size
        old = self.masks.get(frame)
        logits: dict[int, np.ndarray] = {}
        if old is not None:
            for obj in old.objects:
                if obj not in prompts and obj != removed:
                    logits[obj] = np.where(old.object_mask(obj, shape), 1.0, -1.0).astype(np.float32)
        if prompts:
            with self.shared.lock:
                tracker = Tracker(self.shared.model, **self.shared.tracker_options)
                image = frames[frame]
                result = tracker.step(image, prompts, features=self.encodings.features_of(tracker, frame, image))
            for obj in prompts:
                logits[obj] = result.logits[obj]
        self.masks[frame] = FrameMasks.from_result(FrameResult(frame, logits=logits), shape)
        self.version += 1

    # --- propagation ---------------------------------------------------------------------------

    def start_propagation(self, direction: str, start: int | None = None) -> None:
        """Propagate in the background. With ``start`` (forward or backward only), the re-propagation
        from a corrected frame: only frames from ``start`` on in that direction get new masks."""
        with self.lock:
            if direction not in DIRECTIONS:
                raise ApiError(400, f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
            if start is not None and direction == "both":
                raise ApiError(400, "a start frame needs direction forward or backward")
            self.check_idle()
            frames = self.require_frames()
            if start is not None:
                self.check_frame(start)
            prompts = self.all_prompts()
            if not prompts:
                raise ApiError(400, "nothing to propagate: prompt at least one object on a frame first")
            self.propagation = Propagation(direction=direction, running=True, total=len(frames), start=start)
            thread = threading.Thread(target=self._propagate, args=(self.propagation, frames, prompts),
                                      name=f"propagate-{self.session_id[:8]}", daemon=True)  # fmt: skip
            self.propagation.thread = thread
            thread.start()

    def cancel_propagation(self) -> bool:
        running = self.propagation.running
        self.propagation.cancel_event.set()
        return running

    def _results(self, frames: LazyFrames, prompts: Mapping[int, Mapping[int, Prompt]], direction: str) -> Iterator[FrameResult]:
        """Frame results as the library computes them: `segment_video` with all the session's prompts
        (``both``), forward only, or forward over the reversed clip (``backward``). A re-propagation
        from frame t runs the same pass (the frames before t build the memory) and keeps t on."""
        model, options = self.shared.model, self.shared.tracker_options
        if direction == "both":
            yield from segment_video(model, frames, prompts, **options)
        elif direction == "forward":
            yield from segment_video(model, frames, prompts, backward=False, **options)
        else:
            last = len(frames) - 1
            reversed_frames = _Reversed(frames)
            reversed_prompts = {last - frame: p for frame, p in prompts.items()}
            for result in segment_video(model, reversed_frames, reversed_prompts, backward=False, **options):
                result.frame_index = last - result.frame_index
                yield result

    def _propagate(self, state: Propagation, frames: LazyFrames, prompts: Mapping[int, Mapping[int, Prompt]]) -> None:
        """The background propagation: stores each frame's masks as soon as it is computed."""
        started = time.perf_counter()
        results = self._results(frames, prompts, state.direction)
        try:
            while not state.cancel_event.is_set():
                with self.shared.lock:
                    result = next(results, None)
                if result is None:
                    break
                self._store(state, result, frames.frame_size)
                state.done += 1
                state.seconds = time.perf_counter() - started
        except Exception as error:  # reported to the page, the server keeps serving
            state.error = str(error).splitlines()[0] if str(error) else type(error).__name__
        finally:
            results.close()
            state.cancelled = state.cancel_event.is_set()
            state.seconds = time.perf_counter() - started
            state.running = False

    def _store(self, state: Propagation, result: FrameResult, shape: tuple[int, int]) -> None:
        """A computed frame's masks replace the shown ones. A re-propagation keeps the frames
        before its start and replaces those from it on whole (an empty result clears them)."""
        if state.start is not None and state.keeps(result.frame_index):
            return
        if state.start is None and not result.logits:
            return
        with self.lock:
            self.masks.pop(result.frame_index, None)
            if result.logits:
                self.masks[result.frame_index] = FrameMasks.from_result(result, shape)
            self.version += 1

    # --- state and teardown --------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        frames = self.frames
        return {
            "session": self.session_id,
            "video": None if frames is None else {"name": frames.name, "num_frames": len(frames),
                                                  "width": frames.frame_size[1], "height": frames.frame_size[0]},
            "objects": [obj.to_json() for obj in self.objects.values()],
            "prompted_frames": sorted(self.prompts),
            "version": self.version,
            "propagation": self.propagation.to_json(),
        }  # fmt: skip

    def prompts_on(self, frame: int) -> list[dict[str, Any]]:
        """The prompts on one frame, for drawing: object, kind, values."""
        return [{"object": obj, "kind": kind, "values": list(values)}
                for obj, actions in self.prompts.get(frame, {}).items() for kind, values in actions.actions]  # fmt: skip

    def close(self) -> None:
        """Stop the propagation and the live stream, and remove the session's private files."""
        self.propagation.cancel_event.set()
        if self.live is not None:
            self.live.stop()
        thread = self.propagation.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        shutil.rmtree(self.work_dir, ignore_errors=True)


class _Reversed:
    """A clip's frames in reverse order (a sequence view for backward-only propagation)."""

    def __init__(self, frames: LazyFrames) -> None:
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.frames[len(self.frames) - 1 - index]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))
