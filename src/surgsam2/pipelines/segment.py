"""`segment_source`: track prompted objects through a video file, frame folder, camera or stream,
writing one palette-PNG mask per frame, named after the input frame, and optionally an overlay
video.

Everything is checked before the first frame is tracked (prompts, prompt frame, the output folder
against the inputs, entries an earlier run wrote); the masks are staged and published only when
the whole video was read: a video that ends early or has an undecodable frame fails with that
frame's number and publishes nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from surgsam2.data.masks import id_map_to_masks, read_mask, write_mask
from surgsam2.data.outputs import OutputFolder
from surgsam2.data.video import OverlayVideoWriter, VideoSource, open_video
from surgsam2.memory.policy_table import DEFAULT_NUM_FRAME_TO_PRUNE, DEFAULT_POLICY
from surgsam2.tracking.prompts import Prompt, validate_prompts

if TYPE_CHECKING:  # torch is needed only by the torch engine: the ONNX engine runs without it
    from surgsam2.memory.policies import MemoryPolicy
    from surgsam2.model.sam2 import SAM2Model
    from surgsam2.tracking.tracker import Tracker


@dataclass
class SegmentSummary:
    """What a `segment_source` run produced."""

    frames: int
    objects: list[int]
    masks_dir: Path
    overlay: Path | None
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def prompts_from_mask_file(path: str | Path) -> dict[int, Prompt]:
    """Mask prompts from a PNG: a palette/grey id map (pixel = object id) or a binary 0/255 mask
    (object 1). Lossy (JPEG) masks are refused by `read_mask`."""
    id_map = read_mask(path)
    values = set(np.unique(id_map).tolist()) - {0}
    if not values:
        raise ValueError(f"prompt mask {path} is empty (no object pixels)")
    if values == {255}:
        id_map = (id_map > 0).astype(np.uint8)
    return {obj_id: Prompt(mask=mask) for obj_id, mask in id_map_to_masks(id_map).items()}


def _local_input(source: str | Path | int) -> Path | None:
    """The input's path when it is a local file or folder (not a camera index or a URL)."""
    if isinstance(source, int) or (isinstance(source, str) and (source.isdigit() or "://" in source)):
        return None
    return Path(source)


@contextlib.contextmanager
def _overlay_target(
    overlay: str | Path | None, masks_folder: OutputFolder, inputs: Mapping[str, Path], overwrite: bool,
    notice: Callable[[str], None],
) -> Iterator[tuple[OutputFolder, str] | None]:  # fmt: skip
    """The folder and entry name of the overlay video (the masks' folder when it is the same)."""
    if overlay is None:
        yield None
        return
    path = Path(overlay)
    if path.parent.resolve() == masks_folder.path.resolve():
        yield masks_folder, path.name
        return
    with OutputFolder(
        path.parent, inputs=inputs, overwrite=overwrite, command="segment", notice=notice, files_only=True
    ) as folder:  # fmt: skip
        yield folder, path.name


def _track_into(
    video: VideoSource, tracker: Tracker, prompts: Mapping[int, Prompt], prompt_frame: int, staging: Path,
    overlay_writer: OverlayVideoWriter | None, max_frames: int | None, bar: tqdm,
) -> int:  # fmt: skip
    """Track every frame of ``video`` into ``staging``; returns the number of frames done."""
    frames_done = 0
    for frame_index, frame in enumerate(video):
        if max_frames is not None and frame_index >= max_frames:
            break
        result = tracker.step(frame, prompts if frame_index == prompt_frame else None)
        id_map = result.id_map() if result.masks else np.zeros(frame.shape[:2], np.uint8)
        write_mask(staging / f"{video.frame_name(frame_index)}.png", id_map)
        if overlay_writer is not None:
            overlay_writer.write(frame, id_map)
        frames_done += 1
        bar.update(1)
    if frames_done <= prompt_frame:
        raise ValueError(f"{video.name} ended after {frames_done} frames, before --prompt-frame {prompt_frame}")
    return frames_done


def segment_source(
    model: SAM2Model | None,
    source: str | Path | int,
    prompts: Mapping[int, Prompt],
    out_dir: str | Path,
    prompt_frame: int = 0,
    memory: str | MemoryPolicy = DEFAULT_POLICY,
    num_frame_to_prune: int = DEFAULT_NUM_FRAME_TO_PRUNE,
    overlay: str | Path | None = None,
    overwrite: bool = False,
    max_frames: int | None = None,
    progress: bool = True,
    other_inputs: Mapping[str, Path] | None = None,
    notice: Callable[[str], None] = print,
    make_tracker: Callable[[int | None], Any] | None = None,
) -> SegmentSummary:
    """Track the objects of ``prompts`` (given on frame position ``prompt_frame``) through ``source``.

    Masks go to ``<out_dir>/<video name>/<frame name>.png`` (pixel = object id; a frame folder's
    masks carry its files' names); ``overlay`` is an optional .mp4 with the masks drawn on the
    frames. Frames before ``prompt_frame`` get empty masks. ``other_inputs`` (role -> path, e.g. the
    checkpoint) are protected like the source: the output may not be, contain or lie in them.
    ``make_tracker(num_frames)``: another engine's tracker with the `Tracker` API (e.g. the ONNX
    runtime's), used instead of a `Tracker` over ``model``.
    """
    if not prompts:
        raise ValueError("no prompt given: pass a prompt mask, points or a box")
    if prompt_frame < 0:
        raise ValueError(f"--prompt-frame must be >= 0, got {prompt_frame}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {max_frames}")
    if overlay is not None:
        OverlayVideoWriter.check_extension(overlay)  # names the user's path, not the staging file
    started = time.perf_counter()
    inputs = dict(other_inputs or {})
    local = _local_input(source)
    if local is not None:
        inputs["video"] = local
    with open_video(source) as video:
        prompts = validate_prompts(prompts, video.frame_size)  # fail before anything is written
        if video.num_frames is not None and prompt_frame >= video.num_frames:
            raise ValueError(f"--prompt-frame {prompt_frame} but {video.name} has {video.num_frames} frames")
        total = video.num_frames if max_frames is None else min(max_frames, video.num_frames or max_frames)
        with contextlib.ExitStack() as stack:
            folder = stack.enter_context(
                OutputFolder(out_dir, inputs=inputs, overwrite=overwrite, command="segment", notice=notice)
            )
            folder.claim(video.name)
            target = stack.enter_context(_overlay_target(overlay, folder, inputs, overwrite, notice))
            if target is not None:
                target[0].claim(target[1])
            overlay_writer = None
            if target is not None:
                overlay_path = stack.enter_context(target[0].stage_file(target[1]))
                overlay_writer = stack.enter_context(
                    OverlayVideoWriter(overlay_path, fps=video.fps, overwrite=True, fallback=False)
                )
            # Exits run in reverse: the masks (the result) are published first, then the overlay;
            # a failure before the masks are published discards both.
            staging = stack.enter_context(folder.stage_dir(video.name))
            if make_tracker is not None:
                tracker = make_tracker(video.num_frames)
            else:
                from surgsam2.tracking.tracker import Tracker

                tracker = Tracker(model, memory=memory, num_frame_to_prune=num_frame_to_prune, num_frames=video.num_frames)
            bar = stack.enter_context(
                tqdm(total=total, desc=f"segment {video.name}", unit="frame", disable=not progress)
            )
            frames_done = _track_into(video, tracker, prompts, prompt_frame, staging, overlay_writer, max_frames, bar)
    return SegmentSummary(
        frames=frames_done,
        objects=sorted(prompts),
        masks_dir=Path(out_dir) / video.name,
        overlay=Path(overlay) if overlay is not None else None,
        seconds=time.perf_counter() - started,
    )
