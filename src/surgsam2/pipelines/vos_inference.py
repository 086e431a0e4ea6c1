"""Dataset-scale VOS inference (`surgsam2 vos-inference`), sharded over processes, then evaluated.

The equivalent of Surgical SAM 2's ``tools/vos_inference.py`` on our streaming tracker:

* Inputs: frames in ``<base_video_dir>/<video>/<frame>.jpg|png`` (numeric order) and prompt masks
  in ``<input_mask_dir>/<video>/<frame>.png`` (palette, pixel = object id). Each object is
  prompted once, on its first appearance in the prompt masks, and propagated forward
  (`surgsam2.pipelines.prompts`). All objects of a video go through one `Tracker` (one batch).
  With ``streams`` N > 1, N videos are tracked together by one `MultiStreamTracker` (the image
  encoder batched across them; same masks); a stream whose video ends takes the next one.
* Outputs, per video: ``<output_mask_dir>/<video>/<id:03d>/<frame>.png`` (that object alone,
  pixel = id where its mask logit > ``score_thresh``; empty before its first appearance), and
  ``<output_mask_dir>/<video>/all/<frame>.png`` (non-overlapping: where several objects are above
  the threshold the highest logit wins, ties to the lower id). Each video is staged and published
  when complete (`surgsam2.data.outputs`); a failed video publishes nothing, and with
  ``overwrite`` its output from an earlier run of ours is removed, so a video folder that exists is
  always a complete run.
* Evaluation (with ``gt_root``, rank 0 only): `surgsam2.eval.vos_output` on the videos that
  completed; failed ones are reported.
* Sharding: under ``torchrun`` video i goes to rank i % world_size; ranks meet once when all
  videos are written, rank 0 records the outputs and evaluates.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from surgsam2.app.errors import one_line
from surgsam2.app.options import ModelOptions, check_model_options, load_model_for_run
from surgsam2.data.masks import write_mask
from surgsam2.data.outputs import OutputFolder, check_output_location
from surgsam2.data.vos import VOSVideo, list_frame_files, list_videos, read_meta
from surgsam2.eval.results import EvaluationResult, check_results_path, write_results
from surgsam2.eval.vos_output import ALL_OBJECTS_DIR, evaluate_vos_output, gt_video_dir, object_dir_name
from surgsam2.memory.policies import DEFAULT_NUM_FRAME_TO_PRUNE, DEFAULT_POLICY, policy_names
from surgsam2.pipelines.prompts import PROMPT_TYPES, first_appearance_prompts, prompt_from_mask, prompt_seed
from surgsam2.runtime.distributed import ProcessGroup, shard
from surgsam2.tracking.prompts import Prompt
from surgsam2.tracking.results import FrameResult
from surgsam2.tracking.streams import MultiStreamTracker, StreamError
from surgsam2.tracking.tracker import Tracker

DEFAULT_RESULTS_NAME = "results.json"


@dataclass
class VOSInferenceConfig:
    """Everything one `run_vos_inference` needs; paths as in SurgSAM2's vos_inference script."""

    base_video_dir: Path
    input_mask_dir: Path
    output_mask_dir: Path
    gt_root: Path | None = None
    video_list_file: Path | None = None
    score_thresh: float = 0.0  # threshold on the mask logits, as SAM 2's vos_inference
    model: ModelOptions = field(default_factory=lambda: ModelOptions(device="auto"))
    memory: str = DEFAULT_POLICY
    num_frame_to_prune: int = DEFAULT_NUM_FRAME_TO_PRUNE
    fill_hole_area: int | None = None  # None: the model config's (8); 0 as the official scripts
    prompt_type: str = "mask"
    meta: Path | None = None
    output: Path | None = None  # results JSON; None: <output_mask_dir>/results.json
    workers: int = 1  # evaluation processes
    seed: int = 0  # the 5-point samples
    overwrite: bool = False  # replace videos an earlier run of ours wrote
    streams: int = 1  # videos tracked together by one MultiStreamTracker (1: one at a time)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("base_video_dir", "input_mask_dir", "output_mask_dir"):
            setattr(self, name, Path(getattr(self, name)))
        for name in ("gt_root", "video_list_file", "meta", "output"):
            value = getattr(self, name)
            setattr(self, name, None if value is None else Path(value))

    @property
    def results_path(self) -> Path:
        """Where the results JSON goes (the CSV next to it)."""
        return self.output if self.output is not None else self.output_mask_dir / DEFAULT_RESULTS_NAME

    @property
    def inputs(self) -> dict[str, Path]:
        """Every input by the option that names it (the output may not touch any of them)."""
        named = {
            "--base_video_dir": self.base_video_dir, "--input_mask_dir": self.input_mask_dir,
            "--gt_root": self.gt_root, "--video_list_file": self.video_list_file, "--meta": self.meta,
            "--checkpoint": self.model.checkpoint,
        }  # fmt: skip
        return {role: path for role, path in named.items() if path is not None}

    def validate(self) -> None:
        """ValueError / FileNotFoundError for settings that would fail every video, before any runs."""
        checks = (
            (self.prompt_type in PROMPT_TYPES,
             f"unknown prompt type {self.prompt_type!r}; choose one of {', '.join(PROMPT_TYPES)}"),
            (self.memory in policy_names(),
             f"unknown memory policy {self.memory!r}; choose one of {', '.join(policy_names())}"),
            (self.num_frame_to_prune >= 0, f"num_frame_to_prune must be >= 0, got {self.num_frame_to_prune}"),
            (self.workers >= 1, f"workers must be at least 1, got {self.workers}"),
            (self.streams >= 1, f"streams must be at least 1, got {self.streams}"),
            (bool(np.isfinite(self.score_thresh)), f"score_thresh must be a finite number, got {self.score_thresh}"),
        )  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        for what, path in (("base video", self.base_video_dir), ("input mask", self.input_mask_dir)):
            if not path.is_dir():
                raise FileNotFoundError(f"{what} folder not found: {path}")
        for what, path in (("video list", self.video_list_file), ("meta", self.meta)):
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"{what} file not found: {path}")
        if self.gt_root is not None and not self.gt_root.is_dir():
            raise FileNotFoundError(f"ground-truth folder (--gt_root) not found: {self.gt_root}")
        check_model_options(self.model)
        check_output_location(self.output_mask_dir, self.inputs)
        if self.results_path.is_dir():
            raise ValueError(f"--output {self.results_path} is a folder: give the results JSON file's path")
        if self.gt_root is not None:
            check_results_path(self.results_path, self.inputs)


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
# One video
# --------------------------------------------------------------------------------------------


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


@dataclass
class VideoJob:
    """One video being tracked: its frames, each object's prompt frame, and the staging folder its
    masks are written to, frame by frame (``position``: the next frame)."""

    name: str
    video: VOSVideo
    prompts_by_position: dict[int, dict[int, np.ndarray]]
    object_ids: list[int]
    staging: Path
    started: float
    position: int = 0

    @property
    def done(self) -> bool:
        return self.position >= len(self.video)

    def report(self) -> VideoReport:
        """The report of the completed video."""
        return VideoReport(
            video=self.name, frames=len(self.video), objects=len(self.object_ids),
            seconds=time.perf_counter() - self.started,
        )  # fmt: skip


def start_video(name: str, config: VOSInferenceConfig, staging: Path) -> VideoJob:
    """Open one video and its first-appearance prompts; raises on a missing folder or no object."""
    started = time.perf_counter()
    video = _open_video(config, name)
    prompts_by_position = first_appearance_prompts(video)
    object_ids = sorted({obj for masks in prompts_by_position.values() for obj in masks})
    if not object_ids:
        prompt_dir = config.input_mask_dir / name
        lossy = sorted(p.name for p in prompt_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        hint = ""
        if lossy:
            hint = f" ({len(lossy)} JPEG file(s) such as {lossy[0]} are not read: masks must be lossless PNG)"
        raise ValueError(f"no object in the prompt masks of {prompt_dir}{hint}")
    return VideoJob(name, video, prompts_by_position, object_ids, staging, started)


def next_input(job: VideoJob, config: VOSInferenceConfig) -> tuple[np.ndarray, dict[int, Prompt]]:
    """The job's next frame and the prompts of the objects that first appear on it."""
    frame = job.video.read_frame(job.position)
    prompts = {
        obj: prompt_from_mask(mask, config.prompt_type, prompt_seed(job.name, obj, config.seed))
        for obj, mask in job.prompts_by_position.get(job.position, {}).items()
    }
    return frame, prompts


def write_result(job: VideoJob, result: FrameResult, shape: tuple[int, int], config: VOSInferenceConfig) -> None:
    """Write the job's next frame's per-object and ``all/`` masks (frame size ``shape``)."""
    threshold = float(config.score_thresh)
    frame_name = job.video.frame_names[job.position]
    for obj in job.object_ids:
        logits = result.logits.get(obj)
        mask = np.zeros(shape, dtype=bool) if logits is None else (logits > threshold)
        write_mask(job.staging / object_dir_name(obj) / f"{frame_name}.png", np.where(mask, obj, 0).astype(np.uint8))
    combined = combine_object_logits(result.logits, shape, threshold)
    write_mask(job.staging / ALL_OBJECTS_DIR / f"{frame_name}.png", combined)
    job.position += 1


def tracker_options(config: VOSInferenceConfig) -> dict[str, Any]:
    """The `Tracker` options of the run (every video, every stream)."""
    return {
        "memory": config.memory, "num_frame_to_prune": config.num_frame_to_prune,
        "fill_hole_area": config.fill_hole_area,
    }  # fmt: skip


def infer_video(
    model, name: str, config: VOSInferenceConfig, staging: Path, on_frame: Callable[[], None] | None = None
) -> VideoReport:
    """Track every object of one video and write its per-object and ``all/`` masks into ``staging``.

    Raises (ValueError, FileNotFoundError, ...) on a bad video.
    """
    job = start_video(name, config, staging)
    tracker = Tracker(model, num_frames=len(job.video), **tracker_options(config))
    while not job.done:
        frame, prompts = next_input(job, config)
        write_result(job, tracker.step(frame, prompts or None), frame.shape[:2], config)
        if on_frame is not None:
            on_frame()
    return job.report()


def _count_frames(config: VOSInferenceConfig, name: str) -> int:
    """Frames of a video for the progress bar (0 when its folder cannot be listed)."""
    try:
        return len(list_frame_files(config.base_video_dir / name))
    except (OSError, ValueError):
        return 0


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


def _list_run_videos(config: VOSInferenceConfig) -> list[str]:
    """The videos of the run; every one must have ground truth when evaluating."""
    videos = list_videos(config.base_video_dir, config.video_list_file)
    if not videos:
        raise ValueError(f"no videos to run: {config.video_list_file or config.base_video_dir} lists none")
    if config.meta is not None:  # a malformed or incomplete meta.json fails here, before any video runs
        read_meta(config.meta).check_videos(videos, source=str(config.meta))
    if config.gt_root is not None:
        missing = [video for video in videos if gt_video_dir(config.gt_root, video) is None]
        if missing:
            raise FileNotFoundError(f"ground-truth folder {config.gt_root} has no video(s) {', '.join(missing)}")
    return videos


def _claim_outputs(folder: OutputFolder, videos: list[str], group: ProcessGroup) -> None:
    """Rank 0 checks that every video's output may be written (before any rank runs); the others
    learn the verdict, so a refusal stops every rank with the same message."""
    verdict = None
    if group.is_main:
        try:
            for video in videos:
                folder.claim(video)
        except ValueError as error:
            verdict = str(error)
    verdict = group.broadcast_from_first(verdict)
    if verdict is not None:
        raise ValueError(verdict if group.is_main else f"{verdict} (on rank 0)")


def _infer_share(
    model, videos: list[str], config: VOSInferenceConfig, folder: OutputFolder, group: ProcessGroup,
    info: Callable[[str], None], warn: Callable[[str], None],
) -> list[VideoReport]:  # fmt: skip
    """Infer this rank's videos, each published when complete; a bad video is reported and skipped.
    With ``config.streams`` > 1 that many videos are tracked together (`_infer_streams`)."""
    from tqdm import tqdm

    reports: list[VideoReport] = []
    prefix = group.log_prefix

    def finished(report: VideoReport, frames_left: int) -> None:
        """Report a video as it completes or fails (a failed one's earlier output of ours is removed)."""
        if report.ok:
            info(
                f"{prefix}{report.video}: {report.frames} frames, {report.objects} objects,"
                f" {report.frames_per_second:.1f} frames/s -> {config.output_mask_dir / report.video}"
            )
        else:
            if group.is_main:
                folder.remove_own(report.video)
            bar.update(max(0, frames_left))
            warn(f"{prefix}{report.video}: FAILED: {report.error}")
        report.rank = group.rank
        reports.append(report)

    with tqdm(
        total=sum(_count_frames(config, video) for video in videos), unit="frame",
        desc=f"{prefix}vos-inference".strip(), dynamic_ncols=True,
        position=group.rank if group.is_distributed else None, disable=not config.progress, leave=True,
    ) as bar:  # fmt: skip
        if config.streams > 1:
            _infer_streams(model, videos, config, folder, group.is_main, lambda: bar.update(1), finished)
            return reports
        for video in videos:
            bar.set_postfix_str(video, refresh=False)
            frames_before = bar.n
            try:
                # The lock holder lists each video in the folder's marker as it is published (so an
                # interrupted run's videos stay replaceable); other ranks' videos are listed by it
                # when they meet.
                with folder.stage_dir(video, record=group.is_main) as staging:
                    report = infer_video(model, video, config, staging, on_frame=lambda: bar.update(1))
            except Exception as error:  # a bad video is reported and skipped
                report = VideoReport(video=video, error=one_line(error))
                finished(report, _count_frames(config, video) - (bar.n - frames_before))
            else:
                finished(report, 0)
    return reports


# --------------------------------------------------------------------------------------------
# Many videos at once (--streams N)
# --------------------------------------------------------------------------------------------

Finished = Callable[[VideoReport, int], None]  # a video's report, its frames not run


@dataclass
class _StreamSlot:
    """The video a stream is tracking and the open staging of its output."""

    job: VideoJob
    staging: contextlib.ExitStack


def _discard(staging: contextlib.ExitStack, error: BaseException) -> None:
    """Remove a video's staging folder after ``error`` (nothing published)."""
    staging.__exit__(type(error), error, error.__traceback__)


def _infer_streams(
    model, videos: list[str], config: VOSInferenceConfig, folder: OutputFolder, record: bool,
    on_frame: Callable[[], None], finished: Finished,
) -> None:  # fmt: skip
    """Track ``config.streams`` videos at a time with one `MultiStreamTracker` (one image-encoder
    call per step for all of them); a stream whose video ends or fails takes the next video. Each
    video is staged and published on its own, as with one stream; a bad video fails alone."""
    tracker = MultiStreamTracker(model, config.streams, **tracker_options(config))
    queue = deque(videos)
    slots: list[_StreamSlot | None] = [None] * config.streams
    try:
        while queue or any(slot is not None for slot in slots):
            for index, slot in enumerate(slots):
                if slot is None:
                    slots[index] = slot = _start_next(queue, config, folder, record, finished)
                    if slot is not None:
                        tracker.reset(index, num_frames=len(slot.job.video))
            _step_streams(tracker, slots, config, on_frame, finished)
    except BaseException as error:  # Ctrl-C, SIGTERM: the open stagings are removed
        for slot in slots:
            if slot is not None:
                _discard(slot.staging, error)
        raise


def _start_next(
    queue: deque[str], config: VOSInferenceConfig, folder: OutputFolder, record: bool, finished: Finished
) -> _StreamSlot | None:
    """Open the next video of ``queue`` that starts (those that fail are reported); None when none is left."""
    while queue:
        name = queue.popleft()
        staging = contextlib.ExitStack()
        try:
            job = start_video(name, config, staging.enter_context(folder.stage_dir(name, record=record)))
        except Exception as error:
            _discard(staging, error)
            finished(VideoReport(video=name, error=one_line(error)), _count_frames(config, name))
        except BaseException as error:
            _discard(staging, error)
            raise
        else:
            return _StreamSlot(job, staging)
    return None


def _fail_stream(
    slots: list[_StreamSlot | None], index: int, error: Exception, config: VOSInferenceConfig, finished: Finished
) -> None:
    """Stream ``index``'s video failed: remove its staging, report it, free the stream."""
    slot = slots[index]
    slots[index] = None
    _discard(slot.staging, error)
    message = error.reason if isinstance(error, StreamError) else one_line(error)
    finished(VideoReport(video=slot.job.name, error=message), _count_frames(config, slot.job.name) - slot.job.position)


def _step_streams(
    tracker: MultiStreamTracker, slots: list[_StreamSlot | None], config: VOSInferenceConfig,
    on_frame: Callable[[], None], finished: Finished,
) -> None:  # fmt: skip
    """One step of every stream with a video: read, track, write; publish the videos that end."""
    frames: list[np.ndarray | None] = [None] * len(slots)
    prompts: list[dict[int, Prompt] | None] = [None] * len(slots)
    for index, slot in enumerate(slots):
        if slot is not None:
            try:
                frames[index], prompts[index] = next_input(slot.job, config)
            except Exception as error:  # e.g. an undecodable frame
                _fail_stream(slots, index, error, config, finished)
    while True:
        try:
            results = tracker.step(frames, prompts)
            break
        except StreamError as error:  # found before any stream advanced: drop that stream, step the others
            _fail_stream(slots, error.stream, error, config, finished)
            frames[error.stream] = prompts[error.stream] = None
        except Exception as error:  # the network failed: every stream of this step fails
            for index, frame in enumerate(frames):
                if frame is not None:
                    _fail_stream(slots, index, error, config, finished)
            return
    for index, result in enumerate(results):
        slot = slots[index]
        if result is None or slot is None:
            continue
        try:
            write_result(slot.job, result, frames[index].shape[:2], config)
            on_frame()
            if slot.job.done:
                slots[index] = None
                slot.staging.close()  # publish (the staging is removed if that fails)
                finished(slot.job.report(), 0)
        except Exception as error:
            if slots[index] is None:  # publishing failed: its staging is gone already
                finished(VideoReport(video=slot.job.name, error=one_line(error)), 0)
            else:
                _fail_stream(slots, index, error, config, finished)


def _evaluate_completed(
    report: VOSInferenceReport, config: VOSInferenceConfig, warn: Callable[[str], None]
) -> str | None:
    """Rank 0: evaluate the completed videos into ``report``; an error message when it failed."""
    done = [r.video for r in report.videos if r.ok]
    if not done:
        warn("no video completed: nothing to evaluate")
        return None
    if report.failed:
        warn(f"evaluating the {len(done)} completed videos only (failed: {', '.join(r.video for r in report.failed)})")
    try:
        result = evaluate_vos_output(
            config.gt_root, config.output_mask_dir, done, meta=config.meta, workers=config.workers
        )
        report.evaluation = result
        report.results_path, report.csv_path = write_results(
            result, config.results_path, inputs=config.inputs, command="vos-inference"
        )
    except Exception as error:
        return f"evaluation failed: {one_line(error)}"
    return None


def run_vos_inference(
    config: VOSInferenceConfig,
    info: Callable[[str], None] = _print_out,
    warn: Callable[[str], None] = _print_err,
    group: ProcessGroup | None = None,
) -> VOSInferenceReport:
    """Infer this rank's share of the videos, wait for all ranks, evaluate once on rank 0.

    A failed video is reported through ``warn`` and skipped; settings that would fail every video
    (and an output folder that overlaps an input or holds what an earlier run wrote, without
    ``overwrite``) raise before any video runs. ``group`` defaults to the torchrun environment.
    """
    config.validate()
    videos = _list_run_videos(config)
    group = ProcessGroup.join(config.model.device) if group is None else group
    evaluation_error: str | None = None
    try:
        with OutputFolder(
            config.output_mask_dir, inputs=config.inputs, overwrite=config.overwrite, command="vos-inference",
            notice=warn, lock=group.is_main,
        ) as folder:  # fmt: skip
            _claim_outputs(folder, videos, group)
            model_options = ModelOptions(**{**vars(config.model), "device": str(group.device)})
            model = load_model_for_run(model_options, warn=warn if group.is_main else lambda message: None)
            mine = shard(videos, group.rank, group.world_size)
            reports = _infer_share(model, mine, config, folder, group, info, warn)
            order = {video: index for index, video in enumerate(videos)}
            gathered = (r for rank_reports in group.all_gather(reports) for r in rank_reports)
            every = sorted(gathered, key=lambda r: order[r.video])
            report = VOSInferenceReport(rank=group.rank, world_size=group.world_size, videos=every)
            if group.is_main:
                folder.record([r.video for r in every if r.ok and r.rank != 0])
                for failed in report.failed:
                    folder.remove_own(failed.video)  # an earlier run's output of a video that failed now
                if config.gt_root is not None:
                    evaluation_error = _evaluate_completed(report, config, warn)
            evaluation_error = group.broadcast_from_first(evaluation_error)
    finally:
        group.leave()
    if evaluation_error is not None:
        raise ValueError(evaluation_error if group.is_main else f"{evaluation_error} (on rank 0)")
    return report
