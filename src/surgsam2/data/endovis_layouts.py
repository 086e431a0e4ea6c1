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
    RAW_IMAGE_EXTENSIONS,
    EndoVis17Video,
    EndoVis18Video,
    InstrumentLabels,
    check_matching_frames,
    endovis17_class_of_folder,
    list_raw_frames,
    video_name,
)
from surgsam2.data.vos import natural_key

SPLITS = ("train", "val", "all")
ENDOVIS17_LABELLED_DATASETS = tuple(range(1, 9))  # instrument_dataset_1..8 have training labels
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
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in RAW_IMAGE_EXTENSIONS or not path.is_file():
            continue
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
    year: int, src: Path, labels_dir: str | None = None
) -> tuple[str, dict[int, VideoLocation]]:
    """(layout name, {k: location}) of the raw videos under SRC; FileNotFoundError if none.

    Only folder names are looked at here; each selected video is listed and checked later, so a
    broken video outside the requested split does not stop the conversion.
    """
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
    frame_dir, truth_dir = folder / "left_frames", folder / "ground_truth"
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
        name=video_name(2017, location.number),
        number=location.number,
        folder=folder,
        frames=frames,
        objects=objects,
        object_sources=sources,
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
# splits


def split_videos(year: int, split: str, found: Iterable[int], fold: int = 0) -> dict[str, tuple[int, ...]]:
    """{split name: video numbers} of the standard split(s) for `split` ('all' = train and val).

    2017: val = the fold's two datasets, train = the other datasets of 1-8 (others are not in
    the protocol). 2018: val = seq 2, 5, 9, 15, train = every other sequence in `found`.
    Numbers not in `found` are left in: the caller reports them as missing.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
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

