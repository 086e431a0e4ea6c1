"""Defects of issue 13 about writing results, each tested where the library writes them.

Covered (issue 13, "Why"):
- `segment FRAMES_DIR ... --out <parent of FRAMES_DIR> --overwrite` deletes the input frames.
- `vos-inference ... --output_mask_dir D/Annotations --gt_root D/Annotations` deletes the ground-truth PNGs.
- Results files readable like the masks (results were written 0600 through mkstemp).
- SIGTERM leaves hidden staging folders and files that no later run removes.
- Tracebacks instead of one-line errors: read-only or full output folders (ENOSPC), `--out` naming an
  existing file.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import surgsam2
from surgsam2.data.vos import staged_output_dir

SRC = Path(surgsam2.__file__).resolve().parents[1]


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


def test_overwrite_never_deletes_a_folder_we_did_not_write(tmp_path: Path) -> None:
    """`segment FRAMES_DIR ... --out <parent of FRAMES_DIR> --overwrite` deletes the input frames."""
    parent = tmp_path / "study"
    frames = parent / "frames"
    frames.mkdir(parents=True)
    (frames / "00000.jpg").write_bytes(b"frame")
    with pytest.raises(ValueError) as error:
        with staged_output_dir(parent, overwrite=True) as staging:
            (staging / "video").mkdir()
    assert "not written by surgsam2" in _one_line(error)
    assert (frames / "00000.jpg").read_bytes() == b"frame"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study"]  # no staging left either


def test_vos_inference_into_the_ground_truth_keeps_it(tmp_path: Path) -> None:
    """`vos-inference ... --output_mask_dir D/Annotations --gt_root D/Annotations` deletes the ground-truth PNGs.

    Here at the level of a whole folder (`staged_output_dir`, as `MaskWriter`, synth and the
    converter publish); the command itself is tested in test_defects_cli.py.
    """
    video = tmp_path / "D" / "Annotations" / "seq_1"
    video.mkdir(parents=True)
    (video / "00000.png").write_bytes(b"ground truth")
    with pytest.raises(ValueError) as error:
        with staged_output_dir(video, overwrite=True) as staging:
            (staging / "all").mkdir()
    assert "refusing to replace it" in _one_line(error)
    assert sorted(p.name for p in video.iterdir()) == ["00000.png"]
    assert (video / "00000.png").read_bytes() == b"ground truth"


def test_results_files_are_readable_like_the_masks(tmp_path: Path) -> None:
    """Results files readable like the masks."""
    from surgsam2.data.outputs import OutputFolder, atomic_write

    previous = os.umask(0o022)
    try:
        with OutputFolder(tmp_path / "out") as folder:
            results = folder.write_file("results.json", "{}")
        bench = atomic_write(tmp_path / "bench.json", "{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(results.stat().st_mode) == 0o644
    assert stat.S_IMODE(bench.stat().st_mode) == 0o644


def test_staging_left_by_a_terminated_run_is_removed_by_the_next(tmp_path: Path) -> None:
    """SIGTERM leaves hidden staging folders and files that no later run removes."""
    script = textwrap.dedent(
        """
        import sys, time
        from surgsam2.data.vos import staged_output_dir
        with staged_output_dir(sys.argv[1]) as staging:
            (staging / "meta.json").write_text("{}")
            print("ready", flush=True)
            time.sleep(60)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "ds")], stdout=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)  # no handler installed: the process dies on the spot
    assert process.wait(timeout=30) == -signal.SIGTERM
    process.stdout.close()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # its staging is left behind
    with pytest.warns(RuntimeWarning, match="removed unfinished output of an interrupted run"):
        with staged_output_dir(tmp_path / "ds") as staging:
            (staging / "meta.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_output_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracebacks instead of one-line errors: read-only or full output folders (PermissionError,
    ENOSPC), `--out` naming an existing file."""
    existing = tmp_path / "masks.txt"
    existing.write_text("mine")
    with pytest.raises(ValueError) as error:
        with staged_output_dir(existing, overwrite=True):
            pass
    assert str(existing) in _one_line(error) and existing.read_text() == "mine"

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))

    monkeypatch.setattr(os, "replace", full)
    monkeypatch.setattr(os, "rename", full)
    with pytest.raises(ValueError) as error:
        with staged_output_dir(tmp_path / "ds") as staging:
            (staging / "meta.json").write_text("{}")
    assert "No space left on device" in _one_line(error) and str(tmp_path / "ds") in str(error.value)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks.txt"]
