"""Issue 13's defects at the command line, one test each (each failed on the code before the fix):

- vos-inference with --output_mask_dir = --gt_root deleted the ground truth; = the frames folder
  deleted the frames; segment --out <parent of the frames> --overwrite deleted the frames.
- Two segment / vos-inference runs into one folder: both exit 0, the later replaces the other.
- segment named masks by position: frames numbered from 00001 got masks 00000...
- A JPEG given as --prompt-mask became ~100 objects; object id 0 was accepted.
- A model without weights ran random weights without a word.
- Tracebacks for: --out naming an existing file, evaluate --output <dir>, --device tpu9,
  --device cuda without CUDA, a full disk; a malformed meta.json was found only after every video.
- A video with undecodable frames in the middle was published as complete.
- SIGTERM left staging folders behind (and they were never cleaned).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from held_output import held_output_folder

from surgsam2.cli import main
from surgsam2.data.masks import read_mask
from surgsam2.data.synthetic import write_synthetic_dataset

SIZE = (96, 80)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic video x 6 frames (VOS layout)."""
    root = tmp_path_factory.mktemp("defects") / "data"
    write_synthetic_dataset(root, videos=1, frames=6, size=SIZE, seed=5)
    return root


def _copy(dataset: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    return data


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _segment(frames: Path, out: Path, *extra: str) -> list[str]:
    prompt = frames.parents[1] / "VOS" / "Annotations_vos_instrument" / frames.name / "00000.png"
    return ["segment", str(frames), "--prompt-mask", str(prompt), "--image-size", "64", "--out", str(out), "--quiet", *extra]


def _vos(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "vos-inference", "--base_video_dir", str(data / "JPEGImages"),
        "--input_mask_dir", str(data / "VOS" / "Annotations_vos_instrument"), "--output_mask_dir", str(out),
        "--gt_root", str(data / "Annotations"), "--meta", str(data / "meta.json"), "--image-size", "64",
        "--device", "cpu", "--quiet", *extra,
    ]  # fmt: skip


def _one_line_error(code: int, stderr: str, *fragments: str) -> None:
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


# --- outputs that overlapped inputs destroyed them -------------------------------------------


@pytest.mark.parametrize("target", ["Annotations", "JPEGImages"])
def test_vos_inference_into_an_input_folder_is_refused_and_deletes_nothing(dataset, tmp_path, capsys, target) -> None:
    """`--output_mask_dir D/Annotations --gt_root D/Annotations` deleted the ground truth;
    `--output_mask_dir D/JPEGImages` deleted the input frames (exit 0)."""
    data = _copy(dataset, tmp_path)
    before = _tree(data)
    code, _, err = _run(_vos(data, data / target), capsys)
    _one_line_error(code, err, str(data / target))
    assert _tree(data) == before


def test_segment_into_the_parent_of_its_frames_is_refused_even_with_overwrite(dataset, tmp_path, capsys) -> None:
    """`segment FRAMES_DIR ... --out <parent of FRAMES_DIR> --overwrite` deleted the input frames."""
    data = _copy(dataset, tmp_path)
    frames = data / "JPEGImages" / "synth_000"
    before = _tree(data)
    code, _, err = _run(_segment(frames, frames.parent, "--overwrite"), capsys)
    _one_line_error(code, err, "input")
    assert _tree(data) == before


# --- two runs into one folder ------------------------------------------------------------------


def test_a_second_segment_run_does_not_silently_replace_the_first(dataset, tmp_path, capsys) -> None:
    """Two `segment` runs into one --out both exited 0, the later silently replacing the masks."""
    frames = dataset / "JPEGImages" / "synth_000"
    out = tmp_path / "out"
    assert _run(_segment(frames, out), capsys)[0] == 0
    first = _tree(out / "synth_000")
    code, _, err = _run(_segment(frames, out), capsys)
    _one_line_error(code, err, "--overwrite")
    assert _tree(out / "synth_000") == first
    assert _run(_segment(frames, out, "--overwrite"), capsys)[0] == 0  # ours: replaced on request


def test_a_run_into_a_folder_in_use_is_refused(dataset, tmp_path, capsys) -> None:
    """Two concurrent runs into one folder evaluated / replaced each other's masks."""
    out = tmp_path / "out"
    with held_output_folder(out):
        code, _, err = _run(_vos(dataset, out), capsys)
        _one_line_error(code, err, "in use")
        code, _, err = _run(_segment(dataset / "JPEGImages" / "synth_000", out), capsys)
        _one_line_error(code, err, "in use")


# --- outputs named after their inputs ------------------------------------------------------------


def test_segment_names_masks_after_the_input_frames(dataset, tmp_path, capsys) -> None:
    """Frames numbered from 00001 got masks 00000..., so `evaluate` scored them one frame off."""
    frames = tmp_path / "frames" / "clip"
    frames.mkdir(parents=True)
    for index, path in enumerate(sorted((dataset / "JPEGImages" / "synth_000").iterdir())):
        shutil.copy(path, frames / f"{index + 1:05d}.jpg")
    prompt = dataset / "VOS" / "Annotations_vos_instrument" / "synth_000" / "00000.png"
    code, _, err = _run(
        ["segment", str(frames), "--prompt-mask", str(prompt), "--image-size", "64", "--out", str(tmp_path / "out"), "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out" / "clip").glob("*.png")) == [f"{i:05d}.png" for i in range(1, 7)]


# --- bad prompts and models -------------------------------------------------------------------


def test_a_jpeg_prompt_mask_is_refused(dataset, tmp_path, capsys) -> None:
    """A JPEG given as --prompt-mask became ~100 objects."""
    mask = read_mask(dataset / "VOS" / "Annotations_vos_instrument" / "synth_000" / "00000.png")
    jpeg = tmp_path / "prompt.png"  # a JPEG whatever its name says
    cv2.imwrite(str(tmp_path / "prompt.jpg"), (mask > 0).astype(np.uint8) * 255)
    os.replace(tmp_path / "prompt.jpg", jpeg)
    argv = _segment(dataset / "JPEGImages" / "synth_000", tmp_path / "out")
    argv[argv.index("--prompt-mask") + 1] = str(jpeg)
    code, _, err = _run(argv, capsys)
    _one_line_error(code, err, "JPEG")


def test_object_id_zero_is_refused(dataset, tmp_path, capsys) -> None:
    """Object id 0 (background) was accepted and tracked nothing."""
    code, _, err = _run(
        ["segment", str(dataset / "JPEGImages" / "synth_000"), "--points", "40,40", "--object-id", "0",
         "--image-size", "64", "--out", str(tmp_path / "out"), "--quiet"],
        capsys,
    )  # fmt: skip
    _one_line_error(code, err, "0")
    assert not (tmp_path / "out").exists()


def test_a_model_without_weights_needs_random_weights_said_out_loud(dataset, tmp_path, capsys) -> None:
    """`segment --model sam2.1_hiera_t` without a checkpoint ran random weights without a warning."""
    frames = dataset / "JPEGImages" / "synth_000"
    code, _, err = _run(_segment(frames, tmp_path / "a", "--model", "sam2.1_hiera_t"), capsys)
    _one_line_error(code, err, "--checkpoint", "--random-weights")
    code, _, err = _run(_segment(frames, tmp_path / "b", "--model", "sam2.1_hiera_t", "--random-weights"), capsys)
    assert code == 0 and "RANDOM weights" in err


# --- one line instead of a traceback ---------------------------------------------------------------


def test_out_naming_an_existing_file_is_one_line(dataset, tmp_path, capsys) -> None:
    """`--out` naming an existing file gave a traceback."""
    existing = tmp_path / "file.txt"
    existing.write_text("mine")
    code, _, err = _run(_segment(dataset / "JPEGImages" / "synth_000", existing), capsys)
    _one_line_error(code, err, str(existing))
    assert existing.read_text() == "mine"


def test_evaluate_output_naming_a_folder_is_one_line(dataset, tmp_path, capsys) -> None:
    """`evaluate --output <dir>` gave a traceback."""
    code, _, err = _run(
        ["evaluate", "--gt-dir", str(dataset / "Annotations"), "--pred-dir", str(dataset / "Annotations"),
         "--output", str(tmp_path)],
        capsys,
    )  # fmt: skip
    _one_line_error(code, err, str(tmp_path))


@pytest.mark.parametrize("device, fragment", [("tpu9", "unknown device 'tpu9'"), ("cuda", "no CUDA device")])
def test_bad_devices_are_one_line(dataset, tmp_path, capsys, device, fragment) -> None:
    """`--device tpu9` and `--device cuda` without CUDA gave tracebacks."""
    if device == "cuda":
        import torch

        if torch.cuda.is_available():  # the CPU-only case is what this checks; on a GPU it would run
            device = "cuda:99"
            fragment = "CUDA device(s)"
    code, _, err = _run(_segment(dataset / "JPEGImages" / "synth_000", tmp_path / "out", "--device", device), capsys)
    _one_line_error(code, err, fragment)


def test_a_full_disk_is_one_line_and_publishes_nothing(dataset, tmp_path, capsys, monkeypatch) -> None:
    """Read-only or full output folders (PermissionError, ENOSPC) gave tracebacks."""
    import surgsam2.pipelines.segment as segment

    def full_disk(path, id_map):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(segment, "write_mask", full_disk)
    code, _, err = _run(_segment(dataset / "JPEGImages" / "synth_000", tmp_path / "out"), capsys)
    _one_line_error(code, err, os.strerror(errno.ENOSPC))
    assert not (tmp_path / "out" / "synth_000").exists()
    assert not list((tmp_path / "out").glob(".surgsam2-staging-*")) if (tmp_path / "out").exists() else True


def test_a_malformed_meta_json_fails_before_any_video(dataset, tmp_path, capsys) -> None:
    """A malformed meta.json gave a traceback, and vos-inference read it only after every video."""
    data = _copy(dataset, tmp_path)
    (data / "meta.json").write_text('{"videos": {"synth_000": {"objects": {"1": {"class_id": "x"}}}}}')
    out = tmp_path / "out"
    code, _, err = _run(_vos(data, out), capsys)
    _one_line_error(code, err, "meta.json")
    assert not out.exists() or not any(p.is_dir() for p in out.iterdir())


# --- partial inputs and interrupted runs ---------------------------------------------------------


def _video_file(dataset: Path, path: Path) -> Path:
    """The synthetic frames as an MJPG .avi (one JPEG per frame, so bytes can be corrupted)."""
    writer = cv2.VideoWriter(str(path), cv2.CAP_ANY, cv2.VideoWriter.fourcc(*"MJPG"), 10.0, SIZE)
    for frame in sorted((dataset / "JPEGImages" / "synth_000").glob("*.jpg")):
        writer.write(cv2.imread(str(frame)))
    writer.release()
    return path


def test_a_video_with_corrupt_frames_is_not_published_as_complete(dataset, tmp_path, capsys) -> None:
    """A video with corrupt bytes in the middle published a partial result as complete."""
    video = _video_file(dataset, tmp_path / "clip.avi")
    data = bytearray(video.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = b"\x00" * 4000
    video.write_bytes(bytes(data[: middle + 4000]))  # corrupt and truncated after the middle
    argv = _segment(dataset / "JPEGImages" / "synth_000", tmp_path / "out")
    argv[1] = str(video)
    code, _, err = _run(argv, capsys)
    _one_line_error(code, err, "frame")
    assert not (tmp_path / "out" / "clip").exists()


def test_sigterm_cleans_staging_and_exits_143(dataset, tmp_path) -> None:
    """SIGTERM left hidden staging folders and files that no later run removed."""
    frames = tmp_path / "frames" / "long"
    frames.mkdir(parents=True)
    sources = sorted((dataset / "JPEGImages" / "synth_000").glob("*.jpg"))
    for index in range(400):
        shutil.copy(sources[index % len(sources)], frames / f"{index:05d}.jpg")
    out = tmp_path / "out"
    argv = _segment(dataset / "JPEGImages" / "synth_000", out)
    argv[1] = str(frames)
    process = subprocess.Popen([sys.executable, "-m", "surgsam2.cli", *argv], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob(".surgsam2-staging-*/*.png")):
        time.sleep(0.2)
    assert list(out.glob(".surgsam2-staging-*/*.png")), "the run never started writing"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert not list(out.glob(".surgsam2-staging-*")) and not (out / "long").exists()
