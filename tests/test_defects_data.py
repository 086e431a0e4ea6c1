"""Defects of issue 13 in data reading and evaluation, one test each (each failed on main).

Covered:
- `evaluate --pred-dir <a vos-inference output dir>` reported J&F 0.00 with exit 0.
- missing prediction frames counted as empty without a warning (now counted in the JSON, warned;
  a video folder with no prediction for any scored frame is refused).
- JPEG frames with an EXIF orientation: sizes read without it, pixels decoded with it.
- a JPEG given as a prompt mask became ~100 objects (now refused: masks must be lossless PNG).
- a corrupt prediction PNG gave a traceback (now one line naming the file).
- a malformed meta.json gave a traceback / was accepted (now one line naming the file and key).
- a video with corrupt bytes in the middle gave a partial result and a RuntimeWarning (now a
  ValueError naming the frame).
- outputs named by position: a frame folder starting at 00001 gave masks 00000... (now the input's
  own names, and `evaluate` matches frames by name).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from surgsam2.cli import main
from surgsam2.data.images import image_size, read_image
from surgsam2.data.masks import read_mask, write_mask
from surgsam2.data.video import FrameFolderSource, MaskWriter, VideoFileSource, open_video
from surgsam2.data.vos import VOSDataset, read_meta
from surgsam2.eval.evaluate import evaluate
from surgsam2.eval.vos_output import evaluate_vos_output

HEIGHT, WIDTH = 24, 32


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def _box(ids: np.ndarray, object_id: int, top: int, left: int, height: int, width: int) -> np.ndarray:
    ids = ids.copy()
    ids[top : top + height, left : left + width] = object_id
    return ids


def _ground_truth(root: Path, frames: int = 5, first: int = 0) -> list[np.ndarray]:
    """Video ``v``: object 1 on the left, object 2 touching it on the right (frames first..)."""
    maps = []
    for t in range(frames):
        ids = _box(np.zeros((HEIGHT, WIDTH), np.uint8), 1, 4, 2, 12, 8)
        ids = _box(ids, 2, 6, 10, 10, 12)
        write_mask(root / "v" / f"{first + t:05d}.png", ids)
        maps.append(ids)
    return maps


def _vos_inference_output(out: Path, frames: int = 5) -> None:
    """The vos-inference layout: each object alone (exact), and ``all/`` where a too wide object 2
    covers part of object 1."""
    for t in range(frames):
        alone_1 = _box(np.zeros((HEIGHT, WIDTH), np.uint8), 1, 4, 2, 12, 8)
        alone_2 = _box(np.zeros((HEIGHT, WIDTH), np.uint8), 2, 6, 10, 10, 12)
        write_mask(out / "v" / "001" / f"{t:05d}.png", alone_1)
        write_mask(out / "v" / "002" / f"{t:05d}.png", alone_2)
        write_mask(out / "v" / "all" / f"{t:05d}.png", _box(alone_1, 2, 6, 6, 10, 16))


def test_evaluate_scores_a_vos_inference_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """"`evaluate --pred-dir <a vos-inference output dir>` reports J&F 0.00 with exit 0 (the layout
    has per-object folders)"."""
    _ground_truth(tmp_path / "gt")
    _vos_inference_output(tmp_path / "out")
    result = evaluate(tmp_path / "gt", tmp_path / "out")
    reference = evaluate_vos_output(tmp_path / "gt", tmp_path / "out", ["v"])
    assert result.to_json_dict() == reference.to_json_dict()
    # J, F, Dice come from the per-object folders (exact), not from all/ (object 1 partly covered).
    assert [row.J for row in result.per_object] == [pytest.approx(1.0), pytest.approx(1.0)]
    (tmp_path / "combined").mkdir()
    (tmp_path / "combined" / "v").symlink_to(tmp_path / "out" / "v" / "all")
    assert evaluate(tmp_path / "gt", tmp_path / "combined").per_object[0].J < 0.8
    code = main(["evaluate", "--gt-dir", str(tmp_path / "gt"), "--pred-dir", str(tmp_path / "out"),
                 "--output", str(tmp_path / "r.json")])  # fmt: skip
    assert code == 0
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["JF"] == pytest.approx(1.0)


def test_missing_prediction_frames_are_counted_and_warned(tmp_path: Path) -> None:
    """"missing prediction frames count as empty without a warning"."""
    maps = _ground_truth(tmp_path / "gt", frames=6)
    for t in (0, 1, 2, 5):  # frames 3 and 4 (both scored) have no prediction
        write_mask(tmp_path / "pred" / "v" / f"{t:05d}.png", maps[t])
    warnings: list[str] = []
    result = evaluate(tmp_path / "gt", tmp_path / "pred", warn=warnings.append)
    assert result.to_json_dict()["missing_predictions"] == {"total": 2, "per_video": {"v": 2}}
    assert len(warnings) == 1 and "'v'" in warnings[0] and "00003, 00004" in warnings[0]
    assert "MISSING prediction frames" in result.format_table()
    with pytest.warns(RuntimeWarning, match="2 scored frame"):  # the default sink is loud too
        evaluate(tmp_path / "gt", tmp_path / "pred")


def test_prediction_folder_without_any_scored_frame_is_refused(tmp_path: Path) -> None:
    """"missing prediction frames count as empty without a warning" (a whole video of them)."""
    maps = _ground_truth(tmp_path / "gt", frames=5)
    for t, ids in enumerate(maps):  # numbered from 00010: no frame matches the ground truth
        write_mask(tmp_path / "pred" / "v" / f"{t + 10:05d}.png", ids)
    with pytest.raises(ValueError) as error:
        evaluate(tmp_path / "gt", tmp_path / "pred")
    assert "no prediction for any scored frame of video 'v'" in _one_line(error)
    assert "00010..00014" in str(error.value)
    result = evaluate(tmp_path / "gt", tmp_path / "pred", allow_missing_videos=True, warn=lambda _: None)
    assert result.summary.J == 0.0 and result.to_json_dict()["missing_predictions"]["total"] == 3


def _exif_rotated_jpeg(path: Path, width: int = 40, height: int = 20) -> np.ndarray:
    """A JPEG stored as width x height with EXIF orientation 6 (display rotated 90 degrees)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (250, 10, 10)  # left half red: after rotation, the top half
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=95, exif=exif)
    return pixels


def test_exif_orientation_sizes_equal_pixels(tmp_path: Path) -> None:
    """"JPEG frames with an EXIF orientation: sizes are read without it and pixels decoded with it"."""
    for t in range(3):
        _exif_rotated_jpeg(tmp_path / "ds" / "JPEGImages" / "v" / f"{t:05d}.jpg")
        write_mask(tmp_path / "ds" / "Annotations" / "v" / f"{t:05d}.png", np.ones((40, 20), np.uint8))
    path = tmp_path / "ds" / "JPEGImages" / "v" / "00000.jpg"
    frame = read_image(path)
    assert image_size(path) == frame.shape[:2] == (40, 20)  # rotated, as PIL's exif_transpose
    assert frame[:20, :, 0].mean() > 200 and frame[20:, :, 0].mean() < 50  # red on top (tolerance: JPEG)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    assert np.abs(frame.astype(int) - upright.astype(int)).max() <= 8  # cv2 vs PIL decoders
    video = VOSDataset(tmp_path / "ds").video("v")
    assert video.size == (40, 20) and video.read_annotation(1).shape == (40, 20)
    with FrameFolderSource(tmp_path / "ds" / "JPEGImages" / "v") as source:
        assert source.frame_size == (40, 20)
        assert all(f.shape == (40, 20, 3) for f in source)


def test_jpeg_prompt_mask_is_refused(tmp_path: Path) -> None:
    """"A JPEG given as `--prompt-mask` becomes ~100 objects"."""
    ids = _box(np.zeros((HEIGHT, WIDTH), np.uint8), 3, 4, 4, 10, 10)
    path = tmp_path / "prompt.png"  # JPEG content under a .png name: judged by content
    Image.fromarray(ids * 60).save(path, format="JPEG", quality=75)
    with pytest.raises(ValueError) as error:
        read_mask(path)
    assert _one_line(error) == f"mask {path} is a JPEG: masks must be lossless PNG (pixel = object id)"
    sixteen_bit = tmp_path / "ids16.png"
    Image.fromarray(np.full((4, 4), 300, np.uint16)).save(sixteen_bit)
    with pytest.raises(ValueError, match="I;16 image"):  # ids above 255 cannot come back wrapped
        read_mask(sixteen_bit)


def test_corrupt_prediction_png_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """"Tracebacks instead of one-line errors: ... a corrupt prediction PNG"."""
    maps = _ground_truth(tmp_path / "gt", frames=4)
    for t, ids in enumerate(maps):
        write_mask(tmp_path / "pred" / "v" / f"{t:05d}.png", ids)
    bad = tmp_path / "pred" / "v" / "00001.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated inside the image data
    with pytest.raises(ValueError) as error:
        evaluate(tmp_path / "gt", tmp_path / "pred")
    assert str(bad) in _one_line(error)
    code = main(["evaluate", "--gt-dir", str(tmp_path / "gt"), "--pred-dir", str(tmp_path / "pred"),
                 "--output", str(tmp_path / "r.json")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "00001.png" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ('{"videos": {"v": {"objects": {"1": {"class_id": 2}}}}, "classes": {"1": "a"}}', "not among the classes"),
        ('{"videos": {"v": {"objects": {"300": {"class_id": 1}}}}}', r"object id must be an integer in 1\.\.255"),
        ('{"videos": {"v": {"objects": {"1": {"class_id": true}}}}}', "videos.v.objects.1: class_id"),
        ('{"videos": {"v": {"objects": {"1": {"class_id": 1.5}}}}}', "class_id must be an integer"),
        ('{"videos": ["v"]}', "'videos' must be a JSON object"),
        ('{"classes": {"0": "background"}}', r"class id must be an integer in 1\.\.255"),
        ("[1, 2]", "expected a JSON object"),
        ('{"videos": ', "not valid JSON"),
    ],
)
def test_malformed_meta_json_is_one_line(tmp_path: Path, document: str, expected: str) -> None:
    """"Tracebacks instead of one-line errors: ... a malformed `meta.json`"."""
    path = tmp_path / "meta.json"
    path.write_text(document)
    with pytest.raises(ValueError, match=expected) as error:
        read_meta(path)
    assert _one_line(error).startswith(str(path))
    _ground_truth(tmp_path / "gt", frames=3)
    _ground_truth(tmp_path / "pred", frames=3)
    with pytest.raises(ValueError, match=expected):  # evaluate checks it before scoring any video
        evaluate(tmp_path / "gt", tmp_path / "pred", meta=path)


def test_corrupt_video_middle_is_an_error_with_its_frame(tmp_path: Path) -> None:
    """"A video with corrupt bytes in the middle publishes a partial result as complete (only a
    RuntimeWarning)"."""
    rng = np.random.default_rng(3)
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (64, 48))
    for _ in range(40):
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = bytes(4000)  # zeroed bytes in the middle of the stream
    path.write_bytes(bytes(data))
    with open_video(path) as video:
        assert isinstance(video, VideoFileSource) and video.num_frames == 40
        read = 0
        with pytest.raises(ValueError) as error:
            for _ in video:
                read += 1
    assert read < 40
    assert _one_line(error).startswith(f"frame {read} of video {path} could not be decoded (file corrupt")


def test_frame_names_follow_the_input_folder(tmp_path: Path) -> None:
    """"`segment` names output masks by position, not by the input frame's number: frames numbered
    from 00001 get masks 00000..."."""
    (tmp_path / "frames").mkdir()
    for t in range(1, 4):
        cv2.imwrite(str(tmp_path / "frames" / f"{t:05d}.png"), np.full((HEIGHT, WIDTH, 3), 40 * t, np.uint8))
    maps = _ground_truth(tmp_path / "gt", frames=3, first=1)
    with open_video(tmp_path / "frames") as source, MaskWriter(tmp_path / "pred", "v") as writer:
        names = [source.frame_name(i) for i, _ in enumerate(source)]
        for name, ids in zip(names, maps):
            writer.write(ids, name)
    assert names == ["00001", "00002", "00003"]
    written = sorted(p.name for p in (tmp_path / "pred" / "v").iterdir() if not p.name.startswith("."))  # not the marker
    assert written == ["00001.png", "00002.png", "00003.png"]
    warnings: list[str] = []
    result = evaluate(tmp_path / "gt", tmp_path / "pred", warn=warnings.append)
    assert result.summary.JF == pytest.approx(1.0) and not warnings
    with pytest.raises(ValueError, match="plain file name"), MaskWriter(tmp_path / "pred2", "v") as bad_writer:
        bad_writer.write(maps[0], "../x")
