"""Checkpoint averaging (`surgsam2 average-checkpoints`, `surgsam2.train.averaging`): the weights
are the exact float64 mean rounded once, the file loads like any checkpoint, and mismatched or bad
inputs are refused in one line before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from surgsam2.cli import main
from surgsam2.model.checkpoint import load_model, read_checkpoint, save_checkpoint
from surgsam2.model.configs import get_config
from surgsam2.model.sam2 import SAM2Model
from surgsam2.train.averaging import average_checkpoints


def _nano_file(path: Path, seed: int, step: int, image_size: int | None = None) -> Path:
    torch.manual_seed(seed)
    extra = {"train_step": step, "train_config": {"lr": 1e-4}, "note": f"seed {seed}"}
    return save_checkpoint(SAM2Model(get_config("nano", image_size)).eval(), path, extra=extra)


@pytest.fixture
def three_files(tmp_path: Path) -> list[Path]:
    return [_nano_file(tmp_path / f"model_step{step}.pt", seed, step) for seed, step in ((1, 100), (2, 200), (3, 300))]


def test_the_mean_is_exact_and_loads(three_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "averaged" / "mean.pt"
    assert main(["average-checkpoints", "--out", str(out), *map(str, three_files)]) == 0
    assert "mean of 3 nano checkpoints (steps [100, 200, 300])" in capsys.readouterr().out
    sources = [read_checkpoint(path).state_dict for path in three_files]
    averaged = read_checkpoint(out)
    assert averaged.metadata["averaged_from"] == [
        {"file": path.name, "train_step": step} for path, step in zip(three_files, (100, 200, 300))
    ]
    assert averaged.metadata["train_config"] == {"lr": 1e-4}  # shared by every source: kept
    assert "note" not in averaged.metadata and "train_step" not in averaged.metadata  # per file: dropped
    worst = 0.0
    for key, tensor in averaged.state_dict.items():
        expected = (sum(source[key].double() for source in sources) / 3).float()
        assert torch.equal(tensor, expected), key  # the float64 mean, rounded to float32 once
        worst = max(worst, float((tensor.double() - sources[0][key].double()).abs().max()))
    assert worst > 0.0  # the sources differ, so the mean is not a copy of one
    model = load_model("nano", checkpoint=out)
    assert torch.equal(model.state_dict()["no_mem_embed"], averaged.state_dict["no_mem_embed"])


def test_one_checkpoint_or_the_same_twice_is_refused(three_files: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least two checkpoints"):
        average_checkpoints(three_files[:1])
    with pytest.raises(ValueError, match="given twice"):
        average_checkpoints([three_files[0], three_files[1], three_files[0]])


def test_checkpoints_of_other_sizes_or_models_are_refused(three_files: list[Path], tmp_path: Path) -> None:
    other_size = _nano_file(tmp_path / "nano320.pt", 4, 400, image_size=320)
    with pytest.raises(ValueError, match="nano320.pt: model nano at image size 320, the first checkpoint's nano at 256"):
        average_checkpoints([three_files[0], other_size])
    torch.manual_seed(0)
    tiny = save_checkpoint(SAM2Model(get_config("sam2.1_hiera_t", 256)).eval(), tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match="tiny.pt: model sam2.1_hiera_t"):
        average_checkpoints([three_files[0], tiny])


def test_non_finite_weights_are_refused(three_files: list[Path], tmp_path: Path) -> None:
    loaded = torch.load(three_files[1], weights_only=True)
    loaded["model"]["no_mem_embed"][0, 0, 0] = float("nan")
    broken = tmp_path / "broken.pt"
    torch.save(loaded, broken)
    with pytest.raises(ValueError, match="broken.pt: 1 tensors hold NaN"):
        average_checkpoints([three_files[0], broken])


def test_outputs_are_guarded(three_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    inputs = [str(path) for path in three_files[:2]]
    # Over an input: refused, and the input is untouched.
    before = three_files[0].read_bytes()
    assert main(["average-checkpoints", "--out", inputs[0], *inputs]) == 2
    assert "is the input checkpoint" in capsys.readouterr().err
    assert three_files[0].read_bytes() == before
    # A file we did not write is never replaced, even with --overwrite.
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"the user's file")
    assert main(["average-checkpoints", "--out", str(foreign), "--overwrite", *inputs]) == 2
    assert "was not written by surgsam2" in capsys.readouterr().err
    assert foreign.read_bytes() == b"the user's file"
    # Our own earlier output needs --overwrite.
    out = tmp_path / "mean.pt"
    assert main(["average-checkpoints", "--out", str(out), *inputs]) == 0
    assert main(["average-checkpoints", "--out", str(out), *inputs]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["average-checkpoints", "--out", str(out), "--overwrite", *inputs]) == 0
    # A missing input fails before anything is written.
    assert main(["average-checkpoints", "--out", str(tmp_path / "new.pt"), inputs[0], str(tmp_path / "no.pt")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    assert not (tmp_path / "new.pt").exists()
