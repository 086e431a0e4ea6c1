"""`run_demo`: the embedded default end to end — a held-out synthetic clip, its instruments
tracked from their first-appearance masks, masks and an overlay video written, J&F measured."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from surgsam2.app.options import ModelOptions
from surgsam2.data.masks import read_mask
from surgsam2.data.outputs import OutputFolder
from surgsam2.data.synthetic import write_synthetic_dataset
from surgsam2.data.video import OverlayVideoWriter
from surgsam2.data.vos import VOSDataset
from surgsam2.memory.policies import DEFAULT_POLICY
from surgsam2.pipelines.vos_inference import VOSInferenceConfig, run_vos_inference

# Seeds >= this are never used to generate training data, so the demo clip is held out.
DEMO_SEED = 900_000
OVERLAY_NAME = "overlay.mp4"
MIN_DEMO_FRAMES = 3  # the protocol scores the frames between the first and the last


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


def _write_overlay(out_dir: Path, dataset_dir: Path, masks_dir: Path, video_name: str) -> Path:
    """The clip with its combined masks drawn on, published as ``<out_dir>/overlay.mp4``."""
    video = VOSDataset(dataset_dir).video(video_name)
    combined_dir = masks_dir / video_name / "all"
    with OutputFolder(out_dir, overwrite=True, command="demo") as folder:
        with (
            folder.stage_file(OVERLAY_NAME) as staged,
            OverlayVideoWriter(staged, fps=10, overwrite=True, fallback=False) as writer,
        ):
            for position, frame in enumerate(video.iter_frames()):
                writer.write(frame, read_mask(combined_dir / f"{video.frame_names[position]}.png"))
    return out_dir / OVERLAY_NAME


def run_demo(
    out_dir: str | Path,
    model_name: str = "nano",
    checkpoint: str | Path | None = None,
    memory: str = DEFAULT_POLICY,
    frames: int = 60,
    size: tuple[int, int] = (320, 256),
    seed: int = DEMO_SEED,
    progress: bool = True,
    random_weights: bool = False,
    warn: Callable[[str], None] = print,
) -> DemoSummary:
    """Write the clip, its masks, overlay and results under ``out_dir`` (replacing an earlier
    demo's outputs there, never anything else) and return what was measured."""
    if frames < MIN_DEMO_FRAMES:
        raise ValueError(
            f"--frames must be at least {MIN_DEMO_FRAMES} (the first and last frames are not scored), got {frames}"
        )
    started = time.perf_counter()
    out_dir = Path(out_dir)
    model = ModelOptions(
        name=model_name, checkpoint=Path(checkpoint) if checkpoint is not None else None,
        device="cpu", random_weights=random_weights,
    )  # fmt: skip
    # Held for the whole run: the folder is checked (not the current or home folder, no input
    # inside it, not a file) and locked before anything is written.
    with OutputFolder(out_dir, inputs={"--checkpoint": model.checkpoint}, overwrite=True, command="demo"):
        dataset_dir = out_dir / "data"
        summary = write_synthetic_dataset(dataset_dir, videos=1, frames=frames, size=size, seed=seed, overwrite=True)
        report = run_vos_inference(_inference_config(out_dir, model, memory, progress), warn=warn)
        if report.failed or report.evaluation is None:
            reasons = "; ".join(f"{r.video}: {r.error}" for r in report.failed) or "no evaluation"
            raise ValueError(f"demo inference failed: {reasons}")
        overlay_path = _write_overlay(out_dir, dataset_dir, out_dir / "masks", summary.videos[0])
    evaluation = report.evaluation.summary
    return DemoSummary(
        dataset=dataset_dir,
        masks=out_dir / "masks",
        overlay=overlay_path,
        results=out_dir / "results.json",
        frames=summary.frames,
        objects=summary.objects,
        seconds=time.perf_counter() - started,
        j_and_f=evaluation.JF,
        dice=evaluation.Dice,
    )


def _inference_config(out_dir: Path, model: ModelOptions, memory: str, progress: bool) -> VOSInferenceConfig:
    """vos-inference of the demo's clip (``<out_dir>/data``) into ``<out_dir>/masks``, evaluated."""
    dataset_dir = out_dir / "data"
    return VOSInferenceConfig(
        base_video_dir=dataset_dir / "JPEGImages",
        input_mask_dir=dataset_dir / "VOS" / "Annotations_vos_instrument",
        output_mask_dir=out_dir / "masks",
        gt_root=dataset_dir / "Annotations",
        model=model,
        memory=memory,
        meta=dataset_dir / "meta.json",
        output=out_dir / "results.json",
        overwrite=True,
        progress=progress,
    )
