"""Where the raw EndoVis videos are under SRC (the layouts `convert-endovis` reads) and their splits.

Only folder names are looked at while discovering; each selected video is then listed and checked
by its builder, so a broken video outside the requested split does not stop a conversion.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from surgsam2.data.endovis_raw import (
    EndoVis17TypeMapVideo,
    EndoVis17Video,
    EndoVis18Video,
    InstrumentLabels,
    RawVideo,
    check_matching_frames,
    endovis17_class_of_folder,
    list_raw_frames,
    raw_image_files,
    video_name,
)
from surgsam2.data.vos import natural_key

SPLITS = ("train", "val", "all", "test")
ENDOVIS17_LABELLED_DATASETS = tuple(range(1, 9))  # instrument_dataset_1..8 have training labels
ENDOVIS17_TEST_DATASETS = tuple(range(1, 11))  # the test release: instrument_dataset_1..10
# Datasets 1-8 of the test release hold the 75 frames after the 225 training ones (frame225-299);
# datasets 9 and 10 are test-only (frame000-299).
ENDOVIS17_TEST_FIRST_FRAME = 225
# Where the test ground truth's type maps sit inside its instrument_dataset_<k>/ folder.
ENDOVIS17_TYPE_MAP_DIRS = ("TypeSegmentation", "gt/TypeSegmentation", "ground_truth/TypeSegmentation")
ENDOVIS17_TEST_SEARCH_DEPTH = 3  # folders below SRC searched for the test release's dataset folders
ENDOVIS17_FOLDS: Mapping[int, tuple[int, ...]] = MappingProxyType(
    {0: (1, 3), 1: (2, 5), 2: (4, 8), 3: (6, 7)}  # TernausNet / ISINet / SurgicalSAM folds
)
ENDOVIS18_VAL_SEQUENCES = (2, 5, 9, 15)
ENDOVIS18_LABEL_DIRS = ("instruments_masks", "annotations")

FLAT_FILE = re.compile(r"^seq_?(\d+)_frame(\d+)$", re.IGNORECASE)
VIDEO_DIRS = {2017: re.compile(r"^instrument_dataset_(\d+)$"), 2018: re.compile(r"^seq_(\d+)$")}


# ---------------------------------------------------------------------------------------------
# finding videos under SRC


@dataclass
class VideoLocation:
    """Where one raw video is: a folder, or (2018 flat layout) pre-listed frame and label files."""

    number: int
    folder: Path
    frames: dict[int, Path] | None = None
    labels: dict[int, Path] | None = None
    label_dir: Path | None = None


def child_dirs(folder: Path) -> list[Path]:
    """Visible sub-folders of `folder`, in natural order."""
    children = (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(children, key=lambda p: natural_key(p.name))


def _find_video_dirs(src: Path, year: int) -> dict[int, Path]:
    """{k: folder} of the instrument_dataset_<k> / seq_<k> folders in SRC, SRC/* or SRC itself."""
    pattern = VIDEO_DIRS[year]
    found: dict[int, Path] = {}

    def add(path: Path) -> bool:
        match = pattern.match(path.name)
        if match is None:
            return False
        number = int(match.group(1))
        if number in found:
            raise ValueError(f"{video_name(year, number)} appears twice: {found[number]} and {path}")
        found[number] = path
        return True

    if add(src):
        return found
    for child in child_dirs(src):
        if not add(child):
            for grandchild in child_dirs(child):
                add(grandchild)
    return found


def _find_flat_2018(src: Path, labels_dir: str | None) -> tuple[dict[int, VideoLocation], list[Path]]:
    """ISINet's organised 2018 layout: <group>/images/seq<k>_frame<NNN>.png + <group>/annotations/."""
    label_name = labels_dir or "annotations"
    groups = [folder for folder in [src, *child_dirs(src)] if (folder / "images").is_dir()]
    videos: dict[int, VideoLocation] = {}
    for group in groups:
        image_dir, label_dir = group / "images", group / label_name
        if not label_dir.is_dir():
            raise FileNotFoundError(f"missing folder {label_dir} (instrument-type labels for {image_dir})")
        images = _list_flat(image_dir)
        labels = _list_flat(label_dir)
        for number in sorted(images):
            frames = images[number]
            seq_labels = labels.get(number, {})
            pattern = f"seq{number}_frame*"
            check_matching_frames(frames, seq_labels, image_dir / pattern, label_dir / pattern)
            if number in videos:
                raise ValueError(f"seq_{number} appears in two groups: {videos[number].folder} and {group}")
            videos[number] = VideoLocation(
                number, group, frames=frames, labels=seq_labels, label_dir=label_dir
            )
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise ValueError(
                f"label folder {label_dir} has labels of seq{orphans[0]}"
                f" but {image_dir} has no seq{orphans[0]} frames"
            )
    return videos, groups


def _list_flat(folder: Path) -> dict[int, dict[int, Path]]:
    """{sequence: {frame number: file}} of the seq<k>_frame<NNN>.png files of one flat folder."""
    out: dict[int, dict[int, Path]] = {}
    for path in raw_image_files(folder):
        match = FLAT_FILE.match(path.stem)
        if match is None:
            raise ValueError(
                f"unexpected file name {path}"
                f" (expected seq<k>_frame<NNN>{path.suffix}, e.g. seq2_frame000.png)"
            )
        sequence, number = int(match.group(1)), int(match.group(2))
        frames = out.setdefault(sequence, {})
        if number in frames:
            raise ValueError(
                f"seq{sequence} frame {number} appears twice in {folder}:"
                f" {frames[number].name} and {path.name}"
            )
        frames[number] = path
    return out


def discover_videos(
    year: int, src: Path, labels_dir: str | None = None, split: str = "all"
) -> tuple[str, dict[int, VideoLocation]]:
    """(layout name, {k: location}) of the raw videos under SRC; FileNotFoundError if none.

    Only folder names are looked at here; each selected video is listed and checked later, so a
    broken video outside the requested split does not stop the conversion. The 2017 test split
    reads the test release (`discover_test_videos`).
    """
    if split == "test" and year == 2017:
        return "endovis17-test", discover_test_videos(src)
    dirs = _find_video_dirs(src, year)
    if dirs:
        layout = "endovis17-raw" if year == 2017 else "endovis18-per-sequence"
        return layout, {number: VideoLocation(number, folder) for number, folder in dirs.items()}
    if year == 2018:
        flat, groups = _find_flat_2018(src, labels_dir)
        if flat:
            return "endovis18-isinet-organised", flat
        if groups:
            folders = ", ".join(str(group / "images") for group in groups)
            raise FileNotFoundError(f"no seq<k>_frame<NNN>.png files in {folders}")
        raise FileNotFoundError(
            f"no EndoVis 2018 sequences under {src}: expected seq_<k>/left_frames/ (+ instruments_masks/ or"
            " annotations/) in SRC or SRC/<group>/, or ISINet's <group>/images/ + <group>/annotations/"
        )
    raise FileNotFoundError(
        f"no EndoVis 2017 videos under {src}: expected instrument_dataset_<k>/left_frames/ and"
        " ground_truth/ in SRC or SRC/<group>/ (e.g. instrument_1_4_training/)"
    )


def build_2017_video(location: VideoLocation, object_mode: str, table: Mapping[int, str]) -> EndoVis17Video:
    """List and check one instrument_dataset_<k>: left_frames, ground_truth folders, class names."""
    folder = location.folder
    return _build_instrument_folders(
        location.number, folder, folder / "left_frames", folder / "ground_truth", object_mode, table
    )


def _build_instrument_folders(
    number: int, folder: Path, frame_dir: Path, truth_dir: Path, object_mode: str, table: Mapping[int, str]
) -> EndoVis17Video:
    """A 2017 video from its frame folder and a folder of per-instrument ``<Instrument>_labels/``."""
    if not frame_dir.is_dir():
        raise FileNotFoundError(
            f"missing folder {frame_dir} (EndoVis 2017 frames: left_frames/frame<NNN>.png)"
        )
    if not truth_dir.is_dir():
        raise FileNotFoundError(
            f"missing folder {truth_dir} (EndoVis 2017 labels: ground_truth/<Instrument>_labels/)"
        )
    frames = list_raw_frames(frame_dir)
    label_dirs = child_dirs(truth_dir)
    if not label_dirs:
        raise ValueError(f"no instrument label folders in {truth_dir}")
    instruments: list[InstrumentLabels] = []
    for object_id, label_dir in enumerate(label_dirs, start=1):
        class_id = endovis17_class_of_folder(label_dir.name, table)
        if class_id is None:
            names = ", ".join(table.values())
            raise ValueError(
                f"label folder {label_dir} names no known EndoVis 2017 instrument ({names}, Other)"
            )
        files = list_raw_frames(label_dir)
        check_matching_frames(frames, files, frame_dir, label_dir)
        instruments.append(InstrumentLabels(label_dir, object_id, class_id, files))
    objects: dict[int, int] = {}
    sources: dict[int, str] = {}
    for inst in instruments:
        object_id = inst.object_id if object_mode == "instance" else inst.class_id
        objects[object_id] = inst.class_id
        name = inst.folder.name
        sources[object_id] = f"{sources[object_id]}+{name}" if object_id in sources else name
    return EndoVis17Video(
        name=video_name(2017, number),
        number=number,
        folder=folder,
        frames=frames,
        objects=objects,
        object_sources=sources,
        label_source=truth_dir if truth_dir.parent != folder else None,
        instruments=instruments,
        object_mode=object_mode,
    )


def build_2018_video(
    location: VideoLocation, labels_dir: str | None, table: Mapping[int, str]
) -> EndoVis18Video:
    """List and check one 2018 sequence: left_frames + an instrument-type label folder."""
    folder = location.folder
    if location.frames is not None and location.labels is not None:
        frames, labels = location.frames, location.labels
        label_name = str(location.label_dir)
    else:
        frame_dir = folder / "left_frames"
        if not frame_dir.is_dir():
            raise FileNotFoundError(
                f"missing folder {frame_dir} (EndoVis 2018 frames: left_frames/frame<NNN>.png)"
            )
        candidates = (labels_dir,) if labels_dir else ENDOVIS18_LABEL_DIRS
        label_dir = next((folder / name for name in candidates if (folder / name).is_dir()), None)
        if label_dir is None:
            hint = (
                f"; {folder / 'labels'} holds the challenge's RGB scene labels, not instrument types"
                if (folder / "labels").is_dir()
                else ""
            )
            raise FileNotFoundError(
                f"missing folder {folder / candidates[0]} (instrument-type labels, pixel = class id;"
                f" looked for {', '.join(candidates)}; use --labels-dir for another name){hint}"
            )
        frames = list_raw_frames(frame_dir)
        labels = list_raw_frames(label_dir)
        check_matching_frames(frames, labels, frame_dir, label_dir)
        label_name = label_dir.name
    return EndoVis18Video(
        name=video_name(2018, location.number),
        number=location.number,
        folder=folder,
        frames=frames,
        objects={class_id: class_id for class_id in table},
        object_sources={class_id: f"class {class_id} of {label_name}" for class_id in table},
        labels=labels,
    )


# ---------------------------------------------------------------------------------------------
# the EndoVis 2017 test release


def _find_all_video_dirs(src: Path, year: int, depth: int) -> dict[int, list[Path]]:
    """{k: folders} of every folder named like video k in SRC and up to `depth` folders below it."""
    pattern = VIDEO_DIRS[year]
    found: dict[int, list[Path]] = {}
    level = [src]
    for _ in range(depth + 1):
        below: list[Path] = []
        for folder in level:
            match = pattern.match(folder.name)
            if match is not None:
                found.setdefault(int(match.group(1)), []).append(folder)
            else:
                below.extend(child_dirs(folder))
        level = below
    return found


def _type_map_dir(folder: Path) -> Path | None:
    """The test type-map folder inside one instrument_dataset_<k>/ folder, if it has one."""
    return next((folder / name for name in ENDOVIS17_TYPE_MAP_DIRS if (folder / name).is_dir()), None)


def _has_test_labels(folder: Path) -> bool:
    """Whether an instrument_dataset_<k>/ folder holds test ground truth (type maps or instrument folders)."""
    return _type_map_dir(folder) is not None or (folder / "ground_truth").is_dir()


def _only_one(number: int, folders: list[Path], what: str) -> Path | None:
    """The single folder of `folders`, None if empty; ValueError naming both if there are two."""
    if len(folders) > 1:
        raise ValueError(f"{what} of {video_name(2017, number)} appear twice: {folders[0]} and {folders[1]}")
    return folders[0] if folders else None


def discover_test_videos(src: Path) -> dict[int, VideoLocation]:
    """{k: location} of the 2017 test datasets under SRC: frames and ground truth may be apart.

    The test frames (``instrument_dataset_<k>/left_frames/``) and the separately released ground
    truth (``instrument_dataset_<k>/[gt/]TypeSegmentation/``) may sit in one folder per dataset or
    in two trees, each up to ENDOVIS17_TEST_SEARCH_DEPTH folders below SRC.
    """
    locations: dict[int, VideoLocation] = {}
    for number, folders in _find_all_video_dirs(src, 2017, ENDOVIS17_TEST_SEARCH_DEPTH).items():
        with_frames = [folder for folder in folders if (folder / "left_frames").is_dir()]
        frames = _only_one(number, with_frames, "left_frames folders")
        labels = _only_one(number, [f for f in folders if _has_test_labels(f)], "test ground-truth folders")
        locations[number] = VideoLocation(number, frames or labels or folders[0], label_dir=labels)
    if not locations:
        raise FileNotFoundError(
            f"no EndoVis 2017 test videos under {src}: expected instrument_dataset_<k>/left_frames/ and its"
            " ground truth instrument_dataset_<k>/[gt/]TypeSegmentation/ up to"
            f" {ENDOVIS17_TEST_SEARCH_DEPTH} folders below SRC"
        )
    return locations


def _check_test_frame_numbers(number: int, frames: Mapping[int, Path], frame_dir: Path) -> None:
    """ValueError if a dataset of 1-8 holds training frames (numbers below 225) instead of test ones."""
    early = sorted(k for k in frames if k < ENDOVIS17_TEST_FIRST_FRAME)
    if number in ENDOVIS17_LABELLED_DATASETS and early:
        raise ValueError(
            f"{frame_dir} has frames {early[0]}-{early[-1]}: the EndoVis 2017 test frames of datasets 1-8"
            f" are frame{ENDOVIS17_TEST_FIRST_FRAME:03d}-frame299 (frames 0-224 are the training release;"
            " convert it with --split train, val or all)"
        )


def build_2017_test_video(location: VideoLocation, object_mode: str, table: Mapping[int, str]) -> RawVideo:
    """List and check one test dataset: left_frames and its type maps (or instrument folders)."""
    number, frame_dir = location.number, location.folder / "left_frames"
    if not frame_dir.is_dir():
        raise FileNotFoundError(
            f"missing folder {frame_dir} (EndoVis 2017 test frames: left_frames/frame<NNN>.png)"
        )
    if location.label_dir is None:
        raise FileNotFoundError(
            f"no test ground truth for {video_name(2017, number)} under the source folder: expected"
            f" instrument_dataset_{number}/TypeSegmentation/ (or gt/TypeSegmentation/) from the test"
            " ground-truth release"
        )
    type_dir = _type_map_dir(location.label_dir)
    if type_dir is None:  # per-instrument folders, as in the training release
        video = _build_instrument_folders(
            number, location.folder, frame_dir, location.label_dir / "ground_truth", object_mode, table
        )
        _check_test_frame_numbers(number, video.frames, frame_dir)
        return video
    if object_mode != "class":
        raise ValueError(
            f"{type_dir} holds type maps (pixel = class id): objects are per class (object id ="
            " class id); 'instance' is not available"
        )
    frames = list_raw_frames(frame_dir)
    _check_test_frame_numbers(number, frames, frame_dir)
    labels = list_raw_frames(type_dir)
    check_matching_frames(frames, labels, frame_dir, type_dir)
    source = type_dir.relative_to(location.label_dir).as_posix()
    return EndoVis17TypeMapVideo(
        name=video_name(2017, number),
        number=number,
        folder=location.folder,
        frames=frames,
        objects={class_id: class_id for class_id in table},
        object_sources={class_id: f"class {class_id} of {source}" for class_id in table},
        label_source=type_dir if location.label_dir != location.folder else None,
        labels=labels,
    )


# ---------------------------------------------------------------------------------------------
# splits


def split_videos(year: int, split: str, found: Iterable[int], fold: int = 0) -> dict[str, tuple[int, ...]]:
    """{split name: video numbers} of the standard split(s) for `split` ('all' = train and val).

    2017: val = the fold's two datasets, train = the other datasets of 1-8 (others are not in
    the protocol), test = datasets 1-10 of the test release. 2018: val = seq 2, 5, 9, 15, train =
    every other sequence in `found`.
    Numbers not in `found` are left in: the caller reports them as missing.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "test":
        if year != 2017:
            raise ValueError(
                "the test split is EndoVis 2017's test release; EndoVis 2018 converts to train and val"
                " (val = seq 2, 5, 9, 15)"
            )
        return {"test": ENDOVIS17_TEST_DATASETS}
    if year == 2017:
        if fold not in ENDOVIS17_FOLDS:
            raise ValueError(f"EndoVis 2017 fold must be 0-3, got {fold}")
        val = ENDOVIS17_FOLDS[fold]
        train = tuple(k for k in ENDOVIS17_LABELLED_DATASETS if k not in val)
    elif year == 2018:
        val = ENDOVIS18_VAL_SEQUENCES
        train = tuple(k for k in sorted(set(found)) if k not in val)
    else:
        raise ValueError(f"year must be 2017 or 2018, got {year}")
    names = ("train", "val") if split == "all" else (split,)
    return {name: (train if name == "train" else val) for name in names}

