"""`surgsam2 segment` and `surgsam2 demo` end to end, and their one-line errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from surgsam2.cli import main
from surgsam2.data.masks import read_mask, write_mask
from surgsam2.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 6-frame synthetic clip (VOS layout) and its first-frame prompt mask."""
    root = tmp_path_factory.mktemp("clip")
    write_synthetic_dataset(root / "data", videos=1, frames=6, size=(96, 80), seed=3)
    frames = root / "data" / "JPEGImages" / "synth_000"
    prompt = root / "data" / "VOS" / "Annotations_vos_instrument" / "synth_000" / "00000.png"
    return frames, prompt


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_segment_writes_masks_and_overlay(clip, tmp_path, capsys) -> None:
    frames, prompt = clip
    out = tmp_path / "out"
    code, stdout, _ = run(
        ["segment", str(frames), "--prompt-mask", str(prompt), "--image-size", "64",
         "--out", str(out), "--overlay", str(out / "overlay.mp4"), "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 0, stdout
    written = sorted(p.name for p in (out / "synth_000").iterdir())
    assert written == [f"{i:05d}.png" for i in range(6)]
    assert read_mask(out / "synth_000" / "00000.png").shape == (80, 96)
    capture = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    assert "over 6 frames" in stdout


def test_segment_from_points_on_a_later_frame(clip, tmp_path, capsys) -> None:
    frames, _ = clip
    code, stdout, _ = run(
        ["segment", str(frames), "--points", "40,40", "50,30:0", "--prompt-frame", "2", "--object-id", "4",
         "--image-size", "64", "--out", str(tmp_path / "out"), "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert "tracked objects [4]" in stdout
    assert not read_mask(tmp_path / "out" / "synth_000" / "00001.png").any()  # before the prompt


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--points", "500,10"], "object 1: point (500, 10) is outside the 96x80 frame"),
        (["--box", "50,50,10,60"], "x0 < x1"),
        (["--points", "10,10", "--model", "sam9_hiera_xl"], "unknown model 'sam9_hiera_xl'"),
        (["--points", "10,10", "--prompt-frame", "6"], "--prompt-frame 6 but synth_000 has 6 frames"),
        (["--points", "10,10", "--cuda-graphs"], "--cuda-graphs needs a CUDA device (--device cuda), got"),
    ],
)
def test_segment_bad_input_is_one_line_and_writes_nothing(clip, tmp_path, capsys, extra, message) -> None:
    frames, _ = clip
    out = tmp_path / "out"
    code, _, stderr = run(["segment", str(frames), "--out", str(out), "--image-size", "64", "--quiet", *extra], capsys)
    assert code == 2
    assert message in stderr and stderr.count("\n") == 1, stderr
    assert not out.exists() or not any(out.iterdir())


def test_segment_missing_and_unreadable_inputs(clip, tmp_path, capsys) -> None:
    frames, _ = clip
    code, _, stderr = run(["segment", str(tmp_path / "nope.mp4"), "--points", "1,1", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "not found" in stderr and "nope.mp4" in stderr
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).bytes(2048))
    code, _, stderr = run(["segment", str(broken), "--points", "1,1", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "broken.mp4" in stderr
    wrong_size = tmp_path / "wrong.png"
    write_mask(wrong_size, np.ones((10, 10), np.uint8))
    code, _, stderr = run(["segment", str(frames), "--prompt-mask", str(wrong_size), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "mask prompt is 10x10 (WxH) but the frame is 96x80" in stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_demo_runs_end_to_end(tmp_path, capsys) -> None:
    """The demo's whole path on a short clip: data, masks, overlay and results are written."""
    code, stdout, _ = run(["demo", "--out", str(tmp_path / "demo"), "--frames", "4", "--quiet"], capsys)
    assert code == 0
    for name in ("data/meta.json", "masks/synth_000/all/00003.png", "overlay.mp4", "results.json"):
        assert (tmp_path / "demo" / name).is_file(), name
    assert "J&F" in stdout
