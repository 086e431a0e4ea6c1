"""VOS layout I/O: palette masks, frame ordering, meta.json, first appearance, clear errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from surgsam2.data.classes import ENDOVIS17_CLASSES, ENDOVIS18_CLASSES, class_name, class_table
from surgsam2.data.masks import (
    colorize,
    davis_palette,
    id_map_to_masks,
    masks_to_id_map,
    object_ids,
    read_mask,
    write_mask,
)
from surgsam2.data.vos import (
    DatasetMeta,
    VOSDataset,
    VOSWriter,
    first_appearance,
    list_videos,
    natural_key,
    new_object_prompt,
    read_meta,
    staged_output_dir,
    write_meta,
)


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def _id_map(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 6, (h, w)).astype(np.uint8)


def _write_video(root, name="v", frames=3, h=12, w=16, annotations=True, fmt="png"):
    writer = VOSWriter(root, image_format=fmt)
    stream = []
    for t in range(frames):
        rgb = np.full((h, w, 3), 40 * t, np.uint8)
        id_map = np.zeros((h, w), np.uint8)
        if t >= 1:
            id_map[2:5, 2:6] = 1
        if t >= 2:
            id_map[6:9, 8:12] = 2
        stream.append((rgb, id_map if annotations else None))
    writer.write_video(name, stream)
    return writer


# --- masks -------------------------------------------------------------------------------------


def test_palette_round_trip(tmp_path):
    id_map = _id_map()
    path = write_mask(tmp_path / "sub" / "00000.png", id_map)
    with Image.open(path) as image:
        assert image.mode == "P"
        palette = np.array(image.getpalette()[: 3 * 4]).reshape(4, 3)
    assert palette.tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert davis_palette()[4].tolist() == [0, 0, 128]
    read = read_mask(path)
    assert read.dtype == np.uint8 and np.array_equal(read, id_map)
    assert colorize(id_map)[id_map == 1][0].tolist() == [128, 0, 0]


def test_id_map_and_masks_convert_both_ways():
    id_map = _id_map(seed=1)
    masks = id_map_to_masks(id_map)
    assert sorted(masks) == object_ids(id_map) == [1, 2, 3, 4, 5]
    assert all(m.dtype == bool for m in masks.values())
    assert np.array_equal(masks_to_id_map(masks), id_map)
    assert not id_map_to_masks(id_map, ids=[9])[9].any()
    assert masks_to_id_map({}, shape=(3, 4)).shape == (3, 4)
    with pytest.raises(ValueError, match="object id 300"):
        masks_to_id_map({300: np.ones((2, 2), bool)})


def test_bad_masks_are_clear_errors(tmp_path):
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(rgb)
    with pytest.raises(ValueError) as error:
        read_mask(rgb)
    assert "rgb.png" in _one_line(error) and "RGB" in str(error.value)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((4, 4), 2, np.uint8)).save(grey)
    assert read_mask(grey).max() == 2
    with pytest.raises(ValueError, match="grey.png"):
        read_mask(grey, allow_grayscale=False)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png at all")
    with pytest.raises(ValueError) as error:
        read_mask(junk)
    assert "junk.png" in _one_line(error)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_mask(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="2-D"):
        write_mask(tmp_path / "x.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="0..255"):
        write_mask(tmp_path / "x.png", np.full((2, 2), 256))


# --- layout -------------------------------------------------------------------------------------


def test_frames_sort_numerically(tmp_path):
    folder = tmp_path / "JPEGImages" / "v"
    folder.mkdir(parents=True)
    for number in (10, 2, 1, 100):
        cv2.imwrite(str(folder / f"{number}.jpg"), np.zeros((4, 4, 3), np.uint8))
    (folder / ".DS_Store").write_bytes(b"")
    (folder / "notes.txt").write_text("ignored")
    video = VOSDataset(tmp_path).video("v")
    assert video.frame_names == ["1", "2", "10", "100"]
    assert video.position_of(10) == 2 and len(video) == 4
    assert sorted(["seq_10", "seq_2", "seq_1"], key=natural_key) == ["seq_1", "seq_2", "seq_10"]


def test_writer_reader_round_trip(tmp_path):
    writer = _write_video(tmp_path, name="seq_2", frames=3)
    writer.write_meta(DatasetMeta(dataset="t", classes={1: "a"}, objects={"seq_2": {1: 1, 2: 1}}))
    _write_video(tmp_path, name="seq_10", frames=2, annotations=False, fmt="jpg")
    dataset = VOSDataset(tmp_path)
    assert dataset.videos == ["seq_2", "seq_10"]
    video = dataset["seq_2"]
    assert video.frame_names == ["00000", "00001", "00002"] and video.size == (12, 16)
    frame = video.read_frame(2)
    assert frame.shape == (12, 16, 3) and frame.dtype == np.uint8 and (frame == 80).all()
    assert video.read_annotation(2)[7, 9] == 2
    assert video.first_appearance() == {1: 1, 2: 2} and video.object_ids() == [1, 2]
    assert video.prompt_positions == [1, 2]
    assert object_ids(video.read_prompt(2)) == [2] and video.read_prompt(0) is None
    assert dataset.meta.class_name("seq_2", 2) == "a"
    unannotated = dataset["seq_10"]
    assert not unannotated.has_annotations and unannotated.image_paths[0].suffix == ".jpg"
    with pytest.raises(FileNotFoundError, match="seq_10"):
        unannotated.read_annotation(0)


def test_rgb_channel_order(tmp_path):
    writer = VOSWriter(tmp_path, image_format="png")
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    writer.write_frame("v", 0, red)
    assert VOSDataset(tmp_path).video("v").read_frame(0)[0, 0].tolist() == [255, 0, 0]
    jpeg = VOSWriter(tmp_path / "j", image_format="jpg", jpeg_quality=95)
    path = jpeg.write_frame("v", 0, red)
    assert path.name == "00000.jpg"
    with pytest.raises(ValueError, match="quality"):
        VOSWriter(tmp_path, jpeg_quality=0)


def test_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        VOSDataset(tmp_path / "nope")
    assert "nope" in _one_line(error)
    with pytest.raises(FileNotFoundError) as error:
        VOSDataset(tmp_path)
    assert "JPEGImages" in _one_line(error)
    _write_video(tmp_path, name="v")
    with pytest.raises(FileNotFoundError) as error:
        VOSDataset(tmp_path).video("other")
    assert "other" in _one_line(error)


def test_non_numeric_frame_name(tmp_path):
    folder = tmp_path / "JPEGImages" / "v"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "frame_a.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError) as error:
        VOSDataset(tmp_path).video("v")
    assert "frame_a.png" in _one_line(error) and "non-numeric" in str(error.value)


def test_mismatched_frame_sets(tmp_path):
    _write_video(tmp_path, name="v", frames=3)
    (tmp_path / "Annotations" / "v" / "00001.png").unlink()
    with pytest.raises(ValueError) as error:
        VOSDataset(tmp_path).video("v")
    message = _one_line(error)
    assert "'v'" in message and "frame(s) 1" in message
    write_mask(tmp_path / "Annotations" / "v" / "00001.png", np.zeros((12, 16), np.uint8))
    write_mask(tmp_path / "Annotations" / "v" / "00007.png", np.zeros((12, 16), np.uint8))
    with pytest.raises(ValueError, match="without a frame: 7"):
        VOSDataset(tmp_path).video("v")


def test_wrong_size_mask(tmp_path):
    _write_video(tmp_path, name="v", frames=2)
    write_mask(tmp_path / "Annotations" / "v" / "00001.png", np.zeros((10, 16), np.uint8))
    video = VOSDataset(tmp_path).video("v")
    video.read_annotation(0)
    with pytest.raises(ValueError) as error:
        video.read_annotation(1)
    message = _one_line(error)
    assert "00001.png" in message and "16x10" in message and "16x12" in message
    frame = np.zeros((12, 16, 3), np.uint8)
    with pytest.raises(ValueError) as error:
        VOSWriter(tmp_path / "w").write_video("v", [(frame, np.zeros((10, 16), np.uint8))])
    assert "'v' frame 0" in _one_line(error)


def test_non_palette_annotation_names_file(tmp_path):
    _write_video(tmp_path, name="v", frames=2)
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tmp_path / "Annotations" / "v" / "00000.png")
    with pytest.raises(ValueError, match="00000.png"):
        VOSDataset(tmp_path).video("v").read_annotation(0)


# --- meta.json, first appearance, classes ----------------------------------------------------------


def test_meta_json_round_trip(tmp_path):
    meta = DatasetMeta(
        dataset="endovis18",
        classes=dict(ENDOVIS18_CLASSES),
        objects={"seq_2": {1: 3, 2: 6}, "seq_10": {1: 1}},
        video_extra={"seq_2": {"fps": 2}},
        extra={"source": {"note": "x"}},
    )
    path = write_meta(tmp_path / "meta.json", meta)
    raw = json.loads(path.read_text())
    assert raw["videos"]["seq_2"]["objects"]["2"] == {"class_id": 6}
    assert list(raw["videos"]) == ["seq_2", "seq_10"]
    assert raw["classes"]["4"] == "Monopolar Curved Scissors"
    back = read_meta(path)
    assert back == meta
    assert back.class_name("seq_2", 1) == "Large Needle Driver" and back.class_id("seq_x", 1) is None
    path.write_text(json.dumps({"videos": {"v": {"objects": {"1": {"klass": 2}}}}}))
    with pytest.raises(ValueError) as error:
        read_meta(path)
    assert "meta.json" in _one_line(error) and "videos.v.objects.1" in str(error.value)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_meta(path)


def test_meta_check_videos_before_any_run():
    meta = DatasetMeta.from_json({"videos": {"a": {"objects": {"1": 2}}}})
    assert meta.objects == {"a": {1: 2}}
    meta.check_videos(["a"])
    with pytest.raises(ValueError, match="lists no objects for video.s. b, c"):
        meta.check_videos(["a", "b", "c"])


def test_list_videos_from_folder_or_list_file(tmp_path):
    for name in ("seq_10", "seq_2", ".staging", "seq_1"):
        (tmp_path / "root" / name).mkdir(parents=True)
    (tmp_path / "root" / "notes.txt").write_text("x")
    assert list_videos(tmp_path / "root") == ["seq_1", "seq_2", "seq_10"]  # hidden and files left out
    listing = tmp_path / "list.txt"
    listing.write_text("# chosen\nseq_10\n\nseq_2\nseq_10\n")
    assert list_videos(tmp_path / "root", listing) == ["seq_10", "seq_2"]  # file order, no duplicates
    listing.write_text("../etc\n")
    with pytest.raises(ValueError, match="not a video folder name"):
        list_videos(tmp_path / "root", listing)
    with pytest.raises(FileNotFoundError, match="video list file not found"):
        list_videos(tmp_path / "root", tmp_path / "absent.txt")


def test_first_appearance_and_prompts():
    maps = [np.zeros((4, 4), np.uint8) for _ in range(5)]
    maps[1][0, 0] = 2
    maps[3][1, 1] = 1
    maps[3][2, 2] = 2
    maps[4][3, 3] = 3
    assert first_appearance(maps) == {2: 1, 1: 3, 3: 4}
    seen: set[int] = set()
    prompts = [new_object_prompt(m, seen) for m in maps]
    assert prompts[0] is None and prompts[2] is None
    assert object_ids(prompts[3]) == [1] and prompts[3][2, 2] == 0
    assert seen == {1, 2, 3}


def test_class_tables():
    assert class_name(5) == "Ultrasound Probe"
    assert class_name(4, "endovis17") == "Vessel Sealer" == ENDOVIS17_CLASSES[4]
    assert class_table("EndoVis2018")[7] == "Clip Applier"
    with pytest.raises(ValueError, match="unknown class table"):
        class_table("davis")
    with pytest.raises(ValueError, match="class id 8"):
        class_name(8)


# --- staged output -------------------------------------------------------------------------------


def test_staged_output_dir(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_output_dir(out) as staging:
            (staging / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with staged_output_dir(out) as staging:
        (staging / "a.txt").write_text("a")
    assert (out / "a.txt").read_text() == "a"
    with pytest.raises(ValueError) as error:
        with staged_output_dir(out):
            pass
    assert "not empty" in _one_line(error)
    with staged_output_dir(out, overwrite=True) as staging:
        (staging / "b.txt").write_text("b")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
