"""Video sources (file, frame folder, camera/URL errors), mask and overlay writers, overlay drawing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from surgsam2.data.masks import davis_palette, read_mask
from surgsam2.data.video import (
    CaptureStreamSource,
    FrameFolderSource,
    MaskWriter,
    OverlayVideoWriter,
    VideoFileSource,
    open_video,
)
from surgsam2.data.overlay import mask_boundaries, overlay_masks

HEIGHT, WIDTH = 48, 64


def smooth_frame(index: int) -> np.ndarray:
    """A smooth RGB test frame (gradients survive lossy codecs), different for each index."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    red = (xs * 255 // (WIDTH - 1) + index * 10) % 256
    green = ys * 255 // (HEIGHT - 1)
    blue = np.full_like(xs, (40 + index * 30) % 256)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def write_test_video(path: Path, frames: list[np.ndarray], fourcc: str = "mp4v", fps: float = 10.0) -> Path:
    """Write RGB frames with OpenCV (the test's own writer, independent of the code under test)."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def square_id_map(object_id: int = 1, box: tuple[int, int, int, int] = (10, 8, 30, 28)) -> np.ndarray:
    x0, y0, x1, y1 = box
    id_map = np.zeros((HEIGHT, WIDTH), np.uint8)
    id_map[y0:y1, x0:x1] = object_id
    return id_map


# ---------------------------------------------------------------------------------------------
# video file source


def test_video_file_roundtrip(tmp_path: Path) -> None:
    frames = [smooth_frame(i) for i in range(12)]
    path = write_test_video(tmp_path / "clip.mp4", frames)
    with open_video(path) as video:
        assert isinstance(video, VideoFileSource)
        assert video.name == "clip"
        assert video.frame_size == (HEIGHT, WIDTH)
        assert video.num_frames == 12
        assert video.fps == pytest.approx(10.0)
        assert video.frame_name(3) == "00003"  # a video file's frames are named by position
        decoded = list(video)
        again = list(video)  # a file can be read twice, from the start each time
    assert len(decoded) == len(again) == 12
    for original, frame in zip(frames, decoded):
        assert frame.shape == (HEIGHT, WIDTH, 3) and frame.dtype == np.uint8
        assert np.abs(frame.astype(int) - original.astype(int)).mean() < 6  # RGB order, lossy codec
    assert np.array_equal(decoded[5], again[5])


def test_video_file_string_path_and_early_stop(tmp_path: Path) -> None:
    path = write_test_video(tmp_path / "clip.avi", [smooth_frame(i) for i in range(5)], fourcc="MJPG")
    video = open_video(str(path))
    first = next(iter(video))
    assert first.shape == (HEIGHT, WIDTH, 3)
    video.close()
    with pytest.raises(ValueError, match="closed"):
        list(video)


def test_missing_video_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        open_video(missing)


def test_corrupt_video_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="garbage.mp4"):
        open_video(bad)


def test_frame_failing_mid_video_names_its_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(8)]
    path = write_test_video(tmp_path / "clip.avi", frames, fourcc="MJPG")
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\xff\xd8\xff"]  # JPEG SOI per frame
    assert len(starts) == 8
    data[starts[4] : starts[4] + 300] = bytes(300)  # destroy frame 4's JPEG header
    path.write_bytes(bytes(data))
    with open_video(path) as video:
        with pytest.raises(ValueError, match=r"frame 4 of video .*clip\.avi"):
            for _ in video:
                pass


def test_truncated_video_is_an_error(tmp_path: Path) -> None:
    """A video that ends before its declared length is a partial input: an error naming the frame."""
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(10)]
    path = write_test_video(tmp_path / "clip.avi", frames, fourcc="MJPG")
    data = path.read_bytes()
    starts = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\xff\xd8\xff"]
    path.write_bytes(data[: starts[6] + 100])  # cut inside frame 6; the header still says 10 frames
    with open_video(path) as video:
        assert video.num_frames == 10
        with pytest.raises(ValueError, match=r"frame 6 of video .*clip\.avi could not be decoded.*declares 10"):
            list(video)


def test_single_image_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "00000.png"
    cv2.imwrite(str(image), smooth_frame(0))
    with pytest.raises(ValueError, match="single image"):
        open_video(image)


# ---------------------------------------------------------------------------------------------
# frame folder source


def write_folder(folder: Path, numbers: list[int], ext: str = "png") -> dict[int, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    frames = {}
    for number in numbers:
        frames[number] = smooth_frame(number)
        cv2.imwrite(str(folder / f"{number}.{ext}"), cv2.cvtColor(frames[number], cv2.COLOR_RGB2BGR))
    return frames


def test_folder_numeric_order(tmp_path: Path) -> None:
    frames = write_folder(tmp_path / "seq_1", [10, 2, 1, 33])
    with open_video(tmp_path / "seq_1") as video:
        assert isinstance(video, FrameFolderSource)
        assert video.name == "seq_1"
        assert video.frame_numbers == [1, 2, 10, 33]
        assert video.num_frames == 4 and video.fps is None and video.frame_size == (HEIGHT, WIDTH)
        decoded = list(video)
    for number, frame in zip([1, 2, 10, 33], decoded):
        assert np.array_equal(frame, frames[number])  # PNG is lossless and channels are RGB
    assert open_video(tmp_path / "seq_1", fps=2).fps == 2.0


def test_folder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty has no frames"):
        open_video(empty)

    named = tmp_path / "named"
    write_folder(named, [0, 1])
    cv2.imwrite(str(named / "frame_x.png"), smooth_frame(0))
    with pytest.raises(ValueError, match="frame_x.png"):
        open_video(named)

    mixed = tmp_path / "mixed"
    write_folder(mixed, [0, 1, 2])
    cv2.imwrite(str(mixed / "3.png"), np.zeros((HEIGHT + 2, WIDTH, 3), np.uint8))
    with pytest.raises(ValueError, match=r"3\.png"):
        open_video(mixed)


def test_camera_and_stream_errors() -> None:
    with pytest.raises(ValueError, match="camera 97"):
        open_video(97)
    with pytest.raises(ValueError, match="camera 98"):
        open_video("98")
    with pytest.raises(ValueError, match=r"rtsp://\*\*\*@127\.0\.0\.1"):  # credentials are not echoed
        CaptureStreamSource("rtsp://user:secret@127.0.0.1:1/live?timeout=1")


# ---------------------------------------------------------------------------------------------
# writers


def test_mask_writer_layout_and_atomicity(tmp_path: Path) -> None:
    out = tmp_path / "pred"
    with MaskWriter(out, "seq_2") as writer:
        writer.write(square_id_map(1))
        writer.write({2: square_id_map(1).astype(bool), 3: np.zeros((HEIGHT, WIDTH), bool)})
        writer.write({}, frame_index=7)
        assert not (out / "seq_2").exists()  # not published before close
    written = sorted(p.name for p in (out / "seq_2").iterdir() if not p.name.startswith("."))  # not our marker
    assert written == ["00000.png", "00001.png", "00007.png"]
    assert np.array_equal(read_mask(out / "seq_2" / "00000.png"), square_id_map(1))
    assert np.array_equal(read_mask(out / "seq_2" / "00001.png"), square_id_map(2))
    assert not read_mask(out / "seq_2" / "00007.png").any()

    with pytest.raises(ValueError, match="not empty"):
        MaskWriter(out, "seq_2")

    with pytest.raises(RuntimeError, match="boom"):
        with MaskWriter(out, "seq_3") as writer:
            writer.write(square_id_map(1))
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["seq_2"]  # no seq_3, no staging leftovers


def test_overlay_writer_publishes_on_close(tmp_path: Path) -> None:
    target = tmp_path / "overlay.mp4"
    with OverlayVideoWriter(target, fps=5, draw_ids=False) as writer:
        for index in range(6):
            writer.write(smooth_frame(index), square_id_map(1 + index % 2))
            assert not target.exists()
        assert [p for p in tmp_path.iterdir()]  # only the hidden temp file so far
        assert all(p.name.startswith(".") for p in tmp_path.iterdir())
    assert target.is_file() and writer.path == target and writer.codec == "mp4v"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.mp4"]
    assert count_frames(target) == 6
    with open_video(target) as video:
        assert video.frame_size == (HEIGHT, WIDTH) and video.fps == pytest.approx(5.0)
        first = next(iter(video))
    red = davis_palette()[1].astype(int)
    inside = first[13:23, 15:25].reshape(-1, 3).mean(axis=0)  # inside the square, away from its contour
    plain = smooth_frame(0)[13:23, 15:25].reshape(-1, 3).mean(axis=0)
    assert np.abs(inside - (plain + red) / 2).max() < 12

    with pytest.raises(ValueError, match="exists"):
        OverlayVideoWriter(target)


def test_overlay_writer_exception_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with OverlayVideoWriter(tmp_path / "bad.mp4") as writer:
            writer.write(smooth_frame(0), square_id_map(1))
            writer.write(smooth_frame(1), square_id_map(1))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_overlay_writer_falls_back_to_avi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = OverlayVideoWriter._try_open

    def no_mp4v(self: OverlayVideoWriter, suffix: str, codec: str, size: tuple[int, int]) -> bool:
        return False if codec == "mp4v" else original(self, suffix, codec, size)

    monkeypatch.setattr(OverlayVideoWriter, "_try_open", no_mp4v)
    with pytest.warns(RuntimeWarning, match=r"MJPG to .*out\.avi"):
        with OverlayVideoWriter(tmp_path / "out.mp4") as writer:
            for index in range(3):
                writer.write(smooth_frame(index), square_id_map(1))
    assert writer.path == tmp_path / "out.avi" and writer.codec == "MJPG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.avi"]
    assert count_frames(tmp_path / "out.avi") == 3


def test_overlay_writer_odd_size_and_no_frames(tmp_path: Path) -> None:
    odd = np.zeros((31, 45, 3), np.uint8)
    with OverlayVideoWriter(tmp_path / "odd.mp4") as writer:
        writer.write(odd, np.ones((31, 45), np.uint8))
        with pytest.raises(ValueError, match="frame 1"):
            writer.write(np.zeros((32, 45, 3), np.uint8))
    with open_video(tmp_path / "odd.mp4") as video:
        assert video.frame_size == (32, 46)  # padded to even for mp4v, not cropped
    empty = OverlayVideoWriter(tmp_path / "empty.mp4")
    assert empty.close() is None
    assert not (tmp_path / "empty.mp4").exists()


# ---------------------------------------------------------------------------------------------
# overlay drawing


def test_overlay_masks_colours_only_the_mask() -> None:
    frame = smooth_frame(3)
    id_map = square_id_map(2, box=(10, 8, 30, 28))
    id_map[30:40, 40:60] = 5
    out = overlay_masks(frame, id_map, alpha=1.0, draw_ids=False)
    palette = davis_palette()
    assert np.all(out[id_map == 2] == palette[2])
    assert np.all(out[id_map == 5] == palette[5])
    assert np.array_equal(out[id_map == 0], frame[id_map == 0])
    assert np.array_equal(frame, smooth_frame(3))  # input untouched

    half = overlay_masks(frame, {2: id_map == 2}, alpha=0.5, draw_ids=False)
    edge = mask_boundaries((id_map == 2).astype(np.uint8))
    interior = (id_map == 2) & ~edge
    expected = np.rint(0.5 * frame[interior].astype(float) + 0.5 * palette[2]).astype(np.uint8)
    assert np.array_equal(half[interior], expected)
    assert np.all(half[edge] == palette[2])  # solid contour, inside the mask
    assert np.array_equal(half[id_map != 2], frame[id_map != 2])


def test_overlay_masks_draws_ids_and_validates() -> None:
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    id_map = square_id_map(1, box=(4, 4, 44, 44))
    without = overlay_masks(frame, id_map, alpha=0.0, draw_ids=False, contour_thickness=0)
    assert np.array_equal(without, frame)
    labelled = overlay_masks(frame, id_map, alpha=0.0, draw_ids=True, contour_thickness=0)
    assert (labelled[14:34, 14:34] > 200).any()  # white text near the centroid (24, 24)
    assert np.array_equal(overlay_masks(frame, {}, draw_ids=True), frame)
    with pytest.raises(ValueError, match="frame is"):
        overlay_masks(frame, np.zeros((HEIGHT, WIDTH + 1), np.uint8))
    with pytest.raises(ValueError, match="alpha"):
        overlay_masks(frame, id_map, alpha=1.5)
