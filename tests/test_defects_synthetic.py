"""Defects of issue 13 in the synthetic generator (`surgsam2 synth`): sizes bounded before allocating.

Defects covered (issue 13, "Why" and "What to build" 6):
- `synth --size 100000x100000` gets the process killed for memory (tracebacks at best).
- sizes bounded before allocating (image size, synth size/frames, checkpoint metadata): the synth
  frame count, the number of videos, and the in-memory clip of `generate_synthetic_video`.

Bounds: sides 16..4096 px, 1..100000 frames per clip, 1..10000 videos, 8 GiB for an in-memory clip.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from surgsam2.cli import main
from surgsam2.data.synthetic import (
    MAX_FRAMES,
    MAX_SIDE,
    MAX_VIDEOS,
    SyntheticVideoConfig,
    generate_synthetic_video,
    iter_synthetic_video,
    write_synthetic_dataset,
)

QUICK_S = 1.0  # a refusal reads no data and allocates nothing: far under a second


def _refused_quickly(call: Callable[[], object]) -> str:
    """Run `call`, which must raise a one-line ValueError within QUICK_S seconds; its message."""
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        call()
    elapsed = time.perf_counter() - start
    assert elapsed < QUICK_S, f"refusal took {elapsed:.2f} s"
    message = str(error.value)
    assert "\n" not in message
    return message


def test_synth_size_100000x100000_is_refused_before_allocating(tmp_path: Path):
    """Issue 13: "so do `--image-size 32000` and `synth --size 100000x100000` (tracebacks at best)"."""
    out = tmp_path / "ds"
    huge = (100000, 100000)
    message = _refused_quickly(lambda: write_synthetic_dataset(out, videos=1, frames=2, size=huge))
    assert "100000x100000" in message and f"16..{MAX_SIDE}" in message
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing written, no staging left
    config = SyntheticVideoConfig(width=100000, height=100000, num_frames=2)
    assert "100000x100000" in _refused_quickly(lambda: next(iter_synthetic_video(config)))
    assert "100000x100000" in _refused_quickly(lambda: generate_synthetic_video(config))


def test_synth_cli_size_100000x100000_is_one_line_exit_2(tmp_path: Path, capsys):
    """Issue 13: "so do `--image-size 32000` and `synth --size 100000x100000` (tracebacks at best)"."""
    start = time.perf_counter()
    code = main(["synth", "--out", str(tmp_path / "ds"), "--size", "100000x100000", "--frames", "2"])
    assert time.perf_counter() - start < QUICK_S
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "frame size must be 16..4096" in error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("side", [(15, 256), (320, 4097), (320.5, 256)])
def test_synth_sides_outside_the_bounds_are_refused(tmp_path: Path, side: tuple[float, int]):
    """Issue 13, What to build 6: "sizes bounded before allocating (image size, synth size/frames, ...)"."""
    out = tmp_path / "ds"
    message = _refused_quickly(lambda: write_synthetic_dataset(out, videos=1, frames=2, size=side))
    assert "frame" in message and ("16..4096" in message or "integer" in message)
    assert not (tmp_path / "ds").exists()


def test_synth_frames_are_bounded_before_allocating(tmp_path: Path):
    """Issue 13, What to build 6: "sizes bounded before allocating (image size, synth size/frames, ...)"."""
    too_many = MAX_FRAMES + 1
    message = _refused_quickly(lambda: write_synthetic_dataset(tmp_path / "ds", videos=1, frames=10**9))
    assert f"at most {MAX_FRAMES} frames" in message and "1000000000" in message
    config = SyntheticVideoConfig(num_frames=too_many)
    message = _refused_quickly(lambda: next(iter_synthetic_video(config)))
    assert f"num_frames must be in 1..{MAX_FRAMES}" in message
    assert not (tmp_path / "ds").exists()


def test_synth_videos_are_bounded(tmp_path: Path):
    """Issue 13, What to build 6: "sizes bounded before allocating (image size, synth size/frames, ...)"."""
    message = _refused_quickly(lambda: write_synthetic_dataset(tmp_path / "ds", videos=10**8, frames=2))
    assert f"videos must be in 1..{MAX_VIDEOS}" in message
    assert not (tmp_path / "ds").exists()


def test_in_memory_clip_is_bounded_and_points_to_streaming():
    """Issue 13, What to build 6: "sizes bounded before allocating (image size, synth size/frames, ...)"."""
    config = SyntheticVideoConfig(width=4096, height=4096, num_frames=MAX_FRAMES)  # each bound is met
    message = _refused_quickly(lambda: generate_synthetic_video(config))
    assert "GiB in memory" in message and "iter_synthetic_video" in message
