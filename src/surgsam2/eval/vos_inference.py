"""Dataset-scale VOS inference (`surgsam2 vos-inference`), sharded over processes, then evaluation.

The equivalent of Surgical SAM 2's ``tools/vos_inference.py`` on our streaming tracker:

* Inputs: frames in ``<base_video_dir>/<video>/<frame>.jpg|png`` (numeric order) and prompt masks
  in ``<input_mask_dir>/<video>/<frame>.png`` (palette, pixel = object id). Each object is
  prompted once, on its first appearance in the prompt masks (later masks of a known object are
  ignored, so the full ``Annotations`` folder also works as prompt folder), and propagated forward.
  All objects of a video go through one `Tracker` (one batch), with ``num_frames`` = clip length.
* Prompt types (the paper's settings plus box), derived from the first-appearance mask by
  `prompt_from_mask`: ``mask`` (Full mask), ``1-point`` (One Point: the interior point farthest
  from the mask boundary), ``5-point`` (Five Points: that point plus 4 seeded samples inside the
  mask, seed from (video, object id), so runs are repeatable), ``box`` (tight bounding box).
* Outputs, per video: ``<output_mask_dir>/<video>/<id:03d>/<frame>.png`` (that object alone,
  pixel = id where its mask logit > ``score_thresh``; empty before its first appearance), and
  ``<output_mask_dir>/<video>/all/<frame>.png`` (non-overlapping: where several objects are above
  the threshold the highest logit wins, ties to the lower id). A video is written in a hidden
  staging folder renamed into place when complete; a failed video leaves no folder (a stale one
  from an earlier run is removed), so a folder that exists is always a complete run.
* Evaluation (with ``gt_root``, rank 0 only, ``surgsam2`` protocol of DESIGN section 7): J, F,
  Dice per object are scored on the PER-OBJECT folders, since the protocol propagates each object
  alone and lets objects overlap (as Surgical SAM 2's evaluation reads object folders); the
  class-based EndoVis IoUs (with ``meta``) are scored on the ``all/`` folders, which give each
  pixel one class. Only the videos that completed are scored; failed ones are reported.
* Sharding: under ``torchrun`` (or with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set), video
  i goes to rank i % world_size; ranks meet once (gloo) when all videos are written, rank 0
  evaluates. Without those variables it runs in one process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from surgsam2.data.masks import write_mask
from surgsam2.data.vos import VOSVideo, list_frame_files, natural_key, new_object_prompt, staged_output_dir
from surgsam2.eval.results import EvaluationResult
from surgsam2.eval.vos_output import ALL_OBJECTS_DIR, evaluate_vos_output
from surgsam2.eval.vos_output import gt_video_dir as _gt_video_dir
from surgsam2.model.sam2 import PRECISIONS
from surgsam2.tracking.prompts import Prompt

PROMPT_TYPES: tuple[str, ...] = ("mask", "1-point", "5-point", "box")
MEMORY_TYPES: tuple[str, ...] = ("efp", "fifo")
DTYPES: tuple[str, ...] = PRECISIONS
FIVE_POINT_EXTRA = 4  # points sampled inside the mask besides the interior point
DEFAULT_RESULTS_NAME = "results.json"
# Ranks meet once, after all videos are written: a fast rank may wait for hours at that point.
DISTRIBUTED_TIMEOUT = timedelta(days=2)


# --------------------------------------------------------------------------------------------
# Prompts derived from a mask
# --------------------------------------------------------------------------------------------


def prompt_seed(video: str, object_id: int, base_seed: int = 0) -> int:
    """A stable 63-bit seed for (video, object id, base seed): same on every machine and run."""
    digest = hashlib.sha256(f"{base_seed}/{video}/{int(object_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _checked_mask(mask: np.ndarray) -> np.ndarray:
    """A non-empty 2-D mask as bool, or ValueError saying what is wrong."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D mask (HxW), got shape {array.shape}")
    array = array.astype(bool, copy=False)
    if not array.any():
        raise ValueError("cannot derive a prompt from an empty mask")
    return array


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel farthest from the mask boundary (the frame border counts as one).

    Euclidean distance transform; among equally far pixels the one nearest their centroid wins,
    then the first in row-major order, so the choice is deterministic (the centre of a rectangle).
    """
    array = _checked_mask(mask)
    padded = np.pad(array.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    rows, cols = np.nonzero(distance == distance.max())
    offsets = (rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2
    best = int(np.argmin(offsets))
    return int(cols[best]), int(rows[best])


def sample_mask_points(
    mask: np.ndarray, count: int, seed: int, exclude: Sequence[tuple[int, int]] = ()
) -> list[tuple[int, int]]:
    """Up to ``count`` distinct (x, y) mask pixels drawn uniformly with ``seed``, none in ``exclude``."""
    array = _checked_mask(mask)
    rows, cols = np.nonzero(array)
    keep = np.ones(rows.shape, dtype=bool)
    for x, y in exclude:
        keep &= ~((cols == x) & (rows == y))
    rows, cols = rows[keep], cols[keep]
    picks = np.random.default_rng(seed).choice(rows.size, size=min(count, rows.size), replace=False)
    return [(int(cols[i]), int(rows[i])) for i in picks]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box (x0, y0, x1, y1) of a mask, inclusive pixel indices as SAM 2's ``mask_to_box``.

    A one-pixel-wide extent is widened by one pixel (a box needs x0 < x1 and y0 < y1).
    """
    array = _checked_mask(mask)
    rows = np.flatnonzero(array.any(axis=1))
    cols = np.flatnonzero(array.any(axis=0))
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def prompt_from_mask(mask: np.ndarray, prompt_type: str, seed: int = 0) -> Prompt:
    """The tracker prompt of one object from its first-appearance mask (see the module docstring)."""
    if prompt_type not in PROMPT_TYPES:
        raise ValueError(f"unknown prompt type {prompt_type!r}; choose one of {', '.join(PROMPT_TYPES)}")
    array = _checked_mask(mask)
    if prompt_type == "mask":
        return Prompt(mask=array)
    if prompt_type == "box":
        return Prompt(box=mask_box(array))
    points = [interior_point(array)]
    if prompt_type == "5-point":
        points += sample_mask_points(array, FIVE_POINT_EXTRA, seed, exclude=points)
    return Prompt(points=points, labels=[1] * len(points))


# --------------------------------------------------------------------------------------------
# Configuration and reports
# --------------------------------------------------------------------------------------------


@dataclass
class VOSInferenceConfig:
    """Everything one `run_vos_inference` needs; paths as in SurgSAM2's vos_inference script."""

    base_video_dir: Path
    input_mask_dir: Path
    output_mask_dir: Path
    gt_root: Path | None = None
    video_list_file: Path | None = None
    score_thresh: float = 0.0  # threshold on the mask logits, as SAM 2's vos_inference
    model: str = "nano"  # SurgSAM2: sam2.1_hiera_s + its checkpoint at image_size 512
    checkpoint: Path | None = None
    image_size: int | None = None  # None: the checkpoint's or the config's (SurgSAM2 uses 512)
    memory: str = "efp"
    num_frame_to_prune: int = 2
    fill_hole_area: int | None = None  # None: the model config's (8); 0 as the official scripts
    device: str | None = None  # None: cuda (this rank's GPU) if available, else cpu
    cuda_graphs: bool = False  # replay the model's parts as CUDA graphs (SAM2Model.use_cuda_graphs)
    dtype: str = "fp32"
    prompt_type: str = "mask"
    meta: Path | None = None
    output: Path | None = None  # results JSON; None: <output_mask_dir>/results.json
    workers: int = 1  # evaluation processes
    seed: int = 0  # random-init weights (no checkpoint) and the 5-point samples
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("base_video_dir", "input_mask_dir", "output_mask_dir"):
            setattr(self, name, Path(getattr(self, name)))
        for name in ("gt_root", "video_list_file", "checkpoint", "meta", "output"):
            value = getattr(self, name)
            setattr(self, name, None if value is None else Path(value))

    @property
    def results_path(self) -> Path:
        """Where the results JSON goes (the CSV next to it)."""
        return self.output if self.output is not None else self.output_mask_dir / DEFAULT_RESULTS_NAME

    def validate(self) -> None:
        """ValueError / FileNotFoundError for settings that would fail every video."""
        if self.prompt_type not in PROMPT_TYPES:
            raise ValueError(f"unknown prompt type {self.prompt_type!r}; choose one of {', '.join(PROMPT_TYPES)}")
        if self.memory not in MEMORY_TYPES:
            raise ValueError(f"unknown memory policy {self.memory!r}; choose one of {', '.join(MEMORY_TYPES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.num_frame_to_prune < 0:
            raise ValueError(f"num_frame_to_prune must be >= 0, got {self.num_frame_to_prune}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if not np.isfinite(self.score_thresh):
            raise ValueError(f"score_thresh must be a finite number, got {self.score_thresh}")
        for what, path in (("base video", self.base_video_dir), ("input mask", self.input_mask_dir)):
            if not path.is_dir():
                raise FileNotFoundError(f"{what} folder not found: {path}")
        for what, path in (("video list", self.video_list_file), ("checkpoint", self.checkpoint), ("meta", self.meta)):
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"{what} file not found: {path}")
        if self.gt_root is not None and not self.gt_root.is_dir():
            raise FileNotFoundError(f"ground-truth folder (--gt_root) not found: {self.gt_root}")
        if self.output_mask_dir.exists() and not self.output_mask_dir.is_dir():
            raise NotADirectoryError(f"output path exists and is not a folder: {self.output_mask_dir}")


@dataclass
class VideoReport:
    """What happened to one video: frames and objects written, time taken, or why it failed."""

    video: str
    rank: int = 0
    frames: int = 0
    objects: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass
class VOSInferenceReport:
    """The outcome of a run, as seen by one rank (rank 0 also holds the evaluation)."""

    rank: int
    world_size: int
    videos: list[VideoReport] = field(default_factory=list)  # every rank's videos, in list order
    evaluation: EvaluationResult | None = None
    results_path: Path | None = None
    csv_path: Path | None = None

    @property
    def failed(self) -> list[VideoReport]:
        return [report for report in self.videos if not report.ok]

    @property
    def exit_code(self) -> int:
        """0 when every video was written, 1 when some failed."""
        return 1 if self.failed else 0


# --------------------------------------------------------------------------------------------
# Videos, sharding, processes
# --------------------------------------------------------------------------------------------


def list_videos(base_video_dir: Path, video_list_file: Path | None = None) -> list[str]:
    """Video names: those of the list file (one per line, blank lines and # comments skipped,
    duplicates dropped), else every non-hidden sub-folder of ``base_video_dir``, sorted naturally."""
    if video_list_file is None:
        return sorted(
            (p.name for p in Path(base_video_dir).iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=natural_key,
        )
    names: list[str] = []
    for line in Path(video_list_file).read_text(encoding="utf-8").splitlines():
        name = line.strip()
        if name and not name.startswith("#") and name not in names:
            if "/" in name or "\\" in name or name in (".", ".."):
                raise ValueError(f"{video_list_file}: {name!r} is not a video folder name")
            names.append(name)
    return names


def shard(videos: Sequence[str], rank: int, world_size: int) -> list[str]:
    """The videos of one rank: video i goes to rank i % world_size."""
    return [video for index, video in enumerate(videos) if index % world_size == rank]


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the ranks (from the RANK / WORLD_SIZE / LOCAL_RANK variables)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProcessGroup:
        """Read the torchrun variables; a single process when WORLD_SIZE is unset or 1."""
        env = os.environ if environ is None else environ
        try:
            world_size = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local_rank = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank} WORLD_SIZE={world_size}")
        return cls(rank=rank, world_size=world_size, local_rank=local_rank)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def start(self) -> None:
        """Join the gloo process group (env:// rendezvous) when there is more than one rank."""
        if not self.distributed:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(
                "gloo", rank=self.rank, world_size=self.world_size, timeout=DISTRIBUTED_TIMEOUT
            )

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (waits for all ranks)."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_from_first(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def stop(self) -> None:
        """Leave the process group."""
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def resolve_device(device: str | None, group: ProcessGroup) -> str:
    """The torch device of this rank: cuda (this rank's GPU under torchrun) if available, else cpu.
    A plain "cuda" gets its index (``torch.cuda.set_device`` refuses a device without one)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        count = max(torch.cuda.device_count(), 1)
        index = group.local_rank % count if group.distributed else torch.cuda.current_device()
        device = f"cuda:{index}"
    return device


# --------------------------------------------------------------------------------------------
# One video
# --------------------------------------------------------------------------------------------


def first_appearance_prompts(video: VOSVideo) -> dict[int, dict[int, np.ndarray]]:
    """{frame position: {object id: bool mask}} of each object's first prompt mask."""
    seen: set[int] = set()
    prompts: dict[int, dict[int, np.ndarray]] = {}
    for position in video.prompt_positions:
        id_map = video.read_prompt(position)
        new_objects = None if id_map is None else new_object_prompt(id_map, seen)
        if new_objects is not None:
            prompts[position] = {int(i): new_objects == i for i in np.unique(new_objects) if i != 0}
    return prompts


def combine_object_logits(
    logits: Mapping[int, np.ndarray], shape: tuple[int, int], threshold: float = 0.0
) -> np.ndarray:
    """Non-overlapping id map: each pixel goes to the object with the highest logit if that logit
    is above ``threshold`` (ties to the lower id), else 0."""
    if not logits:
        return np.zeros(shape, dtype=np.uint8)
    ids = np.array(sorted(logits))
    stacked = np.stack([np.asarray(logits[int(i)], dtype=np.float32) for i in ids])
    winner = np.argmax(stacked, axis=0)
    best = np.take_along_axis(stacked, winner[None], axis=0)[0]
    return np.where(best > threshold, ids[winner], 0).astype(np.uint8)


def _open_video(config: VOSInferenceConfig, name: str) -> VOSVideo:
    """Open one video's frame and prompt folders; errors name what is missing."""
    image_dir = config.base_video_dir / name
    prompt_dir = config.input_mask_dir / name
    if not image_dir.is_dir():
        raise FileNotFoundError(f"no frame folder {image_dir}")
    if not prompt_dir.is_dir():
        raise FileNotFoundError(f"no prompt mask folder {prompt_dir}")
    return VOSVideo(name, image_dir, annotation_dir=None, prompt_dir=prompt_dir)


def infer_video(
    model: Any, name: str, config: VOSInferenceConfig, on_frame: Callable[[], None] | None = None
) -> VideoReport:
    """Track every object of one video and write its per-object and ``all/`` masks atomically.

    Raises (ValueError, FileNotFoundError, ...) on a bad video; its staging folder is removed then.
    """
    from surgsam2.tracking.tracker import Tracker

    start = time.perf_counter()
    video = _open_video(config, name)
    prompts_by_position = first_appearance_prompts(video)
    object_ids = sorted({obj for masks in prompts_by_position.values() for obj in masks})
    if not object_ids:
        raise ValueError(f"no object in the prompt masks of {config.input_mask_dir / name}")
    tracker = Tracker(
        model,
        memory=config.memory,
        num_frame_to_prune=config.num_frame_to_prune,
        fill_hole_area=config.fill_hole_area,
        num_frames=len(video),
    )
    threshold = float(config.score_thresh)
    with staged_output_dir(config.output_mask_dir / name, overwrite=True) as staging:
        for position, frame_name in enumerate(video.frame_names):
            frame = video.read_frame(position)
            prompts = {
                obj: prompt_from_mask(mask, config.prompt_type, prompt_seed(name, obj, config.seed))
                for obj, mask in prompts_by_position.get(position, {}).items()
            }
            result = tracker.step(frame, prompts or None)
            shape = frame.shape[:2]
            for obj in object_ids:
                logits = result.logits.get(obj)
                mask = np.zeros(shape, dtype=np.uint8) if logits is None else (logits > threshold)
                write_mask(staging / f"{obj:03d}" / f"{frame_name}.png", np.where(mask, obj, 0).astype(np.uint8))
            combined = combine_object_logits(result.logits, shape, threshold)
            write_mask(staging / ALL_OBJECTS_DIR / f"{frame_name}.png", combined)
            if on_frame is not None:
                on_frame()
    return VideoReport(
        video=name, frames=len(video), objects=len(object_ids), seconds=time.perf_counter() - start
    )


def _count_frames(config: VOSInferenceConfig, name: str) -> int:
    """Frames of a video for the progress bar (0 when its folder cannot be listed)."""
    try:
        return len(list_frame_files(config.base_video_dir / name))
    except (OSError, ValueError):
        return 0


def _describe_error(error: BaseException) -> str:
    """One line for a failed video: the message, with the exception type when it is not obvious."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, (ValueError, FileNotFoundError, NotADirectoryError)):
        return message
    return f"{type(error).__name__}: {message}"


# --------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------


def _print_out(message: str) -> None:
    """Default info sink: stdout, without breaking a tqdm bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stdout)


def _print_err(message: str) -> None:
    """Default warning sink: stderr, without breaking a tqdm bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def run_vos_inference(
    config: VOSInferenceConfig,
    info: Callable[[str], None] = _print_out,
    warn: Callable[[str], None] = _print_err,
    group: ProcessGroup | None = None,
) -> VOSInferenceReport:
    """Infer this rank's share of the videos, wait for all ranks, evaluate once on rank 0.

    A failed video is reported through ``warn`` and skipped; settings that would fail every video
    raise before anything runs. ``group`` defaults to the torchrun environment.
    """
    import torch
    from tqdm import tqdm

    from surgsam2.eval.evaluate import write_results
    from surgsam2.model.checkpoint import default_checkpoint, load_model

    config.validate()
    group = ProcessGroup.from_env() if group is None else group
    videos = list_videos(config.base_video_dir, config.video_list_file)
    if not videos:
        raise ValueError(f"no videos to run: {config.video_list_file or config.base_video_dir} lists none")
    if config.gt_root is not None:
        missing = [video for video in videos if _gt_video_dir(config.gt_root, video) is None]
        if missing:
            raise FileNotFoundError(f"ground-truth folder {config.gt_root} has no video(s) {', '.join(missing)}")
    prefix = f"[rank {group.rank}/{group.world_size}] " if group.distributed else ""
    mine = shard(videos, group.rank, group.world_size)

    group.start()
    try:
        device = resolve_device(config.device, group)
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        if config.checkpoint is None and default_checkpoint(config.model) is None:
            torch.manual_seed(config.seed)
            if group.rank == 0:
                warn(f"no checkpoint for {config.model}: running with RANDOM weights (seed {config.seed})")
        if config.cuda_graphs and not device.startswith("cuda"):
            raise ValueError(f"--cuda-graphs needs a CUDA device, got device {device!r}")
        model = load_model(config.model, config.checkpoint, config.image_size, device=device, dtype=config.dtype)
        if config.cuda_graphs:  # graphs are kept across videos: same shapes, captured once
            model.use_cuda_graphs()

        reports: list[VideoReport] = []
        total_frames = sum(_count_frames(config, video) for video in mine)
        with tqdm(
            total=total_frames, unit="frame", desc=f"{prefix}vos-inference".strip(), dynamic_ncols=True,
            position=group.rank if group.distributed else None, disable=not config.progress, leave=True,
        ) as bar:  # fmt: skip
            for video in mine:
                bar.set_postfix_str(video, refresh=False)
                frames_before = bar.n
                try:
                    report = infer_video(model, video, config, on_frame=lambda: bar.update(1))
                except Exception as error:  # a bad video is reported and skipped
                    report = VideoReport(video=video, error=_describe_error(error))
                    _remove_stale_output(config.output_mask_dir / video)
                    bar.update(max(0, _count_frames(config, video) - (bar.n - frames_before)))
                    warn(f"{prefix}{video}: FAILED: {report.error}")
                else:
                    info(
                        f"{prefix}{video}: {report.frames} frames, {report.objects} objects,"
                        f" {report.frames_per_second:.1f} frames/s -> {config.output_mask_dir / video}"
                    )
                report.rank = group.rank
                reports.append(report)

        order = {video: index for index, video in enumerate(videos)}
        every = [r for rank_reports in group.all_gather(reports) for r in rank_reports]
        report = VOSInferenceReport(
            rank=group.rank, world_size=group.world_size, videos=sorted(every, key=lambda r: order[r.video])
        )

        evaluation_error: str | None = None
        if group.rank == 0 and config.gt_root is not None:
            done = [r.video for r in report.videos if r.ok]
            if not done:
                warn("no video completed: nothing to evaluate")
            else:
                if report.failed:
                    warn(f"evaluating the {len(done)} completed videos only (failed: "
                         f"{', '.join(r.video for r in report.failed)})")  # fmt: skip
                try:
                    result = evaluate_vos_output(
                        config.gt_root, config.output_mask_dir, done, meta=config.meta, workers=config.workers
                    )
                    report.evaluation = result
                    report.results_path, report.csv_path = write_results(result, config.results_path)
                except Exception as error:
                    evaluation_error = f"evaluation failed: {_describe_error(error)}"
        evaluation_error = group.broadcast_from_first(evaluation_error)
    finally:
        group.stop()
    if evaluation_error is not None:
        raise ValueError(evaluation_error if group.rank == 0 else f"{evaluation_error} (on rank 0)")
    return report


def _remove_stale_output(video_out_dir: Path) -> None:
    """Remove a video's output left by an earlier run, so that a failed video has no folder."""
    if video_out_dir.is_dir() and not video_out_dir.is_symlink():
        shutil.rmtree(video_out_dir, ignore_errors=True)
