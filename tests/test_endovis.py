"""`surgsam2 convert-endovis`: raw EndoVis 2017 / 2018 layouts -> VOS layout, on small fixtures built here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from surgsam2.cli import main
from surgsam2.data.classes import ENDOVIS17_CLASSES, ENDOVIS18_CLASSES
from surgsam2.data.endovis import (
    ENDOVIS17_FOLDS,
    convert_endovis,
    endovis17_class_of_folder,
    split_videos,
)
from surgsam2.data.masks import read_mask
from surgsam2.data.vos import VOSDataset, read_image, read_meta

RAW17_H, RAW17_W = 1080, 1920
CROP_X, CROP_Y = 320, 28
MARKER = (250, 20, 230)  # RGB of the marker pixel at crop-relative (x=5, y=7)
ID17 = {name: class_id for class_id, name in ENDOVIS17_CLASSES.items()}
PF17, BF17 = ID17["Prograsp Forceps"], ID17["Bipolar Forceps"]
# Raw 2017 folders in natural order -> object ids 1, 2, 3.
FOLDERS17 = (
    "Left_Prograsp_Forceps_labels",
    "Maryland_Bipolar_Forceps_labels",
    "Right_Prograsp_Forceps_labels",
)


def _png(path: Path, array: np.ndarray) -> None:
    """Write an RGB (HxWx3) or single-channel array as a PNG, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    assert cv2.imwrite(str(path), data, [cv2.IMWRITE_PNG_COMPRESSION, 1])


def _rect17(y0: int, y1: int, x0: int, x1: int) -> tuple[slice, slice]:
    """A raw-frame window given in crop coordinates."""
    return slice(CROP_Y + y0, CROP_Y + y1), slice(CROP_X + x0, CROP_X + x1)


def _make_dataset17(folder: Path, frames: int = 3, shade: int = 0) -> None:
    """One raw instrument_dataset_<k>: 1920x1080 frames and three instrument label folders.

    Left PF is visible in every frame (with part values 10/20/30 and one pixel outside the crop),
    Maryland BF from frame 0, Right PF from frame 1 only.
    """
    for t in range(frames):
        rgb = np.zeros((RAW17_H, RAW17_W, 3), np.uint8)
        rgb[CROP_Y : CROP_Y + 1024, CROP_X : CROP_X + 1280] = (120 + shade, 40 + 10 * t, 60)
        rgb[CROP_Y + 7, CROP_X + 5] = MARKER
        _png(folder / "left_frames" / f"frame{t:03d}.png", rgb)
        left = np.zeros((RAW17_H, RAW17_W), np.uint8)
        left[_rect17(100, 140, 50, 150)] = 10  # shaft
        left[_rect17(140, 170, 50, 150)] = 20  # wrist
        left[_rect17(170, 200, 50, 150)] = 30  # claspers
        left[500, 10] = 255  # in the black side bar: cropped away
        bipolar = np.zeros_like(left)
        bipolar[_rect17(600, 700, 900, 1000 + t)] = 255
        right = np.zeros_like(left)
        if t >= 1:
            right[_rect17(300, 360, 400, 480)] = 255
        for name, mask in zip(FOLDERS17, (left, bipolar, right)):
            _png(folder / "ground_truth" / name / f"frame{t:03d}.png", mask)


@pytest.fixture(scope="module")
def raw17(tmp_path_factory) -> Path:
    """SRC/instrument_1_4_training/instrument_dataset_{1,2} (+ an unlabelled dataset 9)."""
    root = tmp_path_factory.mktemp("raw17")
    group = root / "instrument_1_4_training"
    _make_dataset17(group / "instrument_dataset_1", shade=0)
    _make_dataset17(group / "instrument_dataset_2", shade=50)
    (root / "instrument_dataset_9" / "left_frames").mkdir(parents=True)  # outside the folds: ignored
    return root


@pytest.fixture(scope="module")
def converted17(raw17: Path, tmp_path_factory) -> Path:
    """raw17 converted with the defaults (fold 0, split all, instance objects) and PNG frames."""
    dst = tmp_path_factory.mktemp("vos17") / "out"
    convert_endovis(raw17, dst, year=2017, image_format="png", workers=2)
    return dst


def _copy(src: Path, tmp_path: Path) -> Path:
    """A private copy of a module-scoped raw fixture that a test may break."""
    return Path(shutil.copytree(src, tmp_path / "raw"))


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# --- EndoVis 2017 -----------------------------------------------------------------------------


def test_2017_crop_offset_frames_and_masks(converted17: Path):
    dataset = VOSDataset(converted17 / "val")
    assert dataset.videos == ["instrument_dataset_1"]
    video = dataset.video("instrument_dataset_1")
    assert len(video) == 3 and video.frame_names == ["00000", "00001", "00002"]
    frame = video.read_frame(0)
    assert frame.shape == (1024, 1280, 3)
    assert tuple(frame[7, 5]) == MARKER  # raw (x=325, y=35) -> (5, 7)
    assert tuple(frame[7, 4]) != MARKER and tuple(frame[6, 5]) != MARKER and tuple(frame[8, 6]) != MARKER
    id_map = video.read_annotation(0)
    assert id_map.shape == (1024, 1280)
    left = id_map == 1
    assert left[100:200, 50:150].all() and left.sum() == 100 * 100  # parts merged, side-bar pixel dropped
    assert (id_map == 2).sum() == 100 * 100 and (id_map == 3).sum() == 0
    assert video.read_annotation(1)[300:360, 400:480].min() == 3


def test_2017_objects_classes_and_first_appearance_prompts(converted17: Path):
    meta = read_meta(converted17 / "val" / "meta.json")
    assert meta.dataset == "endovis17" and meta.classes == dict(ENDOVIS17_CLASSES)
    assert meta.objects["instrument_dataset_1"] == {1: PF17, 2: BF17, 3: PF17}
    extra = meta.video_extra["instrument_dataset_1"]
    assert extra["object_sources"] == {"1": FOLDERS17[0], "2": FOLDERS17[1], "3": FOLDERS17[2]}
    assert extra["first_appearance"] == {"1": 0, "2": 0, "3": 1}
    assert meta.extra["source"]["crop"] == {"x": 320, "y": 28, "width": 1280, "height": 1024}
    assert meta.extra["source"]["fold"] == 0 and meta.extra["source"]["missing"] == ["instrument_dataset_3"]

    video = VOSDataset(converted17 / "val").video("instrument_dataset_1")
    assert video.prompt_positions == [0, 1]
    first, second = video.read_prompt(0), video.read_prompt(1)
    assert set(np.unique(first)) == {0, 1, 2}
    assert np.array_equal(first, video.read_annotation(0))
    assert set(np.unique(second)) == {0, 3}  # only the newly appeared object
    assert np.array_equal(second == 3, video.read_annotation(1) == 3)
    assert video.read_prompt(2) is None


def test_2017_fold_splits(raw17: Path, converted17: Path, tmp_path: Path):
    assert VOSDataset(converted17 / "train").videos == ["instrument_dataset_2"]
    assert split_videos(2017, "all", [], fold=0) == {"train": (2, 4, 5, 6, 7, 8), "val": (1, 3)}
    assert {fold: split_videos(2017, "val", [], fold)["val"] for fold in range(4)} == dict(ENDOVIS17_FOLDS)
    summary = convert_endovis(raw17, tmp_path / "f1", year=2017, split="val", fold=1, image_format="png")
    assert [s.split for s in summary.splits] == ["val"] and summary.fold == 1
    assert summary.splits[0].videos == ["instrument_dataset_2"]
    assert summary.splits[0].missing == ["instrument_dataset_5"]
    assert summary.ignored == ["instrument_dataset_1", "instrument_dataset_9"]
    assert not (tmp_path / "f1" / "train").exists()
    frame = read_image(tmp_path / "f1" / "val" / "JPEGImages" / "instrument_dataset_2" / "00000.png")
    assert frame[100, 100, 0] == 170  # dataset 2's shade, so the right dataset went to fold 1's val


def test_2017_class_objects(raw17: Path, tmp_path: Path):
    convert_endovis(raw17, tmp_path / "c", year=2017, split="val", object_mode="class", image_format="jpg")
    meta = read_meta(tmp_path / "c" / "val" / "meta.json")
    assert meta.objects["instrument_dataset_1"] == {PF17: PF17, BF17: BF17}
    sources = meta.video_extra["instrument_dataset_1"]["object_sources"]
    assert sources[str(PF17)] == f"{FOLDERS17[0]}+{FOLDERS17[2]}"
    video = VOSDataset(tmp_path / "c" / "val").video("instrument_dataset_1")
    assert video.image_paths[0].suffix == ".jpg"
    assert video.object_ids() == sorted({PF17, BF17})
    assert (video.read_annotation(1) == PF17).sum() == 100 * 100 + 60 * 80


def test_2017_folder_names_follow_the_class_table():
    assert endovis17_class_of_folder("Maryland_Bipolar_Forceps_labels") == ID17["Bipolar Forceps"]
    assert endovis17_class_of_folder("Right_Large_Needle_Driver_labels") == ID17["Large Needle Driver"]
    assert endovis17_class_of_folder("Left_Grasping_Retractor_labels") == ID17["Grasping Retractor"]
    assert endovis17_class_of_folder("Vessel_Sealer_labels") == ID17["Vessel Sealer"]
    assert endovis17_class_of_folder("Monopolar_Curved_Scissors_labels") == ID17["Monopolar Curved Scissors"]
    other = next(ID17[n] for n in ("Other", "Others", "Ultrasound Probe") if n in ID17)
    assert endovis17_class_of_folder("Other_labels") == other
    assert endovis17_class_of_folder("Mystery_Tool_labels") is None


@pytest.mark.parametrize(
    "breakage, error_type, expected",
    [
        ("no_left_frames", FileNotFoundError, "instrument_dataset_1/left_frames"),
        ("no_ground_truth", FileNotFoundError, "instrument_dataset_1/ground_truth"),
        ("labels_renamed", ValueError, "has no frames matching"),
        ("label_missing_frame", ValueError, "no label for frame(s) 2"),
        ("label_wrong_size", ValueError, "is 1280x1024 but its frame"),
        ("frame_wrong_size", ValueError, "expected the EndoVis 2017 size 1920x1080"),
        ("unknown_folder", ValueError, "names no known EndoVis 2017 instrument"),
        ("bad_frame_name", ValueError, "unexpected file name"),
    ],
)
def test_2017_malformed_layouts(raw17: Path, tmp_path: Path, breakage: str, error_type: type, expected: str):
    src = _copy(raw17, tmp_path)
    video = src / "instrument_1_4_training" / "instrument_dataset_1"
    labels = video / "ground_truth" / FOLDERS17[1]
    if breakage == "no_left_frames":
        shutil.rmtree(video / "left_frames")
    elif breakage == "no_ground_truth":
        shutil.rmtree(video / "ground_truth")
    elif breakage == "labels_renamed":
        for path in labels.iterdir():
            path.rename(labels / path.name.replace("frame0", "frame5"))
    elif breakage == "label_missing_frame":
        (labels / "frame002.png").unlink()
    elif breakage == "label_wrong_size":
        _png(labels / "frame001.png", np.zeros((1024, 1280), np.uint8))
    elif breakage == "frame_wrong_size":
        _png(video / "left_frames" / "frame001.png", np.zeros((1024, 1280, 3), np.uint8))
    elif breakage == "unknown_folder":
        labels.rename(labels.with_name("Mystery_Tool_labels"))
    elif breakage == "bad_frame_name":
        (video / "left_frames" / "frame001.png").rename(video / "left_frames" / "img001.png")
    dst = tmp_path / "out"
    with pytest.raises(error_type) as error:
        convert_endovis(src, dst, year=2017, split="val")
    message = _one_line(error)
    assert expected in message
    if breakage in ("labels_renamed", "label_missing_frame", "label_wrong_size", "unknown_folder"):
        assert str(labels.parent) in message  # names the offending path
    assert not dst.exists() or not any(dst.iterdir())  # nothing half-written


def test_2017_corrupt_label_is_a_one_line_error(raw17: Path, tmp_path: Path):
    src = _copy(raw17, tmp_path)
    video = src / "instrument_1_4_training" / "instrument_dataset_1"
    label = video / "ground_truth" / FOLDERS17[0] / "frame002.png"
    label.write_bytes(b"not a png")  # header check fails first: still a one-line error, no output
    with pytest.raises(ValueError) as error:
        convert_endovis(src, tmp_path / "out", year=2017, split="val")
    assert "frame002.png" in _one_line(error)
    assert not (tmp_path / "out" / "val").exists()


# --- EndoVis 2017 test release ------------------------------------------------------------------

MCS17, UP17 = ID17["Monopolar Curved Scissors"], 7  # 7: the "Other" type (ultrasound probe)
TEST_FRAMES17 = {1: (225, 226, 227), 9: (0, 1, 2)}  # datasets 1-8 continue after frame 224


def _type_map17(number: int, t: int) -> np.ndarray:
    """A raw 1920x1080 type map (pixel = class id): PF in every frame, MCS from the second frame.

    Dataset 9 also shows the "Other" type; one PF pixel lies in the black side bar (cropped away).
    """
    first = TEST_FRAMES17[number][0]
    labels = np.zeros((RAW17_H, RAW17_W), np.uint8)
    labels[_rect17(100, 200, 50, 150)] = PF17
    labels[500, 10] = PF17
    if t > first:
        labels[_rect17(300, 360, 400, 480)] = MCS17
    if number == 9:
        labels[_rect17(600, 640, 700, 760)] = UP17
    return labels


def _make_test_release17(root: Path) -> None:
    """The test frames and, in a tree of its own, the test ground truth, as the two archives unpack.

    SRC/instrument_1_4_testing/instrument_dataset_1/left_frames/frame225-227.png
    SRC/instrument_9_10_testing/instrument_dataset_9/left_frames/frame000-002.png
    SRC/instrument_2017_test/instrument_2017_test/instrument_dataset_1/gt/TypeSegmentation/frame225-227.png
    SRC/instrument_2017_test/instrument_2017_test/instrument_dataset_9/TypeSegmentation/frame000-002.png
    (+ BinarySegmentation/ and PartsSegmentation/ beside the type maps, which are not read)
    """
    truth = root / "instrument_2017_test" / "instrument_2017_test"
    for number, group in ((1, "instrument_1_4_testing"), (9, "instrument_9_10_testing")):
        labels = truth / f"instrument_dataset_{number}" / ("gt" if number == 1 else ".")
        for t in TEST_FRAMES17[number]:
            rgb = np.zeros((RAW17_H, RAW17_W, 3), np.uint8)
            rgb[CROP_Y : CROP_Y + 1024, CROP_X : CROP_X + 1280] = (90 + number, 40 + t % 50, 60)
            rgb[CROP_Y + 7, CROP_X + 5] = MARKER
            _png(root / group / f"instrument_dataset_{number}" / "left_frames" / f"frame{t:03d}.png", rgb)
            type_map = _type_map17(number, t)
            _png(labels / "TypeSegmentation" / f"frame{t:03d}.png", type_map)
            _png(labels / "BinarySegmentation" / f"frame{t:03d}.png", (type_map > 0).astype(np.uint8) * 255)
            _png(labels / "PartsSegmentation" / f"frame{t:03d}.png", (type_map > 0).astype(np.uint8) * 30)


@pytest.fixture(scope="module")
def raw17_test(tmp_path_factory) -> Path:
    """The 2017 test release of datasets 1 and 9 (frames and ground truth in two trees)."""
    root = tmp_path_factory.mktemp("raw17_test")
    _make_test_release17(root)
    return root


@pytest.fixture(scope="module")
def converted17_test(raw17_test: Path, tmp_path_factory) -> tuple[Path, object]:
    """raw17_test converted with --split test and PNG frames, and the conversion summary."""
    dst = tmp_path_factory.mktemp("vos17_test") / "out"
    summary = convert_endovis(raw17_test, dst, year=2017, split="test", image_format="png", workers=2)
    return dst, summary


def test_2017_test_release_conversion_and_frame_numbers(converted17_test):
    dst, summary = converted17_test
    assert summary.layout == "endovis17-test" and summary.object_mode == "class" and summary.fold is None
    assert [s.split for s in summary.splits] == ["test"] and summary.ignored == []
    assert summary.splits[0].videos == ["instrument_dataset_1", "instrument_dataset_9"]
    assert summary.splits[0].missing == [f"instrument_dataset_{k}" for k in (2, 3, 4, 5, 6, 7, 8, 10)]
    assert sorted(p.name for p in dst.iterdir()) == ["test"]
    dataset = VOSDataset(dst / "test")
    first = dataset.video("instrument_dataset_1")
    assert first.frame_names == ["00225", "00226", "00227"]  # raw frame numbers kept
    assert dataset.video("instrument_dataset_9").frame_names == ["00000", "00001", "00002"]
    frame = first.read_frame(0)
    assert frame.shape == (1024, 1280, 3) and tuple(frame[7, 5]) == MARKER  # cropped from (320, 28)
    assert frame[100, 100, 1] == 40 + 225 % 50  # frame225.png, not another frame
    annotation = first.read_annotation(0)
    assert annotation.shape == (1024, 1280)
    assert (annotation == PF17).sum() == 100 * 100  # the side-bar pixel is cropped away
    cropped = _type_map17(1, 226)[CROP_Y : CROP_Y + 1024, CROP_X : CROP_X + 1280]
    assert np.array_equal(first.read_annotation(1), cropped)  # pixel = class id, as in the raw map
    assert first.prompt_positions == [0, 1]  # PF at frame 225, MCS from frame 226
    assert set(np.unique(first.read_prompt(1))) == {0, MCS17}


def test_2017_test_release_class_ids_and_meta(converted17_test):
    dst, _ = converted17_test
    meta = read_meta(dst / "test" / "meta.json")
    assert meta.dataset == "endovis17" and meta.classes == dict(ENDOVIS17_CLASSES)
    assert meta.objects == {
        "instrument_dataset_1": {PF17: PF17, MCS17: MCS17},
        "instrument_dataset_9": {PF17: PF17, MCS17: MCS17, UP17: UP17},
    }
    assert ENDOVIS17_CLASSES[UP17] == "Ultrasound Probe"  # the challenge's "Other" type
    source = meta.extra["source"]
    assert source["split"] == "test" and source["layout"] == "endovis17-test" and source["fold"] is None
    assert source["crop"] == {"x": 320, "y": 28, "width": 1280, "height": 1024}
    extra = meta.video_extra["instrument_dataset_1"]
    assert extra["first_appearance"] == {str(PF17): 225, str(MCS17): 226}
    assert extra["source"] == "instrument_1_4_testing/instrument_dataset_1"
    truth = "instrument_2017_test/instrument_2017_test/instrument_dataset_1"
    assert extra["label_source"] == f"{truth}/gt/TypeSegmentation"
    assert extra["object_sources"][str(PF17)] == f"class {PF17} of gt/TypeSegmentation"
    appearance = meta.video_extra["instrument_dataset_9"]["first_appearance"]
    assert appearance == {str(PF17): 0, str(MCS17): 1, str(UP17): 0}


def test_2017_test_release_in_one_folder_per_dataset(raw17_test: Path, tmp_path: Path):
    """Frames and ground truth merged into one instrument_dataset_<k>/ folder convert the same."""
    src = tmp_path / "merged" / "instrument_dataset_1"
    shutil.copytree(raw17_test / "instrument_1_4_testing" / "instrument_dataset_1", src)
    truth = raw17_test / "instrument_2017_test" / "instrument_2017_test" / "instrument_dataset_1" / "gt"
    shutil.copytree(truth / "TypeSegmentation", src / "TypeSegmentation")
    summary = convert_endovis(tmp_path / "merged", tmp_path / "out", year=2017, split="test")
    assert summary.splits[0].videos == ["instrument_dataset_1"]
    video = VOSDataset(tmp_path / "out" / "test").video("instrument_dataset_1")
    assert video.frame_names == ["00225", "00226", "00227"] and video.object_ids() == [PF17, MCS17]
    meta = read_meta(tmp_path / "out" / "test" / "meta.json")
    assert "label_source" not in meta.video_extra["instrument_dataset_1"]


def test_2017_test_release_with_instrument_folders(tmp_path: Path):
    """Test ground truth arranged like the training release: instance objects, as in train / val."""
    src = tmp_path / "src" / "instrument_dataset_9"
    _make_dataset17(src)  # frame000-002 with ground_truth/<Instrument>_labels/
    summary = convert_endovis(
        tmp_path / "src", tmp_path / "out", year=2017, split="test", object_mode="instance"
    )
    assert summary.object_mode == "instance" and summary.splits[0].videos == ["instrument_dataset_9"]
    meta = read_meta(tmp_path / "out" / "test" / "meta.json")
    assert meta.objects["instrument_dataset_9"] == {1: PF17, 2: BF17, 3: PF17}


@pytest.mark.parametrize(
    "breakage, error_type, expected",
    [
        ("no_ground_truth", FileNotFoundError, "no test ground truth for instrument_dataset_1"),
        ("type_map_missing_frame", ValueError, "no label for frame(s) 227"),
        ("type_map_bad_value", ValueError, "value(s) 9 that are not EndoVis 2017 instrument classes"),
        ("type_map_rgb", ValueError, "expected a palette or single-channel 8-bit PNG"),
        ("type_map_wrong_size", ValueError, "is 1280x1024 but its frame"),
        ("training_frames", ValueError, "test frames of datasets 1-8 are frame225-frame299"),
        ("frames_twice", ValueError, "left_frames folders of instrument_dataset_1 appear twice"),
        ("instance_objects", ValueError, "'instance' is not available"),
    ],
)
def test_2017_test_release_malformed(
    raw17_test: Path, tmp_path: Path, breakage: str, error_type: type, expected: str
):
    src = _copy(raw17_test, tmp_path)
    frames = src / "instrument_1_4_testing" / "instrument_dataset_1" / "left_frames"
    truth = src / "instrument_2017_test" / "instrument_2017_test" / "instrument_dataset_1"
    type_maps = truth / "gt" / "TypeSegmentation"
    options = {}
    if breakage == "no_ground_truth":
        shutil.rmtree(type_maps.parent.parent)
    elif breakage == "type_map_missing_frame":
        (type_maps / "frame227.png").unlink()
    elif breakage == "type_map_bad_value":
        bad = _type_map17(1, 226)
        bad[CROP_Y + 1, CROP_X + 1] = 9
        _png(type_maps / "frame226.png", bad)
    elif breakage == "type_map_rgb":  # e.g. TypeSegmentationRescaled's colours put in its place
        _png(type_maps / "frame226.png", np.zeros((RAW17_H, RAW17_W, 3), np.uint8))
    elif breakage == "type_map_wrong_size":
        _png(type_maps / "frame226.png", np.zeros((1024, 1280), np.uint8))
    elif breakage == "training_frames":
        shutil.copy(frames / "frame225.png", frames / "frame000.png")
        shutil.copy(type_maps / "frame225.png", type_maps / "frame000.png")
    elif breakage == "frames_twice":
        shutil.copytree(frames.parent, src / "elsewhere" / "instrument_dataset_1")
    elif breakage == "instance_objects":
        options["object_mode"] = "instance"
    dst = tmp_path / "out"
    with pytest.raises(error_type) as error:
        convert_endovis(src, dst, year=2017, split="test", **options)
    message = _one_line(error)
    assert expected in message
    if breakage.startswith("type_map"):
        assert str(type_maps) in message  # names the offending path
    assert not dst.exists() or not any(dst.iterdir())  # nothing half-written


def test_2017_test_split_options(raw17_test: Path, raw18: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="the test split has none"):
        convert_endovis(raw17_test, tmp_path / "out", year=2017, split="test", fold=1)
    with pytest.raises(ValueError, match="the test split is EndoVis 2017's test release"):
        convert_endovis(raw18, tmp_path / "out", year=2018, split="test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no EndoVis 2017 test videos under"):
        convert_endovis(tmp_path / "empty", tmp_path / "out", year=2017, split="test")
    assert split_videos(2017, "test", []) == {"test": tuple(range(1, 11))}
    assert not (tmp_path / "out").exists()


# --- EndoVis 2018 -----------------------------------------------------------------------------

H18, W18 = 48, 64  # 2018 has no crop rule: any size converts unchanged (real frames are 1280x1024)


def _frame18(seq: int, t: int) -> np.ndarray:
    rng = np.random.default_rng(100 * seq + t)
    return rng.integers(0, 255, (H18, W18, 3), dtype=np.uint8)


def _labels18(t: int) -> np.ndarray:
    """Bipolar forceps (1) in every frame, Monopolar Curved Scissors (4) from frame 2."""
    labels = np.zeros((H18, W18), np.uint8)
    labels[5:15, 5:25] = 1
    if t >= 2:
        labels[30:40, 40:60] = 4
    return labels


@pytest.fixture(scope="module")
def raw18(tmp_path_factory) -> Path:
    """SRC/miccai_challenge_2018_release_1/seq_{1,2,3}/{left_frames,instruments_masks}/frame<NNN>.png."""
    root = tmp_path_factory.mktemp("raw18")
    for seq in (1, 2, 3):
        folder = root / "miccai_challenge_2018_release_1" / f"seq_{seq}"
        for t in range(4):
            _png(folder / "left_frames" / f"frame{t:03d}.png", _frame18(seq, t))
            _png(folder / "instruments_masks" / f"frame{t:03d}.png", _labels18(t))
    return root


def _check_converted18(dst: Path) -> None:
    assert VOSDataset(dst / "val").videos == ["seq_2"]
    assert VOSDataset(dst / "train").videos == ["seq_1", "seq_3"]
    video = VOSDataset(dst / "val").video("seq_2")
    assert video.frame_names == ["00000", "00001", "00002", "00003"]
    for position in range(4):
        assert np.array_equal(video.read_frame(position), _frame18(2, position))
        assert np.array_equal(video.read_annotation(position), _labels18(position))
    assert video.prompt_positions == [0, 2]
    assert set(np.unique(video.read_prompt(2))) == {0, 4}
    meta = read_meta(dst / "val" / "meta.json")
    assert meta.dataset == "endovis18" and meta.classes == dict(ENDOVIS18_CLASSES)
    assert meta.objects == {"seq_2": {1: 1, 4: 4}}
    assert meta.video_extra["seq_2"]["first_appearance"] == {"1": 0, "4": 2}
    assert meta.extra["source"]["missing"] == ["seq_5", "seq_9", "seq_15"]
    assert meta.extra["source"]["crop"] is None


def test_2018_per_sequence_layout_and_splits(raw18: Path, tmp_path: Path):
    summary = convert_endovis(raw18, tmp_path / "out", year=2018, image_format="png", workers=3)
    assert summary.layout == "endovis18-per-sequence" and summary.object_mode == "class"
    assert {s.split: s.videos for s in summary.splits} == {"train": ["seq_1", "seq_3"], "val": ["seq_2"]}
    _check_converted18(tmp_path / "out")
    assert split_videos(2018, "all", range(1, 17)) == {
        "train": (1, 3, 4, 6, 7, 8, 10, 11, 12, 13, 14, 16),
        "val": (2, 5, 9, 15),
    }


def test_2018_isinet_organised_layout(raw18: Path, tmp_path: Path):
    src = tmp_path / "isinet"
    for seq, group in ((1, "train"), (3, "train"), (2, "val")):
        folder = raw18 / "miccai_challenge_2018_release_1" / f"seq_{seq}"
        for t in range(4):
            for sub, target in (("left_frames", "images"), ("instruments_masks", "annotations")):
                out = src / group / target / f"seq{seq}_frame{t:03d}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(folder / sub / f"frame{t:03d}.png", out)
    summary = convert_endovis(src, tmp_path / "out", year=2018, image_format="png")
    assert summary.layout == "endovis18-isinet-organised"
    _check_converted18(tmp_path / "out")


def test_2018_labels_dir_option_and_train_only(raw18: Path, tmp_path: Path):
    src = _copy(raw18, tmp_path)
    for seq in (1, 2, 3):
        folder = src / "miccai_challenge_2018_release_1" / f"seq_{seq}"
        (folder / "instruments_masks").rename(folder / "types")
    with pytest.raises(FileNotFoundError) as error:
        convert_endovis(src, tmp_path / "out", year=2018)
    assert "looked for instruments_masks, annotations" in _one_line(error)
    summary = convert_endovis(src, tmp_path / "out", year=2018, split="train", labels_dir="types")
    assert [s.split for s in summary.splits] == ["train"] and summary.ignored == ["seq_2"]
    assert not (tmp_path / "out" / "val").exists()
    assert VOSDataset(tmp_path / "out" / "train").video("seq_1").image_paths[0].suffix == ".jpg"


@pytest.mark.parametrize(
    "breakage, error_type, expected",
    [
        ("no_left_frames", FileNotFoundError, "seq_2/left_frames"),
        ("scene_labels_only", FileNotFoundError, "RGB scene labels, not instrument types"),
        ("label_wrong_size", ValueError, "is 32x48 but its frame"),
        ("label_bad_value", ValueError, "value(s) 9 that are not EndoVis 2018 instrument classes"),
        ("label_rgb", ValueError, "expected a palette or single-channel 8-bit PNG"),
        ("label_extra_frame", ValueError, "label(s) without a frame: 7"),
    ],
)
def test_2018_malformed_layouts(raw18: Path, tmp_path: Path, breakage: str, error_type: type, expected: str):
    src = _copy(raw18, tmp_path)
    folder = src / "miccai_challenge_2018_release_1" / "seq_2"
    labels = folder / "instruments_masks"
    if breakage == "no_left_frames":
        shutil.rmtree(folder / "left_frames")
    elif breakage == "scene_labels_only":
        labels.rename(folder / "labels")
    elif breakage == "label_wrong_size":
        _png(labels / "frame001.png", np.zeros((48, 32), np.uint8))
    elif breakage == "label_bad_value":
        bad = _labels18(3)
        bad[0, 0] = 9
        _png(labels / "frame003.png", bad)
    elif breakage == "label_rgb":
        _png(labels / "frame001.png", np.zeros((H18, W18, 3), np.uint8))
    elif breakage == "label_extra_frame":
        shutil.copy(labels / "frame000.png", labels / "frame007.png")
    with pytest.raises(error_type) as error:
        convert_endovis(src, tmp_path / "out", year=2018, split="val")
    message = _one_line(error)
    assert expected in message and "seq_2" in message
    assert not (tmp_path / "out" / "val").exists()


def test_options_and_source_errors(raw18: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="source folder not found"):
        convert_endovis(tmp_path / "nope", tmp_path / "out", year=2018)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no EndoVis 2017 videos under"):
        convert_endovis(tmp_path / "empty", tmp_path / "out", year=2017)
    with pytest.raises(FileNotFoundError, match="no EndoVis 2018 sequences under"):
        convert_endovis(tmp_path / "empty", tmp_path / "out", year=2018)
    with pytest.raises(ValueError, match="--fold applies to EndoVis 2017 only"):
        convert_endovis(raw18, tmp_path / "out", year=2018, fold=1)
    with pytest.raises(ValueError, match="'instance' is not available"):
        convert_endovis(raw18, tmp_path / "out", year=2018, object_mode="instance")
    with pytest.raises(ValueError, match="year must be 2017 or 2018"):
        convert_endovis(raw18, tmp_path / "out", year=2019)
    with pytest.raises(ValueError, match="image format"):
        convert_endovis(raw18, tmp_path / "out", year=2018, image_format="bmp")
    inside = Path(shutil.copytree(raw18, tmp_path / "vos" / "val" / "raw"))
    with pytest.raises(ValueError, match="contains the source folder"):
        convert_endovis(inside, tmp_path / "vos", year=2018, split="val", overwrite=True)
    assert (inside / "miccai_challenge_2018_release_1").is_dir()
    with pytest.raises(FileNotFoundError, match="no EndoVis 2017 val videos"):
        src = tmp_path / "only9"
        (src / "instrument_dataset_9").mkdir(parents=True)
        convert_endovis(src, tmp_path / "out", year=2017, split="val")


def test_existing_output_needs_overwrite_and_splits_coexist(raw18: Path, tmp_path: Path):
    dst = tmp_path / "out"
    convert_endovis(raw18, dst, year=2018, split="val")
    convert_endovis(raw18, dst, year=2018, split="train")  # another split folder: no conflict
    assert (dst / "val" / "meta.json").is_file() and (dst / "train" / "meta.json").is_file()
    with pytest.raises(ValueError, match="is not empty"):
        convert_endovis(raw18, dst, year=2018, split="all")
    assert (dst / "train" / "meta.json").is_file()  # refused before anything was touched
    (dst / "val" / "stale.txt").write_text("x")
    convert_endovis(raw18, dst, year=2018, split="val", overwrite=True)
    assert not (dst / "val" / "stale.txt").exists()


# --- CLI --------------------------------------------------------------------------------------


def test_cli_convert_endovis(raw18: Path, tmp_path: Path, capsys):
    dst = tmp_path / "out"
    code = main(["convert-endovis", "--year", "2018", "--src", str(raw18), "--dst", str(dst),
                 "--split", "val", "--image-format", "png"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "val/seq_2: 4 frames" in out and "not found: seq_5, seq_9, seq_15" in out
    assert json.loads((dst / "val" / "meta.json").read_text())["videos"]["seq_2"]["objects"] == {
        "1": {"class_id": 1},
        "4": {"class_id": 4},
    }
    assert read_mask(dst / "val" / "VOS" / "Annotations_vos_instrument" / "seq_2" / "00002.png").max() == 4
    code = main(["convert-endovis", "--year", "2018", "--src", str(raw18), "--dst", str(dst),
                 "--split", "val"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is not empty" in err
    code = main(["convert-endovis", "--year", "2017", "--src", str(raw18), "--dst", str(dst / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "no EndoVis 2017 videos under" in err
