"""The command line without PyTorch (issue 15, item 2): every parser builds where torch cannot be
imported, `surgsam2 segment --engine onnx` runs there, and a command that needs torch says so in
one line with exit code 2.

- the torch-free policy table against the policy registry (one vocabulary, checked both ways);
- in this venv with torch blocked (``sys.modules["torch"] = None``): parsing `segment --engine onnx`,
  the one-line "needs PyTorch" errors, and a real `segment --engine onnx` whose masks equal the
  torch engine's (IoU >= 0.999 per object and frame);
- the same in `.venv-onnx`, the torch-free venv `make install-onnx` builds (skipped where it is
  missing, failed under CI=true).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnx_parity import IOU_BAR, ONNX_VENV_PYTHON, iou, require_onnx_venv, synthetic_clip
from surgsam2.cli import BAD_INPUT_EXIT_CODE, TORCH_MISSING, main
from surgsam2.data.masks import read_mask, write_mask
from surgsam2.memory import policies
from surgsam2.memory.policies import FifoPolicy, make_policy, policy_names, policy_summaries, register_policy
from surgsam2.memory.policy_table import POLICY_NAMES, POLICY_SUMMARIES

REPO = Path(__file__).resolve().parents[1]
BLOCK_TORCH = "import sys; sys.modules['torch'] = None; import runpy; sys.argv[0] = 'surgsam2'; "
RUN_CLI_WITHOUT_TORCH = BLOCK_TORCH + "runpy.run_module('surgsam2.cli', run_name='__main__')"


def test_policy_table_is_the_registry() -> None:
    """The torch-free table lists the built-in policies (registered first, at import), in order,
    with their docstrings' first lines."""
    built_in = policy_names()[: len(POLICY_NAMES)]
    assert built_in == POLICY_NAMES
    assert policy_summaries()[: len(POLICY_NAMES)] == [f"{name}: {summary}" for name, summary in POLICY_SUMMARIES.items()]


def test_a_policy_outside_the_table_is_api_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy registered by the user's code (as benchmarks/memory_policies.py registers variants)
    is made by name through the API, and the command line's table is unchanged."""
    monkeypatch.setattr(policies, "_REGISTRY", dict(policies._REGISTRY))  # registered for this test only

    @register_policy("user_policy_outside_the_table")
    class UserPolicy(FifoPolicy):
        """A user's policy."""

    assert "user_policy_outside_the_table" in policy_names()
    assert isinstance(make_policy("user_policy_outside_the_table"), UserPolicy)
    assert "user_policy_outside_the_table" not in POLICY_NAMES


def run_without_torch(python: str | Path, args: list[str], cwd: Path, block: bool) -> subprocess.CompletedProcess:
    """`surgsam2 ARGS` in ``python``; ``block``: with torch made unimportable first (this venv)."""
    env = {"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    if block:  # this venv: the checkout under test, as the test run sees it
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        command = [str(python), "-c", RUN_CLI_WITHOUT_TORCH, *args]
    else:  # .venv-onnx: its own install (no PYTHONPATH), which must be this checkout
        command = [str(python), "-m", "surgsam2.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)


def test_segment_onnx_arguments_parse_without_torch(tmp_path: Path) -> None:
    """The parser of every command builds, and `segment --engine onnx` parses, with torch unimportable."""
    script = BLOCK_TORCH + (
        "import surgsam2.cli as cli; "
        "args = cli.build_parser().parse_args(['segment', 'clip.mp4', '--prompt-mask', 'm.png', '--out', 'o',"
        " '--engine', 'onnx', '--onnx-dir', 'export', '--memory', 'fifo']); "
        "print(args.command, args.engine, args.onnx_dir, args.memory, args.input); "
        "print('torch loaded:', any(name.split('.')[0] == 'torch' and module is not None"
        " for name, module in sys.modules.items()))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["segment onnx export fifo clip.mp4", "torch loaded: False"]


@pytest.fixture(scope="module")
def onnx_clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped nano exported to ONNX, an 8-frame mp4 with a 3-object prompt mask, and the
    torch engine's masks of it (`surgsam2 segment --engine torch`)."""
    root = tmp_path_factory.mktemp("torch_free")
    assert main(["export", "--model", "nano", "--format", "onnx", "--out", str(root / "export")]) == 0
    frames, id_maps = synthetic_clip(8, (320, 256), seed=12)
    writer = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 256))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    assert len(set(np.unique(id_maps[0]).tolist()) - {0}) == 3, "the prompt should hold three instruments"
    write_mask(root / "prompt.png", id_maps[0])
    argv = ["segment", str(root / "clip.mp4"), "--prompt-mask", str(root / "prompt.png"), "--quiet"]
    assert main([*argv, "--out", str(root / "masks_torch")]) == 0
    return {"root": root, "export": root / "export", "torch_masks": root / "masks_torch" / "clip"}


def assert_same_masks(got: Path, expected: Path) -> None:
    """Every frame's id map in ``got`` against ``expected``: IoU >= IOU_BAR per object and frame."""
    names = sorted(path.name for path in expected.iterdir())
    assert sorted(path.name for path in got.iterdir()) == names
    worst, pairs = 1.0, 0
    for name in names:
        ours, reference = read_mask(got / name), read_mask(expected / name)
        for obj_id in sorted((set(np.unique(reference).tolist()) | set(np.unique(ours).tolist())) - {0}):
            worst, pairs = min(worst, iou(ours == obj_id, reference == obj_id)), pairs + 1
    print(f"segment --engine onnx vs torch: worst mask IoU {worst:.6f} over {pairs} object-frames; bar {IOU_BAR}")
    assert pairs >= 3 * len(names)  # every object tracked on every frame: no empty comparison
    assert worst >= IOU_BAR


def check_torch_free_cli(python: str | Path, clip: dict[str, Path], block: bool) -> None:
    """--help, segment --help, a real `segment --engine onnx` and the "needs PyTorch" errors."""
    root = clip["root"]
    for args, expected in ((["--help"], "segment"), (["segment", "--help"], "--onnx-dir"), (["train", "--help"], "--config")):
        done = run_without_torch(python, args, root, block)
        assert done.returncode == 0 and expected in done.stdout, (args, done.stderr[-2000:])
    out = root / f"masks_onnx_{'blocked' if block else 'venv'}"
    done = run_without_torch(
        python, ["segment", str(root / "clip.mp4"), "--prompt-mask", str(root / "prompt.png"), "--out", str(out),
                 "--engine", "onnx", "--onnx-dir", str(clip["export"]), "--quiet"], root, block,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tracked objects" in done.stdout
    assert_same_masks(out / "clip", clip["torch_masks"])
    needs_torch = (
        ["export", "--model", "nano", "--format", "onnx", "--out", str(root / "refused")],
        ["train", "--config", "any.yaml"],
        ["segment", str(root / "clip.mp4"), "--prompt-mask", str(root / "prompt.png"), "--out", str(root / "t")],
    )
    for args in needs_torch:
        done = run_without_torch(python, args, root, block)
        assert done.returncode == BAD_INPUT_EXIT_CODE, (args, done.stderr[-2000:])
        assert done.stderr.splitlines() == [f"surgsam2 {args[0]}: error: {TORCH_MISSING}"], done.stderr[-2000:]
    assert not (root / "refused").exists() and not (root / "t").exists()


def test_cli_with_torch_blocked(onnx_clip: dict[str, Path]) -> None:
    """This venv with `import torch` made to fail: the torch-free CLI paths."""
    check_torch_free_cli(sys.executable, onnx_clip, block=True)


def test_cli_in_torch_free_venv(onnx_clip: dict[str, Path]) -> None:
    """`.venv-onnx` (no torch installed): the torch-free CLI paths, from this checkout."""
    require_onnx_venv()
    done = subprocess.run(
        [str(ONNX_VENV_PYTHON), "-c", "import importlib.util, surgsam2; print(importlib.util.find_spec('torch'), surgsam2.__file__)"],
        capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "")},
    )  # fmt: skip
    assert done.stdout.split() == ["None", str(REPO / "src" / "surgsam2" / "__init__.py")], done.stdout + done.stderr
    check_torch_free_cli(ONNX_VENV_PYTHON, onnx_clip, block=False)
