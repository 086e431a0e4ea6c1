"""Convert the raw EndoVis 2017 / 2018 instrument data into the VOS layout (`surgsam2 convert-endovis`).

What is read (``SRC`` is the folder given to ``--src``; ``[<group>/]`` means the video folders may
sit directly in SRC or one folder below it, e.g. the challenge's ``instrument_1_4_training/`` or
ISINet's ``miccai_challenge_2018_release_1/``)::

    EndoVis 2017 (Robotic Instrument Segmentation, training release):
      SRC/[<group>/]instrument_dataset_<k>/left_frames/frame<NNN>.png          1920x1080 RGB
      SRC/[<group>/]instrument_dataset_<k>/ground_truth/<Instrument>_labels/frame<NNN>.png
          one folder per instrument instance (Left_Prograsp_Forceps_labels, Right_..., Maryland_
          Bipolar_Forceps_labels, Other_labels, ...); a pixel > 0 is that instrument (the raw
          files hold part values 10/20/30 or 255; RGB files count any channel > 0).

    EndoVis 2018 (Robotic Scene Segmentation) with ISINet's instrument-type labels, either
      (a) per sequence:
      SRC/[<group>/]seq_<k>/left_frames/frame<NNN>.png                          1280x1024 RGB
      SRC/[<group>/]seq_<k>/<labels>/frame<NNN>.png     <labels> = instruments_masks or
          annotations (or --labels-dir NAME): single-channel PNG, pixel value = class id 1-7
      (b) ISINet's organised output (data/organize2018.py), in any number of groups (train/, val/):
      SRC/<group>/images/seq<k>_frame<NNN>.png
      SRC/<group>/annotations/seq<k>_frame<NNN>.png     pixel value = class id 1-7
    The challenge's own ``seq_<k>/labels/`` (RGB scene-part colours) are not instrument types.

    EndoVis 2017 test release (``--split test``): frames and ground truth, released apart, may sit
    in one folder per dataset or in two trees, each up to three folders below SRC:
      SRC/.../instrument_dataset_<k>/left_frames/frame<NNN>.png     k = 1-10; 1920x1080 RGB;
          datasets 1-8: frame225-frame299 (after the training frames), 9-10: frame000-frame299
      SRC/.../instrument_dataset_<k>/[gt/]TypeSegmentation/frame<NNN>.png   single-channel type
          map, pixel = class id 1-7 (0 = background); BinarySegmentation/, PartsSegmentation/
          and TypeSegmentationRescaled/ (colours for viewing) beside it are not read; test ground
          truth arranged like the training release (ground_truth/<Instrument>_labels/) is read too

What is written, for each split ``<split>`` of ``--split`` (``all`` = ``train`` and ``val``;
``test`` = the 2017 test release)::

    DST/<split>/JPEGImages/<video>/<frame>.jpg|png      2017: cropped to 1280x1024 from (320, 28)
    DST/<split>/Annotations/<video>/<frame>.png         palette PNG, pixel = object id
    DST/<split>/VOS/Annotations_vos_instrument/<video>/<frame>.png   first-appearance masks
    DST/<split>/meta.json                               object id -> class id, classes, source

``<video>`` is ``instrument_dataset_<k>`` / ``seq_<k>``; ``<frame>`` is the raw frame number on
five digits (``frame042.png`` -> ``00042``), so converted frames trace back to the raw files.

Objects: 2017 (default ``instance``) one object per ground-truth folder, ids 1..n in natural
folder order, class from the folder name; ``class`` mode merges them to object id = class id.
2018: object id = class id, one object per instrument class per sequence (as SurgSAM2's
VOS-EndoVis18): a class map cannot tell two instruments of one class apart, and per-frame connected
components have no identity over time; the 2017 test type maps likewise. Class ids come from
``surgsam2.data.classes`` (one table).

Splits: 2017 follows the TernausNet / ISINet / SurgicalSAM 4-fold cross-validation of datasets 1-8
(fold 0: 1, 3; fold 1: 2, 5; fold 2: 4, 8; fold 3: 6, 7): ``val`` = the fold's datasets, ``train``
= the other six. 2018: ``val`` = seq 2, 5, 9, 15 (ISINet, SurgicalSAM, SurgSAM2), ``train`` = the
other sequences found. 2017 ``test`` = datasets 1-10 of the test release (SurgSAM2's VOS-EndoVis17
"valid"). Each split folder is written atomically (``staged_output_dir``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from surgsam2.data.classes import class_table
from surgsam2.data.endovis_layouts import (
    ENDOVIS17_FOLDS,
    ENDOVIS17_LABELLED_DATASETS,
    ENDOVIS17_TEST_DATASETS,
    ENDOVIS17_TEST_FIRST_FRAME,
    ENDOVIS17_TYPE_MAP_DIRS,
    ENDOVIS18_LABEL_DIRS,
    ENDOVIS18_VAL_SEQUENCES,
    SPLITS,
    VideoLocation,
    build_2017_test_video,
    build_2017_video,
    build_2018_video,
    discover_videos,
    split_videos,
)
from surgsam2.data.endovis_raw import (
    ENDOVIS17_CROP,
    ENDOVIS17_OTHER_NAMES,
    ENDOVIS17_RAW_SIZE,
    CropBox,
    EndoVis17TypeMapVideo,
    EndoVis17Video,
    EndoVis18Video,
    RawVideo,
    check_matching_frames,
    endovis17_class_of_folder,
    list_raw_frames,
    read_foreground,
    video_name,
)
from surgsam2.data.masks import object_ids
from surgsam2.data.outputs import check_output_location
from surgsam2.data.vos import DatasetMeta, VOSWriter, new_object_prompt, staged_output_dir

__all__ = [
    "ENDOVIS17_CROP",
    "ENDOVIS17_FOLDS",
    "ENDOVIS17_LABELLED_DATASETS",
    "ENDOVIS17_OTHER_NAMES",
    "ENDOVIS17_RAW_SIZE",
    "ENDOVIS17_TEST_DATASETS",
    "ENDOVIS17_TEST_FIRST_FRAME",
    "ENDOVIS17_TYPE_MAP_DIRS",
    "ENDOVIS18_LABEL_DIRS",
    "ENDOVIS18_VAL_SEQUENCES",
    "OBJECT_MODES",
    "SPLITS",
    "YEARS",
    "CropBox",
    "EndoVis17TypeMapVideo",
    "EndoVis17Video",
    "EndoVis18Video",
    "EndoVisConversionSummary",
    "RawVideo",
    "SplitSummary",
    "check_matching_frames",
    "convert_endovis",
    "discover_videos",
    "endovis17_class_of_folder",
    "list_raw_frames",
    "read_foreground",
    "split_videos",
]

YEARS = (2017, 2018)
OBJECT_MODES = ("instance", "class")

T = TypeVar("T")
R = TypeVar("R")


def _relative_text(path: Path, root: Path) -> str:
    """`path` relative to `root` as text ('.' for the root itself), else the path as given."""
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------
# conversion


@dataclass
class SplitSummary:
    """What was written for one split."""

    split: str
    root: Path
    videos: list[str]
    frames: int
    objects: int
    missing: list[str]  # videos of the standard split that were not found under SRC


@dataclass
class EndoVisConversionSummary:
    """What `convert_endovis` did: layout read, fold, object mode, the splits written, time."""

    year: int
    layout: str
    fold: int | None
    object_mode: str
    splits: list[SplitSummary]
    ignored: list[str]  # videos found under SRC that belong to no requested split
    seconds: float


@dataclass
class _VideoResult:
    """Per-video outcome: frames written and each object's first-appearance frame number."""

    name: str
    frames: int
    first_appearance: dict[int, int]


def _convert_video(video: RawVideo, writer: VOSWriter) -> _VideoResult:
    """Write one video's frames, annotations and first-appearance prompts under the writer root."""
    seen: set[int] = set()
    first: dict[int, int] = {}
    for number in sorted(video.frames):
        rgb = video.read_frame(number)
        id_map = video.read_id_map(number)
        writer.write_frame(video.name, number, rgb)
        writer.write_annotation(video.name, number, id_map)
        prompt = new_object_prompt(id_map, seen)
        if prompt is not None:
            first.update({object_id: number for object_id in object_ids(prompt)})
            writer.write_prompt(video.name, number, prompt)
    return _VideoResult(video.name, len(video.frames), first)


def _run_parallel(func: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """`func` over `items` on up to `workers` threads (OpenCV I/O releases the GIL), in order.

    The first error is raised and the tasks not yet started are cancelled.
    """
    if workers <= 1 or len(items) <= 1:
        return [func(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures = [pool.submit(func, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _check_targets(src: Path, dst: Path, targets: Iterable[Path], overwrite: bool) -> None:
    """Refuse, before anything is written, a DST that is, contains or lies inside SRC (or is a
    protected folder such as the current one), and a non-empty target (without overwrite)."""
    resolved_src = src.resolve()
    for target in targets:
        if target.exists() and not target.is_dir():
            raise NotADirectoryError(f"output path exists and is not a folder: {target}")
        resolved = target.resolve()
        if resolved == resolved_src or resolved in resolved_src.parents:
            raise ValueError(f"refusing to write {target}: it contains the source folder {src}")
        if target.is_dir() and any(target.iterdir()) and not overwrite:
            raise ValueError(
                f"output folder {target} is not empty (use --overwrite / overwrite=True to replace it)"
            )
    check_output_location(dst, {"--src": src})


@dataclass(frozen=True)
class _Options:
    """The checked options of one conversion, shared by its steps."""

    src: Path
    dst: Path
    year: int
    split: str
    fold: int | None  # 2017 train / val only
    object_mode: str
    labels_dir: str | None
    image_format: str
    jpeg_quality: int
    overwrite: bool
    workers: int
    table: Mapping[int, str]


def _check_options(
    src: Path,
    dst: Path,
    year: int,
    split: str,
    fold: int | None,
    object_mode: str | None,
    labels_dir: str | None,
    image_format: str,
    jpeg_quality: int,
    overwrite: bool,
    workers: int,
) -> _Options:
    """Validate the options (one-line ValueError / FileNotFoundError) before anything is read."""
    if year not in YEARS:
        raise ValueError(f"year must be 2017 or 2018, got {year}")
    split_videos(year, split, [])  # validates the split name and that the year has it
    if split == "test" and fold is not None:
        raise ValueError("--fold picks the EndoVis 2017 train/val cross-validation; the test split has none")
    if year == 2018 and fold is not None:
        raise ValueError("--fold applies to EndoVis 2017 only (EndoVis 2018 has one validation split)")
    if year == 2017 and labels_dir is not None:
        raise ValueError(
            "--labels-dir applies to EndoVis 2018 only (2017 labels are ground_truth/<Instrument>_labels/)"
        )
    # 2017 training folders are per instrument; the test release and 2018 give class maps
    mode = object_mode or ("instance" if year == 2017 and split != "test" else "class")
    if mode not in OBJECT_MODES:
        raise ValueError(f"object mode must be one of {', '.join(OBJECT_MODES)}, got {mode!r}")
    if year == 2018 and mode != "class":
        raise ValueError(
            "EndoVis 2018 instrument-type labels are class maps: objects are per class"
            " (object id = class id); 'instance' is not available"
        )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    VOSWriter(dst, image_format=image_format, jpeg_quality=jpeg_quality)  # validates the format options
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    chosen_fold = (0 if fold is None else int(fold)) if year == 2017 and split != "test" else None
    return _Options(
        src, dst, year, split, chosen_fold, mode, labels_dir, image_format, jpeg_quality, overwrite, workers,
        class_table(f"endovis{year % 100}"),
    )  # fmt: skip


def _plan_splits(
    options: _Options, split: str, locations: Mapping[int, VideoLocation]
) -> tuple[dict[str, tuple[int, ...]], list[int], list[str]]:
    """(split -> video numbers, the numbers found and selected, names of the found ones left out).

    FileNotFoundError when a requested split has none of its videos under SRC.
    """
    year = options.year
    plan = split_videos(year, split, locations, fold=options.fold or 0)
    selected = sorted({number for numbers in plan.values() for number in numbers if number in locations})
    for name, numbers in plan.items():
        if not any(number in locations for number in numbers):
            wanted = ", ".join(video_name(year, number) for number in numbers)
            wanted = wanted or "any sequence besides the validation ones"
            raise FileNotFoundError(
                f"no EndoVis {year} {name} videos under {options.src} (expected {wanted})"
            )
    ignored = [video_name(year, number) for number in sorted(set(locations) - set(selected))]
    return plan, selected, ignored


def _build_videos(
    options: _Options, selected: Iterable[int], locations: Mapping[int, VideoLocation]
) -> dict[int, RawVideo]:
    """List and size-check every selected raw video (nothing is written yet)."""
    videos: dict[int, RawVideo] = {}
    for number in selected:
        if options.split == "test":
            video: RawVideo = build_2017_test_video(locations[number], options.object_mode, options.table)
        elif options.year == 2017:
            video = build_2017_video(locations[number], options.object_mode, options.table)
        else:
            video = build_2018_video(locations[number], options.labels_dir, options.table)
        video.check_sizes()
        videos[number] = video
    return videos


def _split_meta(
    options: _Options, layout: str, split: str, members: list[RawVideo], missing: list[str]
) -> DatasetMeta:
    """The meta.json of one split before its videos are converted (objects are added after)."""
    meta = DatasetMeta(dataset=f"endovis{options.year % 100}", classes=dict(options.table))
    meta.extra["source"] = {
        "converter": "surgsam2 convert-endovis",
        "year": options.year,
        "layout": layout,
        "split": split,
        "fold": options.fold,
        "object_mode": options.object_mode,
        "crop": ENDOVIS17_CROP.to_json() if options.year == 2017 else None,
        "frame_names": "raw frame number, 5 digits (frame042.png -> 00042)",
        "videos": [video.name for video in members],
        "missing": missing,
    }
    return meta


def _write_split(
    options: _Options,
    layout: str,
    split: str,
    members: list[RawVideo],
    missing: list[str],
    progress: Callable[[str, str, int], None] | None,
) -> SplitSummary:
    """Convert the videos of one split into DST/<split>/ (staged, renamed into place when complete)."""
    target = options.dst / split
    meta = _split_meta(options, layout, split, members, missing)
    with staged_output_dir(target, overwrite=options.overwrite) as staging:
        writer = VOSWriter(staging, image_format=options.image_format, jpeg_quality=options.jpeg_quality)

        def convert_one(video: RawVideo) -> _VideoResult:
            result = _convert_video(video, writer)
            if progress is not None:
                progress(split, video.name, result.frames)
            return result

        results = _run_parallel(convert_one, members, options.workers)
        for video, result in zip(members, results):
            present = sorted(result.first_appearance)
            meta.objects[video.name] = {obj: video.objects[obj] for obj in present}
            extra: dict[str, Any] = {
                "source": _relative_text(video.folder, options.src),
                "frames": result.frames,
                "object_sources": {str(obj): video.object_sources[obj] for obj in present},
                "first_appearance": {str(obj): result.first_appearance[obj] for obj in present},
            }
            if video.label_source is not None:  # labels from a tree apart from the frames
                extra["label_source"] = _relative_text(video.label_source, options.src)
            meta.video_extra[video.name] = extra
        writer.write_meta(meta)
    return SplitSummary(
        split=split,
        root=target,
        videos=[video.name for video in members],
        frames=sum(result.frames for result in results),
        objects=sum(len(objects) for objects in meta.objects.values()),
        missing=missing,
    )


def convert_endovis(
    src: str | Path,
    dst: str | Path,
    year: int,
    split: str = "all",
    fold: int | None = None,
    object_mode: str | None = None,
    labels_dir: str | None = None,
    image_format: str = "jpg",
    jpeg_quality: int = 95,
    overwrite: bool = False,
    workers: int = 1,
    progress: Callable[[str, str, int], None] | None = None,
) -> EndoVisConversionSummary:
    """Convert raw EndoVis `year` data under `src` to the VOS layout in `dst`/<split>/ (module docstring).

    `split` is 'train', 'val', 'all' (train and val) or, for 2017, 'test' (the test release with
    its separately released ground truth). `fold` (2017 train / val, default 0) picks the
    cross-validation fold; `object_mode` is 'instance' (2017 train / val default) or 'class' (the
    default of the 2017 test type maps and the only choice for 2018); `labels_dir` names the 2018
    label folder.
    The whole selected raw layout is listed and size-checked before writing; each split folder is
    built in a temp folder and renamed into place. `progress(split, video, frames)` is called
    after each video (from worker threads when `workers` > 1).
    """
    start = time.perf_counter()
    options = _check_options(
        Path(src), Path(dst), year, split, fold, object_mode, labels_dir, image_format, jpeg_quality,
        overwrite, workers,
    )  # fmt: skip
    layout, locations = discover_videos(year, options.src, labels_dir, split)
    plan, selected, ignored = _plan_splits(options, split, locations)
    _check_targets(options.src, options.dst, [options.dst / name for name in plan], overwrite)
    videos = _build_videos(options, selected, locations)
    summaries = []
    for name, numbers in plan.items():
        members = [videos[number] for number in numbers if number in videos]
        missing = [video_name(year, number) for number in numbers if number not in videos]
        summaries.append(_write_split(options, layout, name, members, missing, progress))
    return EndoVisConversionSummary(
        year=year,
        layout=layout,
        fold=options.fold,
        object_mode=options.object_mode,
        splits=summaries,
        ignored=ignored,
        seconds=time.perf_counter() - start,
    )
