"""End-to-end jobs that combine the model, the tracker and file I/O (used by the CLI).

`segment_source`: track prompted objects through a video file, frame folder, camera or stream,
writing palette-PNG masks per frame and, optionally, an overlay video. Everything is validated
before the first frame is processed, and outputs are published only when the run completes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from surgsam2.data.masks import id_map_to_masks, read_mask
from surgsam2.data.video import MaskWriter, OverlayVideoWriter, open_video
from surgsam2.memory.policies import MemoryPolicy
from surgsam2.model.sam2 import SAM2Model
from surgsam2.tracking.prompts import Prompt, validate_prompts
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
    (object 1)."""
    id_map = read_mask(path)
    values = set(np.unique(id_map).tolist()) - {0}
    if not values:
        raise ValueError(f"prompt mask {path} is empty (no object pixels)")
    if values == {255}:
        id_map = (id_map > 0).astype(np.uint8)
    return {obj_id: Prompt(mask=mask) for obj_id, mask in id_map_to_masks(id_map).items()}


def segment_source(
    model: SAM2Model,
    source: str | Path | int,
    prompts: Mapping[int, Prompt],
    out_dir: str | Path,
    prompt_frame: int = 0,
    memory: str | MemoryPolicy = "efp",
    overlay: str | Path | None = None,
    overwrite: bool = False,
    max_frames: int | None = None,
    progress: bool = True,
) -> SegmentSummary:
    """Track the objects of ``prompts`` (given on frame ``prompt_frame``) through ``source``.

    Masks go to ``<out_dir>/<video name>/<frame:05d>.png`` (pixel = object id); ``overlay`` is an
    optional .mp4 with the masks drawn on the frames. Frames before ``prompt_frame`` get empty masks.
    """
    if not prompts:
        raise ValueError("no prompt given: pass a prompt mask, points or a box")
    if prompt_frame < 0:
        raise ValueError(f"--prompt-frame must be >= 0, got {prompt_frame}")
    started = time.perf_counter()
    with open_video(source) as video:
        frame_size = video.frame_size
        prompts = validate_prompts(prompts, frame_size)  # fail before anything is written
        if video.num_frames is not None and prompt_frame >= video.num_frames:
            raise ValueError(f"--prompt-frame {prompt_frame} but {video.name} has {video.num_frames} frames")
        total = video.num_frames if max_frames is None else min(max_frames, video.num_frames or max_frames)
        tracker = Tracker(model, memory=memory, num_frames=video.num_frames)
        mask_writer = MaskWriter(out_dir, video.name, overwrite=overwrite)
        overlay_writer = (
            OverlayVideoWriter(overlay, fps=video.fps, overwrite=overwrite) if overlay is not None else None
        )
        frames_done = 0
        bar = tqdm(total=total, desc=f"segment {video.name}", unit="frame", disable=not progress)
        try:
            for frame_index, frame in enumerate(video):
                if max_frames is not None and frame_index >= max_frames:
                    break
                result = tracker.step(frame, prompts if frame_index == prompt_frame else None)
                id_map = result.id_map() if result.masks else np.zeros(frame_size, np.uint8)
                mask_writer.write(id_map, frame_index)
                if overlay_writer is not None:
                    overlay_writer.write(frame, id_map)
                frames_done += 1
                bar.update(1)
            if frames_done <= prompt_frame:
                raise ValueError(f"{video.name} ended after {frames_done} frames, before --prompt-frame {prompt_frame}")
        except BaseException as error:
            mask_writer.abort(error)
            if overlay_writer is not None:
                overlay_writer.abort()
            raise
        finally:
            bar.close()
        masks_dir = mask_writer.close()
        overlay_path = overlay_writer.close() if overlay_writer is not None else None
    return SegmentSummary(
        frames=frames_done,
        objects=sorted(prompts),
        masks_dir=masks_dir,
        overlay=overlay_path,
        seconds=time.perf_counter() - started,
    )


# Seeds >= this are never used to generate training data, so the demo clip is held out.
DEMO_SEED = 900_000


@dataclass
class DemoSummary:
    """Where the demo wrote its outputs and what it measured."""

    dataset: Path
    masks: Path
    overlay: Path
    results: Path
    frames: int
    objects: int
    seconds: float
    j_and_f: float
    dice: float


def run_demo(
    out_dir: str | Path,
    model_name: str = "nano",
    checkpoint: str | Path | None = None,
    memory: str = "efp",
    frames: int = 60,
    size: tuple[int, int] = (320, 256),
    seed: int = DEMO_SEED,
    progress: bool = True,
) -> DemoSummary:
    """The embedded default end to end: a held-out synthetic clip, its instruments tracked from
    their first-appearance masks, masks and an overlay video written, J&F and Dice printed."""
    from surgsam2.data.synthetic import write_synthetic_dataset
    from surgsam2.data.vos import VOSDataset
    from surgsam2.eval.vos_inference import VOSInferenceConfig, run_vos_inference

    started = time.perf_counter()
    out_dir = Path(out_dir)
    dataset_dir = out_dir / "data"
    masks_dir = out_dir / "masks"
    results_path = out_dir / "results.json"
    summary = write_synthetic_dataset(dataset_dir, videos=1, frames=frames, size=size, seed=seed, overwrite=True)
    video_name = summary.videos[0]
    config = VOSInferenceConfig(
        base_video_dir=dataset_dir / "JPEGImages",
        input_mask_dir=dataset_dir / "VOS" / "Annotations_vos_instrument",
        output_mask_dir=masks_dir,
        gt_root=dataset_dir / "Annotations",
        model=model_name,
        checkpoint=Path(checkpoint) if checkpoint is not None else None,
        memory=memory,
        meta=dataset_dir / "meta.json",
        output=results_path,
        progress=progress,
    )
    report = run_vos_inference(config)
    if report.failed or report.evaluation is None:
        reasons = "; ".join(f"{r.video}: {r.error}" for r in report.failed) or "no evaluation"
        raise RuntimeError(f"demo inference failed: {reasons}")

    overlay_path = out_dir / "overlay.mp4"
    video = VOSDataset(dataset_dir).video(video_name)
    combined_dir = masks_dir / video_name / "all"
    with OverlayVideoWriter(overlay_path, fps=10, overwrite=True) as overlay_writer:
        for position, frame in enumerate(video.iter_frames()):
            overlay_writer.write(frame, read_mask(combined_dir / f"{video.frame_names[position]}.png"))
    evaluation = report.evaluation.summary
    return DemoSummary(
        dataset=dataset_dir,
        masks=masks_dir,
        overlay=overlay_writer.path,
        results=results_path,
        frames=summary.frames,
        objects=summary.objects,
        seconds=time.perf_counter() - started,
        j_and_f=evaluation.JF,
        dice=evaluation.Dice,
    )
